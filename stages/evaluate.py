"""DVC stage ``evaluate``: success rate / return of the agent before and after fine-tuning (params: evaluate)."""

from _stage import run

run("evaluate", "--run", "pretrained=runs/pretrain", "--run", "finetuned=runs/finetune", "--out", "runs/evaluate")
