"""Maximum-likelihood fits of egmm (or any iminuit) costs, with reported retries."""

from __future__ import annotations

import inspect
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from iminuit import Minuit
from iminuit.cost import Constant, CostSum, NormalConstraint
from iminuit.util import describe
from iminuit.warnings import IMinuitWarning

from egmm.base import whole_number
from egmm.errors import InputError, ParameterError

__all__ = ["FitResult", "Retry", "exact_hessian", "fit", "fit_result", "make_minuit",
           "start_values"]


def exact_hessian(cost: Any) -> Any:
    """The exact Hessian of ``cost`` as a function of its parameters, or None.

    For egmm's unbinned costs with smooth densities (``cost.has_exact_hessian``), iminuit's
    ``NormalConstraint`` (2 V⁻¹) and constants, and sums whose every part has one; anything
    else (``PyhfCost``, least squares, costs without a gradient, LeakyReLU networks) gives
    None, and Minuit's HESSE takes finite differences. :func:`make_minuit` hands it to Minuit.

    Example:
        >>> from iminuit.cost import NormalConstraint
        >>> h = exact_hessian(NormalConstraint(["a", "b"], [0.0, 0.0], [0.5, 2.0]))
        >>> h(1.0, 1.0).tolist()
        [[8.0, 0.0], [0.0, 0.5]]
    """
    if isinstance(cost, CostSum):
        parts = []
        for item, index in zip(cost._items, cost._maps):
            h = exact_hessian(item)
            if h is None:
                return None
            parts.append((h, np.asarray(index, dtype=int), float(item.errordef)))
        npar = len(describe(cost))

        def summed(*args: float) -> np.ndarray:
            a = np.asarray(args[0] if len(args) == 1 and np.ndim(args[0]) == 1 else args,
                           dtype=np.float64)
            out = np.zeros((npar, npar))
            for h, index, errordef in parts:
                out[np.ix_(index, index)] += np.asarray(h(*a[index])) / errordef
            return out

        return summed
    if isinstance(cost, NormalConstraint):
        covinv = np.asarray(cost._covinv, dtype=np.float64)
        constant = 2.0 * (np.diag(covinv) if covinv.ndim < 2 else covinv)
        return lambda *args: constant.copy()
    if isinstance(cost, Constant):
        return lambda *args: np.zeros((0, 0))
    if getattr(cost, "has_exact_hessian", False):
        return cost.exact_hessian
    return None


#: iminuit ≥ 2.32 takes a user Hessian (for MIGRAD's seed and HESSE)
_MINUIT_TAKES_HESSIAN = "hessian" in inspect.signature(Minuit.__init__).parameters
_HESSIAN_LAYOUTS = ("full", "free block")
_hessian_layout: list[str | None] = []  # found once per process by _probe_hessian_layout


def _layout_hessian(hess: np.ndarray, free: list[int], layout: str) -> np.ndarray:
    """What Minuit is given: the full Hessian, or (``"free block"``) the free parameters'
    block in the top-left corner (iminuit 2.32–2.33 read the first n_free rows and columns
    of the user's matrix as the free parameters', whichever parameters are fixed)."""
    if layout == "full" or len(free) == len(hess):
        return hess
    out = np.zeros_like(hess)
    k = len(free)
    out[:k, :k] = hess[np.ix_(free, free)]
    return out


def _with_hessian(fcn: Any, hessian: Any, layout: str, values: Mapping[str, float],
                  **kwargs: Any) -> Minuit:
    """``Minuit(fcn, **values)`` given ``hessian`` in ``layout`` for its fixed parameters at
    call time, and its diagonal as ``g2`` (iminuit 2.32–2.33 call g2 when the seed's
    curvature is not positive, also when a Hessian is given, and fail without one)."""
    owner: list[Minuit] = []

    def laid_out(*args: float) -> np.ndarray:
        m = owner[0]
        free = [i for i, n in enumerate(m.parameters) if not m.fixed[n]]
        return _layout_hessian(np.asarray(hessian(*args), dtype=np.float64), free, layout)

    def g2(*args: float) -> np.ndarray:
        return np.diag(laid_out(*args)).copy()

    with warnings.catch_warnings():  # "hessian overrides g2": g2 is only the fallback above
        warnings.simplefilter("ignore", IMinuitWarning)
        m = Minuit(fcn, g2=g2, hessian=laid_out, **kwargs, **values)
    owner.append(m)
    return m


def _probe_hessian_layout() -> str | None:
    """How this iminuit reads a user Hessian when parameters are fixed: a quadratic with a
    known minimum and covariance, one parameter fixed and one limited, fitted with each
    layout; the first that reproduces the exact values and the finite-difference HESSE
    errors wins (None: neither does, and no Hessian is given to Minuit)."""
    if _hessian_layout:
        return _hessian_layout[0]
    a = np.array([[4.0, 1.0, 0.5], [1.0, 3.0, -0.8], [0.5, -0.8, 2.0]])
    x0 = np.array([0.3, -0.2, 0.5])

    def f(p: float, q: float, r: float) -> float:
        d = np.array([p, q, r]) - x0
        return float(d @ a @ d)

    def grad(p: float, q: float, r: float) -> np.ndarray:
        return 2.0 * a @ (np.array([p, q, r]) - x0)

    def run(layout: str | None) -> Minuit:
        start = {"p": 0.3, "q": 1.0, "r": -1.0}
        m = (Minuit(f, grad=grad, **start) if layout is None else
             _with_hessian(f, lambda *args: 2.0 * a, layout, start, grad=grad))
        m.errordef = 1.0
        m.fixed["p"] = True
        m.limits["r"] = (-5.0, 5.0)
        m.tol = 1e-4
        m.migrad()
        m.hesse()
        return m

    found = None
    if _MINUIT_TAKES_HESSIAN:
        ref = run(None)
        for layout in _HESSIAN_LAYOUTS:
            m = run(layout)
            if (m.valid and np.allclose(np.array(m.values)[1:], x0[1:], atol=1e-3)
                    and np.allclose(np.array(m.errors)[1:], np.array(ref.errors)[1:],
                                    rtol=1e-3)):
                found = layout
                break
    _hessian_layout.append(found)
    return found


def hessian_call_limit(m: Minuit, ncall: int | None = None) -> int | None:
    """MIGRAD's call limit for ``m``: with the exact Hessian, 50 + 10 per parameter unless the
    caller set a lower one (a Hessian-seeded MIGRAD needs a few calls; one that needs many is
    at a limit, where :func:`without_hessian` is faster), else ``ncall``."""
    if not uses_exact_hessian(m):
        return ncall
    cap = 50 + 10 * len(m.parameters)
    return cap if ncall is None else min(int(ncall), cap)


def uses_exact_hessian(m: Minuit) -> bool:
    """Whether ``m`` was given an exact Hessian (by :func:`make_minuit`)."""
    return getattr(m, "hessian", None) is not None


def without_hessian(cost: Any, m: Minuit, values: Mapping[str, float]) -> Minuit:
    """A ``Minuit`` like ``m`` (limits, fixed parameters, strategy, tolerance, step sizes)
    at ``values``, without the exact Hessian: the fallback when MIGRAD fails with it.

    iminuit 2.32–2.33 transform a user Hessian to Minuit's internal coordinates without the
    term from the gradient along a bounded parameter's transformation, which vanishes at an
    interior minimum but not at a minimum on a limit (a yield at 0, μ̂ at a physical
    boundary): there MIGRAD can stop with a wrong EDM. The finite-difference seed has no
    such problem."""
    plain = Minuit(cost, **values)
    for n in m.parameters:
        plain.limits[n] = m.limits[n]
        plain.fixed[n] = m.fixed[n]
        plain.errors[n] = m.errors[n]
    plain.strategy = m.strategy.strategy
    plain.tol = m.tol
    return plain


def _new_minuit(cost: Any, values: Mapping[str, float], hessian: Any = None) -> Minuit:
    """``Minuit(cost, **values)``, given the exact Hessian where there is one
    (:func:`exact_hessian`) and this iminuit takes it correctly."""
    if hessian is None and _MINUIT_TAKES_HESSIAN:
        hessian = exact_hessian(cost)
    layout = None if hessian is None else _probe_hessian_layout()
    if layout is None:
        return Minuit(cost, **values)
    return _with_hessian(cost, hessian, layout, values)


@dataclass(frozen=True)
class Retry:
    """One retry of a fit that had not converged: what was done, why, and what came out."""

    action: str
    reason: str
    valid: bool
    fval: float
    edm: float


@dataclass
class FitResult:
    """Outcome of :func:`fit`. −2 ln L convention: ``fval`` is the minimum of the cost.

    Attributes:
        parameters: all parameter names, in the cost's order.
        values, errors: best-fit values and Hesse errors by name (fixed: their value, 0).
        covariance: (P, P) in ``parameters`` order (rows/columns of fixed parameters are 0);
            ``None`` if Minuit has none.
        fval: −2 ln L at the minimum.
        valid: Minuit's verdict (EDM below goal, no call limit, positive-definite Hesse …).
        fmin: Minuit's flags as a dict (``is_valid``, ``edm``, ``has_accurate_covar``, …).
        nfcn, ngrad, nhessian: calls of the cost, of its gradient and of its exact Hessian
            (:func:`exact_hessian`, for smooth densities) by this fit (all attempts, HESSE).
        fixed: names of the fixed parameters.
        minuit: the ``iminuit.Minuit`` object (for MINOS, plots, further work).
        retries: every retry made after a non-valid minimisation, in order (empty if the
            first MIGRAD was valid).
        migrad_valid: MIGRAD's verdict before HESSE (``valid`` where HESSE did not run or
            did not change it). HESSE's finite differences across a kink of −2 ln L (a
            density of |θ|, e.g. the paper toy at cx = 0 or cy = 0) can leave Minuit's EDM
            above its goal at a minimum MIGRAD found: ``valid`` is then False and
            ``migrad_valid`` True; the minimum and profile-likelihood intervals stand, the
            HESSE errors do not.
        error_method: where ``errors`` and ``covariance`` come from: ``"hesse"`` (the
            curvature of −2 ln L, HESSE), ``"migrad"`` (MIGRAD's estimate of it: no HESSE
            ran), ``"asymptotic"`` (events with weights: the sandwich H⁻¹ D H⁻¹ of
            :func:`asymptotic_covariance`; the curvature's is ``minuit.covariance``), or
            ``"none"`` (every parameter fixed: no errors).
    """

    parameters: tuple[str, ...]
    values: dict[str, float]
    errors: dict[str, float]
    covariance: np.ndarray | None
    fval: float
    valid: bool
    fmin: dict[str, Any]
    nfcn: int
    ngrad: int
    fixed: tuple[str, ...]
    minuit: Minuit = field(repr=False)
    retries: list[Retry] = field(default_factory=list)
    nhessian: int = 0
    migrad_valid: bool | None = None
    error_method: str = "hesse"

    def __post_init__(self) -> None:
        if self.migrad_valid is None:
            self.migrad_valid = self.valid

    def correlation(self) -> np.ndarray | None:
        """(P, P) correlation matrix (0 for fixed parameters)."""
        if self.covariance is None:
            return None
        s = np.sqrt(np.diag(self.covariance))
        with np.errstate(divide="ignore", invalid="ignore"):
            c = self.covariance / np.outer(s, s)
        return np.where(np.outer(s, s) > 0, c, 0.0)

    def __repr__(self) -> str:
        vals = ", ".join(
            f"{n}={self.values[n]:.6g}" + ("" if n in self.fixed else f"±{self.errors[n]:.2g}")
            for n in self.parameters
        )
        retry = f", {len(self.retries)} retries" if self.retries else ""
        return f"FitResult(valid={self.valid}, fval={self.fval:.8g}, {vals}{retry})"


def _items(cost: Any) -> list[Any]:
    return list(cost) if isinstance(cost, CostSum) else [cost]


def _middle(lo: float, hi: float, fallback: float = 0.0) -> float:
    """A point inside [lo, hi]: the middle if finite, else ``fallback`` kept ≥ 1 from the limit."""
    if math.isfinite(lo) and math.isfinite(hi):
        return 0.5 * (lo + hi)
    if math.isfinite(lo):
        return max(lo + 1.0, fallback)
    if math.isfinite(hi):
        return min(hi - 1.0, fallback)
    return fallback


def first_steps(res: FitResult) -> dict[str, float] | None:
    """The free parameters' errors of a valid fit, as MIGRAD's first steps for fits of like
    data (``fit(..., errors=)``: ~30 % fewer calls than Minuit's default steps, 1 % of each
    value, for network densities); None if the fit is not valid or has no usable error."""
    if not res.valid:
        return None
    steps = {n: float(e) for n, e in res.errors.items()
             if n not in res.fixed and math.isfinite(e) and e > 0}
    return steps or None


def parameter_limits(cost: Any) -> dict[str, tuple[float, float]]:
    """Each parameter's limits: for a sum of costs the intersection over its terms (iminuit's
    ``CostSum`` keeps the first term's, so a density's trained range after a pyhf term's
    [0, 10] was ignored until the fit stepped out of it); (−inf, inf) where none is set."""
    out = {n: (-math.inf, math.inf) for n in describe(cost)}
    for item in _items(cost):
        for n, lim in describe(item, annotations=True).items():
            if lim is None:
                continue
            lo, hi = out[n]
            out[n] = (max(lo, float(lim[0])), min(hi, float(lim[1])))
            if not out[n][0] <= out[n][1]:
                raise ParameterError(f"the terms' limits of {n!r} do not overlap: "
                                     f"{out[n][0]} > {out[n][1]}")
    return out


def start_values(cost: Any) -> dict[str, float]:
    """Default starting values for every parameter of ``cost``.

    In order of precedence: the central values of ``NormalConstraint`` terms; the
    ``init_values()`` of the costs that offer them (egmm's unbinned costs: middle of a
    density parameter's range, Σw / (number of components) for free yields; PyhfCost:
    pyhf's suggested init), first term first; then the middle of finite limits, for one-sided
    limits 0 if allowed else 1 away from the limit, else 0.
    """
    names = describe(cost)
    limits = parameter_limits(cost)
    out: dict[str, float] = {}
    for item in _items(cost):
        if isinstance(item, NormalConstraint):
            for n, v in zip(describe(item), np.atleast_1d(item.value)):
                out.setdefault(n, float(v))
    for item in _items(cost):
        init = getattr(item, "init_values", None)
        if callable(init):
            for n, v in init().items():
                out.setdefault(n, float(v))
    for n in names:
        lo, hi = limits[n]
        if n not in out or not lo <= out[n] <= hi:  # (one term's start outside another's)
            out[n] = _middle(lo, hi)
    return {n: out[n] for n in names}


def _suggested_fixed(cost: Any) -> list[str]:
    names: list[str] = []
    for item in _items(cost):
        names += [n for n in getattr(item, "fixed_parameters", ()) if n not in names]
    return names


def _check_names(given: Iterable[str], names: list[str], what: str) -> None:
    unknown = [n for n in given if n not in names]
    if unknown:
        raise ParameterError(f"{what}: unknown parameters {unknown}; the cost has {names}")


def check_strategy(strategy: Any) -> int:
    """Minuit's strategy as an int: 0, 1 or 2 (2.5 or True are refused, not truncated)."""
    value = whole_number(strategy, "strategy", 0)
    if value > 2:
        raise InputError(f"strategy must be 0, 1 or 2, got {strategy!r}")
    return value


def check_tol(tol: Any) -> float:
    """Minuit's tolerance as a float: a positive finite number (NaN, 0, −1 or a string are
    refused here, not by Minuit or as a silently wrong fit)."""
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)) or (
            not (math.isfinite(tol) and tol > 0)):
        raise InputError(f"tol must be a positive finite number, got {tol!r}")
    return float(tol)


def _checked_limit(name: str, lim: Any) -> tuple[float, float]:
    """A user's (lo, hi) for ``name``: None for no bound, NaN and lo ≥ hi refused."""
    try:
        lo, hi = (-math.inf if lim[0] is None else float(lim[0]),
                  math.inf if lim[1] is None else float(lim[1]))
    except (TypeError, ValueError, IndexError):
        raise ParameterError(f"limits of {name!r} must be a pair (lo, hi), got {lim!r}") from None
    if math.isnan(lo) or math.isnan(hi) or not lo < hi:
        raise ParameterError(f"limits of {name!r} must have lo < hi (None for no bound), got "
                             f"{lim!r}")
    return lo, hi


def make_minuit(
    cost: Any,
    start: Mapping[str, float] | None = None,
    *,
    fixed: Mapping[str, float] | Iterable[str] | None = None,
    limits: Mapping[str, tuple[float | None, float | None]] | None = None,
    strategy: int = 1,
    tol: float | None = None,
    errors: Mapping[str, float] | None = None,
) -> Minuit:
    """A configured ``Minuit`` for ``cost``: defaults from :func:`start_values`, suggested
    fixed parameters (pyhf), the user's ``start``, ``fixed`` (names, or name -> value),
    ``limits`` (name -> (lo, hi), overriding the cost's) and ``errors`` (name -> initial error
    estimate, MIGRAD's first step sizes; Minuit's default is 1 % of the start value)."""
    names = list(describe(cost))
    values = start_values(cost)
    if start is not None:
        _check_names(start, names, "start")
        values.update({n: float(v) for n, v in start.items()})
    fix_names = _suggested_fixed(cost)
    if fixed is not None:
        if isinstance(fixed, Mapping):
            _check_names(fixed, names, "fixed")
            values.update({n: float(v) for n, v in fixed.items()})
            fix_names += list(fixed)
        else:
            fixed = [fixed] if isinstance(fixed, str) else list(fixed)
            _check_names(fixed, names, "fixed")
            fix_names += fixed
    bounds = parameter_limits(cost)  # every term's, not only the first's
    if limits is not None:
        _check_names(limits, names, "limits")
        bounds.update({n: _checked_limit(n, lim) for n, lim in limits.items()})
    given = set(start or ()) | (set(fixed) if isinstance(fixed, Mapping) else set())
    for n in names:
        lo, hi = bounds[n]
        v = values[n]
        if not math.isfinite(v):
            raise ParameterError(f"start value of {n!r} is {v}")
        narrowed = limits is not None and n in limits
        if lo < v < hi or (lo <= v <= hi and not narrowed) or (n in given and lo <= v <= hi):
            continue
        if n in given:
            raise ParameterError(f"start value {n}={v} lies outside its limits [{lo}, {hi}]")
        # a default start outside (or on the edge of) limits the caller narrowed: a start on a
        # limit can leave MIGRAD stuck there, so take the new range's middle
        values[n] = _middle(lo, hi, v)
    if errors is not None:
        _check_names(errors, names, "errors")
        for n, e in errors.items():
            if not (isinstance(e, (int, float, np.floating)) and math.isfinite(e) and e > 0):
                raise ParameterError(f"initial error of {n!r} must be a positive number, "
                                     f"got {e!r}")
    strategy = check_strategy(strategy)
    if tol is not None:
        tol = check_tol(tol)
    # a free parameter exactly on a limit: no exact Hessian (see starts_on_a_limit)
    on_limit = any(n not in fix_names and values[n] in bounds[n] for n in names)
    m = Minuit(cost, **values) if on_limit else _new_minuit(cost, values)
    for n in names:
        m.limits[n] = bounds[n]
    for n in fix_names:
        m.fixed[n] = True
    for n, e in (errors or {}).items():
        m.errors[n] = float(e)
    m.strategy = strategy
    if tol is not None:
        m.tol = tol
    return m


def _leave_a_sticky_limit(m: Minuit, steps: np.ndarray, ncall: int | None) -> None:
    """MIGRAD again from inside where a free parameter ended on a limit (within 1e-4 initial
    steps) while −2 ln L falls inwards. Near a limit Minuit's bounded-parameter transformation
    is flat (both finite-difference probes move the parameter inwards), so a fit started there
    can report a valid minimum on the limit while the true one lies inside: toys drawn at μ = 0
    (CLs's background-only toys, q₀, a Feldman–Cousins point at 0) had their statistic too
    small in 5–12 % of toys. One probe 0.01 initial steps inside decides (a minimum that is on
    the limit stays: −2 ln L rises inwards); MIGRAD then starts from the lowest of three probes
    (0.01, 0.1, 1 step inside), so the new minimum is deeper by construction."""
    for i, n in enumerate(m.parameters):
        if m.fixed[n]:
            continue
        lo, hi = (float(v) for v in m.limits[n])
        v = float(m.values[n])
        edge = lo if abs(v - lo) <= abs(v - hi) else hi
        if not abs(v - edge) <= 1e-4 * float(steps[i]):  # not (within rounding) on a limit
            continue
        v = edge
        size = 0.01 * float(steps[i])
        if math.isfinite(hi - lo):  # the probes stay inside a narrow range
            size = min(size, 0.004 * (hi - lo))
        h = size if v == lo else -size
        values = np.array(m.values, dtype=np.float64)
        values[i] = v + h
        inside = float(m.fcn(values))
        if not inside < float(m.fval) - 0.1 * float(m.fmin.edm_goal):
            continue
        # MIGRAD from the lowest of 0.01, 0.1 and 1 steps inside: from too far out it can
        # overshoot back onto the limit, too near it the transformation is still flat-ish
        best, best_f = v + h, inside
        for k in (10.0, 100.0):
            if lo < v + k * h < hi:
                values[i] = v + k * h
                f = float(m.fcn(values))
                if f < best_f:
                    best, best_f = v + k * h, f
        m.values[n] = best
        m.migrad(ncall=hessian_call_limit(m, ncall),
                 iterate=1 if uses_exact_hessian(m) else 5)


def starts_on_a_limit(m: Minuit) -> bool:
    """``m`` has the exact Hessian and a free parameter sits exactly on one of its limits.

    There Minuit's transformation of a bounded parameter has zero slope, so the internal
    gradient vanishes and a Hessian-seeded MIGRAD (iminuit 2.32–2.33) stops at once with
    EDM 0; the finite-difference seed steps off the limit. Such fits go without the Hessian
    (:func:`without_hessian`)."""
    if not uses_exact_hessian(m):
        return False
    return any(not m.fixed[n] and float(m.values[n]) in (float(m.limits[n][0]),
                                                          float(m.limits[n][1]))
               for n in m.parameters)


def _why(m: Minuit) -> str:
    fm = m.fmin
    if fm is None:
        return "no minimum"
    flags = [
        ("is_above_max_edm", f"EDM {fm.edm:.3g} above goal {fm.edm_goal:.3g}"),
        ("has_reached_call_limit", "call limit reached"),
        ("hesse_failed", "Hesse failed"),
        ("has_made_posdef_covar", "covariance forced positive definite"),
    ]
    why = [text for name, text in flags if getattr(fm, name)]
    if not fm.has_valid_parameters:
        why.append("invalid parameters")
    return ", ".join(why) or "not valid"


def fit(
    cost: Any,
    start: Mapping[str, float] | None = None,
    *,
    fixed: Mapping[str, float] | Iterable[str] | None = None,
    limits: Mapping[str, tuple[float | None, float | None]] | None = None,
    strategy: int = 1,
    retries: int = 3,
    tol: float | None = None,
    ncall: int | None = None,
    hesse: bool = True,
    seed: int = 0,
    errors: Mapping[str, float] | None = None,
    weighted_errors: str = "asymptotic",
) -> FitResult:
    """Minimise ``cost`` (−2 ln L, errordef 1) with MIGRAD; errors from HESSE.

    Starting values default to :func:`start_values` (middle of finite limits for bounded θ,
    the number of events shared among components for free yields, pyhf's suggestions,
    constraint centres). Parameters pyhf marks fixed are fixed.

    With an exact Hessian (:func:`exact_hessian`: smooth densities, constraints) MIGRAD seeds
    its metric with it and HESSE uses it (iminuit ≥ 2.32). If MIGRAD does not return a valid
    minimum, up to ``retries`` further attempts are made: first, if the exact Hessian was
    used, MIGRAD from the start without it (see :func:`without_hessian`; the Hessian-seeded
    MIGRAD is limited to :func:`hessian_call_limit` calls); then MIGRAD again from where it
    stopped with strategy 2; SIMPLEX then MIGRAD (strategy 2); MIGRAD from the start point
    perturbed by 10 % of each parameter's error estimate (random, ``seed``). Each attempt is
    recorded in ``FitResult.retries`` with the reason; the result is the last attempt's.
    Nothing is hidden: check ``valid``.

    Arguments:
        cost: an iminuit cost (egmm's costs, sums with iminuit's costs, PyhfCost).
        start: name -> starting value (overrides the defaults).
        fixed: names to fix at their start, or name -> value to fix at a value.
        limits: name -> (lo, hi) overriding the cost's limits (``None`` for open ends).
        strategy: Minuit strategy of the first attempt (0, 1, 2).
        retries: how many extra attempts at most.
        tol: Minuit's tolerance (EDM goal 0.002 · tol · errordef); iminuit's default if None.
        ncall: call limit per MIGRAD (Minuit's heuristic if None).
        hesse: run HESSE at a valid minimum for accurate errors.
        seed: for the perturbed restart.
        errors: name -> initial error estimate (MIGRAD's first step sizes; Minuit's default
            is 1 % of each start value): e.g. the errors of an earlier fit of the same model.
        weighted_errors: for a cost whose events carry weights (other than all 1), where
            the errors come from after HESSE: ``"asymptotic"`` (default) the sandwich
            H⁻¹ D H⁻¹ of :func:`asymptotic_covariance`, right for weights that scale events
            (simulation weights, efficiency corrections, sWeights: HESSE's curvature alone is
            then too small or too large by about the weights' scale); ``"hesse"`` the
            curvature, right when weights count repeated events. Unweighted costs: HESSE.

    Example:
        >>> from iminuit.cost import NormalConstraint
        >>> res = fit(NormalConstraint(["a", "b"], [1.0, 2.0], [0.1, 0.2]))
        >>> res.valid, round(res.values["b"], 6), round(res.errors["b"], 6)
        (True, 2.0, 0.2)
    """
    remaining = whole_number(retries, "fit: retries", 0)
    if weighted_errors not in ("asymptotic", "hesse"):
        raise InputError(f"fit: weighted_errors must be 'asymptotic' or 'hesse', got "
                         f"{weighted_errors!r}")
    if ncall is not None:
        ncall = whole_number(ncall, "fit: ncall")
    m = make_minuit(cost, start, fixed=fixed, limits=limits, strategy=strategy, tol=tol,
                    errors=errors)
    if all(m.fixed):
        return _nothing_free(cost, m)
    start_point = np.array(m.values, dtype=np.float64)
    steps = np.array(m.errors, dtype=np.float64)
    m.migrad(ncall=hessian_call_limit(m, ncall), iterate=1 if uses_exact_hessian(m) else 5)
    _leave_a_sticky_limit(m, steps, ncall)
    log: list[Retry] = []
    rng = np.random.default_rng(seed)
    earlier = (0, 0, 0)
    if not m.valid and remaining > 0 and uses_exact_hessian(m):
        reason = _why(m)
        earlier = (m.nfcn, m.ngrad, m.nhessian)
        m = without_hessian(cost, m, dict(zip(m.parameters, start_point.tolist())))
        m.migrad(ncall=ncall)
        log.append(Retry("MIGRAD from the start without the exact Hessian", reason,
                         bool(m.valid), float(m.fval), float(m.fmin.edm)))
        remaining -= 1
    for attempt in range(remaining):
        if m.valid:
            break
        reason = _why(m)
        m.strategy = 2
        if attempt % 3 == 0:
            action = "MIGRAD again from the last point, strategy 2"
        elif attempt % 3 == 1:
            action = "SIMPLEX, then MIGRAD with strategy 2"
            m.simplex(ncall=ncall)
        else:
            action = "MIGRAD (strategy 2) from the start perturbed by 10 % of the errors"
            err = np.array(m.errors, dtype=np.float64)
            point = start_point + 0.1 * err * rng.standard_normal(len(err))
            lo = np.array([lim[0] for lim in m.limits])
            hi = np.array([lim[1] for lim in m.limits])
            for i, n in enumerate(m.parameters):
                if not m.fixed[n]:
                    m.values[n] = float(np.clip(point[i], lo[i], hi[i]))
        m.migrad(ncall=hessian_call_limit(m, ncall))
        log.append(Retry(action, reason, bool(m.valid), float(m.fval), float(m.fmin.edm)))
    migrad_valid = bool(m.valid)
    if hesse and migrad_valid:
        m.hesse()
    res = fit_result(m, log, earlier, migrad_valid)
    if not (hesse and migrad_valid):
        res.error_method = "migrad"
    elif weighted_errors == "asymptotic":
        with_asymptotic_errors(res, cost)
    return res


def with_asymptotic_errors(res: FitResult, cost: Any) -> FitResult:
    """``res`` (after HESSE) with the asymptotic errors and covariance of
    :func:`asymptotic_covariance` where ``cost``'s events carry weights (in place; returned).
    A parameter at a limit has (almost) nothing left in Minuit's covariance — the bounded
    parameter's transformation is flat there — so its error is the one-parameter sandwich
    √D_jj / H_jj with the outer-product curvature H = Σ w s sᵀ (+ V⁻¹), the others held
    (its covariance entries stay those of the sandwich of Minuit's matrix, ~0); where the
    scores cannot be taken, a warning and HESSE's errors."""
    if res.covariance is None or not weighted(cost):
        return res
    fixed = [n in res.fixed for n in res.parameters]
    # parameters at a limit: no row left in Minuit's covariance
    at_limit = [not f and res.covariance[i, i] < 1e-6 * res.errors[n] ** 2
                for i, (n, f) in enumerate(zip(res.parameters, fixed))]
    try:
        cov, h, d = _sandwich(cost, res.values, res.covariance, fixed, curvature=any(at_limit))
    except InputError:  # a structure the scores cannot be taken from
        warnings.warn("fit: the events carry weights, but asymptotic errors need one "
                      "UnbinnedNLL or ExtendedUnbinnedNLL of θ-differentiable densities "
                      "plus NormalConstraint terms; the errors are HESSE's, right only "
                      "if the weights count repeated events", UserWarning, stacklevel=3)
        return res
    errors = {}
    for i, n in enumerate(res.parameters):
        if at_limit[i] and h is not None and h[i, i] > 0:
            errors[n] = float(math.sqrt(max(d[i, i], 0.0)) / h[i, i])
        else:
            errors[n] = float(math.sqrt(max(cov[i, i], 0.0)))
    res.covariance, res.errors, res.error_method = cov, errors, "asymptotic"
    return res


def weighted(cost: Any) -> bool:
    """Whether an unbinned term of ``cost`` has event weights other than all 1 (Asimov data,
    whose weights draw an expected density, have none)."""
    from egmm.likelihood.cost import _UnbinnedCost

    for item in _items(cost):
        if isinstance(item, _UnbinnedCost) and not item.expected_data:
            w = item.weights
            if w is not None and not np.all(w == 1.0):
                return True
    return False


def warn_if_weighted(cost: Any, what: str) -> None:
    """A warning that ``what`` reads Δ(−2 ln L) against χ² thresholds on a cost whose events
    carry weights: right only where the weights count repeated events."""
    if weighted(cost):
        warnings.warn(f"{what}: the events carry weights; Δ(−2 ln L) thresholds give "
                      "calibrated regions only when the weights count repeated events (for "
                      "weights that scale events — simulation, efficiency corrections, "
                      "sWeights — the asymptotic errors of egmm.infer.fit hold)", UserWarning,
                      stacklevel=3)


def asymptotic_covariance(cost: Any, values: Mapping[str, float], covariance: np.ndarray,
                          fixed: Iterable[bool]) -> np.ndarray:
    r"""The covariance of a weighted unbinned fit, H⁻¹ D H⁻¹ (Langenbruch, Eur. Phys. J. C 82
    (2022) 393): H⁻¹ the fit's ``covariance`` (the inverse curvature of −ln L: HESSE's, errordef
    1 for −2 ln L) and D the variance of −ln L's gradient, Σ_i w_i² s_i s_iᵀ over the events
    (s_i = ∇ ln λ_i for extended costs, ∇ ln p_i otherwise, yields included) plus each
    ``NormalConstraint``'s V⁻¹, at the fitted ``values``. For weights that scale events this
    is the asymptotically right covariance where the curvature alone is not (every weight 2:
    HESSE's errors are √2 too small); for unit weights it equals HESSE's up to the sampling
    difference of observed and expected information. Rows and columns of ``fixed`` parameters
    are 0. Supported: one UnbinnedNLL or ExtendedUnbinnedNLL with θ-differentiable densities,
    plus NormalConstraint terms (the structure :func:`egmm.infer.fit_batched` takes; otherwise
    :class:`~egmm.InputError`).

    The weights are taken as given constants: for sWeights the uncertainty of the yields (and
    shape parameters) they were computed from is not included (Langenbruch's extra terms),
    nor is the sPlot condition that the fitted observable be independent of the
    discriminating one checked; like every asymptotic formula it wants the large-sample
    regime (check with toys where a parameter is weakly determined)."""
    return _sandwich(cost, values, covariance, fixed)[0]


def _sandwich(cost: Any, values: Mapping[str, float], covariance: np.ndarray,
              fixed: Iterable[bool], curvature: bool = False
              ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(C D C over the free parameters, with ``curvature`` the outer-product curvature
    H = Σ w s sᵀ + V⁻¹ (else None), D), all in −ln L units, (P, P)."""
    from egmm.infer.batched import _Batch, _split_costs

    names = tuple(describe(cost))
    per_toy, position = _split_costs([cost], names)
    batch = _Batch(per_toy, position, names)
    theta = np.array([[float(values[n]) for n in names]])
    d = 0.5 * batch.derivatives(theta, weight_power=2)[2][0]
    h = 0.5 * batch.derivatives(theta)[2][0] if curvature else None
    free = ~np.asarray(list(fixed), dtype=bool)
    c = np.asarray(covariance, dtype=np.float64)[np.ix_(free, free)]
    out = np.zeros((len(names), len(names)))
    v = c @ d[np.ix_(free, free)] @ c
    out[np.ix_(free, free)] = 0.5 * (v + v.T)
    return out, h, d


def _nothing_free(cost: Any, m: Minuit) -> FitResult:
    """The "fit" of a cost whose every parameter is fixed (a conditional fit of a POI that is
    the only free parameter): its minimum is its value at that point, exactly, and valid.
    MIGRAD is not run: with nothing to vary it reports an EDM of ±fval, valid or not by
    its sign."""
    names = tuple(m.parameters)
    values = {n: float(m.values[n]) for n in names}
    fval = float(cost(*values.values()))
    finite = math.isfinite(fval)
    flags = {"is_valid": finite, "has_valid_parameters": finite, "has_accurate_covar": False,
             "has_posdef_covar": False, "has_made_posdef_covar": False, "hesse_failed": False,
             "has_covariance": False, "is_above_max_edm": False,
             "has_reached_call_limit": False, "has_parameters_at_limit": False, "edm": 0.0,
             "edm_goal": 0.002 * m.tol * m.errordef}
    return FitResult(parameters=names, values=values, errors=dict.fromkeys(names, 0.0),
                     covariance=None, fval=fval, valid=finite, fmin=flags,
                     nfcn=1, ngrad=0, fixed=names, minuit=m, error_method="none")


def fit_result(m: Minuit, log: list[Retry] | None = None,
               earlier: tuple[int, int, int] = (0, 0, 0),
               migrad_valid: bool | None = None) -> FitResult:
    """A :class:`FitResult` from a ``Minuit`` after MIGRAD (``nfcn``/``ngrad``/``nhessian``:
    its totals plus ``earlier``, the calls of a Minuit it replaced; ``migrad_valid``: MIGRAD's
    verdict before a HESSE, if one ran since)."""
    fm = m.fmin
    flags = {
        name: getattr(fm, name)
        for name in (
            "is_valid", "has_valid_parameters", "has_accurate_covar", "has_posdef_covar",
            "has_made_posdef_covar", "hesse_failed", "has_covariance", "is_above_max_edm",
            "has_reached_call_limit", "has_parameters_at_limit", "edm", "edm_goal",
        )
    }
    names = tuple(m.parameters)
    cov = None if m.covariance is None else np.array(m.covariance, dtype=np.float64)
    return FitResult(
        parameters=names,
        values={n: float(m.values[n]) for n in names},
        errors={n: 0.0 if m.fixed[n] else float(m.errors[n]) for n in names},
        covariance=cov,
        fval=float(m.fval),
        valid=bool(m.valid),
        fmin=flags,
        nfcn=int(m.nfcn) + earlier[0],
        ngrad=int(m.ngrad) + earlier[1],
        fixed=tuple(n for n in names if m.fixed[n]),
        minuit=m,
        retries=list(log or []),
        nhessian=int(getattr(m, "nhessian", 0)) + earlier[2],
        migrad_valid=migrad_valid,
    )

