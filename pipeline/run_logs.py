"""Where a training stage's logged rows are, and how to read them back: the one place the report, the benchmark
tables and the bench/ scripts get a run's train, eval and pretrain rows from.

A training stage logs each row once per logger: to ``trainer.logger`` (:mod:`pipeline.tracking`) and, unless that
logger is DVCLive, to its own CSV in the stage's folder (``train.csv``, ``eval.csv``, ``pretrain.csv``). With
DVCLive its files are the record and the stage writes no CSV: one TSV per metric,
``dvclive/plots/metrics/<table>/<column>.tsv`` (evaluations: ``eval/<mode>/<column>.tsv``), each a ``step``
column (the run's own step: env steps online, updates offline) and the value. :func:`read_rows` reads either
back as the same rows, so a consumer never asks which logger a run used.

A stage removes its CSVs when it logs to DVCLive, fresh or resumed, so a CSV in a stage's folder is always that
run's record; without one, the DVCLive log is.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.metrics import CSVLog, read_csv_rows
from pipeline.tracking import LOGGERS, MetricLog

if TYPE_CHECKING:
    from lightning.pytorch.loggers import Logger

# the trainer.logger whose files are a run's record (a key of pipeline.tracking.LOGGERS): the stages keep no CSV
# beside it, and read_rows reads its TSVs
RECORD_LOGGER = "dvclive"


@dataclass(frozen=True)
class LogTable:
    """One table a training stage logs: its rows' CSV and how they are named as metrics."""

    csv: str  # the stage's own CSV in its folder (loggers other than RECORD_LOGGER)
    step_key: str  # the column holding the run's step (DVCLive's step column)
    # a text column whose value is part of each metric's name instead of a metric (eval: mode, eval/<mode>/<column>)
    name_key: str | None = None


TABLES: dict[str, LogTable] = {
    "train": LogTable("train.csv", "env_step"),  # fine-tuning, every finetune.log_every env steps
    "eval": LogTable("eval.csv", "env_step", name_key="mode"),  # fine-tuning's evaluations, one row per mode
    "pretrain": LogTable("pretrain.csv", "step"),  # pretraining, every pretrain.log_every updates
}


def metric_prefix(table: str, row: Mapping[str, Any]) -> str:
    """The name a row's metrics are logged under: ``<table>`` or, for a table with a ``name_key``,
    ``<table>/<value>`` (``eval/deterministic``)."""
    key = TABLES[table].name_key
    return table if key is None else f"{table}/{row[key]}"


def keeps_csv(logger_kind: str) -> bool:
    """Whether a stage logging to ``logger_kind`` writes its own CSVs (every logger but :data:`RECORD_LOGGER`)."""
    return logger_kind != RECORD_LOGGER


def record_of(run_dir: str | Path, table: str) -> Path:
    """The file or folder that holds ``table``'s rows of the stage in ``run_dir`` (which may not exist yet): its
    CSV if there is one, else the folder of DVCLive's TSVs."""
    spec = TABLES[_known(table)]
    own = Path(run_dir) / spec.csv
    if own.is_file():
        return own
    return Path(run_dir) / LOGGERS[RECORD_LOGGER].log_dir / "plots" / "metrics" / table


def read_rows(run_dir: str | Path, table: str) -> list[dict[str, str]]:
    """The rows the stage in ``run_dir`` logged in ``table`` (``train``, ``eval`` or ``pretrain``), ``[]`` if none.

    Each row is ``{column: text}`` holding its filled cells only (a value not logged at that step, such as the
    return before the first episode ends, is absent), the step under the table's ``step_key`` (``env_step`` or
    ``step``) and eval's ``mode``; rows are in step order (eval: then mode). Read from the stage's CSV where it
    keeps one, else from DVCLive's TSVs, as the same text either way.
    """
    path = record_of(run_dir, table)
    if path.suffix == ".csv":
        return [{k: v for k, v in row.items() if v not in ("", None)} for row in read_csv_rows(path)]
    return _dvclive_rows(path, TABLES[table])


def _dvclive_rows(folder: Path, spec: LogTable) -> list[dict[str, str]]:
    """Rows merged from the TSVs under ``folder`` by step (and by ``name_key``: one subfolder per value)."""
    if not folder.is_dir():
        return []
    groups = [(None, folder)] if spec.name_key is None else [(d.name, d) for d in sorted(folder.iterdir())
                                                             if d.is_dir()]
    rows: dict[tuple[int, str], dict[str, str]] = {}
    for name, group in groups:
        for tsv in sorted(group.glob("*.tsv")):
            column = tsv.stem
            with tsv.open(newline="", encoding="utf-8") as f:
                for r in csv.DictReader(f, delimiter="\t"):
                    # a row a kill cut short (no step or no value yet) is not a logged row
                    if r.get("step") in (None, "") or r.get(column) in (None, ""):
                        continue
                    row = rows.setdefault((int(r["step"]), name or ""), {spec.step_key: r["step"]})
                    if spec.name_key is not None:
                        row[spec.name_key] = name
                    row[column] = r[column]
    return [rows[k] for k in sorted(rows)]


def _known(table: str) -> str:
    if table not in TABLES:
        raise ValueError(f"log table {table!r}: expected one of {sorted(TABLES)}")
    return table


class StageLog:
    """What a training stage logs: rows of its ``tables`` (name -> the CSV's columns) to the stage's logger and,
    where :func:`keeps_csv`, to each table's own CSV.

    :meth:`start` prepares the files before the first row (``resume_step``: cut back to a checkpoint's step);
    until then, and in a process that never starts it (a DDP rank other than 0), nothing touches the disk.
    """

    def __init__(self, run_dir: str | Path, tables: Mapping[str, Sequence[str]], logger_kind: str) -> None:
        step_keys = {TABLES[_known(t)].step_key for t in tables}
        if len(step_keys) != 1:
            raise ValueError(f"the tables {sorted(tables)} of one stage log at different steps {sorted(step_keys)}")
        self.run_dir, self.step_key, self.logger_kind = Path(run_dir), step_keys.pop(), logger_kind
        self.csvs = {t: CSVLog(self.run_dir / TABLES[t].csv, list(columns), TABLES[t].step_key)
                     for t, columns in tables.items()} if keeps_csv(logger_kind) else {}
        self.stale = [self.run_dir / TABLES[t].csv for t in tables] if not self.csvs else []
        self.metrics = MetricLog(None, self.step_key)

    def attach(self, logger: Logger | None) -> None:
        """Log to ``logger`` (the Trainer's, :func:`pipeline.tracking.make_logger`; None: to no logger)."""
        self.metrics = MetricLog(logger, self.step_key)

    def start(self, resume_step: int | None) -> None:
        """Before the first row: a fresh run (``resume_step`` None) starts empty CSVs, a resumed one keeps the rows
        up to ``resume_step``. A stage without CSVs removes any an earlier run left (they would read as its record).
        The logger's own files are cut back when it is made (:func:`pipeline.tracking.make_logger`)."""
        for path in self.stale:
            path.unlink(missing_ok=True)
        for log in self.csvs.values():
            if resume_step is None:
                log.reset()
            else:
                log.truncate_after(resume_step)

    def append(self, table: str, row: Mapping[str, Any]) -> None:
        """One row of ``table`` (its step under the table's ``step_key``) to the logger and the table's CSV."""
        if table in self.csvs:
            self.csvs[table].append(dict(row))
        self.metrics.log(metric_prefix(table, row), row, int(row[self.step_key]))

    def flush(self) -> None:
        """Put every row logged so far on disk (before a checkpoint: a resumed run continues from there)."""
        self.metrics.flush()

    def rows(self, table: str) -> list[dict[str, str]]:
        """What :func:`read_rows` reads of ``table`` (call :meth:`flush` first)."""
        return read_rows(self.run_dir, table)
