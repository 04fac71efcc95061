"""The collect stage making a Minari dataset with a trained agent acting (a locally made "medium"-like dataset)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.data import load_dataset
from pipeline.train import finetune
from pipeline.collect import collect


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
