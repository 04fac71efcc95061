"""The rollout gradient profile and the log sigma gradient (``pipeline.diagnostics``) against direct computations."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from pipeline.checkpoint import run_checkpoint, save_checkpoint
from pipeline.config import load_config, save_config
from pipeline.diagnostics import (
    checkpoint_gradient_profile,
    checkpoint_log_sigma_gradient,
    log_sigma_gradient,
    rollout_gradient_profile,
)
from pipeline.policies.flow import FlowPolicy
from pipeline.workflow.finetune import finetune
from conftest import OBS_DIM, tiny_agent

FLOWS = [(k, n) for k in ("flow_mlp", "flow_g", "flow_t") for n in ("fixed", "learned")]


def replayed_profile(agent, obs: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """``‖∂Q/∂a_i‖`` by unrolling the documented update with every intermediate action kept (exact log-prob mode)."""
    policy = agent.actor
    assert isinstance(policy, FlowPolicy) and policy.log_prob_mode == "exact"
    obs = agent.normalize(obs)
    context = policy.velocity.encode(obs)
    dt = 1.0 / policy.steps
    a = eps[0].clone().requires_grad_(True)
    states = [a]
    for i in range(policy.steps):
        v, log_sigma = policy.velocity(context, a, torch.full((obs.shape[0], 1), i * dt))
        sigma = policy.noise_std if log_sigma is None else log_sigma.exp()
        a = a + dt * v + sigma * eps[i + 1]
        a.retain_grad()
        states.append(a)
    agent.q_agg(agent.critic(obs, torch.tanh(a))).sum().backward()
    return torch.stack([s.grad.norm(dim=-1).mean() for s in states])


@pytest.mark.parametrize(("kind", "noise"), FLOWS)
def test_profile_matches_the_replayed_rollout(kind: str, noise: str) -> None:
    agent = tiny_agent({"kind": kind, "noise": noise, "steps": 5})
    obs = torch.randn(16, OBS_DIM, generator=torch.Generator().manual_seed(2))
    profile = rollout_gradient_profile(agent, obs, generator=torch.Generator().manual_seed(7))
    eps = torch.randn((6, 16, 2), generator=torch.Generator().manual_seed(7))
    expected = replayed_profile(agent, obs, eps)
    assert profile.shape == (6,)
    torch.testing.assert_close(profile, expected, rtol=1e-4, atol=1e-7)
    assert torch.all(profile > 0)


def test_profile_shows_an_unstable_euler_rollout() -> None:
    # v = -c·a with Δt·c = 3 multiplies ∂/∂a by (1 - 3) = -2 per step: the gradient at a_0 is 2^K times that at a_K
    agent = tiny_agent({"kind": "flow_mlp", "steps": 4})
    trunk, head = agent.actor.velocity.trunk, agent.actor.velocity.v_head
    with torch.no_grad():
        for p in (*trunk.parameters(), *head.parameters()):
            p.zero_()
        # trunk: [s(3), a(2), t] -> hidden 16; hidden units 0..3 carry relu(a_d) and relu(-a_d)
        first = trunk[0]
        for d in range(2):
            first.weight[2 * d, OBS_DIM + d], first.weight[2 * d + 1, OBS_DIM + d] = 1.0, -1.0
        last = trunk[-1]
        last.weight[:4, :4] = torch.eye(4)
        for d in range(2):  # v_d = -c·(relu(a_d) - relu(-a_d)) = -c·a_d
            head.weight[d, 2 * d], head.weight[d, 2 * d + 1] = -12.0, 12.0
    profile = rollout_gradient_profile(agent, torch.zeros(8, OBS_DIM), generator=torch.Generator().manual_seed(0))
    ratios = profile[:-1] / profile[1:]
    torch.testing.assert_close(ratios, torch.full((4,), 2.0), rtol=1e-5, atol=0)
    assert math.isclose(float(profile[0] / profile[-1]), 16.0, rel_tol=1e-4)


def test_profile_rejects_a_gaussian_policy() -> None:
    agent = tiny_agent({"kind": "gaussian"})
    with pytest.raises(ValueError, match="needs a flow policy, got GaussianPolicy"):
        rollout_gradient_profile(agent, torch.zeros(2, OBS_DIM))


def test_rollout_takes_given_noise_and_checks_it() -> None:
    policy = tiny_agent({"kind": "flow_t", "steps": 3}).actor
    obs = torch.randn(4, OBS_DIM)
    gen = torch.Generator().manual_seed(5)
    drawn = policy.rollout(obs, generator=gen)
    given = policy.rollout(obs, eps=torch.randn((4, 4, 2), generator=torch.Generator().manual_seed(5)))
    torch.testing.assert_close(given.action, drawn.action)
    torch.testing.assert_close(given.log_prob, drawn.log_prob)
    with pytest.raises(ValueError, match=r"eps must have shape \[K\+1, batch, act_dim\] = \[4, 4, 2\], got \[3, 4, 2\]"):
        policy.rollout(obs, eps=torch.zeros(3, 4, 2))
    with pytest.raises(ValueError, match="eps cannot be combined with deterministic=True"):
        policy.rollout(obs, eps=torch.zeros(4, 4, 2), deterministic=True)


def shifted_log_sigma_gradient(agent, obs: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The oracle: every step's learned ``log σ_i`` plus a leaf ``δ [B,1]``, differentiated by autograd."""
    policy = agent.actor
    delta = torch.zeros(obs.shape[0], 1, requires_grad=True)
    forward = policy.velocity.forward

    def shifted(*args, **kwargs):
        v, log_sigma = forward(*args, **kwargs)
        return v, log_sigma + delta

    policy.velocity.forward = shifted
    try:
        r = policy.rollout(agent.normalize(obs), noise_std=agent.actor_noise_std, eps=eps)
    finally:
        policy.velocity.forward = forward
    q = agent.q_agg(agent.critic(agent.normalize(obs), r.action))
    (d_q,) = torch.autograd.grad(q.sum(), delta, retain_graph=True)
    (d_ent,) = torch.autograd.grad((-agent.alpha.detach() * r.log_prob).sum(), delta)
    return d_q.squeeze(1), d_ent.squeeze(1)


@pytest.mark.parametrize("log_prob", ["exact", "paper_code"])
@pytest.mark.parametrize("tanh_jacobian", ["floored", "exact"])
@pytest.mark.parametrize("kind", ["flow_mlp", "flow_g", "flow_t"])
def test_log_sigma_gradient_matches_a_shifted_log_sigma(kind: str, log_prob: str, tanh_jacobian: str) -> None:
    agent = tiny_agent({"kind": kind, "noise": "learned", "steps": 4, "log_prob": log_prob,
                        "tanh_jacobian": tanh_jacobian}, init_alpha=0.7)
    with torch.no_grad():  # a spread large enough that the tanh term matters
        for p in agent.actor.parameters():
            p.mul_(3.0)
    obs = torch.randn(32, OBS_DIM, generator=torch.Generator().manual_seed(2))
    d_q, d_ent = log_sigma_gradient(agent, obs, generator=torch.Generator().manual_seed(7))
    eps = torch.randn((5, 32, 2), generator=torch.Generator().manual_seed(7))
    expected_q, expected_ent = shifted_log_sigma_gradient(agent, obs, eps)
    assert d_q.shape == d_ent.shape == (32,)
    torch.testing.assert_close(d_q, expected_q, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(d_ent, expected_ent, rtol=1e-4, atol=1e-6)
    assert d_q.abs().max() > 1e-3 and d_ent.abs().max() > 1e-3


def test_log_sigma_gradient_rejects_a_gaussian_policy() -> None:
    with pytest.raises(ValueError, match="log sigma gradient needs a flow policy, got GaussianPolicy"):
        log_sigma_gradient(tiny_agent({"kind": "gaussian"}), torch.zeros(2, OBS_DIM))


def test_profile_of_a_finetune_run_reads_its_checkpoint(tmp_path: Path) -> None:
    cfg = load_config(overrides=[
        "device=cpu", "threads=1", "trainer.accelerator=cpu", "trainer.progress=false", "policy.kind=flow_mlp",
        "policy.steps=3", "policy.hidden=16", "critic.hidden=16", "sac.batch_size=16", "finetune.env_id=Pendulum-v1",
        "finetune.from_pretrained=false", "finetune.total_steps=120", "finetune.learning_starts=100",
        "finetune.random_steps=100", "finetune.buffer_size=200", "finetune.eval_episodes=0"])
    finetune(cfg, tmp_path)
    profile = checkpoint_gradient_profile(tmp_path, batch=32, seed=1)
    assert profile.shape == (4,) and torch.all(torch.isfinite(profile)) and torch.all(profile > 0)
    torch.testing.assert_close(checkpoint_gradient_profile(tmp_path, batch=32, seed=1), profile, rtol=0, atol=0)
    assert not torch.equal(checkpoint_gradient_profile(tmp_path, batch=32, seed=2), profile)
    d_q, d_ent = checkpoint_log_sigma_gradient(tmp_path, batch=32, seed=1)
    assert d_q.shape == d_ent.shape == (32,) and torch.all(torch.isfinite(d_q)) and torch.all(torch.isfinite(d_ent))


def test_profile_of_a_run_without_stored_states_is_a_clear_error(tmp_path: Path) -> None:
    save_config(load_config(), tmp_path / "config.yaml")
    empty = {k: torch.zeros(0, *shape) for k, shape in (("obs", (OBS_DIM,)), ("actions", (2,)))}
    save_checkpoint({"buffer": {"data": empty}}, run_checkpoint(tmp_path))
    with pytest.raises(ValueError, match=r"last\.pt: the replay buffer is empty, there are no states to profile"):
        checkpoint_gradient_profile(tmp_path)
