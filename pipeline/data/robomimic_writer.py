"""Writer for robomimic HDF5 datasets, and scripted robosuite demonstration collection into that format.

Layout written (robomimic docs, "Dataset Structure"; robomimic's ``convert_robosuite.py``,
``dataset_states_to_obs.py`` and ``split_train_val.py``):

- group ``data``, attributes ``env_args`` (JSON text: ``env_name``, ``type`` = 1 for robosuite, ``env_version``,
  ``env_kwargs``) and ``total`` (number of transitions in the file);
- one group ``data/demo_<i>`` per episode (``i`` from 0) with datasets ``obs/<key> [T, ...]``,
  ``next_obs/<key> [T, ...]``, ``actions [T, A]``, ``rewards [T]``, ``dones [T]``, ``states [T, S]`` (flattened
  MuJoCo states, the state *before* each action) and attributes ``num_samples`` (= T) and ``model_file`` (the
  MJCF XML of the episode's model), plus ``ep_meta`` (robosuite >= 1.5 episode metadata, JSON) when known;
- ``mask/train`` and ``mask/valid``: 1-D byte-string arrays of demo names, a random 90/10 split of the demos
  (``int(0.1 * n)`` validation demos, as robomimic's split script does);
- ``mask/successful``: the demos whose ``success`` attribute is 1, when every demo has one and at least one
  succeeded, so ``pretrain.dataset.filter_key: successful`` trains on the successful demos of a mixed-quality set
  (as robomimic's multi-human sets offer quality subsets through their masks).

Files are written to a temporary name in the destination folder and moved into place with ``os.replace``, so a
reader never sees a half-written file.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.checkpoint import atomic_write

DEFAULT_NOISE_LEVELS: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5)


@dataclass
class Episode:
    """One demonstration of ``T`` transitions.

    Attributes:
        obs: key -> ``[T, ...]`` observation before each action.
        next_obs: key -> ``[T, ...]`` observation after each action (same keys as ``obs``).
        actions: ``[T, A]``.
        rewards: ``[T]``.
        dones: ``[T]``, 1 where the action reached a terminal (success) state.
        states: ``[T, S]`` flattened simulator state before each action (``sim.get_state().flatten()``).
        model_file: MJCF XML of the simulated model.
        ep_meta: JSON episode metadata (robosuite >= 1.5), or None.
        attrs: extra per-demo attributes (scalars or strings), e.g. ``{"success": 1, "noise_std": 0.1}``.
    """

    obs: dict[str, np.ndarray]
    next_obs: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    dones: np.ndarray
    states: np.ndarray
    model_file: str
    ep_meta: str | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(np.asarray(self.actions).shape[0])


def _check_episode(ep: Episode, i: int, keys: list[str] | None) -> None:
    t = len(ep)
    where = f"episode {i}"
    if t == 0:
        raise ValueError(f"{where}: has no transitions")
    if np.asarray(ep.actions).ndim != 2:
        raise ValueError(f"{where}: actions must be [T, A], got shape {np.asarray(ep.actions).shape}")
    for name in ("rewards", "dones"):
        if np.asarray(getattr(ep, name)).shape != (t,):
            raise ValueError(f"{where}: {name} must have shape ({t},), got {np.asarray(getattr(ep, name)).shape}")
    states = np.asarray(ep.states)
    if states.ndim != 2 or states.shape[0] != t:
        raise ValueError(f"{where}: states must be [T={t}, S], got shape {states.shape}")
    if not isinstance(ep.model_file, str) or not ep.model_file:
        raise ValueError(f"{where}: model_file must be the MJCF XML string")
    if not ep.obs:
        raise ValueError(f"{where}: obs has no keys")
    if set(ep.obs) != set(ep.next_obs):
        raise ValueError(f"{where}: obs keys {sorted(ep.obs)} differ from next_obs keys {sorted(ep.next_obs)}")
    if keys is not None and sorted(ep.obs) != keys:
        raise ValueError(f"{where}: obs keys {sorted(ep.obs)} differ from the first episode's {keys}")
    for group in ("obs", "next_obs"):
        for k, v in getattr(ep, group).items():
            if np.asarray(v).shape[:1] != (t,):
                raise ValueError(f"{where}: {group}/{k} must have {t} rows, got shape {np.asarray(v).shape}")


def write_robomimic(
    path: str | os.PathLike[str],
    episodes: Sequence[Episode],
    env_args: Mapping[str, Any],
    val_ratio: float = 0.1,
    seed: int = 0,
    compression: str | None = None,
) -> Path:
    """Write ``episodes`` as a robomimic HDF5 file at ``path`` (atomically); returns the path.

    Args:
        path: destination ``.hdf5`` file; its folder is created if missing.
        episodes: demonstrations, stored as ``data/demo_0``, ``data/demo_1``, ... in this order.
        env_args: robomimic env metadata (``env_name``, ``type``, ``env_kwargs``), e.g. ``RobosuiteEnv.env_args``.
        val_ratio: fraction of demos listed in ``mask/valid`` (the rest in ``mask/train``).
        seed: seed of the train/valid split.
        compression: h5py compression for obs datasets (robomimic uses ``"gzip"`` optionally), or None.
    """
    import h5py

    if not episodes:
        raise ValueError("episodes: expected at least one episode")
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio: expected a value in [0, 1), got {val_ratio!r}")
    if not isinstance(env_args, Mapping) or "env_name" not in env_args or "env_kwargs" not in env_args:
        raise ValueError("env_args: expected a dict with 'env_name', 'type' and 'env_kwargs'")
    keys = None
    for i, ep in enumerate(episodes):
        _check_episode(ep, i, keys)
        keys = sorted(ep.obs)
    env_args_json = json.dumps(dict(env_args), indent=4)

    names = [f"demo_{i}" for i in range(len(episodes))]
    n_val = int(val_ratio * len(names))
    perm = np.random.default_rng(seed).permutation(len(names))
    valid = sorted((names[j] for j in perm[:n_val]), key=lambda n: int(n[5:]))
    train = [n for n in names if n not in set(valid)]
    labelled = all("success" in ep.attrs for ep in episodes)
    successful = [n for n, ep in zip(names, episodes) if labelled and int(ep.attrs["success"]) == 1]

    path = Path(path)

    def write(fileobj: Any) -> None:
        with h5py.File(fileobj, "w") as f:
            data = f.create_group("data")
            total = 0
            for name, ep in zip(names, episodes):
                g = data.create_group(name)
                for group in ("obs", "next_obs"):
                    for k, v in getattr(ep, group).items():
                        g.create_dataset(f"{group}/{k}", data=np.asarray(v), compression=compression)
                g.create_dataset("actions", data=np.asarray(ep.actions))
                g.create_dataset("rewards", data=np.asarray(ep.rewards))
                g.create_dataset("dones", data=np.asarray(ep.dones))
                g.create_dataset("states", data=np.asarray(ep.states))
                g.attrs["num_samples"] = len(ep)
                g.attrs["model_file"] = ep.model_file
                if ep.ep_meta is not None:
                    g.attrs["ep_meta"] = ep.ep_meta
                for k, v in ep.attrs.items():
                    g.attrs[k] = v
                total += len(ep)
            data.attrs["total"] = total
            data.attrs["env_args"] = env_args_json
            f.create_dataset("mask/train", data=np.array(train, dtype="S"))
            f.create_dataset("mask/valid", data=np.array(valid, dtype="S"))
            if successful:
                f.create_dataset("mask/successful", data=np.array(successful, dtype="S"))

    atomic_write(path, write)
    return path


def robomimic_obs(obs_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The low-dim keys robomimic stores for a robosuite obs dict: every ``robot0_*`` key except
    ``robot0_proprio-state``, plus ``object`` (robosuite's ``object-state``); images are left out."""
    out = {}
    for k, v in obs_dict.items():
        arr = np.asarray(v)
        if k.startswith("robot0_") and not k.endswith("proprio-state") and arr.ndim <= 1:
            out[k] = arr.copy()
    if "object" in obs_dict:
        out["object"] = np.asarray(obs_dict["object"]).copy()
    elif "object-state" in obs_dict:
        out["object"] = np.asarray(obs_dict["object-state"]).copy()
    return out


def _stack(rows: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def run_scripted_episode(env: Any, policy: Any) -> tuple[Episode, dict[str, Any]]:
    """Roll out ``policy`` (a :class:`pipeline.envs.scripted.ScriptedPolicy`) for one episode on a
    :class:`pipeline.envs.RobosuiteEnv` that the caller has already reset.

    The episode starts from the env's model rebuilt from its own MJCF text (:meth:`RobosuiteEnv.reload_model`),
    so its actions replayed from ``states[0]`` in the stored ``model_file`` reproduce every stored state exactly.

    Returns the recorded episode and ``{"success": bool, "env_error": str | None}``.
    """
    model_file = env.reload_model()
    policy.reset(env)
    obs_rows, next_rows, actions, rewards, dones, states = [], [], [], [], [], []
    get_meta = getattr(env.rs_env, "get_ep_meta", None)
    ep_meta = json.dumps(get_meta()) if callable(get_meta) else None
    obs = robomimic_obs(env.obs_dict)
    success, error = False, None
    while True:
        state = np.asarray(env.sim.get_state().flatten(), dtype=np.float64)
        action = np.clip(np.asarray(policy(env.obs_dict), dtype=np.float64), -1.0, 1.0)
        _, reward, terminated, truncated, info = env.step(action)
        if "env_error" in info:
            error = info["env_error"]
            break
        next_obs = robomimic_obs(env.obs_dict)
        success = bool(info["success"])
        obs_rows.append(obs)
        next_rows.append(next_obs)
        actions.append(action)
        rewards.append(float(reward))
        dones.append(int(success))
        states.append(state)
        obs = next_obs
        if terminated or truncated:
            break
    episode = Episode(
        obs=_stack(obs_rows) if obs_rows else {},
        next_obs=_stack(next_rows) if next_rows else {},
        actions=np.asarray(actions, dtype=np.float64).reshape(len(actions), -1),
        rewards=np.asarray(rewards, dtype=np.float64),
        dones=np.asarray(dones, dtype=np.int64),
        states=np.asarray(states, dtype=np.float64),
        model_file=model_file,
        ep_meta=ep_meta,
    )
    return episode, {"success": success, "env_error": error}


def collect_robosuite_demos(
    task: str,
    path: str | os.PathLike[str],
    n_episodes: int,
    noise_levels: Sequence[float] = DEFAULT_NOISE_LEVELS,
    seed: int = 0,
    horizon: int | None = None,
    keep_failures: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Record scripted demonstrations of robosuite ``task`` at several action-noise levels into a robomimic file.

    Episode ``i`` uses ``noise_levels[i % len(noise_levels)]``, so every prefix of the file mixes qualities (like
    robomimic's multi-human sets). Episodes that hit a simulator failure are discarded and re-run. With
    ``keep_failures=False`` failed episodes are discarded too and collection continues until ``n_episodes``
    successes (at most ``20 * n_episodes`` attempts).

    Args:
        task: robosuite task with a scripted demonstrator (``"Lift"``, ``"PickPlaceCan"``).
        path: output ``.hdf5`` file (written atomically).
        n_episodes: number of episodes to write.
        noise_levels: std of the Gaussian action noise per level (>= 0).
        seed: seeds the env placements, the policy noise and the train/valid split.
        horizon: episode step limit (default: the task's default, see ``pipeline.envs.DEFAULT_HORIZONS``).
        keep_failures: keep episodes that did not succeed.
        progress: called as ``progress(episodes_written, n_episodes)`` after each recorded episode.

    Returns:
        ``{"path", "task", "episodes", "successes", "steps", "seconds", "attempts", "env_errors",
        "per_noise": {noise: {"episodes", "successes"}}}``.
    """
    from pipeline.envs import make_env
    from pipeline.envs.scripted import make_scripted_policy

    if isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes < 1:
        raise ValueError(f"n_episodes: expected a positive int, got {n_episodes!r}")
    levels = [float(x) for x in noise_levels]
    if not levels or not all(math.isfinite(x) and x >= 0 for x in levels):
        raise ValueError(f"noise_levels: expected a non-empty list of finite values >= 0, got {list(noise_levels)}")
    start = time.perf_counter()
    options: dict[str, Any] = {} if horizon is None else {"horizon": horizon}
    env = make_env(f"robosuite/{task}", seed=seed, **options)
    rng = np.random.default_rng(seed)
    policies = {lv: make_scripted_policy(task, noise_std=lv, rng=rng) for lv in levels}
    per_noise = {lv: {"episodes": 0, "successes": 0} for lv in levels}
    episodes: list[Episode] = []
    attempts = env_errors = 0
    max_failed_runs = 20 * n_episodes  # runs that end up discarded (simulator failure, or failure not kept)
    try:
        while len(episodes) < n_episodes:
            if attempts - len(episodes) >= max_failed_runs:
                raise RuntimeError(
                    f"collect_robosuite_demos({task!r}): only {len(episodes)} of {n_episodes} episodes kept after "
                    f"{attempts} attempts ({env_errors} simulator failures); raise the horizon or lower the noise"
                )
            level = levels[len(episodes) % len(levels)]
            attempts += 1
            env.reset()
            episode, result = run_scripted_episode(env, policies[level])
            if result["env_error"] is not None:
                env_errors += 1
                continue
            if not result["success"] and not keep_failures:
                continue
            episode.attrs = {"success": int(result["success"]), "noise_std": level}
            episodes.append(episode)
            per_noise[level]["episodes"] += 1
            per_noise[level]["successes"] += int(result["success"])
            if progress is not None:
                progress(len(episodes), n_episodes)
        write_robomimic(path, episodes, env.env_args, seed=seed)
    finally:
        env.close()
    return {
        "path": str(path),
        "task": task,
        "episodes": len(episodes),
        "successes": sum(v["successes"] for v in per_noise.values()),
        "steps": int(sum(len(e) for e in episodes)),
        "seconds": time.perf_counter() - start,
        "attempts": attempts,
        "env_errors": env_errors,
        "per_noise": per_noise,
    }


__all__ = [
    "DEFAULT_NOISE_LEVELS",
    "Episode",
    "collect_robosuite_demos",
    "robomimic_obs",
    "run_scripted_episode",
    "write_robomimic",
]
