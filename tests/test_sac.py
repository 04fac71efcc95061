"""SAC losses and the update step: targets by hand, gradient paths, temperature, delays, Polyak, guards."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from pipeline.batch_renorm import ActorBatchRenorm, BatchRenorm, DeferredStatistics, batch_statistics
from pipeline.buffers import ReplayBuffer
from pipeline.config import SACConfig
from pipeline.critics import QEnsemble
from pipeline.sac import Batch, SACAgent, actor_loss, critic_loss, training_reward
from pipeline.update import NonFiniteError, SACUpdater, make_optimizers
from conftest import ACT_DIM, OBS_DIM, random_batch, tiny_agent

# every policy kind and noise mode, and the CrossQ critic
VARIANTS = [
    ({"kind": "gaussian"}, {}),
    ({"kind": "flow_mlp"}, {}),
    ({"kind": "flow_mlp", "noise": "learned"}, {}),
    ({"kind": "flow_g"}, {}),
    ({"kind": "flow_g", "noise": "learned"}, {}),
    ({"kind": "flow_t"}, {}),
    ({"kind": "flow_t", "noise": "learned"}, {}),
    ({"kind": "flow_g"}, {"kind": "crossq"}),
    ({"kind": "flow_t", "noise": "learned"}, {"kind": "crossq"}),
]
IDS = [p["kind"] + ("-learned" if p.get("noise") == "learned" else "") + ("-crossq" if c else "") for p, c in VARIANTS]


def params_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.named_parameters())


def make_constant(critic: QEnsemble, values: list[float]) -> None:
    """Member k outputs ``values[k]`` everywhere: Q no longer depends on the state or the action."""
    last = critic.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(values).view(-1, 1, 1))


def test_training_reward_scale_and_shift() -> None:
    cfg = SACConfig(reward_scale=2.0, reward_shift=-1.0)
    torch.testing.assert_close(training_reward(torch.tensor([0.0, 1.0]), cfg), torch.tensor([-1.0, 1.0]))


# ---------------------------------------------------------------------------------------------------------------
# Critic target


def test_critic_target_by_hand_terminal_cuts_bootstrap_truncation_does_not() -> None:
    agent = tiny_agent(gamma=0.9, init_alpha=0.5, act_noise_std=0.3)
    mean, std = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([2.0, 0.5, 1.0])
    agent.set_obs_normalization(mean, std)
    make_constant(agent.critic_target, [1.0, -2.0])  # min over the ensemble: -2
    # rows 0-3 were cut by a time limit (stored with terminal = 0), rows 4-7 ended for real
    terminals = torch.tensor([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0])
    batch = random_batch(8, terminals=terminals)

    torch.manual_seed(5)
    loss, info = critic_loss(agent, batch)
    torch.manual_seed(5)  # the same next-action noise, drawn by hand with the acting sigma
    with torch.no_grad():
        _, next_log_prob = agent.actor.sample((batch.next_obs - mean) / std, noise_std=0.3)
        y = batch.rewards + 0.9 * (1 - terminals) * (-2.0 - 0.5 * next_log_prob)
        q = agent.critic((batch.obs - mean) / std, batch.actions)
    torch.testing.assert_close(info["target_mean"], y.mean())
    torch.testing.assert_close(loss, ((q - y) ** 2).mean(dim=1).sum())
    # the terminal rows' targets are the bare rewards; the truncated rows bootstrap
    assert torch.equal(y[4:], batch.rewards[4:])
    assert not torch.allclose(y[:4], batch.rewards[:4])

    # a batch of only terminal rows: the target is exactly the reward, whatever the critics say
    done = random_batch(8, terminals=torch.ones(8))
    _, info = critic_loss(agent, done)
    torch.testing.assert_close(info["target_mean"], done.rewards.mean())


def test_critic_target_uses_mean_aggregation_when_configured() -> None:
    agent = tiny_agent(gamma=0.5, q_agg="mean", learn_alpha=False, init_alpha=1e-8)
    make_constant(agent.critic_target, [1.0, -3.0])
    batch = random_batch(8)
    _, info = critic_loss(agent, batch)
    # alpha ~ 0: y = r + 0.5 * mean(1, -3)
    torch.testing.assert_close(info["target_mean"], batch.rewards.mean() - 0.5, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Actor loss


@pytest.mark.parametrize(("policy", "critic"), VARIANTS[:7], ids=IDS[:7])
def test_entropy_term_alone_trains_the_actor(policy: dict, critic: dict) -> None:
    """With a Q that ignores the action, every actor gradient comes from alpha * log pi: it must not be detached."""
    agent = tiny_agent(policy, critic, init_alpha=0.7)
    make_constant(agent.critic, [0.3, 0.8])
    batch = random_batch(16)
    torch.manual_seed(3)
    loss, _ = actor_loss(agent, batch)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in agent.actor.named_parameters() if p.grad is not None}
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()]))
    assert norm > 0
    if policy.get("noise") == "learned":
        sigma_grads = [g for k, g in grads.items() if "sigma" in k]
        assert sigma_grads and all(g.abs().sum() > 0 for g in sigma_grads), "learned sigma gets no entropy gradient"

    agent.actor.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    _, log_prob = agent.actor.sample(agent.normalize(batch.obs))
    (0.7 * log_prob).mean().backward()
    for k, p in agent.actor.named_parameters():
        if k in grads:
            torch.testing.assert_close(p.grad, grads[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(("policy", "critic"), [VARIANTS[0], VARIANTS[5], VARIANTS[8]], ids=[IDS[0], IDS[5], IDS[8]])
def test_actor_loss_reads_q_through_detached_critic_weights(policy: dict, critic: dict) -> None:
    """The actor's gradients equal those through the live critic, and the critic's weights get none."""
    agent = tiny_agent(policy, critic, init_alpha=0.2)
    batch = random_batch(16)
    torch.manual_seed(5)
    actor_loss(agent, batch)[0].backward()
    grads = {k: p.grad.clone() for k, p in agent.actor.named_parameters() if p.grad is not None}
    assert grads and all(p.grad is None for p in agent.critic.parameters())

    # the same loss with the critic called directly (its weights live)
    agent.actor.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    obs = agent.normalize(batch.obs)
    with batch_statistics(agent.actor):
        actions, log_prob = agent.actor.sample(obs, noise_std=agent.actor_noise_std)
    agent.critic.eval()
    q = agent.q_agg(agent.critic(obs, actions))
    agent.critic.train()
    (agent.alpha.detach() * log_prob - q).mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.critic.parameters())
    for k, p in agent.actor.named_parameters():
        if k in grads:
            torch.testing.assert_close(p.grad, grads[k], rtol=1e-5, atol=1e-7)


def test_bc_weight_adds_lambda_times_action_mse() -> None:
    agent = tiny_agent(actor_noise_std=0.05)
    batch = random_batch(16)
    obs = agent.normalize(batch.obs)
    torch.manual_seed(4)
    plain, _ = actor_loss(agent, batch, bc_weight=0.0)
    torch.manual_seed(4)
    with_bc, info = actor_loss(agent, batch, bc_weight=7.0)
    torch.manual_seed(4)
    bc_only, _ = actor_loss(agent, batch, bc_weight=7.0, q_weight=0.0)
    torch.manual_seed(4)
    actions, _ = agent.actor.sample(obs, noise_std=0.05)
    mse = (actions - batch.actions).pow(2).mean()
    torch.testing.assert_close(info["bc_mse"], mse.detach())
    torch.testing.assert_close(with_bc - plain, 7.0 * mse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bc_only, 7.0 * mse)


def test_bc_weight_default_comes_from_config() -> None:
    agent = tiny_agent(bc_weight=3.0)
    info = SACUpdater(agent, make_optimizers(agent)).update(random_batch(16))
    assert "bc_mse" in info
    info = SACUpdater(agent, make_optimizers(agent)).update(random_batch(16), bc_weight=0.0)
    assert "bc_mse" not in info


def test_pure_flow_bc_never_touches_the_critic() -> None:
    agent = tiny_agent()
    calls: list[str] = []
    agent.critic.register_forward_pre_hook(lambda *_: calls.append("critic"))
    agent.critic_target.register_forward_pre_hook(lambda *_: calls.append("target"))
    batch = random_batch(16)
    torch.manual_seed(6)
    loss, info = actor_loss(agent, batch, bc_weight=0.0, q_weight=0.0, flow_weight=2.0)
    torch.manual_seed(6)
    expected = agent.actor.bc_loss(agent.normalize(batch.obs), batch.actions)
    torch.testing.assert_close(loss, 2.0 * expected)
    assert "log_prob" not in info and "actor_q" not in info

    critic, target, actor = params_of(agent.critic), params_of(agent.critic_target), params_of(agent.actor)
    alpha = agent.alpha.item()
    updater = SACUpdater(agent, make_optimizers(agent))
    updater.update(batch, bc_weight=0.0, q_weight=0.0, flow_weight=1.0, train_critic=False)
    assert calls == []
    assert not changed(critic, agent.critic) and not changed(target, agent.critic_target)
    assert changed(actor, agent.actor)
    assert agent.alpha.item() == alpha


@pytest.mark.parametrize(("noise_std", "low", "high"), [(0.01, 0.0, 0.05), (50.0, 0.9, 1.0)])
def test_action_saturation_is_the_share_of_actions_past_the_tanh_knee(noise_std: float, low: float,
                                                                       high: float) -> None:
    """A fixed-noise flow at init: sigma 0.01 leaves a_K ~ a_0 ~ N(0, I) (|tanh| > 0.99 past 2.65: ~1 %); sigma
    50 per step sends nearly every action into the flat end of the tanh."""
    agent = tiny_agent(policy={"kind": "flow_g", "noise_std": noise_std})
    _, info = actor_loss(agent, random_batch(512))
    assert low <= info["action_saturation"].item() <= high


@pytest.mark.parametrize(("policy", "_critic"), VARIANTS[:7], ids=IDS[:7])
def test_log_sigma_is_the_mean_log_noise_scale_of_the_actor_loss_sample(policy: dict, _critic: dict) -> None:
    """``info["log_sigma"]``: log of the fixed sigma (0.3 here), or the learned head's mean over the very sample the
    loss used (the Gaussian's log std over action dims; a flow's log sigma_i over steps and action dims)."""
    agent = tiny_agent(policy={**policy, "noise_std": 0.3})
    batch = random_batch(64)
    torch.manual_seed(3)
    _, info = actor_loss(agent, batch)
    obs = agent.normalize(batch.obs)
    if policy["kind"] == "gaussian":
        expected = agent.actor.distribution(obs)[1].mean()
    elif policy.get("noise") == "learned":
        torch.manual_seed(3)
        expected = agent.actor.rollout(obs, noise_std=agent.actor_noise_std).sigmas.log().mean()
    else:
        expected = torch.tensor(math.log(0.3))
    torch.testing.assert_close(info["log_sigma"], expected)


# ---------------------------------------------------------------------------------------------------------------
# Temperature, policy delay, Polyak averaging


@pytest.mark.parametrize(("target_entropy", "direction"), [(50.0, 1), (-50.0, -1)])
def test_alpha_moves_towards_target_entropy(target_entropy: float, direction: int) -> None:
    """Entropy (~ -log pi, a few nats here) below the target raises alpha; above it lowers alpha."""
    agent = tiny_agent(target_entropy=target_entropy, alpha_lr=0.01)
    before = agent.alpha.item()
    info = SACUpdater(agent, make_optimizers(agent)).update(random_batch(16))
    assert abs(info["entropy"].item()) < 20
    assert math.copysign(1, agent.alpha.item() - before) == direction
    # Adam's first step moves log alpha by exactly lr
    assert math.log(agent.alpha.item()) - math.log(before) == pytest.approx(direction * 0.01, rel=1e-4)


def test_alpha_fixed_when_not_learned() -> None:
    agent = tiny_agent(learn_alpha=False, init_alpha=0.3)
    SACUpdater(agent, make_optimizers(agent)).update(random_batch(16))
    assert agent.alpha.item() == pytest.approx(0.3)


def test_policy_delay_updates_actor_every_second_call() -> None:
    agent = tiny_agent(policy_delay=2)
    updater = SACUpdater(agent, make_optimizers(agent))
    for call in range(1, 5):
        actor, critic, alpha = params_of(agent.actor), params_of(agent.critic), agent.alpha.item()
        info = updater.update(random_batch(16, seed=call))
        actor_turn = call % 2 == 0
        assert changed(actor, agent.actor) == actor_turn, call
        assert (agent.alpha.item() != alpha) == actor_turn, call
        assert ("actor_grad_norm" in info) == actor_turn, call
        assert changed(critic, agent.critic), call
    assert updater.updates == 4


def test_polyak_update_of_target_critic() -> None:
    agent = tiny_agent(tau=0.25)
    target = params_of(agent.critic_target)
    SACUpdater(agent, make_optimizers(agent)).update(random_batch(16))
    online = dict(agent.critic.named_parameters())
    for k, p in agent.critic_target.named_parameters():
        torch.testing.assert_close(p, 0.75 * target[k] + 0.25 * online[k])
        assert not p.requires_grad
    assert changed(target, agent.critic_target)


def test_crossq_has_no_target_and_actor_reads_running_stats() -> None:
    agent = tiny_agent(critic={"kind": "crossq"})
    assert agent.critic_target is None
    updater = SACUpdater(agent, make_optimizers(agent))
    steps_before = int(agent.critic.net[0].steps)
    updater.update(random_batch(16))
    # one joint critic pass; the actor's evaluation of Q does not move the statistics
    assert int(agent.critic.net[0].steps) == steps_before + 1
    assert agent.critic.training


def test_adam_beta1_reaches_all_three_optimizers() -> None:
    opts = make_optimizers(tiny_agent(adam_beta1=0.5))
    assert [o.param_groups[0]["betas"] for o in (opts.actor, opts.critic, opts.alpha)] == [(0.5, 0.999)] * 3


# ---------------------------------------------------------------------------------------------------------------
# Non-finite guard


def nan_reward_batch(seed: int = 2) -> Batch:
    return random_batch(16, seed=seed, rewards=torch.full((16,), float("nan")))


def test_nan_batch_is_skipped_counted_and_leaves_weights_unchanged() -> None:
    agent = tiny_agent(max_nonfinite=3)
    updater = SACUpdater(agent, make_optimizers(agent))
    updater.update(random_batch(16))
    critic = params_of(agent.critic)
    critic_opt = updater.opt.critic.state_dict()["state"][0]["exp_avg"].clone()
    info = updater.update(nan_reward_batch())
    assert updater.skipped == 1
    assert not torch.isfinite(info["critic_grad_norm"])
    assert not changed(critic, agent.critic)
    assert torch.equal(updater.opt.critic.state_dict()["state"][0]["exp_avg"], critic_opt)
    assert all(torch.isfinite(p).all() for p in agent.parameters())


def test_consecutive_nonfinite_critic_updates_raise_naming_last_finite_norm() -> None:
    # policy_delay > max_nonfinite: only critic steps run, so only they feed the streak
    agent = tiny_agent(max_nonfinite=3, policy_delay=100)
    updater = SACUpdater(agent, make_optimizers(agent))
    norm = updater.update(random_batch(16))["critic_grad_norm"].item()
    updater.update(nan_reward_batch(3))
    updater.update(nan_reward_batch(4))
    with pytest.raises(NonFiniteError, match=r"3 consecutive non-finite critic updates") as err:
        updater.update(nan_reward_batch(5))
    assert f"last finite gradient norm was {norm:.4g}" in str(err.value)
    assert updater.skipped == 3


def test_a_finite_update_resets_the_streak() -> None:
    agent = tiny_agent(max_nonfinite=2, policy_delay=100)
    updater = SACUpdater(agent, make_optimizers(agent))
    for seed in range(4):
        updater.update(nan_reward_batch(seed))
        updater.update(random_batch(16, seed=seed))
    assert updater.skipped == 4 and updater.nonfinite_streak == {"critic": 0, "actor": 0}


def test_nan_rewards_every_update_raise_with_default_policy_delay() -> None:
    agent = tiny_agent(max_nonfinite=3)
    updater = SACUpdater(agent, make_optimizers(agent))
    with pytest.raises(NonFiniteError):
        for seed in range(6):
            updater.update(nan_reward_batch(seed))


# ---------------------------------------------------------------------------------------------------------------
# Every policy kind, and determinism


@pytest.mark.parametrize(("policy", "critic"), VARIANTS, ids=IDS)
def test_update_runs_for_every_policy_and_critic(policy: dict, critic: dict) -> None:
    sac = {} if policy.get("noise") == "learned" else {"actor_noise_std": 0.05, "act_noise_std": 0.02}
    agent = tiny_agent(policy, critic, bc_weight=1.0, **sac)
    updater = SACUpdater(agent, make_optimizers(agent))
    actor, critic_p, alpha = params_of(agent.actor), params_of(agent.critic), agent.alpha.item()
    for seed in range(3):
        info = updater.update(random_batch(16, seed=seed))
        for k, v in info.items():
            assert torch.isfinite(v).all(), k
    assert changed(actor, agent.actor) and changed(critic_p, agent.critic) and agent.alpha.item() != alpha
    assert updater.skipped == 0
    for key in ("critic_loss", "actor_loss", "actor_grad_norm", "critic_grad_norm", "entropy", "bc_mse"):
        assert key in info
    action = agent.act(torch.randn(5, OBS_DIM), deterministic=True)
    assert action.shape == (5, ACT_DIM) and action.abs().max() <= 1


def seeded_run(seed: int, policy: dict, critic: dict) -> dict[str, torch.Tensor]:
    agent = tiny_agent(policy, critic, seed=0)
    buffer = ReplayBuffer(64, OBS_DIM, ACT_DIM)
    data = random_batch(64, seed=9)
    buffer.add(*data)
    updater = SACUpdater(agent, make_optimizers(agent))
    torch.manual_seed(seed)
    for _ in range(4):
        updater.update(buffer.sample(16))
    return agent.state_dict()


@pytest.mark.parametrize(("policy", "critic"), [({"kind": "flow_t"}, {}), ({"kind": "flow_g"}, {"kind": "crossq"})])
def test_seeded_updates_are_bit_identical_on_cpu(policy: dict, critic: dict) -> None:
    a, b = seeded_run(1, policy, critic), seeded_run(1, policy, critic)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = seeded_run(2, policy, critic)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_agent_normalizes_observations_when_acting() -> None:
    agent = tiny_agent()
    obs = torch.randn(4, OBS_DIM)
    agent.set_obs_normalization(torch.full((OBS_DIM,), 3.0), torch.full((OBS_DIM,), 2.0))
    direct = agent.actor.act((obs - 3.0) / 2.0, deterministic=True)
    torch.testing.assert_close(agent.act(obs, deterministic=True), direct)
    assert isinstance(agent, SACAgent)


# ActorBatchRenorm layers per (kind, policy.batch_renorm) in tiny_agent's nets (one hidden layer, one decoder
# layer), and how often each moves its statistics in one actor loss of a K = 4 rollout: once, or once per step
ACTOR_NORM_STEPS = {
    ("gaussian", "input"): [1], ("gaussian", "crossq"): [1, 1, 1],  # observation, hidden layer, trunk output
    ("flow_mlp", "input"): [1], ("flow_mlp", "crossq"): [4],  # [s, a_i], shared by the steps
    ("flow_g", "input"): [1], ("flow_g", "crossq"): [4],
    # a_i, the decoder layer's three in place of its LayerNorms, then the policy's observation layer
    ("flow_t", "input"): [1], ("flow_t", "crossq"): [4, 4, 4, 4, 1],
    # crossq_per_step: the layer that reads a_i becomes one layer per step, each moved once
    ("flow_mlp", "crossq_per_step"): [1, 1, 1, 1], ("flow_g", "crossq_per_step"): [1, 1, 1, 1],
    ("flow_t", "crossq_per_step"): [1, 1, 1, 1, 4, 4, 4, 1],
}


@pytest.mark.parametrize(("kind", "mode"), list(ACTOR_NORM_STEPS))
def test_actor_batch_renorm_moves_only_in_the_actor_loss(kind: str, mode: str) -> None:
    # CrossQ's actor: batch statistics (and a running-statistics step) in the actor loss, running ones for acting
    # and for critic targets, whatever mode the agent is in
    agent = tiny_agent({"kind": kind, "batch_renorm": mode}, {"kind": "crossq"}, policy_delay=2)
    norms = [m for m in agent.eval().train().actor.modules() if isinstance(m, ActorBatchRenorm)]
    assert len(norms) == len(ACTOR_NORM_STEPS[kind, mode]) and not any(n.training for n in norms)
    if mode.startswith("crossq") and kind == "flow_t":
        assert not any(isinstance(m, nn.LayerNorm) for m in agent.actor.modules())
    updater = SACUpdater(agent, make_optimizers(agent))
    batch = random_batch(16, obs=torch.randn(16, OBS_DIM) * 5 + 3)
    updater.update(batch)  # critic only (policy delay 2): the critic target samples next actions
    assert all(int(n.steps) == 0 and not n.running_mean.any() for n in norms)
    agent.act(batch.obs[:1], deterministic=False)  # one observation: running statistics, or it would be NaN
    weights = [n.weight.detach().clone() for n in norms]
    info = updater.update(batch)
    assert "actor_loss" in info and [int(n.steps) for n in norms] == ACTOR_NORM_STEPS[kind, mode]
    if mode == "input":
        torch.testing.assert_close(norms[0].running_mean.flatten(), 0.01 * batch.obs.mean(0))
    # the actor's optimizer trains every layer's affine parameters
    assert all(not torch.equal(n.weight, w) for n, w in zip(norms, weights, strict=True))
    fresh = tiny_agent({"kind": kind, "batch_renorm": mode}, {"kind": "crossq"}, seed=3)
    fresh.load_state_dict(agent.state_dict())  # the layers' statistics travel with checkpoints
    torch.testing.assert_close(fresh.act(batch.obs, deterministic=True), agent.act(batch.obs, deterministic=True))


@pytest.mark.parametrize(("kind", "layout"), [("flow_t", "crossq"), ("flow_t", "crossq_per_step"), ("flow_g", "crossq"),
                                            ("gaussian", "crossq")])
def test_deferred_statistics_give_what_writing_in_place_gives(kind: str, layout: str) -> None:
    """``compile_fullgraph``'s gradient transform records the running statistics a loss moves and writes them after
    it: the same losses and statistics as the in-place writes, bit for bit, also where a layer shared by the rollout's
    steps reads at step i+1 what step i moved (warm-up 0: the running statistics enter the batch-statistics pass)."""
    agents = [tiny_agent({"kind": kind, "batch_renorm": layout}, {"kind": "crossq"}) for _ in range(2)]
    for agent in agents:
        for m in agent.modules():
            if isinstance(m, BatchRenorm):
                m.warmup = 0

    def losses(agent: SACAgent) -> list[torch.Tensor]:
        torch.manual_seed(3)
        batch = random_batch(16, obs=torch.randn(16, OBS_DIM) * 5 + 3, seed=1)
        return [critic_loss(agent, batch)[0], actor_loss(agent, batch)[0], critic_loss(agent, batch)[0]]

    in_place, deferred = agents
    start = [b.clone() for b in deferred.buffers()]
    expected = losses(in_place)
    statistics = DeferredStatistics(deferred)
    with statistics.recording():
        got = losses(deferred)
        moved = statistics.moved()
    assert all(torch.equal(a, b) for a, b in zip(start, deferred.buffers()))  # nothing written while recording
    assert len(moved) == len(statistics.layers)  # every layer of the critic and the actor moved
    statistics.write(moved)
    assert [x.item() for x in got] == [x.item() for x in expected]
    for (name, a), b in zip(in_place.named_buffers(), deferred.buffers(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("kind", ["flow_mlp", "flow_g", "flow_t"])
@pytest.mark.parametrize("layout", ["crossq", "crossq_per_step"])
def test_flow_matching_reads_the_actors_running_statistics_and_leaves_them(kind: str, layout: str) -> None:
    """Pretraining's flow-matching term evaluates the velocity off the rollout's grid (interpolated a_t, random t):
    it normalizes with running statistics and moves none; the SAC terms on the actor's own rollout move them."""
    agent = tiny_agent({"kind": kind, "batch_renorm": layout})
    layers = [m for m in agent.actor.modules() if isinstance(m, ActorBatchRenorm)]
    assert layers

    def stats() -> list[torch.Tensor]:
        return [t.clone() for m in layers for t in (m.running_mean, m.running_var, m.steps)]

    before = stats()
    loss, info = actor_loss(agent, random_batch(16), q_weight=0.0, flow_weight=1.0)
    loss.backward()
    assert torch.isfinite(info["flow_loss"])
    assert all(torch.equal(a, b) for a, b in zip(before, stats()))
    actor_loss(agent, random_batch(16), q_weight=1.0, flow_weight=1.0)  # pretraining's joint objective runs
    assert not all(torch.equal(a, b) for a, b in zip(before, stats()))
