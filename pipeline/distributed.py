"""What a data-parallel (DDP) run needs beyond Lightning: its rank before ``fit``, and small object collectives.

Lightning's ``ddp`` strategy launches the other ranks by re-running the command line (the subprocess launcher), so
every rank executes a stage recipe from the top. Code that runs before ``Trainer.fit`` (seeding, writing
``config.yaml``, the progress bar) therefore needs the rank before Lightning sets ``trainer.global_rank`` inside
``fit``; :func:`process_rank` gives it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch.distributed as dist

if TYPE_CHECKING:
    import lightning as L


def process_rank(trainer: L.Trainer) -> int:
    """The global rank this process will have in ``trainer.fit`` (0 for a single process).

    Lightning computes the ranks from the cluster environment (``LOCAL_RANK``/``NODE_RANK`` set by its launcher,
    ``SLURM_PROCID`` under srun, ``RANK`` under torchrun) only when ``fit`` sets up the process group; asking the
    strategy to do it now is the same computation, done early.
    """
    set_world_ranks = getattr(trainer.strategy, "set_world_ranks", None)
    if set_world_ranks is not None:
        set_world_ranks()
    return trainer.global_rank


def world_size() -> int:
    """Processes in the running process group (1 outside one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process.

    A collective: every rank must call it at the same point of the run.
    """
    n = world_size()
    if n == 1:
        return [obj]
    gathered: list[Any] = [None] * n
    dist.all_gather_object(gathered, obj)
    return gathered
