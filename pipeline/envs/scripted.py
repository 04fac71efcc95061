"""Scripted demonstrators for robosuite tasks (Panda, OSC_POSE delta actions).

Each demonstrator is a small state machine over end-effector waypoints. It reads positions from the robosuite
observation dict (``robot0_eef_pos``, the object's ``<Obj>_pos``), not from the flattened observation, so it works
with any ``obs_keys``. Actions are 7-d in [-1, 1]: a position delta (1.0 = 5 cm per step), a rotation delta (kept
at 0: both objects grasp at any yaw), and the gripper command (-1 open, +1 close). Gaussian noise of std
``noise_std`` is added to every action dimension before clipping, which gives demonstrations of mixed quality.

Usage::

    policy = make_scripted_policy("Lift", noise_std=0.1, rng=0)
    obs, info = env.reset()
    policy.reset(env)
    action = policy(env.obs_dict)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from pipeline.envs.robosuite_env import RobosuiteEnv

GRIPPER_OPEN = -1.0
GRIPPER_CLOSED = 1.0
_ACT_DIM = 7
# Proportional gain from position error (m) to action units: one unit moves the OSC target 5 cm, so a gain of 10
# closes half the remaining error per step, fast without overshoot.
_GAIN = 10.0


class ScriptedPolicy(ABC):
    """Base class: a waypoint state machine plus Gaussian action noise.

    Args:
        noise_std: std of the N(0, noise_std^2) noise added to each action dimension (then clipped to [-1, 1]).
        rng: seed or ``numpy.random.Generator`` for the noise.
    """

    task: str = ""

    def __init__(self, noise_std: float = 0.0, rng: int | np.random.Generator | None = None) -> None:
        if not np.isfinite(noise_std) or noise_std < 0:
            raise ValueError(f"noise_std: expected a finite value >= 0, got {noise_std!r}")
        self.noise_std = float(noise_std)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.phase = "start"
        self.phase_steps = 0

    def reset(self, env: RobosuiteEnv) -> None:
        """Start a new episode on ``env`` (already reset); reads task constants such as the goal bin."""
        if env.task != self.task:
            raise ValueError(f"{type(self).__name__} drives robosuite task {self.task!r}, got env task {env.task!r}")
        self.phase = "start"
        self.phase_steps = 0

    def _goto(self, phase: str) -> None:
        self.phase = phase
        self.phase_steps = 0

    @staticmethod
    def _move(eef: np.ndarray, target: np.ndarray, gripper: float) -> np.ndarray:
        action = np.zeros(_ACT_DIM)
        action[:3] = np.clip(_GAIN * (target - eef), -1.0, 1.0)
        action[6] = gripper
        return action

    @abstractmethod
    def clean_action(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Noise-free action ``float64[7]`` for robosuite obs dict ``obs``; advances the state machine."""

    def __call__(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """Action ``float32[7]`` in [-1, 1] for robosuite obs dict ``obs`` (noise added, then clipped)."""
        action = self.clean_action(obs)
        self.phase_steps += 1
        if self.noise_std > 0:
            action = action + self.rng.normal(0.0, self.noise_std, size=action.shape)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


class LiftPolicy(ScriptedPolicy):
    """Lift: hover above the cube, descend, close the gripper for ``close_steps`` steps, lift.

    If the cube is lost while lifting (it is no longer between the fingers), the policy goes back to hovering
    and grasps again.
    """

    task = "Lift"
    hover = 0.08  # m above the cube centre before descending
    close_steps = 12
    lift_height = 0.20  # m above the cube's table height

    def reset(self, env: RobosuiteEnv) -> None:
        super().reset(env)
        self.table_z = float(np.asarray(env.obs_dict["cube_pos"])[2])

    def clean_action(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        cube = np.asarray(obs["cube_pos"], dtype=np.float64)
        if self.phase == "start":
            self._goto("hover")
        if self.phase == "hover":
            target = cube + np.array([0.0, 0.0, self.hover])
            if np.linalg.norm(target - eef) < 0.015:
                self._goto("descend")
            return self._move(eef, target, GRIPPER_OPEN)
        if self.phase == "descend":
            target = cube.copy()
            if abs(target[2] - eef[2]) < 0.008 or self.phase_steps > 30:
                self._goto("close")
            return self._move(eef, target, GRIPPER_OPEN)
        if self.phase == "close":
            if self.phase_steps >= self.close_steps:
                self._goto("lift")
            return self._move(eef, cube, GRIPPER_CLOSED)
        # lift
        if np.linalg.norm(cube - eef) > 0.05:  # dropped or missed: try again
            self._goto("hover")
            return self._move(eef, eef + np.array([0.0, 0.0, 0.05]), GRIPPER_OPEN)
        target = np.array([cube[0], cube[1], self.table_z + self.lift_height])
        return self._move(eef, target, GRIPPER_CLOSED)


class PickPlaceCanPolicy(ScriptedPolicy):
    """PickPlaceCan: grasp the can, lift it clear of the bin walls, carry it over its goal quadrant of the target
    bin, lower it, release, then move the gripper up and away (the task counts success only once the gripper has
    left the can)."""

    task = "PickPlaceCan"
    hover = 0.08
    close_steps = 15
    carry_z = 1.05  # m, world height while carrying (bin rims are at ~0.85)
    release_above_bin = 0.12  # m above the bin floor where the can is let go
    release_steps = 10

    def reset(self, env: RobosuiteEnv) -> None:
        super().reset(env)
        rs = env.rs_env
        # The goal quadrant of bin 2 for the can (robosuite's object id 3).
        self.goal = np.asarray(rs.target_bin_placements[rs.object_id], dtype=np.float64).copy()

    def clean_action(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        can = np.asarray(obs["Can_pos"], dtype=np.float64)
        if self.phase == "start":
            self._goto("hover")
        if self.phase == "hover":
            target = can + np.array([0.0, 0.0, self.hover])
            if np.linalg.norm(target - eef) < 0.015:
                self._goto("descend")
            return self._move(eef, target, GRIPPER_OPEN)
        if self.phase == "descend":
            if abs(can[2] - eef[2]) < 0.008 or self.phase_steps > 30:
                self._goto("close")
            return self._move(eef, can, GRIPPER_OPEN)
        if self.phase == "close":
            if self.phase_steps >= self.close_steps:
                self._goto("lift")
            return self._move(eef, can, GRIPPER_CLOSED)
        holding = np.linalg.norm(can - eef) < 0.05
        if self.phase in ("lift", "carry", "lower") and not holding:  # dropped or missed: try again
            self._goto("hover")
            return self._move(eef, eef + np.array([0.0, 0.0, 0.05]), GRIPPER_OPEN)
        if self.phase == "lift":
            target = np.array([eef[0], eef[1], self.carry_z])
            if eef[2] > self.carry_z - 0.03:
                self._goto("carry")
            return self._move(eef, target, GRIPPER_CLOSED)
        if self.phase == "carry":
            target = np.array([self.goal[0], self.goal[1], self.carry_z])
            if np.linalg.norm((target - eef)[:2]) < 0.015:
                self._goto("lower")
            return self._move(eef, target, GRIPPER_CLOSED)
        if self.phase == "lower":
            target = np.array([self.goal[0], self.goal[1], self.goal[2] + self.release_above_bin])
            if abs(target[2] - eef[2]) < 0.015 or self.phase_steps > 30:
                self._goto("release")
            return self._move(eef, target, GRIPPER_CLOSED)
        if self.phase == "release":
            if self.phase_steps >= self.release_steps:
                self._goto("retreat")
            return self._move(eef, eef, GRIPPER_OPEN)
        # retreat: straight up, away from the can
        return self._move(eef, np.array([eef[0], eef[1], self.carry_z]), GRIPPER_OPEN)


SCRIPTED_POLICIES: dict[str, type[ScriptedPolicy]] = {"Lift": LiftPolicy, "PickPlaceCan": PickPlaceCanPolicy}


def make_scripted_policy(
    task: str, noise_std: float = 0.0, rng: int | np.random.Generator | None = None
) -> ScriptedPolicy:
    """Scripted demonstrator for robosuite ``task`` (``"Lift"`` or ``"PickPlaceCan"``)."""
    if task not in SCRIPTED_POLICIES:
        raise ValueError(f"no scripted demonstrator for robosuite task {task!r}; have {sorted(SCRIPTED_POLICIES)}")
    return SCRIPTED_POLICIES[task](noise_std=noise_std, rng=rng)
