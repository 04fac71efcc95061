"""Writer for robomimic HDF5 datasets (:mod:`pipeline.collection.robosuite_demos` records scripted demos into it).

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
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.checkpoint import atomic_write

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
    operators: Sequence[str] | None = None,
) -> Path:
    """Write ``episodes`` as a robomimic HDF5 file at ``path`` (atomically); returns the path.

    Args:
        path: destination ``.hdf5`` file; its folder is created if missing.
        episodes: demonstrations, stored as ``data/demo_0``, ``data/demo_1``, ... in this order.
        env_args: robomimic env metadata (``env_name``, ``type``, ``env_kwargs``), e.g. ``RobosuiteEnv.env_args``.
        val_ratio: fraction of demos listed in ``mask/valid`` (the rest in ``mask/train``).
        seed: seed of the train/valid split.
        compression: h5py compression for obs datasets (robomimic uses ``"gzip"`` optionally), or None.
        operators: the MH operator of each episode (``better_operator_1`` ...): adds robomimic MH's masks
            (:func:`pipeline.data.robomimic_masks.mh_masks`: per operator, proficiency and union of two, each also
            ``_train`` / ``_valid``).
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
    extra: dict[str, list[str]] = {}
    if operators is not None:
        from pipeline.data.robomimic_masks import mh_masks

        if len(operators) != len(episodes):
            raise ValueError(f"operators: expected one per episode ({len(episodes)}), got {len(operators)}")
        index = {n: i for i, n in enumerate(names)}
        masks = mh_masks(list(operators), [index[n] for n in train], [index[n] for n in valid])
        extra = {k: [names[i] for i in v] for k, v in masks.items()}

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
            for k, demos in extra.items():
                f.create_dataset(f"mask/{k}", data=np.array(demos, dtype="S"))

    atomic_write(path, write)
    return path


__all__ = ["Episode", "write_robomimic"]
