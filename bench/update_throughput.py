"""Update throughput (SAC updates/s) of every policy kind, measured in one process; ratios against Gaussian SAC.

    python bench/update_throughput.py [--steps 1 4 10] [--batch 256 1024] [--threads 1 2]
                                      [--modes eager eager_noguard compile cuda_graphs]
                                      [--device cpu|cuda] [--repeats 30] [--hidden 256] [--set KEY=VALUE ...]

Each configuration runs a warm-up, then ``--repeats`` timed updates (critic + actor + alpha + Polyak; with
``--set sac.policy_delay=N`` the actor and alpha step on every N-th update, as in the from-scratch presets). The
headline is the ratio flow_x / gaussian at the same K, batch and threads; absolute numbers are only comparable
within one run on one machine. Modes are ``sac.update_mode`` values (``eager``, ``compile``, ``cuda_graphs``; the
last two guard against non-finite steps on the device) plus ``eager_noguard``: eager without the guard, whose host
sync per optimizer step is the eager update's only one.
"""

from __future__ import annotations

import argparse
import time

import torch

from pipeline.config import load_config
from pipeline.sac import Batch, SACAgent
from pipeline.update import SACUpdater, make_optimizers

KINDS = ("gaussian", "flow_mlp", "flow_g", "flow_t")
OBS_DIM, ACT_DIM = 17, 6  # HalfCheetah / Walker2d sizes


def make_updater(kind: str, steps: int, hidden: int, device: torch.device, mode: str,
                 overrides: list[str]) -> SACUpdater:
    update_mode = mode.removesuffix("_noguard")
    cfg = load_config(None, [f"policy.kind={kind}", f"policy.steps={steps}", f"policy.hidden={hidden}",
                             f"critic.hidden={hidden}", f"sac.update_mode={update_mode}", *overrides])
    agent = SACAgent(OBS_DIM, ACT_DIM, cfg.policy, cfg.critic, cfg.sac).to(device)
    return SACUpdater(agent, make_optimizers(agent), check_finite=not mode.endswith("_noguard"))


def random_batch(batch: int, device: torch.device) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(torch.randn(batch, OBS_DIM, generator=g).to(device),
                 (torch.rand(batch, ACT_DIM, generator=g) * 2 - 1).to(device),
                 torch.randn(batch, generator=g).to(device), torch.randn(batch, OBS_DIM, generator=g).to(device),
                 torch.zeros(batch, device=device))


def updates_per_second(updater: SACUpdater, batch: Batch, repeats: int) -> float:
    update = updater.update
    for _ in range(3 if updater.mode == "eager" else 6):  # compiling / capturing happens here
        update(batch)
    sync = torch.cuda.synchronize if batch.obs.is_cuda else (lambda: None)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        update(batch)
    sync()
    return repeats / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, nargs="+", default=[4])
    p.add_argument("--batch", type=int, nargs="+", default=[256])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--kinds", nargs="+", default=list(KINDS))
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--modes", nargs="+", default=["eager"],
                   choices=["eager", "eager_noguard", "compile", "cuda_graphs"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every row, e.g. critic.kind=crossq (repeatable)")
    args = p.parse_args()
    device = torch.device(args.device)
    print(f"device={device} hidden={args.hidden} obs={OBS_DIM} act={ACT_DIM} repeats={args.repeats}"
          + "".join(f" {o}" for o in args.set))
    print(f"{'threads':>7} {'batch':>5} {'K':>3} {'kind':>9} {'mode':>16} {'upd/s':>8} {'vs gaussian':>11} "
          f"{'vs ' + args.modes[0]:>8}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch_size in args.batch:
            batch = random_batch(batch_size, device)
            for steps in args.steps:
                base: dict[str, float] = {}
                for kind in args.kinds:
                    eager = None
                    for mode in args.modes:
                        torch.manual_seed(0)
                        torch.compiler.reset()
                        try:
                            updater = make_updater(kind, steps, args.hidden, device, mode, args.set)
                            ups = updates_per_second(updater, batch, args.repeats)
                        except Exception as e:  # one failing mode must not hide the other rows
                            print(f"{threads:>7} {batch_size:>5} {steps:>3} {kind:>9} {mode:>16} failed: "
                                  f"{type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
                            continue
                        eager = eager or ups
                        if kind == "gaussian":
                            base[mode] = ups
                        ratio = ups / base.get(mode, float("nan"))
                        print(f"{threads:>7} {batch_size:>5} {steps:>3} {kind:>9} {mode:>16} {ups:>8.1f} "
                              f"{ratio:>11.2f} {ups / eager:>8.2f}", flush=True)


if __name__ == "__main__":
    main()
