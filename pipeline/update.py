"""How a SAC update executes: optimizers, the update modes (eager, ``torch.compile``, CUDA graphs) and the guard
against non-finite steps. What an update computes is :mod:`pipeline.sac`'s (losses over a :class:`~pipeline.sac.Batch`);
this module only runs those losses' backward passes and optimizer steps, in one of three ways that give the same
weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, vjp

from pipeline.batch_renorm import DeferredStatistics
from pipeline.precision import autocast, full_precision
from pipeline.sac import Batch, SACAgent, actor_loss, alpha_loss, critic_loss


@dataclass
class Optimizers:
    actor: torch.optim.Optimizer
    critic: torch.optim.Optimizer
    alpha: torch.optim.Optimizer | None


def resolve_update_mode(mode: str, device: torch.device, precision: str = "32-true") -> str:
    """The ``sac.update_mode`` an agent on ``device`` runs: ``auto`` is ``cuda_graphs`` on CUDA in fp32, else
    ``eager`` (graphs have not been tested under bf16 autocast)."""
    if mode == "auto":
        return "cuda_graphs" if device.type == "cuda" and precision == "32-true" else "eager"
    return mode


def make_optimizers(agent: SACAgent) -> Optimizers:
    cfg = agent.cfg
    # Adam's fused kernel, on the CPU too: one pass over each weight instead of foreach's dozen (3.7x faster at the
    # paper critic's 2.1M weights, bench/README.md); the same maths, rounded in another order (last-bit
    # differences). CUDA graphs need the step counters on the device (capturable)
    kw: dict[str, object] = {"betas": (cfg.adam_beta1, 0.999), "fused": True}
    device = next(agent.parameters()).device
    if device.type == "cuda":
        mode = resolve_update_mode(cfg.update_mode, device, agent.precision)
        kw |= {"capturable": mode == "cuda_graphs"}
    return Optimizers(
        actor=torch.optim.Adam(agent.actor.parameters(), lr=cfg.actor_lr, **kw),
        critic=torch.optim.Adam(agent.critic.parameters(), lr=cfg.critic_lr, **kw),
        alpha=torch.optim.Adam([agent.log_alpha], lr=cfg.alpha_lr, **kw) if cfg.learn_alpha else None,
    )


def grad_norm(params: list[nn.Parameter], max_norm: float | None) -> torch.Tensor:
    """Total L2 gradient norm (clipped to ``max_norm`` when set); a tensor, no host sync."""
    grads = [p.grad for p in params if p.grad is not None]
    if max_norm is not None:
        return torch.nn.utils.clip_grad_norm_(params, max_norm)
    if not grads:
        return torch.zeros((), device=params[0].device if params else None)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


class NonFiniteError(RuntimeError):
    """Too many consecutive updates produced a non-finite loss or gradient."""


class SACUpdater:
    """One SAC update per call; counts updates for the policy delay and guards against non-finite steps.

    ``backward`` lets a LightningModule pass ``self.manual_backward`` (precision and strategy hooks); a bare loop
    uses ``Tensor.backward``.

    ``sac.update_mode`` (``auto``: ``cuda_graphs`` for an agent on CUDA, ``eager`` otherwise):

    - ``eager``: a non-finite loss or gradient norm is detected on the host (one sync per optimizer step) and the
      step is skipped entirely.
    - ``compile``: the critic step and the actor step (loss, backward, clipping, optimizer, Polyak) each run through
      ``torch.compile``.
    - ``compile_fullgraph``: each step is one compiled graph (:class:`_FullGraphSteps`): gradients from
      ``torch.func``, Adam's update written out on the optimizer's own state, no graph breaks.
    - ``cuda_graphs``: each step is captured once as a CUDA graph and replayed (launch overhead gone).

    The last three decide on the device: a non-finite step zeroes its gradients and restores the weights, so nothing
    non-finite reaches the parameters (Adam's moment estimates still decay once). The counters live on the device;
    reading :attr:`skipped` (done at every log row) syncs them and raises :class:`NonFiniteError` once a streak
    reached ``sac.max_nonfinite``.
    """

    def __init__(self, agent: SACAgent, optimizers: Optimizers,
                 backward: Callable[[torch.Tensor], None] | None = None, check_finite: bool = True) -> None:
        self.agent, self.opt = agent, optimizers
        device = agent.log_alpha.device
        self.mode = resolve_update_mode(agent.cfg.update_mode, device, agent.precision)
        if self.mode == "cuda_graphs" and device.type != "cuda":
            raise ValueError(f"config key 'sac.update_mode' = 'cuda_graphs' needs the agent on a CUDA device, "
                             f"got {device}")
        # False drops the eager mode's guard and with it the update's only host syncs (bench/update_throughput.py
        # measures the difference); a poisoned step is then applied
        self.check_finite = check_finite
        self.on_device = self.mode != "eager"  # guard decided on the device, counters kept there
        if self.on_device:
            # the steps run outside Lightning's wrappers: graphs and compiled code call the torch optimizers directly
            self.opt = Optimizers(_unwrap(optimizers.actor), _unwrap(optimizers.critic),
                                  _unwrap(optimizers.alpha) if optimizers.alpha is not None else None)
            backward = None
        self.backward = _outside_autocast(backward or (lambda loss: loss.backward()))
        self.updates = 0  # critic updates so far
        self._skipped = torch.zeros((), dtype=torch.long, device=device if self.on_device else "cpu")
        # per optimizer: one's success must not hide the other's failures
        self._streak = {w: torch.zeros((), dtype=torch.long, device=self._skipped.device) for w in ("critic", "actor")}
        self.last_finite_grad_norm = torch.zeros((), device=self._skipped.device)
        self.actor_params = list(agent.actor.parameters())
        self.critic_params = list(agent.critic.parameters())
        self.target_params = list(agent.critic_target.parameters()) if agent.critic_target is not None else []
        self._critic_fn: Callable[..., dict[str, torch.Tensor]] = self._critic_step
        self._actor_fn: Callable[..., dict[str, torch.Tensor]] = self._actor_step
        if self.mode == "compile":
            self._critic_fn, self._actor_fn = torch.compile(self._critic_step), torch.compile(self._actor_step)
        elif self.mode == "compile_fullgraph":
            steps = _FullGraphSteps(self)
            self._critic_fn = torch.compile(steps.critic_step, fullgraph=True)
            self._actor_fn = torch.compile(steps.actor_step, fullgraph=True)
        self._graphs: dict[tuple, _GraphedStep] = {}

    # ------------------------------------------------------------------ counters
    @property
    def skipped(self) -> int:
        """Non-finite updates skipped so far (a host sync in the device-guard modes, which also checks streaks)."""
        if self.on_device:
            for what, streak in self._streak.items():
                if int(streak) >= self.agent.cfg.max_nonfinite:
                    self._raise(what, None, None)
        return int(self._skipped)

    @property
    def nonfinite_streak(self) -> dict[str, int]:
        return {w: int(v) for w, v in self._streak.items()}

    def _raise(self, what: str, loss: torch.Tensor | None, norm: torch.Tensor | None) -> None:
        now = f" (loss={loss.item()}, grad norm={norm.item()})" if loss is not None and norm is not None else ""
        raise NonFiniteError(
            f"{int(self._streak[what])} consecutive non-finite {what} updates{now}; the last finite gradient norm "
            f"was {float(self.last_finite_grad_norm):.4g}. Lower the learning rates, set sac.grad_clip, or "
            f"raise sac.max_nonfinite"
        )

    # ------------------------------------------------------------------ one optimizer step
    def _step(self, loss: torch.Tensor, opt: torch.optim.Optimizer, params: list[nn.Parameter],
              what: str) -> tuple[torch.Tensor, torch.Tensor | bool]:
        """Backward, clip, step; returns the gradient norm and whether the step was taken (a tensor on device)."""
        opt.zero_grad(set_to_none=self.mode != "cuda_graphs")  # a graph replays into the same .grad tensors
        # Eager (the mode data-parallel runs use): a non-finite loss poisons its own gradients (the factor is
        # exactly 1 otherwise). Under DDP the averaged gradient, and so its norm, then turns non-finite on every
        # rank: all ranks skip the step together even when only one rank's batch went bad, and their weights stay
        # identical.
        self.backward(loss if self.on_device else loss * torch.where(torch.isfinite(loss), 1.0, torch.nan))
        norm = grad_norm(params, self.agent.cfg.grad_clip)
        if self.on_device:
            return norm, self._device_guarded_step(loss, norm, opt, params, what)
        if not self.check_finite:
            opt.step()
            return norm, True
        # the one host sync per optimizer step: skipping a poisoned step needs a decision on the host
        if not bool(torch.isfinite(norm) & torch.isfinite(loss)):
            self._skipped += 1
            self._streak[what] += 1
            opt.zero_grad(set_to_none=True)
            if int(self._streak[what]) >= self.agent.cfg.max_nonfinite:
                self._raise(what, loss, norm)
            return norm, False
        self._streak[what].zero_()
        self.last_finite_grad_norm = norm.detach()
        opt.step()
        return norm, True

    def _device_guarded_step(self, loss: torch.Tensor, norm: torch.Tensor, opt: torch.optim.Optimizer,
                             params: list[nn.Parameter], what: str) -> torch.Tensor:
        ok = torch.isfinite(norm) & torch.isfinite(loss)
        with torch.no_grad():
            before = [p.detach().clone() for p in params]
            for p in params:
                if p.grad is not None:  # where(), not a product: 0 * nan is nan
                    p.grad.copy_(torch.where(ok, p.grad, torch.zeros_like(p.grad)))
            opt.step()
            for p, b in zip(params, before):
                p.copy_(torch.where(ok, p, b))
            self._count(ok, norm, what)
        return ok

    def _count(self, ok: torch.Tensor, norm: torch.Tensor, what: str) -> None:
        """The device guard's counters after a step that was taken (``ok``) or skipped."""
        self._streak[what].copy_(torch.where(ok, torch.zeros_like(self._streak[what]), self._streak[what] + 1))
        self._skipped.add_((~ok).long())
        self.last_finite_grad_norm.copy_(torch.where(ok, norm.detach(), self.last_finite_grad_norm))

    # ------------------------------------------------------------------ the two halves of an update
    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        """The forward passes in the agent's precision. Backward passes leave autocast, whoever entered it (Lightning's
        precision plugin runs the whole training step under it): under autocast a backward's matrix products run in
        bf16 too, also those of the half the precision scope keeps in fp32 (the critic scope's actor then got
        gradients twice as far from fp32's as with its backward in fp32)."""
        return autocast(self.agent.precision, self.agent.log_alpha.device)

    def _critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        with self._autocast():
            loss_q, info = critic_loss(self.agent, batch)
        info["critic_grad_norm"], _ = self._step(loss_q, self.opt.critic, self.critic_params, "critic")
        self._polyak()
        return info

    def _polyak(self) -> None:
        """The target critics' Polyak average towards the critics (none for CrossQ)."""
        if self.target_params:
            with torch.no_grad():
                torch._foreach_lerp_(self.target_params, self.critic_params, self.agent.cfg.tau)

    def _steps_alpha(self, info: dict[str, torch.Tensor], q_weight: float) -> bool:
        """Whether an alpha step follows the actor step: alpha learns, and the actor's loss (with its Q term on)
        sampled the log-probabilities alpha's loss reads."""
        return self.opt.alpha is not None and "log_prob" in info and q_weight > 0

    def _actor_step(self, batch: Batch, bc_weight: float, q_weight: float,
                    flow_weight: float) -> dict[str, torch.Tensor]:
        agent = self.agent
        with self._autocast():
            loss_pi, info = actor_loss(agent, batch, bc_weight, q_weight, flow_weight)
        info["actor_grad_norm"], ok = self._step(loss_pi, self.opt.actor, self.actor_params, "actor")
        if ok is not False and self._steps_alpha(info, q_weight):
            # alpha's loss reuses the actor sample's (detached) log-probabilities: no second rollout
            self.opt.alpha.zero_grad(set_to_none=self.mode != "cuda_graphs")
            self.backward(alpha_loss(agent, info["log_prob"]))
            if self.on_device:  # a skipped actor step skips alpha too
                with torch.no_grad():
                    before = agent.log_alpha.detach().clone()
                    self.opt.alpha.step()
                    agent.log_alpha.copy_(torch.where(ok, agent.log_alpha, before))
            else:
                self.opt.alpha.step()
        info["alpha"] = agent.alpha.detach()
        return info

    def update(self, batch: Batch, bc_weight: float | None = None, q_weight: float = 1.0,
               flow_weight: float = 0.0, train_critic: bool = True) -> dict[str, torch.Tensor]:
        """Critic step, then (every ``policy_delay`` updates) actor and alpha steps, then target Polyak averaging.

        The weights select the actor objective (see :func:`actor_loss`). Returns detached scalar tensors; reading
        them costs a host sync, so callers log every N updates. In ``cuda_graphs`` mode they are the graph's
        output buffers, overwritten by the next update: read or copy them before that.
        """
        cfg = self.agent.cfg
        bc_weight = cfg.bc_weight if bc_weight is None else bc_weight
        info: dict[str, torch.Tensor] = {}
        if train_critic:
            info = self._run("critic", self._critic_fn, batch)
        self.updates += 1
        if self.updates % cfg.policy_delay == 0:
            info = {**info, **self._run("actor", self._actor_fn, batch, float(bc_weight), float(q_weight),
                                        float(flow_weight))}
        return info

    def _run(self, name: str, fn: Callable[..., dict[str, torch.Tensor]], batch: Batch,
             *weights: float) -> dict[str, torch.Tensor]:
        if self.mode != "cuda_graphs":
            return fn(batch, *weights)
        key = (name, tuple(x.shape for x in batch), weights)
        if key not in self._graphs:
            self._graphs[key] = _GraphedStep(self, lambda b: fn(b, *weights), batch)
        return self._graphs[key](batch)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, object]:
        return {"updates": self.updates, "skipped": int(self._skipped), "nonfinite_streak": self.nonfinite_streak,
                "actor": _unwrap(self.opt.actor).state_dict(), "critic": _unwrap(self.opt.critic).state_dict(),
                "alpha": _unwrap(self.opt.alpha).state_dict() if self.opt.alpha is not None else None}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.updates = int(state["updates"])
        self._skipped.fill_(int(state["skipped"]))
        for what, v in dict(state["nonfinite_streak"]).items():
            self._streak[what].fill_(int(v))
        _unwrap(self.opt.actor).load_state_dict(state["actor"])
        _unwrap(self.opt.critic).load_state_dict(state["critic"])
        if self.opt.alpha is not None and state["alpha"] is not None:
            _unwrap(self.opt.alpha).load_state_dict(state["alpha"])
        self._graphs.clear()  # the optimizers' state tensors were replaced: graphs must be captured again


def _outside_autocast(backward: Callable[[torch.Tensor], None]) -> Callable[[torch.Tensor], None]:
    """``backward`` run outside autocast, whoever entered it (see :meth:`SACUpdater._autocast`)."""

    def run(loss: torch.Tensor) -> None:
        with full_precision(loss.device.type):
            backward(loss)

    return run


class _FullGraphSteps:
    """The critic and actor steps written so ``torch.compile(fullgraph=True)`` traces each whole: the same losses
    (:mod:`pipeline.sac`), their gradients from ``torch.func.vjp`` with the trained weights swapped in
    (``functional_call``), and ``torch.optim.Adam``'s update written out on that optimizer's own state tensors, so
    checkpoints hold the same optimizer state as in every other mode. ``compile`` breaks each step into several
    graphs (at every backward, around every optimizer step); in one graph the default preset's update runs 1.63x
    eager and ``compile`` 1.24x, Gaussian SAC at CleanRL's settings 1.29x eager, 1.8x with bf16 in the critic
    (bench/README.md).

    The non-finite guard is the device guard of the other device modes: a bad step's gradients count as zero (Adam's
    moments still decay once) and its weights are restored. Batch renorm's running statistics, which a loss moves and
    a transformed function may not write, leave ``vjp`` as values (:class:`DeferredStatistics`) and are
    written after it: the numbers of writing them in place.
    """

    def __init__(self, updater: SACUpdater) -> None:
        agent = updater.agent
        self.updater, self.agent = updater, agent
        # batch renorm's running statistics leave the gradient transform as values and are written after it
        self.statistics = DeferredStatistics(agent)
        self.losses = _Losses(agent)
        named = dict(self.losses.named_parameters())
        self.names = {what: [n for n, p in named.items() if any(p is q for q in params)]
                      for what, params in (("critic", updater.critic_params), ("actor", updater.actor_params))}
        self.names["alpha"] = ["agent.log_alpha"]
        for opt in (updater.opt.actor, updater.opt.critic, updater.opt.alpha):
            if opt is not None:
                _check_plain_adam(opt)

    def _grads(self, what: str, fn: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]],
               *args: object, precision: bool = True
               ) -> tuple[list[torch.Tensor], torch.Tensor, dict[str, torch.Tensor]]:
        """Gradients of ``fn(agent, *args)``'s loss with respect to ``what``'s weights; the loss; its info. The loss
        in the agent's precision (``precision``) or in fp32, as the eager mode computes it."""
        names = self.names[what]
        values = [self.losses.get_parameter(n).detach() for n in names]

        def loss(weights: list[torch.Tensor]) -> tuple[torch.Tensor, tuple[dict[str, torch.Tensor], dict]]:
            with self.statistics.recording():
                value, info = functional_call(self.losses, dict(zip(names, weights)), (fn, *args))
                return value, (info, self.statistics.moved())

        with self.updater._autocast() if precision else contextlib.nullcontext():
            value, pullback, (info, moved) = vjp(loss, values, has_aux=True)
        with full_precision(value.device.type):  # as the other modes' backward (_outside_autocast)
            (grads,) = pullback(torch.ones_like(value))
        self.statistics.write(moved)
        return grads, value, info

    def _apply(self, what: str, opt: torch.optim.Optimizer, grads: list[torch.Tensor],
               loss: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Clip, guard and take one Adam step on ``what``'s weights; returns the gradient norm and ``ok``."""
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        max_norm = self.agent.cfg.grad_clip
        if max_norm is not None:  # clip_grad_norm_'s coefficient
            grads = [g * (max_norm / (norm + 1e-6)).clamp(max=1.0) for g in grads]
        ok = torch.isfinite(norm) & torch.isfinite(loss)
        self._adam(what, opt, [torch.where(ok, g, torch.zeros_like(g)) for g in grads], ok)
        with torch.no_grad():
            self.updater._count(ok, norm, what)
        return norm, ok

    def _adam(self, what: str, opt: torch.optim.Optimizer, grads: list[torch.Tensor], ok: torch.Tensor) -> None:
        """One Adam step on ``what``'s weights, kept only where ``ok``."""
        with torch.no_grad():
            for name, g in zip(self.names[what], grads):
                p = self.losses.get_parameter(name)
                new = _adam_step(opt, p, g)
                p.detach().copy_(torch.where(ok, new, p))

    def critic_step(self, batch: Batch) -> dict[str, torch.Tensor]:
        updater = self.updater
        grads, loss_q, info = self._grads("critic", critic_loss, batch)
        info["critic_grad_norm"], _ = self._apply("critic", updater.opt.critic, grads, loss_q)
        updater._polyak()
        return info

    def actor_step(self, batch: Batch, bc_weight: float, q_weight: float,
                   flow_weight: float) -> dict[str, torch.Tensor]:
        updater, agent = self.updater, self.agent
        grads, loss_pi, info = self._grads("actor", actor_loss, batch, bc_weight, q_weight, flow_weight)
        info["actor_grad_norm"], ok = self._apply("actor", updater.opt.actor, grads, loss_pi)
        if updater._steps_alpha(info, q_weight):
            # alpha's loss reuses the actor sample's (detached) log-probabilities; a skipped actor step skips it
            grads, _, _ = self._grads("alpha", _with_info(alpha_loss), info["log_prob"], precision=False)
            self._adam("alpha", updater.opt.alpha, grads, ok)  # unclipped, as in the other modes
        info["alpha"] = agent.alpha.detach()
        return info


class _Losses(nn.Module):
    """``forward(fn, *args) = fn(agent, *args)``: a loss of the agent as a module call, so that ``functional_call``
    can swap the trained weights in (parameter names ``agent.<name>``)."""

    def __init__(self, agent: SACAgent) -> None:
        super().__init__()
        self.agent = agent

    def forward(self, fn: Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]],
                *args: object) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return fn(self.agent, *args)


def _with_info(fn: Callable[..., torch.Tensor]) -> Callable[..., tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    return lambda agent, *args: (fn(agent, *args), {})


def _check_plain_adam(opt: torch.optim.Optimizer) -> None:
    """The written-out update is Adam's without weight decay, AMSGrad or maximize: refuse anything else."""
    opt = _unwrap(opt)
    group = opt.param_groups[0]
    if (not isinstance(opt, torch.optim.Adam) or len(opt.param_groups) != 1 or group["weight_decay"]
            or group["amsgrad"] or group["maximize"]):
        raise ValueError("sac.update_mode = 'compile_fullgraph' writes out plain Adam (no weight decay, AMSGrad or "
                         f"maximize, one parameter group); got {type(opt).__name__} with {len(opt.param_groups)} "
                         "group(s)")


def _adam_step(opt: torch.optim.Optimizer, p: nn.Parameter, grad: torch.Tensor) -> torch.Tensor:
    """``p`` after one step of ``torch.optim.Adam`` on ``grad``; updates Adam's state for ``p`` in place (creating
    it as Adam does on its first step)."""
    opt = _unwrap(opt)
    group = opt.param_groups[0]
    (beta1, beta2), lr, eps = group["betas"], group["lr"], group["eps"]
    state = opt.state[p]
    if not state:
        state.update(step=torch.zeros((), dtype=torch.float32, device=p.device), exp_avg=torch.zeros_like(p),
                     exp_avg_sq=torch.zeros_like(p))
    state["step"].add_(1)
    state["exp_avg"].lerp_(grad, 1 - beta1)
    state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1 ** state["step"]
    bias_correction2 = 1 - beta2 ** state["step"]
    denom = (state["exp_avg_sq"].sqrt() / bias_correction2.sqrt()).add_(eps)
    return p - lr / bias_correction1 * state["exp_avg"] / denom


class _GraphedStep:
    """One half of an update captured as a CUDA graph; calls copy the batch in and replay the graph.

    Capturing needs a few warm-up runs (they allocate gradients and optimizer state); their effect on the weights,
    the optimizer state, the counters and the CUDA RNG is undone before the capture, so the first replay is the
    first real update.
    """

    WARMUP = 3

    def __init__(self, updater: SACUpdater, fn: Callable[[Batch], dict[str, torch.Tensor]], batch: Batch) -> None:
        self.batch = Batch(*(x.detach().clone() for x in batch))
        # keyed by identity: optimizers update their state tensors in place, so the same objects come back
        saved = {id(t): (t, t.detach().clone()) for t in _mutable_tensors(updater)}
        saved_rng = torch.cuda.get_rng_state()
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                fn(self.batch)
        torch.cuda.current_stream().wait_stream(side)
        with torch.no_grad():
            for t in _mutable_tensors(updater):
                # tensors the warm-up created (first-ever Adam state) go back to a fresh Adam's zeros
                t.copy_(saved[id(t)][1]) if id(t) in saved else t.zero_()
        torch.cuda.set_rng_state(saved_rng)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = fn(self.batch)

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        for static, x in zip(self.batch, batch):
            static.copy_(x)
        self.graph.replay()
        return self.out


def _mutable_tensors(updater: SACUpdater) -> list[torch.Tensor]:
    """Every tensor an update writes, in a stable order: weights, buffers, optimizer state, counters."""
    tensors = [*updater.agent.parameters(), *updater.agent.buffers(), updater._skipped,
               *updater._streak.values(), updater.last_finite_grad_norm]
    for opt in (updater.opt.actor, updater.opt.critic, updater.opt.alpha):
        if opt is None:
            continue
        for group in opt.param_groups:
            for p in group["params"]:
                tensors += [v for _, v in sorted(opt.state[p].items()) if torch.is_tensor(v)] if p in opt.state else []
    return tensors


def _unwrap(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside a LightningOptimizer: loading state into the wrapper would not reach Adam."""
    return getattr(opt, "optimizer", opt)
