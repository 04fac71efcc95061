"""The collect stage making a Minari dataset with a trained agent acting (a locally made "medium"-like dataset), and
stopping on SIGTERM."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from pipeline import preemption
from pipeline.config import load_config
from pipeline.data import load_dataset
from pipeline.workflow.finetune import finetune
from pipeline.workflow.collect import collect


def test_minari_dataset_from_a_trained_agent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    common = ["policy.kind=flow_g", "policy.hidden=16", "critic.hidden=16", "sac.batch_size=16",
              "trainer.progress=false"]
    agent_cfg = load_config(None, [*common, "finetune.env_id=Pendulum-v1", "finetune.from_pretrained=false",
                                   "finetune.total_steps=250", "finetune.learning_starts=50",
                                   "finetune.random_steps=50", "finetune.eval_episodes=0", "finetune.buffer_size=1000"])
    finetune(agent_cfg, tmp_path / "agent")
    cfg = load_config(None, [*common, "collect.kind=minari", "collect.env_id=Pendulum-v1", "collect.episodes=2",
                             f"collect.policy_run={tmp_path / 'agent'}", "collect.out=sacflow/pendulum-agent-v0",
                             "collect.ref_max_score=-150.0"])
    stats = collect(cfg, tmp_path / "collect")
    assert stats["kind"] == "minari" and stats["episodes"] == 2
    ds = load_dataset("minari", "sacflow/pendulum-agent-v0")
    assert len(ds) == 2 * 200 and ds.obs_dim == 3 and ds.act_dim == 1  # Pendulum episodes are 200 steps
    assert ds.timeouts.sum() == 2 and ds.terminals.sum() == 0  # time limits, not terminals
    assert ds.meta["ref_max_score"] == -150.0


def test_minari_collection_on_a_robosuite_env_through_the_cli(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import minari

    from pipeline.cli import main

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    code = main(["collect", "--preset", "smoke", "--quiet", "--out", str(tmp_path / "collect"),
                 "--set", "collect.kind=minari", "--set", "collect.env_id=robosuite/Lift", "--set", "collect.episodes=2",
                 "--set", "collect.horizon=12", "--set", "collect.out=sacflow/lift-random-v0"])
    assert code in (0, None)
    ds = load_dataset("minari", "sacflow/lift-random-v0")
    assert len(ds) == 2 * 12 and ds.act_dim == 7 and ds.timeouts.sum() == 2
    env = minari.load_dataset("sacflow/lift-random-v0").recover_environment()  # Minari rebuilds it from its spec
    assert env.unwrapped.spec.id == "robosuite/Lift" and env.observation_space.shape == (ds.obs_dim,)
    env.close()


def test_d4rl_references_of_the_hopper_preset_are_d4rl_s() -> None:
    """The preset's comment says its returns are normalized with D4RL's Hopper references: both of them are."""
    from pipeline.data import D4RL_REF_SCORES

    c = load_config("hopper_o2o").collect
    assert (c.ref_min_score, c.ref_max_score) == D4RL_REF_SCORES["hopper"]


def test_sigterm_stops_a_robosuite_collection_after_an_episode_with_nothing_written(tmp_path: Path) -> None:
    """The robosuite collector keeps no partial file: a stop ends it after the episode in progress, before any file
    exists, and the stop is not resumable (the rerun starts over)."""
    cfg = load_config("smoke", [f"collect.out={tmp_path / 'demos.hdf5'}", "collect.episodes=2", "collect.horizon=20",
                                "trainer.progress=false"])
    with preemption.stopping_on(signal.SIGTERM):
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(preemption.StopRequested, match="after 1 of .* episodes, nothing written") as stop:
            collect(cfg, tmp_path / "collect")
    assert not stop.value.resumable
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == []
