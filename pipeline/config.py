"""Typed, validated run configuration.

A run is configured by layering, in order: the dataclass defaults below, a named preset (``configs/NAME.yaml``),
then ``dotted.key=value`` overrides (the CLI's ``--set`` and DVC's ``params.yaml``). Unknown keys, wrong types and
out-of-range values raise :class:`ConfigError` naming the dotted key and what is allowed, so a typo never silently
runs the defaults.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from pipeline.data.formats import FORMAT_NAMES, FORMATS
from pipeline.data.robomimic_masks import MH_OPERATORS
from pipeline.policies.kinds import (ACTIVATIONS, BATCH_RENORM_MODES, BC_TARGETS, LOG_PROB_MODES, NOISE_MODES, NORMS,
                                     POLICY_KINDS, SIGMA_NETS, TANH_JACOBIAN_MODES, check_policy_options,
                                     policy_options)

CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"

PolicyKind = Literal[POLICY_KINDS]
DatasetFormat = Literal[FORMAT_NAMES]
Precision = Literal["32-true", "bf16-mixed"]  # trainer.precision, Lightning's names (pipeline.precision)
PrecisionScope = Literal["critic", "agent", "actor"]  # trainer.precision_scope: the half of the agent in bf16
# trainer.logger: where a training stage's metric rows go through Lightning's logger interface (pipeline.tracking's
# LOGGERS table holds how each is made; tests/test_tracking.py checks the two agree)
TrackingLogger = Literal["dvclive", "tensorboard", "csv", "none"]
ALPHA_LOSSES = ("standard", "paper_code")  # sac.alpha_loss (pipeline.sac.alpha_loss)
PRETRAIN_UPDATES = ("joint", "sequential")  # pretrain.update (pipeline.lightning.offline.pretrain_update)
FLOW_MASKS = ("none", "past_terminal")  # sac.flow_mask (pipeline.sac.executed_steps_mask)
VectorizationMode = Literal["sync", "async"]  # how a vector env steps its copies (pipeline.envs.make_vector_env)


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""


@dataclass
class DatasetConfig:
    """A dataset in one of :data:`pipeline.data.FORMATS`; the reader options it sets go to that format's reader."""

    format: DatasetFormat = "robomimic"  # minari | d4rl | robomimic | ogbench
    source: str = "datasets/lift_demos.hdf5"  # Minari id, or path to an .hdf5 file
    # robomimic: ordered low-dim keys (None: the task's robomimic defaults); minari: top-level keys of a Dict space
    obs_keys: list[str] | None = None
    filter_key: str | None = None  # robomimic: mask/<filter_key> selects demos (e.g. train)
    task: str | None = None  # ogbench: the single-task env id whose rewards to compute (cube-double-singletask-task2-v0)
    env_name: str | None = None  # d4rl: the D4RL dataset name (e.g. hopper-medium-v2) for its reference scores
    normalize_obs: bool = True  # standardize observations with the dataset's mean/std

    def reader_options(self) -> dict[str, Any]:
        """The options of this format's reader that this config sets."""
        return {k: getattr(self, k) for k in FORMATS[self.format].options if getattr(self, k) is not None}


@dataclass
class CollectConfig:
    # what the collect stage makes (ogbench_play: OGBench's oracles, env_id a goal-conditioned cube env)
    kind: Literal["robosuite_demos", "minari", "ogbench_play", "none"] = "robosuite_demos"
    env_id: str = "robosuite/Lift"  # env the data is collected on
    episodes: int = 30  # number of episodes to record
    noise_levels: list[float] = field(default_factory=lambda: [0.0, 0.1, 0.3, 0.5])  # scripted demos: action noise
    # scripted demos by robomimic MH's operators (better_operator_1 ... worse_operator_2, pipeline.envs.scripted)
    # in place of noise_levels, episode i by operators[i % n], written with MH's masks; None: noise_levels
    operators: list[str] | None = None
    out: str = "datasets/lift_demos.hdf5"  # file (robomimic/d4rl) or Minari dataset id
    horizon: int | None = None  # episode step limit (None: the env's default)
    policy_run: str | None = None  # minari: a run dir (or checkpoint) whose agent acts; None: uniform random
    ref_max_score: float | None = None  # minari: reference expert return stored as ref_max_score
    # minari: reference random return stored as ref_min_score (needs ref_max_score; None: Minari measures it with
    # a uniform-random policy)
    ref_min_score: float | None = None
    workers: int = 1  # ogbench_play: processes collecting episodes (same data for any count)


@dataclass
class PolicyConfig:
    """What ``make_policy`` builds; the options, their ranges and the rules between them are
    :mod:`pipeline.policies.kinds` (each kind reads its own)."""

    kind: PolicyKind = "flow_t"  # gaussian | flow_mlp | flow_g | flow_t
    steps: int = 4  # K Euler steps of the flow rollout
    noise: Literal[NOISE_MODES] = "fixed"  # per-step noise: scalar sigma or a learned log-sigma head
    noise_std: float = 0.1  # fixed sigma of the noise-augmented rollout
    log_prob: Literal[LOG_PROB_MODES] = "exact"  # exact path density or the public code's variant
    hidden: int = 256  # MLP width (gaussian, flow_mlp, flow_g, flow_t encoders)
    layers: int = 2  # MLP hidden layers
    d_model: int = 64  # flow_t token width
    n_layers: int = 2  # flow_t decoder layers
    n_heads: int = 4  # flow_t attention heads
    norm: Literal[NORMS] = "post"  # flow_t LayerNorm placement
    # flow_g: 0 feeds t as one input; N > 0 a sinusoidal embedding of width N through an MLP (public from-scratch code)
    time_embedding: int = 0
    sigma_net: Literal[SIGMA_NETS] = "input"  # flow_g learned log-sigma: from [s, a_i, t] or from s alone
    sigma_hidden: int = 512  # flow_g: width of the 2-layer state-only sigma net (sigma_net = state)
    gate_hidden: int = 0  # flow_g: width of the gate network (0: hidden)
    gate_layers: int = 0  # flow_g: hidden layers of the gate network (0: layers)
    candidate_activation: Literal[ACTIVATIONS] = "silu"  # flow_g: the candidate network's activation
    bc_target: Literal[BC_TARGETS] = "pretanh"  # flow-matching target space for dataset actions
    # BatchRenorm layers in the actor, batch statistics in the SAC actor terms (on the actor's own rollout) and running
    # ones everywhere else, pretraining's flow matching included (it evaluates off the rollout's grid). none;
    # input: on the observations; crossq: where the public CrossQ actors have them (Gaussian: input and every
    # hidden layer; Flow-MLP / Flow-G: [s, a_i] at every step; Flow-T: s, a_i and in place of its LayerNorms);
    # crossq_per_step (flows): crossq with one layer per rollout step for the input that holds a_i (the public
    # Flow-T actor's action layer; Flow-MLP / Flow-G: their [s, a_i] layer)
    batch_renorm: Literal[BATCH_RENORM_MODES] = "none"
    # the squashing correction -sum log(1 - tanh(a_K)^2 + eps): floored (eps = 1e-6, the public code's; it stops
    # charging for |a_K| past ~7) or exact (eps = 0)
    tanh_jacobian: Literal[TANH_JACOBIAN_MODES] = "floored"
    log_std_min: float = -5.0  # gaussian: the state-dependent log std is squashed into [min, max]
    log_std_max: float = 2.0

    def policy_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for :func:`pipeline.policies.make_policy`: the options this kind has."""
        skip = {"noise_std"} if self.noise == "learned" else set()  # a learned sigma has no fixed value
        return {k: getattr(self, k) for k in policy_options(self.kind) if k not in skip}


@dataclass
class CriticConfig:
    kind: Literal["ensemble", "crossq"] = "ensemble"  # twin/N Q with targets, or CrossQ (batch renorm, no target)
    n_critics: int = 2  # ensemble size; the target takes the min over all members
    hidden: int = 256  # MLP width
    layers: int = 2  # MLP hidden layers
    layer_norm: bool = False  # LayerNorm after each hidden layer (helps offline/O2O stability)


@dataclass
class SACConfig:
    gamma: float = 0.99  # discount per decision
    tau: float = 0.005  # Polyak rate of the target critics
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    alpha_lr: float = 3e-4
    adam_beta1: float = 0.9  # Adam's first-moment decay for all three optimizers (CrossQ and its flow variants: 0.5)
    init_alpha: float = 0.2  # initial temperature
    # tune alpha towards target_entropy. A flow with fixed noise sigma can barely change its entropy, so a target
    # out of its reach makes alpha grow without bound: fix alpha there (the offline-to-online presets do)
    learn_alpha: bool = True
    target_entropy: float | None = None  # None: -|A|
    batch_size: int = 256  # per process: data-parallel pretraining averages devices x num_nodes such batches
    utd: int = 1  # critic updates per environment step
    policy_delay: int = 1  # actor and alpha update every N critic updates
    grad_clip: float | None = None  # max grad norm for actor and critic (None: off)
    actor_noise_std: float | None = None  # fixed-sigma override in the actor loss (None: policy.noise_std)
    act_noise_std: float | None = None  # fixed-sigma override when acting and in critic targets
    bc_weight: float = 0.0  # lambda_bc on ||a_pi - a_data||^2 in the actor loss (O2O)
    reward_scale: float = 1.0  # training rewards are r * scale + shift, for dataset and env alike
    reward_shift: float = 0.0  # -1 turns sparse 0/1 success rewards into -1/0
    q_agg: Literal["min", "mean"] = "min"  # ensemble reduction in targets and actor loss (public O2O code: mean)
    # temperature loss: standard, -log(alpha) (log pi + target_entropy), raises alpha while entropy is below target;
    # paper_code, alpha (log pi - target_entropy), the public O2O code's: the entropy's sign is flipped, so at its
    # target 0 alpha falls while entropy is below target
    alpha_loss: Literal[ALPHA_LOSSES] = "standard"
    # flow matching on every action of a chunk (none), or not on the tail past a terminal that cut the chunk short,
    # which repeats the last executed action (past_terminal, the public O2O code's valid mask)
    flow_mask: Literal[FLOW_MASKS] = "none"
    max_nonfinite: int = 10  # consecutive non-finite updates tolerated before the run stops
    # action chunking: H actions per decision; the policy and critic act on the H*A chunk, rewards are summed with
    # gamma^i inside it, and the critic bootstraps with gamma^H (the public offline-to-online code's option)
    chunk: int = 1
    # auto | eager | compile (torch.compile of the critic and actor steps) | compile_fullgraph (each step one
    # compiled graph: torch.func gradients, Adam written out) | cuda_graphs (each step replayed as one CUDA graph;
    # CUDA only). The last three decide on skipping a non-finite step on the device, without host syncs.
    # auto: cuda_graphs where the agent is on a CUDA device (same weights, faster: bench/README.md), eager elsewhere,
    # in data-parallel runs and under trainer.precision = bf16-mixed
    update_mode: Literal["auto", "eager", "compile", "compile_fullgraph", "cuda_graphs"] = "auto"
    # eager | compile: torch.compile of the policy rollout that picks actions (acting, evaluation, collection).
    # Compiling costs ~30 s per observation batch shape and pays back over long runs: the paper-size Flow-T acts
    # 4.4x faster at batch 1 on one CPU core (bench/act_latency.py, bench/README.md)
    act_mode: Literal["eager", "compile"] = "eager"


@dataclass
class TrainerConfig:
    accelerator: str = "auto"  # Lightning accelerator: auto | cpu | gpu
    # Processes (CPU) or GPUs per node. Above 1 (or num_nodes above 1) pretraining runs data-parallel (DDP): each
    # process samples its own sac.batch_size batch, so the global batch is devices x num_nodes x sac.batch_size.
    # Pretrain only: the online stages run in one process.
    devices: int = 1
    strategy: Literal["auto", "ddp"] = "auto"  # auto: DDP when devices x num_nodes > 1, else one process
    num_nodes: int = 1  # machines (Slurm: $SLURM_NNODES); every node runs `devices` processes
    progress: bool = True  # rich progress bars (off in CI logs)
    # 32-true | bf16-mixed: matrix products under bf16 autocast in updates and, on CUDA, in acting when the actor is
    # in precision_scope (a CPU acts in fp32, faster at acting's small batches); weights, optimizer state,
    # BatchRenorm statistics, log-probabilities, losses and output heads stay fp32. Needs a CPU with AVX-512 BF16 or
    # AMX, or a GPU with bf16; not with sac.update_mode = cuda_graphs (untested)
    precision: Precision = "32-true"
    # critic | agent | actor: which half of the agent bf16-mixed applies to (the other computes in fp32; nothing
    # changes under 32-true). The critic by default: on Hopper-v5 bf16 in both halves fell off where either half
    # alone learned like fp32, and the critic scope was level on HalfCheetah-v5 and Lift too (docs/results.md); the
    # critic's wide products are most of the update's work, so it keeps most of the speed (bench/README.md)
    precision_scope: PrecisionScope = "critic"
    # dvclive | tensorboard | csv | none: the Lightning logger each training stage also logs its metric rows to
    # (<out>/dvclive, <out>/tensorboard, <out>/lightning_csv; the DVC pipeline's params.yaml sets dvclive).
    # tensorboard is the optional extra sacflow[tensorboard]
    logger: TrackingLogger = "none"


@dataclass
class PretrainConfig:
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # what to pretrain on
    steps: int = 2000  # gradient steps
    flow_weight: float = 1.0  # weight of the flow-matching BC loss
    q_weight: float = 1.0  # weight of the -Q + alpha log pi actor term (0: BC only)
    train_critic: bool = True  # train the SAC critic on the dataset
    log_every: int = 100  # steps between metric rows
    checkpoint_every: int = 500  # steps between checkpoints
    bc_weight: float | None = None  # lambda_bc during pretraining (None: sac.bc_weight)
    # joint: one update per batch with every actor term; sequential: the public O2O code's two updates per batch,
    # critic + flow-matching BC, then critic + the q_weight / bc_weight terms (each with its own critic step)
    update: Literal[PRETRAIN_UPDATES] = "joint"


@dataclass
class FinetuneConfig:
    dataset: DatasetConfig | None = None  # offline data for the buffer (None: the pretraining dataset)
    from_pretrained: bool = True  # start from the pretrain checkpoint (False: from scratch)
    env_id: str = "robosuite/Lift"
    env_options: dict[str, Any] = field(default_factory=dict)  # passed to make_env
    total_steps: int = 10000  # environment steps
    learning_starts: int = 1000  # env steps before updates start (from scratch); 0 for O2O
    random_steps: int = 1000  # initial uniform-random actions (from scratch only)
    buffer_size: int = 1_000_000  # online transitions kept
    buffer_mode: Literal["seeded", "mixed"] = "seeded"  # offline data inside the buffer, or a fixed offline ratio
    offline_ratio: float = 0.5  # mixed: share of each batch drawn from the offline data
    eval_every: int = 5000  # env steps between evaluations
    eval_episodes: int = 10
    log_every: int = 1000  # env steps between metric rows
    checkpoint_every: int = 5000  # env steps between checkpoints
    # env copies collecting training transitions at once: every vector step adds num_envs transitions and runs
    # num_envs * sac.utd updates, so updates per env step stay sac.utd; the last vector step may pass total_steps by
    # up to num_envs - 1 steps. With one copy a killed run resumes bit-identically; with several, a resumed run
    # restarts the episodes that were in flight at its checkpoint
    num_envs: int = 1
    # sync: copies in turn in this process; async: a worker process each, stepping while this process updates
    vectorization_mode: VectorizationMode = "sync"


@dataclass
class EvaluateConfig:
    episodes: int = 20
    seed: int = 10_000  # evaluation episodes use seeds seed, seed+1, ...
    deterministic: bool = True  # epsilon = 0 rollout; stochastic evaluation is reported too when both is set
    both: bool = True  # report deterministic and stochastic acting
    # env copies running evaluation episodes at once (also fine-tuning's evaluations); episode i always starts from
    # reset seed + i, so deterministic results match one copy's up to the float rounding of batched policy calls
    num_envs: int = 1
    vectorization_mode: VectorizationMode = "async"  # async: one worker process per copy; sync: all in this process


@dataclass
class Config:
    name: str = "default"  # run name (the preset's)
    seed: int = 0  # DDP rank r samples its batches with seed + r
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # torch CPU threads. One: RL-sized nets gain little from a second thread, and OpenMP threads that share cores
    # with anything else (an env, another run) stall at every barrier (bench/README.md). None: torch default.
    threads: int | None = 1
    collect: CollectConfig = field(default_factory=CollectConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------------------------
# Range checks: (dotted key, predicate, what is allowed)
_RANGES: list[tuple[str, typing.Callable[[Any], bool], str]] = [
    ("critic.n_critics", lambda v: v >= 1, ">= 1"),
    ("critic.hidden", lambda v: v >= 1, ">= 1"),
    ("critic.layers", lambda v: v >= 1, ">= 1"),
    ("sac.gamma", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("sac.tau", lambda v: 0 < v <= 1, "in (0, 1]"),
    ("sac.actor_lr", lambda v: v > 0, "> 0"),
    ("sac.critic_lr", lambda v: v > 0, "> 0"),
    ("sac.alpha_lr", lambda v: v > 0, "> 0"),
    ("sac.adam_beta1", lambda v: 0 <= v < 1, "in [0, 1)"),
    ("sac.init_alpha", lambda v: v > 0, "> 0"),
    ("sac.batch_size", lambda v: v >= 1, ">= 1"),
    ("sac.utd", lambda v: v >= 1, ">= 1"),
    ("sac.policy_delay", lambda v: v >= 1, ">= 1"),
    ("sac.grad_clip", lambda v: v is None or v > 0, "> 0 or null"),
    ("sac.actor_noise_std", lambda v: v is None or v > 0, "> 0 or null"),
    ("sac.act_noise_std", lambda v: v is None or v > 0, "> 0 or null"),
    ("sac.bc_weight", lambda v: v >= 0, ">= 0"),
    ("sac.max_nonfinite", lambda v: v >= 1, ">= 1"),
    ("sac.chunk", lambda v: 1 <= v <= 64, "in [1, 64]"),
    ("threads", lambda v: v is None or v >= 1, ">= 1 or null"),
    ("trainer.devices", lambda v: v >= 1, ">= 1"),
    ("trainer.num_nodes", lambda v: v >= 1, ">= 1"),
    ("collect.episodes", lambda v: v >= 1, ">= 1"),
    ("collect.workers", lambda v: v >= 1, ">= 1"),
    ("pretrain.steps", lambda v: v >= 0, ">= 0"),
    ("pretrain.log_every", lambda v: v >= 1, ">= 1"),
    ("pretrain.checkpoint_every", lambda v: v >= 1, ">= 1"),
    ("finetune.total_steps", lambda v: v >= 0, ">= 0"),
    ("finetune.learning_starts", lambda v: v >= 0, ">= 0"),
    ("finetune.random_steps", lambda v: v >= 0, ">= 0"),
    ("finetune.buffer_size", lambda v: v >= 1, ">= 1"),
    ("finetune.offline_ratio", lambda v: 0 <= v <= 1, "in [0, 1]"),
    ("finetune.eval_every", lambda v: v >= 1, ">= 1"),
    ("finetune.eval_episodes", lambda v: v >= 0, ">= 0"),
    ("finetune.log_every", lambda v: v >= 1, ">= 1"),
    ("finetune.checkpoint_every", lambda v: v >= 1, ">= 1"),
    ("finetune.num_envs", lambda v: v >= 1, ">= 1"),
    ("evaluate.episodes", lambda v: v >= 1, ">= 1"),
    ("evaluate.num_envs", lambda v: v >= 1, ">= 1"),
]


def get_dotted(cfg: Any, key: str) -> Any:
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def is_data_parallel(cfg: Config) -> bool:
    """Whether a stage runs data-parallel (DDP): more than one process, or ``trainer.strategy = ddp``."""
    return cfg.trainer.devices * cfg.trainer.num_nodes > 1 or cfg.trainer.strategy == "ddp"


def as_run(cfg: Config) -> Config:
    """``cfg`` with what depends on how the stage runs decided: ``sac.update_mode: auto`` is ``eager`` in a
    data-parallel run (DDP all-reduces gradients in Lightning's backward, which only the eager update calls; on one
    process ``auto`` is decided by the device, :func:`pipeline.update.resolve_update_mode`)."""
    if cfg.sac.update_mode == "auto" and is_data_parallel(cfg):
        return dataclasses.replace(cfg, sac=dataclasses.replace(cfg.sac, update_mode="eager"))
    return cfg


def validate(cfg: Config) -> None:
    """Raise :class:`ConfigError` for the first out-of-range value, and for cross-field inconsistencies; the config
    itself is never changed."""
    for key, ok, allowed in _RANGES:
        value = get_dotted(cfg, key)
        if not ok(value):
            raise ConfigError(f"config key {key!r} = {value!r} is out of range: expected {allowed}")
    if cfg.sac.batch_size > cfg.finetune.buffer_size:
        raise ConfigError(
            f"config key 'sac.batch_size' = {cfg.sac.batch_size} is larger than 'finetune.buffer_size' = "
            f"{cfg.finetune.buffer_size}: a batch cannot be drawn from a smaller buffer"
        )
    if cfg.collect.ref_min_score is not None and cfg.collect.ref_max_score is None:
        raise ConfigError("config key 'collect.ref_min_score' is stored by Minari only with 'collect.ref_max_score': "
                          "set both, or neither")
    try:
        check_policy_options(cfg.policy.kind, cfg.policy.policy_kwargs(), name=lambda k: f"config key 'policy.{k}'")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.sac.update_mode not in ("auto", "eager") and is_data_parallel(cfg):
        raise ConfigError(
            f"config key 'sac.update_mode' = {cfg.sac.update_mode!r} bypasses Lightning's backward, which "
            f"all-reduces gradients across the {cfg.trainer.devices * cfg.trainer.num_nodes} DDP process(es) of "
            f"'trainer.devices' x 'trainer.num_nodes' (trainer.strategy = {cfg.trainer.strategy!r}): use 'eager' "
            "(or 'auto') with data-parallel training"
        )
    if cfg.sac.update_mode == "cuda_graphs" and cfg.trainer.precision != "32-true":
        raise ConfigError(
            f"config key 'sac.update_mode' = 'cuda_graphs' with 'trainer.precision' = {cfg.trainer.precision!r} "
            "has not been tested (autocast inside a graph capture): use 'eager' or 'compile', or 32-true"
        )
    if cfg.collect.operators is not None and (not cfg.collect.operators
                                              or any(op not in MH_OPERATORS for op in cfg.collect.operators)):
        raise ConfigError(f"config key 'collect.operators' = {cfg.collect.operators!r}: expected a non-empty list of "
                          f"robomimic MH operators, each one of {list(MH_OPERATORS)}")
    if cfg.pretrain.update == "sequential" and (cfg.pretrain.flow_weight <= 0 or cfg.sac.policy_delay != 1):
        raise ConfigError(
            f"config key 'pretrain.update' = 'sequential' runs a flow-matching update, then a regularized-actor "
            f"update, on each batch: it needs 'pretrain.flow_weight' > 0 (got {cfg.pretrain.flow_weight}) and "
            f"'sac.policy_delay' = 1 (got {cfg.sac.policy_delay}), or the actor would skip one of them"
        )
    if cfg.policy.noise == "learned" and (cfg.sac.actor_noise_std is not None or cfg.sac.act_noise_std is not None):
        raise ConfigError(
            "config keys 'sac.actor_noise_std' / 'sac.act_noise_std' override a fixed sigma; "
            "with policy.noise = 'learned' they must be null"
        )


# ---------------------------------------------------------------------------------------------------------------
# Building a Config from nested dicts, with type checks


_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _check_type(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` converted to ``tp`` where lossless (int -> float), or raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"config key {key!r} = {value!r} is not allowed: expected one of {list(allowed)}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"config key {key!r} = {value!r} has the wrong type: "
                          f"expected {tp}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} must be a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} = {value!r} has the wrong type: expected a list")
        (item_tp,) = typing.get_args(tp)
        return [_check_type(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r} = {value!r} has the wrong type: expected a mapping")
        return dict(value)
    if tp in (float, int) and isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        value = float(value)  # YAML 1.1 reads 3e-4 and 1e6 (no dot, unsigned exponent) as strings
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r} = {value!r} has the wrong type: expected a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)  # 1e6, 2.0
            raise ConfigError(f"config key {key!r} = {value!r} has the wrong type: expected an integer")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key {key!r} = {value!r} has the wrong type: expected true or false")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key {key!r} = {value!r} has the wrong type: expected a string")
        return value
    raise TypeError(f"unsupported config type {tp} for {key}")  # a bug in this module, not user input


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys (robomimic-style locked config)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        if k not in names:
            raise ConfigError(f"unknown config key {key!r}; allowed keys here: {sorted(names)}")
        kwargs[k] = _check_type(v, hints[k], key)
    return cls(**kwargs)


def deep_merge(base: dict[str, Any], update: dict[str, Any], schema: type | None = None) -> dict[str, Any]:
    """``update`` laid over ``base``, mappings merged key by key.

    With ``schema`` (a config dataclass), an empty mapping given for a mapping-valued field (``finetune.env_options``)
    clears it, as ``--set finetune.env_options={}`` asks; an empty config section (``finetune: {}`` in params.yaml)
    changes nothing.
    """
    hints = typing.get_type_hints(schema) if schema is not None else {}
    out = dict(base)
    for k, v in update.items():
        section = _section_type(hints.get(k))
        if isinstance(v, dict) and not v and k in hints and section is None:
            out[k] = {}
        elif isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v, section)
        else:
            out[k] = v
    return out


def _section_type(tp: Any) -> type | None:
    """The config dataclass a field holds (``DatasetConfig`` for ``DatasetConfig | None``), else None."""
    for t in (tp, *typing.get_args(tp)):
        if dataclasses.is_dataclass(t):
            return t
    return None


def parse_override(text: str) -> tuple[str, Any]:
    """``"sac.batch_size=128"`` -> ``("sac.batch_size", 128)``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    return key, yaml.safe_load(raw) if raw.strip() else None


def overrides_to_dict(overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """Turn ``["a.b=1", ...]`` or ``{"a.b": 1}`` into nested dicts."""
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    nested: dict[str, Any] = {}
    for key, value in items:
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r} conflicts with another override of {part!r}")
        node[parts[-1]] = value
    return nested



def dotted_items(nested: dict[str, Any]) -> list[tuple[str, Any]]:
    """The inverse of :func:`overrides_to_dict`: ``{"a": {"b": 1}}`` -> ``[("a.b", 1)]`` (leaves in key order).

    An empty mapping is a leaf: ``{"a": {}}`` -> ``[("a", {})]``.
    """
    items: list[tuple[str, Any]] = []
    for key, value in nested.items():
        if isinstance(value, dict) and value:
            items += [(f"{key}.{k}", v) for k, v in dotted_items(value)]
        else:
            items.append((key, value))
    return items

def list_presets() -> list[str]:
    return sorted(p.stem for p in CONFIGS_DIR.glob("*.yaml"))


def load_preset(name: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Read ``configs/NAME.yaml`` (or a path to a YAML file) as a nested dict.

    A preset may start from another one with ``base: OTHER`` and override only what differs.
    """
    path = Path(name) if name.endswith((".yaml", ".yml")) else CONFIGS_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}: no file {path}; available presets: {list_presets()}")
    if name in _seen:
        raise ConfigError(f"preset {name!r} is its own base (chain: {' -> '.join((*_seen, name))})")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"preset file {path} must hold a mapping of config sections, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is not None:
        data = deep_merge(load_preset(base, (*_seen, name)), data, Config)
    data["name"] = data.get("name") if data.get("name") and base is None else path.stem
    return data


def load_config(preset: str | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Defaults, then ``configs/<preset>.yaml``, then overrides; validated.

    ``overrides`` is a list of ``dotted.key=value`` strings (the CLI's ``--set``) or a nested mapping of config
    sections (``params.yaml``).
    """
    data: dict[str, Any] = load_preset(preset) if preset else {}
    if isinstance(overrides, dict):
        data = deep_merge(data, overrides, Config)
    elif overrides:
        data = deep_merge(data, overrides_to_dict(overrides), Config)
    return from_dict(Config, data)


def load_params(path: str | Path = "params.yaml", extra: list[str] | None = None) -> Config:
    """The config a DVC stage runs: ``params.yaml``'s ``preset`` plus its other sections as overrides."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no params file at {path}")
    params = yaml.safe_load(path.read_text()) or {}
    if not isinstance(params, dict):
        raise ConfigError(f"{path} must hold a mapping, got {type(params).__name__}")
    preset = params.pop("preset", None)
    data = deep_merge(load_preset(preset) if preset else {}, params, Config)
    if extra:
        data = deep_merge(data, overrides_to_dict(extra), Config)
    try:
        return from_dict(Config, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
