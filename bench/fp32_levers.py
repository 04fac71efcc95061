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


p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
p.add_argument("--threads", type=int, default=1)
p.add_argument("--malloc", choices=["keep", "glibc"], default="keep")
p.add_argument("--rounds", type=int, default=6)
args = p.parse_args()
kept = keep_freed_memory() if args.malloc == "keep" else False
print(f"cpu: {cpu_description()}; torch {torch.__version__}; malloc: {'keep freed memory' if kept else 'glibc defaults'}")
torch.set_num_threads(args.threads)
new_fwd, old_fwd = nb.BatchRenorm.forward, autograd_forward
for kind, preset in (("flow_t", "hopper_scratch_flow_t_paper"), ("flow_g", "hopper_scratch_flow_g_paper")):
    u = make_updater(kind, None, 256, torch.device("cpu"), "eager", "32-true", preset, [])
    fused = u.opt
    fe = Optimizers(*(type(o)(o.param_groups[0]["params"], lr=o.param_groups[0]["lr"],
                              betas=o.param_groups[0]["betas"], foreach=True) if o else None
                      for o in (fused.actor, fused.critic, fused.alpha)))
    b = random_batch(512, torch.device("cpu"))
    variants = {"before": (old_fwd, fe), "after": (new_fwd, fused)}
    res: dict[str, list[float]] = {k: [] for k in variants}
    for name, (f, o) in variants.items():
        nb.BatchRenorm.forward = f; u.opt = o
        for _ in range(3): u.update(b)
    for r in range(args.rounds):
        for name, (f, o) in variants.items():
            nb.BatchRenorm.forward = f; u.opt = o
            t = time.perf_counter()
            for _ in range(6): u.update(b)
            res[name].append(round(6 / (time.perf_counter() - t), 2))
    o, n = st.median(res["before"]), st.median(res["after"])
    print(f"{preset} threads {args.threads}: autograd batch renorm + foreach Adam {o:.2f} upd/s, closed form + fused "
          f"{n:.2f} upd/s, {n / o:.2f}x; rounds {res}", flush=True)
