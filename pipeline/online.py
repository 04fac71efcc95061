"""The online loop: act, store, update, log, evaluate, checkpoint. Driven one (vector) env step at a time.

:class:`OnlineRunner` is plain Python so a LightningModule (``pipeline.lightning.OnlineFinetune``) and a bare loop
(``bench/``) run exactly the same code.

A checkpoint can be taken after any step, episodes in flight included: it holds every random state (global,
per-copy env and random-action generators) and, per env copy, how its current episode began and the actions it
has executed since. A resumed run replays those actions in fresh env copies (:meth:`pipeline.envs.EnvCopy.replay`),
checks that each copy is back at the saved observation, and continues bit-identically to an uninterrupted run,
with any number of copies, in this process or in workers. An env that does not replay exactly (randomness outside
its generator) gets a warning and that copy's episode restarts.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch

from pipeline import preemption
from pipeline.buffers import OfflineOnlineSampler
from pipeline.checkpoint import RUN_CHECKPOINT, save_checkpoint
from pipeline.config import Config
from pipeline.evaluation import evaluate
from pipeline.metrics import RunningMeans
from pipeline.run_logs import StageLog
from pipeline.runtime import rng_state, set_rng_state
from pipeline.sac import SACAgent, training_reward
from pipeline.update import SACUpdater

# where the wall time between two log rows went (``<phase>_share`` columns, fractions; the rest is logging, buffer
# writes and checkpoints). On CUDA, "update" holds what the host waits for: kernels still queued at the next sync
# land in the next phase.
PHASES = ("env", "act", "update", "eval")
TRAIN_COLUMNS = [
    "env_step", "updates", "episodes", "episode_return", "episode_success", "alpha", "entropy", "action_saturation",
    "log_sigma", "actor_loss", "critic_loss", "q_mean", "actor_q", "bc_mse", "actor_grad_norm", "critic_grad_norm",
    "updates_per_s", "env_steps_per_s", "skipped_updates", "env_errors", *(f"{phase}_share" for phase in PHASES),
]
EVAL_COLUMNS = ["env_step", "mode", "return_mean", "return_std", "success_rate", "length_mean",
                "success_length_mean", "episodes"]


def env_rng_states(env: gym.vector.VectorEnv) -> list[Any]:
    """The bit-generator state of each copy's RNG (works across worker processes: generators pickle)."""
    return [g.bit_generator.state for g in env.get_attr("np_random")]


def set_env_rng_states(env: gym.vector.VectorEnv, states: list[Any]) -> None:
    generators = env.get_attr("np_random")
    for g, state in zip(generators, states, strict=True):
        g.bit_generator.state = state
    env.set_attr("np_random", list(generators))


class OnlineRunner:
    """``env.num_envs`` copies of one environment, one agent, one sampler; ``step()`` advances every copy by one step.

    ``env``: a vector env with autoreset off (:func:`pipeline.envs.make_vector_env`); each step adds one transition
    per copy and runs ``sac.utd`` updates per env step it took (while the copies step, if they are worker
    processes). ``updates_from``: env step at which updates begin; ``random_until``: env steps acted uniformly at
    random.
    """

    def __init__(self, cfg: Config, agent: SACAgent, updater: SACUpdater, env: gym.vector.VectorEnv,
                 eval_env: gym.Env | gym.vector.VectorEnv | None, sampler: OfflineOnlineSampler,
                 run_dir: str | Path, from_scratch: bool, fingerprint: str = "") -> None:
        self.cfg, self.agent, self.updater, self.env, self.eval_env = cfg, agent, updater, env, eval_env
        self.sampler, self.run_dir, self.fingerprint = sampler, Path(run_dir), fingerprint
        ft = cfg.finetune
        self.updates_from = ft.learning_starts
        self.random_until = ft.random_steps if from_scratch else 0
        self.device = agent.obs_mean.device
        # train and eval rows to the Lightning logger (trainer.logger; attached by the caller) at env_step, as
        # train/<column> and eval/<mode>/<column>, and to train.csv / eval.csv unless the logger is DVCLive
        self.log_rows = StageLog(self.run_dir, {"train": TRAIN_COLUMNS, "eval": EVAL_COLUMNS}, cfg.trainer.logger)
        self.means = RunningMeans()
        self.env_step, self.prev_env_step = 0, 0  # after and before the last step()
        self.episodes = 0
        self.env_errors = 0
        n = self.num_envs = env.num_envs
        self.overlap = isinstance(env, gym.vector.AsyncVectorEnv)  # updates run while the workers step
        space = env.single_action_space
        # the uniform-random actions of the first steps: copy i draws from a stream seeded seed + i (the stream
        # make_env(seed=seed + i) gives the copy's own action space), saved with every checkpoint
        self.random_actions = [gym.spaces.Box(space.low, space.high, dtype=space.dtype, seed=cfg.seed + i)
                               for i in range(n)]
        self.obs: np.ndarray | None = None  # [N, obs_dim]
        self.needs_reset = np.ones(n, dtype=bool)
        self.ep_return, self.ep_success = np.zeros(n), np.zeros(n, dtype=bool)
        # per copy, the decision in flight (action chunking; H = 1 is one action per decision): its state, its
        # [H*A] actions, the actions still to execute, its discounted reward so far and its steps so far
        self.chunk = cfg.sac.chunk
        self.decisions: list[tuple[np.ndarray, np.ndarray] | None] = [None] * n
        self.queues: list[list[np.ndarray]] = [[] for _ in range(n)]
        self.chunk_reward, self.chunk_steps = np.zeros(n), np.zeros(n, dtype=np.int64)
        # per copy, what replays its episode in flight on resume: how the episode began (EnvCopy.replay's start)
        # and the actions executed since
        self.episode_starts: list[tuple[str, Any] | None] = [None] * n
        self.episode_actions: list[list[np.ndarray]] = [[] for _ in range(n)]
        self.seconds = dict.fromkeys(PHASES, 0.0)  # per phase, since the last log row
        self.recent_returns: list[float] = []
        self.recent_successes: list[float] = []
        self.last_eval: dict[str, Any] = {}
        self.last_eval_step = -1
        self.next_checkpoint = ft.checkpoint_every
        self.reports_success = False
        self._t_log, self._step_log, self._updates_log = time.perf_counter(), 0, 0

    # -- the loop -------------------------------------------------------------------------------------------
    def crossed(self, every: int) -> bool:
        """Whether the last ``step()`` reached a multiple of ``every`` env steps (it may step past it)."""
        return self.env_step // every > self.prev_env_step // every

    def reset_finished(self) -> None:
        """Reset the copies whose episode ended (all of them on the first step and after a resume)."""
        mask = self.needs_reset
        if self.env_step == 0:  # the first reset of a run is seeded (copy i: cfg.seed + i)
            starts = [("seed", self.cfg.seed + i) for i in range(self.num_envs)]
            self.obs, _ = self.env.reset(seed=self.cfg.seed)
        else:  # later ones continue each copy's stream
            starts = [("rng", state) for state in env_rng_states(self.env)]
            self.obs, _ = self.env.reset(options={"reset_mask": mask.copy()})
        for i in np.flatnonzero(mask):
            self.episode_starts[i], self.episode_actions[i] = starts[i], []
        self.ep_return[mask], self.ep_success[mask] = 0.0, False
        self.needs_reset = np.zeros(self.num_envs, dtype=bool)

    def decide(self) -> None:
        """A new decision (H actions) for every copy whose queue is empty: one batched policy call."""
        deciding = [i for i in range(self.num_envs) if not self.queues[i]]
        if not deciding:
            return
        if self.env_step < self.random_until:
            chunks = [np.stack([self.random_actions[i].sample() for _ in range(self.chunk)]) for i in deciding]
        else:
            t0 = time.perf_counter()
            obs_t = torch.as_tensor(self.obs[deciding], device=self.device)
            actions = self.agent.act(obs_t, deterministic=False).cpu().numpy()
            chunks = list(actions.reshape(len(deciding), self.chunk, -1))
            self.seconds["act"] += time.perf_counter() - t0
        for i, chunk in zip(deciding, chunks):
            self.decisions[i] = (self.obs[i], chunk.reshape(-1))
            self.queues[i] = list(chunk)
            self.chunk_reward[i], self.chunk_steps[i] = 0.0, 0

    def run_updates(self, env_steps: int) -> None:
        """``sac.utd`` updates per env step."""
        t0 = time.perf_counter()
        for _ in range(env_steps * self.cfg.sac.utd):
            self.means.add(self.updater.update(self.sampler.sample(self.cfg.sac.batch_size)))
        self.seconds["update"] += time.perf_counter() - t0

    def step(self) -> None:
        if self.needs_reset.any():
            self.reset_finished()
        self.decide()
        actions = np.stack([q.pop(0) for q in self.queues])
        self.prev_env_step, self.env_step = self.env_step, self.env_step + self.num_envs
        new_steps = self.env_step - max(self.prev_env_step, self.updates_from)  # env steps past learning_starts
        # worker processes simulate while this one updates, so those updates sample the buffer as it was before this
        # step's transitions (one step of lag); in-process copies, or a still-empty buffer, step first
        overlap = self.overlap and new_steps > 0 and len(self.sampler.online) > 0
        t0 = time.perf_counter()
        if overlap:
            self.env.step_async(actions)
            self.seconds["env"] += time.perf_counter() - t0
            self.run_updates(new_steps)
            t0 = time.perf_counter()
            next_obs, reward, terminated, truncated, info = self.env.step_wait()
        else:
            next_obs, reward, terminated, truncated, info = self.env.step(actions)
        self.seconds["env"] += time.perf_counter() - t0
        self.env_errors += int(np.count_nonzero(info.get("_env_error", ())))
        for i in range(self.num_envs):
            self.episode_actions[i].append(actions[i])
        done = terminated | truncated
        self.chunk_reward += self.cfg.sac.gamma ** self.chunk_steps * training_reward(reward, self.cfg.sac)
        self.chunk_steps += 1
        # a whole chunk, or one cut short by a true terminal; one cut by a time limit has no state H steps later and
        # is dropped (pipeline.data.chunking applies the same rule to datasets). One buffer write for all copies.
        ended = np.flatnonzero(terminated | np.array([not q for q in self.queues]))
        if ended.size:
            self.sampler.online.add(np.stack([self.decisions[i][0] for i in ended]),
                                    np.stack([self.decisions[i][1] for i in ended]),
                                    self.chunk_reward[ended], next_obs[ended], terminated[ended],
                                    self.chunk_steps[ended].astype(np.float32))
        for i in np.flatnonzero(done):
            self.queues[i] = []
        self.ep_return += reward
        if "success" in info:  # robosuite reports it at every step; locomotion never, and logs no success column
            self.reports_success = True
            self.ep_success |= np.asarray(info["success"], dtype=bool) & info["_success"]
        self.obs = next_obs
        if new_steps > 0 and not overlap:
            self.run_updates(new_steps)
        for i in np.flatnonzero(done):  # counted before this step's log row, which then reports the episodes
            self.episodes += 1
            self.recent_returns.append(float(self.ep_return[i]))
            self.recent_successes.append(float(self.ep_success[i]))
        ft = self.cfg.finetune
        if self.crossed(ft.log_every):
            self.write_log_row()
        if self.eval_env is not None and ft.eval_episodes > 0 and self.crossed(ft.eval_every):
            self.run_eval()
        self.needs_reset = done
        if self.env_step >= self.next_checkpoint:
            self.save()
            self.next_checkpoint = (self.env_step // ft.checkpoint_every + 1) * ft.checkpoint_every
        preemption.check(self.save, self.env_step)

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
        self.log_rows.append("train", row)
        self._t_log, self._step_log, self._updates_log = time.perf_counter(), self.env_step, self.updater.updates

    def run_eval(self) -> dict[str, Any]:
        """Deterministic (and, with ``evaluate.both``, stochastic) evaluation on fixed seeds, logged as eval rows."""
        ev = self.cfg.evaluate
        modes = [True, False] if ev.both else [ev.deterministic]
        t0 = time.perf_counter()
        for deterministic in modes:
            result = evaluate(self.agent, self.eval_env, self.cfg.finetune.eval_episodes, ev.seed, deterministic)
            self.log_rows.append("eval", {"env_step": self.env_step, **result})
            self.last_eval[result["mode"]] = result
        self.last_eval_step = self.env_step
        self.seconds["eval"] += time.perf_counter() - t0
        return self.last_eval

    # -- checkpoints ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "fingerprint": self.fingerprint, "agent": self.agent.state_dict(), "updater": self.updater.state_dict(),
            "buffer": self.sampler.online.state_dict(), "seeded": self.sampler.seeded,
            "env_step": self.env_step, "episodes": self.episodes, "env_errors": self.env_errors,
            "next_checkpoint": self.next_checkpoint, "rng": rng_state(), "env_rng": env_rng_states(self.env),
            "random_action_rng": [s.np_random.bit_generator.state for s in self.random_actions],
            "recent_returns": self.recent_returns, "recent_successes": self.recent_successes,
            "means": self.means.state_dict(), "last_eval": self.last_eval, "last_eval_step": self.last_eval_step,
            "reports_success": self.reports_success,
            "copies": {"obs": self.obs, "needs_reset": self.needs_reset, "ep_return": self.ep_return,
                       "ep_success": self.ep_success, "decisions": self.decisions, "queues": self.queues,
                       "chunk_reward": self.chunk_reward, "chunk_steps": self.chunk_steps,
                       "episode_starts": self.episode_starts, "episode_actions": self.episode_actions},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.agent.load_state_dict(state["agent"])
        self.updater.load_state_dict(state["updater"])
        self.sampler.online.load_state_dict(state["buffer"])
        if state["seeded"]:
            self.sampler.mark_seeded()
        self.env_step, self.episodes = state["env_step"], state["episodes"]
        self.env_errors, self.next_checkpoint = state["env_errors"], state["next_checkpoint"]
        self.recent_returns, self.recent_successes = state["recent_returns"], state["recent_successes"]
        self.means.load_state_dict(state["means"], self.device)
        self.last_eval, self.last_eval_step = state["last_eval"], state["last_eval_step"]
        self.reports_success = state["reports_success"]
        if self.env_step > 0:
            # every copy's first reset seeds its RNG (gymnasium): reset once, so the saved states set below stay
            self.env.reset(seed=self.cfg.seed)
            self._restore_copies(state["copies"])
        set_env_rng_states(self.env, state["env_rng"])
        for space, rng in zip(self.random_actions, state["random_action_rng"], strict=True):
            space.np_random.bit_generator.state = rng
        set_rng_state(state["rng"])
        self.prev_env_step = self.env_step
        self.log_rows.start(self.env_step)
        self._t_log, self._step_log, self._updates_log = time.perf_counter(), self.env_step, self.updater.updates

    def _restore_copies(self, copies: dict[str, Any]) -> None:
        """Put every env copy back where the checkpoint left it: replay each episode in flight from its start."""
        self.obs, self.needs_reset = copies["obs"], copies["needs_reset"]
        self.ep_return, self.ep_success = copies["ep_return"], copies["ep_success"]
        self.decisions, self.queues = copies["decisions"], copies["queues"]
        self.chunk_reward, self.chunk_steps = copies["chunk_reward"], copies["chunk_steps"]
        self.episode_starts, self.episode_actions = copies["episode_starts"], copies["episode_actions"]
        plans = [None if self.needs_reset[i] else (self.episode_starts[i], self.episode_actions[i])
                 for i in range(self.num_envs)]
        replayed = self.env.call("replay", plans)
        for i, obs in enumerate(replayed):
            if obs is None or np.array_equal(obs, self.obs[i]):
                continue
            warnings.warn(
                f"env copy {i} of {self.cfg.finetune.env_id!r} did not replay its episode in flight to the saved "
                f"observation (largest difference {np.abs(obs - self.obs[i]).max():.3g}): the env draws randomness "
                "its generator does not hold. That episode restarts; the resumed run differs from an uninterrupted "
                "one from here on", stacklevel=2)
            self.needs_reset[i] = True
            self.queues[i] = []

    def save(self, path: str | Path | None = None) -> None:
        self.log_rows.flush()  # what a resume continues from: every row up to this step is on disk
        save_checkpoint(self.state_dict(), path or self.run_dir / RUN_CHECKPOINT)
