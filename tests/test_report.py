"""The report stage: table rows from the evaluate metrics, PNG curves from the CSV logs."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.metrics import CSVLog, write_json
from pipeline.online import EVAL_COLUMNS, TRAIN_COLUMNS
from pipeline.report import build_report


def test_report_has_table_rows_and_figures(tmp_path: Path) -> None:
    ev, ft = tmp_path / "evaluate", tmp_path / "finetune"
    write_json(ev / "metrics.json", {
        "pretrained": {"deterministic": {"mode": "deterministic", "episodes": 4, "return_mean": 0.5,
                                         "return_std": 0.5, "success_rate": 0.5}},
        "finetuned": {"deterministic": {"mode": "deterministic", "episodes": 4, "return_mean": 1.0,
                                        "return_std": 0.0, "success_rate": 1.0}},
    })
    train = CSVLog(ft / "train.csv", TRAIN_COLUMNS, "env_step")
    evals = CSVLog(ft / "eval.csv", EVAL_COLUMNS, "env_step")
    for step in (100, 200, 300):
        train.append({"env_step": step, "episode_return": step / 100, "actor_grad_norm": 1.0 / step})
        evals.append({"env_step": step, "mode": "deterministic", "return_mean": 1.0, "success_rate": step / 300})
    result = build_report(ev, ft, None, tmp_path / "report", title="t")
    md = (tmp_path / "report/report.md").read_text()
    assert "| finetuned | deterministic | 4 | 1.000 |" in md
    assert "| pretrained | deterministic | 4 | 0.500 |" in md
    names = {Path(p).name for p in result["figures"]}
    assert names == {"eval_success_rate.png", "training.png"}
    for name in names:
        assert (tmp_path / "report" / name).read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "report/summary.json").read_text())
    assert summary["finetuned_deterministic"]["success_rate"] == 1.0
