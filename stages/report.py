"""DVC stage ``report``: runs/report/report.md with the results table and learning curves."""

from pipeline.workflow import report, dvc_main

dvc_main(report.STAGE)
