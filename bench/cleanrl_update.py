"""Gaussian SAC's update against CleanRL's, at CleanRL's sizes and settings, in one process.

    python bench/cleanrl_update.py [--threads 1] [--rounds 7] [--env-steps 40]
                                   [--variants eager compile bf16 compile+bf16 fullgraph fullgraph+bf16] [--obs 11 --act 3]

The baseline is CleanRL's ``sac_continuous_action.py`` update, restated in :class:`CleanRLUpdate`: two separate Q
MLPs with target copies and a tanh-Gaussian actor, all 2 x 256, batch 256, PyTorch's default Adam (its per-tensor
loop on a CPU); the critic steps every env step; with its ``policy_frequency`` of 2 the actor steps twice every
second env step (compensating the delay), each time followed by an α step whose log-probabilities come from a second,
gradient-free actor forward and an ``.item()`` read of α; both targets are Polyak-averaged every env step.

Ours is :class:`~pipeline.update.SACUpdater` on the ``hopper_scratch_gaussian_cleanrl`` preset: the same networks
(parameter for parameter), optimizers' rates, batch and counts of critic and actor steps (``sac.policy_delay: 1``,
one actor step per critic step), in the variants
``--variants`` names (``sac.update_mode`` and ``trainer.precision``). Each round times ``--env-steps`` env steps'
worth of updates (no environment, no acting: updates are ~90 % of a CleanRL-size loop, bench/README.md) of every
variant, in turn; the figures are medians over the rounds, the ratios against CleanRL's update in the same process.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config import load_config
from pipeline.precision import check_precision
from pipeline.runtime import cpu_description, keep_freed_memory
from pipeline.sac import Batch, SACAgent
from pipeline.update import SACUpdater, make_optimizers
from update_throughput import random_batch

PRESET = "hopper_scratch_gaussian_cleanrl"  # CleanRL's settings as ours
VARIANTS = {
    "eager": ["sac.update_mode=eager"],
    "compile": ["sac.update_mode=compile"],
    "bf16": ["sac.update_mode=eager", "trainer.precision=bf16-mixed"],
    "compile+bf16": ["sac.update_mode=compile", "trainer.precision=bf16-mixed"],
    "fullgraph": ["sac.update_mode=compile_fullgraph"],
    "fullgraph+bf16": ["sac.update_mode=compile_fullgraph", "trainer.precision=bf16-mixed"],
}
POLICY_FREQUENCY = 2  # CleanRL's: the actor (and alpha) step this many times every this many env steps


class CleanRLUpdate:
    """CleanRL's SAC update for continuous actions (the baseline); ``update(batch)`` is one env step's training."""

    LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: int = 256) -> None:
        def mlp(n_in: int, n_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(n_in, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, n_out))

        self.q = nn.ModuleList([mlp(obs_dim + act_dim, 1) for _ in range(2)])
        self.q_target = copy.deepcopy(self.q)
        self.actor = nn.ModuleDict({"trunk": mlp(obs_dim, hidden)[:-1], "mean": nn.Linear(hidden, act_dim),
                                    "log_std": nn.Linear(hidden, act_dim)})
        self.log_alpha = torch.zeros(1, requires_grad=True)
        self.alpha = 1.0
        self.target_entropy = -float(act_dim)
        self.q_opt = torch.optim.Adam(self.q.parameters(), lr=1e-3)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=3e-4)
        self.alpha_opt = torch.optim.Adam([self.log_alpha], lr=1e-3)
        self.gamma, self.tau, self.step = 0.99, 0.005, 0

    def sample(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``obs [B, S] -> (action [B, A], log π [B])``: tanh-squashed Gaussian, log σ squashed into its range."""
        h = self.actor["trunk"](obs)
        mean, log_std = self.actor["mean"](h), torch.tanh(self.actor["log_std"](h))
        log_std = self.LOG_STD_MIN + 0.5 * (self.LOG_STD_MAX - self.LOG_STD_MIN) * (log_std + 1)
        normal = torch.distributions.Normal(mean, log_std.exp())
        x = normal.rsample()
        y = torch.tanh(x)
        return y, (normal.log_prob(x) - torch.log(1 - y.pow(2) + 1e-6)).sum(1)

    def q_values(self, nets: nn.ModuleList, obs: torch.Tensor, act: torch.Tensor) -> list[torch.Tensor]:
        x = torch.cat([obs, act], 1)
        return [net(x).view(-1) for net in nets]

    def update(self, b: Batch) -> None:
        self.step += 1
        with torch.no_grad():
            next_act, next_log_pi = self.sample(b.next_obs)
            q1_t, q2_t = self.q_values(self.q_target, b.next_obs, next_act)
            target = b.rewards + (1 - b.terminals) * self.gamma * (torch.min(q1_t, q2_t) - self.alpha * next_log_pi)
        q1, q2 = self.q_values(self.q, b.obs, b.actions)
        q_loss = F.mse_loss(q1, target) + F.mse_loss(q2, target)
        self.q_opt.zero_grad()
        q_loss.backward()
        self.q_opt.step()
        if self.step % POLICY_FREQUENCY == 0:
            for _ in range(POLICY_FREQUENCY):  # CleanRL's compensation for the delay
                pi, log_pi = self.sample(b.obs)
                actor_loss = (self.alpha * log_pi - torch.min(*self.q_values(self.q, b.obs, pi))).mean()
                self.actor_opt.zero_grad()
                actor_loss.backward()
                self.actor_opt.step()
                with torch.no_grad():
                    _, log_pi = self.sample(b.obs)
                alpha_loss = (-self.log_alpha.exp() * (log_pi + self.target_entropy)).mean()
                self.alpha_opt.zero_grad()
                alpha_loss.backward()
                self.alpha_opt.step()
                self.alpha = self.log_alpha.exp().item()
        for net, target_net in zip(self.q, self.q_target):
            for p, tp in zip(net.parameters(), target_net.parameters()):
                tp.data.copy_(self.tau * p.data + (1 - self.tau) * tp.data)


def ours(variant: str, obs_dim: int, act_dim: int) -> SACUpdater:
    cfg = load_config(PRESET, VARIANTS[variant])
    check_precision(cfg.trainer.precision, torch.device("cpu"))
    agent = SACAgent.from_config(cfg, obs_dim, act_dim)
    return SACUpdater(agent, make_optimizers(agent))


def alternated_rounds(fns: dict[str, Callable[[], object]], rounds: int, calls: int) -> dict[str, list[float]]:
    """Seconds per call of each of ``fns``, one figure per round: every round times ``calls`` calls of each in
    turn, so that a slow spell of the machine falls on all of them."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for _ in range(calls):
                fn()
            times[name].append((time.perf_counter() - t0) / calls)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--env-steps", type=int, default=40, help="env steps' worth of updates per variant and round")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--obs", type=int, default=11, help="observation size (Hopper-v5's)")
    p.add_argument("--act", type=int, default=3, help="action size (Hopper-v5's)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    # several compiled updaters in one process: dynamo's default limit would send later ones back to eager
    torch._dynamo.config.recompile_limit = 64
    malloc = "keep freed memory" if keep_freed_memory() else "glibc defaults"
    print(f"threads={args.threads} rounds={args.rounds} env_steps={args.env_steps} obs={args.obs} act={args.act}")
    print(f"cpu: {cpu_description()}; torch {torch.__version__}; malloc: {malloc}")
    batch = random_batch(256, torch.device("cpu"), args.obs, args.act)
    torch.manual_seed(0)
    runners = {"cleanrl": CleanRLUpdate(args.obs, args.act).update}
    for v in args.variants:
        torch.manual_seed(0)
        updater = ours(v, args.obs, args.act)
        t0 = time.perf_counter()
        for _ in range(3 if updater.mode == "eager" else 6):  # compiling happens here
            updater.update(batch)
        print(f"{v}: warm-up (compile) {time.perf_counter() - t0:.1f} s", flush=True)
        runners[v] = updater.update
    runners["cleanrl"](batch)
    times = alternated_rounds({name: partial(update, batch) for name, update in runners.items()}, args.rounds,
                              args.env_steps)
    base = statistics.median(times["cleanrl"])
    print(f"{'update':>14} {'env steps/s':>11} {'spread':>13} {'vs cleanrl':>10}")
    for name, ts in times.items():
        rate = 1 / statistics.median(ts)
        lo, hi = 1 / max(ts), 1 / min(ts)
        print(f"{name:>14} {rate:>11.1f} {f'{lo:.1f}-{hi:.1f}':>13} {base / statistics.median(ts):>10.2f}")


if __name__ == "__main__":
    main()
