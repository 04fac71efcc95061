"""Process set-up: malloc keeps freed memory for reuse (page faults per training step), and leaves a user's
allocator settings alone."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="glibc's malloc")

# 20 activations of 4 MiB allocated and freed per round, as a training step does: minor page faults per round
ROUND_PAGES = 20 * 2**22 // 4096
PROBE = """
import resource, sys, torch
from pipeline.runtime import keep_freed_memory
print(keep_freed_memory() if sys.argv[1] == "keep" else False)
def step():
    activations = [torch.ones(2**20) for _ in range(20)]
    del activations
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    step()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


def probe(mode: str, **env: str) -> tuple[str, float]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    out = subprocess.run([sys.executable, "-c", PROBE, mode], env={**clean, **env}, capture_output=True, text=True,
                         check=True).stdout.split()
    return out[0], float(out[1])


def test_freed_activations_are_reused_instead_of_faulted_in_again() -> None:
    # Not measured against glibc's defaults: their thresholds adapt to the allocation history, so the same probe
    # faults 20k times in most runs and 4k in some; trimming at a fixed threshold (the test below) faults every page
    kept, faults = probe("keep")
    assert kept == "True"
    assert faults < ROUND_PAGES / 5


def test_a_users_malloc_settings_are_left_alone() -> None:
    kept, faults = probe("keep", MALLOC_TRIM_THRESHOLD_="131072")
    assert kept == "False"
    assert faults > ROUND_PAGES / 2  # glibc's trimming, as the user asked: the freed 80 MiB faulted in again
