"""What the training stages share: the run's folder and fingerprint, resuming, the offline data, env options, the
Lightning ``Trainer``.

Every stage writes into its own ``out`` (config.yaml, checkpoints/, CSV logs, metrics.json) and resumes from
``out/checkpoints/last.pt`` when it belongs to the same run (:func:`run_fingerprint`), so running the same command
again after an interruption continues the run instead of restarting it.

Lightning is imported where a ``Trainer`` is built, not at the top: evaluation needs none of it, and importing it
costs a process several seconds (a ``dvc repro`` starts one process per stage).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import torch

from pipeline.checkpoint import RUN_CHECKPOINT, find_checkpoint, load_checkpoint
from pipeline.config import Config, ConfigError, DatasetConfig, SACConfig, save_config
from pipeline.data import TransitionDataset, load_dataset
from pipeline.data.chunking import chunk_transitions
from pipeline.envs import make_vector_env
from pipeline.precision import check_precision
from pipeline.runtime import keep_freed_memory, resolve_device, seed_everything, set_threads
from pipeline.sac import training_reward
from pipeline.tracking import make_logger, missing_package

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.loggers import Logger

# Keys a run may change and still resume: its length, and how it is shown.
RESUMABLE_CHANGES = ("name", "pretrain.steps", "finetune.total_steps", "trainer.progress")


def run_fingerprint(cfg: Config, *inputs: Any) -> str:
    """Digest of everything that defines a run: the config (minus :data:`RESUMABLE_CHANGES`) and its inputs.

    A checkpoint resumes only a run with the same fingerprint; a stage rerun with another dataset, another
    pretrained agent or other hyperparameters (DVC reruns keep ``persist`` outs) starts fresh instead.
    """
    conf = cfg.to_dict()
    for key in RESUMABLE_CHANGES:
        *parents, leaf = key.split(".")
        node = conf
        for p in parents:
            node = node[p]
        node.pop(leaf, None)
    h = hashlib.sha256(json.dumps(conf, sort_keys=True, default=str).encode())
    for item in inputs:
        if isinstance(item, TransitionDataset):
            for t in (item.observations, item.actions, item.rewards, item.terminals):
                h.update(t.detach().cpu().numpy().tobytes())
        elif isinstance(item, dict):  # a state dict
            for k, v in item.items():
                h.update(k.encode())
                if torch.is_tensor(v):
                    h.update(v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def resume_state(out: Path, fingerprint: str) -> dict[str, Any] | None:
    """The stage's last checkpoint if it belongs to this very run, else None (with a warning if one was there)."""
    ckpt = find_checkpoint(out / RUN_CHECKPOINT)
    if ckpt is None:
        return None
    state = load_checkpoint(ckpt)
    if state.get("fingerprint") != fingerprint:
        warnings.warn(f"{ckpt} belongs to a run with another config or other inputs; starting this run fresh",
                      stacklevel=2)
        return None
    return state


def load_offline(dcfg: DatasetConfig) -> TransitionDataset:
    """The dataset as stored, with observation statistics attached (:func:`training_transitions` makes what SAC
    trains on from it)."""
    ds = load_dataset(dcfg.format, dcfg.source, **dcfg.reader_options())
    return ds if ds.normalization is not None else ds.with_normalization()


def training_transitions(ds: TransitionDataset, sac: SACConfig) -> TransitionDataset:
    """What SAC trains on from a dataset: every step's reward through :func:`pipeline.sac.training_reward`, then
    ``sac.chunk``-step decisions with rewards discounted inside the chunk.

    The order matters with chunks and a reward shift: the online runner shifts each step's reward before summing a
    chunk, so the dataset's chunks must be made the same way (a chunk of H failing steps is worth
    ``-sum gamma^i``, not ``-1``).
    """
    ds = dataclasses.replace(ds, rewards=training_reward(ds.rewards, sac))
    return chunk_transitions(ds, sac.chunk, sac.gamma)


def finetune_dataset(cfg: Config) -> DatasetConfig | None:
    """The offline data of the online stage: ``finetune.dataset``, else the pretraining dataset when fine-tuning
    a pretrained agent, else none (from scratch). Its env_args also rebuild the robosuite env for evaluation."""
    ft = cfg.finetune
    return ft.dataset or (cfg.pretrain.dataset if ft.from_pretrained else None)


def env_options_for(env_id: str, dataset: TransitionDataset | None, options: dict[str, Any]) -> dict[str, Any]:
    """robosuite envs are rebuilt from the dataset's ``env_args`` and observe its ``obs_keys`` in its order."""
    opts = dict(options)
    if dataset is not None and env_id.startswith("robosuite/"):
        if dataset.meta.get("env_args") and "env_args" not in opts:
            opts["env_args"] = dataset.meta["env_args"]
        if dataset.meta.get("obs_keys") and "obs_keys" not in opts:
            opts["obs_keys"] = list(dataset.meta["obs_keys"])
    return opts


def make_eval_envs(cfg: Config, options: dict[str, Any]) -> gym.vector.VectorEnv:
    """The evaluation env of ``cfg.finetune.env_id``: ``cfg.evaluate.num_envs`` copies (a vector env, autoreset off)."""
    ev = cfg.evaluate
    return make_vector_env(cfg.finetune.env_id, ev.num_envs, ev.vectorization_mode, **options)


def check_logger(cfg: Config) -> None:
    """Stop before any work when ``trainer.logger`` names a logger whose package is not installed."""
    problem = missing_package(cfg.trainer.logger)
    if problem is not None:
        raise ConfigError(f"config key 'trainer.logger' = {cfg.trainer.logger!r}: {problem}; or choose another "
                          "with --set trainer.logger=dvclive|tensorboard|csv|none")


def stage_logger(cfg: Config, out: Path, resume_step: int | None) -> Logger | None:
    """The ``trainer.logger`` of a stage writing into ``out`` (:func:`pipeline.tracking.make_logger`: a fresh run
    clears an old log, a resumed one cuts it back to ``resume_step``)."""
    check_logger(cfg)
    return make_logger(cfg.trainer.logger, out, resume_step)


def make_trainer(cfg: Config, callbacks: list[L.Callback] | None = None, logger: Logger | None = None) -> L.Trainer:
    """The Lightning ``Trainer`` of a stage: one epoch over the step indices, ``logger`` (:func:`stage_logger`) for
    the metric rows the modules log at their own steps, no Lightning checkpointing.

    More than one process (``trainer.devices * trainer.num_nodes > 1``) or ``trainer.strategy = ddp`` runs
    Lightning's DDP with its subprocess launcher: rank 0 re-runs the same command line for the other local ranks
    (``python -m pipeline.cli ...``, ``stages/pretrain.py``, the ``sacflow`` script alike), or srun/torchrun
    start every rank. ``ddp_spawn`` is not needed: it would pickle the LightningModule (with its progress
    callback) into fresh interpreters, and buys nothing for a command-line program.
    """
    import lightning as L
    from lightning.pytorch.strategies import DDPStrategy

    # Lightning sets its loggers to INFO on import; its banners (accelerator, model summary) say nothing about an
    # RL stage
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    t = cfg.trainer
    device = resolve_device(cfg.device)
    check_precision(t.precision, device)
    accelerator = t.accelerator if t.accelerator != "auto" else ("gpu" if device.type == "cuda" else "cpu")
    strategy: str | DDPStrategy = t.strategy
    if t.strategy == "ddp" or t.devices * t.num_nodes > 1:
        # One SAC update runs three backward passes (critic, actor, alpha), each touching only part of the
        # parameters. DDP's reducer expects every parameter in every backward unless it looks for unused ones;
        # with it, each manual_backward all-reduces (averages) exactly the gradients that loss produced.
        strategy = DDPStrategy(find_unused_parameters=True)
    return L.Trainer(
        accelerator=accelerator, devices=t.devices, strategy=strategy, num_nodes=t.num_nodes, max_epochs=1,
        logger=logger if logger is not None else False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, deterministic=False, callbacks=callbacks, precision=t.precision,
    )


def prepare(cfg: Config, out_dir: str | Path, rank: int = 0) -> Path:
    """Create ``out_dir``, set threads and malloc's reuse of freed memory, seed ``cfg.seed + rank`` (each DDP rank
    samples its own batches) and, on rank 0 only, write ``config.yaml``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_threads(cfg.threads)
    keep_freed_memory()
    seed_everything(cfg.seed + rank)
    if rank == 0:
        save_config(cfg, out / "config.yaml")
    return out


def check_single_process(cfg: Config, stage: str) -> None:
    """Reject data-parallel trainer settings for a stage that runs in one process, naming the key to change."""
    t = cfg.trainer
    for key, value, single in (("trainer.devices", t.devices, 1), ("trainer.num_nodes", t.num_nodes, 1),
                               ("trainer.strategy", t.strategy, "auto")):
        if value != single:
            raise ConfigError(
                f"config key {key!r} = {value!r}: the {stage} stage runs in a single process (one environment "
                f"loop feeds the updates); set {key}={single} for it. Only pretrain runs data-parallel.")


