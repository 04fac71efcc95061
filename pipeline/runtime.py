"""Process-level set-up shared by every stage: device choice, thread count, seeding, RNG state capture."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"config key 'device' = {name!r}, but CUDA is not available on this machine")
    return device


# the CPU features that decide a training step's speed here: vector width, and native bf16 (trainer.precision)
SPEED_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_description() -> str:
    """``<model>, <cores> cores, flags: <the SPEED_FLAGS it has>`` (Linux), printed beside every speed figure."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                have = set(value.split())
                flags = [f for f in SPEED_FLAGS if f in have]
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, flags: {' '.join(flags) or 'none of ' + '/'.join(SPEED_FLAGS)}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def set_threads(threads: int | None) -> None:
    if threads is not None:
        torch.set_num_threads(threads)


# glibc's mallopt(3) parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
# glibc's largest mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): blocks below it come from the heap
MMAP_THRESHOLD = 32 * 2**20
# free memory the heap keeps at its top before giving it back to the kernel
TRIM_THRESHOLD = 2**30


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed memory instead of handing it back to the kernel and faulting it in again.

    A paper-size update allocates and frees megabyte activations every step; with glibc's defaults a share of them
    come back as fresh pages each time (12k minor page faults per update at the paper's sizes, 900 after this;
    about 10 % of the update, bench/README.md). Nothing changes what is computed. Skipped (returns False) off glibc
    and where the user tunes malloc already (``MALLOC_*`` variables, or a preloaded allocator).
    """
    if any(k.startswith("MALLOC_") for k in os.environ) or "LD_PRELOAD" in os.environ:
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    # the mmap threshold first: setting either ends glibc's own adjustment of both, and a heap block must be
    # reachable below the threshold for the trim threshold to matter
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


def rng_state() -> dict[str, Any]:
    """Every global RNG a run draws from, so a resumed run continues the same random streams."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
