"""Lightning's overhead per update: OfflinePretrain driven by a Trainer vs the same updates in a bare loop.

    python bench/lightning_overhead.py [--updates 300] [--kind flow_t] [--batch 256] [--hidden 256]

Both run in this process on the same synthetic dataset, config and thread count; the ratio
(Lightning time / bare time - 1) is the overhead. Target: <= 5 %.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from pipeline.buffers import ReplayBuffer
from pipeline.terminal import quiet_libraries
from pipeline.config import load_config
from pipeline.data import TransitionDataset
from pipeline.lightning import OfflinePretrain, StepDataModule
from pipeline.sac import SACAgent
from pipeline.update import SACUpdater, make_optimizers
from pipeline.workflow.common import make_trainer


def synthetic_dataset(n: int, obs_dim: int = 17, act_dim: int = 6) -> TransitionDataset:
    return TransitionDataset.random(n, obs_dim, act_dim, episode_length=n, source="synthetic").with_normalization()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--updates", type=int, default=300)
    p.add_argument("--kind", default="flow_t")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    data = synthetic_dataset(10_000)
    cfg = load_config(None, [f"policy.kind={args.kind}", f"sac.batch_size={args.batch}", f"critic.hidden={args.hidden}",
                             f"policy.hidden={args.hidden}", f"pretrain.steps={args.updates}",
                             f"pretrain.log_every={args.updates}", f"pretrain.checkpoint_every={10 * args.updates}",
                             "trainer.progress=false", "device=cpu"])
    pt = cfg.pretrain

    def bare() -> float:
        torch.manual_seed(0)
        agent = SACAgent(data.obs_dim, data.act_dim, cfg.policy, cfg.critic, cfg.sac)
        updater = SACUpdater(agent, make_optimizers(agent))
        buf = ReplayBuffer(len(data), data.obs_dim, data.act_dim)
        buf.add(data.observations, data.actions, data.rewards, data.next_observations, data.terminals)
        t0 = time.perf_counter()
        for _ in range(args.updates):
            updater.update(buf.sample(args.batch), bc_weight=0.0, q_weight=pt.q_weight, flow_weight=pt.flow_weight)
        return time.perf_counter() - t0

    def lightning() -> float:
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as out:
            module = OfflinePretrain(cfg, data, out)
            trainer = make_trainer(cfg)
            t0 = time.perf_counter()
            trainer.fit(module, datamodule=StepDataModule(0, args.updates))
            return time.perf_counter() - t0

    bare()  # warm-up: allocator, MKL, first-call costs
    results = {"bare": [], "lightning": []}
    for _ in range(2):  # interleaved so drift in machine load hits both alike
        results["bare"].append(bare())
        results["lightning"].append(lightning())
    b, lt = min(results["bare"]), min(results["lightning"])
    print(f"kind={args.kind} batch={args.batch} hidden={args.hidden} updates={args.updates} threads={args.threads}")
    print(f"bare loop: {args.updates / b:.1f} upd/s   lightning: {args.updates / lt:.1f} upd/s   "
          f"overhead: {100 * (lt / b - 1):+.1f} % (includes Trainer set-up and the final checkpoint)")


if __name__ == "__main__":
    main()
