"""Stage recipes: build data, model and trainer; fit; return metrics. The CLI and the DVC stages call these.

Every recipe writes into its own ``out_dir`` (config.yaml, checkpoints/, CSV logs, metrics.json) and resumes
from ``out_dir/checkpoints/last.pt`` when it exists, so running the same command again after an interruption
continues the run instead of restarting it.

Lightning is imported where a ``Trainer`` is built, not at the top: evaluation needs none of it, and importing it
costs a process several seconds (a ``dvc repro`` starts one process per stage).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
import warnings
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import torch

from pipeline.checkpoint import RUN_CHECKPOINT, find_checkpoint, load_checkpoint, run_checkpoint
from pipeline.config import Config, ConfigError, DatasetConfig, SACConfig, save_config
from pipeline.data import TransitionDataset, check_compatible, load_dataset
from pipeline.data.chunking import chunk_transitions
from pipeline.distributed import process_rank
from pipeline.envs import make_env, make_vector_env
from pipeline.evaluation import evaluate
from pipeline.metrics import final_training_metrics, write_json
from pipeline.online import PHASES
from pipeline.progress import stage_progress
from pipeline.runtime import resolve_device, seed_everything, set_threads
from pipeline.sac import SACAgent, training_reward

if TYPE_CHECKING:
    import lightning as L

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
    options: dict[str, Any] = {}
    if dcfg.obs_keys is not None:
        options["obs_keys"] = dcfg.obs_keys
    if dcfg.filter_key is not None:
        options["filter_key"] = dcfg.filter_key
    ds = load_dataset(dcfg.format, dcfg.source, **options)
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


def make_trainer(cfg: Config, callbacks: list[L.Callback] | None = None) -> L.Trainer:
    """The Lightning ``Trainer`` of a stage: one epoch over the step indices, no Lightning logging/checkpointing.

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
    accelerator = t.accelerator if t.accelerator != "auto" else ("gpu" if device.type == "cuda" else "cpu")
    strategy: str | DDPStrategy = t.strategy
    if t.strategy == "ddp" or t.devices * t.num_nodes > 1:
        # One SAC update runs three backward passes (critic, actor, alpha), each touching only part of the
        # parameters. DDP's reducer expects every parameter in every backward unless it looks for unused ones;
        # with it, each manual_backward all-reduces (averages) exactly the gradients that loss produced.
        strategy = DDPStrategy(find_unused_parameters=True)
    return L.Trainer(
        accelerator=accelerator, devices=t.devices, strategy=strategy, num_nodes=t.num_nodes, max_epochs=1,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, deterministic=False, callbacks=callbacks,
    )


def _prepare(cfg: Config, out_dir: str | Path, rank: int = 0) -> Path:
    """Create ``out_dir``, set threads, seed ``cfg.seed + rank`` (each DDP rank samples its own batches) and,
    on rank 0 only, write ``config.yaml``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    set_threads(cfg.threads)
    seed_everything(cfg.seed + rank)
    if rank == 0:
        save_config(cfg, out / "config.yaml")
    return out


def pretrain(cfg: Config, out_dir: str | Path, callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Offline pretraining on ``cfg.pretrain.dataset``; returns the metrics written to ``metrics.json``.

    Data-parallel (``trainer.devices`` / ``trainer.num_nodes``): every rank runs this function. Each reads the
    dataset and the run's checkpoint and samples its own batches (seed + rank); gradients are averaged, so the
    ranks keep identical weights and the global batch is ``world_size * sac.batch_size``. Only rank 0 writes
    files or shows progress; the other ranks return ``{}``. ``callbacks``: extra Lightning callbacks.
    """
    from pipeline.lightning import OfflinePretrain, StepDataModule

    trainer = make_trainer(cfg, callbacks)
    rank = process_rank(trainer)
    out = _prepare(cfg, out_dir, rank)
    dataset = training_transitions(load_offline(cfg.pretrain.dataset), cfg.sac)
    if cfg.sac.batch_size > len(dataset):
        raise ConfigError(f"config key 'sac.batch_size' = {cfg.sac.batch_size} is larger than the dataset "
                          f"{cfg.pretrain.dataset.source} ({len(dataset)} transitions)")
    fingerprint = run_fingerprint(cfg, dataset)
    resume = resume_state(out, fingerprint)
    start = resume["step"] if resume else 0
    total = cfg.pretrain.steps
    t0 = time.perf_counter()
    with stage_progress("pretrain", total, start, cfg.trainer.progress and rank == 0) as bar:
        module = OfflinePretrain(cfg, dataset, out, resume_state=resume, fingerprint=fingerprint,
                                 progress=lambda m: bar(m.step_count) if m.step_count % 50 == 0 else None)
        if start < total:
            trainer.fit(module, datamodule=StepDataModule(start, total))
    if rank != 0:
        return {}
    rows = module.log_csv.rows()
    world = trainer.world_size
    metrics = {"stage": "pretrain", "steps": total, "dataset": cfg.pretrain.dataset.source,
               "transitions": len(dataset), "seconds": time.perf_counter() - t0, "resumed_from": start,
               "world_size": world, "global_batch": world * cfg.sac.batch_size}
    if module.updates_per_second is not None:
        metrics["updates_per_second"] = module.updates_per_second
    if rows:
        metrics.update({f"final_{k}": float(v) for k, v in rows[-1].items() if v not in ("", None) and k != "step"})
    write_json(out / "metrics.json", metrics)
    return metrics


def _check_single_process(cfg: Config, stage: str) -> None:
    """Reject data-parallel trainer settings for a stage that runs in one process, naming the key to change."""
    t = cfg.trainer
    for key, value, single in (("trainer.devices", t.devices, 1), ("trainer.num_nodes", t.num_nodes, 1),
                               ("trainer.strategy", t.strategy, "auto")):
        if value != single:
            raise ConfigError(
                f"config key {key!r} = {value!r}: the {stage} stage runs in a single process (one environment "
                f"loop feeds the updates); set {key}={single} for it. Only pretrain runs data-parallel.")


def finetune(cfg: Config, out_dir: str | Path, pretrained: str | Path | None = None) -> dict[str, Any]:
    """Online SAC: from the agent in ``pretrained`` (a pretrain run's checkpoint) or from scratch."""
    from pipeline.lightning import OnlineFinetune, StepDataModule

    _check_single_process(cfg, "finetune")
    out = _prepare(cfg, out_dir)
    ft = cfg.finetune
    if ft.from_pretrained and pretrained is None:
        raise ConfigError("finetune.from_pretrained is true but no pretrained checkpoint was given "
                          "(pass --pretrained DIR, or --set finetune.from_pretrained=false)")
    dcfg = finetune_dataset(cfg)
    offline = load_offline(dcfg) if dcfg is not None else None
    options = env_options_for(ft.env_id, offline, ft.env_options)
    try:
        space_env = make_env(ft.env_id, **options)  # its spaces, checked against the data before any worker starts
    except ValueError as e:
        if not ft.env_options:
            raise
        raise ConfigError(f"config key 'finetune.env_options' = {ft.env_options!r} does not fit env "
                          f"{ft.env_id!r}: {e}. Options a preset set for another env are cleared with "
                          "--set 'finetune.env_options={}'") from e
    obs_dim, act_dim = space_env.observation_space.shape[0], space_env.action_space.shape[0]
    space_env.close()
    if offline is not None:
        check_compatible(offline, obs_dim, act_dim, dcfg.source)
        offline = training_transitions(offline, cfg.sac)
    init_state = None
    if ft.from_pretrained:
        init_state = load_checkpoint(run_checkpoint(pretrained))["agent"]
    fingerprint = run_fingerprint(cfg, *(x for x in (offline, init_state) if x is not None))
    resume = resume_state(out, fingerprint)
    start = resume["env_step"] if resume else 0
    t0 = time.perf_counter()
    # the env copies (worker processes when async) start here, after every input check, and close however fit ends
    with closing(make_vector_env(ft.env_id, ft.num_envs, ft.vectorization_mode, seed=cfg.seed, **options)) as env, \
            closing(make_eval_envs(cfg, options)) as eval_env, \
            stage_progress("finetune", ft.total_steps, start, cfg.trainer.progress) as bar:
        def show(runner: Any) -> None:
            if runner.crossed(100):
                ev = runner.last_eval.get("deterministic", {})
                bar(runner.env_step, episodes=runner.episodes,
                    **({"eval_success": ev["success_rate"]} if "success_rate" in ev else
                       {"eval_return": ev["return_mean"]} if ev else {}))

        module = OnlineFinetune(cfg, env, eval_env, out, offline=offline, init_state=init_state,
                                resume_state=resume, progress=show, fingerprint=fingerprint)
        offline = None  # the module's buffers take the rows over: hold them once (bench/README.md, memory)
        make_trainer(cfg).fit(module, datamodule=StepDataModule(start, ft.total_steps, ft.num_envs))
        runner = module.runner
        evaluated_last_step = runner.last_eval_step == runner.env_step
        final = runner.last_eval if evaluated_last_step else runner.run_eval() if ft.eval_episodes > 0 else {}
    metrics: dict[str, Any] = {"stage": "finetune", "env_id": ft.env_id, "env_steps": runner.env_step,
                               "updates": runner.updater.updates, "episodes": runner.episodes,
                               "seconds": time.perf_counter() - t0, "resumed_from": start,
                               "from_pretrained": ft.from_pretrained, "skipped_updates": runner.updater.skipped,
                               "env_errors": runner.env_errors, **runner.sampler.composition()}
    rows = runner.train_log.rows()
    for phase in PHASES:  # share of the wall time, averaged over the log rows
        shares = [float(r[f"{phase}_share"]) for r in rows if r.get(f"{phase}_share") not in ("", None)]
        if shares:
            metrics[f"{phase}_time_share"] = sum(shares) / len(shares)
    for mode, result in final.items():
        for k in ("return_mean", "success_rate"):
            if k in result:
                metrics[f"eval_{mode}_{k}"] = result[k]
    metrics.update(final_training_metrics(rows))
    write_json(out / "metrics.json", metrics)
    return metrics


def evaluate_checkpoints(cfg: Config, checkpoints: dict[str, str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Evaluate each named run's final agent on ``cfg.evaluate.episodes`` fixed-seed episodes of the finetune env.

    Writes ``metrics.json`` as ``{name: {deterministic: {...}, stochastic: {...}}}`` (plus normalized scores
    when the dataset has reference returns) and returns it.
    """
    out = _prepare(cfg, out_dir)
    ft, ev = cfg.finetune, cfg.evaluate
    dcfg = finetune_dataset(cfg)
    dataset = load_offline(dcfg) if dcfg is not None else None
    env = make_eval_envs(cfg, env_options_for(ft.env_id, dataset, ft.env_options))
    device = resolve_device(cfg.device)
    obs_dim, act_dim = env.single_observation_space.shape[0], env.single_action_space.shape[0]
    results: dict[str, Any] = {}
    modes = [True, False] if ev.both else [ev.deterministic]
    with closing(env), stage_progress("evaluate", len(checkpoints) * len(modes) * ev.episodes, 0,
                                      cfg.trainer.progress) as bar:
        done = 0
        for name, path in checkpoints.items():
            state = load_checkpoint(run_checkpoint(path), map_location=device)
            agent = SACAgent(obs_dim, act_dim * cfg.sac.chunk, cfg.policy, cfg.critic, cfg.sac).to(device)
            agent.load_state_dict(state["agent"])
            results[name] = {}
            for deterministic in modes:
                r = evaluate(agent, env, ev.episodes, ev.seed, deterministic)
                if dataset is not None and dataset.meta.get("ref_max_score") is not None:
                    r["normalized_score"] = float(dataset.normalized_score(r["return_mean"]))
                results[name][r["mode"]] = r
                done += ev.episodes
                bar(done)
    write_json(out / "metrics.json", results)
    return results
