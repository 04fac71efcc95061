"""DVC stage ``finetune``: online fine-tuning from the pretrain stage's checkpoint."""

from pipeline.workflow import finetune, dvc_main

dvc_main(finetune.STAGE)
