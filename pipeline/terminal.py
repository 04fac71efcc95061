"""What a person sees in the terminal: progress bars, the config tree, result tables, and errors as exit codes.

Progress and diagnostics go to stderr (``console``), results to stdout (``results_console``). Progress bars are off
in CI logs (``trainer.progress = false``, ``--quiet`` or ``CI`` set).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.tree import Tree

from pipeline.config import Config, ConfigError
from pipeline.preemption import StopRequested

# set (by --verbose) to let the libraries' own warnings through, in this process and in env worker processes
VERBOSE_ENV = "SACFLOW_VERBOSE"

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


def show_config(cfg: Config, data_parallel: bool = False) -> None:
    """The config as a tree on stderr; in a data-parallel run only rank 0 shows it."""
    if data_parallel:
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        # a data-parallel run re-runs the command once per rank: only rank 0 (by Lightning's reading of the
        # launcher's environment variables) shows the tree
        if rank_zero_only.rank != 0:
            return
    tree = Tree(f"[bold]config[/bold] {cfg.name}")

    def add(node: Tree, data: dict[str, Any]) -> None:
        for k, v in data.items():
            if isinstance(v, dict) and v:
                add(node.add(f"[cyan]{k}"), v)
            else:
                node.add(f"{k} = {v!r}")

    add(tree, cfg.to_dict())
    console.print(tree)


def show_metrics(title: str, metrics: dict[str, Any]) -> None:
    """A stage's metrics as a two-column table on stdout (nested keys dotted)."""
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value")

    def add(prefix: str, data: dict[str, Any]) -> None:
        for k, v in data.items():
            if isinstance(v, dict):
                add(f"{prefix}{k}.", v)
            else:
                table.add_row(prefix + k, f"{v:.4g}" if isinstance(v, float) else str(v))

    add("", metrics)
    results_console.print(table)


def quiet_libraries(verbose: bool = False) -> None:
    """Lightning's data-loader advice says nothing about an RL stage; ``verbose`` keeps it, and lets robosuite's
    warnings through (filtered in :mod:`pipeline.envs.robosuite_env`; Lightning's banners are quieted where a
    Trainer is built: :func:`pipeline.workflow.common.make_trainer`)."""
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        return
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*IterableDataset.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # OGBench's envs declare float64 bounds; Gymnasium's note on casting them says nothing a user can act on
    warnings.filterwarnings("ignore", message=".*precision lowered by casting to float32.*")
    # dm_control (under OGBench) imports glfw, which complains on a headless machine; rendering is never used
    warnings.filterwarnings("ignore", message=".*The DISPLAY environment variable is missing.*")
    # where Slurm's client tools are installed, Lightning suggests srun to every single-process run
    warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system.*")


def exit_code(command: Callable[[], Any]) -> tuple[int, Any]:
    """Run ``command``; a named user error becomes a message and exit code 2, a stop on SIGTERM code 143.

    Returns ``(exit code, the command's result or None)``.
    """
    try:
        return 0, command()
    except StopRequested as e:
        again = "resume" if e.resumable else "start over"
        console.print(f"[yellow]{escape(str(e))}[/yellow]: run the same command again to {again}")
        return 128 + 15, None
    except ConfigError as e:
        console.print(f"[red]config error:[/red] {escape(str(e))}")
        return 2, None
    except ValueError as e:  # DatasetError and friends: a named file/key and what was expected
        console.print(f"[red]error:[/red] {escape(str(e))}")
        return 2, None
