"""Tests of the policies: densities against torch.distributions, gradients, noise, BC, config errors."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal
from torch.distributions.transforms import TanhTransform

from pipeline.batch_renorm import PerStepActorBatchRenorm, batch_statistics
from pipeline.policies import (
    POLICY_KINDS,
    FlowGVelocity,
    FlowPolicy,
    FlowTVelocity,
    SingleTokenAttention,
    make_policy,
)
from pipeline.policies.flow import tanh_log_det_jacobian
from pipeline.policies.velocity import LOG_SIGMA_MAX, LOG_SIGMA_MIN

OBS, ACT = 5, 3
FLOW_KINDS = ("flow_mlp", "flow_g", "flow_t")
# Every (kind, noise mode) pair; small nets keep the file fast on two cores.
VARIANTS = [("gaussian", None)] + [(k, n) for k in FLOW_KINDS for n in ("fixed", "learned")]
SMALL = {"gaussian": {"hidden": 32}, "flow_mlp": {"hidden": 32}, "flow_g": {"hidden": 32}, "flow_t": {"d_model": 16}}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors gain nothing from intra-op threads, which only spin on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(kind: str, noise: str | None = None, **cfg) -> nn.Module:
    torch.manual_seed(0)
    opts = dict(SMALL[kind], **cfg)
    if noise is not None:
        opts["noise"] = noise
    return make_policy(kind, OBS, ACT, **opts)


def flow(kind: str, noise: str = "fixed", **cfg) -> FlowPolicy:
    policy = build(kind, noise, **cfg)
    assert isinstance(policy, FlowPolicy)
    return policy


def obs_batch(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, OBS, generator=torch.Generator().manual_seed(seed))


def velocity_at(policy: FlowPolicy, obs: torch.Tensor, a: torch.Tensor, i: int):
    """Re-evaluate the velocity net at step i of the uniform grid (t_i = i/K)."""
    t = torch.full((obs.shape[0], 1), i / policy.steps)
    return policy.velocity(policy.velocity.encode(obs), a, t)


def floored_tanh_term_float64(pre_tanh: torch.Tensor) -> torch.Tensor:
    """The public code's ``log(1 − tanh(u)² + 1e-6)`` summed over actions, ``[B, A] -> [B]``, formed in float64
    (in fp32 the formula cancels where tanh saturates) and returned in fp32: an independent reference."""
    return torch.log(1 - torch.tanh(pre_tanh.double()) ** 2 + 1e-6).sum(-1).float()


def log_sigma_bias(policy: FlowPolicy) -> torch.Tensor:
    """The output bias of the log σ head (it influences σ and nothing else)."""
    vel = policy.velocity
    return vel.log_sigma_net[-1].bias if isinstance(vel, FlowGVelocity) else vel.log_sigma_head.bias


# --------------------------------------------------------------------------- densities
@pytest.mark.parametrize("noise", ["fixed", "learned"])
@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_one_step_log_prob_matches_torch_distributions(kind: str, noise: str) -> None:
    policy = flow(kind, noise, steps=1)
    obs = obs_batch(64)
    with torch.no_grad():
        r = policy.rollout(obs)
        a0, a1 = r.path[0], r.path[1]
        v, log_sigma = velocity_at(policy, obs, a0, 0)
        sigma = torch.full_like(v, 0.1) if noise == "fixed" else log_sigma.exp()
        prior = Independent(Normal(torch.zeros(ACT), torch.ones(ACT)), 1)
        transition = Independent(Normal(a0 + v, sigma), 1)  # Δt = 1
        # The tanh correction carries +1e-6 inside the log, as in the public code.
        tanh_term = torch.log(1 - torch.tanh(a1) ** 2 + 1e-6).sum(-1)
        expected = prior.log_prob(a0) + transition.log_prob(a1) - tanh_term
        # Away from saturation it is the TanhTransform Jacobian.
        ladj = TanhTransform().log_abs_det_jacobian(a1, torch.tanh(a1)).sum(-1)
        moderate = a1.abs().amax(-1) < 2
        assert moderate.sum() > 5
        torch.testing.assert_close(tanh_term[moderate], ladj[moderate], atol=1e-4, rtol=0)
    assert r.log_prob.shape == (64,)
    assert torch.equal(r.action, torch.tanh(a1))
    torch.testing.assert_close(r.log_prob, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("noise", ["fixed", "learned"])
@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_multi_step_log_prob_is_sum_of_recomputed_normal_terms(kind: str, noise: str) -> None:
    policy = flow(kind, noise, steps=4)
    obs = obs_batch(32)
    override = 0.05 if noise == "fixed" else None  # the per-call σ override must be what is used
    with torch.no_grad():
        r = policy.rollout(obs, noise_std=override)
        expected = Normal(0.0, 1.0).log_prob(r.path[0]).sum(-1)
        for i in range(4):
            v, log_sigma = velocity_at(policy, obs, r.path[i], i)
            sigma = torch.full_like(v, 0.05) if noise == "fixed" else log_sigma.exp()
            mean = r.path[i] + 0.25 * v
            torch.testing.assert_close(r.means[i], mean)
            torch.testing.assert_close(r.stds[i], sigma)
            expected += Normal(mean, sigma).log_prob(r.path[i + 1]).sum(-1)
        expected -= floored_tanh_term_float64(r.path[-1])
    assert r.path.shape == (5, 32, ACT) and r.means.shape == (4, 32, ACT)
    torch.testing.assert_close(r.log_prob, expected, atol=1e-3, rtol=1e-5)


def test_tanh_jacobian_exact_and_floored() -> None:
    """exact is log(sech² u) at every u; floored agrees until tanh saturates, then stops at log 1e-6 and goes flat."""
    u = torch.linspace(-30.0, 30.0, 601).unsqueeze(-1).requires_grad_(True)  # [B, 1]
    exact = tanh_log_det_jacobian(u, "exact")
    floored = tanh_log_det_jacobian(u, "floored")
    reference = -2.0 * torch.log(torch.cosh(u.detach().double())).squeeze(-1)  # log sech², no cancellation
    torch.testing.assert_close(exact.double(), reference, atol=1e-4, rtol=1e-6)
    moderate = u.detach().abs().squeeze(-1) < 2
    torch.testing.assert_close(floored[moderate], exact[moderate], atol=1e-4, rtol=0)
    assert floored.min() >= math.log(1e-6) - 1e-3 and exact.min() < -55
    (grad_exact,) = torch.autograd.grad(exact.sum(), u)
    (grad_floored,) = torch.autograd.grad(floored.sum(), u)
    far = u.detach().abs().squeeze(-1) > 12  # the floored slope is 2 sech²u / (sech²u + 1e-6): 3e-4 at |u| = 12
    # d/du log sech² u = -2 tanh u: the exact term keeps charging for larger |u|; the floored one does not
    torch.testing.assert_close(grad_exact[far].abs(), torch.full_like(grad_exact[far], 2.0))
    assert grad_floored[far].abs().max() < 1e-3
    with pytest.raises(ValueError, match="tanh_jacobian"):
        tanh_log_det_jacobian(u, "unfloored")


@pytest.mark.parametrize("mode", ["floored", "exact"])
def test_tanh_jacobian_keeps_fp32_precision_where_tanh_saturates(mode: str) -> None:
    """fp32 value and gradient within rounding of a float64 reference at every |u| (1 − tanh² cancels past ~4)."""
    u = torch.linspace(-30.0, 30.0, 601, dtype=torch.float64).unsqueeze(-1).requires_grad_(True)  # [B, 1]
    reference = -2.0 * torch.log(torch.cosh(u))  # log sech² u, no cancellation in float64
    if mode == "floored":
        reference = torch.log(torch.exp(reference) + 1e-6)
    (reference_grad,) = torch.autograd.grad(reference.sum(), u)
    u32 = u.detach().float().requires_grad_(True)
    term = tanh_log_det_jacobian(u32, mode)
    (grad,) = torch.autograd.grad(term.sum(), u32)
    assert term.dtype == grad.dtype == torch.float32
    torch.testing.assert_close(term.double(), reference.detach().squeeze(-1), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(grad.double(), reference_grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["gaussian", *FLOW_KINDS])
def test_tanh_jacobian_option_changes_only_the_squashing_term(kind: str) -> None:
    """Same weights and noise: the two modes' log π differ by exactly the two tanh terms, and act alike."""
    floored, exact = build(kind), build(kind, tanh_jacobian="exact")
    exact.load_state_dict(floored.state_dict())
    obs = obs_batch(64)
    with torch.no_grad():
        a_f, lp_f = floored.sample(obs, generator=torch.Generator().manual_seed(3))
        a_e, lp_e = exact.sample(obs, generator=torch.Generator().manual_seed(3))
        u = torch.atanh(a_f.double().clamp(-1 + 1e-12, 1 - 1e-12))
        shift = tanh_log_det_jacobian(u, "floored") - tanh_log_det_jacobian(u, "exact")
    assert torch.equal(a_f, a_e)
    torch.testing.assert_close((lp_e - lp_f).double(), shift, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("noise", ["fixed", "learned"])
@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_paper_code_log_prob_matches_its_formula(kind: str, noise: str) -> None:
    """Noise on the velocity, per-step log N(ε; 0, I) only, initial-noise and tanh terms kept."""
    policy = flow(kind, noise, steps=3, log_prob="paper_code")
    obs = obs_batch(32)
    dt = 1 / 3
    with torch.no_grad():
        r = policy.rollout(obs)
        expected = Normal(0.0, 1.0).log_prob(r.path[0]).sum(-1)
        for i in range(3):
            v, log_sigma = velocity_at(policy, obs, r.path[i], i)
            sigma = torch.full_like(v, 0.1) if noise == "fixed" else log_sigma.exp()
            # a_{i+1} = a_i + Δt (v_i + σ_i ε_i)  =>  ε_i = (a_{i+1} − a_i − Δt v_i) / (Δt σ_i)
            eps = (r.path[i + 1] - r.path[i] - dt * v) / (dt * sigma)
            expected += Normal(0.0, 1.0).log_prob(eps).sum(-1)
        expected -= floored_tanh_term_float64(r.path[-1])
    torch.testing.assert_close(r.log_prob, expected, atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(r.stds, dt * r.sigmas)


# --------------------------------------------------------------------------- shapes and gradients
@pytest.mark.parametrize("batch", [1, 256])
@pytest.mark.parametrize(("kind", "noise"), VARIANTS)
def test_shapes_bounds_finite(kind: str, noise: str | None, batch: int) -> None:
    policy = build(kind, noise)
    obs = obs_batch(batch)
    action, log_prob = policy.sample(obs)
    assert action.shape == (batch, ACT) and log_prob.shape == (batch,)
    assert action.dtype == log_prob.dtype == torch.float32
    assert torch.isfinite(action).all() and torch.isfinite(log_prob).all()
    assert action.abs().max() <= 1.0
    for deterministic in (True, False):
        acted = policy.act(obs, deterministic=deterministic)
        assert acted.shape == (batch, ACT) and acted.abs().max() <= 1.0 and not acted.requires_grad


@pytest.mark.parametrize("through", ["log_prob", "action"])
@pytest.mark.parametrize(("kind", "noise"), VARIANTS)
def test_gradients_reach_every_parameter(kind: str, noise: str | None, through: str) -> None:
    policy = build(kind, noise, **({} if kind == "gaussian" else {"steps": 2}))
    if kind == "flow_g":
        # G's last layer starts at zero weights, which blocks the gradient to G's hidden layers at
        # exactly the initial point; move off it to check that every parameter is connected.
        nn.init.normal_(policy.velocity.gate[-1].weight, std=0.1)
    action, log_prob = policy.sample(obs_batch(16))
    # log_prob must not be detached: the SAC entropy term trains the policy through it.
    assert log_prob.requires_grad and log_prob.grad_fn is not None
    (log_prob if through == "log_prob" else action).sum().backward()
    for name, p in policy.named_parameters():
        assert p.grad is not None, f"{name} got no gradient through {through}"
        assert p.grad.abs().sum() > 0, f"{name} got a zero gradient through {through}"


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_learned_sigma_gets_the_minus_log_sigma_gradient(kind: str) -> None:
    """With ε = 0 the path does not depend on σ, so ∂log π/∂b = −Σ ∂log σ/∂b exactly (b: σ-head bias)."""
    exact = flow(kind, "learned", steps=3)
    r = exact.rollout(obs_batch(8), deterministic=True)
    (grad,) = torch.autograd.grad(r.log_prob.sum(), log_sigma_bias(exact))
    half_range = 0.5 * (LOG_SIGMA_MAX - LOG_SIGMA_MIN)
    tanh_raw = (r.sigmas.log() - LOG_SIGMA_MIN) / half_range - 1.0
    expected = -(half_range * (1 - tanh_raw**2)).sum(dim=(0, 1))
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-5)
    assert (grad < 0).all()

    # The public code's variant leaves the −log σ terms out: σ then gets no gradient from them.
    paper = flow(kind, "learned", steps=3, log_prob="paper_code")
    r = paper.rollout(obs_batch(8), deterministic=True)
    (grad,) = torch.autograd.grad(r.log_prob.sum(), log_sigma_bias(paper))
    assert torch.equal(grad, torch.zeros_like(grad))

    # And with noise the gradient still reaches σ in exact mode.
    _, log_prob = exact.sample(obs_batch(8))
    (grad,) = torch.autograd.grad(log_prob.sum(), log_sigma_bias(exact))
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_flow_g_gate_is_open_at_init() -> None:
    policy = flow("flow_g")
    vel = policy.velocity
    obs, a = obs_batch(64), torch.randn(64, ACT)
    z = vel.gate_value(obs, a, torch.rand(64, 1))
    torch.testing.assert_close(z, torch.full_like(z, 1 / (1 + math.exp(-5.0))))
    assert torch.equal(vel.gate[-1].weight, torch.zeros_like(vel.gate[-1].weight))


# --------------------------------------------------------------------------- noise and determinism
@pytest.mark.parametrize(("kind", "noise"), VARIANTS)
def test_seeded_sampling_is_bit_identical(kind: str, noise: str | None) -> None:
    policy = build(kind, noise)
    obs = obs_batch(32)
    torch.manual_seed(123)
    first = policy.sample(obs)
    torch.manual_seed(123)
    second = policy.sample(obs)
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    gen = [torch.Generator().manual_seed(7) for _ in range(2)]
    assert torch.equal(policy.sample(obs, generator=gen[0])[0], policy.sample(obs, generator=gen[1])[0])


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_noise_is_drawn_per_element(kind: str) -> None:
    """Identical states in every row: any difference between rows/dims comes from the noise."""
    policy = flow(kind, steps=2)
    obs = obs_batch(1).expand(64, OBS)
    with torch.no_grad():
        r = policy.rollout(obs)
    eps = torch.cat([r.path[:1], (r.path[1:] - r.means) / r.stds])  # [K+1, B, A]
    for step in eps:
        assert step.unique().numel() == step.numel(), "noise repeats across batch rows or action dims"
    assert not torch.allclose(eps[1], eps[2])
    assert 0.7 < eps.std().item() < 1.3
    action, _ = build("gaussian").sample(obs)
    assert action.unique().numel() == action.numel()


@pytest.mark.parametrize(("kind", "noise"), VARIANTS)
def test_deterministic_act_uses_no_randomness(kind: str, noise: str | None) -> None:
    policy = build(kind, noise)
    obs = obs_batch(16)
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = policy.act(obs, deterministic=True)
    assert torch.equal(torch.get_rng_state(), state), "deterministic act drew random numbers"
    torch.manual_seed(99)
    assert torch.equal(policy.act(obs, deterministic=True), first)
    assert not torch.equal(policy.act(obs, deterministic=False), policy.act(obs, deterministic=False))


def test_deterministic_rollout_starts_at_zero_with_zero_noise() -> None:
    policy = flow("flow_mlp", steps=4)
    obs = obs_batch(8)
    with torch.no_grad():
        r = policy.rollout(obs, deterministic=True)
        a = torch.zeros(8, ACT)
        for i in range(4):
            a = a + 0.25 * velocity_at(policy, obs, a, i)[0]
    assert torch.equal(r.path[0], torch.zeros(8, ACT))
    torch.testing.assert_close(r.path[-1], a)


# --------------------------------------------------------------------------- Flow-T specifics
def test_single_token_attention_equals_multihead_attention() -> None:
    torch.manual_seed(0)
    d, heads = 16, 4
    ours = SingleTokenAttention(d, heads)
    ref = nn.MultiheadAttention(d, heads, batch_first=True)
    with torch.no_grad():
        # q/k projections stay random: with one key the softmax weight is 1 whatever they are.
        ref.in_proj_weight[2 * d :].copy_(ours.value_proj.weight)
        ref.in_proj_bias[2 * d :].copy_(ours.value_proj.bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
        query, kv = torch.randn(32, 1, d), torch.randn(32, 1, d)
        expected, weights = ref(query, kv, kv)
        torch.testing.assert_close(ours(kv), expected)
        torch.testing.assert_close(weights, torch.ones_like(weights))
        torch.testing.assert_close(ours(query), ref(query, query, query)[0])  # self-attention


@pytest.mark.parametrize("norm", ["post", "pre"])
def test_flow_t_encodes_the_state_once_per_rollout(norm: str) -> None:
    policy = flow("flow_t", steps=6, norm=norm)
    vel = policy.velocity
    assert isinstance(vel, FlowTVelocity)
    calls = []
    vel.state_encoder.register_forward_hook(lambda *_: calls.append(1))
    policy.sample(obs_batch(4))
    assert len(calls) == 1


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_rollout_traces_as_one_graph(kind: str) -> None:
    """No host syncs or data-dependent Python control flow: torch.compile captures it whole."""
    policy = flow(kind, "learned")
    compiled = torch.compile(policy.sample, fullgraph=True, backend="eager")
    obs = obs_batch(8)
    torch.manual_seed(3)
    action, log_prob = compiled(obs)
    torch.manual_seed(3)
    ref_action, ref_log_prob = policy.sample(obs)
    torch.testing.assert_close(action, ref_action)
    torch.testing.assert_close(log_prob, ref_log_prob)


# --------------------------------------------------------------------------- behaviour cloning
def _dataset(n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    obs = torch.randn(n, OBS, generator=g)
    actions = torch.tanh(obs[:, :ACT] * 1.5 + 0.3 * obs[:, ACT:].sum(-1, keepdim=True))
    return obs, actions


def _fit_bc(policy: nn.Module, obs: torch.Tensor, actions: torch.Tensor, steps: int) -> None:
    """``steps`` Adam steps (lr 3e-3) on the BC loss, with a fixed noise stream."""
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(steps):
        loss = policy.bc_loss(obs, actions)
        opt.zero_grad()
        loss.backward()
        opt.step()


def _eval_bc(policy: nn.Module, obs: torch.Tensor, actions: torch.Tensor) -> float:
    """BC loss with a fixed noise draw, over many (t, a_0) samples per data point."""
    torch.manual_seed(11)
    with torch.no_grad():
        return policy.bc_loss(obs.repeat(16, 1), actions.repeat(16, 1)).item()


@pytest.mark.parametrize("kind", POLICY_KINDS)
def test_bc_loss_decreases_on_a_fixed_dataset(kind: str) -> None:
    policy = build(kind)
    obs, actions = _dataset()
    before = _eval_bc(policy, obs, actions)
    _fit_bc(policy, obs, actions, 250)
    after = _eval_bc(policy, obs, actions)
    if kind == "gaussian":  # a negative log-likelihood: compare by difference
        assert after < before - 1.0, (before, after)
    else:
        assert after < 0.5 * before, (before, after)


def test_pretanh_target_reproduces_saturated_actions() -> None:
    """Fitting atanh(a) lets the deterministic rollout reach ±1 gripper commands; raw cannot."""
    g = torch.Generator().manual_seed(0)
    obs = torch.randn(32, OBS, generator=g)
    gripper = torch.where(obs[:, :1] > 0, 1.0, -1.0)
    actions = torch.cat([gripper, torch.tanh(obs[:, 1:ACT])], dim=-1)
    results = {}
    for target in ("pretanh", "raw"):
        policy = flow("flow_mlp", bc_target=target, hidden=64)
        assert policy.bc_target == target
        _fit_bc(policy, obs, actions, 400)
        results[target] = policy.act(obs)[:, 0] * gripper[:, 0]  # > 0: right sign
    assert results["pretanh"].median() > 0.99
    assert results["raw"].max() < 0.9  # tanh(a_K) with a_K ≈ ±1 stays near ±0.76


def test_bc_targets() -> None:
    actions = torch.tensor([[-1.0, 0.0, 1.0]])
    pre = flow("flow_mlp").bc_target_of(actions)
    assert torch.isfinite(pre).all()
    torch.testing.assert_close(pre, torch.atanh(torch.tensor([[-(1 - 1e-5), 0.0, 1 - 1e-5]])))
    assert torch.equal(flow("flow_mlp", bc_target="raw").bc_target_of(actions), actions)
    assert flow("flow_mlp").bc_target == "pretanh"


# --------------------------------------------------------------------------- configuration errors
def test_policy_kinds() -> None:
    assert POLICY_KINDS == ("gaussian", "flow_mlp", "flow_g", "flow_t")
    for kind in POLICY_KINDS:
        assert isinstance(build(kind), nn.Module)


def test_unknown_kind_names_allowed_values() -> None:
    with pytest.raises(ValueError, match=r"'flow_x'.*gaussian.*flow_mlp.*flow_g.*flow_t"):
        make_policy("flow_x", OBS, ACT)


@pytest.mark.parametrize(
    ("kind", "cfg", "key"),
    [
        ("flow_mlp", {"hiden": 64}, "hiden"),
        ("flow_t", {"hidden": 64}, "hidden"),
        ("gaussian", {"steps": 4}, "steps"),
        ("flow_g", {"steps": 0}, "steps"),
        ("flow_g", {"steps": 33}, "steps"),
        ("flow_g", {"steps": 2.0}, "steps"),
        ("flow_mlp", {"noise": "gaussian"}, "noise"),
        ("flow_mlp", {"noise_std": 0.0}, "noise_std"),
        ("flow_mlp", {"noise_std": float("nan")}, "noise_std"),
        ("flow_mlp", {"noise": "learned", "noise_std": 0.1}, "noise_std"),
        ("flow_mlp", {"log_prob": "approx"}, "log_prob"),
        ("flow_mlp", {"bc_target": "tanh"}, "bc_target"),
        ("flow_mlp", {"layers": 0}, "layers"),
        ("flow_t", {"norm": "sandwich"}, "norm"),
        ("flow_t", {"d_model": 30, "n_heads": 4}, "d_model"),
        ("flow_t", {"n_heads": 0}, "n_heads"),
        ("gaussian", {"log_std_min": 3.0}, "log_std_min"),
        ("flow_g", {"batch_renorm": "batch_renorm"}, "batch_renorm"),
        ("gaussian", {"batch_renorm": True}, "batch_renorm"),
        ("gaussian", {"batch_renorm": "crossq_per_step"}, "batch_renorm"),
        ("flow_t", {"tanh_jacobian": "unfloored"}, "tanh_jacobian"),
        ("gaussian", {"tanh_jacobian": None}, "tanh_jacobian"),
    ],
)
def test_bad_config_raises_naming_the_key(kind: str, cfg: dict, key: str) -> None:
    with pytest.raises(ValueError, match=f"'{key}'"):
        make_policy(kind, OBS, ACT, **cfg)


def test_bad_call_arguments() -> None:
    learned = flow("flow_t", "learned")
    with pytest.raises(ValueError, match="noise_std"):
        learned.sample(obs_batch(2), noise_std=0.05)
    fixed = flow("flow_g")
    with pytest.raises(ValueError, match="noise_std"):
        fixed.sample(obs_batch(2), noise_std=-0.1)
    with pytest.raises(ValueError, match=r"obs must have shape \[batch, 5\]"):
        fixed.sample(torch.randn(2, OBS + 1))
    with pytest.raises(ValueError, match="actions must have shape"):
        fixed.bc_loss(obs_batch(2), torch.zeros(2, ACT + 1))
    with pytest.raises(ValueError, match="obs_dim"):
        make_policy("flow_g", 0, ACT)
    with pytest.raises(ValueError, match="learned_noise"):
        FlowPolicy(FlowTVelocity(OBS, ACT, d_model=16, learned_noise=True), noise="fixed")
    with pytest.raises(ValueError, match="steps"):
        FlowPolicy(FlowTVelocity(OBS, ACT, d_model=16), steps=0)


@pytest.mark.parametrize("kind", FLOW_KINDS)
def test_per_step_batch_renorm_gives_each_rollout_step_its_own_layer(kind: str) -> None:
    policy = flow(kind, batch_renorm="crossq_per_step", steps=3)
    norm = next(m for m in policy.modules() if isinstance(m, PerStepActorBatchRenorm))
    obs = obs_batch(64) * 2 + 1
    eps = torch.randn(4, 64, ACT, generator=torch.Generator().manual_seed(2))
    with batch_statistics(policy):  # the actor loss's mode: each step's layer moves towards its own input
        path = policy.rollout(obs, eps=eps).path.detach()
    for i, layer in enumerate(norm.layers):
        seen = path[i] if kind == "flow_t" else torch.cat([obs, path[i]], dim=-1)  # Flow-T's layer reads a_i only
        torch.testing.assert_close(layer.running_mean.flatten(), 0.01 * seen.mean(0))
        assert int(layer.steps) == 1
    # off the grid (flow matching's t ~ U[0, 1]) each row reads the running statistics of its t's step
    x = torch.randn(4, norm.layers[0].weight.shape[-1])
    t = torch.tensor([[0.0], [0.5], [0.99], [1.0]])
    with torch.no_grad():
        expected = torch.stack([norm.layers[i](x[r : r + 1])[0] for r, i in enumerate((0, 1, 2, 2))])
        torch.testing.assert_close(norm(x, t), expected)
        assert not torch.allclose(norm.layers[0](x), norm.layers[1](x))
    with batch_statistics(policy), pytest.raises(RuntimeError, match="step="):
        norm(x, t)
    assert torch.isfinite(policy.bc_loss(obs, torch.rand(64, ACT) * 2 - 1))


def test_per_step_batch_renorm_must_match_the_rollout_length() -> None:
    velocity = FlowTVelocity(OBS, ACT, d_model=16, batch_renorm=True, renorm_steps=4)
    with pytest.raises(ValueError, match="per-step BatchRenorm layers for 4 steps"):
        FlowPolicy(velocity, steps=3)


def _official_flow_t_parameters(obs: int, act: int, d: int, layers: int, steps: int) -> tuple[int, int]:
    """Parameters of the public from-scratch code's CrossQ Flow-T actor (its TransformerFlowActor, layer by layer),
    and how many of them are the query/key projections of single-token attentions (the softmax over one key is 1,
    so they never reach the output)."""
    dense = lambda i, o: i * o + o  # noqa: E731
    renorm = lambda f: 2 * f  # noqa: E731 - scale and bias
    attention = 4 * dense(d, d)  # q, k, v, out
    layer = 2 * attention + 3 * renorm(d) + dense(d, 4 * d) + dense(4 * d, d)
    total = (renorm(obs) + dense(obs, d // 2) + dense(d // 2, d)  # observation encoder
             + dense(act, d) + dense(1, d // 4) + dense(d // 4, d // 2) + dense(d // 2, d)  # action, time
             + steps * renorm(act) + layers * layer + 2 * dense(d, act))  # per-step a_i renorm, decoder, heads
    return total, layers * 2 * 2 * dense(d, d)


@pytest.mark.parametrize("preset,obs,act", [("hopper_scratch_flow_t_paper", 11, 3),
                                            ("halfcheetah_scratch_flow_t_paper", 17, 6)])
def test_paper_flow_t_preset_has_the_official_actors_parameters(preset: str, obs: int, act: int) -> None:
    from pipeline.config import load_config

    cfg = load_config(preset)
    actor = make_policy(cfg.policy.kind, obs, act, **cfg.policy.policy_kwargs())
    total, dead = _official_flow_t_parameters(obs, act, cfg.policy.d_model, cfg.policy.n_layers, cfg.policy.steps)
    assert sum(p.numel() for p in actor.parameters()) == total - dead
    assert (cfg.policy.d_model, cfg.policy.n_heads, cfg.critic.hidden, cfg.sac.batch_size) == (96, 4, 1024, 512)


def _official_flow_g_parameters(obs: int, act: int, hidden: int, time_dim: int, sigma_hidden: int) -> int:
    """Parameters of the public from-scratch code's CrossQ Flow-G actor, layer by layer: the time MLP on a
    sinusoidal embedding, a BatchRenorm of [s, a_i], one-hidden-layer gate and candidate nets on [renorm, time], and
    the state-only log-sigma MLP."""
    dense = lambda i, o: i * o + o  # noqa: E731
    time_mlp = dense(time_dim, 2 * time_dim) + dense(2 * time_dim, time_dim)
    renorm = 2 * (obs + act)
    gated = 2 * (dense(obs + act + time_dim, hidden) + dense(hidden, act))
    sigma = dense(obs, sigma_hidden) + dense(sigma_hidden, sigma_hidden) + dense(sigma_hidden, act)
    return time_mlp + renorm + gated + sigma


@pytest.mark.parametrize("preset,obs,act", [("hopper_scratch_flow_g_paper", 11, 3),
                                            ("halfcheetah_scratch_flow_g_paper", 17, 6)])
def test_paper_flow_g_preset_has_the_official_actors_parameters(preset: str, obs: int, act: int) -> None:
    from pipeline.config import load_config

    cfg = load_config(preset)
    actor = make_policy(cfg.policy.kind, obs, act, **cfg.policy.policy_kwargs())
    p = cfg.policy
    total = _official_flow_g_parameters(obs, act, p.hidden, p.time_embedding, p.sigma_hidden)
    assert sum(q.numel() for q in actor.parameters()) == total
    assert (p.hidden, p.layers, p.time_embedding, cfg.critic.hidden, cfg.sac.batch_size) == (512, 1, 32, 1024, 512)
    if preset.startswith("hopper"):
        assert total == 325765  # ~0.3M, against 817k for our CPU presets' Flow-G at hidden 512


def test_flow_g_state_sigma_depends_on_the_state_only_and_the_time_embedding_on_t() -> None:
    policy = make_policy("flow_g", OBS, ACT, hidden=16, layers=1, noise="learned", time_embedding=8,
                         sigma_net="state", sigma_hidden=8)
    velocity = policy.velocity
    obs = torch.randn(5, OBS)
    context = velocity.encode(obs)
    t = torch.full((5, 1), 0.25)
    v1, log_sigma1 = velocity(context, torch.randn(5, ACT), t)
    v2, log_sigma2 = velocity(context, torch.randn(5, ACT), t + 0.5)
    assert torch.equal(log_sigma1, log_sigma2) and not torch.allclose(v1, v2)
    assert log_sigma1.shape == (5, ACT) and (log_sigma1 >= -5).all() and (log_sigma1 <= 2).all()
    actions, log_prob = policy.sample(obs)
    (log_prob.sum() + actions.sum()).backward()
    assert all(q.grad is not None for q in policy.parameters())


def test_flow_g_time_embedding_width_is_checked() -> None:
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="policy.time_embedding"):
        load_config("hopper_scratch_flow_g_paper", ["policy.time_embedding=3"])
