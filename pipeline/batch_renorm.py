"""Batch Renormalization (Ioffe, 2017), as CrossQ uses it in its critic and its actor.

- :class:`BatchRenorm`: per ensemble member over ``x [n, B, h]``; batch statistics in ``train()`` mode, running ones
  in ``eval()`` mode (the CrossQ critic).
- :class:`ActorBatchRenorm`: over ``x [B, F]``, running statistics unless a caller opens :func:`batch_statistics`
  on a module that contains it (the actor loss does): acting and critic targets read running statistics even while
  the agent trains.
- :class:`PerStepActorBatchRenorm`: one :class:`ActorBatchRenorm` per step of a flow rollout, for the layer that
  reads the action ``a_i``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn



class BatchRenorm(nn.Module):
    """Batch Renormalization (Ioffe, 2017) per ensemble member over ``x [n, B, h]``.

    During the first ``warmup`` training calls it is plain batch norm (r = 1, d = 0), as in CrossQ; afterwards the
    batch statistics are corrected towards the running ones with ``r`` clipped to [1/r_max, r_max] and ``d`` to
    [-d_max, d_max]. In eval mode the running statistics are used.
    """

    def __init__(self, n: int, features: int, momentum: float = 0.01, eps: float = 1e-3, r_max: float = 3.0,
                 d_max: float = 5.0, warmup: int = 100_000) -> None:
        super().__init__()
        self.momentum, self.eps, self.r_max, self.d_max, self.warmup = momentum, eps, r_max, d_max, warmup
        self.weight = nn.Parameter(torch.ones(n, 1, features))
        self.bias = nn.Parameter(torch.zeros(n, 1, features))
        self.register_buffer("running_mean", torch.zeros(n, 1, features))
        self.register_buffer("running_var", torch.ones(n, 1, features))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def running_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer with running statistics as ``y = x * scale + shift``: ``(scale, shift)``, each ``[n, 1, h]``."""
        scale = self.weight / (self.running_var + self.eps).sqrt()
        return scale, self.bias - self.running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in fp32 under bf16 autocast too: a batch mean and variance rounded to 8 mantissa bits would
        # drift the running statistics
        x = x.float()
        # y = (x - mean) / std * r + d, then * weight + bias, folded into one per-feature scale and shift so the
        # [n, B, h] activations see one fused multiply-add instead of four elementwise passes (forward and backward)
        if not self.training:
            scale, shift = self.running_affine()
            return torch.addcmul(shift, x, scale)
        mean = x.mean(dim=1, keepdim=True)
        centered = x - mean
        # two passes, not Tensor.var: on the CPU its kernel for this middle-dim reduction is ~9x slower
        # (bench/README.md)
        var = centered.square().mean(dim=1, keepdim=True)
        std = (var + self.eps).sqrt()
        running_std = (self.running_var + self.eps).sqrt()
        # warm-up gate as a tensor, so the forward pass has no host sync
        renorm = (self.steps >= self.warmup).to(x.dtype)
        r = (std.detach() / running_std).clamp(1 / self.r_max, self.r_max)
        d = ((mean.detach() - self.running_mean) / running_std).clamp(-self.d_max, self.d_max)
        r = renorm * r + (1 - renorm)
        d = renorm * d
        with torch.no_grad():
            self.running_mean.lerp_(mean, self.momentum)
            self.running_var.lerp_(var, self.momentum)
            self.steps += 1
        return torch.addcmul(self.bias + self.weight * d, centered, self.weight * r / std)


class ActorBatchRenorm(BatchRenorm):
    """BatchRenorm of ``x [..., F]`` (statistics over every leading dim) that uses running statistics unless it is
    inside :func:`batch_statistics`.

    It ignores ``train()``/``eval()`` of the modules above it: acting (one observation at a time) and critic
    targets must read running statistics even while the agent trains, and only the actor loss moves them, as in
    CrossQ's actor. A layer called at every step of a flow rollout moves its statistics once per step, as the public
    code's shared layers do.
    """

    def __init__(self, features: int, warmup: int = 100_000) -> None:
        super().__init__(1, features, warmup=warmup)
        self.training = False

    def train(self, mode: bool = True) -> ActorBatchRenorm:
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.reshape(1, -1, x.shape[-1])).reshape(x.shape)


class PerStepActorBatchRenorm(nn.Module):
    """One :class:`ActorBatchRenorm` of ``x [B, F]`` per step of a ``steps``-step flow rollout.

    A layer shared by the steps pools ``a_0 ~ N(0, I)`` and the later ``a_i``, whose scale the flow sets (up to 7x
    apart in docs/results.md's runs), in its running statistics, so when acting each step is normalized with
    statistics that are not its own (in the actor loss each step reads its own batch's). The public CrossQ Flow-T
    actor has a separate action layer per step; this module gives any flow that layout
    (``policy.batch_renorm: crossq_per_step``).
    """

    def __init__(self, features: int, steps: int, warmup: int = 100_000) -> None:
        super().__init__()
        self.layers = nn.ModuleList(ActorBatchRenorm(features, warmup=warmup) for _ in range(steps))

    def forward(self, x: torch.Tensor, t: torch.Tensor, step: int | None = None) -> torch.Tensor:
        """``x [B, F]`` at rollout step ``step``, or, with ``step=None``, at times ``t [B, 1]`` in [0, 1] -> ``[B, F]``.

        ``step=None`` serves flow matching, which draws ``t ~ U[0, 1]`` off the rollout's grid: each row reads the
        running statistics of the step whose interval ``[i/K, (i+1)/K)`` holds its ``t``.
        """
        if step is not None:
            return self.layers[step](x)
        if any(layer.training for layer in self.layers):
            raise RuntimeError("batch statistics need one rollout step per call: pass step=")
        affine = [layer.running_affine() for layer in self.layers]
        scale = torch.stack([scale.reshape(-1) for scale, _ in affine])  # [K, F]
        shift = torch.stack([shift.reshape(-1) for _, shift in affine])
        k = len(self.layers)
        index = (t.reshape(-1) * k).floor().clamp(0, k - 1).long()
        return torch.addcmul(shift[index], x.float(), scale[index])


@contextmanager
def batch_statistics(module: nn.Module) -> Iterator[None]:
    """Every :class:`ActorBatchRenorm` inside ``module`` normalizes with (and updates) batch statistics."""
    layers = [m for m in module.modules() if isinstance(m, ActorBatchRenorm)]
    for layer in layers:
        layer.training = True
    try:
        yield
    finally:
        for layer in layers:
            layer.training = False
