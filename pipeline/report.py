"""The ``report`` stage: a markdown results table and PNG learning curves built from the runs' metric files."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from rich.table import Table  # noqa: E402

from pipeline.metrics import read_json, write_json  # noqa: E402
from pipeline.progress import results_console  # noqa: E402


def read_csv_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a metrics CSV (``[]`` if the file does not exist yet)."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def csv_series(rows: list[dict[str, str]], x: str, y: str, **where: str) -> tuple[list[float], list[float]]:
    """Columns ``x`` and ``y`` of the rows whose ``y`` is filled and whose columns equal ``where``'s values."""
    xs, ys = [], []
    for r in rows:
        if all(r.get(k) == v for k, v in where.items()) and r.get(y) not in (None, ""):
            xs.append(float(r[x]))
            ys.append(float(r[y]))
    return xs, ys


def plot_curves(finetune_dir: Path, pretrain_dir: Path | None, out_dir: Path) -> list[Path]:
    """Eval return / success vs env steps, and the actor gradient norm, as PNGs."""
    made = []
    eval_rows = read_csv_rows(finetune_dir / "eval.csv")
    train_rows = read_csv_rows(finetune_dir / "train.csv")
    key = "success_rate" if any(r.get("success_rate") for r in eval_rows) else "return_mean"
    if eval_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for mode in ("deterministic", "stochastic"):
            xs, ys = csv_series(eval_rows, "env_step", key, mode=mode)
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
        xs, ys = csv_series(train_rows, "env_step", "episode_return")
        axes[0].plot(xs, ys)
        axes[0].set(xlabel="environment steps", ylabel="training episode return")
        xs, ys = csv_series(train_rows, "env_step", "actor_grad_norm")
        axes[1].plot(xs, ys)
        axes[1].set(xlabel="environment steps", ylabel="actor gradient norm", yscale="log" if ys else "linear")
        for ax in axes:
            ax.grid(alpha=0.3)
        made.append(out_dir / "training.png")
        fig.savefig(made[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    pre_rows = read_csv_rows(pretrain_dir / "pretrain.csv") if pretrain_dir else []
    if pre_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for y in ("flow_loss", "critic_loss"):
            xs, ys = csv_series(pre_rows, "step", y)
            if xs:
                ax.plot(xs, ys, label=y)
        ax.set(xlabel="pretraining steps", yscale="log", title="offline pretraining losses")
        ax.legend()
        ax.grid(alpha=0.3)
        made.append(out_dir / "pretrain.png")
        fig.savefig(made[-1], dpi=100, bbox_inches="tight")
        plt.close(fig)
    return made


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

    lines = [f"# {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
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
    return {"rows": rows, "figures": [str(p) for p in figures]}
