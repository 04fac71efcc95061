"""Benchmark tables as DVC experiments: queue presets x seeds, run them with ``dvc queue`` workers, gather.

:func:`queue_table` is one ``dvc exp run --queue bench/queue/dvc.yaml`` with a grid of ``-S`` params (DVC queues
one experiment per combination) and :func:`start_workers` is ``dvc queue start --jobs N``. Every queued experiment
runs in its own temporary copy of the repository (``.dvc/tmp/exps/tmp*``) and commits its params and its result
record (a cached DVC metric) to an experiment ref, so workers share no run directory; the queue's broker is a
folder (``.dvc/tmp/exps/celery``), not a port. :func:`experiment_results` reads finished experiments back from
``dvc exp show --json`` and :func:`gather_experiments` turns them into the same table as the in-process matrix
(:func:`pipeline.experiments.tables.gather_table`).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.experiments.tables import Overrides, config_label, table_rows, with_training, write_table
from pipeline.config import ConfigError, deep_merge, dotted_items, load_config, overrides_to_dict

QUEUE_PIPELINE = "bench/queue/dvc.yaml"  # the experiment pipeline, relative to the repository root
QUEUE_PARAMS = "bench/queue/params.yaml"  # its params: preset, seed, config
RESULT = "runs/queue/result.json"  # its result record (pipeline.experiments.tables.run_experiment)
# Lightning's DDP uses MASTER_PORT (or STANDALONE_PORT) when set and a free port otherwise: a fixed one would be
# shared by every worker's DDP run, so workers start without them.
PORT_VARIABLES = ("MASTER_PORT", "STANDALONE_PORT")
FINAL_STATES = ("success", "failed")


class QueueError(RuntimeError):
    """git or DVC refused a queue operation, or the queue stalled; the message says which and why."""


@dataclass
class Experiment:
    """One entry of ``dvc exp show``: ``state`` is queued | running | success | failed."""

    name: str
    state: str
    result: dict[str, Any] | None  # the run's result record, once it finished


def dvc_env() -> dict[str, str]:
    """Environment for ``dvc`` and its queue workers: this interpreter's ``bin`` first on PATH, no fixed DDP port.

    ``dvc queue start`` spawns its workers as ``dvc`` from PATH and the stage runs ``python`` from PATH, so both
    must come from the environment sacflow runs in, activated or not.
    """
    env = {k: v for k, v in os.environ.items() if k not in PORT_VARIABLES}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return env


def _run(cmd: list[str], repo: Path) -> str:
    proc = subprocess.run(cmd, cwd=repo, env=dvc_env(), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        output = (proc.stdout + proc.stderr).strip()[-3000:]
        raise QueueError(f"`{' '.join(cmd)}` failed in {repo} (exit {proc.returncode}):\n{output}")
    return proc.stdout


def dvc(args: list[str], repo: str | Path = ".") -> str:
    """Run ``dvc ARGS`` (this environment's DVC) in ``repo``; its stdout, or :class:`QueueError` with its output."""
    return _run([sys.executable, "-m", "dvc", *args], Path(repo))


def check_repo(repo: str | Path) -> str:
    """Fail early, with the fix, where ``dvc exp run --queue`` would fail obscurely; returns the HEAD commit."""
    repo = Path(repo)
    if not (repo / QUEUE_PIPELINE).is_file():
        raise QueueError(f"no {QUEUE_PIPELINE} under {repo.resolve()}: run from the sacflow project root")
    if not (repo / ".dvc").is_dir():
        raise QueueError(f"{repo.resolve()} is not a DVC repository (no .dvc/): run `dvc init` there")
    try:
        head = _run(["git", "rev-parse", "--verify", "HEAD"], repo).strip()
    except QueueError:
        raise QueueError(f"{repo.resolve()} has no git commit: queued experiments start from one, so commit the "
                         "project first") from None
    for key in ("user.name", "user.email"):
        if subprocess.run(["git", "config", key], cwd=repo, capture_output=True, check=False).returncode != 0:
            raise QueueError(f"git {key} is not set in {repo.resolve()}: queue workers commit every experiment; "
                             f"set it with `git config {key} ...`")
    return head


def _hydra_value(value: Any) -> str:
    """A value as DVC's ``-S`` (Hydra override syntax) reads it: quoted strings, so ``a,b`` is not a sweep."""
    return json.dumps(value, separators=(",", ":"))


def grid_params(presets: list[str], seeds: list[int], overrides: Overrides | None = None) -> list[str]:
    """The ``-S`` values of one ``dvc exp run --queue``: a sweep over presets x seeds, the overrides for all.

    Every preset is loaded with the overrides first, so a typo fails here, naming the key, before anything queues.
    """
    if not presets:
        raise ConfigError("presets: expected at least one preset name")
    if not seeds:
        raise ConfigError("seeds: expected at least one integer seed")
    if len(set(presets)) != len(presets) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"presets {presets} and seeds {seeds} must not repeat: each pair is one experiment")
    nested = overrides_to_dict(overrides or [])
    for preset in presets:
        load_config(preset, deep_merge(nested, {"seed": seeds[0]}))
    sets = [f"{QUEUE_PARAMS}:preset={','.join(_hydra_value(p) for p in presets)}",
            f"{QUEUE_PARAMS}:seed={','.join(str(int(s)) for s in seeds)}"]
    # `++` adds the key or replaces it: bench/queue/params.yaml's `config` starts empty
    sets += [f"{QUEUE_PARAMS}:++config.{key}={_hydra_value(value)}" for key, value in dotted_items(nested)]
    return sets


def queue_table(presets: list[str], seeds: list[int], overrides: Overrides | None = None,
                repo: str | Path = ".") -> list[str]:
    """Queue one experiment per (preset, seed) of ``bench/queue/dvc.yaml``; returns the experiments' names."""
    check_repo(repo)
    for preset in presets:  # a queued experiment sees committed files only (and changes to them)
        if not _run(["git", "ls-files", f"configs/{preset}.yaml"], Path(repo)).strip():
            raise QueueError(f"configs/{preset}.yaml is not committed in {Path(repo).resolve()}: queued experiments "
                             "run from the last commit, so commit the preset first")
    args = ["exp", "run", "--queue", QUEUE_PIPELINE]
    for value in grid_params(presets, seeds, overrides):
        args += ["-S", value]
    out = dvc(args, repo)
    names = re.findall(r"Queued experiment '([^']+)'", out)
    if len(names) != len(presets) * len(seeds):
        raise QueueError(f"expected {len(presets) * len(seeds)} queued experiments, DVC reported {names}:\n{out}")
    return names


def start_workers(jobs: int, repo: str | Path = ".") -> None:
    """``dvc queue start --jobs JOBS``: that many workers, each running one experiment at a time."""
    if jobs < 1:
        raise ConfigError(f"jobs = {jobs}: expected at least one worker")
    dvc(["queue", "start", "--jobs", str(jobs)], repo)


def experiments(repo: str | Path = ".", rev: str | None = None, all_commits: bool = False) -> list[Experiment]:
    """Every experiment ``dvc exp show --json`` lists: those of ``rev`` (default HEAD), or of all commits."""
    args = ["exp", "show", "--json"] + (["-A"] if all_commits else ["--rev", rev] if rev else [])
    found = []
    for baseline in json.loads(dvc(args, repo)):
        for exp in baseline.get("experiments") or []:
            last = exp["revs"][0]
            # an experiment whose queue entry was cleaned up has no executor: it finished and was kept
            state = "failed" if last.get("error") else (exp.get("executor") or {}).get("state", "success")
            metric = (last.get("data") or {}).get("metrics", {}).get(RESULT, {})
            found.append(Experiment(exp.get("name") or last.get("name") or last["rev"], state, metric.get("data")))
    return found


def _active_workers(repo: str | Path) -> int:
    match = re.search(r"Worker status: (\d+) active", dvc(["queue", "status"], repo))
    return int(match.group(1)) if match else 0


def wait(names: list[str], repo: str | Path = ".", rev: str | None = None, poll_s: float = 5.0,
         timeout_s: float | None = None, idle_grace_s: float = 60.0,
         on_change: Callable[[dict[str, int]], None] | None = None) -> list[Experiment]:
    """Poll ``dvc exp show`` until the experiments ``names`` (of baseline ``rev``) succeeded or failed.

    Raises :class:`QueueError` after ``timeout_s``, or when experiments stay queued with no worker running for
    ``idle_grace_s`` (workers take a few seconds to start). ``on_change`` gets the count of each state.
    """
    start, idle_since, last_counts = time.monotonic(), None, None
    while True:
        by_name = {e.name: e for e in experiments(repo, rev=rev)}
        mine = [by_name.get(n, Experiment(n, "queued", None)) for n in names]
        counts = {s: sum(e.state == s for e in mine) for s in ("queued", "running", *FINAL_STATES)}
        if on_change and counts != last_counts:
            on_change(counts)
        last_counts = counts
        if all(e.state in FINAL_STATES for e in mine):
            return mine
        now = time.monotonic()
        if timeout_s is not None and now - start > timeout_s:
            raise QueueError(f"experiments still unfinished after {timeout_s:.0f} s: {counts}")
        if counts["running"] == 0 and _active_workers(repo) == 0:
            idle_since = idle_since or now
            if now - idle_since > idle_grace_s:
                raise QueueError(f"{counts['queued']} experiments queued but no queue worker is running: "
                                 "start some with `dvc queue start --jobs N`")
        else:
            idle_since = None
        time.sleep(poll_s)


def experiment_results(repo: str | Path = ".", rev: str | None = None,
                       all_commits: bool = False) -> list[dict[str, Any]]:
    """Result records of every successful experiment; of repeats of a (configuration, seed), the latest."""
    latest: dict[tuple[str, int], dict[str, Any]] = {}
    for exp in experiments(repo, rev=rev, all_commits=all_commits):
        r = exp.result
        if exp.state != "success" or not r:
            continue
        key = (config_label(r["preset"], r.get("config")), r["seed"])
        if key not in latest or r["finished"] > latest[key]["finished"]:
            latest[key] = r
    return [latest[k] for k in sorted(latest)]


def gather_experiments(out: str | Path, repo: str | Path = ".", rev: str | None = None,
                       all_commits: bool = False) -> list[dict[str, Any]]:
    """The benchmark table of every finished experiment: written to ``out`` (markdown + JSON), rows returned."""
    results = experiment_results(repo, rev=rev, all_commits=all_commits)
    rows = table_rows((config_label(r["preset"], r.get("config")), with_training(r["evaluate"], r.get("finetune")))
                      for r in results)
    write_table(rows, out)
    return rows
