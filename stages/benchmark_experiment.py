"""DVC stage ``run`` of bench/queue/dvc.yaml: one (preset, seed) of a benchmark table as a DVC experiment."""

import argparse
import sys
from pathlib import Path

# A queued experiment runs in a temporary copy of the repository: import that copy's `pipeline` (the code the
# experiment was queued with), not an installed or PYTHONPATH one, which may be another revision.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from pipeline.experiments.tables import run_experiment
from pipeline.terminal import quiet_libraries
from pipeline.config import ConfigError

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--params", default="bench/queue/params.yaml", help="YAML with preset, seed and config")
p.add_argument("--out", default="runs/queue/run", help="run directory (collect, pretrain, finetune, evaluate)")
p.add_argument("--result", default="runs/queue/result.json", help="result record (a DVC metric)")
args = p.parse_args()
quiet_libraries()
params = yaml.safe_load(Path(args.params).read_text())
if not isinstance(params, dict):
    raise ConfigError(f"{args.params} must hold a mapping with preset, seed and config")
run_experiment(params, args.out, args.result)
