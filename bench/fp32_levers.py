"""The fp32 levers at the paper's sizes on one process: batch renorm's closed-form gradient and Adam's fused kernel
against autograd through batch renorm's formula and foreach Adam, alternated in rounds (medians); malloc's reuse of
freed memory is process-wide, so run the script once per ``--malloc`` value, alternated.

    python bench/fp32_levers.py --threads 1 --malloc glibc      # then --malloc keep, and again
"""

import argparse
import statistics as st
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from pipeline import batch_renorm as nb  # noqa: E402
from pipeline.runtime import cpu_description, keep_freed_memory  # noqa: E402
from pipeline.update import Optimizers  # noqa: E402
from update_throughput import make_updater, random_batch  # noqa: E402


def autograd_forward(self: nb.BatchRenorm, x: torch.Tensor) -> torch.Tensor:
    """The baseline: batch renorm's training formula with autograd through the batch mean and variance."""
    x = x.float()
    if not self.training:
        scale, shift = self.running_affine()
        return torch.addcmul(shift, x, scale)
    mean = x.mean(dim=1, keepdim=True)
    centered = x - mean
    var = centered.square().mean(dim=1, keepdim=True)
    std = (var + self.eps).sqrt()
    running_std = (self.running_var + self.eps).sqrt()
    renorm = (self.steps >= self.warmup).to(x.dtype)
    r = renorm * (std.detach() / running_std).clamp(1 / self.r_max, self.r_max) + (1 - renorm)
    d = renorm * ((mean.detach() - self.running_mean) / running_std).clamp(-self.d_max, self.d_max)
    with torch.no_grad():
        self.running_mean.lerp_(mean, self.momentum)
        self.running_var.lerp_(var, self.momentum)
        self.steps += 1
    return torch.addcmul(self.bias + self.weight * d, centered, self.weight * r / std)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--malloc", choices=["keep", "glibc"], default="keep")
    p.add_argument("--rounds", type=int, default=6)
    args = p.parse_args()
    malloc = "keep freed memory" if args.malloc == "keep" and keep_freed_memory() else "glibc defaults"
    print(f"cpu: {cpu_description()}; torch {torch.__version__}; malloc: {malloc}")
    torch.set_num_threads(args.threads)
    closed_form = nb.BatchRenorm.forward
    for kind, preset in (("flow_t", "hopper_scratch_flow_t_paper"), ("flow_g", "hopper_scratch_flow_g_paper")):
        updater = make_updater(kind, None, 256, torch.device("cpu"), "eager", "32-true", preset, [])
        fused = updater.opt
        foreach = Optimizers(*(type(o)(o.param_groups[0]["params"], lr=o.param_groups[0]["lr"],
                                       betas=o.param_groups[0]["betas"], foreach=True) if o else None
                               for o in (fused.actor, fused.critic, fused.alpha)))
        batch = random_batch(512, torch.device("cpu"))
        variants = {"before": (autograd_forward, foreach), "after": (closed_form, fused)}

        def run(name: str, updates: int) -> float:
            nb.BatchRenorm.forward, updater.opt = variants[name]
            t0 = time.perf_counter()
            for _ in range(updates):
                updater.update(batch)
            return round(updates / (time.perf_counter() - t0), 2)

        for name in variants:  # warm-up
            run(name, 3)
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name in variants:
                rates[name].append(run(name, 6))
        before, after = st.median(rates["before"]), st.median(rates["after"])
        print(f"{preset} threads {args.threads}: autograd batch renorm + foreach Adam {before:.2f} upd/s, closed "
              f"form + fused {after:.2f} upd/s, {after / before:.2f}x; rounds {rates}", flush=True)
    nb.BatchRenorm.forward = closed_form


if __name__ == "__main__":
    main()
