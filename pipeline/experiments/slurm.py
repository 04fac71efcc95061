"""Benchmark runs on a Slurm cluster: one job per (preset, seed), each in its own run directory.

Every job is :func:`pipeline.experiments.tables.run_preset` in ``<out>/<preset>-s<seed>/``, the layout of ``sacflow table run``
and the DVC matrix, so ``sacflow table gather --runs <out>`` builds the same table from either. Jobs go through
submitit:

- a job nearing its time limit gets Slurm's warning signal (USR2, 90 s before), checkpoints and requeues itself
  (:class:`PresetRun` is a ``submitit.helpers.Checkpointable``); it resumes from its stage's last checkpoint;
- a job sent SIGTERM (what Slurm sends before it pre-empts a job) stops its training stage at the next step,
  checkpoints that step, and requeues itself the same way, unless Slurm is ending the job anyway (``scancel``);
- a job that stopped otherwise (``scancel``, a crash, a lost node) is restarted by :func:`resubmit`, which submits
  every run that has no ``evaluate/metrics.json`` and no job in the queue.

Every way the rerun resumes in the same directory: finished stages are skipped, an interrupted stage resumes from
its last checkpoint and ends bit-identical to an uninterrupted run (``pipeline.online``).

Layout of ``out``::

    <preset>-s<seed>/         one run (run.json, collect/, pretrain/, finetune/, evaluate/)
    _slurm/jobs.json          what was submitted: preset, seed, overrides, resources, job ids (newest last)
    _slurm/logs/<job id>/     submitit's pickles and the job's stdout/stderr
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import submitit
from submitit.core.utils import FailedJobError

from pipeline import preemption
from pipeline.experiments.tables import run_name, run_preset
from pipeline.config import ConfigError, load_config
from pipeline.metrics import read_json, write_json


class SlurmError(ValueError):
    """Slurm refused a job (bad partition, account, limits) or its commands failed; the message is theirs."""


JOBS_FILE = Path("_slurm") / "jobs.json"
LOGS_DIR = Path("_slurm") / "logs"


@dataclass
class Resources:
    """What each job asks Slurm for (``sbatch --partition --time --cpus-per-task --mem``, plus any other flag)."""

    partition: str | None = None  # None: the cluster's default partition
    time_min: int = 60  # time limit; the job is warned 90 s before it and requeues itself
    cpus: int = 1  # CPUs per job (the config's `threads` sets how many torch uses)
    mem_gb: float | None = None  # None: the partition's default
    sbatch: dict[str, str] = field(default_factory=dict)  # other sbatch flags, e.g. {"account": "rl", "qos": "low"}

    def __post_init__(self) -> None:
        if self.time_min < 1:
            raise ConfigError(f"slurm --time: expected minutes >= 1, got {self.time_min}")
        if self.cpus < 1:
            raise ConfigError(f"slurm --cpus: expected >= 1, got {self.cpus}")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise ConfigError(f"slurm --mem-gb: expected > 0, got {self.mem_gb}")


class PresetRun(submitit.helpers.Checkpointable):
    """The job: one (preset, seed) run. On Slurm's time-limit warning submitit calls ``checkpoint``, whose default
    requeues this same call; the stages' own checkpoints on disk make the rerun resume. SIGTERM (pre-emption) stops
    the running stage at a step boundary with a checkpoint of that step, then takes the same way out."""

    def __call__(self, preset: str, seed: int, out_dir: str, overrides: list[str]) -> dict[str, Any]:
        from pipeline.terminal import quiet_libraries

        quiet_libraries()
        preemption.stop_on(signal.SIGTERM)  # submitit ignores SIGTERM; its own handlers are in place by now
        try:
            return run_preset(preset, seed, out_dir, overrides)
        except preemption.StopRequested:
            # a job Slurm is ending (scancel: COMPLETING) stays ended; one still RUNNING was only warned: requeue it
            if _job_state() != "RUNNING":
                raise
            # submitit's time-limit handler checkpoints this call, requeues the job and exits
            os.kill(os.getpid(), signal.Signals["SIG" + submitit.JobEnvironment.USR_SIG])
            time.sleep(60)  # the handler runs at once and exits; a job it could not requeue ends here
            raise


def _job_state() -> str | None:
    """This job's state as Slurm has it (``RUNNING``, ``CANCELLED``, ...), or None outside a job or on an error."""
    job = os.environ.get("SLURM_JOB_ID")
    if job is None:
        return None
    result = subprocess.run(["scontrol", "show", "job", "--oneliner", job], capture_output=True, text=True,
                            check=False, timeout=30)
    fields = dict(f.split("=", 1) for f in result.stdout.split() if "=" in f)
    return fields.get("JobState")


def is_finished(run_dir: str | Path) -> bool:
    """A run is finished when its evaluate stage wrote its metrics (the last file ``run_preset`` writes)."""
    return (Path(run_dir) / "evaluate" / "metrics.json").exists()


def queue_states() -> dict[str, str]:
    """``{job id: state}`` of every job Slurm still lists (pending, running, requeued, completing, ...).

    Finished jobs leave the queue; without an accounting database ``sacct`` cannot tell how they ended, so a run's
    own files are the record of whether it finished (:func:`is_finished`).
    """
    result = subprocess.run(["squeue", "--noheader", "--array", "--format=%i|%T"], capture_output=True, text=True,
                            check=False, timeout=60)
    if result.returncode != 0:
        raise SlurmError(f"squeue failed ({result.returncode}): {result.stderr.strip()}")
    states = {}
    for line in result.stdout.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id:
            states[job_id] = state
    return states


def load_jobs(out: str | Path) -> dict[str, dict[str, Any]]:
    """The runs submitted into ``out``: ``{run name: {preset, seed, overrides, resources, jobs}}``."""
    path = Path(out) / JOBS_FILE
    return read_json(path) if path.exists() else {}


def _submitted(out: Path) -> dict[str, dict[str, Any]]:
    jobs = load_jobs(out)
    if not jobs:
        raise ConfigError(f"no runs were submitted into {out} (no {out / JOBS_FILE}); run `sacflow slurm submit`")
    return jobs


def _require_slurm() -> None:
    for tool in ("sbatch", "squeue"):
        if shutil.which(tool) is None:
            raise ConfigError(f"`{tool}` is not on PATH: sacflow slurm needs a Slurm cluster's client commands "
                              "(on a login node, or `apt-get install slurm-client` with the cluster's slurm.conf)")


def _submit_run(out: Path, run: dict[str, Any]) -> str:
    """Submit one run entry (``preset, seed, overrides, resources``) as a job; return its job id."""
    res = Resources(**run["resources"])
    name = run_name(run["preset"], run["seed"])
    executor = submitit.SlurmExecutor(folder=out / LOGS_DIR / "%j")
    params: dict[str, Any] = {"job_name": f"sacflow:{name}", "time": res.time_min, "cpus_per_task": res.cpus,
                              "ntasks_per_node": 1}
    if res.partition:
        params["partition"] = res.partition
    if res.mem_gb is not None:
        params["mem"] = f"{int(res.mem_gb * 1024)}MB"
    if res.sbatch:
        params["additional_parameters"] = dict(res.sbatch)
    executor.update_parameters(**params)
    try:
        job = executor.submit(PresetRun(), run["preset"], run["seed"], str(out / name), list(run["overrides"]))
    except FailedJobError as e:  # sbatch exited non-zero; its stderr is the message
        raise SlurmError(f"sbatch refused the job of {out / name}: {e}") from e
    return str(job.job_id)


def _submit_all(out: Path, jobs: dict[str, dict[str, Any]], todo: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Submit each run of ``todo`` and record its job id in ``jobs.json`` right away (a failing sbatch later on
    still leaves every submitted job on record)."""
    rows = []
    for run in todo:
        name = run_name(run["preset"], run["seed"])
        job_id = _submit_run(out, run)
        jobs[name] = {**run, "jobs": [*run["jobs"], job_id]}
        write_json(out / JOBS_FILE, jobs)
        rows.append({"run": name, "job": job_id, "action": "submitted"})
    return rows


def submit(out: str | Path, presets: list[str], seeds: list[int], overrides: list[str] | None = None,
           resources: Resources | None = None) -> list[dict[str, Any]]:
    """Submit one job per (preset, seed) whose run in ``out`` is neither finished nor queued.

    Every config is loaded first, so a bad preset or override fails here, naming the key, before any job is
    submitted. A run already submitted with other overrides is an error (its directory holds that run).
    Returns one row per (preset, seed): ``{run, job, action}`` with action ``submitted | finished | queued``.
    """
    out = Path(out).resolve()
    overrides = list(overrides or [])
    resources = resources or Resources()
    if not presets or not seeds:
        raise ConfigError("slurm submit needs at least one preset (--presets) and one seed (--seeds)")
    shared: dict[str, list[str]] = {}  # Minari dataset id -> the runs that would collect it
    for preset in presets:
        for seed in seeds:
            cfg = load_config(preset, [f"seed={seed}", *overrides])
            if cfg.collect.kind == "minari":
                shared.setdefault(cfg.collect.out, []).append(run_name(preset, seed))
    for dataset_id, names in shared.items():
        if len(names) > 1:  # run_preset gives robosuite demos a file per run; a Minari id is one global name
            raise ConfigError(f"runs {', '.join(names)} would all write the Minari dataset {dataset_id!r} at once: "
                              f"collect it once (`sacflow collect --preset {names[0].rsplit('-s', 1)[0]}`) and "
                              "submit with --set collect.kind=none")
    _require_slurm()
    jobs = load_jobs(out)
    queued = queue_states()
    rows, todo = [], []
    for preset in presets:
        for seed in seeds:
            name = run_name(preset, seed)
            known = jobs.get(name)
            if known is not None and known["overrides"] != overrides:
                raise ConfigError(f"{out / name} was submitted with --set {known['overrides']}, not {overrides}: "
                                  "use another --out for another configuration")
            if is_finished(out / name):
                rows.append({"run": name, "job": (known or {}).get("jobs", [None])[-1], "action": "finished"})
            elif known is not None and known["jobs"] and known["jobs"][-1] in queued:
                rows.append({"run": name, "job": known["jobs"][-1], "action": "queued"})
            else:
                todo.append({"preset": preset, "seed": seed, "overrides": overrides, "resources": asdict(resources),
                             "jobs": list((known or {}).get("jobs", []))})
    return rows + _submit_all(out, jobs, todo)


def _stages(run: dict[str, Any]) -> list[str]:
    """The stages a run goes through, in order (a from-scratch preset has no collect and no pretraining)."""
    from pipeline.workflow import stages

    cfg = load_config(run["preset"], [f"seed={run['seed']}", *run["overrides"]])
    return [st.name for st in stages() if st.in_run(cfg)]


def status(out: str | Path) -> list[dict[str, Any]]:
    """One row per submitted run: its last job, that job's state, the stage it is at and the job's error log.

    ``state`` is the queue's (``PENDING``, ``RUNNING``, ...) while the job is listed, else ``FINISHED`` when the run
    wrote its evaluate metrics, else ``STOPPED``: cancelled, failed or lost, so :func:`resubmit` will restart it.
    ``stage`` is the first stage without metrics (the one running or interrupted), ``done`` once all have them.
    """
    _require_slurm()
    out = Path(out).resolve()
    jobs = _submitted(out)
    queued = queue_states()
    rows = []
    for name, run in sorted(jobs.items()):
        job_id = run["jobs"][-1]
        run_dir = out / name
        state = queued.get(job_id) or ("FINISHED" if is_finished(run_dir) else "STOPPED")
        stage = next((s for s in _stages(run) if not (run_dir / s / "metrics.json").exists()), "done")
        log = LOGS_DIR / job_id / f"{job_id}_0_log.err"
        rows.append({"run": name, "job": job_id, "submissions": len(run["jobs"]), "state": state, "stage": stage,
                     "log": str(log) if (out / log).exists() else None})
    return rows


def resubmit(out: str | Path, resources: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Resubmit every run in ``out`` that is neither finished nor queued (cancelled, failed, node lost, ...).

    Each keeps its preset, seed and overrides; ``resources`` (``Resources`` fields) replace the ones it was
    submitted with, e.g. ``{"time_min": 120}`` for runs that need more time. Returns ``{run, job, action}`` rows.
    """
    _require_slurm()
    out = Path(out).resolve()
    jobs = _submitted(out)
    queued = queue_states()
    todo = []
    for name, run in sorted(jobs.items()):
        if is_finished(out / name) or run["jobs"][-1] in queued:
            continue
        merged = {**run["resources"], **{k: v for k, v in (resources or {}).items() if v is not None}}
        todo.append({**run, "resources": asdict(Resources(**merged))})
    return _submit_all(out, jobs, todo)
