"""``trainer.precision = bf16-mixed``: matrix products under bf16 autocast, while weights, optimizer state,
BatchRenorm statistics, log-probabilities, losses and the output heads stay fp32."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
import torch

import pipeline.precision as precision
from pipeline.batch_renorm import BatchRenorm
from pipeline.cli import main
from pipeline.config import ConfigError, load_config
from pipeline.critics import QEnsemble
from pipeline.sac import SACAgent
from pipeline.update import SACUpdater, make_optimizers
from conftest import ACT_DIM, OBS_DIM, random_batch, tiny_agent, tiny_d4rl

VARIANTS = {
    "gaussian": ({"kind": "gaussian"}, {}),
    "flow_g": ({"kind": "flow_g"}, {}),
    "flow_t-learned-crossq": ({"kind": "flow_t", "noise": "learned", "batch_renorm": "crossq"}, {"kind": "crossq"}),
    "flow_g-crossq_per_step": ({"kind": "flow_g", "batch_renorm": "crossq_per_step"}, {"kind": "crossq"}),
}


def _updates(prec: str, policy: dict, critic: dict, n: int = 4) -> tuple[torch.nn.Module, SACUpdater, list[dict]]:
    agent = tiny_agent(policy, critic, policy_delay=1)
    agent.precision = prec
    updater = SACUpdater(agent, make_optimizers(agent))
    infos = []
    for i in range(n):
        torch.manual_seed(100 + i)
        infos.append({k: v.clone() for k, v in updater.update(random_batch(32, seed=i)).items()})
    return agent, updater, infos


@pytest.mark.parametrize("name", list(VARIANTS))
def test_bf16_updates_keep_fp32_state_and_follow_the_fp32_ones(name: str) -> None:
    policy, critic = VARIANTS[name]
    ref, _, ref_infos = _updates("32-true", policy, critic)
    agent, updater, infos = _updates("bf16-mixed", policy, critic)
    for t in [*agent.parameters(), *agent.buffers()]:
        assert t.dtype in (torch.float32, torch.long)
    for opt in (updater.opt.actor, updater.opt.critic):
        assert all(v.dtype == torch.float32 for s in opt.state.values() for k, v in s.items() if k != "step")
    for info in infos:
        assert all(torch.isfinite(v).all() and v.dtype == torch.float32 for v in info.values())
    # the first update starts from the same weights: bf16 rounding moves its losses a little, and does move them
    for key in ("critic_loss", "actor_loss"):
        torch.testing.assert_close(infos[0][key], ref_infos[0][key], rtol=0.05, atol=1e-3)
    assert any(not torch.equal(infos[0][k], ref_infos[0][k]) for k in ("critic_loss", "actor_loss"))
    renorms = [m for m in agent.modules() if isinstance(m, BatchRenorm)]
    assert all(m.running_mean.dtype == torch.float32 for m in renorms)
    if renorms:  # the statistics moved, and by about what fp32 moves them
        ref_renorms = [m for m in ref.modules() if isinstance(m, BatchRenorm)]
        for m, r in zip(renorms, ref_renorms):
            assert not torch.equal(m.running_mean, torch.zeros_like(m.running_mean))
            torch.testing.assert_close(m.running_mean, r.running_mean, rtol=0.1, atol=2e-3)


def test_output_heads_compute_in_fp32_under_autocast() -> None:
    """A Q-value near 100 survives autocast: bf16 would round 100.3 to 100.5."""
    critic = QEnsemble(OBS_DIM, ACT_DIM, n=2, hidden=16)
    with torch.no_grad():
        critic.net[-1].weight.mul_(1e-3)
        critic.net[-1].bias.fill_(100.3)
    obs, act = torch.randn(4, OBS_DIM), torch.rand(4, ACT_DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        q = critic(obs, act)
    assert q.dtype == torch.float32
    torch.testing.assert_close(q, critic(obs, act), rtol=1e-3, atol=0.02)
    assert (q - 100.5).abs().min() > 0.1


@pytest.mark.parametrize("kind", ["gaussian", "flow_mlp", "flow_g", "flow_t"])
def test_bf16_acting_gives_fp32_actions_and_log_probs(kind: str) -> None:
    agent = tiny_agent({"kind": kind, "noise": "learned"} if kind != "gaussian" else {"kind": kind})
    agent.precision = "bf16-mixed"
    obs = torch.randn(5, OBS_DIM)
    for deterministic in (True, False):
        actions = agent.act(obs, deterministic)
        assert actions.dtype == torch.float32 and actions.abs().max() <= 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        actions, log_prob = agent.actor.sample(agent.normalize(obs))
    assert actions.dtype == log_prob.dtype == torch.float32 and torch.isfinite(log_prob).all()


def test_a_cpu_acts_in_fp32_whatever_the_precision_and_the_autocast_around_it() -> None:
    fp32 = tiny_agent({"kind": "flow_t"})
    bf16 = tiny_agent({"kind": "flow_t"})
    bf16.precision = "bf16-mixed"
    obs = torch.randn(5, OBS_DIM)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # as inside Lightning's bf16-mixed training_step
        actions = bf16.act(obs, True)
    assert torch.equal(actions, fp32.act(obs, True))


def _halves(agent: SACAgent, obs: torch.Tensor, act: torch.Tensor, autocast: bool) -> dict[str, torch.Tensor]:
    """What each half of ``agent`` computes on the same inputs and noise, under bf16 autocast or not."""
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    out = {}
    with ctx:
        torch.manual_seed(7)
        out["actor sample"], out["actor log-prob"] = agent.actor.sample(obs)
        torch.manual_seed(8)
        out["actor bc loss"] = agent.actor.bc_loss(obs, act)
        out["critic"] = agent.critic(obs, act)
        if agent.critic_target is not None:
            out["critic target"] = agent.critic_target(obs, act)
    return out


@pytest.mark.parametrize("policy,critic", [("flow_t", "crossq"), ("flow_g", "ensemble"), ("gaussian", "ensemble")])
@pytest.mark.parametrize("scope", ["critic", "actor"])
def test_precision_scope_keeps_the_other_half_in_fp32(scope: str, policy: str, critic: str) -> None:
    """Under bf16 autocast (the update's, or Lightning's around a training step) the half of the agent outside
    ``trainer.precision_scope`` computes exactly what fp32 computes, and the half inside it rounds."""
    obs, act = torch.randn(16, OBS_DIM), torch.rand(16, ACT_DIM) * 1.8 - 0.9
    fp32 = _halves(tiny_agent({"kind": policy}, {"kind": critic}), obs, act, autocast=False)
    scoped = _halves(tiny_agent({"kind": policy}, {"kind": critic}, precision="bf16-mixed", precision_scope=scope),
                     obs, act, autocast=True)
    everywhere = _halves(tiny_agent({"kind": policy}, {"kind": critic}, precision="bf16-mixed"), obs, act,
                         autocast=True)
    for name, value in scoped.items():
        assert value.dtype == torch.float32, name
        if name.startswith(scope):
            assert not torch.equal(value, fp32[name]), f"{name} should compute in bf16"
            torch.testing.assert_close(value, fp32[name], rtol=0.05, atol=0.05)
        else:
            assert torch.equal(value, fp32[name]), f"{name} should compute in fp32"
            assert not torch.equal(everywhere[name], fp32[name]), f"{name} rounds without the scope"


def test_every_scope_names_the_halves_it_keeps_in_fp32() -> None:
    """The config's scopes (a Literal) and the table of halves each keeps in fp32 live apart: they must agree."""
    assert set(precision.KEPT_FP32) == set(precision.PRECISION_SCOPES)
    agent = tiny_agent({"kind": "gaussian"}, {"kind": "ensemble"})
    assert all(hasattr(agent, half) for halves in precision.KEPT_FP32.values() for half in halves)


def test_bf16_mixed_applies_to_the_critic_unless_the_scope_says_otherwise() -> None:
    """A config that asks for bf16-mixed and nothing more gets bf16 in the critic and an fp32 actor: bf16 in both
    halves fell off fp32's returns on Hopper-v5 (docs/results.md)."""
    obs, act = torch.randn(16, OBS_DIM), torch.rand(16, ACT_DIM) * 1.8 - 0.9

    def halves(*overrides: str) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        agent = SACAgent.from_config(load_config("smoke", list(overrides)), OBS_DIM, ACT_DIM).eval()
        return _halves(agent, obs, act, autocast=agent.precision == "bf16-mixed")

    fp32, default = halves(), halves("trainer.precision=bf16-mixed")
    everywhere = halves("trainer.precision=bf16-mixed", "trainer.precision_scope=agent")
    for name, value in default.items():
        assert torch.equal(value, fp32[name]) != name.startswith("critic"), name
        assert not torch.equal(everywhere[name], fp32[name]), name


def test_bf16_is_refused_on_a_cpu_without_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_has_fast_bf16", lambda: False)
    with pytest.raises(ValueError, match="trainer.precision = 'bf16-mixed' needs a CPU with AVX-512 BF16 or AMX"):
        precision.check_precision("bf16-mixed", torch.device("cpu"))
    precision.check_precision("32-true", torch.device("cpu"))


def test_precision_config_errors_name_the_keys() -> None:
    with pytest.raises(ConfigError, match="trainer.precision"):
        load_config("smoke", ["trainer.precision=16-mixed"])
    with pytest.raises(ConfigError, match="'sac.update_mode' = 'cuda_graphs' with 'trainer.precision'"):
        load_config("smoke", ["trainer.precision=bf16-mixed", "sac.update_mode=cuda_graphs"])
    with pytest.raises(ConfigError, match="trainer.precision_scope"):
        load_config("smoke", ["trainer.precision=bf16-mixed", "trainer.precision_scope=policy"])
    assert load_config("smoke", ["trainer.precision=bf16-mixed", "trainer.precision_scope=actor"]).trainer \
        .precision_scope == "actor"
    with pytest.raises(ValueError, match="precision_scope = 'policy': expected one of critic, agent, actor"):
        tiny_agent(precision="bf16-mixed", precision_scope="policy")


@pytest.mark.skipif(not precision.cpu_has_fast_bf16(), reason="this CPU has no AVX-512 BF16 / AMX")
def test_bf16_pretraining_and_finetuning_run_through_lightning(tmp_path: Path) -> None:
    data = tiny_d4rl(tmp_path / "tiny.hdf5")
    common = ["--preset", "smoke", "--quiet", "--set", "trainer.precision=bf16-mixed"]
    # pretraining with bf16 in both halves, fine-tuning in the default scope (the actor leaves Lightning's autocast)
    assert main(["pretrain", *common, "--set", "trainer.precision_scope=agent", "--set", "pretrain.dataset.format=d4rl",
                 "--set", f"pretrain.dataset.source={data}", "--set", "pretrain.steps=20",
                 "--out", str(tmp_path / "pre")]) == 0
    rows = (tmp_path / "pre/pretrain.csv").read_text().splitlines()
    assert len(rows) == 3 and "nan" not in rows[-1]
    assert main(["finetune", *common, "--set", "finetune.env_id=Pendulum-v1", "--set", "finetune.env_options={}",
                 "--set", "finetune.from_pretrained=false", "--set", "finetune.total_steps=120", "--set",
                 "finetune.learning_starts=40", "--set", "finetune.vectorization_mode=sync",
                 "--out", str(tmp_path / "ft")]) == 0
    metrics = json.loads((tmp_path / "ft/metrics.json").read_text())
    assert metrics["env_steps"] == 120 and metrics["skipped_updates"] == 0
