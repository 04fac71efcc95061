"""``make_env``: one entry point for Gymnasium ids (OGBench's included) and ``robosuite/<Task>`` ids.

Every env it returns has a float32 ``Box`` observation space and a ``Box`` action space of [-1, 1]; robosuite
and OGBench envs also report ``info["success"]``. Gymnasium envs whose action bounds differ (e.g. Pendulum's [-2, 2]) are
rescaled so the agent always acts in [-1, 1].
"""

from __future__ import annotations

import functools
import multiprocessing
import typing
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np

from pipeline.config import VectorizationMode
from pipeline.envs.ogbench_env import is_ogbench_id, register_ogbench
from pipeline.envs.robosuite_env import DEFAULT_HORIZONS, ROBOSUITE_OPTIONS, RobosuiteEnv, robosuite_task_names

ROBOSUITE_PREFIX = "robosuite/"
_ENTRY_POINT = "pipeline.envs.robosuite_env:RobosuiteEnv"


def _register_robosuite(task: str) -> str:
    """Register ``robosuite/<task>`` with Gymnasium (once) and return the id."""
    env_id = ROBOSUITE_PREFIX + task
    if env_id not in gym.registry:
        # No TimeLimit wrapper: the env counts its own horizon so truncation and success stay in one place.
        gym.register(
            id=env_id,
            entry_point=_ENTRY_POINT,
            kwargs={"task": task},
            max_episode_steps=None,
            disable_env_checker=True,
        )
    return env_id


for _task in DEFAULT_HORIZONS:
    _register_robosuite(_task)


@dataclass(frozen=True)
class ObsSpec:
    """Layout of a flat observation: ``keys[i]`` occupies ``dims[i]`` consecutive entries, in order."""

    keys: tuple[str, ...]
    dims: tuple[int, ...]

    @property
    def dim(self) -> int:
        """Total flat observation size."""
        return int(sum(self.dims))

    def slices(self) -> dict[str, slice]:
        """Slice of the flat observation belonging to each key."""
        out, start = {}, 0
        for k, d in zip(self.keys, self.dims):
            out[k] = slice(start, start + d)
            start += d
        return out


def get_obs_spec(env: gym.Env) -> ObsSpec:
    """Observation layout of an env made by :func:`make_env`.

    robosuite envs report their ordered low-dim keys; a Gymnasium env has one key, ``"observation"``.
    """
    inner = env.unwrapped
    if isinstance(inner, RobosuiteEnv):
        return ObsSpec(inner.obs_keys, inner.obs_dims)
    shape = env.observation_space.shape
    if shape is None:
        raise ValueError(f"env {env}: observation space {env.observation_space} has no shape")
    return ObsSpec(("observation",), (int(np.prod(shape)),))


class Float32Observation(gym.ObservationWrapper):
    """Cast a Box observation (and its bounds) to float32."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        self.observation_space = gym.spaces.Box(
            space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32
        )

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.asarray(observation, dtype=np.float32)


def _check_box(space: gym.Space, what: str, env_id: str) -> gym.spaces.Box:
    if not isinstance(space, gym.spaces.Box):
        raise ValueError(f"env {env_id!r}: {what} space must be a continuous Box, got {space}")
    return space


def _make_gymnasium(env_id: str, options: dict[str, Any]) -> gym.Env:
    if is_ogbench_id(env_id):
        register_ogbench()
    try:
        env = gym.make(env_id, **options)
    except gym.error.Error as e:
        raise ValueError(f"unknown environment id {env_id!r}: {e}") from e
    except TypeError as e:
        raise ValueError(f"env {env_id!r}: bad option among {sorted(options)}: {e}") from e
    obs_space = _check_box(env.observation_space, "observation", env_id)
    act_space = _check_box(env.action_space, "action", env_id)
    low, high = act_space.low, act_space.high
    if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
        raise ValueError(f"env {env_id!r}: action bounds must be finite to rescale to [-1, 1], got {act_space}")
    if not (np.all(low == -1.0) and np.all(high == 1.0)):
        ones = np.ones(act_space.shape, dtype=act_space.dtype)
        env = gym.wrappers.RescaleAction(env, min_action=-ones, max_action=ones)
    if obs_space.dtype != np.float32:
        env = Float32Observation(env)
    if env.action_space.dtype != np.float32:
        space = env.action_space
        env = gym.wrappers.TransformAction(
            env, lambda a: a, gym.spaces.Box(-1.0, 1.0, shape=space.shape, dtype=np.float32)
        )
    return env


def make_env(env_id: str, seed: int | None = None, **options: Any) -> gym.Env:
    """Build an environment by id.

    Args:
        env_id: a Gymnasium id (``"Hopper-v5"``, ``"Pendulum-v1"``), an OGBench id
            (``"cube-double-singletask-task2-v0"``: ``info["success"]``, see :mod:`pipeline.envs.ogbench_env`) or
            ``"robosuite/<Task>"`` (``robosuite/Lift``, ``robosuite/PickPlaceCan``, ``robosuite/NutAssemblySquare``,
            any robosuite task).
        seed: if given, the env is reset once with it and its spaces are seeded, so every later ``reset()``
            without a seed continues one reproducible stream.
        options: Gymnasium ids: keyword arguments of the env. robosuite ids: ``obs_keys``, ``horizon``,
            ``env_args``, ``terminate_on_success``, ``reward_shaping`` (see :class:`RobosuiteEnv`).

    Returns:
        The env: observations ``float32[obs_dim]``, actions ``float32[act_dim]`` in [-1, 1]. robosuite envs are
        :class:`RobosuiteEnv` instances (with ``spec`` set) exposing ``obs_keys``, ``env_args``, ``error_count``.

    Raises:
        ValueError: unknown id, unknown or invalid option (named in the message).
    """
    if not isinstance(env_id, str) or not env_id:
        raise ValueError(f"env_id: expected a non-empty string, got {env_id!r}")
    if env_id.startswith(ROBOSUITE_PREFIX):
        task = env_id[len(ROBOSUITE_PREFIX) :]
        if task not in robosuite_task_names():
            raise ValueError(f"unknown environment id {env_id!r}: robosuite tasks are {robosuite_task_names()}")
        unknown = sorted(set(options) - ROBOSUITE_OPTIONS)
        if unknown:
            raise ValueError(f"env {env_id!r}: unknown option(s) {unknown}; allowed: {sorted(ROBOSUITE_OPTIONS)}")
        env = gym.make(_register_robosuite(task), seed=seed, **options).unwrapped
    else:
        env = _make_gymnasium(env_id, options)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
        env.observation_space.seed(seed)
    return env


VECTORIZATION_MODES: tuple[str, ...] = typing.get_args(VectorizationMode)

# How an episode began, for EnvCopy.replay: ("seed", s) for reset(seed=s), or ("rng", state) for reset() with the
# env generator's bit-generator state set to ``state`` first.
EpisodeStart = tuple[str, Any]


class EnvCopy(gym.Wrapper):
    """Copy ``index`` of a vector env made by :func:`make_vector_env`; it can replay an episode.

    A vector env's ``call`` sends the same arguments to every copy, so :meth:`replay` takes every copy's plan and
    plays its own.
    """

    def __init__(self, env: gym.Env, index: int) -> None:
        super().__init__(env)
        self.index = index

    def replay(self, plans: list[tuple[EpisodeStart, list[np.ndarray]] | None]) -> np.ndarray | None:
        """Reset as the episode began and step its actions; returns the observation reached (``None`` when this
        copy has no plan). Deterministic envs end exactly where the original episode was after those actions."""
        plan = plans[self.index]
        if plan is None:
            return None
        (how, value), actions = plan
        if how == "seed":
            obs, _ = self.env.reset(seed=value)
        elif how == "rng":
            self.env.np_random.bit_generator.state = value
            obs, _ = self.env.reset()
        else:
            raise ValueError(f"episode start: expected ('seed', s) or ('rng', state), got {how!r}")
        for action in actions:
            obs, *_ = self.env.step(action)
        return obs


def _make_copy(index: int, env_id: str, seed: int | None = None, **options: Any) -> EnvCopy:
    return EnvCopy(make_env(env_id, seed=seed, **options), index)


def make_vector_env(env_id: str, num_envs: int, mode: VectorizationMode = "async", seed: int | None = None,
                    **options: Any) -> gym.vector.VectorEnv:
    """``num_envs`` copies of :func:`make_env` behind Gymnasium's vector API, with autoreset disabled.

    ``mode="async"`` steps each copy in its own worker process (parallel on several cores); ``"sync"`` steps them in
    turn in this process (one batched policy call per step, no parallel physics). Autoreset is off so the caller
    decides which copy resets, and with which seed (``reset(seed=[...], options={"reset_mask": mask})``); a copy
    whose episode ended must be reset before it is stepped again. ``seed``: copy i is made with
    ``make_env(seed=seed + i)`` (its first reset and its spaces seeded), as ``reset(seed=seed)`` seeds copy i.
    Each copy is an :class:`EnvCopy` (``env.call("replay", plans)`` replays episodes for a resume).

    Raises:
        ValueError: ``num_envs`` < 1, an unknown ``mode``, or anything :func:`make_env` rejects.
    """
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ValueError(f"num_envs: expected an integer >= 1, got {num_envs!r}")
    if mode not in VECTORIZATION_MODES:
        raise ValueError(f"vectorization mode: expected one of {list(VECTORIZATION_MODES)}, got {mode!r}")
    disabled = gym.vector.AutoresetMode.DISABLED
    fns = [functools.partial(_make_copy, i, env_id, seed=None if seed is None else seed + i, **options)
           for i in range(num_envs)]
    if mode == "sync":
        return gym.vector.SyncVectorEnv(fns, autoreset_mode=disabled)
    # Gymnasium builds the first copy in this process to read the spaces, so a bad id or option fails here with
    # make_env's message. fork where the platform has it: workers start in milliseconds with robosuite and MuJoCo
    # already imported (spawn re-imports them, seconds per worker); the workers never touch torch.
    context = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    return gym.vector.AsyncVectorEnv(fns, context=context, autoreset_mode=disabled)
