"""Online-loop speed with env copies: env steps/s of fine-tuning's loop by ``finetune.num_envs`` and mode.

    python bench/online_throughput.py [--env robosuite/Lift] [--kind flow_t] [--preset default] [--steps 600]
                                      [--utd 1] [--copies 1 2 4] [--modes sync async] [--repeats 2]
                                      [--device cpu|cuda] [--set KEY=VALUE ...]
                                      [--variant NAME=KEY=VALUE,KEY=VALUE ...] [--malloc keep|glibc]

The default preset's agent (Flow-T, K = 4, batch 128; ``--preset`` for another's) in
``pipeline.online.OnlineRunner``, the loop fine-tuning runs under Lightning, driven by a bare loop here: act, step
every copy, store, ``--utd`` updates per env step. Each variant first fills its buffer (one batch, untimed), then
runs ``--steps`` env steps; repeats are interleaved, the best kept, all in one process. The baseline is one env in
this process (``num_envs: 1``, ``sync``: the default); ``1 copy, async`` is one worker process stepping while this
process updates. Env construction and worker start-up are excluded. Prints env steps/s, the ratio against one env,
and where the time went (the runner's own phase clock). ``--utd 0`` times collection alone. ``--variant`` adds named
override sets (how the same loop executes: ``sac.update_mode``, ``sac.act_mode``, ``trainer.precision``), each run
on every copies/mode variant, with ratios against the first variant's one env.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import gymnasium as gym
import torch

from pipeline.buffers import OfflineOnlineSampler, ReplayBuffer
from pipeline.config import Config, load_config
from pipeline.envs import make_vector_env
from pipeline.online import PHASES, OnlineRunner
from pipeline.precision import check_precision
from pipeline.runtime import cpu_description, keep_freed_memory
from pipeline.sac import SACAgent
from pipeline.update import SACUpdater, make_optimizers


def make_runner(cfg: Config, env: gym.vector.VectorEnv, run_dir: str, device: str) -> OnlineRunner:
    obs_dim, act_dim = env.single_observation_space.shape[0], env.single_action_space.shape[0]
    torch.manual_seed(0)
    check_precision(cfg.trainer.precision, torch.device(device))
    agent = SACAgent.from_config(cfg, obs_dim, act_dim).to(device)
    online = ReplayBuffer(cfg.finetune.buffer_size, obs_dim, act_dim, agent.obs_mean.device)
    sampler = OfflineOnlineSampler(online, None, "seeded", 0.0)
    return OnlineRunner(cfg, agent, SACUpdater(agent, make_optimizers(agent)), env, None, sampler, run_dir,
                        from_scratch=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="robosuite/Lift")
    p.add_argument("--kind", default="flow_t")
    p.add_argument("--preset", default="default", help="the agent and SAC settings, batch included")
    p.add_argument("--steps", type=int, default=600, help="timed env steps per variant and repeat")
    p.add_argument("--utd", type=int, default=1, help="updates per env step (0: collection only)")
    p.add_argument("--copies", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--modes", nargs="+", default=["sync", "async"], choices=["sync", "async"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--device", default="cpu", help="where the agent and the buffer live")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every variant (e.g. sac.update_mode=cuda_graphs)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE,...",
                   help="a named set of overrides timed beside the others (e.g. fast=sac.act_mode=compile)")
    p.add_argument("--malloc", choices=["keep", "glibc"], default="keep",
                   help="keep: malloc reuses freed memory, as the pipeline's stages set it; glibc: its defaults")
    args = p.parse_args()
    torch.set_num_threads(1)
    malloc = "keep freed memory" if args.malloc == "keep" and keep_freed_memory() else "glibc defaults"
    named = {"base": []} if not args.variant else {
        v.split("=", 1)[0]: [o for o in v.split("=", 1)[1].split(",") if o] for v in args.variant}
    common = [f"policy.kind={args.kind}", f"finetune.env_id={args.env}", "finetune.from_pretrained=false",
              "finetune.random_steps=0", f"sac.utd={max(args.utd, 1)}",
              "finetune.log_every=100000000", "finetune.checkpoint_every=100000000", *args.set]
    # env steps before updates start: one batch in the buffer
    warmup = load_config(args.preset, common).sac.batch_size
    common.append(f"finetune.learning_starts={warmup if args.utd else 10**9}")
    shapes = [(1, "sync")] + [(n, m) for m in args.modes for n in args.copies if (n, m) != (1, "sync")]
    tmp = tempfile.TemporaryDirectory()
    runners = {}
    for name, overrides in named.items():
        for n, mode in shapes:
            cfg = load_config(args.preset, [*common, *overrides, f"finetune.num_envs={n}",
                                          f"finetune.vectorization_mode={mode}"])
            env = make_vector_env(args.env, n, mode, seed=cfg.seed)
            runners[(name, n, mode)] = make_runner(cfg, env, f"{tmp.name}/{name}_{n}_{mode}", args.device)
    best: dict[tuple[str, int, str], float] = dict.fromkeys(runners, 0.0)
    shares: dict[tuple[str, int, str], dict[str, float]] = {}
    for r in runners.values():  # fill one batch, untimed; then one more step compiles what a variant compiles
        while r.env_step < warmup + 1:
            r.step()
    for _ in range(args.repeats):
        for key, r in runners.items():
            r.seconds = dict.fromkeys(PHASES, 0.0)
            start, t0 = r.env_step, time.perf_counter()
            while r.env_step - start < args.steps:
                r.step()
            elapsed = time.perf_counter() - t0
            rate = (r.env_step - start) / elapsed
            if rate > best[key]:
                best[key], shares[key] = rate, {k: v / elapsed for k, v in r.seconds.items()}
    print(f"env={args.env} preset={args.preset} kind={args.kind} K={cfg.policy.steps} batch={cfg.sac.batch_size} "
          f"utd={args.utd} steps={args.steps} threads=1 device={args.device}" + "".join(f" {o}" for o in args.set))
    print(f"cpu: {cpu_description()}; torch {torch.__version__}; malloc: {malloc}")
    for name, overrides in named.items():
        print(f"variant {name}: {', '.join(overrides) or 'no overrides'}")
    first = next(iter(named))
    base = best[(first, 1, "sync")]
    print(f"{'variant':>10} {'copies':>16} {'env steps/s':>12} {'vs ' + first + ' 1 env':>16} {'env':>6} {'act':>6} "
          f"{'update':>7}")
    for (name, n, mode), rate in best.items():
        s = shares[(name, n, mode)]
        shape = "1 env" if (n, mode) == (1, "sync") else f"{n} cop{'y' if n == 1 else 'ies'}, {mode}"
        print(f"{name:>10} {shape:>16} {rate:>12.1f} {rate / base:>16.2f} {s['env']:>6.2f} {s['act']:>6.2f} "
              f"{s['update']:>7.2f}")
    for r in runners.values():
        r.env.close()
    tmp.cleanup()


if __name__ == "__main__":
    main()
