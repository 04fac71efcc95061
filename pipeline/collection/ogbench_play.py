"""OGBench "play" datasets made with OGBench's own scripted oracles, written in OGBench's npz layout.

The procedure is the one of ``data_gen_scripts/generate_manipspace.py`` in the public ``seohongpark/ogbench``
repository (``--dataset_type=play``): the goal-conditioned env (``cube-double-v0``) in ``mode='data_collection'``
with ``terminate_at_goal=False`` and a 1001-step limit; a ``CubePlanOracle`` (action noise 0.1, noise smoothing 0.5)
follows a pre-computed plan to the env's current target and, each time it is done, the env draws a new target
(``set_new_target(p_stack=...)``, with a per-episode stacking probability by cube count); actions are clipped to
[-1, 1]. The file holds ``observations``, ``actions``, ``terminals`` (trajectory ends, not true terminals), ``qpos``
and ``qvel`` (the state *at* each observation); a second file ``<name>-val.npz`` holds one tenth as many episodes,
as the official datasets have (``ogbench.make_env_and_datasets(..., dataset_path=...)`` reads both).

Each episode ``i`` is seeded on its own (``seed + i`` for the env's generator and for NumPy's global generator that
the oracles and the script draw from), so the data are the same whatever the number of worker processes. That also
makes a long collection resumable: every finished episode is kept in ``<out>.parts/`` until both files are written,
and a rerun collects only the episodes missing there.
"""

from __future__ import annotations

import json
import multiprocessing
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.checkpoint import atomic_write

# Per-episode probability of a stacking target, drawn uniformly in this range (the official script's table).
P_STACK_RANGES: dict[str, tuple[float, float]] = {
    "single": (0.0, 0.0), "double": (0.0, 0.25), "triple": (0.05, 0.35), "quadruple": (0.1, 0.5),
    "octuple": (0.0, 0.35),
}
PLAY_NOISE = 0.1  # the official play datasets' oracle action noise
PLAY_NOISE_SMOOTHING = 0.5  # and its smoothing
PLAY_EPISODE_STEPS = 1001  # the official episode length (max_episode_steps)

_WORKER: dict[str, Any] = {}


def _cube_count_word(env_name: str) -> str:
    parts = env_name.split("-")
    if len(parts) < 3 or parts[0] != "cube" or parts[1] not in P_STACK_RANGES:
        raise ValueError(f"config key 'collect.env_id' = {env_name!r}: expected an OGBench cube env such as "
                         f"'cube-double-v0' (cube-<{'|'.join(P_STACK_RANGES)}>-v0)")
    return parts[1]


def _init_worker(env_name: str, max_episode_steps: int, noise: float, noise_smoothing: float) -> None:
    import gymnasium

    import ogbench.manipspace  # noqa: F401  (registers the envs)
    from ogbench.manipspace.oracles.plan.cube_plan import CubePlanOracle

    env = gymnasium.make(env_name, terminate_at_goal=False, mode="data_collection",
                         max_episode_steps=max_episode_steps)
    _WORKER.update(env=env, oracle=CubePlanOracle(env=env, noise=noise, noise_smoothing=noise_smoothing),
                   p_stack=P_STACK_RANGES[_cube_count_word(env_name)])


def _episode(seed: int) -> dict[str, np.ndarray]:
    """One play episode of the worker's env, seeded by ``seed``; arrays ``[T, ...]``."""
    env, agent = _WORKER["env"], _WORKER["oracle"]
    np.random.seed(seed)
    ob, info = env.reset(seed=seed)
    p_stack = np.random.uniform(*_WORKER["p_stack"])
    agent.reset(ob, info)
    obs, acts, qpos, qvel = [], [], [], []
    done = False
    while not done:
        action = np.clip(np.array(agent.select_action(ob, info)), -1, 1)
        next_ob, _, terminated, truncated, info = env.step(action)
        done = terminated or truncated
        if agent.done:  # the current target is reached: the env draws the next one
            agent_ob, agent_info = env.unwrapped.set_new_target(p_stack=p_stack)
            agent.reset(agent_ob, agent_info)
        obs.append(ob)
        acts.append(action)
        qpos.append(info["prev_qpos"])
        qvel.append(info["prev_qvel"])
        ob = next_ob
    terminals = np.zeros(len(obs), dtype=bool)
    terminals[-1] = True
    return {"observations": np.asarray(obs, dtype=np.float32), "actions": np.asarray(acts, dtype=np.float32),
            "terminals": terminals, "qpos": np.asarray(qpos, dtype=np.float32),
            "qvel": np.asarray(qvel, dtype=np.float32)}


def parts_dir_of(path: str | Path) -> Path:
    """Where the finished episodes of an unfinished collection of ``path`` are kept (``x.npz`` -> ``x.npz.parts``)."""
    p = Path(path)
    return p.with_name(p.name + ".parts")


def _open_parts(parts: Path, procedure: dict[str, Any]) -> dict[int, Path]:
    """The kept episodes of ``parts`` by seed, after checking they were made by the same ``procedure``."""
    meta = parts / "procedure.json"
    if meta.exists():
        kept = json.loads(meta.read_text())
        for key, value in procedure.items():
            if kept.get(key) != value:
                raise ValueError(f"{parts} holds the episodes of an unfinished collection with {key} = "
                                 f"{kept.get(key)!r}, not {value!r}: rerun with the same settings to resume it, or "
                                 f"delete {parts} to start over")
    else:
        parts.mkdir(parents=True, exist_ok=True)
        atomic_write(meta, lambda f: f.write(json.dumps(procedure, sort_keys=True).encode()))
    return {int(f.stem.removeprefix("seed-")): f for f in parts.glob("seed-*.npz")}


def _keep(parts: Path, seed: int, episode: dict[str, np.ndarray]) -> Path:
    """Write one finished episode into ``parts``; returns its file."""
    path = parts / f"seed-{seed}.npz"  # _open_parts reads the seed back from this name
    atomic_write(path, lambda f: np.savez_compressed(f, **episode))
    return path


def _load_kept(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _save(path: Path, episodes: list[dict[str, np.ndarray]]) -> int:
    """Write ``episodes`` to ``path`` through a temporary file: an interrupted write leaves no partial dataset."""
    data = {k: np.concatenate([e[k] for e in episodes]) for k in episodes[0]}
    atomic_write(path, lambda f: np.savez_compressed(f, **data))  # a file object: savez would append .npz to a path
    return int(len(data["terminals"]))


def val_path_of(path: str | Path) -> Path:
    """The validation file OGBench's loader pairs with ``path`` (``x.npz`` -> ``x-val.npz``)."""
    p = Path(path)
    return p.with_name(p.name.replace(".npz", "-val.npz"))


def collect_ogbench_play(env_name: str, out: str | Path, episodes: int, seed: int = 0, workers: int = 1,
                         max_episode_steps: int = PLAY_EPISODE_STEPS, noise: float = PLAY_NOISE,
                         noise_smoothing: float = PLAY_NOISE_SMOOTHING,
                         progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Write ``out`` (``episodes`` play episodes) and ``<out>-val.npz`` (``episodes // 10``, at least 1).

    Args:
        env_name: an OGBench cube env id of the goal-conditioned family, e.g. ``cube-double-v0``.
        out: path of the training file; must end in ``.npz``.
        episodes: training episodes (the official cube-double-play has 1000 of 1001 steps: 1M transitions).
        seed: episode ``i`` (training first, then validation) uses seed ``seed + i``.
        workers: processes stepping episodes in parallel (same data for any count).
        progress: called with (episodes done, episodes in all) as episodes finish, after each is kept in
            ``parts_dir_of(out)`` (so it may raise to stop: a rerun resumes from the kept episodes).

    Returns:
        Statistics: episodes and transitions of each file, the paths.
    """
    _cube_count_word(env_name)
    out = Path(out)
    if out.suffix != ".npz":
        raise ValueError(f"config key 'collect.out' = {str(out)!r}: an OGBench dataset is an .npz file")
    if episodes < 1 or workers < 1 or max_episode_steps < 2:
        raise ValueError(f"collect_ogbench_play: episodes ({episodes}) and workers ({workers}) must be >= 1 and "
                         f"max_episode_steps ({max_episode_steps}) >= 2")
    n_val = max(episodes // 10, 1)
    seeds = [seed + i for i in range(episodes + n_val)]
    init = (env_name, max_episode_steps, noise, noise_smoothing)
    parts = parts_dir_of(out)
    kept = _open_parts(parts, {"env_id": env_name, "max_episode_steps": max_episode_steps, "noise": noise,
                               "noise_smoothing": noise_smoothing})
    todo = [s for s in seeds if s not in kept]
    done = len(seeds) - len(todo)
    if progress and done:
        progress(done, len(seeds))

    def finished(s: int, episode: dict[str, np.ndarray]) -> None:
        nonlocal done
        kept[s] = _keep(parts, s, episode)
        done += 1
        if progress:
            progress(done, len(seeds))

    if workers == 1 or len(todo) <= 1:
        if todo:
            _init_worker(*init)
        for s in todo:
            finished(s, _episode(s))
    else:
        ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=init) as pool:
            for s, ep in zip(todo, pool.imap(_episode, todo)):  # in seed order, whichever worker finishes first
                finished(s, ep)
    results = [_load_kept(kept[s]) for s in seeds]
    out.parent.mkdir(parents=True, exist_ok=True)
    n_train = _save(out, results[:episodes])
    n_valid = _save(val_path_of(out), results[episodes:])
    shutil.rmtree(parts)
    return {"kind": "ogbench_play", "env_id": env_name, "path": str(out), "val_path": str(val_path_of(out)),
            "episodes": episodes, "transitions": n_train, "val_episodes": n_val, "val_transitions": n_valid}
