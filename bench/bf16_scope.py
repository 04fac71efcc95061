"""bf16-mixed with one half of the agent kept in fp32: which half's rounding changes what a run learns, and what
each scope costs in speed. An experiment, not a config option: the half kept in fp32 runs its forward passes inside
:func:`pipeline.precision.full_precision`.

    python bench/bf16_scope.py run --preset hopper_scratch_flow_t --seed 0 --steps 20000 --keep-fp32 actor \\
        --out runs/scope/actor32_s0          # a whole run (run_preset), bf16-mixed except the actor's rollouts
    python bench/bf16_scope.py speed --preset hopper_scratch_flow_t_paper --threads 1
        # updates/s of fp32, bf16 everywhere and bf16 in the critic only, alternated rounds in one process

Scopes: ``--keep-fp32 actor`` wraps the flow policy's rollout (acting, critic targets, the actor loss),
``--keep-fp32 critic`` the CrossQ critic's forward (its training and the actor loss's Q). Flow policies and the
CrossQ critic only (the from-scratch presets). docs/results.md has the Hopper-v5 figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from pipeline.critics import CrossQCritic  # noqa: E402
from pipeline.policies.flow import FlowPolicy  # noqa: E402
from pipeline.precision import full_precision  # noqa: E402
from pipeline.runtime import cpu_description, keep_freed_memory  # noqa: E402

SCOPES = ("actor", "critic")
_kept: set[str] = set()  # the halves whose forward passes run in fp32 right now


def _install() -> None:
    """Wrap the two forward passes once; :data:`_kept` decides per call whether they leave autocast."""
    rollout, critic_forward = FlowPolicy.rollout, CrossQCritic.forward

    def kept_rollout(self, obs, *args, **kwargs):
        if "actor" not in _kept:
            return rollout(self, obs, *args, **kwargs)
        with full_precision(obs.device.type):
            return rollout(self, obs.float(), *args, **kwargs)

    def kept_critic(self, obs, act):
        if "critic" not in _kept:
            return critic_forward(self, obs, act)
        with full_precision(obs.device.type):
            return critic_forward(self, obs.float(), act.float())

    FlowPolicy.rollout, CrossQCritic.forward = kept_rollout, kept_critic


def run(args: argparse.Namespace) -> None:
    from pipeline.experiments.tables import run_preset

    _kept.add(args.keep_fp32)
    print(run_preset(args.preset, args.seed, args.out, [f"finetune.total_steps={args.steps}",
                                                        f"threads={args.threads}", "trainer.precision=bf16-mixed"]))


def speed(args: argparse.Namespace) -> None:
    from update_throughput import make_updater, random_batch, updates_per_second

    keep_freed_memory()
    torch.set_num_threads(args.threads)
    print(f"cpu: {cpu_description()}; torch {torch.__version__}; preset {args.preset}, {args.threads} thread(s)")
    device = torch.device("cpu")
    variants = {"fp32": ("32-true", set()), "bf16 everywhere": ("bf16-mixed", set()),
                "bf16 in the critic": ("bf16-mixed", {"actor"})}
    updaters = {name: make_updater(args.kind, None, 256, device, "eager", precision, args.preset, [])
                for name, (precision, _) in variants.items()}
    batch = random_batch(args.batch, device)
    rates: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, updater in updaters.items():
            _kept.clear()
            _kept.update(variants[name][1])
            rates[name].append(updates_per_second(updater, batch, args.updates))
    base = statistics.median(rates["fp32"])
    for name, r in rates.items():
        print(f"{name:20s} {statistics.median(r):6.2f} upd/s  {statistics.median(r) / base:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="one whole run under bf16-mixed with one half kept in fp32")
    r.add_argument("--preset", required=True)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--steps", type=int, required=True, help="finetune.total_steps")
    r.add_argument("--keep-fp32", choices=SCOPES, required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--threads", type=int, default=1)
    s = sub.add_parser("speed", help="updates/s by scope, alternated rounds in one process")
    s.add_argument("--preset", default="hopper_scratch_flow_t_paper")
    s.add_argument("--kind", default="flow_t")
    s.add_argument("--batch", type=int, default=512)
    s.add_argument("--threads", type=int, default=1)
    s.add_argument("--rounds", type=int, default=6)
    s.add_argument("--updates", type=int, default=6)
    args = p.parse_args()
    _install()
    if args.command == "run":
        run(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
