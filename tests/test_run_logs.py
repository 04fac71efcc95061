"""pipeline.run_logs: a stage's rows go to DVCLive alone or to its own CSV (with any other logger), and read back as
the same rows either way (the real DVCLive logger writing real files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.online import EVAL_COLUMNS, TRAIN_COLUMNS
from pipeline.run_logs import RECORD_LOGGER, TABLES, StageLog, read_rows, record_of
from pipeline.tracking import LOGGERS, make_logger


def _log_fine_tuning(run: Path, kind: str, steps: range, resume_step: int | None = None) -> StageLog:
    """Train rows (an int count, floats, a value not logged yet, a non-finite one) and two eval modes per step."""
    log = StageLog(run, {"train": TRAIN_COLUMNS, "eval": EVAL_COLUMNS}, kind)
    log.attach(make_logger(kind, run, resume_step))
    log.start(resume_step)
    for step in steps:
        log.append("train", {"env_step": step, "episodes": step // 20, "alpha": 0.1 / (step + 1),
                             "episode_return": None if step < 20 else step / 3, "critic_loss": float("nan")})
        for mode in ("deterministic", "stochastic"):
            log.append("eval", {"env_step": step, "mode": mode, "return_mean": step + 0.25, "episodes": 4})
    log.flush()
    return log


def test_the_record_logger_is_a_logger_and_every_table_names_its_step() -> None:
    assert RECORD_LOGGER in LOGGERS
    assert {t.step_key for t in TABLES.values()} == {"env_step", "step"}


def test_the_dvc_pipeline_refuses_a_logger_whose_files_dvc_yaml_does_not_read() -> None:
    """dvc.yaml's metrics, plots and report read DVCLive's files: params.yaml with another logger stops at collect."""
    from pipeline.config import ConfigError, load_params
    from pipeline.workflow.collect import check_pipeline

    check_pipeline(load_params("params.yaml"))
    with pytest.raises(ConfigError, match="'trainer.logger' = 'tensorboard': the DVC pipeline needs 'dvclive'"):
        check_pipeline(load_params("params.yaml", ["trainer.logger=tensorboard"]))


@pytest.mark.parametrize("other", ["none", "csv"])
def test_dvclive_rows_read_back_as_the_csv_rows_of_another_logger(tmp_path: Path, other: str) -> None:
    dvc, own = tmp_path / "dvclive_run", tmp_path / f"{other}_run"
    _log_fine_tuning(dvc, "dvclive", range(0, 60, 10))
    _log_fine_tuning(own, other, range(0, 60, 10))
    assert not list(dvc.glob("*.csv")) and (own / "train.csv").is_file() and (own / "eval.csv").is_file()
    assert record_of(dvc, "train") == dvc / "dvclive/plots/metrics/train" and record_of(own, "train").suffix == ".csv"
    for table in ("train", "eval"):
        assert read_rows(dvc, table) == read_rows(own, table), table
    train = read_rows(dvc, "train")
    assert [r["env_step"] for r in train] == ["0", "10", "20", "30", "40", "50"]
    assert train[0] == {"env_step": "0", "episodes": "0", "alpha": "0.1"}  # no return yet, the NaN left out
    assert train[2]["episode_return"] == repr(20 / 3) and train[5]["episodes"] == "2"
    evals = read_rows(dvc, "eval")
    assert [(r["env_step"], r["mode"]) for r in evals[:3]] == [("0", "deterministic"), ("0", "stochastic"),
                                                               ("10", "deterministic")]
    assert evals[0] == {"env_step": "0", "mode": "deterministic", "return_mean": "0.25", "episodes": "4"}


def test_a_resumed_dvclive_log_reads_as_one_run_and_a_cut_row_is_not_read(tmp_path: Path) -> None:
    _log_fine_tuning(tmp_path, "dvclive", range(0, 60, 10))
    tsv = tmp_path / "dvclive/plots/metrics/train/alpha.tsv"
    with tsv.open("a") as f:  # a row the kill cut in half
        f.write("60\t")
    assert [r["env_step"] for r in read_rows(tmp_path, "train")] == ["0", "10", "20", "30", "40", "50"]
    _log_fine_tuning(tmp_path, "dvclive", range(40, 80, 10), resume_step=30)  # the checkpoint was at step 30
    straight = tmp_path / "straight"
    _log_fine_tuning(straight, "dvclive", range(0, 80, 10))
    for table in ("train", "eval"):
        assert read_rows(tmp_path, table) == read_rows(straight, table), table


def test_a_stage_logging_to_dvclive_removes_a_csv_an_earlier_run_left(tmp_path: Path) -> None:
    _log_fine_tuning(tmp_path, "none", range(0, 30, 10))
    assert read_rows(tmp_path, "train")[-1]["env_step"] == "20"  # the CSV is the record while it is there
    _log_fine_tuning(tmp_path, "dvclive", range(0, 50, 10))
    assert not (tmp_path / "train.csv").exists() and not (tmp_path / "eval.csv").exists()
    assert read_rows(tmp_path, "train")[-1]["env_step"] == "40"


def test_nothing_logged_reads_as_no_rows_and_bad_tables_are_named(tmp_path: Path) -> None:
    assert read_rows(tmp_path, "pretrain") == [] and read_rows(tmp_path / "missing", "eval") == []
    with pytest.raises(ValueError, match=r"log table 'evaluation': expected one of \['eval', 'pretrain', 'train'\]"):
        read_rows(tmp_path, "evaluation")
    with pytest.raises(ValueError, match="log at different steps"):
        StageLog(tmp_path, {"train": TRAIN_COLUMNS, "pretrain": ["step"]}, "none")


def test_a_stage_log_touches_no_file_before_it_starts(tmp_path: Path) -> None:
    StageLog(tmp_path / "run", {"train": TRAIN_COLUMNS}, "dvclive").flush()
    StageLog(tmp_path / "run", {"train": TRAIN_COLUMNS}, "none").flush()
    assert not (tmp_path / "run").exists()
