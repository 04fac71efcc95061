"""Offline data: readers for Minari, D4RL-format and robomimic files into one ``TransitionDataset``; writers.

``load_dataset(fmt, source, **options)`` is the entry point and :data:`FORMATS` the table of formats
(:mod:`pipeline.data.formats`); see :mod:`pipeline.data.dataset` for the conventions every reader follows
(terminals vs. timeouts, episode ends, action range) and each reader module for its format's rules. Importing this
package costs nothing beyond the format table: the rest loads when first used.
"""

from __future__ import annotations

from typing import Any

from pipeline.data.formats import FORMAT_NAMES, FORMATS, load_dataset

__all__ = [
    "ACTION_TOLERANCE",
    "D4RL_REF_SCORES",
    "FORMATS",
    "FORMAT_NAMES",
    "ROBOMIMIC_LOW_DIM_KEYS",
    "DatasetError",
    "NormalizationStats",
    "TransitionDataset",
    "check_compatible",
    "compute_normalization",
    "d4rl_reference_scores",
    "load_d4rl",
    "load_dataset",
    "load_minari",
    "load_robomimic",
    "minari_root",
    "write_d4rl",
]


def __getattr__(name: str) -> Any:
    """The package's other names, imported on first use."""
    if name in ("ACTION_TOLERANCE", "DatasetError", "TransitionDataset", "check_compatible"):
        from pipeline.data import dataset as module
    elif name in ("D4RL_REF_SCORES", "d4rl_reference_scores", "load_d4rl", "write_d4rl"):
        from pipeline.data import d4rl_io as module
    elif name in ("load_minari", "minari_root"):
        from pipeline.data import minari_io as module
    elif name in ("NormalizationStats", "compute_normalization"):
        from pipeline.data import normalization as module
    elif name in ("ROBOMIMIC_LOW_DIM_KEYS", "load_robomimic"):
        from pipeline.data import robomimic_io as module
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(module, name)
