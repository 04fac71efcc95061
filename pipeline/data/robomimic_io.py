"""Reader for robomimic HDF5 datasets (low-dim observations).

Layout (robomimic docs, "Dataset Structure"): group ``data`` with attribute ``env_args`` (JSON: ``env_name``,
``type``, ``env_kwargs``) and ``total``; one group ``data/demo_<i>`` per demonstration with ``actions [T, A]``,
``rewards [T]``, ``dones [T]``, ``obs/<key> [T, ...]``, optionally ``next_obs/<key>`` and ``states``, and the
attribute ``num_samples`` (= T); an optional ``mask/<filter_key>`` dataset lists demo names (bytes).

Resulting transitions: demos in numeric order (``demo_10`` after ``demo_9``); the observation is the
concatenation of ``obs_keys`` (each flattened per step); ``terminals = dones``; ``timeouts = 1`` on the last step
of a demo that does not end with ``dones = 1``. A demo without ``next_obs`` for the chosen keys takes the next
observation from ``obs`` shifted by one; its last step then has no next state: it is kept (with
``next_obs = obs``, which a terminal never bootstraps from) when it is terminal and dropped otherwise, and
``meta['next_obs_derived']`` lists such demos.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pipeline.data.checks import check_actions, check_array, check_flags
from pipeline.data.dataset import DatasetError, TransitionDataset

#: Low-dim keys robomimic's low_dim configs train on, in robomimic's order; used when all are in the file.
ROBOMIMIC_LOW_DIM_KEYS = ("object", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
_DEMO = re.compile(r"^demo_(\d+)$")


def load_robomimic(source: str | os.PathLike[str], obs_keys: Sequence[str] | None = None,
                   filter_key: str | None = None) -> TransitionDataset:
    """Read a robomimic HDF5 file into a :class:`TransitionDataset` (rules in the module docstring).

    ``obs_keys``: ordered observation keys; default :data:`ROBOMIMIC_LOW_DIM_KEYS` when every one of them is in
    the first demo, else all non-image keys sorted. Image keys (rank > 2 per demo) are rejected.
    ``filter_key``: use only the demos listed in ``mask/<filter_key>``.
    """
    import h5py

    path = Path(source)
    if obs_keys is not None:
        if isinstance(obs_keys, str) or not all(isinstance(k, str) for k in obs_keys) or len(obs_keys) == 0:
            raise DatasetError(path, "obs_keys", f"expected a non-empty list of key names, got {obs_keys!r}")
        if len(set(obs_keys)) != len(obs_keys):
            raise DatasetError(path, "obs_keys", f"expected distinct key names, got {list(obs_keys)}")
    if filter_key is not None and not isinstance(filter_key, str):
        raise DatasetError(path, "filter_key", f"expected a string, got {type(filter_key).__name__}")
    if not path.is_file():
        raise DatasetError(path, None, "expected an existing robomimic .hdf5 file")
    try:
        with h5py.File(path, "r") as f:
            return _load(f, path, list(obs_keys) if obs_keys is not None else None, filter_key)
    except DatasetError:
        raise
    except Exception as e:  # h5py raises OSError/KeyError/RuntimeError/... on truncated or corrupt files
        raise DatasetError(path, None, f"expected a readable HDF5 file, reading failed "
                           f"({type(e).__name__}: {e}); is it truncated or corrupt?") from None


def _load(f: Any, path: Path, obs_keys: list[str] | None, filter_key: str | None) -> TransitionDataset:
    import h5py

    data = f.get("data")
    if not isinstance(data, h5py.Group):
        raise DatasetError(path, "data", "missing; a robomimic file stores its demos in group 'data'")
    env_args = _env_args(data, path)
    demos = _select_demos(f, data, path, filter_key)
    if obs_keys is None:
        obs_keys = _default_obs_keys(data, demos[0], path)

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "next_obs", "act", "rew", "term", "tout")}
    lengths: list[int] = []
    derived: list[str] = []
    for demo in demos:
        g = data[demo]
        if not isinstance(g, h5py.Group):
            raise DatasetError(path, f"data/{demo}", "expected a demo group, found a dataset")
        for key in ("actions", "rewards", "dones", "obs"):
            if key not in g:
                raise DatasetError(path, f"data/{demo}/{key}", "missing; every demo needs actions, rewards, "
                                   "dones and obs")
        act = check_array(_dataset(g, "actions", path, demo), path, f"data/{demo}/actions", ndim=(2,))
        t = act.shape[0]
        if "num_samples" in g.attrs and int(np.asarray(g.attrs["num_samples"]).reshape(-1)[0]) != t:
            raise DatasetError(path, f"data/{demo}.attrs['num_samples']", f"expected {t} (length of actions), "
                               f"got {g.attrs['num_samples']}")
        if t == 0:
            continue
        check_actions(act, path, f"data/{demo}/actions")
        rew = check_array(_dataset(g, "rewards", path, demo), path, f"data/{demo}/rewards", ndim=(1,), length=t)
        dones = check_flags(check_array(_dataset(g, "dones", path, demo), path, f"data/{demo}/dones",
                                        ndim=(1,), length=t), path, f"data/{demo}/dones")
        obs = _stack_obs(g, "obs", obs_keys, t, path, demo)
        if _has_keys(g, "next_obs", obs_keys):
            nobs = _stack_obs(g, "next_obs", obs_keys, t, path, demo)
            keep = t
        else:
            derived.append(demo)
            nobs = np.concatenate([obs[1:], obs[-1:]], axis=0)
            keep = t if dones[-1] else t - 1  # a non-terminal last step has no stored next state
        if keep == 0:
            continue
        tout = np.zeros(keep, dtype=bool)
        tout[-1] = not dones[keep - 1]
        for k, v in zip(parts, (obs[:keep], nobs[:keep], act[:keep], rew[:keep], dones[:keep], tout)):
            parts[k].append(v)
        lengths.append(keep)
    if not lengths:
        raise DatasetError(path, "data", f"expected at least one transition in demos {demos[:5]}..., found none")

    for part, what in (("act", "actions"), ("obs", f"obs {obs_keys}")):
        widths = {a.shape[1] for a in parts[part]}
        if len(widths) != 1:
            raise DatasetError(path, what, f"expected the same size in every demo, got sizes {sorted(widths)}")
    if {a.shape[1] for a in parts["next_obs"]} != {parts["obs"][0].shape[1]}:
        raise DatasetError(path, f"next_obs {obs_keys}", "expected the same size as obs in every demo")
    meta: dict[str, Any] = {
        "source": str(path), "format": "robomimic", "env_id": env_args.get("env_name"), "env_args": env_args,
        "obs_keys": obs_keys, "filter_key": filter_key, "demos": demos, "next_obs_derived": derived,
        "ref_min_score": None, "ref_max_score": None,
    }
    return TransitionDataset.from_episode_parts(parts, lengths, meta)


def _env_args(data: Any, path: Path) -> dict[str, Any]:
    key = "data.attrs['env_args']"
    if "env_args" not in data.attrs:
        raise DatasetError(path, key, "missing; expected a JSON string with env_name, type and env_kwargs")
    raw = data.attrs["env_args"]
    raw = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
    try:
        env_args = json.loads(str(raw))
    except json.JSONDecodeError as e:
        raise DatasetError(path, key, f"expected a JSON string ({e})") from None
    if not isinstance(env_args, dict) or not isinstance(env_args.get("env_name"), str):
        raise DatasetError(path, key, "expected a JSON object with a string 'env_name'")
    return env_args


def _select_demos(f: Any, data: Any, path: Path, filter_key: str | None) -> list[str]:
    import h5py

    present = {name: int(m.group(1)) for name in data.keys() if (m := _DEMO.match(name))}
    if filter_key is None:
        names = list(present)
    else:
        mask = f.get("mask")
        available = sorted(mask.keys()) if isinstance(mask, h5py.Group) else []
        if filter_key not in available:
            raise DatasetError(path, f"mask/{filter_key}", f"missing; expected one of the file's filter keys "
                               f"{available}")
        node = mask[filter_key]
        if not isinstance(node, h5py.Dataset) or node.dtype.kind not in "SOU" or node.ndim != 1:
            raise DatasetError(path, f"mask/{filter_key}", "expected a 1-D array of demo names")
        names = [n.decode("utf-8", errors="replace") if isinstance(n, bytes) else str(n) for n in node[()]]
        for n in names:
            if n not in present:
                raise DatasetError(path, f"mask/{filter_key}", f"lists {n!r}, expected names of groups in "
                                   "'data' (demo_<i>)")
        if len(set(names)) != len(names):
            raise DatasetError(path, f"mask/{filter_key}", "expected distinct demo names, found repeats")
    if not names:
        raise DatasetError(path, "data" if filter_key is None else f"mask/{filter_key}",
                           "expected at least one demo group named demo_<i>, found none")
    return sorted(names, key=lambda n: present[n])


def _dataset(g: Any, key: str, path: Path, demo: str) -> np.ndarray:
    import h5py

    node = g[key]
    if not isinstance(node, h5py.Dataset):
        raise DatasetError(path, f"data/{demo}/{key}", "expected an HDF5 dataset, found a group")
    return node[()]


def _default_obs_keys(data: Any, demo: str, path: Path) -> list[str]:
    import h5py

    group = data[demo].get("obs")
    if not isinstance(group, h5py.Group):
        raise DatasetError(path, f"data/{demo}/obs", "missing; every demo needs an obs group")
    if all(k in group for k in ROBOMIMIC_LOW_DIM_KEYS):
        return list(ROBOMIMIC_LOW_DIM_KEYS)
    keys = sorted(k for k in group.keys() if isinstance(group[k], h5py.Dataset) and group[k].ndim <= 2)
    if not keys:
        raise DatasetError(path, f"data/{demo}/obs", f"expected at least one low-dim key, found only "
                           f"{sorted(group.keys())}")
    return keys


def _has_keys(g: Any, group: str, keys: list[str]) -> bool:
    sub = g.get(group)
    return sub is not None and all(k in sub for k in keys)


def _stack_obs(g: Any, group: str, keys: list[str], t: int, path: Path, demo: str) -> np.ndarray:
    """Concatenate ``g[group][key]`` for ``keys`` into ``[t, S]``."""
    import h5py

    sub = g.get(group)
    if not isinstance(sub, h5py.Group):
        raise DatasetError(path, f"data/{demo}/{group}", "expected a group of observation datasets")
    cols = []
    for k in keys:
        name = f"data/{demo}/{group}/{k}"
        if k not in sub:
            raise DatasetError(path, name, f"missing; obs_keys asks for {k!r}, the demo has {sorted(sub.keys())}")
        node = sub[k]
        if not isinstance(node, h5py.Dataset):
            raise DatasetError(path, name, "expected an HDF5 dataset, found a group")
        if node.ndim > 2:
            raise DatasetError(path, name, f"expected a low-dim key of shape [T] or [T, d], got {list(node.shape)} "
                               "(image observations are not supported)")
        a = check_array(node[()], path, name, ndim=(1, 2), length=t)
        cols.append(a.reshape(t, -1))
    return np.concatenate(cols, axis=1)
