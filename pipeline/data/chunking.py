"""Action chunking: turn per-step transitions into H-step decisions ``(s_t, a_t..a_{t+H-1}, R, s_{t+H})``.

``R = sum_i gamma^i r_{t+i}``; the critic bootstraps with ``gamma^H`` (``pipeline.sac.critic_loss``). A chunk that
runs past a true terminal keeps the terminal (no bootstrap) and repeats the episode's last action in its tail, which
the environment never executes; a chunk that runs past a time limit or the end of the data has no state ``H``
steps later and is dropped. The online runner (``pipeline.online``) stores its chunks by the same rule.
"""

from __future__ import annotations

import dataclasses

import torch

from pipeline.data.dataset import TransitionDataset


def chunk_transitions(ds: TransitionDataset, horizon: int, gamma: float) -> TransitionDataset:
    """The H-step decisions of ``ds`` (``actions [N', H*A]``, rewards discounted within the chunk).

    Keeps ``ds.normalization`` (observation statistics of the per-step data) and ``meta``. ``horizon = 1`` returns
    ``ds`` itself.
    """
    if horizon == 1:
        return ds
    starts, ends = ds.episode_starts().tolist(), ds.episode_ends.tolist()
    obs, acts, rews, nexts, terms, steps_done, new_ends = [], [], [], [], [], [], []
    offsets = torch.arange(horizon, device=ds.device)
    discounts = gamma ** offsets.float()
    for s, e in zip(starts, ends):
        ended = bool(ds.terminals[e - 1])
        last = e if ended else e - horizon + 1  # decision starts that have a state H steps later (or a terminal)
        if last <= s:
            continue
        t = torch.arange(s, last, device=ds.device)
        steps = t[:, None] + offsets[None, :]  # [n, H] the env steps each decision spans
        idx = steps.clamp(max=e - 1)
        inside = steps < e  # steps before the episode end
        obs.append(ds.observations[t])
        acts.append(ds.actions[idx].reshape(len(t), -1))  # past a terminal: the last action repeated
        rews.append((ds.rewards[idx] * discounts * inside).sum(dim=1))
        nexts.append(ds.next_observations[idx[:, -1]])
        terms.append(((t + horizon) >= e) & ended)
        steps_done.append(inside.sum(dim=1).float())
        new_ends.append(len(t))
    if not obs:
        raise ValueError(f"no episode of {ds.meta.get('source')} is long enough for chunks of {horizon} actions")
    terminals = torch.cat(terms).float()
    episode_ends = torch.tensor(new_ends, dtype=torch.int64).cumsum(0)
    timeouts = torch.zeros_like(terminals)
    timeouts[episode_ends - 1] = 1.0 - terminals[episode_ends - 1]
    return dataclasses.replace(
        ds, observations=torch.cat(obs), actions=torch.cat(acts), rewards=torch.cat(rews),
        next_observations=torch.cat(nexts), terminals=terminals, timeouts=timeouts,
        episode_ends=episode_ends.to(ds.device), meta={**ds.meta, "action_chunk": horizon},
        chunk_steps=torch.cat(steps_done),
    )
