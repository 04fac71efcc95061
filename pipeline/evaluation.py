"""Policy evaluation on fixed seeds: return, success rate, normalized score."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from pipeline.sac import SACAgent


def evaluate(agent: SACAgent, env: gym.Env, episodes: int, seed: int, deterministic: bool) -> dict[str, Any]:
    """Run ``episodes`` episodes with reset seeds ``seed, seed+1, ...``.

    Returns ``return_mean``/``return_std`` (raw env reward), ``length_mean``, ``success_rate`` (when the env
    reports ``info["success"]``) and ``mode`` (``deterministic``: every flow noise epsilon = 0; ``stochastic``:
    sampled with the acting noise).
    """
    device = agent.obs_mean.device
    returns, lengths, successes = [], [], []
    reports_success = False
    was_training = agent.training
    agent.eval()
    for i in range(episodes):
        obs, _ = env.reset(seed=seed + i)
        done, ret, length, success = False, 0.0, 0, False
        queue: list[np.ndarray] = []
        while not done:
            if not queue:  # an agent trained with action chunking decides H actions at once
                chunk = agent.act(torch.as_tensor(obs, device=device).unsqueeze(0), deterministic)[0]
                queue = list(chunk.cpu().numpy().reshape(-1, *env.action_space.shape))
            obs, reward, terminated, truncated, info = env.step(queue.pop(0))
            ret += float(reward)
            length += 1
            if "success" in info:
                reports_success = True
                success = success or bool(info["success"])
            done = terminated or truncated
        returns.append(ret)
        lengths.append(length)
        successes.append(success)
    agent.train(was_training)
    out: dict[str, Any] = {
        "mode": "deterministic" if deterministic else "stochastic",
        "episodes": episodes,
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "length_mean": float(np.mean(lengths)),
    }
    if reports_success:
        out["success_rate"] = float(np.mean(successes))
    return out
