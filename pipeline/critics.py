"""Q-function ensembles, vectorized over members (one batched matmul per layer, no Python loop over critics).

- :class:`QEnsemble`: N independent MLP critics ``Q_k(s, a)``; SAC keeps a target copy.
- :class:`CrossQCritic`: CrossQ's critic (Bhatt et al., 2024) with Batch Renormalization and no target network:
  current and next state-actions go through one joint forward pass so both see the same batch statistics.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.batch_renorm import BatchRenorm
from pipeline.precision import fp32_when_kept, full_precision


class VectorizedLinear(nn.Module):
    """``n`` independent linear layers applied to ``x [n, B, in]`` -> ``[n, B, out]`` with one ``baddbmm``."""

    def __init__(self, n: int, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n, 1, out_features))
        bound = 1.0 / math.sqrt(in_features)  # nn.Linear's default init, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class OutputVectorizedLinear(VectorizedLinear):
    """The Q head: computes in fp32 under autocast too (bf16 would round Q = 100 to +-0.5, :mod:`pipeline.precision`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with full_precision(x.device.type):
            if self.weight.shape[-1] == 1:
                # one output column as a product and a sum: on a CPU a batched matmul with one column (and its
                # backward, a one-row outer product) runs at ~1 GFLOP/s, 2.8x slower than this over forward and
                # backward at 2 x 256 (bench/README.md); the same sums, added in another order
                return (x.float() * self.weight.transpose(1, 2)).sum(-1, keepdim=True) + self.bias
            return torch.baddbmm(self.bias, x.float(), self.weight)


class VectorizedLayerNorm(nn.Module):
    """LayerNorm over the feature dim with a separate affine per ensemble member. ``x [n, B, h]``."""

    def __init__(self, n: int, features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, 1, features))
        self.bias = nn.Parameter(torch.zeros(n, 1, features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class QEnsemble(nn.Module):
    """``n`` MLP critics evaluated together.

    ``forward(obs [B, S], act [B, A]) -> q [n, B]``.
    """

    def __init__(self, obs_dim: int, act_dim: int, n: int = 2, hidden: int = 256, layers: int = 2,
                 layer_norm: bool = False) -> None:
        super().__init__()
        self.n = n
        mods: list[nn.Module] = []
        width = obs_dim + act_dim
        for _ in range(layers):
            mods.append(VectorizedLinear(n, width, hidden))
            if layer_norm:
                mods.append(VectorizedLayerNorm(n, hidden))
            mods.append(nn.ReLU())
            width = hidden
        mods.append(OutputVectorizedLinear(n, width, 1))
        self.net = nn.Sequential(*mods)

    @fp32_when_kept
    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return ensemble_forward(self.net, self.n, obs, act)


def ensemble_forward(net: nn.Module, n: int, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
    """Every member of ``net`` on the same ``[s, a]``: ``obs [B, S], act [B, A] -> q [n, B]``."""
    x = torch.cat([obs, act], dim=-1)
    return net(x.unsqueeze(0).expand(n, *x.shape)).squeeze(-1)


class CrossQCritic(nn.Module):
    """CrossQ critic ensemble: BatchRenorm on the input and after every hidden layer, no target network.

    ``forward(obs, act) -> q [n, B]``; :meth:`joint` evaluates ``(s, a)`` and ``(s', a')`` in one pass.
    """

    def __init__(self, obs_dim: int, act_dim: int, n: int = 2, hidden: int = 256, layers: int = 2,
                 warmup: int = 100_000) -> None:
        super().__init__()
        self.n = n
        mods: list[nn.Module] = [BatchRenorm(n, obs_dim + act_dim, warmup=warmup)]
        width = obs_dim + act_dim
        for _ in range(layers):
            mods += [VectorizedLinear(n, width, hidden), BatchRenorm(n, hidden, warmup=warmup), nn.ReLU()]
            width = hidden
        mods.append(OutputVectorizedLinear(n, width, 1))
        self.net = nn.Sequential(*mods)

    @fp32_when_kept
    def forward(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return ensemble_forward(self.net, self.n, obs, act)

    def joint(self, obs: torch.Tensor, act: torch.Tensor, next_obs: torch.Tensor,
              next_act: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``q [n, B]`` and ``q_next [n, B]`` from one batch-normalized pass over both halves."""
        q = self(torch.cat([obs, next_obs]), torch.cat([act, next_act]))
        return q.split(obs.shape[0], dim=1)


def make_critic(kind: str, obs_dim: int, act_dim: int, n: int = 2, hidden: int = 256, layers: int = 2,
                layer_norm: bool = False) -> nn.Module:
    """``kind`` in ``ensemble | crossq``."""
    if kind == "ensemble":
        return QEnsemble(obs_dim, act_dim, n=n, hidden=hidden, layers=layers, layer_norm=layer_norm)
    if kind == "crossq":
        return CrossQCritic(obs_dim, act_dim, n=n, hidden=hidden, layers=layers)
    raise ValueError(f"critic kind {kind!r}: expected 'ensemble' or 'crossq'")
