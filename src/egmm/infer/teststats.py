r"""Profile-likelihood-ratio test statistics with pyhf's names and definitions.

All are built from the profile likelihood ratio of Cowan et al. (2011), Eq. 7,

.. math:: λ(μ) = \frac{L(μ, \hat{\hat{θ}}(μ))}{L(\hat{μ}, \hat{θ})}, \qquad
          -2 \ln λ(μ) = \min_θ C(μ, θ) - \min_{μ, θ} C(μ, θ)

where C = −2 ln L is the cost (errordef 1) and μ the parameter of interest (POI, any named
parameter of the cost). The "tilde" variants replace λ by λ̃ (Eq. 10), whose denominator is
fitted with μ̂ bounded to μ̂ ≥ 0 (a signal strength that cannot be negative):

============  ========================  =================================================
name          function                  definition (arXiv:1007.1727)
============  ========================  =================================================
``"t"``       :func:`tmu`               t_μ = −2 ln λ(μ)                        (Eq. 8)
``"ttilde"``  :func:`tmu_tilde`         t̃_μ = −2 ln λ̃(μ)                       (Eq. 11)
``"q0"``      :func:`q0`                q₀ = −2 ln λ(0) if μ̂ ≥ 0, else 0        (Eq. 12)
``"q"``       :func:`qmu`               q_μ = −2 ln λ(μ) if μ̂ ≤ μ, else 0       (Eq. 14)
``"qtilde"``  :func:`qmu_tilde`         q̃_μ = −2 ln λ̃(μ) if μ̂ ≤ μ, else 0      (Eq. 16)
============  ========================  =================================================

Values are clipped at 0 (a conditional minimum a hair below the global one is a rounding
effect; one deeper than the fits' precision makes the global fit start again from it,
:func:`deeper_free_fit`). As in pyhf, ``return_fits=True`` also returns the two fits, here as a
:class:`TestStatFits` of :class:`~egmm.infer.FitResult` (conditional, unconditional).

The fits are local (MIGRAD). The conditional fit starts where the unconditional fit's
covariance puts its minimum (:func:`profiled_start`); if it ends more than 3 errors from
there in a nuisance parameter — another mode of the likelihood, e.g. a mirror mode of a |θ|
dependence — the unconditional fit is repeated from the conditional minimum and the deeper
of the two is kept, so that both minima come from the same mode or the deeper one. A mode
neither fit visits is not found: scan the profile where a likelihood may have several.

References:
    G. Cowan, K. Cranmer, E. Gross, O. Vitells, "Asymptotic formulae for likelihood-based
    tests of new physics", Eur. Phys. J. C 71 (2011) 1554, arXiv:1007.1727.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from iminuit.util import describe

from egmm.errors import InputError, ParameterError
from egmm.infer.fit import (
    FitResult,
    _checked_limit,
    _items,
    fit,
    parameter_limits,
    start_values,
)

__all__ = [
    "TEST_STATISTICS",
    "TestStatFits",
    "check_poi",
    "get_test_stat",
    "q0",
    "qmu",
    "qmu_tilde",
    "tmu",
    "tmu_tilde",
]

Limits = Mapping[str, tuple[float | None, float | None]]


class TestStatFits(NamedTuple):
    """The two fits behind a test statistic (unpacks like pyhf's ``(mubhathat, muhatbhat)``).

    Attributes:
        conditional: the POI fixed at the tested value, nuisance parameters profiled:
            (μ, θ̂̂(μ)).
        unconditional: every parameter free, (μ̂, θ̂); for the tilde variants with μ̂ ≥ 0.
    """

    __test__ = False  # not a pytest test class despite its name

    conditional: FitResult
    unconditional: FitResult


def _limits(cost: Any, limits: Limits | None) -> dict[str, tuple[float, float]]:
    """The cost's parameter limits, overridden by the user's (None ends open)."""
    out = parameter_limits(cost)
    for name, lim in (limits or {}).items():
        if name not in out:
            raise ParameterError(f"limits: unknown parameter {name!r}; the cost has "
                                 f"{list(out)}")
        out[name] = _checked_limit(name, lim)  # (NaN or lo ≥ hi refused, by name)
    return out


def _fixed_mapping(cost: Any, fixed: Mapping[str, float] | Iterable[str] | None,
                   start: Mapping[str, float] | None) -> dict[str, float]:
    if fixed is None:
        return {}
    if isinstance(fixed, Mapping):
        return {n: float(v) for n, v in fixed.items()}
    names = [fixed] if isinstance(fixed, str) else list(fixed)
    values = {**start_values(cost), **(start or {})}
    unknown = [n for n in names if n not in values]
    if unknown:
        raise ParameterError(f"fixed: unknown parameters {unknown}; the cost has "
                             f"{list(describe(cost))}")
    return {n: float(values[n]) for n in names}


def check_poi(cost: Any, poi: str, fixed: Mapping[str, float] | Iterable[str] | None = None
              ) -> None:
    """Raise :class:`~egmm.ParameterError` unless ``poi`` is a free parameter of ``cost``."""
    if not isinstance(poi, str):
        raise ParameterError(f"the parameter of interest must be a name, got {poi!r}")
    try:
        names = list(describe(cost))
    except Exception as exc:  # describe raises various errors for non-costs
        raise InputError(f"cannot read the parameters of {type(cost).__name__} ({exc}); "
                         "expected an iminuit cost") from None
    if poi not in names:
        raise ParameterError(f"unknown parameter of interest {poi!r}; the cost has {names}")
    suggested = [n for item in _items(cost) for n in getattr(item, "fixed_parameters", ())]
    given = [] if fixed is None else [fixed] if isinstance(fixed, str) else list(fixed)
    if poi in suggested or poi in given:
        raise ParameterError(f"the parameter of interest {poi!r} is fixed; profile-likelihood "
                             "test statistics need it free")


def _bounds(lims: Mapping[str, tuple[float, float]], names: Sequence[str]
            ) -> tuple[np.ndarray, np.ndarray]:
    """The (lo, hi) arrays of :func:`_limits`' output in the order ``names``."""
    return (np.array([lims[n][0] for n in names], dtype=np.float64),
            np.array([lims[n][1] for n in names], dtype=np.float64))


def profiled_start(values: np.ndarray, covariance: np.ndarray | None,
                   poi: int | Sequence[int], mu: float | Sequence[float],
                   lo: np.ndarray, hi: np.ndarray,
                   poi_limits: tuple[Any, Any] | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Start points and step sizes of conditional fits, the parameters ``poi`` (an index, or
    several) fixed at ``mu``, from unconditional minima: ``values`` (K, P) and their
    ``covariance`` (K, P, P) (or (P,) and (P, P)) give (K, P) start points and (K, P) errors.

    Where the likelihood is close to Gaussian its conditional minimum over the other
    parameters ν at μ lies at ν̂ + C_νμ C_μμ⁻¹ (μ − μ̂), and the conditional errors are
    √diag(C_νν − C_νμ C_μμ⁻¹ C_μν) (the mean and spread of ν given μ of a normal with
    covariance C): the conditional fit starts next to its minimum with steps of the right
    size, not an error or more away with Minuit's default steps (paper-toy model, t_μ at tol
    1e-3: 30 % fewer MIGRAD calls; batched: 1.5 instead of 2 Newton steps). Toys whose
    covariance is missing or not finite (or C_μμ not positive definite), whose μ̂ lies less
    than one of its errors inside ``poi_limits`` (the unconditional fit's limits of the
    fixed parameters, (lo, hi) of floats or arrays; default ``lo``/``hi`` at ``poi``: at a
    limit the covariance does not describe the likelihood, and Minuit's is distorted by its
    limit transform), whose shift exceeds 3 errors of a parameter (the Gaussian picture far
    outside its range, or a wrong covariance: MIGRAD's own estimate at strategy 0 can be off
    tenfold at kinks), or whose shifted point would leave the limits ``lo``/``hi``, start at
    ν̂ (errors NaN: the fit's defaults); the fixed parameters are set to ``mu`` (error 0).
    The conditional minimum does not depend on the start (the fits find it from ν̂ too)."""
    values = np.asarray(values, dtype=np.float64)
    pois = np.atleast_1d(np.asarray(poi, dtype=int))
    mus = np.broadcast_to(np.asarray(mu, dtype=np.float64), pois.shape)
    flat = np.atleast_2d(values)
    k_toys, n_par = flat.shape
    start = flat.copy()
    errors = np.full(flat.shape, np.nan)
    if covariance is not None:
        cov = np.asarray(covariance, dtype=np.float64).reshape(k_toys, n_par, n_par)
        c_pp = cov[:, pois[:, None], pois[None, :]]
        c_np = cov[:, :, pois]
        usable = np.isfinite(cov).all(axis=(1, 2))
        c_pp = np.where(usable[:, None, None], c_pp, np.eye(len(pois)))
        usable &= (np.linalg.eigvalsh(c_pp) > 0).all(-1)
        p_lo, p_hi = (lo[pois], hi[pois]) if poi_limits is None else poi_limits
        error = np.sqrt(np.where(usable[:, None], np.diagonal(c_pp, axis1=1, axis2=2), 0.0))
        usable &= ((flat[:, pois] - error > p_lo) & (flat[:, pois] + error < p_hi)).all(-1)
        c_pp = np.where(usable[:, None, None], c_pp, np.eye(len(pois)))
        gain = np.swapaxes(np.linalg.solve(c_pp, np.swapaxes(c_np, 1, 2)), 1, 2)  # (K, P, m)
        shift = np.einsum("kpm,km->kp", gain, mus - flat[:, pois])
        shifted = flat + shift
        others = np.ones(n_par, dtype=bool)
        others[pois] = False
        usable &= ((shifted > lo) & (shifted < hi))[:, others].all(-1)
        # a shift of more than 3 errors is the Gaussian approximation far outside its
        # range, or a wrong covariance (MIGRAD's own estimate at strategy 0 can be off by
        # an order of magnitude at kinks): no shift then
        reach = 3.0 * np.sqrt(np.clip(np.diagonal(cov, axis1=1, axis2=2), 0.0, None))
        usable &= (np.abs(shift) <= reach)[:, others].all(-1)
        start = np.where(usable[:, None], shifted, flat)
        spread = np.diagonal(cov, axis1=1, axis2=2) - np.einsum("kpm,kpm->kp", gain, c_np)
        with np.errstate(invalid="ignore"):
            errors = np.where(usable[:, None] & (spread > 0), np.sqrt(spread), np.nan)
    start[:, pois] = mus
    errors[:, pois] = 0.0
    return (start[0], errors[0]) if values.ndim == 1 else (start, errors)


def _fits(
    cost: Any,
    poi: str,
    mu: float,
    *,
    bounded: bool,
    start: Mapping[str, float] | None,
    fixed: Mapping[str, float] | Iterable[str] | None,
    limits: Limits | None,
    strategy: int,
    tol: float,
    unconditional: FitResult | None,
    errors: Mapping[str, float] | None = None,
) -> TestStatFits:
    check_poi(cost, poi, fixed)
    try:
        mu = float(mu)
    except (TypeError, ValueError):
        raise ParameterError(f"tested value of {poi!r} must be a number, got {mu!r}") from None
    if not math.isfinite(mu):
        raise ParameterError(f"tested value of {poi!r} is not finite: {mu}")
    lims = _limits(cost, limits)
    lo, hi = lims[poi]
    if not lo <= mu <= hi:
        raise ParameterError(f"tested value {poi}={mu} lies outside its limits [{lo}, {hi}]")
    fix = _fixed_mapping(cost, fixed, start)
    user_limits = dict(limits or {})
    free_limits = dict(user_limits)
    if bounded:
        free_limits[poi] = (max(lo, 0.0), hi)
    if unconditional is not None and poi in unconditional.fixed:
        raise ParameterError(f"unconditional: the fit given has {poi!r} fixed; it must be "
                             "the fit with the POI free")
    if unconditional is None:
        if bounded and hi < 0:
            raise ParameterError(f"{poi!r} has limits [{lo}, {hi}]: the tilde test "
                                 "statistics bound its estimate to ≥ 0")
        free_start = dict(start or {})
        if bounded and poi in free_start:
            free_start[poi] = max(free_start[poi], 0.0)
        unconditional = fit(cost, free_start or None, fixed=fix or None,
                            limits=free_limits or None, strategy=strategy, tol=tol,
                            hesse=False, errors=dict(errors) if errors else None)
    # warm start from the unconditional minimum, moved along its covariance to where the
    # conditional minimum is expected (profiled_start): fewer calls, same minimum
    names = list(unconditional.parameters)
    j = names.index(poi)
    point, profiled = profiled_start(np.array([unconditional.values[n] for n in names]),
                                     unconditional.covariance, j, mu,
                                     *_bounds(lims, names),
                                     poi_limits=(max(lo, 0.0) if bounded else lo, hi))
    cond_start = {n: float(v) for n, v in zip(names, point) if n != poi}
    steps = {n: float(e) for n, e in (errors or {}).items() if n != poi}
    steps.update({n: float(e) for n, e in zip(names, profiled) if n != poi and e > 0})
    conditional = fit(cost, cond_start, fixed={**fix, poi: mu}, limits=user_limits or None,
                      strategy=strategy, tol=tol, hesse=False, errors=steps or None)
    # fits are local: a conditional minimum far (> 3 conditional errors) from where the
    # unconditional fit's covariance expects it lies in another mode of the likelihood (e.g.
    # a mirror mode of a |θ| dependence), which may hold a deeper unconditional minimum too;
    # t compares the deepest minima found, so the unconditional fit is repeated from there
    scale = [e if e > 0 else (errors or {}).get(n, math.nan) for n, e in zip(names, profiled)]
    if _elsewhere(unconditional, conditional, poi, point, np.array(scale, dtype=np.float64)):
        again = fit(cost, {**conditional.values, poi: unconditional.values[poi]},
                    fixed=fix or None, limits=free_limits or None, strategy=strategy,
                    tol=tol, hesse=False, errors=dict(errors) if errors else None)
        if again.valid and again.fval < unconditional.fval:
            unconditional = again
    unconditional = deeper_free_fit(cost, conditional, unconditional, fix, free_limits,
                                    strategy, tol, errors)
    return TestStatFits(conditional, unconditional)


def statistic_precision(tol: float | None) -> float:
    """How far a −2 ln λ from two fits at Minuit tolerance ``tol`` (iminuit's 0.1 for None)
    may lie from its exact value: 10 EDM goals, 0.02 · tol. Equal data fitted from different
    starting points (a toy that repeats the observed count) give statistics this close, not
    equal."""
    return 0.02 * (tol if tol is not None else 0.1)


def tie_tolerance(tol: float | None) -> float:
    """How far below an observed test statistic a toy's may lie and still count as equal to
    it (≥) in a p-value: 100 EDM goals, 0.2 · ``tol`` (iminuit's 0.1 for None; 2e-4 at the
    toys' default 1e-3). Equal data fitted from different starting points give statistics
    that differ by the fits' precision, which at strategy 0 reaches ~10 EDM goals (a
    counting experiment's toys with the observed count: 2.4e-5 below the observed 1.8411 at
    EDM goal 2e-6); the distinct values of a discrete statistic lie far further apart."""
    return 0.2 * (tol if tol is not None else 0.1)


def deeper_free_fit(cost: Any, conditional: FitResult, free: FitResult,
                    fix: Mapping[str, float], free_limits: Limits | None, strategy: int,
                    tol: float, errors: Mapping[str, float] | None = None) -> FitResult:
    """``free`` unless the conditional minimum lies deeper than it by more than its precision
    (10 EDM goals, 0.02·tol): then the free fit missed its minimum, and a new one started
    at the conditional minimum (the fixed parameters released) is kept if deeper. −2 ln λ is
    then ≥ 0 up to the fits' precision, and the clip at 0 (:func:`statistic_value`) only
    removes rounding."""
    if not conditional.fval < free.fval - statistic_precision(tol):
        return free
    again = fit(cost, dict(conditional.values), fixed=dict(fix) or None,
                limits=dict(free_limits) if free_limits else None, strategy=strategy, tol=tol,
                hesse=False, errors=dict(errors) if errors else None)
    return again if again.fval < free.fval else free


def _elsewhere(unconditional: FitResult, conditional: FitResult, poi: str,
               expected: np.ndarray, sigma: np.ndarray) -> bool:
    """Whether the conditional minimum lies more than 3 errors ``sigma`` (conditional ones,
    else the first steps) from where it was ``expected`` (:func:`profiled_start`) in some
    parameter other than the POI: a different mode. False where no error is known."""
    return any(n != poi and s > 0 and abs(conditional.values[n] - e) > 3.0 * s
               for n, e, s in zip(unconditional.parameters, expected, sigma))


def statistic_value(name: str, mu: float, delta: float, muhat: float) -> float:
    """The test statistic ``name`` at ``mu`` from Δ = −2 ln L(μ, θ̂̂) − (−2 ln L(μ̂, θ̂)) and μ̂
    (one-sided variants are 0 on the other side; Δ < 0 counts as 0: the fits refit the free
    minimum where the conditional one lies deeper than their precision, so what is left is
    rounding, :func:`deeper_free_fit`)."""
    t = max(delta, 0.0)
    if name in ("q", "qtilde"):
        return 0.0 if muhat > mu else t
    if name == "q0":
        return 0.0 if muhat < mu else t
    return t


def _value(name: str, mu: float, poi: str, fits: TestStatFits) -> float:
    return statistic_value(name, mu, fits.conditional.fval - fits.unconditional.fval,
                           fits.unconditional.values[poi])


def evaluate(
    name: str,
    mu: float,
    cost: Any,
    poi: str = "mu",
    *,
    start: Mapping[str, float] | None = None,
    fixed: Mapping[str, float] | Iterable[str] | None = None,
    limits: Limits | None = None,
    strategy: int = 0,
    tol: float = 1e-3,
    unconditional: FitResult | None = None,
    errors: Mapping[str, float] | None = None,
) -> tuple[float, TestStatFits]:
    """The test statistic ``name`` (see :data:`TEST_STATISTICS`) and its two fits."""
    if name not in TEST_STATISTICS:
        raise InputError(f"unknown test statistic {name!r}; choose one of "
                         f"{sorted(TEST_STATISTICS)}")
    fits = _fits(cost, poi, mu, bounded=name in ("qtilde", "ttilde"), start=start,
                 fixed=fixed, limits=limits, strategy=strategy, tol=tol,
                 unconditional=unconditional, errors=errors)
    return _value(name, float(mu), poi, fits), fits


def _public(name: str, mu: float, cost: Any, poi: str, return_fits: bool,
            kwargs: dict[str, Any]) -> float | tuple[float, TestStatFits]:
    value, fits = evaluate(name, mu, cost, poi, **kwargs)
    invalid = [what for what, f in (("conditional", fits.conditional),
                                    ("unconditional", fits.unconditional)) if not f.valid]
    if invalid:  # (toy studies record this per toy instead)
        warnings.warn(f"{name} at {poi}={mu:g}: the {' and '.join(invalid)} fit is not valid "
                      "(return_fits=True shows Minuit's verdict); the statistic may be wrong",
                      RuntimeWarning, stacklevel=3)
    return (value, fits) if return_fits else value


_DOC_ARGS = """
    Arguments:
        mu: the tested value of the POI.
        cost: any iminuit cost (−2 ln L, errordef 1): egmm's unbinned costs, PyhfCost,
            sums with ``NormalConstraint`` …
        poi: name of the parameter of interest.
        return_fits: also return the :class:`TestStatFits` (conditional, unconditional).
        start, fixed, limits: as for :func:`egmm.infer.fit` (both fits).
        strategy, tol: Minuit strategy (0: no covariance is needed here) and tolerance
            (EDM < 0.002 · tol, so the statistic is accurate to ~1e-5).
        unconditional: reuse an unconditional fit (it does not depend on μ), e.g. across
            the points of a scan; for the tilde variants it must have been made with μ̂ ≥ 0.
        errors: name -> MIGRAD's first step sizes for the fits (e.g. the errors of a fit to
            like data: ~30 % fewer calls than Minuit's default of 1 % of each value); the
            conditional fit's come from the unconditional covariance where it has one.
"""


def tmu(mu: float, cost: Any, poi: str = "mu", *, return_fits: bool = False,
        **kwargs: Any) -> float | tuple[float, TestStatFits]:
    r"""t_μ = −2 ln λ(μ), the two-sided profile-likelihood-ratio statistic (Cowan et al.
    2011, Eq. 8). Asymptotically χ²₁ when μ is true (Wilks).
    """
    return _public("t", mu, cost, poi, return_fits, kwargs)


def tmu_tilde(mu: float, cost: Any, poi: str = "mu", *, return_fits: bool = False,
              **kwargs: Any) -> float | tuple[float, TestStatFits]:
    r"""t̃_μ = −2 ln λ̃(μ) with μ̂ bounded to ≥ 0 in the denominator (Cowan et al. 2011,
    Eqs. 10–11): the ordering of the Feldman–Cousins construction for a bounded μ.
    """
    return _public("ttilde", mu, cost, poi, return_fits, kwargs)


def q0(mu: float, cost: Any, poi: str = "mu", *, return_fits: bool = False,
       **kwargs: Any) -> float | tuple[float, TestStatFits]:
    r"""q₀ = −2 ln λ(0) if μ̂ ≥ 0 else 0, the discovery statistic (Cowan et al. 2011,
    Eq. 12); ``mu`` is the background-only value (0; another value tests that null).
    Asymptotically ½δ(0) + ½χ²₁ under the null, so Z = √q₀.
    """
    return _public("q0", mu, cost, poi, return_fits, kwargs)


def qmu(mu: float, cost: Any, poi: str = "mu", *, return_fits: bool = False,
        **kwargs: Any) -> float | tuple[float, TestStatFits]:
    r"""q_μ = −2 ln λ(μ) if μ̂ ≤ μ else 0, for upper limits (Cowan et al. 2011, Eq. 14).
    With the POI bounded at 0 by the cost this equals :func:`qmu_tilde` (as in pyhf).
    """
    return _public("q", mu, cost, poi, return_fits, kwargs)


def qmu_tilde(mu: float, cost: Any, poi: str = "mu", *, return_fits: bool = False,
              **kwargs: Any) -> float | tuple[float, TestStatFits]:
    r"""q̃_μ = −2 ln λ̃(μ) if μ̂ ≤ μ else 0, with μ̂ bounded to ≥ 0 (Cowan et al. 2011,
    Eq. 16): the statistic of CLs upper limits at the LHC and pyhf's default.

    .. math::

        \tilde q_μ = \begin{cases}
            -2\ln \frac{L(μ, \hat{\hat θ}(μ))}{L(0, \hat{\hat θ}(0))} & \hat μ < 0 \\
            -2\ln \frac{L(μ, \hat{\hat θ}(μ))}{L(\hat μ, \hat θ)} & 0 \le \hat μ \le μ \\
            0 & \hat μ > μ
        \end{cases}

    Example:
        >>> from iminuit.cost import NormalConstraint
        >>> cost = NormalConstraint("mu", -0.5, 1.0)      # a measurement μ̂ = −0.5 ± 1
        >>> round(qmu_tilde(1.0, cost, "mu"), 6), round(qmu(1.0, cost, "mu"), 6)
        (2.0, 2.25)
        >>> value, fits = qmu_tilde(1.0, cost, "mu", return_fits=True)
        >>> round(fits.unconditional.values["mu"], 6), fits.conditional.values["mu"]
        (0.0, 1.0)
    """
    return _public("qtilde", mu, cost, poi, return_fits, kwargs)


for _f in (tmu, tmu_tilde, q0, qmu, qmu_tilde):
    _f.__doc__ = (_f.__doc__ or "") + _DOC_ARGS

#: pyhf's names of the test statistics (``test_stat=`` of the calculators) -> function
TEST_STATISTICS: dict[str, Callable[..., Any]] = {
    "q0": q0,
    "q": qmu,
    "qtilde": qmu_tilde,
    "t": tmu,
    "ttilde": tmu_tilde,
}


def get_test_stat(name: str) -> Callable[..., Any]:
    """The function of a test statistic by pyhf's name: ``"q0"``, ``"q"``, ``"qtilde"``,
    ``"t"`` or ``"ttilde"``."""
    try:
        return TEST_STATISTICS[name]
    except (KeyError, TypeError):
        raise InputError(f"unknown test statistic {name!r}; choose one of "
                         f"{sorted(TEST_STATISTICS)}") from None
