"""Numeric precision of training and acting (``trainer.precision``, Lightning's names): how the maths executes, not
what it computes.

``bf16-mixed`` runs matrix products under ``torch.autocast(dtype=bfloat16)``; weights, optimizer state,
BatchRenorm statistics, log-probabilities and every loss stay fp32. The layers whose outputs *are* the numbers SAC
compares (Q-values, velocities, log-σ) compute in fp32 (:class:`FP32Linear`): bf16 keeps 8 bits of mantissa, so a
Q-value of 100 would be rounded to ±0.5, larger than most TD errors.

``trainer.precision_scope`` narrows bf16 to one half of the agent: the other half is marked with :func:`keep_fp32`,
and its computing entry points (decorated with :func:`fp32_when_kept`) leave autocast, whoever entered it (the
update, or Lightning's precision plugin around a training step).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar, get_args

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import Precision, PrecisionScope

PRECISIONS: tuple[str, ...] = get_args(Precision)
PRECISION_SCOPES: tuple[str, ...] = get_args(PrecisionScope)
# the half of the agent each scope keeps in fp32 (SACAgent's attribute names)
KEPT_FP32: dict[str, tuple[str, ...]] = {"critic": ("actor",), "agent": (), "actor": ("critic", "critic_target")}
_KEPT = "kept_fp32"  # the marker attribute keep_fp32 sets on a module


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX); without it oneDNN emulates bf16, slower than
    fp32. Off Linux (no /proc/cpuinfo) oneDNN's own check decides."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a precision the device cannot run fast: bf16 on a CPU without AVX-512 BF16 / AMX, or on a GPU
    without bf16 support. Falling back silently would change a run's numerics by machine."""
    if precision not in PRECISIONS:
        raise ValueError(f"trainer.precision = {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision != "bf16-mixed":
        return
    if device.type == "cpu" and not cpu_has_fast_bf16():
        raise ValueError("trainer.precision = 'bf16-mixed' needs a CPU with AVX-512 BF16 or AMX (this one has "
                         "neither: bf16 would be emulated, slower than fp32); set trainer.precision=32-true")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"trainer.precision = 'bf16-mixed': {torch.cuda.get_device_name(device)} has no bf16; "
                         f"set trainer.precision=32-true")


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager[None]:
    """The context ``precision`` runs the forward passes in on ``device`` (a no-op for ``32-true``)."""
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def acting_precision(precision: str, device: torch.device) -> contextlib.AbstractContextManager[None]:
    """The context acting runs in: ``precision``'s on CUDA; fp32 on the CPU, also inside Lightning's autocast. At
    batch 1 bf16 acting on a CPU is 1.6-2.9x slower than fp32 (bench/act_latency.py): every weight is cast on every
    call, which costs more than the small matrix products save."""
    if device.type == "cpu":
        return full_precision("cpu")
    return autocast(precision, device)


@contextlib.contextmanager
def full_precision(device_type: str) -> Iterator[None]:
    """Leave autocast for a region that must compute in fp32 (a no-op outside autocast)."""
    if torch.is_autocast_enabled(device_type):
        with torch.autocast(device_type, enabled=False):
            yield
    else:
        yield


def keep_fp32(module: nn.Module) -> nn.Module:
    """Mark ``module`` to compute in fp32 under autocast too (its :func:`fp32_when_kept` entry points); returns it.
    A ``copy.deepcopy`` of a marked module is marked too."""
    setattr(module, _KEPT, True)
    return module


M = TypeVar("M", bound=Callable[..., Any])


def fp32_when_kept(method: M) -> M:
    """Decorate a module's computing entry point (a rollout, a critic's forward): on a module marked with
    :func:`keep_fp32` the call leaves autocast, with its floating tensor arguments cast to fp32 (a no-op for fp32
    ones); on any other module it runs as written."""

    @functools.wraps(method)
    def entry(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if not getattr(self, _KEPT, False):
            return method(self, *args, **kwargs)
        with full_precision(args[0].device.type):
            return method(self, *(a.float() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
                                  for a in args), **kwargs)

    return entry  # type: ignore[return-value]


class FP32Linear(nn.Linear):
    """``nn.Linear`` that computes in fp32 under autocast too: the output heads (Q, velocity, log-σ, Gaussian mean
    and log-std), whose outputs bf16 would round. Same parameters and initialization as ``nn.Linear``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x.device.type):
            return F.linear(x.float(), self.weight, self.bias)
