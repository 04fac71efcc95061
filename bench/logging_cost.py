"""Per-update cost of the experiment logger (``trainer.logger``) at a preset's settings, as a share of one update.

    python bench/logging_cost.py [--presets default hopper_o2o hopper_scratch_flow_t] [--loggers dvclive csv tensorboard]
                                 [--updates 50] [--rows 200]

A stage logs one row per ``log_every`` steps (fine-tuning: a train row of every train.csv column per
``finetune.log_every`` env steps, which run ``sac.utd`` updates each; pretraining: a row of about half as many
metrics per ``pretrain.log_every`` updates, charged here at the train row's cost) and flushes the logger before each checkpoint. This times ``--rows`` rows of the fine-tuning train table
through ``pipeline.tracking.MetricLog`` into a temporary folder (one flush per 10 rows, more often than any preset
checkpoints), and ``--updates`` eager updates of the preset's agent on random data, and reports
``row time / (log_every * utd)`` as a share of one update. The row time does not depend on the network; the update
time does, so the share is per preset.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from pipeline.config import load_config
from pipeline.online import TRAIN_COLUMNS
from pipeline.runtime import cpu_description
from pipeline.sac import Batch, SACAgent
from pipeline.terminal import quiet_libraries
from pipeline.tracking import MetricLog, make_logger, missing_package

OBS_DIM, ACT_DIM = 17, 6


def seconds_per_update(preset: str, updates: int) -> float:
    cfg = load_config(preset, ["sac.update_mode=eager", "device=cpu"])
    from pipeline.update import SACUpdater, make_optimizers

    act_dim = ACT_DIM * cfg.sac.chunk
    agent = SACAgent(OBS_DIM, act_dim, cfg.policy, cfg.critic, cfg.sac)
    updater = SACUpdater(agent, make_optimizers(agent))
    n = cfg.sac.batch_size
    batch = Batch(torch.randn(n, OBS_DIM), torch.rand(n, act_dim) * 2 - 1, torch.randn(n), torch.randn(n, OBS_DIM),
                  torch.zeros(n))
    for _ in range(5):
        updater.update(batch)
    t0 = time.perf_counter()
    for _ in range(updates):
        updater.update(batch)
    return (time.perf_counter() - t0) / updates


def seconds_per_row(kind: str, rows: int) -> float:
    row = {k: float(i) + 0.5 for i, k in enumerate(TRAIN_COLUMNS)}
    with tempfile.TemporaryDirectory() as tmp:
        log = MetricLog(make_logger(kind, tmp, None), "env_step")
        t0 = time.perf_counter()
        for step in range(1, rows + 1):
            log.log("train", row, step * 100)
            if step % 10 == 0:
                log.flush()
        log.flush()
        return (time.perf_counter() - t0) / rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["default", "hopper_o2o", "hopper_scratch_flow_t"])
    p.add_argument("--loggers", nargs="+", default=["dvclive", "csv", "tensorboard"])
    p.add_argument("--updates", type=int, default=50)
    p.add_argument("--rows", type=int, default=200)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    print(f"CPU: {cpu_description()}; {args.threads} thread(s)")
    row_s = {}
    for kind in args.loggers:
        if missing_package(kind):
            print(f"{kind}: skipped, {missing_package(kind)}")
            continue
        row_s[kind] = seconds_per_row(kind, args.rows)
        print(f"{kind}: {1e3 * row_s[kind]:.2f} ms per logged row ({len(TRAIN_COLUMNS) - 1} metrics)")
    print("\n| preset | update (ms) | updates per row: finetune / pretrain | "
          + " | ".join(f"{k}: % of an update, finetune / pretrain" for k in row_s) + " |")
    print("|---|---|---|" + "---|" * len(row_s))
    for preset in args.presets:
        cfg = load_config(preset, [])
        per_row = {"finetune": cfg.finetune.log_every * cfg.sac.utd, "pretrain": cfg.pretrain.log_every}
        update = seconds_per_update(preset, args.updates)
        shares = " | ".join(" / ".join(f"{100 * s / n / update:.3f}" for n in per_row.values()) for s in row_s.values())
        print(f"| {preset} | {1e3 * update:.1f} | {per_row['finetune']} / {per_row['pretrain']} | {shares} |")

if __name__ == "__main__":
    main()
