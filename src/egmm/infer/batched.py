r"""Vectorised maximum-likelihood fits of many toys that share one model.

A toy study fits the same likelihood to K pseudo-datasets. With one ``Minuit`` per toy every
cost call is a small torch evaluation (a few hundred events) and the study pays Minuit's ~50
calls per toy. :func:`fit_batched` instead puts the events of all K toys into one batch with a
toy index, evaluates every event's log density at its own toy's parameters θ_k, and sums per
toy (``index_add``):

.. math::

    f_k(θ_k) = -2 \ln L_k(θ_k) = -2 \Big[ \sum_{i \in k} w_i \ln λ(x_i | θ_k)
               - \text{(yield terms of toy k)} \Big] + \text{(constraints of toy k)}

with the costs' own conventions and constants (see :class:`~egmm.likelihood.UnbinnedNLL`,
:class:`~egmm.likelihood.ExtendedUnbinnedNLL`): ``f_k`` equals ``cost_k(*θ_k)``.

The minimiser is a damped, projected Newton method run for all toys at once. One forward and
one backward pass per chunk of events give every toy's exact gradient g_k and its BHHH
curvature H_k = 2 Σ_i w_i s_i s_iᵀ (s_i the per-event score, whose expectation is the Fisher
information, i.e. the expected Hessian of −2 ln L / 2; Berndt, Hall, Hall & Hausman 1974),
corrected by BFGS secant updates from the last steps. Steps solve (H + λ diag H) p = −g with a
per-toy Levenberg damping λ (adapted by the gain ratio), then backtrack (Armijo) on the path
projected onto the limits; parameters at a limit whose gradient points outwards are held
there, fixed parameters never move. A toy has converged when its Newton decrement
½ gᵀH⁻¹g (over its free parameters: the expected distance to the minimum in −2 ln L, like
Minuit's EDM) is below ``tol`` and the curvature it rests on has proved itself: the last
decrease was below ``tol`` too, or the last step gave at least half the decrease the
quadratic model predicted and shrank the decrement tenfold (a curvature off by a factor
1 + ε leaves a fraction ε/(1 + ε) of the distance per step, so this bounds ε to about ½ and
the true distance to ~1.5 times the decrement); converged toys leave the batch. By
default ``tol`` is MIGRAD's own EDM goal for the same Minuit tolerance (0.002 · ``minuit_tol``,
2e-4 at iminuit's default 0.1): batched minima are as precise as the per-toy fits they replace.

For a :class:`~egmm.GMMDensity` in a float64 cost the Newton steps first run with float32
network bodies (``float32_steps``, the default; per-event results are summed in float64):
their forward and backward passes take half the time, and the steps, which need gradients
and curvatures rather than −2 ln L to the last digit, are as good. float32 rounding makes
−2 ln L itself uncertain by a few 2⁻²⁴·|f| (~1e-4 for the paper toy at N = 400), so this
stage accepts a step unless f rises by more than 2⁻²⁴·|f|, and counts the quadratic model's
predicted decrease as a step's decrease. Its gradients and curvatures (float32 bodies
summed in float64) are those of the float64 cost to far better than any goal needs: the
gradient error's own decrement ½ eᵀH⁻¹e is at most 3e-11 (paper toy, N = 400, SiLU and
LeakyReLU models), so the decrement of a point near the goal is known to 2√(goal · 3e-11),
under 4 % of goals down to 1e-7, and the errors to ~1e-5 relative. At goals no finer than
2e-4 (the default, MIGRAD's goal at iminuit's default tol) and, for networks with a smooth
activation (SiLU), at goals down to 1e-7 (the toy calculators' 2e-6 included), the float32
stage's verdict stands: the float64 stage evaluates only −2 ln L at its minima (the
reported fvals are the costs' float64 values) and takes float64 steps only for toys the
float32 stage left unconverged, continuing it (its secant pairs, which show the kinks it
met, included). Below 2e-4 a toy the float32 stage found converged at a kink is left
unconverged and without history, for float64 steps. Finer goals, and goals below 2e-4 with
LeakyReLU networks, whose kinks are everywhere and whose valleys between them a float32 f
(uncertain by ~1e-4) cannot follow: the float32 stage stops at 2e-4 and a fresh float64
stage takes the last steps and gives the verdict, gradients and errors (its first step
starts from the float32 gradients and curvatures, with f evaluated in float64). User-written
densities (``TorchDensity``) always run in the cost's dtype.

The −2 ln L of a :class:`~egmm.GMMDensity` is only piecewise smooth in θ (LeakyReLU units): its
gradient jumps at kinks, and near a minimum Newton steps can only crawl along valleys under
the kinks. A toy that met a kink (a secant curvature ten times the model's), or whose last two
steps found no descent, has converged once its decrement is below 2e-4 (Minuit's EDM goal at
its default tolerance); ``decrement`` reports what was left. For a GMMDensity θ enters every
network only through its θ branch, which is evaluated once per toy rather than per event.

Supported costs (one structure for every toy; data, weights and constraint centres differ):
an :class:`~egmm.likelihood.UnbinnedNLL` or :class:`~egmm.likelihood.ExtendedUnbinnedNLL`
(one density or a mixture of components; free, constant or functional yields; weights), plus
any number of ``iminuit.cost.NormalConstraint`` terms (added analytically) and constants.
Anything else (``PyhfCost``, two unbinned costs, ``LeastSquares``, densities without a torch
gradient) raises :class:`~egmm.InputError`: use :func:`egmm.infer.fit` per toy for those. The
limits are the costs' own (the densities' trained ranges, yields ≥ 0).

References:
    E. Berndt, B. Hall, R. Hall, J. Hausman, Ann. Econ. Soc. Meas. 3 (1974) 653 (BHHH);
    J. Nocedal, S. Wright, Numerical Optimization (2006), ch. 3, 6 and 10.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from itertools import pairwise
from typing import Any

import numpy as np
import torch
from iminuit.cost import Constant, CostSum, NormalConstraint
from iminuit.util import describe

from egmm.base import whole_number
from egmm.density import (
    GMMDensity,
    _mixture_log_prob,
    _truncated_log_norm,
    first_order_graphs,
)
from egmm.errors import InputError, ParameterError
from egmm.infer.fit import FitResult, fit, start_values, weighted
from egmm.infer.teststats import statistic_precision
from egmm.likelihood.components import Yield, _Combination, _ConstantYield, _ParameterYield
from egmm.likelihood.cost import _UnbinnedCost
from egmm.networks import CategoricalNet, ones_row

__all__ = ["BatchedFitResult", "fit_batched"]

#: events per evaluation chunk (analytic densities: fewer, larger tensor operations)
_CHUNK = 8192
# ... and for network densities, so that one layer's activations (float64) take about this
# many bytes: the backward pass's elementwise operations run at the memory's speed once
# they outgrow the cache (paper-size model, float64 derivative pass per toy: 2048-event
# chunks ~18 % faster than 8192, float32 ~10 %)
_NETWORK_CHUNK_BYTES = 3 << 20
# Armijo constant of the line search; the shortest step (a fraction of the Newton step) and
# the most trials before a toy's step is rejected (its damping is then raised tenfold).
_ARMIJO = 1e-4
_ALPHA_MIN = 1e-10
_MAX_BACKTRACKS = 30
# line-search trials evaluated with derivatives (the first: the full step); later trials
# evaluate f only, and the point they accept gets its derivatives afterwards
_DERIVATIVE_TRIALS = 2
# Secant pairs of the last steps that correct the curvature (steps and convergence test), if
# within this reach (sᵀHs, squared distance in units of the errors).
_SECANT_PAIRS = 4
_SECANT_REACH = 1.0
# A step met a kink where its secant curvature yᵀs exceeds the model's sᵀHs this many times;
# near a kink (or after two steps without descent) a toy has converged once its decrement is
# below _KINK_DECREMENT (Minuit's EDM goal at its default tolerance), see _newton.
_KINK_RATIO = 10.0
_KINK_DECREMENT = 2e-4
# A step that gave at least half its predicted decrease and left a decrement this fraction of
# the one before it confirms the curvature: the decrement alone then decides (see _newton).
_FAST_RATIO = 0.1
# Levenberg damping: the initial value, relative to the Hessian's diagonal, and its range.
_DAMPING_START = 1e-3
_DAMPING_MIN = 1e-12
_DAMPING_MAX = 1e12
# A trial value may exceed the current one by this many ulps of |f| (rounding at the minimum).
_ROUNDING = 64 * np.finfo(np.float64).eps
# The relative precision of −2 ln L with float32 bodies, for the float32 stage's line search.
# Measured |f32 − f64| at random θ: up to 0.38 · 2⁻²⁴|f| on the paper toy (N = 400, f ≈ 1.1e4;
# differences between nearby θ are off by 5e-5 to 2.7e-4) and up to 2.2 · 2⁻²⁴|f| on a small
# 2-D test model whose per-event terms partly cancel. Only the stage's speed depends on it
# (its minimum is tested in float64): on the paper toy 2⁻²⁶, 2⁻²⁴ and 2⁻²² took 4.9, 5.1 and
# 5.5 float32 iterations per toy (a larger allowance accepts more slightly worse steps).
_FLOAT32_NOISE = 2.0**-24
# The finest goal the float32 stage's verdict stands for: its gradient error's decrement
# ½ eᵀH⁻¹e (e = float32-body gradient − float64 gradient, at and around the truth, 64 toys
# of N = 400) measured at most 2.9e-11 (SiLU) and 1.1e-11 (LeakyReLU) on paper-toy models,
# so a decrement near 1e-7 is known to 2√(1e-7 · 3e-11) ≈ 3.5 %.
_FLOAT32_FINEST = 1e-7
# iminuit's default Minuit.tol; MIGRAD stops at EDM < 0.002 · tol · errordef (errordef 1 here).
_MINUIT_TOL = 0.1
_EDM_PER_TOL = 0.002


@dataclass
class BatchedFitResult:
    """Outcome of :func:`fit_batched` for K toys and P parameters (−2 ln L convention).

    Attributes:
        parameters: all parameter names, in the costs' order.
        values: (K, P) the minimum per toy: the batched solution where it converged, the
            plain per-toy fit's (``fits[k]``) where it did not (``fallback``).
        errors: (K, P) parabolic errors √(2 H⁻¹)_jj from the BHHH curvature H of −2 ln L
            (the observed Fisher information) at the minimum, over the non-fixed parameters
            (errordef 1; 0 for fixed, NaN where H is not positive definite); for fallback
            toys the per-toy fit's Hesse errors. For Minuit's errors use ``validate=True``.
        covariance: (K, P, P) the matrices 2 H⁻¹ those errors come from (rows and columns
            of fixed parameters 0, all NaN where H is not positive definite); for fallback
            toys the per-toy fit's covariance (NaN if Minuit has none).
        fval: (K,) −2 ln L at ``values``, equal to ``cost_k(*values[k])``.
        converged: (K,) the batched Newton stage converged (see :func:`fit_batched`).
        n_iter: (K,) Newton iterations of the batched stage.
        decrement: (K,) Newton decrement ½ gᵀH⁻¹g where the batched stage stopped: what a
            further step was expected to gain in −2 ln L (< ``tol`` for smooth minima, up to
            2e-4 at kinks of network densities).
        fallback: (K,) toys that did not converge in the batched stage and were fitted by the
            plain per-toy :func:`egmm.infer.fit` from their start instead (flagged, not dropped).
        valid: (K,) with ``validate``: Minuit's verdict on the per-toy fit; otherwise
            ``converged`` (and the fallback fit's verdict for fallback toys).
        fixed: names of the fixed parameters.
        fits: per toy the :class:`~egmm.infer.FitResult` of MIGRAD started at the batched
            solution (``validate=True``), of the fallback fit, or ``None``.
    """

    parameters: tuple[str, ...]
    values: np.ndarray
    errors: np.ndarray
    covariance: np.ndarray
    fval: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray
    decrement: np.ndarray
    fallback: np.ndarray
    valid: np.ndarray
    fixed: tuple[str, ...]
    fits: list[FitResult | None] = field(repr=False)

    def __len__(self) -> int:
        return len(self.fval)

    def value(self, name: str) -> np.ndarray:
        """(K,) the fitted values of parameter ``name``."""
        return self.values[:, self._index(name)]

    def error(self, name: str) -> np.ndarray:
        """(K,) the errors of parameter ``name``."""
        return self.errors[:, self._index(name)]

    @property
    def minuit_values(self) -> np.ndarray:
        """(K, P) the per-toy Minuit values (NaN rows where a toy has no Minuit fit)."""
        out = np.full(self.values.shape, np.nan)
        for k, r in enumerate(self.fits):
            if r is not None:
                out[k] = [r.values[n] for n in self.parameters]
        return out

    @property
    def minuit_fval(self) -> np.ndarray:
        """(K,) the per-toy Minuit minima (NaN where a toy has no Minuit fit)."""
        return np.array([math.nan if r is None else r.fval for r in self.fits])

    def _index(self, name: str) -> int:
        if name not in self.parameters:
            raise ParameterError(f"unknown parameter {name!r}; the fit has {list(self.parameters)}")
        return self.parameters.index(name)

    def __repr__(self) -> str:
        return (f"BatchedFitResult({len(self)} toys, parameters={list(self.parameters)}, "
                f"converged={int(self.converged.sum())}, fallback={int(self.fallback.sum())}, "
                f"valid={int(self.valid.sum())})")


# ----------------------------------------------------------------------------------------------
# the batch: every toy's events, one evaluation
# ----------------------------------------------------------------------------------------------
def _items(cost: Any) -> list[Any]:
    return list(cost) if isinstance(cost, CostSum) else [cost]


def _same_yield(a: Yield | None, b: Yield | None) -> bool:
    """The same ν(θ): identical objects, or equal in structure (costs built one by one)."""
    if a is b:
        return True
    if a is None or b is None or type(a) is not type(b) or a.parameters != b.parameters:
        return False
    if isinstance(a, _ParameterYield):
        return True
    if isinstance(a, _ConstantYield) and isinstance(b, _ConstantYield):
        return a.constant_value == b.constant_value
    if isinstance(a, _Combination) and isinstance(b, _Combination):
        return (a.op == b.op and len(a.terms) == len(b.terms)
                and all(_same_yield(x, y) for x, y in zip(a.terms, b.terms)))
    return a._fn is b._fn


def _check_structure(k: int, template: list[Any], items: list[Any]) -> None:
    """Raise unless toy ``k``'s cost terms have the structure of toy 0's."""
    where = f"fit_batched: cost {k} differs from cost 0"
    if len(items) != len(template) or any(type(a) is not type(b)
                                          for a, b in zip(items, template)):
        raise InputError(f"{where} in its terms ({[type(i).__name__ for i in items]} vs "
                         f"{[type(i).__name__ for i in template]})")
    for a, b in zip(template, items):
        if isinstance(a, _UnbinnedCost):
            same = (a._mixture == b._mixture and a._extended == b._extended
                    and a._names == b._names and a._dtype == b._dtype
                    and a._allow_outside == b._allow_outside
                    and a.observables == b.observables and len(a._terms) == len(b._terms))
            if not same:
                raise InputError(f"{where}: unbinned costs of another kind, parameters, "
                                 "observables or options")
            for ta, tb in zip(a._terms, b._terms):
                if ta.name != tb.name or ta.density is not tb.density:
                    raise InputError(
                        f"{where}: component {tb.name!r} does not use the same density object "
                        f"as {ta.name!r} (toys of one model share it, as sample_toy and "
                        "with_data do)")
                if not _same_yield(ta.yield_, tb.yield_):
                    raise InputError(f"{where}: component {tb.name!r} has another yield "
                                     f"({tb.yield_!r} vs {ta.yield_!r})")
        elif isinstance(a, NormalConstraint):
            if (describe(a) != describe(b)
                    or np.ndim(a.covariance) != np.ndim(b.covariance)):
                raise InputError(f"{where}: NormalConstraint on {describe(b)} vs {describe(a)}")


def _split_costs(costs: Sequence[Any], names: tuple[str, ...]) -> tuple[list[list[Any]], int]:
    """Every cost's terms, checked for one common, vectorisable structure; and the position
    of the unbinned cost among them."""
    per_toy = [_items(c) for c in costs]
    template = per_toy[0]
    for item in template:
        if not isinstance(item, (_UnbinnedCost, NormalConstraint, Constant)):
            raise InputError(
                f"fit_batched: cannot vectorise a {type(item).__name__} term; it supports "
                "one UnbinnedNLL or ExtendedUnbinnedNLL plus NormalConstraint terms (use "
                "egmm.infer.fit per toy for other costs)")
    unbinned = [i for i, item in enumerate(template) if isinstance(item, _UnbinnedCost)]
    if len(unbinned) != 1:
        raise InputError(f"fit_batched: needs exactly one UnbinnedNLL or "
                         f"ExtendedUnbinnedNLL per cost, got {len(unbinned)}")
    for k, items in enumerate(per_toy[1:], start=1):
        _check_structure(k, template, items)
    nll = template[unbinned[0]]
    not_diff = [t.name for t in nll._terms if not t.differentiable]
    if not_diff:
        raise InputError(f"fit_batched: components {not_diff} have no torch θ gradient "
                         "(numpy densities); use egmm.infer.fit per toy")
    return per_toy, unbinned[0]


class _DensityParameters:
    """How a density's θ enters the batched evaluation: per-toy features z_k = φ(θ_k) (K, Q),
    computed once per toy, and per-event log p(x_i | z_k(i)).

    For a generic density z = θ (its parameters) and log p is its public
    ``log_prob_prepared`` with one θ per event.
    """

    def __init__(self, density: Any, dtype: torch.dtype) -> None:
        self.density = density
        self.dtype = dtype

    def features(self, theta: torch.Tensor) -> torch.Tensor:
        return theta.to(self.dtype)

    def jacobian(self, theta: torch.Tensor) -> torch.Tensor | None:
        """dz/dθ (K, Q, p); ``None`` for z = θ."""
        return None

    def event_inputs(self, prepared: Any, z: torch.Tensor, toy: torch.Tensor,
                     leaves: bool) -> list[torch.Tensor]:
        """The per-event tensors that log p depends on θ through, for the events of a chunk
        (``toy``: their toys); ``leaves``: made autograd leaves, for per-event scores."""
        with torch.no_grad():
            z_event = torch.index_select(z, 0, toy.to(z.device))
        return [z_event.requires_grad_(leaves)]

    def log_prob(self, prepared: Any, inputs: list[torch.Tensor]) -> torch.Tensor:
        """(n,) log p of a chunk's events from their :meth:`event_inputs`."""
        return self.density.log_prob_prepared(prepared, inputs[0])

    def log_prob_grads(self, prepared: Any, inputs: list[torch.Tensor]
                       ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """:meth:`log_prob` (without a graph) and its events' gradients with respect to
        their :meth:`event_inputs` (leaves; ``None`` where log p does not depend on one):
        one forward and one backward pass."""
        with torch.enable_grad(), first_order_graphs():
            lp = self.log_prob(prepared, inputs)
        if not lp.requires_grad:
            return lp, [None] * len(inputs)
        return lp.detach(), list(torch.autograd.grad(lp.sum(), inputs, allow_unused=True))

    def scores(self, grads: list[torch.Tensor | None], jac: torch.Tensor | None,
               toy: torch.Tensor) -> torch.Tensor | None:
        """Per-event d log p/dθ (n, p) from the gradients with respect to the
        :meth:`event_inputs` (``None`` where log p does not depend on them)."""
        (dz,) = grads
        if dz is None:
            return None
        dz = dz.to(torch.float64).cpu()
        return dz if jac is None else _chain(dz, jac.to(torch.float64).cpu(), toy)


class _GMMParameters(_DensityParameters):
    """:class:`~egmm.GMMDensity`: θ enters every network only through its θ branch, whose
    output is added to the first joint layer (paper Fig. 4). That branch is evaluated once
    per toy (K rows) instead of once per event, and z is its output (all networks, side by
    side); the rest of each network runs per event, as in ``GMMDensity.log_prob_prepared``.
    A network without inputs (the first observable's, a function of θ alone) runs once per
    toy entirely: its z is its output, the normalised mixture (log amplitudes less the
    truncation normalisations, means and widths: 3 N_G per toy) or the log probabilities of
    a discrete observable's values, and per event only the Gaussian terms at u, or the pick
    of the event's value, are left.
    """

    def __init__(self, density: Any, dtype: torch.dtype) -> None:
        super().__init__(density, dtype)
        self.sizes: list[int] | None = None
        self.per_toy = [net.input_branch is None for net in density.nets]
        # per-event work with events as columns (GMMDensity.mixture_t: frozen networks, every
        # observable continuous); the per-event inputs are then (F_i, n)
        self.by_columns = density._frozen() and not any(
            isinstance(net, CategoricalNet) for net in density.nets)

    def features(self, theta: torch.Tensor) -> torch.Tensor:
        d = self.density
        th = theta.to(device=d.device, dtype=self.dtype)
        parts = d._theta_parts(d.scale_theta(th))
        out = []
        for net, part, whole in zip(d.nets, parts, self.per_toy):
            part = part.expand(th.shape[0], -1)
            if whole:  # the whole first joint pre-activation is the θ part plus the bias
                pre = net.input_part(part[:, :0], part)
                if isinstance(net, CategoricalNet):
                    part = net.log_probs(pre)
                else:
                    log_f, mu, sigma = net.mixture(pre)
                    a = log_f - _truncated_log_norm(mu, sigma, d.projection.u_lo,
                                                    d.projection.u_hi)
                    part = torch.cat([a, mu, sigma], dim=1)
            out.append(part)
        self.sizes = [p.shape[-1] for p in out]
        return torch.cat(out, dim=1)

    def jacobian(self, theta: torch.Tensor) -> torch.Tensor | None:
        # J = dz/dθ by the double-vjp trick on K rows: g(v) = Jᵀv is linear in v, and
        # d(Σ_k g_kj)/dv = J[:, :, j]; P + 1 small backward passes, no functorch start-up
        with torch.enable_grad():
            th = theta.detach().to(device=self.density.device,
                                   dtype=self.dtype).requires_grad_(True)
            z = self.features(th)
            v = torch.zeros_like(z, requires_grad=True)
            # vᵀz summed rather than grad_outputs=v: torch imports sympy (~0.35 s, once per
            # process) to check a given grad_outputs' shape
            (g,) = torch.autograd.grad((z * v).sum(), th, create_graph=True)
            cols = []
            for j in range(th.shape[1]):
                (col,) = torch.autograd.grad(g[:, j].sum(), v, retain_graph=True,
                                             allow_unused=True)
                cols.append(torch.zeros_like(z) if col is None else col)
        return torch.stack(cols, dim=2).detach()

    @staticmethod
    def lower(prepared: Mapping[str, Any]) -> dict[str, Any]:
        """Prepared events with a float32 body: latent values and input parts cast (from
        their float64 values), the log-Jacobian kept in float64."""
        parts_t = [p.to(torch.float32) for p in prepared["input_parts_t"]]
        return {"u": prepared["u"].to(torch.float32), "logdet": prepared["logdet"],
                "input_parts": [p.t() for p in parts_t], "input_parts_t": parts_t}

    def event_inputs(self, prepared: Any, z: torch.Tensor, toy: torch.Tensor,
                     leaves: bool) -> list[torch.Tensor]:
        """Per network the events' first joint pre-activations: their input part plus their
        toy's θ part (a network without inputs: their toy's output, 3 N_G or one per value);
        (n, F_i), or with events as columns (:attr:`by_columns`) (F_i, n) — after a row of
        ones where the network runs per event. What θ enters through, so that its gradient
        is the per-event gradient with respect to the toy's z, without a per-event copy of z
        in the graph."""
        assert self.sizes is not None
        pres = []
        with torch.no_grad():
            toy = toy.to(z.device)
            segments = _segments(toy) if self.by_columns else None
            for z_net, part, part_t, whole in zip(
                    torch.split(z, self.sizes, dim=1), prepared["input_parts"],
                    prepared["input_parts_t"], self.per_toy):
                if not self.by_columns:
                    rows = torch.index_select(z_net, 0, toy)
                    pre = rows if whole else rows.add_(part)
                elif whole:
                    pre = _per_toy_columns(z_net.t(), toy, segments)
                else:  # the input part plus its toy's θ part, written below the row of ones
                    pre = ones_row(part_t.shape[0], part_t.shape[1], part_t)
                    _add_per_toy(part_t, z_net.t(), toy, segments, pre[1:])
                pres.append(pre.requires_grad_(leaves))
        return pres

    def _conditional(self, i: int, u: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
        """(n,) log p_i(u_i | u_<i, θ) of network i from its event input ``pre``."""
        d = self.density
        if self.per_toy[i] and isinstance(d.nets[i], CategoricalNet):
            return pre.gather(1, d._category(u, i)[:, None])[:, 0]
        if self.per_toy[i]:
            dim = 0 if self.by_columns else -1  # the components' axis
            a, mu, sigma = pre.split(d.nets[i].n_gauss, dim=dim)
            return _mixture_log_prob(u[:, i], a, mu, sigma, dim=dim)
        if self.by_columns:
            return d._conditional_pre_t(i, u, pre)
        return d._conditional_pre(i, u, pre)

    def log_prob(self, prepared: Any, inputs: list[torch.Tensor]) -> torch.Tensor:
        u = prepared["u"]
        cond = [self._conditional(i, u, pre) for i, pre in enumerate(inputs)]
        return torch.stack(cond, dim=1).sum(1) + prepared["logdet"]

    def log_prob_grads(self, prepared: Any, inputs: list[torch.Tensor]
                       ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """As :meth:`_DensityParameters.log_prob_grads`, network by network: each one's
        backward pass follows its forward pass while its activations are still in cache
        (float32 passes 3.6 % faster than one backward pass through all of them, the median
        of 60 alternating pairs: within a shared VM's noise), and its graph is freed before
        the next one is built. The same numbers as through :meth:`log_prob`."""
        u = prepared["u"]
        cond, grads = [], []
        for i, pre in enumerate(inputs):
            with torch.enable_grad(), first_order_graphs():
                lp = self._conditional(i, u, pre)
            grads.append(torch.autograd.grad(lp.sum(), pre, allow_unused=True)[0]
                         if lp.requires_grad else None)
            cond.append(lp.detach())
        return torch.stack(cond, dim=1).sum(1) + prepared["logdet"], grads

    def scores(self, grads: list[torch.Tensor | None], jac: torch.Tensor | None,
               toy: torch.Tensor) -> torch.Tensor | None:
        assert self.sizes is not None and jac is not None
        out = None
        start = 0
        segments = _segments(toy) if self.by_columns else None
        for size, dpre, whole in zip(self.sizes, grads, self.per_toy):
            if dpre is not None:
                if segments is not None:  # (F, n), without the row of ones, in its own dtype
                    dpre = dpre if whole else dpre[1:]
                    j = jac[:, start:start + size].to(dpre.dtype)
                    part = _chain_t(dpre, j, segments).to(torch.float64).cpu()
                else:
                    j = jac[:, start:start + size].to(torch.float64).cpu()
                    part = _chain(dpre.to(torch.float64).cpu(), j, toy)
                out = part if out is None else out.add_(part)
            start += size
        return out


def _lowerable(density: Any, dtype: torch.dtype) -> bool:
    """Whether the batched Newton steps may evaluate ``density`` with a float32 body: a
    float64 :class:`~egmm.GMMDensity` with parameters, on the CPU or a GPU (its weights are
    float32 anyway). A θ-independent one is evaluated once, in the cost's dtype; user-written
    densities (TorchDensity) always run in the cost's dtype."""
    return (isinstance(density, GMMDensity) and bool(density.parameters)
            and dtype == torch.float64)


def _chain(dz: torch.Tensor, jac: torch.Tensor, toy: torch.Tensor) -> torch.Tensor:
    """Per-event scores ``dz_i @ J[toy_i]`` (n, P) from per-event feature gradients dz (n, Q)
    and the per-toy Jacobians J (K, Q, P); ``toy`` is sorted (a batch's events are grouped by
    toy), so each toy's events are one matrix product rather than a gathered copy of J."""
    ids, counts = torch.unique_consecutive(toy, return_counts=True)
    if len(ids) and bool((counts == counts[0]).all()):
        n = int(counts[0])
        return torch.bmm(dz.reshape(len(ids), n, -1), jac[ids]).reshape(len(dz), -1)
    return torch.cat([d @ jac[k] for d, k in zip(dz.split(counts.tolist()), ids.tolist())])


# per-toy columns are added toy by toy up to this many toys in a chunk, gathered beyond
_SEGMENT_LOOP = 64


def _segments(toy: torch.Tensor) -> tuple[list[int], list[int]]:
    """The toys of a chunk's (sorted) events and their numbers of events."""
    ids, counts = torch.unique_consecutive(toy, return_counts=True)
    return ids.tolist(), counts.tolist()


def _one_size(segments: tuple[list[int], list[int]]) -> bool:
    """Whether a chunk's toys are consecutive and of one size (then per-toy work runs on
    (…, toys, events) views)."""
    ids, counts = segments
    return bool(ids) and counts.count(counts[0]) == len(ids) and ids[-1] - ids[0] == len(ids) - 1


def _add_per_toy(a: torch.Tensor, per_toy: torch.Tensor, toy: torch.Tensor,
                 segments: tuple[list[int], list[int]], out: torch.Tensor) -> None:
    """out = a + per_toy[:, toy] for events as columns, a (F, n) and per_toy (F, K), without
    gathering a per-event copy where it can: toys of equal size as one broadcast sum over an
    (F, toys, events) view, a few toys one slice each (a column gather is ~3x slower)."""
    ids, counts = segments
    k = len(ids)
    if _one_size(segments):
        n_k = counts[0]
        torch.add(a.view(-1, k, n_k), per_toy[:, ids[0]:ids[0] + k, None],
                  out=out.view(-1, k, n_k))
    elif k <= _SEGMENT_LOOP:
        start = 0
        for i, m in zip(ids, counts):
            torch.add(a[:, start:start + m], per_toy[:, i:i + 1], out=out[:, start:start + m])
            start += m
    else:
        torch.index_select(per_toy.contiguous(), 1, toy, out=out)
        out.add_(a)


def _per_toy_columns(per_toy: torch.Tensor, toy: torch.Tensor,
                     segments: tuple[list[int], list[int]]) -> torch.Tensor:
    """per_toy[:, toy] (F, n) for per_toy (F, K): toys of one size as one broadcast copy, a
    column gather (~5x slower) otherwise."""
    ids, counts = segments
    if _one_size(segments):
        k = len(ids)
        return per_toy[:, ids[0]:ids[0] + k, None].expand(-1, k, counts[0]).reshape(
            per_toy.shape[0], -1)
    return torch.index_select(per_toy.contiguous(), 1, toy)


def _pieces(events: np.ndarray, old: list[slice], new: list[slice]
            ) -> list[list[tuple[int, int, int]]]:
    """For the sorted event indices ``events`` (into the concatenation of the ``old`` chunks)
    regrouped into the ``new`` chunks (slices of ``events``): per new chunk its runs of
    consecutive events as (old chunk, start within it, length)."""
    bounds = np.array([c.start for c in old] + [old[-1].stop if old else 0])
    out = []
    for chunk in new:
        ev = events[chunk]
        # a run ends where the events jump or an old chunk ends
        cut = np.flatnonzero((np.diff(ev) != 1)
                             | (np.searchsorted(bounds, ev[1:], side="right")
                                != np.searchsorted(bounds, ev[:-1], side="right"))) + 1
        runs = []
        for a, b in zip(np.r_[0, cut], np.r_[cut, len(ev)]):
            c = int(np.searchsorted(bounds, ev[a], side="right")) - 1
            runs.append((c, int(ev[a] - bounds[c]), int(b - a)))
        out.append(runs)
    return out


def _pick(per_chunk: list[torch.Tensor], pieces: list[list[tuple[int, int, int]]],
          dim: int = 0) -> list[torch.Tensor]:
    """The new chunks of per-chunk tensors (events along ``dim``) from :func:`_pieces`: each
    joins contiguous runs of old ones (a toy's events are one run; no gather by index, ~3x
    slower along the columns)."""
    return [torch.cat([per_chunk[c].narrow(dim, start, length) for c, start, length in chunk],
                      dim=dim) for chunk in pieces]


def _joined(density: GMMDensity, preps: list[Mapping[str, Any]],
            pieces: list[list[tuple[int, int, int]]]) -> list[dict[str, Any]]:
    """A GMMDensity's prepared events (``GMMDensity.prepare``, per old chunk) regrouped into
    new chunks by :func:`_pieces`; input parts stay events as columns (F, n), joined without
    transposing."""
    u = _pick([p["u"] for p in preps], pieces)
    logdet = _pick([p["logdet"] for p in preps], pieces)
    parts = []
    for j, net in enumerate(density.nets):
        if net.input_branch is None:  # the bias alone, one column shared by all events
            parts.append([preps[0]["input_parts_t"][j] for _ in pieces])
        else:
            parts.append(_pick([p["input_parts_t"][j] for p in preps], pieces, dim=1))
    chunks = []
    for c in range(len(pieces)):
        parts_t = [part[c] for part in parts]
        chunks.append({"u": u[c], "logdet": logdet[c], "input_parts": [p.t() for p in parts_t],
                       "input_parts_t": parts_t})
    return chunks


def _chunk_size(densities: Iterable[Any]) -> int:
    """Events per chunk: ``_CHUNK``, or fewer where a GMMDensity's widest layer would make
    its float64 activations outgrow ``_NETWORK_CHUNK_BYTES`` (at least 1024)."""
    widths = [layer.out_features for d in densities if isinstance(d, GMMDensity)
              for layer in d.nets.modules() if isinstance(layer, torch.nn.Linear)]
    if not widths:
        return _CHUNK
    return max(1024, min(_CHUNK, _NETWORK_CHUNK_BYTES // (8 * max(widths))))


def _chunks(counts: list[int], n: int, size: int = _CHUNK) -> list[slice]:
    """Slices of ``n`` events (toys' events in order) of about ``size`` events; toys of one
    size are not split between chunks (each chunk then adds per-toy terms as one broadcast)."""
    step = size
    if counts and counts.count(counts[0]) == len(counts) and 0 < counts[0] <= size:
        step = (size // counts[0]) * counts[0]
    return [slice(s, min(s + step, n)) for s in range(0, n, step)]


def _chain_t(dz: torch.Tensor, jac: torch.Tensor, segments: tuple[list[int], list[int]]
             ) -> torch.Tensor:
    """:func:`_chain` from feature gradients with events as columns, dz (Q, n), and the
    chunk's :func:`_segments`: each toy's scores J_kᵀ dz[:, events of k] (P, n_k), returned
    as (n, P) (no transposed copy of dz)."""
    ids, counts = segments
    jac_t = jac.transpose(1, 2)
    if _one_size(segments):
        blocks = dz.reshape(dz.shape[0], len(ids), counts[0]).transpose(0, 1)  # (K, Q, n_k)
        first = ids[0]
        return (torch.bmm(jac_t[first:first + len(ids)], blocks).transpose(1, 2)
                .reshape(dz.shape[1], -1))
    return torch.cat([jac_t[k] @ d for d, k in zip(dz.split(counts, dim=1), ids)],
                     dim=1).t()


def _parameters_of(density: Any, dtype: torch.dtype) -> _DensityParameters:
    if isinstance(density, GMMDensity):
        return _GMMParameters(density, dtype)
    return _DensityParameters(density, dtype)


class _Batch:
    """Toys' events in one batch with a toy index, θ-independent work (``prepare``) done once
    per chunk of events.

    ``values(θ)``: the (K,) values −2 ln L_k(θ_k) for θ (K, P). ``derivatives(θ)``: also the
    exact gradients and BHHH curvature matrices. ``subset(rows)``: the batch of some of the
    toys (to stop evaluating converged ones).
    """

    def __init__(self, per_toy: list[list[Any]], position: int, names: tuple[str, ...],
                 vectorised_yield: list[bool] | None = None, low_precision: bool = False
                 ) -> None:
        self.per_toy = per_toy
        self.position = position
        self.n_toys = len(per_toy)
        self.names = names
        nlls: list[_UnbinnedCost] = [items[position] for items in per_toy]
        self.nll = nll = nlls[0]
        self.local = torch.tensor([names.index(n) for n in nll._names], dtype=torch.long)
        counts = [c.n_events for c in nlls]
        self.toy = torch.repeat_interleave(torch.arange(self.n_toys),
                                           torch.tensor(counts, dtype=torch.long))
        x = np.concatenate([c._x for c in nlls]) if sum(counts) else nll._x[:0]
        weighted = any(c._w is not None for c in nlls)
        self.w = torch.ones(len(x), dtype=torch.float64) if not weighted else torch.cat([
            c._w if c._w is not None else torch.ones(c.n_events, dtype=torch.float64)
            for c in nlls])
        self.sum_weights = torch.tensor([c.sum_weights for c in nlls], dtype=torch.float64)
        self.chunk_size = _chunk_size(t.density for t in nll._terms)
        self.chunks = _chunks(counts, len(x), self.chunk_size)
        # per term: its θ map, the global columns of its parameters, and per chunk either the
        # prepared events or (θ-independent density) the cached log p
        self.maps = [_parameters_of(t.density, nll._dtype) for t in nll._terms]
        self.columns = [self.local[t.theta_index] for t in nll._terms]
        self.prepared: list[list[Any]] = []
        self.cached: list[list[torch.Tensor] | None] = []
        for j, t in enumerate(nll._terms):
            if isinstance(t.density, GMMDensity) and t.density.parameters:
                # the toys' costs prepared their events already: joined, not prepared again
                preps = [p for c in nlls for p in c._terms[j].prepared]
                bounds = np.cumsum([0] + [len(p["u"]) for p in preps])
                old = [slice(int(a), int(b)) for a, b in pairwise(bounds)]
                self.prepared.append(_joined(t.density, preps, _pieces(
                    np.arange(len(x)), old, self.chunks)))
                self.cached.append(None)
            elif t.density.parameters:
                self.prepared.append([t.density.prepare(x[c][:, t.columns], dtype=nll._dtype)
                                      for c in self.chunks])
                self.cached.append(None)
            else:  # the toys' costs hold its log p already (checked finite there)
                logs = [piece for c in nlls for piece in (c._terms[j].cached or [])]
                whole = torch.cat(logs) if logs else torch.zeros(0, dtype=torch.float64)
                self.cached.append([whole[c] for c in self.chunks])
                self.prepared.append([None] * len(self.chunks))
        self.vectorised_yield = (list(vectorised_yield) if vectorised_yield is not None
                                 else [True] * len(nll._terms))
        self.constraints = []
        self.constants = torch.zeros(self.n_toys, dtype=torch.float64)
        for j, item in enumerate(per_toy[0]):
            if isinstance(item, NormalConstraint):
                idx = torch.tensor([names.index(n) for n in describe(item)], dtype=torch.long)
                centre = torch.as_tensor(np.stack([np.atleast_1d(items[j].value)
                                                   for items in per_toy]), dtype=torch.float64)
                covinv = torch.as_tensor(np.stack([np.linalg.inv(items[j].covariance)
                                                   if np.ndim(items[j].covariance) == 2 else
                                                   1.0 / np.atleast_1d(items[j].covariance)
                                                   for items in per_toy]), dtype=torch.float64)
                self.constraints.append((idx, centre, covinv))
            elif isinstance(item, Constant):
                self.constants += torch.tensor([float(items[j].value) for items in per_toy],
                                               dtype=torch.float64)
        self.low_precision = False
        if low_precision:
            self._lower()

    def _lower(self) -> None:
        """Float32 network bodies for the terms :func:`_lowerable` allows: their maps, and
        their prepared events cast from the float64 ones."""
        self.maps, self.prepared = list(self.maps), list(self.prepared)
        for j, t in enumerate(self.nll._terms):
            if _lowerable(t.density, self.nll._dtype):
                self.maps[j] = _parameters_of(t.density, torch.float32)
                self.prepared[j] = [_GMMParameters.lower(p) for p in self.prepared[j]]
        self.low_precision = True

    @property
    def indexable(self) -> bool:
        """Whether :meth:`subset` selects events from this batch's prepared tensors (every
        term a GMMDensity or θ-independent) rather than preparing the toys' events again."""
        return all(cached is not None or isinstance(t.density, GMMDensity)
                   for t, cached in zip(self.nll._terms, self.cached))

    def subset(self, rows: np.ndarray) -> _Batch:
        """The batch of toys ``rows`` (sorted indices into this batch)."""
        if self.indexable:
            return self._take(np.asarray(rows))
        return _Batch([self.per_toy[i] for i in rows], self.position, self.names,
                      self.vectorised_yield, self.low_precision)

    def _take(self, rows: np.ndarray) -> _Batch:
        """:meth:`subset` by selecting the events of toys ``rows`` from the prepared (and
        cached) tensors, re-chunked; nothing is prepared again."""
        picked = torch.as_tensor(rows, dtype=torch.long)
        renumber = torch.full((self.n_toys,), -1, dtype=torch.long)
        renumber[picked] = torch.arange(len(rows))
        events = torch.nonzero(renumber[self.toy] >= 0).squeeze(1)
        n = len(events)
        out = copy.copy(self)
        out.per_toy = [self.per_toy[i] for i in rows]
        out.n_toys = len(rows)
        out.toy = renumber[self.toy[events]]
        out.w = self.w[events]
        out.sum_weights = self.sum_weights[picked]
        out.chunks = _chunks(torch.bincount(out.toy, minlength=len(rows)).tolist(), n,
                             self.chunk_size)
        pieces = _pieces(events.numpy(), self.chunks, out.chunks)

        out.prepared, out.cached = [], []
        for t, preps, cached in zip(self.nll._terms, self.prepared, self.cached):
            if cached is not None:
                out.cached.append(_pick(cached, pieces))
                out.prepared.append([None] * len(out.chunks))
            else:
                out.cached.append(None)
                out.prepared.append(_joined(t.density, preps, pieces))
        out.constraints = [(idx, centre[picked], covinv[picked])
                           for idx, centre, covinv in self.constraints]
        out.constants = self.constants[picked]
        return out

    @property
    def smooth_networks(self) -> bool:
        """Whether every network that :meth:`lowered` runs in float32 has a smooth activation
        (SiLU): no kinks besides those of |θ| features at 0 (see :func:`fit_batched`)."""
        return all(t.density.config["activation"] == "silu" for t in self.nll._terms
                   if _lowerable(t.density, self.nll._dtype))

    def lowered(self) -> _Batch | None:
        """This batch with float32 network bodies (float64 sums), for the Newton steps; None
        where no term has a network that can run in float32 (see :func:`_lowerable`). Its
        prepared events are cast from this batch's, not prepared again."""
        if not any(_lowerable(t.density, self.nll._dtype) for t in self.nll._terms):
            return None
        out = copy.copy(self)
        out._lower()
        return out

    # -- yields ----------------------------------------------------------------------------------
    def check_yields(self, theta: torch.Tensor) -> None:
        """Use one vectorised call per yield where it gives the per-toy values at ``theta``
        (elementwise torch functions do); a loop over toys otherwise."""
        th = theta[:, self.local]
        for c, t in enumerate(self.nll._terms):
            if t.yield_ is None or not self.nll._mixture:
                continue
            looped = self._yield_loop(t, th)
            try:
                with torch.no_grad():
                    vec = self._yield_vector(t, th)
                self.vectorised_yield[c] = bool(torch.allclose(vec, looped, rtol=1e-12,
                                                               atol=0.0, equal_nan=True))
            except (RuntimeError, ValueError, TypeError, IndexError):
                self.vectorised_yield[c] = False

    def _yield_vector(self, t: Any, th: torch.Tensor) -> torch.Tensor:
        nu = t.yield_._evaluate({p: th[:, i] for p, i in t.yield_index.items()})
        nu = torch.as_tensor(nu, dtype=torch.float64)
        if nu.shape not in ((), (self.n_toys,)):
            raise ValueError("yield is not elementwise")
        return nu.expand(self.n_toys)

    def _yield_loop(self, t: Any, th: torch.Tensor) -> torch.Tensor:
        return torch.stack([
            torch.as_tensor(t.yield_._evaluate({p: th[k, i] for p, i in t.yield_index.items()}),
                            dtype=torch.float64).reshape(())
            for k in range(self.n_toys)])

    def _yields(self, th: torch.Tensor) -> torch.Tensor:
        """(K, C) expected yields ν_kc."""
        cols = [self._yield_vector(t, th) if self.vectorised_yield[c] else self._yield_loop(t, th)
                for c, t in enumerate(self.nll._terms)]
        return torch.stack(cols, dim=1)

    # -- −2 ln L per toy -----------------------------------------------------------------------
    def _features(self, theta: torch.Tensor) -> list[torch.Tensor | None]:
        """Per term its per-toy features z (K, Q), None for a θ-independent density."""
        return [None if cached is not None else m.features(theta[:, cols])
                for m, cols, cached in zip(self.maps, self.columns, self.cached)]

    def _event_inputs(self, c: int, z: list[torch.Tensor | None], toy: torch.Tensor,
                      leaves: bool) -> list[list[torch.Tensor] | None]:
        """Per term the per-event inputs of chunk ``c`` (None: θ-independent density)."""
        return [None if zt is None else m.event_inputs(prep[c], zt, toy, leaves)
                for m, zt, prep in zip(self.maps, z, self.prepared)]

    def _chunk_log(self, c: int, inputs: list[list[torch.Tensor] | None],
                   nu_event: torch.Tensor | None) -> torch.Tensor:
        """ln p_i (single density) or ln λ_i = ln Σ_c ν_c p_c (mixture) of the events of
        chunk ``c``, from per-event inputs (:meth:`_event_inputs`) and yields (n, C)."""
        logs = [cached[c] if cached is not None else m.log_prob(prep[c], ins).to(torch.float64)
                for m, ins, prep, cached in zip(self.maps, inputs, self.prepared, self.cached)]
        return self._combine(logs, nu_event, derivatives=False)[0]

    @staticmethod
    def _combine(logs: list[torch.Tensor], nu_event: torch.Tensor | None,
                 derivatives: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """ln λ_i from the terms' ln p_c (n,) each: ln p (single density) or, with yields
        (n, C), ln Σ_c ν_c p_c; and for a mixture (``derivatives``) ∂ln λ/∂ln p_c =
        ν_c p_c/λ and ∂ln λ/∂ν_c = p_c/λ (n, C each; None otherwise)."""
        if nu_event is None:
            return logs[0].cpu(), None, None
        device = logs[0].device
        # as in the cost: log Σ_c ν_c p_c = m + log Σ_c ν_c exp(log p_c − m), which keeps a
        # finite gradient for a yield at its limit ν = 0
        lp = torch.stack([v.to(device) for v in logs], dim=1)
        top = lp.max(dim=1).values
        e = torch.exp(lp - top[:, None])
        nu_event = nu_event.to(device)
        lam = (nu_event * e).sum(dim=1)
        if not derivatives:
            return (top + torch.log(lam)).cpu(), None, None
        d_nu = e / lam[:, None]
        return (top + torch.log(lam)).cpu(), (nu_event * d_nu).cpu(), d_nu.cpu()

    @staticmethod
    def _gather(per_toy: torch.Tensor | None, toy: torch.Tensor) -> torch.Tensor | None:
        # index_select, not indexing: its backward is an index_add, not a sorting index_put
        return None if per_toy is None else torch.index_select(per_toy, 0,
                                                               toy.to(per_toy.device))

    def _assemble(self, theta: torch.Tensor, total: torch.Tensor, nu: torch.Tensor | None
                  ) -> torch.Tensor:
        """(K,) −2 ln L_k from the per-toy Σ_i w_i ln λ_i and the yields (K, C); +inf where a
        toy's θ is invalid (negative yield, zero density)."""
        if nu is not None:
            if self.nll._extended:
                total = total - nu.sum(dim=1)
            else:
                total = total - self.sum_weights * torch.log(nu.sum(dim=1))
        value = -2.0 * total + self.constants + self._constraints(theta)
        bad = ~torch.isfinite(value)
        if nu is not None:
            bad |= (nu < 0).any(dim=1)
        return torch.where(bad, torch.full_like(value, math.inf), value)

    def _constraints(self, theta: torch.Tensor) -> torch.Tensor:
        value = torch.zeros(self.n_toys, dtype=torch.float64)
        for idx, centre, covinv in self.constraints:
            delta = theta[:, idx] - centre
            if covinv.ndim == 2:
                value = value + (delta * delta * covinv).sum(dim=1)
            else:
                value = value + torch.einsum("ki,kij,kj->k", delta, covinv, delta)
        return value

    def values(self, theta: np.ndarray) -> np.ndarray:
        """(K,) −2 ln L_k at θ (K, P)."""
        with torch.no_grad():
            th = torch.as_tensor(theta, dtype=torch.float64)
            thl = th[:, self.local]
            nu = self._yields(thl) if self.nll._mixture else None
            z = self._features(th)
            total = torch.zeros(self.n_toys, dtype=torch.float64)
            for c, sl in enumerate(self.chunks):
                toy = self.toy[sl]
                ll = self._chunk_log(c, self._event_inputs(c, z, toy, leaves=False),
                                     self._gather(nu, toy))
                total.index_add_(0, toy, self.w[sl] * ll)
            return self._assemble(th, total, nu).numpy()

    def derivatives(self, theta: np.ndarray, weight_power: int = 1
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        r"""f (K,), exact gradients g (K, P) and BHHH curvatures H (K, P, P) at θ (K, P).

        H_k = 2 Σ_i w_i s_i s_iᵀ with the per-event scores s_i = ∇ ln p_i (∇ ln λ_i for
        extended costs; either way its expectation is the Fisher information, the expected
        Hessian of −2 ln L / 2), plus the constraints' exact 2 V⁻¹. ``weight_power`` 2: the
        event weights squared in H instead (2 Σ w_i² s_i s_iᵀ + 2 V⁻¹: twice the variance of
        −ln L's gradient, the middle of the sandwich of weighted fits). One forward and one
        backward pass per chunk and term (network by network for a GMMDensity): the scores
        are the gradients with respect to per-event copies of the per-toy features, chained
        through their Jacobians (K rows); in a mixture each term's weighted by ∂ln λ/∂ln p_c,
        plus the yields' share ∂ln λ/∂ν · ∂ν/∂θ.
        """
        n_par = theta.shape[1]
        th = torch.as_tensor(theta, dtype=torch.float64)
        thl = th[:, self.local]
        nu, jac_nu = None, None
        if self.nll._mixture:
            thl_leaf = thl.clone().requires_grad_(True)
            nu_graph = self._yields(thl_leaf)
            nu = nu_graph.detach()
            jac_nu = torch.zeros((self.n_toys, nu.shape[1], n_par), dtype=torch.float64)
            if nu_graph.requires_grad:
                for c in range(nu.shape[1]):
                    (jc,) = torch.autograd.grad(nu_graph[:, c].sum(), thl_leaf,
                                                retain_graph=True, allow_unused=True)
                    if jc is not None:
                        jac_nu[:, c, self.local] = jc
        with torch.no_grad():
            z = self._features(th)
        jac_z = [None if zt is None else m.jacobian(th[:, cols])
                 for m, cols, zt in zip(self.maps, self.columns, z)]
        total = torch.zeros(self.n_toys, dtype=torch.float64)
        grad = torch.zeros((self.n_toys, n_par), dtype=torch.float64)
        outer = torch.zeros((self.n_toys, n_par, n_par), dtype=torch.float64)
        norm = None
        if nu is not None and not self.nll._extended:
            assert jac_nu is not None  # ln p_i = ln λ_i − ln Σ_c ν_c: its share of each score
            norm = jac_nu.sum(dim=1) / nu.sum(dim=1, keepdim=True)
        for c, sl in enumerate(self.chunks):
            toy = self.toy[sl]
            inputs = self._event_inputs(c, z, toy, leaves=True)
            logs, grads = [], []
            for m, ins, prep, cached in zip(self.maps, inputs, self.prepared, self.cached):
                if cached is not None:
                    logs.append(cached[c])
                    grads.append(None)
                else:  # each term's (each network's) graph used and freed at once
                    lp, g = m.log_prob_grads(prep[c], ins)
                    logs.append(lp.to(torch.float64))
                    grads.append(g)
            ll, d_log, d_nu = self._combine(logs, None if nu is None else self._gather(nu, toy))
            scores = torch.zeros((len(toy), n_par), dtype=torch.float64)
            for j, (m, g, jac, cols) in enumerate(zip(self.maps, grads, jac_z, self.columns)):
                term = None if g is None else m.scores(g, jac, toy)
                if term is not None:
                    scores[:, cols] += term if d_log is None else d_log[:, j:j + 1] * term
            if d_nu is not None and jac_nu is not None:
                scores += torch.einsum("nc,ncp->np", d_nu, torch.index_select(jac_nu, 0, toy))
            if norm is not None:
                scores -= torch.index_select(norm, 0, toy)
            w = self.w[sl]
            total.index_add_(0, toy, w * ll)
            grad.index_add_(0, toy, w[:, None] * scores)
            wo = w if weight_power == 1 else w ** weight_power
            outer.index_add_(0, toy, wo[:, None, None] * scores[:, :, None] * scores[:, None, :])
        f = self._assemble(th, total, nu)
        grad = -2.0 * grad
        hess = 2.0 * outer
        if nu is not None and self.nll._extended:
            assert jac_nu is not None
            grad = grad + 2.0 * jac_nu.sum(dim=1)  # from −2 · (−Σ_c ν_c)
        for idx, centre, covinv in self.constraints:
            delta = th[:, idx] - centre
            full = covinv if covinv.ndim == 3 else torch.diag_embed(covinv)
            grad[:, idx] += 2.0 * torch.einsum("kij,kj->ki", full, delta)
            hess[:, idx[:, None], idx[None, :]] += 2.0 * full
        return f.numpy(), grad.numpy(), hess.numpy()


# ----------------------------------------------------------------------------------------------
# start values, fixed parameters, limits
# ----------------------------------------------------------------------------------------------
def _limits(cost: Any, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    ann = describe(cost, annotations=True)
    lo = np.array([-math.inf if ann[n] is None else float(ann[n][0]) for n in names])
    hi = np.array([math.inf if ann[n] is None else float(ann[n][1]) for n in names])
    return lo, hi


def _check_names(given: Iterable[str], names: tuple[str, ...], what: str) -> None:
    unknown = [n for n in given if n not in names]
    if unknown:
        raise ParameterError(f"{what}: unknown parameters {unknown}; the costs have {list(names)}")


def _start(costs: Sequence[Any], names: tuple[str, ...], start: Any, lo: np.ndarray,
           hi: np.ndarray) -> np.ndarray:
    """(K, P) start points: the defaults of :func:`start_values`, overridden by ``start``
    (whose values must lie within the limits)."""
    k_toys = len(costs)
    theta = np.full((k_toys, len(names)), np.nan)
    given: list[dict[str, float]] = [{} for _ in range(k_toys)]
    if start is None:
        pass
    elif isinstance(start, Mapping):
        _check_names(start, names, "start")
        given = [{n: float(v) for n, v in start.items()} for _ in range(k_toys)]
    elif isinstance(start, np.ndarray) or (isinstance(start, Sequence)
                                           and not isinstance(start, str)
                                           and all(not isinstance(s, Mapping) for s in start)):
        arr = np.asarray(start, dtype=np.float64)
        if arr.shape != (k_toys, len(names)):
            raise ParameterError(f"start: expected an array ({k_toys}, {len(names)}) in the "
                                 f"order {list(names)}, got shape {arr.shape}")
        given = [dict(zip(names, row.tolist())) for row in arr]
    elif isinstance(start, Sequence) and len(start) == k_toys:
        for s in start:
            _check_names(s, names, "start")
        given = [{n: float(v) for n, v in s.items()} for s in start]
    else:
        raise InputError("start: a mapping name -> value (all toys), a sequence of K mappings "
                         f"or an array (K, P) for K = {k_toys} toys")
    for k, values in enumerate(given):
        if len(values) < len(names):  # the defaults, for the parameters not given
            defaults = start_values(costs[k])
            theta[k] = [defaults[n] for n in names]
        for n, v in values.items():
            j = names.index(n)
            if not math.isfinite(v):
                raise ParameterError(f"start value of {n!r} (toy {k}) is {v}")
            if not lo[j] <= v <= hi[j]:
                raise ParameterError(f"start value {n}={v} (toy {k}) lies outside its limits "
                                     f"[{lo[j]}, {hi[j]}]")
            theta[k, j] = v
    return np.clip(theta, lo, hi)


def _fixed(fixed: Mapping[str, float] | Iterable[str] | None, names: tuple[str, ...],
           theta: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(P,) mask of fixed parameters; a mapping also sets their values in ``theta``."""
    mask = np.zeros(len(names), dtype=bool)
    if fixed is None:
        return mask
    if isinstance(fixed, Mapping):
        _check_names(fixed, names, "fixed")
        for n, v in fixed.items():
            j = names.index(n)
            v = float(v)
            if not (math.isfinite(v) and lo[j] <= v <= hi[j]):
                raise ParameterError(f"fixed value {n}={v} lies outside its limits "
                                     f"[{lo[j]}, {hi[j]}]")
            theta[:, j] = v
            mask[j] = True
        return mask
    fixed = [fixed] if isinstance(fixed, str) else list(fixed)
    _check_names(fixed, names, "fixed")
    mask[[names.index(n) for n in fixed]] = True
    return mask


# ----------------------------------------------------------------------------------------------
# projected, damped Newton for all toys at once
# ----------------------------------------------------------------------------------------------
def _reduced(g: np.ndarray, hess: np.ndarray, free: np.ndarray
             ) -> tuple[np.ndarray, np.ndarray]:
    """g and H restricted to each toy's free set (K, P): other rows/columns become the
    identity, so every toy is one (P, P) system whose held parameters get a zero step."""
    gr = np.where(free, g, 0.0)
    hr = np.where(free[:, :, None] & free[:, None, :], hess, 0.0)
    idx = np.arange(g.shape[1])
    hr[:, idx, idx] = np.where(free, hr[:, idx, idx], 1.0)
    return gr, hr


def _solve(hr: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solutions of hr x = rhs per toy where hr is positive definite, and that mask."""
    h = torch.as_tensor(hr)
    chol, info = torch.linalg.cholesky_ex(h)
    ok = (info == 0).numpy()
    x = torch.cholesky_solve(torch.as_tensor(rhs)[:, :, None], chol)[:, :, 0].numpy()
    return np.where(ok[:, None], x, 0.0), ok


def _covariance(hess: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """2 H⁻¹ (K, P, P) over the non-fixed parameters (errordef 1 for −2 ln L): rows and
    columns of fixed parameters 0, every entry NaN where H is not positive definite."""
    k_toys, n_par = hess.shape[:2]
    free = np.broadcast_to(~fixed, (k_toys, n_par))
    _, hr = _reduced(np.zeros((k_toys, n_par)), hess, free)
    out = np.full((k_toys, n_par, n_par), np.nan)
    chol, info = torch.linalg.cholesky_ex(torch.as_tensor(hr))
    ok = (info == 0).numpy()
    if ok.any():
        out[ok] = 2.0 * torch.cholesky_inverse(chol[torch.as_tensor(ok)]).numpy()
    out[:, fixed, :] = 0.0
    out[:, :, fixed] = 0.0
    return out


def _errors(covariance: np.ndarray) -> np.ndarray:
    """(K, P) √diag of :func:`_covariance`'s matrices."""
    return np.sqrt(np.diagonal(covariance, axis1=1, axis2=2))


@dataclass
class _NewtonState:
    theta: np.ndarray
    f: np.ndarray
    g: np.ndarray
    hess: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray
    decrement: np.ndarray
    last_drop: np.ndarray
    at_kink: np.ndarray
    history: _SecantHistory
    prev_decrement: np.ndarray


def _at_kinks_afresh(state: _NewtonState) -> _NewtonState:
    """``state`` with the toys it found converged at a kink made unconverged and without
    history (secant pairs, last decrease, kink verdict): the next stage takes fresh steps for
    them. For goals finer than the kinks' precision: float32 rounding of f (~1e-4) hides
    whether a kinked valley goes on lower, and a secant pair across an isolated kink (|θ|
    features at 0) can hide the gradient along it: on the demo model at the cusp (0, 0),
    kept as converged, such toys stopped up to 0.02 above the float64 minimum (100 toys,
    goal 2e-6; refitted, within 1e-3, as with float64 throughout)."""
    rows = state.at_kink & state.converged
    if not rows.any():
        return state
    history = state.history.copy()
    history.forget(rows)
    return replace(
        state, converged=state.converged & ~rows, at_kink=state.at_kink & ~rows,
        last_drop=np.where(rows, math.inf, state.last_drop),
        prev_decrement=np.where(rows, math.inf, state.prev_decrement), history=history)


def _levenberg_steps(gr: np.ndarray, hr: np.ndarray, damping: np.ndarray,
                     rows: np.ndarray) -> np.ndarray:
    """Steps −(H + λ diag|H|)⁻¹ g of toys ``rows`` (mask); λ is raised tenfold (in place)
    until the damped matrix is positive definite. A toy whose Hessian no damping cures gets
    a scaled gradient step."""
    n_par = gr.shape[1]
    diag = np.abs(np.diagonal(hr, axis1=1, axis2=2))
    # a parameter that (locally) does not change f has a zero diagonal: damp it relative to
    # the others so that it gets no step rather than an infinite one
    scale = np.maximum(diag, 1e-12 * diag.max(axis=1, keepdims=True) + 1e-300)
    step = np.zeros_like(gr)
    pending = rows.copy()
    while pending.any():
        damped = hr + (damping[:, None] * scale)[:, :, None] * np.eye(n_par)
        x, ok = _solve(damped, -gr)
        step[pending & ok] = x[pending & ok]
        pending &= ~ok
        damping[pending] *= 10.0
        lost = pending & (damping > _DAMPING_MAX)
        step[lost] = -gr[lost] / scale[lost]
        pending &= ~lost
    return step


def _backtrack(alpha: np.ndarray, f0: np.ndarray, f_alpha: np.ndarray, slope: np.ndarray
               ) -> np.ndarray:
    """The next trial step: the minimum of the parabola through f(0), f'(0) and f(α), kept
    within [α/10, α/2] (α/2 where f(α) is not finite)."""
    d0 = np.minimum(slope, 0.0)  # f'(0)·α along the (projected) trial step
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        curv = f_alpha - f0 - d0
        best = np.where(curv > 0, -d0 * alpha / (2.0 * curv), 0.5 * alpha)
    best = np.where(np.isfinite(best), best, 0.5 * alpha)
    return np.clip(best, 0.1 * alpha, 0.5 * alpha)


def _secant(gr: np.ndarray, hr: np.ndarray, pairs: list[tuple[np.ndarray, np.ndarray]]
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    r"""Curvature corrected by the last steps: Newton decrements ½ gᵀVg (K,), where H is
    positive definite (K,), the corrected matrices V⁻¹ (K, P, P) (H where not), and where a
    step saw a kink (K,): a secant curvature yᵀs/sᵀHs above _KINK_RATIO.

    V is H⁻¹ updated with the secant pairs (s = Δθ, y = Δg) of the last steps, oldest first,
    by BFGS: V' = (I − ρ s yᵀ) V (I − ρ y sᵀ) + ρ s sᵀ, ρ = 1/(yᵀs) (where yᵀs > 0). For a
    smooth f near its minimum y ≈ H s and nothing changes; at kinks of a piecewise-smooth f
    (LeakyReLU networks) the gradient jumps over tiny steps, the secant curvature along them
    is huge, and the decrement measures only what is left in the other directions, so that a
    minimum at a kink counts as converged (as Minuit's EDM, built from such updates, does).
    """
    n_par = gr.shape[1]
    chol, info = torch.linalg.cholesky_ex(torch.as_tensor(hr))
    ok = (info == 0).numpy()
    chol[~torch.as_tensor(ok)] = torch.eye(n_par, dtype=chol.dtype)
    inv = torch.cholesky_inverse(chol).numpy()
    kinked = np.zeros(len(gr), dtype=bool)
    for s, y in pairs:
        ys = np.einsum("kp,kp->k", y, s)
        shs = np.einsum("kp,kpq,kq->k", s, hr, s)
        # only pairs from near θ (within ~1σ in the metric of H): far ones describe elsewhere
        use = ok & (shs <= _SECANT_REACH) & (ys > 0) & np.any(s != 0, axis=1)
        kinked |= use & (ys > _KINK_RATIO * shs)
        if not use.any():
            continue
        rho = 1.0 / ys[use]
        a = np.eye(n_par) - rho[:, None, None] * s[use][:, :, None] * y[use][:, None, :]
        inv[use] = (a @ inv[use] @ np.swapaxes(a, 1, 2)
                    + rho[:, None, None] * s[use][:, :, None] * s[use][:, None, :])
    dec = 0.5 * np.einsum("kp,kpq,kq->k", gr, inv, gr)
    h_eff = hr.copy()
    if ok.any():
        h_eff[ok] = np.linalg.inv(inv[ok])
        h_eff[ok] = 0.5 * (h_eff[ok] + np.swapaxes(h_eff[ok], 1, 2))
    return np.where(ok, dec, math.inf), ok, h_eff, kinked


class _SecantHistory:
    """The last _SECANT_PAIRS secant pairs (s, y) of every toy, oldest first (zeros: none)."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.s = np.zeros((shape[0], _SECANT_PAIRS, shape[1]))
        self.y = np.zeros_like(self.s)

    def copy(self) -> _SecantHistory:
        out = _SecantHistory((self.s.shape[0], self.s.shape[2]))
        out.s, out.y = self.s.copy(), self.y.copy()
        return out

    def forget(self, rows: np.ndarray) -> None:
        """Drop every pair of toys ``rows`` (mask or indices)."""
        self.s[rows] = 0.0
        self.y[rows] = 0.0

    def add(self, rows: np.ndarray, s: np.ndarray, y: np.ndarray) -> None:
        for store, new in ((self.s, s), (self.y, y)):
            store[rows] = np.roll(store[rows], -1, axis=1)
            store[rows, -1] = new

    def pairs(self, free: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per slot (K, P) arrays, restricted to each toy's free parameters. A step that
        moved a parameter now held (one it put on its limit) is no secant of the free
        ones: their gradient changed through the cross-curvature with the held one too,
        which would read as a kink and shrink the decrement (a smooth fit stopped 6e-3
        above its minimum); such a pair is left out for that toy."""
        out = []
        for m in range(_SECANT_PAIRS):
            s, y = self.s[:, m], self.y[:, m]
            keep = free & ~np.any((s != 0) & ~free, axis=1)[:, None]
            out.append((np.where(keep, s, 0.0), np.where(keep, y, 0.0)))
        return out


class _Evaluator:
    """Evaluations of the toys still being minimised. A batch whose events can be selected
    from its prepared tensors (:attr:`_Batch.indexable`) evaluates exactly the toys asked
    for; otherwise it shrinks (its events prepared again) once at most half of its toys
    still run, and a few toys are evaluated on a batch of their own."""

    def __init__(self, batch: _Batch) -> None:
        self.batch = batch
        self.rows = np.arange(batch.n_toys)
        self.indexable = batch.indexable

    def shrink(self, running: np.ndarray) -> None:
        keep = np.flatnonzero(running)
        if 0 < len(keep) < len(self.rows) and (self.indexable
                                               or len(keep) <= len(self.rows) // 2):
            self.batch = self.batch.subset(np.searchsorted(self.rows, keep))
            self.rows = keep

    def _on(self, sel: np.ndarray) -> tuple[_Batch, np.ndarray | None]:
        """The batch to evaluate toys ``sel`` (sorted global indices) on, and the positions
        of ``sel`` in its output (None: the batch is exactly ``sel``)."""
        if len(sel) == len(self.rows):
            return self.batch, None
        pos = np.searchsorted(self.rows, sel)
        if 2 * len(sel) > len(self.rows) and not self.indexable:
            return self.batch, pos
        return self.batch.subset(pos), None

    def values(self, theta: np.ndarray, sel: np.ndarray) -> np.ndarray:
        """f at θ (K, P) for toys ``sel``."""
        batch, pos = self._on(sel)
        if pos is None:
            return batch.values(theta[sel])
        return batch.values(theta[self.rows])[pos]

    def derivatives(self, theta: np.ndarray, sel: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """f, g, H at θ (K, P) for toys ``sel``."""
        batch, pos = self._on(sel)
        if pos is None:
            return batch.derivatives(theta[sel])
        f, g, h = batch.derivatives(theta[self.rows])
        return f[pos], g[pos], h[pos]


def _newton(batch: _Batch, theta: np.ndarray, lo: np.ndarray, hi: np.ndarray,
            fixed: np.ndarray, max_iter: int, tol: float, noise: float = 0.0,
            after: _NewtonState | None = None, fresh: bool = False,
            reuse: bool = False) -> _NewtonState:
    """Projected Levenberg–Newton iterations for all toys; converged toys leave the batch.

    ``noise``: the relative precision of f (float32 bodies, see :func:`fit_batched`): a trial
    may exceed f by that much, and a step's decrease counts as the quadratic model's
    prediction, since measured differences below the noise mean nothing.
    ``after``: an earlier stage to continue from ``theta`` (its end point): its iterations
    count towards ``max_iter``; unless ``fresh``, also its secant pairs, the decrease and
    decrement of its last steps and its kink verdicts (the test at ``theta`` counts toys it
    found converged at a kink as kinked). ``reuse``: toys it found converged keep its
    gradients and curvatures (float32 bodies summed in float64: the convergence test gives
    its verdict again); only their f is evaluated here. With ``fresh`` the first test passes
    no toy (the last decrease is unknown): such toys take their first step from the earlier
    stage's gradient and curvature, and their verdict rests on this stage's derivatives.
    """
    rounding = max(_ROUNDING, noise)
    k_toys = theta.shape[0]
    ev = _Evaluator(batch)
    if after is not None and reuse:
        f, g, hess = np.empty(k_toys), after.g.copy(), after.hess.copy()
        known = np.flatnonzero(after.converged)
        rest = np.flatnonzero(~after.converged)
        if len(known):
            f[known] = ev.values(theta, known)
        if len(rest):
            f[rest], g[rest], hess[rest] = ev.derivatives(theta, rest)
    else:
        f, g, hess = ev.derivatives(theta, np.arange(k_toys))
    converged = np.zeros(k_toys, dtype=bool)
    n_iter = np.zeros(k_toys, dtype=int) if after is None else after.n_iter.copy()
    damping = np.full(k_toys, _DAMPING_START)
    carry = after is not None and not fresh
    last_drop = after.last_drop.copy() if carry else np.full(k_toys, math.inf)
    history = after.history.copy() if carry else _SecantHistory(theta.shape)
    # the decrement before the last step, if that step confirmed the quadratic model
    prev_decrement = after.prev_decrement.copy() if carry else np.full(k_toys, math.inf)
    kinked_before = after.at_kink.copy() if carry else np.zeros(k_toys, dtype=bool)
    rejected = np.zeros(k_toys, dtype=int)  # consecutive steps without any descent
    decrement = np.full(k_toys, math.inf)
    final_decrement = decrement.copy()
    running = np.isfinite(f)
    at_kink = np.zeros(k_toys, dtype=bool)
    for _ in range(max_iter + 1):
        # held: fixed, or at a limit with the gradient pushing outwards (KKT satisfied there)
        free = (~fixed[None, :] & ~((theta <= lo) & (g > 0)) & ~((theta >= hi) & (g < 0)))
        gr, hr = _reduced(g, hess, free)
        # the BHHH curvature corrected by the secant pairs of the last steps
        decrement, pos_def, h_eff, kinked = _secant(gr, hr, history.pairs(free))
        # smooth: a Newton step would gain less than tol, and the last one did, or it
        # confirmed the curvature (gave half its predicted decrease and shrank the decrement
        # tenfold: a curvature off by 1 + ε shrinks it by (ε/(1 + ε))², so ε ≲ ½). kink: a recent
        # step met a kink of a piecewise-smooth f (LeakyReLU networks), where the gradient
        # jumps, and less than _KINK_DECREMENT is left: Newton steps then crawl along valleys
        # under the kinks for gains of that order, as much as the kinks make f uncertain.
        # stalled: the last two (damped, so different) steps found no descent at all.
        fast = decrement < _FAST_RATIO * np.where(np.isfinite(prev_decrement),
                                                  prev_decrement, 0.0)
        smooth = (decrement < tol) & ((np.abs(last_drop) < tol) | fast)
        kink = (kinked | kinked_before | (rejected >= 2)) & (decrement < _KINK_DECREMENT)
        kinked_before[:] = False
        done = running & pos_def & (smooth | kink)
        converged |= done
        at_kink |= done & ~smooth
        final_decrement = np.where(done | running, decrement, final_decrement)
        running &= ~done & (n_iter < max_iter)
        if not running.any():
            break
        ev.shrink(running)
        step = _levenberg_steps(gr, h_eff, damping, running)
        new_theta, new_f = theta.copy(), f.copy()
        new_g, new_hess = g.copy(), hess.copy()
        alpha = np.ones(k_toys)
        accepted = np.zeros(k_toys, dtype=bool)
        derived = np.zeros(k_toys, dtype=bool)  # new_g, new_hess known at new_theta
        searching = running.copy()
        for trial_no in range(_MAX_BACKTRACKS):
            sel = np.flatnonzero(searching)
            trial = np.clip(theta + alpha[:, None] * step, lo, hi)
            trial[:, fixed] = theta[:, fixed]
            f_trial = np.full(k_toys, math.inf)
            if trial_no < _DERIVATIVE_TRIALS:
                # the full step is accepted most of the time, the first backtrack most of
                # the rest: take their derivatives at once
                f_sel, g_sel, h_sel = ev.derivatives(trial, sel)
                f_trial[sel] = f_sel
            else:
                f_trial[sel] = ev.values(trial, sel)
            # Armijo on the projected path θ(α) = clip(θ + α p), up to rounding of f
            slope = np.einsum("kp,kp->k", g, trial - theta)
            ok = searching & np.isfinite(f_trial) & (
                f_trial <= f + _ARMIJO * np.minimum(slope, 0.0) + rounding * np.abs(f))
            new_theta[ok], new_f[ok] = trial[ok], f_trial[ok]
            if trial_no < _DERIVATIVE_TRIALS:
                at_once = ok[sel]
                new_g[sel[at_once]], new_hess[sel[at_once]] = g_sel[at_once], h_sel[at_once]
                derived[sel[at_once]] = True
                # the full step tells the curvature along it, accepted or not; a shorter
                # one where it is accepted (as for a later one below)
                good = np.isfinite(f_sel) & (at_once if trial_no else True)
                history.add(sel[good], trial[sel[good]] - theta[sel[good]],
                            g_sel[good] - g[sel[good]])
            accepted |= ok
            searching &= ~ok
            alpha = np.where(searching, _backtrack(alpha, f, f_trial, slope), alpha)
            searching &= alpha >= _ALPHA_MIN
            if not searching.any():
                break
        later = np.flatnonzero(accepted & ~derived)
        if len(later):
            f_sel, g_sel, h_sel = ev.derivatives(new_theta, later)
            new_f[later], new_g[later], new_hess[later] = f_sel, g_sel, h_sel
            history.add(later, new_theta[later] - theta[later], g_sel - g[later])
        # Levenberg's gain ratio: actual over predicted decrease of the quadratic model
        s = new_theta - theta
        predicted = -(np.einsum("kp,kp->k", g, s) + 0.5 * np.einsum("kp,kpq,kq->k", s, h_eff, s))
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = np.where(predicted > rounding * np.abs(f), (f - new_f) / predicted, 1.0)
        damping = np.where(
            accepted, np.where(gain > 0.75, np.maximum(damping / 10.0, _DAMPING_MIN),
                               np.where(gain < 0.25, damping * 4.0, damping)),
            np.where(running, damping * 10.0, damping))
        drop = predicted if noise > 0 else f - new_f
        last_drop = np.where(accepted, drop, np.where(running, 0.0, last_drop))
        # a step that did what the quadratic model predicted (at least half the decrease, up
        # to rounding) from a point whose decrement was ``decrement``: see ``fast`` above
        confirmed = accepted & (f - new_f >= 0.5 * predicted - rounding * np.abs(f))
        prev_decrement = np.where(confirmed, decrement,
                                  np.where(running, math.inf, prev_decrement))
        rejected = np.where(accepted, 0, np.where(running, rejected + 1, rejected))
        n_iter[running] += 1
        theta, f, g, hess = new_theta, new_f, new_g, new_hess
        # a toy whose damping ran away has stalled (no descent found even for tiny steps)
        running &= damping <= _DAMPING_MAX
    return _NewtonState(theta, f, g, hess, converged, n_iter, final_decrement, last_drop,
                        at_kink, history, prev_decrement)


# ----------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------
def fit_batched(
    costs: Sequence[Any],
    start: Mapping[str, float] | Sequence[Mapping[str, float]] | np.ndarray | None = None,
    *,
    fixed: Mapping[str, float] | Iterable[str] | None = None,
    max_iter: int = 50,
    tol: float | None = None,
    validate: bool = True,
    strategy: int = 0,
    hesse: bool = False,
    minuit_tol: float | None = None,
    limits: Mapping[str, tuple[float | None, float | None]] | None = None,
    float32_steps: bool = True,
    weighted_errors: str = "asymptotic",
) -> BatchedFitResult:
    r"""Minimise K costs of one model (toys) together: one batched Newton solve for all.

    Every cost is −2 ln L (errordef 1). Each toy k is minimised over its own θ_k subject to
    the costs' limits, with the same constants as ``cost_k(*θ_k)``. Toys whose batched stage
    does not converge within ``max_iter`` iterations are refitted by :func:`egmm.infer.fit`
    from their start point, and flagged in ``fallback``; no toy is dropped.

    Arguments:
        costs: K costs of the same structure (the same densities, yields, parameters and
            terms; data, weights and constraint centres differ), e.g. toys from
            :func:`egmm.infer.sample_toy`. Each is an ``UnbinnedNLL`` / ``ExtendedUnbinnedNLL``,
            possibly plus ``NormalConstraint`` terms (see the module docstring).
        start: starting values: ``None`` (:func:`egmm.infer.start_values` per toy), a mapping
            name -> value (every toy), a sequence of K mappings, or an array (K, P) in the
            order of the parameters.
        fixed: names to hold at their start, or name -> value to hold at a value.
        max_iter: Newton iterations at most for the batched stage.
        tol: convergence: |Δ(−2 ln L)| of the last step and the Newton decrement ½ gᵀH⁻¹g
            both below ``tol`` (θ then lies within about √(2 tol) errors of the minimum).
            Default: MIGRAD's EDM goal for ``minuit_tol``, 0.002 · ``minuit_tol`` (2e-4 for
            iminuit's default 0.1), the precision of :func:`egmm.infer.fit` with that ``tol``;
            at kinks of network densities 2e-4 (see the module docstring).
        validate: finish each converged toy with MIGRAD started at the batched solution and
            report it in ``fits``/``valid``; ``False`` skips Minuit, the fastest.
        strategy, hesse: of the validation MIGRAD, whose first steps are the batched
            errors. The defaults (strategy 0, no HESSE) take ~10–15 calls from the minimum
            (paper toy: 12.2, 15.4 with Minuit's default steps); strategy 1 with HESSE
            errors takes ~40–80, about as many as a fit from the generation point.
        minuit_tol: Minuit's ``tol`` for the validation and the fallback fits (the fallback
            is :func:`egmm.infer.fit` with its defaults otherwise: the reference path).
        limits: name -> (lo, hi) replacing the costs' limits of those parameters (``None``
            for an open end), as in :func:`egmm.infer.fit`; e.g. μ ≥ 0 for q̃_μ.
        float32_steps: take the Newton steps of float64 GMMDensity costs with float32
            network bodies, then test (and refine) the minimum in float64 (see the module
            docstring); about 1.8× faster on a CPU at the default goal; at the toy
            calculators' 2e-6 float32 steps to the goal for SiLU networks (as many Newton
            iterations as float64 throughout), to 2e-4 and then float64 ones for LeakyReLU
            networks. ``False``: float64 throughout. fvals are the costs' float64 values
            either way and both reach the same goal; where the float32 verdict stands,
            errors and decrements come from float32 bodies (summed in float64; ~1e-5
            relative). At kinks of LeakyReLU networks the two may stop at different points
            of a kinked valley.
        weighted_errors: for toys whose events carry weights (other than all 1), as in
            :func:`egmm.infer.fit`: ``"asymptotic"`` (default) the batched errors are the
            sandwich C D C of the curvature's covariance C and D = Σ w² s sᵀ (+ constraints'
            V⁻¹), one more derivative pass; ``"hesse"`` the curvature's alone (weights that
            count repeated events). Passed on to the validation and fallback fits.

    Returns:
        :class:`BatchedFitResult`.

    Raises:
        InputError: costs of different structure, a term that cannot be vectorised (PyhfCost,
            two unbinned costs, a density without a torch gradient), no costs.
        ParameterError: start or fixed values unknown or outside the limits.

    Example:
        >>> from egmm.likelihood import TorchDensity, UnbinnedNLL
        >>> from egmm.observables import Observable, ObservableSpace
        >>> space = ObservableSpace([Observable("x", -math.inf, math.inf)])
        >>> gauss = TorchDensity(space, lambda x, mu: -0.5 * (x[:, 0] - mu) ** 2
        ...                      - 0.5 * math.log(2 * math.pi), ("mu",), {"mu": (-5.0, 5.0)})
        >>> rng = np.random.default_rng(0)
        >>> toys = [UnbinnedNLL(rng.normal(1.0, 1.0, 100), gauss) for _ in range(20)]
        >>> res = fit_batched(toys, validate=False)
        >>> bool(res.converged.all()), res.values.shape
        (True, (20, 1))
        >>> bool(np.allclose(res.value("mu"), [t.data.mean() for t in toys]))
        True
    """
    costs = list(costs)
    if not costs:
        raise InputError("fit_batched: no costs given")
    max_iter = whole_number(max_iter, "fit_batched: max_iter", 0)
    if minuit_tol is not None and not (isinstance(minuit_tol, (int, float))
                                       and not isinstance(minuit_tol, bool) and minuit_tol > 0):
        raise InputError(f"fit_batched: minuit_tol must be a positive number or None, "
                         f"got {minuit_tol!r}")
    if weighted_errors not in ("asymptotic", "hesse"):
        raise InputError(f"fit_batched: weighted_errors must be 'asymptotic' or 'hesse', "
                         f"got {weighted_errors!r}")
    if not isinstance(float32_steps, (bool, np.bool_)):
        raise InputError(f"fit_batched: float32_steps must be True or False, "
                         f"got {float32_steps!r}")
    if tol is None:
        tol = _EDM_PER_TOL * (_MINUIT_TOL if minuit_tol is None else float(minuit_tol))
    if isinstance(tol, bool) or not (isinstance(tol, (int, float)) and tol > 0):
        raise InputError(f"fit_batched: tol must be a positive number, got {tol!r}")
    names = tuple(describe(costs[0]))
    for k, c in enumerate(costs[1:], start=1):
        if tuple(describe(c)) != names:
            raise InputError(f"fit_batched: cost {k} has parameters {list(describe(c))}, "
                             f"cost 0 has {list(names)}")
    lo, hi = _limits(costs[0], names)
    for k, c in enumerate(costs[1:], start=1):
        lo_k, hi_k = _limits(c, names)
        if not (np.array_equal(lo_k, lo) and np.array_equal(hi_k, hi)):
            raise InputError(f"fit_batched: cost {k} has other parameter limits than cost 0")
    if limits:
        _check_names(limits, names, "limits")
        for n, (a, b) in limits.items():
            j = names.index(n)
            lo[j] = -math.inf if a is None else float(a)
            hi[j] = math.inf if b is None else float(b)
            if not lo[j] < hi[j]:
                raise ParameterError(f"limits of {n!r}: ({a}, {b}) is empty")
    per_toy, position = _split_costs(costs, names)
    batch = _Batch(per_toy, position, names)
    theta0 = _start(costs, names, start, lo, hi)
    fixed_mask = _fixed(fixed, names, theta0, lo, hi)
    batch.check_yields(torch.as_tensor(theta0))

    low = batch.lowered() if float32_steps else None
    if low is None:
        state = _newton(batch, theta0, lo, hi, fixed_mask, max_iter, float(tol))
    else:
        # the steps with float32 network bodies, then the last iterations (at least the
        # convergence test) in the costs' dtype, whose f is reported. Goals down to the
        # kinks' precision, or to _FLOAT32_FINEST for smooth networks: the float64 stage
        # continues with the float32 stage's secant pairs, which show the kinks it met, and
        # keeps its gradients and curvatures where it converged (below the kinks' precision
        # not at a kink). Finer goals: float32 steps to the kinks' precision, then a fresh
        # float64 stage, which starts from the float32 stage's gradients and curvatures where
        # that converged (its first test can pass no toy: their verdicts, errors and
        # decrements come from float64 derivatives after at least one float64 step)
        fresh = tol < _FLOAT32_FINEST or (tol < _KINK_DECREMENT
                                          and not batch.smooth_networks)
        first = _newton(low, theta0, lo, hi, fixed_mask, int(max_iter),
                        _KINK_DECREMENT if fresh else float(tol), noise=_FLOAT32_NOISE)
        if tol < _KINK_DECREMENT and not fresh:
            first = _at_kinks_afresh(first)
        state = _newton(batch, first.theta, lo, hi, fixed_mask, int(max_iter), float(tol),
                        after=first, fresh=fresh, reuse=True)
    k_toys = len(costs)
    values = state.theta.copy()
    fval = state.f.copy()
    covariance = _covariance(state.hess, fixed_mask)
    if weighted_errors == "asymptotic" and any(weighted(c) for c in costs):
        # weighted events: the sandwich C D C, D = ½ (2 Σ w² s sᵀ + 2 V⁻¹) at the minima
        d = 0.5 * batch.derivatives(state.theta, weight_power=2)[2]
        covariance = np.einsum("kij,kjl,klm->kim", covariance, d, covariance)
    errors = _errors(covariance)
    fallback = ~state.converged
    valid = state.converged.copy()
    fits: list[FitResult | None] = [None] * k_toys
    fixed_arg: Any = None
    if fixed_mask.any():
        fixed_arg = [n for n, f in zip(names, fixed_mask) if f]
    fit_limits = dict(limits) if limits else None
    checks = dict(fixed=fixed_arg, strategy=strategy, tol=minuit_tol, hesse=hesse,
                  limits=fit_limits, weighted_errors=weighted_errors)
    for k, cost in enumerate(costs):
        if fallback[k]:
            res = fit(cost, dict(zip(names, theta0[k].tolist())), fixed=fixed_arg,
                      tol=minuit_tol, limits=fit_limits, weighted_errors=weighted_errors)
            values[k] = [res.values[n] for n in names]
            errors[k] = [res.errors[n] for n in names]
            covariance[k] = np.nan if res.covariance is None else res.covariance
            fval[k] = res.fval
        elif validate:
            # MIGRAD's first steps sized by the batched errors (its default, 1 % of each
            # value, is far from them): ~20 % fewer calls from the batched minimum
            steps = {n: float(e) for n, e, f in zip(names, errors[k], fixed_mask)
                     if not f and math.isfinite(e) and e > 0}
            res = fit(cost, dict(zip(names, state.theta[k].tolist())), errors=steps or None,
                      **checks)
        else:
            continue
        fits[k] = res
        valid[k] = res.valid
    return BatchedFitResult(
        parameters=names, values=values, errors=errors, covariance=covariance,
        fval=fval,
        converged=state.converged, n_iter=state.n_iter, decrement=state.decrement,
        fallback=fallback, valid=valid,
        fixed=tuple(n for n, f in zip(names, fixed_mask) if f), fits=fits)


def deeper_free_minima(costs: Sequence[Any], free: tuple[np.ndarray, np.ndarray, np.ndarray],
                       cond_values: np.ndarray, cond_fval: np.ndarray, *, fixed: Any,
                       limits: Any, strategy: int, tol: float | None,
                       again: np.ndarray | None = None,
                       poi_start: Mapping[int, np.ndarray] | None = None
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The batched form of :func:`egmm.infer.teststats.deeper_free_fit`: toys whose
    conditional minimum (``cond_values`` (K, P), ``cond_fval`` (K,)) lies deeper than their
    free one (``free``: its values (K, P), −2 ln L (K,) and validity (K,)) by more than the
    fits' precision (0.02·tol, iminuit's tol 0.1 when None) missed their free minimum; they,
    and the toys flagged in ``again`` (K,) bool, are fitted free once more, together, from
    their conditional minimum (with the columns in ``poi_start`` — index → (K,) values — set
    there instead), ``fixed`` and ``limits`` as the free fit's. A new minimum is kept where
    deeper. Returns the free minima's values (K, P), −2 ln L (K,) and validity (K,), and
    which toys were replaced (K,)."""
    goal = statistic_precision(tol)
    values, fval, valid = (np.array(a, copy=True) for a in free)
    rows = cond_fval < fval - goal
    if again is not None:
        rows |= again
    replaced = np.zeros(len(fval), dtype=bool)
    picked = np.flatnonzero(rows)
    if not len(picked):
        return values, fval, valid, replaced
    start = np.asarray(cond_values, dtype=np.float64)[picked].copy()
    for j, column in (poi_start or {}).items():
        start[:, j] = np.asarray(column)[picked]
    refit = fit_batched([costs[k] for k in picked], start, fixed=fixed, limits=limits,
                        validate=False, strategy=strategy, minuit_tol=tol)
    deeper = refit.fval < fval[picked]
    take = picked[deeper]
    values[take], fval[take], valid[take] = (refit.values[deeper], refit.fval[deeper],
                                             refit.valid[deeper])
    replaced[take] = True
    return values, fval, valid, replaced
