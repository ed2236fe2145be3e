"""Profile-likelihood scans, 2-D confidence regions and Wilks thresholds (−2 ln L convention).

References:
    S. S. Wilks, Ann. Math. Statist. 9 (1938) 60;
    G. Cowan, K. Cranmer, E. Gross, O. Vitells, Eur. Phys. J. C 71 (2011) 1554.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from iminuit import Minuit
from scipy.stats import chi2

from egmm.base import whole_number
from egmm.errors import EgmmError, InputError, ParameterError
from egmm.infer.fit import (
    FitResult,
    _new_minuit,
    fit,
    hessian_call_limit,
    starts_on_a_limit,
    uses_exact_hessian,
    warn_if_weighted,
    without_hessian,
)

__all__ = ["ProfileResult", "contour", "profile", "wilks_threshold"]


def wilks_threshold(cl: float, ndof: int = 1) -> float:
    r"""Δ(−2 ln L) bounding a profile-likelihood region of confidence level ``cl``.

    By Wilks' theorem −2 ln λ is asymptotically χ²-distributed with ``ndof`` degrees of
    freedom (the number of parameters of the region), so the threshold is
    ``chi2.ppf(p, ndof)``. ``cl`` follows iminuit: ``cl < 1`` is the probability p,
    ``cl ≥ 1`` a number of standard deviations z, converted to the two-sided normal
    probability p = χ²₁.cdf(z²) (so z = 1 gives 1 for one parameter and 2.296 for two).

    Example:
        >>> [round(wilks_threshold(c, 2), 3) for c in (0.68, 0.6827, 0.95, 1)]
        [2.279, 2.296, 5.991, 2.296]
        >>> wilks_threshold(1, 1), wilks_threshold(2, 1)
        (1.0, 4.0)
    """
    try:
        cl = float(cl)
    except (TypeError, ValueError):
        raise InputError(f"cl must be a number, got {cl!r}") from None
    if not (math.isfinite(cl) and cl > 0):
        raise InputError(f"cl must be > 0 (a probability < 1 or a number of sigmas), got {cl}")
    if isinstance(ndof, bool) or int(ndof) != ndof or ndof < 1:
        raise InputError(f"ndof must be a positive integer, got {ndof!r}")
    if cl >= 1 and ndof == 1:
        return cl**2  # exact: χ²₁.ppf(χ²₁.cdf(z²)) = z²
    if cl < 1:
        return float(chi2.ppf(cl, int(ndof)))
    # through the tail probability, which keeps its precision where the cdf rounds to 1
    # (9σ in 2-D: 85.87, where ppf(cdf) gave inf)
    return float(chi2.isf(chi2.sf(cl**2, 1), int(ndof)))


@dataclass
class ProfileResult:
    """Outcome of :func:`profile`, arrays in the order of the requested grid.

    Attributes:
        poi: name of the scanned parameter.
        grid: its values (n,).
        delta: Δ(−2 ln L) = fval − ``global_fit.fval`` (n,).
        fval: conditional minima of −2 ln L (n,).
        nuisance: name -> (n,) conditional best-fit values of every other parameter.
        valid: per point, whether the conditional MIGRAD converged (n,) bool.
        global_fit: the unconditional fit the scan started from.
        notes: anything the caller should know (e.g. a point below the global minimum).
    """

    poi: str
    grid: np.ndarray
    delta: np.ndarray
    fval: np.ndarray
    nuisance: dict[str, np.ndarray]
    valid: np.ndarray
    global_fit: FitResult = field(repr=False)
    notes: list[str] = field(default_factory=list)

    def interval(self, cl: float = 1.0) -> tuple[float, float]:
        """Interval where Δ ≤ ``wilks_threshold(cl, 1)``, by linear interpolation of the scan.

        Where the scan reaches a limit of the parameter without crossing the threshold, the
        interval is cut there: that end is the limit (as MINOS reports an end at a limit),
        with a warning. A minimum on the limit counts as reaching it (MIGRAD leaves it a
        hair inside: within 1e-3 of the grid's spacing), with no grid point beyond it. An
        end is NaN, with a warning, where the scan stops short of both the threshold and the
        limit (extend the grid).
        """
        thr = wilks_threshold(cl, 1)
        order = np.argsort(self.grid)
        g, d = self.grid[order], self.delta[order]
        best = self.global_fit.values[self.poi]
        limits = self.global_fit.minuit.limits[self.poi]
        # a point this close to a limit is on it: MIGRAD leaves a minimum on a limit ~1e-5
        # inside (its bounded transform), where Δ differs from Δ at the limit by nothing
        steps = np.diff(g)
        near = 1e-3 * float(np.median(steps[steps > 0])) if np.any(steps > 0) else 0.0
        out = []
        for side, name, limit in ((-1, "lower", limits[0]), (1, "upper", limits[1])):
            idx = np.nonzero(g < best)[0][::-1] if side < 0 else np.nonzero(g >= best)[0]
            prev_g, prev_d = best, 0.0
            end = math.nan
            for i in idx:
                if d[i] >= thr:
                    end = prev_g + (thr - prev_d) * (g[i] - prev_g) / (d[i] - prev_d)
                    break
                prev_g, prev_d = g[i], d[i]
            if math.isnan(end):
                if math.isfinite(limit) and (abs(prev_g - limit) <= near or math.isclose(
                        prev_g, limit, rel_tol=1e-12, abs_tol=1e-12)):
                    end = float(limit)
                    warnings.warn(f"{self.poi}: the {name} end of the interval is cut by the "
                                  f"limit {limit:g} (Δ(−2 ln L) there {prev_d:.4g} < "
                                  f"{thr:.4g})", stacklevel=2)
                else:
                    warnings.warn(f"{self.poi}: the scan does not reach Δ(−2 ln L) = "
                                  f"{thr:.4g} on the {name} side (it ends at {prev_g:g}): "
                                  "extend the grid", stacklevel=2)
            out.append(float(end))
        return out[0], out[1]


def _conditional_minuit(cost: Any, like: Minuit, values: Mapping[str, float],
                        fix: Sequence[str], tol: float) -> Minuit:
    m = _new_minuit(cost, values)
    for n in like.parameters:
        m.limits[n] = like.limits[n]
        m.fixed[n] = like.fixed[n] or n in fix
    m.strategy = like.strategy.strategy
    m.tol = tol
    return m


def _migrad(cost: Any, m: Minuit) -> tuple[bool, Minuit]:
    """MIGRAD, once more with strategy 2 if not valid; with the exact Hessian (call-limited,
    :func:`~egmm.infer.fit.hessian_call_limit`) instead once more from the same start
    without it. Returns validity and the Minuit that ran last."""
    if all(m.fixed):  # nothing to vary: MIGRAD only evaluates the cost (its EDM, ±fval,
        m.migrad()    # and so its verdict, say nothing then)
        return bool(math.isfinite(m.fval)), m
    start = dict(zip(m.parameters, m.values))
    if starts_on_a_limit(m):
        m = without_hessian(cost, m, start)
    exact = uses_exact_hessian(m)
    m.migrad(ncall=hessian_call_limit(m), iterate=1 if exact else 5)
    if not m.valid and not uses_exact_hessian(m):
        strategy = m.strategy.strategy
        m.strategy = 2
        m.migrad()
        m.strategy = strategy
    if not m.valid and exact:
        m = without_hessian(cost, m, start)
        m.migrad()
    return bool(m.valid), m


def _global_fit(cost: Any, global_fit: FitResult | None, tol: float, **kw: Any) -> FitResult:
    if global_fit is not None:
        return global_fit
    return fit(cost, tol=tol, **kw)


def profile(
    cost: Any,
    poi: str,
    grid: Iterable[float],
    *,
    start: Mapping[str, float] | None = None,
    fixed: Mapping[str, float] | Iterable[str] | None = None,
    limits: Mapping[str, tuple[float | None, float | None]] | None = None,
    strategy: int = 1,
    tol: float = 1e-3,
    global_fit: FitResult | None = None,
) -> ProfileResult:
    r"""Profile likelihood of ``poi`` on ``grid``: Δ(−2 ln L)(μ) = min_ν −2 ln L(μ, ν) − min.

    Fits globally (or takes ``global_fit``), then scans outward from the MLE in both
    directions, each point warm-started from its neighbour's conditional fit (nuisance
    parameters re-minimised, ``poi`` fixed). Points whose MIGRAD is not valid are retried with
    strategy 2 and reported in ``valid``. Compare Δ with :func:`wilks_threshold` (``ndof=1``);
    :meth:`ProfileResult.interval` does it.

    Arguments:
        cost: the cost (−2 ln L, errordef 1).
        poi: name of a free parameter.
        grid: values of ``poi`` (any order, within its limits).
        start, fixed, limits, strategy: as for :func:`egmm.infer.fit` (global fit).
        tol: Minuit tolerance of every fit here: EDM < 0.002·tol, so Δ is accurate to ~1e-5.
        global_fit: reuse an existing unconditional fit.

    Example:
        >>> from iminuit.cost import NormalConstraint
        >>> p = profile(NormalConstraint(["a", "b"], [0.0, 0.0], [1.0, 2.0]), "a", [-1, 0, 2])
        >>> np.round(p.delta, 6).tolist()
        [1.0, 0.0, 4.0]
    """
    warn_if_weighted(cost, "profile")
    gfit = _global_fit(cost, global_fit, tol, start=start, fixed=fixed, limits=limits,
                       strategy=strategy)
    like = gfit.minuit
    if poi not in gfit.parameters:
        raise ParameterError(f"profile: unknown parameter {poi!r}; the cost has "
                             f"{list(gfit.parameters)}")
    if poi in gfit.fixed:
        raise ParameterError(f"profile: {poi!r} is fixed in the global fit")
    values = _grid(grid, "profile grid")
    lo, hi = like.limits[poi]
    bad = (values < lo) | (values > hi)
    if bad.any():
        raise ParameterError(
            f"profile: {poi}={values[bad][0]} lies outside its limits [{lo}, {hi}]"
        )
    n = len(values)
    fvals = np.full(n, np.nan)
    valid = np.zeros(n, dtype=bool)
    others = [p for p in gfit.parameters if p != poi]
    nuis = {p: np.full(n, np.nan) for p in others}
    best = gfit.values[poi]
    up = [i for i in np.argsort(values, kind="stable") if values[i] >= best]
    down = [i for i in np.argsort(values, kind="stable")[::-1] if values[i] < best]
    for branch in (up, down):
        m = _conditional_minuit(cost, like, gfit.values, [poi], tol)
        for i in branch:
            m.values[poi] = float(values[i])
            valid[i], m = _migrad(cost, m)
            fvals[i] = m.fval
            for p in others:
                nuis[p][i] = m.values[p]
    delta = fvals - gfit.fval
    notes = []
    if np.min(delta) < -1e-4:
        i = int(np.argmin(delta))
        notes.append(
            f"{poi}={values[i]:.6g} has −2 ln L lower than the global fit by {-delta[i]:.3g}: "
            "the global fit missed the minimum; refit with a better start"
        )
        if delta[i] < -0.01:  # enough to move the interval's ends: said, not only noted
            warnings.warn(f"profile: {notes[-1]} (from there: fit(cost, start=...) and "
                          "profile(..., global_fit=...))", UserWarning, stacklevel=2)
    if not valid.all():
        notes.append(f"{int((~valid).sum())} of {n} conditional fits are not valid")
    return ProfileResult(poi, values, delta, fvals, nuis, valid, gfit, notes)


def _grid(grid: Any, what: str) -> np.ndarray:
    try:
        arr = np.asarray(list(grid) if not isinstance(grid, np.ndarray) else grid,
                         dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{what} cannot be read as numbers ({exc})") from None
    if arr.ndim != 1:
        raise InputError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError(f"{what} is empty")
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{what} contains NaN or inf")
    return arr


def contour(
    cost: Any,
    x: str,
    y: str,
    cl: float | Sequence[float] = (0.6827, 0.9545),
    *,
    size: int = 100,
    start: Mapping[str, float] | None = None,
    fixed: Mapping[str, float] | Iterable[str] | None = None,
    limits: Mapping[str, tuple[float | None, float | None]] | None = None,
    strategy: int = 1,
    tol: float = 1e-3,
    refine: bool = True,
    atol: float = 1e-4,
    global_fit: FitResult | None = None,
) -> dict[float, np.ndarray]:
    r"""Profiled 2-D confidence regions of (``x``, ``y``): polygons where
    Δ(−2 ln L) = ``wilks_threshold(cl, 2)`` (2.296 for 68.27 %, 6.18 for 95.45 %).

    The polygon comes from Minuit's MNCONTOUR (``Minuit.mncontour(x, y, cl=cl)``, which
    scales errordef by iminuit's 2-parameter factor, the same threshold). With ``refine``
    every point is then moved along the ray from the MLE through it until the profiled
    Δ(−2 ln L) equals the threshold within ``atol`` (MNCONTOUR's own crossings are only
    accurate to ~1e-2 · threshold); a point whose ray meets a parameter limit first is left
    on the limit. All other free parameters are re-minimised at every point.

    Arguments:
        cost: the cost (−2 ln L, errordef 1).
        x, y: names of two free parameters.
        cl: one confidence level or several (iminuit semantics: < 1 probability, ≥ 1 sigmas).
        size: number of contour points (the polygon is closed: size + 1 rows).
        start, fixed, limits, strategy: as for :func:`egmm.infer.fit` (global fit).
        tol: Minuit tolerance of the global and conditional fits.
        refine, atol: see above.
        global_fit: reuse an existing unconditional fit (it must be valid).

    Returns:
        dict cl -> (size + 1, 2) array of (x, y) points, first point repeated at the end.
        A region cut by a parameter's limit has points on it, with a warning.
    """
    warn_if_weighted(cost, "contour")
    gfit = _global_fit(cost, global_fit, tol, start=start, fixed=fixed, limits=limits,
                       strategy=strategy)
    for p in (x, y):
        if p not in gfit.parameters:
            raise ParameterError(f"contour: unknown parameter {p!r}; the cost has "
                                 f"{list(gfit.parameters)}")
        if p in gfit.fixed:
            raise ParameterError(f"contour: {p!r} is fixed in the global fit")
    if x == y:
        raise ParameterError("contour: x and y must be different parameters")
    if not gfit.valid:
        raise EgmmError(f"contour: the global fit is not valid ({gfit.fmin}); fix it first")
    size = whole_number(size, "contour: size", 4)
    levels = [cl] if np.ndim(cl) == 0 else list(cl)
    out: dict[float, np.ndarray] = {}
    for level in levels:
        thr = wilks_threshold(level, 2)
        pts = np.asarray(gfit.minuit.mncontour(x, y, cl=level, size=size), dtype=float)
        if pts.ndim != 2 or len(pts) < 4 or not np.all(np.isfinite(pts)):
            raise EgmmError(
                f"contour: MNCONTOUR found no closed ({x}, {y}) contour at cl={level} "
                f"(got {pts.shape[0] if pts.ndim == 2 else 0} points); the likelihood may have "
                "a kink or a second minimum near the MLE, or the region may reach a limit")
        if refine:
            pts = _refine(cost, gfit, x, y, pts[:-1], thr, tol, atol)
            pts = np.vstack([pts, pts[:1]])
        for j, name in enumerate((x, y)):  # a region cut by a limit: its points sit there
            for limit in gfit.minuit.limits[name]:
                on = np.isclose(pts[:-1, j], limit, rtol=1e-12, atol=1e-12)
                if math.isfinite(limit) and on.any():
                    warnings.warn(f"contour at cl={level}: {int(on.sum())} of {len(on)} "
                                  f"points lie on the limit {name}={limit:g}: the region is "
                                  "cut there", stacklevel=2)
        out[level] = pts
    return out


def _refine(cost: Any, gfit: FitResult, x: str, y: str, pts: np.ndarray, thr: float,
            tol: float, atol: float) -> np.ndarray:
    """Move each point along the ray from the MLE until Δ(−2 ln L) = thr (within atol)."""
    like = gfit.minuit
    center = np.array([gfit.values[x], gfit.values[y]])
    lims = np.array([like.limits[x], like.limits[y]], dtype=float)
    m = _conditional_minuit(cost, like, gfit.values, [x, y], tol)
    out = pts.copy()
    failed = 0
    for k, p in enumerate(pts):
        direction = p - center
        # largest step before a limit: the region may be cut by it
        with np.errstate(divide="ignore", invalid="ignore"):
            steps = np.where(direction > 0, (lims[:, 1] - center) / direction,
                             np.where(direction < 0, (lims[:, 0] - center) / direction, np.inf))
        s_max = float(np.min(steps))
        s, converged = 1.0, False
        for _ in range(20):
            s = min(s, s_max)
            if not (math.isfinite(s) and s > 0.0):  # MLE on a limit, ray pointing outwards
                break
            q = center + s * direction
            m.values[x], m.values[y] = float(q[0]), float(q[1])
            _, m = _migrad(cost, m)
            delta = m.fval - gfit.fval
            if abs(delta - thr) < atol or (s >= s_max and delta < thr):
                converged = True
                break
            # Δ ≈ thr · s² near a quadratic minimum: rescale the step accordingly
            s = s * math.sqrt(thr / delta) if delta > 0 else 2.0 * s
        if converged:
            out[k] = q
        else:
            failed += 1
    if failed:
        warnings.warn(f"contour: {failed} of {len(pts)} points could not be refined to "
                      f"Δ(−2 ln L) = {thr:.4g} ± {atol:g}; kept MNCONTOUR's", stacklevel=3)
    return out
