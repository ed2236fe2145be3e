r"""CLs upper limits and toy-based (Neyman, Feldman–Cousins) confidence intervals.

* :func:`upper_limit`: the POI value where CLs = α (observed and the five expected values),
  by root finding (``scipy.optimize.toms748``) on :func:`~egmm.infer.hypotest`, or by linear
  interpolation on a scan, as ``pyhf.infer.intervals.upper_limits.upper_limit``.
* :func:`neyman_interval`: a two-sided interval from a Neyman construction with toys on a
  grid: at every μ the toys give the distribution of t_μ, and μ is in the interval when the
  observed t_μ is below the ``cl`` quantile (its p-value is above 1 − cl).
* :func:`feldman_cousins`: the same with t̃_μ (μ̂ ≥ 0), whose ordering is the likelihood-ratio
  ordering of Feldman & Cousins (1998) with the physical boundary.
* :func:`neyman_region_2d`: toy-based critical values of t(μ₁, μ₂) on a 2-D grid for two POIs.

Toys are generated at the conditional MLE of the nuisance parameters for each grid point
(Cowan et al. 2011, Sec. 3; LHC convention), with the seeds of :func:`~egmm.infer.toy_seed`.

References:
    G. Cowan, K. Cranmer, E. Gross, O. Vitells, Eur. Phys. J. C 71 (2011) 1554,
    arXiv:1007.1727; G. J. Feldman, R. D. Cousins, Phys. Rev. D 57 (1998) 3873;
    J. Neyman, Phil. Trans. R. Soc. A 236 (1937) 333.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from iminuit.util import describe
from scipy.optimize import toms748
from scipy.stats import chi2

from egmm.base import is_real_number, whole_number
from egmm.errors import EgmmError, InputError, ParameterError
from egmm.infer.calculators import EmpiricalDistribution, hypotest, make_calculator
from egmm.infer.fit import FitResult, check_strategy, check_tol, fit
from egmm.infer.parallel import fingerprint, run_toys
from egmm.infer.profile import wilks_threshold
from egmm.infer.teststats import (
    Limits,
    _bounds,
    _fixed_mapping,
    _limits,
    check_poi,
    deeper_free_fit,
    evaluate,
    profiled_start,
    tie_tolerance,
)
from egmm.infer.toys import (
    ToyTestStats,
    _typical_errors,
    _values,
    check_ntoys,
    check_seed,
    check_toys,
    sample_toy,
    toy_seed,
    toy_teststats,
)

__all__ = [
    "NeymanInterval",
    "NeymanRegion2D",
    "feldman_cousins",
    "neyman_interval",
    "neyman_region_2d",
    "upper_limit",
]


def _probability(cl: float) -> float:
    """iminuit's ``cl``: < 1 a probability, ≥ 1 a number of sigmas (two-sided normal)."""
    try:
        cl = float(cl)
    except (TypeError, ValueError):
        raise InputError(f"cl must be a number, got {cl!r}") from None
    if not (math.isfinite(cl) and cl > 0):
        raise InputError(f"cl must be > 0 (a probability < 1 or a number of sigmas), got {cl}")
    prob = cl if cl < 1 else float(chi2.cdf(cl**2, 1))
    if prob >= 1.0:  # (≳ 8.3σ) every toy would be inside, every grid point accepted
        raise InputError(f"cl = {cl:g}σ is a probability that rounds to 1 in float64: no toy "
                         "study can tell it from 1")
    return prob


# ----------------------------------------------------------------------------------------------
# CLs upper limits
# ----------------------------------------------------------------------------------------------
_CURVE_NAMES = ("observed CLs", "expected CLs −2σ", "expected CLs −1σ", "expected CLs",
                "expected CLs +1σ", "expected CLs +2σ")


def _scan_crossing(points: np.ndarray, cls: np.ndarray, level: float, what: str) -> float:
    """Where ``cls`` (at the sorted ``points``) first falls below ``level``, linearly
    interpolated between the two scan points around it; a curve that does not cross inside
    the scan, or has no value somewhere, raises instead of giving an end point."""
    bad = ~np.isfinite(cls)
    if bad.any():
        raise EgmmError(f"upper_limit: {what} is {cls[bad][0]} at μ = {points[bad][0]:g} (too "
                        "few toys?); no limit from this scan")
    below = np.flatnonzero(cls < level)
    if not below.size or below[0] == 0:
        where = ("stays above" if not below.size else "is already below")
        end = points[-1] if not below.size else points[0]
        raise EgmmError(f"upper_limit: {what} {where} {level:g} at μ = {end:g}: the scan "
                        f"[{points[0]:g}, {points[-1]:g}] does not bracket the limit; "
                        "widen it")
    i = below[0]
    a, b, fa, fb = points[i - 1], points[i], cls[i - 1], cls[i]
    return float(a + (fa - level) * (b - a) / (fa - fb))


def upper_limit(
    cost: Any,
    poi: str = "mu",
    *,
    scan: Iterable[float] | None = None,
    bounds: tuple[float, float] | None = None,
    level: float = 0.05,
    rtol: float = 1e-4,
    atol: float = 2e-12,
    calctype: str = "asymptotics",
    expected: bool = True,
    return_results: bool = False,
    calculator: Any = None,
    **kwargs: Any,
) -> Any:
    r"""Upper limit μ_up on the POI at CLs = ``level`` (95 % CL for 0.05), observed and
    expected (median, ±1σ, ±2σ), as pyhf's ``upper_limit``.

    Without ``scan``, each limit is the root of CLs(μ) − level found by
    ``scipy.optimize.toms748`` (``rtol``, ``atol``) inside ``bounds`` (default: the POI's
    limits, e.g. [0, 10]); the bracket is widened (lower end halved, upper doubled, at most to
    the POI's limit) until it contains every crossing. With ``scan``, CLs is computed on those
    points and each crossing (the first point where the curve falls below ``level``) is
    interpolated linearly; a curve that does not cross inside the scan raises
    :class:`~egmm.EgmmError` (pyhf returns the scan's end point). One calculator serves every
    point,
    so the fits to the observed data, the Asimov dataset, or the toys' seeds (common random
    numbers across μ) are shared.

    With toys every tested point costs 2 × ntoys toy fits: ``expected=False`` finds only the
    observed limit (the expected list is then ``None``); reuse one
    :func:`~egmm.infer.local_executor` for all points.

    Returns:
        ``(observed, [expected −2σ, −1σ, median, +1σ, +2σ])`` and, with ``return_results``,
        also ``(tested points, hypotest results [CLs, [5 expected]])`` in ascending μ.

    Example:
        >>> import pyhf
        >>> from egmm import PyhfCost
        >>> model = pyhf.simplemodels.uncorrelated_background([5.0], [50.0], [7.0])
        >>> obs, exp = upper_limit(PyhfCost(model, [55.0]), "mu", rtol=1e-3)
        >>> round(obs, 2), [round(v, 2) for v in exp]
        (4.76, [2.15, 2.89, 4.04, 5.66, 7.69])
    """
    if not (is_real_number(level) and 0 < level < 1):
        raise InputError(f"level must be a number in (0, 1), got {level!r}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not (is_real_number(value) and math.isfinite(value) and value > 0):
            raise InputError(f"upper_limit: {name} must be a positive number, got {value!r}")
    if calculator is None:
        calculator = make_calculator(calctype, cost, poi, **kwargs)
    elif kwargs:
        raise InputError(f"upper_limit: options {sorted(kwargs)} cannot be combined with "
                         "calculator=")
    cache: dict[float, tuple[float, list[float]]] = {}

    def result(mu: float) -> tuple[float, list[float]]:
        mu = float(mu)
        if mu not in cache:
            cls, band = hypotest(mu, cost, poi, return_expected_set=True, calculator=calculator)
            cache[mu] = (float(cls), [float(v) for v in band])
        return cache[mu]

    def curve(mu: float, k: int) -> float:  # k = 0: observed, 1..5: expected band
        cls, band = result(mu)
        return (cls if k == 0 else band[k - 1]) - level

    curves = range(6) if expected else range(1)

    if scan is not None:
        points = np.sort(_grid(scan, "upper_limit: scan"))
        if points.size < 2:
            raise InputError("upper_limit: scan needs at least two finite points")
        values = np.array([[curve(mu, k) + level for k in range(6)] for mu in points])
        limits = [_scan_crossing(points, values[:, k], level, _CURVE_NAMES[k]) for k in curves]
    else:
        lo, hi = _bracket(cost, poi, bounds, calculator, curve, curves)
        limits = []
        for k in curves:
            a, b = _best_bracket(cache, k, level, lo, hi)
            fa, fb = curve(a, k), curve(b, k)
            if fa == 0 or fb == 0:
                limits.append(a if fa == 0 else b)
                continue
            limits.append(float(toms748(curve, a, b, args=(k,), k=2, xtol=atol, rtol=rtol)))
    obs, exp = limits[0], (limits[1:] if expected else None)
    if return_results:
        mus = sorted(cache)
        return obs, exp, (mus, [cache[m] for m in mus])
    return obs, exp


def _bracket(cost: Any, poi: str, bounds: tuple[float, float] | None, calculator: Any,
             curve: Callable[[float, int], float], curves: range) -> tuple[float, float]:
    lims = _limits(cost, calculator._fit_options["limits"])
    plo, phi = lims[poi]
    if bounds is None:
        lo, hi = max(plo, 0.0), phi
        if not math.isfinite(hi):
            hi = lo + 10.0
    else:
        lo, hi = (float(v) for v in bounds)
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise InputError(f"upper_limit: bounds must be finite with lo < hi, got ({lo}, {hi})")
    halvings = 0
    while min(curve(lo, k) for k in curves) < 0:  # every curve must start above the level
        if lo <= max(plo, 0.0) or halvings == 30:
            raise EgmmError(f"upper_limit: CLs is below the level already at {poi}={lo:.6g}")
        lo, halvings = max(lo / 2, plo), halvings + 1
    while max(curve(hi, k) for k in curves) > 0:  # ... and end below it
        if hi >= phi:
            raise EgmmError(f"upper_limit: CLs stays above the level up to the limit "
                            f"{poi}={phi:.6g}; widen the POI's limits")
        hi = min(2 * hi, phi)
    return lo, hi


def _best_bracket(cache: Mapping[float, tuple[float, list[float]]], k: int, level: float,
                  lo: float, hi: float) -> tuple[float, float]:
    """The tightest cached points with CLs above / below the level (pyhf's best bracket)."""
    above, below = lo, hi
    for mu in sorted(cache):
        cls, band = cache[mu]
        v = (cls if k == 0 else band[k - 1]) - level
        if v >= 0 and mu > above and mu < below:
            above = mu
        elif v < 0 and mu < below and mu > above:
            below = mu
    return above, below


# ----------------------------------------------------------------------------------------------
# Neyman constructions with toys
# ----------------------------------------------------------------------------------------------
@dataclass
class NeymanInterval:
    """A two-sided interval from a toy Neyman construction on a grid.

    Attributes:
        poi, cl, test_stat: what was constructed (``cl`` as a probability).
        lower, upper: the interval: the first and last accepted grid points, moved to where
            the p-value crosses 1 − cl (linear interpolation) between a rejected and an
            accepted neighbour; at the grid's end when the acceptance reaches it.
        grid: (n,) tested values; observed: (n,) the statistic on the data; critical: (n,)
            its ``cl`` quantile over the toys; pvalue, pvalue_error: (n,) fraction of toys
            ≥ observed and its binomial error; accepted: (n,) pvalue > 1 − cl.
        wilks: the asymptotic critical value χ²₁ quantile (for comparison).
        toys: the :class:`~egmm.infer.toys.ToyTestStats` per grid point.
        notes: e.g. an acceptance region that is not one interval, failed toys.
    """

    poi: str
    cl: float
    test_stat: str
    lower: float
    upper: float
    grid: np.ndarray
    observed: np.ndarray
    critical: np.ndarray
    pvalue: np.ndarray
    pvalue_error: np.ndarray
    accepted: np.ndarray
    wilks: float
    toys: list[ToyTestStats] = field(repr=False)
    notes: list[str] = field(default_factory=list)

    @property
    def interval(self) -> tuple[float, float]:
        return self.lower, self.upper


def _grid(grid: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(list(grid), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} cannot be read as numbers ({exc})") from None
    if arr.ndim != 1:
        raise InputError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise InputError(f"{what} must be non-empty and finite")
    return np.sort(arr)


def _crossing(x0: float, p0: float, x1: float, p1: float, alpha: float) -> float:
    return float(x0 + (alpha - p0) * (x1 - x0) / (p1 - p0) if p1 != p0 else 0.5 * (x0 + x1))


def neyman_interval(
    cost: Any,
    poi: str,
    grid: Iterable[float],
    *,
    cl: float = 0.6827,
    test_stat: str = "t",
    ntoys: int = 1000,
    seed: int = 0,
    executor: Any = None,
    out: Any = None,
    track_progress: bool = True,
    start: Mapping[str, float] | None = None,
    fixed: Mapping[str, float] | Iterable[str] | None = None,
    limits: Limits | None = None,
    strategy: int = 0,
    tol: float = 1e-3,
    batched: bool = False,
    batch_size: int = 64,
) -> NeymanInterval:
    r"""Two-sided confidence interval for one POI by a Neyman construction with toys.

    For each grid value μ_k: toys at (μ_k, θ̂̂(μ_k)) give the distribution of the statistic
    (``"t"``: t_μ = −2 ln λ(μ); ``"ttilde"``: t̃_μ with μ̂ ≥ 0), its p-value
    p_k = P(t ≥ t_obs(μ_k)); μ_k is accepted when p_k > 1 − cl. Asymptotically (Wilks) the
    critical values are χ²₁ quantiles (``wilks``) and the interval is the profile-likelihood
    interval. Toy i at every grid point uses ``toy_seed(seed, 2, i)``.

    Arguments:
        cost, poi: the cost (−2 ln L) and the name of the parameter of interest.
        grid: POI values (sorted here), inside the POI's limits.
        cl: confidence level (iminuit semantics: < 1 probability, ≥ 1 sigmas).
        test_stat: ``"t"`` or ``"ttilde"`` (any of :data:`~egmm.infer.TEST_STATISTICS`).
        ntoys, seed, executor, out, track_progress: toys (see :class:`~egmm.infer.ToyCalculator`).
        start, fixed, limits, strategy, tol: fit options.
        batched, batch_size: fit the toys together (see :func:`~egmm.infer.toy_teststats`).

    Example:
        >>> from iminuit.cost import NormalConstraint
        >>> cost = NormalConstraint(["mu", "b"], [0.3, 0.0], [1.0, 1.0])   # μ̂ = 0.3 ± 1
        >>> r = neyman_interval(cost, "mu", np.linspace(-1.5, 2.1, 13), ntoys=200,
        ...                     executor="serial", track_progress=False)
        >>> round(r.lower, 1), round(r.upper, 1)
        (-0.7, 1.3)
    """
    return _neyman(cost, poi, grid, cl, test_stat, ntoys, seed, executor, out, track_progress,
                   start, fixed, limits, strategy, tol, {"batched": batched,
                                                         "batch_size": batch_size})


def feldman_cousins(
    cost: Any,
    poi: str,
    grid: Iterable[float],
    *,
    cl: float = 0.6827,
    **kwargs: Any,
) -> NeymanInterval:
    r"""Feldman–Cousins interval: :func:`neyman_interval` with t̃_μ = −2 ln λ̃(μ).

    The denominator of λ̃ is fitted with μ̂ ≥ 0 (the physical boundary), which is the
    likelihood-ratio ordering of Feldman & Cousins (1998), in its profiled form (Cowan et al.
    2011, Eq. 11). Near the boundary the interval becomes one-sided by itself ("unified").
    ``kwargs``: the options of :func:`neyman_interval` except ``test_stat``.
    """
    if "test_stat" in kwargs:
        raise InputError("feldman_cousins uses test_stat='ttilde'; call neyman_interval to "
                         "choose another")
    return neyman_interval(cost, poi, grid, cl=cl, test_stat="ttilde", **kwargs)


def _neyman(cost: Any, poi: str, grid: Any, cl: float, test_stat: str, ntoys: int, seed: int,
            executor: Any, out: Any, progress: bool, start: Any, fixed: Any, limits: Any,
            strategy: int, tol: float, toy_options: dict[str, Any]) -> NeymanInterval:
    prob = _probability(cl)
    check_poi(cost, poi, fixed)
    ntoys, seed, tol = check_ntoys(ntoys), check_seed(seed), check_tol(tol)
    mus = _grid(grid, "neyman_interval grid")
    bounded = test_stat in ("ttilde", "qtilde")
    if bounded and mus[0] < 0:
        raise InputError(f"{test_stat} is defined for {poi} ≥ 0 (its free fit keeps {poi}̂ ≥ 0, "
                         f"the physical boundary): grid point {poi}={mus[0]:g} lies below it")
    options = dict(fixed=fixed, limits=limits, strategy=strategy, tol=tol)
    observed, critical, pvalue, perr, toys = [], [], [], [], []
    free: FitResult | None = None
    notes: list[str] = []
    for mu in mus:
        t_obs, fits = evaluate(test_stat, mu, cost, poi, start=start, unconditional=free,
                               **options)
        free = fits.unconditional
        tt = toy_teststats(cost, fits.conditional.values, poi, float(mu), test_stat=test_stat,
                           ntoys=ntoys, seed=seed, stream=2, executor=executor, out=out,
                           progress=progress, **toy_options, **options)
        values = tt.values[~np.isnan(tt.values)]
        # toys tying with the observed statistic (a discrete one) count, to the fits' precision
        p = EmpiricalDistribution(values, tie_tolerance(tol)).pvalue(t_obs)
        observed.append(t_obs)
        critical.append(float(np.quantile(values, prob)))
        pvalue.append(p)
        perr.append(math.sqrt(p * (1 - p) / len(values)))
        toys.append(tt)
        if tt.n_failed:
            notes.append(f"{poi}={mu:.6g}: {tt.n_failed} of {ntoys} toys failed (left out)")
    p = np.array(pvalue)
    alpha = 1 - prob
    accepted = p > alpha
    lower = upper = math.nan
    idx = np.nonzero(accepted)[0]
    if idx.size == 0:
        notes.append("no grid point is accepted: extend or refine the grid")
    else:
        i, j = int(idx[0]), int(idx[-1])
        lower = float(mus[i]) if i == 0 else _crossing(mus[i - 1], p[i - 1], mus[i], p[i], alpha)
        upper = float(mus[j]) if j == len(mus) - 1 else _crossing(mus[j], p[j], mus[j + 1],
                                                                   p[j + 1], alpha)
        if i == 0 and not math.isclose(mus[0], _limits(cost, limits)[poi][0]) and not (
                bounded and mus[0] == 0.0):  # (t̃'s boundary: nothing lies below it)
            notes.append("the acceptance reaches the lowest grid point: extend the grid")
        if j == len(mus) - 1:
            notes.append("the acceptance reaches the highest grid point: extend the grid")
        if not accepted[i:j + 1].all():
            notes.append("the accepted grid points do not form one interval")
    return NeymanInterval(poi, prob, test_stat, lower, upper, mus, np.array(observed),
                          np.array(critical), p, np.array(perr), accepted,
                          wilks_threshold(prob, 1), toys, notes)


# ----------------------------------------------------------------------------------------------
# two POIs
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _RegionJob:
    cost: Any
    pars: dict[str, float]
    pois: tuple[str, str]
    point: tuple[float, float]
    seed: int
    fixed: Any
    limits: Any
    strategy: int
    tol: float
    steps: dict[str, float] | None = None  # MIGRAD's first steps of the loop's free fits


def _profile_ratio(cost: Any, values: Mapping[str, float], start: Mapping[str, float] | None,
                   fixed: Any, limits: Any, strategy: int, tol: float,
                   free: FitResult | None = None, steps: Mapping[str, float] | None = None
                   ) -> tuple[float, FitResult, FitResult]:
    """t = −2 ln λ(values) with the parameters in ``values`` fixed in the numerator
    (``steps``: MIGRAD's first steps of the free fit, when it is made here)."""
    fix = _fixed_mapping(cost, fixed, start)
    if free is None:
        free = fit(cost, start, fixed=fix or None, limits=limits, strategy=strategy, tol=tol,
                   hesse=False, errors=dict(steps) if steps else None)
    # the conditional fit starts where the free fit's covariance puts its minimum, with the
    # conditional errors as its first steps (profiled_start): fewer calls, same minimum
    names = list(free.parameters)
    lims = _limits(cost, limits)
    point, profiled = profiled_start(
        np.array([free.values[n] for n in names]), free.covariance,
        [names.index(n) for n in values], [float(v) for v in values.values()],
        *_bounds(lims, names))
    cond_start = {n: float(v) for n, v in zip(names, point) if n not in values}
    cond_steps = {n: float(e) for n, e in (steps or {}).items() if n not in values}
    cond_steps.update({n: float(e) for n, e in zip(names, profiled)
                       if n not in values and e > 0})
    cond = fit(cost, cond_start, fixed={**fix, **values}, limits=limits, strategy=strategy,
               tol=tol, hesse=False, errors=cond_steps or None)
    free = deeper_free_fit(cost, cond, free, fix, limits, strategy, tol, steps)
    return max(cond.fval - free.fval, 0.0), cond, free


def _region_task(job: _RegionJob, index: int) -> dict[str, Any]:
    record: dict[str, Any] = {"index": index, "seed": [job.seed, 3, index]}
    try:
        toy = sample_toy(job.cost, job.pars, toy_seed(job.seed, 3, index))
        t, cond, free = _profile_ratio(toy, dict(zip(job.pois, job.point)), job.pars,
                                       job.fixed, job.limits, job.strategy, job.tol,
                                       steps=job.steps)
        record.update(value=float(t), valid=bool(cond.valid and free.valid))
    except Exception as exc:  # recorded and counted, not dropped
        record.update(value=None, valid=False, error=f"{type(exc).__name__}: {exc}")
    return record


def _region_batch_task(job: _RegionJob, indices: list[int]) -> list[dict[str, Any]]:
    """Toys ``indices`` fitted together by :func:`egmm.infer.fit_batched` (everything free,
    then both POIs fixed from its minimum); the same toys, seeds and statistic as
    :func:`_region_task`. A batch that cannot be fitted together is done toy by toy."""
    # (batched imports this module's neighbours)
    from egmm.infer.batched import deeper_free_minima, fit_batched

    records: list[dict[str, Any]] = []
    toys, fitted = [], []
    for i in indices:
        record: dict[str, Any] = {"index": i, "seed": [job.seed, 3, i], "batched": True}
        try:
            toys.append(sample_toy(job.cost, job.pars, toy_seed(job.seed, 3, i)))
            fitted.append(record)
        except Exception as exc:  # recorded, not dropped
            record.update(value=None, valid=False, error=f"{type(exc).__name__}: {exc}")
        records.append(record)
    if not toys:
        return records
    fix = _fixed_mapping(job.cost, job.fixed, job.pars)
    limits = dict(job.limits) if job.limits else None
    try:
        free = fit_batched(toys, job.pars, fixed=fix or None, limits=limits, validate=False,
                           strategy=job.strategy, minuit_tol=job.tol)
        start = free.values.copy()
        for p, v in zip(job.pois, job.point):
            start[:, free.parameters.index(p)] = v
        cond_values, fval, valid, fallback = _fit_conditional(
            toys, start, [*free.fixed, *job.pois], limits, job.strategy, job.tol)
        # a conditional minimum deeper than the free one: the free fit is repeated from it
        # (as _profile_ratio's deeper_free_fit), so t is not clipped to 0 for a missed minimum
        _, free_fval, free_valid, _ = deeper_free_minima(
            toys, (free.values, free.fval, free.valid), cond_values, fval,
            fixed=fix or None, limits=limits, strategy=job.strategy, tol=job.tol)
    except (InputError, ParameterError):
        return [_region_task(job, i) for i in indices]
    t = np.maximum(fval - free_fval, 0.0)
    for k, record in enumerate(fitted):
        record.update(value=float(t[k]), valid=bool(free_valid[k] and valid[k]),
                      fallback=bool(free.fallback[k] or fallback[k]))
    return records


_region_batch_task.batched = True  # type: ignore[attr-defined]


def _fit_conditional(costs: Sequence[Any], start: np.ndarray, held: Sequence[str],
                     limits: Limits | None, strategy: int, tol: float | None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The conditional minima of toys ``costs`` with the parameters ``held`` at their values
    in ``start`` (K, P), by :func:`egmm.infer.fit_batched`: their values (K, P), −2 ln L
    (K,), valid (K,) and refitted by Minuit (K,). With every parameter held the minimum is
    the cost at ``start``, one evaluation per toy rather than a batched Newton iteration."""
    from egmm.infer.batched import fit_batched

    names = list(describe(costs[0]))
    if set(held) >= set(names):
        bounds = _limits(costs[0], limits)
        for j, n in enumerate(names):  # as fit_batched and Minuit refuse them
            lo, hi = bounds[n]
            outside = (start[:, j] < lo) | (start[:, j] > hi)
            if outside.any():
                raise ParameterError(f"fixed value {n}={start[outside, j][0]} lies outside its "
                                     f"limits [{lo}, {hi}]")
        fval = np.array([float(c(*row)) for c, row in zip(costs, start.tolist())])
        return (start.copy(), fval, np.ones(len(costs), dtype=bool),
                np.zeros(len(costs), dtype=bool))
    cond = fit_batched(costs, start, fixed=list(held), limits=limits, validate=False,
                       strategy=strategy, minuit_tol=tol)
    return cond.values, cond.fval, cond.valid, cond.fallback


def _check_batch_size(batch_size: Any) -> int:
    return whole_number(batch_size, "batch_size")


def _check_fit_together(costs: Sequence[Any]) -> None:
    """Raise :class:`~egmm.InputError` (naming the term or the difference) unless
    :func:`egmm.infer.fit_batched` can fit ``costs``, toys of one model, together."""
    from egmm.infer.batched import _Batch, _split_costs

    names = tuple(describe(costs[0]))
    try:
        for k, c in enumerate(costs[1:], start=1):
            if tuple(describe(c)) != names:
                raise InputError(f"cost {k} has parameters {list(describe(c))}, cost 0 has "
                                 f"{list(names)}")
        _Batch(*_split_costs(list(costs), names), names)
    except InputError as exc:
        raise InputError(f"batched=True: these toys cannot be fitted together ({exc}); use "
                         "the default batched=False") from None


@dataclass
class NeymanRegion2D:
    """Toy-based critical values of t(μ₁, μ₂) = −2 ln λ(μ₁, μ₂) on a grid.

    Attributes:
        pois, cl: the two POIs and the confidence level (probability).
        x, y: (nx,), (ny,) grid values of ``pois[0]``, ``pois[1]``.
        observed, critical, pvalue: (nx, ny) the statistic on the data, its ``cl`` quantile
            over the toys, and the fraction of toys ≥ observed.
        accepted: (nx, ny) pvalue > 1 − cl: the confidence region on the grid.
        wilks: the asymptotic critical value (χ²₂ quantile, 2.30 for 68.27 %).
        n_failed: (nx, ny) failed toys per point (left out).
    """

    pois: tuple[str, str]
    cl: float
    x: np.ndarray
    y: np.ndarray
    observed: np.ndarray
    critical: np.ndarray
    pvalue: np.ndarray
    accepted: np.ndarray
    wilks: float
    n_failed: np.ndarray


def neyman_region_2d(
    cost: Any,
    pois: Sequence[str],
    x: Iterable[float],
    y: Iterable[float],
    *,
    cl: float = 0.6827,
    ntoys: int = 1000,
    seed: int = 0,
    executor: Any = None,
    out: Any = None,
    track_progress: bool = True,
    start: Mapping[str, float] | None = None,
    fixed: Mapping[str, float] | Iterable[str] | None = None,
    limits: Limits | None = None,
    strategy: int = 0,
    tol: float = 1e-3,
    batched: bool = False,
    batch_size: int = 64,
) -> NeymanRegion2D:
    r"""Confidence region for two POIs from toys on the grid ``x`` × ``y``.

    At every grid point (μ₁, μ₂), toys at (μ₁, μ₂, θ̂̂(μ₁, μ₂)) give the distribution of
    t = −2 ln λ(μ₁, μ₂) (both POIs fixed in the numerator, everything free in the
    denominator); the critical value is its ``cl`` quantile (χ²₂ quantile asymptotically,
    Wilks). Toy i at every point uses ``toy_seed(seed, 3, i)``. Options as
    :func:`neyman_interval`.

    ``batched=True`` fits ``batch_size`` toys at a time with :func:`egmm.infer.fit_batched`
    (the free and the conditional fit of each toy in two batched Newton solves, no Minuit)
    instead of two Minuit fits per toy: the same toys, seeds and statistic, equal to the
    fits' tolerance. A toy whose batched fit does not converge is refitted by Minuit (as
    ``fit_batched`` does) and is valid only if that fit is. It needs costs ``fit_batched``
    can vectorise (one unbinned cost plus NormalConstraints); others (e.g. ``PyhfCost``)
    raise :class:`~egmm.InputError` here, before any toy.
    """
    pois = tuple(pois)
    if len(pois) != 2 or pois[0] == pois[1]:
        raise InputError(f"neyman_region_2d needs two different POIs, got {list(pois)}")
    for p in pois:
        check_poi(cost, p, fixed)
    prob = _probability(cl)
    ntoys, seed, tol = check_ntoys(ntoys), check_seed(seed), check_tol(tol)
    strategy = check_strategy(strategy)
    batched = bool(batched)
    if batched:
        batch_size = _check_batch_size(batch_size)
        _check_fit_together([cost])  # toys keep the observed cost's terms and densities
    xs, ys = _grid(x, f"grid of {pois[0]!r}"), _grid(y, f"grid of {pois[1]!r}")
    lims = _limits(cost, limits)
    for p, g in zip(pois, (xs, ys)):
        lo, hi = lims[p]
        if g[0] < lo or g[-1] > hi:
            raise ParameterError(f"grid of {p!r} leaves its limits [{lo}, {hi}]")
    shape = (len(xs), len(ys))
    observed, critical, pvalue = np.empty(shape), np.empty(shape), np.empty(shape)
    n_failed = np.zeros(shape, dtype=int)
    free: FitResult | None = None
    names = list(describe(cost))
    for i, a in enumerate(xs):
        for j, b in enumerate(ys):
            point = (float(a), float(b))
            t_obs, cond, free = _profile_ratio(cost, dict(zip(pois, point)), start, fixed,
                                               limits, strategy, tol, free)
            pars = _values(cost, cond.values)
            digest = check_toys(cost, pars, [toy_seed(seed, 3, k) for k in range(min(ntoys, 5))])
            # the loop's free fits start with one toy's HESSE errors as first steps
            steps = None if batched else _typical_errors(cost, pars, toy_seed(seed, 3, 0),
                                                         fixed, limits)
            job = _RegionJob(cost, pars, pois, point, seed, fixed, limits, strategy,
                             float(tol), steps)
            key = "region2d/" + fingerprint(pois, point, seed, {n: float(f"{pars[n]:.9g}")
                                                                for n in names},
                                            repr(fixed), limits, strategy, float(tol),
                                            digest,
                                            *(["batched"] if batched else []))
            records = run_toys(_region_batch_task if batched else _region_task, job,
                               range(ntoys), key=key, executor=executor, out=out,
                               progress=track_progress,
                               desc=f"t({pois[0]}={a:.3g}, {pois[1]}={b:.3g})",
                               chunk_size=batch_size if batched else None)
            values = np.array([math.nan if r["value"] is None else r["value"]
                               for r in records])
            n_failed[i, j] = int(np.isnan(values).sum())
            values = values[~np.isnan(values)]
            if values.size == 0:
                raise EgmmError(f"all toys failed at {point}: {records[0].get('error')}")
            observed[i, j] = t_obs
            critical[i, j] = float(np.quantile(values, prob))
            pvalue[i, j] = EmpiricalDistribution(values, tie_tolerance(tol)).pvalue(t_obs)
    if n_failed.any():
        warnings.warn(f"{int(n_failed.sum())} toys failed (left out); see n_failed",
                      stacklevel=2)
    return NeymanRegion2D(pois, prob, xs, ys, observed, critical, pvalue, pvalue > 1 - prob,
                          wilks_threshold(prob, 2), n_failed)
