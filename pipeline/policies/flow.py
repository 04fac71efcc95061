"""Flow policy: noise-augmented Euler rollout, path log-likelihood, flow-matching BC loss.

docs/design.md ("The flow policy", "The exact path likelihood"). The policy integrates a velocity field over
``K`` uniform steps
(``t_i = i/K``, ``Δt = 1/K``) starting from ``a_0 ~ N(0, I)`` and outputs ``tanh(a_K)``.
Gaussian noise at every step makes each step a Gaussian transition, so the density of the whole
path is a product of Gaussians (used by SAC in place of the marginal density of the action).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.batch_renorm import ActorBatchRenorm, PerStepActorBatchRenorm
from pipeline.policies.kinds import BC_TARGETS, LOG_PROB_MODES, NOISE_MODES, TANH_JACOBIAN_MODES
from pipeline.precision import fp32_when_kept


# Pre-tanh BC targets are atanh of actions clipped to ±(1 − ATANH_CLIP_EPS): a ±1 gripper command
# then maps to ±6.1 instead of ±inf.
ATANH_CLIP_EPS = 1e-5
# Added inside the tanh Jacobian log as in the public code, so a saturated tanh gives a finite term.
TANH_JACOBIAN_EPS = 1e-6
_LOG_TANH_JACOBIAN_EPS = math.log(TANH_JACOBIAN_EPS)
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


def standard_normal(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``N(0, I)`` noise of ``shape`` with ``like``'s dtype and device, from ``generator`` when one is given."""
    return _draw(torch.randn, shape, like, generator)


def uniform(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``U[0, 1)`` samples of ``shape`` with ``like``'s dtype and device, from ``generator`` when one is given."""
    return _draw(torch.rand, shape, like, generator)


def _draw(sampler: Callable[..., Tensor], shape: tuple[int, ...], like: Tensor,
          generator: torch.Generator | None) -> Tensor:
    # torch.randn / torch.rand with generator=None take ATen's generator overload, which accepts concrete sizes
    # only: compiled code whose batch size has varied (acting on one env, then evaluating on five) would fail to
    # trace. So the keyword is passed only with a generator.
    if generator is None:
        return sampler(shape, dtype=like.dtype, device=like.device)
    return sampler(shape, dtype=like.dtype, device=like.device, generator=generator)


class VelocityNet(Protocol):
    """What :class:`FlowPolicy` needs from a velocity network (see ``velocity.py``)."""

    obs_dim: int
    act_dim: int
    learned_noise: bool

    def encode(self, obs: Tensor) -> Tensor: ...

    def __call__(self, context: Tensor, a: Tensor, t: Tensor) -> tuple[Tensor, Tensor | None]: ...


class FlowRollout(NamedTuple):
    """Everything a rollout produced, enough to recompute its density independently.

    Shapes: ``K`` steps, batch ``B``, action dim ``A``.

    - ``path``: ``[K+1, B, A]``, the pre-tanh states ``a_0 .. a_K``.
    - ``means``: ``[K, B, A]``, the transition means ``a_i + Δt·v_i``.
    - ``stds``: ``[K, B, A]``, the std of the transition ``a_i -> a_{i+1}`` actually used: ``σ_i`` in
      ``exact`` mode, ``Δt·σ_i`` in ``paper_code`` mode (noise on the velocity).
    - ``sigmas``: ``[K, B, A]``, the noise scale ``σ_i`` itself (fixed or learned).
    - ``log_prob``: ``[B]``, the log-likelihood of the path as defined by the policy's mode.
    - ``action``: ``[B, A]``, ``tanh(a_K)`` in ``[-1, 1]``.
    """

    path: Tensor
    means: Tensor
    stds: Tensor
    sigmas: Tensor
    log_prob: Tensor
    action: Tensor


def _std_normal_log_prob(x: Tensor) -> Tensor:
    """Elementwise ``log N(x; 0, 1)``, same shape as ``x``."""
    return -0.5 * x.square() - _LOG_SQRT_2PI


def tanh_log_det_jacobian(pre_tanh: Tensor, mode: str = "floored") -> Tensor:
    """``Σ_d log |d tanh(u)_d / du_d|`` for ``pre_tanh [B,A] -> [B]`` (subtracted from log π).

    ``floored`` is the public code's ``log(1 − tanh(u)² + 1e-6)``: at least ``log 1e-6`` = −13.8 per dimension, and
    flat (no gradient) once ``tanh`` saturates, so a policy that pushes ``|u|`` past ~7 pays no more for it. ``exact``
    is ``log(1 − tanh(u)²)``, finite for every ``u`` and falling by 2 per unit of ``|u|`` without bound.
    """
    if mode not in TANH_JACOBIAN_MODES:
        raise ValueError(f"tanh_jacobian must be one of {TANH_JACOBIAN_MODES}, got {mode!r}")
    # log(1 − tanh²) as 2(log 2 − u − softplus(−2u)): written as 1 − tanh(u)², it cancels in fp32 once |u| > ~4
    # (the floored term then read 0.05 off and its gradient up to 2x off at |u| = 9, and rounded differently
    # eager and compiled)
    log_sech2 = 2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))
    if mode == "floored":
        # log(exp(x) + 1e-6), the public code's function, without forming exp(x)
        log_sech2 = torch.logaddexp(log_sech2, log_sech2.new_tensor(_LOG_TANH_JACOBIAN_EPS))
    return log_sech2.sum(dim=-1)


def atanh_target(actions: Tensor) -> Tensor:
    """Pre-tanh BC target ``atanh(clip(a, ±(1 − 1e-5)))``, same shape as ``actions``."""
    bound = 1.0 - ATANH_CLIP_EPS
    return torch.atanh(actions.clamp(-bound, bound))


class FlowPolicy(nn.Module):
    """A flow policy over a velocity net, with SAC's ``sample``/``act`` interface and a BC loss.

    Rollout, with ``ε_i ~ N(0, I)`` drawn independently per batch row, action dim and step::

        a_0 = ε_0
        exact:      a_{i+1} = a_i + Δt·v_i + σ_i·ε_{i+1}
        paper_code: a_{i+1} = a_i + Δt·(v_i + σ_i·ε_{i+1})
        action = tanh(a_K)

    ``log_prob="exact"`` (default) is the exact path log-likelihood (docs/design.md)::

        log N(a_0; 0, I) + Σ_i log N(a_{i+1}; a_i + Δt·v_i, σ_i² I) − Σ_d log(1 − tanh(a_K)_d² + 1e-6)

    with the tanh term floored as in the public code (``tanh_jacobian="floored"``, the default) or without the
    ``+1e-6`` (``tanh_jacobian="exact"``; :func:`tanh_log_det_jacobian`).

    ``log_prob="paper_code"`` reproduces the public from-scratch Flow-T actor
    (``from_scratch_code/SAC_flow_transformer_jax.py``, ``TransformerFlowActor``): noise on the
    velocity, and per step only ``log N(ε_i; 0, I)`` — the ``−Σ log(Δt·σ_i)`` normalisers of the
    transitions are left out, so its "log π" depends on σ only through the tanh term. It does keep
    the initial-noise term ``log N(a_0; 0, I)`` and the tanh correction
    ``−Σ log(1 − tanh(a_K)² + 1e-6)`` (the action scale is 1 here since our actions are in
    [−1, 1]). (The public from-scratch Flow-G and Flow-MLP actors, and the offline-to-online Flow-T
    actor, use the exact form.)

    ``noise="fixed"`` uses the scalar ``noise_std`` (overridable per call); ``noise="learned"``
    uses the velocity net's ``log σ`` head, which depends on state, action and step.

    BC target: ``bc_target="pretanh"`` (default) regresses the flow onto ``atanh(clip(a))``. Since
    the policy outputs ``tanh(a_K)``, a flow that reaches the pre-tanh target makes the
    deterministic rollout reproduce the data action exactly, ±1 gripper commands included (up to the
    clip); regressing onto the raw action instead would make ``tanh`` shrink every action
    (``tanh(1) ≈ 0.76``) and saturated commands unreachable. ``bc_target="raw"`` is the public
    offline-to-online code's choice.

    Deterministic rollouts set every ε to zero, ``a_0`` included (the public O2O code still draws
    a random ``a_0`` in its deterministic mode), so :meth:`act` is a function of the state.

    ``obs_norm=True`` reads the observation through an :class:`ActorBatchRenorm` layer before the
    velocity net sees it (``policy.batch_renorm: input``, and Flow-T's ``crossq``).
    """

    def __init__(
        self,
        velocity: nn.Module,
        steps: int = 4,
        noise: str = "fixed",
        noise_std: float = 0.1,
        log_prob: str = "exact",
        bc_target: str = "pretanh",
        obs_norm: bool = False,
        tanh_jacobian: str = "floored",
    ) -> None:
        super().__init__()
        if noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
        if log_prob not in LOG_PROB_MODES:
            raise ValueError(f"log_prob must be one of {LOG_PROB_MODES}, got {log_prob!r}")
        if bc_target not in BC_TARGETS:
            raise ValueError(f"bc_target must be one of {BC_TARGETS}, got {bc_target!r}")
        if tanh_jacobian not in TANH_JACOBIAN_MODES:
            raise ValueError(f"tanh_jacobian must be one of {TANH_JACOBIAN_MODES}, got {tanh_jacobian!r}")
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 32:
            raise ValueError(f"steps must be an int in [1, 32], got {steps!r}")
        if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or not 0 < noise_std < math.inf:
            raise ValueError(f"noise_std must be a finite float > 0, got {noise_std!r}")
        for layer in velocity.modules():
            if isinstance(layer, PerStepActorBatchRenorm) and len(layer.layers) != steps:
                raise ValueError(f"the velocity net has per-step BatchRenorm layers for {len(layer.layers)} steps, "
                                 f"the policy rolls out {steps}")
        if getattr(velocity, "learned_noise", None) != (noise == "learned"):
            raise ValueError(f"noise={noise!r} needs a velocity net built with learned_noise={noise == 'learned'}")
        self.velocity = velocity
        self.obs_norm = ActorBatchRenorm(velocity.obs_dim) if obs_norm else nn.Identity()
        self.obs_dim: int = velocity.obs_dim
        self.act_dim: int = velocity.act_dim
        self.steps = steps
        self.noise = noise
        self.noise_std = float(noise_std)
        self.log_prob_mode = log_prob
        self.bc_target = bc_target
        self.tanh_jacobian = tanh_jacobian

    # ------------------------------------------------------------------ helpers
    def _check_obs(self, obs: Tensor) -> None:
        if obs.dim() != 2 or obs.shape[-1] != self.obs_dim:
            raise ValueError(f"obs must have shape [batch, {self.obs_dim}], got {tuple(obs.shape)}")

    def _resolve_noise_std(self, noise_std: float | None) -> float:
        if noise_std is None:
            return self.noise_std
        if self.noise == "learned":
            raise ValueError("noise_std cannot be given to a policy with noise='learned' (σ comes from the net)")
        if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) or not 0 < noise_std < math.inf:
            raise ValueError(f"noise_std must be a finite float > 0, got {noise_std!r}")
        return float(noise_std)

    # ------------------------------------------------------------------ rollout
    @fp32_when_kept
    def rollout(
        self,
        obs: Tensor,
        noise_std: float | None = None,
        deterministic: bool = False,
        generator: torch.Generator | None = None,
        eps: Tensor | None = None,
    ) -> FlowRollout:
        """Run the K-step noisy Euler rollout for ``obs [B,S]`` and record the whole path.

        ``noise_std`` overrides the fixed σ for this call (ValueError with ``noise="learned"``).
        ``deterministic=True`` sets every ε (``a_0`` included) to zero; ``log_prob`` is then the
        density of that zero-noise path and has no sampling meaning. ``generator`` optionally
        drives the noise; ``eps [K+1,B,A]`` supplies it instead (``eps[0]`` is ``a_0``): common
        random numbers across policies, or a leaf whose gradient gives ``∂/∂a_i`` along the path
        (:func:`pipeline.diagnostics.rollout_gradient_profile`). Gradients flow from ``action`` and
        ``log_prob`` to every parameter.
        """
        self._check_obs(obs)
        sigma_fixed = self._resolve_noise_std(noise_std)
        batch, k, dt = obs.shape[0], self.steps, 1.0 / self.steps
        shape = (k + 1, batch, self.act_dim)
        # All noise is drawn in one call with the full [K+1, B, A] shape: independent per step,
        # per batch row and per action dimension.
        if eps is not None:
            if deterministic or generator is not None:
                raise ValueError("eps cannot be combined with deterministic=True or a generator")
            if tuple(eps.shape) != shape:
                raise ValueError(f"eps must have shape [K+1, batch, act_dim] = {list(shape)}, got {list(eps.shape)}")
        elif deterministic:
            eps = torch.zeros(shape, dtype=obs.dtype, device=obs.device)
        else:
            eps = standard_normal(shape, obs, generator)

        context = self.velocity.encode(self.obs_norm(obs))  # once per rollout, reused at every step
        a = eps[0]
        path, means, stds, sigmas = [a], [], [], []
        log_prob = _std_normal_log_prob(a).sum(dim=-1)
        for i in range(k):
            t = torch.full((batch, 1), i * dt, dtype=obs.dtype, device=obs.device)
            v, log_sigma = self.velocity(context, a, t, step=i)
            if log_sigma is None:
                log_sigma = torch.full_like(v, math.log(sigma_fixed))
            sigma = log_sigma.exp()
            mean = a + dt * v
            exact = self.log_prob_mode == "exact"
            std = sigma if exact else dt * sigma
            a = mean + std * eps[i + 1]
            # The standardised residual (a_{i+1} − mean)/std is ε_{i+1} by construction; using ε
            # directly gives the same value and gradient without the round-off of the subtraction.
            step_lp = _std_normal_log_prob(eps[i + 1])
            if exact:
                step_lp = step_lp - log_sigma  # the −log σ_i normaliser (absent from paper_code)
            log_prob = log_prob + step_lp.sum(dim=-1)
            path.append(a)
            means.append(mean)
            stds.append(std)
            sigmas.append(sigma)
        log_prob = log_prob - tanh_log_det_jacobian(a, self.tanh_jacobian)
        return FlowRollout(
            path=torch.stack(path),
            means=torch.stack(means),
            stds=torch.stack(stds),
            sigmas=torch.stack(sigmas),
            log_prob=log_prob,
            action=torch.tanh(a),
        )

    # ------------------------------------------------------------------ SAC interface
    def sample(
        self, obs: Tensor, noise_std: float | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reparameterized sample: ``obs [B,S] -> (action [B,A] in [-1,1], log_prob [B])``.

        ``log_prob`` is not detached: the entropy term of the actor loss trains the policy through
        it. ``noise_std`` overrides the fixed σ for this call (e.g. 0.05 in the actor loss, 0.02
        when acting and in critic targets); it raises ValueError with ``noise="learned"``.
        """
        r = self.rollout(obs, noise_std=noise_std, generator=generator)
        return r.action, r.log_prob

    def sample_with_log_sigma(
        self, obs: Tensor, noise_std: float | None = None, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """:meth:`sample` plus ``log_sigma [B]``, the mean of ``log σ_i`` over steps and action dims (detached).

        With ``noise="learned"`` this is where a σ running to its bound shows (``log_sigma`` in train.csv); with
        fixed noise it is ``log noise_std``.
        """
        r = self.rollout(obs, noise_std=noise_std, generator=generator)
        return r.action, r.log_prob, r.sigmas.detach().log().mean(dim=(0, 2))

    @torch.no_grad()
    def act(self, obs: Tensor, deterministic: bool = True, noise_std: float | None = None) -> Tensor:
        """Action for acting, without gradients: ``obs [B,S] -> action [B,A]`` in [-1, 1].

        ``deterministic=True`` runs the zero-noise rollout (no random numbers are drawn).
        """
        return self.rollout(obs, noise_std=noise_std, deterministic=deterministic).action

    def forward(self, obs: Tensor, noise_std: float | None = None) -> tuple[Tensor, Tensor]:
        """Same as :meth:`sample`."""
        return self.sample(obs, noise_std=noise_std)

    # ------------------------------------------------------------------ offline BC
    def bc_target_of(self, actions: Tensor) -> Tensor:
        """The point ``x1 [B,A]`` the flow is regressed onto for dataset ``actions [B,A]``."""
        return atanh_target(actions) if self.bc_target == "pretanh" else actions

    @fp32_when_kept
    def bc_loss(self, obs: Tensor, actions: Tensor, generator: torch.Generator | None = None,
                mask: Tensor | None = None) -> Tensor:
        """Rectified-flow BC loss for ``obs [B,S]``, dataset ``actions [B,A]`` in [-1, 1] -> scalar.

        ``‖v(t, (1−t)·a_0 + t·x1, s) − (x1 − a_0)‖²`` with ``t ~ U[0,1]``, ``a_0 ~ N(0, I)``, ``x1``
        from :meth:`bc_target_of`, averaged over batch and action dimensions (the public code's
        scaling, so its loss weights carry over). ``mask [B,A]`` (0/1) zeroes the error of action dimensions
        that must not be imitated; the mean still runs over all ``B·A`` entries, as the public code's.
        """
        self._check_obs(obs)
        if actions.shape != (obs.shape[0], self.act_dim):
            raise ValueError(f"actions must have shape [{obs.shape[0]}, {self.act_dim}], got {tuple(actions.shape)}")
        x1 = self.bc_target_of(actions)
        a0 = standard_normal(x1.shape, x1, generator)
        t = uniform((x1.shape[0], 1), x1, generator)
        v, _ = self.velocity(self.velocity.encode(self.obs_norm(obs)), (1.0 - t) * a0 + t * x1, t)
        err = (v - (x1 - a0)).square()
        return (err if mask is None else err * mask).mean()
