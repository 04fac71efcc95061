"""The ``finetune`` stage: online SAC from a pretrained agent (offline-to-online) or from scratch."""

from __future__ import annotations

import time
from contextlib import closing
from pathlib import Path
from typing import Any

from pipeline.checkpoint import load_checkpoint, run_checkpoint
from pipeline.config import Config, ConfigError
from pipeline.data import check_compatible
from pipeline.envs import make_env, make_vector_env
from pipeline.metrics import final_training_metrics, write_json
from pipeline.online import PHASES
from pipeline.terminal import stage_progress
from pipeline.tracking import log_summary
from pipeline.workflow import Input, Stage
from pipeline.workflow.common import (check_logger, check_single_process, env_options_for, finetune_dataset,
                                      load_offline, make_eval_envs, make_trainer, prepare, resume_state,
                                      run_fingerprint, stage_logger, training_transitions)


def finetune(cfg: Config, out_dir: str | Path, pretrained: str | Path | None = None) -> dict[str, Any]:
    """Online SAC: from the agent in ``pretrained`` (a pretrain run's checkpoint) or from scratch."""
    from pipeline.lightning import OnlineFinetune, StepDataModule, fit

    check_single_process(cfg, "finetune")
    check_logger(cfg)
    out = prepare(cfg, out_dir)
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
        logger = stage_logger(cfg, out, start if resume else None)
        fit(make_trainer(cfg, logger=logger), module, StepDataModule(start, ft.total_steps, ft.num_envs))
        runner = module.runner
        evaluated_last_step = runner.last_eval_step == runner.env_step
        final = runner.last_eval if evaluated_last_step else runner.run_eval() if ft.eval_episodes > 0 else {}
        runner.log_rows.flush()  # the closing evaluation comes after fit's own last flush
    metrics: dict[str, Any] = {"stage": "finetune", "env_id": ft.env_id, "env_steps": runner.env_step,
                               "updates": runner.updater.updates, "episodes": runner.episodes,
                               "seconds": time.perf_counter() - t0, "resumed_from": start,
                               "from_pretrained": ft.from_pretrained, "skipped_updates": runner.updater.skipped,
                               "env_errors": runner.env_errors, **runner.sampler.composition()}
    rows = runner.log_rows.rows("train")
    for phase in PHASES:  # share of the wall time, averaged over the log rows
        shares = [float(r[f"{phase}_share"]) for r in rows if r.get(f"{phase}_share") not in ("", None)]
        if shares:
            metrics[f"{phase}_time_share"] = sum(shares) / len(shares)
    for mode, result in final.items():
        for k in ("return_mean", "success_rate"):
            if k in result:
                metrics[f"eval_{mode}_{k}"] = result[k]
    metrics.update(final_training_metrics(rows))
    log_summary(cfg.trainer.logger, logger, "finetune", metrics, runner.env_step)  # dvc exp show: finetune.<key>
    write_json(out / "metrics.json", metrics)
    return metrics


STAGE = Stage(
    name="finetune", help="online SAC fine-tuning (or training from scratch)",
    sections=("finetune", "pretrain.dataset", "policy", "critic", "sac", "trainer"), run=finetune,
    inputs=(Input("pretrained", "--pretrained", "pretrain run directory (or checkpoint file) to start from",
                  dvc=("runs/pretrain",)),),
)
