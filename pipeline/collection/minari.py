"""Minari datasets recorded with ``minari.DataCollector`` (needs ``minari[create]``: the collector stores steps
through ``jax.tree_util``); :mod:`pipeline.data.minari_io` reads them."""

from __future__ import annotations

import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from pipeline.data.minari_io import minari_root

Policy = Callable[[Any], Any]  # one observation -> one action (numpy or torch)

def collect_minari(
    env_id: str | gym.Env,
    dataset_id: str,
    policy: Policy | None = None,
    n_episodes: int = 10,
    seed: int = 0,
    *,
    max_episode_steps: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
    eval_env: str | gym.Env | None = None,
    ref_min_score: float | None = None,
    ref_max_score: float | None = None,
    num_episodes_average_score: int = 100,
    algorithm_name: str | None = None,
    code_permalink: str | None = None,
    author: str | None = None,
    description: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Record ``n_episodes`` episodes of ``policy`` into the local Minari dataset ``dataset_id``.

    ``env_id`` is a Gymnasium id (made with ``gym.make(env_id, max_episode_steps=..., **env_kwargs)``) or an
    environment instance. ``policy`` maps one observation to one action (numpy or torch); ``None`` samples
    uniformly from the action space (seeded). Actions are clipped to the action space before stepping.
    Episode ``k`` resets with seed ``seed + k`` (stored by Minari per episode), so a run is reproducible.

    Reference scores: when ``ref_max_score`` is given it is stored with ``ref_min_score``; a missing
    ``ref_min_score`` is then estimated by Minari with a random policy over ``num_episodes_average_score``
    episodes of the evaluation env. ``eval_env`` (default: the collection env's spec) is stored as
    ``eval_env_spec``. An existing dataset with this id raises FileExistsError unless ``overwrite``.
    Returns the dataset directory. Requires ``minari[create]`` (jax).
    """
    import minari

    from minari.dataset.minari_dataset import parse_dataset_id

    parse_dataset_id(dataset_id)  # raises ValueError on a malformed id before any episode is collected
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    if ref_min_score is not None and ref_max_score is None:
        raise ValueError("ref_min_score is stored by Minari only together with ref_max_score; pass both")
    target = minari_root() / dataset_id
    if target.exists():
        if not overwrite:
            raise FileExistsError(f"Minari dataset {dataset_id!r} already exists at {target}; "
                                  "pass overwrite=True to replace it")
        shutil.rmtree(target)

    env = env_id if isinstance(env_id, gym.Env) else gym.make(env_id, max_episode_steps=max_episode_steps,
                                                              **(env_kwargs or {}))
    space = env.action_space
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"collect_minari needs a Box action space, got {space}")
    collector = minari.DataCollector(env, record_infos=False)
    try:
        space.seed(seed)
        for episode in range(n_episodes):
            # Explicit per-episode seeds: Minari would otherwise draw each reset seed from `secrets`.
            obs, _ = collector.reset(seed=seed + episode)
            done = False
            while not done:
                raw = space.sample() if policy is None else policy(obs)
                if isinstance(raw, torch.Tensor):
                    raw = raw.detach().cpu().numpy()
                action = np.clip(np.asarray(raw, dtype=space.dtype).reshape(space.shape), space.low, space.high)
                obs, _, terminated, truncated, _ = collector.step(action)
                done = bool(terminated or truncated)
        if eval_env is None:
            eval_env = env.spec
        with warnings.catch_warnings():
            # Minari nags about every optional field left empty (author, e-mail, permalink, description).
            warnings.filterwarnings("ignore", message=r"`\w+` is set to None", category=UserWarning)
            collector.create_dataset(
                dataset_id=dataset_id, eval_env=eval_env, algorithm_name=algorithm_name or
                ("random" if policy is None else getattr(policy, "__name__", type(policy).__name__)),
                code_permalink=code_permalink, author=author, description=description,
                ref_min_score=ref_min_score, ref_max_score=ref_max_score,
                num_episodes_average_score=num_episodes_average_score,
            )
    finally:
        collector.close()
    return target
