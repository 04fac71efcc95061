"""Kill -9 and resume on robosuite: a run killed after a checkpoint (mid-episode) and run again with the same
command ends with the same weights, replay buffer and log rows as an uninterrupted run, in the DVCLive log, the
run's only record with trainer.logger = dvclive (one row per step, none twice, none missing; the CSV logs of the
other loggers: tests/test_checkpoint.py).

The default suite runs three paths; ``-m slow`` runs the whole matrix (from scratch / from a pretrained agent with a
seeded or mixed buffer, env in this process or in workers, one or two copies, one action or chunks of four).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch

from conftest import run_killed_after_first_checkpoint
from pipeline.checkpoint import load_checkpoint, run_checkpoint
from pipeline.config import load_config
from pipeline.run_logs import read_rows
from pipeline.tracking import read_metric, read_summary
from pipeline.workflow.finetune import finetune
from pipeline.workflow.pretrain import pretrain

# columns that time the run rather than describe what it computed
TIMING = ("updates_per_s", "env_steps_per_s", "env_share", "act_share", "update_share", "eval_share")


@pytest.fixture(scope="module")
def lift_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipeline.collection.robosuite_demos import collect_robosuite_demos

    path = tmp_path_factory.mktemp("resume") / "lift.hdf5"
    collect_robosuite_demos("Lift", path, 3, noise_levels=(0.0, 0.3), seed=0, horizon=80)
    return path


@pytest.fixture(scope="module")
def pretrained(lift_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """A smoke pretraining per action-chunk length."""
    out = {}
    for chunk in (1, 4):
        run = tmp_path_factory.mktemp(f"pretrain_h{chunk}")
        pretrain(load_config("smoke", [f"pretrain.dataset.source={lift_data}", f"sac.chunk={chunk}",
                                       "trainer.progress=false", "trainer.logger=dvclive"]), run)
        out[chunk] = run
    return out


def _rows(run: Path, table: str) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_rows(run, table)]


def _dvclive_rows(run: Path) -> dict[str, list[tuple[int, float]]]:
    """Every metric DVCLive logged in ``run`` but the timing ones: name -> (step, value) rows."""
    metrics = run / "dvclive" / "plots" / "metrics"
    names = [p.relative_to(metrics).with_suffix("").as_posix() for p in sorted(metrics.rglob("*.tsv"))]
    return {n: read_metric(run / "dvclive", n) for n in names if n.rsplit("/", 1)[-1] not in TIMING}


def assert_resumes_bit_identically(tmp_path: Path, overrides: list[str], pretrained: Path | None) -> None:
    overrides = [*overrides, "trainer.logger=dvclive"]
    cfg = load_config("smoke", overrides)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    finetune(cfg, straight, pretrained)
    run_killed_after_first_checkpoint(resumed, overrides, preset="smoke", pretrained=pretrained)
    first = load_checkpoint(run_checkpoint(resumed))
    assert 0 < first["env_step"] < cfg.finetune.total_steps
    copies = first["copies"]
    assert not copies["needs_reset"].all(), "the kill should leave an episode in flight to replay"
    assert any(start[0] == "rng" for start in copies["episode_starts"]), "no episode began from the env's generator"
    metrics = finetune(cfg, resumed, pretrained)
    assert metrics["resumed_from"] == first["env_step"]
    # the stage's summary in DVCLive's (what dvc exp show lists), logged once more by the resumed run
    summary = read_summary(resumed / "dvclive")["finetune"]
    assert summary["resumed_from"] == first["env_step"] and summary["env_steps"] == cfg.finetune.total_steps
    assert summary["updates"] == metrics["updates"] and "buffer_mode" not in summary
    a, b = load_checkpoint(run_checkpoint(straight)), load_checkpoint(run_checkpoint(resumed))
    assert a["env_step"] == b["env_step"] and a["updater"]["updates"] == b["updater"]["updates"]
    assert [k for k in a["agent"] if not torch.equal(a["agent"][k], b["agent"][k])] == [], "weights differ"
    assert a["buffer"]["size"] == b["buffer"]["size"]
    for k in a["buffer"]["data"]:
        assert torch.equal(a["buffer"]["data"][k], b["buffer"]["data"][k]), f"buffer column {k} differs"
    assert not list(resumed.glob("*.csv")), "the DVCLive log is the record: no CSV beside it"
    logged = _dvclive_rows(resumed)
    assert logged == _dvclive_rows(straight)
    for table in ("train", "eval"):
        assert _rows(resumed, table) == _rows(straight, table), table
    train_steps = list(range(cfg.finetune.log_every, cfg.finetune.total_steps + 1, cfg.finetune.log_every))
    assert [int(r["env_step"]) for r in read_rows(resumed, "train")] == train_steps, "a step logged twice or missing"
    assert [s for s, _ in logged["train/alpha"]] == train_steps
    assert "eval/deterministic/return_mean" in logged


def test_pretraining_logs_the_same_rows_to_dvclive_as_to_its_csv(lift_data: Path, pretrained: dict[int, Path],
                                                                   tmp_path: Path) -> None:
    """The same pretraining with trainer.logger = none (its pretrain.csv) and dvclive (only DVCLive's TSVs): the
    rows read back are the same, timing aside."""
    pretrain(load_config("smoke", [f"pretrain.dataset.source={lift_data}", "trainer.progress=false"]), tmp_path)
    assert (tmp_path / "pretrain.csv").is_file() and not (pretrained[1] / "pretrain.csv").exists()
    rows = _rows(pretrained[1], "pretrain")
    assert rows and rows == _rows(tmp_path, "pretrain")
    logged = read_metric(pretrained[1] / "dvclive", "pretrain/flow_loss")
    assert [s for s, _ in logged] == [int(r["step"]) for r in rows]
    summary = read_summary(pretrained[1] / "dvclive")["pretrain"]
    assert summary["steps"] == int(rows[-1]["step"]) and summary["seconds"] > 0
    assert summary["flow_loss"] == float(rows[-1]["flow_loss"]) and "final_flow_loss" not in summary


def _overrides(lift_data: Path, start: str, mode: str, copies: int, chunk: int) -> list[str]:
    # 25-step episodes; the first checkpoint comes in each copy's third episode, whose start a resume must replay
    # from the env generator's state after two resets
    common = [f"pretrain.dataset.source={lift_data}", "trainer.progress=false", "finetune.env_options.horizon=25",
              f"finetune.total_steps={100 * copies}", f"finetune.checkpoint_every={60 * copies}",
              f"finetune.eval_every={50 * copies}", f"finetune.log_every={20 * copies}",
              f"finetune.vectorization_mode={mode}", f"finetune.num_envs={copies}", f"sac.chunk={chunk}"]
    if start == "scratch":
        return [*common, "finetune.from_pretrained=false", "finetune.random_steps=40", "finetune.learning_starts=40"]
    return [*common, f"finetune.buffer_mode={start}"]  # seeded | mixed, from the pretrained agent


CASES = list(itertools.product(("scratch", "seeded", "mixed"), ("sync", "async"), (1, 2), (1, 4)))
DEFAULT = {("seeded", "sync", 1, 1), ("scratch", "async", 2, 1), ("mixed", "async", 2, 4)}


@pytest.mark.parametrize("start, mode, copies, chunk", [
    pytest.param(*case, marks=() if case in DEFAULT else pytest.mark.slow) for case in CASES])
def test_killed_robosuite_run_resumes_bit_identically(start: str, mode: str, copies: int, chunk: int,
                                                      lift_data: Path, pretrained: dict[int, Path],
                                                      tmp_path: Path) -> None:
    agent = None if start == "scratch" else pretrained[chunk]
    assert_resumes_bit_identically(tmp_path, _overrides(lift_data, start, mode, copies, chunk), agent)


@pytest.mark.parametrize("mode", ["async", pytest.param("sync", marks=pytest.mark.slow)])
def test_killed_mujoco_run_on_copies_resumes_bit_identically(mode: str, tmp_path: Path) -> None:
    """Gymnasium MuJoCo from scratch on two env copies: random Hopper episodes end on true terminals at varied
    lengths, so the checkpoint finds the copies at different points of their episodes."""
    overrides = ["trainer.progress=false", "policy.kind=flow_g", "policy.hidden=32", "critic.hidden=32",
                 "sac.batch_size=32", "finetune.env_id=Hopper-v5", "finetune.env_options={}",
                 "finetune.from_pretrained=false", "finetune.num_envs=2", f"finetune.vectorization_mode={mode}",
                 "finetune.total_steps=600", "finetune.checkpoint_every=250", "finetune.random_steps=100",
                 "finetune.learning_starts=100", "finetune.buffer_size=1000", "finetune.eval_every=300",
                 "finetune.eval_episodes=1", "finetune.log_every=100"]
    assert_resumes_bit_identically(tmp_path, overrides, None)
