"""The ``pretrain`` stage: offline pretraining (flow-matching BC, the SAC critic, the regularized actor) on a dataset."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Config, ConfigError, as_run
from pipeline.distributed import process_rank
from pipeline.metrics import write_json
from pipeline.terminal import stage_progress
from pipeline.tracking import log_summary
from pipeline.workflow import Stage
from pipeline.workflow.common import (check_logger, load_offline, make_trainer, prepare, resume_state,
                                      run_fingerprint, stage_logger, training_transitions)

if TYPE_CHECKING:
    import lightning as L


def pretrain(cfg: Config, out_dir: str | Path, callbacks: list[L.Callback] | None = None) -> dict[str, Any]:
    """Offline pretraining on ``cfg.pretrain.dataset``; returns the metrics written to ``metrics.json``.

    Data-parallel (``trainer.devices`` / ``trainer.num_nodes``): every rank runs this function. Each reads the
    dataset and the run's checkpoint and samples its own batches (seed + rank); gradients are averaged, so the
    ranks keep identical weights and the global batch is ``world_size * sac.batch_size``. Only rank 0 writes
    files or shows progress; the other ranks return ``{}``. ``callbacks``: extra Lightning callbacks.
    """
    from pipeline.lightning import OfflinePretrain, StepDataModule, fit

    cfg = as_run(cfg)
    check_logger(cfg)
    trainer = make_trainer(cfg, callbacks)
    rank = process_rank(trainer)
    out = prepare(cfg, out_dir, rank)
    dataset = training_transitions(load_offline(cfg.pretrain.dataset), cfg.sac)
    if cfg.sac.batch_size > len(dataset):
        raise ConfigError(f"config key 'sac.batch_size' = {cfg.sac.batch_size} is larger than the dataset "
                          f"{cfg.pretrain.dataset.source} ({len(dataset)} transitions)")
    fingerprint = run_fingerprint(cfg, dataset)
    resume = resume_state(out, fingerprint)
    start = resume["step"] if resume else 0
    total = cfg.pretrain.steps
    if rank == 0:  # one process writes the log (rows average the ranks)
        trainer.logger = stage_logger(cfg, out, start if resume else None)
    t0 = time.perf_counter()
    with stage_progress("pretrain", total, start, cfg.trainer.progress and rank == 0) as bar:
        module = OfflinePretrain(cfg, dataset, out, resume_state=resume, fingerprint=fingerprint,
                                 progress=lambda m: bar(m.step_count) if m.step_count % 50 == 0 else None)
        if start < total:
            fit(trainer, module, StepDataModule(start, total))
    if rank != 0:
        return {}
    rows = module.log_rows.rows("pretrain")  # from the files: also when this call resumed a finished run
    world = trainer.world_size
    metrics = {"stage": "pretrain", "steps": total, "dataset": cfg.pretrain.dataset.source,
               "transitions": len(dataset), "seconds": time.perf_counter() - t0, "resumed_from": start,
               "world_size": world, "global_batch": world * cfg.sac.batch_size}
    if module.updates_per_second is not None:
        metrics["updates_per_second"] = module.updates_per_second
    if rows:
        metrics.update({f"final_{k}": float(v) for k, v in rows[-1].items() if v not in ("", None) and k != "step"})
    # the summary beside the rows (dvc exp show: pretrain.seconds, ...); the final_ entries are the last row's
    # values, which the logger holds already as pretrain/<column>
    log_summary(cfg.trainer.logger, trainer.logger, "pretrain",
                {k: v for k, v in metrics.items() if not k.startswith("final_")}, max(start, module.step_count))
    write_json(out / "metrics.json", metrics)
    return metrics


STAGE = Stage(
    name="pretrain", help="offline pretraining: flow-matching BC + SAC critic + regularized actor",
    sections=("pretrain", "policy", "critic", "sac", "trainer"), run=pretrain,
    in_run=lambda cfg: cfg.finetune.from_pretrained, data_parallel=True,
)
