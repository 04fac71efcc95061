"""The public offline-to-online code's recipe as config switches: each changes exactly what it says."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import ConfigError, PretrainConfig, load_config
from pipeline.lightning.offline import pretrain_update
from pipeline.sac import Batch, actor_loss, alpha_loss, executed_steps_mask
from pipeline.update import SACUpdater, make_optimizers
from conftest import random_batch, tiny_agent


# ---------------------------------------------------------------------------------------------------------------
# sac.alpha_loss


@pytest.mark.parametrize("target_entropy", [0.0, -4.0, 3.0])
def test_alpha_loss_standard_is_sac_and_paper_code_is_the_public_codes(target_entropy: float) -> None:
    log_prob = torch.tensor([1.5, -0.5, 2.0, 0.25])
    standard = tiny_agent(target_entropy=target_entropy, init_alpha=0.3)
    paper = tiny_agent(target_entropy=target_entropy, init_alpha=0.3, alpha_loss="paper_code")
    expected = -(standard.log_alpha * (log_prob + target_entropy)).mean()
    torch.testing.assert_close(alpha_loss(standard, log_prob), expected, rtol=0, atol=0)
    torch.testing.assert_close(alpha_loss(paper, log_prob), 0.3 * (log_prob.mean() - target_entropy))


def test_alpha_moves_the_opposite_way_under_the_public_codes_loss_at_its_target_entropy_zero() -> None:
    """With the public code's target entropy 0, SAC raises alpha while the entropy -log pi is below 0; the public
    code's loss, whose entropy enters with the opposite sign, lowers it by the same first Adam step."""
    moves = {}
    for mode in ("standard", "paper_code"):
        agent = tiny_agent(target_entropy=0.0, alpha_lr=0.01, alpha_loss=mode)
        before = agent.alpha.item()
        info = SACUpdater(agent, make_optimizers(agent)).update(random_batch(16))
        moves[mode] = agent.log_alpha.item() - torch.log(torch.tensor(before)).item()
        entropy = info["entropy"].item()
    assert abs(entropy) > 0.1
    below_target = entropy < 0.0
    assert moves["standard"] == pytest.approx(0.01 if below_target else -0.01, rel=1e-3)
    assert moves["paper_code"] == pytest.approx(-moves["standard"], rel=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# pretrain.update


def weights(agent: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in agent.state_dict().items()}


def assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


PT = dict(flow_weight=1.0, q_weight=0.5)


def test_sequential_pretraining_is_a_flow_update_then_a_regularized_actor_update_on_the_same_batch() -> None:
    batch = random_batch(16)
    agent = tiny_agent(alpha_lr=0.01)
    torch.manual_seed(3)
    info = pretrain_update(SACUpdater(agent, make_optimizers(agent)), batch, PretrainConfig(update="sequential", **PT),
                           bc_weight=2.0)
    by_hand = tiny_agent(alpha_lr=0.01)
    updater = SACUpdater(by_hand, make_optimizers(by_hand))
    torch.manual_seed(3)
    first = updater.update(batch, bc_weight=0.0, q_weight=0.0, flow_weight=1.0)
    alpha_after_flow = by_hand.alpha.item()
    second = updater.update(batch, bc_weight=2.0, q_weight=0.5, flow_weight=0.0)
    assert_same(weights(agent), weights(by_hand))
    assert updater.updates == 2
    assert alpha_after_flow == pytest.approx(0.2)  # the flow-only update has no entropy term: alpha waits
    assert "flow_loss" not in second and "bc_mse" not in first
    assert info["flow_loss"] == first["flow_loss"] and info["bc_mse"] == second["bc_mse"]


def test_joint_pretraining_is_one_update_with_every_term_as_before() -> None:
    batch = random_batch(16)
    agent = tiny_agent()
    torch.manual_seed(3)
    pretrain_update(SACUpdater(agent, make_optimizers(agent)), batch, PretrainConfig(**PT), bc_weight=2.0)
    by_hand = tiny_agent()
    updater = SACUpdater(by_hand, make_optimizers(by_hand))
    torch.manual_seed(3)
    updater.update(batch, bc_weight=2.0, q_weight=0.5, flow_weight=1.0)
    assert_same(weights(agent), weights(by_hand))
    assert updater.updates == 1


def test_sequential_and_joint_pretraining_differ() -> None:
    batch = random_batch(16)
    out = []
    for update in ("joint", "sequential"):
        agent = tiny_agent()
        torch.manual_seed(3)
        pretrain_update(SACUpdater(agent, make_optimizers(agent)), batch, PretrainConfig(update=update, **PT), 2.0)
        out.append(weights(agent)["actor." + next(iter(dict(agent.actor.named_parameters())))])
    assert not torch.equal(*out)


@pytest.mark.parametrize(("override", "named"), [("pretrain.flow_weight=0", "pretrain.flow_weight"),
                                                 ("sac.policy_delay=2", "sac.policy_delay")])
def test_sequential_pretraining_refuses_settings_that_would_skip_one_of_its_updates(override: str,
                                                                                    named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_config("smoke", ["pretrain.update=sequential", override])


@pytest.mark.parametrize(("key", "value"), [("pretrain.update", "both"), ("sac.alpha_loss", "flipped")])
def test_unknown_recipe_values_are_refused_naming_the_key(key: str, value: str) -> None:
    with pytest.raises(ConfigError, match=key):
        load_config("smoke", [f"{key}={value}"])


# ---------------------------------------------------------------------------------------------------------------
# sac.flow_mask


def chunked_agent(flow_mask: str) -> torch.nn.Module:
    """A tiny Flow-G agent deciding chunks of 3 two-dimensional actions (act_dim 6)."""
    from pipeline.config import CriticConfig, PolicyConfig, SACConfig
    from pipeline.sac import SACAgent

    torch.manual_seed(0)
    return SACAgent(3, 6, PolicyConfig(kind="flow_g", hidden=16), CriticConfig(hidden=16),
                    SACConfig(chunk=3, flow_mask=flow_mask))


def chunked_batch(steps: list[float]) -> Batch:
    g = torch.Generator().manual_seed(4)
    n = len(steps)
    return Batch(torch.randn(n, 3, generator=g), torch.rand(n, 6, generator=g) * 1.8 - 0.9, torch.randn(n, generator=g),
                 torch.randn(n, 3, generator=g), torch.tensor([float(s < 3) for s in steps]), torch.tensor(steps, dtype=torch.float32))


def flow_loss_of(agent: torch.nn.Module, batch: Batch) -> torch.Tensor:
    torch.manual_seed(9)
    return actor_loss(agent, batch, q_weight=0.0, flow_weight=1.0)[1]["flow_loss"]


def test_flow_mask_leaves_the_actions_past_a_terminal_out_of_flow_matching() -> None:
    agent = chunked_agent("past_terminal")
    batch = chunked_batch([3, 1, 2, 3])
    obs = agent.normalize(batch.obs)
    weights = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]],
                           dtype=torch.float32)
    torch.testing.assert_close(executed_steps_mask(batch.steps, 3, 6), weights, rtol=0, atol=0)
    torch.manual_seed(9)
    expected = agent.actor.bc_loss(obs, batch.actions, mask=weights)
    torch.testing.assert_close(flow_loss_of(agent, batch), expected, rtol=0, atol=0)
    # the same draw unmasked: the tail's errors are what the mask takes out
    torch.manual_seed(9)
    unmasked = agent.actor.bc_loss(obs, batch.actions)
    assert flow_loss_of(chunked_agent("none"), batch) == unmasked > expected


def test_flow_mask_changes_nothing_on_whole_chunks_and_none_ignores_the_steps() -> None:
    whole = chunked_batch([3, 3, 3, 3])
    cut = whole._replace(steps=torch.tensor([1.0, 2.0, 3.0, 1.0]))
    loss = flow_loss_of(chunked_agent("none"), whole)
    assert flow_loss_of(chunked_agent("past_terminal"), whole) == loss
    assert flow_loss_of(chunked_agent("none"), cut) == loss
    assert flow_loss_of(chunked_agent("past_terminal"), cut) != loss


# ---------------------------------------------------------------------------------------------------------------
# The <task>_paper_<kind> presets: the public code's settings (offline-to-online/main_action_reg_three_phase.py
# flags, agents/acfql_transformer_ablation_online_sac.py get_config, envs/robomimic_utils.py)

OFFICIAL = {
    "policy.steps": 4, "policy.log_prob": "exact", "policy.tanh_jacobian": "floored", "policy.bc_target": "raw",
    "critic.n_critics": 2, "critic.hidden": 512, "critic.layers": 4, "critic.layer_norm": True,
    "sac.gamma": 0.99, "sac.tau": 0.005, "sac.actor_lr": 3e-4, "sac.critic_lr": 3e-4, "sac.alpha_lr": 3e-4,
    "sac.init_alpha": 0.2, "sac.learn_alpha": True, "sac.alpha_loss": "paper_code", "sac.target_entropy": 0.0,
    "sac.batch_size": 256, "sac.utd": 1, "sac.actor_noise_std": 0.05, "sac.act_noise_std": 0.02,
    "sac.reward_shift": -1.0, "sac.q_agg": "mean", "sac.chunk": 5, "sac.flow_mask": "past_terminal",
    "pretrain.steps": 1_000_000, "pretrain.update": "sequential", "pretrain.dataset.filter_key": None,
    "pretrain.dataset.obs_keys": ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"],
    "pretrain.dataset.normalize_obs": False,
    "finetune.total_steps": 1_000_000, "finetune.learning_starts": 5000, "finetune.buffer_mode": "seeded",
    "finetune.eval_every": 100_000, "finetune.eval_episodes": 50, "evaluate.episodes": 50,
    # the paper's beta on robomimic: 10000 offline, 1000 online
    "pretrain.bc_weight": 10000.0, "sac.bc_weight": 1000.0,
}
PAPER_PRESETS = [f"{task}_paper_{kind}" for task in ("lift", "can", "square") for kind in ("flow_t", "flow_g")]


@pytest.mark.parametrize("name", PAPER_PRESETS)
def test_paper_presets_hold_the_public_codes_settings(name: str) -> None:
    from pipeline.config import get_dotted

    cfg = load_config(name)
    wrong = {k: get_dotted(cfg, k) for k, v in OFFICIAL.items() if get_dotted(cfg, k) != v}
    assert not wrong, f"{name}: {wrong}"
    task = {"lift": "Lift", "can": "PickPlaceCan", "square": "NutAssemblySquare"}[name.split("_")[0]]
    assert cfg.finetune.env_id == f"robosuite/{task}"
    assert cfg.policy.kind == name.split("_paper_")[1]
    if cfg.policy.kind == "flow_t":
        assert (cfg.policy.d_model, cfg.policy.n_heads, cfg.policy.n_layers) == (128, 4, 2)
    else:
        assert (cfg.policy.hidden, cfg.policy.layers, cfg.policy.candidate_activation) == (512, 4, "gelu")
        assert (cfg.policy.gate_hidden, cfg.policy.gate_layers) == (256, 1)


@pytest.mark.parametrize("name", ["lift_paper_flow_g", "cube_double_flow_g", "cube_triple_flow_g"])
def test_offline_to_online_flow_g_has_the_public_actors_layers(name: str) -> None:
    """ActorVectorFieldGRU (utils/networks.py): MLP((512,) * 4 + (A,)) with GELU, gate Dense(256)-swish-Dense(A) on
    [s, a, t]; zero gate kernel and bias 5. Parameters counted layer by layer for obs 19 and a chunk of 5 x 7."""
    from pipeline.policies import make_policy

    cfg = load_config(name)
    obs, act = 19, 35
    velocity = make_policy("flow_g", obs, act, **cfg.policy.policy_kwargs()).velocity
    x = obs + act + 1

    def dense(i: int, o: int) -> int:
        return i * o + o

    candidate = dense(x, 512) + 3 * dense(512, 512) + dense(512, act)
    gate = dense(x, 256) + dense(256, act)
    assert sum(p.numel() for p in velocity.candidate.parameters()) == candidate
    assert sum(p.numel() for p in velocity.gate.parameters()) == gate
    assert isinstance(velocity.candidate[1], torch.nn.GELU) and isinstance(velocity.gate[1], torch.nn.SiLU)
    assert torch.all(velocity.gate[-1].weight == 0) and torch.all(velocity.gate[-1].bias == 5.0)
