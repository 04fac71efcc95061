"""``OfflinePretrain``: flow-matching BC + the SAC critic + the regularized SAC actor term, on a fixed dataset."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from pipeline import preemption
from pipeline.checkpoint import RUN_CHECKPOINT, save_checkpoint
from pipeline.config import Config, PretrainConfig
from pipeline.distributed import all_gather_objects
from pipeline.lightning.base import SACModule
from pipeline.metrics import RunningMeans
from pipeline.run_logs import StageLog
from pipeline.runtime import rng_state, set_rng_state
from pipeline.sac import Batch
from pipeline.update import SACUpdater

PRETRAIN_COLUMNS = [
    "step", "flow_loss", "critic_loss", "q_mean", "actor_q", "actor_loss", "bc_mse", "entropy", "action_saturation",
    "log_sigma", "alpha", "actor_grad_norm", "critic_grad_norm", "skipped_updates",
]


def pretrain_update(updater: SACUpdater, batch: Batch, pt: PretrainConfig, bc_weight: float) -> dict[str, Any]:
    """What pretraining does with one batch, by ``pretrain.update``; returns the updates' metrics.

    ``joint``: one update whose actor loss holds every term (flow matching, ``q_weight`` and ``bc_weight``).
    ``sequential`` (the public offline-to-online code's ``agent.update(batch)`` then ``agent.online_update(batch)``):
    a critic step with a flow-matching-only actor step, then a second critic step with the ``q_weight`` /
    ``bc_weight`` actor step, both on the same batch; the metrics are the second update's, plus the first's
    ``flow_loss``.
    """
    weights = dict(train_critic=pt.train_critic)
    if pt.update == "joint":
        return updater.update(batch, bc_weight=bc_weight, q_weight=pt.q_weight, flow_weight=pt.flow_weight, **weights)
    flow = updater.update(batch, bc_weight=0.0, q_weight=0.0, flow_weight=pt.flow_weight, **weights)
    flow = {"flow_loss": flow["flow_loss"]} if "flow_loss" in flow else {}
    return {**flow, **updater.update(batch, bc_weight=bc_weight, q_weight=pt.q_weight, flow_weight=0.0, **weights)}


class OfflinePretrain(SACModule):
    """One ``training_step`` = one batch drawn uniformly from ``dataset`` and its update(s) (:func:`pretrain_update`);
    ``dataset`` holds the training transitions (:func:`pipeline.workflow.common.training_transitions`: rewards as SAC
    trains on them, chunked), whose tensors the buffer serves without a copy.

    The actor objective is ``flow_weight * flow-matching + q_weight * (alpha log pi - Q) + bc_weight * ||a - a_data||^2``
    (``pretrain.*``); with ``q_weight = 0`` and ``train_critic = false`` it is plain flow BC.

    Under DDP every rank holds the whole dataset and draws its own batch from its own random stream; the
    gradients are averaged in ``manual_backward``. Log rows average the ranks' metrics; rank 0 writes the log and
    the checkpoints, which carry every rank's random state so that a resumed run continues each rank's stream.
    """

    def __init__(self, cfg: Config, dataset: Any, run_dir: str | Path, resume_state: dict[str, Any] | None = None,
                 progress: Any = None, fingerprint: str = "") -> None:
        super().__init__(cfg, dataset.obs_dim, dataset.act_dim, dataset.normalization)
        self.dataset, self.run_dir = dataset, Path(run_dir)
        self.resume_state, self.progress = resume_state, progress
        # identifies the run a checkpoint may resume (pipeline.workflow.common.run_fingerprint)
        self.fingerprint = fingerprint
        self.step_count = 0
        # rows to the Trainer's logger (trainer.logger) at the update count, as pretrain/<column>, and to
        # pretrain.csv unless the logger is DVCLive; rank 0 alone starts it and writes
        self.log_rows = StageLog(self.run_dir, {"pretrain": PRETRAIN_COLUMNS}, cfg.trainer.logger)
        self.means = RunningMeans()
        # (step, perf_counter) after the first and the latest update of this fit: throughput without the first
        # update, which pays for lazy set-up (DDP builds its gradient buckets then)
        self._first_timed: tuple[int, float] | None = None
        self._last_timed: tuple[int, float] | None = None

    def on_fit_start(self) -> None:
        self.buffer = self.buffer_of(self.dataset)
        self.updater = self.make_updater()
        if self.resume_state is not None:
            self.load_state(self.resume_state)
        if self.trainer.is_global_zero:
            self.log_rows.attach(self.logger)
            self.log_rows.start(self.step_count if self.resume_state is not None else None)
        steps = all_gather_objects((self.step_count, self.fingerprint))
        if len(set(steps)) > 1:
            raise RuntimeError(f"DDP ranks start from different checkpoints (step, run) = {steps}: every rank must "
                               f"read {self.run_dir / RUN_CHECKPOINT} (put --out on a filesystem all nodes share)")

    def training_step(self, step: int, batch_idx: int) -> None:
        pt = self.cfg.pretrain
        bc_weight = self.cfg.sac.bc_weight if pt.bc_weight is None else pt.bc_weight
        info = pretrain_update(self.updater, self.buffer.sample(self.cfg.sac.batch_size), pt, bc_weight)
        self.means.add(info)
        self.step_count += 1
        if self.step_count % pt.log_every == 0:
            row = {k: v for k, v in self._mean_over_ranks(self.means.pop()).items() if k in PRETRAIN_COLUMNS}
            row.update(step=self.step_count, alpha=self.agent.alpha.item(), skipped_updates=self.updater.skipped)
            if self.trainer.is_global_zero:
                self.log_rows.append("pretrain", row)
        if self.step_count % pt.checkpoint_every == 0:
            self.save()
        if self.trainer.world_size == 1:  # data-parallel ranks stop together only at their collective checkpoints
            preemption.check(self.save, self.step_count)
        self._last_timed = (self.step_count, time.perf_counter())
        self._first_timed = self._first_timed or self._last_timed
        if self.progress is not None:
            self.progress(self)

    def _mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """The ranks' values averaged (one all-reduce); every rank logs the same keys at the same steps."""
        if self.trainer.world_size == 1:
            return values
        keys = sorted(values)
        mean = self.trainer.strategy.reduce(torch.tensor([values[k] for k in keys], dtype=torch.float64,
                                                         device=self.device), reduce_op="mean")
        return dict(zip(keys, mean.tolist()))

    @property
    def updates_per_second(self) -> float | None:
        """Updates per second of this fit after its first update (None with fewer than two updates)."""
        if self._first_timed is None or self._last_timed[0] == self._first_timed[0]:
            return None
        (s0, t0), (s1, t1) = self._first_timed, self._last_timed
        return (s1 - s0) / (t1 - t0)

    def on_train_end(self) -> None:
        if self.step_count % self.cfg.pretrain.checkpoint_every:  # else training_step has just saved this step
            self.save()

    def state(self, ranks: list[dict[str, Any]]) -> dict[str, Any]:
        """The checkpoint: rank 0's agent and optimizers (every rank holds the same) and ``ranks``, each rank's
        random state and partial log row in rank order (one entry for a single process)."""
        return {"agent": self.agent.state_dict(), "updater": self.updater.state_dict(), "step": self.step_count,
                "fingerprint": self.fingerprint,
                "ranks": ranks,
                "normalization": None if self.dataset.normalization is None else self.dataset.normalization.to_dict(),
                "dims": {"obs": self.agent.obs_dim, "act": self.agent.act_dim}}

    def load_state(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.updater.load_state_dict(state["updater"])
        self.step_count = state["step"]
        # checkpoints written before data-parallel support hold one process's rng and means at the top level
        ranks = state["ranks"] if "ranks" in state else [{"rng": state["rng"], "means": state["means"]}]
        rank, world = self.trainer.global_rank, self.trainer.world_size
        if len(ranks) != world:  # the run fingerprint covers trainer.devices/num_nodes, so this means a bug
            raise RuntimeError(f"checkpoint of step {self.step_count} holds {len(ranks)} ranks' state, this run "
                               f"has {world} ranks")
        self.means.load_state_dict(ranks[rank]["means"], self.device)
        set_rng_state(ranks[rank]["rng"])

    @property
    def stage_step(self) -> int:
        return self.step_count

    def save(self) -> None:
        """Checkpoint (rank 0 writes). A collective under DDP: every rank calls it at the same steps."""
        ranks = all_gather_objects({"rng": rng_state(), "means": self.means.state_dict()})
        if self.trainer.is_global_zero:
            self.log_rows.flush()  # what a resume continues from: every row up to this step is on disk
            save_checkpoint(self.state(ranks), self.run_dir / RUN_CHECKPOINT)
