"""Policies: flow policies (Flow-MLP, Flow-G, Flow-T) and the Gaussian SAC baseline.

All policies share one interface (docs/design.md, "Policies"):

- ``sample(obs [B,S], noise_std=None) -> (action [B,A] in [-1,1], log_prob [B])``, reparameterized;
- ``sample_with_log_sigma(obs, noise_std=None)``: the same plus the mean log noise scale per row ``[B]``;
- ``act(obs [B,S], deterministic=True) -> action [B,A]`` under ``no_grad``;
- ``bc_loss(obs [B,S], actions [B,A]) -> scalar``.

Build them with :func:`make_policy`; the kinds and their options are :mod:`pipeline.policies.kinds`. Importing this
package does not import torch (the config reads the kinds): the policy classes load when first used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.policies.kinds import POLICY_KINDS, check_policy_options, policy_options

if TYPE_CHECKING:
    from torch import nn

    from pipeline.policies.flow import FlowPolicy, FlowRollout
    from pipeline.policies.gaussian import GaussianPolicy
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


def __getattr__(name: str) -> Any:
    """The policy classes, imported on first use."""
    if name in ("FlowPolicy", "FlowRollout"):
        from pipeline.policies import flow as module
    elif name == "GaussianPolicy":
        from pipeline.policies import gaussian as module
    elif name in ("FlowGVelocity", "FlowMLPVelocity", "FlowTVelocity", "SingleTokenAttention"):
        from pipeline.policies import velocity as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)


def make_policy(kind: str, obs_dim: int, act_dim: int, **cfg: Any) -> nn.Module:
    """Build a policy of ``kind`` (one of :data:`POLICY_KINDS`) for ``obs [B,obs_dim]``, ``action [B,act_dim]``.

    Options (defaults in :func:`policy_options`):

    - flow kinds: ``steps`` (K, 1..32), ``noise`` (``fixed`` | ``learned``), ``noise_std`` (fixed σ,
      only with ``noise="fixed"``), ``log_prob`` (``exact`` | ``paper_code``), ``bc_target``
      (``pretanh`` | ``raw``);
    - ``flow_mlp``, ``flow_g`` and ``gaussian``: ``hidden`` (width), ``layers`` (hidden layers);
    - ``flow_g``: ``time_embedding``, ``sigma_net``, ``sigma_hidden``, ``gate_hidden`` and ``gate_layers`` (the
      gate network's size, 0: the candidate's), ``candidate_activation`` (``silu`` | ``gelu``);
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
    from pipeline.policies.flow import FlowPolicy
    from pipeline.policies.gaussian import GaussianPolicy
    from pipeline.policies.velocity import FlowGVelocity, FlowMLPVelocity, FlowTVelocity

    for key, value in (("obs_dim", obs_dim), ("act_dim", act_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be an int >= 1, got {value!r}")
    opts = check_policy_options(kind, cfg)

    if kind == "gaussian":
        return GaussianPolicy(obs_dim, act_dim, **opts)

    learned = opts["noise"] == "learned"
    crossq = opts["batch_renorm"] in ("crossq", "crossq_per_step")
    # per-step layers for the input that holds a_i, one per rollout step
    renorm_steps = opts["steps"] if opts["batch_renorm"] == "crossq_per_step" else None
    velocity: nn.Module
    if kind == "flow_mlp":
        velocity = FlowMLPVelocity(obs_dim, act_dim, opts["hidden"], opts["layers"], learned_noise=learned,
                                   batch_renorm=crossq, renorm_steps=renorm_steps)
    elif kind == "flow_g":
        velocity = FlowGVelocity(obs_dim, act_dim, opts["hidden"], opts["layers"], learned_noise=learned,
                                 batch_renorm=crossq, renorm_steps=renorm_steps, time_embedding=opts["time_embedding"],
                                 sigma_net=opts["sigma_net"], sigma_hidden=opts["sigma_hidden"],
                                 gate_hidden=opts["gate_hidden"], gate_layers=opts["gate_layers"],
                                 candidate_activation=opts["candidate_activation"])
    else:
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
