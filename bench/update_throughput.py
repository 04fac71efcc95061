"""Update throughput (SAC updates/s) of every policy kind, measured in one process; ratios against Gaussian SAC.

    python bench/update_throughput.py [--steps 1 4 10] [--batch 256 1024] [--threads 1 2]
                                      [--modes eager eager_noguard compile compile_fullgraph cuda_graphs]
                                      [--precisions 32-true bf16-mixed] [--preset hopper_scratch_flow_t_paper]
                                      [--device cpu|cuda] [--repeats 30] [--hidden 256] [--set KEY=VALUE ...]
                                      [--malloc keep|glibc]

Each configuration runs a warm-up, then ``--repeats`` timed updates (critic + actor + alpha + Polyak; with
``--set sac.policy_delay=N`` the actor and alpha step on every N-th update, as in the from-scratch presets). The
headline is the ratio flow_x / gaussian at the same K, batch and threads; absolute numbers are only comparable
within one run on one machine. Modes are ``sac.update_mode`` values (``eager``, ``compile``, ``cuda_graphs``; the
last two guard against non-finite steps on the device) plus ``eager_noguard``: eager without the guard, whose host
sync per optimizer step is the eager update's only one. ``--precisions`` are ``trainer.precision`` values; the
last column is each row's ratio to the first precision's row of the same kind and mode. ``--preset`` takes the
network sizes and SAC settings from a preset (``--hidden``, and ``--steps`` unless given, are then ignored).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import TypeVar

import torch

from pipeline.config import load_config
from pipeline.precision import PRECISIONS, check_precision
from pipeline.runtime import cpu_description, keep_freed_memory
from pipeline.sac import Batch, SACAgent
from pipeline.update import SACUpdater, make_optimizers

KINDS = ("gaussian", "flow_mlp", "flow_g", "flow_t")
OBS_DIM, ACT_DIM = 17, 6  # HalfCheetah / Walker2d sizes
K = TypeVar("K")


def make_updater(kind: str, steps: int | None, hidden: int, device: torch.device, mode: str, precision: str,
                 preset: str | None, overrides: list[str]) -> SACUpdater:
    update_mode = mode.removesuffix("_noguard")
    sizes = [] if preset else [f"policy.hidden={hidden}", f"critic.hidden={hidden}"]
    cfg = load_config(preset, [f"policy.kind={kind}", *sizes, *([f"policy.steps={steps}"] if steps else []),
                               f"sac.update_mode={update_mode}", f"trainer.precision={precision}", *overrides])
    check_precision(precision, device)
    agent = SACAgent.from_config(cfg, OBS_DIM, ACT_DIM).to(device)
    return SACUpdater(agent, make_optimizers(agent), check_finite=not mode.endswith("_noguard"))


def random_batch(batch: int, device: torch.device, obs_dim: int = OBS_DIM, act_dim: int = ACT_DIM) -> Batch:
    """A fixed random batch (seed 0): ``batch`` transitions, none terminal, on ``device``."""
    g = torch.Generator().manual_seed(0)
    return Batch(torch.randn(batch, obs_dim, generator=g).to(device),
                 (torch.rand(batch, act_dim, generator=g) * 2 - 1).to(device),
                 torch.randn(batch, generator=g).to(device), torch.randn(batch, obs_dim, generator=g).to(device),
                 torch.zeros(batch, device=device), torch.ones(batch, device=device))


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


def start_side_by_side(args: argparse.Namespace, what: str = "") -> Batch:
    """Set-up of a bench that times several updaters of ``args.preset`` side by side on the CPU: malloc keeps freed
    memory (as the stages set it), ``args.threads`` threads, and room for every updater's compiled steps. Prints the
    CPU line (``what`` appended) and returns a random batch of ``args.batch``."""
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    # the updaters live side by side, each with its own optimizers: past dynamo's default of 8 compiled versions
    # of the optimizer step, the later ones would fall back to eager steps
    torch._dynamo.config.recompile_limit = 64
    print(f"cpu: {cpu_description()}; torch {torch.__version__}; preset {args.preset}, kind {args.kind}, "
          f"batch {args.batch}, {args.threads} thread(s){what}")
    return random_batch(args.batch, torch.device("cpu"))


def median_rates(updaters: dict[K, SACUpdater], batch: Batch, rounds: int, updates: int) -> dict[K, float]:
    """Median updates/s of each updater over ``rounds`` rounds, each timing ``updates`` updates of every updater in
    turn (after :func:`updates_per_second`'s warm-up), so that a slow spell of the machine falls on all of them."""
    rates: dict[K, list[float]] = {k: [] for k in updaters}
    for _ in range(rounds):
        for k, updater in updaters.items():
            rates[k].append(updates_per_second(updater, batch, updates))
    return {k: statistics.median(r) for k, r in rates.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, nargs="+", default=None, help="K (default 4, or the preset's)")
    p.add_argument("--batch", type=int, nargs="+", default=[256])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--kinds", nargs="+", default=list(KINDS))
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--modes", nargs="+", default=["eager"],
                   choices=["eager", "eager_noguard", "compile", "compile_fullgraph", "cuda_graphs"])
    p.add_argument("--precisions", nargs="+", default=["32-true"], choices=PRECISIONS)
    p.add_argument("--preset", help="network sizes and SAC settings of this preset (kind still from --kinds)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every row, e.g. critic.kind=crossq (repeatable)")
    p.add_argument("--malloc", choices=["keep", "glibc"], default="keep",
                   help="keep: malloc reuses freed memory, as the pipeline's stages set it; glibc: its defaults")
    args = p.parse_args()
    device = torch.device(args.device)
    malloc = "keep freed memory" if args.malloc == "keep" and keep_freed_memory() else "glibc defaults"
    sizes = f"preset={args.preset}" if args.preset else f"hidden={args.hidden}"
    print(f"device={device} {sizes} obs={OBS_DIM} act={ACT_DIM} repeats={args.repeats}"
          + "".join(f" {o}" for o in args.set))
    print(f"cpu: {cpu_description()}; torch {torch.__version__}; malloc: {malloc}"
          + (f"; gpu: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""))
    print(f"{'threads':>7} {'batch':>5} {'K':>3} {'kind':>9} {'mode':>16} {'precision':>10} {'upd/s':>8} "
          f"{'vs gaussian':>11} {'vs ' + args.modes[0]:>8} {'vs ' + args.precisions[0]:>10}")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for batch_size in args.batch:
            batch = random_batch(batch_size, device)
            for steps in args.steps or [None]:
                base: dict[tuple[str, str], float] = {}
                for kind in args.kinds:
                    first: dict[str, float] = {}  # per precision: the first mode's figure
                    for mode in args.modes:
                        fp: float | None = None  # this mode's figure at the first precision
                        for prec in args.precisions:
                            torch.manual_seed(0)
                            torch.compiler.reset()
                            head = f"{threads:>7} {batch_size:>5} {steps or '':>3} {kind:>9} {mode:>16} {prec:>10}"
                            try:
                                updater = make_updater(kind, steps, args.hidden, device, mode, prec, args.preset,
                                                       args.set)
                                ups = updates_per_second(updater, batch, args.repeats)
                            except Exception as e:  # one failing mode must not hide the other rows
                                print(f"{head} failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                                      flush=True)
                                continue
                            first.setdefault(prec, ups)
                            fp = fp or ups
                            if kind == "gaussian":
                                base[(mode, prec)] = ups
                            ratio = ups / base.get((mode, prec), float("nan"))
                            print(f"{head} {ups:>8.1f} {ratio:>11.2f} {ups / first[prec]:>8.2f} {ups / fp:>10.2f}",
                                  flush=True)


if __name__ == "__main__":
    main()
