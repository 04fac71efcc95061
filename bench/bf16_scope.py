"""Updates/s of ``trainer.precision_scope``: fp32, then bf16-mixed in the whole agent, the critic only and the actor
only, in each update mode given, all alternated round by round in one process (medians).

    python bench/bf16_scope.py [--preset hopper_scratch_flow_t_paper] [--kind flow_t] [--threads 1]
                               [--modes eager compile compile_fullgraph] [--scopes critic] [--rounds 6] [--updates 6]

Ratios are against fp32 in the same update mode and against fp32 in the first mode given. docs/results.md has what
each scope learns on Hopper-v5.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from pipeline.precision import PRECISION_SCOPES  # noqa: E402
from update_throughput import make_updater, median_rates, start_side_by_side  # noqa: E402


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
    batch = start_side_by_side(args)
    variants = [(mode, "32-true", "agent") for mode in args.modes]
    variants += [(mode, "bf16-mixed", scope) for mode in args.modes for scope in args.scopes]
    updaters = {v: make_updater(args.kind, None, 256, batch.obs.device, v[0], v[1], args.preset,
                                [f"trainer.precision_scope={v[2]}"]) for v in variants}
    median = median_rates(updaters, batch, args.rounds, args.updates)
    first = args.modes[0]
    print(f"{'mode':18s} {'precision':20s} {'upd/s':>6}  vs fp32 same mode  vs fp32 {first}")
    for mode, precision, scope in variants:
        name = "fp32" if precision == "32-true" else f"bf16 in the {scope}"
        rate = median[mode, precision, scope]
        print(f"{mode:18s} {name:20s} {rate:6.2f}  {rate / median[mode, '32-true', 'agent']:16.2f}x "
              f"{rate / median[first, '32-true', 'agent']:10.2f}x", flush=True)


if __name__ == "__main__":
    main()
