"""Locomotion offline-to-online end to end: a Minari Hopper-v5 dataset made by the collect stage, Flow-T pretrained
on it, fine-tuned online on Hopper-v5 with the dataset seeding the buffer, evaluated with D4RL-normalized scores."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from pipeline.workflow.collect import collect
from pipeline.config import load_config
from pipeline.metrics import read_json
from pipeline.workflow.evaluate import evaluate_checkpoints
from pipeline.workflow.finetune import finetune
from pipeline.workflow.pretrain import pretrain

TINY = [
    "collect.episodes=3", "collect.horizon=60", "policy.hidden=32", "policy.d_model=16", "policy.n_heads=2",
    "policy.n_layers=1", "critic.hidden=32", "sac.batch_size=32", "trainer.progress=false",
    "pretrain.steps=30", "pretrain.log_every=10", "pretrain.checkpoint_every=15",
    "finetune.total_steps=150", "finetune.eval_every=150", "finetune.eval_episodes=1", "finetune.log_every=50",
    "finetune.checkpoint_every=75", "finetune.env_options={max_episode_steps: 60}", "evaluate.episodes=2",
]


@pytest.mark.parametrize("chunk", [1, 4])  # one action per decision, and action chunks of 4
def test_hopper_o2o_preset_runs_end_to_end(chunk: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    cfg = load_config("hopper_o2o", [*TINY, f"sac.chunk={chunk}"])
    stats = collect(cfg, tmp_path / "collect")
    assert stats["kind"] == "minari" and stats["episodes"] == 3

    pre = pretrain(cfg, tmp_path / "pretrain")
    assert pre["steps"] == 30 and math.isfinite(pre["final_critic_loss"])
    ft = finetune(cfg, tmp_path / "finetune", pretrained=tmp_path / "pretrain")
    assert ft["env_steps"] == 150 and ft["skipped_updates"] == 0
    assert ft["buffer_mode"] == "seeded" and ft["offline_transitions"] > 0  # the dataset seeded the buffer

    ev = evaluate_checkpoints(cfg, tmp_path / "evaluate",
                              {"pretrained": tmp_path / "pretrain", "finetuned": tmp_path / "finetune"})
    assert ev == read_json(tmp_path / "evaluate" / "metrics.json")
    for name in ("pretrained", "finetuned"):
        result = ev[name]["deterministic"]
        assert math.isfinite(result["return_mean"])
        # D4RL-style score from the dataset's references: 100 * (R - random) / (expert - random)
        assert math.isfinite(result["normalized_score"])
