"""Policy evaluation on fixed seeds: return, success rate, normalized score; episodes run on a vector env."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch

from pipeline.sac import SACAgent


def as_vector_env(env: gym.Env | gym.vector.VectorEnv) -> gym.vector.VectorEnv:
    """``env`` itself if it is a vector env, else a one-copy in-process vector env around it (autoreset off)."""
    if isinstance(env, gym.vector.VectorEnv):
        return env
    return gym.vector.SyncVectorEnv([lambda: env], autoreset_mode=gym.vector.AutoresetMode.DISABLED)


def evaluate(agent: SACAgent, env: gym.Env | gym.vector.VectorEnv, episodes: int, seed: int,
             deterministic: bool) -> dict[str, Any]:
    """Run ``episodes`` episodes with reset seeds ``seed, seed+1, ...``, as many at once as ``env`` has copies.

    ``env``: one env, or a vector env with autoreset disabled (:func:`pipeline.envs.make_vector_env`): each copy
    runs an episode, and a copy whose episode ends starts the next seed, so episode ``i`` always starts from
    ``reset(seed=seed + i)`` whichever copy runs it. Deterministic results therefore do not depend on the number of
    copies, up to the float rounding of a batched policy call (which a chaotic contact-rich episode can amplify);
    stochastic ones do (the acting noise is drawn per batched policy call).

    Returns ``return_mean``/``return_std`` (raw env reward), ``length_mean``, ``success_rate`` (when the env
    reports ``info["success"]``) and ``success_length_mean`` (the mean length of the successful episodes, when there
    are any), ``episodes`` and ``mode`` (``deterministic``: every flow noise epsilon = 0;
    ``stochastic``: sampled with the acting noise).
    """
    envs = as_vector_env(env)
    n, act_shape = envs.num_envs, envs.single_action_space.shape
    device = agent.obs_mean.device
    was_training = agent.training
    agent.eval()
    # copy j runs episode slot[j] (-1: idle, stepped with zero actions once no episode is left for it)
    slot = np.array([j if j < episodes else -1 for j in range(n)])
    obs, _ = envs.reset(seed=[seed + j if j < episodes else None for j in range(n)])
    next_episode = min(n, episodes)
    queues: list[list[np.ndarray]] = [[] for _ in range(n)]  # an agent trained with action chunking decides H actions
    ret, length, success = np.zeros(n), np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    results: dict[int, tuple[float, int, bool]] = {}
    reports_success = False
    while len(results) < episodes:
        deciding = [j for j in range(n) if slot[j] >= 0 and not queues[j]]
        if deciding:
            chunks = agent.act(torch.as_tensor(obs[deciding], device=device), deterministic).cpu().numpy()
            for j, chunk in zip(deciding, chunks):
                queues[j] = list(chunk.reshape(-1, *act_shape))
        actions = np.stack([queues[j].pop(0) if slot[j] >= 0 else np.zeros(act_shape, np.float32) for j in range(n)])
        obs, reward, terminated, truncated, info = envs.step(actions)
        ret += reward
        length += 1
        if "success" in info:
            reports_success = True
            success |= np.asarray(info["success"], dtype=bool) & info["_success"]
        done = terminated | truncated
        for j in np.flatnonzero(done & (slot >= 0)):
            results[int(slot[j])] = (float(ret[j]), int(length[j]), bool(success[j]))
        if done.any() and len(results) < episodes:
            seeds: list[int | None] = [None] * n
            for j in np.flatnonzero(done):
                slot[j] = next_episode if next_episode < episodes else -1
                if slot[j] >= 0:
                    seeds[j] = seed + next_episode
                    next_episode += 1
                queues[j], ret[j], length[j], success[j] = [], 0.0, 0, False
            obs, _ = envs.reset(seed=seeds, options={"reset_mask": done})
    agent.train(was_training)
    returns, lengths, successes = (np.array(v) for v in zip(*(results[i] for i in range(episodes))))
    out: dict[str, Any] = {
        "mode": "deterministic" if deterministic else "stochastic",
        "episodes": episodes,
        "return_mean": float(np.mean(returns)),
        "return_std": float(np.std(returns)),
        "length_mean": float(np.mean(lengths)),
    }
    if reports_success:
        out["success_rate"] = float(np.mean(successes))
        if successes.any():  # how fast the task gets done, where it does
            out["success_length_mean"] = float(np.mean(lengths[successes.astype(bool)]))
    return out
