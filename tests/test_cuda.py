"""The CUDA path: the same maths on the GPU as on the CPU, and whole stages run with ``device=cuda``.

Skipped on machines without a GPU (CI has none); run with ``pytest tests/test_cuda.py`` where one is present.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.buffers import ReplayBuffer
from pipeline.checkpoint import load_checkpoint, run_checkpoint
from pipeline.config import load_config
from pipeline.data.d4rl_io import write_d4rl
from pipeline.data.dataset import TransitionDataset
from pipeline.update import SACUpdater, make_optimizers

from conftest import assert_same_losses_and_statistics, crossq_updates, random_batch, tiny_agent

# SACFLOW_TEST_DEVICE=cpu runs these checks against the CPU itself (to test the tests where no GPU is present)
CUDA = torch.device(os.environ.get("SACFLOW_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(CUDA.type == "cuda" and not torch.cuda.is_available(), reason="needs a CUDA GPU")
KINDS = ("gaussian", "flow_mlp", "flow_g", "flow_t")


def _to(batch, device):  # noqa: ANN001, ANN202
    return type(batch)(*(x.to(device) for x in batch))


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_action_matches_cpu(kind: str) -> None:
    agent = tiny_agent({"kind": kind})
    obs = torch.randn(64, 3)
    cpu = agent.actor.act(obs, deterministic=True)
    gpu = copy.deepcopy(agent).to(CUDA).actor.act(obs.to(CUDA), deterministic=True)
    assert gpu.device == torch.empty(0, device=CUDA).device
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ("flow_g", "flow_t"))
def test_noisy_rollout_of_the_same_noise_matches_cpu(kind: str) -> None:
    agent = tiny_agent({"kind": kind})
    obs = torch.randn(64, 3)
    cpu = agent.actor.rollout(obs, generator=torch.Generator().manual_seed(3))
    gpu_actor = copy.deepcopy(agent.actor).to(CUDA)
    # the same noise on both devices: draw it on the CPU, replay it through the GPU policy's velocity net
    eps = (cpu.path[0], *(((cpu.path[i + 1] - cpu.means[i]) / cpu.stds[i]) for i in range(agent.actor.steps)))
    a = eps[0].to(CUDA)
    ctx = gpu_actor.velocity.encode(obs.to(CUDA))
    for i in range(agent.actor.steps):
        t = torch.full((64, 1), i / agent.actor.steps, device=CUDA)
        v, _ = gpu_actor.velocity(ctx, a, t)
        a = a + v / agent.actor.steps + agent.actor.noise_std * eps[i + 1].to(CUDA)
    torch.testing.assert_close(torch.tanh(a).cpu(), cpu.action, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_sac_updates_on_cuda_track_cpu(kind: str) -> None:
    cpu_agent = tiny_agent({"kind": kind}, target_entropy=-2.0, update_mode="eager")
    gpu_agent = copy.deepcopy(cpu_agent).to(CUDA)
    cpu_up, gpu_up = SACUpdater(cpu_agent, make_optimizers(cpu_agent)), SACUpdater(gpu_agent, make_optimizers(gpu_agent))
    if CUDA.type == "cuda":
        assert gpu_up.opt.critic.defaults.get("fused"), "Adam should use its fused CUDA kernel"
    batch = random_batch(128)
    torch.manual_seed(0)
    for _ in range(10):
        info = gpu_up.update(_to(batch, CUDA))
    assert all(v.device.type == CUDA.type for v in info.values())
    assert gpu_up.skipped == 0 and all(torch.isfinite(p).all() for p in gpu_agent.parameters())
    torch.manual_seed(0)
    for _ in range(10):
        cpu_up.update(batch)
    # different random streams on the two devices: the weights move the same distance, not to the same point
    moved = [(g.detach().cpu() - c0).norm() / (c.detach() - c0).norm().clamp_min(1e-12)
             for g, c, c0 in zip(gpu_agent.critic.parameters(), cpu_agent.critic.parameters(),
                                 tiny_agent({"kind": kind}).critic.parameters())]
    assert 0.5 < float(torch.stack(moved).mean().detach()) < 2.0


def _graphed_vs_eager(kind: str, batches: list) -> tuple[SACUpdater, float]:
    """Relative distance between the weight changes of cuda_graphs and eager updates from the same start."""
    init = tiny_agent({"kind": kind}).to(CUDA)
    deltas = {}
    for mode in ("eager", "cuda_graphs"):
        agent = copy.deepcopy(init)
        agent.cfg = type(agent.cfg)(**{**vars(agent.cfg), "update_mode": mode})
        updater = SACUpdater(agent, make_optimizers(agent))
        torch.manual_seed(0)
        for b in batches:
            updater.update(_to(b, CUDA))
        deltas[mode] = torch.cat([(p - p0).flatten() for p, p0 in zip(agent.parameters(), init.parameters())])
    rel = float((deltas["cuda_graphs"] - deltas["eager"]).norm() / deltas["eager"].norm())
    return updater, rel


@pytest.mark.skipif(CUDA.type != "cuda", reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("kind", ("gaussian", "flow_t"))
def test_cuda_graph_updates_track_eager(kind: str) -> None:
    updater, rel = _graphed_vs_eager(kind, [random_batch(64, seed=s) for s in range(6)])
    print(f"{kind}: |delta_graphs - delta_eager| / |delta_eager| = {rel:.2e}")
    assert updater.skipped == 0 and len(updater._graphs) == 2  # one critic graph, one actor graph
    assert rel < 0.05


@pytest.mark.skipif(CUDA.type != "cuda", reason="CUDA graphs need a GPU")
def test_cuda_graph_crossq_updates_with_a_policy_delay_match_eager() -> None:
    # as with the compiled update (tests/test_update_modes.py): losses and batch-renorm running statistics
    eager, graphed = crossq_updates("eager", 6, 64, CUDA), crossq_updates("cuda_graphs", 6, 64, CUDA)
    assert len(graphed[0]._graphs) == 2  # the actor's graph replays on every 2nd update
    assert ["actor_loss" in info for info in graphed[1]] == [False, True] * 3
    assert_same_losses_and_statistics(eager, graphed, ("critic_loss", "q_mean", "log_prob", "alpha"), rtol=1e-3)
    assert int(graphed[0].agent.actor.obs_norm.steps) == 3


def test_fullgraph_crossq_updates_on_cuda_match_eager() -> None:
    # sac.update_mode = compile_fullgraph on the device (inductor's kernels for it), the from-scratch backbone with
    # batch renorm's deferred statistics; inductor draws eager's random numbers, as in tests/test_update_modes.py
    import torch._inductor.config

    torch.compiler.reset()
    eager = crossq_updates("eager", 4, 64, CUDA)
    with torch._inductor.config.patch(fallback_random=True):
        graph = crossq_updates("compile_fullgraph", 4, 64, CUDA)
    assert_same_losses_and_statistics(eager, graph, ("critic_loss", "q_mean", "log_prob", "alpha"), rtol=1e-3)
    assert int(graph[0].agent.critic.net[0].steps) == 4 and int(graph[0].agent.actor.obs_norm.steps) == 2


@pytest.mark.skipif(CUDA.type != "cuda", reason="CUDA graphs need a GPU")
def test_auto_update_mode_replays_cuda_graphs_for_an_agent_on_cuda() -> None:
    agent = tiny_agent().to(CUDA)
    assert agent.cfg.update_mode == "auto"
    updater = SACUpdater(agent, make_optimizers(agent))
    assert updater.mode == "cuda_graphs" and updater.opt.critic.defaults["capturable"]
    for seed in range(3):
        updater.update(_to(random_batch(16, seed=seed), CUDA))
    assert len(updater._graphs) == 2 and updater.skipped == 0


@pytest.mark.skipif(CUDA.type != "cuda", reason="CUDA graphs need a GPU")
def test_cuda_graphs_skip_a_nan_step_on_the_device() -> None:
    agent = tiny_agent(update_mode="cuda_graphs").to(CUDA)
    updater = SACUpdater(agent, make_optimizers(agent))
    updater.update(_to(random_batch(16), CUDA))
    critic = [p.detach().clone() for p in agent.critic.parameters()]
    updater.update(_to(random_batch(16, seed=2, rewards=torch.full((16,), float("nan"))), CUDA))
    assert updater.skipped == 1
    assert all(torch.equal(a, b) for a, b in zip(critic, agent.critic.parameters()))
    updater.update(_to(random_batch(16, seed=3), CUDA))
    assert updater.nonfinite_streak["critic"] == 0
    assert not all(torch.equal(a, b) for a, b in zip(critic, agent.critic.parameters()))


def test_replay_buffer_lives_on_cuda_and_checkpoints_to_cpu() -> None:
    buf = ReplayBuffer(100, 3, 2, CUDA)
    buf.add(np.zeros((10, 3)), np.zeros((10, 2)), np.ones(10), np.zeros((10, 3)), np.zeros(10))
    batch = buf.sample(32)
    assert all(x.device.type == CUDA.type for x in batch)
    state = buf.state_dict()
    restored = ReplayBuffer(100, 3, 2, "cpu")
    restored.load_state_dict(state)
    assert len(restored) == 10 and restored.data["rewards"][:10].sum() == 10


def _pendulum_d4rl(path: Path) -> Path:
    """A small random-policy Pendulum-v1 dataset in the D4RL layout (obs [N, 3], actions [N, 1])."""
    import gymnasium as gym

    env = gym.make("Pendulum-v1", max_episode_steps=100)
    rng = np.random.default_rng(0)
    cols: dict[str, list] = {k: [] for k in ("obs", "act", "rew", "next", "term", "tout")}
    for ep in range(5):
        obs, _ = env.reset(seed=ep)
        done = False
        while not done:
            act = rng.uniform(-1, 1, size=1).astype(np.float32)
            nxt, rew, term, trunc, _ = env.step(act * 2.0)
            for k, v in zip(cols, (obs, act, rew, nxt, term, trunc)):
                cols[k].append(v)
            obs, done = nxt, term or trunc
    ds = TransitionDataset(np.array(cols["obs"]), np.array(cols["act"]), np.array(cols["rew"]),
                           np.array(cols["next"]), np.array(cols["term"]), np.array(cols["tout"]),
                           meta={"source": str(path), "format": "d4rl", "env_id": "Pendulum-v1"})
    return write_d4rl(ds, path)


@pytest.mark.parametrize("update_mode", ("eager", "auto"))
def test_offline_to_online_stages_run_on_cuda(update_mode: str, tmp_path: Path) -> None:
    """pretrain -> finetune -> evaluate with ``device=cuda`` (Lightning's GPU accelerator), Pendulum from D4RL data."""
    if update_mode == "auto" and CUDA.type != "cuda":
        pytest.skip("auto replays CUDA graphs only on a GPU; on the CPU it is the eager case")
    from pipeline.workflow.evaluate import evaluate_checkpoints
    from pipeline.workflow.finetune import finetune
    from pipeline.workflow.pretrain import pretrain

    data = _pendulum_d4rl(tmp_path / "pendulum.hdf5")
    cfg = load_config(overrides=[
        f"device={CUDA.type}", "trainer.progress=false", "collect.kind=none", "policy.kind=flow_t",
        "policy.d_model=16", "policy.n_heads=2", "policy.n_layers=1", "critic.hidden=32", "sac.batch_size=64",
        "pretrain.dataset.format=d4rl", f"pretrain.dataset.source={data}", "pretrain.steps=60",
        "pretrain.log_every=20", "pretrain.checkpoint_every=30", "finetune.env_id=Pendulum-v1",
        "finetune.total_steps=300", "finetune.learning_starts=0", "finetune.eval_every=300",
        "finetune.eval_episodes=1", "finetune.log_every=100", "evaluate.episodes=2", f"sac.update_mode={update_mode}",
    ])
    pre = pretrain(cfg, tmp_path / "pretrain")
    state = load_checkpoint(run_checkpoint(tmp_path / "pretrain"))
    assert pre["steps"] == 60 and state["step"] == 60
    ft = finetune(cfg, tmp_path / "finetune", pretrained=tmp_path / "pretrain")
    assert ft["env_steps"] == 300 and ft["updates"] > 0 and ft["skipped_updates"] == 0
    ev = evaluate_checkpoints(cfg, tmp_path / "evaluate",
                              {"pretrained": tmp_path / "pretrain", "finetuned": tmp_path / "finetune"})
    assert np.isfinite(ev["finetuned"]["deterministic"]["return_mean"])
