"""Stopping a training stage at a step boundary when the process is asked to (Slurm's SIGTERM before pre-emption).

A handler installed with :func:`stop_on` only records the request; the training loops look at it after each step
(:func:`check`), save a checkpoint of that very step and raise :class:`StopRequested`, so a requeued job resumes
exactly where this one stopped and repeats no step.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

_requested: list[int] = []  # the signals received since the last reset


class StopRequested(Exception):
    """The stage stopped as a signal asked: a training stage after saving the checkpoint of a step boundary, an
    OGBench collection with its finished episodes kept (both ``resumable``), or a collection that keeps nothing
    with nothing written."""

    def __init__(self, message: str, resumable: bool = True) -> None:
        super().__init__(message)
        self.resumable = resumable


def request_stop(signum: int, frame: FrameType | None = None) -> None:
    """Signal handler: ask the running stage to stop at its next step boundary."""
    _requested.append(signum)


def stop_on(*signals: signal.Signals) -> None:
    """Install :func:`request_stop` for ``signals`` (main thread only) and forget earlier requests."""
    _requested.clear()
    for sig in signals:
        signal.signal(sig, request_stop)


@contextmanager
def stopping_on(*signals: signal.Signals) -> Iterator[None]:
    """:func:`stop_on` for the duration of the block, then the handlers that were there before."""
    previous = {sig: signal.getsignal(sig) for sig in signals}
    stop_on(*signals)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requested.clear()


def stop_requested() -> bool:
    return bool(_requested)


def check(save: Callable[[], None], step: int) -> None:
    """After a step: if a stop was requested, ``save()`` this step's checkpoint and raise :class:`StopRequested`."""
    if _requested:
        save()
        raise StopRequested(f"stopped by signal {signal.Signals(_requested[0]).name} after step {step}, "
                            "checkpoint saved")


def check_collected(done: int, total: int, what: str, kept: str | os.PathLike[str] | None = None) -> None:
    """After an item of a collection: if a stop was requested, raise :class:`StopRequested` at once. A collector
    that keeps each finished item in ``kept`` (OGBench play episodes) can resume; one that keeps nothing stops
    before anything is written (a partial dataset is not a dataset)."""
    if _requested:
        stopped = f"stopped by signal {signal.Signals(_requested[0]).name} after {done} of {total} {what}"
        if kept is None:
            raise StopRequested(f"{stopped}, nothing written", resumable=False)
        raise StopRequested(f"{stopped}, the finished ones kept in {kept}")
