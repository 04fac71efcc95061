"""The gradient-stability experiment: actor gradient norm over training, Flow-MLP vs Flow-G vs Flow-T, K = 4 and 16.

    python bench/grad_stability.py [--env Hopper-v5] [--env-steps 4000] [--out bench/results/grad_stability]

Each (policy, K) trains from scratch with the same seed and settings through ``pipeline.train.finetune``; the
actor gradient norm is logged every ``--log-every`` env steps. Writes ``grad_norm.csv`` (one row per
policy, K and log step) and ``grad_norm.png``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.cli import quiet_libraries  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.train import finetune  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--env-steps", type=int, default=4000)
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--kinds", nargs="+", default=["flow_mlp", "flow_g", "flow_t"])
    p.add_argument("--steps", type=int, nargs="+", default=[4, 16])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench/results/grad_stability")
    args = p.parse_args()
    quiet_libraries()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for steps in args.steps:
        for kind in args.kinds:
            cfg = load_config("scratch_base", [
                f"policy.kind={kind}", f"policy.steps={steps}", f"policy.hidden={args.hidden}",
                f"critic.hidden={args.hidden}", f"sac.batch_size={args.batch}", f"finetune.env_id={args.env}",
                f"finetune.total_steps={args.env_steps}", f"finetune.learning_starts={args.learning_starts}",
                f"finetune.random_steps={args.learning_starts}", f"finetune.log_every={args.log_every}",
                f"finetune.eval_every={args.env_steps}", "finetune.eval_episodes=2", "evaluate.both=false",
                f"finetune.checkpoint_every={args.env_steps}", f"seed={args.seed}", "trainer.progress=false"])
            run = out / f"{kind}_K{steps}"
            metrics = finetune(cfg, run)
            with (run / "train.csv").open() as f:
                for r in csv.DictReader(f):
                    if r["actor_grad_norm"]:
                        rows.append({"kind": kind, "K": steps, "env_step": int(r["env_step"]),
                                     "actor_grad_norm": float(r["actor_grad_norm"])})
            print(f"{kind:>9} K={steps:<3} eval return {metrics.get('eval_deterministic_return_mean', float('nan')):8.1f}"
                  f"  last grad norm {rows[-1]['actor_grad_norm'] if rows else float('nan'):.3g}", flush=True)
    with (out / "grad_norm.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["kind", "K", "env_step", "actor_grad_norm"])
        w.writeheader()
        w.writerows(rows)
    fig, axes = plt.subplots(1, len(args.steps), figsize=(6 * len(args.steps), 4), squeeze=False)
    for ax, steps in zip(axes[0], args.steps):
        for kind in args.kinds:
            pts = [(r["env_step"], r["actor_grad_norm"]) for r in rows if r["kind"] == kind and r["K"] == steps]
            if pts:
                ax.plot(*zip(*pts), label=kind)
        ax.set(title=f"{args.env}, K = {steps}", xlabel="environment steps", ylabel="actor gradient norm",
               yscale="log")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.savefig(out / "grad_norm.png", dpi=100, bbox_inches="tight")
    print(f"wrote {out / 'grad_norm.csv'} and {out / 'grad_norm.png'}")


if __name__ == "__main__":
    main()
