"""robomimic HDF5 reader: layout, demo order, obs keys, filter keys, derived next_obs, bad files, fuzz."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from conftest import load_or_dataset_error, mutate_hdf5
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.data import ROBOMIMIC_LOW_DIM_KEYS, DatasetError, TransitionDataset, load_dataset

KEY_DIMS = {"object": 10, "robot0_eef_pos": 3, "robot0_eef_quat": 4, "robot0_gripper_qpos": 2,
            "robot0_joint_pos": 7}
ENV_ARGS = {"env_name": "Lift", "type": 1, "env_kwargs": {"robots": ["Panda"], "control_freq": 20}}


def make_demo(t: int, seed: int, done_at_end: bool = True, keys: dict[str, int] = KEY_DIMS) -> dict[str, Any]:
    """One demo as robomimic stores it: obs[t+1] = next_obs[t] inside the demo, a 0/1 reward, dones."""
    rng = np.random.default_rng(seed)
    states = {k: rng.normal(size=(t + 1, d)) for k, d in keys.items()}
    dones = np.zeros(t, dtype=np.int64)
    dones[-1] = int(done_at_end)
    return {
        "obs": {k: v[:-1] for k, v in states.items()},
        "next_obs": {k: v[1:] for k, v in states.items()},
        "actions": rng.uniform(-1, 1, size=(t, 7)),
        "rewards": dones.astype(np.float64),
        "dones": dones,
        "states": rng.normal(size=(t, 32)),
    }


def write_robomimic(path: Path, demos: dict[str, dict[str, Any]], masks: dict[str, list[str]] | None = None,
                    env_args: dict[str, Any] | None = ENV_ARGS, image_key: bool = False) -> Path:
    """Write demos in the layout documented by robomimic (docs/datasets/overview.md)."""
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        total = 0
        for name, demo in demos.items():
            g = data.create_group(name)
            for part in ("obs", "next_obs"):
                for k, v in demo.get(part, {}).items():
                    g.create_dataset(f"{part}/{k}", data=v)
                if image_key and part in demo:
                    g.create_dataset(f"{part}/agentview_image",
                                     data=np.zeros((len(demo["actions"]), 8, 8, 3), dtype=np.uint8))
            for k in ("actions", "rewards", "dones", "states"):
                if k in demo:
                    g.create_dataset(k, data=demo[k])
            g.attrs["num_samples"] = len(demo["actions"])
            total += len(demo["actions"])
        data.attrs["total"] = total
        if env_args is not None:
            data.attrs["env_args"] = json.dumps(env_args, indent=4)
        for key, names in (masks or {}).items():
            f[f"mask/{key}"] = np.array(names, dtype="S")
    return path


def standard_file(path: Path, **kwargs: Any) -> tuple[Path, dict[str, dict[str, Any]]]:
    # Inserted out of order, with demo_10 to check numeric (not lexicographic) ordering.
    demos = {"demo_10": make_demo(4, 10), "demo_2": make_demo(5, 2, done_at_end=False), "demo_0": make_demo(3, 0)}
    masks = {"train": ["demo_0", "demo_10"], "valid": ["demo_2"]}
    return write_robomimic(path, demos, masks, **kwargs), demos


def flat(demo: dict[str, Any], part: str, keys: list[str]) -> np.ndarray:
    return np.concatenate([demo[part][k].reshape(len(demo["actions"]), -1) for k in keys], axis=1)


def test_reads_demos_in_numeric_order_with_default_low_dim_keys(tmp_path: Path) -> None:
    path, demos = standard_file(tmp_path / "lift.hdf5", image_key=True)
    ds = load_dataset("robomimic", path)
    keys = list(ROBOMIMIC_LOW_DIM_KEYS)
    order = ["demo_0", "demo_2", "demo_10"]
    assert ds.meta["obs_keys"] == keys and ds.meta["demos"] == order
    assert ds.meta["env_args"] == ENV_ARGS and ds.meta["env_id"] == "Lift"
    assert (len(ds), ds.obs_dim, ds.act_dim) == (12, 19, 7)
    np.testing.assert_allclose(ds.observations.numpy(), np.concatenate([flat(demos[d], "obs", keys) for d in order]),
                               rtol=1e-6)
    np.testing.assert_allclose(ds.next_observations.numpy(),
                               np.concatenate([flat(demos[d], "next_obs", keys) for d in order]), rtol=1e-6)
    np.testing.assert_allclose(ds.actions.numpy(), np.concatenate([demos[d]["actions"] for d in order]), rtol=1e-6)
    assert ds.episode_ends.tolist() == [3, 8, 12]
    # terminals = dones; demo_2 ends without done, so its last step is a timeout.
    assert ds.terminals.nonzero().flatten().tolist() == [2, 11]
    assert ds.timeouts.nonzero().flatten().tolist() == [7]
    assert ds.meta["next_obs_derived"] == []


def test_dones_inside_a_demo_are_terminals_without_splitting_the_demo(tmp_path: Path) -> None:
    demo = make_demo(6, 0)
    demo["dones"][3:] = 1  # robomimic done_mode 2: done at every success state and at the end
    ds = load_dataset("robomimic", write_robomimic(tmp_path / "dm2.hdf5", {"demo_0": demo}))
    assert ds.terminals.tolist() == [0, 0, 0, 1, 1, 1] and ds.episode_ends.tolist() == [6]
    assert float(ds.timeouts.sum()) == 0


def test_obs_keys_order_and_filter_key(tmp_path: Path) -> None:
    path, demos = standard_file(tmp_path / "lift.hdf5")
    ds = load_dataset("robomimic", path, obs_keys=["robot0_eef_pos", "object"], filter_key="train")
    assert ds.meta["demos"] == ["demo_0", "demo_10"] and ds.meta["filter_key"] == "train"
    expected = np.concatenate([flat(demos[d], "obs", ["robot0_eef_pos", "object"]) for d in ("demo_0", "demo_10")])
    np.testing.assert_allclose(ds.observations.numpy(), expected, rtol=1e-6)
    assert ds.obs_dim == 13 and len(ds) == 7
    assert len(load_dataset("robomimic", path, filter_key="valid")) == 5


def test_default_keys_fall_back_to_all_low_dim_keys_sorted(tmp_path: Path) -> None:
    keys = {"robot0_eef_pos": 3, "cube_pos": 3, "robot0_joint_pos": 7}
    path = write_robomimic(tmp_path / "custom.hdf5", {"demo_0": make_demo(4, 0, keys=keys)}, image_key=True)
    assert load_dataset("robomimic", path).meta["obs_keys"] == ["cube_pos", "robot0_eef_pos", "robot0_joint_pos"]


def test_missing_next_obs_is_derived_from_shifted_obs(tmp_path: Path) -> None:
    demos = {"demo_0": make_demo(4, 0), "demo_1": make_demo(5, 1, done_at_end=False)}
    stripped = {name: {k: v for k, v in d.items() if k != "next_obs"} for name, d in demos.items()}
    ds = load_dataset("robomimic", write_robomimic(tmp_path / "nonext.hdf5", stripped))
    keys = list(ROBOMIMIC_LOW_DIM_KEYS)
    # demo_0 ends in done: all 4 steps kept; demo_1 does not: its last step has no next state and is dropped.
    assert len(ds) == 4 + 4 and ds.episode_ends.tolist() == [4, 8]
    assert ds.meta["next_obs_derived"] == ["demo_0", "demo_1"]
    np.testing.assert_allclose(ds.next_observations[:3].numpy(), flat(demos["demo_0"], "next_obs", keys)[:3],
                               rtol=1e-6)
    np.testing.assert_allclose(ds.next_observations[4:].numpy(), flat(demos["demo_1"], "next_obs", keys)[:4],
                               rtol=1e-6)
    assert ds.terminals.nonzero().flatten().tolist() == [3] and ds.timeouts.nonzero().flatten().tolist() == [7]


def test_artefact_round_trip_keeps_env_args(tmp_path: Path) -> None:
    path, _ = standard_file(tmp_path / "lift.hdf5")
    ds = load_dataset("robomimic", path)
    ds.save(tmp_path / "lift.pt")
    back = TransitionDataset.load(tmp_path / "lift.pt")
    assert back.meta["env_args"] == ENV_ARGS and torch.equal(back.observations, ds.observations)
    assert back.normalization is not None


# ------------------------------------------------------------------------------- bad input
def _damage(path: Path, how: str) -> None:
    with h5py.File(path, "a") as f:
        if how == "no_data":
            del f["data"]
        elif how == "no_env_args":
            del f["data"].attrs["env_args"]
        elif how == "bad_env_args":
            f["data"].attrs["env_args"] = "{not json"
        elif how == "no_actions":
            del f["data/demo_2/actions"]
        elif how == "no_obs_key":
            del f["data/demo_10/obs/object"]
        elif how == "short_rewards":
            del f["data/demo_2/rewards"]
            f["data/demo_2/rewards"] = np.zeros(4)
        elif how == "nan_obs":
            f["data/demo_0/obs/robot0_eef_pos"][1, 0] = np.nan
        elif how == "inf_next_obs":
            f["data/demo_0/next_obs/object"][2, 3] = np.inf
        elif how == "action_range":
            f["data/demo_10/actions"][2, 6] = -1.01
        elif how == "num_samples":
            f["data/demo_2"].attrs["num_samples"] = 9
        elif how == "obs_width":
            del f["data/demo_10/obs/robot0_eef_pos"]
            f["data/demo_10/obs/robot0_eef_pos"] = np.zeros((4, 5))
        elif how == "dones_values":
            f["data/demo_0/dones"][0] = 3
        elif how == "bad_mask_entry":
            del f["mask/train"]
            f["mask/train"] = np.array(["demo_0", "demo_99"], dtype="S")
        elif how == "no_demos":
            for name in list(f["data"].keys()):
                del f["data"][name]


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("no_data", r"\[data\]: missing"),
        ("no_env_args", r"\[data.attrs\['env_args'\]\]: missing.*JSON"),
        ("bad_env_args", r"\[data.attrs\['env_args'\]\]: expected a JSON string"),
        ("no_actions", r"\[data/demo_2/actions\]: missing"),
        ("no_obs_key", r"\[data/demo_10/obs/object\]: missing"),
        ("short_rewards", r"\[data/demo_2/rewards\]: expected length 5"),
        ("nan_obs", r"\[data/demo_0/obs/robot0_eef_pos\]: expected finite.*row 1"),
        ("inf_next_obs", r"\[data/demo_0/next_obs/object\]: expected finite.*row 2"),
        ("action_range", r"\[data/demo_10/actions\]: expected actions in \[-1, 1\].*row 2"),
        ("num_samples", r"\[data/demo_2.attrs\['num_samples'\]\]: expected 5"),
        ("obs_width", r"\[obs \[.*\]\]: expected the same size in every demo"),
        ("dones_values", r"\[data/demo_0/dones\]: expected 0/1"),
        ("no_demos", r"\[data\]: expected at least one demo"),
    ],
)
def test_bad_files_raise_dataset_error_naming_file_and_key(tmp_path: Path, how: str, match: str) -> None:
    path, _ = standard_file(tmp_path / "bad.hdf5")
    _damage(path, how)
    with pytest.raises(DatasetError, match=match) as info:
        load_dataset("robomimic", path)
    assert info.value.source == str(path)


def test_bad_filter_key_and_obs_keys(tmp_path: Path) -> None:
    path, _ = standard_file(tmp_path / "lift.hdf5", image_key=True)
    with pytest.raises(DatasetError, match=r"\[mask/test\]: missing; expected one of .*\['train', 'valid'\]"):
        load_dataset("robomimic", path, filter_key="test")
    _damage(path, "bad_mask_entry")
    with pytest.raises(DatasetError, match=r"\[mask/train\]: lists 'demo_99'"):
        load_dataset("robomimic", path, filter_key="train")
    with pytest.raises(DatasetError, match=r"\[data/demo_0/obs/robot0_eef_vel\]: missing; obs_keys asks for"):
        load_dataset("robomimic", path, obs_keys=["robot0_eef_pos", "robot0_eef_vel"])
    with pytest.raises(DatasetError, match=r"\[data/demo_0/obs/agentview_image\]: .*image observations"):
        load_dataset("robomimic", path, obs_keys=["agentview_image"])
    with pytest.raises(DatasetError, match=r"\[obs_keys\]: expected a non-empty list"):
        load_dataset("robomimic", path, obs_keys="object")
    with pytest.raises(DatasetError, match=r"\[obs_keys\]: expected distinct"):
        load_dataset("robomimic", path, obs_keys=["object", "object"])


def test_truncated_file(tmp_path: Path) -> None:
    path, _ = standard_file(tmp_path / "lift.hdf5")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.7)])
    with pytest.raises(DatasetError, match=r"lift.hdf5: expected a readable HDF5 file.*truncated or corrupt"):
        load_dataset("robomimic", path)


# ------------------------------------------------------------------------------- fuzz
_PRISTINE: list[bytes] = []


def _pristine() -> bytes:
    if not _PRISTINE:
        with tempfile.TemporaryDirectory() as d:
            _PRISTINE.append(standard_file(Path(d) / "p.hdf5")[0].read_bytes())
    return _PRISTINE[0]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), kind=st.sampled_from(["flip", "truncate", "delete"]), filter_key=st.sampled_from([None,
                                                                                                       "train"]))
def test_fuzz_mutated_files_load_or_raise_dataset_error(tmp_path: Path, data: st.DataObject, kind: str,
                                                        filter_key: str | None) -> None:
    path = tmp_path / "fuzz.hdf5"
    path.write_bytes(_pristine())
    mutate_hdf5(path, data, kind)
    load_or_dataset_error("robomimic", path, filter_key=filter_key)
