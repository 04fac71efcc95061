"""Scripted robosuite demonstrations recorded into robomimic's HDF5 layout (:mod:`pipeline.data.robomimic_writer`).

Each episode starts from the env's model rebuilt from its own MJCF text (as robosuite's ``DataCollectionWrapper``
records), so robomimic's playback of its actions from its first stored state reproduces every stored state.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from pipeline.data.robomimic_writer import Episode, write_robomimic

DEFAULT_NOISE_LEVELS: tuple[float, ...] = (0.0, 0.1, 0.3, 0.5)


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
    operators: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Record scripted demonstrations of robosuite ``task`` at several action-noise levels into a robomimic file.

    Episode ``i`` uses ``noise_levels[i % len(noise_levels)]``, so every prefix of the file mixes qualities (like
    robomimic's multi-human sets). Episodes that hit a simulator failure are discarded and re-run. With
    ``keep_failures=False`` failed episodes are discarded too and collection continues until ``n_episodes``
    successes (at most ``20 * n_episodes`` attempts).

    Args:
        task: robosuite task with a scripted demonstrator (a key of :data:`pipeline.envs.scripted.SCRIPTED_POLICIES`).
        path: output ``.hdf5`` file (written atomically).
        n_episodes: number of episodes to write.
        noise_levels: std of the Gaussian action noise per level (>= 0).
        seed: seeds the env placements, the policy noise and the train/valid split.
        horizon: episode step limit (default: the task's default, see ``pipeline.envs.DEFAULT_HORIZONS``).
        keep_failures: keep episodes that did not succeed.
        progress: called as ``progress(episodes_written, n_episodes)`` after each recorded episode.
        operators: scripted operators (names in :data:`pipeline.envs.scripted.OPERATORS`, robomimic MH's) in place
            of ``noise_levels``: episode ``i`` is recorded by ``operators[i % len(operators)]``, and the file gets
            robomimic MH's masks (per operator, proficiency, union of two; each also ``_train`` / ``_valid``).

    Returns:
        ``{"path", "task", "episodes", "successes", "steps", "seconds", "attempts", "env_errors",
        "per_noise": {noise: {"episodes", "successes"}}}``; with ``operators``, ``"per_operator"`` in place of
        ``"per_noise"`` (each also with ``"steps"``).
    """
    from pipeline.envs import make_env
    from pipeline.envs.scripted import make_scripted_policy

    if isinstance(n_episodes, bool) or not isinstance(n_episodes, int) or n_episodes < 1:
        raise ValueError(f"n_episodes: expected a positive int, got {n_episodes!r}")
    levels = [float(x) for x in noise_levels]
    if not levels or not all(math.isfinite(x) and x >= 0 for x in levels):
        raise ValueError(f"noise_levels: expected a non-empty list of finite values >= 0, got {list(noise_levels)}")
    if operators is not None:
        from pipeline.envs.scripted import OPERATORS

        unknown = [op for op in operators if op not in OPERATORS]
        if not operators or unknown:
            raise ValueError(f"operators: expected a non-empty list of names in {list(OPERATORS)}, got "
                             f"{list(operators)}")
    start = time.perf_counter()
    options: dict[str, Any] = {} if horizon is None else {"horizon": horizon}
    env = make_env(f"robosuite/{task}", seed=seed, **options)
    rng = np.random.default_rng(seed)
    # who records each episode: a noise level of the clean script, or an operator
    who: list[Any] = list(operators) if operators is not None else levels
    if operators is not None:
        policies = {op: make_scripted_policy(task, rng=rng, operator=op) for op in dict.fromkeys(operators)}
    else:
        policies = {lv: make_scripted_policy(task, noise_std=lv, rng=rng) for lv in levels}
    per_noise = {lv: {"episodes": 0, "successes": 0, "steps": 0} if operators is not None
                 else {"episodes": 0, "successes": 0} for lv in dict.fromkeys(who)}
    recorded_by: list[Any] = []
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
            level = who[len(episodes) % len(who)]
            attempts += 1
            env.reset()
            episode, result = run_scripted_episode(env, policies[level])
            if result["env_error"] is not None:
                env_errors += 1
                continue
            if not result["success"] and not keep_failures:
                continue
            if operators is not None:
                episode.attrs = {"success": int(result["success"]), "operator": level,
                                 "noise_std": policies[level].noise_std}
                per_noise[level]["steps"] += len(episode)
            else:
                episode.attrs = {"success": int(result["success"]), "noise_std": level}
            episodes.append(episode)
            recorded_by.append(level)
            per_noise[level]["episodes"] += 1
            per_noise[level]["successes"] += int(result["success"])
            if progress is not None:
                progress(len(episodes), n_episodes)
        write_robomimic(path, episodes, env.env_args, seed=seed,
                        operators=recorded_by if operators is not None else None)
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
        "per_operator" if operators is not None else "per_noise": per_noise,
    }


