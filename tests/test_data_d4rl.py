"""D4RL-format HDF5: qlearning semantics with and without next_observations, writer round trip, bad files."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
from conftest import load_or_dataset_error, mutate_hdf5
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.data import DatasetError, TransitionDataset, load_dataset, write_d4rl
from pipeline.data.d4rl_io import d4rl_reference_scores


def episodes_arrays(lengths: list[int], ends: list[str], s: int = 3, a: int = 2,
                    seed: int = 0) -> dict[str, np.ndarray]:
    """Flat D4RL arrays for episodes of the given lengths; ``ends[i]`` is 'terminal' or 'timeout'.

    Observations inside an episode are continuous (next_observations[i] == observations[i+1]).
    """
    rng = np.random.default_rng(seed)
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("observations", "next_observations", "actions",
                                                         "rewards", "terminals", "timeouts")}
    for length, end in zip(lengths, ends):
        states = rng.normal(size=(length + 1, s)).astype(np.float32)
        cols["observations"].append(states[:-1])
        cols["next_observations"].append(states[1:])
        cols["actions"].append(rng.uniform(-1, 1, size=(length, a)).astype(np.float32))
        cols["rewards"].append(rng.normal(size=length).astype(np.float32))
        term = np.zeros(length, dtype=bool)
        tout = np.zeros(length, dtype=bool)
        (term if end == "terminal" else tout)[-1] = True
        cols["terminals"].append(term)
        cols["timeouts"].append(tout)
    return {k: np.concatenate(v) for k, v in cols.items()}


def write_file(path: Path, arrays: dict[str, Any], metadata: dict[str, Any] | None = None) -> Path:
    with h5py.File(path, "w") as f:
        for k, v in arrays.items():
            f.create_dataset(k, data=v)
        f.create_dataset("infos/qpos", data=np.zeros((len(arrays["rewards"]), 2)))
        for k, v in (metadata or {}).items():
            f.create_dataset(f"metadata/{k}", data=v)
    return path


LENGTHS, ENDS = [4, 6, 3, 5], ["terminal", "timeout", "terminal", "timeout"]


def test_without_next_observations_follows_d4rl_qlearning_rule(tmp_path: Path) -> None:
    arrays = episodes_arrays(LENGTHS, ENDS)
    arrays.pop("next_observations")
    ds = load_dataset("d4rl", write_file(tmp_path / "d.hdf5", arrays))
    # Rows kept: all but the timeout rows (9, 17) and the last row (17): 18 - 2 = 16.
    kept = [i for i in range(17) if not arrays["timeouts"][i]]
    assert len(ds) == len(kept) == 16
    np.testing.assert_array_equal(ds.observations.numpy(), arrays["observations"][kept])
    np.testing.assert_array_equal(ds.next_observations.numpy(), arrays["observations"][[i + 1 for i in kept]])
    np.testing.assert_array_equal(ds.terminals.numpy(), arrays["terminals"][kept])
    # Episodes: [0..3] terminal, [4..8] cut before the dropped timeout row, [10..12] terminal, [13..16].
    assert ds.episode_ends.tolist() == [4, 9, 12, 16]
    assert ds.timeouts.nonzero().flatten().tolist() == [8, 15]
    assert ds.meta["rows_dropped"] == 2 and ds.meta["has_next_observations"] is False


def test_with_next_observations_keeps_every_row_and_splits_on_mismatch(tmp_path: Path) -> None:
    arrays = episodes_arrays(LENGTHS, ENDS)
    # Splice a cut without flags: row 2's stored next state differs from row 3's state.
    arrays["next_observations"][2] += 1.0
    ds = load_dataset("d4rl", write_file(tmp_path / "d.hdf5", arrays))
    assert len(ds) == 18
    np.testing.assert_array_equal(ds.next_observations.numpy(), arrays["next_observations"])
    np.testing.assert_array_equal(ds.terminals.numpy(), arrays["terminals"])
    assert ds.episode_ends.tolist() == [3, 4, 10, 13, 18]
    # Timeouts mark every non-terminal episode end, including the unflagged cut at row 2.
    assert ds.timeouts.nonzero().flatten().tolist() == [2, 9, 17]
    assert ds.meta["rows_dropped"] == 0
    assert ds.normalization is not None and ds.normalization.std_floor == 1e-3
    assert load_dataset("d4rl", tmp_path / "d.hdf5", std_floor=0.5).normalization.std_floor == 0.5


def test_write_then_read_round_trip(tmp_path: Path) -> None:
    arrays = episodes_arrays(LENGTHS, ENDS, seed=3)
    ds = TransitionDataset(**arrays, meta={"source": "mem", "obs_keys": None, "ref_min_score": -1.0,
                                           "ref_max_score": 9.0, "note": "kept"})
    path = write_d4rl(ds, tmp_path / "out" / "export.hdf5", env_name="custom-env")
    with h5py.File(path, "r") as f:
        assert {"observations", "actions", "rewards", "terminals", "timeouts", "next_observations",
                "metadata"} <= set(f.keys())
        assert f["terminals"].dtype == bool and f["observations"].dtype == np.float32
    back = load_dataset("d4rl", path)
    for name in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts",
                 "episode_ends"):
        assert torch.equal(getattr(back, name), getattr(ds, name)), name
    assert back.meta["env_id"] == "custom-env" and back.meta["note"] == "kept"
    assert (back.meta["ref_min_score"], back.meta["ref_max_score"], back.meta["ref_score_source"]) == \
        (-1.0, 9.0, "file")


def test_writer_marks_unflagged_episode_ends_as_timeouts(tmp_path: Path) -> None:
    arrays = episodes_arrays([3, 4], ["terminal", "timeout"])
    arrays["timeouts"][:] = False
    ds = TransitionDataset(**arrays, episode_ends=torch.tensor([3, 7]), meta={"source": "mem"})
    back = load_dataset("d4rl", write_d4rl(ds, tmp_path / "e.hdf5"))
    assert back.episode_ends.tolist() == [3, 7] and back.timeouts.nonzero().flatten().tolist() == [6]


def test_reference_scores_from_d4rl_names(tmp_path: Path) -> None:
    arrays = episodes_arrays(LENGTHS, ENDS)
    path = write_file(tmp_path / "d.hdf5", arrays, metadata={"env_name": "hopper-medium-v2"})
    ds = load_dataset("d4rl", path)
    assert (ds.meta["ref_min_score"], ds.meta["ref_max_score"]) == (-20.272305, 3234.3)
    assert ds.normalized_score(3234.3) == pytest.approx(1.0)
    ds = load_dataset("d4rl", path, env_name="walker2d-medium-replay-v2")
    assert (ds.meta["env_id"], ds.meta["ref_max_score"]) == ("walker2d-medium-replay-v2", 4592.3)
    assert d4rl_reference_scores("Hopper-v5") is None  # Gymnasium ids are not on the D4RL scale
    assert d4rl_reference_scores("halfcheetah-expert-v2") == (-280.178953, 12135.0)
    assert load_dataset("d4rl", write_file(tmp_path / "n.hdf5", arrays)).meta["ref_min_score"] is None


# ------------------------------------------------------------------------------- bad input
def _mutate(arrays: dict[str, np.ndarray], how: str) -> dict[str, Any]:
    out: dict[str, Any] = {k: v.copy() for k, v in arrays.items()}
    if how.startswith("drop:"):
        out.pop(how[5:])
    elif how == "nan_obs":
        out["observations"][5, 1] = np.nan
    elif how == "inf_reward":
        out["rewards"][3] = np.inf
    elif how == "action_range":
        out["actions"][7, 0] = 1.3
    elif how == "short_actions":
        out["actions"] = out["actions"][:-1]
    elif how == "flat_observations":
        out["observations"] = out["observations"][:, 0]
    elif how == "next_obs_width":
        out["next_observations"] = out["next_observations"][:, :2]
    elif how == "terminal_values":
        out["terminals"] = out["terminals"].astype(np.float32) * 2
    elif how == "string_rewards":
        out["rewards"] = np.array([b"x"] * len(out["rewards"]))
    return out


@pytest.mark.parametrize(
    ("how", "match"),
    [
        ("drop:observations", r"\[observations\]: missing"),
        ("drop:actions", r"\[actions\]: missing"),
        ("drop:timeouts", r"\[timeouts\]: missing"),
        ("nan_obs", r"\[observations\].*finite.*row 5"),
        ("inf_reward", r"\[rewards\].*finite.*row 3"),
        ("action_range", r"\[actions\].*\[-1, 1\].*row 7"),
        ("short_actions", r"\[actions\].*length 18"),
        ("flat_observations", r"\[observations\].*rank 2"),
        ("next_obs_width", r"\[next_observations\].*\[18, 3\]"),
        ("terminal_values", r"\[terminals\].*0/1"),
        ("string_rewards", r"\[rewards\].*numeric"),
    ],
)
def test_bad_files_raise_dataset_error_naming_file_and_key(tmp_path: Path, how: str, match: str) -> None:
    path = write_file(tmp_path / "bad.hdf5", _mutate(episodes_arrays(LENGTHS, ENDS), how))
    with pytest.raises(DatasetError, match=match) as info:
        load_dataset("d4rl", path)
    assert info.value.source == str(path)


def test_truncated_and_missing_files(tmp_path: Path) -> None:
    path = write_file(tmp_path / "d.hdf5", episodes_arrays(LENGTHS, ENDS))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"d.hdf5: expected a readable HDF5 file.*truncated or corrupt"):
        load_dataset("d4rl", path)
    with pytest.raises(DatasetError, match=r"nothere.hdf5: expected an existing"):
        load_dataset("d4rl", tmp_path / "nothere.hdf5")


def test_nothing_left_after_dropping_timeouts(tmp_path: Path) -> None:
    arrays = episodes_arrays([1], ["timeout"])
    arrays.pop("next_observations")
    with pytest.raises(DatasetError, match=r"\[timeouts\].*at least one transition"):
        load_dataset("d4rl", write_file(tmp_path / "one.hdf5", arrays))


# ------------------------------------------------------------------------------- reference implementation
def test_matches_d4rl_qlearning_dataset_when_available(tmp_path: Path) -> None:
    os.environ.setdefault("D4RL_SUPPRESS_IMPORT_ERROR", "1")
    try:
        d4rl = importlib.import_module("d4rl")
    except Exception as e:  # d4rl pulls in gym/mujoco_py: any import failure means "not available here"
        pytest.skip(f"d4rl not importable ({type(e).__name__})")
    arrays = episodes_arrays([5, 7, 2, 9, 4], ["timeout", "terminal", "terminal", "timeout", "terminal"], seed=7)
    arrays.pop("next_observations")
    ref = d4rl.qlearning_dataset(None, dataset={k: v.copy() for k, v in arrays.items()})
    ours = load_dataset("d4rl", write_file(tmp_path / "x.hdf5", arrays))
    for key in ("observations", "actions", "next_observations", "rewards", "terminals"):
        np.testing.assert_array_equal(getattr(ours, key).numpy(), ref[key].astype(np.float32), err_msg=key)


# ------------------------------------------------------------------------------- fuzz
_PRISTINE: dict[str, bytes] = {}


def _pristine(with_next: bool) -> bytes:
    key = str(with_next)
    if key not in _PRISTINE:
        import tempfile

        arrays = episodes_arrays([6, 5, 7], ["terminal", "timeout", "timeout"], seed=1)
        if not with_next:
            arrays.pop("next_observations")
        with tempfile.TemporaryDirectory() as d:
            _PRISTINE[key] = write_file(Path(d) / "p.hdf5", arrays, {"env_name": "hopper-medium-v2"}).read_bytes()
    return _PRISTINE[key]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), with_next=st.booleans(), kind=st.sampled_from(["flip", "truncate", "delete"]))
def test_fuzz_mutated_files_load_or_raise_dataset_error(tmp_path: Path, data: st.DataObject, with_next: bool,
                                                        kind: str) -> None:
    path = tmp_path / "fuzz.hdf5"
    path.write_bytes(_pristine(with_next))
    mutate_hdf5(path, data, kind)
    load_or_dataset_error("d4rl", path)

