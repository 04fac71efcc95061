"""The ``report`` stage: runs/report/report.md with the results table and the learning curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.report import build_report
from pipeline.terminal import console
from pipeline.workflow import Input, Stage


def report(cfg: Config, out_dir: str | Path, evaluate_dir: str | Path, finetune_dir: str | Path,
           pretrain_dir: str | Path | None) -> dict[str, Any]:
    """``report.md`` and its figures in ``out_dir`` from the evaluate, finetune and pretrain stages' folders. The
    results table and the before -> after line are the last things printed (no metrics table after them)."""
    console.print(f"writing the report to {Path(out_dir) / 'report.md'}")
    build_report(evaluate_dir, finetune_dir, pretrain_dir, out_dir, title=f"sacflow: {cfg.name}")
    return {}


STAGE = Stage(
    name="report", help="markdown report with results table and learning curves", sections=(), run=report,
    inputs=tuple(Input(f"{name}_dir", f"--{name}", f"{name} stage output directory", dvc=(f"runs/{name}",),
                       default=f"runs/{name}") for name in ("evaluate", "finetune", "pretrain")),
    in_run=lambda cfg: False,  # a benchmark run's results go into its table (pipeline.experiments), not a report
    show_config=False,
)
