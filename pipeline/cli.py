"""``sacflow``: one subcommand per pipeline stage, plus ``table`` and ``slurm`` (benchmark tables), ``presets``
and ``info``.

Every stage subcommand takes ``--preset NAME`` (a file in ``configs/``), repeated ``--set dotted.key=value`` and
``--out DIR``; ``--params params.yaml`` reads the config the way the DVC stages do. Running a stage again on the
same ``--out`` after an interruption resumes it. ``sacflow table run|queue|gather`` makes a benchmark table over
presets x seeds, in this process or as DVC experiments run by ``dvc queue`` workers.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from pipeline import preemption
from pipeline.config import Config, ConfigError, list_presets, load_config, load_params
from pipeline.exp_queue import QueueError
from pipeline.progress import console, results_console


def _config(args: argparse.Namespace) -> Config:
    extra = list(args.set or [])
    if args.quiet:
        extra.append("trainer.progress=false")
    if args.params:
        return load_params(args.params, extra)
    return load_config(args.preset, extra)


def _show_config(cfg: Config, quiet: bool, data_parallel: bool = True) -> None:
    if quiet:
        return
    if data_parallel:
        from lightning.fabric.utilities.rank_zero import rank_zero_only

        # a data-parallel run re-runs this command once per rank: only rank 0 (by Lightning's reading of the
        # launcher's environment variables) shows the tree
        if rank_zero_only.rank != 0:
            return
    tree = Tree(f"[bold]config[/bold] {cfg.name}")

    def add(node: Tree, data: dict[str, Any]) -> None:
        for k, v in data.items():
            if isinstance(v, dict) and v:
                add(node.add(f"[cyan]{k}"), v)
            else:
                node.add(f"{k} = {v!r}")

    add(tree, cfg.to_dict())
    console.print(tree)


def _summary(title: str, metrics: dict[str, Any]) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value")

    def add(prefix: str, data: dict[str, Any]) -> None:
        for k, v in data.items():
            if isinstance(v, dict):
                add(f"{prefix}{k}.", v)
            else:
                table.add_row(prefix + k, f"{v:.4g}" if isinstance(v, float) else str(v))

    add("", metrics)
    results_console.print(table)


def cmd_collect(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.collect import collect

    cfg = _config(args)
    if args.params and cfg.collect.kind == "none":
        # the DVC pipeline is offline-to-online: its later stages read the dataset this stage makes
        raise ConfigError(
            f"preset {cfg.name!r} trains from scratch (collect.kind = 'none'), which the offline-to-online "
            f"pipeline in dvc.yaml cannot run. Use `sacflow finetune --preset {cfg.name} --out runs/{cfg.name}`, "
            f"or list the preset in bench/table/params.yaml and run `dvc repro bench/table/dvc.yaml`"
        )
    _show_config(cfg, args.quiet, data_parallel=False)  # collecting runs in one process: no rank to ask Lightning for
    return collect(cfg, args.out)


def cmd_pretrain(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.train import pretrain

    cfg = _config(args)
    _show_config(cfg, args.quiet)
    return pretrain(cfg, args.out)


def cmd_finetune(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.train import finetune

    cfg = _config(args)
    _show_config(cfg, args.quiet)
    return finetune(cfg, args.out, pretrained=args.pretrained)


def cmd_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.train import evaluate_checkpoints

    cfg = _config(args)
    runs = {}
    for item in args.run or []:
        if "=" not in item:
            raise ConfigError(f"--run {item!r} must look like NAME=DIR (e.g. finetuned=runs/finetune)")
        name, path = item.split("=", 1)
        runs[name] = path
    if not runs:
        raise ConfigError("evaluate needs at least one --run NAME=DIR")
    return evaluate_checkpoints(cfg, runs, args.out)


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    from pipeline.report import build_report

    cfg = _config(args)
    build_report(args.evaluate, args.finetune, args.pretrain, args.out, title=f"sacflow: {cfg.name}")
    console.print(f"report written to {Path(args.out) / 'report.md'}")
    return {}  # the report's own table is the summary


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
    from pipeline.benchmark import ci_cell

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

    from pipeline.benchmark import gather_table, run_name, run_preset

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
    from pipeline import exp_queue

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
        from pipeline.benchmark import gather_table

        rows = gather_table(args.runs, args.out)
    else:
        from pipeline.exp_queue import gather_experiments

        rows = gather_experiments(args.out, args.repo, rev=args.rev, all_commits=args.all_commits)
    if not rows:
        console.print("[yellow]no finished runs to gather[/yellow]")
    _show_table(rows, f"benchmark table ({args.out})")


def _slurm_module() -> Any:
    try:
        from pipeline import slurm
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
    """``sacflow slurm submit|status|resubmit``: a benchmark table as Slurm jobs (see pipeline/slurm.py); the
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
    table = Table(title="presets (configs/)")
    table.add_column("name")
    table.add_column("env")
    table.add_column("policy")
    table.add_column("dataset")
    for name in list_presets():
        cfg = load_config(name)
        table.add_row(name, cfg.finetune.env_id, cfg.policy.kind,
                      f"{cfg.pretrain.dataset.format}:{cfg.pretrain.dataset.source}"
                      if cfg.finetune.from_pretrained else "(online from scratch)")
    results_console.print(table)


def cmd_info(args: argparse.Namespace) -> None:
    import gymnasium
    import lightning
    import minari
    import mujoco
    import torch

    import pipeline

    table = Table(title="sacflow info")
    table.add_column("item")
    table.add_column("value")
    rows = {
        "sacflow": pipeline.__version__, "python": platform.python_version(), "torch": torch.__version__,
        "lightning": lightning.__version__, "gymnasium": gymnasium.__version__, "mujoco": mujoco.__version__,
        "minari": minari.__version__, "cuda available": str(torch.cuda.is_available()),
        "device (auto)": "cuda" if torch.cuda.is_available() else "cpu",
        "torch threads": str(torch.get_num_threads()), "cpu cores": str(os.cpu_count()),
    }
    try:
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
    parser = argparse.ArgumentParser(prog="sacflow", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def stage(name: str, help_: str, out: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.add_argument("--preset", default="default", help="config preset: a name in configs/ (see `sacflow presets`)")
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
        p.add_argument("--params", help="read the config from a DVC params file instead of --preset")
        p.add_argument("--out", default=out, help=f"output directory (default {out}); rerun on it to resume")
        p.add_argument("--quiet", action="store_true", help="no progress bars or config tree (CI, logs)")
        return p

    stage("collect", "make the dataset: scripted robosuite demos or a Minari dataset", "runs/collect")\
        .set_defaults(func=cmd_collect)
    stage("pretrain", "offline pretraining: flow-matching BC + SAC critic + regularized actor", "runs/pretrain")\
        .set_defaults(func=cmd_pretrain)
    p = stage("finetune", "online SAC fine-tuning (or training from scratch)", "runs/finetune")
    p.add_argument("--pretrained", help="pretrain run directory (or checkpoint file) to start from")
    p.set_defaults(func=cmd_finetune)
    p = stage("evaluate", "evaluate trained agents on fixed seeds", "runs/evaluate")
    p.add_argument("--run", action="append", metavar="NAME=DIR", help="a run to evaluate (repeatable)")
    p.set_defaults(func=cmd_evaluate)
    p = stage("report", "markdown report with results table and learning curves", "runs/report")
    p.add_argument("--evaluate", default="runs/evaluate", help="evaluate stage output directory")
    p.add_argument("--finetune", default="runs/finetune", help="finetune stage output directory")
    p.add_argument("--pretrain", default="runs/pretrain", help="pretrain stage output directory")
    p.set_defaults(func=cmd_report)
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
    sub.add_parser("presets", help="list the config presets").set_defaults(func=cmd_presets)
    sub.add_parser("info", help="versions, device and threads").set_defaults(func=cmd_info)
    add_slurm_parser(sub)
    return parser


def quiet_libraries() -> None:
    """Lightning's data-loader advice and robosuite's per-env warnings say nothing about an RL stage (Lightning's
    banners are quieted where a Trainer is built: :func:`pipeline.train.make_trainer`)."""
    # robosuite warns on every env build that the Panda has no torso/head/base/legs controller to configure
    logging.getLogger("robosuite_logs").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*IterableDataset.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # where Slurm's client tools are installed, Lightning suggests srun to every single-process run
    warnings.filterwarnings("ignore", message=".*The `srun` command is available on your system.*")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries()
    # SIGTERM (docker stop, a scheduler's pre-emption notice): a training stage checkpoints the step it is at
    stops = (signal.SIGTERM,) if threading.current_thread() is threading.main_thread() else ()
    try:
        with preemption.stopping_on(*stops):
            result = args.func(args)
    except preemption.StopRequested as e:
        console.print(f"[yellow]{e}[/yellow]: run the same command again to resume")
        return 128 + signal.SIGTERM
    except ConfigError as e:
        console.print(f"[red]config error:[/red] {e}")
        return 2
    except ValueError as e:  # DatasetError and friends: a named file/key and what was expected
        console.print(f"[red]error:[/red] {e}")
        return 2
    except QueueError as e:  # git or DVC said no: the message has their output
        console.print("[red]error:[/red]", escape(str(e)))
        return 1
    if isinstance(result, int):  # a command's own exit status
        return result
    if isinstance(result, dict) and result:
        _summary(f"sacflow {args.command}", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
