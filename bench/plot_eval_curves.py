"""Overlay the evaluation curves (success rate or return vs env steps) of several fine-tuning runs in one PNG.

    python bench/plot_eval_curves.py --out docs/img/lift.png "Flow-T from BC=runs/ft_bc" "Flow-G from BC=runs/g_ft"

Each argument is ``LABEL=RUN_DIR`` (a finetune output directory holding ``eval.csv``).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR")
    p.add_argument("--out", required=True)
    p.add_argument("--metric", default="success_rate", choices=["success_rate", "return_mean"])
    p.add_argument("--mode", default="deterministic", choices=["deterministic", "stochastic"])
    p.add_argument("--title", default="")
    args = p.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4))
    for item in args.runs:
        label, run = item.rsplit("=", 1)
        with (Path(run) / "eval.csv").open() as f:
            rows = [r for r in csv.DictReader(f) if r["mode"] == args.mode and r[args.metric]]
        ax.plot([int(r["env_step"]) for r in rows], [float(r[args.metric]) for r in rows], marker="o", label=label)
    ax.set(xlabel="online environment steps", ylabel=f"{args.metric.replace('_', ' ')} ({args.mode})",
           title=args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    main()
