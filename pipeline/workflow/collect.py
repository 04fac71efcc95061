"""The ``collect`` stage: make a dataset with the library that owns its format.

- ``robosuite_demos``: scripted robosuite demonstrations at several noise levels, written in the robomimic layout.
- ``minari``: a Minari dataset recorded with ``minari.DataCollector`` from a uniform-random policy or a trained
  agent (``collect.policy_run``), so "medium"/"expert"-like datasets can be made locally.
- ``ogbench_play``: an OGBench "play" dataset made by OGBench's own scripted oracles, in OGBench's npz layout
  (``collect.env_id`` a goal-conditioned cube env such as ``cube-double-v0``; ``collect.workers`` processes).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline import preemption
from pipeline.config import Config, ConfigError
from pipeline.envs.factory import ROBOSUITE_PREFIX
from pipeline.metrics import write_json
from pipeline.run_logs import RECORD_LOGGER
from pipeline.runtime import seed_everything, set_threads
from pipeline.terminal import stage_progress
from pipeline.workflow import Stage


def _agent_policy(cfg: Config, run: str, space: Any, obs_dim: int) -> Any:
    """A trained agent acting in the raw env: its [-1, 1] actions mapped onto ``space``'s bounds."""
    from pipeline.sac import load_agent

    agent = load_agent(run, cfg, obs_dim, space.shape[0]).eval()

    def policy(obs: np.ndarray) -> np.ndarray:
        obs_t = torch.as_tensor(np.asarray(obs, dtype=np.float32)).unsqueeze(0)
        a = agent.act(obs_t, deterministic=False)[0].numpy()
        return space.low + (a + 1.0) * 0.5 * (space.high - space.low)

    return policy


def _progress(bar: Callable[[int], None], kept: Path | None = None) -> Callable[[int, int], None]:
    """The collectors' progress callback: advance the bar, then stop if SIGTERM came (with nothing written, or
    resumably where the collector keeps its finished episodes in ``kept``)."""
    def report(done: int, total: int) -> None:
        bar(done)
        preemption.check_collected(done, total, "episodes", kept)
    return report


def collect(cfg: Config, out_dir: str | Path) -> dict[str, Any]:
    """Make ``cfg.collect.out``; write the collection statistics to ``out_dir/metrics.json``."""
    c = cfg.collect
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_threads(cfg.threads)
    seed_everything(cfg.seed)
    if c.kind == "none":
        stats: dict[str, Any] = {"kind": "none"}
    elif c.kind == "robosuite_demos":
        from pipeline.collection.robosuite_demos import collect_robosuite_demos

        if not c.env_id.startswith(ROBOSUITE_PREFIX):
            raise ConfigError(f"config key 'collect.env_id' = {c.env_id!r}: robosuite_demos needs a "
                              f"'robosuite/<Task>' id")
        with stage_progress("collect", c.episodes, 0, cfg.trainer.progress) as bar:
            stats = collect_robosuite_demos(c.env_id[len(ROBOSUITE_PREFIX):], c.out, c.episodes,
                                            noise_levels=c.noise_levels, seed=cfg.seed, horizon=c.horizon,
                                            progress=_progress(bar), operators=c.operators)
        stats["success_rate"] = stats["successes"] / max(stats["episodes"], 1)
    elif c.kind == "ogbench_play":
        from pipeline.collection.ogbench_play import PLAY_EPISODE_STEPS, collect_ogbench_play, parts_dir_of

        n_val = max(c.episodes // 10, 1)
        with stage_progress("collect", c.episodes + n_val, 0, cfg.trainer.progress) as bar:
            try:
                stats = collect_ogbench_play(c.env_id, c.out, c.episodes, seed=cfg.seed, workers=c.workers,
                                             max_episode_steps=c.horizon or PLAY_EPISODE_STEPS,
                                             progress=_progress(bar, kept=parts_dir_of(c.out)))
            except ValueError as e:
                raise ConfigError(str(e)) from None
    else:
        import gymnasium as gym

        from pipeline.collection.minari import collect_minari
        from pipeline.envs import make_env

        if c.env_id.startswith(ROBOSUITE_PREFIX):  # registered by pipeline.envs; the env counts its own horizon
            env = make_env(c.env_id, **({"horizon": c.horizon} if c.horizon else {}))
        else:
            env = gym.make(c.env_id, max_episode_steps=c.horizon) if c.horizon else gym.make(c.env_id)
        policy = None
        if c.policy_run is not None:
            if cfg.sac.chunk > 1:
                raise ConfigError("config key 'collect.policy_run' records one action per step; an agent trained "
                                  f"with 'sac.chunk' = {cfg.sac.chunk} acts in chunks: collect with sac.chunk=1")
            policy = _agent_policy(cfg, c.policy_run, env.action_space, env.observation_space.shape[0])
        path = collect_minari(env, c.out, policy=policy, n_episodes=c.episodes, seed=cfg.seed,
                              ref_min_score=c.ref_min_score, ref_max_score=c.ref_max_score, overwrite=True,
                              algorithm_name="uniform random" if policy is None else f"sacflow agent {c.policy_run}")
        stats = {"kind": "minari", "dataset_id": c.out, "path": str(path), "episodes": c.episodes}
    write_json(out / "metrics.json", stats)
    return stats


def check_pipeline(cfg: Config) -> None:
    """The DVC pipeline is offline-to-online: its later stages read the dataset this stage makes, and dvc.yaml's
    metrics, plots and report stage read the training stages' DVCLive files."""
    if cfg.collect.kind == "none":
        raise ConfigError(
            f"preset {cfg.name!r} trains from scratch (collect.kind = 'none'), which the offline-to-online "
            f"pipeline in dvc.yaml cannot run. Use `sacflow finetune --preset {cfg.name} --out runs/{cfg.name}`, "
            f"or list the preset in bench/table/params.yaml and run `dvc repro bench/table/dvc.yaml`"
        )
    if cfg.trainer.logger != RECORD_LOGGER:
        raise ConfigError(
            f"config key 'trainer.logger' = {cfg.trainer.logger!r}: the DVC pipeline needs {RECORD_LOGGER!r} "
            f"(dvc.yaml's metrics and plots and the report stage read its files). Other loggers are for runs "
            f"outside DVC: `sacflow pretrain/finetune --preset {cfg.name} --set trainer.logger={cfg.trainer.logger}`"
        )


STAGE = Stage(
    name="collect", help="make the dataset: scripted robosuite demos, a Minari dataset or OGBench play data",
    sections=("collect",), run=collect, in_run=lambda cfg: cfg.collect.kind != "none", check_pipeline=check_pipeline,
)
