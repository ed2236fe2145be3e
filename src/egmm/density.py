"""The expressive Gaussian mixture density p(x|θ) of Menary & Price.

    p(x|θ) = p(u|θ) · |dh/dx|,   u = h(x)  (the latent projection, :class:`egmm.LatentProjection`)
    p(u|θ) = Π_i p_i(u_i | u_<i, θ)

Each continuous conditional is a mixture of N_G Gaussians *truncated to the latent box*
[u_lo, u_hi] (each component divided by its mass inside the box), so the latent density — and
hence the data-space density — integrates to one over the support and sampling never produces
values outside it. Discrete observables get a categorical conditional over {lo, …, hi}.

References:
    Menary & Price, Sections 3-6 (Eq. 7-10) and Fig. 4.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from egmm.base import (
    TrainedModel,
    is_real_number,
    sample_count,
    torch_generator,
    whole_number,
)
from egmm.errors import InputError
from egmm.latent import LatentProjection
from egmm.networks import (
    CategoricalNet,
    ConditionalGMMNet,
    check_activation,
    ones_row,
    ones_row_sum,
    records_graph,
)
from egmm.observables import ObservableSpace
from egmm.serialization import SavableModel

__all__ = ["GMMDensity", "truncated_normal_log_mass"]

_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_SQRT_HALF = math.sqrt(0.5)
_LOG_2 = math.log(2.0)

#: default knobs: paper Table 6
GMM_DEFAULTS: dict[str, Any] = {
    "n_gauss": 20, "A1": 50, "A2": 0, "B1": 50, "B2": 20, "C": 2, "D": 3,
    "s_f": 0.01, "s_mu": 0.01, "s_sigma": 0.01, "f_sigma": 0.25, "eps": 1e-4,
    "categorical_hidden": (300, 200),
    # not in the paper: "silu" makes the likelihood smooth in θ (see egmm.networks.ACTIVATIONS)
    "activation": "leaky_relu",
    # not in the paper: extra θ features at the network input (see THETA_FEATURES)
    "theta_features": "linear",
}

#: ``theta_features`` knob → the θ-branch inputs, made from θ' (θ mapped onto [−2, 2]) and,
#: about θ = 0, z = θ · 2/halfwidth: "linear" θ' (the paper); "abs" θ' and |z|, for a density
#: known to depend on a parameter's magnitude with a cusp at θ = 0; "quadratic" θ' and z², for
#: a density known to be quadratic in θ (EFT coefficients, interference + squared terms);
#: "even" |z| alone, for a conditional known to be even in every parameter (to depend on |θ|
#: only, e.g. one with no interference term): its network cannot represent any odd part.
#: ``theta_features`` may also be one kind per observable (the networks see different inputs).
THETA_FEATURES: dict[str, tuple[str, ...]] = {
    "linear": ("linear",), "abs": ("linear", "abs"), "quadratic": ("linear", "square"),
    "even": ("abs",)}
# the feature blocks, in the order scale_theta concatenates those any network uses
_FEATURE_BLOCKS = ("linear", "abs", "square")


# erfc's vectorised kernels leave their fast path where the result underflows (20-40× slower
# per element), and a trained mixture has many components far outside the box. Arguments are
# therefore capped where erfc is still a normal number, and any mass below MASS_FLOOR — which
# the cap could perturb by more than rounding — is recomputed exactly with log_ndtr.
_ERFC_CAP = {torch.float64: 26.0, torch.float32: 9.0}          # erfc(cap) ≈ 6e-296, 4e-37
_MASS_FLOOR = {torch.float64: 1e-280, torch.float32: 1e-28}
# ... and where a graph is recorded, below about the square root of the smallest normal number:
# a second derivative of log(mass) goes as 1/mass², which must not overflow (score regression
# in egmm.train, exact Hessians differentiate twice)
_MASS_FLOOR_GRAPH = {torch.float64: 1e-150, torch.float32: 1e-17}
# exp likewise: terms more than 80 below the largest of a logsumexp (relative weight
# < 2e-35) are evaluated at −80, a change far below float64 rounding.
_LSE_FLOOR = -80.0
# events from which _draw_index sums its cumulative probabilities row by row (fewer: one
# torch.cumsum, whose per-call cost the row loop's 19 operations exceed)
_ROW_SCAN_MIN = 1024


def truncated_normal_log_mass(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Φ(b) − Φ(a)) for a ≤ b, accurate in both tails (−inf for an empty interval).

    Reflecting so that the interval lies mostly on the negative side keeps Φ away from 1,
    where Φ(b) − Φ(a) would cancel catastrophically; there Φ(x) = erfc(−x/√2)/2 has full
    relative precision (torch's ``ndtr`` does not), so the difference of two ``erfc`` values
    is accurate. Masses that underflow or come near it (an interval far in a tail) are
    recomputed, for those entries only, with the slower ``log_ndtr`` form.
    """
    cap = _ERFC_CAP.get(a.dtype)
    if cap is None:  # other precisions: the exact form throughout
        return _log_mass_exact(a, b)
    flip = (a + b) > 0
    lo = torch.where(flip, -b, a)
    hi = torch.where(flip, -a, b)
    mass = 0.5 * (torch.special.erfc((hi * -_SQRT_HALF).clamp(max=cap))
                  - torch.special.erfc((lo * -_SQRT_HALF).clamp(max=cap)))
    floor = (_MASS_FLOOR_GRAPH if records_graph(mass) else _MASS_FLOOR)[a.dtype]
    tiny = mass < floor
    log_mass = torch.log(torch.where(tiny, torch.ones_like(mass), mass))
    if not bool(tiny.any()):
        return log_mass
    idx = _flat_index(tiny)
    exact = _log_mass_exact(torch.take(lo.expand_as(tiny), idx),
                            torch.take(hi.expand_as(tiny), idx))
    return log_mass.reshape(-1).index_copy(0, idx, exact).view_as(log_mass)


def _flat_index(mask: torch.Tensor) -> torch.Tensor:
    """Positions of ``mask``'s true entries in its flattened (row-major) order, for
    ``torch.take`` and ``index_copy``: a few entries picked and replaced ~3x faster than by
    ``masked_select``/``masked_scatter``."""
    return torch.nonzero(mask.reshape(-1)).squeeze(1)


def _log_mass_exact(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Φ(b) − Φ(a)) for a ≤ b from ``log_ndtr``, the interval reflected onto the lower
    tail: exact far in either tail, slower than the erfc form (its fallback)."""
    flip = (a + b) > 0
    lo = torch.where(flip, -b, a)
    hi = torch.where(flip, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + torch.log1p(-torch.exp(torch.special.log_ndtr(lo) - log_hi))


def _logsumexp(t: torch.Tensor, overwrite: bool = False, dim: int = -1) -> torch.Tensor:
    """log Σ exp(t) over axis ``dim``, with terms below max − 80 evaluated at max − 80
    (rows whose largest term is ±inf give that value, as ``torch.logsumexp``).
    ``overwrite``: ``t`` is a temporary that may be used as scratch (when no graph is
    recorded)."""
    top = t.detach().amax(dim, keepdim=True)
    finite = torch.isfinite(top)
    m = torch.where(finite, top, torch.zeros_like(top))
    if not overwrite or records_graph(t):
        e = torch.exp((t - m).clamp(min=_LSE_FLOOR))
    else:
        e = t.sub_(m).clamp_(min=_LSE_FLOOR).exp_()
    out = torch.log(e.sum(dim)) + m.squeeze(dim)
    return torch.where(finite.squeeze(dim), out, top.squeeze(dim))


def _truncated_log_norm(mu: torch.Tensor, sigma: torch.Tensor, lo: float, hi: float
                        ) -> torch.Tensor:
    """log(2 Z_g σ_g) of Gaussian components (μ_g, σ_g) truncated to [lo, hi], Z_g their mass
    there: the normalisation of each component in :func:`_truncated_mixture_log_prob`.

    With a = (lo − μ)/σ, b = (hi − μ)/σ and c = ±1/√2 chosen so that the interval lies mostly
    where erfc(c·x) is small and accurate (c = −1/√2 for μ above the box centre, where
    a + b ≤ 0), 2 Z = |erfc(c·b) − erfc(c·a)|. Masses near underflow are recomputed exactly,
    for those components only.
    """
    cap = _ERFC_CAP.get(mu.dtype)
    if cap is None:  # other precisions: the general form
        log_z = truncated_normal_log_mass((lo - mu) / sigma, (hi - mu) / sigma)
        return log_z + torch.log(sigma) + _LOG_2
    graph = any(records_graph(t) for t in (mu, sigma))
    if graph:  # the sign as a constant factor: copysign's own double backward gives NaN
        # where σ is small (score regression in egmm.train differentiates twice)
        side = (0.5 * (lo + hi) - mu).detach()
        k = (_SQRT_HALF / sigma) * torch.ones_like(side).copysign_(side)
    else:
        k = torch.copysign(_SQRT_HALF / sigma, 0.5 * (lo + hi) - mu)   # c / σ
    ea = (lo - mu) * k                                                  # c·a
    eb = torch.add(ea, k, alpha=hi - lo)                                # c·b
    if graph:
        ea, eb = ea.clamp(max=cap), eb.clamp(max=cap)
    else:
        ea.clamp_(max=cap)
        eb.clamp_(max=cap)
    two_mass = (torch.special.erfc(eb) - torch.special.erfc(ea)).abs()
    floor = 2.0 * (_MASS_FLOOR_GRAPH if graph else _MASS_FLOOR)[mu.dtype]
    # (the smallest mass first: one reduction instead of a mask and its reduction, the mask
    # only where there is something to recompute)
    tiny = two_mass < floor if graph or bool(two_mass.amin() < floor) else None
    if tiny is not None and graph:
        tiny = tiny if bool(tiny.any()) else None
        if tiny is not None:  # keep log's gradient finite where the value is replaced below
            two_mass = torch.where(tiny, torch.ones_like(two_mass), two_mass)
    # log(σ · 2Z): one log for the normalisation of every component
    log_norm = torch.log(two_mass * sigma)
    if tiny is not None:  # the few components far outside the box: exact masses, in place
        idx = _flat_index(tiny)
        mu_t = torch.take(mu.expand_as(tiny), idx)  # (the box edges broadcast μ and σ)
        sigma_t = torch.take(sigma.expand_as(tiny), idx)
        exact = (_log_mass_exact((lo - mu_t) / sigma_t, (hi - mu_t) / sigma_t)
                 + torch.log(2.0 * sigma_t))
        if graph or not log_norm.is_contiguous():  # (entries in row-major order)
            log_norm = log_norm.reshape(-1).index_copy(0, idx, exact).view_as(log_norm)
        else:
            log_norm.view(-1).index_copy_(0, idx, exact)
    return log_norm


def _truncated_mixture_log_prob(u: torch.Tensor, log_f: torch.Tensor, mu: torch.Tensor,
                                sigma: torch.Tensor, lo: float, hi: float, dim: int = -1
                                ) -> torch.Tensor:
    """log Σ_g f_g N(u; μ_g, σ_g) / Z_g with Z_g the mass of component g on [lo, hi].

    The same quantity as ``truncated_normal_log_mass`` gives, in fewer passes over the (N, G)
    tensors (this is most of the elementwise work of a density evaluation): the
    normalisations log(2 Z_g σ_g) in one log (:func:`_truncated_log_norm`), and every
    constant added once per event at the end.
    """
    return _mixture_log_prob(u, log_f - _truncated_log_norm(mu, sigma, lo, hi), mu, sigma, dim)


def _mixture_log_prob(u: torch.Tensor, a: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor,
                      dim: int = -1) -> torch.Tensor:
    """log Σ_g exp(a_g − ½((u − μ_g)/σ_g)²) / √(π/2): the truncated mixture's log density at u
    from its normalised log amplitudes a_g = log f_g − log(2 Z_g σ_g) (per event or shared);
    the components along axis ``dim`` (−1: (N, N_G); 0: events as columns, (N_G, N))."""
    z = (u.unsqueeze(dim) - mu) / sigma
    t = torch.addcmul(a, z, z, value=-0.5)
    return _logsumexp(t, overwrite=True, dim=dim) + (_LOG_2 - _LOG_SQRT_2PI)


# The first-order derivative passes (a cost's gradient, the batched fits' scores) evaluate a
# frozen network's truncated mixture as one autograd node with a hand-written backward
# (_TruncatedMixtureT): a few passes over (N_G, N) instead of autograd's record of ~40
# elementwise operations. Its backward cannot itself be differentiated, so it is used only
# inside first_order_graphs(); anything else (exact Hessians, score regression) records the
# elementwise operations as written.
_FIRST_ORDER = contextvars.ContextVar("egmm_first_order_graphs", default=False)
# The backward pass keeps its numbers far from the subnormal range, where the CPU's
# arithmetic runs 10-50x slower (the heads' (3, 60, 20) × (3, 20, 2000) float32 product took
# 4.2 ms instead of 0.09 ms with a quarter of its gradient entries ~1e-36, whose products
# with the weights are subnormal):
# responsibilities below e^floor of the largest count as zero, φ(x)/Z factors below e^floor
# are evaluated at e^floor, and σ's derivative sigmoid(raw) is zero below raw = floor (a width
# at its minimum ε). Floors: e^-60 ≈ 1e-26 (float64), e^-30 ≈ 1e-13 (float32, whose
# log-sum-exp cannot see terms below ~1e-8 anyway); changes far below each dtype's rounding.
_BACKWARD_FLOOR = {torch.float64: -60.0, torch.float32: -30.0}
_TWO_OVER_SQRT_2PI = 2.0 / math.sqrt(2.0 * math.pi)


@contextlib.contextmanager
def first_order_graphs() -> Iterator[None]:
    """Within this context, graphs recorded through frozen networks' mixtures are for one
    backward pass only (a second differentiation raises): the cost's gradients and the batched
    fits' scores, not exact Hessians."""
    token = _FIRST_ORDER.set(True)
    try:
        yield
    finally:
        _FIRST_ORDER.reset(token)


class _TruncatedMixtureT(torch.autograd.Function):
    """(N,) log p(u) of the truncated mixtures given by heads (3, N_G, N) — the pre-activations
    of log f (softmax), μ and σ (softplus + ε), events as columns — as
    :func:`_truncated_mixture_log_prob` computes it, with the gradient written out: with the
    responsibilities r_g, z = (u − μ)/σ, α, β the box edges in σ units and L = log(2 Z σ),
    ∂/∂μ = r (z/σ − ∂log Z/∂μ), ∂/∂σ = r (z²/σ − 1/σ − ∂log Z/∂σ), where
    ∂log Z/∂μ = (φ(α) − φ(β))/(σZ) and ∂log Z/∂σ = (αφ(α) − βφ(β))/(σZ), each φ(x)/(σZ) =
    2 e^(−x²/2 − L)/√(2π) from the (tail-exact) L itself."""

    @staticmethod
    def forward(ctx: Any, heads: torch.Tensor, u: torch.Tensor, lo: float, hi: float,
                eps: float) -> torch.Tensor:
        mu, raw = heads[1], heads[2]
        log_f = torch.log_softmax(heads[0], dim=0)
        sigma = F.softplus(raw).add_(eps)
        log_norm = _truncated_log_norm(mu, sigma, lo, hi)
        inv = sigma.reciprocal_()
        z = (u - mu).mul_(inv)
        t = torch.addcmul(log_f - log_norm, z, z, value=-0.5)  # (N_G, N); heads may be (…, 1)
        top = t.amax(0)
        finite = torch.isfinite(top)
        whole = bool(finite.all())
        if not whole:  # as _logsumexp: such an event's value is its largest term, gradient 0
            top_f = torch.where(finite, top, torch.zeros_like(top))
            t.sub_(top_f).masked_fill_(~finite, -math.inf)
        else:
            t.sub_(top)
        floor = _BACKWARD_FLOOR.get(t.dtype, -30.0)
        # zero below e^floor; exp itself never sees -inf or arguments far below the floor
        # (its slow path: 10-50x, float32 underflow below -87 included)
        r = F.threshold_(t.clamp_(min=floor).exp_(), math.exp(floor), 0.0)
        total = r.sum(0)
        r.div_(total.clamp(min=1.0))  # columns of zeros stay zero
        ctx.save_for_backward(r, z, inv, mu, log_norm, raw, log_f)
        ctx.box = (lo, hi)
        out = torch.log(total).add_(top).add_(_LOG_2 - _LOG_SQRT_2PI)
        return out if whole else torch.where(finite, out, top)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[Any, ...]:
        if torch.is_grad_enabled():  # create_graph=True: a second derivative is wanted
            raise RuntimeError("a graph recorded within egmm.density.first_order_graphs() "
                               "cannot be differentiated twice")
        r, z, inv, mu, log_norm, raw, log_f = ctx.saved_tensors
        lo, hi = ctx.box
        gr = r * grad  # (saved tensors are not overwritten: retain_graph may call again)
        d_f = gr - torch.exp(log_f) * grad                   # r g − f g (Σ_g r_g = 1)
        a = (lo - mu).mul_(inv)
        b = (hi - mu).mul_(inv)
        floor = _BACKWARD_FLOOR.get(grad.dtype, -30.0)
        phi_a = torch.exp(a.square().mul_(-0.5).sub_(log_norm).clamp_(min=floor))
        phi_b = torch.exp(b.square().mul_(-0.5).sub_(log_norm).clamp_(min=floor))
        phi_a.mul_(_TWO_OVER_SQRT_2PI)
        phi_b.mul_(_TWO_OVER_SQRT_2PI)
        zi = z * inv                                         # z/σ
        d_mu = (zi - phi_a).add_(phi_b)
        d_sigma = (z * zi).sub_(inv).sub_(a * phi_a).add_(b * phi_b)
        d_u = None
        if ctx.needs_input_grad[1]:
            d_u = -(gr * zi).sum(0)
        d_mu.mul_(gr)
        d_sigma.mul_(gr).mul_(torch.sigmoid(F.threshold(raw, floor, -math.inf)))
        d_heads = torch.stack([d_f, d_mu, d_sigma])
        if d_heads.shape[-1] != raw.shape[-1]:  # one mixture for every event
            d_heads = d_heads.sum(-1, keepdim=True)
        return d_heads, d_u, None, None, None


def _truncated_mixture_cdf(u: torch.Tensor, log_f: torch.Tensor, mu: torch.Tensor,
                           sigma: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """CDF of the truncated mixture at u (the PIT of a sample); tail-safe, no 0/0."""
    a = (lo - mu) / sigma
    zu = torch.minimum(torch.maximum((u.unsqueeze(-1) - mu) / sigma, a), (hi - mu) / sigma)
    log_c = truncated_normal_log_mass(a, zu) - truncated_normal_log_mass(a, (hi - mu) / sigma)
    return torch.exp(log_f + log_c).sum(-1).clamp(0.0, 1.0)


def _sample_truncated_normal(mu: torch.Tensor, sigma: torch.Tensor, lo: float, hi: float,
                             uniform: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw from N(μ, σ) truncated to [lo, hi], in float64.

    Works on the side of the interval nearer the mode so that Φ is evaluated where it has
    full relative precision; the result is then confined to the box (rounding can otherwise
    step outside by one ulp).
    """
    a = (lo - mu) / sigma
    b = (hi - mu) / sigma
    flip = (a + b) > 0
    lo_s = torch.where(flip, -b, a)
    hi_s = torch.where(flip, -a, b)
    pa = torch.special.ndtr(lo_s)
    pb = torch.special.ndtr(hi_s)
    z = torch.special.ndtri(pa + uniform * (pb - pa))
    z = torch.where(flip, -z, z)
    # rounding can step onto or past the edge; stay in the open box, whose edges map to ±inf
    # for unbounded observables
    inner_lo = torch.nextafter(mu.new_tensor(lo), mu.new_tensor(hi))
    inner_hi = torch.nextafter(mu.new_tensor(hi), mu.new_tensor(lo))
    return torch.minimum(torch.maximum(mu + sigma * z, inner_lo), inner_hi)


class GMMDensity(TrainedModel, SavableModel):
    """Autoregressive conditional Gaussian mixture p(x|θ) over an :class:`ObservableSpace`.

    Arguments:
        space: the observables, in the order of the autoregressive chain.
        parameters: names of θ (may be empty for an unconditional model).
        projection: a fitted :class:`LatentProjection` on the same space.
        parameter_bounds: name → (lo, hi), the trained range; θ is mapped from it onto
            [−2, 2] at the network input. ``None``: set by :func:`egmm.train` from the
            training θ (min, max).
        n_gauss, A1, A2, B1, B2, C, D, s_f, s_mu, s_sigma, f_sigma, eps: paper Table 6 knobs
            (defaults = Table 6). categorical_hidden: hidden widths of discrete networks.
        activation: hidden-layer activation, "leaky_relu" (the paper's, slope 0.2) or "silu"
            (smooth: the likelihood is then infinitely differentiable in θ).
        theta_features: "linear" (the paper: the networks see θ only), "abs" (also |θ|: a
            density known to have a cusp at θ = 0, e.g. one that depends on |θ|),
            "quadratic" (also θ²: a density known to be quadratic in θ, as for EFT
            coefficients) or "even" (|θ| alone: a conditional known to depend on |θ| only);
            or a sequence with one of these per observable, in chain order, e.g.
            ``["even", "even", "linear", "even"]`` for the paper toy, whose p2 alone tells
            the parameters' signs apart. Known structure the networks then need not learn
            from the training data (see :data:`THETA_FEATURES`).

    Example:
        >>> from egmm import Observable, ObservableSpace, LatentProjection
        >>> space = ObservableSpace([Observable("x", 0.0, 1.0)])
        >>> proj = LatentProjection.fit(space, np.random.default_rng(0).uniform(size=(500, 1)))
        >>> model = GMMDensity(space, ["c"], proj, parameter_bounds={"c": (-1.0, 1.0)})
        >>> model.log_prob([[0.5]], {"c": 0.0}).shape
        (1,)
    """

    def __init__(self, space: ObservableSpace, parameters: Sequence[str] = (),
                 projection: LatentProjection | None = None, *,
                 parameter_bounds: Mapping[str, tuple[float, float]] | None = None,
                 **knobs: Any) -> None:
        unknown = sorted(set(knobs) - set(GMM_DEFAULTS))
        if unknown:
            raise InputError(f"GMMDensity: unknown option(s) {unknown}; known: "
                             f"{sorted(GMM_DEFAULTS)}")
        if not isinstance(space, ObservableSpace):
            raise InputError("GMMDensity: space must be an ObservableSpace")
        if projection is None:
            raise InputError("GMMDensity: a fitted LatentProjection is required (projection=)")
        if projection.space != space:
            raise InputError("GMMDensity: the projection was fitted on a different space")
        self.space = space
        self.projection = projection
        self.parameters = tuple(str(p) for p in parameters)
        if len(set(self.parameters)) != len(self.parameters):
            raise InputError(f"GMMDensity: duplicate parameter names {list(self.parameters)}")
        self.config = {**GMM_DEFAULTS, **knobs}
        _check_knobs(self.config)
        check_activation(self.config["activation"])
        self._kinds = _theta_kinds(self.config["theta_features"], space)
        if not isinstance(self.config["theta_features"], str):
            self.config["theta_features"] = list(self._kinds)
        self.config["categorical_hidden"] = tuple(self.config["categorical_hidden"])
        # the trainable networks and buffers live in one nn.Module (``model.module``): the
        # density itself is not a Module, whose ``parameters()`` would clash with θ's names
        self._init_module(parameter_bounds)
        c = self.config
        n_par = len(self.parameters)
        self._blocks = tuple(b for b in _FEATURE_BLOCKS
                             if any(b in THETA_FEATURES[k] for k in self._kinds))
        # per network: its columns of scale_theta's output (None: all of them; a slice, a
        # view, where they are contiguous, as they are for every kind but "quadratic" next to
        # "abs")
        self._theta_columns: list[slice | list[int] | None] = []
        for kind in self._kinds:
            cols = [j * n_par + p for j, b in enumerate(self._blocks)
                    if b in THETA_FEATURES[kind] for p in range(n_par)]
            self._theta_columns.append(
                None if len(cols) == n_par * len(self._blocks) else
                slice(cols[0], cols[-1] + 1) if cols == list(range(cols[0], cols[-1] + 1))
                else cols)
        nets: list[nn.Module] = []
        for i, obs in enumerate(space):
            n_theta = n_par * len(THETA_FEATURES[self._kinds[i]])
            if obs.discrete:
                nets.append(CategoricalNet(n_theta, i, obs.n_categories, A1=c["A1"], A2=c["A2"],
                                           B1=c["B1"], B2=c["B2"], hidden=c["categorical_hidden"],
                                           activation=c["activation"]))
            else:
                nets.append(ConditionalGMMNet(
                    n_theta, i, u_lo=projection.u_lo, u_hi=projection.u_hi,
                    **{k: c[k] for k in ("n_gauss", "A1", "A2", "B1", "B2", "C", "D", "s_f",
                                         "s_mu", "s_sigma", "f_sigma", "eps",
                                         "activation")}))
        self.module.nets = nn.ModuleList(nets)
        # latent value u_j → network input in [−2, 2]
        lo = np.where(space.discrete, space.lo, projection.u_lo)
        hi = np.where(space.discrete, space.hi, projection.u_hi)
        self.module.register_buffer("input_lo", torch.as_tensor(lo, dtype=torch.float64),
                                    persistent=False)
        self.module.register_buffer("input_scale",
                                    torch.as_tensor(4.0 / (hi - lo), dtype=torch.float64),
                                    persistent=False)
        self._freeze()

    # -- parameters ----------------------------------------------------------------------------
    def scale_inputs(self, u: torch.Tensor) -> torch.Tensor:
        """Latent values (N, D) → network inputs on [−2, 2]."""
        return (u - self.module.input_lo.to(u)) * self.module.input_scale.to(u) - 2.0

    def scale_theta(self, theta: torch.Tensor) -> torch.Tensor:
        """θ → the θ-branch inputs of all networks: θ mapped onto [−2, 2] over the trained
        range (paper Section 4), and the ``theta_features`` extras (:data:`THETA_FEATURES`),
        the blocks any network uses concatenated; each network takes its columns
        (:meth:`theta_input`)."""
        if self._blocks == ("linear",):
            return super().scale_theta(theta)
        about_zero = 2.0 * theta / self.module.theta_halfwidth.to(theta)
        made = {"linear": (lambda: super(GMMDensity, self).scale_theta(theta)),
                "abs": about_zero.abs, "square": about_zero.square}
        return torch.cat([made[b]() for b in self._blocks], -1)

    def theta_input(self, i: int, theta_s: torch.Tensor) -> torch.Tensor:
        """Network ``i``'s θ-branch input from :meth:`scale_theta`'s output (..., F)."""
        cols = self._theta_columns[i]
        return theta_s if cols is None else theta_s[..., cols]

    @property
    def smooth(self) -> bool:  # type: ignore[override]
        """True with ``activation="silu"`` (and no ``"abs"`` or ``"even"`` θ features): the
        likelihood is then smooth in θ and costs give Minuit its exact Hessian. LeakyReLU
        networks are piecewise linear in θ (their pointwise Hessian misses the kinks'
        curvature): Minuit's HESSE takes finite differences."""
        return self.config["activation"] == "silu" and "abs" not in self._blocks

    @property
    def nets(self) -> nn.ModuleList:
        """The per-observable networks, in chain order."""
        return self.module.nets

    def to(self, device: str | torch.device) -> GMMDensity:
        """Move the networks to ``device`` (e.g. ``"cuda"``); returns self."""
        self.module.to(device)
        return self

    def n_weights(self) -> list[int]:
        """Trainable weights per observable network (paper Table 6 quotes these)."""
        return [sum(p.numel() for p in net.parameters()) for net in self.nets]

    # -- latent-space evaluation ---------------------------------------------------------------
    def _theta_parts(self, theta_s: torch.Tensor) -> list[torch.Tensor]:
        t = theta_s if theta_s.ndim == 2 else theta_s.unsqueeze(0)
        return [net.theta_part(self.theta_input(i, t)) for i, net in enumerate(self.nets)]

    def _input_parts(self, inputs: torch.Tensor) -> list[torch.Tensor]:
        return [net.input_part(inputs[:, :i]) for i, net in enumerate(self.nets)]

    def conditional(self, i: int, u: torch.Tensor, theta_part: torch.Tensor,
                    input_part: torch.Tensor) -> torch.Tensor:
        """(N,) log p_i(u_i | u_<i, θ) of network ``i`` from its precomputed branch parts."""
        return self._conditional_pre(i, u, input_part + theta_part)

    def _category(self, u: torch.Tensor, i: int) -> torch.Tensor:
        """(N,) index of each event's value of discrete observable ``i`` among its values."""
        return (u[:, i] - self.space.lo[i]).round().long()

    def _conditional_pre(self, i: int, u: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        """As :meth:`conditional` from the whole (temporary) first joint pre-activation."""
        net = self.nets[i]
        if isinstance(net, CategoricalNet):
            logp = net.log_probs(pre, fresh=True)
            return logp.expand(u.shape[0], -1).gather(1, self._category(u, i)[:, None])[:, 0]
        log_f, mu, sigma = net.mixture(pre, fresh=True)
        return _truncated_mixture_log_prob(u[:, i], log_f, mu, sigma,
                                           self.projection.u_lo, self.projection.u_hi)

    def _conditionals(self, u: torch.Tensor, theta_parts: Sequence[torch.Tensor],
                      input_parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, D) per-observable log p_i(u_i | u_<i, θ) from precomputed branch parts."""
        return torch.stack([self.conditional(i, u, theta_parts[i], input_parts[i])
                            for i in range(len(self.nets))], dim=1)

    def log_prob_latent_per_observable(self, u: torch.Tensor, theta: torch.Tensor,
                                       theta_scaled: bool = False) -> torch.Tensor:
        """(N, D) log p_i(u_i | u_<i, θ) for latent tensors (teacher forcing, no validation).

        ``theta`` is (P,) or (N, P); ``theta_scaled`` says it is already :meth:`scale_theta`'s
        output.
        """
        theta = theta.to(u.dtype)
        theta_s = theta if theta_scaled else self.scale_theta(theta)
        theta_parts = self._theta_parts(theta_s)
        inputs = self.scale_inputs(u)
        if self._frozen() and not (records_graph(theta_s) or records_graph(u)):
            return self._per_observable_t(u, inputs, theta_parts)
        # θ's part folded into each first joint product (nothing here is cached for reuse)
        return torch.stack([self._conditional_pre(i, u, net.input_part(inputs[:, :i], tp))
                            for i, (net, tp) in enumerate(zip(self.nets, theta_parts))], dim=1)

    def _per_observable_t(self, u: torch.Tensor, inputs: torch.Tensor,
                          theta_parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N, D) log p_i with events as columns (frozen weights, no graph): the scaled
        inputs as columns after a row of ones, each network's :meth:`pre_t` and
        :meth:`ConditionalGMMNet.mixture_t`."""
        inputs_t = ones_row(inputs.shape[1], inputs.shape[0], inputs)
        inputs_t[1:] = inputs.t()
        cols = []
        for i, (net, tp) in enumerate(zip(self.nets, theta_parts)):
            if isinstance(net, CategoricalNet):
                cols.append(self._conditional_pre(i, u, net.input_part(inputs[:, :i], tp)))
                continue
            cols.append(self._conditional_pre_t(i, u, net.pre_t(inputs_t, tp)))
        return torch.stack(cols, dim=1)

    def log_prob_latent(self, u: Any, theta: Any = None, *, allow_outside: bool = False
                        ) -> Any:
        """log p(u|θ) in latent space, (N,).

        Tensor input: no validation, differentiable, same dtype. Array input: validated against
        the latent box (continuous) and the discrete values, returns float64 numpy. θ outside
        the trained range raises unless ``allow_outside=True`` (as :meth:`log_prob`).
        """
        if isinstance(u, torch.Tensor):
            th = theta if isinstance(theta, torch.Tensor) else self.theta_tensor(
                theta, allow_outside=allow_outside)
            return self.log_prob_latent_per_observable(u, th).sum(1)
        uu = np.asarray(u, dtype=np.float64)
        if uu.ndim != 2 or uu.shape[1] != self.space.dim:
            raise InputError(f"latent values: expected (N, {self.space.dim}), got {uu.shape}")
        cont = ~self.space.discrete
        bad = cont[None, :] & ~((uu >= self.projection.u_lo) & (uu <= self.projection.u_hi))
        if bad.any():
            r, j = np.argwhere(bad)[0]
            raise InputError(f"latent value of {self.space.names[j]!r} in row {r} = {uu[r, j]} "
                             f"lies outside the latent box [{self.projection.u_lo}, "
                             f"{self.projection.u_hi}]")
        if self.space.discrete.any():
            self.space.validate(np.where(cont[None, :], np.clip(
                uu, self.space.lo, self.space.hi), uu), what="latent values")
        th = self.theta_tensor(theta, n_events=len(uu), allow_outside=allow_outside)
        with torch.no_grad():
            return self.log_prob_latent_per_observable(
                torch.as_tensor(uu, device=self.device), th.to(self.device)).sum(1).cpu().numpy()

    # -- training hooks (egmm.train) ---------------------------------------------------------
    def training_units(self) -> list[nn.Module]:
        """The per-observable networks: trained independently (own optimiser, schedule,
        early stopping), since the teacher-forced loss is a sum of independent terms."""
        return list(self.nets)

    def training_tensors(self, x: np.ndarray, theta: np.ndarray,
                         dtype: torch.dtype) -> dict[str, torch.Tensor]:
        u = self.projection.forward(torch.as_tensor(x, device=self.device))
        return {"u": u.to(dtype), "inputs": self.scale_inputs(u).to(dtype),
                "theta": self.scale_theta(torch.as_tensor(theta, device=self.device)).to(dtype)}

    def training_log_prob(self, i: int, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        net = self.nets[i]
        return self.conditional(i, batch["u"], net.theta_part(self.theta_input(i, batch["theta"])),
                                net.input_part(batch["inputs"][:, :i]))

    # -- data-space evaluation (DensityModel protocol) ----------------------------------------
    def log_prob_tensor(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        u, logdet = self.projection.forward_and_log_det(x)
        return self.log_prob_latent_per_observable(u, theta.to(x.dtype)).sum(1) + logdet

    def prepare(self, x: np.ndarray, dtype: torch.dtype = torch.float64) -> dict[str, Any]:
        """Cache the θ-independent work for validated events ``x``: the projection, its
        Jacobian and each network's input branch (the first joint layer's input part), kept
        with events as columns (``input_parts_t``, (width, N), what :meth:`log_prob_prepared`
        reads); ``input_parts`` are (N, width) views of the same memory."""
        xt = torch.as_tensor(x, dtype=dtype, device=self.device)
        with torch.no_grad():
            u, logdet = self.projection.forward_and_log_det(xt)
            parts_t = [p.t().contiguous() for p in self._input_parts(self.scale_inputs(u))]
        return {"u": u, "logdet": logdet, "input_parts": [p.t() for p in parts_t],
                "input_parts_t": parts_t}

    def log_prob_prepared(self, prepared: Mapping[str, Any], theta: torch.Tensor) -> torch.Tensor:
        u = prepared["u"]
        theta_s = self.scale_theta(theta.to(device=u.device, dtype=u.dtype))
        parts_t = prepared.get("input_parts_t")
        if parts_t is None or theta_s.ndim != 1 or not self._frozen():
            cond = self._conditionals(u, self._theta_parts(theta_s), prepared["input_parts"])
            return cond.sum(1) + prepared["logdet"]
        out = prepared["logdet"]
        theta_parts = self._theta_parts(theta_s)
        stacked = self._stackable(parts_t, theta_s)
        if stacked:
            out = out + self._stacked_t(stacked, u, parts_t, theta_parts)
        for i, part in enumerate(theta_parts):
            if i in stacked:
                continue
            if isinstance(self.nets[i], CategoricalNet):
                lp = self.conditional(i, u, part, prepared["input_parts"][i])
            else:
                lp = self._conditional_t(i, u, parts_t[i], part.reshape(-1, 1))
            out = out + lp
        return out

    def _stackable(self, parts_t: Sequence[torch.Tensor], theta_s: torch.Tensor) -> list[int]:
        """The networks whose per-event mixtures :meth:`_stacked_t` evaluates together: the
        continuous ones with inputs (one column per event), when there are two or more, all
        with the same number of Gaussians and ε, no graph is recorded, and their mixtures
        together stay small (≤ 2¹⁵ numbers: fewer torch operations pay where a call is
        mostly their overhead, a 400-event fit's ~8 %; at ~1000 events they break even, for
        more the networks' separate tensors stay in cache and together are slower)."""
        nets = self.__dict__.get("_stack")
        if nets is None:  # the networks' structure: found once
            nets = [i for i, net in enumerate(self.nets)
                    if isinstance(net, ConditionalGMMNet) and net.input_branch is not None]
            if len(nets) < 2 or len({(self.nets[i].n_gauss, self.nets[i].eps)
                                     for i in nets}) > 1:
                nets = []
            self._stack = nets
        if not nets or records_graph(theta_s):
            return []
        if len(nets) * self.nets[nets[0]].n_gauss * parts_t[nets[0]].shape[1] > 2**15:
            return []
        return nets

    def _stacked_t(self, nets: list[int], u: torch.Tensor, parts_t: Sequence[torch.Tensor],
                   theta_parts: Sequence[torch.Tensor]) -> torch.Tensor:
        """(N,) Σ_i log p_i over the networks ``nets`` (no graph): each network's layers and
        heads as in :meth:`ConditionalGMMNet.mixture_t`, written into one (networks, 3, N_G,
        N) tensor, then the mixture maps, the truncation masses and the log-sum-exp once for
        all of them (a 400-event fit's call is mostly the number of torch operations)."""
        n = u.shape[0]
        first = self.nets[nets[0]]
        heads = u.new_empty((len(nets), 3, first.n_gauss, n))
        for k, i in enumerate(nets):
            pre = ones_row_sum(parts_t[i], theta_parts[i].reshape(-1, 1))
            self.nets[i].heads_t(pre, out=heads[k])
        log_f = torch.log_softmax(heads[:, 0], dim=1)
        sigma = first.widths(heads[:, 2])
        # consecutive networks (the usual case) read their observables as a view
        cols = slice(nets[0], nets[-1] + 1) if nets[-1] - nets[0] == len(nets) - 1 else nets
        lp = _truncated_mixture_log_prob(u[:, cols].t(), log_f, heads[:, 1], sigma,
                                         self.projection.u_lo, self.projection.u_hi, dim=1)
        return lp.sum(0)

    def _frozen(self) -> bool:
        """No network weight takes gradients (the events-as-columns path folds them). The
        weights' list is kept (walking the modules costs ~70 µs, a fit calls this per
        evaluation); ``requires_grad_`` and ``to`` change the same tensors."""
        weights = self.__dict__.get("_weights")
        if weights is None:
            weights = self._weights = tuple(self.nets.parameters())
        return not any(p.requires_grad for p in weights)

    def _conditional_t(self, i: int, u: torch.Tensor, part_t: torch.Tensor,
                       theta_t: torch.Tensor) -> torch.Tensor:
        """(N,) log p_i(u_i | u_<i, θ) with events as columns: the input part (width, N) plus
        one θ part (width, 1) as the first joint pre-activation of
        :meth:`ConditionalGMMNet.mixture_t`."""
        if records_graph(theta_t) or records_graph(part_t):
            pre = torch.cat([part_t.new_ones((1, part_t.shape[1])), part_t + theta_t])
        else:
            pre = ones_row_sum(part_t, theta_t)
        return self._conditional_pre_t(i, u, pre)

    def _conditional_pre_t(self, i: int, u: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        """(N,) log p_i from the first joint pre-activation with events as columns, (1 +
        width, N) after a row of ones (without a graph, a temporary the caller does not
        keep: activated in place)."""
        net = self.nets[i]
        if _FIRST_ORDER.get() and records_graph(pre):
            return _TruncatedMixtureT.apply(net.heads_t(pre), u[:, i], self.projection.u_lo,
                                            self.projection.u_hi, net.eps)
        log_f, mu, sigma = net.mixture_t(pre)
        return _truncated_mixture_log_prob(u[:, i], log_f, mu, sigma, self.projection.u_lo,
                                           self.projection.u_hi, dim=0)

    def importance_weights(self, x: Any, theta: Any, theta_ref: Any, **kwargs: Any) -> np.ndarray:
        """p(x|θ)/p(x|θ_ref) per event, for events drawn at θ_ref (paper Section 5)."""
        return np.exp(self.log_prob(x, theta, **kwargs) - self.log_prob(x, theta_ref, **kwargs))

    # -- sampling ------------------------------------------------------------------------------
    def sample(self, n: int, theta: Any = None, seed: Any = None, *,
               allow_outside: bool = False, chunk_size: int = 8192,
               latent: bool = False, dtype: torch.dtype = torch.float64) -> np.ndarray:
        """Draw ``n`` events at θ, (n, D) float64 in data space (latent space if ``latent``).

        Sequential over observables, vectorised over events: one network pass per observable
        and chunk. ``theta`` one point (shared) or (n, P) per event. ``seed``: int,
        ``numpy.random.Generator``, ``torch.Generator`` or None. ``dtype``: precision of the
        network pass (``torch.float32`` is ~2× faster on CPU); the component choice and
        the truncated-normal inversion are always float64. ``chunk_size``: events per pass
        (a few thousand keep the layers in cache).
        """
        if dtype not in (torch.float32, torch.float64):
            raise InputError(f"sample: dtype must be torch.float32 or torch.float64, got {dtype}")
        n = sample_count(n)
        chunk_size = whole_number(chunk_size, "sample: chunk_size")
        th = self.theta_tensor(theta, n_events=n, allow_outside=allow_outside)
        gen = torch_generator(seed, "sample: seed")
        out = np.empty((n, self.space.dim))
        with torch.no_grad():
            for s in range(0, n, chunk_size):
                m = min(chunk_size, n - s)
                tt = th[s:s + m] if th.ndim == 2 else th
                u = self._sample_latent(m, tt.to(self.device), gen, dtype)
                x = u if latent else self.projection.inverse(u)
                out[s:s + m] = x.cpu().numpy()
        return out

    def _sample_latent(self, n: int, theta: torch.Tensor, gen: torch.Generator,
                       dtype: torch.dtype = torch.float64) -> torch.Tensor:
        f64 = torch.float64
        u = torch.zeros((n, self.space.dim), dtype=f64, device=self.device)
        theta_parts = self._theta_parts(self.scale_theta(theta.to(f64)).to(dtype))
        # the scaled inputs as columns after a row of ones (events as columns, frozen
        # weights); the networks of a model in training take them as rows
        columns = self._frozen()
        inputs_t = torch.zeros((1 + self.space.dim, n), dtype=dtype, device=self.device)
        inputs_t[0] = 1.0
        inputs = inputs_t[1:].t()
        lo, hi = self.projection.u_lo, self.projection.u_hi
        for i, net in enumerate(self.nets):
            if isinstance(net, CategoricalNet):
                pre = net.input_part(inputs[:, :i], theta_parts[i])
                k = _draw_index(net.log_probs(pre, fresh=True).t(), n, gen)
                u[:, i] = k.to(f64) + self.space.lo[i]
            else:
                # the widths of the drawn components only
                if columns:
                    log_f, mu, raw = net.mixture_t(net.pre_t(inputs_t, theta_parts[i]),
                                                   raw_widths=True)
                else:  # θ's part folded into the first joint product, activated in place
                    log_f, mu, raw = (t.t() for t in net.mixture(
                        net.input_part(inputs[:, :i], theta_parts[i]), fresh=True,
                        raw_widths=True))
                pick = _draw_index(log_f, n, gen)[None]
                r = torch.rand(n, dtype=f64, generator=gen).to(self.device)
                sigma = net.widths(raw.expand(-1, n).gather(0, pick)[0])
                u[:, i] = _sample_truncated_normal(mu.expand(-1, n).gather(0, pick)[0].to(f64),
                                                   sigma.to(f64), lo, hi, r)
            scaled = (u[:, i] - self.module.input_lo[i]) * self.module.input_scale[i] - 2.0
            inputs_t[1 + i] = scaled.to(dtype)
        return u

    def pit(self, x: Any, theta: Any = None, *, allow_outside: bool = False) -> np.ndarray:
        """Probability-integral transform of every conditional, (N, D) in [0, 1].

        Continuous: the truncated-mixture CDF of u_i given u_<i, θ (uniform for samples of the
        model). Discrete: the CDF midpoint P(<k) + P(=k)/2 (uniform in mean only). θ outside
        the trained range raises unless ``allow_outside=True`` (as :meth:`log_prob`).
        """
        xv = self.space.validate(x)
        th = self.theta_tensor(theta, n_events=len(xv), allow_outside=allow_outside)
        with torch.no_grad():
            xt = torch.as_tensor(xv, device=self.device)
            u = self.projection.forward(xt)
            theta_parts = self._theta_parts(self.scale_theta(th.to(self.device)))
            input_parts = self._input_parts(self.scale_inputs(u))
            cols = []
            for i, net in enumerate(self.nets):
                pre = input_parts[i] + theta_parts[i]
                if isinstance(net, CategoricalNet):
                    p = net.log_probs(pre).exp().expand(len(xv), -1)
                    k = self._category(u, i)[:, None]
                    below = torch.cumsum(p, 1).gather(1, k)[:, 0] - p.gather(1, k)[:, 0]
                    cols.append(below + 0.5 * p.gather(1, k)[:, 0])
                else:
                    log_f, mu, sigma = net.mixture(pre)
                    cols.append(_truncated_mixture_cdf(u[:, i], log_f, mu, sigma,
                                                       self.projection.u_lo,
                                                       self.projection.u_hi))
            return torch.stack(cols, 1).cpu().numpy()

    # -- files ---------------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        """JSON-safe description from which :meth:`from_config` rebuilds the (untrained) model."""
        return {
            **self._base_config(),
            "knobs": {k: list(v) if isinstance(v, tuple) else v for k, v in self.config.items()},
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> GMMDensity:
        space = ObservableSpace.from_dict(config["space"])
        bounds = config["parameter_bounds"] or None
        return cls(space, config["parameters"],
                   LatentProjection.from_dict(config["projection"]),
                   parameter_bounds=bounds, **config["knobs"])

    def __repr__(self) -> str:
        return (f"GMMDensity(observables={list(self.space.names)}, "
                f"parameters={list(self.parameters)}, "
                f"weights={self.n_weights()})")


def _check_knobs(config: dict[str, Any]) -> None:
    """Raise :class:`InputError` naming a knob whose value the networks cannot use (a width
    that is no whole number, a scale or ε that is not finite and positive); widths given as
    integral floats become ints."""
    for name, minimum in (("n_gauss", 1), ("A1", 1), ("A2", 0), ("B1", 1), ("B2", 0),
                          ("C", 0), ("D", 1)):
        config[name] = whole_number(config[name], f"GMMDensity: {name}", minimum)
    for name in ("s_f", "s_mu", "s_sigma", "f_sigma", "eps"):
        value = config[name]
        if not (is_real_number(value) and math.isfinite(value) and value > 0):
            raise InputError(f"GMMDensity: {name} must be a finite number > 0, got {value!r}")
    hidden = config["categorical_hidden"]
    if not isinstance(hidden, (list, tuple)) or not hidden:
        raise InputError(f"GMMDensity: categorical_hidden must be a non-empty sequence of "
                         f"widths, got {hidden!r}")
    for width in hidden:
        whole_number(width, "GMMDensity: categorical_hidden width")


def _theta_kinds(features: Any, space: ObservableSpace) -> tuple[str, ...]:
    """``theta_features`` (one kind, or one per observable) → one kind per observable."""
    if isinstance(features, str):
        if features not in THETA_FEATURES:
            raise InputError(f"GMMDensity: theta_features must be one of "
                             f"{sorted(THETA_FEATURES)}, got {features!r}")
        return (features,) * space.dim
    kinds = list(features)
    if len(kinds) != space.dim:
        raise InputError(f"GMMDensity: theta_features needs one kind per observable "
                         f"({space.dim}: {list(space.names)}), got {len(kinds)}")
    for name, kind in zip(space.names, kinds):
        if kind not in THETA_FEATURES:
            raise InputError(f"GMMDensity: theta_features of {name!r} must be one of "
                             f"{sorted(THETA_FEATURES)}, got {kind!r}")
    return tuple(kinds)


def _draw_index(log_p: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """One index per event from log probabilities (K, n) — or (K, 1) shared by all n
    events — by inverting the cumulative sum (float64, whatever ``log_p``'s dtype)."""
    cdf = log_p.to(torch.float64, memory_format=torch.contiguous_format, copy=True).exp_()
    if cdf.shape[1] >= _ROW_SCAN_MIN:
        # row by row: the same sums in the same order as torch.cumsum on a CPU, whose scan
        # across the rows of a wide tensor is 2-6x slower (20 × 4096: 0.2 against 0.8-1.4 ms)
        for k in range(1, cdf.shape[0]):
            cdf[k].add_(cdf[k - 1])
    else:
        cdf.cumsum_(0)
    r = torch.rand(1, n, dtype=torch.float64, generator=gen).to(log_p.device)
    r.mul_(cdf[-1:])  # normalisation exact to rounding
    below = cdf.lt_(r) if cdf.shape[1] == n else cdf < r  # (K, 1) shared: broadcast
    return below.sum(0).long().clamp_(max=log_p.shape[0] - 1)
