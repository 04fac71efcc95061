"""Critics: vectorized Q ensembles against per-member nn.Linear networks, CrossQ batch renormalization."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.critics import BatchRenorm, CrossQCritic, QEnsemble, VectorizedLayerNorm, VectorizedLinear, make_critic

OBS, ACT, N, B = 4, 2, 3, 10


def inputs(batch: int = B, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, OBS, generator=g), torch.rand(batch, ACT, generator=g) * 2 - 1


def member_networks(ens: QEnsemble) -> list[nn.Sequential]:
    """Plain torch modules holding member k's weights: one nn.Linear / nn.LayerNorm per vectorized layer."""
    nets = []
    for k in range(ens.n):
        mods: list[nn.Module] = []
        for m in ens.net:
            if isinstance(m, VectorizedLinear):
                lin = nn.Linear(m.weight.shape[1], m.weight.shape[2])
                with torch.no_grad():
                    lin.weight.copy_(m.weight[k].T)  # baddbmm computes x @ W, nn.Linear x @ W.T
                    lin.bias.copy_(m.bias[k, 0])
                mods.append(lin)
            elif isinstance(m, VectorizedLayerNorm):
                ln = nn.LayerNorm(m.weight.shape[-1])
                with torch.no_grad():
                    ln.weight.copy_(m.weight[k, 0])
                    ln.bias.copy_(m.bias[k, 0])
                mods.append(ln)
            else:
                mods.append(m)
        nets.append(nn.Sequential(*mods))
    return nets


@pytest.mark.parametrize("layer_norm", [False, True])
def test_ensemble_shape_and_equals_per_member_linear_loop(layer_norm: bool) -> None:
    torch.manual_seed(0)
    ens = QEnsemble(OBS, ACT, n=N, hidden=16, layers=2, layer_norm=layer_norm)
    obs, act = inputs()
    q = ens(obs, act)
    assert q.shape == (N, B)
    x = torch.cat([obs, act], dim=-1)
    expected = torch.stack([net(x).squeeze(-1) for net in member_networks(ens)])
    torch.testing.assert_close(q, expected, rtol=1e-5, atol=1e-6)
    # members start from different weights, so they disagree
    assert not torch.allclose(q[0], q[1])


def test_ensemble_gradients_equal_the_per_member_linear_loop() -> None:
    """The Q head's product-and-sum (not a batched matmul) back-propagates what nn.Linear does, to its weights and
    to the action (the actor's gradient)."""
    torch.manual_seed(0)
    ens = QEnsemble(OBS, ACT, n=N, hidden=16, layers=2)
    obs, act = inputs()
    act_vec, act_ref = act.clone().requires_grad_(), act.clone().requires_grad_()
    nets = member_networks(ens)
    ens(obs, act_vec).min(0).values.mean().backward()
    x = torch.cat([obs, act_ref], dim=-1)
    torch.stack([net(x).squeeze(-1) for net in nets]).min(0).values.mean().backward()
    torch.testing.assert_close(act_vec.grad, act_ref.grad, rtol=1e-5, atol=1e-7)
    head, heads = ens.net[-1], [net[-1] for net in nets]
    torch.testing.assert_close(head.weight.grad[:, :, 0], torch.stack([h.weight.grad[0] for h in heads]),
                               rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(head.bias.grad[:, 0, 0], torch.stack([h.bias.grad[0] for h in heads]))


def test_ensemble_members_are_independent() -> None:
    torch.manual_seed(0)
    ens = QEnsemble(OBS, ACT, n=N, hidden=16, layers=2, layer_norm=True)
    obs, act = inputs()
    ens(obs, act)[0].sum().backward()
    for name, p in ens.named_parameters():
        assert p.grad is not None, name
        assert p.grad[0].abs().sum() > 0, f"{name}: member 0 got no gradient from its own output"
        assert torch.count_nonzero(p.grad[1:]) == 0, f"{name}: member 0's output reached another member"


def test_vectorized_linear_default_init_bound() -> None:
    torch.manual_seed(0)
    layer = VectorizedLinear(N, 25, 7)
    bound = 1 / 5  # nn.Linear's U(-1/sqrt(in), 1/sqrt(in))
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    assert layer.weight.abs().max() > 0.8 * bound


def test_make_critic_kinds_and_bad_kind() -> None:
    assert isinstance(make_critic("ensemble", OBS, ACT, n=2, hidden=8), QEnsemble)
    assert isinstance(make_critic("crossq", OBS, ACT, n=2, hidden=8), CrossQCritic)
    with pytest.raises(ValueError, match=r"critic kind 'twin': expected 'ensemble' or 'crossq'"):
        make_critic("twin", OBS, ACT)


# ---------------------------------------------------------------------------------------------------------------
# Batch renormalization


def features(n: int = 2, batch: int = 64, h: int = 5, seed: int = 0, shift: float = 3.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, batch, h, generator=g) * 2.0 + shift


def test_batch_renorm_warmup_is_plain_batch_norm_and_tracks_running_stats() -> None:
    bn = BatchRenorm(2, 5, warmup=1000)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
    x = features()
    y = bn(x)
    for k in range(2):
        ref = F.batch_norm(x[k], None, None, bn.weight[k, 0], bn.bias[k, 0], training=True, eps=bn.eps)
        torch.testing.assert_close(y[k], ref, rtol=1e-5, atol=1e-5)
    # running statistics move from (0, 1) towards the batch's by `momentum` (biased variance, as in CrossQ)
    torch.testing.assert_close(bn.running_mean, 0.01 * x.mean(1, keepdim=True))
    torch.testing.assert_close(bn.running_var, 0.99 + 0.01 * x.var(1, unbiased=False, keepdim=True))
    assert int(bn.steps) == 1


def test_batch_renorm_eval_uses_running_stats_row_by_row() -> None:
    bn = BatchRenorm(2, 5, warmup=1000)
    for seed in range(3):
        bn(features(seed=seed))
    bn.eval()
    x = features(seed=7)
    before = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.steps))
    y = bn(x)
    expected = (x - bn.running_mean) / (bn.running_var + bn.eps).sqrt()
    torch.testing.assert_close(y, expected)
    # no batch statistics: a row's output does not depend on the other rows, and nothing is updated
    torch.testing.assert_close(bn(x[:, :1]), y[:, :1])
    assert torch.equal(bn.running_mean, before[0]) and torch.equal(bn.running_var, before[1])
    assert int(bn.steps) == before[2]


def test_batch_renorm_after_warmup_corrects_towards_running_stats() -> None:
    bn = BatchRenorm(2, 5, warmup=0, r_max=1.5, d_max=0.5)
    x = features(shift=3.0)  # far from the initial running stats (0, 1): r and d both clip
    y = bn(x)
    mean, var = x.mean(1, keepdim=True), x.var(1, unbiased=False, keepdim=True)
    std = (var + bn.eps).sqrt()
    running_std = torch.sqrt(torch.ones(()) + bn.eps)
    r = (std / running_std).clamp(1 / 1.5, 1.5)
    d = (mean / running_std).clamp(-0.5, 0.5)
    torch.testing.assert_close(y, (x - mean) / std * r + d)
    assert torch.all(d == 0.5), "the test input should saturate d"
    # r and d are constants (no gradient through them), as in the paper; r unclipped here so that a gradient
    # through r would show
    wide = BatchRenorm(2, 5, warmup=0, r_max=100.0, d_max=100.0)
    x2 = x.clone().requires_grad_(True)
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(3))
    (wide(x2) * w).sum().backward()
    x3 = x.clone().requires_grad_(True)
    r_const = (std / running_std).detach()
    plain = torch.stack([F.batch_norm(x3[k], None, None, training=True, eps=wide.eps) for k in range(2)])
    (plain * r_const * w).sum().backward()
    torch.testing.assert_close(x2.grad, x3.grad, rtol=1e-4, atol=1e-5)


def test_batch_renorm_closed_form_gradient_equals_autograd_through_the_batch_statistics() -> None:
    """The layer's hand-written backward against autograd of ``weight * ((x - mean) / std * r + d) + bias`` with the
    batch mean and std as functions of x and r, d constants: in float64 to rounding, for every input."""
    from pipeline.batch_renorm import _BatchRenormFunction

    g = torch.Generator().manual_seed(5)
    x = (torch.randn(2, 9, 4, generator=g, dtype=torch.float64) * 3 + 1).requires_grad_(True)
    weight = torch.randn(2, 1, 4, generator=g, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, 1, 4, generator=g, dtype=torch.float64, requires_grad=True)
    r = torch.rand(2, 1, 4, generator=g, dtype=torch.float64) + 0.5
    d = torch.randn(2, 1, 4, generator=g, dtype=torch.float64)
    dy = torch.randn(2, 9, 4, generator=g, dtype=torch.float64)
    eps = 1e-3

    def statistics(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = x.mean(1, keepdim=True)
        return mean, ((x - mean).square().mean(1, keepdim=True) + eps).rsqrt()

    mean, inv_std = statistics(x)
    reference = weight * ((x - mean) * inv_std * r + d) + bias
    mean, inv_std = statistics(x.detach())
    closed_form = _BatchRenormFunction.apply(x, weight, bias, mean, inv_std, r, d)
    torch.testing.assert_close(closed_form, reference, rtol=1e-12, atol=1e-12)
    expected = torch.autograd.grad((reference * dy).sum(), (x, weight, bias))
    got = torch.autograd.grad((closed_form * dy).sum(), (x, weight, bias))
    for name, a, b in zip(("x", "weight", "bias"), got, expected):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")


def test_crossq_joint_shares_batch_statistics_of_both_halves() -> None:
    torch.manual_seed(0)
    critic = CrossQCritic(OBS, ACT, n=2, hidden=16, layers=2)
    obs, act = inputs(seed=0)
    next_obs, next_act = inputs(seed=1)
    next_obs = next_obs + 2.0  # the halves have different statistics
    separate = [critic_copy(critic) for _ in range(2)]
    q, q_next = critic.joint(obs, act, next_obs, next_act)
    assert q.shape == q_next.shape == (2, B)
    # joint == one forward pass over the concatenated batch
    whole = critic_copy(separate[0])(torch.cat([obs, next_obs]), torch.cat([act, next_act]))
    torch.testing.assert_close(torch.cat([q, q_next], dim=1), whole)
    # ... which differs from normalizing each half with its own statistics
    assert not torch.allclose(q, separate[0](obs, act), atol=1e-3)
    assert not torch.allclose(q_next, separate[1](next_obs, next_act), atol=1e-3)
    # one joint call = one running-statistics update, with the joint batch mean
    first = critic.net[0]
    assert int(first.steps) == 1
    x = torch.cat([torch.cat([obs, next_obs]), torch.cat([act, next_act])], dim=-1)
    torch.testing.assert_close(first.running_mean[0, 0], 0.01 * x.mean(0))
    # in eval mode there are no batch statistics: joint equals the separate halves
    critic.eval()
    q_e, q_next_e = critic.joint(obs, act, next_obs, next_act)
    torch.testing.assert_close(q_e, critic(obs, act))
    torch.testing.assert_close(q_next_e, critic(next_obs, next_act))


def critic_copy(critic: CrossQCritic) -> CrossQCritic:
    clone = CrossQCritic(OBS, ACT, n=critic.n, hidden=16, layers=2)
    clone.load_state_dict(critic.state_dict())
    return clone
