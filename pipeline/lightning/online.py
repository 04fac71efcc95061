"""``OnlineFinetune``: SAC online, from scratch or from an offline-pretrained agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym

from pipeline.buffers import OfflineOnlineSampler, ReplayBuffer
from pipeline.config import Config
from pipeline.lightning.base import SACModule
from pipeline.online import OnlineRunner


class OnlineFinetune(SACModule):
    """One ``training_step`` = one step of every env copy plus ``sac.utd`` updates per env step.

    ``offline``: the training transitions (:func:`pipeline.workflow.common.training_transitions`) for the buffer
    (``finetune.buffer_mode``), handed over: the module keeps no reference once its buffers hold the rows;
    ``init_state``: agent weights to start from (a pretraining checkpoint's ``agent``); ``resume_state``: this
    stage's own last checkpoint.
    """

    def __init__(self, cfg: Config, env: gym.vector.VectorEnv, eval_env: gym.Env | gym.vector.VectorEnv | None,
                 run_dir: str | Path, offline: Any = None, init_state: dict[str, Any] | None = None,
                 resume_state: dict[str, Any] | None = None, progress: Any = None, fingerprint: str = "") -> None:
        obs_dim, act_dim = env.single_observation_space.shape[0], env.single_action_space.shape[0]
        # with action chunking the agent decides H actions at once: its action is the [H * A] chunk; a pretrained
        # agent brings its own normalization
        normalization = offline.normalization if offline is not None and init_state is None else None
        super().__init__(cfg, obs_dim, act_dim * cfg.sac.chunk, normalization)
        self.env, self.eval_env, self.run_dir = env, eval_env, Path(run_dir)
        self.offline, self.resume_state, self.progress = offline, resume_state, progress
        # identifies the run a checkpoint may resume (pipeline.workflow.common.run_fingerprint)
        self.fingerprint = fingerprint
        self.from_scratch = init_state is None
        if init_state is not None:
            self.agent.load_state_dict(init_state)
        self.runner: OnlineRunner | None = None

    def on_fit_start(self) -> None:
        cfg, ft = self.cfg, self.cfg.finetune
        obs_dim, act_dim = self.agent.obs_dim, self.agent.act_dim
        offline_buf = self.buffer_of(self.offline) if self.offline is not None else None
        seeded_extra = len(self.offline) if self.offline is not None and ft.buffer_mode == "seeded" else 0
        online = ReplayBuffer(ft.buffer_size + seeded_extra, obs_dim, act_dim, self.device)
        sampler = OfflineOnlineSampler(online, offline_buf, ft.buffer_mode, ft.offline_ratio)
        self.offline = None  # the buffers hold the rows now: the dataset is not kept beside them
        updater = self.make_updater()
        self.runner = OnlineRunner(cfg, self.agent, updater, self.env, self.eval_env, sampler, self.run_dir,
                                   from_scratch=self.from_scratch, fingerprint=self.fingerprint)
        self.runner.log_rows.attach(self.logger)  # the Trainer's logger (trainer.logger)
        if self.resume_state is not None:
            self.runner.load_state_dict(self.resume_state)
        else:
            self.runner.log_rows.start(None)
            sampler.seed_offline()
            if not self.from_scratch and self.eval_env is not None and cfg.finetune.eval_episodes > 0:
                self.runner.run_eval()  # step 0 of the curve: the pretrained agent before any online step

    def training_step(self, step: int, batch_idx: int) -> None:
        self.runner.step()
        if self.progress is not None:
            self.progress(self.runner)

    @property
    def stage_step(self) -> int:
        return self.runner.env_step

    def save(self) -> None:
        self.runner.save()

    def on_train_end(self) -> None:
        self.save()
