"""Fine-tuning on several env copies (``finetune.num_envs``): per-copy streams, step and update accounting, worker
processes, resume, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import logged_env_steps, run_killed_after_first_checkpoint

from pipeline.checkpoint import load_checkpoint, run_checkpoint
from pipeline.config import ConfigError, load_config
from pipeline.metrics import read_csv_rows
from pipeline.workflow.finetune import finetune

BASE = [
    "device=cpu", "threads=1", "seed=5", "trainer.accelerator=cpu", "trainer.progress=false",
    "policy.kind=flow_g", "policy.hidden=16", "critic.hidden=16", "sac.batch_size=16",
    "finetune.env_id=Hopper-v5", "finetune.from_pretrained=false", "finetune.buffer_size=2000",
    "finetune.eval_episodes=1", "evaluate.both=false",
]


def last_checkpoint(run: Path) -> dict:
    return load_checkpoint(run_checkpoint(run))


def test_copy_zero_replays_the_single_env_run_during_random_steps(tmp_path: Path) -> None:
    # copy i resets from seed + i and draws its random actions from a stream seeded seed + i, so copy 0 of a
    # 3-copy run takes exactly the single-env run's transitions (Hopper: random actions fall, so episodes restart)
    common = [*BASE, "finetune.random_steps=1000", "finetune.learning_starts=1000", "finetune.eval_episodes=0"]
    finetune(load_config(overrides=[*common, "finetune.total_steps=120"]), tmp_path / "one")
    finetune(load_config(overrides=[*common, "finetune.total_steps=360", "finetune.num_envs=3"]), tmp_path / "three")
    one, three = last_checkpoint(tmp_path / "one"), last_checkpoint(tmp_path / "three")
    assert one["episodes"] >= 3, "the comparison should cross episode resets"
    for key, rows in one["buffer"]["data"].items():
        copy0 = three["buffer"]["data"][key][0:360:3]  # the buffer interleaves the copies, one row each per step
        torch.testing.assert_close(copy0, rows[:120], rtol=0, atol=0, msg=key)
    # the other copies start from other seeds
    assert not torch.equal(three["buffer"]["data"]["obs"][1], three["buffer"]["data"]["obs"][0])


def test_copies_count_steps_updates_episodes_and_logs_in_process_and_in_workers(tmp_path: Path) -> None:
    # 3 copies, 200 env steps asked: 67 vector steps (201 env steps); 2 updates per env step after step 100
    common = [*BASE, "finetune.total_steps=200", "finetune.learning_starts=100", "finetune.random_steps=100",
              "sac.utd=2", "finetune.log_every=50", "finetune.eval_every=100", "finetune.num_envs=3"]
    runs = {mode: finetune(load_config(overrides=[*common, f"finetune.vectorization_mode={mode}"]), tmp_path / mode)
            for mode in ("sync", "async")}
    for mode, metrics in runs.items():
        assert metrics["env_steps"] == 201 and metrics["updates"] == 2 * (201 - 100), mode
        assert metrics["online_transitions"] == 201, mode
        # a log row (and an evaluation) at the first vector step reaching each multiple of its interval
        assert logged_env_steps(tmp_path / mode / "train.csv") == [51, 102, 150, 201], mode
        assert logged_env_steps(tmp_path / mode / "eval.csv") == [102, 201], mode
        rows = read_csv_rows(tmp_path / mode / "train.csv")
        assert int(rows[-1]["episodes"]) == metrics["episodes"] > 3, mode  # random Hopper episodes are short
    # worker processes step the same copies from the same seeds: the same transitions until updates begin (the
    # workers then step while this process updates, and the runs part)
    a, b = last_checkpoint(tmp_path / "sync"), last_checkpoint(tmp_path / "async")
    for k in a["buffer"]["data"]:
        assert torch.equal(a["buffer"]["data"][k][:102], b["buffer"]["data"][k][:102]), k


def test_killed_run_on_copies_resumes_bit_identically(tmp_path: Path) -> None:
    overrides = [*BASE, "finetune.env_id=Pendulum-v1", "finetune.num_envs=2", "finetune.total_steps=600",
                 "finetune.checkpoint_every=200", "finetune.learning_starts=100", "finetune.random_steps=100",
                 "finetune.eval_every=300", "finetune.log_every=100"]
    cfg = load_config(overrides=overrides)
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    finetune(cfg, straight)
    run_killed_after_first_checkpoint(resumed, overrides)
    first = last_checkpoint(resumed)
    assert 200 <= first["env_step"] < 600 and len(first["env_rng"]) == 2
    assert not first["copies"]["needs_reset"].any()  # both copies were mid-episode (Pendulum: 200-step episodes)
    metrics = finetune(cfg, resumed)
    assert metrics["resumed_from"] == first["env_step"]
    a, b = last_checkpoint(straight), last_checkpoint(resumed)
    assert a["env_step"] == b["env_step"] == 600 and a["updater"]["updates"] == b["updater"]["updates"] == 500
    # the episodes in flight at the checkpoint were replayed: the same transitions, weights and logs
    for k in a["buffer"]["data"]:
        assert torch.equal(a["buffer"]["data"][k], b["buffer"]["data"][k]), k
    assert [k for k in a["agent"] if not torch.equal(a["agent"][k], b["agent"][k])] == []
    for name in ("train.csv", "eval.csv"):
        assert logged_env_steps(resumed / name) == logged_env_steps(straight / name), name


@pytest.mark.parametrize("override, key", [("finetune.num_envs=0", "finetune.num_envs"),
                                           ("finetune.vectorization_mode=threads", "finetune.vectorization_mode")])
def test_bad_vector_settings_are_named(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config(overrides=[override])
