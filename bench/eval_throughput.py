"""Evaluation speed with vector envs: environment steps/s of ``pipeline.evaluation.evaluate`` by number of copies.

    python bench/eval_throughput.py [--env robosuite/Lift] [--kind flow_t] [--episodes 8]
                                    [--copies 1 2 4] [--modes sync async] [--repeats 2]

One agent (the default preset's Flow-T, untrained, deterministic acting) evaluates ``--episodes`` fixed-seed
episodes on one env (the baseline: the plain env, as fine-tuning's evaluations ran before vector envs) and on vector
envs of each size and mode, all in one process; repeats are interleaved and the best is kept. Env construction and
worker start-up are excluded (they happen once per run). Prints env steps/s and the ratio against one env.
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.config import load_config
from pipeline.envs import make_env, make_vector_env
from pipeline.evaluation import evaluate
from pipeline.sac import SACAgent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="robosuite/Lift")
    p.add_argument("--kind", default="flow_t")
    p.add_argument("--episodes", type=int, default=8)
    p.add_argument("--horizon", type=int, default=None, help="robosuite episode length (default: the task's)")
    p.add_argument("--copies", type=int, nargs="+", default=[2, 4])
    p.add_argument("--modes", nargs="+", default=["sync", "async"], choices=["sync", "async"])
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    options = {"horizon": args.horizon} if args.horizon else {}
    cfg = load_config("default", [f"policy.kind={args.kind}"])
    variants = {"1 env": make_env(args.env, **options)}
    for mode in args.modes:
        for n in args.copies:
            variants[f"{n} copies, {mode}"] = make_vector_env(args.env, n, mode, **options)
    single = variants["1 env"]
    torch.manual_seed(0)
    agent = SACAgent(single.observation_space.shape[0], single.action_space.shape[0], cfg.policy, cfg.critic, cfg.sac)
    best: dict[str, float] = dict.fromkeys(variants, 0.0)
    returns: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, env in variants.items():
            t0 = time.perf_counter()
            r = evaluate(agent, env, args.episodes, seed=10_000, deterministic=True)
            rate = r["length_mean"] * args.episodes / (time.perf_counter() - t0)
            best[name], returns[name] = max(best[name], rate), r["return_mean"]
    print(f"env={args.env} kind={args.kind} episodes={args.episodes} (mean length {r['length_mean']:.0f})")
    print(f"{'variant':>18} {'env steps/s':>12} {'vs 1 env':>9} {'return_mean':>12}")
    for name, rate in best.items():
        print(f"{name:>18} {rate:>12.1f} {rate / best['1 env']:>9.2f} {returns[name]:>12.3f}")
    for env in variants.values():
        env.close()


if __name__ == "__main__":
    main()
