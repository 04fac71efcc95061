"""Checkpoints: atomic save with a previous generation, fallback on corruption; an online run killed mid-way
and resumed ends bit-identical to an uninterrupted one."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

from conftest import logged_env_steps, random_batch, run_killed_after_first_checkpoint, tiny_agent
from lightning.pytorch.core.optimizer import LightningOptimizer

from pipeline.checkpoint import CheckpointError, find_checkpoint, load_checkpoint, previous_path, save_checkpoint
from pipeline.config import load_config
from pipeline.runtime import rng_state, set_rng_state
from pipeline.update import Optimizers, SACUpdater, make_optimizers
from pipeline.workflow.finetune import finetune

def test_save_keeps_previous_generation_and_no_temp_files(tmp_path: Path) -> None:
    path = tmp_path / "ckpt" / "last.pt"
    assert find_checkpoint(path) is None
    save_checkpoint({"step": 1, "w": torch.arange(3)}, path)
    assert not previous_path(path).exists()
    save_checkpoint({"step": 2, "w": torch.arange(4)}, path)
    assert previous_path(path).name == "last.prev.pt"
    assert torch.load(previous_path(path))["step"] == 1
    state = load_checkpoint(path)
    assert state["step"] == 2 and torch.equal(state["w"], torch.arange(4))
    assert find_checkpoint(path) == path
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.prev.pt", "last.pt"]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_written_files_honour_the_umask(tmp_path: Path, umask: int) -> None:
    """Atomic writes go through a private temp file, but the file they leave has the mode a plain open() gives."""
    from pipeline.data import TransitionDataset, write_d4rl

    old = os.umask(umask)
    try:
        save_checkpoint({"step": 1}, tmp_path / "last.pt")
        write_d4rl(TransitionDataset.random(20, 3, 2, source="x"), tmp_path / "data.hdf5")
    finally:
        os.umask(old)
    for name in ("last.pt", "data.hdf5"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "not_a_dict"])
def test_unreadable_last_falls_back_to_previous_with_warning(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)
    save_checkpoint({"step": 2, "big": torch.zeros(1000)}, path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 50)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        torch.save([1, 2], path)
    with pytest.warns(UserWarning, match=r"last\.pt is unreadable.*resuming from .*last\.prev\.pt"):
        state = load_checkpoint(path)
    assert state["step"] == 1


def test_both_generations_corrupt_raise(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    path.write_bytes(b"bad")
    previous_path(path).write_bytes(b"worse")
    with pytest.raises(CheckpointError, match=r"last\.pt.*last\.prev\.pt"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_checkpoint(tmp_path / "none.pt")


def test_only_previous_generation_left_by_a_crash_mid_save(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"step": 1}, path)
    os.replace(path, previous_path(path))  # the state save_checkpoint leaves if killed before its write lands
    assert find_checkpoint(path) == path
    with pytest.warns(UserWarning):
        assert load_checkpoint(path)["step"] == 1


# ---------------------------------------------------------------------------------------------------------------
# Updater state: optimizer moments, counters


def updates(updater: SACUpdater, n: int) -> None:
    for seed in range(n):
        updater.update(random_batch(16, seed=seed))


def test_agent_and_updater_state_round_trip_continue_bit_identically(tmp_path: Path) -> None:
    agent = tiny_agent(policy_delay=2)
    updater = SACUpdater(agent, make_optimizers(agent))
    updates(updater, 3)
    save_checkpoint({"agent": agent.state_dict(), "updater": updater.state_dict(), "rng": rng_state()},
                    tmp_path / "last.pt")
    updates(updater, 3)

    state = load_checkpoint(tmp_path / "last.pt")
    other = tiny_agent(policy_delay=2, seed=1)
    other.load_state_dict(state["agent"])
    other_updater = SACUpdater(other, make_optimizers(other))
    other_updater.load_state_dict(state["updater"])
    set_rng_state(state["rng"])
    assert other_updater.updates == 3
    updates(other_updater, 3)
    a, b = agent.state_dict(), other.state_dict()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_updater_restores_optimizer_state_through_lightning_wrappers() -> None:
    agent = tiny_agent()
    updater = SACUpdater(agent, make_optimizers(agent))
    updates(updater, 2)
    saved = updater.state_dict()

    other = tiny_agent()
    plain = make_optimizers(other)
    wrapped = Optimizers(*(LightningOptimizer(o) for o in (plain.actor, plain.critic, plain.alpha)))
    SACUpdater(other, wrapped).load_state_dict(saved)
    for name in ("actor", "critic", "alpha"):
        inner = getattr(plain, name).state_dict()["state"]
        assert len(inner) == len(saved[name]["state"]) > 0, f"{name}: the wrapped optimizer has no loaded state"


# ---------------------------------------------------------------------------------------------------------------
# Kill and resume: Pendulum from scratch, SIGKILL after the first checkpoint, resume on the same directory

OVERRIDES = [
    "device=cpu", "threads=1", "seed=3", "trainer.accelerator=cpu", "trainer.progress=false",
    "policy.kind=flow_g", "policy.hidden=32", "critic.hidden=32", "sac.batch_size=32",
    "finetune.env_id=Pendulum-v1", "finetune.from_pretrained=false", "finetune.total_steps=600",
    "finetune.checkpoint_every=200", "finetune.learning_starts=100", "finetune.random_steps=100",
    "finetune.buffer_size=1000", "finetune.eval_episodes=1", "finetune.eval_every=300", "finetune.log_every=100",
]
# sync: the env in this process; async: in a worker process that steps while this one updates
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_killed_and_resumed_run_is_bit_identical(mode: str, tmp_path: Path) -> None:
    overrides = [*OVERRIDES, f"finetune.vectorization_mode={mode}"]
    cfg = load_config(overrides=overrides)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    ref = finetune(cfg, straight)

    run_killed_after_first_checkpoint(resumed, overrides)
    first = torch.load(resumed / "checkpoints" / "last.pt", weights_only=False)
    assert 200 <= first["env_step"] < 600
    # Pendulum only truncates (time limit): nothing the run stored may cut the bootstrap
    assert first["buffer"]["data"]["terminals"].abs().sum() == 0
    metrics = finetune(cfg, resumed)
    assert metrics["resumed_from"] == first["env_step"]

    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "last.pt", weights_only=False)
    assert a["env_step"] == b["env_step"] == 600 and a["updater"]["updates"] == b["updater"]["updates"] == 500
    different = [k for k in a["agent"] if not torch.equal(a["agent"][k], b["agent"][k])]
    assert different == [], f"weights differ after resume: {different}"
    for k in a["buffer"]["data"]:
        assert torch.equal(a["buffer"]["data"][k], b["buffer"]["data"][k]), k
    assert metrics["eval_deterministic_return_mean"] == ref["eval_deterministic_return_mean"]
    # the resumed logs hold every row once, as the uninterrupted run's do
    for name in ("train.csv", "eval.csv"):
        assert logged_env_steps(resumed / name) == logged_env_steps(straight / name), name


def test_sigterm_checkpoints_the_step_it_stops_at_and_the_rerun_ends_as_an_uninterrupted_run(tmp_path: Path) -> None:
    """The CLI's answer to SIGTERM (a scheduler's pre-emption notice): stop after the current step with a checkpoint
    of that step, exit 143; the same command run again resumes there and ends bit-identical."""
    import signal
    import subprocess
    import sys
    import time

    # no scheduled checkpoint before the end; long enough that the signal lands mid-run on a loaded machine too
    # (one action per decision: the default preset's chunks of 4 would make the run 4x shorter than the signal needs)
    overrides = [*OVERRIDES, "finetune.checkpoint_every=10000", "finetune.total_steps=1500", "sac.chunk=1"]
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    # the CLI's config (its default preset): the rerun below resumes only a run of the very same config
    cfg = load_config("default", overrides)
    finetune(cfg, straight)
    cmd = [sys.executable, "-m", "pipeline.cli", "finetune", "--preset", "default", "--quiet", "--out", str(stopped),
           *(x for o in overrides for x in ("--set", o))]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while not (stopped / "train.csv").exists() or len(logged_env_steps(stopped / "train.csv")) < 1:
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, output
    first = torch.load(stopped / "checkpoints" / "last.pt", weights_only=False)
    assert f"after step {first['env_step']}" in " ".join(output.split())
    assert 100 <= first["env_step"] < 1500
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*starting this run fresh")  # a fresh start would prove nothing
        finetune(cfg, stopped)
    a = torch.load(straight / "checkpoints" / "last.pt", weights_only=False)
    b = torch.load(stopped / "checkpoints" / "last.pt", weights_only=False)
    assert a["env_step"] == b["env_step"] == 1500
    assert [k for k in a["agent"] if not torch.equal(a["agent"][k], b["agent"][k])] == []
    for k in a["buffer"]["data"]:
        assert torch.equal(a["buffer"]["data"][k], b["buffer"]["data"][k]), k


@pytest.mark.parametrize("where", ["training_step", "batch_end"])
def test_sigterm_anywhere_in_a_batch_stops_with_a_checkpoint_of_that_step(where: str, tmp_path: Path) -> None:
    """Lightning looks at SIGTERM itself at the end of every batch, after the module's own check: a signal landing
    between the two must still stop with a checkpoint of that step (not Lightning's exit code 0 with nothing
    saved), and the rerun must end as the uninterrupted run."""
    import signal

    import lightning as L

    from conftest import tiny_d4rl
    from pipeline import preemption
    from pipeline.run_logs import read_rows
    from pipeline.workflow.pretrain import pretrain

    class SigtermAt(L.Callback):
        def __init__(self, step: int) -> None:
            self.step = step

        def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, *args: object) -> None:
            if where == "training_step" and module.step_count == self.step - 1:
                os.kill(os.getpid(), signal.SIGTERM)  # lands before the module's own check of the step

        def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: object) -> None:
            if where == "batch_end" and module.step_count == self.step:
                os.kill(os.getpid(), signal.SIGTERM)  # after the module's check, before Lightning's

    data = tiny_d4rl(tmp_path / "tiny.hdf5")
    cfg = load_config("smoke", ["pretrain.dataset.format=d4rl", f"pretrain.dataset.source={data}",
                                "pretrain.steps=40", "pretrain.checkpoint_every=1000", "trainer.progress=false",
                                "trainer.logger=dvclive"])
    pretrain(cfg, tmp_path / "straight")
    with preemption.stopping_on(signal.SIGTERM), pytest.raises(preemption.StopRequested, match="after step 17"):
        pretrain(cfg, tmp_path / "stopped", callbacks=[SigtermAt(17)])
    assert torch.load(tmp_path / "stopped/checkpoints/last.pt", weights_only=False)["step"] == 17
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*starting this run fresh")
        assert pretrain(cfg, tmp_path / "stopped")["resumed_from"] == 17
    a = torch.load(tmp_path / "straight/checkpoints/last.pt", weights_only=False)
    b = torch.load(tmp_path / "stopped/checkpoints/last.pt", weights_only=False)
    assert a["step"] == b["step"] == 40
    assert [k for k in a["agent"] if not torch.equal(a["agent"][k], b["agent"][k])] == []
    # the pipeline's record (DVCLive) holds every row once, as the uninterrupted run's does
    steps = [[r["step"] for r in read_rows(tmp_path / run, "pretrain")] for run in ("straight", "stopped")]
    assert steps[0] == steps[1] and len(steps[0]) == 40 // cfg.pretrain.log_every
