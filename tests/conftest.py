"""Shared test set-up: single-threaded torch (session fixture); tiny SAC agents and batches, a killed finetune run
(helpers)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from pipeline.config import CriticConfig, PolicyConfig, SACConfig
from pipeline.metrics import read_csv_rows
from pipeline.sac import Batch, SACAgent
from pipeline.update import SACUpdater, make_optimizers

OBS_DIM, ACT_DIM = 3, 2
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True, scope="session")
def _single_thread() -> Iterator[None]:
    """Tiny tensors gain nothing from intra-op threads, which only spin on a shared two-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_agent(policy: dict[str, Any] | None = None, critic: dict[str, Any] | None = None,
               seed: int = 0, precision: str = "32-true", precision_scope: str = "agent", **sac: Any) -> SACAgent:
    """A SACAgent for ``obs [B, 3]``, ``action [B, 2]`` with 16-wide nets; other keyword args are SACConfig
    fields."""
    torch.manual_seed(seed)
    pcfg = PolicyConfig(**{"kind": "flow_g", "hidden": 16, "d_model": 8, "n_heads": 2, "n_layers": 1,
                           **(policy or {})})
    ccfg = CriticConfig(**{"hidden": 16, **(critic or {})})
    return SACAgent(OBS_DIM, ACT_DIM, pcfg, ccfg, SACConfig(**sac), precision, precision_scope)


def random_batch(batch: int = 8, seed: int = 1, **fields: torch.Tensor) -> Batch:
    """A Batch of ``batch`` random transitions (actions in (-1, 1), no terminals); ``fields`` replace columns."""
    g = torch.Generator().manual_seed(seed)
    cols = {
        "obs": torch.randn(batch, OBS_DIM, generator=g),
        "actions": torch.rand(batch, ACT_DIM, generator=g) * 1.8 - 0.9,
        "rewards": torch.randn(batch, generator=g),
        "next_obs": torch.randn(batch, OBS_DIM, generator=g),
        "terminals": torch.zeros(batch),
        "steps": torch.ones(batch),
    }
    cols.update(fields)
    return Batch(**cols)


def crossq_updates(mode: str, updates: int, batch: int = 16, device: torch.device | str = "cpu",
                   batch_renorm: str = "crossq") -> tuple[SACUpdater, list[dict[str, float]]]:
    """``updates`` SAC updates, in update mode ``mode``, of a tiny Flow-T agent on the from-scratch presets'
    backbone (CrossQ critic, actor every 2nd update) with CrossQ's actor BatchRenorm layers (on the observation,
    on a_i at every step, in the decoder; ``batch_renorm``: their policy setting); the updater and each update's
    info."""
    agent = tiny_agent({"kind": "flow_t", "batch_renorm": batch_renorm}, {"kind": "crossq"}, update_mode=mode,
                       policy_delay=2).to(device)
    updater = SACUpdater(agent, make_optimizers(agent))
    torch.manual_seed(5)
    batches = [Batch(*(x.to(device) for x in random_batch(batch, seed=s))) for s in range(updates)]
    infos = [{k: float(v) for k, v in updater.update(b).items()} for b in batches]
    assert updater.skipped == 0
    return updater, infos


def assert_same_losses_and_statistics(expected: tuple[SACUpdater, list[dict[str, float]]],
                                      actual: tuple[SACUpdater, list[dict[str, float]]], keys: tuple[str, ...],
                                      rtol: float) -> None:
    """Two :func:`crossq_updates` runs agree on the losses ``keys`` of every update and on every batch-renorm
    running statistic. Parameters are not compared: the biases that feed a batch-renorm layer get no gradient in
    exact arithmetic, so Adam turns each kernel's rounding into its own +-lr steps."""
    (up_e, infos_e), (up_a, infos_a) = expected, actual
    assert ["actor_loss" in info for info in infos_a] == ["actor_loss" in info for info in infos_e]
    for e, a in zip(infos_e, infos_a, strict=True):
        for k in keys:
            if k in e:
                assert a[k] == pytest.approx(e[k], rel=rtol, abs=rtol / 100), k
    stats = up_a.agent.state_dict()
    for k, v in up_e.agent.state_dict().items():
        if "running" in k or "steps" in k:
            torch.testing.assert_close(stats[k], v, atol=1e-4, rtol=rtol, msg=k)


def tiny_d4rl(path: Path) -> Path:
    """400 random D4RL-format transitions (obs 5, act 2, episodes of 100) written to ``path``; returns ``path``."""
    from pipeline.data import TransitionDataset, write_d4rl

    return write_d4rl(TransitionDataset.random(400, 5, 2, source=str(path)), path)


# --------------------------------------------------------------------------- loader fuzzing (hypothesis)
def flip_bits(path: Any, data: Any) -> None:
    """Flip 1-8 random bits of the file at ``path`` (``data``: a hypothesis ``st.data()`` object)."""
    from hypothesis import strategies as st

    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    path.write_bytes(bytes(raw))


def mutate_hdf5(path: Any, data: Any, kind: str) -> None:
    """Damage an hdf5 file in place: ``flip`` bits, ``truncate`` it, or ``delete`` one random group/dataset."""
    import h5py
    from hypothesis import strategies as st

    if kind == "flip":
        flip_bits(path, data)
    elif kind == "truncate":
        raw = path.read_bytes()
        path.write_bytes(raw[: data.draw(st.integers(0, len(raw) - 1))])
    else:
        with h5py.File(path, "a") as f:
            names: list[str] = []
            f.visit(names.append)
            del f[data.draw(st.sampled_from(sorted(names)))]


def load_or_dataset_error(fmt: str, source: Any, **options: Any) -> None:
    """A damaged file either loads as a sane dataset or raises DatasetError: nothing else, nothing silent."""
    from pipeline.data import DatasetError, TransitionDataset, load_dataset

    try:
        ds = load_dataset(fmt, source, **options)
    except DatasetError:
        return
    assert isinstance(ds, TransitionDataset)
    assert_sane(ds)


def assert_sane(ds: Any) -> None:
    """What every successfully loaded dataset must satisfy, however damaged its file was."""
    assert len(ds) > 0 and int(ds.episode_ends[-1]) == len(ds)
    assert bool(torch.isfinite(ds.observations).all()) and bool(torch.isfinite(ds.next_observations).all())
    assert float(ds.actions.abs().max()) <= 1.0


_FINETUNE_CHILD = """
import sys
from pipeline.config import load_config
from pipeline.workflow.finetune import finetune
out, preset, pretrained, *overrides = sys.argv[1:]
finetune(load_config(preset or None, overrides), out, pretrained or None)
"""


def run_killed_after_first_checkpoint(out: Path, overrides: list[str], timeout: float = 120.0,
                                      preset: str | None = None, pretrained: Path | None = None) -> None:
    """Run ``finetune`` (``preset`` + ``overrides``, from ``pretrained`` if given) on ``out`` in a child process and
    SIGKILL it after its first checkpoint."""
    proc = subprocess.Popen([sys.executable, "-c", _FINETUNE_CHILD, str(out), preset or "", str(pretrained or ""),
                             *overrides], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + timeout
        while not (out / "checkpoints" / "last.pt").exists():
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before its first checkpoint: {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                raise AssertionError("no checkpoint appeared in time")
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def logged_env_steps(path: Path) -> list[int]:
    """The ``env_step`` of every row of a run's train.csv or eval.csv."""
    return [int(row["env_step"]) for row in read_csv_rows(path)]
