"""The whole pipeline through real DVC in a temporary git repo, on the smoke preset.

Runs ``dvc repro`` end to end (recording which project modules each stage process imported), checks every stage's
outs and metrics and that dvc.yaml's deps cover the code each stage ran, that editing a module marks exactly the
stages whose deps list it as changed, then swaps the pretraining dataset (robomimic demos -> the same transitions
exported as a D4RL-format file) and checks that only the stages downstream of the change rerun.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _run(cmd: list[str], cwd: Path, timeout: int = 600, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(ROOT), **(env or {})}
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


# Loaded by every Python process of `dvc repro` (PYTHONPATH): a stage script's process records the project modules
# it imported when it exits.
_IMPORT_LOGGER = """
import atexit, json, os, sys

def _record():
    if not sys.argv or not sys.argv[0].startswith("stages/"):
        return
    files = sorted({m.__file__ for n, m in list(sys.modules.items())
                    if (n == "pipeline" or n.startswith("pipeline.")) and getattr(m, "__file__", None)})
    with open(os.path.join(os.environ["SACFLOW_IMPORT_LOG"], f"{os.getpid()}.json"), "w") as f:
        json.dump({"script": sys.argv[0], "files": files}, f)

atexit.register(_record)
"""


@pytest.fixture(scope="module")
def reproduced(repo: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict[str, set[str]]]:
    """``dvc repro`` of the smoke pipeline: its output, and per stage script the project files its process
    imported (repo-relative)."""
    hook, log = tmp_path_factory.mktemp("hook"), tmp_path_factory.mktemp("imports")
    (hook / "sitecustomize.py").write_text(_IMPORT_LOGGER)
    out = _run(["dvc", "repro"], repo, env={"PYTHONPATH": f"{hook}{os.pathsep}{ROOT}",
                                            "SACFLOW_IMPORT_LOG": str(log)}).stdout
    imported: dict[str, set[str]] = {}
    for record in log.glob("*.json"):
        data = json.loads(record.read_text())
        # the stage ran the copy in the temp repo or, where that is not on sys.path first, the project's own code
        files = {str(Path(f).resolve().relative_to(root)) for f in data["files"] for root in (repo, ROOT)
                 if Path(f).resolve().is_relative_to(root)}
        imported.setdefault(Path(data["script"]).stem, set()).update(files)
    return out, imported


def _deps(repo: Path) -> dict[str, list[str]]:
    return {name: [str(d) for d in stage["deps"]] for name, stage in
            yaml.safe_load((repo / "dvc.yaml").read_text())["stages"].items()}


def _covers(deps: list[str], path: str) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def test_dvc_yaml_lists_the_code_each_stage_imports() -> None:
    from pipeline.codedeps import sync_dvc_yaml

    assert sync_dvc_yaml(ROOT / "dvc.yaml") == [], "dvc.yaml's code deps are stale: python -m pipeline.codedeps --write"


def test_dvc_yaml_params_are_the_config_sections_each_stage_reads() -> None:
    from pipeline.workflow import stages

    dvc_stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for st in stages():
        expected = ["preset", "seed", *st.sections] if st.sections else []
        assert dvc_stages[st.name].get("params", []) == expected, st.name
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    missing = {s.split(".")[0] for st in stages() for s in st.sections} - set(params)
    assert not missing, f"params.yaml has no section for {missing}"


def test_every_module_a_stage_ran_is_one_of_its_deps(repo: Path, reproduced: tuple[str, dict[str, set[str]]]) -> None:
    _, imported = reproduced
    deps = _deps(repo)
    assert set(imported) == set(deps), "every stage's process left its record"
    for stage, files in imported.items():
        assert "pipeline/workflow/__init__.py" in files
        missing = sorted(f for f in files if not _covers(deps[stage], f))
        assert missing == [], f"stage {stage} imported {missing}, which its deps in dvc.yaml do not list"


@pytest.mark.parametrize("module, some", [("pipeline/report.py", {"report"}),
                                          ("pipeline/workflow/pretrain.py", {"pretrain"}),
                                          ("pipeline/lightning/offline.py", {"pretrain", "finetune"}),
                                          ("pipeline/batch_renorm.py", {"pretrain", "finetune", "evaluate"})])
def test_editing_a_module_marks_exactly_the_stages_that_import_it(module: str, some: set[str], repo: Path,
                                                                  reproduced: tuple[str, Any]) -> None:
    from pipeline.codedeps import imported_files

    importers = {stage for stage in _deps(repo) if Path(module) in imported_files(Path(f"stages/{stage}.py"), repo)}
    expected = {stage for stage, deps in _deps(repo).items() if _covers(deps, module)}
    assert expected == importers and some <= expected
    if module in ("pipeline/report.py", "pipeline/workflow/pretrain.py"):
        assert expected == some
    path = repo / module
    original = path.read_text()
    path.write_text(original + "\n# edited\n")
    try:
        status = json.loads(_run(["dvc", "status", "--json"], repo).stdout)
    finally:
        path.write_text(original)
    assert set(status) == expected
    assert "Data and pipelines are up to date" in _run(["dvc", "status"], repo).stdout


def test_dvc_repro_runs_every_stage_then_reruns_only_what_a_dataset_swap_affects(
        repo: Path, reproduced: tuple[str, Any], tmp_path: Path) -> None:
    out, _ = reproduced
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
    # one copy of the logged rows, DVCLive's, and the report drew its curves from them
    assert not list((repo / "runs").glob("*/*.csv"))
    assert "evaluations during fine-tuning (success rate @ env step): " in report
    figures = {p.name for p in (repo / "runs/report").iterdir()}
    assert {"pretrain.png", "training.png", "eval_success_rate.png"} <= figures
    metrics = _run(["dvc", "metrics", "show", "--json"], repo).stdout
    assert "runs/finetune/metrics.json" in metrics
    # the stages' summaries, as dvc reads them from DVCLive's metrics.json
    (workspace,) = json.loads(metrics).values()  # the one revision shown: the workspace
    shown = workspace["data"]
    finetune_summary = shown["runs/finetune/dvclive/metrics.json"]["data"]["finetune"]
    assert finetune_summary["env_steps"] == json.loads((repo / "runs/finetune/metrics.json").read_text())["env_steps"]
    assert shown["runs/pretrain/dvclive/metrics.json"]["data"]["pretrain"]["steps"] > 0
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
