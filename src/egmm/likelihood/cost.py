"""Unbinned likelihoods of densities and components as iminuit cost functions.

:class:`UnbinnedNLL` and :class:`ExtendedUnbinnedNLL` are :class:`iminuit.cost.Cost`
subclasses: they return −2 ln L (errordef 1, ``Cost.errordef`` = CHISQUARE), name their
parameters, carry the parameter limits, and add with ``+`` to iminuit's own costs
(``NormalConstraint``, ``LeastSquares``, …), to each other and to :class:`egmm.PyhfCost`;
parameters with the same name are shared. Values and gradients are computed with torch in
float64; the gradient comes from autograd, and so does an exact Hessian
(:meth:`~UnbinnedNLL.exact_hessian`, which :func:`egmm.infer.fit` gives Minuit for MIGRAD's
seed and for HESSE) when every θ-dependent density and yield is smooth in θ
(:attr:`egmm.base.DensityModel.smooth`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from iminuit.cost import Cost

from egmm.base import DensityModel, whole_number
from egmm.density import first_order_graphs
from egmm.errors import EgmmError, InputError, ParameterError
from egmm.likelihood._jet import Jet, as_jet
from egmm.likelihood.components import (
    Component,
    Yield,
    _Combination,
    _ConstantYield,
    _ParameterYield,
)

__all__ = ["ExtendedUnbinnedNLL", "UnbinnedNLL"]

#: Events per evaluation chunk: bounds the memory of one forward/backward pass.
DEFAULT_CHUNK_SIZE = 262_144

# Minuit's transformation of bounded parameters can land an ulp or so outside the limits;
# values within this relative tolerance are put back on the limit, larger excursions raise.
_LIMIT_TOLERANCE = 1e-12


class _Term:
    """One density (with its yield in a mixture) and its per-chunk cached work."""

    def __init__(self, name: str, density: DensityModel, yield_: Yield | None) -> None:
        self.name = name
        self.density = density
        self.yield_ = yield_
        self.differentiable = bool(getattr(density, "differentiable", True)) and (
            yield_ is None or yield_.differentiable
        )
        # twice continuously differentiable in θ (a θ-independent density trivially is)
        self.smooth = self.differentiable and (
            bool(getattr(density, "smooth", False)) or not density.parameters
        ) and (yield_ is None or yield_.smooth)
        self.columns: np.ndarray | None = None  # permutation of the cost's data columns
        self.theta_index = torch.zeros(0, dtype=torch.long)
        self.yield_index: dict[str, int] = {}
        self.prepared: list[Any] = []
        self.cached: list[torch.Tensor] | None = None  # log p per chunk when θ-independent


def _free_yield_names(y: Yield) -> set[str]:
    if isinstance(y, _ParameterYield):
        return set(y.parameters)
    if isinstance(y, _Combination):
        return set().union(*(_free_yield_names(t) for t in y.terms))
    return set()


def _density_name(density: DensityModel) -> str:
    name = getattr(density, "name", None)
    return name if isinstance(name, str) and name else type(density).__name__


def _reach(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The limits widened by the rounding a caller may make (``_LIMIT_TOLERANCE`` relative):
    values between a limit and its reach are clipped onto it, beyond it they are errors."""
    tol = _LIMIT_TOLERANCE * np.maximum(1.0, np.maximum(
        np.abs(np.where(np.isfinite(lo), lo, 0)), np.abs(np.where(np.isfinite(hi), hi, 0))))
    return lo - tol, hi + tol


class _FixedShapes:
    r"""A mixture whose densities do not depend on θ (θ enters through the yields only:
    templates or fixed shapes with free, constrained or functional yields).

    The events' log densities are fixed, so they are kept once as m_i = max_c ln p_c(x_i)
    and Q_ci = p_c(x_i) e^{−m_i} (C × N): a call is then one product λ'_i = Σ_c ν_c Q_ci,

    .. math:: -2 \ln L = -2 \Big[\sum_i w_i (m_i + \ln λ'_i) + \text{outer}(ν)\Big],

    the same expression as the general path (the log-sum-exp over components with its
    maximum taken out), and its ν-derivatives in closed form, ∂/∂ν_c = −2 Σ_i w_i Q_ci / λ'_i
    (+ the outer term's) and ∂²/∂ν_c∂ν_d = 2 Σ_i w_i Q_ci Q_di / λ'_i² (− 2 W / (Σν)² for
    the non-extended normalisation), chained to θ through the yields by autograd on the
    C yields alone: H_θ = Jᵀ H_ν J + Σ_c (∂f/∂ν_c) ∇²ν_c. No per-event autograd graph: on
    a 1000-event toy (benchmarks/toys_speed.py) values and gradients 2.7×, exact Hessians
    4.8× faster than the general path. The cached log densities are kept as well (batched
    fits read them).
    """

    def __init__(self, cost: _UnbinnedCost, q: np.ndarray, w: np.ndarray | None,
                 constant: float) -> None:
        self.q = q
        self.w = w
        self.constant = constant
        # per component how θ gives its yield: a parameter's index, a constant, or a
        # function (evaluated by torch, differentiated by autograd)
        self.kinds: list[tuple[str, Any]] = []
        for t in cost._terms:
            y = t.yield_
            if isinstance(y, _ParameterYield):
                self.kinds.append(("parameter", t.yield_index[y.parameters[0]]))
            elif isinstance(y, _ConstantYield):
                self.kinds.append(("constant", y.constant_value))
            else:
                self.kinds.append(("function", t))
        # per function yield c: its last point, order and (value, gradient, Hessian)
        self._memo: dict[int, tuple[bytes, int, float, Any, Any]] = {}

    @classmethod
    def of(cls, cost: _UnbinnedCost) -> _FixedShapes | None:
        """The fixed-shape form of ``cost``'s events, or None (a single density, a density
        with parameters, or no events)."""
        if not cost._mixture or not cost._starts or any(t.cached is None
                                                        for t in cost._terms):
            return None
        lp = np.stack([torch.cat(t.cached).cpu().numpy() for t in cost._terms])
        m = lp.max(axis=0)
        w = None if cost._w is None else cost._w.cpu().numpy().astype(np.float64)
        constant = float(m.sum() if w is None else w @ m)
        return cls(cost, np.exp(lp - m), w, constant)

    def _yields(self, cost: _UnbinnedCost, theta: np.ndarray, order: int
                ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, list[int], np.ndarray]]]:
        """ν (C,), the Jacobian dν/dθ (C, P) if ``order`` ≥ 1, and for second derivatives
        (``order`` = 2) per function yield c its Hessian in its own parameters (c, their θ
        indices, ∇²ν_c)."""
        n_par = len(theta)
        nu = np.empty(len(self.kinds))
        jac = np.zeros((len(self.kinds), n_par))
        hessians = []
        for c, (kind, what) in enumerate(self.kinds):
            if kind == "parameter":
                nu[c] = theta[what]
                jac[c, what] = 1.0
                continue
            if kind == "constant":
                nu[c] = what
                continue
            index = list(what.yield_index.values())
            value, row, hess = self._function_yield(c, what, theta[index], order)
            nu[c] = value
            if order > 0:
                jac[c, index] = row
            if order == 2 and hess is not None:
                hessians.append((c, index, hess))
        for c, t in enumerate(cost._terms):
            cost._check_yield(t, float(nu[c]), theta)
        return nu, jac, hessians

    def _function_yield(self, c: int, term: _Term, at: np.ndarray, order: int
                        ) -> tuple[float, np.ndarray | None, np.ndarray | None]:
        """(ν_c, its gradient, its Hessian in its own parameters ``at``) of function yield c,
        derivatives up to ``order``: by forward-mode jets (:mod:`egmm.likelihood._jet`, a few
        µs) where the yield's operations are all covered, else by torch autograd (~30 µs a
        value, ~80 µs with a gradient). The last point's result is kept: the yield is a pure
        function of its parameters, and fits call back at points where a yield's parameters
        do not move (a conditional fit whose fixed parameter is the signal strength)."""
        key = at.tobytes()
        hit = self._memo.get(c)
        if hit is not None and hit[0] == key and hit[1] >= order:
            return hit[2], hit[3], hit[4]
        yield_ = term.yield_
        if not getattr(yield_, "_autograd_only", False):
            try:
                jets = Jet.variables(at, order)
                jet = as_jet(yield_._jet_evaluate(dict(zip(term.yield_index, jets))),
                             len(at), order)
            except Exception:  # an operation jets do not cover: autograd from now on
                yield_._autograd_only = True
            else:
                out = (jet.v, jet.g, jet.h)
                self._memo[c] = (key, order, *out)
                return out
        # one scalar leaf per parameter of the yield: fewer autograd nodes than indexing a
        # vector leaf
        leaves = [torch.tensor(float(v), dtype=torch.float64, requires_grad=order > 0)
                  for v in at]
        with torch.set_grad_enabled(order > 0):
            value = yield_._evaluate(dict(zip(term.yield_index, leaves)))
            value = torch.as_tensor(value, dtype=torch.float64).reshape(())
        row = hess = None
        if order > 0:
            row = np.zeros(len(at))
            hess = np.zeros((len(at), len(at))) if order == 2 else None
            if value.requires_grad:
                firsts = torch.autograd.grad(value, leaves, create_graph=order == 2,
                                             allow_unused=True)
                for i, first in enumerate(firsts):
                    if first is None:
                        continue
                    row[i] = float(first.detach())
                    if hess is not None and first.requires_grad:
                        seconds = torch.autograd.grad(first, leaves, retain_graph=True,
                                                      allow_unused=True)
                        hess[i] = [0.0 if s is None else float(s) for s in seconds]
        out = (float(value.detach()), row, hess)
        self._memo[c] = (key, order, *out)
        return out

    def evaluate(self, cost: _UnbinnedCost, theta: np.ndarray, order: int
                 ) -> tuple[float, np.ndarray | None, np.ndarray | None]:
        """(−2 ln L, gradient if ``order`` ≥ 1, Hessian if ``order`` = 2) at θ."""
        nu, jac, hessians = self._yields(cost, theta, order)
        total = float(nu.sum())
        if cost._extended:
            outer = 2.0 * total  # −2 · (−Σν)
        elif total > 0:
            outer = 2.0 * cost.sum_weights * math.log(total)  # −2 · (−W ln Σν)
        else:
            raise ParameterError("all component yields are zero: the mixture is undefined")
        lam = nu @ self.q
        if not np.all(lam > 0):
            i = int(np.argmax(~(lam > 0)))
            raise ParameterError(
                f"event {i}: the expected density Σ ν_c p_c is zero at θ = "
                f"{cost._theta_text(torch.as_tensor(theta))} (all yields are zero)"
            )
        log_lam = np.log(lam)
        value = -2.0 * (self.constant + float(log_lam.sum() if self.w is None
                                              else self.w @ log_lam)) + outer
        if order == 0:
            return value, None, None
        r = 1.0 / lam if self.w is None else self.w / lam
        dnu = -2.0 * (self.q @ r)  # ∂(−2 Σ w ln λ')/∂ν, then the outer term's
        dnu += 2.0 if cost._extended else 2.0 * cost.sum_weights / total
        grad = jac.T @ dnu
        if order == 1:
            return value, grad, None
        # Jᵀ H_ν J with the closed-form H_ν, plus Σ_c (∂f/∂ν_c) ∇²ν_c of function yields
        hnu = 2.0 * ((self.q * (r / lam)) @ self.q.T)
        if not cost._extended:
            hnu -= 2.0 * cost.sum_weights / total**2
        hess = jac.T @ hnu @ jac
        for c, index, h in hessians:
            hess[np.ix_(index, index)] += dnu[c] * h
        return value, grad, 0.5 * (hess + hess.T)


class _UnbinnedCost(Cost):
    """Shared machinery: validation, parameters, chunked torch evaluation, caching."""

    _extended = False
    #: the events and weights draw an expected density (Asimov data), not observed events:
    #: the weights are no event weights for the errors (egmm.infer.fit.weighted)
    expected_data = False

    def __init__(
        self,
        data: Any,
        terms: list[_Term],
        weights: Any,
        *,
        mixture: bool,
        allow_outside: bool,
        dtype: torch.dtype,
        chunk_size: int,
        verbose: int,
        hessian: bool | None = None,
    ) -> None:
        names = [t.name for t in terms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InputError(f"component names must be unique, repeated: {dupes}")
        chunk_size = whole_number(chunk_size, "chunk_size")
        self._terms = terms
        self._mixture = mixture
        self._allow_outside = bool(allow_outside)
        self._dtype = dtype
        self._chunk_size = int(chunk_size)

        what = "data" if len(terms) == 1 else f"data (component {terms[0].name!r})"
        space = terms[0].density.space
        # an extended likelihood of no events is 2 Σ ν (n = 0 is the classic upper limit);
        # a plain one would be a constant
        x = space.validate(data, what=what, allow_empty=self._extended)
        for t in terms:
            other = t.density.space
            if set(other.names) != set(space.names) or len(other.names) != len(space.names):
                raise InputError(
                    f"component {t.name!r} has observables {list(other.names)}, but component "
                    f"{terms[0].name!r} has {list(space.names)}"
                )
            t.columns = np.array([space.index(n) for n in other.names])
            other.validate(x[:, t.columns], what=f"data (component {t.name!r})",
                           allow_empty=self._extended)
        self._x = x
        self._observables = space.names
        self._w = self._validate_weights(weights, len(x))

        limits = self._collect_parameters(terms)
        self._names = tuple(limits)
        self._lo = np.array([lo for lo, _ in limits.values()], dtype=np.float64)
        self._hi = np.array([hi for _, hi in limits.values()], dtype=np.float64)
        self._reach_lo, self._reach_hi = _reach(self._lo, self._hi)
        # the same as Python floats, for the per-call check (a few parameters: ~5× faster
        # than numpy's elementwise calls)
        self._bounds = list(zip(self._reach_lo.tolist(), self._reach_hi.tolist(),
                                self._lo.tolist(), self._hi.tolist()))
        self._starts = list(range(0, len(x), self._chunk_size))
        self._prepare()
        self._shapes = _FixedShapes.of(self)
        self._has_grad_flag = all(t.differentiable for t in terms)
        if hessian not in (None, True, False):
            raise InputError(f"hessian must be None, True or False, got {hessian!r}")
        if hessian and not self._has_grad_flag:
            bad = [t.name for t in terms if not t.differentiable]
            raise InputError(f"hessian=True: components {bad} have no θ gradient")
        self._has_hessian_flag = (all(t.smooth for t in terms) if hessian is None
                                  else bool(hessian))
        self._hessian_option = hessian  # (with_data's costs, toys among them, keep it)
        self._hessian_cache: tuple[tuple[float, ...], np.ndarray] | None = None
        self._cache_key: tuple[float, ...] | None = None
        self._cache_value = math.nan
        self._cache_grad: np.ndarray | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        # keep a value call's autograd graph for a gradient request at the same point only
        # while callers do ask for it (MIGRAD's line searches and HESSE make value calls
        # that are never followed by one; building the graph costs ~25 % of a forward pass)
        self._keep_graph = True
        super().__init__(
            {n: None if not (np.isfinite(lo) or np.isfinite(hi)) else (lo, hi)
             for n, (lo, hi) in limits.items()},
            verbose,
        )

    # -- construction helpers ------------------------------------------------------------------
    @staticmethod
    def _validate_weights(weights: Any, n: int) -> torch.Tensor | None:
        if weights is None:
            return None
        try:
            w = np.asarray(weights, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"weights cannot be read as numbers ({exc})") from None
        if w.shape != (n,):
            raise InputError(f"weights must have shape ({n},) like the data, got {w.shape}")
        bad = ~np.isfinite(w)
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError(f"weights: event {i} has weight {w[i]}")
        # a read-only array (pandas' copy-on-write columns) is copied: torch would warn
        return torch.as_tensor(w if w.flags.writeable else w.copy())

    def _collect_parameters(self, terms: list[_Term]) -> dict[str, tuple[float, float]]:
        limits: dict[str, tuple[float, float]] = {}
        origin: dict[str, list[str]] = {}

        def add(name: str, lo: float, hi: float, source: str) -> None:
            olo, ohi = limits.get(name, (-math.inf, math.inf))
            limits[name] = (max(lo, olo), min(hi, ohi))
            origin.setdefault(name, []).append(source)

        for t in terms:
            for p in t.density.parameters:
                lo, hi = t.density.parameter_bounds.get(p, (-math.inf, math.inf))
                if self._allow_outside:
                    lo, hi = -math.inf, math.inf
                add(p, float(lo), float(hi), f"density of {t.name!r}")
            if t.yield_ is not None:
                free = _free_yield_names(t.yield_)
                for p in t.yield_.parameters:
                    lo, hi = t.yield_.parameter_bounds.get(p, (-math.inf, math.inf))
                    if self._allow_outside:
                        lo, hi = (0.0, math.inf) if p in free else (-math.inf, math.inf)
                    add(p, float(lo), float(hi), f"yield of {t.name!r}")
        for name, (lo, hi) in limits.items():
            if not lo <= hi:
                raise InputError(
                    f"parameter {name!r}: the ranges of {origin[name]} do not overlap"
                )
        self._origins = origin  # (for the out-of-range message)
        index = {n: i for i, n in enumerate(limits)}
        for t in terms:
            t.theta_index = torch.tensor([index[p] for p in t.density.parameters],
                                         dtype=torch.long)
            if t.yield_ is not None:
                t.yield_index = {p: index[p] for p in t.yield_.parameters}
        return limits

    def _prepare(self) -> None:
        """Per-chunk θ-independent work; θ-independent densities are evaluated once here."""
        for t in self._terms:
            xc = self._x[:, t.columns]
            empty = torch.zeros(0, dtype=self._dtype)
            t.prepared, cached = [], []
            for start in self._starts:
                stop = min(start + self._chunk_size, len(xc))
                try:
                    prep = t.density.prepare(xc[start:stop], dtype=self._dtype)
                except InputError as exc:
                    raise type(exc)(
                        f"component {t.name!r} (events {start}–{stop - 1}): {exc}"
                    ) from None
                if t.density.parameters:
                    t.prepared.append(prep)
                else:
                    with torch.no_grad():
                        lp = t.density.log_prob_prepared(prep, empty).to(torch.float64)
                    self._check_log_prob(t, lp, start, None)
                    cached.append(lp)
            t.cached = None if t.density.parameters else cached

    # -- Cost protocol -------------------------------------------------------------------------
    def _ndata(self) -> float:
        # unbinned likelihoods have infinitely many degrees of freedom (iminuit's convention)
        return np.inf

    def _has_grad(self) -> bool:
        return self._has_grad_flag

    @property
    def has_exact_hessian(self) -> bool:
        """Whether :meth:`exact_hessian` is offered."""
        return self._has_hessian_flag

    def exact_hessian(self, *args: float) -> np.ndarray:
        """The exact Hessian of −2 ln L at the parameter values (P, P), by torch autograd.

        Offered (:attr:`has_exact_hessian`) when every θ-dependent density and yield is
        smooth (``hessian=None``, the default), always (``hessian=True``: the caller vouches
        for smoothness) or never (``hessian=False``). :func:`egmm.infer.fit` (and
        :func:`egmm.infer.make_minuit`, profiles, contours, toys) give it to Minuit (iminuit ≥
        2.32) for MIGRAD's seed and for HESSE: a fit then needs a few calls instead of tens,
        and the errors are the likelihood's curvature rather than finite differences. It is
        not named ``hessian``, which a plain ``Minuit(cost)`` would pick up without the
        ``g2`` that iminuit 2.32–2.33 also call when the seed's curvature is not positive.
        """
        if not self._has_hessian_flag:
            raise EgmmError(f"{type(self).__name__}: no exact Hessian (a density or yield is "
                            "not smooth in θ, or hessian=False); Minuit's HESSE uses finite "
                            "differences")
        if len(args) == 1 and np.ndim(args[0]) == 1:
            args = tuple(args[0])
        theta = self._check_args(args)
        key = tuple(theta.tolist())
        if self._hessian_cache is not None and self._hessian_cache[0] == key:
            return self._hessian_cache[1].copy()
        hess = self._hessian_at(theta)
        self._hessian_cache = (key, hess)
        return hess.copy()

    def _hessian_at(self, theta_np: np.ndarray) -> np.ndarray:
        """Σ over chunks (and the terms outside the event sum) of each part's Hessian:
        reverse-over-reverse autograd, one chunk's graph alive at a time."""
        if self._shapes is not None:
            return self._shapes.evaluate(self, theta_np, 2)[2]
        n = len(theta_np)
        theta = torch.tensor(theta_np, dtype=torch.float64, requires_grad=True)
        hess = torch.zeros((n, n), dtype=torch.float64)

        def add(part: torch.Tensor) -> None:
            if not part.requires_grad:
                return
            (g,) = torch.autograd.grad(part, theta, create_graph=True)
            for i in range(n):
                if g[i].requires_grad:
                    (row,) = torch.autograd.grad(g[i], theta, retain_graph=True,
                                                 allow_unused=True)
                    if row is not None:
                        hess[i] += row.detach()

        with torch.enable_grad():
            nu = self._yields(theta)
            add(-2.0 * self._outer(nu))
            for k in range(len(self._starts)):
                add(-2.0 * self._chunk_sum(k, theta, nu))
        out = hess.numpy().astype(np.float64)
        return 0.5 * (out + out.T)

    def _value(self, args: Sequence[float]) -> float:
        theta = self._check_args(args)
        key = tuple(theta.tolist())
        if key == self._cache_key:
            return self._cache_value
        if self._pending is not None:
            self._keep_graph = False  # the last graph was never used
        if self._shapes is not None:
            value = self._shapes.evaluate(self, theta, 0)[0]
            self._pending = None
        elif self._has_grad_flag and len(self._starts) == 1 and self._keep_graph:
            # keep the graph so that a gradient request at this point costs only a backward pass
            value, total, leaf = self._forward(theta, mode="graph")
            self._pending = (total, leaf)
        else:
            value, _, _ = self._forward(theta, mode="value")
            self._pending = None
        self._cache_key, self._cache_value, self._cache_grad = key, value, None
        return value

    def _grad(self, args: Sequence[float]) -> np.ndarray:
        if not self._has_grad_flag:
            bad = [t.name for t in self._terms if not t.differentiable]
            raise EgmmError(
                f"{type(self).__name__}: no θ gradient, components {bad} are not "
                "differentiable (numpy densities); Minuit uses numerical derivatives"
            )
        theta = self._check_args(args)
        key = tuple(theta.tolist())
        if key == self._cache_key and self._cache_grad is not None:
            return self._cache_grad.copy()
        if self._shapes is not None:
            value, grad, _ = self._shapes.evaluate(self, theta, 1)
            self._cache_key, self._cache_value = key, value
        elif key == self._cache_key and self._pending is not None:
            total, leaf = self._pending
            self._pending = None
            total.backward()
            grad = self._leaf_grad(leaf)
        else:
            if key == self._cache_key:
                self._keep_graph = True  # a gradient at the last value's point: keep graphs
            value, grad, _ = self._forward(theta, mode="grad")
            self._cache_key, self._cache_value = key, value
        self._cache_grad = grad
        return grad.copy()

    # -- evaluation ----------------------------------------------------------------------------
    def _check_args(self, args: Sequence[float]) -> np.ndarray:
        theta = np.asarray(args, dtype=np.float64).reshape(-1)
        if theta.shape != (len(self._names),):
            raise ParameterError(
                f"{type(self).__name__}: expected {len(self._names)} parameters "
                f"{list(self._names)}, got {theta.shape[0]}"
            )
        values = theta.tolist()
        if all(reach_lo <= v <= reach_hi and math.isfinite(v)
               for v, (reach_lo, reach_hi, _, _) in zip(values, self._bounds)):
            # within reach: clipped to the limits (the common case, in Python floats)
            return np.array([lo if v < lo else hi if v > hi else v
                             for v, (_, _, lo, hi) in zip(values, self._bounds)])
        bad = ~np.isfinite(theta)
        if bad.any():
            i = int(np.argmax(bad))
            raise ParameterError(f"parameter {self._names[i]!r} is {theta[i]}")
        bad = (theta < self._reach_lo) | (theta > self._reach_hi)
        if bad.any():
            i = int(np.argmax(bad))
            sources = self._origins.get(self._names[i], [])
            if not self._allow_outside and any(s.startswith("density") for s in sources):
                hint = " (allow_outside=True extrapolates densities)"
            else:  # a yield's range: no option widens it; a fit's limits must stay inside
                hint = (f" of the {' and '.join(sources)} (keep fit limits inside it)"
                        if sources else "")
            raise ParameterError(
                f"parameter {self._names[i]!r} = {float(theta[i])!r} lies outside its range "
                f"[{self._lo[i]}, {self._hi[i]}]{hint}"
            )
        return np.clip(theta, self._lo, self._hi)

    def _theta_text(self, theta: torch.Tensor | np.ndarray) -> str:
        vals = theta.detach().tolist() if isinstance(theta, torch.Tensor) else theta.tolist()
        return "{" + ", ".join(f"{n}={v:.6g}" for n, v in zip(self._names, vals)) + "}"

    def _check_log_prob(self, t: _Term, lp: torch.Tensor, start: int,
                        theta: torch.Tensor | None) -> None:
        bad = ~torch.isfinite(lp)
        if not bool(bad.any()):
            return
        i = int(torch.nonzero(bad)[0, 0])
        event = start + i
        value = float(lp[i].detach())
        row = self._x[event]
        coords = ", ".join(f"{n}={v:.6g}" for n, v in zip(self._observables, row))
        where = ""
        if hasattr(t.density, "describe_event"):
            where = f" in {t.density.describe_event(row[t.columns])}"
        at = "" if theta is None else f" at θ = {self._theta_text(theta)}"
        if value == -math.inf:
            raise InputError(
                f"component {t.name!r}: event {event} ({coords}){where} has zero probability "
                f"(log p = -inf){at}; every event needs p > 0 under every component (fill or "
                "smooth empty template bins, or restrict the data to the support)"
            )
        raise InputError(
            f"component {t.name!r}: log p = {value} for event {event} ({coords}){where}{at}"
        )

    def _yields(self, theta: torch.Tensor) -> torch.Tensor | None:
        if not self._mixture:
            return None
        values = []
        for t in self._terms:
            assert t.yield_ is not None
            nu = t.yield_._evaluate({p: theta[i] for p, i in t.yield_index.items()})
            nu = torch.as_tensor(nu, dtype=torch.float64).reshape(())
            self._check_yield(t, float(nu.detach()), theta)
            values.append(nu)
        return torch.stack(values)

    def _check_yield(self, t: _Term, value: float, theta: torch.Tensor | np.ndarray) -> None:
        """ParameterError unless component ``t``'s yield ``value`` at θ is finite and ≥ 0."""
        if not (math.isfinite(value) and value >= 0):
            raise ParameterError(
                f"component {t.name!r}: yield {t.yield_!r} = {value} at θ = "
                f"{self._theta_text(theta)}; yields must be finite and ≥ 0"
            )

    def _log_density(self, k: int, theta: torch.Tensor, nu: torch.Tensor | None
                     ) -> torch.Tensor:
        """Per-event log λ_i (float64) of chunk ``k``: log p (single) or log Σ_c ν_c p_c."""
        start = self._starts[k]
        logs = []
        for t in self._terms:
            if t.cached is not None:
                lp = t.cached[k]
            else:
                th = theta[t.theta_index].to(self._dtype)
                lp = t.density.log_prob_prepared(t.prepared[k], th).to(torch.float64)
                self._check_log_prob(t, lp, start, theta)
            logs.append(lp)
        if nu is None:
            return logs[0]
        device = logs[0].device  # a density may live on an accelerator; follow the first
        lp = torch.stack([t.to(device) for t in logs])
        nu = nu.to(device)
        # log Σ ν_c p_c = m + log Σ ν_c exp(log p_c − m) with m = max_c log p_c: the
        # logsumexp of log ν_c + log p_c, written so that a yield at its limit ν = 0 keeps a
        # finite gradient (d/dν of log ν would be infinite there).
        m = lp.detach().max(dim=0).values
        lam = (nu[:, None] * torch.exp(lp - m)).sum(dim=0)
        if not bool(torch.all(lam > 0)):
            i = int(torch.nonzero(~(lam > 0))[0, 0])
            raise ParameterError(
                f"event {start + i}: the expected density Σ ν_c p_c is zero at θ = "
                f"{self._theta_text(theta)} (all yields are zero)"
            )
        return m + torch.log(lam)

    def _chunk_sum(self, k: int, theta: torch.Tensor, nu: torch.Tensor | None) -> torch.Tensor:
        ll = self._log_density(k, theta, nu)
        if self._w is None:
            return ll.sum().cpu()
        start = self._starts[k]
        return (self._w[start:start + len(ll)].to(ll.device) * ll).sum().cpu()

    def _outer(self, nu: torch.Tensor | None) -> torch.Tensor:
        """The θ-dependent terms outside the event sum."""
        if nu is None:
            return torch.zeros((), dtype=torch.float64)
        if self._extended:
            return -nu.sum()
        total = nu.sum()
        if not float(total.detach()) > 0:
            raise ParameterError("all component yields are zero: the mixture is undefined")
        return -self.sum_weights * torch.log(total)

    def _forward(self, theta_np: np.ndarray, mode: str
                 ) -> tuple[float, Any, Any]:
        """−2 ln L at θ. ``mode``: "value" (no graph), "graph" (keep it), "grad" (chunked).

        Returns (value, gradient or graph total, leaf).
        """
        need_graph = mode != "value"
        theta = torch.tensor(theta_np, dtype=torch.float64, requires_grad=need_graph)
        # first derivatives only (Hessians: _hessian_at): frozen networks' mixtures as single
        # nodes with a written-out backward
        with torch.set_grad_enabled(need_graph), first_order_graphs():
            nu = self._yields(theta)
            if mode == "grad":
                # chunks are backpropagated one by one (bounded memory); their dependence on
                # the yields is collected on a detached copy and chained through ν(θ) below
                nu_leaf = None if nu is None else nu.detach().requires_grad_(True)
                data = 0.0
                for k in range(len(self._starts)):
                    s = -2.0 * self._chunk_sum(k, theta, nu_leaf)
                    if s.requires_grad:
                        s.backward()
                    data += float(s.detach())
                outer = -2.0 * self._outer(nu)
                if nu is not None and nu.requires_grad:
                    up = nu_leaf.grad if nu_leaf.grad is not None else torch.zeros_like(nu)
                    torch.autograd.backward([outer, nu], [torch.ones_like(outer), up])
                value = data + float(outer.detach())
                return value, self._leaf_grad(theta), theta
            total: Any = self._outer(nu)
            for k in range(len(self._starts)):
                total = total + self._chunk_sum(k, theta, nu)
            total = -2.0 * total
            return float(total.detach()), total, theta

    @staticmethod
    def _leaf_grad(leaf: torch.Tensor) -> np.ndarray:
        if leaf.grad is None:
            return np.zeros(leaf.shape[0])
        return leaf.grad.detach().numpy().astype(np.float64)

    # -- conveniences --------------------------------------------------------------------------
    @property
    def data(self) -> np.ndarray:
        """The validated events (N, D), columns in :attr:`observables` order (a copy)."""
        return self._x.copy()

    @property
    def observables(self) -> tuple[str, ...]:
        return self._observables

    @property
    def weights(self) -> np.ndarray | None:
        return None if self._w is None else self._w.numpy().copy()

    @property
    def n_events(self) -> int:
        return len(self._x)

    @property
    def sum_weights(self) -> float:
        """Σ w_i (the number of events when unweighted)."""
        return float(len(self._x)) if self._w is None else float(self._w.sum())

    @property
    def components(self) -> tuple[str, ...]:
        return tuple(t.name for t in self._terms)

    def init_values(self) -> dict[str, float]:
        """Suggested starting values, used by :func:`egmm.infer.fit`.

        Density parameters: the middle of finite bounds (lo + 1 / hi − 1 when one-sided, 0
        when unbounded). A free yield parameter that is a component's whole yield: Σw / C
        (the events shared equally among the C components). Other yield parameters: the
        middle of finite limits, lo + 1 when bounded below only, else 0.
        """
        out: dict[str, float] = {}
        if self._mixture:
            share = self.sum_weights / len(self._terms)
            for t in self._terms:
                if isinstance(t.yield_, _ParameterYield):
                    out.setdefault(t.yield_.parameters[0], max(share, 1.0))
        for t in self._terms:
            for p in t.density.parameters:
                lo, hi = t.density.parameter_bounds.get(p, (-math.inf, math.inf))
                out.setdefault(p, _middle(lo, hi))
        for i, p in enumerate(self._names):
            out.setdefault(p, _middle(self._lo[i], self._hi[i]))
        return {p: float(np.clip(out[p], self._lo[i], self._hi[i]))
                for i, p in enumerate(self._names)}

    def __repr__(self) -> str:
        parts = []
        for t in self._terms:
            y = "" if not self._mixture else f" × {t.yield_!r}"
            parts.append(f"{t.name}: {t.density!r}{y}")
        w = "" if self._w is None else f", sum of weights {self.sum_weights:.6g}"
        return (
            f"{type(self).__name__}({self.n_events} events{w}, observables="
            f"{list(self._observables)}, components=[{'; '.join(parts)}], "
            f"parameters={list(self._names)})"
        )

    def visualize(self, args: Sequence[float], model_points: int = 200, bins: int = 50) -> None:
        """Data and model at ``args`` in the current matplotlib axes, as iminuit's unbinned
        costs draw them (``Minuit.visualize()`` and ``Minuit.interactive()`` call this):
        the data histogram with √(Σw²) errors and the model's expected counts per bin,
        ν(x)·Δx — N·p(x)·Δx for one density; with components, their total (filled) and
        each one (lines). One observable only: for more, see
        :func:`egmm.validation.plot_marginals` (the model's marginals come from sampling).

        Arguments:
            args: the parameter values, in the cost's order.
            model_points: points the model curve is drawn at (the midpoints of as many
                equal cells of the range: a density may diverge on a finite bound).
            bins: data bins over the observable's range (the data's range where a bound is
                infinite); a discrete observable gets one bin per integer.
        """
        from matplotlib import pyplot as plt

        if len(self._observables) != 1:
            raise InputError(
                f"visualize draws one observable; this cost has {list(self._observables)}: "
                "use egmm.validation.plot_marginals for the marginals")
        model_points = whole_number(model_points, "visualize: model_points", 2)
        bins = whole_number(bins, "visualize: bins")
        theta = self._check_args(args)
        values = dict(zip(self._names, theta.tolist()))
        obs = self._terms[0].density.space[0]
        x = self._x[:, 0]
        lo = obs.lo if math.isfinite(obs.lo) else float(x.min())
        hi = obs.hi if math.isfinite(obs.hi) else float(x.max())
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        if obs.discrete:  # one bin per integer, the model's mass at each integer
            xm = np.arange(math.ceil(lo), math.floor(hi) + 1, dtype=np.float64)
            edges = np.append(xm - 0.5, xm[-1] + 0.5)
        else:  # midpoints of model_points cells: a density may diverge on a finite bound
            xm = lo + (np.arange(model_points) + 0.5) * ((hi - lo) / model_points)
            edges = np.linspace(lo, hi, bins + 1)
        w = None if self._w is None else self._w.numpy()
        counts = np.histogram(x, bins=edges, weights=w)[0]
        sumw2 = counts if w is None else np.histogram(x, bins=edges, weights=w * w)[0]
        centres = 0.5 * (edges[1:] + edges[:-1])
        width = edges[1] - edges[0]
        yields = self.expected_yields(values)
        if yields is not None and not self._extended:  # shares of the observed total
            total = sum(yields.values())
            yields = {k: self.sum_weights * v / total for k, v in yields.items()}
        curves = {}
        for t in self._terms:
            density = np.exp(t.density.log_prob(
                xm[:, None], {p: values[p] for p in t.density.parameters},
                **({"allow_outside": True} if self._allow_outside else {})))
            nu = self.sum_weights if yields is None else yields[t.name]
            curves[t.name] = nu * density * width
        total_curve = sum(curves.values())
        plt.errorbar(centres, counts, np.sqrt(sumw2), fmt="ok", label="data")
        step = "mid" if obs.discrete else None
        plt.fill_between(xm, 0.0, total_curve, fc="C0", alpha=0.5, label="model", step=step)
        if len(curves) > 1:
            for k, (name, curve) in enumerate(curves.items()):
                if obs.discrete:
                    plt.step(xm, curve, where="mid", color=f"C{k + 1}", label=name)
                else:
                    plt.plot(xm, curve, color=f"C{k + 1}", label=name)
        plt.xlabel(obs.axis_label)
        plt.legend(fontsize="small", frameon=False)

    # -- hooks for toys and Asimov data (used by egmm.infer.toys) ----------------------------
    @property
    def extended(self) -> bool:
        """True when the cost has the Poisson term of the total yield (ExtendedUnbinnedNLL)."""
        return self._extended

    @property
    def parts(self) -> tuple[tuple[str, DensityModel, Yield | None], ...]:
        """(name, density, yield) of every term, in order; the yield is ``None`` for a single
        density (``UnbinnedNLL(data, density)``)."""
        return tuple((t.name, t.density, t.yield_ if self._mixture else None)
                     for t in self._terms)

    def expected_yields(self, values: Mapping[str, float]) -> dict[str, float] | None:
        """Component name -> ν_c at ``values`` (name -> value, extra names ignored) for a
        mixture of components; ``None`` for a single density."""
        if not self._mixture:
            return None
        out: dict[str, float] = {}
        for t in self._terms:
            assert t.yield_ is not None
            missing = [p for p in t.yield_.parameters if p not in values]
            if missing:
                raise ParameterError(f"component {t.name!r}: no value for yield parameters "
                                     f"{missing}")
            nu = t.yield_.value(**{p: float(values[p]) for p in t.yield_.parameters})
            if not (math.isfinite(nu) and nu >= 0):
                raise ParameterError(f"component {t.name!r}: yield {t.yield_!r} = {nu}; "
                                     "yields must be finite and ≥ 0")
            out[t.name] = nu
        return out

    def with_data(self, data: Any, weights: Any = None) -> _UnbinnedCost:
        """The same cost (class, densities, yields, options) on other events.

        ``data`` in this cost's observable order (or anything its space validates). An
        extended cost accepts zero events (a Poisson fluctuation of a toy to 0), as its
        constructor does: its value is then 2 Σ_c ν_c.
        """
        new = object.__new__(type(self))
        terms = [_Term(t.name, t.density, t.yield_) for t in self._terms]
        options = dict(mixture=self._mixture, allow_outside=self._allow_outside,
                       dtype=self._dtype, chunk_size=self._chunk_size, verbose=self.verbose,
                       hessian=self._hessian_option)
        _UnbinnedCost.__init__(new, data, terms, weights, **options)
        return new


def _middle(lo: float, hi: float) -> float:
    if math.isfinite(lo) and math.isfinite(hi):
        return 0.5 * (lo + hi)
    if math.isfinite(lo):
        return lo + 1.0
    if math.isfinite(hi):
        return hi - 1.0
    return 0.0


def _components(components: Any, owner: str) -> list[Component]:
    if isinstance(components, Component):
        components = [components]
    try:
        comps = list(components)
    except TypeError:
        raise InputError(f"{owner}: expected a list of Component, got "
                         f"{type(components).__name__}") from None
    if not comps:
        raise InputError(f"{owner}: needs at least one component")
    for c in comps:
        if not isinstance(c, Component):
            raise InputError(f"{owner}: expected Component objects, got {type(c).__name__}")
    return comps


class UnbinnedNLL(_UnbinnedCost):
    r"""Unbinned negative log-likelihood of a normalised density, as −2 ln L.

    .. math:: -2 \ln L(θ) = -2 \sum_i w_i \ln p(x_i | θ)

    With a list of :class:`Component` instead of one density, p is the yield-weighted mixture
    of paper Eq. 15 (shapes only, no Poisson term):

    .. math:: p(x|θ) = \frac{\sum_c ν_c(θ)\, p_c(x|θ)}{\sum_c ν_c(θ)}

    Only yield *ratios* enter, so fix one yield (or use cross sections σ_c(θ) as the yields,
    as in Eq. 15); with every yield free the overall scale is undetermined.

    Arguments:
        data: events (N, D) or anything ``density.space.validate`` accepts (dict of columns,
            data frame, structured array). Validated once here: NaN/inf, out-of-bounds values
            and wrong columns raise :class:`~egmm.InputError` naming observable and row.
        density: a :class:`~egmm.base.DensityModel`, or a list of :class:`Component`.
        weights: optional per-event weights (N,): −2 Σ w_i ln p_i, so integer weights equal
            repeated events. For weights that scale events the curvature is not the
            covariance: :func:`egmm.infer.fit` reports the asymptotic (sandwich) errors.
        allow_outside: allow θ outside the densities' trained ranges (no θ limits are then
            given to Minuit); by default the limits are the ``parameter_bounds``.
        dtype: torch dtype of the events handed to the densities (sums are always float64).
        chunk_size: events per evaluation chunk (memory bound).
        verbose: iminuit verbosity (1 prints every call).
        hessian: offer the exact Hessian (:meth:`exact_hessian`) to Minuit through
            :func:`egmm.infer.fit`: ``None`` (default) when every θ-dependent density and yield
            is smooth in θ, ``True`` always, ``False`` never (HESSE by finite differences).

    Errordef is 1 (``Cost.errordef``). The parameters are the density's, by name; the gradient
    comes from torch autograd (``has_grad`` is False when a density has no θ gradient, e.g.
    :meth:`TorchDensity.from_numpy`). A value and a gradient at the same θ share one forward
    pass.

    Example:
        >>> from iminuit import Minuit
        >>> from egmm.likelihood import TorchDensity
        >>> from egmm.observables import Observable, ObservableSpace
        >>> space = ObservableSpace([Observable("x", 0.0, math.inf)])
        >>> expo = TorchDensity(space, lambda x, lam: torch.log(lam) - lam * x[:, 0],
        ...                     parameters=("lam",), parameter_bounds={"lam": (0.1, 10.0)})
        >>> nll = UnbinnedNLL(np.random.default_rng(1).exponential(0.5, 1000), expo)
        >>> m = Minuit(nll, lam=1.0).migrad()
        >>> round(m.values["lam"], 1)
        2.0
    """

    def __init__(
        self,
        data: Any,
        density: DensityModel | Sequence[Component],
        weights: Any = None,
        *,
        allow_outside: bool = False,
        dtype: torch.dtype = torch.float64,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        verbose: int = 0,
        hessian: bool | None = None,
    ) -> None:
        if isinstance(density, DensityModel):
            terms = [_Term(_density_name(density), density, None)]
            mixture = False
        elif isinstance(density, Component):
            raise InputError(
                "UnbinnedNLL: pass the component's density, or a list of components for a "
                "mixture (ExtendedUnbinnedNLL fits yields)"
            )
        else:
            comps = _components(density, "UnbinnedNLL")
            terms = [_Term(c.name, c.density, c.yield_) for c in comps]
            mixture = True
        super().__init__(data, terms, weights, mixture=mixture, allow_outside=allow_outside,
                         dtype=dtype, chunk_size=chunk_size, verbose=verbose,
                         hessian=hessian)


class ExtendedUnbinnedNLL(_UnbinnedCost):
    r"""Extended unbinned negative log-likelihood of components with yields, as −2 ln L.

    .. math:: -2 \ln L(θ) = -2 \Big[ -\sum_c ν_c(θ)
              + \sum_i w_i \ln \sum_c ν_c(θ)\, p_c(x_i|θ) \Big]

    This is iminuit's ``ExtendedUnbinnedNLL`` convention: the θ-independent ln n! of the
    Poisson term is dropped, so values agree with iminuit's cost for the same model. The sum
    over components is a logsumexp of ln ν_c + ln p_c.

    Arguments:
        data: events, validated once (see :class:`UnbinnedNLL`); every component must have
            the same observables (any order) and contain every event in its bounds.
        components: a list of :class:`Component` (or one).
        weights: optional per-event weights (N,), Σ w_i ln λ_i convention (errors: see
            :class:`UnbinnedNLL`).
        allow_outside, dtype, chunk_size, verbose, hessian: as for :class:`UnbinnedNLL`.

    Parameters are the union of the components' density and yield parameters, by name, in
    order of first appearance (per component: density parameters, then yield parameters).
    Limits: the densities' trained ranges (dropped with ``allow_outside=True``), [0, ∞) for
    free yields, the range of interpolated / regressed cross sections. Every event must have
    p_c > 0 under every component: a zero (e.g. an empty template bin) or NaN raises
    :class:`~egmm.InputError` naming the component and the event, at construction for
    θ-independent components, else at the first evaluation that meets it.

    Example:
        >>> from iminuit import Minuit
        >>> from egmm.likelihood import TorchDensity
        >>> from egmm.observables import Observable, ObservableSpace
        >>> space = ObservableSpace([Observable("x", 0.0, 1.0)])
        >>> flat = TorchDensity(space, lambda x: torch.zeros(len(x), dtype=x.dtype))
        >>> nll = ExtendedUnbinnedNLL(np.linspace(0.1, 0.9, 50), [Component("b", flat, "n")])
        >>> round(Minuit(nll, n=10.0).migrad().values["n"])
        50
    """

    _extended = True

    def __init__(
        self,
        data: Any,
        components: Sequence[Component] | Component,
        weights: Any = None,
        *,
        allow_outside: bool = False,
        dtype: torch.dtype = torch.float64,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        verbose: int = 0,
        hessian: bool | None = None,
    ) -> None:
        comps = _components(components, "ExtendedUnbinnedNLL")
        terms = [_Term(c.name, c.density, c.yield_) for c in comps]
        super().__init__(data, terms, weights, mixture=True, allow_outside=allow_outside,
                         dtype=dtype, chunk_size=chunk_size, verbose=verbose,
                         hessian=hessian)
