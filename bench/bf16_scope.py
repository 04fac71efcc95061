"""Updates/s of ``trainer.precision_scope``: fp32, then bf16-mixed in the whole agent, the critic only and the actor
only, in each update mode given, all alternated round by round in one process (medians).

    python bench/bf16_scope.py [--preset hopper_scratch_flow_t_paper] [--kind flow_t] [--threads 1]
                               [--modes eager compile compile_fullgraph] [--scopes critic] [--rounds 6] [--updates 6]

Ratios are against fp32 in the same update mode and against fp32 in the first mode given. docs/results.md has what
each scope learns on Hopper-v5.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from pipeline.precision import PRECISION_SCOPES  # noqa: E402
from pipeline.runtime import cpu_description, keep_freed_memory  # noqa: E402
from update_throughput import make_updater, random_batch, updates_per_second  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    p.add_argument("--preset", default="hopper_scratch_flow_t_paper")
    p.add_argument("--kind", default="flow_t")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compile", "compile_fullgraph"])
    p.add_argument("--scopes", nargs="+", default=list(PRECISION_SCOPES), choices=PRECISION_SCOPES)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--updates", type=int, default=6, help="timed updates per round")
    args = p.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    # the variants' updaters live side by side, each with its own optimizers: past dynamo's default of 8 compiled
    # versions of the optimizer step, the later variants would fall back to eager steps
    torch._dynamo.config.recompile_limit = 64
    print(f"cpu: {cpu_description()}; torch {torch.__version__}; preset {args.preset}, kind {args.kind}, "
          f"batch {args.batch}, {args.threads} thread(s)")
    device = torch.device("cpu")
    batch = random_batch(args.batch, device)
    variants = [(mode, "32-true", "agent") for mode in args.modes]
    variants += [(mode, "bf16-mixed", scope) for mode in args.modes for scope in args.scopes]
    updaters = {v: make_updater(args.kind, None, 256, device, v[0], v[1], args.preset,
                                [f"trainer.precision_scope={v[2]}"]) for v in variants}
    rates: dict[tuple[str, str, str], list[float]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for v, updater in updaters.items():
            rates[v].append(updates_per_second(updater, batch, args.updates))
    median = {v: statistics.median(r) for v, r in rates.items()}
    first = args.modes[0]
    print(f"{'mode':18s} {'precision':20s} {'upd/s':>6}  vs fp32 same mode  vs fp32 {first}")
    for mode, precision, scope in variants:
        name = "fp32" if precision == "32-true" else f"bf16 in the {scope}"
        rate = median[mode, precision, scope]
        print(f"{mode:18s} {name:20s} {rate:6.2f}  {rate / median[mode, '32-true', 'agent']:16.2f}x "
              f"{rate / median[first, '32-true', 'agent']:10.2f}x", flush=True)


if __name__ == "__main__":
    main()
