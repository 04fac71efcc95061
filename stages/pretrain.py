"""DVC stage ``pretrain``: offline pretraining on ``pretrain.dataset``.

Extra arguments pass through: ``python stages/pretrain.py --set trainer.devices=2 --set trainer.strategy=ddp``.
"""

from pipeline.workflow import pretrain, dvc_main

dvc_main(pretrain.STAGE)
