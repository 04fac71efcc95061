"""The "data" of an RL stage is a step counter: the DataModule yields step indices from where a run resumes.

Lightning's ``max_steps`` counts optimizer steps (three per SAC update here), so stages bound their length with
the number of indices this yields and ``max_epochs=1`` instead.
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset


class StepRange(IterableDataset):
    def __init__(self, start: int, stop: int, stride: int = 1) -> None:
        self.start, self.stop, self.stride = start, stop, stride

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop, self.stride))


class StepDataModule(L.LightningDataModule):
    """Yields ``start, start + stride, ...`` below ``stop``; ``start`` is where a resumed run picks up.

    ``stride``: steps one ``training_step`` takes (fine-tuning with N env copies takes N env steps at a time).
    """

    def __init__(self, start: int, stop: int, stride: int = 1) -> None:
        super().__init__()
        self.start, self.stop, self.stride = start, stop, stride

    def train_dataloader(self) -> DataLoader:
        # batch_size=None: one plain int per training_step, no collation, no worker processes. A private
        # generator: the default one would draw a base seed from the global RNG, shifting a resumed run's stream.
        return DataLoader(StepRange(self.start, self.stop, self.stride), batch_size=None, collate_fn=_identity,
                          generator=torch.Generator())


def _identity(x: int) -> torch.Tensor | int:
    return x
