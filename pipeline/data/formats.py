"""The dataset formats: one table of name -> what ``source`` names, the reader's options, the reader, the writer.

The config (``pretrain.dataset.format``), :func:`pipeline.data.load_dataset`, the CLI and the docs read it.
Readers and writers are imported when called, so the table itself is cheap to import. Adding a format: a reader
module in this package and its row here (docs/design.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.data.dataset import TransitionDataset


def _read_minari(source: str | os.PathLike[str], **options: Any) -> TransitionDataset:
    from pipeline.data.minari_io import load_minari

    return load_minari(source, **options)


def _read_d4rl(source: str | os.PathLike[str], **options: Any) -> TransitionDataset:
    from pipeline.data.d4rl_io import load_d4rl

    return load_d4rl(source, **options)


def _read_robomimic(source: str | os.PathLike[str], **options: Any) -> TransitionDataset:
    from pipeline.data.robomimic_io import load_robomimic

    return load_robomimic(source, **options)


def _read_ogbench(source: str | os.PathLike[str], **options: Any) -> TransitionDataset:
    from pipeline.data.ogbench_io import load_ogbench

    return load_ogbench(source, **options)


def _write_d4rl(dataset: TransitionDataset, path: str | os.PathLike[str]) -> Any:
    from pipeline.data.d4rl_io import write_d4rl

    return write_d4rl(dataset, path)


@dataclass(frozen=True)
class DatasetFormat:
    name: str
    source: str  # what ``source`` names in this format
    options: tuple[str, ...]  # the reader's keyword options
    read: Callable[..., TransitionDataset]  # read(source, **options) -> TransitionDataset
    # write(dataset, path) for a TransitionDataset, where the format has such a writer (robomimic files are written
    # episode by episode: pipeline.data.robomimic_writer; Minari datasets by Minari's DataCollector:
    # pipeline.collection.minari)
    write: Callable[..., Any] | None = None


FORMATS: dict[str, DatasetFormat] = {f.name: f for f in (
    DatasetFormat("minari", "a Minari dataset id or dataset directory", ("obs_keys",), _read_minari),
    DatasetFormat("d4rl", "a D4RL-format .hdf5 file", ("env_name",), _read_d4rl, _write_d4rl),
    DatasetFormat("robomimic", "a robomimic .hdf5 file", ("obs_keys", "filter_key"), _read_robomimic),
    # OGBench's npz layout, read by OGBench's loader; written by pipeline.collection.ogbench_play
    DatasetFormat("ogbench", "an OGBench .npz file", ("task",), _read_ogbench),
)}
FORMAT_NAMES: tuple[str, ...] = tuple(FORMATS)


def load_dataset(fmt: str, source: str | os.PathLike[str], **options: Any) -> TransitionDataset:
    """Load offline transitions from ``source`` in format ``fmt`` (a name in :data:`FORMATS`).

    ``source`` is what the format's ``source`` says. Options by format (each reader documents its own):

    - minari: ``obs_keys`` (Dict observation spaces: top-level keys in this order; default all, sorted).
    - d4rl: ``env_name`` (D4RL name such as ``hopper-medium-v2`` for reference scores).
    - robomimic: ``obs_keys`` (ordered low-dim keys), ``filter_key`` (``mask/<filter_key>`` selects demos).
    - ogbench: ``task`` (the single-task env id whose rewards to compute, e.g. ``cube-double-singletask-task2-v0``).
    - all: ``std_floor`` (floor of the observation std in the attached normalization statistics).

    An option that belongs to another format is accepted only with the value ``None`` (so one config can feed
    every format); any other unknown option raises DatasetError. The result carries normalization statistics.
    """
    from pipeline.data.dataset import DatasetError

    spec = FORMATS.get(fmt)
    if spec is None:
        raise DatasetError(source, "fmt", f"expected a dataset format in {list(FORMATS)}, got {fmt!r}")
    known_elsewhere = {k for f in FORMATS.values() for k in f.options}
    std_floor = options.pop("std_floor", 1e-3)
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if key in spec.options:
            kwargs[key] = value
        elif key in known_elsewhere and value is None:
            continue
        else:
            valid = sorted({*spec.options, "std_floor"})
            raise DatasetError(source, key, f"unknown option for format {fmt!r}; expected one of {valid}")
    ds = spec.read(source, **kwargs)
    return ds.with_normalization(std_floor=std_floor)
