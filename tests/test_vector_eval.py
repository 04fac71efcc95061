"""Evaluation on vector envs: per-episode seeds independent of the number of copies, chunks, success, bad input."""

from __future__ import annotations

import gymnasium as gym
import pytest
import torch

from pipeline.config import ConfigError, CriticConfig, PolicyConfig, SACConfig, load_config
from pipeline.envs import make_env, make_vector_env
from pipeline.evaluation import evaluate
from pipeline.sac import SACAgent

SCALARS = ("return_mean", "return_std", "length_mean")


def _agent(env: gym.Env | gym.vector.VectorEnv, chunk: int = 1, kind: str = "flow_g") -> SACAgent:
    obs_space = getattr(env, "single_observation_space", env.observation_space)
    act_space = getattr(env, "single_action_space", env.action_space)
    torch.manual_seed(0)
    return SACAgent(obs_space.shape[0], act_space.shape[0] * chunk,
                    PolicyConfig(kind=kind, hidden=16, d_model=8, n_heads=2, n_layers=1, steps=2),
                    CriticConfig(hidden=16), SACConfig(chunk=chunk))


@pytest.mark.parametrize("episodes", [5, 2])  # more episodes than copies (copies reused), fewer (copies idle)
def test_deterministic_results_do_not_depend_on_the_number_of_copies(episodes: int) -> None:
    # Pendulum-v1 truncates at 200 steps: 5 episodes of a fixed length, reset from seeds 7..11 whichever copy runs them
    single = make_env("Pendulum-v1")
    agent = _agent(single)
    base = evaluate(agent, single, episodes, seed=7, deterministic=True)
    for num_envs, mode in [(2, "sync"), (3, "async")]:
        envs = make_vector_env("Pendulum-v1", num_envs, mode)
        try:
            result = evaluate(agent, envs, episodes, seed=7, deterministic=True)
        finally:
            envs.close()
        assert result["episodes"] == episodes and result["length_mean"] == 200.0
        for key in SCALARS:  # equal up to the float rounding of batched (vs one-row) policy calls
            assert result[key] == pytest.approx(base[key], rel=1e-5, abs=1e-5), (num_envs, mode, key)
    # another seed gives other episodes: the seeds reach the copies
    other = evaluate(agent, single, episodes, seed=8, deterministic=True)
    assert other["return_mean"] != pytest.approx(base["return_mean"], rel=1e-3)


def test_stochastic_evaluation_runs_on_copies_and_differs_from_deterministic() -> None:
    envs = make_vector_env("Pendulum-v1", 2, "sync")
    agent = _agent(envs, kind="flow_t")
    det = evaluate(agent, envs, 2, seed=0, deterministic=True)
    sto = evaluate(agent, envs, 2, seed=0, deterministic=False)
    assert det["mode"] == "deterministic" and sto["mode"] == "stochastic"
    assert sto["return_mean"] != det["return_mean"]


def test_chunked_agent_on_robosuite_copies_reports_success() -> None:
    # a chunked agent decides H = 3 actions at a time; copies keep their own queues (episodes of 25 steps: 9 decisions)
    opts = {"horizon": 25}
    single = make_env("robosuite/Lift", **opts)
    agent = _agent(single, chunk=3)
    base = evaluate(agent, single, 3, seed=3, deterministic=True)
    envs = make_vector_env("robosuite/Lift", 2, "async", **opts)
    try:
        result = evaluate(agent, envs, 3, seed=3, deterministic=True)
    finally:
        envs.close()
    assert base["success_rate"] == result["success_rate"] == 0.0  # an untrained agent lifts nothing
    assert result["length_mean"] == base["length_mean"] == 25.0
    assert result["return_mean"] == pytest.approx(base["return_mean"], abs=1e-5)


def test_agent_is_put_back_in_training_mode() -> None:
    env = make_env("Pendulum-v1")
    agent = _agent(env)
    agent.train()
    evaluate(agent, env, 1, seed=0, deterministic=True)
    assert agent.training


@pytest.mark.parametrize(("num_envs", "mode", "match"), [
    (0, "sync", "num_envs: expected an integer >= 1, got 0"),
    (2, "threads", "vectorization mode: expected one of \\['sync', 'async'\\], got 'threads'"),
])
def test_make_vector_env_rejects_bad_arguments(num_envs: int, mode: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make_vector_env("Pendulum-v1", num_envs, mode)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_make_vector_env_names_a_bad_env_id_or_option(mode: str) -> None:
    with pytest.raises(ValueError, match="unknown environment id 'NoSuchEnv-v0'"):
        make_vector_env("NoSuchEnv-v0", 2, mode)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown option.*'horizn'"):
        make_vector_env("robosuite/Lift", 2, mode, horizn=10)  # type: ignore[arg-type]


@pytest.mark.parametrize(("key", "value", "match"), [
    ("evaluate.num_envs", 0, "'evaluate.num_envs' = 0 is out of range: expected >= 1"),
    ("evaluate.vectorization_mode", "threads", "'evaluate.vectorization_mode' = 'threads' is not allowed"),
])
def test_config_rejects_bad_vector_settings(key: str, value: object, match: str) -> None:
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=match):
        load_config("smoke", {section: {name: value}})
