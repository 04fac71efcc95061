"""Benchmark tables: one isolated run per (preset, seed), then mean and 95 % confidence intervals over seeds.

Two ways to fan presets x seeds out, one table:

- ``bench/table/dvc.yaml`` (``dvc repro bench/table/dvc.yaml``, or ``sacflow table run`` in one process): a DVC
  ``matrix``; each run is the whole pipeline (collect, pretrain, finetune, evaluate) in
  ``runs/table/<preset>-s<seed>/``, so runs never share files and can execute in any order or in parallel.
- ``bench/queue/dvc.yaml`` (``sacflow table queue``, see :mod:`pipeline.experiments.queue`): one DVC experiment per
  (preset, seed), run by ``dvc queue`` workers, each in its own temporary workspace; :func:`run_experiment` is
  that experiment's stage and writes a result record that ``dvc exp show`` reads back.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError, deep_merge, dotted_items, load_config, overrides_to_dict
from pipeline.metrics import FINAL_TRAIN_KEYS, FINAL_TRAIN_WINDOW, final_training_metrics, read_json, write_json
from pipeline.run_logs import read_rows

# two-sided 95 % Student-t quantiles by degrees of freedom (n - 1); large n falls back to the normal 1.96
_T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}

Overrides = list[str] | dict[str, Any]  # ``["a.b=1"]``, ``{"a.b": 1}`` or nested ``{"a": {"b": 1}}``
# the table's mode for the fine-tuned agent's own training episodes at the end of its run, beside the evaluate
# stage's deterministic and stochastic modes
TRAINING_MODE = "training"


def run_name(preset: str, seed: int) -> str:
    """The directory name of one (preset, seed) run inside a runs folder; :func:`finished_runs` parses it back."""
    return f"{preset}-s{seed}"


def run_preset(preset: str, seed: int, out_dir: str | Path, overrides: Overrides | None = None) -> dict[str, Any]:
    """The whole pipeline for one preset and seed inside ``out_dir``; returns the evaluate stage's metrics.

    ``overrides`` change the preset for this run (``--set`` strings or a nested mapping, as in ``params.yaml``).
    The stages are those of :data:`pipeline.workflow.STAGE_NAMES` the config's run includes. Run again on the same
    ``out_dir`` (a requeued or resubmitted job), it resumes: finished stages are kept, and pretrain and finetune
    resume from their last checkpoints. ``out_dir/run.json`` records the preset, seed and
    overrides; another combination in the same directory is an error rather than a silent mix of two runs.
    """
    out = Path(out_dir)
    config = overrides_to_dict(overrides or [])
    identity = {"preset": preset, "seed": seed, "config": config}
    if (out / "run.json").exists() and read_json(out / "run.json") != identity:
        raise ConfigError(f"{out} holds the run {read_json(out / 'run.json')}, not {identity}: use another "
                          "directory for another preset, seed or overrides")
    # imported here: queueing and gathering tables need none of the training stack
    from pipeline.workflow import run_dir_inputs, stages

    sets = deep_merge({"seed": seed, "trainer": {"progress": False}}, config)
    if load_config(preset, sets).collect.kind == "robosuite_demos":  # each run makes its own demos: no shared file, seed-dependent data
        demos = str(out / "demos.hdf5")
        sets = deep_merge(sets, {"collect": {"out": demos}, "pretrain": {"dataset": {"source": demos}}})
    cfg = load_config(preset, sets)
    write_json(out / "run.json", identity)
    metrics: dict[str, Any] = {}
    for st in stages():
        if not st.in_run(cfg):
            continue
        # a stage writes its metrics once it is complete: a finished one is kept (collect has no checkpoint, and a
        # requeued job should not pay for seeded work twice); an interrupted one resumes from its checkpoint
        done = out / st.name / "metrics.json"
        metrics = read_json(done) if done.exists() else st.run(cfg, out / st.name, **run_dir_inputs(st, out, cfg))
    return metrics  # the last stage's: evaluate


def run_experiment(params: dict[str, Any], out_dir: str | Path, result: str | Path) -> dict[str, Any]:
    """One benchmark experiment: :func:`run_preset` from a params mapping, then a self-describing result record.

    ``params`` holds ``preset``, ``seed`` and ``config`` (nested overrides of the preset; may be empty). The record
    written to ``result`` (a DVC metric) carries those three, the evaluate metrics, the wall-clock interval and the
    working directory, so a table can be gathered from ``dvc exp show`` alone and a test can check that queued
    experiments ran side by side in separate workspaces.
    """
    for key, kind in (("preset", str), ("seed", int), ("config", dict)):
        if not isinstance(params.get(key), kind) or isinstance(params.get(key), bool):
            raise ConfigError(f"experiment param {key!r} = {params.get(key)!r}: expected a {kind.__name__}")
    started = time.time()
    evaluation = run_preset(params["preset"], params["seed"], out_dir, params["config"])
    record = {"preset": params["preset"], "seed": params["seed"], "config": params["config"],
              "evaluate": evaluation, "finetune": _finetune_metrics(Path(out_dir)),
              "started": started, "finished": time.time(), "workspace": os.getcwd()}
    write_json(result, record)
    return record


def with_training(evaluation: dict[str, Any], finetune_metrics: dict[str, Any] | None) -> dict[str, Any]:
    """The evaluate stage's ``{agent: {mode: metrics}}`` plus, under ``finetuned``, the :data:`TRAINING_MODE` entry:
    the return (and success rate) of the training episodes that ended in fine-tuning's last
    ``FINAL_TRAIN_WINDOW`` of env steps, from its ``metrics.json`` (unchanged where it has none)."""
    training = {k: finetune_metrics[key] for k, key in FINAL_TRAIN_KEYS.items() if key in (finetune_metrics or {})}
    if "return_mean" not in training:
        return evaluation
    if not any("success_rate" in r for r in evaluation.get("finetuned", {}).values()):
        training.pop("success_rate", None)  # older train logs hold a success of 0 where the env reports none
    return {**evaluation, "finetuned": {**evaluation.get("finetuned", {}), TRAINING_MODE: training}}


def mean_ci95(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95 % Student-t confidence interval (0 for a single value)."""
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, 0.0
    return mean, _T95.get(n - 1, 1.96) * statistics.stdev(values) / math.sqrt(n)


def config_label(preset: str, config: dict[str, Any] | None = None) -> str:
    """The table's name for a configuration: the preset, plus its overrides as ``key=value`` (sorted)."""
    flat = sorted(f"{k}={v}" for k, v in dotted_items(config or {}))
    return f"{preset} ({', '.join(flat)})" if flat else preset


def table_rows(runs: Iterable[tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Group ``(label, evaluate metrics)`` pairs, one per seed, into table rows.

    One row per (label, agent, mode): seeds, success rate and return as mean and 95 % CI half-width.
    """
    groups: dict[tuple[str, str, str], dict[str, list[float]]] = {}
    for label, evaluation in runs:
        for agent, by_mode in evaluation.items():
            for mode, r in by_mode.items():
                g = groups.setdefault((label, agent, mode), {"success_rate": [], "return_mean": []})
                for k in g:
                    if r.get(k) is not None:
                        g[k].append(float(r[k]))
    rows = []
    for (label, agent, mode), g in sorted(groups.items()):
        row: dict[str, Any] = {"preset": label, "agent": agent, "mode": mode, "seeds": len(g["return_mean"])}
        for k, vals in g.items():
            if vals:
                row[k], row[f"{k}_ci95"] = mean_ci95(vals)
        rows.append(row)
    return rows


CELL_DECIMALS = {"success_rate": 3, "return_mean": 1}  # a rate in [0, 1]; returns in the hundreds or thousands


def ci_cell(row: dict[str, Any], key: str) -> str:
    """``"mean ± half-width"`` of a table row's ``key`` (empty where no run reported it)."""
    d = CELL_DECIMALS.get(key, 3)
    return f"{row[key]:.{d}f} ± {row[key + '_ci95']:.{d}f}" if key in row else ""


def write_table(rows: list[dict[str, Any]], out: str | Path, figures: Sequence[Path] = ()) -> str:
    """Write ``rows`` as a markdown table to ``out`` (with links to ``figures`` beside it) and as JSON next to it;
    returns the markdown."""
    lines = ["| preset | agent | mode | seeds | success rate | return |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['preset']} | {r['agent']} | {r['mode']} | {r['seeds']} | {ci_cell(r, 'success_rate')} | "
              f"{ci_cell(r, 'return_mean')} |" for r in rows]
    if figures:
        lines += ["", *(f"![{p.stem}]({p.name})" for p in figures)]
    text = "Mean ± 95 % confidence half-width over seeds."
    if any(r["mode"] == TRAINING_MODE for r in rows):
        text += (f" Mode `{TRAINING_MODE}`: fine-tuning's own (exploring) episodes that ended in its last "
                 f"{FINAL_TRAIN_WINDOW:.0%} of env steps, many updates' policies where an evaluation reads one.")
    text += "\n\n" + "\n".join(lines) + "\n"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    write_json(out.with_suffix(".json"), {"rows": rows})
    return text


def finished_runs(runs_dir: str | Path) -> list[tuple[str, Path]]:
    """``(preset, run directory)`` of every finished ``<runs_dir>/<preset>-s<seed>/`` run (evaluate stage done)."""
    return [(metrics.parent.parent.name.rsplit("-s", 1)[0], metrics.parent.parent)
            for metrics in sorted(Path(runs_dir).glob("*-s*/evaluate/metrics.json"))]


def _finetune_metrics(run: Path) -> dict[str, Any]:
    """A run's finetune/metrics.json; where it predates ``train_return_final``, that entry from its train rows."""
    path = run / "finetune" / "metrics.json"
    metrics = read_json(path) if path.exists() else {}
    if FINAL_TRAIN_KEYS["return_mean"] not in metrics:
        metrics.update(final_training_metrics(read_rows(run / "finetune", "train")))
    return metrics


def gather_table(runs_dir: str | Path, out: str | Path) -> list[dict[str, Any]]:
    """Read ``<runs_dir>/<preset>-s<seed>/evaluate/metrics.json`` and write a markdown table (+ JSON) to ``out``,
    and beside it ``curves_<env>.png``: each preset's learning curves over its seeds
    (:func:`pipeline.report.plot_table_curves`).

    One row per (preset, agent, mode): seeds, success rate and return as mean ± 95 % CI half-width.
    """
    from pipeline.report import plot_table_curves  # matplotlib: only where a table is written

    runs = finished_runs(runs_dir)
    rows = table_rows((preset, with_training(read_json(run / "evaluate/metrics.json"), _finetune_metrics(run)))
                      for preset, run in runs)
    write_table(rows, out, plot_table_curves(runs, Path(out).parent))
    return rows
