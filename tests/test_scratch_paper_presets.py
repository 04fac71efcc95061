"""The from-scratch presets at the public code's sizes (`<task>_scratch_<kind>_paper`) run end to end, shrunk to toy
sizes and budget: their compiled acting (`sac.act_mode: compile`) acts on one env, then evaluates on several."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from pipeline.config import load_config
from pipeline.workflow.evaluate import evaluate_checkpoints
from pipeline.workflow.finetune import finetune

TOY = [
    "threads=1", "trainer.progress=false", "policy.hidden=16", "policy.sigma_hidden=16", "policy.d_model=16",
    "policy.n_heads=2", "policy.n_layers=1", "critic.hidden=32", "sac.batch_size=32",
    "finetune.total_steps=120", "finetune.random_steps=40", "finetune.learning_starts=40", "finetune.eval_every=60",
    "finetune.eval_episodes=2", "finetune.log_every=60", "finetune.checkpoint_every=60",
    "finetune.env_options={max_episode_steps: 30}", "evaluate.episodes=3", "evaluate.num_envs=3",
]


def test_paper_preset_acts_compiled_on_one_env_then_evaluates_on_several(tmp_path: Path) -> None:
    # Flow-T's preset; the Flow-G one acts through the same compiled SACAgent.act (Flow-T and the Gaussian at varied
    # batch sizes: tests/test_update_modes.py)
    torch.compiler.reset()
    cfg = load_config("hopper_scratch_flow_t_paper", TOY)
    assert cfg.sac.act_mode == "compile"
    ft = finetune(cfg, tmp_path / "finetune")
    # acting at batch 1 from step 40, evaluations of 2 episodes at steps 60 and 120 in between
    assert ft["env_steps"] == 120 and ft["skipped_updates"] == 0
    ev = evaluate_checkpoints(cfg, tmp_path / "evaluate", {"finetuned": tmp_path / "finetune"})
    for rollout in ("deterministic", "stochastic"):
        assert math.isfinite(ev["finetuned"][rollout]["return_mean"])
