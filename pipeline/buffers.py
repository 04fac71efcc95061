"""Replay storage on the training device, and the two ways offline data joins online training.

- ``seeded``: the offline transitions are written into the online buffer before the first step and everything is
  sampled uniformly (the public O2O code and FQL).
- ``mixed``: offline and online data stay apart and every batch draws a fixed share from each (RLPD, Cal-QL).

Sampling draws indices with ``torch.randint`` on the buffer's device from the global generator (whose state
checkpoints carry), and the buffer's fill level is a host integer, so sampling never syncs with the device.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.sac import Batch

_FIELDS = ("obs", "actions", "rewards", "next_obs", "terminals", "steps")


class ReplayBuffer:
    """Fixed-capacity FIFO of transitions stored as float32 tensors on ``device``."""

    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device | str = "cpu") -> None:
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1, got {capacity}")
        self.capacity, self.device = capacity, torch.device(device)
        shapes = {"obs": (obs_dim,), "actions": (act_dim,), "rewards": (), "next_obs": (obs_dim,), "terminals": (),
                  "steps": ()}
        self.data = {k: torch.zeros((capacity, *shapes[k]), dtype=torch.float32, device=self.device) for k in _FIELDS}
        self.ptr = 0  # next row to write
        self.size = 0  # rows filled

    @classmethod
    def holding(cls, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, next_obs: torch.Tensor,
                terminals: torch.Tensor, steps: torch.Tensor, device: torch.device | str = "cpu") -> ReplayBuffer:
        """A full buffer whose rows are these float32 tensors themselves (``obs [N, S]``, ``actions [N, A]``,
        ``rewards [N]``, ``next_obs [N, S]``, ``terminals [N]``, ``steps [N]``, the env steps each row's decision
        executed): no copy on their own device, so an offline dataset and the buffer that serves it share one copy
        of the data."""
        rows = dict(zip(_FIELDS, (obs, actions, rewards, next_obs, terminals, steps)))
        n = obs.shape[0]
        if any(r.shape[0] != n for r in rows.values()):
            raise ValueError(f"transition fields have different lengths: { {k: r.shape[0] for k, r in rows.items()} }")
        buffer = cls.__new__(cls)
        buffer.capacity, buffer.device = n, torch.device(device)
        buffer.data = {k: v.to(buffer.device, torch.float32) for k, v in rows.items()}
        buffer.ptr, buffer.size = 0, n
        return buffer

    def __len__(self) -> int:
        return self.size

    def add(self, obs: Any, action: Any, reward: Any, next_obs: Any, terminal: Any, steps: Any = 1) -> None:
        """Append one transition or a batch (leading dim) of them; arrays or tensors. ``steps``: the env steps each
        decision executed (a scalar applies to every row)."""
        if np.ndim(steps) == 0:  # one count for every row (a scalar reward is one row)
            steps = np.full(int(np.prod(np.shape(reward))), float(steps), dtype=np.float32)
        values = dict(zip(_FIELDS, (obs, action, reward, next_obs, terminal, steps)))
        rows = {k: torch.as_tensor(np.asarray(v) if not torch.is_tensor(v) else v, dtype=torch.float32)
                .to(self.device).reshape(-1, *self.data[k].shape[1:]) for k, v in values.items()}
        n = rows["obs"].shape[0]
        if any(r.shape[0] != n for r in rows.values()):
            raise ValueError(f"transition fields have different lengths: { {k: r.shape[0] for k, r in rows.items()} }")
        if n > self.capacity:  # only the newest rows survive
            rows = {k: r[-self.capacity:] for k, r in rows.items()}
            n = self.capacity
        first = min(n, self.capacity - self.ptr)
        for k, r in rows.items():
            self.data[k][self.ptr:self.ptr + first] = r[:first]
            if first < n:
                self.data[k][: n - first] = r[first:]
        self.ptr = (self.ptr + n) % self.capacity
        self.size = min(self.size + n, self.capacity)

    def sample(self, batch_size: int) -> Batch:
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = torch.randint(0, self.size, (batch_size,), device=self.device)
        return Batch(*(self.data[k][idx] for k in _FIELDS))

    def state_dict(self) -> dict[str, Any]:
        """The filled rows only (a resumable run must not write gigabytes of zeros)."""
        return {"capacity": self.capacity, "ptr": self.ptr, "size": self.size,
                # clone: torch.save writes a view's whole storage, i.e. the empty capacity too
                "data": {k: v[: self.size].clone().cpu() for k, v in self.data.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["capacity"] != self.capacity:
            raise ValueError(f"replay buffer checkpoint has capacity {state['capacity']}, this run {self.capacity}")
        self.ptr, self.size = int(state["ptr"]), int(state["size"])
        for k in _FIELDS:
            if k == "steps" and k not in state["data"]:
                # checkpoints from before the column: whole decisions (the row's action width is >= its H steps)
                self.data[k][: self.size] = float(self.data["actions"].shape[1])
                continue
            self.data[k][: self.size] = state["data"][k].to(self.device)


def concat_batches(a: Batch, b: Batch) -> Batch:
    return Batch(*(torch.cat([x, y]) for x, y in zip(a, b)))


class OfflineOnlineSampler:
    """Draws training batches from online experience and (optionally) an offline dataset.

    ``mode='seeded'`` writes the offline data into ``online`` once (its capacity must hold it plus the online
    steps); ``mode='mixed'`` keeps ``offline`` apart and draws ``round(offline_ratio * B)`` rows from it per batch
    (all rows while the online buffer is still empty).
    """

    def __init__(self, online: ReplayBuffer, offline: ReplayBuffer | None = None, mode: str = "seeded",
                 offline_ratio: float = 0.5) -> None:
        if mode not in ("seeded", "mixed"):
            raise ValueError(f"buffer mode {mode!r}: expected 'seeded' or 'mixed'")
        self.online, self.offline, self.mode, self.offline_ratio = online, offline, mode, offline_ratio
        self.offline_size = len(offline) if offline is not None else 0
        self.seeded = False

    def seed_offline(self) -> None:
        """Seeded mode: copy the offline rows into the online buffer (once, before the first online step)."""
        if self.mode == "seeded" and self.offline is not None and not self.seeded:
            if self.online.capacity - self.online.size < self.offline_size:
                raise ValueError(
                    f"seeded buffer mode: the online buffer (capacity {self.online.capacity}) cannot hold the "
                    f"{self.offline_size} offline transitions")
            self.online.add(*(self.offline.data[k][: self.offline_size] for k in _FIELDS))
            self.mark_seeded()

    def mark_seeded(self) -> None:
        """The online buffer holds the offline rows (seeded now, or restored from a checkpoint that was): the
        offline buffer is not read again, so it is let go and the data stay in memory once."""
        self.seeded = True
        self.offline = None

    def __len__(self) -> int:
        return len(self.online) + (self.offline_size if self.mode == "mixed" else 0)

    def sample(self, batch_size: int) -> Batch:
        if self.mode == "seeded" or self.offline is None:
            return self.online.sample(batch_size)
        if len(self.online) == 0:
            return self.offline.sample(batch_size)
        n_off = round(batch_size * self.offline_ratio)
        if n_off == 0:
            return self.online.sample(batch_size)
        if n_off == batch_size:
            return self.offline.sample(batch_size)
        return concat_batches(self.offline.sample(n_off), self.online.sample(batch_size - n_off))

    def composition(self) -> dict[str, Any]:
        """What a batch is made of, for the run's log."""
        online_rows = len(self.online) - (self.offline_size if self.seeded else 0)
        if self.mode == "seeded":
            total = max(len(self.online), 1)
            share = self.offline_size / total if self.seeded else 0.0
        else:
            share = 1.0 if online_rows == 0 else self.offline_ratio
        return {"buffer_mode": self.mode, "offline_transitions": self.offline_size,
                "online_transitions": online_rows, "offline_share_per_batch": share}
