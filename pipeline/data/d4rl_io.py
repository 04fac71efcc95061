"""D4RL-format HDF5 files: reader with ``d4rl.qlearning_dataset`` semantics, and a writer.

Layout (flat arrays over all steps of all episodes, concatenated):
``observations [N, S]``, ``actions [N, A]``, ``rewards [N]``, ``terminals [N]``, ``timeouts [N]``, optional
``next_observations [N, S]``, optional ``infos/*`` (ignored) and ``metadata/*`` (``metadata/env_name``,
``metadata/ref_min_score``, ``metadata/ref_max_score`` are read when present).

Without ``next_observations`` the reader follows ``d4rl.qlearning_dataset`` (default ``terminate_on_end=False``)
exactly: transition ``i`` uses ``observations[i + 1]`` as next state, rows with ``timeouts[i] = 1`` are dropped
(their next state is not stored) and so is the last row. With ``next_observations`` every row is kept and an
episode ends where ``terminals`` or ``timeouts`` is set or ``observations[i + 1] != next_observations[i]``.
Bootstrap masks come from ``terminals`` only. The last kept transition of an episode that did not end in a
terminal gets ``timeouts = 1`` in the resulting dataset.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.checkpoint import atomic_write
from pipeline.data.checks import check_actions, check_array, check_flags, finite_or_none
from pipeline.data.dataset import DatasetError, TransitionDataset

#: D4RL v2 reference returns (random policy, expert policy), keyed by environment family.
D4RL_REF_SCORES: dict[str, tuple[float, float]] = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
    "ant": (-325.6, 3879.7),
}
# D4RL dataset names: family, dataset kind, version, e.g. "hopper-medium-replay-v2". Gymnasium ids such as
# "Hopper-v5" deliberately do not match: their returns are not on the D4RL reference scale.
_D4RL_NAME = re.compile(r"^(hopper|halfcheetah|walker2d|ant)-[a-z]+(?:-[a-z]+)*-v\d+$")


def d4rl_reference_scores(env_name: str) -> tuple[float, float] | None:
    """``(ref_min, ref_max)`` for a D4RL dataset name like ``walker2d-medium-v2``, else ``None``."""
    m = _D4RL_NAME.match(env_name)
    return D4RL_REF_SCORES[m.group(1)] if m else None


def load_d4rl(source: str | os.PathLike[str], env_name: str | None = None) -> TransitionDataset:
    """Read a D4RL-format HDF5 file into a :class:`TransitionDataset` (rules in the module docstring).

    ``env_name`` (a D4RL name) overrides ``metadata/env_name`` for the reference scores; file reference scores
    (``metadata/ref_min_score``/``ref_max_score``) are used when no D4RL name is known.
    """
    import h5py

    path = Path(source)
    if env_name is not None and not isinstance(env_name, str):
        raise DatasetError(path, "env_name", f"expected a string, got {type(env_name).__name__}")
    if not path.is_file():
        raise DatasetError(path, None, "expected an existing D4RL-format .hdf5 file")
    try:
        with h5py.File(path, "r") as f:
            raw = _read_d4rl_arrays(f, path)
    except DatasetError:
        raise
    except Exception as e:  # h5py raises OSError/KeyError/RuntimeError/... on truncated or corrupt files
        raise DatasetError(path, None, f"expected a readable HDF5 file, reading failed "
                           f"({type(e).__name__}: {e}); is it truncated or corrupt?") from None

    obs, act, rew = raw["observations"], raw["actions"], raw["rewards"]
    term, tout = raw["terminals"], raw["timeouts"]
    n = obs.shape[0]
    if "next_observations" in raw:
        nobs = raw["next_observations"]
        keep = np.ones(n, dtype=bool)
        # A step starts a new episode when the stored next state is not the following row's state.
        cut = np.zeros(n, dtype=bool)
        cut[:-1] = np.any(obs[1:] != nobs[:-1], axis=1)
        cut[-1] = True
        ends = term | tout | cut
        new_tout = ends & ~term
    else:
        # d4rl.qlearning_dataset: loop over rows 0..N-2, skip timeout rows, next state = observations[i+1].
        nobs = np.empty_like(obs)
        nobs[:-1] = obs[1:]
        keep = ~tout
        keep[-1] = False
        # The row before a dropped (timeout) row, and the last kept row overall, end their episodes.
        follows_gap = np.zeros(n, dtype=bool)
        follows_gap[:-1] = ~keep[1:]
        ends = keep & (term | follows_gap)
        new_tout = ends & ~term
    if not keep.any():
        raise DatasetError(path, "timeouts", "expected at least one transition with a known next observation, "
                           "none is left after dropping time-out rows and the last row")
    idx = np.flatnonzero(keep)
    end_idx = np.flatnonzero(ends[keep]) + 1

    meta_env, meta_min, meta_max, sacflow_meta = raw["metadata"]
    name = env_name if env_name is not None else meta_env
    # An explicit D4RL name wins; then scores stored in the file; then the name stored in the file.
    refs, ref_source = (d4rl_reference_scores(env_name) if env_name else None), "d4rl"
    if refs is None and meta_min is not None and meta_max is not None:
        refs, ref_source = (meta_min, meta_max), "file"
    if refs is None and meta_env is not None:
        refs, ref_source = d4rl_reference_scores(meta_env), "d4rl"
    meta: dict[str, Any] = dict(sacflow_meta) if sacflow_meta else {}
    meta.update({
        "source": str(path), "format": "d4rl", "env_id": name,
        "ref_min_score": refs[0] if refs else None, "ref_max_score": refs[1] if refs else None,
        "ref_score_source": ref_source if refs else None, "has_next_observations": "next_observations" in raw,
        "rows_in_file": int(n), "rows_dropped": int(n - idx.size),
    })
    meta.setdefault("obs_keys", None)
    return TransitionDataset(
        observations=torch.from_numpy(obs[idx].astype(np.float32)),
        actions=torch.from_numpy(act[idx].astype(np.float32)),
        rewards=torch.from_numpy(rew[idx].astype(np.float32)),
        next_observations=torch.from_numpy(nobs[idx].astype(np.float32)),
        terminals=torch.from_numpy(term[idx].astype(np.float32)),
        timeouts=torch.from_numpy(new_tout[idx].astype(np.float32)),
        episode_ends=torch.from_numpy(end_idx.astype(np.int64)),
        meta=meta,
    )


def _read_d4rl_arrays(f: Any, path: Path) -> dict[str, Any]:
    """Read and validate the datasets of an open D4RL file; returns float64/bool numpy arrays and metadata."""
    import h5py

    for key in ("observations", "actions", "rewards", "terminals", "timeouts"):
        if key not in f:
            raise DatasetError(path, key, f"missing; a D4RL file needs datasets observations, actions, rewards, "
                               f"terminals, timeouts (found {sorted(f.keys())})")
        if not isinstance(f[key], h5py.Dataset):
            raise DatasetError(path, key, "expected an HDF5 dataset, found a group")
    obs = check_array(f["observations"][()], path, "observations", ndim=(2,))
    n, s = obs.shape
    if n == 0 or s == 0:
        raise DatasetError(path, "observations", f"expected shape [N, S] with N, S >= 1, got {list(obs.shape)}")
    out: dict[str, Any] = {"observations": obs}
    out["actions"] = check_array(f["actions"][()], path, "actions", ndim=(2,), length=n)
    if out["actions"].shape[1] == 0:
        raise DatasetError(path, "actions", "expected at least one action dimension")
    check_actions(out["actions"], path, "actions")
    out["rewards"] = check_array(f["rewards"][()], path, "rewards", ndim=(1,), length=n)
    for key in ("terminals", "timeouts"):
        out[key] = check_flags(check_array(f[key][()], path, key, ndim=(1,), length=n), path, key)
    if "next_observations" in f:
        if not isinstance(f["next_observations"], h5py.Dataset):
            raise DatasetError(path, "next_observations", "expected an HDF5 dataset, found a group")
        nobs = check_array(f["next_observations"][()], path, "next_observations", ndim=(2,), length=n)
        if nobs.shape != obs.shape:
            raise DatasetError(path, "next_observations", f"expected shape {list(obs.shape)} (as observations), "
                               f"got {list(nobs.shape)}")
        out["next_observations"] = nobs
    out["metadata"] = _read_metadata(f, path)
    return out


def _read_metadata(f: Any, path: Path) -> tuple[str | None, float | None, float | None, dict[str, Any] | None]:
    """``(env_name, ref_min, ref_max, sacflow_meta)`` from the optional ``metadata/`` group."""
    import h5py

    group = f.get("metadata")
    if not isinstance(group, h5py.Group):
        return None, None, None, None

    def scalar(key: str) -> Any:
        node = group.get(key)
        if not isinstance(node, h5py.Dataset) or node.shape not in ((), (1,)):
            return None
        value = node[()]
        value = value.reshape(-1)[0] if isinstance(value, np.ndarray) else value
        return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value

    env_name = scalar("env_name")
    env_name = env_name if isinstance(env_name, str) and env_name else None
    extra = scalar("sacflow_meta")
    sacflow_meta = None
    if isinstance(extra, str):
        try:
            parsed = json.loads(extra)
        except json.JSONDecodeError:
            raise DatasetError(path, "metadata/sacflow_meta", "expected a JSON object string") from None
        if not isinstance(parsed, dict):
            raise DatasetError(path, "metadata/sacflow_meta", "expected a JSON object string")
        sacflow_meta = parsed
    return env_name, finite_or_none(scalar("ref_min_score")), finite_or_none(scalar("ref_max_score")), sacflow_meta


def write_d4rl(dataset: TransitionDataset, path: str | os.PathLike[str], env_name: str | None = None) -> Path:
    """Export ``dataset`` as a D4RL-format HDF5 file at ``path`` (written to a temp file, then renamed).

    Writes ``observations, actions, rewards, terminals, timeouts, next_observations`` (float32 arrays, bool
    flags) and ``metadata/env_name`` (``env_name`` or ``meta['env_id']``), ``metadata/ref_min_score`` and
    ``metadata/ref_max_score`` when known, and ``metadata/sacflow_meta`` (the remaining meta as JSON).
    An episode end that carries neither flag is written with ``timeouts = 1`` so that reading the file back
    gives the same episodes.
    """
    import h5py

    path = Path(path)
    ds = dataset.to("cpu")
    assert ds.episode_ends is not None
    timeouts = ds.timeouts.numpy().astype(bool)
    terminals = ds.terminals.numpy().astype(bool)
    last = ds.episode_ends.numpy() - 1
    timeouts[last] |= ~terminals[last]
    name = env_name if env_name is not None else ds.meta.get("env_id")
    carried = {k: v for k, v in ds.meta.items() if k not in ("source", "format", "ref_min_score", "ref_max_score",
                                                            "ref_score_source", "has_next_observations",
                                                            "rows_in_file", "rows_dropped", "env_id")}

    def write(fobj: Any) -> None:
        with h5py.File(fobj, "w") as f:
            f.create_dataset("observations", data=ds.observations.numpy())
            f.create_dataset("actions", data=ds.actions.numpy())
            f.create_dataset("rewards", data=ds.rewards.numpy())
            f.create_dataset("terminals", data=terminals)
            f.create_dataset("timeouts", data=timeouts)
            f.create_dataset("next_observations", data=ds.next_observations.numpy())
            md = f.create_group("metadata")
            if name is not None:
                md.create_dataset("env_name", data=str(name))
            for key in ("ref_min_score", "ref_max_score"):
                if ds.meta.get(key) is not None:
                    md.create_dataset(key, data=float(ds.meta[key]))
            md.create_dataset("sacflow_meta", data=json.dumps(carried))

    atomic_write(path, write)
    return path
