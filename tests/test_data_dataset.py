"""TransitionDataset validation, artefact file, normalization statistics, check_compatible, load_dataset options."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest
import torch

from pipeline.data import (
    ACTION_TOLERANCE,
    DatasetError,
    NormalizationStats,
    TransitionDataset,
    check_compatible,
    compute_normalization,
    load_dataset,
)
from pipeline.data.dataset import atomic_write


def make_arrays(n: int = 12, s: int = 3, a: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n)
    timeouts = np.zeros(n)
    terminals[4] = 1
    timeouts[n - 1] = 1
    return {
        "observations": rng.normal(size=(n, s)),
        "actions": rng.uniform(-1, 1, size=(n, a)),
        "rewards": rng.normal(size=n),
        "next_observations": rng.normal(size=(n, s)),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def make_dataset(**overrides: object) -> TransitionDataset:
    arrays: dict[str, object] = dict(make_arrays())
    arrays.update(overrides)
    arrays.setdefault("meta", {"source": "unit"})
    return TransitionDataset(**arrays)  # type: ignore[arg-type]


def test_converts_to_float32_and_derives_episode_ends() -> None:
    ds = make_dataset()
    for name in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
        assert getattr(ds, name).dtype == torch.float32
    assert (len(ds), ds.obs_dim, ds.act_dim) == (12, 3, 2)
    assert ds.episode_ends.tolist() == [5, 12]
    assert ds.episode_starts().tolist() == [0, 5]
    rewards = ds.rewards.double()
    torch.testing.assert_close(ds.episode_returns(), torch.stack([rewards[:5].sum(), rewards[5:].sum()]).float())


def test_last_segment_without_flag_still_ends_at_n() -> None:
    ds = make_dataset(timeouts=np.zeros(12))
    assert ds.episode_ends.tolist() == [5, 12]


def test_random_dataset_has_its_episodes_and_is_seeded() -> None:
    ds = TransitionDataset.random(250, 4, 3, episode_length=100, seed=3)
    assert (len(ds), ds.obs_dim, ds.act_dim) == (250, 4, 3)
    assert ds.episode_ends.tolist() == [100, 200, 250]
    assert ds.terminals.sum() == 0 and float(ds.actions.abs().max()) <= 1
    torch.testing.assert_close(ds.next_observations[:-1], ds.observations[1:])  # one stream of observations
    assert torch.equal(ds.observations, TransitionDataset.random(250, 4, 3, seed=3).observations)
    assert not torch.equal(ds.observations, TransitionDataset.random(250, 4, 3, seed=4).observations)


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("observations", np.zeros((12,)), r"\[observations\].*shape \[N, S\]"),
        ("observations", np.zeros((0, 3)), r"\[observations\].*N, S >= 1"),
        ("actions", np.zeros((11, 2)), r"\[actions\].*\[12, A\]"),
        ("rewards", np.zeros(13), r"\[rewards\].*\[12\]"),
        ("terminals", np.zeros((12, 1)), r"\[terminals\].*\[12\]"),
        ("next_observations", np.zeros((12, 4)), r"\[next_observations\].*\[12, 3\]"),
        ("terminals", np.full(12, 0.5), r"\[terminals\].*0/1"),
        ("episode_ends", torch.tensor([5, 11]), r"\[episode_ends\].*last equal to N=12"),
        ("episode_ends", torch.tensor([6, 5, 12]), r"\[episode_ends\].*strictly increasing"),
        ("episode_ends", torch.tensor([5.0, 12.0]), r"\[episode_ends\].*integer"),
        ("meta", {"source": "unit", "bad": object()}, r"\[meta\].*JSON"),
    ],
)
def test_rejects_malformed_fields(field: str, value: object, match: str) -> None:
    with pytest.raises(DatasetError, match=match) as info:
        make_dataset(**{field: value})
    assert info.value.source == "unit"


@pytest.mark.parametrize("field", ["observations", "actions", "rewards", "next_observations"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_rejects_non_finite_values_naming_the_row(field: str, bad: float) -> None:
    arrays = make_arrays()
    arrays[field] = arrays[field].copy()
    arrays[field].reshape(12, -1)[7, 0] = bad
    with pytest.raises(DatasetError, match=rf"unit \[{field}\].*finite.*row 7"):
        TransitionDataset(**arrays, meta={"source": "unit"})


def test_actions_outside_unit_box_are_rejected_and_rounding_is_clamped() -> None:
    actions = make_arrays()["actions"]
    actions[3, 1] = 1.5
    with pytest.raises(DatasetError, match=r"\[actions\].*\[-1, 1\].*row 3"):
        make_dataset(actions=actions)
    actions[3, 1] = -(1.0 + ACTION_TOLERANCE / 2)
    ds = make_dataset(actions=actions)
    assert float(ds.actions[3, 1]) == -1.0


def test_save_load_round_trip_keeps_everything(tmp_path: Path) -> None:
    ds = make_dataset(meta={"source": "unit", "obs_keys": ["a", "b"], "ref_min_score": 0.0,
                            "ref_max_score": 10.0}).with_normalization(std_floor=0.05)
    path = tmp_path / "sub" / "ds.pt"
    ds.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["ds.pt"]  # no temp file left behind
    back = TransitionDataset.load(path)
    for name in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts",
                 "episode_ends"):
        assert torch.equal(getattr(back, name), getattr(ds, name)), name
    assert back.meta == ds.meta
    assert back.normalization is not None and ds.normalization is not None
    assert torch.equal(back.normalization.obs_std, ds.normalization.obs_std)
    assert back.normalization.std_floor == 0.05
    assert back.normalized_score(5.0) == pytest.approx(0.5)


def test_failed_write_leaves_previous_artefact_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "ds.pt"
    make_dataset().save(path)
    before = path.read_bytes()

    def write_then_fail(f: BinaryIO) -> None:
        f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, write_then_fail)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ds.pt"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_load_of_damaged_artefact_raises_dataset_error(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "ds.pt"
    make_dataset().save(path)
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a torch file")
    else:
        path.unlink()
    with pytest.raises(DatasetError, match=str(path)):
        TransitionDataset.load(path)


def test_load_rejects_foreign_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    with pytest.raises(DatasetError, match=r"\[artefact\]"):
        TransitionDataset.load(path)


def test_normalization_statistics_and_floor() -> None:
    arrays = make_arrays(n=200)
    arrays["observations"][:, 2] = 7.0  # a constant dimension must not divide by zero
    ds = TransitionDataset(**arrays, meta={"source": "unit"})
    stats = compute_normalization(ds, std_floor=1e-2)
    obs = torch.as_tensor(arrays["observations"])
    torch.testing.assert_close(stats.obs_mean, obs.mean(0).float())
    torch.testing.assert_close(stats.obs_std[:2], obs[:, :2].std(0, correction=0).float())
    assert float(stats.obs_std[2]) == pytest.approx(1e-2)
    normed = stats.normalize_obs(ds.observations)
    torch.testing.assert_close(normed[:, :2].mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(normed[:, :2].std(0, correction=0), torch.ones(2), atol=1e-5, rtol=0)
    assert bool((normed[:, 2] == 0).all())
    torch.testing.assert_close(stats.denormalize_obs(normed), ds.observations, atol=1e-5, rtol=0)
    assert stats.reward_min == pytest.approx(float(arrays["rewards"].min()))
    assert stats.reward_std == pytest.approx(float(arrays["rewards"].std()), rel=1e-6)
    back = NormalizationStats.from_dict(stats.to_dict())
    assert torch.equal(back.obs_mean, stats.obs_mean) and torch.equal(back.obs_std, stats.obs_std)
    assert (back.reward_mean, back.reward_max, back.std_floor) == (stats.reward_mean, stats.reward_max, 1e-2)
    with pytest.raises(ValueError, match="std_floor"):
        compute_normalization(ds, std_floor=0.0)


def test_normalization_with_wrong_dims_is_rejected() -> None:
    other = compute_normalization(TransitionDataset(**make_arrays(s=5), meta={"source": "unit"}))
    with pytest.raises(DatasetError, match=r"\[normalization\].*3 observation dims"):
        make_dataset(normalization=other)


def test_to_device_copies_tensors_and_stats() -> None:
    ds = make_dataset().with_normalization()
    moved = ds.to("cpu")
    assert moved is not ds and torch.equal(moved.observations, ds.observations)
    assert moved.normalization is not None and moved.episode_ends.device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_cuda_and_back() -> None:
    ds = make_dataset().with_normalization()
    gpu = ds.to("cuda")
    assert gpu.device.type == "cuda" and gpu.episode_ends.device.type == "cuda"
    assert gpu.normalization is not None and gpu.normalization.obs_mean.device.type == "cuda"
    torch.testing.assert_close(gpu.normalization.normalize_obs(gpu.observations).cpu(),
                               ds.normalization.normalize_obs(ds.observations))
    torch.testing.assert_close(gpu.episode_returns().cpu(), ds.episode_returns())
    assert torch.equal(gpu.to("cpu").actions, ds.actions)


def test_normalized_score_requires_references() -> None:
    ds = make_dataset(meta={"source": "unit", "ref_min_score": -10.0, "ref_max_score": 90.0})
    assert ds.normalized_score(40.0) == pytest.approx(0.5)
    torch.testing.assert_close(ds.normalized_score(torch.tensor([-10.0, 90.0])),
                               torch.tensor([0.0, 1.0], dtype=torch.float64))
    with pytest.raises(DatasetError, match="reference scores"):
        make_dataset().normalized_score(1.0)


def test_check_compatible_names_source_and_dims() -> None:
    ds = make_dataset(meta={"source": "demo.hdf5", "obs_keys": ["object", "robot0_eef_pos"]})
    check_compatible(ds, obs_dim=3, act_dim=2, source="robosuite/Lift")
    with pytest.raises(DatasetError, match=r"demo.hdf5 \[observations\].*expected 19 .*robosuite/Lift.* has 3.*"
                                           r"obs_keys"):
        check_compatible(ds, obs_dim=19, act_dim=2, source="robosuite/Lift")
    with pytest.raises(DatasetError, match=r"\[actions\].*expected 7 .*Hopper-v5.* has 2"):
        check_compatible(ds, obs_dim=3, act_dim=7, source="Hopper-v5")


def test_load_dataset_rejects_unknown_format_and_options(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"\[fmt\].*\['minari', 'd4rl', 'robomimic', 'ogbench'\].*'rlds'"):
        load_dataset("rlds", tmp_path / "x.hdf5")
    with pytest.raises(DatasetError, match=r"\[obs_key\].*unknown option.*'d4rl'.*env_name"):
        load_dataset("d4rl", tmp_path / "x.hdf5", obs_key=["a"])
    with pytest.raises(DatasetError, match=r"\[filter_key\].*unknown option.*'minari'"):
        load_dataset("minari", "x-v0", filter_key="train")
    # An option of another format set to None is how one config feeds every format: it is ignored, and the
    # load then fails only because the file does not exist.
    with pytest.raises(DatasetError, match=r"x.hdf5: expected an existing D4RL"):
        load_dataset("d4rl", tmp_path / "x.hdf5", obs_keys=None, filter_key=None)
