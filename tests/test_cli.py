"""The ``sacflow`` console script: bad input paths, presets, info, and resuming a stage on the same --out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pipeline.cli import main
from conftest import tiny_d4rl


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_unknown_preset_is_a_clear_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["pretrain", "--preset", "no_such_preset", "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    err = captured.out + captured.err
    assert "no_such_preset" in err and "smoke" in err  # names the preset and lists the available ones


@pytest.mark.parametrize(("override", "named"), [
    ("sac.batchsize=3", "sac.batchsize"),
    ("policy.steps=0", "policy.steps"),
    ("sac.actor_lr=-1", "sac.actor_lr"),
    ("policy.kind=flow_x", "policy.kind"),
    ("finetune.total_steps=many", "finetune.total_steps"),
    ("nodots", "nodots"),
])
def test_bad_overrides_name_the_key(override: str, named: str, capsys: pytest.CaptureFixture[str],
                                    tmp_path: Path) -> None:
    assert main(["pretrain", "--preset", "smoke", "--set", override, "--out", str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert named in captured.out + captured.err
    assert not (tmp_path / "checkpoints").exists()  # nothing written on a config error


def test_missing_dataset_file_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.hdf5"
    code = main(["pretrain", "--preset", "smoke", "--quiet", "--set", f"pretrain.dataset.source={missing}",
                 "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 2
    assert "nope.hdf5" in captured.out + captured.err


def test_from_scratch_preset_in_the_dvc_pipeline_points_to_what_runs_it(capsys: pytest.CaptureFixture[str],
                                                                         tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("preset: hopper_scratch_flow_g\nseed: 0\n")
    assert main(["collect", "--params", str(params), "--quiet", "--out", str(tmp_path / "collect")]) == 2
    captured = capsys.readouterr()
    err = captured.out + captured.err
    assert "hopper_scratch_flow_g" in err and "sacflow finetune" in err and "bench/table" in err


def test_presets_and_info_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["presets"]) == 0
    assert "smoke" in capsys.readouterr().out
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "torch" in out and "threads" in out


def _sacflow(*argv: str) -> subprocess.CompletedProcess[str]:
    """The sacflow command line in a fresh process, in an 80-column terminal."""
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *argv], capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "80", "PYTHONPATH": str(Path(__file__).resolve().parents[1])})


def test_presets_show_every_name_whole_in_80_columns() -> None:
    from pipeline.config import list_presets

    proc = _sacflow("presets")
    assert proc.returncode == 0, proc.stderr
    first_cells = {line.split()[0] for line in proc.stdout.splitlines() if line.strip()}
    assert set(list_presets()) <= first_cells


def test_library_warnings_only_with_verbose_and_a_version() -> None:
    quiet, verbose = _sacflow("info"), _sacflow("info", "--verbose")
    assert quiet.returncode == verbose.returncode == 0
    assert "robosuite WARNING" not in quiet.stderr + quiet.stdout
    assert "robosuite WARNING" in verbose.stderr + verbose.stdout  # the filter hides them, nothing else does
    assert "AMD" in quiet.stdout or "Intel" in quiet.stdout or "flags" in quiet.stdout
    version = _sacflow("--version")
    assert version.returncode == 0 and version.stdout.startswith("sacflow ")
    help_ = _sacflow("--help")
    assert "``" not in help_.stdout and "--version" in help_.stdout


def test_stages_without_a_trainer_do_not_import_lightning() -> None:
    # importing Lightning costs a process seconds; collect, evaluate, report and the queue commands build no Trainer
    code = ("import sys; import pipeline.cli, pipeline.workflow.collect, pipeline.workflow.evaluate, "
            "pipeline.workflow.report, pipeline.experiments.tables; pipeline.cli.build_parser(); "
            "sys.exit('lightning' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert proc.returncode == 0, f"Lightning was imported: {proc.stderr[-2000:]}"


def test_pretrain_resumes_on_the_same_out(tmp_path: Path) -> None:
    data = tiny_d4rl(tmp_path / "tiny.hdf5")
    args = ["pretrain", "--preset", "smoke", "--quiet", "--set", "pretrain.dataset.format=d4rl",
            "--set", f"pretrain.dataset.source={data}", "--out", str(tmp_path / "run")]
    assert main([*args, "--set", "pretrain.steps=20"]) == 0
    first = json.loads((tmp_path / "run/metrics.json").read_text())
    assert first["resumed_from"] == 0
    assert main([*args, "--set", "pretrain.steps=40"]) == 0
    second = json.loads((tmp_path / "run/metrics.json").read_text())
    assert second["resumed_from"] == 20
    rows = (tmp_path / "run/pretrain.csv").read_text().strip().splitlines()
    steps = [int(r.split(",")[0]) for r in rows[1:]]
    assert steps == [10, 20, 30, 40]  # no step logged twice, none lost


def test_a_changed_config_starts_fresh_instead_of_resuming(tmp_path: Path) -> None:
    """DVC keeps persisted checkpoints across reruns: a rerun with other hyperparameters must not resume them."""
    data = tiny_d4rl(tmp_path / "tiny.hdf5")
    args = ["pretrain", "--preset", "smoke", "--quiet", "--set", "pretrain.dataset.format=d4rl",
            "--set", f"pretrain.dataset.source={data}", "--set", "pretrain.steps=20", "--out", str(tmp_path / "run")]
    assert main(args) == 0
    with pytest.warns(UserWarning, match="starting this run fresh"):
        assert main([*args, "--set", "sac.actor_lr=1e-4"]) == 0
    assert json.loads((tmp_path / "run/metrics.json").read_text())["resumed_from"] == 0
