"""``pretrain`` as ``python -m pipeline.cli pretrain`` runs it, plus a record per rank for tests/test_ddp.py.

    python tests/ddp_probe.py PROBE_DIR --preset smoke --set KEY=VALUE ... --out RUN_DIR

Lightning's DDP launcher re-runs this script for every other rank, so each rank writes ``PROBE_DIR/rank<r>.pt``:
its final agent weights, the metrics of its first update (from its own batch) and every file it opened for
writing, renamed or removed under ``RUN_DIR`` (seen through a Python audit hook).
"""

from __future__ import annotations

import argparse
import atexit
import os
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch

from pipeline.terminal import quiet_libraries
from pipeline.config import load_config
from pipeline.workflow.pretrain import pretrain

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class RecordRank(L.Callback):
    def __init__(self) -> None:
        self.record: dict[str, Any] = {"rank": None, "first_update": None, "agent": None}

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.record["rank"] = trainer.global_rank

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if batch_idx == 0:  # the running sums hold exactly this rank's first update
            self.record["first_update"] = {k: float(v) for k, v in module.means.sums.items()}

    def on_train_end(self, trainer: L.Trainer, module: Any) -> None:
        self.record["agent"] = {k: v.detach().cpu().clone() for k, v in module.agent.state_dict().items()}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("probe_dir", type=Path)
    p.add_argument("--preset", default="smoke")
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    run_dir = str(args.out.resolve())
    writes: list[tuple[str, str]] = []

    def audit(event: str, hook_args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = hook_args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
            paths = [path] if writing else []
        elif event in ("os.rename", "os.remove"):  # os.replace raises os.rename
            paths = list(hook_args[:2])
        else:
            return
        for path in paths:
            full = os.path.abspath(path) if isinstance(path, (str, os.PathLike)) else ""
            if full == run_dir or full.startswith(run_dir + os.sep):
                writes.append((event, os.path.relpath(full, run_dir)))

    sys.addaudithook(audit)
    recorder = RecordRank()
    quiet_libraries()
    cfg = load_config(args.preset, [*args.set, "trainer.progress=false"])

    def dump() -> None:
        args.probe_dir.mkdir(parents=True, exist_ok=True)
        torch.save({**recorder.record, "writes": writes}, args.probe_dir / f"rank{recorder.record['rank']}.pt")

    atexit.register(dump)  # after pretrain has written metrics.json
    pretrain(cfg, args.out, callbacks=[recorder])


if __name__ == "__main__":
    main()
