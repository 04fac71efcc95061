"""Experiment tracking through Lightning's logger interface: ``trainer.logger`` picks DVCLive (the DVC pipeline's
default), TensorBoard, Lightning's CSV logger or none.

A training stage logs each metric row it writes (``pipeline.online`` train/eval rows, ``pipeline.lightning.offline``
pretrain rows) to the logger at the run's own step: env steps online, updates offline, so curves of a resumed run
and of runs with other settings line up. The logger is flushed before every checkpoint, and a resumed run first cuts
the log back to its checkpoint's step (rows a killed run wrote after it are dropped), so the log stays one
continuous record with no step twice and none missing after a ``kill -9``. At its end a stage logs its summary
(its ``metrics.json`` entries) as ``<stage>/<key>`` (:func:`log_summary`). Which files hold a run's rows, and
reading them back: :mod:`pipeline.run_logs`.

Lightning (and the loggers) are imported when a logger is made: evaluation and collection need none of it.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.metrics import read_csv_rows

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger


@dataclass(frozen=True)
class LoggerKind:
    """One value of ``trainer.logger``: where it writes in a stage's ``out``, what it needs installed, how it is made
    (``make(log_dir, resume_step)``, ``resume_step`` None for a fresh run) and cut back on resume."""

    log_dir: str  # folder under the stage's out
    module: str  # the import that must succeed
    install: str  # how to get it, for the error when it is missing
    make: Callable[[Path, int | None], Logger]
    truncate: Callable[[Path, int], None]  # drop what was logged after a step (resume)
    # a stage's closing summary (summarize(logger, metrics, step)): where the logger keeps values without a curve
    summarize: Callable[[Logger, Mapping[str, float], int], None]


def _make_dvclive(log_dir: Path, resume_step: int | None) -> Logger:
    from dvclive.lightning import DVCLiveLogger
    from lightning.pytorch.utilities import rank_zero_only

    class StepDVCLiveLogger(DVCLiveLogger):
        """DVCLive's Lightning logger, logging every name as given at the step given. Its own ``log_metrics`` takes
        step 0 for "no step" (``if step:``; the online stage's first evaluation is at env step 0), renames keys whose
        first ``_``-part ends in train/val/test (``train/eval_share`` became ``train/eval/share``) and, unless told
        whether to sync, walks the call stack on every call."""

        @rank_zero_only
        def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
            live = self.experiment
            live.step = live.step + 1 if step is None else step
            for name, value in metrics.items():
                live.log_metric(name, value)
            live.sync()  # the summary (metrics.json) dvc exp show reads, after every row

    # dvcyaml=False: dvc.yaml declares these files itself; save_dvc_exp=False: a stage is not an experiment of its
    # own (inside `dvc exp run`, DVC saves the experiment)
    return StepDVCLiveLogger(dir=str(log_dir), resume=resume_step is not None, dvcyaml=False, save_dvc_exp=False,
                                 report=None)


def _summarize_dvclive(logger: Logger, metrics: Mapping[str, float], step: int) -> None:
    """Into DVCLive's summary (``metrics.json``, what ``dvc exp show`` lists) only: no TSV, no plot; a resumed run
    drops them with the rest of the summary it rebuilds (:func:`_truncate_dvclive`) and logs them again at its end."""
    live = logger.experiment
    for name, value in metrics.items():
        live.log_metric(name, value, plot=False)
    live.sync()


def _truncate_dvclive(log_dir: Path, step: int) -> None:
    """Keep the rows of every ``plots/metrics/**.tsv`` with ``step <= step`` and rebuild ``metrics.json`` (the
    summary dvclive resumes from) from the last row kept of each metric."""
    from dvclive.serialize import dump_json
    from dvclive.utils import parse_tsv

    summary: dict[str, Any] = {}
    metrics_dir = log_dir / "plots" / "metrics"
    for path in sorted(metrics_dir.rglob("*.tsv")) if metrics_dir.exists() else []:
        name = path.relative_to(metrics_dir).with_suffix("").as_posix()
        leaf = path.stem
        # a row cut short by a kill has no value (or a partial one that does not parse): dropped with the rest
        rows = [r for r in parse_tsv(str(path)) if r.get("step") not in (None, "") and r.get(leaf) not in (None, "")
                and int(r["step"]) <= step]
        _rewrite_tsv(path, ["step", leaf], rows)
        if rows:
            node = summary
            *parents, last = name.split("/")
            for p in parents:
                node = node.setdefault(p, {})
            node[last] = _number(rows[-1][leaf])
    summary["step"] = step
    dump_json(summary, str(log_dir / "metrics.json"))


def _number(text: str) -> float | int | str:
    try:
        value = float(text)
    except ValueError:
        return text
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _rewrite_tsv(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    tmp = path.with_suffix(".tsv.tmp")
    with tmp.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, columns, delimiter="\t", lineterminator=os.linesep, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def _make_tensorboard(log_dir: Path, resume_step: int | None) -> Logger:
    from lightning.pytorch.loggers import TensorBoardLogger

    # purge_step: TensorBoard itself hides the events a killed run wrote at or after it
    purge = {} if resume_step is None else {"purge_step": resume_step + 1}
    return TensorBoardLogger(save_dir=str(log_dir.parent), name=log_dir.name, version="", default_hp_metric=False,
                             **purge)


def _summarize_at_step(logger: Logger, metrics: Mapping[str, float], step: int) -> None:
    """As scalars at the run's last step (TensorBoard has no values without a step)."""
    logger.log_metrics(dict(metrics), step=step)
    logger.save()


def _truncate_nothing(log_dir: Path, step: int) -> None:
    """TensorBoard drops the later events itself (``purge_step``)."""


def _make_csv(log_dir: Path, resume_step: int | None) -> Logger:
    from lightning.pytorch.loggers import CSVLogger

    # Lightning's CSV writer deletes metrics.csv when it starts: a resumed run hands it the rows kept (already cut
    # back to the checkpoint) and writes them again at once
    kept = read_csv_rows(log_dir / "metrics.csv")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Experiment logs directory")
        logger = CSVLogger(save_dir=str(log_dir.parent), name=log_dir.name, version="")
        writer = logger.experiment  # made here, where its warning is filtered
    if kept:
        writer.metrics = [{k: v for k, v in row.items() if v not in ("", None)} for row in kept]
        writer.save()
    return logger


def _summarize_csv(logger: Logger, metrics: Mapping[str, float], step: int) -> None:
    """Into ``hparams.yaml`` under ``summary``: Lightning's CSV logger keeps values without a step there (a row of
    metrics.csv at the last step would be written again by a rerun of the finished stage)."""
    logger.log_hyperparams({"summary": dict(metrics)})
    logger.save()


def _truncate_csv(log_dir: Path, step: int) -> None:
    path = log_dir / "metrics.csv"
    if not path.exists():
        return
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        columns, rows = reader.fieldnames or [], [r for r in reader if r.get("step") and int(r["step"]) <= step]
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


LOGGERS: dict[str, LoggerKind] = {
    "dvclive": LoggerKind("dvclive", "dvclive", "pip install dvclive==3.49.1 (a default dependency of sacflow)",
                          _make_dvclive, _truncate_dvclive, _summarize_dvclive),
    "tensorboard": LoggerKind("tensorboard", "tensorboard", "pip install 'sacflow[tensorboard]'",
                              _make_tensorboard, _truncate_nothing, _summarize_at_step),
    "csv": LoggerKind("lightning_csv", "lightning", "pip install lightning", _make_csv, _truncate_csv,
                      _summarize_csv),
}
NO_LOGGER = "none"


def missing_package(kind: str) -> str | None:
    """Why logger ``kind`` cannot be made here (its package is not installed, and how to install it), else None."""
    if kind == NO_LOGGER:
        return None
    spec = LOGGERS[kind]
    if importlib.util.find_spec(spec.module) is None:
        return f"the package {spec.module!r} is not installed ({spec.install})"
    return None


def log_dir_of(kind: str, out: str | Path) -> Path | None:
    """Where ``kind`` logs in a stage's ``out`` (None for ``none``)."""
    return None if kind == NO_LOGGER else Path(out) / LOGGERS[kind].log_dir


def make_logger(kind: str, out: str | Path, resume_step: int | None) -> Logger | None:
    """The Lightning logger of a stage writing into ``out``; ``resume_step``: the checkpoint's step when the stage
    resumes (the log is cut back to it first), None for a fresh run (an old log in ``out`` is removed)."""
    problem = missing_package(kind)
    if problem is not None:
        raise ModuleNotFoundError(f"logger {kind!r}: {problem}")
    log_dir = log_dir_of(kind, out)
    if log_dir is None:
        return None
    spec = LOGGERS[kind]
    if resume_step is None:
        shutil.rmtree(log_dir, ignore_errors=True)
    else:
        spec.truncate(log_dir, resume_step)
    log_dir.mkdir(parents=True, exist_ok=True)
    return spec.make(log_dir, resume_step)


class MetricLog:
    """A stage's metric rows to a Lightning logger (or nowhere when ``logger`` is None).

    ``log("train", row, step)`` logs every numeric entry of ``row`` as ``train/<key>`` at ``step``; strings (an
    evaluation's ``mode``), ``None`` (an entry with nothing to report yet) and the step column are left out.
    """

    def __init__(self, logger: Logger | None, step_key: str) -> None:
        self.logger, self.step_key = logger, step_key

    def log(self, prefix: str, row: Mapping[str, Any], step: int) -> None:
        if self.logger is None:
            return
        # non-finite values left out as the CSV logs leave them empty; counts stay integers, so a log read back
        # holds the same text as the CSV (pipeline.run_logs)
        metrics = {f"{prefix}/{k}": v if isinstance(v, int) else float(v) for k, v in finite_numbers(row).items()
                   if k != self.step_key}
        if metrics:
            self.logger.log_metrics(metrics, step=step)

    def flush(self) -> None:
        """Put everything logged so far on disk (before a checkpoint: a resumed run continues from there)."""
        if self.logger is not None:
            self.logger.save()


def finite_numbers(entries: Mapping[str, Any]) -> dict[str, int | float]:
    """The entries a logger can take: finite numbers (text, flags, ``None`` and non-finite values left out)."""
    return {k: v for k, v in entries.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def log_summary(kind: str, logger: Logger | None, prefix: str, metrics: Mapping[str, Any], step: int) -> None:
    """A stage's closing summary (its ``metrics.json`` entries, :func:`finite_numbers`) to the ``kind`` logger
    ``logger`` as ``<prefix>/<key>``, where that logger keeps values without a curve (``LoggerKind.summarize``:
    DVCLive's summary, so ``dvc exp show`` lists them); ``step``: the run's last step. Nothing without a logger."""
    if logger is None or kind == NO_LOGGER:
        return
    LOGGERS[kind].summarize(logger, {f"{prefix}/{k}": v for k, v in finite_numbers(metrics).items()}, step)


def read_metric(log_dir: str | Path, name: str) -> list[tuple[int, float]]:
    """``(step, value)`` rows of metric ``name`` (e.g. ``train/episode_return``) that DVCLive wrote in ``log_dir``."""
    path = Path(log_dir) / "plots" / "metrics" / f"{name}.tsv"
    if not path.exists():
        return []
    leaf = path.stem
    with path.open(newline="") as f:
        return [(int(r["step"]), float(r[leaf])) for r in csv.DictReader(f, delimiter="\t")]


def read_summary(log_dir: str | Path) -> dict[str, Any]:
    """DVCLive's summary (the latest value of every metric) in ``log_dir``; ``{}`` when there is none."""
    path = Path(log_dir) / "metrics.json"
    return json.loads(path.read_text()) if path.exists() else {}
