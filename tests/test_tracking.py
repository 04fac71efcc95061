"""trainer.logger: the Lightning loggers a training stage logs its metric rows to, and how each is cut back to a
checkpoint's step when a killed run resumes (the loggers are the real libraries, writing real files)."""

from __future__ import annotations

import csv
import dataclasses
import typing
from pathlib import Path

import pytest
import yaml

from pipeline import tracking
from pipeline.config import ConfigError, TrackingLogger, load_config
from pipeline.tracking import LOGGERS, NO_LOGGER, MetricLog, log_summary, make_logger, read_metric, read_summary
from pipeline.workflow.common import check_logger


def test_the_config_offers_exactly_the_loggers_the_table_makes() -> None:
    assert set(typing.get_args(TrackingLogger)) == {*LOGGERS, NO_LOGGER}


def test_an_unknown_logger_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match="trainer.logger"):
        load_config("smoke", ["trainer.logger=wandb"])


def test_a_logger_whose_package_is_missing_names_the_key_and_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    missing = dataclasses.replace(LOGGERS["tensorboard"], module="sacflow_no_such_package")
    monkeypatch.setitem(LOGGERS, "tensorboard", missing)
    cfg = load_config("smoke", ["trainer.logger=tensorboard"])
    with pytest.raises(ConfigError, match=r"trainer.logger.*'sacflow_no_such_package' is not installed.*"
                                          r"sacflow\[tensorboard\]"):
        check_logger(cfg)


def _log(logger: typing.Any, steps: range) -> None:
    log = MetricLog(logger, "step")
    for step in steps:
        log.log("train", {"step": step, "loss": 10.0 - step, "mode": "deterministic", "unset": None}, step)
    log.flush()


def test_dvclive_resume_drops_the_rows_after_the_checkpoint_and_continues(tmp_path: Path) -> None:
    _log(make_logger("dvclive", tmp_path, None), range(0, 6))
    tsv = tmp_path / "dvclive" / "plots" / "metrics" / "train" / "loss.tsv"
    with tsv.open("a") as f:  # a row the kill cut in half
        f.write("6\t")
    assert read_summary(tmp_path / "dvclive")["train"]["loss"] == 5.0
    logger = make_logger("dvclive", tmp_path, resume_step=3)  # the checkpoint was at step 3
    assert read_metric(tmp_path / "dvclive", "train/loss") == [(s, 10.0 - s) for s in range(4)]
    assert read_summary(tmp_path / "dvclive") == {"train": {"loss": 7.0}, "step": 3}
    _log(logger, range(4, 8))
    assert read_metric(tmp_path / "dvclive", "train/loss") == [(s, 10.0 - s) for s in range(8)]
    assert read_summary(tmp_path / "dvclive")["train"]["loss"] == 3.0
    assert not (tmp_path / "dvclive" / "plots" / "metrics" / "train" / "mode.tsv").exists()


def test_a_fresh_run_clears_an_old_log(tmp_path: Path) -> None:
    _log(make_logger("dvclive", tmp_path, None), range(0, 6))
    _log(make_logger("dvclive", tmp_path, None), range(0, 2))
    assert [s for s, _ in read_metric(tmp_path / "dvclive", "train/loss")] == [0, 1]


def test_lightning_csv_resume_keeps_one_row_per_step(tmp_path: Path) -> None:
    _log(make_logger("csv", tmp_path, None), range(0, 6))
    _log(make_logger("csv", tmp_path, resume_step=3), range(4, 8))
    with (tmp_path / "lightning_csv" / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(8))
    assert [float(r["train/loss"]) for r in rows] == [10.0 - s for s in range(8)]


def test_tensorboard_resume_purges_the_events_after_the_checkpoint(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is the optional extra sacflow[tensorboard]")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    first = make_logger("tensorboard", tmp_path, None)
    _log(first, range(0, 6))
    first.experiment.close()
    _log(make_logger("tensorboard", tmp_path, resume_step=3), range(4, 8))
    events = EventAccumulator(str(tmp_path / "tensorboard"), purge_orphaned_data=True)
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(s, 10.0 - s) for s in range(8)]


def test_no_logger_logs_nothing(tmp_path: Path) -> None:
    assert make_logger("none", tmp_path, None) is None
    _log(None, range(3))
    assert list(tmp_path.iterdir()) == []


def test_every_kind_is_installed_or_says_how(tmp_path: Path) -> None:
    for kind in LOGGERS:
        problem = tracking.missing_package(kind)
        assert problem is None or LOGGERS[kind].install in problem


def test_a_stage_summary_goes_where_each_logger_keeps_values_without_a_curve(tmp_path: Path) -> None:
    summary = {"stage": "finetune", "env_steps": 400, "seconds": 12.5, "from_pretrained": True,
               "eval_deterministic_return_mean": float("nan")}
    kept = {"finetune/env_steps": 400, "finetune/seconds": 12.5}  # text, flags and non-finite values left out
    logger = make_logger("dvclive", tmp_path, None)
    _log(logger, range(0, 4))
    log_summary("dvclive", logger, "finetune", summary, 3)
    assert read_summary(tmp_path / "dvclive") == {"train": {"loss": 7.0}, "finetune": {"env_steps": 400,
                                                                                     "seconds": 12.5}, "step": 3}
    assert sorted(p.name for p in (tmp_path / "dvclive").rglob("*.tsv")) == ["loss.tsv"]  # no curve of them
    make_logger("dvclive", tmp_path, resume_step=2)  # a resumed run logs its summary again at its end
    assert "finetune" not in read_summary(tmp_path / "dvclive")

    csv_logger = make_logger("csv", tmp_path, None)
    _log(csv_logger, range(0, 2))
    log_summary("csv", csv_logger, "finetune", summary, 1)
    hparams = yaml.safe_load((tmp_path / "lightning_csv" / "hparams.yaml").read_text())
    assert hparams == {"summary": kept}
    log_summary("none", None, "finetune", summary, 1)  # no logger: nothing, no error


def test_tensorboard_takes_a_stage_summary_as_scalars_at_the_last_step(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="tensorboard is the optional extra sacflow[tensorboard]")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = make_logger("tensorboard", tmp_path, None)
    _log(logger, range(0, 3))
    log_summary("tensorboard", logger, "pretrain", {"seconds": 4.0, "stage": "pretrain"}, 2)
    logger.experiment.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("pretrain/seconds")] == [(2, 4.0)]
    assert "pretrain/stage" not in events.Tags()["scalars"]
