"""LightningModules that run the training stages (manual optimization: SAC has three optimizers)."""

from pipeline.lightning.base import fit
from pipeline.lightning.offline import OfflinePretrain
from pipeline.lightning.online import OnlineFinetune
from pipeline.lightning.steps import StepDataModule

__all__ = ["fit", "OfflinePretrain", "OnlineFinetune", "StepDataModule"]
