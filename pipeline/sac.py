"""SAC over any policy of :mod:`pipeline.policies`: the agent and its losses, as plain functions over tensors.

What one update computes (how it executes, eagerly, compiled or as CUDA graphs, is :mod:`pipeline.update`'s):

    critic:  y = r + gamma^H (1 - terminal) (agg_k Q'_k(s', a') - alpha log pi(a'|s')),   a' ~ pi(.|s')
             (H = sac.chunk actions per decision; 1 unless action chunking is on)
             L_Q = sum_k mean_B (Q_k(s, a) - y)^2
    actor:   L_pi = mean_B [alpha log pi(a~|s) - agg_k Q_k(s, a~)] + lambda_bc mean ||a~ - a_data||^2
    alpha:   L_alpha = -log_alpha * mean_B (log pi(a~|s) + target_entropy)     (sac.alpha_loss: standard)

Time-limit truncation is not a terminal: only ``terminals`` cut the bootstrap.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from pipeline.batch_renorm import batch_statistics
from pipeline.checkpoint import load_checkpoint, run_checkpoint
from pipeline.config import Config, CriticConfig, PolicyConfig, SACConfig, TrainerConfig
from pipeline.critics import CrossQCritic, make_critic
from pipeline.policies import make_policy
from pipeline.precision import KEPT_FP32, acting_precision, check_precision, keep_fp32

# |a| past this counts as saturated in the ``action_saturation`` diagnostic: tanh' < 0.02 there, so neither Q nor
# the entropy term can move such an action back (a flow whose sigma sits at its bound shows up here first)
SATURATED_ACTION = 0.99


class Batch(NamedTuple):
    """A minibatch of transitions; ``B`` rows."""

    obs: torch.Tensor  # [B, S]
    actions: torch.Tensor  # [B, A] in [-1, 1]
    rewards: torch.Tensor  # [B]
    next_obs: torch.Tensor  # [B, S]
    terminals: torch.Tensor  # [B], 1 where the episode truly ended (no bootstrap)
    # [B], env steps the decision executed: H = sac.chunk, fewer where a terminal cut the chunk (its tail repeats
    # the last executed action); sac.flow_mask = past_terminal leaves that tail out of flow matching
    steps: torch.Tensor


def training_reward(reward: torch.Tensor | float, cfg: SACConfig) -> torch.Tensor | float:
    """The reward SAC trains on: ``r * reward_scale + reward_shift`` (dataset and environment alike)."""
    return reward * cfg.reward_scale + cfg.reward_shift


class SACAgent(nn.Module):
    """Actor, critic (with a target copy unless CrossQ), temperature and the observation normalizer.

    Observations are normalized inside the agent (``obs_mean``/``obs_std`` buffers travel with checkpoints), so
    callers always pass raw environment observations. ``precision`` (``trainer.precision``) is how its forward
    passes execute when acting and in updates, ``precision_scope`` (``trainer.precision_scope``) the half of the
    agent it applies to (:mod:`pipeline.precision`); neither is part of its state.
    """

    def __init__(self, obs_dim: int, act_dim: int, policy: PolicyConfig, critic: CriticConfig,
                 sac: SACConfig, precision: str = TrainerConfig.precision,
                 precision_scope: str = TrainerConfig.precision_scope) -> None:
        super().__init__()
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.cfg = sac
        self.precision = precision
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
        # how acting executes (sac.act_mode); what it computes is _act_normalized's
        self._act_fn = torch.compile(self._act_normalized) if sac.act_mode == "compile" else self._act_normalized
        if precision_scope not in KEPT_FP32:
            raise ValueError(f"precision_scope = {precision_scope!r}: expected one of {', '.join(KEPT_FP32)}")
        for name in KEPT_FP32[precision_scope]:
            if getattr(self, name) is not None:
                keep_fp32(getattr(self, name))

    @classmethod
    def from_config(cls, cfg: Config, obs_dim: int, act_dim: int) -> SACAgent:
        """The agent ``cfg`` describes, for ``obs [S = obs_dim]`` and the actions it decides at once
        ``[act_dim]``, in ``cfg.trainer``'s precision and scope."""
        return cls(obs_dim, act_dim, cfg.policy, cfg.critic, cfg.sac, cfg.trainer.precision,
                   cfg.trainer.precision_scope)

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
        with acting_precision(self.precision, obs.device):
            return self._act_fn(self.normalize(obs), deterministic)

    def _act_normalized(self, obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        if deterministic:
            return self.actor.act(obs, deterministic=True)
        return self.actor.sample(obs, noise_std=self.act_noise_std)[0]

    def q_agg(self, q: torch.Tensor) -> torch.Tensor:
        """Reduce ``q [n, B]`` over the ensemble: the minimum (SAC) or the mean (the public O2O code's option)."""
        return q.min(0).values if self.cfg.q_agg == "min" else q.mean(0)


def agent_from_state(state: dict[str, Any], cfg: Config, obs_dim: int, act_dim: int,
                     device: torch.device | str = "cpu") -> SACAgent:
    """The agent of a stage's checkpoint ``state`` (its ``agent`` entry), built from ``cfg`` for an env with
    ``obs [S = obs_dim]`` and ``action [A = act_dim]``: the agent decides ``sac.chunk`` actions at once."""
    check_precision(cfg.trainer.precision, torch.device(device))
    agent = SACAgent.from_config(cfg, obs_dim, act_dim * cfg.sac.chunk).to(device)
    agent.load_state_dict(state["agent"])
    return agent


def load_agent(run: str | Path, cfg: Config, obs_dim: int, act_dim: int,
               device: torch.device | str = "cpu") -> SACAgent:
    """:func:`agent_from_state` of the checkpoint of ``run`` (a stage's folder or a checkpoint file)."""
    return agent_from_state(load_checkpoint(run_checkpoint(run), map_location=device), cfg, obs_dim, act_dim, device)


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
        # a chunk of H actions spans H env steps: its reward is already the discounted sum, the bootstrap is gamma^H
        target = batch.rewards + agent.cfg.gamma ** agent.cfg.chunk * (1.0 - batch.terminals) * soft_value
    loss = (q - target).pow(2).mean(dim=1).sum()
    return loss, {"critic_loss": loss.detach(), "q_mean": q.detach().mean(), "target_mean": target.mean()}


def executed_steps_mask(steps: torch.Tensor, chunk: int, act_dim: int) -> torch.Tensor:
    """``[B, act_dim]`` weights: 1 on the actions of the ``steps [B]`` env steps a chunk of ``chunk`` actions
    executed, 0 on the tail past a terminal (``act_dim = chunk * A``)."""
    executed = torch.arange(chunk, device=steps.device)[None, :] < steps[:, None]  # [B, H]
    return executed.repeat_interleave(act_dim // chunk, dim=1).float()


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
        # flow matching evaluates the velocity at interpolated points and random t, off the rollout's grid: an actor
        # with BatchRenorm layers normalizes them with its running statistics and must not move them
        if agent.cfg.flow_mask == "past_terminal":
            mask = executed_steps_mask(batch.steps, agent.cfg.chunk, agent.act_dim)
            flow = agent.actor.bc_loss(obs, batch.actions, mask=mask)
        else:
            flow = agent.actor.bc_loss(obs, batch.actions)
        loss = loss + flow_weight * flow
        info["flow_loss"] = flow.detach()
    with batch_statistics(agent.actor):  # CrossQ's actor: its BatchRenorm layers read batch statistics here only
        loss = loss + _policy_terms(agent, obs, batch, bc_weight, q_weight, info)
    info["actor_loss"] = loss.detach()
    return loss, info


def _policy_terms(agent: SACAgent, obs: torch.Tensor, batch: Batch, bc_weight: float, q_weight: float,
                  info: dict[str, torch.Tensor]) -> torch.Tensor:
    """``q_weight * mean[alpha log pi - Q] + bc_weight * mean||a~ - a_data||^2`` on the actor's own samples."""
    loss = torch.zeros((), device=obs.device)
    if q_weight > 0 or bc_weight > 0:
        actions, log_prob, log_sigma = agent.actor.sample_with_log_sigma(obs, noise_std=agent.actor_noise_std)
        info.update(log_prob=log_prob.detach().mean(), entropy=-log_prob.detach().mean(),
                    action_saturation=(actions.detach().abs() > SATURATED_ACTION).float().mean(),
                    log_sigma=log_sigma.mean())
        if q_weight > 0:
            if agent.crossq:
                agent.critic.eval()  # the actor reads Q with running statistics and must not move them
            q = agent.q_agg(q_of_actions(agent, obs, actions))
            if agent.crossq:
                agent.critic.train()
            # log_prob keeps its graph: the entropy term must train the actor (and a learned sigma) too
            loss = loss + q_weight * (agent.alpha.detach() * log_prob - q).mean()
            info["actor_q"] = q.detach().mean()
        if bc_weight > 0:
            bc = (actions - batch.actions).pow(2).mean()
            loss = loss + bc_weight * bc
            info["bc_mse"] = bc.detach()
    return loss


def q_of_actions(agent: SACAgent, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``Q_k(s, a~) [n, B]`` for the actor's loss, through the critic's weights detached.

    The actor needs dQ/da~ only. With live weights the backward pass would also form dQ/dtheta_Q, the critic's
    weight-gradient products (a third of its backward), only for the next critic step to zero them.
    """
    weights = {name: w.detach() for name, w in agent.critic.named_parameters()}
    return torch.func.functional_call(agent.critic, weights, (obs, actions))


def alpha_loss(agent: SACAgent, log_prob: torch.Tensor) -> torch.Tensor:
    """The temperature loss for the actor sample's ``log_prob [B]`` (detached here), by ``sac.alpha_loss``.

    ``standard``: ``-log alpha * mean(log pi + target_entropy)``, which raises alpha while the entropy
    ``-log pi`` is below its target. ``paper_code``: ``alpha * (mean log pi - target_entropy)``, the public
    offline-to-online code's (``alpha_loss`` / ``update_alpha`` in its ``agents/acfql_*_ablation_online_sac.py``),
    ``alpha * (-entropy - target)``, in which the entropy enters with the opposite sign: at its target entropy 0
    it lowers alpha while the entropy is below the target, and raises it above.
    """
    if agent.cfg.alpha_loss == "paper_code":
        return agent.alpha * (log_prob.detach().mean() - agent.target_entropy)
    return -(agent.log_alpha * (log_prob.detach() + agent.target_entropy)).mean()
