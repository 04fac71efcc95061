"""``sacflow table``: a benchmark table in one process (``run``) and as DVC experiments (``queue``, ``gather``).

The queue runs through real DVC in a temporary git repo: ``sacflow table queue`` queues 2 presets x 1 seed of
``bench/queue/dvc.yaml`` (one round for two workers: the test's run time is that of one experiment), two
``dvc queue`` workers run them, and the table is gathered from ``dvc exp show``. The result records show that every
experiment ran in its own temporary workspace and that the two workers ran side by side. Means and intervals over
several seeds are tested in ``test_benchmark_table.py``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.experiments.tables import TRAINING_MODE
from pipeline.config import dotted_items
from pipeline.experiments.queue import QueueError, check_repo, experiments, queue_table

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

# Two presets small enough that one whole pipeline (1 demo, 10 pretraining steps, 40 env steps, 1 evaluation
# episode) takes seconds; most of it is importing torch and building robosuite envs.
TINY = {
    "base": "smoke",
    "collect": {"episodes": 1, "noise_levels": [0.0], "horizon": 40},
    "pretrain": {"steps": 10, "log_every": 5, "checkpoint_every": 10},
    "finetune": {"total_steps": 40, "env_options": {"horizon": 40}, "eval_every": 40, "eval_episodes": 0,
                 "log_every": 20, "checkpoint_every": 40},
    "evaluate": {"episodes": 1},
}


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _project_repo(repo: Path) -> Path:
    """A committed git + DVC repo with the project's code, the queue pipeline and the two tiny presets."""
    repo.mkdir()
    for name in (".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, repo / name)
    for name in ("stages", "configs", "pipeline", ".dvc", "bench/queue"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
    (repo / "configs/tiny_t.yaml").write_text(yaml.safe_dump(TINY))
    (repo / "configs/tiny_g.yaml").write_text(yaml.safe_dump({"base": "tiny_t", "policy": {"kind": "flow_g"}}))
    _run(["git", "init", "-q"], repo)
    # set in the repo, not with `git -c`: the queue workers commit each experiment with this identity
    _run(["git", "config", "user.name", "sacflow-test"], repo)
    _run(["git", "config", "user.email", "test@sacflow.invalid"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "project"], repo)
    return repo


def test_two_queue_workers_run_two_experiments_into_one_table(tmp_path: Path) -> None:
    repo = _project_repo(tmp_path / "repo")
    out = _run([sys.executable, "-m", "pipeline.cli", "table", "queue", "--presets", "tiny_t,tiny_g",
                "--seeds", "1", "--jobs", "2", "--wait", "--timeout", "500"], repo)
    assert "queued 2 experiments" in out.stderr

    exps = experiments(repo)
    assert len(exps) == 2 and {e.state for e in exps} == {"success"}
    results = [e.result for e in exps]
    assert sorted((r["preset"], r["seed"]) for r in results) == [("tiny_g", 1), ("tiny_t", 1)]
    # each experiment ran in its own temporary workspace, none in the repository's own
    workspaces = {r["workspace"] for r in results}
    assert len(workspaces) == 2 and str(repo) not in workspaces
    assert all("/.dvc/tmp/exps/" in w for w in workspaces)
    assert not (repo / "runs/queue").exists()
    # two workers: the first two experiments ran at the same time
    first, second = sorted(results, key=lambda r: r["started"])[:2]
    assert second["started"] < first["finished"]

    table = json.loads((repo / "runs/table_report/table.json").read_text())["rows"]
    for mode in ("deterministic", TRAINING_MODE):  # the evaluate stage's, and fine-tuning's last training episode's
        finetuned = {r["preset"]: r for r in table if r["agent"] == "finetuned" and r["mode"] == mode}
        assert set(finetuned) == {"tiny_t", "tiny_g"} and all(r["seeds"] == 1 for r in finetuned.values())
        for r in finetuned.values():
            assert 0.0 <= r["success_rate"] <= 1.0 and r["success_rate_ci95"] == 0.0  # one seed: no interval
    assert "| tiny_g | finetuned | deterministic | 1 |" in (repo / "runs/table_report/table.md").read_text()

    # `sacflow table gather` reads the same experiments back into the same table
    _run([sys.executable, "-m", "pipeline.cli", "table", "gather", "--out", "gathered/table.md"], repo)
    assert json.loads((repo / "gathered/table.json").read_text())["rows"] == table


def test_table_run_runs_presets_x_seeds_in_process_then_the_table(tmp_path: Path) -> None:
    sets = [arg for key, value in dotted_items({k: v for k, v in TINY.items() if k != "base"})
            for arg in ("--set", f"{key}={json.dumps(value)}")]
    _run([sys.executable, "-m", "pipeline.cli", "table", "run", "--presets", "smoke", "--seeds", "3",
          "--runs", "runs/table", "--out", "report/table.md", *sets], tmp_path)
    assert (tmp_path / "runs/table/smoke-s3/finetune/checkpoints/last.pt").is_file()
    rows = json.loads((tmp_path / "report/table.json").read_text())["rows"]
    assert {(r["preset"], r["agent"], r["seeds"]) for r in rows} == {("smoke", "pretrained", 1),
                                                                    ("smoke", "finetuned", 1)}
    _run([sys.executable, "-m", "pipeline.cli", "table", "gather", "--runs", "runs/table", "--out", "again.md"],
         tmp_path)
    assert (tmp_path / "again.md").read_text() == (tmp_path / "report/table.md").read_text()


def test_check_repo_names_what_dvc_queue_needs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    with pytest.raises(QueueError, match="no bench/queue/dvc.yaml"):
        check_repo(repo)
    (repo / "bench/queue").mkdir(parents=True)
    (repo / "bench/queue/dvc.yaml").write_text("stages: {}\n")
    with pytest.raises(QueueError, match="not a DVC repository"):
        check_repo(repo)
    (repo / ".dvc").mkdir()
    _run(["git", "init", "-q"], repo)
    with pytest.raises(QueueError, match="no git commit"):
        check_repo(repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t.invalid", "commit", "-q", "--allow-empty", "-m", "x"],
         repo)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no_global_gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    with pytest.raises(QueueError, match="git user.name is not set"):
        check_repo(repo)
    _run(["git", "config", "user.name", "t"], repo)
    _run(["git", "config", "user.email", "t@t.invalid"], repo)
    assert len(check_repo(repo)) == 40  # the HEAD commit
    # a preset that exists here but is not committed would be missing in the experiment's workspace
    with pytest.raises(QueueError, match="configs/smoke.yaml is not committed"):
        queue_table(["smoke"], [0], repo=repo)
