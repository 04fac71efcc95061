"""OGBench cube tasks: play data made by OGBench's own oracles in OGBench's npz layout, read by OGBench's loader and
by ours with the same transitions and single-task rewards; the single-task envs through make_env; a smoke
offline-to-online run on cube-double task 2."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import preemption
from pipeline.collection.ogbench_play import collect_ogbench_play, parts_dir_of, val_path_of
from pipeline.config import ConfigError, load_config
from pipeline.data import DatasetError, load_dataset
from pipeline.envs import make_env
from pipeline.workflow.collect import collect
from pipeline.workflow.evaluate import evaluate_checkpoints
from pipeline.workflow.finetune import finetune
from pipeline.workflow.pretrain import pretrain

TASK = "cube-double-singletask-task2-v0"
EPISODES, STEPS = 3, 41


@pytest.fixture(scope="module")
def play(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny cube-double play dataset (3 + 1 validation episodes of 41 steps), collected in two processes."""
    path = tmp_path_factory.mktemp("ogbench") / "cube-double-play-v0.npz"
    done: list[int] = []
    stats = collect_ogbench_play("cube-double-v0", path, EPISODES, seed=7, workers=2, max_episode_steps=STEPS,
                                 progress=lambda n, total: done.append(n))
    assert stats["transitions"] == EPISODES * STEPS and stats["val_transitions"] == STEPS
    assert done == [1, 2, 3, 4]  # progress per finished episode, in order
    return path


def test_layout_is_ogbench_and_episodes_do_not_depend_on_the_worker_count(play: Path, tmp_path: Path) -> None:
    import ogbench.utils

    with np.load(play) as f:
        assert sorted(f.files) == ["actions", "observations", "qpos", "qvel", "terminals"]
        assert f["terminals"].dtype == bool and f["observations"].dtype == np.float32
        assert np.flatnonzero(f["terminals"]).tolist() == [STEPS - 1, 2 * STEPS - 1, 3 * STEPS - 1]
        assert np.abs(f["actions"]).max() <= 1.0 and np.abs(f["actions"]).std() > 0.01  # oracle actions, clipped
        one = collect_ogbench_play("cube-double-v0", tmp_path / "one.npz", EPISODES, seed=7, workers=1,
                                   max_episode_steps=STEPS)
        with np.load(one["path"]) as g:
            for k in f.files:
                np.testing.assert_array_equal(f[k], g[k], err_msg=k)
    compact = ogbench.utils.load_dataset(str(play), compact_dataset=True)
    assert compact["valids"].sum() == EPISODES * (STEPS - 1)


def test_ours_reads_the_same_transitions_and_rewards_as_ogbench(play: Path) -> None:
    import ogbench
    import ogbench.utils

    theirs = ogbench.utils.load_dataset(str(play))
    ours = load_dataset("ogbench", play, task=TASK)
    n = EPISODES * (STEPS - 1)  # the last state of each trajectory has no next state
    assert len(ours.observations) == n
    for key in ("observations", "actions", "next_observations"):
        np.testing.assert_array_equal(getattr(ours, key).numpy(), theirs[key], err_msg=key)
    # the rewards and masks of ogbench.make_env_and_datasets on the single-task name (as the official code loads it)
    _, train, val = ogbench.make_env_and_datasets("cube-double-play-singletask-task2-v0", dataset_path=str(play))
    assert len(val["observations"]) == STEPS - 1
    np.testing.assert_array_equal(ours.rewards.numpy(), train["rewards"])
    np.testing.assert_array_equal(1.0 - ours.terminals.numpy(), train["masks"])
    # trajectory ends are timeouts (bootstrapped), never terminals
    assert ours.timeouts.sum() == EPISODES and ours.episode_ends.tolist() == [STEPS - 1, 2 * (STEPS - 1), n]
    assert ours.meta["env_id"] == TASK


def test_cube_triple_play_is_collected_and_read_like_cube_double(tmp_path: Path) -> None:
    """The cube-triple path (three cubes, its own stacking odds): OGBench's loader and ours agree on a tiny file,
    rewards of task 4 included."""
    import ogbench

    path = tmp_path / "cube-triple-play-v0.npz"
    stats = collect_ogbench_play("cube-triple-v0", path, 2, seed=3, max_episode_steps=21)
    assert stats["transitions"] == 2 * 21 and stats["val_transitions"] == 21
    _, train, _ = ogbench.make_env_and_datasets("cube-triple-play-singletask-task4-v0", dataset_path=str(path))
    ours = load_dataset("ogbench", path, task="cube-triple-singletask-task4-v0")
    assert ours.observations.shape == (2 * 20, 46)  # three cubes: the env's 46-dim observation
    np.testing.assert_array_equal(ours.observations.numpy(), train["observations"])
    np.testing.assert_array_equal(ours.rewards.numpy(), train["rewards"])
    assert set(train["rewards"].tolist()) <= {-3.0, -2.0, -1.0, 0.0}


def test_a_solved_state_is_reward_zero_and_terminal(play: Path, tmp_path: Path) -> None:
    """Cubes moved onto task 2's targets in one row: reward 0 there, no bootstrap from it, the episode cut after it;
    the env itself gives the same reward and success from that state."""
    env = make_env(TASK)
    env.reset(seed=0)
    targets = env.unwrapped._data.mocap_pos.copy()[:2]  # the task's cube targets
    with np.load(play) as f:
        data = {k: f[k].copy() for k in f.files}
    row = 5
    for i in range(2):
        data["qpos"][row, 14 + 7 * i: 17 + 7 * i] = targets[i]
    path = tmp_path / "solved.npz"
    np.savez_compressed(path, **data)
    ds = load_dataset("ogbench", path, task=TASK)
    assert ds.rewards[row] == 0.0 and ds.terminals[row] == 1.0 and ds.timeouts[row] == 0.0
    assert ds.rewards[row - 1] < 0 and ds.terminals[row - 1] == 0.0
    assert ds.episode_ends[0] == row + 1

    # the single-task env judges success on the state before the step: set that state, step, compare
    qpos = env.unwrapped._data.qpos.copy()
    for i in range(2):
        qpos[14 + 7 * i: 17 + 7 * i] = targets[i]
    env.unwrapped._data.qpos[:] = qpos
    env.unwrapped._data.qvel[:] = 0.0
    import mujoco

    mujoco.mj_forward(env.unwrapped._model, env.unwrapped._data)
    env.unwrapped.post_step()
    _, reward, terminated, _, info = env.step(np.zeros(5, dtype=np.float32))
    assert reward == 0.0 and terminated and info["success"]
    env.close()


def test_single_task_env_through_make_env() -> None:
    env = make_env(TASK, seed=3)
    assert env.observation_space.dtype == np.float32 and env.observation_space.shape == (37,)
    assert env.action_space.shape == (5,) and env.spec.max_episode_steps == 500
    obs, _ = env.reset()
    obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert obs.dtype == np.float32 and reward == -2.0 and info["success"] is False and not terminated
    env.close()
    assert make_env("cube-triple-singletask-task4-v0").observation_space.shape == (46,)


def test_bad_input_is_named(play: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"\[task\].*cube-double-singletask-task2-v0"):
        load_dataset("ogbench", play)
    with pytest.raises(DatasetError, match=r"\[task\].*single-task env id"):
        load_dataset("ogbench", play, task="cube-double-v0")
    with pytest.raises(DatasetError, match="no such file"):
        load_dataset("ogbench", tmp_path / "absent.npz", task=TASK)
    with np.load(play) as f:
        data = {k: f[k] for k in f.files if k != "qpos"}
    np.savez(tmp_path / "noqpos.npz", **data)
    with pytest.raises(DatasetError, match=r"noqpos.npz \[qpos\]: missing"):
        load_dataset("ogbench", tmp_path / "noqpos.npz", task=TASK)
    (tmp_path / "junk.npz").write_text("not a zip")
    with pytest.raises(DatasetError, match=r"junk.npz: not a readable .npz"):
        load_dataset("ogbench", tmp_path / "junk.npz", task=TASK)
    with pytest.raises(DatasetError, match=r"\[observations\]: expected shape \[N, 46\]"):
        load_dataset("ogbench", play, task="cube-triple-singletask-task1-v0")
    with pytest.raises(ValueError, match="collect.env_id.*cube-<single"):
        collect_ogbench_play("scene-v0", tmp_path / "x.npz", 1)
    with pytest.raises(ValueError, match="collect.out.*npz"):
        collect_ogbench_play("cube-double-v0", tmp_path / "x.hdf5", 1)
    with pytest.raises(ConfigError, match="collect.workers"):
        load_config("cube_double_smoke", ["collect.workers=0"])


@pytest.mark.parametrize("preset", ["cube_double_flow_t", "cube_double_flow_g", "cube_triple_flow_t",
                                    "cube_triple_flow_g", "cube_double_cpu", "cube_double_cpu_flow_g"])
def test_presets_carry_the_paper_recipe(preset: str) -> None:
    cfg = load_config(preset)
    beta = 100.0 if "triple" in preset else 300.0
    assert cfg.sac.bc_weight == beta and cfg.pretrain.bc_weight == beta and cfg.sac.chunk == 5
    assert cfg.pretrain.dataset.format == "ogbench" and cfg.finetune.env_id == cfg.pretrain.dataset.task
    assert cfg.sac.reward_shift == 0.0 and cfg.sac.q_agg == "mean" and cfg.sac.alpha_loss == "paper_code"
    if not preset.startswith("cube_double_cpu"):
        assert (cfg.critic.hidden, cfg.critic.layers, cfg.policy.d_model) == (512, 4, 128)
        assert cfg.pretrain.steps == cfg.finetune.total_steps == 1_000_000


def test_cube_double_smoke_offline_to_online(tmp_path: Path) -> None:
    out = str(tmp_path / "play.npz")
    cfg = load_config("cube_double_smoke", [f"collect.out={out}", f"pretrain.dataset.source={out}",
                                            "trainer.progress=false"])
    stats = collect(cfg, tmp_path / "collect")
    assert stats["kind"] == "ogbench_play" and Path(stats["val_path"]) == val_path_of(out)
    pre = pretrain(cfg, tmp_path / "pretrain")
    assert pre["steps"] == 40 and math.isfinite(pre["final_critic_loss"])
    ft = finetune(cfg, tmp_path / "finetune", pretrained=tmp_path / "pretrain")
    assert ft["env_steps"] == 120 and ft["skipped_updates"] == 0 and ft["offline_transitions"] > 0
    ev = evaluate_checkpoints(cfg, tmp_path / "evaluate", {"finetuned": tmp_path / "finetune"})
    result = ev["finetuned"]["deterministic"]
    assert "success_rate" in result and 0.0 <= result["success_rate"] <= 1.0
    assert torch.isfinite(torch.tensor(result["return_mean"]))


def test_sigterm_keeps_the_finished_episodes_and_a_rerun_resumes_to_the_same_files(tmp_path: Path) -> None:
    """A stop after an episode leaves no dataset, only the finished episodes in <out>.parts; the rerun collects the
    rest, and its files equal an uninterrupted collection's."""
    out = tmp_path / "play.npz"
    cfg = load_config("cube_double_smoke", [f"collect.out={out}", "collect.episodes=3", "collect.horizon=21",
                                            "collect.workers=1", "trainer.progress=false"])
    with preemption.stopping_on(signal.SIGTERM):
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(preemption.StopRequested, match=r"after 1 of 4 episodes, the finished ones kept in .*"
                                                           r"play\.npz\.parts") as stop:
            collect(cfg, tmp_path / "collect")
    assert stop.value.resumable and not out.exists() and not val_path_of(out).exists()
    assert sorted(p.name for p in parts_dir_of(out).iterdir()) == ["procedure.json", "seed-0.npz"]
    done: list[int] = []
    stats = collect_ogbench_play("cube-double-v0", out, 3, seed=0, workers=2, max_episode_steps=21,
                                 progress=lambda n, total: done.append(n))
    assert done == [1, 2, 3, 4] and stats["transitions"] == 3 * 21 and not parts_dir_of(out).exists()
    whole = tmp_path / "whole.npz"
    collect_ogbench_play("cube-double-v0", whole, 3, seed=0, workers=1, max_episode_steps=21)
    for mine, ref in ((out, whole), (val_path_of(out), val_path_of(whole))):
        with np.load(mine) as a, np.load(ref) as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)


def test_a_different_collection_does_not_resume_from_kept_episodes(tmp_path: Path) -> None:
    out = tmp_path / "play.npz"
    cfg = load_config("cube_double_smoke", [f"collect.out={out}", "collect.episodes=3", "collect.horizon=21",
                                            "collect.workers=1", "trainer.progress=false"])
    with preemption.stopping_on(signal.SIGTERM):
        os.kill(os.getpid(), signal.SIGTERM)
        with pytest.raises(preemption.StopRequested):
            collect(cfg, tmp_path / "collect")
    with pytest.raises(ConfigError, match=r"play\.npz\.parts holds .* max_episode_steps = 21, not 31.*delete"):
        collect(load_config("cube_double_smoke", [f"collect.out={out}", "collect.horizon=31",
                                                  "trainer.progress=false"]), tmp_path / "collect")
