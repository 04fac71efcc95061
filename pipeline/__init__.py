"""sacflow: flow policies trained with SAC, offline-to-online."""

__version__ = "0.1.0"
