"""The pipeline's stages, each one unit: collect -> pretrain -> finetune -> evaluate -> report.

A stage is the module ``pipeline.workflow.<name>``; its ``STAGE`` (a :class:`Stage`) says what it is: the config
sections it reads, the other stages' outputs it takes, and ``run(cfg, out, **inputs) -> metrics``. This package is
the one home of the stage order (:data:`STAGE_NAMES`) and of a stage's command line: the ``sacflow`` subcommands,
the DVC entry scripts (``stages/<name>.py``), the benchmark runs (:mod:`pipeline.experiments`) and the Slurm
launcher all read it. Stage modules are imported on demand, so a DVC stage imports only its own code, which is what
dvc.yaml lists as its deps (:mod:`pipeline.codedeps`).

Adding a stage: a module here with a ``STAGE``, its name in :data:`STAGE_NAMES`, a two-line ``stages/<name>.py``
calling :func:`dvc_main`, and its entry in dvc.yaml (docs/design.md).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import preemption
from pipeline.config import Config, ConfigError, load_config, load_params

STAGE_NAMES: tuple[str, ...] = ("collect", "pretrain", "finetune", "evaluate", "report")
PARAMS = "params.yaml"  # the DVC pipeline's parameters, read by every stage script


def _always(cfg: Config) -> bool:
    return True


@dataclass(frozen=True)
class Input:
    """An output of another stage that a stage reads: a command-line option, and what the DVC pipeline passes.

    ``pairs``: a repeatable ``NAME=DIR`` option, handed to ``run`` as ``{NAME: DIR}``; otherwise one folder.
    """

    name: str  # keyword argument of the stage's run
    flag: str  # its command-line option
    help: str
    dvc: tuple[str, ...]  # the values dvc.yaml's layout gives it (runs/<stage>)
    default: str | None = None  # on the command line
    pairs: bool = False


@dataclass(frozen=True)
class Stage:
    """One stage of the pipeline (see the module docstring)."""

    name: str  # subcommand, stages/<name>.py, runs/<name>
    help: str
    sections: tuple[str, ...]  # the config sections it reads: its params in dvc.yaml
    run: Callable[..., dict[str, Any]]  # run(cfg, out, **inputs) -> the metrics it wrote to out/metrics.json
    inputs: tuple[Input, ...] = ()
    # whether a preset's whole run includes this stage (a from-scratch preset has no collect and no pretraining)
    in_run: Callable[[Config], bool] = _always
    # a config the DVC pipeline cannot run raises ConfigError here, before anything is written
    check_pipeline: Callable[[Config], None] | None = None
    show_config: bool = True
    data_parallel: bool = False  # runs once per DDP rank: only rank 0 prints

    @property
    def out(self) -> str:
        """The stage's folder in the DVC pipeline and the command's default ``--out``."""
        return f"runs/{self.name}"

    def inputs_from(self, args: argparse.Namespace) -> dict[str, Any]:
        """The ``run`` keyword arguments of parsed command-line options."""
        kwargs: dict[str, Any] = {}
        for inp in self.inputs:
            value = getattr(args, inp.name)
            if inp.pairs:
                pairs = {}
                for item in value or []:
                    if "=" not in item:
                        raise ConfigError(f"{inp.flag} {item!r} must look like NAME=DIR (e.g. {inp.dvc[0]})")
                    name, path = item.split("=", 1)
                    pairs[name] = path
                if not pairs:
                    raise ConfigError(f"{self.name} needs at least one {inp.flag} NAME=DIR")
                value = pairs
            kwargs[inp.name] = value
        return kwargs


def stage(name: str) -> Stage:
    """The stage called ``name`` (its module is imported now)."""
    if name not in STAGE_NAMES:
        raise ConfigError(f"unknown stage {name!r}; the stages are {list(STAGE_NAMES)}")
    return importlib.import_module(f"{__name__}.{name}").STAGE


def stages() -> list[Stage]:
    """Every stage, in pipeline order."""
    return [stage(name) for name in STAGE_NAMES]


# ---------------------------------------------------------------------------------------------------------------
# The command line of one stage: `sacflow <stage> ...` and `python stages/<stage>.py`


def add_arguments(parser: argparse.ArgumentParser, st: Stage) -> None:
    """The options every stage takes, then the stage's own inputs."""
    parser.add_argument("--preset", default="default", help="config preset: a name in configs/ (see `sacflow presets`)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    parser.add_argument("--params", help="read the config from a DVC params file instead of --preset")
    parser.add_argument("--out", default=st.out, help=f"output directory (default {st.out}); rerun on it to resume")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or config tree (CI, logs)")
    add_verbose(parser)
    for inp in st.inputs:
        if inp.pairs:
            parser.add_argument(inp.flag, dest=inp.name, action="append", metavar="NAME=DIR", help=inp.help)
        else:
            parser.add_argument(inp.flag, dest=inp.name, default=inp.default, help=inp.help)


def add_verbose(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: the flag may come before or after a subcommand without one parser resetting the other's value
    parser.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show the libraries' own warnings (robosuite, Lightning)")


def config_of(args: argparse.Namespace) -> Config:
    """The config a stage command asked for: ``--params`` or ``--preset``, then every ``--set``."""
    extra = list(args.set or [])
    if args.quiet:
        extra.append("trainer.progress=false")
    if args.params:
        return load_params(args.params, extra)
    return load_config(args.preset, extra)


def run_command(st: Stage, args: argparse.Namespace) -> dict[str, Any]:
    """Run stage ``st`` as its command line asked (config, inputs, output folder); returns its metrics."""
    from pipeline import terminal

    cfg = config_of(args)
    if args.params and st.check_pipeline is not None:
        st.check_pipeline(cfg)
    inputs = st.inputs_from(args)
    if st.show_config and not args.quiet:
        terminal.show_config(cfg, data_parallel=st.data_parallel)
    return st.run(cfg, args.out, **inputs)


def execute(command: Callable[[], dict[str, Any] | int | None], title: str, verbose: bool = False) -> int:
    """Run a command the way every entry point does: SIGTERM stops a training stage after its current step with a
    checkpoint (:mod:`pipeline.preemption`); named user errors become messages and exit codes; metrics a table;
    the libraries' warnings only when ``verbose``."""
    from pipeline import terminal

    terminal.quiet_libraries(verbose)
    stops = (signal.SIGTERM,) if threading.current_thread() is threading.main_thread() else ()
    with preemption.stopping_on(*stops):
        code, result = terminal.exit_code(command)
    if isinstance(result, int):  # a command's own exit status
        return result
    if isinstance(result, dict) and result:
        terminal.show_metrics(title, result)
    return code


def dvc_main(st: Stage, argv: Sequence[str] | None = None) -> None:
    """The body of ``stages/<name>.py``: the stage on ``params.yaml`` with the DVC layout's folders; exits.

    Extra command-line arguments pass through (e.g. ``--set trainer.devices=2``).
    """
    parser = argparse.ArgumentParser(prog=f"stages/{st.name}.py", description=st.help)
    add_arguments(parser, st)
    layout = [x for inp in st.inputs for value in inp.dvc for x in (inp.flag, value)]
    args = parser.parse_args(["--params", PARAMS, "--quiet", *layout,
                              *(sys.argv[1:] if argv is None else argv)])
    sys.exit(execute(lambda: run_command(st, args), f"sacflow {st.name}", getattr(args, "verbose", False)))


def run_dir_inputs(st: Stage, run_dir: Path, cfg: Config) -> dict[str, Any]:
    """The inputs of ``st`` inside one run folder whose stages sit in ``run_dir/<stage>`` (a benchmark run)."""
    kwargs: dict[str, Any] = {}
    for inp in st.inputs:
        if inp.pairs:  # NAME=runs/<stage> pairs of the stages this run has
            kwargs[inp.name] = {name: run_dir / Path(path).name for name, path in
                                (v.split("=", 1) for v in inp.dvc) if stage(Path(path).name).in_run(cfg)}
        else:
            source = stage(Path(inp.dvc[0]).name)
            kwargs[inp.name] = run_dir / source.name if source.in_run(cfg) else None
    return kwargs
