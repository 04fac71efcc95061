"""DVC stage ``collect``: make the dataset named by ``collect.out``."""

from pipeline.workflow import collect, dvc_main

dvc_main(collect.STAGE)
