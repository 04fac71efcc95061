"""OGBench manipulation envs: which ids are OGBench's, and registering them with Gymnasium.

``import ogbench`` registers every OGBench env; it is imported only when an OGBench id is asked for, so robosuite
and MuJoCo runs do not pay for it. The single-task ids (``cube-double-singletask-task2-v0``) are the ones the
offline-to-online recipe trains and evaluates on: reward ``(cubes at their targets) - (cubes)``, success (and
termination) when every cube is at its target, both judged on the state *before* the step, as the datasets'
relabelled rewards are (``ogbench.relabel_utils.relabel_dataset``). They report ``info["success"]``.
"""

from __future__ import annotations

import re

# The OGBench manipulation families (ManipSpace); a goal-conditioned id is ``<family>-<variant>-v0``.
OGBENCH_FAMILIES: tuple[str, ...] = ("cube", "scene", "puzzle")
_OGBENCH_ID = re.compile(rf"^(visual-)?({'|'.join(OGBENCH_FAMILIES)})-[a-z0-9x]+(-singletask(-task\d+)?)?-v\d+$")


def is_ogbench_id(env_id: str) -> bool:
    """Whether ``env_id`` names an OGBench manipulation env (``cube-double-v0``, ``cube-triple-singletask-task3-v0``)."""
    return bool(_OGBENCH_ID.match(env_id))


def register_ogbench() -> None:
    """Register OGBench's envs with Gymnasium (importing ogbench does it; idempotent)."""
    import ogbench.manipspace  # noqa: F401

