"""Acting latency: one ``agent.act`` call on a single observation (what an env loop pays per step), per policy kind
and ``trainer.precision``, in one process; ratios against the first precision.

    python bench/act_latency.py [--preset default] [--kinds flow_t flow_g] [--precisions 32-true bf16-mixed]
                                [--threads 1] [--calls 2000] [--obs 19 --act 7]

Deterministic and stochastic acting both run the K-step rollout; the figure is the median over five rounds of
``--calls`` calls each, in microseconds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from pipeline.config import load_config
from pipeline.precision import PRECISIONS, check_precision
from pipeline.runtime import cpu_description
from pipeline.sac import SACAgent


def act_microseconds(agent: SACAgent, obs: torch.Tensor, deterministic: bool, calls: int) -> float:
    for _ in range(50):
        agent.act(obs, deterministic)
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            agent.act(obs, deterministic)
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(rounds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--kinds", nargs="+", default=["gaussian", "flow_mlp", "flow_g", "flow_t"])
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--obs", type=int, default=19, help="observation size (19: robosuite Lift)")
    p.add_argument("--act", type=int, default=7, help="action size (7: robosuite Lift)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print(f"preset={args.preset} obs={args.obs} act={args.act} threads={args.threads} calls={args.calls}"
          + "".join(f" {o}" for o in args.set))
    print(f"cpu: {cpu_description()}; torch {torch.__version__}")
    print(f"{'kind':>9} {'mode':>13} {'precision':>10} {'us/call':>8} {'vs ' + args.precisions[0]:>10}")
    for kind in args.kinds:
        for deterministic in (True, False):
            first = None
            for prec in args.precisions:
                cfg = load_config(args.preset, [f"policy.kind={kind}", *args.set])
                check_precision(prec, torch.device("cpu"))
                torch.manual_seed(0)
                agent = SACAgent(args.obs, args.act, cfg.policy, cfg.critic, cfg.sac, prec).eval()
                us = act_microseconds(agent, torch.randn(1, args.obs), deterministic, args.calls)
                first = first or us
                mode = "deterministic" if deterministic else "stochastic"
                print(f"{kind:>9} {mode:>13} {prec:>10} {us:>8.1f} {us / first:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
