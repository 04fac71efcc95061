"""Replay buffer (FIFO, shapes, state round trip) and the seeded / mixed offline-online samplers."""

from __future__ import annotations

import pytest
import torch

from pipeline.buffers import OfflineOnlineSampler, ReplayBuffer

OBS, ACT = 3, 2


def rows(start: int, n: int) -> tuple[torch.Tensor, ...]:
    """``n`` transitions whose every field encodes the row number ``start .. start+n-1``."""
    ids = torch.arange(start, start + n, dtype=torch.float32)
    return (ids[:, None].expand(n, OBS), ids[:, None].expand(n, ACT) / 1000, ids, ids[:, None].expand(n, OBS) + 0.5,
            (ids % 2 == 0).float())


def ids_in(buffer: ReplayBuffer) -> list[int]:
    return buffer.data["rewards"][: len(buffer)].long().tolist()


def test_fifo_wraps_around_one_row_at_a_time() -> None:
    buf = ReplayBuffer(5, OBS, ACT)
    for i in range(7):
        buf.add(*(field[0] for field in rows(i, 1)))
    assert len(buf) == 5 and buf.ptr == 2
    assert ids_in(buf) == [5, 6, 2, 3, 4]


def test_fifo_batched_add_splits_across_the_end() -> None:
    buf = ReplayBuffer(5, OBS, ACT)
    buf.add(*rows(0, 4))
    buf.add(*rows(4, 3))  # rows 4 at index 4, then 5, 6 at indices 0, 1
    assert ids_in(buf) == [5, 6, 2, 3, 4] and buf.ptr == 2
    buf.add(*rows(10, 12))  # more than the capacity at once: only the newest five survive
    assert sorted(ids_in(buf)) == [17, 18, 19, 20, 21] and len(buf) == 5
    # every field of a row stays together
    torch.testing.assert_close(buf.data["obs"][:, 0], buf.data["rewards"])
    torch.testing.assert_close(buf.data["next_obs"][:, 0], buf.data["rewards"] + 0.5)


def test_sample_shapes_dtypes_and_row_consistency() -> None:
    buf = ReplayBuffer(50, OBS, ACT)
    buf.add(*rows(0, 20))
    b = buf.sample(32)
    assert b.obs.shape == (32, OBS) and b.next_obs.shape == (32, OBS) and b.actions.shape == (32, ACT)
    assert b.rewards.shape == (32,) and b.terminals.shape == (32,)
    assert all(x.dtype == torch.float32 for x in b)
    assert b.rewards.max() < 20  # only filled rows are drawn
    torch.testing.assert_close(b.obs[:, 0], b.rewards)
    torch.testing.assert_close(b.actions[:, 0] * 1000, b.rewards)
    torch.testing.assert_close(b.terminals, (b.rewards % 2 == 0).float())


def test_add_accepts_numpy_and_rejects_ragged_fields() -> None:
    buf = ReplayBuffer(4, OBS, ACT)
    buf.add(*(x.numpy() for x in rows(0, 2)))
    assert len(buf) == 2
    obs, act, rew, nxt, term = rows(0, 3)
    with pytest.raises(ValueError, match="different lengths"):
        buf.add(obs, act[:2], rew, nxt, term)
    with pytest.raises(RuntimeError, match="empty"):
        ReplayBuffer(4, OBS, ACT).sample(2)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0, OBS, ACT)


def test_sampling_follows_the_global_torch_seed() -> None:
    buf = ReplayBuffer(100, OBS, ACT)
    buf.add(*rows(0, 100))
    torch.manual_seed(3)
    a = buf.sample(16)
    torch.manual_seed(3)
    b = buf.sample(16)
    assert torch.equal(a.rewards, b.rewards)


def test_state_dict_round_trip_continues_the_same_fifo() -> None:
    buf = ReplayBuffer(6, OBS, ACT)
    buf.add(*rows(0, 4))
    state = buf.state_dict()
    assert state["data"]["obs"].shape[0] == 4  # filled rows only
    other = ReplayBuffer(6, OBS, ACT)
    other.load_state_dict(state)
    assert (other.ptr, other.size) == (buf.ptr, buf.size)
    for b in (buf, other):
        b.add(*rows(4, 5))  # wraps
    for k in buf.data:
        assert torch.equal(buf.data[k], other.data[k]), k
    assert other.ptr == buf.ptr == 3
    with pytest.raises(ValueError, match="capacity 6"):
        ReplayBuffer(7, OBS, ACT).load_state_dict(state)


# ---------------------------------------------------------------------------------------------------------------
# Offline / online composition: offline rows carry negative ids, online rows positive ones


def offline_buffer(n: int = 40) -> ReplayBuffer:
    buf = ReplayBuffer(n, OBS, ACT)
    buf.add(*rows(-n, n))  # ids -n .. -1
    return buf


@pytest.mark.parametrize(("ratio", "batch", "n_off"), [(0.5, 32, 16), (0.25, 32, 8), (0.3, 10, 3), (0.0, 8, 0),
                                                      (1.0, 8, 8)])
def test_mixed_draws_round_ratio_times_batch_offline_rows(ratio: float, batch: int, n_off: int) -> None:
    online = ReplayBuffer(100, OBS, ACT)
    online.add(*rows(1, 30))
    sampler = OfflineOnlineSampler(online, offline_buffer(), "mixed", ratio)
    for _ in range(5):
        b = sampler.sample(batch)
        assert b.rewards.shape == (batch,)
        assert int((b.rewards < 0).sum()) == n_off
    assert len(sampler) == 70
    comp = sampler.composition()
    assert comp["buffer_mode"] == "mixed" and comp["offline_share_per_batch"] == ratio
    assert comp["offline_transitions"] == 40 and comp["online_transitions"] == 30


def test_mixed_with_empty_online_buffer_draws_only_offline() -> None:
    sampler = OfflineOnlineSampler(ReplayBuffer(10, OBS, ACT), offline_buffer(), "mixed", 0.5)
    assert bool((sampler.sample(16).rewards < 0).all())
    assert sampler.composition()["offline_share_per_batch"] == 1.0


def test_seeded_writes_offline_rows_once_then_samples_uniformly() -> None:
    online = ReplayBuffer(40 + 40, OBS, ACT)
    sampler = OfflineOnlineSampler(online, offline_buffer(), "seeded")
    sampler.seed_offline()
    sampler.seed_offline()  # idempotent
    assert len(online) == 40 and sorted(ids_in(online)) == list(range(-40, 0))
    online.add(*rows(1, 40))
    assert len(sampler) == 80
    torch.manual_seed(0)
    draws = torch.cat([sampler.sample(256).rewards for _ in range(8)])
    share = float((draws < 0).float().mean())
    assert 0.45 < share < 0.55  # uniform over 40 offline + 40 online rows
    comp = sampler.composition()
    assert comp == {"buffer_mode": "seeded", "offline_transitions": 40, "online_transitions": 40,
                    "offline_share_per_batch": 0.5}


def test_offline_data_are_held_once() -> None:
    """A buffer made from a dataset's tensors serves those tensors themselves; a seeded sampler lets the offline
    buffer go once the online buffer holds its rows."""
    fields = (*(t.clone() for t in rows(-40, 40)), torch.ones(40))
    offline = ReplayBuffer.holding(*fields)
    assert len(offline) == offline.capacity == 40
    assert all(offline.data[k].data_ptr() == t.data_ptr() for k, t in zip(offline.data, fields))
    torch.manual_seed(0)
    batch = offline.sample(8)
    torch.testing.assert_close(batch.obs[:, 0], batch.rewards)
    sampler = OfflineOnlineSampler(ReplayBuffer(80, OBS, ACT), offline, "seeded")
    sampler.seed_offline()
    assert sampler.offline is None and sampler.composition()["offline_transitions"] == 40
    mixed = OfflineOnlineSampler(ReplayBuffer(80, OBS, ACT), offline, "mixed")
    mixed.seed_offline()  # nothing to copy in mixed mode: the offline buffer stays the one copy
    assert mixed.offline is offline and len(mixed.online) == 0


def test_seeded_capacity_error_names_both_sizes() -> None:
    sampler = OfflineOnlineSampler(ReplayBuffer(30, OBS, ACT), offline_buffer(40), "seeded")
    with pytest.raises(ValueError, match=r"capacity 30\) cannot hold the 40 offline transitions"):
        sampler.seed_offline()


def test_bad_mode_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"buffer mode 'fifo': expected 'seeded' or 'mixed'"):
        OfflineOnlineSampler(ReplayBuffer(4, OBS, ACT), None, "fifo")


def test_state_dict_serializes_only_the_filled_rows(tmp_path) -> None:
    """torch.save writes a slice's whole storage: a 100k-row buffer holding 10 rows must not cost 100k rows."""
    buf = ReplayBuffer(100_000, 17, 6)
    buf.add(torch.zeros(10, 17), torch.zeros(10, 6), torch.zeros(10), torch.zeros(10, 17), torch.zeros(10))
    torch.save(buf.state_dict(), tmp_path / "buf.pt")
    assert (tmp_path / "buf.pt").stat().st_size < 50_000  # 10 rows are ~2 kB; the full storage would be ~16 MB
