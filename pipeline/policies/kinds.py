"""The policy kinds and their options: one table that the config, :func:`pipeline.policies.make_policy` and the docs
read. Plain Python (no torch), so loading a config does not import torch.

Each kind maps option -> (check, default); a check returns ``None`` for a good value or what was expected. Rules
between options (``d_model`` divisible by ``n_heads``, ...) are in :func:`check_policy_options`. Adding a kind: its
row in :data:`OPTIONS` and its branch in ``make_policy`` (docs/design.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

POLICY_KINDS: tuple[str, ...] = ("gaussian", "flow_mlp", "flow_g", "flow_t")
FLOW_KINDS: tuple[str, ...] = ("flow_mlp", "flow_g", "flow_t")

NOISE_MODES = ("fixed", "learned")  # per-step noise: a scalar sigma, or a learned log-sigma head
LOG_PROB_MODES = ("exact", "paper_code")  # the exact path density, or the public code's variant
BC_TARGETS = ("pretanh", "raw")  # flow matching's target space for dataset actions
TANH_JACOBIAN_MODES = ("floored", "exact")  # log(1 - tanh^2 + 1e-6), the public code's; or without the 1e-6
NORMS = ("post", "pre")  # Flow-T's LayerNorm placement
SIGMA_NETS = ("input", "state")  # Flow-G's learned log-sigma: from the velocity's input, or from the state alone
ACTIVATIONS = ("silu", "gelu")  # Flow-G's candidate network: SiLU (ours), GELU (the public offline-to-online code's)
# where the actor has BatchRenorm layers: none; on its observations ("input"); where the public CrossQ actors have
# them ("crossq"; each policy's docstring says where); or, for the flows, "crossq" with the layer that reads a_i
# split into one layer per rollout step ("crossq_per_step")
BATCH_RENORM_MODES = ("none", "input", "crossq", "crossq_per_step")
GAUSSIAN_BATCH_RENORM_MODES = ("none", "input", "crossq")  # a Gaussian policy has no rollout steps

Check = Callable[[Any], "str | None"]


def int_in(lo: int, hi: int) -> Check:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi
        return None if ok else f"an integer in {lo}..{hi}"

    return check


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def positive(value: Any) -> str | None:
    return None if _number(value) and value > 0 else "a finite number > 0"


def finite(value: Any) -> str | None:
    return None if _number(value) else "a finite number"


def one_of(choices: tuple[str, ...]) -> Check:
    def check(value: Any) -> str | None:
        return None if value in choices else f"one of {list(choices)}"

    return check


_FLOW: dict[str, tuple[Check, Any]] = {
    "steps": (int_in(1, 32), 4),  # K Euler steps of the rollout
    "noise": (one_of(NOISE_MODES), "fixed"),
    "noise_std": (positive, 0.1),  # the fixed sigma (noise = fixed)
    "log_prob": (one_of(LOG_PROB_MODES), "exact"),
    "bc_target": (one_of(BC_TARGETS), "pretanh"),
}
_MLP: dict[str, tuple[Check, Any]] = {"hidden": (int_in(1, 65536), 256), "layers": (int_in(1, 64), 2)}
_EVERY: dict[str, tuple[Check, Any]] = {
    "batch_renorm": (one_of(BATCH_RENORM_MODES), "none"),
    "tanh_jacobian": (one_of(TANH_JACOBIAN_MODES), "floored"),
}
OPTIONS: dict[str, dict[str, tuple[Check, Any]]] = {
    "gaussian": {**_MLP, **_EVERY, "batch_renorm": (one_of(GAUSSIAN_BATCH_RENORM_MODES), "none"),
                 "log_std_min": (finite, -5.0), "log_std_max": (finite, 2.0)},
    "flow_mlp": {**_FLOW, **_MLP, **_EVERY},
    "flow_g": {**_FLOW, **_MLP, **_EVERY,
               # 0: t is one input; N: a sinusoidal embedding of width N through an MLP (the public from-scratch code's)
               "time_embedding": (int_in(0, 4096), 0),
               "sigma_net": (one_of(SIGMA_NETS), "input"),
               "sigma_hidden": (int_in(1, 65536), 512),  # width of the state-only sigma net (sigma_net = state)
               # the gate network's own size, 0: the candidate's (hidden, layers). The public offline-to-online
               # Flow-G has a 1 x 256 gate beside a 4 x 512 candidate
               "gate_hidden": (int_in(0, 65536), 0),
               "gate_layers": (int_in(0, 64), 0),
               "candidate_activation": (one_of(ACTIVATIONS), "silu")},
    "flow_t": {**_FLOW, **_EVERY, "d_model": (int_in(1, 65536), 64), "n_layers": (int_in(1, 64), 2),
               "n_heads": (int_in(1, 1024), 4), "norm": (one_of(NORMS), "post")},
}
assert tuple(OPTIONS) == POLICY_KINDS


def _option(key: str) -> str:
    return f"policy option {key!r}"


def policy_options(kind: str) -> dict[str, Any]:
    """The options of policy ``kind`` with their defaults."""
    if kind not in OPTIONS:
        raise ValueError(f"unknown policy kind {kind!r}; expected one of {list(POLICY_KINDS)}")
    return {key: default for key, (_, default) in OPTIONS[kind].items()}


def check_policy_options(kind: str, options: dict[str, Any], name: Callable[[str], str] = _option) -> dict[str, Any]:
    """``options`` of policy ``kind`` checked, with defaults for the rest; raises ValueError naming the option.

    ``name(key)`` is how a message names an option (the config says ``config key 'policy.steps'``).
    """
    spec = OPTIONS.get(kind)
    if spec is None:
        raise ValueError(f"unknown policy kind {kind!r}; expected one of {list(POLICY_KINDS)}")
    if kind == "gaussian" and options.get("batch_renorm") == "crossq_per_step":
        raise ValueError(f"{name('batch_renorm')} = 'crossq_per_step' needs a flow policy (its layers are per rollout "
                         "step); a Gaussian policy has no rollout: use 'crossq'")
    for key, value in options.items():
        if key not in spec:
            raise ValueError(f"{name(key)}: unknown for policy kind {kind!r}; allowed: {sorted(spec)}")
        expected = spec[key][0](value)
        if expected is not None:
            raise ValueError(f"{name(key)} = {value!r} is out of range: expected {expected}")
    opts = {key: options.get(key, default) for key, (_, default) in spec.items()}
    if kind == "gaussian" and not opts["log_std_min"] < opts["log_std_max"]:
        raise ValueError(f"{name('log_std_min')} = {opts['log_std_min']} must be < {name('log_std_max')} = "
                         f"{opts['log_std_max']}")
    if kind == "flow_t" and opts["d_model"] % opts["n_heads"]:
        raise ValueError(f"{name('d_model')} = {opts['d_model']} must be divisible by {name('n_heads')} = "
                         f"{opts['n_heads']}")
    if kind == "flow_g" and opts["time_embedding"] and (opts["time_embedding"] < 4 or opts["time_embedding"] % 2):
        raise ValueError(f"{name('time_embedding')} = {opts['time_embedding']}: expected 0 or an even number >= 4")
    if kind in FLOW_KINDS and opts["noise"] == "learned" and "noise_std" in options:
        raise ValueError(f"{name('noise_std')} is the fixed sigma: it is only valid with {name('noise')} = 'fixed'")
    return opts
