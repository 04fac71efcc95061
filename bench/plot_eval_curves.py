"""Overlay the learning curves (success rate or return vs env steps) of several fine-tuning runs in one PNG.

    python bench/plot_eval_curves.py --out docs/img/lift.png "Flow-T from BC=runs/ft_bc" "Flow-G from BC=runs/g_ft"
    python bench/plot_eval_curves.py --metric episode_return --out docs/img/hc.png \\
        "Flow-T=runs/s0/finetune,runs/s1/finetune,runs/s2/finetune" ...

(A benchmark table's runs get these curves from ``sacflow table gather``; this script overlays any runs.)

Each argument is ``LABEL=RUN_DIR[,RUN_DIR...]``: finetune output directories, whose eval rows (success rate,
evaluation return; ``--mode`` picks deterministic or stochastic) or train rows (``episode_return``: the return of
the training episodes that ended in each logging window) are read by ``pipeline.run_logs.read_rows`` (DVCLive's
log or the stage's CSVs). Several directories (seeds) for one label draw their
mean over the env steps all of them logged, with their min-max range shaded.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.run_logs import read_rows, record_of  # noqa: E402
from pipeline.report import curve_of, plot_seeds  # noqa: E402

TRAIN_METRICS = ("episode_return",)  # read from the train rows; the others from the eval rows


def run_curve(run: Path, metric: str, mode: str) -> dict[int, float]:
    """``{env_step: value}`` of ``metric`` in one finetune directory."""
    table = "train" if metric in TRAIN_METRICS else "eval"
    rows = read_rows(run, table)
    if not rows:
        raise SystemExit(f"{run}: no {table} rows logged (expected a finetune output directory holding {table}.csv "
                         f"or a DVCLive log; looked in {record_of(run, table)})")
    curve = curve_of(rows, metric) if metric in TRAIN_METRICS else curve_of(rows, metric, mode=mode)
    if not curve:
        raise SystemExit(f"{record_of(run, table)}: no {metric} values"
                         + ("" if metric in TRAIN_METRICS else f" for mode {mode}"))
    return curve


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", metavar="LABEL=RUN_DIR[,RUN_DIR...]")
    p.add_argument("--out", required=True)
    p.add_argument("--metric", default="success_rate", choices=["success_rate", "return_mean", *TRAIN_METRICS])
    p.add_argument("--mode", default="deterministic", choices=["deterministic", "stochastic"])
    p.add_argument("--title", default="")
    args = p.parse_args()
    fig, ax = plt.subplots(figsize=(7, 4))
    for item in args.runs:
        if "=" not in item:
            raise SystemExit(f"{item!r}: expected LABEL=RUN_DIR[,RUN_DIR...]")
        label, dirs = item.rsplit("=", 1)
        plot_seeds(ax, label, [run_curve(Path(d), args.metric, args.mode) for d in dirs.split(",")])
    ylabel = ("training episode return" if args.metric in TRAIN_METRICS
              else f"{args.metric.replace('_', ' ')} ({args.mode})")
    ax.set(xlabel="online environment steps", ylabel=ylabel, title=args.title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    main()
