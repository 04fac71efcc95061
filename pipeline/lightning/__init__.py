"""LightningModules that run the training stages (manual optimization: SAC has three optimizers)."""

from pipeline.lightning.offline import OfflinePretrain
from pipeline.lightning.online import OnlineFinetune
from pipeline.lightning.steps import StepDataModule

__all__ = ["OfflinePretrain", "OnlineFinetune", "StepDataModule"]
