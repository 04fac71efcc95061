"""DVC stage ``table`` of bench/table/dvc.yaml: mean and 95 % CI over seeds of every finished run."""

import argparse

from pipeline.experiments.tables import gather_table

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("--runs", default="runs/table")
p.add_argument("--out", default="runs/table_report/table.md")
args = p.parse_args()
rows = gather_table(args.runs, args.out)
print(open(args.out).read())
