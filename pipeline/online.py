"""The online loop: act, store, update, log, evaluate, checkpoint. Driven one env step at a time.

:class:`OnlineRunner` is plain Python so a LightningModule (``pipeline.lightning.OnlineFinetune``) and a bare loop
(``bench/``) run exactly the same code. Checkpoints are taken at episode boundaries, so a resumed run restarts
with a fresh ``reset()`` drawn from the saved RNG states and continues the same trajectory as an uninterrupted one.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from pipeline.buffers import OfflineOnlineSampler
from pipeline.checkpoint import RUN_CHECKPOINT, save_checkpoint
from pipeline.config import Config
from pipeline.evaluation import evaluate
from pipeline.metrics import CSVLog, RunningMeans
from pipeline.runtime import rng_state, set_rng_state
from pipeline.sac import SACAgent, SACUpdater, training_reward

# where the wall time between two log rows went (``<phase>_share`` columns, fractions; the rest is logging, buffer
# writes and checkpoints). On CUDA, "update" holds what the host waits for: kernels still queued at the next sync
# land in the next phase.
PHASES = ("env", "act", "update", "eval")
TRAIN_COLUMNS = [
    "env_step", "updates", "episodes", "episode_return", "episode_success", "alpha", "entropy", "action_saturation",
    "actor_loss", "critic_loss", "q_mean", "actor_q", "bc_mse", "actor_grad_norm", "critic_grad_norm", "updates_per_s",
    "env_steps_per_s", "skipped_updates", "env_errors", *(f"{phase}_share" for phase in PHASES),
]
EVAL_COLUMNS = ["env_step", "mode", "return_mean", "return_std", "success_rate", "length_mean", "episodes"]


def env_rng_state(env: gym.Env) -> Any:
    return env.unwrapped.np_random.bit_generator.state


def set_env_rng_state(env: gym.Env, state: Any) -> None:
    env.unwrapped.np_random.bit_generator.state = state


class OnlineRunner:
    """One environment, one agent, one sampler; ``step()`` advances the run by one env step.

    ``updates_from``: env step at which updates begin; ``random_until``: env steps acted uniformly at random.
    """

    def __init__(self, cfg: Config, agent: SACAgent, updater: SACUpdater, env: gym.Env,
                 eval_env: gym.Env | gym.vector.VectorEnv | None, sampler: OfflineOnlineSampler,
                 run_dir: str | Path, from_scratch: bool, fingerprint: str = "") -> None:
        self.cfg, self.agent, self.updater, self.env, self.eval_env = cfg, agent, updater, env, eval_env
        self.sampler, self.run_dir, self.fingerprint = sampler, Path(run_dir), fingerprint
        ft = cfg.finetune
        self.updates_from = ft.learning_starts
        self.random_until = ft.random_steps if from_scratch else 0
        self.device = agent.obs_mean.device
        self.train_log = CSVLog(self.run_dir / "train.csv", TRAIN_COLUMNS, "env_step")
        self.eval_log = CSVLog(self.run_dir / "eval.csv", EVAL_COLUMNS, "env_step")
        self.means = RunningMeans()
        self.env_step = 0
        self.episodes = 0
        self.env_errors = 0
        self.obs: np.ndarray | None = None
        self.ep_return, self.ep_success = 0.0, False
        # the decision in flight (action chunking; H = 1 is one action per decision): its state, its [H*A] actions,
        # the actions still to execute, its discounted reward so far and its steps so far
        self.chunk = cfg.sac.chunk
        self.decision: tuple[np.ndarray, np.ndarray] | None = None
        self.queue: list[np.ndarray] = []
        self.chunk_reward, self.chunk_steps = 0.0, 0
        self.seconds = dict.fromkeys(PHASES, 0.0)  # per phase, since the last log row
        self.recent_returns: list[float] = []
        self.recent_successes: list[float] = []
        self.last_eval: dict[str, Any] = {}
        self.next_checkpoint = ft.checkpoint_every
        self.reports_success = False
        self._t_log, self._step_log, self._updates_log = time.perf_counter(), 0, 0

    # -- the loop -------------------------------------------------------------------------------------------
    def step(self) -> None:
        if self.obs is None:
            seed = self.cfg.seed if self.episodes == 0 else None
            self.obs, _ = self.env.reset(seed=seed)
            self.ep_return, self.ep_success = 0.0, False
        if not self.queue:  # a new decision
            if self.env_step < self.random_until:
                chunk = np.stack([self.env.action_space.sample() for _ in range(self.chunk)])
            else:
                t0 = time.perf_counter()
                obs_t = torch.as_tensor(self.obs, device=self.device).unsqueeze(0)
                chunk = self.agent.act(obs_t, deterministic=False)[0].cpu().numpy().reshape(self.chunk, -1)
                self.seconds["act"] += time.perf_counter() - t0
            self.decision = (self.obs, chunk.reshape(-1))
            self.queue = list(chunk)
            self.chunk_reward, self.chunk_steps = 0.0, 0
        action = self.queue.pop(0)
        t0 = time.perf_counter()
        next_obs, reward, terminated, truncated, info = self.env.step(action)
        self.seconds["env"] += time.perf_counter() - t0
        if info.get("env_error"):
            self.env_errors += 1
        ft = self.cfg.finetune
        self.chunk_reward += self.cfg.sac.gamma ** self.chunk_steps * training_reward(float(reward), self.cfg.sac)
        self.chunk_steps += 1
        if terminated or not self.queue:
            # a whole chunk, or one cut short by a true terminal; one cut by a time limit has no state H steps
            # later and is dropped (pipeline.data.chunking applies the same rule to datasets)
            self.sampler.online.add(*self.decision, self.chunk_reward, next_obs, float(terminated))
        if terminated or truncated:
            self.queue = []
        self.env_step += 1
        self.ep_return += float(reward)
        if "success" in info:  # robosuite reports it at every step; locomotion never, and logs no success column
            self.reports_success = True
            self.ep_success = self.ep_success or bool(info["success"])
        self.obs = next_obs
        if self.env_step > self.updates_from:
            t0 = time.perf_counter()
            for _ in range(self.cfg.sac.utd):
                self.means.add(self.updater.update(self.sampler.sample(self.cfg.sac.batch_size)))
            self.seconds["update"] += time.perf_counter() - t0
        if terminated or truncated:  # counted before this step's log row, which then reports the episode
            self.episodes += 1
            self.recent_returns.append(self.ep_return)
            self.recent_successes.append(float(self.ep_success))
        if self.env_step % ft.log_every == 0:
            self.write_log_row()
        if self.eval_env is not None and ft.eval_episodes > 0 and self.env_step % ft.eval_every == 0:
            self.run_eval()
        if terminated or truncated:
            self.obs = None
            if self.env_step >= self.next_checkpoint:
                self.save()
                self.next_checkpoint = (self.env_step // ft.checkpoint_every + 1) * ft.checkpoint_every

    def write_log_row(self) -> None:
        now = time.perf_counter()
        elapsed = max(now - self._t_log, 1e-9)
        row: dict[str, Any] = {k: v for k, v in self.means.pop().items() if k in TRAIN_COLUMNS}
        row.update(
            env_step=self.env_step, updates=self.updater.updates, episodes=self.episodes,
            updates_per_s=(self.updater.updates - self._updates_log) / elapsed,
            env_steps_per_s=(self.env_step - self._step_log) / elapsed,
            skipped_updates=self.updater.skipped, env_errors=self.env_errors, alpha=self.agent.alpha.item(),
            **{f"{k}_share": v / elapsed for k, v in self.seconds.items()},
        )
        self.seconds = dict.fromkeys(PHASES, 0.0)
        if self.recent_returns:
            row["episode_return"] = float(np.mean(self.recent_returns))
            if self.reports_success:
                row["episode_success"] = float(np.mean(self.recent_successes))
            self.recent_returns, self.recent_successes = [], []
        self.train_log.append(row)
        self._t_log, self._step_log, self._updates_log = time.perf_counter(), self.env_step, self.updater.updates

    def run_eval(self) -> dict[str, Any]:
        """Deterministic (and, with ``evaluate.both``, stochastic) evaluation on fixed seeds, logged to eval.csv."""
        ev = self.cfg.evaluate
        modes = [True, False] if ev.both else [ev.deterministic]
        t0 = time.perf_counter()
        for deterministic in modes:
            result = evaluate(self.agent, self.eval_env, self.cfg.finetune.eval_episodes, ev.seed, deterministic)
            self.eval_log.append({"env_step": self.env_step, **result})
            self.last_eval[result["mode"]] = result
        self.seconds["eval"] += time.perf_counter() - t0
        return self.last_eval

    # -- checkpoints ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint, "agent": self.agent.state_dict(), "updater": self.updater.state_dict(),
            "buffer": self.sampler.online.state_dict(), "seeded": self.sampler.seeded,
            "env_step": self.env_step, "episodes": self.episodes, "env_errors": self.env_errors,
            "next_checkpoint": self.next_checkpoint, "rng": rng_state(), "env_rng": env_rng_state(self.env),
            "recent_returns": self.recent_returns, "recent_successes": self.recent_successes,
            "means": self.means.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.updater.load_state_dict(state["updater"])
        self.sampler.online.load_state_dict(state["buffer"])
        self.sampler.seeded = state["seeded"]
        self.env_step, self.episodes = state["env_step"], state["episodes"]
        self.env_errors, self.next_checkpoint = state["env_errors"], state["next_checkpoint"]
        self.recent_returns, self.recent_successes = state["recent_returns"], state["recent_successes"]
        self.means.load_state_dict(state["means"], self.device)
        if self.episodes > 0:  # the first reset is seeded by cfg.seed; later ones draw from the saved env RNG
            # gymnasium seeds the env RNG on the first reset; reset once so the saved state is not overwritten
            self.env.reset(seed=self.cfg.seed)
        set_env_rng_state(self.env, state["env_rng"])
        set_rng_state(state["rng"])
        self.obs = None
        self.train_log.truncate_after(self.env_step)
        self.eval_log.truncate_after(self.env_step)
        self._t_log, self._step_log, self._updates_log = time.perf_counter(), self.env_step, self.updater.updates

    def save(self, path: str | Path | None = None) -> None:
        save_checkpoint(self.state_dict(), path or self.run_dir / RUN_CHECKPOINT)
