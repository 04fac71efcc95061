"""Shared body of the DVC stage scripts: the ``sacflow`` CLI reading ``params.yaml``."""

from __future__ import annotations

import sys

from pipeline.cli import main

PARAMS = "params.yaml"


def run(stage: str, *args: str) -> None:
    """``sacflow <stage> --params params.yaml --quiet <args>``; extra command-line args pass through."""
    sys.exit(main([stage, "--params", PARAMS, "--quiet", *args, *sys.argv[1:]]))
