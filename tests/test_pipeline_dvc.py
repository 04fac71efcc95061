"""The whole pipeline through real DVC in a temporary git repo, on the smoke preset.

Runs ``dvc repro`` end to end, checks every stage's outs and metrics, then swaps the pretraining dataset (robomimic
demos -> the same transitions exported as a D4RL-format file) and checks that only the stages downstream of the
change rerun.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _ran_stages(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A git repo holding the project's pipeline files, with params.yaml switched to the smoke preset."""
    repo = tmp_path_factory.mktemp("dvc_repo")
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, repo / name)
    for name in ("stages", "configs", "pipeline", ".dvc"):
        shutil.copytree(ROOT / name, repo / name, ignore=shutil.ignore_patterns("__pycache__", "tmp", "cache"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["preset"] = "smoke"
    params["collect"]["out"] = "datasets/smoke_lift_demos.hdf5"
    params["pretrain"]["dataset"]["source"] = "datasets/smoke_lift_demos.hdf5"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (repo / ".gitignore").write_text("/runs/\n__pycache__/\n")
    git = ["git", "-c", "user.name=sacflow-test", "-c", "user.email=test@sacflow.invalid"]
    _run(["git", "init", "-q"], repo)
    _run([*git, "add", "-A"], repo)
    _run([*git, "commit", "-qm", "pipeline"], repo)
    return repo


def test_dvc_repro_runs_every_stage_then_reruns_only_what_a_dataset_swap_affects(repo: Path, tmp_path: Path) -> None:
    out = _run(["dvc", "repro"], repo).stdout
    assert _ran_stages(out) == {"collect", "pretrain", "finetune", "evaluate", "report"}
    assert (repo / "datasets/smoke_lift_demos.hdf5").is_file()
    assert (repo / "runs/pretrain/checkpoints/last.pt").is_file()
    assert (repo / "runs/finetune/checkpoints/last.pt").is_file()
    evaluation = json.loads((repo / "runs/evaluate/metrics.json").read_text())
    assert set(evaluation) == {"pretrained", "finetuned"}
    for result in evaluation.values():
        assert 0.0 <= result["deterministic"]["success_rate"] <= 1.0
    report = (repo / "runs/report/report.md").read_text()
    assert "| finetuned | deterministic |" in report and "| pretrained | deterministic |" in report
    assert any(p.suffix == ".png" for p in (repo / "runs/report").iterdir())
    metrics = _run(["dvc", "metrics", "show", "--json"], repo).stdout
    assert "runs/finetune/metrics.json" in metrics
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo).stdout

    # Export the first two demos as a D4RL-format file with the project's own writer, then pretrain on it.
    # (The mask goes into a copy: the collect stage's out must stay as DVC recorded it.)
    copy = tmp_path / "demos_masked.hdf5"
    shutil.copy(repo / "datasets/smoke_lift_demos.hdf5", copy)
    with h5py.File(copy, "r+") as f:  # a robomimic filter mask, as users make them
        f.create_dataset("mask/first_two", data=np.array([b"demo_0", b"demo_1"]))
    export = ("from pipeline.data import load_dataset, write_d4rl; "
              f"write_d4rl(load_dataset('robomimic', '{copy}', filter_key='first_two'), "
              "'datasets/smoke_lift.d4rl.hdf5')")
    _run([sys.executable, "-c", export], repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["pretrain"]["dataset"] = {"format": "d4rl", "source": "datasets/smoke_lift.d4rl.hdf5"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = _run(["dvc", "repro"], repo).stdout
    # collect is untouched; everything fed by the pretraining dataset reruns (report only if its inputs changed)
    ran = _ran_stages(out)
    assert "collect" not in ran and {"pretrain", "finetune", "evaluate"} <= ran
    assert "Stage 'collect' didn't change" in out
    assert json.loads((repo / "runs/pretrain/metrics.json").read_text())["dataset"] == "datasets/smoke_lift.d4rl.hdf5"
