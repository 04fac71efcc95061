"""How far apart the actor gradients of the compiled and the eager actor loss are, on a trained run's checkpoint.

    python bench/compiled_actor_grads.py RUN PRESET [--set KEY=VALUE ...] [--naive-tanh-term]

``RUN`` is a run folder holding ``finetune/`` (``run_preset``'s output), ``PRESET`` the preset it ran (with the
same ``--set`` overrides, so the agent builds with its sizes). One replay batch of ``sac.batch_size`` rows (seed 0), the
same rollout noise in both (inductor set to torch's random numbers): prints ``‖g_compiled − g_eager‖ / ‖g_eager‖``
over all actor parameters, both mean log-probabilities, and the fraction of action dimensions with ``|u| > 4``
(where ``1 − tanh(u)²`` cancels in fp32). ``--naive-tanh-term`` computes the floored squashing term as the public
code writes it, ``log(1 − tanh(u)² + 1e-6)``, in place of the library's cancellation-free form, for comparison.
"""

from __future__ import annotations

import argparse

import torch
import torch._inductor.config

import pipeline.policies.flow as flow
from pipeline.batch_renorm import batch_statistics
from pipeline.checkpoint import load_checkpoint, run_checkpoint
from pipeline.config import load_config, overrides_to_dict
from pipeline.runtime import cpu_description
from pipeline.sac import Batch, actor_loss, agent_from_state

library_tanh_term = flow.tanh_log_det_jacobian


def naive_tanh_term(pre_tanh: torch.Tensor, mode: str = "floored") -> torch.Tensor:
    """The floored term as ``log(1 − tanh(u)² + 1e-6)`` (the exact mode unchanged), ``[B, A] -> [B]``."""
    if mode != "floored":
        return library_tanh_term(pre_tanh, mode)
    return torch.log(1.0 - torch.tanh(pre_tanh).square() + flow.TANH_JACOBIAN_EPS).sum(dim=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("preset")
    parser.add_argument("--set", action="append", default=[], dest="sets", metavar="KEY=VALUE")
    parser.add_argument("--naive-tanh-term", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.naive_tanh_term:
        flow.tanh_log_det_jacobian = naive_tanh_term  # FlowPolicy reads the module's name at call time

    cfg = load_config(args.preset, overrides_to_dict(args.sets))
    state = load_checkpoint(run_checkpoint(f"{args.run}/finetune"))
    data, size = state["buffer"]["data"], int(state["buffer"]["size"])
    obs_dim, act_dim = data["obs"].shape[-1], data["actions"].shape[-1] // cfg.sac.chunk
    agent = agent_from_state(state, cfg, obs_dim, act_dim)
    rows = torch.randint(0, size, (cfg.sac.batch_size,), generator=torch.Generator().manual_seed(0))
    batch = Batch(*(data[k][rows].float() for k in Batch._fields))
    params = [p for p in agent.actor.parameters() if p.requires_grad]

    def gradient(compiled: bool) -> tuple[torch.Tensor, float]:
        def loss() -> tuple[torch.Tensor, torch.Tensor]:
            value, info = actor_loss(agent, batch)
            return value, info["log_prob"].mean()

        torch.compiler.reset()
        torch.manual_seed(7)
        value, log_prob = (torch.compile(loss) if compiled else loss)()
        return torch.cat([g.flatten() for g in torch.autograd.grad(value, params)]), log_prob.item()

    with torch._inductor.config.patch(fallback_random=True):
        eager, lp_eager = gradient(False)
        compiled, lp_compiled = gradient(True)
        with torch.no_grad(), batch_statistics(agent.actor):
            torch.manual_seed(7)
            pre_tanh = agent.actor.rollout(agent.normalize(batch.obs)).path[-1]
    print(f"# {cpu_description()}, torch {torch.__version__}, 1 thread; "
          f"tanh term: {'naive' if args.naive_tanh_term else 'library'}")
    print(f"|g_compiled - g_eager| / |g_eager| = {((compiled - eager).norm() / eager.norm()).item():.2e}")
    print(f"mean log_prob: eager {lp_eager:.4f}, compiled {lp_compiled:.4f}")
    print(f"action dimensions with |u| > 4: {(pre_tanh.abs() > 4).float().mean().item():.1%}")


if __name__ == "__main__":
    main()
