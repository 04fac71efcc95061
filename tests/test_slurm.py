"""Benchmark runs as Slurm jobs, on a real single-node Slurm cluster that the test starts and stops itself.

The cluster is munged + slurmctld + slurmd on this host (2 CPUs), all state, sockets and logs in a temp folder and
the daemons on free ports, so nothing in /etc is touched. It needs root and the slurm-wlm and munge packages
(``make test`` installs them where apt-get is available); without them the cluster test skips, saying why.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

import pipeline
from pipeline.experiments.tables import run_preset
from pipeline.checkpoint import RUN_CHECKPOINT
from pipeline.cli import main
from pipeline.config import ConfigError
from pipeline.metrics import read_json, write_json

CLUSTER_TOOLS = ("mungekey", "munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol")
# each run a few seconds: one 40-step demo, a 200-step pretraining checkpointed every 20 steps, 40 online steps
FAST = ["collect.episodes=1", "collect.horizon=40", "finetune.env_options.horizon=40", "pretrain.steps=200",
        "pretrain.checkpoint_every=20", "finetune.total_steps=40", "finetune.eval_every=40",
        "finetune.checkpoint_every=20", "finetune.log_every=20", "evaluate.episodes=1"]


def _tool(name: str) -> str | None:
    """The daemons live in /usr/sbin, which a non-login PATH may lack."""
    return shutil.which(name, path=os.pathsep.join((os.environ.get("PATH", ""), "/usr/sbin", "/sbin")))


def _why_no_cluster() -> str | None:
    missing = [t for t in CLUSTER_TOOLS if _tool(t) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge; `make test` does it as root)"
    if os.geteuid() != 0:
        return "starting slurmd and munged needs root"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit not installed (pip install 'sacflow[slurm]')"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition: Callable[[], Any], timeout: float, what: str, diagnostics: Callable[[], str] = str,
          every: float = 0.1) -> Any:
    """Poll ``condition`` every ``every`` seconds (sparingly where it runs commands: the jobs need the 2 cores)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnostics()}")


def _tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(none)"


class LocalCluster:
    """munged, slurmctld and slurmd started as child processes; ``stop`` ends exactly those by their pids."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        root, host = self.root, socket.gethostname().split(".")[0]
        munge = root / "munge"
        for d in (munge, root / "state", root / "spool", root / "log"):
            d.mkdir(mode=0o700)
        key, sock = munge / "munge.key", munge / "munge.socket"
        subprocess.run([_tool("mungekey"), "--create", f"--keyfile={key}"], check=True, capture_output=True)
        key.chmod(0o400)
        self._spawn([_tool("munged"), "--foreground", "--force", f"--key-file={key}", f"--socket={sock}",
                     f"--pid-file={munge / 'munged.pid'}", f"--seed-file={munge / 'seed'}",
                     f"--log-file={root / 'log/munged.log'}"], "munged")
        _wait(sock.exists, 10, "munged's socket", self.diagnostics)
        # cred_expire: a requeued job waits this long before it may start again (default 120 s);
        # bf_interval/sched_interval: schedule every second instead of every 30/60 s; KillWait: seconds from
        # scancel's SIGTERM to SIGKILL (submitit ignores SIGTERM in its jobs)
        self.conf.write_text(f"""\
ClusterName=sacflowtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={sock},cred_expire=5
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'log/slurmctld.log'}
SlurmdLogFile={root / 'log/slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
KillWait=2
SchedulerParameters=bf_interval=1,sched_interval=1
NodeName={host} NodeAddr=127.0.0.1 CPUs=2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
""")
        env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self._spawn([_tool("slurmctld"), "-D", "-c", "-i"], "slurmctld", env)
        self._spawn([_tool("slurmd"), "-D", "-N", host], "slurmd", env)

        def node_idle() -> bool:
            r = subprocess.run(["sinfo", "--noheader", "--format=%t"], env=env, capture_output=True, text=True,
                               check=False)
            return r.stdout.strip() == "idle"

        _wait(node_idle, 30, "the node to come up idle", self.diagnostics)

    def _spawn(self, cmd: list[Any], name: str, env: dict[str, str] | None = None) -> None:
        out = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 - kept open for the daemon's life
        self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env))

    def stop(self) -> None:
        if self.conf.exists():  # cancel what still runs, so no job step outlives its slurmd
            env = {**os.environ, "SLURM_CONF": str(self.conf)}
            subprocess.run(["scancel", "--user=root"], env=env, capture_output=True, timeout=30, check=False)

            def queue_empty() -> bool:
                return not subprocess.run(["squeue", "--noheader"], env=env, capture_output=True, text=True,
                                          check=False).stdout.strip()

            with contextlib.suppress(AssertionError):
                _wait(queue_empty, 20, "the queue to empty")
        for proc in reversed(self.procs):  # slurmd, slurmctld, then munged
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)

    def diagnostics(self) -> str:
        return "\n".join(f"--- {name}\n{_tail(self.root / 'log' / name)}"
                         for name in ("munged.out", "slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"))


@pytest.fixture
def slurm_cluster(monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalCluster]:
    reason = _why_no_cluster()
    if reason:
        pytest.skip(f"no local Slurm cluster: {reason}")
    # a short folder: munged's socket path must fit in 108 bytes
    cluster = LocalCluster(Path(tempfile.mkdtemp(prefix="sacflow-slurm-")))
    try:
        cluster.start()
        monkeypatch.setenv("SLURM_CONF", str(cluster.conf))
        # jobs import the code under test, not some other installed copy of the package
        repo = str(Path(pipeline.__file__).resolve().parent.parent)
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (repo, os.environ.get("PYTHONPATH")) if p))
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


def _interrupted_stage(run_dir: Path) -> str | None:
    """The stage that has a checkpoint but has not finished yet (a job stopped now must resume it), if any."""
    for stage in ("pretrain", "finetune"):
        if (run_dir / stage / RUN_CHECKPOINT).exists() and not (run_dir / stage / "metrics.json").exists():
            return stage
    return None


def test_jobs_resume_after_requeue_and_resubmit(slurm_cluster: LocalCluster, tmp_path: Path) -> None:
    from pipeline.experiments.slurm import LOGS_DIR, is_finished, load_jobs, queue_states, status

    out = tmp_path / "runs"
    sets = [x for s in FAST for x in ("--set", s)]
    assert main(["slurm", "submit", "--presets", "smoke", "--seeds", "0,1,2", "--time", "10", "--cpus", "1",
                 "--out", str(out), *sets]) == 0
    first_job = {name: run["jobs"][0] for name, run in load_jobs(out).items()}
    assert sorted(first_job) == ["smoke-s0", "smoke-s1", "smoke-s2"]

    def diagnostics() -> str:
        logs = "\n".join(f"--- {p.name}\n{_tail(p)}" for p in sorted((out / LOGS_DIR).glob("*/*_log.err")))
        return f"{status(out)}\n{logs}\n{slurm_cluster.diagnostics()}"

    # Stop each run in the middle of a checkpointed stage, three ways:
    # - the time-limit warning (USR2, what Slurm sends 90 s before --time): submitit checkpoints the job and it
    #   requeues itself under the same job id, resuming from the stage's last checkpoint;
    # - SIGTERM (what Slurm sends before pre-empting a job): the stage checkpoints the step it is at, and the job
    #   requeues itself;
    # - scancel: the job is gone, and `sacflow slurm resubmit` starts a new one.
    stopped: dict[str, dict[str, Any]] = {}

    def mid_stage() -> tuple[str, str] | None:
        for name in sorted(first_job):
            stage = _interrupted_stage(out / name)
            if name not in stopped and stage:
                return name, stage
        return None

    signals = {"requeue": ["--signal=USR2"], "term": ["--signal=TERM"], "cancel": []}
    for how, flags in signals.items():
        name, stage = _wait(mid_stage, 90, f"a run in a checkpointed stage to {how}", diagnostics)
        collected = (out / name / "collect/metrics.json").stat().st_mtime_ns
        subprocess.run(["scancel", *flags, first_job[name]], check=True)
        stopped[name] = {"how": how, "stage": stage, "collect_mtime": collected}
    requeued = next(n for n, s in stopped.items() if s["how"] == "requeue")
    terminated = next(n for n, s in stopped.items() if s["how"] == "term")
    cancelled = next(n for n, s in stopped.items() if s["how"] == "cancel")

    _wait(lambda: first_job[cancelled] not in queue_states(), 30, "the cancelled job to leave the queue", diagnostics,
          every=0.5)
    assert {r["run"]: r["state"] for r in status(out)}[cancelled] == "STOPPED"
    assert main(["slurm", "resubmit", "--out", str(out)]) == 0
    jobs = load_jobs(out)
    assert len(jobs[cancelled]["jobs"]) == 2, "the cancelled run is resubmitted"
    assert all(len(jobs[n]["jobs"]) == 1 for n in jobs if n != cancelled), \
        f"only the stopped run is resubmitted (the requeued and the running ones are still queued): {jobs}"

    _wait(lambda: all(is_finished(out / name) for name in first_job), 150, "every run to finish", diagnostics, every=1)
    _wait(lambda: all(r["state"] == "FINISHED" for r in status(out)), 30, "every job to leave the queue", diagnostics,
          every=0.5)
    for name in (requeued, terminated):
        assert len(load_jobs(out)[name]["jobs"]) == 1, f"the {stopped[name]['how']} run needed no resubmission"
        job_log = out / LOGS_DIR / first_job[name] / f"{first_job[name]}_0_log.out"
        assert f"Requeued job {first_job[name]}" in job_log.read_text(), f"{name}: the job requeued itself"
    for name, info in stopped.items():
        resumed = read_json(out / name / info["stage"] / "metrics.json")["resumed_from"]
        assert resumed > 0, f"{name} ({info['how']}) restarted its {info['stage']} from scratch"
        assert (out / name / "collect/metrics.json").stat().st_mtime_ns == info["collect_mtime"], \
            f"{name} collected its demos again instead of keeping them"
        # stopped, requeued or resubmitted, and resumed: the run ends where an uninterrupted one of it ends
        seed = int(name.rsplit("-s", 1)[1])
        reference = tmp_path / "uninterrupted" / name
        run_preset("smoke", seed, reference, FAST)
        for stage in ("pretrain", "finetune"):
            a = torch.load(reference / stage / RUN_CHECKPOINT, weights_only=False)["agent"]
            b = torch.load(out / name / stage / RUN_CHECKPOINT, weights_only=False)["agent"]
            assert [k for k in a if not torch.equal(a[k], b[k])] == [], f"{name} ({info['how']}): {stage} differs"

    assert main(["table", "gather", "--runs", str(out), "--out", str(tmp_path / "table.md")]) == 0
    rows = read_json(tmp_path / "table.json")["rows"]
    assert {(r["preset"], r["agent"], r["seeds"]) for r in rows} == {("smoke", "pretrained", 3),
                                                                     ("smoke", "finetuned", 3)}


def test_bad_slurm_input_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("submitit", reason="the launcher's extra: pip install 'sacflow[slurm]'")
    out = str(tmp_path / "runs")
    assert main(["slurm", "submit", "--presets", "no_such_preset", "--seeds", "0", "--out", out]) == 2
    assert main(["slurm", "submit", "--presets", "smoke", "--seeds", "0,x", "--out", out]) == 2
    assert main(["slurm", "submit", "--presets", "smoke", "--set", "sac.batchsize=3", "--out", out]) == 2
    assert main(["slurm", "submit", "--presets", "smoke", "--time", "0", "--out", out]) == 2
    assert main(["slurm", "submit", "--presets", "hopper_o2o", "--seeds", "0,1", "--out", out]) == 2
    assert main(["slurm", "status", "--out", out]) == 2
    captured = capsys.readouterr()
    err = captured.out + captured.err
    assert "no_such_preset" in err and "--seeds '0,x'" in err and "sac.batchsize" in err and "--time" in err
    assert "no runs were submitted" in err or "not on PATH" in err
    assert "sacflow/hopper-random-v0" in err and "collect.kind=none" in err  # one Minari id, two seeds at once
    assert not (tmp_path / "runs").exists(), "nothing is submitted when an input is bad"


def test_a_run_directory_holds_one_run(tmp_path: Path) -> None:
    write_json(tmp_path / "run.json", {"preset": "smoke", "seed": 1, "overrides": []})
    with pytest.raises(ConfigError, match="seed"):
        run_preset("smoke", 0, tmp_path)
