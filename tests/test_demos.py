"""Scripted robosuite demonstrations written in robomimic's HDF5 layout, checked with h5py and by state replay."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.collection.robosuite_demos import collect_robosuite_demos
from pipeline.data.robomimic_writer import Episode, write_robomimic
from pipeline.envs import make_env

N_EPISODES = 3


@pytest.fixture(scope="module")
def lift_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, list]:
    path = tmp_path_factory.mktemp("demos") / "lift.hdf5"
    calls: list[tuple[int, int]] = []
    stats = collect_robosuite_demos(
        "Lift", path, N_EPISODES, noise_levels=(0.0, 0.3), seed=0, progress=lambda i, n: calls.append((i, n))
    )
    return path, stats, calls


def test_collect_stats_and_progress(lift_file) -> None:
    path, stats, calls = lift_file
    assert calls == [(i, N_EPISODES) for i in range(1, N_EPISODES + 1)]
    assert stats["episodes"] == N_EPISODES and stats["task"] == "Lift" and stats["env_errors"] == 0
    assert stats["per_noise"][0.0]["episodes"] == 2 and stats["per_noise"][0.3]["episodes"] == 1
    assert stats["per_noise"][0.0]["successes"] == 2  # the noise-free demonstrator always lifts the cube
    assert stats["successes"] == sum(v["successes"] for v in stats["per_noise"].values())
    with h5py.File(path, "r") as f:
        assert stats["steps"] == f["data"].attrs["total"]
    assert [p.name for p in path.parent.iterdir()] == ["lift.hdf5"]  # no temporary file left behind


def test_file_has_robomimic_layout(lift_file) -> None:
    path, stats, _ = lift_file
    with h5py.File(path, "r") as f:
        data = f["data"]
        env_args = json.loads(data.attrs["env_args"])
        assert env_args["env_name"] == "Lift" and env_args["type"] == 1
        assert env_args["env_kwargs"]["robots"] == ["Panda"] and env_args["env_kwargs"]["control_freq"] == 20
        demos = sorted(data.keys(), key=lambda n: int(n[5:]))
        assert demos == [f"demo_{i}" for i in range(N_EPISODES)]
        total = 0
        for name in demos:
            g = data[name]
            t = int(g.attrs["num_samples"])
            total += t
            assert g.attrs["model_file"].startswith("<mujoco")
            assert set(g.keys()) == {"obs", "next_obs", "actions", "rewards", "dones", "states"}
            keys = set(g["obs"].keys())
            assert "object" in keys and "robot0_eef_pos" in keys and "robot0_joint_pos" in keys
            assert "robot0_proprio-state" not in keys and "object-state" not in keys
            assert all(k == "object" or k.startswith("robot0_") for k in keys)
            assert set(g["next_obs"].keys()) == keys
            for k in keys:
                assert g["obs"][k].shape[0] == t and g["next_obs"][k].shape == g["obs"][k].shape
                # next_obs is the following step's obs
                np.testing.assert_array_equal(g["next_obs"][k][:-1], g["obs"][k][1:])
            assert g["obs/object"].shape == (t, 10)
            actions = g["actions"][()]
            assert actions.shape == (t, 7) and np.all(np.abs(actions) <= 1.0)
            rewards, dones = g["rewards"][()], g["dones"][()]
            assert rewards.shape == (t,) and dones.shape == (t,)
            assert set(np.unique(rewards)) <= {0.0, 1.0}
            assert g["states"].shape == (t, 32)  # time + qpos (16) + qvel (15) of Panda + cube
            success = bool(g.attrs["success"])
            # dones mark the successful (terminal) step, which is the last one; failures end on a time limit.
            assert dones[:-1].sum() == 0 and dones[-1] == int(success) and rewards[-1] == float(success)
        assert data.attrs["total"] == total
        train = list(f["mask/train"][()])
        valid = list(f["mask/valid"][()])
        assert all(isinstance(n, bytes) for n in train + valid)
        assert sorted(train + valid) == sorted(n.encode() for n in demos)
        successful = [n.decode() for n in f["mask/successful"][()]]
        assert successful == [n for n in demos if data[n].attrs["success"] == 1]
        assert len(successful) == stats["successes"]


def test_successful_mask_selects_the_successful_demos(lift_file) -> None:
    from pipeline.data import load_robomimic

    path, stats, _ = lift_file
    every, ok = load_robomimic(path), load_robomimic(path, filter_key="successful")
    with h5py.File(path, "r") as f:
        steps = sum(int(f[f"data/{n.decode()}"].attrs["num_samples"]) for n in f["mask/successful"][()])
    assert len(ok) == steps and steps <= len(every)
    assert ok.terminals.sum() == stats["successes"]  # each successful demo ends on its one terminal step


def test_states_replay_reproduces_stored_obs(lift_file) -> None:
    path, _, _ = lift_file
    with h5py.File(path, "r") as f:
        env_args = json.loads(f["data"].attrs["env_args"])
        g = f["data/demo_1"]
        states, model_file = g["states"][()], g.attrs["model_file"]
        obs = {k: g["obs"][k][()] for k in g["obs"]}
    env = make_env("robosuite/Lift", env_args=env_args)
    rs = env.rs_env
    # As robomimic's EnvRobosuite.reset_to: load the episode's model, then each flattened state. The model goes
    # through its XML text, which rounds some constants (body quaternions), hence agreement to 1e-6, not bit-exact.
    rs.reset()
    rs.reset_from_xml_string(rs.edit_model_xml(model_file))
    rs.sim.reset()
    for t in range(len(states)):
        rs.sim.set_state_from_flattened(states[t])
        rs.sim.forward()
        replayed = rs._get_observations(force_update=True)
        for k, v in obs.items():
            expected = v[t]
            got = replayed["object-state"] if k == "object" else replayed[k]
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=f"obs/{k} at step {t}")
    env.close()


def _playback(path: Path, demo: str) -> tuple[list[float], list[float]]:
    """robomimic's playback of one demo (``playback_dataset.py --use-actions``): ``reset_to`` the demo's model and
    first state (``reset_from_xml_string(edit_model_xml(model_file))``, ``sim.reset()``, the state, ``forward()``),
    then its actions. Returns, per step, the largest state error of the whole-episode replay (actions only) and of
    a replay that sets ``states[t]`` before each action."""
    with h5py.File(path, "r") as f:
        env_args = json.loads(f["data"].attrs["env_args"])
        g = f[f"data/{demo}"]
        states, actions, model_file = g["states"][()], g["actions"][()], g.attrs["model_file"]
    env = make_env(f"robosuite/{env_args['env_name']}", env_args=env_args)
    rs = env.rs_env

    def reset_to(state: np.ndarray) -> None:
        rs.reset_from_xml_string(rs.edit_model_xml(model_file))
        rs.sim.reset()
        rs.sim.set_state_from_flattened(state)
        rs.sim.forward()

    whole, stepwise = [], []
    reset_to(states[0])
    for t in range(len(actions) - 1):
        env.step(actions[t])
        whole.append(float(np.abs(rs.sim.get_state().flatten() - states[t + 1]).max()))
    reset_to(states[0])
    for t in range(len(actions) - 1):
        rs.sim.set_state_from_flattened(states[t])
        rs.sim.forward()
        env.step(actions[t])
        stepwise.append(float(np.abs(rs.sim.get_state().flatten() - states[t + 1]).max()))
    env.close()
    return whole, stepwise


@pytest.fixture(scope="module")
def can_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("demos") / "can.hdf5"
    collect_robosuite_demos("PickPlaceCan", path, 1, noise_levels=(0.1,), seed=1)
    return path


@pytest.mark.parametrize("task", ["Lift", "PickPlaceCan"])
def test_demos_replay_exactly_from_their_actions(task: str, lift_file, can_file) -> None:
    """Every stored state is reproduced bit for bit by playing the demo's actions from its first state, as
    robomimic's playback does, and by stepping each action from the stored state before it."""
    path = lift_file[0] if task == "Lift" else can_file
    with h5py.File(path, "r") as f:
        demos = sorted(f["data"].keys())
    for demo in demos:
        whole, stepwise = _playback(path, demo)
        assert len(whole) > 20
        assert max(whole) == 0.0, f"{task} {demo}: playback diverges by {max(whole):.3g} (first at step " \
                                  f"{next(i for i, e in enumerate(whole) if e > 0)})"
        assert max(stepwise) == 0.0, f"{task} {demo}: one-step replay misses by {max(stepwise):.3g}"


def test_env_from_stored_env_args_matches_obs_dim(lift_file) -> None:
    from pipeline.data import load_dataset

    path, _, _ = lift_file
    with h5py.File(path, "r") as f:
        env_args = f["data"].attrs["env_args"]
        stored_dim = sum(f[f"data/demo_0/obs/{k}"].shape[1] for k in ("object", "robot0_eef_pos",
                                                                         "robot0_eef_quat", "robot0_gripper_qpos"))
    env = make_env("robosuite/Lift", env_args=env_args)
    dataset = load_dataset("robomimic", str(path))
    assert env.observation_space.shape == (stored_dim,) == (dataset.observations.shape[1],)
    assert env.action_space.shape == (dataset.actions.shape[1],)
    env.close()


def _tiny_episode(t: int, rng: np.random.Generator) -> Episode:
    obs = {"robot0_eef_pos": rng.normal(size=(t + 1, 3)), "object": rng.normal(size=(t + 1, 10))}
    return Episode(
        obs={k: v[:-1] for k, v in obs.items()},
        next_obs={k: v[1:] for k, v in obs.items()},
        actions=rng.uniform(-1, 1, size=(t, 7)),
        rewards=np.zeros(t),
        dones=np.zeros(t, dtype=np.int64),
        states=rng.normal(size=(t, 32)),
        model_file="<mujoco model='m'/>",
    )


def test_train_valid_split_is_90_10(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    episodes = [_tiny_episode(3 + i % 4, rng) for i in range(20)]
    path = write_robomimic(tmp_path / "split.hdf5", episodes, {"env_name": "Lift", "type": 1, "env_kwargs": {}})
    with h5py.File(path, "r") as f:
        train = [n.decode() for n in f["mask/train"][()]]
        valid = [n.decode() for n in f["mask/valid"][()]]
        assert f["mask/train"].dtype.kind == "S"
        assert len(valid) == 2 and len(train) == 18 and not set(train) & set(valid)
        assert sorted(train + valid) == sorted(f["data"].keys())
        assert f["data"].attrs["total"] == sum(len(e) for e in episodes)
        np.testing.assert_array_equal(f["data/demo_5/actions"][()], episodes[5].actions)
        assert "successful" not in f["mask"]  # episodes without a success label get no success mask


def test_writer_rejects_bad_episodes_and_leaves_no_partial_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    args = {"env_name": "Lift", "type": 1, "env_kwargs": {}}
    bad = _tiny_episode(4, rng)
    bad.rewards = np.zeros(3)
    with pytest.raises(ValueError, match="episode 0: rewards"):
        write_robomimic(tmp_path / "bad.hdf5", [bad], args)
    good = _tiny_episode(4, rng)
    good.attrs = {"unstorable": object()}  # h5py cannot store this: the write fails midway
    with pytest.raises(TypeError):
        write_robomimic(tmp_path / "bad.hdf5", [good], args)
    assert list(tmp_path.iterdir()) == []


def test_collect_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="noise_levels"):
        collect_robosuite_demos("Lift", tmp_path / "x.hdf5", 2, noise_levels=(0.1, -1.0))
    with pytest.raises(ValueError, match="n_episodes"):
        collect_robosuite_demos("Lift", tmp_path / "x.hdf5", 0)
