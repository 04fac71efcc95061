"""The gradient-stability experiment: Flow-MLP vs Flow-G vs Flow-T at K = 4 and 16, trained from scratch.

    python bench/grad_stability.py [--env Hopper-v5] [--env-steps 20000] [--profile-every 5000]
                                   [--out bench/results/grad_stability]

Each (policy, K) trains from scratch with the same seed and settings (``scratch_base`` with smaller nets, then any
``--set`` overrides) through ``pipeline.workflow.finetune``, in segments of ``--profile-every`` env steps (each
segment resumes the run's checkpoint). Two measurements:

- the actor's parameter gradient norm, logged every ``--log-every`` env steps (``grad_norm.csv``/``.png``);
- after every segment, the rollout's backpropagation-through-time profile ``‖∂Q/∂a_i‖``, i = 0..K
  (:func:`pipeline.diagnostics.checkpoint_gradient_profile`, 256 replay states), in ``rollout_grad.csv``/``.png``:
  a ratio ``‖∂Q/∂a_0‖ / ‖∂Q/∂a_K‖`` far above 1 is an exploding rollout, far below 1 a vanishing one.

The (policy, K) runs are independent: split them over processes with ``--kinds``/``--steps`` and separate
``--out`` folders, then ``--replot DIR [DIR ...]`` merges those folders' CSVs into one figure in ``--out``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pipeline.terminal import quiet_libraries  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.diagnostics import checkpoint_gradient_profile  # noqa: E402
from pipeline.run_logs import read_rows  # noqa: E402
from pipeline.workflow.finetune import finetune  # noqa: E402


def read_csv(path: Path) -> list[dict]:
    with path.open() as f:
        return [{k: v if k == "kind" else int(v) if k in ("K", "env_step", "step") else float(v) for k, v in r.items()}
                for r in csv.DictReader(f)]


def write_csv(path: Path, rows: list[dict]) -> None:
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="Hopper-v5")
    p.add_argument("--env-steps", type=int, default=4000)
    p.add_argument("--profile-every", type=int, default=None, help="segment length (default: one segment)")
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--kinds", nargs="+", default=["flow_mlp", "flow_g", "flow_t"])
    p.add_argument("--steps", type=int, nargs="+", default=[4, 16])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override applied after the script's own (repeatable)")
    p.add_argument("--out", default="bench/results/grad_stability")
    p.add_argument("--replot", nargs="+", metavar="DIR", help="merge these folders' CSVs into --out; train nothing")
    args = p.parse_args()
    quiet_libraries()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.replot:
        rows = [r for d in args.replot for r in read_csv(Path(d) / "grad_norm.csv")]
        profiles = [r for d in args.replot for r in read_csv(Path(d) / "rollout_grad.csv")]
        args.steps = sorted({r["K"] for r in profiles})
        args.kinds = [k for k in ("flow_mlp", "flow_g", "flow_t") if any(r["kind"] == k for r in profiles)]
        milestones = sorted({r["env_step"] for r in profiles})
    else:
        rows, profiles, milestones = train(args, out)
    write_csv(out / "grad_norm.csv", rows)
    write_csv(out / "rollout_grad.csv", profiles)
    plot_grad_norm(rows, args, out / "grad_norm.png")
    plot_profiles(profiles, args, milestones, out / "rollout_grad.png")
    print(f"wrote grad_norm.csv/.png and rollout_grad.csv/.png in {out}")


def train(args: argparse.Namespace, out: Path) -> tuple[list[dict], list[dict], list[int]]:
    """Every (K, kind) run, segment by segment; returns the grad-norm rows, the profile rows and the milestones."""
    every = args.profile_every or args.env_steps
    milestones = list(range(every, args.env_steps, every)) + [args.env_steps]
    rows, profiles = [], []
    for steps in args.steps:
        for kind in args.kinds:
            run = out / f"{kind}_K{steps}"
            for milestone in milestones:
                # only total_steps changes between segments, so each one resumes the previous checkpoint
                cfg = load_config("scratch_base", [
                    f"policy.kind={kind}", f"policy.steps={steps}", f"policy.hidden={args.hidden}",
                    f"critic.hidden={args.hidden}", f"sac.batch_size={args.batch}", f"finetune.env_id={args.env}",
                    f"finetune.total_steps={milestone}", f"finetune.learning_starts={args.learning_starts}",
                    f"finetune.random_steps={args.learning_starts}", f"finetune.log_every={args.log_every}",
                    f"finetune.eval_every={args.env_steps}", "finetune.eval_episodes=2", "evaluate.both=false",
                    f"finetune.checkpoint_every={args.env_steps}", f"seed={args.seed}", "trainer.progress=false",
                    *args.set])
                metrics = finetune(cfg, run)
                profile = checkpoint_gradient_profile(run, seed=args.seed)
                profiles += [{"kind": kind, "K": steps, "env_step": milestone, "step": i, "dq_da": float(g)}
                             for i, g in enumerate(profile)]
                print(f"{kind:>9} K={steps:<3} {milestone:>7} env steps  eval return "
                      f"{metrics.get('eval_deterministic_return_mean', float('nan')):8.1f}  "
                      f"|dQ/da_0| / |dQ/da_K| = {float(profile[0] / profile[-1]):.3g}", flush=True)
            rows += [{"kind": kind, "K": steps, "env_step": int(r["env_step"]),
                      "actor_grad_norm": float(r["actor_grad_norm"])}
                     for r in read_rows(run, "train") if r.get("actor_grad_norm")]
    return rows, profiles, milestones


def plot_grad_norm(rows: list[dict], args: argparse.Namespace, path: Path) -> None:
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
    fig.savefig(path, dpi=100, bbox_inches="tight")


def plot_profiles(profiles: list[dict], args: argparse.Namespace, milestones: list[int], path: Path) -> None:
    """Top: the profile at the last milestone, normalised by ‖∂Q/∂a_K‖. Bottom: ‖∂Q/∂a_0‖/‖∂Q/∂a_K‖ over training."""
    fig, axes = plt.subplots(2, len(args.steps), figsize=(6 * len(args.steps), 8), squeeze=False)
    dq = {(r["kind"], r["K"], r["env_step"], r["step"]): r["dq_da"] for r in profiles}

    def ratio(kind: str, steps: int, step: int, i: int) -> float:
        # an all-zero profile (every action tanh-saturated, no gradient from Q at all) has no ratio: a gap
        last_grad = dq[kind, steps, step, steps]
        return dq[kind, steps, step, i] / last_grad if last_grad > 0 else float("nan")

    last = milestones[-1]
    for col, steps in enumerate(args.steps):
        for kind in args.kinds:
            if (kind, steps, last, 0) not in dq:  # a (kind, K) pair that was not run
                continue
            axes[0, col].plot(range(steps + 1), [ratio(kind, steps, last, i) for i in range(steps + 1)],
                              marker="o", label=kind)
            axes[1, col].plot(milestones, [ratio(kind, steps, m, 0) for m in milestones], marker="o", label=kind)
        axes[0, col].set(title=f"{args.env}, K = {steps}, after {milestones[-1]} env steps",
                         xlabel="rollout step i", ylabel="|dQ/da_i| / |dQ/da_K|", yscale="log")
        axes[1, col].set(title=f"K = {steps}", xlabel="environment steps", ylabel="|dQ/da_0| / |dQ/da_K|",
                         yscale="log")
        for ax in axes[:, col]:
            ax.axhline(1.0, color="grey", lw=0.8)
            ax.grid(alpha=0.3)
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100, bbox_inches="tight")


if __name__ == "__main__":
    main()
