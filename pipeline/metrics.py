"""Metric files a run writes: per-step CSV tables (a stage's own log where its logger is not DVCLive,
:mod:`pipeline.run_logs`) and a JSON summary (DVC metrics).

CSV columns are fixed when the file is created, so early rows (before the first update) and later rows line up;
a resumed run drops the rows written after its checkpoint before appending, so no step is counted twice.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import torch

from pipeline.checkpoint import atomic_write


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if torch.is_tensor(value):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a metrics CSV (``[]`` if the file does not exist yet)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


class CSVLog:
    """Append-only table with a fixed header; ``step_key`` orders rows for resume truncation.

    The file appears with the first write (``reset``, ``truncate_after``, ``append``), so a process that only
    holds the object, such as a DDP rank other than 0, never touches the disk.
    """

    def __init__(self, path: str | Path, columns: list[str], step_key: str) -> None:
        self.path, self.columns, self.step_key = Path(path), columns, step_key

    def _rewrite(self, rows: list[dict[str, str]]) -> None:
        def write(f: Any) -> None:
            import io

            text = io.StringIO()
            w = csv.DictWriter(text, fieldnames=self.columns)
            w.writeheader()
            w.writerows(rows)
            f.write(text.getvalue().encode())

        atomic_write(self.path, write)

    def rows(self) -> list[dict[str, str]]:
        return read_csv_rows(self.path)

    def reset(self) -> None:
        """Start an empty table (a fresh run in a directory that holds an old one)."""
        self._rewrite([])

    def truncate_after(self, step: int) -> None:
        """Keep rows with ``step_key <= step`` (called when a run resumes from ``step``)."""
        self._rewrite([r for r in self.rows() if float(r[self.step_key]) <= step])

    def append(self, row: dict[str, Any]) -> None:
        unknown = set(row) - set(self.columns)
        if unknown:
            raise KeyError(f"{self.path}: columns {sorted(unknown)} are not in the table's header {self.columns}")
        if not self.path.exists():
            self._rewrite([])
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow({k: _plain(v) for k, v in row.items()})


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    text = json.dumps(_plain(data), indent=2, sort_keys=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode()))


def read_json(path: str | Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())


class RunningMeans:
    """Sums of scalar tensors between two log rows, kept on the device until the row is written."""

    def __init__(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v.detach().clone()
            self.counts[k] = self.counts.get(k, 0) + 1

    def state_dict(self) -> dict[str, tuple[torch.Tensor, int]]:
        """The partial sums of the current log row, so a resumed run writes the same row."""
        return {k: (v.cpu(), self.counts[k]) for k, v in self.sums.items()}

    def load_state_dict(self, state: dict[str, tuple[torch.Tensor, int]], device: torch.device) -> None:
        self.sums = {k: v.to(device) for k, (v, _) in state.items()}
        self.counts = {k: c for k, (_, c) in state.items()}

    def pop(self) -> dict[str, float]:
        out = {k: (v / self.counts[k]).item() for k, v in self.sums.items()}
        self.sums.clear()
        self.counts.clear()
        return out


# the closing share of a run's env steps whose training episodes :func:`final_training_episodes` averages
FINAL_TRAIN_WINDOW = 0.1
# where finetune/metrics.json keeps each entry of :func:`final_training_episodes`
FINAL_TRAIN_KEYS = {"return_mean": "train_return_final", "success_rate": "train_success_final",
                    "episodes": "train_episodes_final"}


def final_training_episodes(rows: list[dict[str, str]], window: float = FINAL_TRAIN_WINDOW) -> dict[str, float]:
    """Mean return and success of the training episodes that ended in the last ``window`` share of the env steps.

    ``rows``: train rows (:func:`pipeline.run_logs.read_rows`), whose ``episode_return`` averages the episodes that
    ended since the row before (their number is the rise of ``episodes``), so the mean weighs every episode once.
    It averages the policies of many updates, where an evaluation reads one checkpoint, whose return can swing
    between standing and falling from one update to the next (docs/results.md). Returns ``{"return_mean",
    "episodes"}`` and, where the env reports success, ``"success_rate"``; ``{}`` when no episode ended in the window.
    """
    if not rows:
        return {}
    start = (1.0 - window) * float(rows[-1]["env_step"])
    returns = successes = 0.0
    count, before, reports_success = 0, 0, False
    for row in rows:
        episodes = int(float(row.get("episodes") or before))  # a row without a count: no episode to weigh
        ended, before = episodes - before, episodes
        if float(row["env_step"]) > start and ended > 0 and row.get("episode_return") not in ("", None):
            returns += ended * float(row["episode_return"])
            count += ended
            if row.get("episode_success") not in ("", None):
                successes += ended * float(row["episode_success"])
                reports_success = True
    if count == 0:
        return {}
    result = {"return_mean": returns / count, "episodes": count}
    return {**result, "success_rate": successes / count} if reports_success else result


def final_training_metrics(rows: list[dict[str, str]]) -> dict[str, float]:
    """:func:`final_training_episodes` of train ``rows`` under its finetune/metrics.json names
    (:data:`FINAL_TRAIN_KEYS`)."""
    return {FINAL_TRAIN_KEYS[k]: v for k, v in final_training_episodes(rows).items()}
