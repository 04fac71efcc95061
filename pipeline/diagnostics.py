"""Diagnostics of the flow rollout seen as a recurrent network (docs/design.md, "The flow policy").

SAC's actor loss reaches the velocity net's parameters at Euler step ``i`` only through the intermediate action
``a_{i+1}``, so ``‖∂Q/∂a_i‖`` along the path is the backpropagation-through-time signal of the rollout: it grows
towards ``a_0`` when the step Jacobians ``∂a_{i+1}/∂a_i`` have norms above one (exploding) and shrinks when they
are below one (vanishing). :func:`log_sigma_gradient` splits what moves a learned noise scale ``σ`` in the actor
loss between the critic and the entropy bonus.
"""

from __future__ import annotations

from pathlib import Path

import torch
import yaml
from torch import Tensor

from pipeline.checkpoint import load_checkpoint, run_checkpoint
from pipeline.config import load_config
from pipeline.policies.flow import FlowPolicy, FlowRollout, standard_normal
from pipeline.sac import SACAgent, agent_from_state


def _noise_leaf_rollout(agent: SACAgent, obs: Tensor, generator: torch.Generator | None,
                        what: str) -> tuple[FlowPolicy, Tensor, FlowRollout, Tensor]:
    """The actor loss's stochastic rollout of raw ``obs [B,S]`` with its noise ``ε [K+1,B,A]`` a leaf, and ``Q [B]``
    of its action (the critic ensemble reduced as in the actor loss), both with their graphs."""
    policy = agent.actor
    if not isinstance(policy, FlowPolicy):
        raise ValueError(f"the {what} needs a flow policy, got {type(policy).__name__}")
    obs = agent.normalize(obs)
    eps = standard_normal((policy.steps + 1, obs.shape[0], policy.act_dim), obs, generator).requires_grad_(True)
    was_training = agent.critic.training
    agent.critic.eval()  # a CrossQ critic must not move its running statistics
    try:
        r = policy.rollout(obs, noise_std=agent.actor_noise_std, eps=eps)
        q = agent.q_agg(agent.critic(obs, r.action))
    finally:
        agent.critic.train(was_training)
    return policy, eps, r, q


def rollout_gradient_profile(agent: SACAgent, obs: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Batch mean of ``‖∂Q(s, tanh a_K)/∂a_i‖₂`` for ``i = 0..K``: raw observations ``obs [B,S]`` -> ``[K+1]``.

    ``Q`` is the critic ensemble reduced as in the actor loss (the entropy term is left out: it reads the noise
    directly, not only through the path). The rollout is the actor loss's stochastic one, with the agent's
    ``actor_noise_std``. The noise ``ε`` is a leaf: ``a_0 = ε_0`` and ``a_{i+1} = mean_i + std_i·ε_{i+1}`` with
    ``mean_i``, ``std_i`` functions of ``a_i``, so ``∂Q/∂a_{i+1} = (∂Q/∂ε_{i+1}) / std_i`` exactly. The whole
    profile is exactly 0 when every sampled ``a_K`` saturates the tanh in float32 (``|a_K| ≳ 9``): then Q sends
    the actor no gradient at all.
    """
    _, eps, r, q = _noise_leaf_rollout(agent, obs, generator, "rollout gradient profile")
    (g,) = torch.autograd.grad(q.sum(), eps)
    grads = torch.cat([g[:1], g[1:] / r.stds.detach()])
    return grads.norm(dim=-1).mean(dim=-1)


def log_sigma_gradient(agent: SACAgent, obs: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Per state, ``d/dδ`` of the actor's objective ``Q − α log π`` with every ``log σ_i`` shifted by one common ``δ``.

    ``obs [B,S]`` raw observations -> ``(q [B], entropy [B])``: the critic's term and the entropy bonus's, summed
    over steps and action dims; positive pushes ``σ`` up (the actor ascends this objective). The rollout is the actor
    loss's stochastic one with the noise ``ε`` a leaf. Since ``a_{i+1} = mean_i + std_i·ε_{i+1}`` with ``std_i``
    proportional to ``σ_i``, a function ``f`` of the path has ``∂f/∂log σ_i = ε_{i+1}·∂f/∂ε_{i+1}``; ``log π`` also
    reads ``ε`` directly (``log N(ε; 0, I)``, no ``σ`` in it) and, in the ``exact`` mode, ``−log σ_i`` (−1 per dim).
    With ``log_prob="paper_code"`` only the tanh correction ties ``log π`` to ``σ``, and its push is mostly downward
    (a wider ``a_K`` saturates more), so a ``σ`` that rises there is pushed by the critic.
    """
    policy, eps, r, q = _noise_leaf_rollout(agent, obs, generator, "log sigma gradient")
    (g_q,) = torch.autograd.grad(q.sum(), eps, retain_graph=True)
    (g_lp,) = torch.autograd.grad(r.log_prob.sum(), eps)
    e = eps.detach()[1:]
    d_q = (e * g_q[1:]).sum(dim=(0, 2))
    # the direct log N(ε) term's derivative is −ε: add it back to keep only the path's dependence on σ
    d_log_prob = (e * (g_lp[1:] + e)).sum(dim=(0, 2))
    if policy.log_prob_mode == "exact":
        d_log_prob = d_log_prob - policy.steps * policy.act_dim
    return d_q, -agent.alpha.detach() * d_log_prob


def _checkpoint_agent_and_states(run: str | Path, batch: int, seed: int) -> tuple[SACAgent, Tensor, torch.Generator]:
    """The agent of a finetune run's last checkpoint, ``batch`` states of its replay buffer, and the generator."""
    run = Path(run)
    cfg = load_config(None, yaml.safe_load((run / "config.yaml").read_text()))
    state = load_checkpoint(run_checkpoint(run))
    data = state["buffer"]["data"]
    if data["obs"].shape[0] == 0:
        raise ValueError(f"{run_checkpoint(run)}: the replay buffer is empty, there are no states to profile")
    agent = agent_from_state(state, cfg, data["obs"].shape[1], data["actions"].shape[1] // cfg.sac.chunk)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, data["obs"].shape[0], (batch,), generator=g)
    return agent, data["obs"][idx], g


def checkpoint_gradient_profile(run: str | Path, batch: int = 256, seed: int = 0) -> Tensor:
    """:func:`rollout_gradient_profile` of a finetune run's last checkpoint -> ``[K+1]``.

    ``run`` is the finetune stage's directory (its ``config.yaml`` and ``checkpoints/``); the states are ``batch``
    observations drawn (with ``seed``) from the replay buffer saved in the checkpoint, i.e. what the actor trained on.
    """
    agent, obs, g = _checkpoint_agent_and_states(run, batch, seed)
    return rollout_gradient_profile(agent, obs, generator=g)


def checkpoint_log_sigma_gradient(run: str | Path, batch: int = 256, seed: int = 0) -> tuple[Tensor, Tensor]:
    """:func:`log_sigma_gradient` of a finetune run's last checkpoint on ``batch`` replay states -> ``([B], [B])``."""
    agent, obs, g = _checkpoint_agent_and_states(run, batch, seed)
    return log_sigma_gradient(agent, obs, generator=g)
