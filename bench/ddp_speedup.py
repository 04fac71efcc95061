"""Data-parallel pretraining speed-up: the same pretraining on 1 process and on N (DDP), same per-rank batch.

    python bench/ddp_speedup.py [--devices 1 2] [--updates 300] [--kind flow_t] [--batch 256] [--hidden 256]
                                [--repeats 2] [--accelerator cpu]

Every variant is a real ``python -m pipeline.cli pretrain`` run (N > 1: ``trainer.strategy=ddp``) on the same
synthetic D4RL-format dataset (obs 17, act 6, 10k transitions), one thread per process. updates/s is the rate a
run measured after its first update (``updates_per_second`` in its metrics.json), so interpreter start-up and
DDP set-up are left out; samples/s = updates/s x global batch (N x batch). Variants are interleaved ``--repeats``
times and the best run of each is reported, with ratios against the first ``--devices`` entry. On GPUs
(``--accelerator gpu``) N counts GPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from pipeline.data import TransitionDataset, write_d4rl

REPO = Path(__file__).resolve().parent.parent


def synthetic_d4rl(path: Path, n: int = 10_000, obs_dim: int = 17, act_dim: int = 6) -> Path:
    return write_d4rl(TransitionDataset.random(n, obs_dim, act_dim, episode_length=1000, source=str(path)), path)


def pretrain_rate(devices: int, overrides: list[str], out: Path) -> dict[str, float]:
    """Run one pretraining with ``devices`` processes; its metrics.json rate and global batch."""
    sets = [*overrides, f"trainer.devices={devices}", f"trainer.strategy={'ddp' if devices > 1 else 'auto'}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}
    cmd = [sys.executable, "-m", "pipeline.cli", "pretrain", "--preset", "default", "--quiet",
           *[a for s in sets for a in ("--set", s)], "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {"updates_per_second": m["updates_per_second"], "global_batch": m["global_batch"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    p.add_argument("--updates", type=int, default=300)
    p.add_argument("--kind", default="flow_t")
    p.add_argument("--batch", type=int, default=256, help="per process")
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--accelerator", default="cpu")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = synthetic_d4rl(Path(tmp) / "synthetic.hdf5")
        overrides = [
            "pretrain.dataset.format=d4rl", f"pretrain.dataset.source={data}", f"policy.kind={args.kind}",
            f"sac.batch_size={args.batch}", f"policy.hidden={args.hidden}", f"critic.hidden={args.hidden}",
            f"pretrain.steps={args.updates}", f"pretrain.log_every={args.updates}",
            f"pretrain.checkpoint_every={args.updates}", f"trainer.accelerator={args.accelerator}", "threads=1",
        ]
        best: dict[int, dict[str, float]] = {}
        for r in range(args.repeats):
            for n in args.devices:
                result = pretrain_rate(n, overrides, Path(tmp) / f"run_{n}_{r}")
                print(f"repeat {r}: {n} process(es): {result['updates_per_second']:.1f} upd/s", flush=True)
                if n not in best or result["updates_per_second"] > best[n]["updates_per_second"]:
                    best[n] = result
    base = best[args.devices[0]]
    base_samples = base["updates_per_second"] * base["global_batch"]
    print(f"\n{args.kind}, batch {args.batch} per process, hidden {args.hidden}, {args.updates} updates, "
          f"{args.accelerator}, best of {args.repeats}\n")
    print("| processes | updates/s | samples/s | updates/s ratio | samples/s ratio |")
    print("|---|---|---|---|---|")
    for n in args.devices:
        ups = best[n]["updates_per_second"]
        samples = ups * best[n]["global_batch"]
        print(f"| {n} | {ups:.1f} | {samples:,.0f} | {ups / base['updates_per_second']:.2f} | "
              f"{samples / base_samples:.2f} |")


if __name__ == "__main__":
    main()
