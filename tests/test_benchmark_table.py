"""Benchmark table aggregation: mean and 95 % CI over seeds from per-run evaluate metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.benchmark import gather_table, mean_ci95
from pipeline.metrics import write_json


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
