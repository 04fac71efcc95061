"""``sac.update_mode``: the compiled update and the device-side non-finite guard it needs (no host syncs).

The guard tests run the ``compile`` mode's functions eagerly (``torch.compiler.set_stance("force_eager")``) so they
check the guard's maths in milliseconds; one test compiles for real. CUDA graphs are covered in test_cuda.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

from conftest import assert_same_losses_and_statistics, crossq_updates, random_batch, tiny_agent
from pipeline.precision import cpu_has_fast_bf16
from pipeline.update import NonFiniteError, SACUpdater, make_optimizers


@pytest.fixture
def force_eager() -> Iterator[None]:
    torch.compiler.set_stance("force_eager")
    yield
    torch.compiler.set_stance("default")


def nan_batch(seed: int):  # noqa: ANN201
    return random_batch(16, seed=seed, rewards=torch.full((16,), float("nan")))


def snapshot(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


@pytest.mark.usefixtures("force_eager")
def test_device_guard_skips_a_nan_step_and_keeps_the_weights() -> None:
    agent = tiny_agent(max_nonfinite=3, update_mode="compile")
    updater = SACUpdater(agent, make_optimizers(agent))
    updater.update(random_batch(16))
    critic, actor, log_alpha = snapshot(agent.critic), snapshot(agent.actor), agent.log_alpha.detach().clone()
    info = updater.update(nan_batch(2))
    assert not torch.isfinite(info["critic_grad_norm"])
    assert all(torch.equal(a, b) for a, b in zip(critic, agent.critic.parameters()))
    assert all(torch.isfinite(p).all() for p in agent.parameters())
    assert updater.skipped == 1  # the critic step; the actor's loss stayed finite (rewards only reach the critic)
    assert not all(torch.equal(a, b) for a, b in zip(actor, agent.actor.parameters()))
    assert not torch.equal(log_alpha, agent.log_alpha)


@pytest.mark.usefixtures("force_eager")
def test_device_guard_streak_raises_when_read_and_a_finite_step_resets_it() -> None:
    agent = tiny_agent(max_nonfinite=3, policy_delay=100, update_mode="compile")
    updater = SACUpdater(agent, make_optimizers(agent))
    for seed in range(4):
        updater.update(nan_batch(seed))
        updater.update(random_batch(16, seed=seed))
    assert updater.skipped == 4 and updater.nonfinite_streak == {"critic": 0, "actor": 0}
    for seed in range(3):
        updater.update(nan_batch(10 + seed))  # no host sync here: the streak is only read below
    with pytest.raises(NonFiniteError, match="3 consecutive non-finite critic updates"):
        _ = updater.skipped


@pytest.mark.usefixtures("force_eager")
def test_device_guard_counters_survive_a_checkpoint() -> None:
    agent = tiny_agent(update_mode="compile")
    updater = SACUpdater(agent, make_optimizers(agent))
    updater.update(nan_batch(1))
    state = updater.state_dict()
    fresh = SACUpdater(agent, make_optimizers(agent))
    fresh.load_state_dict(state)
    assert fresh.skipped == 1 and fresh.nonfinite_streak["critic"] == 1 and fresh.updates == 1


@pytest.fixture
def inductor_eager_random() -> Iterator[None]:
    """Inductor draws random numbers with its own generator unless told to fall back to eager's. Through
    ``config.patch``: monkeypatch's undo left inductor's config module without the key for the next test."""
    import torch._inductor.config

    with torch._inductor.config.patch(fallback_random=True):
        yield


@pytest.mark.slow  # inductor compiles forward, backward and Adam of both steps: 1-2 min on two CPU cores
@pytest.mark.usefixtures("inductor_eager_random")
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_compiled_updates_match_eager(precision: str) -> None:
    if precision == "bf16-mixed" and not cpu_has_fast_bf16():
        pytest.skip("this CPU has no AVX-512 BF16 / AMX")

    def run(mode: str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        torch.compiler.reset()
        agent = tiny_agent({"kind": "flow_g"}, update_mode=mode)
        agent.precision = precision
        updater = SACUpdater(agent, make_optimizers(agent))
        torch.manual_seed(5)
        first = {k: v.clone() for k, v in updater.update(random_batch(16, seed=0)).items()}
        for seed in (1, 2):
            updater.update(random_batch(16, seed=seed))
        assert updater.skipped == 0
        return first, agent.state_dict()

    (eager_first, eager), (compiled_first, compiled) = run("eager"), run("compile")
    if precision == "32-true":
        for k in eager:
            torch.testing.assert_close(compiled[k], eager[k], atol=1e-5, rtol=1e-4, msg=k)
    else:
        # compiled and eager bf16 round in different places: the first update's losses agree to bf16's precision,
        # and three Adam steps (lr 3e-4 each) later no weight has moved apart by more than one step
        for k in ("critic_loss", "actor_loss"):
            torch.testing.assert_close(compiled_first[k], eager_first[k], atol=1e-3, rtol=2e-2, msg=k)
        for k in eager:
            torch.testing.assert_close(compiled[k], eager[k], atol=3e-4, rtol=1e-2, msg=k)


@pytest.mark.slow  # compiles both steps: ~2 min on two CPU cores
@pytest.mark.usefixtures("inductor_eager_random")
@pytest.mark.parametrize("mode", ["compile", "compile_fullgraph"])
@pytest.mark.parametrize("batch_renorm", ["crossq", "crossq_per_step"])
def test_compiled_crossq_updates_match_eager(batch_renorm: str, mode: str) -> None:
    # The from-scratch presets' backbone, with a policy delay and CrossQ's actor layers: losses (actor_q reads
    # the biases that feed batch-renorm layers, see assert_same_losses_and_statistics) and running statistics agree
    torch.compiler.reset()
    eager = crossq_updates("eager", 4, batch_renorm=batch_renorm)
    torch.compiler.reset()
    compiled = crossq_updates(mode, 4, batch_renorm=batch_renorm)
    assert ["actor_loss" in info for info in eager[1]] == [False, True, False, True]
    # 3e-4: on a 2-core AMD EPYC (AVX-512) a critic loss of the four differs by 1.4e-4 of itself (the bias steps
    # that assert_same_losses_and_statistics describes)
    assert_same_losses_and_statistics(eager, compiled, ("critic_loss", "q_mean", "target_mean", "log_prob", "alpha"),
                                      rtol=3e-4)
    agent = compiled[0].agent
    assert int(agent.critic.net[0].steps) == 4 and int(agent.actor.obs_norm.steps) == 2


def _updates(mode: str, kind: str, n: int = 3, weights: dict[str, float] | None = None, **sac: Any) -> tuple[
        SACUpdater, list[dict[str, torch.Tensor]]]:
    """``n`` updates of a tiny agent in ``mode`` (actor and alpha every update, the actor objective's ``weights``),
    each after seeding the RNG."""
    torch.compiler.reset()
    agent = tiny_agent({"kind": kind}, update_mode=mode, policy_delay=1, **sac)
    updater = SACUpdater(agent, make_optimizers(agent))
    infos = []
    for i in range(n):
        torch.manual_seed(10 + i)
        infos.append({k: v.clone() for k, v in updater.update(random_batch(16, seed=i), **(weights or {})).items()})
    return updater, infos


def _assert_same_updates(a: tuple[SACUpdater, list[dict]], b: tuple[SACUpdater, list[dict]], atol: float) -> None:
    (ua, ia), (ub, ib) = a, b
    assert [sorted(i) for i in ia] == [sorted(i) for i in ib]
    for info_a, info_b in zip(ia, ib):
        for k in info_a:
            torch.testing.assert_close(info_b[k], info_a[k], atol=atol, rtol=1e-4, msg=k)
    for k, v in ua.agent.state_dict().items():
        torch.testing.assert_close(ub.agent.state_dict()[k], v, atol=atol, rtol=1e-4, msg=k)
    # the written-out Adam keeps torch's Adam state, so checkpoints look the same in every mode
    for opt_a, opt_b in zip((ua.opt.critic, ua.opt.actor, ua.opt.alpha), (ub.opt.critic, ub.opt.actor, ub.opt.alpha)):
        sa, sb = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for i in sa:
            assert sa[i].keys() == sb[i].keys()
            for k in sa[i]:
                torch.testing.assert_close(sb[i][k], sa[i][k], atol=atol, rtol=1e-4, msg=f"{i}.{k}")


@pytest.mark.usefixtures("force_eager")
@pytest.mark.parametrize("kind", ["gaussian", "flow_g", "flow_t"])
def test_fullgraph_steps_compute_the_eager_update(kind: str) -> None:
    """``compile_fullgraph``'s steps (torch.func gradients, Adam written out), run eagerly: the same losses,
    weights and optimizer state as the eager mode's backward and torch's Adam, with gradient clipping on."""
    _assert_same_updates(_updates("eager", kind, grad_clip=0.5), _updates("compile_fullgraph", kind, grad_clip=0.5),
                         atol=1e-6)


@pytest.mark.usefixtures("force_eager")
@pytest.mark.parametrize("mode", ["eager", "compile_fullgraph"])
@pytest.mark.parametrize("kind", ["gaussian", "flow_t"])
def test_bf16_backward_leaves_lightnings_autocast(mode: str, kind: str) -> None:
    """bf16 in the critic, the update inside Lightning's bf16 training-step context (its precision plugin runs the
    whole step under autocast): the losses run under autocast, the backward passes outside it, so the actor (fp32
    under this scope) gets the gradients of a plain eager update. With the backward under autocast the actor's
    backward ran in bf16 and its first gradient norm already differed."""
    from lightning.pytorch.plugins.precision import MixedPrecision

    bf16 = {"precision": "bf16-mixed", "precision_scope": "critic"}
    with MixedPrecision("bf16-mixed", "cpu").train_step_context():
        in_lightning = _updates(mode, kind, **bf16)
    _assert_same_updates(_updates("eager", kind, **bf16), in_lightning, atol=1e-5)


@pytest.mark.usefixtures("force_eager")
def test_fullgraph_steps_compute_the_pretraining_objective() -> None:
    """The offline objective (flow matching, BC and Q terms together) through torch.func as through backward."""
    weights = {"bc_weight": 2.0, "q_weight": 1.0, "flow_weight": 1.0}
    _assert_same_updates(_updates("eager", "flow_t", weights=weights),
                         _updates("compile_fullgraph", "flow_t", weights=weights), atol=1e-6)


@pytest.mark.usefixtures("force_eager")
@pytest.mark.parametrize("batch_renorm", ["crossq", "crossq_per_step"])
def test_fullgraph_steps_compute_the_eager_crossq_update(batch_renorm: str) -> None:
    """The from-scratch presets' backbone (CrossQ critic, batch renorm in the actor, policy delay 2): the running
    statistics the losses move leave torch.func's transform as values and are written after it, so losses and
    statistics follow the eager mode's (tolerance: see assert_same_losses_and_statistics)."""
    eager = crossq_updates("eager", 4, batch_renorm=batch_renorm)
    graph = crossq_updates("compile_fullgraph", 4, batch_renorm=batch_renorm)
    # the first step starts from the same weights: its gradients agree to rounding
    assert graph[1][0]["critic_grad_norm"] == pytest.approx(eager[1][0]["critic_grad_norm"], rel=1e-5)
    assert graph[1][1]["actor_grad_norm"] == pytest.approx(eager[1][1]["actor_grad_norm"], rel=1e-3)
    assert_same_losses_and_statistics(eager, graph, ("critic_loss", "q_mean", "target_mean", "log_prob", "alpha",
                                                     "actor_loss"), rtol=3e-4)
    agent = graph[0].agent
    assert int(agent.critic.net[0].steps) == 4 and int(agent.actor.obs_norm.steps) == 2


@pytest.mark.usefixtures("force_eager")
def test_fullgraph_guard_skips_a_nan_critic_step() -> None:
    agent = tiny_agent({"kind": "gaussian"}, max_nonfinite=3, update_mode="compile_fullgraph")
    updater = SACUpdater(agent, make_optimizers(agent))
    updater.update(random_batch(16))
    critic, actor = snapshot(agent.critic), snapshot(agent.actor)
    info = updater.update(nan_batch(2))
    assert not torch.isfinite(info["critic_grad_norm"])
    assert all(torch.equal(a, b) for a, b in zip(critic, agent.critic.parameters()))
    assert updater.skipped == 1 and updater.nonfinite_streak == {"critic": 1, "actor": 0}
    assert not all(torch.equal(a, b) for a, b in zip(actor, agent.actor.parameters()))
    for seed in range(2):
        updater.update(nan_batch(10 + seed))
    with pytest.raises(NonFiniteError, match="3 consecutive non-finite critic updates"):
        _ = updater.skipped


@pytest.mark.usefixtures("force_eager")
@pytest.mark.parametrize("crossq", [False, True])
def test_fullgraph_resumes_from_a_checkpoint_like_an_uninterrupted_run(crossq: bool) -> None:
    _check_fullgraph_resume(crossq)


@pytest.mark.slow  # compiles the steps of three updaters
@pytest.mark.usefixtures("inductor_eager_random")
def test_compiled_fullgraph_resumes_from_a_checkpoint_like_an_uninterrupted_run() -> None:
    # compiled, the steps read Adam's state tensors through the optimizer: a load replaces them, and the next step
    # must use the loaded ones
    torch.compiler.reset()
    _check_fullgraph_resume()


def _check_fullgraph_resume(crossq: bool = False) -> None:
    """Agent and updater state after two updates, loaded into a fresh agent and updater: the third update lands on
    the same weights, batch-renorm statistics (``crossq``: CrossQ critic and actor layers) and Adam state as without
    the interruption."""
    def fresh() -> SACUpdater:
        policy = {"kind": "flow_t", "batch_renorm": "crossq"} if crossq else {"kind": "gaussian"}
        agent = tiny_agent(policy, {"kind": "crossq"} if crossq else {}, update_mode="compile_fullgraph",
                           policy_delay=1, seed=3)
        return SACUpdater(agent, make_optimizers(agent))

    straight, interrupted = fresh(), fresh()
    for i in range(2):
        for updater in (straight, interrupted):
            torch.manual_seed(i)
            updater.update(random_batch(16, seed=i))
    resumed = fresh()
    resumed.agent.load_state_dict(interrupted.agent.state_dict())
    resumed.load_state_dict(interrupted.state_dict())
    for updater in (straight, resumed):
        torch.manual_seed(7)
        updater.update(random_batch(16, seed=7))
    for k, v in straight.agent.state_dict().items():
        assert torch.equal(resumed.agent.state_dict()[k], v), k
    for a, b in zip(straight.opt.critic.state.values(), resumed.opt.critic.state.values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.updates == 3


@pytest.mark.slow  # inductor compiles both steps whole: ~1 min per policy kind on two CPU cores
@pytest.mark.usefixtures("inductor_eager_random")
@pytest.mark.parametrize("kind", ["gaussian", "flow_g", "flow_t"])
def test_fullgraph_compiled_updates_match_eager(kind: str) -> None:
    _assert_same_updates(_updates("eager", kind), _updates("compile_fullgraph", kind), atol=1e-5)


@pytest.mark.slow
@pytest.mark.usefixtures("inductor_eager_random")
@pytest.mark.parametrize("kind", ["gaussian", "flow_t"])
def test_fullgraph_compiled_bf16_updates_follow_eager_bf16(kind: str) -> None:
    """bf16 in the critic (the default scope): compiled and eager round in different places, so the first update's
    losses agree to bf16's precision and three Adam steps later no weight has moved apart by more than a step."""
    if not cpu_has_fast_bf16():
        pytest.skip("this CPU has no AVX-512 BF16 / AMX")
    bf16 = {"precision": "bf16-mixed", "precision_scope": "critic"}
    (eager, eager_infos), (graph, graph_infos) = _updates("eager", kind, **bf16), _updates("compile_fullgraph", kind,
                                                                                            **bf16)
    for k in ("critic_loss", "actor_loss"):
        torch.testing.assert_close(graph_infos[0][k], eager_infos[0][k], atol=1e-3, rtol=2e-2, msg=k)
    for k, v in eager.agent.state_dict().items():
        torch.testing.assert_close(graph.agent.state_dict()[k], v, atol=3e-4, rtol=1e-2, msg=k)


def _replayed_losses(replays: int, fallback_random: bool) -> dict[str, list[float]]:
    """One compiled one-graph update of a tiny CrossQ Flow-T agent replayed ``replays`` times from the same weights,
    statistics, optimizer state and batch: only the rollouts' noise differs between replays."""
    import copy

    import torch._inductor.config

    torch.compiler.reset()
    with torch._inductor.config.patch(fallback_random=fallback_random):
        agent = tiny_agent({"kind": "flow_t", "batch_renorm": "crossq"}, {"kind": "crossq"},
                           update_mode="compile_fullgraph", policy_delay=1, seed=0)
        updater = SACUpdater(agent, make_optimizers(agent))
        for seed in range(2):
            updater.update(random_batch(64, seed=10 + seed))
        start, batch = copy.deepcopy((agent.state_dict(), updater.state_dict())), random_batch(64, seed=3)
        losses: dict[str, list[float]] = {"log_prob": [], "critic_loss": [], "actor_loss": []}
        for _ in range(replays):
            agent.load_state_dict(start[0])
            updater.load_state_dict(start[1])
            info = updater.update(batch)
            for k, values in losses.items():
                values.append(float(info[k]))
    return losses


@pytest.mark.slow  # compiles the one-graph steps twice: ~2 min on two CPU cores
def test_compiled_fullgraph_draws_fresh_noise_distributed_as_eager() -> None:
    """Compiled, the rollouts' noise comes from inductor's own generator, not torch's: each call must draw anew, and
    the losses it gives must be distributed as with torch's draws (the eager mode's numbers)."""
    replays = 300
    inductor, torchs = _replayed_losses(replays, False), _replayed_losses(replays, True)
    assert len(set(inductor["log_prob"])) == replays  # a fresh draw on every call
    for k in inductor:
        a, b = torch.tensor(inductor[k], dtype=torch.float64), torch.tensor(torchs[k], dtype=torch.float64)
        se = (a.var() / replays + b.var() / replays).sqrt()
        assert abs(a.mean() - b.mean()) < 4 * se, (k, a.mean(), b.mean(), se)
        assert 0.8 < a.std() / b.std() < 1.25, (k, a.std(), b.std())


def test_cuda_graphs_need_a_cuda_agent() -> None:
    agent = tiny_agent(update_mode="cuda_graphs")
    with pytest.raises(ValueError, match="sac.update_mode"):
        SACUpdater(agent, make_optimizers(agent))


def test_device_update_modes_are_refused_with_data_parallel_training() -> None:
    from pipeline.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="sac.update_mode"):
        load_config(overrides=["sac.update_mode=compile", "trainer.devices=2", "trainer.strategy=ddp"])


def test_auto_update_mode_runs_eager_on_a_cpu_and_in_data_parallel_runs() -> None:
    from pipeline.config import as_run, load_config

    agent = tiny_agent()
    assert agent.cfg.update_mode == "auto"
    updater = SACUpdater(agent, make_optimizers(agent))
    assert updater.mode == "eager" and not updater.on_device
    assert load_config().sac.update_mode == "auto"
    # DDP averages gradients inside Lightning's backward, which only the eager update calls; the config as loaded
    # keeps what was asked for
    ddp = load_config(overrides=["trainer.devices=2", "trainer.strategy=ddp"])
    assert ddp.sac.update_mode == "auto" and as_run(ddp).sac.update_mode == "eager"
    assert as_run(load_config(overrides=["trainer.num_nodes=2"])).sac.update_mode == "eager"
    assert as_run(load_config()).sac.update_mode == "auto"


@pytest.mark.parametrize("kind", ["flow_t", "gaussian"])
def test_compiled_acting_takes_a_new_batch_size(kind: str) -> None:
    # acting on one env, then evaluating on five: the second size makes dynamo trace the batch as symbolic, and the
    # rollout's noise must be drawn for a symbolic shape (torch.randn's generator overload takes concrete sizes only)
    torch.compiler.reset()
    agent = tiny_agent({"kind": kind, "noise": "learned"}, act_mode="compile")
    for batch in (1, 5, 3):
        for deterministic in (True, False):
            action = agent.act(torch.randn(batch, 3), deterministic)
            assert action.shape == (batch, 2) and bool(torch.isfinite(action).all())


def test_compiled_flow_matching_loss_takes_a_new_batch_size() -> None:
    # the loss draws a_0 and t: both must be drawn for a symbolic batch, as the rollout's noise
    torch.compiler.reset()
    agent = tiny_agent({"kind": "flow_t"})
    loss = torch.compile(agent.actor.bc_loss)
    for batch in (4, 6, 5):
        assert bool(torch.isfinite(loss(torch.randn(batch, 3), torch.rand(batch, 2) * 1.8 - 0.9)))


@pytest.mark.usefixtures("inductor_eager_random")
def test_compiled_acting_matches_eager() -> None:
    torch.compiler.reset()
    eager = tiny_agent({"kind": "flow_t", "noise": "learned"})
    compiled = tiny_agent({"kind": "flow_t", "noise": "learned"}, act_mode="compile")
    obs = torch.randn(4, 3)
    torch.testing.assert_close(compiled.act(obs, True), eager.act(obs, True))
    torch.manual_seed(7)
    sampled = compiled.act(obs, False)
    torch.manual_seed(7)
    torch.testing.assert_close(sampled, eager.act(obs, False))
