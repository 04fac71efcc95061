"""Benchmark table aggregation (mean and 95 % CI over seeds) and the DVC queue's experiment grid."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.experiments.tables import TRAINING_MODE, config_label, gather_table, mean_ci95, table_rows
from pipeline.cli import main
from pipeline.config import ConfigError, load_config, save_config
from pipeline.experiments.queue import grid_params
from pipeline.metrics import CSVLog, final_training_episodes, write_json
from pipeline.online import EVAL_COLUMNS, TRAIN_COLUMNS


def test_mean_ci95_matches_a_hand_computation() -> None:
    mean, half = mean_ci95([0.5, 0.7, 0.9])
    assert mean == pytest.approx(0.7)
    assert half == pytest.approx(4.303 * 0.2 / 3 ** 0.5)  # t(0.975, 2) * s / sqrt(n), s = 0.2
    assert mean_ci95([0.4]) == (0.4, 0.0)


def test_gather_table_groups_runs_by_preset(tmp_path: Path) -> None:
    for preset, seed, success in [("lift", 0, 0.5), ("lift", 1, 0.7), ("lift", 2, 0.9), ("can", 0, 0.2)]:
        write_json(tmp_path / f"runs/{preset}-s{seed}/evaluate/metrics.json", {
            "finetuned": {"deterministic": {"episodes": 10, "return_mean": success, "success_rate": success}}})
    rows = gather_table(tmp_path / "runs", tmp_path / "out/table.md")
    by_preset = {r["preset"]: r for r in rows}
    assert by_preset["lift"]["seeds"] == 3 and by_preset["lift"]["success_rate"] == pytest.approx(0.7)
    assert by_preset["can"]["success_rate_ci95"] == 0.0
    assert "| lift | finetuned | deterministic | 3 | 0.700 ± 0.497 |" in (tmp_path / "out/table.md").read_text()


def test_table_rows_keep_configurations_of_one_preset_apart() -> None:
    result = {"finetuned": {"deterministic": {"return_mean": 1.0, "success_rate": 1.0}}}
    label = config_label("smoke", {"policy": {"kind": "flow_g"}, "sac": {"bc_weight": 0}})
    assert label == "smoke (policy.kind=flow_g, sac.bc_weight=0)" and config_label("smoke", {}) == "smoke"
    rows = table_rows([("smoke", result), (label, result), (label, result)])
    assert [(r["preset"], r["seeds"]) for r in rows] == [("smoke", 1), (label, 2)]


def test_grid_params_sweep_presets_and_seeds_and_quote_override_values() -> None:
    sets = grid_params(["smoke", "default"], [0, 1, 2], ["policy.kind=flow_g", "collect.noise_levels=[0.0, 0.3]"])
    assert sets == ['bench/queue/params.yaml:preset="smoke","default"', "bench/queue/params.yaml:seed=0,1,2",
                    'bench/queue/params.yaml:++config.policy.kind="flow_g"',
                    "bench/queue/params.yaml:++config.collect.noise_levels=[0.0,0.3]"]
    # bad input fails before anything is queued, naming the key or the preset
    with pytest.raises(ConfigError, match="sac.batchsize"):
        grid_params(["smoke"], [0], ["sac.batchsize=3"])
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        grid_params(["smoke", "nope"], [0])
    with pytest.raises(ConfigError, match="must not repeat"):
        grid_params(["smoke"], [0, 0])


def test_table_gather_shows_whole_names_and_no_empty_success_column(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    preset = "walker2d_scratch_gaussian_with_a_long_name"
    for seed, ret in [(0, 488.26), (1, 470.0)]:
        write_json(tmp_path / f"runs/{preset}-s{seed}/evaluate/metrics.json",
                   {"finetuned": {"deterministic": {"episodes": 10, "return_mean": ret}}})
    assert main(["table", "gather", "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "t.md")]) == 0
    shown = capsys.readouterr().out
    assert "…" not in shown and "success rate" not in shown and "479.1 ± " in shown
    assert f"| {preset} | finetuned | deterministic | 2 |  | 479.1 ± 116.0 |" in (tmp_path / "t.md").read_text()


def test_gather_table_draws_each_envs_learning_curves_over_seeds(tmp_path: Path) -> None:
    cfg = load_config("smoke")
    for seed in (0, 1):
        run = tmp_path / f"runs/smoke-s{seed}"
        write_json(run / "evaluate/metrics.json", {"finetuned": {"deterministic": {"episodes": 2, "return_mean": 1.0,
                                                                                   "success_rate": 0.5}}})
        (run / "finetune").mkdir()
        save_config(cfg, run / "finetune/config.yaml")
        train = CSVLog(run / "finetune/train.csv", TRAIN_COLUMNS, "env_step")
        evals = CSVLog(run / "finetune/eval.csv", EVAL_COLUMNS, "env_step")
        for step in (100, 200):
            train.append({"env_step": step, "episode_return": step + seed})
            evals.append({"env_step": step, "mode": "deterministic", "return_mean": 1.0, "success_rate": seed})
    gather_table(tmp_path / "runs", tmp_path / "out/table.md")
    png = f"curves_{cfg.finetune.env_id.replace('/', '_')}.png"
    assert (tmp_path / "out" / png).read_bytes()[:4] == b"\x89PNG"
    assert f"({png})" in (tmp_path / "out/table.md").read_text()


def test_final_training_episodes_weigh_each_episode_once() -> None:
    # rows every 1000 steps: the cumulative episode count and the mean return of the episodes since the row before
    rows = [{"env_step": str(step), "episodes": str(eps), "episode_return": ret, "episode_success": succ}
            for step, eps, ret, succ in [(1000, 5, "10", "0"), (8000, 9, "20", "0"), (9000, 12, "30", "1"),
                                         (9500, 12, "", ""), (10000, 13, "70", "0")]]
    # the last 10 % is (9000, 10000]: one episode at 70; the last 20 % adds the three at 30 (and their successes)
    assert final_training_episodes(rows) == {"return_mean": 70.0, "success_rate": 0.0, "episodes": 1}
    no_success = [{**row, "episode_success": ""} for row in rows]  # an env that reports none (locomotion)
    assert final_training_episodes(no_success) == {"return_mean": 70.0, "episodes": 1}
    window = final_training_episodes(rows, window=0.2)
    assert window["episodes"] == 4 and window["return_mean"] == pytest.approx((3 * 30 + 70) / 4)
    assert window["success_rate"] == pytest.approx(3 / 4)
    assert final_training_episodes(rows[:4], window=0.01) == {} and final_training_episodes([]) == {}


def test_gather_table_adds_the_training_episodes_of_each_run(tmp_path: Path) -> None:
    for seed in (0, 1):
        write_json(tmp_path / f"runs/hopper-s{seed}/evaluate/metrics.json",
                   {"finetuned": {"deterministic": {"episodes": 10, "return_mean": 1000.0}}})
    write_json(tmp_path / "runs/hopper-s0/finetune/metrics.json", {"train_return_final": 300.0,
                                                                   "train_episodes_final": 3})
    # a run from before finetune/metrics.json had the entry: read from its train.csv
    train = CSVLog(tmp_path / "runs/hopper-s1/finetune/train.csv", TRAIN_COLUMNS, "env_step")
    train.append({"env_step": 500, "episodes": 1, "episode_return": 20.0})
    train.append({"env_step": 1000, "episodes": 3, "episode_return": 500.0})
    rows = {r["mode"]: r for r in gather_table(tmp_path / "runs", tmp_path / "table.md")}
    assert rows[TRAINING_MODE]["return_mean"] == pytest.approx(400.0) and rows[TRAINING_MODE]["seeds"] == 2
    assert "success_rate" not in rows[TRAINING_MODE] and rows["deterministic"]["return_mean"] == 1000.0
    text = (tmp_path / "table.md").read_text()
    assert f"| hopper | finetuned | {TRAINING_MODE} | 2 |  | 400.0 ± 1270.6 |" in text and "last 10%" in text
