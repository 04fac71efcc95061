"""The report stage: table rows from the evaluate metrics, PNG curves from the logged rows (DVCLive's TSVs or the
stages' CSVs)."""

from __future__ import annotations

import json
import runpy
import sys
from pathlib import Path

import pytest

from pipeline.metrics import write_json
from pipeline.run_logs import StageLog
from pipeline.online import EVAL_COLUMNS, TRAIN_COLUMNS
from pipeline.report import build_report, seed_band
from pipeline.tracking import make_logger


@pytest.mark.parametrize("logger", ["dvclive", "none"])
def test_report_has_table_rows_and_figures(tmp_path: Path, logger: str) -> None:
    ev, ft = tmp_path / "evaluate", tmp_path / "finetune"
    write_json(ev / "metrics.json", {
        "pretrained": {"deterministic": {"mode": "deterministic", "episodes": 4, "return_mean": 0.5,
                                         "return_std": 0.5, "success_rate": 0.5, "success_length_mean": 120.0}},
        "finetuned": {"deterministic": {"mode": "deterministic", "episodes": 4, "return_mean": 1.0,
                                        "return_std": 0.0, "success_rate": 1.0, "success_length_mean": 44.5}},
    })
    log = StageLog(ft, {"train": TRAIN_COLUMNS, "eval": EVAL_COLUMNS}, logger)  # as fine-tuning logs
    log.attach(make_logger(logger, ft, None))
    log.start(None)
    for step in (100, 200, 300):
        log.append("train", {"env_step": step, "episode_return": step / 100, "actor_grad_norm": 1.0 / step})
        log.append("eval", {"env_step": step, "mode": "deterministic", "return_mean": 1.0, "success_rate": step / 300})
    log.flush()
    assert (ft / "train.csv").exists() == (logger == "none")
    result = build_report(ev, ft, None, tmp_path / "report", title="t")
    md = (tmp_path / "report/report.md").read_text()
    assert "| finetuned | deterministic | 4 | 1.000 |" in md
    assert "| pretrained | deterministic | 4 | 0.500 |" in md
    # the gain, first thing in the report and the last line printed
    headline = "pretrained -> fine-tuned: success 50% -> 100% (4 episodes, deterministic); steps to success 120 -> 44"
    assert md.splitlines()[2] == f"**{headline}**" and result["headline"] == headline
    # then fine-tuning's learning curve of evaluations
    curve = "evaluations during fine-tuning (success rate @ env step): 33% @ 100, 67% @ 200, 100% @ 300"
    assert md.splitlines()[4] == curve and result["curve"] == curve
    names = {Path(p).name for p in result["figures"]}
    assert names == {"eval_success_rate.png", "training.png"}
    for name in names:
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "report/summary.json").read_text())
    assert summary["finetuned_deterministic"]["success_rate"] == 1.0


PLOT_SCRIPT = str(Path(__file__).parents[1] / "bench/plot_eval_curves.py")


def _run_plot_script(monkeypatch: pytest.MonkeyPatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["plot_eval_curves.py", *argv])
    runpy.run_path(PLOT_SCRIPT, run_name="__main__")


def test_seed_band_is_mean_min_max_over_the_steps_all_seeds_logged() -> None:
    steps, mean, low, high = seed_band([{100: 1.0, 200: 4.0, 300: 9.0}, {100: 3.0, 200: 0.0}])
    assert (steps, mean, low, high) == ([100, 200], [2.0, 2.0], [1.0, 0.0], [3.0, 4.0])


def test_plot_script_draws_seeds_and_names_bad_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for seed, logger in ((0, "none"), (1, "dvclive")):  # a stage's CSV and a DVCLive log, read alike
        log = StageLog(tmp_path / f"s{seed}", {"train": TRAIN_COLUMNS}, logger)
        log.attach(make_logger(logger, tmp_path / f"s{seed}", None))
        log.start(None)
        for step in (100, 200, 300):
            log.append("train", {"env_step": step, "episode_return": step + seed})
        log.flush()
    assert (tmp_path / "s0/train.csv").is_file() and not (tmp_path / "s1/train.csv").exists()
    run_curve = runpy.run_path(PLOT_SCRIPT)["run_curve"]
    for seed in (0, 1):
        assert run_curve(tmp_path / f"s{seed}", "episode_return", "deterministic") == {100: 100.0 + seed,
                                                                                     200: 200.0 + seed,
                                                                                     300: 300.0 + seed}
    runs = f"{tmp_path}/s0,{tmp_path}/s1"
    _run_plot_script(monkeypatch, "--metric", "episode_return", "--out", str(tmp_path / "c.png"), f"Flow-T={runs}")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit, match="s0: no eval rows logged"):
        _run_plot_script(monkeypatch, "--metric", "return_mean", "--out", str(tmp_path / "d.png"), f"a={runs}")
    with pytest.raises(SystemExit, match="expected LABEL=RUN_DIR"):
        _run_plot_script(monkeypatch, "--out", str(tmp_path / "d.png"), str(tmp_path / "s0"))
