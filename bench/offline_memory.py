"""Memory of fine-tuning with a large offline dataset in the buffer (seeded and mixed).

    python bench/offline_memory.py [--transitions 1000000] [--steps 20]

Writes a D4RL-format file of random Hopper-v5-shaped transitions (obs 11, act 3), then, for each buffer mode, runs
``finetune`` from scratch on Hopper-v5 for a few env steps with that file as ``finetune.dataset``, each in a fresh
process, and prints two figures against the bytes one copy of the transitions needs
(``N x (2 obs + act + reward + terminal) x 4``): the tensors alive while the online loop runs (what the process
holds), and its resident memory then, over the same run with a 1000-transition file (the resident figure also holds
what the allocator kept of the loader's freed temporaries). Run it from a checkout of any revision: it finds that
revision's ``finetune``.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import gc, sys
import torch
from pipeline.online import OnlineRunner

rss, live = [], []
step = OnlineRunner.step

def measured_step(self):  # while the loop runs: the data as training holds it
    step(self)
    with open("/proc/self/status") as f:
        rss.append(next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024)
    if len(live) == 0:  # the tensors alive (1 MiB and more): what the process holds on purpose
        gc.collect()
        live.append(sum(t.numel() * t.element_size() for t in gc.get_objects()
                        if isinstance(t, torch.Tensor) and t.numel() * t.element_size() >= 2**20) / 2**20)

OnlineRunner.step = measured_step
try:
    from pipeline.workflow.finetune import finetune
except ImportError:  # revisions before the stage modules
    from pipeline.train import finetune
from pipeline.config import load_config
source, mode, steps, out = sys.argv[1:]
finetune(load_config(None, ["trainer.progress=false", "finetune.env_id=Hopper-v5", "finetune.from_pretrained=false",
                            "finetune.dataset.format=d4rl", f"finetune.dataset.source={source}",
                            f"finetune.buffer_mode={mode}", f"finetune.total_steps={steps}", "finetune.random_steps=0",
                            f"finetune.learning_starts={steps}", "finetune.eval_episodes=0", "finetune.buffer_size=1000",
                            "sac.batch_size=256"]), out)
print(max(rss), live[0])
"""


def loop_mib(source: Path, mode: str, steps: int) -> tuple[float, float]:
    """(resident MiB, MiB of live tensors of 1 MiB and more) while the online loop runs."""
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([sys.executable, "-c", CHILD, str(source), mode, str(steps), out], capture_output=True,
                              text=True, check=True)
    rss, live = proc.stdout.strip().splitlines()[-1].split()
    return float(rss), float(live)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--transitions", type=int, default=1_000_000)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    from pipeline.data import TransitionDataset, write_d4rl

    print(f"CPU: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        small, large = Path(tmp) / "small.hdf5", Path(tmp) / "large.hdf5"
        write_d4rl(TransitionDataset.random(1000, 11, 3, episode_length=1000, source=str(small)), small)
        write_d4rl(TransitionDataset.random(args.transitions, 11, 3, episode_length=1000, source=str(large)), large)
        copy = args.transitions * (2 * 11 + 3 + 2) * 4 / 2**20
        print(f"{args.transitions:,} transitions: one copy of their tensors is {copy:.0f} MiB")
        for mode in ("seeded", "mixed"):
            (base, _), (used, live) = loop_mib(small, mode, args.steps), loop_mib(large, mode, args.steps)
            print(f"{mode}: live tensors {live:.0f} MiB = {live / copy:.2f} copies; resident {used:.0f} MiB, "
                  f"{used - base:+.0f} MiB over the 1000-transition run = {(used - base) / copy:.2f} copies")


if __name__ == "__main__":
    main()
