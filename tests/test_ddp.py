"""Data-parallel pretraining with Lightning's own DDP: two CPU processes (gloo) started the way users start them.

Every run here is a real subprocess: Lightning's ``ddp`` launcher re-runs the command line for rank 1, so it
cannot run inside pytest. ``tests/ddp_probe.py`` runs ``pretrain`` like the CLI and records, per rank, the final
weights, the first update's metrics and every file the rank wrote.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from pipeline.checkpoint import load_checkpoint
from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from pipeline.run_logs import read_rows
from pipeline.tracking import read_metric
from pipeline.workflow.finetune import finetune
from pipeline.workflow.pretrain import pretrain
from conftest import tiny_d4rl

REPO = Path(__file__).resolve().parent.parent
DDP = ["trainer.devices=2", "trainer.strategy=ddp", "trainer.accelerator=cpu"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Overrides that pretrain the smoke preset on 400 random D4RL-format transitions (obs 5, act 2)."""
    path = tiny_d4rl(tmp_path_factory.mktemp("data") / "tiny.hdf5")
    return ["pretrain.dataset.format=d4rl", f"pretrain.dataset.source={path}"]


def run(args: list[str], cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """``python ARGS`` with this checkout importable; fails the test with the output tail if it fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


def probe(probe_dir: Path, out: Path, overrides: list[str]) -> list[dict[str, Any]]:
    """Run ``pretrain`` on two ranks through tests/ddp_probe.py; returns the two ranks' records."""
    run(["tests/ddp_probe.py", str(probe_dir), "--preset", "smoke", *sets([*overrides, *DDP]), "--out", str(out)])
    return [torch.load(probe_dir / f"rank{r}.pt", weights_only=False) for r in (0, 1)]


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_ranks_train_on_different_batches_and_end_with_identical_weights(tmp_path: Path,
                                                                           tiny_data: list[str]) -> None:
    overrides = [*tiny_data, "pretrain.steps=20", "pretrain.log_every=10", "pretrain.checkpoint_every=10",
                 "trainer.logger=dvclive"]
    rank0, rank1 = probe(tmp_path / "probe", tmp_path / "run", overrides)

    assert (rank0["rank"], rank1["rank"]) == (0, 1)
    # seeded seed + rank: the ranks' first updates (same weights) saw different batches
    assert rank0["first_update"]["critic_loss"] != rank1["first_update"]["critic_loss"]
    # gradients are averaged: bit-identical weights after 20 updates on different data
    assert same_weights(rank0["agent"], rank1["agent"])
    # ... and rank 1's gradients did reach rank 0: one process on rank 0's seed and batches ends elsewhere
    # (with the all-reduce switched off, rank 0 matched this run exactly)
    pretrain(load_config("smoke", overrides), tmp_path / "single")
    single = load_checkpoint(tmp_path / "single/checkpoints/last.pt")["agent"]
    assert not same_weights(rank0["agent"], single)

    # only rank 0 writes, and each checkpoint once: at steps 10 and 20 (not again at the end of training)
    assert rank1["writes"] == []
    written = [path for event, path in rank0["writes"] if event == "os.rename" and "tmp" not in path]
    assert {"config.yaml", "metrics.json"} <= {p for _, p in rank0["writes"]}
    # the DVCLive log is the record: no pretrain.csv beside it
    assert ("open", "pretrain.csv") not in rank0["writes"] and not (tmp_path / "run/pretrain.csv").exists()
    assert sum(p.startswith("checkpoints/.last.pt.") for _, p in rank0["writes"] if _ == "open") == 2
    assert "checkpoints/last.pt" in written
    ckpt = load_checkpoint(tmp_path / "run/checkpoints/last.pt")
    assert ckpt["step"] == 20 and same_weights(ckpt["agent"], rank0["agent"])
    assert len(ckpt["ranks"]) == 2  # each rank's random stream, for resuming
    assert not torch.equal(ckpt["ranks"][0]["rng"]["torch"], ckpt["ranks"][1]["rng"]["torch"])
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_batch"] == 2 * 32
    # the logger is rank 0's (rank 1 wrote nothing, above): one row per logged step
    assert [r["step"] for r in read_rows(tmp_path / "run", "pretrain")] == ["10", "20"]
    assert [s for s, _ in read_metric(tmp_path / "run/dvclive", "pretrain/critic_loss")] == [10, 20]


@pytest.mark.slow
def test_resumed_ddp_run_continues_each_ranks_stream(tmp_path: Path, tiny_data: list[str]) -> None:
    """Stopped at step 20 and rerun to 40, a DDP run ends bit-identical to one that ran 40 steps at once."""
    base = [*tiny_data, "pretrain.log_every=10", "pretrain.checkpoint_every=10"]
    probe(tmp_path / "p1", tmp_path / "resumed", [*base, "pretrain.steps=20"])
    resumed = probe(tmp_path / "p2", tmp_path / "resumed", [*base, "pretrain.steps=40"])
    straight = probe(tmp_path / "p3", tmp_path / "straight", [*base, "pretrain.steps=40"])

    assert json.loads((tmp_path / "resumed/metrics.json").read_text())["resumed_from"] == 20
    assert same_weights(resumed[0]["agent"], resumed[1]["agent"])
    # each rank restored its own random state: the same batches as the uninterrupted run, hence the same weights
    assert same_weights(resumed[0]["agent"], straight[0]["agent"])
    assert (tmp_path / "resumed/pretrain.csv").read_text() == (tmp_path / "straight/pretrain.csv").read_text()


@pytest.mark.slow
def test_cli_and_dvc_stage_script_launch_ddp(tmp_path: Path, tiny_data: list[str]) -> None:
    """Lightning re-runs ``python -m pipeline.cli ...`` and ``python stages/pretrain.py`` for rank 1."""
    overrides = [*tiny_data, "pretrain.steps=10", *DDP]
    cli = run(["-m", "pipeline.cli", "pretrain", "--preset", "smoke", "--quiet", *sets(overrides),
               "--out", str(tmp_path / "cli")])
    assert cli.stdout.count("sacflow pretrain") == 1  # rank 1 returns no summary table
    assert json.loads((tmp_path / "cli/metrics.json").read_text())["world_size"] == 2

    stage_dir = tmp_path / "dvc"
    stage_dir.mkdir()
    params = {"preset": "smoke", "pretrain": {"steps": 10, "dataset": {"format": "d4rl",
                                                                      "source": tiny_data[1].split("=", 1)[1]}},
              "trainer": {"devices": 2, "strategy": "ddp", "accelerator": "cpu"}}
    (stage_dir / "params.yaml").write_text(yaml.safe_dump(params))
    run([str(REPO / "stages/pretrain.py")], cwd=stage_dir)
    metrics = json.loads((stage_dir / "runs/pretrain/metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["steps"] == 10


@pytest.mark.slow
def test_killed_ddp_run_resumes_from_the_rank0_checkpoint(tmp_path: Path, tiny_data: list[str]) -> None:
    """SIGKILL both ranks mid-run, rerun the same command: it resumes at the last checkpoint and finishes."""
    out = tmp_path / "run"

    def command(steps: int) -> list[str]:
        return ["-m", "pipeline.cli", "pretrain", "--preset", "smoke", "--quiet",
                *sets([*tiny_data, f"pretrain.steps={steps}", "pretrain.checkpoint_every=20", *DDP]),
                "--out", str(out)]

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, *command(2000)], cwd=REPO, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not (out / "checkpoints/last.prev.pt").exists():  # two checkpoints: well into training
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its 2nd checkpoint"
            time.sleep(0.2)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and the rank it started share this session
        proc.wait()
    saved = load_checkpoint(out / "checkpoints/last.pt")["step"]
    assert 0 < saved < 2000
    run(command(saved + 20))  # the same command, shortened (a run's length may change on resume)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from"] == saved and load_checkpoint(out / "checkpoints/last.pt")["step"] == saved + 20
    rows = [int(r.split(",")[0]) for r in (out / "pretrain.csv").read_text().splitlines()[1:]]
    assert rows == list(range(10, saved + 21, 10))  # rows logged after the checkpoint were dropped, none twice


def test_finetune_rejects_data_parallel_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for override, key in (("trainer.devices=2", "trainer.devices"), ("trainer.num_nodes=2", "trainer.num_nodes"),
                          ("trainer.strategy=ddp", "trainer.strategy")):
        with pytest.raises(ConfigError, match=key):
            finetune(load_config("smoke", [override]), tmp_path / "ft")
    assert not (tmp_path / "ft").exists()  # rejected before anything is written
    assert main(["finetune", "--preset", "smoke", "--quiet", "--set", "trainer.devices=2",
                 "--out", str(tmp_path / "cli")]) == 2
    captured = capsys.readouterr()
    assert "trainer.devices" in captured.out + captured.err


def test_data_parallel_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="trainer.strategy"):
        load_config("smoke", ["trainer.strategy=ddp_spawn"])
    # compiled and graphed updates call backward themselves, past DDP's all-reduce: even a one-process DDP run
    with pytest.raises(ConfigError, match="sac.update_mode"):
        load_config("smoke", ["sac.update_mode=compile", "trainer.strategy=ddp"])


def test_single_process_checkpoint_without_per_rank_entries_still_resumes(tmp_path: Path,
                                                                          tiny_data: list[str]) -> None:
    """Checkpoints written before data-parallel support kept one process's rng and means at the top level."""
    cfg = load_config("smoke", [*tiny_data, "pretrain.steps=20"])
    pretrain(cfg, tmp_path / "run")
    path = tmp_path / "run/checkpoints/last.pt"
    state = load_checkpoint(path)
    (rank0,) = state.pop("ranks")
    torch.save({**state, **rank0}, path)
    assert pretrain(load_config("smoke", [*tiny_data, "pretrain.steps=30"]), tmp_path / "run")["resumed_from"] == 20
