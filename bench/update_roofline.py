"""How close an update runs to this CPU's matrix-multiply ceiling: the matmul FLOPs of one SAC update (averaged over
a policy-delay cycle, counted by ``torch.utils.flop_counter``), this core's GEMM rate at the critic's width (fp32
and bf16 autocast), the updates/s an update would reach if every FLOP ran at that rate, and the measured updates/s
of each update mode as a fraction of it.

    python bench/update_roofline.py [--preset hopper_scratch_flow_t_paper] [--kind flow_t] [--batch 512]
                                    [--threads 1] [--modes eager compile_fullgraph] [--precision 32-true]

A mode near the ceiling has no execution lever left at that precision: more speed needs fewer FLOPs (a change to
what the update computes) or a faster number format.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))

from pipeline.config import load_config  # noqa: E402
from pipeline.precision import PRECISIONS  # noqa: E402
from update_throughput import make_updater, median_rates, start_side_by_side  # noqa: E402


def gemm_rate(width: int, bf16: bool, repeats: int = 20) -> float:
    """FLOP/s of a ``[width, width] @ [width, width]`` matmul, under bf16 autocast if ``bf16``."""
    a, b = torch.randn(width, width), torch.randn(width, width)
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        for _ in range(3):
            a @ b
        t0 = time.perf_counter()
        for _ in range(repeats):
            a @ b
    return 2 * width**3 * repeats / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--preset", default="hopper_scratch_flow_t_paper")
    p.add_argument("--kind", default="flow_t")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--modes", nargs="+", default=["eager", "compile_fullgraph"],
                   choices=["eager", "compile", "compile_fullgraph"])
    p.add_argument("--precision", default="32-true", choices=PRECISIONS)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--updates", type=int, default=6, help="timed updates per round")
    args = p.parse_args()
    batch = start_side_by_side(args, f", {args.precision}")
    device = batch.obs.device
    updaters = {m: make_updater(args.kind, None, 256, device, m, args.precision, args.preset, []) for m in args.modes}
    counted = make_updater(args.kind, None, 256, device, "eager", args.precision, args.preset, [])
    delay = counted.agent.cfg.policy_delay
    with FlopCounterMode(display=False) as flops:
        for _ in range(delay):
            counted.update(batch)
    per_update = flops.get_total_flops() / delay
    width = load_config(args.preset).critic.hidden
    rates = {"fp32": gemm_rate(width, bf16=False), "bf16": gemm_rate(width, bf16=True)}
    print(f"matmul FLOPs per update: {per_update / 1e9:.2f} G (policy delay {delay}); GEMM {width}^3 on this core: "
          + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in rates.items()))
    ceiling = rates["fp32" if args.precision == "32-true" else "bf16"] / per_update
    # under bf16-mixed the ceiling is optimistic: the default scope keeps the actor's (smaller) share in fp32
    print(f"ceiling at {args.precision} (every FLOP at the GEMM rate): {ceiling:.2f} upd/s")
    for m, rate in median_rates(updaters, batch, args.rounds, args.updates).items():
        print(f"{m:18s} {rate:6.2f} upd/s  {rate / ceiling:5.0%} of the ceiling", flush=True)


if __name__ == "__main__":
    main()
