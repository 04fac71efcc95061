"""Probe: Gaussian SAC's critic step as one compiled graph, against ``SACUpdater``'s eager critic step.

    python bench/fullgraph_probe.py [--threads 1] [--rounds 7] [--steps 40]

``sac.update_mode: compile`` runs an update as ~16 graphs: dynamo breaks at every ``backward()``, around every
optimizer step (torch's optimizers insert the breaks) and at fused Adam (not traced). This probe writes the critic
step as one function dynamo can trace whole (``fullgraph=True``): gradients from ``torch.func.grad_and_value``
over the critic's weights, Adam written out on the same state tensors, the target's Polyak average, on the
``hopper_scratch_gaussian_cleanrl`` agent (CleanRL's settings). It is not an update mode: no non-finite guard, no
gradient norm, no actor step. It measures what such a mode could gain, fp32 and bf16 in the critic, and checks that
three probe steps move the weights as three of the updater's do (inductor's random numbers replaced by eager's).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call, grad_and_value

sys.path.insert(0, str(Path(__file__).parent))

from cleanrl_update import alternated_rounds, ours, random_batch  # noqa: E402
from pipeline.precision import autocast  # noqa: E402
from pipeline.runtime import cpu_description, keep_freed_memory  # noqa: E402
from pipeline.sac import Batch, SACAgent  # noqa: E402


class FullGraphCriticStep:
    """``step(batch)``: the critic step of ``agent`` (twin critics with targets) as one compiled graph."""

    def __init__(self, agent: SACAgent, optimizer: torch.optim.Adam) -> None:
        self.agent, cfg = agent, agent.cfg
        self.names = [n for n, _ in agent.critic.named_parameters()]
        # detached views: the graph writes the weights in place, outside autograd's view of them
        self.params = [p.detach() for _, p in agent.critic.named_parameters()]
        self.targets = [p.detach() for p in agent.critic_target.parameters()]
        group = optimizer.param_groups[0]
        self.lr, (self.beta1, self.beta2), self.eps = group["lr"], group["betas"], group["eps"]
        for p in group["params"]:  # Adam's own state tensors, so a checkpoint would hold them unchanged
            optimizer.state[p] = {"step": torch.zeros(()), "exp_avg": torch.zeros_like(p),
                                  "exp_avg_sq": torch.zeros_like(p)}
        self.state = [optimizer.state[p] for p in group["params"]]
        self.gamma, self.tau = cfg.gamma, cfg.tau
        self.step = torch.compile(self._step, fullgraph=True)

    def _step(self, obs: torch.Tensor, actions: torch.Tensor, rewards: torch.Tensor, next_obs: torch.Tensor,
              terminals: torch.Tensor) -> torch.Tensor:
        agent = self.agent
        obs, next_obs = agent.normalize(obs), agent.normalize(next_obs)
        with torch.no_grad():
            next_actions, next_log_prob = agent.actor.sample(next_obs)
            with autocast(agent.precision, obs.device):
                q_next = agent.critic_target(next_obs, next_actions)
            target = rewards + self.gamma * (1.0 - terminals) * (q_next.min(0).values
                                                                 - agent.log_alpha.exp() * next_log_prob)

        def loss(params: list[torch.Tensor]) -> torch.Tensor:
            with autocast(agent.precision, obs.device):
                q = functional_call(agent.critic, dict(zip(self.names, params)), (obs, actions))
            return (q - target).pow(2).mean(dim=1).sum()

        grads, value = grad_and_value(loss)(self.params)
        with torch.no_grad():
            for p, g, s in zip(self.params, grads, self.state):  # torch.optim.Adam's update, written out
                s["step"].add_(1)
                s["exp_avg"].lerp_(g, 1 - self.beta1)
                s["exp_avg_sq"].mul_(self.beta2).addcmul_(g, g, value=1 - self.beta2)
                denom = (s["exp_avg_sq"] / (1 - self.beta2 ** s["step"])).sqrt().add_(self.eps)
                p.sub_(self.lr / (1 - self.beta1 ** s["step"]) * s["exp_avg"] / denom)
            torch._foreach_lerp_(self.targets, self.params, self.tau)
        return value


def agreement(batch: Batch) -> float:
    """Largest weight difference after three critic steps, probe against updater (eager random numbers)."""
    torch.manual_seed(0)
    updater = ours("eager", batch.obs.shape[1], batch.actions.shape[1])
    probe_agent = copy.deepcopy(updater.agent)
    probe = FullGraphCriticStep(probe_agent, torch.optim.Adam(probe_agent.critic.parameters(),
                                                              lr=updater.opt.critic.param_groups[0]["lr"]))
    with torch._inductor.config.patch(fallback_random=True):
        for seed in range(3):
            torch.manual_seed(seed)
            updater._critic_fn(batch)
            torch.manual_seed(seed)
            probe.step(*batch[:5])
    return max((a - b).abs().max().item() for a, b in zip(updater.agent.critic.parameters(),
                                                           probe_agent.critic.parameters()))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=40, help="critic steps per variant and round")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = 64
    malloc = "keep freed memory" if keep_freed_memory() else "glibc defaults"
    print(f"cpu: {cpu_description()}; torch {torch.__version__}; malloc: {malloc}; threads {args.threads}")
    batch = random_batch(256, 11, 3)
    print(f"weights after 3 critic steps, probe vs updater: max |difference| {agreement(batch):.2e}")
    steps = {}
    for variant, label in (("eager", "fp32"), ("bf16", "bf16 in the critic")):
        torch.manual_seed(0)
        updater = ours(variant, 11, 3)  # eager update mode either way
        steps[f"updater critic step, {label}"] = lambda u=updater: u._critic_fn(batch)
        probe_agent = copy.deepcopy(updater.agent)
        torch.compiler.reset()  # each probe compiles its own graph (and not with the agreement check's random numbers)
        probe = FullGraphCriticStep(probe_agent, torch.optim.Adam(probe_agent.critic.parameters(), lr=1e-3))
        t0 = time.perf_counter()
        probe.step(*batch[:5])
        print(f"one-graph critic step, {label}: compiled in {time.perf_counter() - t0:.1f} s")
        steps[f"one-graph critic step, {label}"] = lambda s=probe: s.step(*batch[:5])
    for fn in steps.values():
        for _ in range(5):
            fn()
    times = alternated_rounds(steps, args.rounds, args.steps)
    base = statistics.median(times["updater critic step, fp32"])
    for name, ts in times.items():
        print(f"{name:>44} {statistics.median(ts) * 1000:6.2f} ms  {base / statistics.median(ts):5.2f}x")


if __name__ == "__main__":
    main()
