"""Velocity networks for flow policies (docs/design.md, "The flow policy").

Every net has the same two-call interface used by :class:`pipeline.policies.flow.FlowPolicy`:

- ``encode(obs [B,S]) -> context``: whatever depends on the state only. It is computed once per
  rollout and reused at every Euler step (for Flow-T this is the state encoder and the
  cross-attention output; for the MLP nets it is the observation itself).
- ``forward(context, a [B,A], t [B,1], step=None) -> (v [B,A], log_sigma [B,A] | None)``: the
  velocity at ``(t, a, s)`` and, when the net was built with ``learned_noise=True``, the per-(state,
  action, step) log noise scale, squashed into ``[LOG_SIGMA_MIN, LOG_SIGMA_MAX]`` with ``tanh``.
  A rollout passes its step index ``step``; only nets with per-step BatchRenorm layers
  (built with ``renorm_steps``) read it, and they fall back to ``t`` when it is None (flow matching).

The nets contain no data-dependent Python control flow, so a rollout built on them traces under
``torch.compile(fullgraph=True)`` and runs on whatever device the parameters live on.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from pipeline.precision import FP32Linear
from pipeline.batch_renorm import ActorBatchRenorm, PerStepActorBatchRenorm

# Range of the learned log noise scale; the public from-scratch code uses the same bounds.
LOG_SIGMA_MIN = -5.0
LOG_SIGMA_MAX = 2.0


def squash_log_sigma(raw: Tensor) -> Tensor:
    """Map an unbounded head output ``raw [B,A]`` smoothly into ``[LOG_SIGMA_MIN, LOG_SIGMA_MAX]``.

    A ``tanh`` squash rather than a hard clamp keeps a gradient everywhere, so the entropy term
    of SAC can always move σ.
    """
    return LOG_SIGMA_MIN + 0.5 * (LOG_SIGMA_MAX - LOG_SIGMA_MIN) * (torch.tanh(raw) + 1.0)


def mlp(in_dim: int, hidden: int, layers: int, out_dim: int, activation: type[nn.Module],
        norm: Callable[[int], nn.Module] | None = None, head: type[nn.Linear] = nn.Linear) -> nn.Sequential:
    """``layers`` hidden layers of width ``hidden`` with ``activation`` (each followed by ``norm(hidden)`` when
    given), then a linear output layer of class ``head``. Maps ``[..., in_dim] -> [..., out_dim]``.
    """
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), activation()]
        if norm is not None:
            modules.append(norm(hidden))
        width = hidden
    modules.append(head(width, out_dim))
    return nn.Sequential(*modules)


def action_input_norm(features: int, batch_renorm: bool, renorm_steps: int | None) -> nn.Module:
    """The BatchRenorm layer a flow applies to an input that contains ``a_i``: one layer shared by the steps (the
    public CrossQ Flow-MLP and Flow-G actors), one per step of a ``renorm_steps``-step rollout (the public Flow-T
    actor's action layer), or the identity. Call it through :func:`apply_action_norm`."""
    if not batch_renorm:
        return nn.Identity()
    return ActorBatchRenorm(features) if renorm_steps is None else PerStepActorBatchRenorm(features, renorm_steps)


def apply_action_norm(norm: nn.Module, x: Tensor, t: Tensor, step: int | None) -> Tensor:
    """``x [B,F]`` through a layer from :func:`action_input_norm`; only a per-step layer reads ``t [B,1]`` and
    ``step``."""
    return norm(x, t, step) if isinstance(norm, PerStepActorBatchRenorm) else norm(x)


def state_action_norm(obs_dim: int, act_dim: int, batch_renorm: bool, renorm_steps: int | None) -> nn.Module:
    """The public CrossQ flow actors' BatchRenorm of ``[s, a_i]`` at every step (see :func:`action_input_norm`), or
    the identity. The time input stays out: it is one value per batch at each step, so batch statistics would
    normalize it to zero in the actor loss."""
    return action_input_norm(obs_dim + act_dim, batch_renorm, renorm_steps)


class FlowMLPVelocity(nn.Module):
    """Flow-MLP: ``v = MLP([s, a_i, t_i])`` — the unstable baseline of the paper.

    A shared ReLU trunk feeds a velocity head and, with ``learned_noise``, a ``log σ`` head. ``batch_renorm`` and
    ``renorm_steps``: see :func:`state_action_norm`.
    """

    def __init__(
        self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 2, learned_noise: bool = False,
        batch_renorm: bool = False, renorm_steps: int | None = None,
    ) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.learned_noise = obs_dim, act_dim, learned_noise
        self.in_norm = state_action_norm(obs_dim, act_dim, batch_renorm, renorm_steps)
        self.trunk = mlp(obs_dim + act_dim + 1, hidden, layers - 1, hidden, nn.ReLU)
        self.v_head = FP32Linear(hidden, act_dim)
        self.log_sigma_head = FP32Linear(hidden, act_dim) if learned_noise else None

    def encode(self, obs: Tensor) -> Tensor:
        """The context is the raw observation ``[B,S]``."""
        return obs

    def forward(self, context: Tensor, a: Tensor, t: Tensor, step: int | None = None) -> tuple[Tensor, Tensor | None]:
        """``context [B,S], a [B,A], t [B,1] -> (v [B,A], log_sigma [B,A] or None)``."""
        x = apply_action_norm(self.in_norm, torch.cat([context, a], dim=-1), t, step)
        h = torch.relu(self.trunk(torch.cat([x, t], dim=-1)))
        v = self.v_head(h)
        if self.log_sigma_head is None:
            return v, None
        return v, squash_log_sigma(self.log_sigma_head(h))


class SinusoidalTimeEmbedding(nn.Module):
    """``t [B,1] -> [B, dim]``: sines and cosines of ``t`` at ``dim/2`` geometric frequencies (1 down to 1/10000),
    then an MLP ``dim -> 2 dim -> dim`` with SiLU: the public from-scratch Flow-G's time input."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"time embedding width must be an even number >= 4, got {dim}")
        half = dim // 2
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) / (half - 1) * torch.arange(half)))
        self.mlp = mlp(dim, 2 * dim, 1, dim, nn.SiLU)

    def forward(self, t: Tensor) -> Tensor:
        angles = t * self.freqs
        return self.mlp(torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1))


class FlowGVelocity(nn.Module):
    """Flow-G, the gated (GRU-like) velocity: ``v = σ(G(x)) ⊙ (H(x) − a)`` with ``x = [s, a, t]``.

    The Euler step becomes ``a + Δt·z ⊙ (h̃ − a)``, a convex blend of ``a`` and the candidate ``h̃``
    whenever ``Δt·z ≤ 1``, which keeps the Jacobian ``∂a_{i+1}/∂a_i`` bounded. G's last layer starts
    with zero weights and bias 5 (as in the public code), so the gate is ≈ 0.993 for every input at
    initialisation and the flow starts as a plain ``v = h̃ − a`` relaxation.

    ``time_embedding`` (0: ``t`` is one input) replaces ``t`` in ``x`` by a :class:`SinusoidalTimeEmbedding` of that
    width. With ``learned_noise``, ``log σ`` comes from a third SiLU MLP of ``x`` (``sigma_net = "input"``) or from a
    ReLU MLP of the state alone, 2 × ``sigma_hidden`` (``"state"``, the public from-scratch Flow-G's; it is then
    computed once per rollout, in :meth:`encode`). G is ``gate_layers x gate_hidden`` (0: H's ``layers``,
    ``hidden``); H's activation is ``candidate_activation`` (``silu`` | ``gelu``). ``batch_renorm`` and
    ``renorm_steps``: see :func:`state_action_norm`.
    """

    GATE_INIT_BIAS = 5.0

    def __init__(
        self, obs_dim: int, act_dim: int, hidden: int = 256, layers: int = 2, learned_noise: bool = False,
        batch_renorm: bool = False, renorm_steps: int | None = None, time_embedding: int = 0,
        sigma_net: str = "input", sigma_hidden: int = 512, gate_hidden: int = 0, gate_layers: int = 0,
        candidate_activation: str = "silu",
    ) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.learned_noise = obs_dim, act_dim, learned_noise
        self.in_norm = state_action_norm(obs_dim, act_dim, batch_renorm, renorm_steps)
        self.time_embed = SinusoidalTimeEmbedding(time_embedding) if time_embedding else None
        in_dim = obs_dim + act_dim + (time_embedding or 1)
        self.gate = mlp(in_dim, gate_hidden or hidden, gate_layers or layers, act_dim, nn.SiLU, head=FP32Linear)
        activation = {"silu": nn.SiLU, "gelu": nn.GELU}[candidate_activation]
        self.candidate = mlp(in_dim, hidden, layers, act_dim, activation, head=FP32Linear)
        self.state_sigma = learned_noise and sigma_net == "state"
        self.log_sigma_net = None
        if learned_noise:
            self.log_sigma_net = (mlp(obs_dim, sigma_hidden, 2, act_dim, nn.ReLU, head=FP32Linear) if self.state_sigma
                                  else mlp(in_dim, hidden, layers, act_dim, nn.SiLU, head=FP32Linear))
        last = self.gate[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        nn.init.constant_(last.bias, self.GATE_INIT_BIAS)

    def encode(self, obs: Tensor) -> Tensor:
        """The context: the raw observation ``[B,S]``; with a state-only σ net, ``[s, log σ(s)]`` ``[B, S+A]``."""
        if self.state_sigma:
            assert self.log_sigma_net is not None
            return torch.cat([obs, squash_log_sigma(self.log_sigma_net(obs))], dim=-1)
        return obs

    def gate_value(self, context: Tensor, a: Tensor, t: Tensor, step: int | None = None) -> Tensor:
        """The gate ``z = σ(G([s, a, t])) [B,A]`` (exposed for diagnostics and tests)."""
        return torch.sigmoid(self.gate(self._input(context[:, :self.obs_dim], a, t, step)))

    def _input(self, obs: Tensor, a: Tensor, t: Tensor, step: int | None) -> Tensor:
        time = t if self.time_embed is None else self.time_embed(t)
        return torch.cat([apply_action_norm(self.in_norm, torch.cat([obs, a], dim=-1), t, step), time], dim=-1)

    def forward(self, context: Tensor, a: Tensor, t: Tensor, step: int | None = None) -> tuple[Tensor, Tensor | None]:
        """``context [B,S] (or [B,S+A], see encode), a [B,A], t [B,1] -> (v [B,A], log_sigma [B,A] or None)``."""
        obs = context[:, :self.obs_dim]
        x = self._input(obs, a, t, step)
        v = torch.sigmoid(self.gate(x)) * (self.candidate(x) - a)
        if self.log_sigma_net is None:
            return v, None
        if self.state_sigma:
            return v, context[:, self.obs_dim:]
        return v, squash_log_sigma(self.log_sigma_net(x))


class SingleTokenAttention(nn.Module):
    """Multi-head attention specialised to one query token and one key/value token.

    With a single key, the softmax over keys is identically 1 for every head, whatever the query
    and key projections are, so ``MultiheadAttention(q, kv, kv) == out_proj(value_proj(kv))``
    exactly. We therefore keep only the value and output projections: query/key projections would
    be parameters that can never receive a gradient. ``n_heads`` does not change the result (the
    per-head split and concatenation of the values is the identity); it is kept so that the layer
    is a drop-in reading of the public architecture. The equality with
    ``torch.nn.MultiheadAttention`` on the same weights is tested.
    """

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model={d_model} must be divisible by n_heads={n_heads}")
        self.d_model, self.n_heads = d_model, n_heads
        self.value_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def forward(self, kv: Tensor) -> Tensor:
        """``kv [..., d_model] -> [..., d_model]``: attention output for the single query."""
        return self.out_proj(self.value_proj(kv))


class DecoderLayer(nn.Module):
    """One Transformer decoder layer over a single action token.

    Self-attention, cross-attention to the state context, GELU feed-forward (width ``4·d_model``),
    each with a residual connection and a LayerNorm placed after (``post``, the public code) or
    before (``pre``) the sub-layer; ``batch_renorm`` puts an :class:`ActorBatchRenorm` in each LayerNorm's place
    (the public CrossQ Flow-T actor).
    """

    def __init__(self, d_model: int, n_heads: int, norm: str, batch_renorm: bool = False) -> None:
        super().__init__()
        if norm not in ("pre", "post"):
            raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
        self.pre_norm = norm == "pre"
        self.self_attn = SingleTokenAttention(d_model, n_heads)
        self.cross_attn = SingleTokenAttention(d_model, n_heads)
        self.ff = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        layer_norm = ActorBatchRenorm if batch_renorm else nn.LayerNorm
        self.norm_self = layer_norm(d_model)
        # Pre-norm would normalise only the query of cross-attention, which the single-key
        # attention ignores, so that LayerNorm exists only in the post-norm layout.
        self.norm_cross = None if self.pre_norm else layer_norm(d_model)
        self.norm_ff = layer_norm(d_model)

    def cross(self, context: Tensor) -> Tensor:
        """Cross-attention output ``[B,d]`` for the state token ``context [B,d]``.

        It depends on the state only (the single-key softmax ignores the query), so a rollout
        computes it once and reuses it at every step.
        """
        return self.cross_attn(context)

    def forward(self, x: Tensor, cross_out: Tensor) -> Tensor:
        """``x [B,d]`` (the action token), ``cross_out [B,d]`` (from :meth:`cross`) -> ``[B,d]``."""
        if self.pre_norm:
            x = x + self.self_attn(self.norm_self(x))
            x = x + cross_out
            return x + self.ff(self.norm_ff(x))
        assert self.norm_cross is not None
        x = self.norm_self(x + self.self_attn(x))
        x = self.norm_cross(x + cross_out)
        return self.norm_ff(x + self.ff(x))


class FlowTVelocity(nn.Module):
    """Flow-T, the decoded velocity (Transformer-decoder-like).

    Per step the token is ``x = E_a(a_i) + E_t(t_i)`` (linear action embedding plus an MLP time
    embedding); the state is one context token ``c = E_s(s)`` from an MLP encoder, as in the public
    code (``obs_emb`` expanded to a length-1 sequence). ``n_layers`` decoder layers, then linear
    heads give ``v`` and, with ``learned_noise``, ``log σ``. The token sees only its own action and
    the state, so the rollout stays Markov. With ``norm="pre"`` a final LayerNorm precedes the
    heads (the usual pre-norm arrangement).

    ``batch_renorm`` follows the public CrossQ Flow-T actor: BatchRenorm on ``a_i`` before the action
    embedding and in place of every LayerNorm (its layer on the observation is the policy's, see
    :class:`pipeline.policies.flow.FlowPolicy`). The action layer serves every step, as the decoder's layers do,
    unless ``renorm_steps`` gives it one layer per step, as the public code has (see :func:`action_input_norm`).
    """

    def __init__(
        self,
        obs_dim: int,
        act_dim: int,
        d_model: int = 64,
        n_layers: int = 2,
        n_heads: int = 4,
        norm: str = "post",
        learned_noise: bool = False,
        batch_renorm: bool = False,
        renorm_steps: int | None = None,
    ) -> None:
        super().__init__()
        self.obs_dim, self.act_dim, self.learned_noise = obs_dim, act_dim, learned_noise
        self.d_model = d_model
        half, quarter = max(d_model // 2, 1), max(d_model // 4, 1)
        self.action_norm = action_input_norm(act_dim, batch_renorm, renorm_steps)
        self.state_encoder = nn.Sequential(nn.Linear(obs_dim, half), nn.SiLU(), nn.Linear(half, d_model))
        self.action_embed = nn.Linear(act_dim, d_model)
        self.time_embed = nn.Sequential(
            nn.Linear(1, quarter), nn.SiLU(), nn.Linear(quarter, half), nn.SiLU(), nn.Linear(half, d_model)
        )
        self.layers = nn.ModuleList(DecoderLayer(d_model, n_heads, norm, batch_renorm) for _ in range(n_layers))
        final_norm = ActorBatchRenorm if batch_renorm else nn.LayerNorm
        self.final_norm = final_norm(d_model) if norm == "pre" else nn.Identity()
        self.v_head = FP32Linear(d_model, act_dim)
        self.log_sigma_head = FP32Linear(d_model, act_dim) if learned_noise else None

    def encode(self, obs: Tensor) -> Tensor:
        """State context for a rollout: per-layer cross-attention outputs ``[n_layers, B, d_model]``."""
        c = self.state_encoder(obs)
        return torch.stack([layer.cross(c) for layer in self.layers])

    def forward(self, context: Tensor, a: Tensor, t: Tensor, step: int | None = None) -> tuple[Tensor, Tensor | None]:
        """``context [L,B,d] (from encode), a [B,A], t [B,1] -> (v [B,A], log_sigma [B,A] or None)``."""
        x = self.action_embed(apply_action_norm(self.action_norm, a, t, step)) + self.time_embed(t)
        for i, layer in enumerate(self.layers):
            x = layer(x, context[i])
        x = self.final_norm(x)
        v = self.v_head(x)
        if self.log_sigma_head is None:
            return v, None
        return v, squash_log_sigma(self.log_sigma_head(x))

