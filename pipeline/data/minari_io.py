"""Minari datasets: the reader (local only, never the network). Recording one is :mod:`pipeline.collection.minari`.

Reading. ``source`` is a dataset id looked up under the local root (``$MINARI_DATASETS_PATH``, else
``~/.minari/datasets``, as Minari does) or a path to a dataset directory (the one holding ``data/``) or to its
``data/`` directory. Only the stored data and metadata are read; the environment is never instantiated, so a
dataset whose environment cannot be recovered still loads.

An episode of ``T`` steps stores ``T + 1`` observations: ``observations = obs[:-1]``,
``next_observations = obs[1:]``, ``terminals = terminations``, ``timeouts = truncations``; a last step with
neither flag (a recording cut short) gets ``timeouts = 1``. Observations are flattened per step: a ``Box`` of
any shape is raveled; a ``Dict`` space is concatenated over its top-level keys in sorted order, or in the order
of the ``obs_keys`` option (nested ``Dict``/``Tuple`` values are flattened recursively, sorted keys / index
order). ``Box`` actions with finite bounds other than ``[-1, 1]`` are mapped linearly onto ``[-1, 1]``; the
original bounds are kept in ``meta['action_low']`` / ``meta['action_high']``. Reference scores come from the
metadata (``ref_min_score``, ``ref_max_score``) when present.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from pipeline.data.checks import check_actions, check_array, check_flags, finite_or_none
from pipeline.data.dataset import DatasetError, TransitionDataset


def minari_root() -> Path:
    """The local Minari datasets root: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env is not None else Path.home() / ".minari" / "datasets"


def resolve_minari_source(source: str | os.PathLike[str]) -> Path:
    """The ``data/`` directory (holding ``metadata.json``) for a dataset id or a dataset directory path."""
    p = Path(source)
    for cand in (p / "data", p):
        if (cand / "metadata.json").is_file():
            return cand
    if p.is_dir() or p.is_absolute() or str(source).startswith("."):
        raise DatasetError(source, "data/metadata.json", "expected a Minari dataset directory holding "
                           "data/metadata.json, found none")
    cand = minari_root() / str(source) / "data"
    if (cand / "metadata.json").is_file():
        return cand
    local = _local_ids(minari_root())
    close = [d for d in local if d.split("/")[0] == str(source).split("/")[0]] or local
    raise DatasetError(source, None, f"unknown Minari dataset id: expected a dataset under {minari_root()} "
                       f"(set MINARI_DATASETS_PATH to change the root; nothing is downloaded); local ids: "
                       f"{close[:20]}")


def _local_ids(root: Path, limit: int = 200) -> list[str]:
    """Dataset ids under ``root`` (directories holding ``data/metadata.json``), at most ``limit``."""
    ids: list[str] = []
    if root.is_dir():
        for meta in sorted(root.glob("**/data/metadata.json")):
            ids.append(meta.parent.parent.relative_to(root).as_posix())
            if len(ids) >= limit:
                break
    return ids


def load_minari(source: str | os.PathLike[str], obs_keys: Sequence[str] | None = None) -> TransitionDataset:
    """Read a local Minari dataset into a :class:`TransitionDataset` (rules in the module docstring)."""
    import minari

    data_path = resolve_minari_source(source)
    if obs_keys is not None and (isinstance(obs_keys, str) or not obs_keys
                                 or not all(isinstance(k, str) for k in obs_keys)
                                 or len(set(obs_keys)) != len(obs_keys)):
        raise DatasetError(source, "obs_keys", f"expected a non-empty list of distinct key names, got {obs_keys!r}")
    try:
        ds = minari.MinariDataset(data_path)
        metadata = dict(ds.storage.metadata)
        obs_space, act_space = ds.observation_space, ds.action_space
    except Exception as e:  # minari/json/h5py raise many types on broken metadata or data files
        raise DatasetError(data_path, "metadata.json", f"expected a readable Minari dataset "
                           f"({type(e).__name__}: {e})") from None

    if not isinstance(act_space, gym.spaces.Box) or len(act_space.shape) != 1:
        raise DatasetError(data_path, "action_space", f"expected a 1-D Box action space, got {act_space}")
    if obs_keys is not None:
        if not isinstance(obs_space, gym.spaces.Dict):
            raise DatasetError(data_path, "obs_keys", f"only applies to Dict observation spaces, this one is "
                               f"{type(obs_space).__name__}")
        missing = [k for k in obs_keys if k not in obs_space.spaces]
        if missing:
            raise DatasetError(data_path, "obs_keys", f"keys {missing} are not in the observation space; "
                               f"expected some of {sorted(obs_space.spaces)}")
    flat_keys = _flat_keys(obs_space, data_path, top=obs_keys)

    low, high = act_space.low.astype(np.float64), act_space.high.astype(np.float64)
    rescale = bool(np.all(np.isfinite(low)) and np.all(np.isfinite(high)) and (np.any(low != -1) or np.any(high != 1)))
    if rescale and np.any(high <= low):
        raise DatasetError(data_path, "action_space", f"expected low < high, got low {low} high {high}")

    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "next_obs", "act", "rew", "term", "tout")}
    lengths: list[int] = []
    try:
        for ep in ds.iterate_episodes():
            t = len(ep.rewards)
            key = f"episode_{ep.id}"
            if t == 0:
                continue
            obs = _flatten(ep.observations, obs_space, data_path, key + "/observations", top=obs_keys)
            # T + 1 observations per T steps; values must also survive the cast to float32.
            obs = check_array(obs, data_path, key + "/observations", ndim=(2,), length=t + 1)
            act = check_array(ep.actions, data_path, key + "/actions", ndim=(2,), length=t,
                              width=act_space.shape[0])
            rew = check_array(ep.rewards, data_path, key + "/rewards", ndim=(1,), length=t)
            term = check_flags(check_array(ep.terminations, data_path, key + "/terminations", ndim=(1,), length=t),
                               data_path, key + "/terminations")
            trunc = check_flags(check_array(ep.truncations, data_path, key + "/truncations", ndim=(1,), length=t),
                                data_path, key + "/truncations")
            if rescale:
                act = 2.0 * (act - low) / (high - low) - 1.0
            check_actions(act, data_path, key + "/actions")
            tout = trunc.copy()
            tout[-1] |= not term[-1]
            for k, v in zip(parts, (obs[:-1], obs[1:], act, rew, term, tout)):
                parts[k].append(v)
            lengths.append(t)
    except DatasetError:
        raise
    except Exception as e:  # h5py errors on a truncated/corrupt main_data.hdf5
        raise DatasetError(data_path, "main_data.hdf5", f"expected readable episode data "
                           f"({type(e).__name__}: {e}); is it truncated or corrupt?") from None
    if not lengths:
        raise DatasetError(data_path, None, "expected at least one episode with steps, found none")

    env_spec = metadata.get("env_spec")
    env_id = None
    if isinstance(env_spec, str):
        try:
            env_id = json.loads(env_spec).get("id")
        except (json.JSONDecodeError, AttributeError):
            env_id = None
    meta: dict[str, Any] = {
        "source": str(source), "format": "minari", "dataset_id": metadata.get("dataset_id"),
        "data_path": str(data_path), "env_id": env_id, "env_spec": env_spec,
        "eval_env_spec": metadata.get("eval_env_spec"),
        "obs_keys": flat_keys, "ref_min_score": finite_or_none(metadata.get("ref_min_score")),
        "ref_max_score": finite_or_none(metadata.get("ref_max_score")),
        "action_low": low.tolist() if rescale else None, "action_high": high.tolist() if rescale else None,
    }
    if meta["ref_min_score"] is None or meta["ref_max_score"] is None:
        meta["ref_min_score"] = meta["ref_max_score"] = None
    return TransitionDataset.from_episode_parts(parts, lengths, meta)


def _flat_keys(space: gym.Space, source: Any, top: Sequence[str] | None = None, prefix: str = "") -> list[str] | None:
    """Key paths (``a/b``) of the leaves in flattening order; ``None`` for a plain Box space."""
    if isinstance(space, gym.spaces.Box):
        if space.dtype == np.uint8 and len(space.shape) == 3:
            raise DatasetError(source, "observation_space", f"image observations are not supported "
                               f"({prefix or 'observation'}: {space})")
        return None if not prefix else [prefix]
    if isinstance(space, gym.spaces.Dict):
        keys = list(top) if top is not None else sorted(space.spaces)
        children = [(f"{prefix}/{k}" if prefix else k, space.spaces[k]) for k in keys]
    elif isinstance(space, gym.spaces.Tuple):
        children = [(f"{prefix}/{i}" if prefix else str(i), s) for i, s in enumerate(space.spaces)]
    else:
        raise DatasetError(source, "observation_space", f"expected Box, Dict or Tuple observations, got {space}")
    out: list[str] = []
    for name, sub in children:
        out.extend(_flat_keys(sub, source, prefix=name) or [])
    return out


def _flatten(value: Any, space: gym.Space, source: Any, key: str, top: Sequence[str] | None = None) -> np.ndarray:
    """Stack one episode's observations ``[T+1, ...]`` (possibly nested) into ``[T+1, S]`` float64."""
    if isinstance(space, gym.spaces.Box):
        a = np.asarray(value)
        if a.dtype.kind not in "biuf" or a.ndim < 1 or a.shape[1:] != space.shape:
            raise DatasetError(source, key, f"expected numeric shape [T+1, {', '.join(map(str, space.shape))}], "
                               f"got {a.dtype} {list(a.shape)}")
        return a.reshape(a.shape[0], -1).astype(np.float64)
    if isinstance(space, gym.spaces.Dict):
        if not isinstance(value, dict):
            raise DatasetError(source, key, "expected a dict of observation arrays")
        names = list(top) if top is not None else sorted(space.spaces)
        for k in names:
            if k not in value:
                raise DatasetError(source, f"{key}/{k}", "missing from the stored observations")
        cols = [_flatten(value[k], space.spaces[k], source, f"{key}/{k}") for k in names]
    elif isinstance(space, gym.spaces.Tuple):
        if not isinstance(value, (tuple, list)) or len(value) != len(space.spaces):
            raise DatasetError(source, key, f"expected a tuple of {len(space.spaces)} observation arrays")
        cols = [_flatten(v, s, source, f"{key}/{i}") for i, (v, s) in enumerate(zip(value, space.spaces))]
    else:
        raise DatasetError(source, key, f"expected Box, Dict or Tuple observations, got {space}")
    if len({c.shape[0] for c in cols}) != 1:
        raise DatasetError(source, key, f"expected the same length for every key, got {[c.shape[0] for c in cols]}")
    return np.concatenate(cols, axis=1)
