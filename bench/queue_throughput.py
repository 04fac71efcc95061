"""DVC queue throughput: benchmark experiments per minute with 1 and with 2 ``dvc queue`` workers, and the ratio.

    python bench/queue_throughput.py [--preset smoke] [--experiments 4] [--jobs 1 2] [--set KEY=VALUE ...]

For each worker count, a fresh clone of this repository's HEAD (so no DVC run cache carries over) queues
``--experiments`` seeds of ``--preset`` through ``sacflow table queue``'s code, starts the workers and waits until
every experiment finished. The clock runs from ``dvc queue start`` to the last experiment's success, so it holds
DVC's per-experiment costs (temporary workspace, commit, cache) as well as the runs; the mean pipeline run (without
imports and DVC) comes from the experiments' own result records. Uncommitted changes are not benchmarked: commit
first.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from pipeline.experiments.queue import experiment_results, queue_table, start_workers, wait

ROOT = Path(__file__).resolve().parent.parent


def fresh_clone(dest: Path) -> Path:
    """A clone of HEAD with a git identity (queue workers commit every experiment) and its own DVC cache."""
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True)
    for key, value in (("user.name", "sacflow-bench"), ("user.email", "bench@sacflow.invalid")):
        subprocess.run(["git", "config", key, value], cwd=dest, check=True)
    return dest


def measure(jobs: int, preset: str, n: int, overrides: list[str], work: Path) -> dict[str, float]:
    repo = fresh_clone(work / f"jobs{jobs}")
    names = queue_table([preset], list(range(n)), overrides, repo)
    t0 = time.perf_counter()
    start_workers(jobs, repo)
    done = wait(names, repo, poll_s=2.0)
    seconds = time.perf_counter() - t0
    failed = [e.name for e in done if e.state != "success"]
    if failed:
        raise SystemExit(f"{len(failed)} experiments failed ({failed}); `dvc queue logs NAME` in {repo} says why")
    stage = statistics.fmean(r["finished"] - r["started"] for r in experiment_results(repo))
    return {"seconds": seconds, "per_minute": 60.0 * n / seconds, "stage_seconds": stage}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="smoke")
    p.add_argument("--experiments", type=int, default=4, help="seeds 0..N-1 of the preset, per worker count")
    p.add_argument("--jobs", type=int, nargs="+", default=[1, 2])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override in every run")
    args = p.parse_args()

    results = {}
    with tempfile.TemporaryDirectory(prefix="queue_throughput_") as work:
        for jobs in args.jobs:
            results[jobs] = r = measure(jobs, args.preset, args.experiments, args.set, Path(work))
            print(f"{jobs} worker(s): {args.experiments} x {args.preset} in {r['seconds']:.1f} s = "
                  f"{r['per_minute']:.2f} experiments/min (mean pipeline run {r['stage_seconds']:.1f} s)",
                  flush=True)
    base = results[args.jobs[0]]["per_minute"]
    for jobs in args.jobs[1:]:
        print(f"ratio {jobs} / {args.jobs[0]} workers: {results[jobs]['per_minute'] / base:.2f}x")


if __name__ == "__main__":
    main()
