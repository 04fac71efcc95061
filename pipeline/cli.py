"""sacflow: one subcommand per pipeline stage, plus table and slurm (benchmark tables), presets and info.

Every stage subcommand takes ``--preset NAME`` (a file in ``configs/``), repeated ``--set dotted.key=value`` and
``--out DIR``; ``--params params.yaml`` reads the config the way the DVC stages do. Running a stage again on the
same ``--out`` after an interruption resumes it. ``sacflow table run|queue|gather`` makes a benchmark table over
presets x seeds, in this process or as DVC experiments run by ``dvc queue`` workers.
"""

from __future__ import annotations

import argparse
import functools
import platform
import sys
from pathlib import Path
from typing import Any

from rich import box
from rich.markup import escape
from rich.table import Table

from pipeline.config import ConfigError, list_presets, load_config
from pipeline.experiments.queue import QueueError
from pipeline.terminal import console, results_console
from pipeline.workflow import add_arguments, add_verbose, execute, run_command, stages


def _names(text: str, what: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names:
        raise ConfigError(f"--{what} {text!r}: expected a comma-separated list")
    return names


def _seeds(text: str) -> list[int]:
    try:
        return [int(t) for t in _names(text, "seeds")]
    except ValueError:
        raise ConfigError(f"--seeds {text!r}: expected comma-separated integers, e.g. 0,1,2") from None


def _show_table(rows: list[dict[str, Any]], title: str) -> None:
    from pipeline.experiments.tables import ci_cell

    table = Table(title=title)
    table.add_column("preset", overflow="fold")  # a run's identity: folded onto lines, never cut short
    metrics = [(k, name) for k, name in (("success_rate", "success rate"), ("return_mean", "return"))
               if any(k in r for r in rows)]  # locomotion has no success rate: no empty column
    for column in ("agent", "mode", "seeds", *(name for _, name in metrics)):
        table.add_column(column, no_wrap=True)
    for r in rows:
        table.add_row(escape(r["preset"]), r["agent"], r["mode"], str(r["seeds"]), *(ci_cell(r, k) for k, _ in metrics))
    results_console.print(table)


def cmd_table_run(args: argparse.Namespace) -> None:
    """presets x seeds, one after another in this process (what ``dvc repro bench/table/dvc.yaml`` runs)."""
    import yaml

    from pipeline.experiments.tables import gather_table, run_name, run_preset

    params = yaml.safe_load(Path(args.params).read_text()) if Path(args.params).is_file() else {}
    presets = _names(args.presets, "presets") if args.presets else params.get("presets")
    seeds = _seeds(args.seeds) if args.seeds else params.get("seeds")
    if not presets or not seeds:
        raise ConfigError(f"no presets/seeds: pass --presets and --seeds, or give {args.params} `presets` and "
                          "`seeds` lists")
    for preset in presets:  # every preset and override checked before the first run starts
        load_config(preset, list(args.set or []))
    for preset in presets:
        for seed in seeds:
            out = Path(args.runs) / run_name(preset, seed)
            console.print(f"[bold]table run[/bold] {preset} seed {seed} -> {out}")
            run_preset(preset, seed, out, list(args.set or []))
    _show_table(gather_table(args.runs, args.out), f"benchmark table ({args.out})")


def cmd_table_queue(args: argparse.Namespace) -> int:
    """Queue presets x seeds as DVC experiments and start workers; with --wait, gather the table at the end."""
    from pipeline.experiments import queue as exp_queue

    presets, seeds = _names(args.presets, "presets"), _seeds(args.seeds)
    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs}: expected at least one worker")
    baseline = exp_queue.check_repo(args.repo)
    names = exp_queue.queue_table(presets, seeds, list(args.set or []), args.repo)
    console.print(f"queued {len(names)} experiments: {', '.join(names)}")
    exp_queue.start_workers(args.jobs, args.repo)
    console.print(f"started {args.jobs} queue worker(s); follow with `dvc queue status`, "
                  "then `sacflow table gather`")
    if not args.wait:
        return 0
    done = exp_queue.wait(names, args.repo, rev=baseline, timeout_s=args.timeout,
                          on_change=lambda counts: console.print(f"queue: {counts}"))
    failed = [e.name for e in done if e.state == "failed"]
    for name in failed:
        console.print(f"[red]experiment {name} failed[/red]: `dvc queue logs {name}` shows why")
    _show_table(exp_queue.gather_experiments(args.out, args.repo, rev=baseline), f"benchmark table ({args.out})")
    return 1 if failed else 0


def cmd_table_gather(args: argparse.Namespace) -> None:
    """The table of every finished DVC experiment (or, with --runs, of every run directory)."""
    if args.runs:
        from pipeline.experiments.tables import gather_table

        rows = gather_table(args.runs, args.out)
    else:
        from pipeline.experiments.queue import gather_experiments

        rows = gather_experiments(args.out, args.repo, rev=args.rev, all_commits=args.all_commits)
    if not rows:
        console.print("[yellow]no finished runs to gather[/yellow]")
    _show_table(rows, f"benchmark table ({args.out})")


def _slurm_module() -> Any:
    try:
        from pipeline.experiments import slurm
    except ImportError as e:
        raise ConfigError(f"sacflow slurm needs submitit ({e}): pip install 'sacflow[slurm]'") from e
    return slurm


def _key_values(items: list[str] | None, flag: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{flag} {item!r} must look like KEY=VALUE (e.g. {flag} account=rl)")
        key, value = item.split("=", 1)
        pairs[key] = value
    return pairs


def _show_rows(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for key in rows[0] if rows else []:
        table.add_column(key)
    for row in rows:
        table.add_row(*(escape(", ".join(v) if isinstance(v, list) else "-" if v is None else str(v))
                        for v in row.values()))
    results_console.print(table)


def cmd_slurm_submit(args: argparse.Namespace) -> None:
    slurm = _slurm_module()
    resources = slurm.Resources(partition=args.partition, time_min=args.time, cpus=args.cpus, mem_gb=args.mem_gb,
                                sbatch=_key_values(args.sbatch, "--sbatch"))
    rows = slurm.submit(args.out, _names(args.presets, "presets"), _seeds(args.seeds), args.set, resources)
    _show_rows(rows, f"slurm jobs ({args.out})")


def cmd_slurm_status(args: argparse.Namespace) -> None:
    _show_rows(_slurm_module().status(args.out), f"slurm runs ({args.out})")


def cmd_slurm_resubmit(args: argparse.Namespace) -> None:
    rows = _slurm_module().resubmit(args.out, {"partition": args.partition, "time_min": args.time, "cpus": args.cpus,
                                               "mem_gb": args.mem_gb})
    if rows:
        _show_rows(rows, f"resubmitted ({args.out})")
    else:
        console.print("nothing to resubmit: every run is finished or still queued")


def add_slurm_parser(sub: Any) -> None:
    """``sacflow slurm submit|status|resubmit``: a benchmark table as Slurm jobs (see pipeline/experiments/slurm.py); the
    table itself comes from ``sacflow table gather --runs <out>``."""
    slurm = sub.add_parser("slurm", help="run presets x seeds as Slurm jobs; status; resubmit stopped runs",
                           description=add_slurm_parser.__doc__)
    actions = slurm.add_subparsers(dest="slurm_command", required=True)

    def with_out(name: str, help_: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_, description=help_)
        p.add_argument("--out", default="runs/slurm",
                       help="runs folder: <preset>-s<seed>/ per run (default runs/slurm)")
        return p

    def resources(p: argparse.ArgumentParser, time: int | None, cpus: int | None) -> None:
        keep = " (default: what the run was submitted with)"
        p.add_argument("--partition", help="Slurm partition" + (keep if time is None else " (default: the cluster's)"))
        p.add_argument("--time", type=int, default=time,
                       help="time limit per job in minutes" + (keep if time is None else f" (default {time})"))
        p.add_argument("--cpus", type=int, default=cpus,
                       help="CPUs per job" + (keep if cpus is None else f" (default {cpus})"))
        p.add_argument("--mem-gb", type=float,
                       help="memory per job in GB" + (keep if time is None else " (default: the partition's)"))

    p = with_out("submit", "submit one job per (preset, seed) not yet finished or queued")
    p.add_argument("--presets", required=True, help="comma-separated preset names (configs/), e.g. smoke,lift_flow_g")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config key in every run (repeatable)")
    resources(p, 60, 1)
    p.add_argument("--sbatch", action="append", metavar="KEY=VALUE",
                   help="any other sbatch flag, e.g. account=rl (repeatable)")
    p.set_defaults(func=cmd_slurm_submit)
    with_out("status", "each run's job state and the stage it is at").set_defaults(func=cmd_slurm_status)
    p = with_out("resubmit", "resubmit every run that stopped unfinished (cancelled, failed); it resumes")
    resources(p, None, None)
    p.set_defaults(func=cmd_slurm_resubmit)


def cmd_presets(args: argparse.Namespace) -> None:
    names = list_presets()
    table = Table(title="presets (configs/)", box=box.SIMPLE_HEAD)
    # the name is what a user types: never cut or wrapped, at any terminal width; the dataset column gives way
    table.add_column("name", no_wrap=True, min_width=max(map(len, names)))
    table.add_column("env", overflow="fold")
    table.add_column("policy", no_wrap=True)
    table.add_column("dataset", overflow="fold")
    for name in names:
        cfg = load_config(name)
        table.add_row(name, cfg.finetune.env_id, cfg.policy.kind,
                      f"{cfg.pretrain.dataset.format}:{Path(cfg.pretrain.dataset.source).name}"
                      if cfg.finetune.from_pretrained else "(from scratch)")
    results_console.print(table)


def cmd_info(args: argparse.Namespace) -> None:
    import gymnasium
    import lightning
    import minari
    import mujoco
    import torch

    import pipeline
    from pipeline.runtime import cpu_description

    table = Table(title="sacflow info")
    table.add_column("item")
    table.add_column("value")
    rows = {
        "sacflow": pipeline.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "lightning": lightning.__version__, "gymnasium": gymnasium.__version__, "mujoco": mujoco.__version__,
        "minari": minari.__version__, "cuda available": str(torch.cuda.is_available()),
        "device (auto)": "cuda" if torch.cuda.is_available() else "cpu",
        "torch threads": str(torch.get_num_threads()), "cpu": cpu_description(),
    }
    try:
        import pipeline.envs.robosuite_env  # noqa: F401 - its filter on robosuite's import warnings first
        import robosuite

        rows["robosuite"] = robosuite.__version__
    except Exception as e:  # noqa: BLE001 - report, don't fail
        rows["robosuite"] = f"not importable: {e}"
    if torch.cuda.is_available():
        rows["gpu"] = torch.cuda.get_device_name(0)
    for k, v in rows.items():
        table.add_row(k, v)
    results_console.print(table)


def build_parser() -> argparse.ArgumentParser:
    from pipeline import __version__

    parser = argparse.ArgumentParser(prog="sacflow", description=__doc__.split("\n")[0])
    parser.add_argument("--version", action="version", version=f"sacflow {__version__}")
    add_verbose(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    for st in stages():  # one subcommand per stage, in pipeline order
        p = sub.add_parser(st.name, help=st.help, description=st.help)
        add_arguments(p, st)
        p.set_defaults(func=functools.partial(run_command, st))
    about = "benchmark table: presets x seeds, mean and 95 % CI over seeds"
    p = sub.add_parser("table", help=about.replace("%", "%%"), description=about)
    tsub = p.add_subparsers(dest="table_command", required=True)
    table_out = "runs/table_report/table.md"

    def table(name: str, help_: str) -> argparse.ArgumentParser:
        t = tsub.add_parser(name, help=help_.replace("%", "%%"), description=help_)
        t.add_argument("--out", default=table_out, help=f"markdown table (and .json beside it; default {table_out})")
        return t

    t = table("run", "run presets x seeds one after another in this process, then the table")
    t.add_argument("--presets", help="comma-separated presets (default: bench/table/params.yaml's presets)")
    t.add_argument("--seeds", help="comma-separated seeds (default: bench/table/params.yaml's seeds)")
    t.add_argument("--params", default="bench/table/params.yaml", help="YAML with presets and seeds lists")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key in every run")
    t.add_argument("--runs", default="runs/table", help="one directory per run: <runs>/<preset>-s<seed>")
    t.set_defaults(func=cmd_table_run)
    t = table("queue", "queue presets x seeds as DVC experiments and start `dvc queue` workers")
    t.add_argument("--presets", required=True, help="comma-separated presets, e.g. smoke,default")
    t.add_argument("--seeds", required=True, help="comma-separated seeds, e.g. 0,1,2")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key in every run")
    t.add_argument("--jobs", type=int, default=1, help="queue workers, each running one experiment at a time")
    t.add_argument("--wait", action="store_true", help="wait for the experiments, then gather the table")
    t.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    t.add_argument("--repo", default=".", help="the project's git + DVC repository (default: here)")
    t.set_defaults(func=cmd_table_queue)
    t = table("gather", "table of every finished DVC experiment (mean and 95 % CI over seeds)")
    t.add_argument("--repo", default=".", help="the project's git + DVC repository (default: here)")
    t.add_argument("--rev", help="experiments of this baseline commit (default: HEAD)")
    t.add_argument("--all-commits", action="store_true", help="experiments of every commit")
    t.add_argument("--runs", help="gather run directories <runs>/<preset>-s<seed> (sacflow table run) instead")
    t.set_defaults(func=cmd_table_gather)
    for name, help_, func in (("presets", "list the config presets", cmd_presets),
                               ("info", "versions, device, CPU and threads", cmd_info)):
        p = sub.add_parser(name, help=help_, description=help_)
        add_verbose(p)
        p.set_defaults(func=func)
    add_slurm_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def command() -> Any:
        try:
            return args.func(args)
        except QueueError as e:  # git or DVC said no: the message has their output
            console.print("[red]error:[/red]", escape(str(e)))
            return 1

    return execute(command, f"sacflow {args.command}", getattr(args, "verbose", False))


if __name__ == "__main__":
    sys.exit(main())
