"""rich progress bars for the stages (quiet in CI: ``trainer.progress = false`` or ``CI`` set)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

console = Console(stderr=True)  # progress, config trees, errors
results_console = Console()  # what a command outputs: result tables


def progress_enabled(requested: bool) -> bool:
    return requested and not os.environ.get("CI") and console.is_terminal


@contextmanager
def stage_progress(description: str, total: int, completed: int = 0, enabled: bool = True) -> Iterator[Any]:
    """Yields ``advance_to(completed, **fields)``; shows rate and ETA, and a ``status`` field after the bar."""
    if not progress_enabled(enabled):
        yield lambda completed, **fields: None
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("[cyan]{task.fields[rate]}"), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[status]}")]
    with Progress(*columns, console=console, refresh_per_second=4) as bar:
        task = bar.add_task(description, total=total, completed=completed, status="", rate="")

        def advance_to(done: int, **fields: Any) -> None:
            speed = bar.tasks[0].speed
            status = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items())
            bar.update(task, completed=done, status=status, rate=f"{speed:,.0f}/s" if speed else "")

        yield advance_to
