"""The ``report`` stage: a markdown results table and PNG learning curves built from the runs' metric files (the
logged rows through :func:`pipeline.run_logs.read_rows`: DVCLive's TSVs, or a stage's own CSVs)."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402
from rich.table import Table  # noqa: E402

from pipeline.metrics import read_json, write_json  # noqa: E402
from pipeline.run_logs import read_rows  # noqa: E402
from pipeline.terminal import results_console  # noqa: E402


def row_series(rows: list[dict[str, str]], x: str, y: str, **where: str) -> tuple[list[float], list[float]]:
    """Columns ``x`` and ``y`` of the rows whose ``y`` is filled and whose columns equal ``where``'s values."""
    xs, ys = [], []
    for r in rows:
        if all(r.get(k) == v for k, v in where.items()) and r.get(y) not in (None, ""):
            xs.append(float(r[x]))
            ys.append(float(r[y]))
    return xs, ys


def curve_of(rows: list[dict[str, str]], metric: str, **where: str) -> dict[int, float]:
    """``{env_step: value}`` of ``metric`` in a fine-tuning run's train or eval rows (:func:`read_rows`)."""
    xs, ys = row_series(rows, "env_step", metric, **where)
    return dict(zip(map(int, xs), ys, strict=True))


def eval_metric(rows: list[dict[str, str]]) -> str:
    """What evaluations are judged by: the success rate where the env reports one, else the return."""
    return "success_rate" if any(r.get("success_rate") for r in rows) else "return_mean"


def seed_band(curves: list[dict[int, float]]) -> tuple[list[int], list[float], list[float], list[float]]:
    """Env steps every curve logged, and the curves' mean, min and max at each of them."""
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    at = [[c[s] for c in curves] for s in steps]
    return steps, [statistics.fmean(v) for v in at], [min(v) for v in at], [max(v) for v in at]


def plot_seeds(ax: Any, label: str, curves: list[dict[int, float]]) -> None:
    """One line per label: the seeds' mean, with their min-max range shaded where there are several."""
    steps, mean, low, high = seed_band(curves)
    if len(curves) > 1:
        label = f"{label} ({len(curves)} seeds)"
    (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=label)
    if len(curves) > 1:
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.15)


def plot_table_curves(runs: list[tuple[str, Path]], out_dir: Path) -> list[Path]:
    """``curves_<env>.png`` per env of a benchmark table's runs (``(preset, run_dir)`` pairs, one per seed).

    Each figure has the training episode return and the deterministic evaluation (success rate where the runs
    report one, else return) against env steps, one line per preset: the mean over its seeds, min-max shaded.
    """
    by_env: dict[str, dict[str, list[Path]]] = {}
    for preset, run in runs:
        ft = run / "finetune"
        if (ft / "config.yaml").is_file() and read_rows(ft, "train"):
            env = yaml.safe_load((ft / "config.yaml").read_text())["finetune"]["env_id"]
            by_env.setdefault(env, {}).setdefault(preset, []).append(ft)
    made = []
    for env, presets in sorted(by_env.items()):
        fig, (train_ax, eval_ax) = plt.subplots(1, 2, figsize=(12, 4))
        evals = {d: read_rows(d, "eval") for dirs in presets.values() for d in dirs}
        key = eval_metric([r for rows in evals.values() for r in rows])
        for preset, dirs in sorted(presets.items()):
            plot_seeds(train_ax, preset, [curve_of(read_rows(d, "train"), "episode_return") for d in dirs])
            curves = [curve_of(evals[d], key, mode="deterministic") for d in dirs]
            if all(curves):
                plot_seeds(eval_ax, preset, curves)
        train_ax.set(xlabel="online environment steps", ylabel="training episode return", title=env)
        eval_ax.set(xlabel="online environment steps", ylabel=f"{key.replace('_', ' ')} (deterministic)",
                    title=f"{env}: evaluation")
        for ax in (train_ax, eval_ax):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        made.append(out_dir / f"curves_{env.replace('/', '_')}.png")
        out_dir.mkdir(parents=True, exist_ok=True)
        fig.savefig(made[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    return made


def plot_curves(finetune_dir: Path, pretrain_dir: Path | None, out_dir: Path) -> list[Path]:
    """Eval return / success vs env steps, and the actor gradient norm, as PNGs."""
    made = []
    eval_rows = read_rows(finetune_dir, "eval")
    train_rows = read_rows(finetune_dir, "train")
    key = eval_metric(eval_rows)
    if eval_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for mode in ("deterministic", "stochastic"):
            xs, ys = row_series(eval_rows, "env_step", key, mode=mode)
            if xs:
                ax.plot(xs, ys, marker="o", label=mode)
        ax.set(xlabel="environment steps", ylabel=key.replace("_", " "), title="evaluation during fine-tuning")
        ax.legend()
        ax.grid(alpha=0.3)
        made.append(out_dir / f"eval_{key}.png")
        fig.savefig(made[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    if train_rows:
        fig, axes = plt.subplots(1, 2, figsize=(11, 4))
        xs, ys = row_series(train_rows, "env_step", "episode_return")
        axes[0].plot(xs, ys)
        axes[0].set(xlabel="environment steps", ylabel="training episode return")
        xs, ys = row_series(train_rows, "env_step", "actor_grad_norm")
        axes[1].plot(xs, ys)
        axes[1].set(xlabel="environment steps", ylabel="actor gradient norm", yscale="log" if ys else "linear")
        for ax in axes:
            ax.grid(alpha=0.3)
        made.append(out_dir / "training.png")
        fig.savefig(made[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    pre_rows = read_rows(pretrain_dir, "pretrain") if pretrain_dir else []
    if pre_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for y in ("flow_loss", "critic_loss"):
            xs, ys = row_series(pre_rows, "step", y)
            if xs:
                ax.plot(xs, ys, label=y)
        ax.set(xlabel="pretraining steps", yscale="log", title="offline pretraining losses")
        ax.legend()
        ax.grid(alpha=0.3)
        made.append(out_dir / "pretrain.png")
        fig.savefig(made[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    return made


def before_after(results: dict[str, Any]) -> str | None:
    """The gain fine-tuning made, in one line: the pretrained and the fine-tuned agent's deterministic success rate
    (else return) and steps to success, from the evaluate stage's metrics; None without both agents."""
    try:
        pre, fin = results["pretrained"]["deterministic"], results["finetuned"]["deterministic"]
    except KeyError:
        return None
    if "success_rate" not in pre:
        return f"pretrained -> fine-tuned: return {pre['return_mean']:.1f} -> {fin['return_mean']:.1f}"
    line = (f"pretrained -> fine-tuned: success {pre['success_rate']:.0%} -> {fin['success_rate']:.0%} "
            f"({fin['episodes']} episodes, deterministic)")
    steps = [r.get("success_length_mean") for r in (pre, fin)]
    if None not in steps:
        line += f"; steps to success {steps[0]:.0f} -> {steps[1]:.0f}"
    return line


def eval_curve(eval_rows: list[dict[str, str]]) -> str | None:
    """Fine-tuning's own deterministic evaluations in one line (success rate, else return, at each env step);
    None when fine-tuning logged none."""
    key = eval_metric(eval_rows)
    xs, ys = row_series(eval_rows, "env_step", key, mode="deterministic")
    if not xs:
        return None
    fmt = "{:.0%}" if key == "success_rate" else "{:.1f}"
    points = ", ".join(f"{fmt.format(y)} @ {x:.0f}" for x, y in zip(xs, ys))
    return f"evaluations during fine-tuning ({key.replace('_', ' ')} @ env step): {points}"


def build_report(evaluate_dir: str | Path, finetune_dir: str | Path, pretrain_dir: str | Path | None,
                 out_dir: str | Path, title: str = "sacflow report") -> dict[str, Any]:
    """Write ``report.md`` (+ PNGs) in ``out_dir``, print the results table, return the table's rows."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = read_json(Path(evaluate_dir) / "metrics.json")
    rows: list[dict[str, Any]] = []
    for name, by_mode in results.items():
        for mode, r in by_mode.items():
            rows.append({"agent": name, "mode": mode, "episodes": r["episodes"],
                         "success_rate": r.get("success_rate"), "return_mean": r["return_mean"],
                         "return_std": r["return_std"], "normalized_score": r.get("normalized_score")})
    figures = plot_curves(Path(finetune_dir), Path(pretrain_dir) if pretrain_dir else None, out)
    cols = ["agent", "mode", "episodes", "success_rate", "return_mean", "return_std", "normalized_score"]
    cols = [c for c in cols if any(r.get(c) is not None for r in rows)]

    def fmt(v: Any) -> str:
        return "" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)

    headline = before_after(results)
    curve = eval_curve(read_rows(finetune_dir, "eval"))
    lines = [f"# {title}", "", *([f"**{headline}**", ""] if headline else []), *([curve, ""] if curve else []),
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    ft_metrics = Path(finetune_dir) / "metrics.json"
    if ft_metrics.exists():
        m = read_json(ft_metrics)
        lines += ["", f"Fine-tuning: {m.get('env_steps')} env steps, {m.get('updates')} updates, "
                      f"buffer mode `{m.get('buffer_mode')}` ({m.get('offline_transitions')} offline + "
                      f"{m.get('online_transitions')} online transitions), {m.get('seconds', 0):.0f} s."]
    lines += [""] + [f"![{p.stem}]({p.name})" for p in figures]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    write_json(out / "summary.json", {f"{r['agent']}_{r['mode']}": {c: r[c] for c in cols[2:]} for r in rows})
    table = Table(title=title)
    labels = {"episodes": "eps", "success_rate": "success", "return_mean": "return", "return_std": "± std",
              "normalized_score": "norm. score"}
    for c in cols:
        table.add_column(labels.get(c, c))
    for r in rows:
        table.add_row(*(fmt(r.get(c)) for c in cols))
    results_console.print(table)
    if curve:
        results_console.print(curve)
    if headline:
        results_console.print(f"[bold]{headline}[/bold]")
    return {"rows": rows, "figures": [str(p) for p in figures], "headline": headline, "curve": curve}
