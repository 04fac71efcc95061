"""DVC matrix stage ``run`` of bench/table/dvc.yaml: the whole pipeline for one preset and seed in its own dir."""

import argparse

from pipeline.experiments.tables import run_preset
from pipeline.terminal import quiet_libraries

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--preset", required=True)
p.add_argument("--seed", type=int, required=True)
p.add_argument("--out", required=True)
p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
args = p.parse_args()
quiet_libraries()
run_preset(args.preset, args.seed, args.out, args.set)
