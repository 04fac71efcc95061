"""Policies: flow policies (Flow-MLP, Flow-G, Flow-T) and the Gaussian SAC baseline.

All policies share one interface (DESIGN.md §3):

- ``sample(obs [B,S], noise_std=None) -> (action [B,A] in [-1,1], log_prob [B])``, reparameterized;
- ``sample_with_log_sigma(obs, noise_std=None)``: the same plus the mean log noise scale per row ``[B]``;
- ``act(obs [B,S], deterministic=True) -> action [B,A]`` under ``no_grad``;
- ``bc_loss(obs [B,S], actions [B,A]) -> scalar``.

Build them with :func:`make_policy`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from torch import nn

from pipeline.batch_renorm import BATCH_RENORM_MODES
from pipeline.policies.flow import (
    BC_TARGETS,
    LOG_PROB_MODES,
    NOISE_MODES,
    TANH_JACOBIAN_MODES,
    FlowPolicy,
    FlowRollout,
)
from pipeline.policies.gaussian import GAUSSIAN_BATCH_RENORM_MODES, GaussianPolicy
from pipeline.policies.velocity import FlowGVelocity, FlowMLPVelocity, FlowTVelocity, SingleTokenAttention

__all__ = [
    "POLICY_KINDS",
    "FlowGVelocity",
    "FlowMLPVelocity",
    "FlowPolicy",
    "FlowRollout",
    "FlowTVelocity",
    "GaussianPolicy",
    "SingleTokenAttention",
    "make_policy",
    "policy_options",
]

POLICY_KINDS: tuple[str, ...] = ("gaussian", "flow_mlp", "flow_g", "flow_t")

Validator = Callable[[str, Any], Any]


def _int_range(lo: int, hi: int) -> Validator:
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValueError(f"policy option {key!r} must be an int in [{lo}, {hi}], got {value!r}")
        return value

    return check


def _positive_float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
        raise ValueError(f"policy option {key!r} must be a finite float > 0, got {value!r}")
    return float(value)


def _float(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"policy option {key!r} must be a finite float, got {value!r}")
    return float(value)


def _choice(options: tuple[str, ...]) -> Validator:
    def check(key: str, value: Any) -> str:
        if value not in options:
            raise ValueError(f"policy option {key!r} must be one of {options}, got {value!r}")
        return value

    return check


# key -> (validator, default), per policy kind.
_FLOW_COMMON: dict[str, tuple[Validator, Any]] = {
    "steps": (_int_range(1, 32), 4),
    "noise": (_choice(NOISE_MODES), "fixed"),
    "noise_std": (_positive_float, 0.1),
    "log_prob": (_choice(LOG_PROB_MODES), "exact"),
    "bc_target": (_choice(BC_TARGETS), "pretanh"),
}
_MLP_NET: dict[str, tuple[Validator, Any]] = {
    "hidden": (_int_range(1, 65536), 256),
    "layers": (_int_range(1, 64), 2),
}
# options every kind has
_SHARED: dict[str, tuple[Validator, Any]] = {
    "batch_renorm": (_choice(BATCH_RENORM_MODES), "none"),
    "tanh_jacobian": (_choice(TANH_JACOBIAN_MODES), "floored"),
}
_OPTIONS: dict[str, dict[str, tuple[Validator, Any]]] = {
    "gaussian": {
        **_MLP_NET,
        **_SHARED,
        "batch_renorm": (_choice(GAUSSIAN_BATCH_RENORM_MODES), "none"),
        "log_std_min": (_float, -5.0),
        "log_std_max": (_float, 2.0),
    },
    "flow_mlp": {**_FLOW_COMMON, **_MLP_NET, **_SHARED},
    "flow_g": {**_FLOW_COMMON, **_MLP_NET, **_SHARED},
    "flow_t": {
        **_FLOW_COMMON,
        **_SHARED,
        "d_model": (_int_range(1, 65536), 64),
        "n_layers": (_int_range(1, 64), 2),
        "n_heads": (_int_range(1, 1024), 4),
        "norm": (_choice(("post", "pre")), "post"),
    },
}


def policy_options(kind: str) -> dict[str, Any]:
    """The accepted options of policy ``kind`` with their defaults."""
    if kind not in _OPTIONS:
        raise ValueError(f"unknown policy kind {kind!r}; expected one of {POLICY_KINDS}")
    return {key: default for key, (_, default) in _OPTIONS[kind].items()}


def make_policy(kind: str, obs_dim: int, act_dim: int, **cfg: Any) -> nn.Module:
    """Build a policy of ``kind`` (one of :data:`POLICY_KINDS`) for ``obs [B,obs_dim]``, ``action [B,act_dim]``.

    Options (defaults in :func:`policy_options`):

    - flow kinds: ``steps`` (K, 1..32), ``noise`` (``fixed`` | ``learned``), ``noise_std`` (fixed σ,
      only with ``noise="fixed"``), ``log_prob`` (``exact`` | ``paper_code``), ``bc_target``
      (``pretanh`` | ``raw``);
    - ``flow_mlp``, ``flow_g`` and ``gaussian``: ``hidden`` (width), ``layers`` (hidden layers);
    - ``flow_t``: ``d_model``, ``n_layers``, ``n_heads`` (must divide ``d_model``), ``norm``
      (``post`` | ``pre``);
    - ``gaussian``: ``log_std_min``, ``log_std_max``;
    - every kind: ``batch_renorm`` (``none`` | ``input``: BatchRenorm on the observation | ``crossq``: where the
      public CrossQ actors have it; see each policy's docstring | ``crossq_per_step``, flow kinds: ``crossq`` with
      one layer per rollout step for the input that holds ``a_i``), statistics moved only inside
      :func:`pipeline.batch_renorm.batch_statistics`; ``tanh_jacobian`` (``floored``: ``log(1 − tanh² + 1e-6)`` as in
      the public code | ``exact``: without the ``1e-6``).

    An unknown kind or option, or a value out of range, raises ValueError naming it.
    """
    if kind not in _OPTIONS:
        raise ValueError(f"unknown policy kind {kind!r}; expected one of {POLICY_KINDS}")
    spec = _OPTIONS[kind]
    for key in cfg:
        if key not in spec:
            raise ValueError(f"unknown option {key!r} for policy kind {kind!r}; allowed: {sorted(spec)}")
    for key, value in (("obs_dim", obs_dim), ("act_dim", act_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an int >= 1, got {value!r}")
    opts = {key: check(key, cfg[key]) if key in cfg else default for key, (check, default) in spec.items()}

    if kind == "gaussian":
        if not opts["log_std_min"] < opts["log_std_max"]:
            raise ValueError(
                f"policy option 'log_std_min' ({opts['log_std_min']}) must be < 'log_std_max' ({opts['log_std_max']})"
            )
        return GaussianPolicy(obs_dim, act_dim, **opts)

    learned = opts["noise"] == "learned"
    crossq = opts["batch_renorm"] in ("crossq", "crossq_per_step")
    # per-step layers for the input that holds a_i, one per rollout step
    renorm_steps = opts["steps"] if opts["batch_renorm"] == "crossq_per_step" else None
    if learned and "noise_std" in cfg:
        raise ValueError("policy option 'noise_std' is only valid with noise='fixed' (noise='learned' was given)")
    velocity: nn.Module
    if kind == "flow_mlp":
        velocity = FlowMLPVelocity(obs_dim, act_dim, opts["hidden"], opts["layers"], learned_noise=learned,
                                   batch_renorm=crossq, renorm_steps=renorm_steps)
    elif kind == "flow_g":
        velocity = FlowGVelocity(obs_dim, act_dim, opts["hidden"], opts["layers"], learned_noise=learned,
                                 batch_renorm=crossq, renorm_steps=renorm_steps)
    else:
        if opts["d_model"] % opts["n_heads"] != 0:
            raise ValueError(
                f"policy option 'd_model' ({opts['d_model']}) must be divisible by 'n_heads' ({opts['n_heads']})"
            )
        velocity = FlowTVelocity(
            obs_dim,
            act_dim,
            d_model=opts["d_model"],
            n_layers=opts["n_layers"],
            n_heads=opts["n_heads"],
            norm=opts["norm"],
            learned_noise=learned,
            batch_renorm=crossq,
            renorm_steps=renorm_steps,
        )
    return FlowPolicy(
        velocity,
        steps=opts["steps"],
        noise=opts["noise"],
        noise_std=opts["noise_std"],
        log_prob=opts["log_prob"],
        bc_target=opts["bc_target"],
        tanh_jacobian=opts["tanh_jacobian"],
        # the observation layer: every kind's with "input"; with "crossq*" Flow-T's only (Flow-MLP and Flow-G
        # normalize [s, a_i] inside the velocity net instead)
        obs_norm=opts["batch_renorm"] == "input" or (crossq and kind == "flow_t"),
    )
