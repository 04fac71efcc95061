"""Scripted demonstrators for robosuite tasks (Panda, OSC_POSE delta actions).

Each demonstrator is a small state machine over end-effector waypoints. It reads positions from the robosuite
observation dict (``robot0_eef_pos``, the object's ``<Obj>_pos``), not from the flattened observation, so it works
with any ``obs_keys``. Actions are 7-d in [-1, 1]: a position delta (1.0 = 5 cm per step), a rotation delta (1.0 =
0.5 rad; 0 for Lift and PickPlaceCan, whose objects grasp at any yaw; NutAssemblySquare servoes the gripper's yaw),
and the gripper command (-1 open, +1 close). Gaussian noise of std
``noise_std`` is added to every action dimension before clipping, which gives demonstrations of mixed quality.

An :class:`Operator` (:data:`OPERATORS`, named as robomimic's multi-human operators) makes the script behave like a
person of one proficiency: slower moves and turns, pauses, letting go after a grasp to grasp again, and path noise.

Usage::

    policy = make_scripted_policy("Lift", noise_std=0.1, rng=0)
    obs, info = env.reset()
    policy.reset(env)
    action = policy(env.obs_dict)
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from pipeline.data.robomimic_masks import MH_OPERATORS
from pipeline.envs.robosuite_env import RobosuiteEnv

GRIPPER_OPEN = -1.0
GRIPPER_CLOSED = 1.0
_ACT_DIM = 7
# Proportional gain from position error (m) to action units: one unit moves the OSC target 5 cm, so a gain of 10
# closes half the remaining error per step, fast without overshoot.
_GAIN = 10.0


@dataclass(frozen=True)
class Operator:
    """How one scripted operator departs from the clean script, the ways people of different proficiency do."""

    speed: float  # scale on every position and rotation command: a slower operator takes more steps for each move
    noise_std: float  # path noise: N(0, noise_std^2) on every action dimension
    pause_prob: float  # per-step chance to start hesitating: no motion, gripper held, the script waits
    pause_steps: int  # steps one hesitation lasts
    regrasp_prob: float  # chance, at each completed grasp, to let go and grasp again


# robomimic MH's six operators, two per proficiency (pipeline.data.robomimic_masks). The settings are ours: the
# better ones move at full speed and seldom hesitate; the worse ones are slower, hesitate, let go to grasp again
# and take a noisy path that fails some episodes (kept in the file, as people's failed attempts would be). MH's worse
# demos all succeed in the end, so the worse operators are set to finish most PickPlaceCan episodes within its
# 300-step horizon (at under half speed they finished none; docs/results.md has the success per operator and task).
OPERATORS: dict[str, Operator] = {
    "better_operator_1": Operator(speed=1.0, noise_std=0.02, pause_prob=0.0, pause_steps=0, regrasp_prob=0.0),
    "better_operator_2": Operator(speed=0.95, noise_std=0.05, pause_prob=0.005, pause_steps=3, regrasp_prob=0.05),
    "okay_operator_1": Operator(speed=0.9, noise_std=0.1, pause_prob=0.01, pause_steps=4, regrasp_prob=0.1),
    "okay_operator_2": Operator(speed=0.85, noise_std=0.15, pause_prob=0.015, pause_steps=5, regrasp_prob=0.15),
    "worse_operator_1": Operator(speed=0.85, noise_std=0.2, pause_prob=0.02, pause_steps=5, regrasp_prob=0.25),
    "worse_operator_2": Operator(speed=0.8, noise_std=0.2, pause_prob=0.025, pause_steps=6, regrasp_prob=0.3),
}
assert tuple(OPERATORS) == MH_OPERATORS


class ScriptedPolicy(ABC):
    """Base class: a waypoint state machine plus Gaussian action noise.

    Args:
        noise_std: std of the N(0, noise_std^2) noise added to each action dimension (then clipped to [-1, 1]).
        rng: seed or ``numpy.random.Generator`` for the noise.
        operator: an :class:`Operator` whose speed, pauses and re-grasps the script takes on (its ``noise_std``
            replaces ``noise_std``); None: the clean script.
    """

    task: str = ""

    def __init__(self, noise_std: float = 0.0, rng: int | np.random.Generator | None = None,
                 operator: Operator | None = None) -> None:
        if operator is not None:
            noise_std = operator.noise_std
        if not np.isfinite(noise_std) or noise_std < 0:
            raise ValueError(f"noise_std: expected a finite value >= 0, got {noise_std!r}")
        self.noise_std = float(noise_std)
        self.operator = operator
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        self.phase = "start"
        self.phase_steps = 0
        self.pause_left = 0
        self.gripper = GRIPPER_OPEN  # the last gripper command, held through a pause

    def reset(self, env: RobosuiteEnv) -> None:
        """Start a new episode on ``env`` (already reset); reads task constants such as the goal bin."""
        if env.task != self.task:
            raise ValueError(f"{type(self).__name__} drives robosuite task {self.task!r}, got env task {env.task!r}")
        self.phase = "start"
        self.phase_steps = 0
        self.pause_left = 0
        self.gripper = GRIPPER_OPEN

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
        op = self.operator
        if op is not None and self.pause_left == 0 and op.pause_prob > 0 and self.rng.random() < op.pause_prob:
            self.pause_left = op.pause_steps
        if self.pause_left > 0:  # hesitating: no motion, the gripper as it was, the script does not advance
            self.pause_left -= 1
            action = np.zeros(_ACT_DIM)
            action[6] = self.gripper
        else:
            before = self.phase
            action = self.clean_action(obs)
            self.phase_steps += 1
            if op is not None:
                action[:6] *= op.speed  # position and rotation commands alike
                # a grasp just completed (the close phase handed over to lifting): let go and grasp again
                if before == "close" and self.phase == "lift" and op.regrasp_prob > 0 \
                        and self.rng.random() < op.regrasp_prob:
                    self._goto("hover")
                    action[6] = GRIPPER_OPEN
        self.gripper = float(action[6])
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


def _wrap(angle: float, period: float = 2 * np.pi) -> float:
    """``angle`` wrapped into [-period / 2, period / 2)."""
    return float((angle + period / 2) % period - period / 2)


def _yaw(rot: np.ndarray) -> float:
    """Heading (rad) of a rotation matrix's x-axis in the world's xy-plane."""
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


class NutAssemblySquarePolicy(ScriptedPolicy):
    """NutAssemblySquare: grasp the square nut by its handle, lift it above the peg, turn it so its square hole
    lines up with the square peg, lower it onto the peg, release, and move the gripper up and away.

    The task succeeds once the nut's centre is within 3 cm of the peg's axis, low on the peg, with the gripper more
    than ~4 cm from that centre; a grasp on the handle holds the gripper ~6 cm away, so the episode usually ends
    (terminates on success) while the nut is still held, and release and retreat run only when it does not.

    Unlike the other tasks this one needs the gripper's yaw: the fingers must close across the handle, and the hole
    (6.75 mm clearance per side when square to the peg) must be turned onto the peg. The gripper is kept pointing
    down and its yaw servoed to a target through OSC_POSE's rotation deltas. All geometry (the peg, the handle's
    offset from the nut's centre, the table height) is read from the env at reset; positions and the nut's
    orientation each step from the observation (``SquareNut_pos``, ``SquareNut_quat``, ``robot0_eef_pos``,
    ``robot0_eef_quat``). Targets are in terms of the nut itself (the eef moves so that the nut's centre goes over
    the peg), so the script corrects for where in the fingers the handle ended up.
    """

    task = "NutAssemblySquare"
    hover = 0.08  # m above the handle before descending
    close_steps = 15
    clear_above_peg = 0.03  # m between the nut's underside and the peg's top while carrying
    align_xy = 0.004  # m: the nut's centre this close to the peg's axis (in xy) before lowering
    align_yaw = np.radians(4.0)  # rad: the hole this close to square with the peg before lowering
    lowered = 0.025  # m above the table: the nut's centre this low is down the peg (success needs < 0.05)
    release_steps = 10
    retreat = 0.12  # m the gripper rises after letting go
    grasp_out = 0.008  # m out along the handle from its centre to where the fingers close
    grip_yaw_tol = np.radians(5.0)  # rad: the gripper's yaw this close to the handle's before descending
    # Proportional gain from orientation error (rad, axis-angle) to rotation action units (one unit asks OSC for
    # 0.5 rad): 4 asks for twice the error, of which the arm makes about a fifth per step.
    rot_gain = 4.0

    def reset(self, env: RobosuiteEnv) -> None:
        super().reset(env)
        import robosuite.utils.transform_utils as T

        self._quat2mat = T.quat2mat
        self._quat2axisangle = T.quat2axisangle
        self._mat2quat = T.mat2quat
        rs, sim = env.rs_env, env.sim
        nut = rs.nuts[rs.nut_id]
        peg_body = (rs.peg1_body_id, rs.peg2_body_id)[rs.nut_id]
        self.peg = np.asarray(sim.data.body_xpos[peg_body], dtype=np.float64).copy()
        peg_geoms = [g for g in range(sim.model.ngeom) if sim.model.geom_bodyid[g] == peg_body]
        self.peg_top = self.peg[2] + max(float(sim.model.geom_pos[g][2] + sim.model.geom_size[g][2])
                                         for g in peg_geoms)
        self.table_z = float(rs.table_offset[2])
        nut_pos = np.asarray(env.obs_dict[f"{nut.name}_pos"], dtype=np.float64)
        nut_rot = self._quat2mat(np.asarray(env.obs_dict[f"{nut.name}_quat"], dtype=np.float64))
        handle = np.asarray(sim.data.site_xpos[sim.model.site_name2id(nut.important_sites["handle"])])
        offset = nut_rot.T @ (handle - nut_pos)  # the handle's centre in the nut's frame
        # where the fingers close: a little out along the handle from its centre, so that a finger a few mm off
        # does not land on the nut's ring (the handle reaches 2.5 cm out from its centre, the fingers are ~2 cm wide)
        self.grasp_offset = offset * (1.0 + self.grasp_out / np.linalg.norm(offset))
        nut_geoms = [sim.model.geom_name2id(g) for g in nut.contact_geoms]
        self.nut_half_height = max(float(sim.model.geom_size[g][2]) for g in nut_geoms)
        self.pos_key, self.quat_key = f"{nut.name}_pos", f"{nut.name}_quat"
        self.home_yaw = _yaw(self._quat2mat(np.asarray(env.obs_dict["robot0_eef_quat"], dtype=np.float64)))
        self.grip_yaw = self.home_yaw  # the gripper's yaw target, set when the handle is approached
        away = self.peg[:2] - np.asarray(rs.robots[0].base_pos, dtype=np.float64)[:2]
        self.away = away / np.linalg.norm(away)  # unit xy direction from the robot's base to the peg

    def _aligned_yaw(self, nut_yaw: float, eef_yaw: float) -> float:
        """The yaw to turn the held nut to: square to the peg (the hole has 90-degree symmetry), the handle not on
        the peg's far side from the robot (out of the arm's reach at carrying height), and of those the one that
        leaves the wrist nearest its yaw at reset (the wrist joint's range is limited). Returned as the nut's yaw
        plus the turn to make, so it may lie outside [-pi, pi)."""
        best, best_cost = nut_yaw, np.inf
        for k in range(-2, 3):
            yaw = nut_yaw + _wrap(-nut_yaw, np.pi / 2) + k * np.pi / 2
            if np.dot([np.cos(yaw), np.sin(yaw)], self.away) > 0.5:  # the handle points away from the robot
                continue
            cost = abs(eef_yaw + yaw - nut_yaw - self.home_yaw)
            if cost < best_cost:
                best, best_cost = yaw, cost
        return best

    def _turn(self, action: np.ndarray, eef_rot: np.ndarray, yaw: float) -> np.ndarray:
        """Rotation part of ``action``: point the gripper down (as at reset) with its x-axis at ``yaw``."""
        c, s = np.cos(yaw), np.sin(yaw)
        target = np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])  # Rz(yaw) @ diag(1, -1, -1)
        error = self._quat2axisangle(self._mat2quat(target @ eef_rot.T))  # world-frame rotation still to make
        action[3:6] = np.clip(self.rot_gain * error, -1.0, 1.0)
        return action

    def clean_action(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        eef = np.asarray(obs["robot0_eef_pos"], dtype=np.float64)
        eef_rot = self._quat2mat(np.asarray(obs["robot0_eef_quat"], dtype=np.float64))
        nut = np.asarray(obs[self.pos_key], dtype=np.float64)
        nut_rot = self._quat2mat(np.asarray(obs[self.quat_key], dtype=np.float64))
        nut_yaw = _yaw(nut_rot)
        handle = nut + nut_rot @ self.grasp_offset  # the grasp point on the handle
        eef_yaw = _yaw(eef_rot)
        if self.phase == "start":
            self._goto("hover")
        if self.phase == "hover":
            # fingers across the handle: the gripper's x-axis along the handle, whichever way turns the wrist less
            self.grip_yaw = eef_yaw + _wrap(nut_yaw - eef_yaw, np.pi)
            target = handle + np.array([0.0, 0.0, self.hover])
            if np.linalg.norm(target - eef) < 0.015 and abs(_wrap(self.grip_yaw - eef_yaw)) < self.grip_yaw_tol:
                self._goto("descend")
            return self._turn(self._move(eef, target, GRIPPER_OPEN), eef_rot, self.grip_yaw)
        if self.phase == "descend":
            self.grip_yaw = eef_yaw + _wrap(nut_yaw - eef_yaw, np.pi)
            if abs(handle[2] - eef[2]) < 0.005 or self.phase_steps > 30:
                self._goto("close")
            return self._turn(self._move(eef, handle, GRIPPER_OPEN), eef_rot, self.grip_yaw)
        if self.phase == "close":
            if self.phase_steps >= self.close_steps:
                self._goto("lift")
            return self._turn(self._move(eef, handle, GRIPPER_CLOSED), eef_rot, self.grip_yaw)
        if self.phase in ("lift", "carry", "lower") and np.linalg.norm(handle - eef) > 0.03:  # dropped: again
            self._goto("hover")
            return self._move(eef, eef + np.array([0.0, 0.0, 0.05]), GRIPPER_OPEN)
        aligned_yaw = self._aligned_yaw(nut_yaw, eef_yaw)
        yaw_target = eef_yaw + (aligned_yaw - nut_yaw)
        carry_z = self.peg_top + self.clear_above_peg + self.nut_half_height
        to_peg = self.peg[:2] - nut[:2]  # where the nut's centre still has to go
        if self.phase == "lift":
            if nut[2] > carry_z - 0.01:
                self._goto("carry")
            target = eef + np.array([0.0, 0.0, carry_z - nut[2]])
            return self._turn(self._move(eef, target, GRIPPER_CLOSED), eef_rot, self.grip_yaw)
        if self.phase == "carry":
            if np.linalg.norm(to_peg) < self.align_xy and abs(aligned_yaw - nut_yaw) < self.align_yaw:
                self._goto("lower")
            target = eef + np.array([to_peg[0], to_peg[1], carry_z - nut[2]])
            return self._turn(self._move(eef, target, GRIPPER_CLOSED), eef_rot, yaw_target)
        if self.phase == "lower":
            if nut[2] < self.table_z + self.lowered or self.phase_steps > 40:
                self._goto("release")
            target = eef + np.array([to_peg[0], to_peg[1], self.table_z + self.lowered - 0.01 - nut[2]])
            return self._turn(self._move(eef, target, GRIPPER_CLOSED), eef_rot, yaw_target)
        if self.phase == "release":
            if self.phase_steps >= self.release_steps:
                self._goto("retreat")
                self.retreat_z = eef[2] + self.retreat
            return self._move(eef, eef, GRIPPER_OPEN)
        # retreat: straight up, out of the nut
        return self._move(eef, np.array([eef[0], eef[1], self.retreat_z]), GRIPPER_OPEN)


SCRIPTED_POLICIES: dict[str, type[ScriptedPolicy]] = {
    "Lift": LiftPolicy, "PickPlaceCan": PickPlaceCanPolicy, "NutAssemblySquare": NutAssemblySquarePolicy,
}


def make_scripted_policy(
    task: str, noise_std: float = 0.0, rng: int | np.random.Generator | None = None, operator: str | None = None
) -> ScriptedPolicy:
    """Scripted demonstrator for robosuite ``task`` (a key of :data:`SCRIPTED_POLICIES`), as the clean script with
    action noise ``noise_std`` or as ``operator`` (a name in :data:`OPERATORS`)."""
    if task not in SCRIPTED_POLICIES:
        raise ValueError(f"no scripted demonstrator for robosuite task {task!r}; have {sorted(SCRIPTED_POLICIES)}")
    if operator is not None and operator not in OPERATORS:
        raise ValueError(f"operator {operator!r}: expected one of {list(OPERATORS)}")
    return SCRIPTED_POLICIES[task](noise_std=noise_std, rng=rng,
                                   operator=OPERATORS[operator] if operator is not None else None)
