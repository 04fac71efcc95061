"""Benchmark tables: one isolated run per (preset, seed), then mean and 95 % confidence intervals over seeds.

``bench/table/dvc.yaml`` fans presets x seeds out with a DVC ``matrix`` (``dvc repro bench/table/dvc.yaml``);
each run is the whole pipeline (collect, pretrain, finetune, evaluate) in its own directory, so runs never share
files and can execute in any order or in parallel.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from pipeline.collect import collect
from pipeline.config import load_config
from pipeline.metrics import read_json, write_json
from pipeline.train import evaluate_checkpoints, finetune, pretrain

# two-sided 95 % Student-t quantiles by degrees of freedom (n - 1); large n falls back to the normal 1.96
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def run_preset(preset: str, seed: int, out_dir: str | Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """The whole pipeline for one preset and seed inside ``out_dir``; returns the evaluate stage's metrics."""
    out = Path(out_dir)
    sets = [f"seed={seed}", "trainer.progress=false", *(overrides or [])]
    if load_config(preset, sets).collect.kind == "robosuite_demos":  # each run makes its own demos: no shared file, seed-dependent data
        demos = str(out / "demos.hdf5")
        sets += [f"collect.out={demos}", f"pretrain.dataset.source={demos}"]
    cfg = load_config(preset, sets)
    if cfg.collect.kind != "none":
        collect(cfg, out / "collect")
    runs: dict[str, str | Path] = {}
    if cfg.finetune.from_pretrained:
        pretrain(cfg, out / "pretrain")
        runs["pretrained"] = out / "pretrain"
    finetune(cfg, out / "finetune", pretrained=out / "pretrain" if cfg.finetune.from_pretrained else None)
    runs["finetuned"] = out / "finetune"
    return evaluate_checkpoints(cfg, runs, out / "evaluate")


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % Student-t confidence interval (0 for a single value)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, 0.0
    return mean, _T95.get(n - 1, 1.96) * statistics.stdev(values) / math.sqrt(n)


def gather_table(runs_dir: str | Path, out: str | Path) -> list[dict[str, Any]]:
    """Read ``<runs_dir>/<preset>-s<seed>/evaluate/metrics.json`` and write a markdown table (+ JSON) to ``out``.

    One row per (preset, agent, mode): seeds, success rate and return as mean ± 95 % CI half-width.
    """
    groups: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for metrics in sorted(Path(runs_dir).glob("*-s*/evaluate/metrics.json")):
        preset = metrics.parent.parent.name.rsplit("-s", 1)[0]
        for agent, by_mode in read_json(metrics).items():
            for mode, r in by_mode.items():
                g = groups.setdefault((preset, agent, mode), {"success_rate": [], "return_mean": []})
                for k in g:
                    if r.get(k) is not None:
                        g[k].append(float(r[k]))
    rows = []
    for (preset, agent, mode), g in sorted(groups.items()):
        row: dict[str, Any] = {"preset": preset, "agent": agent, "mode": mode, "seeds": len(g["return_mean"])}
        for k, vals in g.items():
            if vals:
                row[k], row[f"{k}_ci95"] = mean_ci95(vals)
        rows.append(row)

    def cell(r: dict[str, Any], k: str) -> str:
        return f"{r[k]:.3f} ± {r[k + '_ci95']:.3f}" if k in r else ""

    lines = ["| preset | agent | mode | seeds | success rate | return |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['agent']} | {r['mode']} | {r['seeds']} | {cell(r, 'success_rate')} | "
              f"{cell(r, 'return_mean')} |" for r in rows]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("Mean ± 95 % confidence half-width over seeds.\n\n" + "\n".join(lines) + "\n")
    write_json(out.with_suffix(".json"), {"rows": rows})
    return rows
