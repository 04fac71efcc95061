"""SAC over any policy of :mod:`pipeline.policies`: losses and one update step as plain functions over tensors.

The update is the same whether a LightningModule or a bare loop drives it (``bench/`` measures the difference):

    critic:  y = r + gamma (1 - terminal) (agg_k Q'_k(s', a') - alpha log pi(a'|s')),   a' ~ pi(.|s')
             L_Q = sum_k mean_B (Q_k(s, a) - y)^2
    actor:   L_pi = mean_B [alpha log pi(a~|s) - agg_k Q_k(s, a~)] + lambda_bc mean ||a~ - a_data||^2
    alpha:   L_alpha = -log_alpha * mean_B (log pi(a~|s) + target_entropy)

Time-limit truncation is not a terminal: only ``terminals`` cut the bootstrap.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from pipeline.config import CriticConfig, PolicyConfig, SACConfig
from pipeline.critics import CrossQCritic, make_critic
from pipeline.policies import make_policy


class Batch(NamedTuple):
    """A minibatch of transitions; ``B`` rows."""

    obs: torch.Tensor  # [B, S]
    actions: torch.Tensor  # [B, A] in [-1, 1]
    rewards: torch.Tensor  # [B]
    next_obs: torch.Tensor  # [B, S]
    terminals: torch.Tensor  # [B], 1 where the episode truly ended (no bootstrap)


def training_reward(reward: torch.Tensor | float, cfg: SACConfig) -> torch.Tensor | float:
    """The reward SAC trains on: ``r * reward_scale + reward_shift`` (dataset and environment alike)."""
    return reward * cfg.reward_scale + cfg.reward_shift


class SACAgent(nn.Module):
    """Actor, critic (with a target copy unless CrossQ), temperature and the observation normalizer.

    Observations are normalized inside the agent (``obs_mean``/``obs_std`` buffers travel with checkpoints), so
    callers always pass raw environment observations.
    """

    def __init__(self, obs_dim: int, act_dim: int, policy: PolicyConfig, critic: CriticConfig,
                 sac: SACConfig) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.cfg = sac
        self.actor = make_policy(policy.kind, obs_dim, act_dim, **policy.policy_kwargs())
        self.critic = make_critic(critic.kind, obs_dim, act_dim, n=critic.n_critics, hidden=critic.hidden,
                                  layers=critic.layers, layer_norm=critic.layer_norm)
        self.crossq = isinstance(self.critic, CrossQCritic)
        self.critic_target = None if self.crossq else copy.deepcopy(self.critic).requires_grad_(False)
        self.log_alpha = nn.Parameter(torch.tensor(math.log(sac.init_alpha)), requires_grad=sac.learn_alpha)
        self.target_entropy = -float(act_dim) if sac.target_entropy is None else sac.target_entropy
        self.register_buffer("obs_mean", torch.zeros(obs_dim))
        self.register_buffer("obs_std", torch.ones(obs_dim))
        # sigma overrides for fixed-noise flows (None: the policy's own noise_std); Gaussian policies ignore them
        self.actor_noise_std = sac.actor_noise_std
        self.act_noise_std = sac.act_noise_std

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def set_obs_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.obs_mean.copy_(mean)
        self.obs_std.copy_(std)

    def normalize(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.obs_mean) / self.obs_std

    @torch.no_grad()
    def act(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        """Actions ``[B, A]`` in [-1, 1] for raw observations ``[B, S]``; deterministic sets every epsilon to 0."""
        obs = self.normalize(obs)
        if deterministic:
            return self.actor.act(obs, deterministic=True)
        return self.actor.sample(obs, noise_std=self.act_noise_std)[0]

    def q_agg(self, q: torch.Tensor) -> torch.Tensor:
        """Reduce ``q [n, B]`` over the ensemble: the minimum (SAC) or the mean (the public O2O code's option)."""
        return q.min(0).values if self.cfg.q_agg == "min" else q.mean(0)


def critic_loss(agent: SACAgent, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    obs, next_obs = agent.normalize(batch.obs), agent.normalize(batch.next_obs)
    alpha = agent.alpha.detach()
    with torch.no_grad():
        next_actions, next_log_prob = agent.actor.sample(next_obs, noise_std=agent.act_noise_std)
    if agent.crossq:
        # CrossQ: current and next pairs share one batch-renormalized pass; the next half is a fixed target
        q, q_next = agent.critic.joint(obs, batch.actions, next_obs, next_actions)
        q_next = q_next.detach()
    else:
        q = agent.critic(obs, batch.actions)
        with torch.no_grad():
            q_next = agent.critic_target(next_obs, next_actions)
    with torch.no_grad():
        soft_value = agent.q_agg(q_next) - alpha * next_log_prob
        target = batch.rewards + agent.cfg.gamma * (1.0 - batch.terminals) * soft_value
    loss = (q - target).pow(2).mean(dim=1).sum()
    return loss, {"critic_loss": loss.detach(), "q_mean": q.detach().mean(), "target_mean": target.mean()}


def actor_loss(agent: SACAgent, batch: Batch, bc_weight: float = 0.0, q_weight: float = 1.0,
               flow_weight: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``q_weight * mean[alpha log pi - Q] + bc_weight * mean||a~ - a_data||^2 + flow_weight * flow-matching``.

    Online SAC uses ``q_weight=1``; offline pretraining adds the flow-matching BC loss (``flow_weight``); pure BC
    is ``q_weight=bc_weight=0``, which skips the rollout entirely.
    """
    obs = agent.normalize(batch.obs)
    loss = torch.zeros((), device=obs.device)
    info: dict[str, torch.Tensor] = {}
    if flow_weight > 0:
        flow = agent.actor.bc_loss(obs, batch.actions)
        loss = loss + flow_weight * flow
        info["flow_loss"] = flow.detach()
    if q_weight > 0 or bc_weight > 0:
        actions, log_prob = agent.actor.sample(obs, noise_std=agent.actor_noise_std)
        info.update(log_prob=log_prob.detach().mean(), entropy=-log_prob.detach().mean())
        if q_weight > 0:
            if agent.crossq:
                agent.critic.eval()  # the actor reads Q with running statistics and must not move them
            q = agent.q_agg(agent.critic(obs, actions))
            if agent.crossq:
                agent.critic.train()
            # log_prob keeps its graph: the entropy term must train the actor (and a learned sigma) too
            loss = loss + q_weight * (agent.alpha.detach() * log_prob - q).mean()
            info["actor_q"] = q.detach().mean()
        if bc_weight > 0:
            bc = (actions - batch.actions).pow(2).mean()
            loss = loss + bc_weight * bc
            info["bc_mse"] = bc.detach()
    info["actor_loss"] = loss.detach()
    return loss, info


def alpha_loss(agent: SACAgent, log_prob: torch.Tensor) -> torch.Tensor:
    return -(agent.log_alpha * (log_prob.detach() + agent.target_entropy)).mean()


@dataclass
class Optimizers:
    actor: torch.optim.Optimizer
    critic: torch.optim.Optimizer
    alpha: torch.optim.Optimizer | None


def make_optimizers(agent: SACAgent) -> Optimizers:
    cfg = agent.cfg
    # fused kernels where the device supports them; foreach otherwise
    kw = {"fused": True} if next(agent.parameters()).device.type == "cuda" else {}
    return Optimizers(
        actor=torch.optim.Adam(agent.actor.parameters(), lr=cfg.actor_lr, **kw),
        critic=torch.optim.Adam(agent.critic.parameters(), lr=cfg.critic_lr, **kw),
        alpha=torch.optim.Adam([agent.log_alpha], lr=cfg.alpha_lr) if cfg.learn_alpha else None,
    )


def grad_norm(params: list[nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """Total L2 gradient norm (clipped to ``max_norm`` when set); a tensor, no host sync."""
    grads = [p.grad for p in params if p.grad is not None]
    if max_norm is not None:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class NonFiniteError(RuntimeError):
    """Too many consecutive updates produced a non-finite loss or gradient."""


class SACUpdater:
    """One SAC update per call; counts updates for the policy delay and guards against non-finite steps.

    ``backward`` lets a LightningModule pass ``self.manual_backward`` (precision and strategy hooks); a bare loop
    uses ``Tensor.backward``.
    """

    def __init__(self, agent: SACAgent, optimizers: Optimizers,
                 backward: Callable[[torch.Tensor], None] | None = None, check_finite: bool = True) -> None:
        self.agent, self.opt = agent, optimizers
        self.backward = backward or (lambda loss: loss.backward())
        # False drops the non-finite guard and with it the update's only host syncs (measured in
        # bench/update_throughput.py); a poisoned step is then applied
        self.check_finite = check_finite
        self.updates = 0  # critic updates so far
        self.skipped = 0  # non-finite updates skipped in total
        self.nonfinite_streak = {"critic": 0, "actor": 0}  # per optimizer: one's success must not hide the other
        self.last_finite_grad_norm = torch.zeros(())
        self.actor_params = list(agent.actor.parameters())
        self.critic_params = list(agent.critic.parameters())
        self.target_params = list(agent.critic_target.parameters()) if agent.critic_target is not None else []

    def _step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, params: list[nn.Parameter],
              what: str) -> tuple[torch.Tensor, bool]:
        opt.zero_grad(set_to_none=True)
        self.backward(loss)
        norm = grad_norm(params, self.agent.cfg.grad_clip)
        if not self.check_finite:
            opt.step()
            return norm, True
        # the one host sync per optimizer step: skipping a poisoned step needs a decision on the host
        if not bool(torch.isfinite(norm) & torch.isfinite(loss)):
            self.skipped += 1
            self.nonfinite_streak[what] += 1
            opt.zero_grad(set_to_none=True)
            if self.nonfinite_streak[what] >= self.agent.cfg.max_nonfinite:
                raise NonFiniteError(
                    f"{self.nonfinite_streak[what]} consecutive non-finite {what} updates (loss={loss.item()}, "
                    f"grad norm={norm.item()}); the last finite gradient norm was "
                    f"{float(self.last_finite_grad_norm):.4g}. Lower the learning rates, set sac.grad_clip, or "
                    f"raise sac.max_nonfinite"
                )
            return norm, False
        self.nonfinite_streak[what] = 0
        self.last_finite_grad_norm = norm.detach()
        opt.step()
        return norm, True

    def update(self, batch: Batch, bc_weight: float | None = None, q_weight: float = 1.0,
               flow_weight: float = 0.0, train_critic: bool = True) -> dict[str, torch.Tensor]:
        """Critic step, then (every ``policy_delay`` updates) actor and alpha steps, then target Polyak averaging.

        The weights select the actor objective (see :func:`actor_loss`). Returns detached scalar tensors; reading
        them costs a host sync, so callers log every N updates.
        """
        agent, cfg = self.agent, self.agent.cfg
        bc_weight = cfg.bc_weight if bc_weight is None else bc_weight
        info: dict[str, torch.Tensor] = {}
        if train_critic:
            loss_q, info = critic_loss(agent, batch)
            info["critic_grad_norm"], _ = self._step(loss_q, self.opt.critic, self.critic_params, "critic")
        self.updates += 1
        if self.updates % cfg.policy_delay == 0:
            loss_pi, actor_info = actor_loss(agent, batch, bc_weight, q_weight, flow_weight)
            info.update(actor_info)
            info["actor_grad_norm"], ok = self._step(loss_pi, self.opt.actor, self.actor_params, "actor")
            if ok and self.opt.alpha is not None and "log_prob" in actor_info and q_weight > 0:
                # alpha's loss reuses the actor sample's (detached) log-probabilities: no second rollout
                self.opt.alpha.zero_grad(set_to_none=True)
                self.backward(alpha_loss(agent, actor_info["log_prob"]))
                self.opt.alpha.step()
            info["alpha"] = agent.alpha.detach()
        if train_critic and agent.critic_target is not None:
            with torch.no_grad():
                torch._foreach_lerp_(self.target_params, self.critic_params, cfg.tau)
        return info

    def state_dict(self) -> dict[str, object]:
        return {"updates": self.updates, "skipped": self.skipped, "nonfinite_streak": self.nonfinite_streak,
                "actor": _unwrap(self.opt.actor).state_dict(), "critic": _unwrap(self.opt.critic).state_dict(),
                "alpha": _unwrap(self.opt.alpha).state_dict() if self.opt.alpha is not None else None}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.updates, self.skipped = int(state["updates"]), int(state["skipped"])
        self.nonfinite_streak = dict(state["nonfinite_streak"])
        _unwrap(self.opt.actor).load_state_dict(state["actor"])
        _unwrap(self.opt.critic).load_state_dict(state["critic"])
        if self.opt.alpha is not None and state["alpha"] is not None:
            _unwrap(self.opt.alpha).load_state_dict(state["alpha"])


def _unwrap(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside a LightningOptimizer: loading state into the wrapper would not reach Adam."""
    return getattr(opt, "optimizer", opt)
