"""The in-memory transition dataset every loader produces, and its artefact file.

A :class:`TransitionDataset` is a flat table of ``N`` transitions ``(s, a, r, s', terminal, timeout)`` in
float32 torch tensors, cut into episodes by ``episode_ends``. Conventions shared by all formats:

- ``terminals[i] = 1``: ``s'`` is a terminal state, the critic target does not bootstrap.
- ``timeouts[i] = 1``: the episode was cut after transition ``i`` (time limit, end of a demo, end of the
  recording); ``next_observations[i]`` is still a real next state and the critic target bootstraps from it.
- ``episode_ends``: exclusive end index of every episode, strictly increasing, the last one equal to ``N``.
- Actions lie in ``[-1, 1]``; values outside by at most :data:`ACTION_TOLERANCE` (float rounding) are clamped,
  anything further raises :class:`DatasetError`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from pipeline.checkpoint import atomic_write
from pipeline.data.normalization import NormalizationStats, compute_normalization

ArrayLike = Union[np.ndarray, torch.Tensor]

#: Largest excess over ``|a| = 1`` accepted (and clamped away) in stored actions.
ACTION_TOLERANCE = 1e-4
#: Version tag of the artefact written by :meth:`TransitionDataset.save`.
ARTEFACT_VERSION = 1

_TENSOR_FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


class DatasetError(ValueError):
    """A dataset file, directory or id is missing, malformed, or inconsistent with what was expected.

    The message names the source (file, directory or dataset id), the key inside it when there is one, and
    what was expected. ``source`` and ``key`` are also kept as attributes for programmatic use.
    """

    def __init__(self, source: str | os.PathLike[str] | None, key: str | None, problem: str) -> None:
        self.source = None if source is None else str(source)
        self.key = key
        where = self.source if self.source is not None else "<dataset>"
        if key is not None:
            where = f"{where} [{key}]"
        super().__init__(f"{where}: {problem}")


@dataclass(eq=False)
class TransitionDataset:
    """Offline transitions as float32 tensors on one device.

    Shapes: ``observations [N, S]``, ``actions [N, A]``, ``rewards [N]``, ``next_observations [N, S]``,
    ``terminals [N]`` and ``timeouts [N]`` (0/1 floats), ``episode_ends [E]`` (int64, exclusive ends, last
    equals ``N``; ``None`` derives it from the terminal/timeout flags plus the end of the data).
    ``meta`` is a JSON-serializable dict (keys used by the project: ``source``, ``format``, ``env_id``,
    ``env_args``, ``obs_keys``, ``ref_min_score``, ``ref_max_score``). ``normalization`` holds the observation
    and reward statistics saved with the artefact (see :mod:`pipeline.data.normalization`).

    Arrays and tensors of any float/int/bool dtype are accepted and converted; every check failure raises
    :class:`DatasetError` naming ``meta['source']``.
    """

    observations: torch.Tensor
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor
    terminals: torch.Tensor
    timeouts: torch.Tensor
    episode_ends: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    normalization: NormalizationStats | None = None
    # [N] env steps each row's decision executed, set by pipeline.data.chunking (None: one step per row, unchunked)
    chunk_steps: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.meta, dict):
            raise DatasetError(None, "meta", f"expected a dict, got {type(self.meta).__name__}")
        src = self.meta.get("source")
        try:
            json.dumps(self.meta)
        except (TypeError, ValueError) as e:
            raise DatasetError(src, "meta", f"expected JSON-serializable metadata ({e})") from None
        for name in _TENSOR_FIELDS:
            setattr(self, name, _as_float_tensor(getattr(self, name), src, name))
        device = self.observations.device
        for name in _TENSOR_FIELDS[1:]:
            setattr(self, name, getattr(self, name).to(device))  # one device for all, that of observations

        n = self.observations.shape[0] if self.observations.dim() > 0 else 0
        if self.observations.dim() != 2 or n == 0 or self.observations.shape[1] == 0:
            raise DatasetError(src, "observations",
                               f"expected shape [N, S] with N, S >= 1, got {list(self.observations.shape)}")
        if self.actions.dim() != 2 or self.actions.shape[1] == 0:
            raise DatasetError(src, "actions", f"expected shape [N, A] with A >= 1, got {list(self.actions.shape)}")
        if self.next_observations.shape != self.observations.shape:
            raise DatasetError(src, "next_observations", f"expected shape {list(self.observations.shape)} "
                               f"(same as observations), got {list(self.next_observations.shape)}")
        for name in ("actions", "rewards", "terminals", "timeouts"):
            t = getattr(self, name)
            if t.shape[0:1] != (n,) or (name != "actions" and t.dim() != 1):
                want = f"[{n}, A]" if name == "actions" else f"[{n}]"
                raise DatasetError(src, name, f"expected shape {want} (length of observations), got {list(t.shape)}")
        for name in _TENSOR_FIELDS:
            bad = ~torch.isfinite(getattr(self, name))
            if bool(bad.any()):
                row = int(bad.reshape(n, -1).any(dim=1).nonzero()[0, 0])
                raise DatasetError(src, name, f"expected finite values, found NaN/Inf at row {row}")
        for name in ("terminals", "timeouts"):
            t = getattr(self, name)
            if not bool(((t == 0) | (t == 1)).all()):
                raise DatasetError(src, name, "expected 0/1 flags, found other values")
        amax = float(self.actions.abs().max())
        if amax > 1.0 + ACTION_TOLERANCE:
            row = int((self.actions.abs() > 1.0 + ACTION_TOLERANCE).any(dim=1).nonzero()[0, 0])
            raise DatasetError(src, "actions", f"expected values in [-1, 1] (tolerance {ACTION_TOLERANCE}), "
                               f"found |a| = {amax:.6g} (first at row {row}); rescale actions to [-1, 1]")
        if amax > 1.0:
            self.actions = self.actions.clamp(-1.0, 1.0)

        if self.episode_ends is None:
            self.episode_ends = episode_ends_from_flags(self.terminals, self.timeouts)
        ends = torch.as_tensor(self.episode_ends)
        if ends.dtype.is_floating_point or ends.dtype == torch.bool or ends.dim() != 1 or ends.numel() == 0:
            raise DatasetError(src, "episode_ends", f"expected a non-empty 1-D integer tensor, got "
                               f"dtype {ends.dtype} shape {list(ends.shape)}")
        ends = ends.to(device=self.observations.device, dtype=torch.int64)
        if int(ends[-1]) != n or int(ends[0]) <= 0 or (ends.numel() > 1 and bool((ends.diff() <= 0).any())):
            raise DatasetError(src, "episode_ends", f"expected strictly increasing positive exclusive ends "
                               f"with the last equal to N={n}, got first={int(ends[0])} last={int(ends[-1])}")
        self.episode_ends = ends

        if self.normalization is not None:
            if not isinstance(self.normalization, NormalizationStats):
                raise DatasetError(src, "normalization", "expected NormalizationStats or None, "
                                   f"got {type(self.normalization).__name__}")
            if self.normalization.obs_mean.shape != (self.obs_dim,):
                raise DatasetError(src, "normalization", f"expected statistics for {self.obs_dim} observation "
                                   f"dims, got {list(self.normalization.obs_mean.shape)}")
            self.normalization = self.normalization.to(self.observations.device)

    # ----------------------------------------------------------------- sizes and conversions
    def __len__(self) -> int:
        return int(self.observations.shape[0])

    @property
    def obs_dim(self) -> int:
        """``S``, the flattened observation size."""
        return int(self.observations.shape[1])

    @property
    def act_dim(self) -> int:
        """``A``, the action size."""
        return int(self.actions.shape[1])

    @property
    def num_episodes(self) -> int:
        """``E``, the number of episodes (segments) in ``episode_ends``."""
        assert self.episode_ends is not None
        return int(self.episode_ends.numel())

    @property
    def device(self) -> torch.device:
        """The device holding every tensor of the dataset."""
        return self.observations.device

    def to(self, device: str | torch.device) -> TransitionDataset:
        """A copy with every tensor (and the normalization statistics) on ``device``."""
        moved = {name: getattr(self, name).to(device) for name in _TENSOR_FIELDS}
        assert self.episode_ends is not None
        if self.chunk_steps is not None:
            moved["chunk_steps"] = self.chunk_steps.to(device)
        return dataclasses.replace(self, **moved, episode_ends=self.episode_ends.to(device),
                                   meta=dict(self.meta),
                                   normalization=None if self.normalization is None
                                   else self.normalization.to(device))

    def with_normalization(self, std_floor: float = 1e-3) -> TransitionDataset:
        """A copy carrying observation/reward statistics computed from this data (see ``compute_normalization``)."""
        return dataclasses.replace(self, meta=dict(self.meta),
                                   normalization=compute_normalization(self, std_floor=std_floor))

    @classmethod
    def from_episode_parts(cls, parts: dict[str, list[np.ndarray]], lengths: list[int],
                           meta: dict[str, Any]) -> TransitionDataset:
        """Concatenate per-episode arrays (keys ``obs, act, rew, next_obs, term, tout``) into one dataset."""
        cat = {k: np.concatenate(v) for k, v in parts.items()}
        return cls(observations=cat["obs"], actions=cat["act"], rewards=cat["rew"], next_observations=cat["next_obs"],
                   terminals=cat["term"], timeouts=cat["tout"],
                   episode_ends=torch.from_numpy(np.cumsum(lengths).astype(np.int64)), meta=meta)

    @classmethod
    def random(cls, n: int, obs_dim: int, act_dim: int, episode_length: int = 100, seed: int = 0,
               source: str = "random") -> TransitionDataset:
        """``n`` transitions of Gaussian observations and rewards and uniform actions in [-1, 1), cut by a time
        limit every ``episode_length`` steps: data to measure and test the training machinery (throughput, DDP,
        resuming) on, with nothing to learn."""
        g = torch.Generator().manual_seed(seed)
        obs = torch.randn(n + 1, obs_dim, generator=g)
        timeouts = torch.zeros(n)
        timeouts[episode_length - 1::episode_length] = 1
        timeouts[-1] = 1
        return cls(obs[:-1], torch.rand(n, act_dim, generator=g) * 2 - 1, torch.randn(n, generator=g), obs[1:],
                   torch.zeros(n), timeouts, meta={"source": source})

    # ----------------------------------------------------------------- episodes and scores
    def episode_starts(self) -> torch.Tensor:
        """Start index of every episode, ``[E]`` int64."""
        assert self.episode_ends is not None
        return torch.cat([self.episode_ends.new_zeros(1), self.episode_ends[:-1]])

    def episode_returns(self) -> torch.Tensor:
        """Undiscounted return of every episode, ``[E]`` float32 (float64 accumulation)."""
        assert self.episode_ends is not None
        cums = torch.cat([self.rewards.new_zeros(1, dtype=torch.float64), self.rewards.double().cumsum(0)])
        return (cums[self.episode_ends] - cums[self.episode_starts()]).float()

    def normalized_score(self, episode_return: float | ArrayLike) -> float | torch.Tensor:
        """``(R - ref_min) / (ref_max - ref_min)`` with the reference scores in ``meta``.

        Returns a fraction (1.0 = expert), as ``d4rl.get_normalized_score`` and ``minari.get_normalized_score``
        do; multiply by 100 for the numbers papers print. Raises :class:`DatasetError` without references.
        """
        lo, hi = self.meta.get("ref_min_score"), self.meta.get("ref_max_score")
        if lo is None or hi is None:
            raise DatasetError(self.meta.get("source"), "ref_min_score/ref_max_score",
                               "no reference scores are known for this dataset, so no normalized score")
        if hi == lo:
            raise DatasetError(self.meta.get("source"), "ref_min_score/ref_max_score",
                               f"expected ref_max_score != ref_min_score, both are {lo}")
        if isinstance(episode_return, (int, float)):
            return (float(episode_return) - lo) / (hi - lo)
        return (torch.as_tensor(episode_return, dtype=torch.float64) - lo) / (hi - lo)

    # ----------------------------------------------------------------- artefact file
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the dataset (tensors on CPU, meta, normalization) as one file, atomically.

        A temp file beside ``path`` is written, fsynced and renamed over ``path``, so a crash leaves either the
        old artefact or the new one, never a partial file.
        """
        assert self.episode_ends is not None
        payload = {
            "artefact": "sacflow.TransitionDataset",
            "version": ARTEFACT_VERSION,
            "tensors": {name: getattr(self, name).detach().cpu().contiguous() for name in _TENSOR_FIELDS},
            "episode_ends": self.episode_ends.detach().cpu(),
            "meta": self.meta,
            "normalization": None if self.normalization is None else self.normalization.to_dict(),
        }
        atomic_write(path, lambda f: torch.save(payload, f))

    @classmethod
    def load(cls, path: str | os.PathLike[str], device: str | torch.device = "cpu") -> TransitionDataset:
        """Read an artefact written by :meth:`save`; a missing, truncated or foreign file raises DatasetError."""
        path = Path(path)
        if not path.is_file():
            raise DatasetError(path, None, "expected a dataset artefact file, found none")
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # torch raises several types for truncated / non-torch files
            raise DatasetError(path, None, f"expected a torch.save dataset artefact, could not read it "
                               f"({type(e).__name__}: {e})") from None
        if not isinstance(payload, dict) or payload.get("artefact") != "sacflow.TransitionDataset":
            raise DatasetError(path, "artefact", "expected a sacflow.TransitionDataset artefact")
        if payload.get("version") != ARTEFACT_VERSION:
            raise DatasetError(path, "version", f"expected artefact version {ARTEFACT_VERSION}, "
                               f"got {payload.get('version')!r}")
        tensors = payload.get("tensors")
        if not isinstance(tensors, dict) or any(name not in tensors for name in _TENSOR_FIELDS):
            raise DatasetError(path, "tensors", f"expected tensors {list(_TENSOR_FIELDS)}")
        meta = payload.get("meta")
        if not isinstance(meta, dict):
            raise DatasetError(path, "meta", "expected a dict")
        norm = payload.get("normalization")
        try:
            stats = None if norm is None else NormalizationStats.from_dict(norm)
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(path, "normalization", f"expected saved statistics ({e})") from None
        ds = cls(**{name: tensors[name] for name in _TENSOR_FIELDS}, episode_ends=payload.get("episode_ends"),
                 meta=meta, normalization=stats)
        return ds.to(device) if torch.device(device) != ds.device else ds


def episode_ends_from_flags(terminals: torch.Tensor, timeouts: torch.Tensor) -> torch.Tensor:
    """Exclusive episode ends ``[E]``: after every terminal or timeout, and at ``N`` (``terminals [N]``)."""
    n = terminals.shape[0]
    ends = (((terminals > 0) | (timeouts > 0)).nonzero().flatten() + 1).to(torch.int64)
    if ends.numel() == 0 or int(ends[-1]) != n:
        ends = torch.cat([ends, torch.tensor([n], dtype=torch.int64, device=ends.device)])
    return ends


def check_compatible(dataset: TransitionDataset, obs_dim: int, act_dim: int, source: str) -> None:
    """Raise DatasetError unless ``dataset`` has ``obs_dim`` observation and ``act_dim`` action dims.

    ``source`` names what the dims come from (e.g. an env id) so the message says what disagrees with what.
    """
    data_src = dataset.meta.get("source")
    keys = dataset.meta.get("obs_keys")
    if dataset.obs_dim != obs_dim:
        hint = f" (dataset obs_keys {keys})" if keys else ""
        raise DatasetError(data_src, "observations", f"expected {obs_dim} observation dims to match {source}, "
                           f"the dataset has {dataset.obs_dim}{hint}")
    if dataset.act_dim != act_dim:
        raise DatasetError(data_src, "actions", f"expected {act_dim} action dims to match {source}, "
                           f"the dataset has {dataset.act_dim}")


def _as_float_tensor(value: Any, source: Any, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        t = value
    else:
        try:
            t = torch.as_tensor(np.asarray(value))
        except (TypeError, ValueError, RuntimeError) as e:
            raise DatasetError(source, name, f"expected a numeric array ({e})") from None
    if t.is_complex():
        raise DatasetError(source, name, f"expected a real numeric tensor, got dtype {t.dtype}")
    return t.to(torch.float32)
