"""Observation and reward statistics, computed once from a dataset and saved with its artefact.

Observations are standardized as ``(obs - mean) / std`` with ``std`` floored at ``std_floor`` so constant
dimensions (e.g. a fixed object id) map to 0 instead of dividing by zero. The statistics are taken over the
``observations`` column only (``next_observations`` repeats it up to one step per episode). Reward statistics
(mean, std, min, max) are recorded for reward scaling and reports; nothing here changes rewards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from pipeline.data.dataset import TransitionDataset


@dataclass(frozen=True, eq=False)
class NormalizationStats:
    """Per-dimension observation statistics ``obs_mean [S]``, ``obs_std [S]`` (already floored) and reward
    scalars. Tensors are float32."""

    obs_mean: torch.Tensor
    obs_std: torch.Tensor
    reward_mean: float
    reward_std: float
    reward_min: float
    reward_max: float
    std_floor: float

    def __post_init__(self) -> None:
        if self.obs_mean.dim() != 1 or self.obs_mean.shape != self.obs_std.shape:
            raise ValueError(f"obs_mean and obs_std must both have shape [S], got "
                             f"{list(self.obs_mean.shape)} and {list(self.obs_std.shape)}")
        if not bool((self.obs_std > 0).all()) or not bool(torch.isfinite(self.obs_mean).all()):
            raise ValueError("obs_std must be positive and obs_mean finite")

    def normalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """``(obs - mean) / std`` for ``obs [..., S]``; computed on ``obs``'s device and dtype."""
        return (obs - self.obs_mean.to(obs)) / self.obs_std.to(obs)

    def denormalize_obs(self, obs: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`normalize_obs` for ``obs [..., S]``."""
        return obs * self.obs_std.to(obs) + self.obs_mean.to(obs)

    def to(self, device: str | torch.device) -> NormalizationStats:
        """A copy with the tensors on ``device``."""
        return NormalizationStats(self.obs_mean.to(device), self.obs_std.to(device), self.reward_mean,
                                  self.reward_std, self.reward_min, self.reward_max, self.std_floor)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (CPU tensors and floats) for ``torch.save`` with ``weights_only`` loading."""
        return {"obs_mean": self.obs_mean.detach().cpu(), "obs_std": self.obs_std.detach().cpu(),
                "reward_mean": self.reward_mean, "reward_std": self.reward_std, "reward_min": self.reward_min,
                "reward_max": self.reward_max, "std_floor": self.std_floor}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NormalizationStats:
        """Inverse of :meth:`to_dict`; raises KeyError/TypeError/ValueError on a malformed dict."""
        return cls(torch.as_tensor(d["obs_mean"], dtype=torch.float32),
                   torch.as_tensor(d["obs_std"], dtype=torch.float32),
                   float(d["reward_mean"]), float(d["reward_std"]), float(d["reward_min"]),
                   float(d["reward_max"]), float(d["std_floor"]))


def compute_normalization(dataset: TransitionDataset, std_floor: float = 1e-3) -> NormalizationStats:
    """Statistics of ``dataset.observations [N, S]`` and ``dataset.rewards [N]`` (float64 accumulation).

    ``std`` is the population standard deviation, floored at ``std_floor`` (> 0).
    """
    if not std_floor > 0:
        raise ValueError(f"std_floor must be > 0, got {std_floor}")
    obs = dataset.observations.double()
    rew = dataset.rewards.double()
    return NormalizationStats(
        obs_mean=obs.mean(0).float(),
        obs_std=obs.std(0, correction=0).clamp_min(std_floor).float(),
        reward_mean=float(rew.mean()),
        reward_std=float(rew.std(correction=0)),
        reward_min=float(rew.min()),
        reward_max=float(rew.max()),
        std_floor=float(std_floor),
    )
