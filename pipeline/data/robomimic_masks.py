"""robomimic's multi-human (MH) filter masks: the names its MH low_dim files carry beside ``train`` / ``valid``.

Six operators, two per proficiency, each demo by one of them. The masks (robomimic's ``merge_filter_keys.py``
calls, and the keys of its MH files): one per operator (``better_operator_1`` ...), one per proficiency
(``better``, ``okay``, ``worse``), one per union of two proficiencies (``okay_better``, ``worse_okay``,
``worse_better``), and each of those intersected with the train/valid split (``<mask>_train``, ``<mask>_valid``).
This module only names them; :func:`mh_masks` says which demos each holds.
"""

from __future__ import annotations

from collections.abc import Sequence

PROFICIENCIES = ("better", "okay", "worse")
# robomimic MH's operator masks, two per proficiency
MH_OPERATORS = tuple(f"{p}_operator_{i}" for p in PROFICIENCIES for i in (1, 2))
# the unions of two proficiencies, named as robomimic names them
PROFICIENCY_UNIONS = {"okay_better": ("okay", "better"), "worse_okay": ("worse", "okay"),
                      "worse_better": ("worse", "better")}


def proficiency_of(operator: str) -> str:
    """``better_operator_2`` -> ``better``."""
    if operator not in MH_OPERATORS:
        raise ValueError(f"operator {operator!r}: expected one of {list(MH_OPERATORS)}")
    return operator.split("_operator_")[0]


def mh_masks(operators: Sequence[str], train: Sequence[int], valid: Sequence[int]) -> dict[str, list[int]]:
    """Every MH mask over demos ``0 .. len(operators)-1``, demo ``i`` recorded by ``operators[i]``, given the
    ``train`` / ``valid`` split (demo indices): ``{mask name: sorted demo indices}``; masks with no demo are left
    out (robomimic writes only the masks of its operators)."""
    members: dict[str, set[int]] = {}
    for i, op in enumerate(operators):
        members.setdefault(op, set()).add(i)
        members.setdefault(proficiency_of(op), set()).add(i)
    for union, parts in PROFICIENCY_UNIONS.items():
        joined = set().union(*(members.get(p, set()) for p in parts))
        if joined:
            members[union] = joined
    split = {"train": set(train), "valid": set(valid)}
    out: dict[str, list[int]] = {}
    for name, demos in members.items():
        out[name] = sorted(demos)
        for part, idx in split.items():
            if demos & idx:
                out[f"{name}_{part}"] = sorted(demos & idx)
    return out
