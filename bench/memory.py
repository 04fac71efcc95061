"""Peak memory of the replay buffer and of training at 1M transitions (resident set size, CPU).

    python bench/memory.py [--capacity 1000000] [--obs 17] [--act 6] [--kind flow_t] [--batch 256]

Prints the RSS after each phase and the growth it caused, against the bytes the buffer's tensors need
(``capacity x (2 obs + act + 2) x 4``): the process baseline (Python, torch, imports) is measured in the same run.
"""

from __future__ import annotations

import argparse
import resource

import torch

from pipeline.buffers import ReplayBuffer
from pipeline.config import load_config
from pipeline.sac import SACAgent
from pipeline.update import SACUpdater, make_optimizers


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--capacity", type=int, default=1_000_000)
    p.add_argument("--obs", type=int, default=17)
    p.add_argument("--act", type=int, default=6)
    p.add_argument("--kind", default="flow_t")
    p.add_argument("--batch", type=int, default=256)
    args = p.parse_args()
    torch.set_num_threads(1)
    base = rss_mib()
    print(f"baseline (imports): {base:.0f} MiB")
    buf = ReplayBuffer(args.capacity, args.obs, args.act)
    expected = args.capacity * (2 * args.obs + args.act + 2) * 4 / 2**20
    chunk = 100_000
    for start in range(0, args.capacity, chunk):  # fill it, so every page is touched
        n = min(chunk, args.capacity - start)
        buf.add(torch.randn(n, args.obs), torch.rand(n, args.act) * 2 - 1, torch.randn(n), torch.randn(n, args.obs),
                torch.zeros(n))
    filled = rss_mib()
    print(f"buffer of {args.capacity:,} transitions filled: +{filled - base:.0f} MiB "
          f"(tensors need {expected:.0f} MiB; ratio {(filled - base) / expected:.2f})")
    cfg = load_config(None, [f"policy.kind={args.kind}", f"sac.batch_size={args.batch}"])
    agent = SACAgent(args.obs, args.act, cfg.policy, cfg.critic, cfg.sac)
    updater = SACUpdater(agent, make_optimizers(agent))
    for _ in range(20):
        updater.update(buf.sample(args.batch))
    trained = rss_mib()
    print(f"agent + 20 {args.kind} updates at batch {args.batch}: +{trained - filled:.0f} MiB")
    state = buf.state_dict()
    print(f"buffer checkpoint copy (state_dict): +{rss_mib() - trained:.0f} MiB")
    del state
    print(f"peak RSS of the process: {peak_mib():.0f} MiB")


if __name__ == "__main__":
    main()
