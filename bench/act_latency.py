"""Acting latency: one ``agent.act`` call on a single observation (what an env loop pays per step), per policy kind,
``sac.act_mode`` and ``trainer.precision``, in one process; ratios against the first mode and precision.

    python bench/act_latency.py [--preset default] [--kinds flow_t flow_g] [--modes eager compile]
                                [--precisions 32-true bf16-mixed] [--threads 1] [--calls 2000] [--obs 19 --act 7]

Deterministic and stochastic acting both run the K-step rollout; the figure is the median over five rounds of
``--calls`` calls each, in microseconds. A compiled row also prints its compile time (the first call's). On a CPU,
acting runs in fp32 whatever the precision (:func:`pipeline.precision.acting_precision`); ``--force-precision``
autocasts acting anyway, to show why.
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


def act_microseconds(agent: SACAgent, obs: torch.Tensor, deterministic: bool, calls: int) -> tuple[float, float]:
    """(median microseconds per call, seconds of the first call)."""
    t0 = time.perf_counter()
    agent.act(obs, deterministic)
    first = time.perf_counter() - t0
    for _ in range(50):
        agent.act(obs, deterministic)
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(calls):
            agent.act(obs, deterministic)
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(rounds), first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="default")
    p.add_argument("--kinds", nargs="+", default=["gaussian", "flow_mlp", "flow_g", "flow_t"])
    p.add_argument("--modes", nargs="+", default=["eager"], choices=["eager", "compile"], help="sac.act_mode")
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--force-precision", action="store_true", help="autocast acting under bf16-mixed on the CPU too")
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
    print(f"{'kind':>9} {'rollout':>13} {'act_mode':>8} {'precision':>10} {'us/call':>8} {'first s':>7} "
          f"{'speedup vs ' + args.modes[0] + ' ' + args.precisions[0]:>26}")
    for kind in args.kinds:
        for deterministic in (True, False):
            base = None
            for mode in args.modes:
                for prec in args.precisions:
                    cfg = load_config(args.preset, [f"policy.kind={kind}", f"sac.act_mode={mode}", *args.set])
                    check_precision(prec, torch.device("cpu"))
                    torch.manual_seed(0)
                    torch.compiler.reset()
                    # scope 'agent': acting is the actor's rollout, which the default scope keeps in fp32
                    agent = SACAgent(args.obs, args.act, cfg.policy, cfg.critic, cfg.sac, prec, "agent").eval()
                    forced = args.force_precision and prec == "bf16-mixed"
                    if forced:  # acting_precision would leave autocast on the CPU: go round it
                        agent.act = _autocast_act(agent)
                    us, first = act_microseconds(agent, torch.randn(1, args.obs), deterministic, args.calls)
                    base = base or us
                    rollout = "deterministic" if deterministic else "stochastic"
                    print(f"{kind:>9} {rollout:>13} {mode:>8} {prec + ('*' if forced else ''):>10} {us:>8.1f} "
                          f"{first:>7.2f} {base / us:>26.2f}", flush=True)


def _autocast_act(agent: SACAgent):
    def act(obs: torch.Tensor, deterministic: bool) -> torch.Tensor:
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            return agent._act_fn(agent.normalize(obs), deterministic)
    return act

if __name__ == "__main__":
    main()
