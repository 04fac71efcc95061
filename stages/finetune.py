"""DVC stage ``finetune``: online fine-tuning from the pretrain stage's checkpoint (params: ... finetune)."""

from _stage import run

run("finetune", "--pretrained", "runs/pretrain", "--out", "runs/finetune")
