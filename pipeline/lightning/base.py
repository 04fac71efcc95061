"""What the two training modules share: the agent and its observation normalization, SAC's three optimizers under
manual optimization, the updater that steps them through Lightning's backward, and buffers over a dataset."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException

from pipeline import preemption
from pipeline.buffers import ReplayBuffer
from pipeline.config import Config
from pipeline.data.normalization import NormalizationStats
from pipeline.sac import SACAgent
from pipeline.update import Optimizers, SACUpdater, make_optimizers


class SACModule(L.LightningModule):
    """A LightningModule around one :class:`SACAgent` for ``obs [S]`` and ``action [A]`` (the agent's own action:
    ``sac.chunk`` env actions at once), its observations standardized with ``normalization`` when the dataset
    config asks for it (``pretrain.dataset.normalize_obs``)."""

    def __init__(self, cfg: Config, obs_dim: int, act_dim: int, normalization: NormalizationStats | None) -> None:
        super().__init__()
        self.automatic_optimization = False  # SAC steps three optimizers per update
        self.cfg = cfg
        self.agent = SACAgent.from_config(cfg, obs_dim, act_dim)
        if normalization is not None and cfg.pretrain.dataset.normalize_obs:
            self.agent.set_obs_normalization(normalization.obs_mean, normalization.obs_std)

    @property
    def stage_step(self) -> int:
        """The step the stage has completed (what its checkpoint records)."""
        raise NotImplementedError

    def save(self) -> None:
        """Checkpoint the stage at :attr:`stage_step` (a collective under DDP)."""
        raise NotImplementedError

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        opts = make_optimizers(self.agent)
        return [o for o in (opts.actor, opts.critic, opts.alpha) if o is not None]

    def make_updater(self) -> SACUpdater:
        """The updater over Lightning's (wrapped) optimizers; its backward is Lightning's (precision, DDP)."""
        opts = self.optimizers()
        opts = opts if isinstance(opts, list) else [opts]
        return SACUpdater(self.agent, Optimizers(opts[0], opts[1], opts[2] if len(opts) > 2 else None),
                          backward=self.manual_backward)

    def buffer_of(self, data: Any) -> ReplayBuffer:
        """A buffer that serves ``data``'s own tensors (training transitions: observations, actions, rewards,
        next observations, terminals) on this module's device, without a copy on the same device."""
        steps = data.chunk_steps if data.chunk_steps is not None else torch.ones_like(data.rewards)
        return ReplayBuffer.holding(data.observations, data.actions, data.rewards, data.next_observations,
                                    data.terminals, steps, self.device)


def fit(trainer: L.Trainer, module: SACModule, datamodule: L.LightningDataModule) -> None:
    """``trainer.fit(module, datamodule)``, where SIGTERM stops the stage only as :mod:`pipeline.preemption` says:
    a checkpoint of the last whole step, then :class:`~pipeline.preemption.StopRequested`.

    Lightning's Trainer adds its own SIGTERM handler beside ours and looks at it at the end of every batch: a
    signal that lands after the module's own check of a step (the end of ``training_step``) but before Lightning
    looks makes it raise ``SIGTERMException``, a ``SystemExit`` with exit code 0 that saved nothing and reads to a
    scheduler as a finished job. The batch is whole by then, so that step is checkpointed here instead.
    """
    try:
        trainer.fit(module, datamodule=datamodule)
    except SIGTERMException:
        if not preemption.stop_requested():  # SIGTERM without our handler (the library used on its own)
            raise
        if trainer.world_size > 1:  # data-parallel ranks checkpoint together only at their collective steps
            raise preemption.StopRequested(f"stopped by signal SIGTERM at step {module.stage_step}; the rerun "
                                           "resumes from the last checkpoint") from None
        preemption.check(module.save, module.stage_step)
