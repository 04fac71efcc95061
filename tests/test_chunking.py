"""Action chunking (``sac.chunk = H``): H-step decisions from datasets and from the online loop, gamma^H targets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import random_batch, tiny_agent
from pipeline.checkpoint import load_checkpoint, run_checkpoint
from pipeline.config import ConfigError, load_config
from pipeline.data.chunking import chunk_transitions
from pipeline.data.dataset import TransitionDataset
from pipeline.metrics import CSVLog
from pipeline.online import TRAIN_COLUMNS
from pipeline.sac import critic_loss
from pipeline.workflow.finetune import finetune


def two_episodes() -> TransitionDataset:
    """Episode 0: 5 steps ending in a terminal; episode 1: 4 steps cut by a time limit. obs = step index."""
    n = 9
    obs = np.arange(n, dtype=np.float32)[:, None].repeat(2, axis=1)
    actions = (np.arange(n, dtype=np.float32)[:, None] / 10.0)
    rewards = np.arange(1, n + 1, dtype=np.float32)
    terminals, timeouts = np.zeros(n), np.zeros(n)
    terminals[4], timeouts[8] = 1, 1
    return TransitionDataset(obs, actions, rewards, obs + 100, terminals, timeouts, meta={"source": "by-hand"})


def test_chunks_by_hand() -> None:
    ds = chunk_transitions(two_episodes(), horizon=2, gamma=0.5)
    # episode 0 (terminal): decisions at t = 0..4, the last one runs past the terminal; episode 1: t = 5..7
    assert ds.observations[:, 0].tolist() == [0, 1, 2, 3, 4, 5, 6, 7]
    assert ds.actions.shape == (8, 2)
    assert ds.actions[0].tolist() == pytest.approx([0.0, 0.1])
    assert ds.actions[4].tolist() == pytest.approx([0.4, 0.4])  # past the terminal: the last action repeated
    # R = r_t + 0.5 r_{t+1}, rewards r_t = t + 1; nothing after the terminal
    assert ds.rewards.tolist() == pytest.approx([2.0, 3.5, 5.0, 6.5, 5.0, 9.5, 11.0, 12.5])
    assert ds.terminals.tolist() == [0, 0, 0, 1, 1, 0, 0, 0]  # t = 3 reaches the terminal as its 2nd step
    # s_{t+H}: the next observation of the chunk's last step
    assert ds.next_observations[:, 0].tolist() == [101, 102, 103, 104, 104, 106, 107, 108]
    assert ds.episode_ends.tolist() == [5, 8] and ds.timeouts.tolist() == [0, 0, 0, 0, 0, 0, 0, 1]
    assert ds.meta["action_chunk"] == 2
    # the env steps each decision executed: t = 4 stops at the terminal after one step
    assert ds.chunk_steps.tolist() == [2, 2, 2, 2, 1, 2, 2, 2]


def test_chunk_of_one_is_the_dataset_itself() -> None:
    ds = two_episodes()
    assert chunk_transitions(ds, 1, 0.99) is ds


def test_critic_bootstraps_with_gamma_to_the_chunk_length() -> None:
    batch = random_batch(8)
    torch.manual_seed(3)
    _, chunked = critic_loss(tiny_agent(gamma=0.5, chunk=2), batch)
    torch.manual_seed(3)
    _, single = critic_loss(tiny_agent(gamma=0.25), batch)
    torch.testing.assert_close(chunked["target_mean"], single["target_mean"])


def test_chunk_out_of_range_is_named() -> None:
    with pytest.raises(ConfigError, match="sac.chunk"):
        load_config(overrides=["sac.chunk=0"])


def test_online_loop_decides_every_h_steps_and_drops_chunks_cut_by_a_time_limit(tmp_path: Path) -> None:
    cfg = load_config(overrides=[
        "sac.chunk=3", "policy.kind=flow_g", "policy.hidden=16", "critic.hidden=16", "sac.batch_size=16",
        "trainer.progress=false", "finetune.env_id=Pendulum-v1", "finetune.from_pretrained=false",
        "finetune.total_steps=400", "finetune.learning_starts=100", "finetune.random_steps=60",
        "finetune.buffer_size=1000", "finetune.eval_every=400", "finetune.eval_episodes=1", "finetune.log_every=200",
        "evaluate.both=false",
    ])
    metrics = finetune(cfg, tmp_path)
    # two 200-step episodes: 66 whole chunks each; the last 2 steps of each are cut by the time limit
    assert metrics["env_steps"] == 400 and metrics["online_transitions"] == 132
    assert np.isfinite(metrics["eval_deterministic_return_mean"])
    # the last 10 % of the steps holds the second episode's end (step 400): the training return is that episode's
    last_row = CSVLog(tmp_path / "train.csv", TRAIN_COLUMNS, "env_step").rows()[-1]
    assert metrics["train_episodes_final"] == 1 and "train_success_final" not in metrics
    assert metrics["train_return_final"] == pytest.approx(float(last_row["episode_return"]))
    shares = [metrics[f"{p}_time_share"] for p in ("env", "act", "update", "eval")]
    assert all(0 <= x < 1 for x in shares) and metrics["env_time_share"] > 0 and sum(shares) <= 1.0 + 1e-6
    state = load_checkpoint(run_checkpoint(tmp_path))
    assert state["buffer"]["data"]["actions"].shape[1] == 3  # Pendulum's one action dim x H = 3


def test_dataset_and_online_chunks_of_the_same_episodes_have_the_same_rewards(tmp_path: Path) -> None:
    """With a reward scale and shift, a chunk stored by the online loop and the same chunk made from a dataset of
    the same steps carry the same reward: the transform applies per step, before the chunk's discounted sum."""
    from pipeline.envs import make_env
    from pipeline.workflow.common import training_transitions

    cfg = load_config(overrides=[
        "sac.chunk=4", "sac.gamma=0.9", "sac.reward_scale=2.0", "sac.reward_shift=-1.0", "policy.kind=flow_g",
        "policy.hidden=16", "critic.hidden=16", "sac.batch_size=16", "trainer.progress=false",
        "finetune.env_id=Hopper-v5", "finetune.from_pretrained=false", "finetune.total_steps=120",
        "finetune.learning_starts=1000", "finetune.random_steps=120", "finetune.buffer_size=1000",
        "finetune.eval_episodes=0", "finetune.log_every=120", "evaluate.both=false",
    ])
    finetune(cfg, tmp_path)
    stored = load_checkpoint(run_checkpoint(tmp_path))["buffer"]["data"]
    # replay the stored decisions in a fresh env of the same seed: random Hopper actions fall within ~20 steps, so
    # every episode ends on a true terminal and no decision was dropped
    env = make_env("Hopper-v5")
    obs, _ = env.reset(seed=cfg.seed)
    steps: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "next_obs", "term", "tout")}
    starts = []  # dataset row of each stored decision's first step
    for chunk in stored["actions"].numpy():
        starts.append(len(steps["obs"]))
        for action in chunk.reshape(cfg.sac.chunk, -1):
            next_obs, reward, terminated, truncated, _ = env.step(action)
            for k, v in zip(steps, (obs, action, reward, next_obs, terminated, truncated)):
                steps[k].append(v)
            obs = next_obs
            if terminated or truncated:
                assert terminated, "a time limit inside the test's episodes would drop a decision"
                obs, _ = env.reset()
                break
    n_terminal = int(np.sum(steps["term"]))
    assert n_terminal >= 3 and int(stored["terminals"].sum()) == n_terminal
    ds = TransitionDataset(*(np.asarray(steps[k], dtype=np.float32) for k in steps), meta={"source": "replay"})
    chunks = training_transitions(ds, cfg.sac)
    # the dataset makes a decision at every step (every episode ends on a terminal, so none is dropped), the online
    # loop every H steps: compare the decisions it made
    index = torch.as_tensor(starts)
    torch.testing.assert_close(chunks.observations[index], stored["obs"], rtol=0, atol=0)
    whole = stored["terminals"] == 0  # a chunk cut by a terminal ends in actions never executed, stored either way
    torch.testing.assert_close(chunks.actions[index][whole], stored["actions"][whole], rtol=0, atol=0)
    torch.testing.assert_close(chunks.terminals[index], stored["terminals"], rtol=0, atol=0)
    torch.testing.assert_close(chunks.rewards[index], stored["rewards"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(chunks.chunk_steps[index], stored["steps"], rtol=0, atol=0)
    assert bool((stored["steps"][~whole] < cfg.sac.chunk).any())  # some decision was cut by a terminal
