"""Scripted operators of three proficiencies, written with robomimic MH's masks: the mask names and members, how an
operator departs from the clean script, and a real recording read back with h5py and our robomimic reader."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.collection.robosuite_demos import collect_robosuite_demos
from pipeline.config import ConfigError, load_config
from pipeline.data.robomimic_io import load_robomimic
from pipeline.data.robomimic_masks import MH_OPERATORS, mh_masks
from pipeline.envs import RobosuiteEnv, make_env
from pipeline.envs.scripted import (
    GRIPPER_CLOSED,
    GRIPPER_OPEN,
    OPERATORS,
    LiftPolicy,
    NutAssemblySquarePolicy,
    Operator,
    make_scripted_policy,
)


def test_mh_masks_name_and_fill_every_subset_robomimic_writes() -> None:
    ops = ["better_operator_1", "okay_operator_2", "worse_operator_1", "better_operator_2", "worse_operator_1"]
    masks = mh_masks(ops, train=[0, 1, 2, 4], valid=[3])
    assert masks["better"] == [0, 3] and masks["okay"] == [1] and masks["worse"] == [2, 4]
    assert masks["okay_better"] == [0, 1, 3] and masks["worse_okay"] == [1, 2, 4]
    assert masks["worse_better"] == [0, 2, 3, 4]
    assert masks["worse_operator_1"] == [2, 4] and masks["better_operator_2"] == [3]
    assert masks["better_train"] == [0] and masks["better_valid"] == [3] and masks["worse_train"] == [2, 4]
    assert "okay_operator_1" not in masks and "okay_valid" not in masks  # no demo: no mask, as robomimic
    assert tuple(OPERATORS) == MH_OPERATORS


def test_unknown_operator_is_refused_naming_the_key() -> None:
    with pytest.raises(ConfigError, match="collect.operators"):
        load_config("smoke", ["collect.operators=[better_operator_1, expert]"])


OBS = {"robot0_eef_pos": np.array([0.0, 0.0, 1.0]), "cube_pos": np.array([0.1, 0.0, 0.82])}


def lift(operator: Operator | None) -> LiftPolicy:
    policy = LiftPolicy(rng=0, operator=operator)
    policy.table_z = 0.82  # what reset() reads from the env
    return policy


def still(**kw: float) -> Operator:
    return Operator(**{"speed": 1.0, "noise_std": 0.0, "pause_prob": 0.0, "pause_steps": 0, "regrasp_prob": 0.0,
                       **kw})


def test_a_slower_operator_scales_every_position_command() -> None:
    clean, slow = lift(None)(OBS), lift(still(speed=0.4))(OBS)
    np.testing.assert_allclose(slow[:3], 0.4 * clean[:3], rtol=1e-6)
    assert slow[6] == clean[6] == GRIPPER_OPEN


def test_a_hesitating_operator_holds_still_and_the_script_waits() -> None:
    policy = lift(still(pause_prob=1.0, pause_steps=3))
    for _ in range(5):
        action = policy(OBS)
        assert not action[:3].any() and action[6] == GRIPPER_OPEN
    assert policy.phase == "start" and policy.phase_steps == 0


def test_an_operator_who_regrasps_lets_go_after_closing() -> None:
    eef_at_cube = {**OBS, "robot0_eef_pos": OBS["cube_pos"].copy()}
    for prob, phase_after in ((0.0, "lift"), (1.0, "hover")):
        policy = lift(still(regrasp_prob=prob))
        policy._goto("close")
        actions = [policy(eef_at_cube) for _ in range(policy.close_steps + 1)]
        assert policy.phase == phase_after
        assert all(a[6] == GRIPPER_CLOSED for a in actions[:-1])
        assert actions[-1][6] == (GRIPPER_OPEN if prob else GRIPPER_CLOSED)


# task, episodes per operator, horizon, size of robomimic's "object" key for the task
RECORDINGS = [("Lift", 2, 200, 10), ("NutAssemblySquare", 1, 400, 14)]


@pytest.mark.parametrize(("task", "per_operator", "horizon", "object_dim"), RECORDINGS)
def test_operators_recordings_are_written_with_mh_masks(tmp_path: Path, task: str, per_operator: int, horizon: int,
                                                         object_dim: int) -> None:
    path = tmp_path / f"{task}_mh.hdf5"
    stats = collect_robosuite_demos(task, path, 6 * per_operator, seed=0, horizon=horizon,
                                    operators=list(MH_OPERATORS))
    assert set(stats["per_operator"]) == set(MH_OPERATORS)
    assert all(v["episodes"] == per_operator for v in stats["per_operator"].values())
    with h5py.File(path, "r") as f:
        masks = {k: sorted(x.decode() for x in f["mask"][k][:]) for k in f["mask"]}
        operator_of = {name: f["data"][name].attrs["operator"] for name in f["data"]}
    for prof in ("better", "okay", "worse"):
        assert masks[prof] == sorted(n for n, op in operator_of.items() if op.startswith(prof + "_"))
        assert sorted(masks.get(f"{prof}_train", []) + masks.get(f"{prof}_valid", [])) == masks[prof]
    for op in MH_OPERATORS:
        assert masks[op] == sorted(n for n, o in operator_of.items() if o == op)
    assert masks["okay_better"] == sorted(masks["okay"] + masks["better"])
    assert sorted(masks["train"] + masks["valid"]) == sorted(operator_of)
    # robomimic's filter keys select the two better operators' demos through our reader, in the MH key order
    keys = ["robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos", "object"]
    better = load_robomimic(path, obs_keys=keys, filter_key="better")
    assert better.num_episodes == 2 * per_operator and better.obs_dim == 3 + 4 + 2 + object_dim
    # the worse operators are slower, hesitate and grasp again: they take longer per demo
    steps = {p: sum(v["steps"] for k, v in stats["per_operator"].items() if k.startswith(p)) for p in
             ("better", "worse")}
    assert steps["better"] < steps["worse"]


def square_episode(env: RobosuiteEnv, operator: str | None, seed: int) -> tuple[bool, int]:
    """One NutAssemblySquare episode of the scripted demonstrator on reset seed ``seed``: (success, steps)."""
    policy = make_scripted_policy("NutAssemblySquare", rng=seed, operator=operator)
    env.reset(seed=seed)
    policy.reset(env)
    for step in range(1, env.horizon + 1):
        _, _, terminated, truncated, info = env.step(policy(env.obs_dict))
        if terminated or truncated:
            return bool(info["success"]), step
    raise AssertionError("the env did not end the episode at its horizon")


@pytest.fixture(scope="module")
def square() -> RobosuiteEnv:
    env = make_env("robosuite/NutAssemblySquare", seed=0)
    yield env
    env.close()


@pytest.mark.parametrize(("operator", "seed"), [(None, 0), (None, 4), ("better_operator_1", 1)])
def test_square_demonstrator_puts_the_nut_on_the_peg(square: RobosuiteEnv, operator: str | None, seed: int) -> None:
    # docs/results.md: the clean script 20/20 on reset seeds 0-19, better_operator_1 10/10 (seed 4 is the placement
    # whose handle faces the robot, where a grasp at the handle's centre lands a finger on the nut's ring)
    success, steps = square_episode(square, operator, seed)
    assert success and steps < 250
    rs = square.rs_env
    nut = square.obs_dict["SquareNut_pos"]
    np.testing.assert_allclose(nut[:2], rs.sim.data.body_xpos[rs.peg1_body_id][:2], atol=0.03)


@pytest.mark.slow
def test_square_operators_succeed_at_their_measured_rates(tmp_path: Path) -> None:
    # docs/results.md's table (10 episodes per operator): better and okay 10/10 each, worse 9/10 and 7/10
    stats = collect_robosuite_demos("NutAssemblySquare", tmp_path / "square.hdf5", 60, seed=0,
                                    operators=list(MH_OPERATORS))
    per = stats["per_operator"]
    for op in MH_OPERATORS[:4]:
        assert per[op]["successes"] >= 9, (op, per[op])
    worse = per["worse_operator_1"]["successes"] + per["worse_operator_2"]["successes"]
    assert 10 <= worse <= 18, per
    assert per["better_operator_1"]["steps"] < per["worse_operator_2"]["steps"]


def test_square_turns_the_nut_square_to_the_peg_with_the_handle_within_reach() -> None:
    # the peg straight ahead of the robot (+x): a handle pointing along +x would hold the gripper out of reach
    policy = NutAssemblySquarePolicy()
    policy.away, policy.home_yaw = np.array([1.0, 0.0]), 0.0
    for nut_yaw in np.radians(np.arange(-180, 180, 2.5)):
        # the hover phase closes the fingers across the handle from the side that turns the wrist less
        eef_yaw = (nut_yaw + np.pi / 2) % np.pi - np.pi / 2
        target = policy._aligned_yaw(nut_yaw, eef_yaw)
        assert abs(np.sin(2 * target)) < 1e-9  # a multiple of 90 degrees: the hole square to the peg
        assert np.cos(target) < 0.5  # the handle toward the robot or to a side
        assert abs(eef_yaw + target - nut_yaw) <= np.pi / 2 + 1e-9  # the wrist within 90 degrees of its start
