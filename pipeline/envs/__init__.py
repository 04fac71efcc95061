"""Environments: Gymnasium MuJoCo tasks and robosuite manipulation tasks behind one ``make_env``.

See :func:`make_env` for ids and options, :class:`RobosuiteEnv` for the manipulation wrapper and
:mod:`pipeline.envs.scripted` for scripted demonstrators.
"""

from pipeline.envs.factory import EnvCopy, ObsSpec, get_obs_spec, make_env, make_vector_env
from pipeline.envs.robosuite_env import (
    DEFAULT_HORIZONS,
    DEFAULT_OBS_KEYS,
    ROBOSUITE_ENV_TYPE,
    RobosuiteEnv,
    parse_env_args,
)
from pipeline.envs.scripted import SCRIPTED_POLICIES, ScriptedPolicy, make_scripted_policy

__all__ = [
    "DEFAULT_HORIZONS",
    "DEFAULT_OBS_KEYS",
    "EnvCopy",
    "ROBOSUITE_ENV_TYPE",
    "SCRIPTED_POLICIES",
    "ObsSpec",
    "RobosuiteEnv",
    "ScriptedPolicy",
    "get_obs_spec",
    "make_env",
    "make_scripted_policy",
    "make_vector_env",
    "parse_env_args",
]
