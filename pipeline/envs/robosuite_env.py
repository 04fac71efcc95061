"""robosuite manipulation tasks as a registered Gymnasium environment.

:class:`RobosuiteEnv` wraps one robosuite task (Panda arm, OSC_POSE controller, low-dim observations only) and
exposes it with the Gymnasium API: a flat float32 observation made of the chosen low-dim keys in order, actions
in [-1, 1], a sparse 0/1 reward, ``info["success"]`` from the task's own ``_check_success()``, ``terminated`` on
success and ``truncated`` at the horizon. It is registered as ``robosuite/<Task>`` so that ``gymnasium.make`` sets
``env.spec`` and a dataset recorder (Minari) can rebuild it from the spec.

The robomimic ``env_args`` record (``env_name``, ``type``, ``env_kwargs``) is both produced (``env.env_args``,
stored in collected datasets) and consumed (``env_args=`` option), so that evaluation runs on exactly the
simulator configuration the demonstrations were recorded with.

robosuite 1.5 draws object placements and robot initialization noise from NumPy's *global* generator. Each env
lends robosuite a ``RandomState`` of its own, swapped into the global slot only while robosuite runs, so seeding
one env neither depends on nor disturbs any other random stream in the process. Every ``reset`` draws that
``RandomState``'s seed from the env's Gymnasium generator (``np_random``): an episode is then a function of
``np_random``'s state alone, which is what vector envs expose and checkpoints save and restore.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from pipeline.terminal import VERBOSE_ENV


class _LibraryNoise(logging.Filter):
    """Drops robosuite's warnings unless ``SACFLOW_VERBOSE`` is set: at import (no private macro file, no
    robosuite_models, no mink) and on every env build (the Panda has no torso/head/base/legs controller to
    configure). They say nothing about a run; its errors pass. A filter on the logger, installed before robosuite
    is imported (here, and so in env worker processes too), survives robosuite setting the logger's level."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or bool(os.environ.get(VERBOSE_ENV))


logging.getLogger("robosuite_logs").addFilter(_LibraryNoise())

# robomimic's type code for robosuite environments (robomimic.envs.env_base.EnvType.ROBOSUITE_TYPE).
ROBOSUITE_ENV_TYPE = 1

# robomimic's default low-dim observation keys, in the order robomimic concatenates them (it sorts the configured
# keys when building its observation shapes); pipeline.data's robomimic reader uses the same default.
DEFAULT_OBS_KEYS: tuple[str, ...] = ("object", "robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")

# Episode step limits used by the public SAC Flow / robomimic O2O code for these tasks (20 Hz control).
DEFAULT_HORIZONS: dict[str, int] = {"Lift": 300, "PickPlaceCan": 300, "NutAssemblySquare": 400}

# Options accepted by make_env for robosuite ids (besides seed).
ROBOSUITE_OPTIONS = frozenset({"obs_keys", "horizon", "env_args", "terminate_on_success", "reward_shaping"})

# Settings forced on every robosuite env we build, whatever a stored env_args says: no rendering (offscreen
# rendering does not work headless here, and we never use images), object state on, robosuite's own episode end
# off (the wrapper owns the horizon), and soft resets (~1 ms instead of ~130 ms for a model rebuild).
_FORCED_KWARGS: dict[str, Any] = {
    "has_renderer": False,
    "has_offscreen_renderer": False,
    "use_camera_obs": False,
    "use_object_obs": True,
    "ignore_done": True,
    "hard_reset": False,
}


def robosuite_task_names() -> list[str]:
    """Names of every environment robosuite registers (``Lift``, ``PickPlaceCan``, ...)."""
    from robosuite.environments.base import REGISTERED_ENVS

    return sorted(REGISTERED_ENVS)


def default_env_kwargs(task: str, reward_shaping: bool = False, horizon: int | None = None) -> dict[str, Any]:
    """robosuite constructor kwargs for ``task``: one Panda, OSC_POSE (BASIC composite controller), 20 Hz.

    The result is JSON-serializable; it becomes ``env_args["env_kwargs"]``.
    """
    from robosuite.controllers import load_composite_controller_config

    controller = load_composite_controller_config(controller="BASIC", robot="Panda")
    kwargs: dict[str, Any] = {
        "robots": ["Panda"],
        "controller_configs": controller,
        "control_freq": 20,
        "reward_shaping": bool(reward_shaping),
        "horizon": int(horizon if horizon is not None else DEFAULT_HORIZONS.get(task, 500)),
    }
    kwargs.update(_FORCED_KWARGS)
    return kwargs


def parse_env_args(env_args: Mapping[str, Any] | str | bytes) -> dict[str, Any]:
    """Validate a robomimic ``env_args`` record (dict or JSON text) and return it as a dict.

    Raises ``ValueError`` naming the missing or malformed field.
    """
    if isinstance(env_args, (str, bytes)):
        try:
            env_args = json.loads(env_args)
        except json.JSONDecodeError as e:
            raise ValueError(f"option 'env_args': not valid JSON ({e})") from e
    if not isinstance(env_args, Mapping):
        raise ValueError(f"option 'env_args': expected a dict or JSON object, got {type(env_args).__name__}")
    for key in ("env_name", "env_kwargs"):
        if key not in env_args:
            raise ValueError(f"option 'env_args': missing key {key!r} (has {sorted(env_args)})")
    if not isinstance(env_args["env_kwargs"], Mapping):
        raise ValueError("option 'env_args': 'env_kwargs' must be a dict")
    env_args = copy.deepcopy(dict(env_args))
    # robomimic's convert_robosuite.py keeps robosuite's env_info, env_name included, as env_kwargs; robomimic
    # drops it there, and so does this reader (it names the env once, as env_args' own env_name)
    inner = env_args["env_kwargs"] = dict(env_args["env_kwargs"])
    if "env_name" in inner:
        name = inner.pop("env_name")
        if name != env_args["env_name"]:
            raise ValueError(f"option 'env_args': env_kwargs names env {name!r}, env_args names "
                             f"{env_args['env_name']!r}")
    env_type = env_args.get("type", ROBOSUITE_ENV_TYPE)
    if env_type != ROBOSUITE_ENV_TYPE:
        raise ValueError(
            f"option 'env_args': type={env_type!r} is not a robosuite env (robomimic type {ROBOSUITE_ENV_TYPE})"
        )
    return env_args


def _is_sim_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a simulator failure (MuJoCo or robosuite) rather than a bug in the caller."""
    import mujoco
    from robosuite.utils.errors import robosuiteError

    return isinstance(exc, (mujoco.FatalError, mujoco.UnexpectedError, robosuiteError, FloatingPointError))


class RobosuiteEnv(gym.Env):
    """One robosuite task as a Gymnasium env with flat float32 low-dim observations.

    Args:
        task: robosuite environment name, e.g. ``"Lift"``, ``"PickPlaceCan"``, ``"NutAssemblySquare"``.
        obs_keys: ordered low-dim observation keys to concatenate (default :data:`DEFAULT_OBS_KEYS`).
            ``"object"`` is robosuite's ``object-state``, as robomimic names it.
        horizon: steps before ``truncated=True`` (default: ``env_args`` horizon, else :data:`DEFAULT_HORIZONS`).
        env_args: robomimic env_args (dict or JSON) to rebuild the exact simulator configuration of a dataset.
        terminate_on_success: end the episode (``terminated=True``) on the first successful step.
        reward_shaping: robosuite's dense shaped reward instead of the sparse 0/1 success reward
            (default: ``env_args``' value, else False).
        seed: seeds the env's generator, which robosuite also draws from while building the model (Lift's cube
            size is random per instance), so two envs made with one seed are identical.

    Observation: ``float32[obs_dim]``, the concatenation of ``obs_keys``. Action: ``float32[act_dim]`` in [-1, 1]
    (7 for a Panda with OSC_POSE: 3 position deltas, 3 rotation deltas, gripper, -1 open / +1 closed).

    Attributes beyond Gymnasium's: ``obs_keys``, ``obs_dims`` (flat size per key), ``env_args`` (robomimic
    record of this env), ``obs_dict`` (the latest raw robosuite observation dict), ``error_count`` (simulator
    failures that ended an episode), ``rs_env`` (the robosuite env), ``sim``.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        task: str = "Lift",
        obs_keys: Sequence[str] | None = None,
        horizon: int | None = None,
        env_args: Mapping[str, Any] | str | None = None,
        terminate_on_success: bool = True,
        reward_shaping: bool | None = None,
        seed: int | None = None,
    ) -> None:
        import robosuite

        if task not in robosuite_task_names():
            raise ValueError(f"unknown robosuite task {task!r}; robosuite has {robosuite_task_names()}")
        if env_args is not None:
            args = parse_env_args(env_args)
            if args["env_name"] != task:
                raise ValueError(
                    f"option 'env_args': env_name={args['env_name']!r} does not match the env id's task {task!r}"
                )
            kwargs = dict(args["env_kwargs"])
            kwargs.update(_FORCED_KWARGS)
            if "robots" not in kwargs:
                raise ValueError("option 'env_args': env_kwargs has no 'robots' entry")
            if reward_shaping is not None:
                kwargs["reward_shaping"] = bool(reward_shaping)
        else:
            kwargs = default_env_kwargs(task, reward_shaping=bool(reward_shaping))
        if horizon is None:
            horizon = kwargs.get("horizon", DEFAULT_HORIZONS.get(task))
            if horizon is None:
                raise ValueError(f"option 'horizon': no default for robosuite task {task!r}; pass horizon=<steps>")
        if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 1:
            raise ValueError(f"option 'horizon': expected a positive int, got {horizon!r}")
        kwargs["horizon"] = int(horizon)
        if not isinstance(terminate_on_success, (bool, np.bool_)):
            raise ValueError(f"option 'terminate_on_success': expected a bool, got {terminate_on_success!r}")

        self._rs = np.random.RandomState(seed)
        try:
            with self._own_global_rng():
                self.rs_env = robosuite.make(task, **kwargs)
        except TypeError as e:
            raise ValueError(f"robosuite task {task!r} rejected its kwargs ({e}); check 'env_args'") from e

        # Like robomimic's EnvRobosuite: make joint-position and eef-velocity observables active, so the recorded
        # key set matches robomimic's datasets.
        for name in self.rs_env.observation_names:
            if "joint_pos" in name or "eef_vel" in name:
                self.rs_env.modify_observable(observable_name=name, attribute="active", modifier=True)

        self.task = task
        self.horizon = int(horizon)
        self.terminate_on_success = bool(terminate_on_success)
        self.error_count = 0
        self.env_args: dict[str, Any] = {
            "env_name": task,
            "type": ROBOSUITE_ENV_TYPE,
            "env_version": robosuite.__version__,
            "env_kwargs": copy.deepcopy(kwargs),
        }
        self._t = 0
        self._needs_rebuild = False

        low, high = (np.asarray(b, dtype=np.float64) for b in self.rs_env.action_spec)
        self._act_low, self._act_high = low, high
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=low.shape, dtype=np.float32)

        with self._own_global_rng():
            self.obs_dict = self._observations(self.rs_env.reset())
        keys = list(DEFAULT_OBS_KEYS if obs_keys is None else obs_keys)
        if isinstance(obs_keys, (str, bytes)) or not keys or not all(isinstance(k, str) for k in keys):
            raise ValueError(f"option 'obs_keys': expected a non-empty list of key names, got {obs_keys!r}")
        available = self.available_obs_keys()
        missing = [k for k in keys if k not in available]
        if missing:
            raise ValueError(
                f"option 'obs_keys': {missing} not produced by robosuite task {task!r}; available low-dim keys: "
                f"{available}"
            )
        self.obs_keys: tuple[str, ...] = tuple(keys)
        self.obs_dims: tuple[int, ...] = tuple(int(np.asarray(self.obs_dict[k]).size) for k in keys)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(sum(self.obs_dims),), dtype=np.float32)
        self._last_obs = self.flatten_obs(self.obs_dict)

    # ----------------------------------------------------------------------------------------------- helpers
    @property
    def sim(self) -> Any:
        """The robosuite ``MjSim`` (``sim.get_state()``, ``sim.set_state_from_flattened``, ``sim.forward``)."""
        return self.rs_env.sim

    def available_obs_keys(self) -> list[str]:
        """Low-dim keys this env produces: every ``robot0_*`` key except ``robot0_proprio-state``, plus ``object``
        and the task's per-object keys (e.g. ``cube_pos``)."""
        return sorted(
            k for k, v in self.obs_dict.items() if not k.endswith("-state") and np.asarray(v).ndim <= 1
        )

    @staticmethod
    def _observations(raw: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """robosuite's obs dict with ``object-state`` also available as robomimic's ``object``."""
        obs = {k: np.asarray(v) for k, v in raw.items()}
        if "object-state" in obs:
            obs["object"] = obs["object-state"]
        return obs

    def flatten_obs(self, obs_dict: Mapping[str, Any]) -> np.ndarray:
        """Concatenate ``obs_keys`` of a robosuite/robomimic obs dict -> ``float32[obs_dim]``."""
        return np.concatenate([np.asarray(obs_dict[k], dtype=np.float64).ravel() for k in self.obs_keys]).astype(
            np.float32
        )

    def current_observation(self) -> dict[str, np.ndarray]:
        """Recompute the obs dict from the current simulator state (after ``sim.set_state_from_flattened``
        and ``sim.forward()``), as robomimic's dataset_states_to_obs does."""
        return self._observations(self.rs_env._get_observations(force_update=True))

    def check_success(self) -> bool:
        """The task's own success test at the current simulator state."""
        return bool(self.rs_env._check_success())

    @contextlib.contextmanager
    def _own_global_rng(self) -> Iterator[None]:
        # robosuite samples from np.random's global state: lend it this env's state for the duration.
        saved = np.random.get_state()
        np.random.set_state(self._rs.get_state())
        try:
            yield
        finally:
            self._rs.set_state(np.random.get_state())
            np.random.set_state(saved)

    def _bad_qacc_count(self) -> int:
        # MuJoCo resets the simulation (with only a warning) when accelerations blow up; count those events.
        import mujoco

        return int(self.sim.data._data.warning[mujoco.mjtWarning.mjWARN_BADQACC].number)

    # ----------------------------------------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode. ``seed`` fixes this and (through the env's own generator) all later placements.

        Returns ``(obs float32[obs_dim], info)`` with ``info["success"]`` (False at a fresh placement).
        """
        super().reset(seed=seed)
        self._rs = np.random.RandomState(int(self.np_random.integers(2**32)))
        rebuild = self._needs_rebuild
        with self._own_global_rng():
            # After a simulator failure the model data may be corrupt: rebuild it from the MJCF once.
            self.rs_env.hard_reset = rebuild
            try:
                raw = self.rs_env.reset()
            finally:
                self.rs_env.hard_reset = False
        self._needs_rebuild = False
        self._t = 0
        self.obs_dict = self._observations(raw)
        self._last_obs = self.flatten_obs(self.obs_dict)
        return self._last_obs.copy(), {"success": self.check_success()}

    def reload_model(self) -> str:
        """Rebuild the simulator from its own MJCF text and restore the current state, as robosuite's
        ``DataCollectionWrapper`` does after every reset and robomimic's ``reset_to`` before a playback.

        robosuite's controllers keep state of their own beside the simulator's (the gripper's rate-limited
        command, references cached at the last update), so two runs of the same actions from the same simulator
        state agree only if both start from the same rebuild. An episode recorded from here replays exactly from
        its stored ``model_file`` and first state (robomimic's ``playback_dataset.py --use-actions``).

        Returns the MJCF text the model was rebuilt from: the ``model_file`` a recording stores.
        """
        xml = self.sim.model.get_xml()
        state = self.sim.get_state().flatten()
        with self._own_global_rng():
            self.rs_env.reset_from_xml_string(self.rs_env.edit_model_xml(xml))
        self.sim.reset()
        self.sim.set_state_from_flattened(state)
        self.sim.forward()
        self.obs_dict = self.current_observation()
        self._last_obs = self.flatten_obs(self.obs_dict)
        return xml

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply ``action`` (``[act_dim]`` in [-1, 1]; clipped) for one control step (1/20 s).

        Returns ``(obs, reward, terminated, truncated, info)``; ``info["success"]`` always. A simulator failure
        ends the episode with ``truncated=True``, reward 0, the last valid observation and ``info["env_error"]``.
        """
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action: expected shape {self.action_space.shape}, got {a.shape}")
        a = np.clip(a, -1.0, 1.0)
        scaled = self._act_low + (a + 1.0) * 0.5 * (self._act_high - self._act_low)
        self._t += 1
        bad_before = self._bad_qacc_count()
        try:
            with self._own_global_rng():
                self.rs_env.step(scaled)
                # robosuite's lite physics leaves positions one substep behind the state it returns; recompute them
                # so the observation, reward and success are functions of the simulator state, which is what
                # robomimic's replay of stored `states` (set_state_from_flattened + forward) reproduces.
                self.sim.forward()
                raw = self.rs_env._get_observations(force_update=True)
                reward = self.rs_env.reward(scaled)
            obs_dict = self._observations(raw)
            obs = self.flatten_obs(obs_dict)
            problem = None
            if self._bad_qacc_count() > bad_before:
                problem = "MuJoCo unstable simulation (mjWARN_BADQACC): the simulator reset its state"
            elif not np.all(np.isfinite(obs)):
                problem = "non-finite observation"
        except Exception as e:  # noqa: BLE001 - only simulator failures are absorbed, see _is_sim_error
            if not _is_sim_error(e):
                raise
            problem = f"{type(e).__name__}: {e}"
        if problem is not None:
            self.error_count += 1
            self._needs_rebuild = True
            info = {"success": False, "env_error": problem}
            return self._last_obs.copy(), 0.0, False, True, info

        success = self.check_success()
        self.obs_dict = obs_dict
        self._last_obs = obs
        terminated = success and self.terminate_on_success
        truncated = (not terminated) and self._t >= self.horizon
        return obs.copy(), float(reward), bool(terminated), bool(truncated), {"success": success}

    def close(self) -> None:
        self.rs_env.close()
