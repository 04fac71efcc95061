"""Batch Renormalization (Ioffe, 2017), as CrossQ uses it in its critic and its actor.

- :class:`BatchRenorm`: per ensemble member over ``x [n, B, h]``; batch statistics in ``train()`` mode, running ones
  in ``eval()`` mode (the CrossQ critic).
- :class:`ActorBatchRenorm`: over ``x [B, F]``, running statistics unless a caller opens :func:`batch_statistics`
  on a module that contains it (the actor loss does): acting and critic targets read running statistics even while
  the agent trains.
- :class:`PerStepActorBatchRenorm`: one :class:`ActorBatchRenorm` per step of a flow rollout, for the layer that
  reads the action ``a_i``.
- :class:`DeferredStatistics`: the running statistics a forward pass moves, kept as values and written after it
  (a forward pass inside ``torch.func.grad`` may not write its buffers).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

Statistics = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # running mean, running variance, training calls


class _Moved:
    """A layer's running statistics while :class:`DeferredStatistics` records: the values its forward passes moved
    them to (``None`` until the first), not yet written to its buffers."""

    def __init__(self) -> None:
        self.recording = False
        self.values: Statistics | None = None


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
        self.moved = _Moved()

    def statistics(self) -> Statistics:
        """``(running_mean, running_var, steps)`` as the next forward pass reads them: the buffers, or the values
        that forward passes recorded by :class:`DeferredStatistics` moved them to."""
        if self.moved.recording and self.moved.values is not None:
            return self.moved.values
        return self.running_mean, self.running_var, self.steps

    def running_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer with running statistics as ``y = x * scale + shift``: ``(scale, shift)``, each ``[n, 1, h]``."""
        running_mean, running_var, _ = self.statistics()
        scale = self.weight / (running_var + self.eps).sqrt()
        return scale, self.bias - running_mean * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # statistics in fp32 under bf16 autocast too: a batch mean and variance rounded to 8 mantissa bits would
        # drift the running statistics
        x = x.float()
        if not self.training:
            scale, shift = self.running_affine()
            return torch.addcmul(shift, x, scale)
        with torch.no_grad():
            running_mean, running_var, steps = self.statistics()
            mean = x.mean(dim=1, keepdim=True)
            # two passes, not Tensor.var: on the CPU its kernel for this middle-dim reduction is ~9x slower
            # (bench/README.md)
            var = (x - mean).square_().mean(dim=1, keepdim=True)
            std = (var + self.eps).sqrt()
            running_std = (running_var + self.eps).sqrt()
            # warm-up gate as a tensor, so the forward pass has no host sync
            renorm = (steps >= self.warmup).to(x.dtype)
            r = (std / running_std).clamp_(1 / self.r_max, self.r_max)
            d = ((mean - running_mean) / running_std).clamp_(-self.d_max, self.d_max)
            r = renorm * r + (1 - renorm)
            d = renorm * d
            if self.moved.recording:
                self.moved.values = (running_mean.lerp(mean, self.momentum), running_var.lerp(var, self.momentum),
                                     steps + 1)
            else:
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
                self.steps += 1
        return _BatchRenormFunction.apply(x, self.weight, self.bias, mean, std.reciprocal(), r, d)


class _BatchRenormFunction(torch.autograd.Function):
    """``y = weight * ((x - mean) * inv_std * r + d) + bias`` over ``x [n, B, h]``, the batch's ``mean`` and
    ``inv_std`` functions of ``x``, ``r`` and ``d`` constants (Ioffe's stop-gradients); the rest ``[n, 1, h]``.

    Autograd through the formula would run one elementwise op over the ``[n, B, h]`` activations per node of the
    variance's chain rule; the closed form below reads them in two reductions and two multiply-adds (paper-size
    updates 1.08-1.20x faster, bench/README.md). The caller computes ``mean`` and ``inv_std`` without a graph. With
    ``g = dy * weight * r`` and ``x^ = (x - mean) * inv_std``, batch norm's gradient:

        dx = inv_std * (g - mean_B(g) - x^ * mean_B(g * x^))
        dweight = sum_B dy * (x^ r + d),   dbias = sum_B dy
    """

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                inv_std: torch.Tensor, r: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        scale = weight * r * inv_std  # y = x * scale + shift
        return torch.addcmul(bias + weight * d - mean * scale, x, scale)

    @staticmethod
    def setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple[torch.Tensor, ...],
                      output: torch.Tensor) -> None:
        # forward and setup_context apart: torch.func's transforms (compile_fullgraph's gradients) need them so
        x, weight, _, mean, inv_std, r, d = inputs
        ctx.save_for_backward(x, weight * r * inv_std, mean, inv_std, r, d)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, scale, mean, inv_std, r, d = ctx.saved_tensors
        rows = x.shape[1]
        dy_sum = dy.sum(dim=1, keepdim=True)
        # sum_B dy * x^, from sum_B dy * x: x^ is never formed
        dy_xhat = ((dy * x).sum(dim=1, keepdim=True) - mean * dy_sum) * inv_std
        dx = None
        if ctx.needs_input_grad[0]:
            # dx = scale * (dy - dy_sum / B - x^ * dy_xhat / B) = dy * scale + x * k + c, per feature
            k = -scale * inv_std * dy_xhat / rows
            dx = torch.addcmul(-scale * dy_sum / rows - mean * k, x, k).addcmul_(dy, scale)
        return dx, dy_xhat * r + dy_sum * d, dy_sum, None, None, None, None


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


class DeferredStatistics:
    """The :class:`BatchRenorm` layers of ``module``, whose running statistics forward passes inside
    :meth:`recording` move as values (later calls read them) instead of writing the buffers; :meth:`write` writes
    them afterwards. The same numbers as writing in place, for a forward pass that ``torch.func.grad`` transforms
    and so may not mutate tensors it did not receive as inputs.
    """

    def __init__(self, module: nn.Module) -> None:
        self.layers = [m for m in module.modules() if isinstance(m, BatchRenorm)]

    @contextmanager
    def recording(self) -> Iterator[None]:
        for layer in self.layers:
            layer.moved.recording, layer.moved.values = True, None
        try:
            yield
        finally:
            for layer in self.layers:
                layer.moved.recording = False

    def moved(self) -> dict[int, Statistics]:
        """The statistics the recorded forward passes moved, by layer index (layers not called are left out: a
        transform's outputs must be tensors)."""
        return {i: layer.moved.values for i, layer in enumerate(self.layers) if layer.moved.values is not None}

    def write(self, moved: Mapping[int, Statistics]) -> None:
        """Write :meth:`moved`'s values (returned out of the transform) to the layers' buffers."""
        with torch.no_grad():
            for i, values in moved.items():
                layer = self.layers[i]
                for buffer, value in zip((layer.running_mean, layer.running_var, layer.steps), values):
                    buffer.copy_(value)
        for layer in self.layers:
            layer.moved.values = None
