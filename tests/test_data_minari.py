"""Minari: collection with DataCollector, local-only loading, Dict observations, action rescaling, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import gymnasium as gym
import minari
import numpy as np
import pytest
from conftest import load_or_dataset_error, flip_bits, mutate_hdf5
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from minari.data_collector.episode_buffer import EpisodeBuffer

from pipeline.collection.minari import collect_minari
from pipeline.data import DatasetError, load_dataset

# Datasets built here from buffers leave Minari's optional descriptive fields empty on purpose.
pytestmark = pytest.mark.filterwarnings("ignore:.*is set to None:UserWarning",
                                        "ignore:env_spec is None:UserWarning")


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        yield root


@pytest.fixture(scope="module")
def hopper_id(minari_root: Path) -> str:
    """Six short Hopper-v5 episodes from a random policy, with reference scores; some terminate, some time out."""
    dataset_id = "sacflow-test/hopper/random-v0"
    collect_minari("Hopper-v5", dataset_id, policy=None, n_episodes=6, seed=3, max_episode_steps=20,
                   ref_min_score=-20.0, ref_max_score=3000.0, code_permalink="tests")
    return dataset_id


def test_collect_then_load_matches_minari_episodes(hopper_id: str, minari_root: Path) -> None:
    ds = load_dataset("minari", hopper_id)
    episodes = list(minari.load_dataset(hopper_id).iterate_episodes())
    assert len(episodes) == 6 and ds.num_episodes == 6
    assert (ds.obs_dim, ds.act_dim) == (11, 3)
    lengths = [len(ep) for ep in episodes]
    assert ds.episode_ends.tolist() == np.cumsum(lengths).tolist()
    for k, ep in enumerate(episodes):
        lo = int(ds.episode_starts()[k])
        sl = slice(lo, lo + len(ep))
        # T + 1 stored observations: s = obs[:-1], s' = obs[1:].
        np.testing.assert_allclose(ds.observations[sl].numpy(), ep.observations[:-1], rtol=1e-6)
        np.testing.assert_allclose(ds.next_observations[sl].numpy(), ep.observations[1:], rtol=1e-6)
        np.testing.assert_allclose(ds.actions[sl].numpy(), ep.actions, rtol=1e-6)
        np.testing.assert_array_equal(ds.terminals[sl].numpy(), ep.terminations.astype(np.float32))
        np.testing.assert_array_equal(ds.timeouts[sl].numpy(), ep.truncations.astype(np.float32))
        assert bool(ep.terminations[-1]) or bool(ep.truncations[-1])
    assert 0 < int(ds.terminals.sum()) < 6 and 0 < int(ds.timeouts.sum()) < 6
    assert ds.meta["env_id"] == "Hopper-v5" and ds.meta["dataset_id"] == hopper_id
    assert json.loads(ds.meta["eval_env_spec"])["id"] == "Hopper-v5"
    assert (ds.meta["ref_min_score"], ds.meta["ref_max_score"]) == (-20.0, 3000.0)
    returns = ds.episode_returns()
    np.testing.assert_allclose(returns.numpy(), [ep.rewards.sum() for ep in episodes], rtol=1e-5)
    torch.testing.assert_close(ds.normalized_score(returns), (returns.double() + 20.0) / 3020.0)
    # The same dataset through its directory path instead of its id.
    by_path = load_dataset("minari", minari_root / hopper_id)
    assert torch.equal(by_path.observations, ds.observations)


def test_collect_is_reproducible_and_refuses_to_overwrite(hopper_id: str) -> None:
    with pytest.raises(FileExistsError, match="already exists"):
        collect_minari("Hopper-v5", hopper_id, n_episodes=1, seed=3, max_episode_steps=20)
    other = "sacflow-test/hopper/random-v1"
    collect_minari("Hopper-v5", other, policy=None, n_episodes=6, seed=3, max_episode_steps=20,
                   code_permalink="tests")
    a, b = load_dataset("minari", hopper_id), load_dataset("minari", other)
    assert torch.equal(a.observations, b.observations) and torch.equal(a.actions, b.actions)
    assert b.meta["ref_min_score"] is None
    collect_minari("Hopper-v5", other, policy=lambda obs: np.full(3, 0.5), n_episodes=1, seed=0,
                   max_episode_steps=10, overwrite=True, code_permalink="tests")
    assert bool((load_dataset("minari", other).actions == 0.5).all())


def test_loads_when_environment_cannot_be_recovered(hopper_id: str, minari_root: Path) -> None:
    target = "sacflow-test/hopper/orphan-v0"
    shutil.copytree(minari_root / hopper_id, minari_root / target)
    meta_path = minari_root / target / "data" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["dataset_id"] = target
    for key in ("env_spec", "eval_env_spec"):
        spec = json.loads(meta[key])
        spec.update(id="NoSuchEnv-v0", entry_point="no_such_module:NoSuchEnv")
        meta[key] = json.dumps(spec)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(Exception):  # Minari itself cannot rebuild this env ...
        minari.load_dataset(target).recover_environment()
    ds = load_dataset("minari", target)  # ... but the data loads
    assert ds.meta["env_id"] == "NoSuchEnv-v0" and len(ds) == len(load_dataset("minari", hopper_id))


def _buffers(n_eps: int, obs_space: gym.spaces.Space, act_low: float, seed: int = 0) -> list[EpisodeBuffer]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n_eps):
        t = 3 + k
        if isinstance(obs_space, gym.spaces.Dict):
            obs: Any = {key: rng.normal(size=(t + 1, *sp.shape)).astype(np.float32)
                        for key, sp in obs_space.spaces.items()}
        else:
            obs = rng.normal(size=(t + 1, *obs_space.shape)).astype(np.float32)
        out.append(EpisodeBuffer(
            id=k, observations=obs, actions=rng.uniform(act_low, -act_low, size=(t, 2)).astype(np.float32),
            rewards=list(rng.normal(size=t)), terminations=[False] * (t - 1) + [k == 0],
            truncations=[False] * (t - 1) + [k == 1],
        ))
    return out


DICT_SPACE = gym.spaces.Dict({"b": gym.spaces.Box(-np.inf, np.inf, (2,)), "a": gym.spaces.Box(-np.inf, np.inf, (3,)),
                              "c": gym.spaces.Box(-np.inf, np.inf, (2, 2))})


@pytest.fixture(scope="module")
def dict_id(minari_root: Path) -> str:
    dataset_id = "sacflow-test/dict-v0"
    minari.create_dataset_from_buffers(
        dataset_id, _buffers(3, DICT_SPACE, -0.4), observation_space=DICT_SPACE,
        action_space=gym.spaces.Box(-0.4, 0.4, (2,)), code_permalink="tests")
    return dataset_id


def test_dict_observations_flatten_in_sorted_or_given_key_order(dict_id: str) -> None:
    episodes = list(minari.load_dataset(dict_id).iterate_episodes())
    ds = load_dataset("minari", dict_id)
    assert ds.meta["obs_keys"] == ["a", "b", "c"] and ds.obs_dim == 9
    ep = episodes[0]
    expected = np.concatenate([ep.observations["a"], ep.observations["b"], ep.observations["c"].reshape(-1, 4)], 1)
    np.testing.assert_allclose(ds.observations[: len(ep)].numpy(), expected[:-1], rtol=1e-6)
    custom = load_dataset("minari", dict_id, obs_keys=["c", "a"])
    assert custom.meta["obs_keys"] == ["c", "a"] and custom.obs_dim == 7
    np.testing.assert_allclose(custom.next_observations[: len(ep), 4:].numpy(), ep.observations["a"][1:], rtol=1e-6)
    with pytest.raises(DatasetError, match=r"\[obs_keys\]: keys \['z'\] are not in the observation space"):
        load_dataset("minari", dict_id, obs_keys=["a", "z"])
    with pytest.raises(DatasetError, match=r"\[obs_keys\]: expected a non-empty list"):
        load_dataset("minari", dict_id, obs_keys=[])


def test_actions_are_rescaled_from_box_bounds_and_unflagged_end_is_timeout(dict_id: str) -> None:
    episodes = list(minari.load_dataset(dict_id).iterate_episodes())
    ds = load_dataset("minari", dict_id)
    raw = np.concatenate([ep.actions for ep in episodes])
    np.testing.assert_allclose(ds.actions.numpy(), raw / 0.4, rtol=1e-5, atol=1e-6)
    assert ds.meta["action_low"] == pytest.approx([-0.4, -0.4]) and ds.meta["action_high"] == pytest.approx([0.4, 0.4])
    # Episode 0 terminates, episode 1 is truncated, episode 2 has no flag: its end is marked as a timeout.
    assert ds.terminals.nonzero().flatten().tolist() == [2]
    assert ds.timeouts.nonzero().flatten().tolist() == [6, 11]


def test_actions_outside_unbounded_space_are_rejected(minari_root: Path) -> None:
    dataset_id = "sacflow-test/wild-actions-v0"
    space = gym.spaces.Box(-np.inf, np.inf, (4,))
    minari.create_dataset_from_buffers(dataset_id, _buffers(2, space, -3.0), observation_space=space,
                                       action_space=gym.spaces.Box(-np.inf, np.inf, (2,)), code_permalink="tests")
    with pytest.raises(DatasetError, match=r"\[episode_0/actions\]: expected actions in \[-1, 1\]"):
        load_dataset("minari", dataset_id)


def test_unknown_id_and_bad_paths_never_touch_the_network(minari_root: Path, hopper_id: str,
                                                          tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"mujoco/hopper/expert-v0: unknown Minari dataset id.*"
                                           r"MINARI_DATASETS_PATH.*nothing is downloaded"):
        load_dataset("minari", "mujoco/hopper/expert-v0")
    with pytest.raises(DatasetError, match=r"sacflow-test/hopper/randm-v0: unknown.*sacflow-test/hopper/random-v0"):
        load_dataset("minari", "sacflow-test/hopper/randm-v0")
    with pytest.raises(DatasetError, match=r"\[data/metadata.json\]: expected a Minari dataset directory"):
        load_dataset("minari", tmp_path)


@pytest.mark.parametrize("damage", ["metadata_json", "metadata_space", "truncate_data", "delete_data"])
def test_damaged_dataset_raises_dataset_error(minari_root: Path, hopper_id: str, damage: str) -> None:
    target = f"sacflow-test/hopper/damaged-{damage.replace('_', '')}-v0"
    shutil.copytree(minari_root / hopper_id, minari_root / target)
    data = minari_root / target / "data"
    if damage == "metadata_json":
        (data / "metadata.json").write_text("{not json")
    elif damage == "metadata_space":
        meta = json.loads((data / "metadata.json").read_text())
        meta["action_space"] = '{"type": "Discrete", "n": 3}'
        (data / "metadata.json").write_text(json.dumps(meta))
    elif damage == "truncate_data":
        raw = (data / "main_data.hdf5").read_bytes()
        (data / "main_data.hdf5").write_bytes(raw[: len(raw) // 2])
    else:
        (data / "main_data.hdf5").unlink()
    with pytest.raises(DatasetError, match=str(data)):
        load_dataset("minari", target)


# ------------------------------------------------------------------------------- fuzz
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), kind=st.sampled_from(["flip_data", "flip_meta", "truncate", "delete"]))
def test_fuzz_mutated_datasets_load_or_raise_dataset_error(minari_root: Path, hopper_id: str,
                                                           data: st.DataObject, kind: str) -> None:

    target = minari_root / "sacflow-fuzz" / "hopper-v0"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(minari_root / hopper_id, target)
    main, meta = target / "data" / "main_data.hdf5", target / "data" / "metadata.json"
    if kind in ("flip_data", "flip_meta"):
        flip_bits(main if kind == "flip_data" else meta, data)
    else:
        mutate_hdf5(main, data, kind)
    load_or_dataset_error("minari", target)
