"""Tanh-squashed Gaussian SAC actor: the standard baseline next to the flow policies."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pipeline.precision import FP32Linear, fp32_when_kept
from pipeline.batch_renorm import ActorBatchRenorm
from pipeline.policies.flow import atanh_target, standard_normal, tanh_log_det_jacobian
from pipeline.policies.kinds import GAUSSIAN_BATCH_RENORM_MODES, TANH_JACOBIAN_MODES
from pipeline.policies.velocity import mlp

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


class GaussianPolicy(nn.Module):
    """``action = tanh(u)``, ``u ~ N(μ(s), diag σ(s)²)`` with a state-dependent log std.

    A ReLU MLP trunk (``layers`` hidden layers of width ``hidden``) feeds a mean head and a log-std
    head; the log std is squashed into ``[log_std_min, log_std_max]`` with ``tanh`` (a clamp that
    keeps its gradient). It shares the flow policies' interface; ``noise_std`` is accepted for
    uniformity and ignored, because the Gaussian's noise scale is the learned σ(s).

    ``batch_renorm``: ``input`` reads the observation through an :class:`ActorBatchRenorm` layer; ``crossq`` also
    puts one after every hidden layer, as CrossQ's actor does. ``tanh_jacobian``: the squashing correction,
    ``floored`` (``+1e-6`` inside the log, the default) or ``exact`` (:func:`tanh_log_det_jacobian`).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        hidden: int = 256,
        layers: int = 2,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
        batch_renorm: str = "none",
        tanh_jacobian: str = "floored",
    ) -> None:
        super().__init__()
        if not log_std_min < log_std_max:
            raise ValueError(f"log_std_min ({log_std_min}) must be < log_std_max ({log_std_max})")
        if batch_renorm not in GAUSSIAN_BATCH_RENORM_MODES:
            raise ValueError(f"batch_renorm must be one of {GAUSSIAN_BATCH_RENORM_MODES}, got {batch_renorm!r}")
        if tanh_jacobian not in TANH_JACOBIAN_MODES:
            raise ValueError(f"tanh_jacobian must be one of {TANH_JACOBIAN_MODES}, got {tanh_jacobian!r}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.log_std_min, self.log_std_max = float(log_std_min), float(log_std_max)
        self.tanh_jacobian = tanh_jacobian
        crossq = batch_renorm == "crossq"
        self.obs_norm = ActorBatchRenorm(obs_dim) if batch_renorm != "none" else nn.Identity()
        self.trunk = mlp(obs_dim, hidden, layers - 1, hidden, nn.ReLU, norm=ActorBatchRenorm if crossq else None)
        self.trunk_norm = ActorBatchRenorm(hidden) if crossq else nn.Identity()
        self.mean_head = FP32Linear(hidden, act_dim)
        self.log_std_head = FP32Linear(hidden, act_dim)

    def _check_obs(self, obs: Tensor) -> None:
        if obs.dim() != 2 or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"obs must have shape [batch, {self.obs_dim}], got {tuple(obs.shape)}")

    @fp32_when_kept
    def distribution(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``obs [B,S] -> (mean [B,A], log_std [B,A])`` of the pre-tanh Gaussian."""
        self._check_obs(obs)
        h = self.trunk_norm(torch.relu(self.trunk(self.obs_norm(obs))))
        raw = torch.tanh(self.log_std_head(h))
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (raw + 1.0)
        return self.mean_head(h), log_std

    def _log_prob(self, u: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
        """``log π(tanh(u) | s)`` for pre-tanh ``u [B,A]`` -> ``[B]``."""
        z = (u - mean) / log_std.exp()
        gauss = (-0.5 * z.square() - log_std - _LOG_SQRT_2PI).sum(dim=-1)
        return gauss - tanh_log_det_jacobian(u, self.tanh_jacobian)

    def sample(
        self, obs: Tensor, noise_std: float | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparameterized ``obs [B,S] -> (action [B,A] in [-1,1], log_prob [B])``.

        ``noise_std`` is ignored (the spread is the learned σ(s)); ``log_prob`` is not detached.
        """
        action, log_prob, _ = self.sample_with_log_sigma(obs, generator=generator)
        return action, log_prob

    def sample_with_log_sigma(
        self, obs: Tensor, noise_std: float | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`sample` plus ``log_sigma [B]``, the mean learned ``log σ(s)`` over action dims (detached)."""
        mean, log_std = self.distribution(obs)
        eps = standard_normal(mean.shape, mean, generator)
        u = mean + log_std.exp() * eps
        return torch.tanh(u), self._log_prob(u, mean, log_std), log_std.detach().mean(dim=-1)

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = True, noise_std: float | None = None) -> Tensor:
        """``obs [B,S] -> action [B,A]`` without gradients; deterministic gives ``tanh(μ(s))``."""
        if deterministic:
            return torch.tanh(self.distribution(obs)[0])
        return self.sample(obs)[0]

    def forward(self, obs: Tensor, noise_std: float | None = None) -> tuple[Tensor, Tensor]:
        """Same as :meth:`sample`."""
        return self.sample(obs, noise_std=noise_std)

    def bc_loss(self, obs: Tensor, actions: Tensor) -> Tensor:
        """Mean negative log-likelihood of dataset ``actions [B,A]`` (clipped to ±(1 − 1e-5)) -> scalar."""
        if actions.shape != (obs.shape[0], self.act_dim):
            raise ValueError(f"actions must have shape [{obs.shape[0]}, {self.act_dim}], got {tuple(actions.shape)}")
        mean, log_std = self.distribution(obs)
        return -self._log_prob(atanh_target(actions), mean, log_std).mean()
