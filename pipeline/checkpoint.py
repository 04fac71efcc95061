"""Atomic checkpoints with one previous generation kept.

``save_checkpoint`` writes ``<name>.pt`` through a temp file, fsync and ``os.replace``; the file it replaces is
kept as ``<name>.prev.pt``. ``load_checkpoint`` falls back to the previous generation, with a warning, when the
latest one is truncated or corrupt, so a crash during a write never costs more than one checkpoint interval.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch


class CheckpointError(RuntimeError):
    """No readable checkpoint exists where one was expected."""


def atomic_write(path: str | Path, write: Any) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    The file object is opened ``w+b`` (h5py reads back what it writes), so a crash leaves either the old file
    or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates the file 0600; give it the mode open() would (0666 less the umask), so others can read
        # a shared dataset or run folder as they can files written by h5py, robosuite or robomimic
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "w+b") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _umask() -> int:
    """The process umask (reading it means setting it: set it back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def previous_path(path: str | Path) -> Path:
    path = Path(path)
    return path.with_name(path.stem + ".prev" + path.suffix)


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` atomically to ``path``; the checkpoint it replaces becomes ``<stem>.prev<suffix>``."""
    path = Path(path)
    if path.exists():
        os.replace(path, previous_path(path))
    atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load ``path``, or its previous generation if ``path`` is missing or unreadable."""
    path = Path(path)
    candidates = [p for p in (path, previous_path(path)) if p.exists()]
    if not candidates:
        raise CheckpointError(f"no checkpoint at {path} (nor {previous_path(path).name})")
    errors = []
    for candidate in candidates:
        try:
            state = torch.load(candidate, map_location=map_location, weights_only=False)
            if not isinstance(state, dict):
                raise ValueError(f"expected a dict, found {type(state).__name__}")
        except Exception as e:  # noqa: BLE001 - any unreadable file means: try the previous generation
            errors.append(f"{candidate}: {type(e).__name__}: {e}")
            continue
        if candidate != path:
            why = errors[0] if errors else "missing: a save was interrupted"
            warnings.warn(f"checkpoint {path} is unreadable ({why}); resuming from {candidate}", stacklevel=2)
        return state
    raise CheckpointError("no readable checkpoint: " + "; ".join(errors))


def find_checkpoint(path: str | Path) -> Path | None:
    """The checkpoint to resume from, if any generation of ``path`` exists."""
    path = Path(path)
    return path if path.exists() or previous_path(path).exists() else None


RUN_CHECKPOINT = Path("checkpoints") / "last.pt"


def run_checkpoint(run: str | Path) -> Path:
    """A stage's checkpoint: ``run`` itself if it is a file, else ``run/checkpoints/last.pt``."""
    run = Path(run)
    return run / RUN_CHECKPOINT if run.is_dir() else run
