r"""Coverage studies (RooMCStudy-style): bias, pulls and coverage of Wilks regions.

Generate many datasets from a truth at known parameter values θ₀, fit each, and report

* the bias of the MLE, mean(θ̂) − θ₀, with its error σ(θ̂)/√n;
* the pulls (θ̂ − θ₀)/σ̂ (σ̂ from HESSE): mean (0 when unbiased) and width (1 when the errors
  are right), with errors σ/√n and σ/√(2(n − 1));
* the coverage of profile-likelihood regions: a 1-D (2-D) region at confidence ``cl``
  covers θ₀ iff Δ(−2 ln L)(θ₀) = min_{others} C(θ₀) − C(θ̂) ≤ ``wilks_threshold(cl, ndof)``
  (no contour needed), with the binomial error √(p(1 − p)/n). By Wilks' theorem the
  coverage tends to ``cl``.

A fit whose MIGRAD Minuit does not call valid, or one that raises, is a failed toy: it is
recorded (index, reason) and counted in ``n_failed``, and left out of the summaries — never
dropped silently. A fit whose MIGRAD converged but whose HESSE Minuit does not accept (its
finite differences across a kink of −2 ln L, e.g. at the paper toy's cusps, leave the EDM
above goal: ``FitResult.migrad_valid``) keeps its estimate and its Δ(−2 ln L) in the
summaries and leaves only its pull out; its record says ``hesse_valid: false``. Leaving such
toys out would summarise a selection: at the paper toy's cusp (0, 0), HESSE rejects about
half of the true pdf's fits (14 of 30), those whose minimum lies on the kink.

With ``batched=True`` the toys' fits (the global one and one conditional fit per region) run
through :func:`egmm.infer.fit_batched`, a batch of toys at a time, and only HESSE runs per toy
(at the batched minimum, for the pulls): the same toys and numbers to the fits' tolerance.

References:
    S. S. Wilks, Ann. Math. Statist. 9 (1938) 60; G. Cowan, K. Cranmer, E. Gross, O. Vitells,
    Eur. Phys. J. C 71 (2011) 1554, arXiv:1007.1727; W. Verkerke, D. Kirkby, RooFit
    (RooMCStudy), arXiv:physics/0306116.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from iminuit.util import describe

from egmm.base import DensityModel, whole_number
from egmm.errors import EgmmError, InputError, ParameterError
from egmm.infer.fit import (
    FitResult,
    check_strategy,
    check_tol,
    first_steps,
    fit,
    fit_result,
    make_minuit,
    start_values,
    warn_if_weighted,
    with_asymptotic_errors,
)
from egmm.infer.intervals import (
    _check_batch_size,
    _check_fit_together,
    _fit_conditional,
    _probability,
    _profile_ratio,
)
from egmm.infer.parallel import fingerprint, pickled_digest, run_toys, value_digest
from egmm.infer.profile import wilks_threshold
from egmm.infer.teststats import Limits, _bounds, _limits, profiled_start
from egmm.infer.toys import check_ntoys, check_seed, sample_toy, toy_seed

if TYPE_CHECKING:
    from egmm.infer.batched import BatchedFitResult

__all__ = ["CoverageFraction", "CoverageResult", "ParameterSummary", "coverage"]


@dataclass(frozen=True)
class ParameterSummary:
    """Bias and pulls of one parameter over the successful toys.

    Attributes:
        name, truth: the parameter and its true value; n: toys used.
        mean, bias, bias_error: mean of θ̂, mean(θ̂) − θ₀, σ(θ̂)/√n.
        pull_mean, pull_mean_error, pull_width, pull_width_error: of (θ̂ − θ₀)/σ̂, over the
            toys whose HESSE Minuit accepts (:attr:`CoverageResult.n_hesse_invalid` others).
    """

    name: str
    truth: float
    n: int
    mean: float
    bias: float
    bias_error: float
    pull_mean: float
    pull_mean_error: float
    pull_width: float
    pull_width_error: float


@dataclass(frozen=True)
class CoverageFraction:
    """Coverage of the ``cl`` profile-likelihood region of ``parameters`` (1 or 2 names).

    ``threshold`` = ``wilks_threshold(cl, len(parameters))``; ``covered`` of ``n`` toys had
    Δ(−2 ln L)(θ₀) ≤ threshold; ``fraction`` ± ``error`` (binomial).
    """

    parameters: tuple[str, ...]
    cl: float
    threshold: float
    covered: int
    n: int

    @property
    def fraction(self) -> float:
        return self.covered / self.n if self.n else math.nan

    @property
    def error(self) -> float:
        p = self.fraction
        return math.sqrt(p * (1 - p) / self.n) if self.n else math.nan

    @property
    def deviation(self) -> float:
        """(fraction − cl) in units of the binomial error expected at the nominal cl."""
        return (self.fraction - self.cl) / math.sqrt(self.cl * (1 - self.cl) / self.n)


@dataclass
class CoverageResult:
    """Outcome of :func:`coverage`.

    Attributes:
        ntoys, n_failed: toys run and toys whose fit failed (raised, or MIGRAD not valid).
        failures: (toy index, reason) of every failed toy.
        parameters: name -> :class:`ParameterSummary`.
        coverage: one :class:`CoverageFraction` per region (1-D per parameter, 2-D per pair)
            and ``cl``.
        records: the per-toy records (``index``, ``seed``, ``valid``, ``values``,
            ``errors``, ``delta`` (region label -> Δ(−2 ln L) at the truth), ``error``,
            ``hesse_valid`` (only where False: HESSE rejected a converged fit)); with
            ``batched=True`` also ``batched`` (True) and ``fallback`` (the fits, ``"free"``
            or a region label, that did not converge in the batch and were refitted by
            Minuit).
    """

    ntoys: int
    n_failed: int
    failures: list[tuple[int, str]]
    parameters: dict[str, ParameterSummary]
    coverage: list[CoverageFraction]
    records: list[dict[str, Any]] = field(repr=False)

    @property
    def n_fallback(self) -> int:
        """Toys of a batched study with at least one fit refitted by Minuit (see
        :func:`coverage`); 0 without batching."""
        return sum(bool(r.get("fallback")) for r in self.records)

    @property
    def n_hesse_invalid(self) -> int:
        """Toys whose fit converged but whose HESSE Minuit did not accept (a kink of
        −2 ln L): in the coverage and bias, not in the pulls (see :func:`coverage`)."""
        return sum(r.get("hesse_valid") is False for r in self.records)

    def table(self) -> str:
        """A plain-text report."""
        lines = [f"{self.ntoys} toys, {self.n_failed} failed"
                 + (f", {self.n_hesse_invalid} without a pull (HESSE not valid)"
                    if self.n_hesse_invalid else "")]
        for s in self.parameters.values():
            lines.append(
                f"{s.name:>12} truth {s.truth:.6g}: bias {s.bias:+.4g} ± {s.bias_error:.2g}, "
                f"pull mean {s.pull_mean:+.3f} ± {s.pull_mean_error:.3f}, width "
                f"{s.pull_width:.3f} ± {s.pull_width_error:.3f}")
        for c in self.coverage:
            lines.append(f"{','.join(c.parameters):>12} cl {c.cl:.4f}: coverage "
                         f"{c.fraction:.4f} ± {c.error:.4f} ({c.covered}/{c.n}, "
                         f"{c.deviation:+.1f}σ)")
        return "\n".join(lines)


@dataclass(frozen=True)
class _CoverageJob:
    truth: Any
    kind: str
    cost_factory: Callable[[Any], Any] | None
    truth_pars: dict[str, float]
    n_events: int | None
    poisson: bool
    seed: int
    parameters: tuple[str, ...]
    pairs: tuple[tuple[str, str], ...]
    start: dict[str, float] | None
    fixed: Any
    limits: Any
    strategy: int
    tol: float | None
    steps: dict[str, float] | None = None  # MIGRAD's first steps of the loop's global fits


def _kind(truth: Any) -> str:
    if isinstance(truth, DensityModel):
        return "density"
    try:
        describe(truth)
        is_cost = hasattr(truth, "errordef")
    except Exception:  # describe raises assorted errors for non-costs
        is_cost = False
    if is_cost:
        return "cost"
    if hasattr(truth, "sample") and hasattr(truth, "parameters"):
        return "sampler"
    if callable(truth):
        return "callable"
    raise InputError(f"coverage: cannot generate data from a {type(truth).__name__}; give a "
                     "callable (rng) -> data, a cost, a DensityModel or an object with "
                     "sample(n, **parameters, seed=...) such as PaperToy")


def _generate(job: _CoverageJob, index: int) -> Any:
    """Toy ``index``: a cost ready to fit."""
    ss = toy_seed(job.seed, index)
    if job.kind == "cost":
        data = sample_toy(job.truth, job.truth_pars, ss)
    else:
        rng = np.random.default_rng(ss)
        if job.kind == "callable":
            data = job.truth(rng)
        else:
            assert job.n_events is not None
            n = int(rng.poisson(job.n_events)) if job.poisson else job.n_events
            names = tuple(job.truth.parameters)
            if job.kind == "density":
                data = job.truth.sample(n, {p: job.truth_pars[p] for p in names} or None, rng)
            else:
                data = job.truth.sample(n, **{p: job.truth_pars[p] for p in names}, seed=rng)
    return job.cost_factory(data) if job.cost_factory is not None else data


def _first_cost(job: _CoverageJob, ntoys: int) -> Any:
    """The cost of the first toy that can be made: its parameter names, and bad input (no
    sampler, a broken factory) raised here once; a toy that fails by chance is tried past."""
    error: Exception | None = None
    for index in range(min(ntoys, 5)):
        try:
            return _generate(job, index)
        except Exception as exc:  # the toy's own failure is recorded when it runs
            error = error or exc
    assert error is not None
    raise error


def _first_costs(job: _CoverageJob, ntoys: int) -> list[Any]:
    """The costs of the first two toys that can be made (one if there is only one): what
    a batch must fit together, checked before toys are farmed out."""
    costs = []
    for index in range(min(ntoys, 5)):
        try:
            costs.append(_generate(job, index))
        except Exception:  # the toy's own failure is recorded when it runs
            continue
        if len(costs) == 2:
            break
    return costs or [_first_cost(job, ntoys)]


def _first_errors(job: _CoverageJob, ntoys: int) -> dict[str, float] | None:
    """The free parameters' HESSE errors of the first toy's global fit, or None where it is
    not valid (the toys' fits then take Minuit's default steps)."""
    try:
        cost = _first_cost(job, ntoys)
        res = fit(cost, _start_of(job, cost), fixed=job.fixed, limits=job.limits,
                  strategy=job.strategy, tol=job.tol)
    except Exception:  # the same failure is met, and recorded, by that toy's own task
        return None
    return first_steps(res)


def _toy_digest(job: _CoverageJob, cost: Any) -> str:
    """:func:`~egmm.infer.parallel.value_digest` of a toy's ``cost`` at its fits' start, for
    the study's key; "none" where it cannot be evaluated there (that toy's fit then fails and
    is recorded)."""
    values = {**start_values(cost), **_start_of(job, cost)}
    try:
        return value_digest(cost, values)
    except Exception:  # recorded by the toy's own task
        return "none"


def _start_of(job: _CoverageJob, cost: Any) -> dict[str, float]:
    """A toy's fits start at the truth, overridden by the study's ``start``."""
    start = {n: job.truth_pars[n] for n in describe(cost) if n in job.truth_pars}
    start.update(job.start or {})
    return start


def _verdict(record: dict[str, Any], res: FitResult) -> None:
    """A toy's validity from its global fit: MIGRAD's (``valid``), and ``hesse_valid:
    false`` where HESSE alone rejected it, which leaves only its pull out (module doc)."""
    record["valid"] = bool(res.migrad_valid)
    if res.migrad_valid and not res.valid:
        record["hesse_valid"] = False


def _coverage_task(job: _CoverageJob, index: int) -> dict[str, Any]:
    record: dict[str, Any] = {"index": index, "seed": [job.seed, index]}
    try:
        cost = _generate(job, index)
        start = _start_of(job, cost)
        res = fit(cost, start, fixed=job.fixed, limits=job.limits, strategy=job.strategy,
                  tol=job.tol, errors=job.steps)
        record.update(fval=res.fval, values={p: res.values[p] for p in job.parameters},
                      errors={p: res.errors[p] for p in job.parameters})
        _verdict(record, res)
        if not res.migrad_valid:
            record["error"] = f"fit not valid: {res.fmin}"
            return record
        delta = {}
        for region in [(p,) for p in job.parameters] + list(job.pairs):
            t, _, _ = _profile_ratio(cost, {p: job.truth_pars[p] for p in region}, start,
                                     job.fixed, job.limits, job.strategy,
                                     job.tol if job.tol is not None else 0.1, free=res)
            delta[",".join(region)] = t
        record["delta"] = delta
    except Exception as exc:  # a toy whose fit raises is recorded and counted, not dropped
        record.update(valid=False, error=f"{type(exc).__name__}: {exc}")
    return record


def _hesse_at(cost: Any, values: dict[str, float], errors: dict[str, float],
              fixed: Sequence[str], job: _CoverageJob) -> FitResult:
    """HESSE at ``values`` (a batched minimum): the errors :func:`egmm.infer.fit` reports
    there, and Minuit's verdict on the point (its EDM from HESSE's gradient and matrix, a
    positive-definite matrix). ``errors`` (the batched fit's) set HESSE's initial steps, as
    MIGRAD's covariance does after a fit: with Minuit's default steps (a percent of each
    value) HESSE differentiates a network's piecewise-smooth −2 ln L over too short a span."""
    m = make_minuit(cost, values, fixed=list(fixed) or None, limits=job.limits,
                    strategy=job.strategy, tol=job.tol)
    for name, err in errors.items():
        if name not in fixed and math.isfinite(err) and err > 0:
            m.errors[name] = err
    m.hesse()
    return with_asymptotic_errors(fit_result(m), cost)  # (weighted events: as fit's)


def _settle(job: _CoverageJob, cost: Any, start: dict[str, float], free: BatchedFitResult,
            k: int) -> tuple[FitResult, bool]:
    """Minuit's errors and verdict for the global fit of toy ``k`` of the batched fit
    ``free``, and whether Minuit refitted it: HESSE at the batched minimum; the plain fit of
    :func:`_coverage_task` where the batch did not converge (``fit_batched``'s fallback fit,
    HESSE included) or HESSE finds no minimum at the batched point."""
    refit = free.fits[k]
    if refit is not None:
        return refit, True
    hesse = _hesse_at(cost, dict(zip(free.parameters, free.values[k].tolist())),
                      dict(zip(free.parameters, free.errors[k].tolist())), free.fixed, job)
    if hesse.valid:
        return hesse, False
    return fit(cost, start, fixed=job.fixed, limits=job.limits, strategy=job.strategy,
               tol=job.tol), True


def _coverage_batch_task(job: _CoverageJob, indices: list[int]) -> list[dict[str, Any]]:
    """Toys ``indices`` fitted together by :func:`egmm.infer.fit_batched`: the global fit,
    HESSE per toy at its minimum, then one batched conditional fit per region from it; the
    same toys, seeds and records as :func:`_coverage_task`. A batch that cannot be fitted
    together is done toy by toy."""
    # (batched imports this module's neighbours)
    from egmm.infer.batched import deeper_free_minima, fit_batched

    records: list[dict[str, Any]] = []
    costs, fitted = [], []
    for i in indices:
        record: dict[str, Any] = {"index": i, "seed": [job.seed, i], "batched": True,
                                  "fallback": []}
        try:
            costs.append(_generate(job, i))
            fitted.append(record)
        except Exception as exc:  # recorded and counted, not dropped
            record.update(valid=False, error=f"{type(exc).__name__}: {exc}")
        records.append(record)
    if not costs:
        return records
    try:
        names = tuple(describe(costs[0]))
        start = _start_of(job, costs[0])
        free = fit_batched(costs, start, fixed=job.fixed, limits=job.limits, validate=False,
                           strategy=job.strategy, minuit_tol=job.tol)
        theta, fval = free.values.copy(), free.fval.copy()
        good = []
        for k, record in enumerate(fitted):
            try:
                res, refitted = _settle(job, costs[k], start, free, k)
            except Exception as exc:  # a HESSE or refit that raises fails this toy alone
                record.update(valid=False, error=f"{type(exc).__name__}: {exc}")
                continue
            if refitted:
                theta[k] = [res.values[n] for n in names]
                fval[k] = res.fval
                record["fallback"].append("free")
            record.update(fval=float(fval[k]),
                          values={p: float(theta[k, names.index(p)]) for p in job.parameters},
                          errors={p: res.errors[p] for p in job.parameters})
            _verdict(record, res)
            if res.migrad_valid:
                good.append(k)
                record["delta"] = {}
            else:
                record["error"] = f"fit not valid: {res.fmin}"
        regions = [(p,) for p in job.parameters] + list(job.pairs) if good else []
        lims = _limits(costs[0], job.limits)
        lo, hi = _bounds(lims, names)
        for region in regions:  # Δ(−2 ln L)(θ₀): the region at the truth, the rest profiled
            label = ",".join(region)
            # from where the free fit's covariance puts the conditional minimum (the loop's
            # profile fits start there too)
            cond_start, _ = profiled_start(theta[good], free.covariance[good],
                                           [names.index(p) for p in region],
                                           [job.truth_pars[p] for p in region], lo, hi)
            cond_values, cond_fval, _, refitted = _fit_conditional(
                [costs[k] for k in good], cond_start, [*free.fixed, *region], job.limits,
                job.strategy, job.tol)
            # a conditional minimum deeper than the free one: the free fit is repeated from
            # it for this region's Δ (as the loop's _profile_ratio), not clipped to 0
            _, free_fval, _, _ = deeper_free_minima(
                [costs[k] for k in good], (theta[good], fval[good], np.ones(len(good), bool)),
                cond_values, cond_fval, fixed=job.fixed, limits=job.limits,
                strategy=job.strategy, tol=job.tol)
            delta = np.maximum(cond_fval - free_fval, 0.0)
            for j, k in enumerate(good):
                fitted[k]["delta"][label] = float(delta[j])
                if refitted[j]:
                    fitted[k]["fallback"].append(label)
    except (InputError, ParameterError):
        return [_coverage_task(job, i) for i in indices]
    return records


_coverage_batch_task.batched = True  # type: ignore[attr-defined]


def coverage(
    truth: Any,
    cost_factory: Callable[[Any], Any] | None,
    truth_pars: Mapping[str, float],
    ntoys: int,
    seed: int,
    *,
    cl: float | Sequence[float] = (0.6827, 0.9545),
    parameters: Sequence[str] | None = None,
    pairs: Iterable[tuple[str, str]] | None = None,
    n_events: int | None = None,
    poisson: bool = False,
    executor: Any = None,
    out: Any = None,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
    start: Mapping[str, float] | None = None,
    fixed: Mapping[str, float] | Iterable[str] | None = None,
    limits: Limits | None = None,
    strategy: int = 1,
    tol: float | None = None,
    batched: bool = False,
    batch_size: int = 64,
) -> CoverageResult:
    r"""Bias, pulls and Wilks-region coverage of the MLE over ``ntoys`` generated datasets.

    Toy i draws its data with ``toy_seed(seed, i)`` from ``truth``:

    * a callable ``(rng: numpy.random.Generator) -> data``;
    * a cost (the model itself): ``sample_toy(truth, truth_pars, ...)`` gives a cost on toy
      data (Poisson yields, randomised constraint centres, pyhf toys);
    * a :class:`~egmm.base.DensityModel` or an object with ``sample(n, **parameters,
      seed=...)`` and ``parameters`` (e.g. :class:`~egmm.groundtruth.PaperToy`): ``n_events``
      events (Poisson-distributed around it with ``poisson=True``).

    ``cost_factory(data) -> cost`` builds the cost to fit (``None``: the data already is one,
    e.g. a toy of a cost). The fit starts at the truth; for every studied parameter (and pair)
    Δ(−2 ln L) at the truth is the profiled minimum with it fixed minus the global minimum.

    Arguments:
        truth, cost_factory, truth_pars: see above; ``truth_pars`` names every parameter the
            truth needs and every studied parameter.
        ntoys, seed: number of toys and master seed.
        cl: confidence level(s) of the regions (iminuit semantics: < 1 probability, ≥ 1
            sigmas).
        parameters: parameters to study (default: the free parameters of the first toy's
            cost that are in ``truth_pars``).
        pairs: 2-D regions (default: every pair of ``parameters`` when there are 2 or 3).
        executor, out, progress, callback: see :func:`egmm.infer.parallel.run_toys`
            (``out``: resumable JSON lines).
        start, fixed, limits, strategy, tol: fit options (see :func:`egmm.infer.fit`).
        batched, batch_size: fit ``batch_size`` toys at a time with
            :func:`egmm.infer.fit_batched` (see below).

    With ``batched=True`` each batch of toys is fitted by :func:`egmm.infer.fit_batched`
    (one batched Newton solve for the global fits, one per region for the conditional fits
    with the region's parameters at the truth; a region that fixes every parameter needs
    only the cost at the truth), instead of a Minuit MIGRAD per fit and toy. The pull
    errors σ̂ are still Minuit's: HESSE runs per toy at the batched minimum (the batched
    fit's own BHHH curvature estimates the Fisher information, which differs from the
    observed Hessian by O(1/√N) per toy). A toy is valid when the batched fit converged and
    HESSE finds a minimum there (EDM, positive-definite matrix), as MIGRAD and HESSE decide
    in the plain loop. A global fit the batch does not converge, or whose point HESSE does
    not accept, and a conditional fit the batch does not converge, are refitted by Minuit
    from the plain loop's start (for the global fit the fallback of
    :func:`egmm.infer.fit_batched`), named in the record's ``fallback`` and counted in
    :attr:`CoverageResult.n_fallback`, never dropped; a batch that cannot be fitted together
    (e.g. a start outside the limits) runs toy by toy. Toys, seeds, values, errors and
    Δ(−2 ln L) equal the plain loop's to the fits' tolerance: the batched stage stops where
    MIGRAD does, at a Newton decrement (its EDM) of 0.002·tol (2e-4 for iminuit's default
    tol 0.1; pass ``tol=1e-4`` for 2e-7, ~6e-4 σ from the minimum). HESSE's errors hang on
    the exact point next to a limit (Minuit's transformation of bounded parameters) and for
    piecewise-smooth network densities (LeakyReLU), and can differ between the two paths as
    between two tolerances (paper-size GMM: 0.74–1.16 of the loop's, 10–90 % quantiles). The
    costs must be ones fit_batched can vectorise
    (one unbinned cost plus NormalConstraints); others (``PyhfCost``, toys that do not share
    their density objects) raise :class:`~egmm.InputError` here, before any toy.

    Example:
        >>> from iminuit.cost import UnbinnedNLL
        >>> from scipy.stats import norm
        >>> def pdf(x, mu, sigma):
        ...     return norm.pdf(x, mu, sigma)
        >>> res = coverage(lambda rng: rng.normal(1.0, 2.0, 200),
        ...                lambda x: UnbinnedNLL(x, pdf), {"mu": 1.0, "sigma": 2.0},
        ...                ntoys=20, seed=1, executor="serial", progress=False,
        ...                limits={"sigma": (0.1, None)})
        >>> res.n_failed, sorted({c.parameters for c in res.coverage})
        (0, [('mu',), ('mu', 'sigma'), ('sigma',)])
    """
    kind = _kind(truth)
    ntoys, seed = check_ntoys(ntoys), check_seed(seed)
    if not isinstance(truth_pars, Mapping):
        raise InputError("coverage: truth_pars must be a mapping name -> value")
    truth_values = {str(k): float(v) for k, v in truth_pars.items()}
    bad = [k for k, v in truth_values.items() if not math.isfinite(v)]
    if bad:
        raise ParameterError(f"coverage: truth value of {bad[0]!r} is not finite")
    if cost_factory is not None and not callable(cost_factory):
        raise InputError("coverage: cost_factory must be callable (data -> cost) or None")
    if kind in ("density", "sampler"):
        if n_events is None:
            raise InputError(f"coverage: a {type(truth).__name__} truth needs n_events ≥ 1")
        n_events = whole_number(n_events, "coverage: n_events")
        missing = [p for p in truth.parameters if p not in truth_values]
        if missing:
            raise ParameterError(f"coverage: truth_pars lacks {missing} needed by the truth")
    levels = [_probability(c) for c in (
        list(np.ravel(cl)) if isinstance(cl, (Sequence, np.ndarray)) and not isinstance(cl, str)
        else [cl])]
    job = _CoverageJob(truth, kind, cost_factory, truth_values,
                       n_events, bool(poisson), seed, (), (),
                       dict(start) if start is not None else None, fixed, limits,
                       check_strategy(strategy), None if tol is None else check_tol(tol))
    first = _first_cost(job, ntoys)
    warn_if_weighted(first, "coverage")  # (a factory's costs of weighted events)
    names = list(describe(first))
    used = set(names) | set(truth.parameters if kind in ("density", "sampler") else ())
    unused = [k for k in truth_values if k not in used]
    if unused:  # a misspelt name would otherwise be ignored and its parameter left free
        raise ParameterError(f"coverage: truth_pars names {unused}, which neither the cost "
                             f"{names} nor the truth uses")
    fixed_names = {fixed} if isinstance(fixed, str) else set(fixed or ())
    if parameters is None:
        parameters = [p for p in names if p in truth_values and p not in fixed_names]
    parameters = tuple(parameters)
    unknown = [p for p in parameters if p not in names]
    if unknown:
        raise ParameterError(f"coverage: unknown parameters {unknown}; the cost has {names}")
    held = [p for p in parameters if p in fixed_names]
    if held:  # no estimate, no pull, no region: nothing to study
        raise ParameterError(f"coverage: parameters {held} are fixed; study free ones")
    no_truth = [p for p in parameters if p not in truth_values]
    if no_truth:
        raise ParameterError(f"coverage: no truth value for {no_truth}")
    for p, (lo, hi) in _limits(first, limits).items():  # before any toy is fitted
        if p in truth_values and not lo <= truth_values[p] <= hi:
            raise ParameterError(f"coverage: the truth {p}={truth_values[p]} lies outside "
                                 f"its limits [{lo}, {hi}]: no fit could reach it")
    if not parameters:
        raise InputError("coverage: no parameter to study")
    if pairs is None:
        pairs = list(itertools.combinations(parameters, 2)) if len(parameters) <= 3 else []
    pairs = tuple((str(a), str(b)) for a, b in pairs)
    for a, b in pairs:
        if a not in parameters or b not in parameters or a == b:
            raise ParameterError(f"coverage: pair ({a!r}, {b!r}) must be two different "
                                 f"studied parameters {list(parameters)}")
    job = dataclasses.replace(job, parameters=parameters, pairs=pairs)
    batched = bool(batched)
    if batched:
        batch_size = _check_batch_size(batch_size)
        _check_fit_together(_first_costs(job, ntoys))
    else:
        # the loop's global fits start with the HESSE errors of the first toy's fit (made
        # here once) as MIGRAD's first steps: ~30 % fewer calls than Minuit's default steps
        job = dataclasses.replace(job, steps=_first_errors(job, ntoys))
    # the key must tell apart studies whose factories share a name (two lambdas) but fit
    # different densities: hash the pickled truth and factory (closures included; a pickle
    # that differs between processes only costs a rerun on resume, never shared toys), and
    # the first toy's −2 ln L at its start (which tells apart truths or factories that
    # cannot be pickled)
    key = "coverage/" + fingerprint(
        kind, type(truth).__name__, getattr(cost_factory, "__qualname__", repr(cost_factory)),
        pickled_digest(truth, cost_factory), _toy_digest(job, first), truth_values,
        job.n_events, job.poisson, seed, parameters, pairs, repr(fixed), limits,
        job.strategy, tol, start,
        *(["batched"] if batched else []))
    records = run_toys(_coverage_batch_task if batched else _coverage_task, job, range(ntoys),
                       key=key, executor=executor, out=out, progress=progress, desc="coverage",
                       callback=callback, chunk_size=batch_size if batched else None)
    return _summarise(records, parameters, pairs, truth_values, levels)


def _summarise(records: list[dict[str, Any]], parameters: tuple[str, ...],
               pairs: tuple[tuple[str, str], ...], truth: dict[str, float],
               levels: list[float]) -> CoverageResult:
    good = [r for r in records if r["valid"] and "delta" in r]
    failures = [(int(r["index"]), str(r.get("error", "not valid"))) for r in records
                if not (r["valid"] and "delta" in r)]
    if not good:
        raise EgmmError(f"coverage: every fit failed; the first: {failures[0][1]}")
    n = len(good)
    summaries = {}
    hesse_valid = np.array([r.get("hesse_valid", True) for r in good], dtype=bool)
    for p in parameters:
        v = np.array([r["values"][p] for r in good])
        e = np.array([r["errors"][p] for r in good])
        with np.errstate(divide="ignore", invalid="ignore"):
            pulls = (v - truth[p]) / e
        undefined = int((hesse_valid & ~np.isfinite(pulls)).sum())
        if undefined:  # (an error of 0 or NaN from a HESSE Minuit accepted)
            warnings.warn(f"coverage: {undefined} of {n} toys have no finite pull for {p!r} "
                          "(HESSE error 0 or NaN); the pull summary leaves them out",
                          RuntimeWarning, stacklevel=3)
        pulls = pulls[hesse_valid & np.isfinite(pulls)]
        sd = float(np.std(v, ddof=1)) if n > 1 else math.nan
        psd = float(np.std(pulls, ddof=1)) if len(pulls) > 1 else math.nan
        summaries[p] = ParameterSummary(
            p, truth[p], n, float(v.mean()), float(v.mean() - truth[p]), sd / math.sqrt(n),
            float(pulls.mean()) if len(pulls) else math.nan, psd / math.sqrt(max(len(pulls), 1)),
            psd, psd / math.sqrt(2 * (len(pulls) - 1)) if len(pulls) > 1 else math.nan)
    fractions = []
    for region in [(p,) for p in parameters] + list(pairs):
        label = ",".join(region)
        delta = np.array([r["delta"][label] for r in good])
        for prob in levels:
            thr = wilks_threshold(prob, len(region))
            fractions.append(CoverageFraction(region, prob, thr, int((delta <= thr).sum()), n))
    return CoverageResult(len(records), len(failures), failures, summaries, fractions, records)
