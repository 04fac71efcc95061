"""DVC stage ``report``: runs/report/report.md with the results table and learning curves."""

from _stage import run

run("report", "--evaluate", "runs/evaluate", "--finetune", "runs/finetune", "--pretrain", "runs/pretrain",
    "--out", "runs/report")
