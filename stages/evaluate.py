"""DVC stage ``evaluate``: the agent before and after fine-tuning on the same fixed-seed episodes."""

from pipeline.workflow import evaluate, dvc_main

dvc_main(evaluate.STAGE)
