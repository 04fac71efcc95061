"""OGBench npz datasets (``cube-double-play-v0.npz`` and those made by ``collect.kind: ogbench_play``).

The file is read by OGBench's own ``ogbench.utils.load_dataset`` (``next_observations`` by shifting within each
trajectory, the last state of a trajectory dropped) and the rewards of a single task are those of OGBench's own
``ogbench.relabel_utils.relabel_dataset`` on that task's env, exactly as the SAC Flow offline-to-online code gets
them through ``ogbench.make_env_and_datasets``: ``rewards = (cubes at their targets) - (cubes)`` and
``masks = 0`` where every cube is at its target, judged on the state at ``observations[i]``.

How they map onto :class:`~pipeline.data.dataset.TransitionDataset`:

- ``terminals = 1 - masks``: the critic does not bootstrap from a state that solves the task (the single-task env
  terminates there online). A play trajectory goes on after such a state; the dataset's episode is cut there.
- ``timeouts``: OGBench's ``terminals`` mark where a trajectory was cut by its time limit, not a true terminal, so
  they become timeouts (bootstrapped, episode boundary for action chunks) unless that step also solves the task.

One difference from the official chunked sampler: it sums a chunk's rewards past a solving step (with the chunk's
mask 0); here a chunk stops at the solving step (:mod:`pipeline.data.chunking`), so no reward after it counts.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import numpy as np

from pipeline.data.dataset import DatasetError, TransitionDataset

REQUIRED_KEYS: tuple[str, ...] = ("observations", "actions", "terminals", "qpos")  # qpos: for the task's rewards
_SINGLE_TASK = re.compile(r"^[a-z0-9x-]+-singletask(-task\d+)?-v\d+$")  # cube-double-singletask-task2-v0


def load_ogbench(source: str | os.PathLike[str], task: str | None = None) -> TransitionDataset:
    """Read an OGBench npz file as the transitions of one single task.

    Args:
        source: an OGBench dataset file (``.npz`` with ``observations [N, S]``, ``actions [N, A]``,
            ``terminals [N]`` at trajectory ends and ``qpos [N, Q]``).
        task: the single-task env id whose rewards to compute, e.g. ``cube-double-singletask-task2-v0``.

    Returns:
        ``N - (trajectories)`` transitions; ``meta`` has ``env_id`` (the task) and ``format``.
    """
    path = Path(source)
    if task is None:
        raise DatasetError(path, "task", "format 'ogbench' needs the single-task env id whose rewards to compute "
                           "(pretrain.dataset.task, e.g. cube-double-singletask-task2-v0)")
    if not isinstance(task, str) or not _SINGLE_TASK.match(task):
        raise DatasetError(path, "task", f"expected an OGBench single-task env id such as "
                           f"'cube-double-singletask-task2-v0', got {task!r}")
    if not path.is_file():
        raise DatasetError(path, None, "no such file (an OGBench dataset is an .npz file)")
    try:
        with np.load(path) as f:
            missing = [k for k in REQUIRED_KEYS if k not in f.files]
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise DatasetError(path, None, f"not a readable .npz file ({e})") from None
    if missing:
        raise DatasetError(path, missing[0], f"missing; an OGBench dataset has {list(REQUIRED_KEYS)} (qpos gives the "
                           "single-task rewards)")

    import gymnasium
    import ogbench.manipspace  # noqa: F401  (registers the envs)
    from ogbench.relabel_utils import relabel_dataset
    from ogbench.utils import load_dataset

    data = load_dataset(str(path), compact_dataset=False, add_info=True)
    try:
        env = gymnasium.make(task)
    except gymnasium.error.Error as e:
        raise DatasetError(path, "task", f"not an OGBench env id ({e})") from None
    try:
        obs_dim = env.observation_space.shape[0]
        if data["observations"].ndim != 2 or data["observations"].shape[1] != obs_dim:
            raise DatasetError(path, "observations", f"expected shape [N, {obs_dim}] for {task}, got "
                               f"{list(data['observations'].shape)}")
        relabel_dataset(task, env, data)
    finally:
        env.close()
    traj_end = data["terminals"] > 0  # OGBench: the last transition of each trajectory
    solved = data["masks"] == 0
    return TransitionDataset(
        observations=data["observations"], actions=data["actions"], rewards=data["rewards"],
        next_observations=data["next_observations"], terminals=solved.astype(np.float32),
        timeouts=(traj_end & ~solved).astype(np.float32),
        meta={"source": str(path), "format": "ogbench", "env_id": task},
    )
