"""Offline data: loaders for Minari, D4RL-format and robomimic files into one ``TransitionDataset``; writers.

``load_dataset(fmt, source, **options)`` is the entry point; see :mod:`pipeline.data.dataset` for the
conventions every loader follows (terminals vs. timeouts, episode ends, action range) and each loader module
for its format's rules.
"""

from pipeline.data.d4rl_io import D4RL_REF_SCORES, d4rl_reference_scores, load_d4rl, write_d4rl
from pipeline.data.dataset import (
    ACTION_TOLERANCE,
    FORMATS,
    DatasetError,
    TransitionDataset,
    check_compatible,
    load_dataset,
)
from pipeline.data.minari_io import collect_minari, load_minari, minari_root
from pipeline.data.normalization import NormalizationStats, compute_normalization
from pipeline.data.robomimic_io import ROBOMIMIC_LOW_DIM_KEYS, load_robomimic

__all__ = [
    "ACTION_TOLERANCE",
    "D4RL_REF_SCORES",
    "FORMATS",
    "ROBOMIMIC_LOW_DIM_KEYS",
    "DatasetError",
    "NormalizationStats",
    "TransitionDataset",
    "check_compatible",
    "collect_minari",
    "compute_normalization",
    "d4rl_reference_scores",
    "load_d4rl",
    "load_dataset",
    "load_minari",
    "load_robomimic",
    "minari_root",
    "write_d4rl",
]
