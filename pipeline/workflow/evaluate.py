"""The ``evaluate`` stage: every named run's final agent on the same fixed-seed episodes."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.evaluation import evaluate
from pipeline.metrics import write_json
from pipeline.runtime import resolve_device
from pipeline.sac import load_agent
from pipeline.terminal import stage_progress
from pipeline.workflow import Input, Stage
from pipeline.workflow.common import env_options_for, finetune_dataset, load_offline, make_eval_envs, prepare


def evaluate_checkpoints(cfg: Config, out_dir: str | Path, checkpoints: dict[str, str | Path]) -> dict[str, Any]:
    """Evaluate each named run's final agent on ``cfg.evaluate.episodes`` fixed-seed episodes of the finetune env.

    Writes ``metrics.json`` as ``{name: {deterministic: {...}, stochastic: {...}}}`` (plus normalized scores
    when the dataset has reference returns) and returns it.
    """
    out = prepare(cfg, out_dir)
    ft, ev = cfg.finetune, cfg.evaluate
    dcfg = finetune_dataset(cfg)
    dataset = load_offline(dcfg) if dcfg is not None else None
    env = make_eval_envs(cfg, env_options_for(ft.env_id, dataset, ft.env_options))
    device = resolve_device(cfg.device)
    obs_dim, act_dim = env.single_observation_space.shape[0], env.single_action_space.shape[0]
    results: dict[str, Any] = {}
    modes = [True, False] if ev.both else [ev.deterministic]
    with closing(env), stage_progress("evaluate", len(checkpoints) * len(modes) * ev.episodes, 0,
                                      cfg.trainer.progress) as bar:
        done = 0
        for name, path in checkpoints.items():
            agent = load_agent(path, cfg, obs_dim, act_dim, device)
            results[name] = {}
            for deterministic in modes:
                r = evaluate(agent, env, ev.episodes, ev.seed, deterministic)
                if dataset is not None and dataset.meta.get("ref_max_score") is not None:
                    r["normalized_score"] = float(dataset.normalized_score(r["return_mean"]))
                results[name][r["mode"]] = r
                done += ev.episodes
                bar(done)
    write_json(out / "metrics.json", results)
    return results


STAGE = Stage(
    name="evaluate", help="evaluate trained agents on fixed seeds",
    sections=("evaluate", "finetune", "pretrain", "policy", "critic", "sac", "trainer"), run=evaluate_checkpoints,
    inputs=(Input("checkpoints", "--run", "a run to evaluate (repeatable)",
                  dvc=("pretrained=runs/pretrain", "finetuned=runs/finetune"), pairs=True),),
    show_config=False,
)
