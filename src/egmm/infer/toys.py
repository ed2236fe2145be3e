r"""Pseudo-experiments (toys) and Asimov datasets for egmm, iminuit and pyhf costs.

A toy of a cost at parameter values θ is a new cost of the same structure on data drawn from
the model at θ:

* :class:`~egmm.likelihood.ExtendedUnbinnedNLL`: N_c ~ Poisson(ν_c(θ)) events per component,
  each drawn by the component's own sampler (``density.sample``);
  :class:`~egmm.likelihood.UnbinnedNLL`: the observed number of events N, shared among
  components multinomially with fractions ν_c/Σν (a single density draws all N);
* ``iminuit.cost.NormalConstraint``: the constraint centre (the auxiliary measurement, a
  global observable) is drawn from N(θ, σ) (or the full covariance);
* :class:`~egmm.likelihood.PyhfCost`: main and auxiliary data from
  ``model.make_pdf(θ).sample()`` (numpy backend);
* a sum of these (``nll + NormalConstraint(...) + pyhf``): each term on its own.

Every toy has its own seed, derived from a master seed and the toy's index
(:func:`toy_seed`), so a toy is the same whichever worker makes it. For hypothesis tests the
toys are generated with the nuisance parameters at their conditional MLE for the tested POI
value, the LHC convention (ATL-PHYS-PUB-2011-011).

The Asimov dataset (Cowan et al. 2011, Sec. 3.3) replaces the data by their expectation:
pyhf's ``expected_data``, the constraint centre at θ, and for unbinned costs a large weighted
sample at a fixed seed (``size`` events per component, weights ν_c/size).

References:
    G. Cowan, K. Cranmer, E. Gross, O. Vitells, Eur. Phys. J. C 71 (2011) 1554,
    arXiv:1007.1727.
"""

from __future__ import annotations

import copy
import functools
import math
import operator
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyhf
from iminuit.cost import NormalConstraint
from iminuit.util import describe

from egmm.base import whole_number
from egmm.errors import EgmmError, InputError, ParameterError
from egmm.infer.fit import _items, check_strategy, check_tol, first_steps, fit, weighted
from egmm.infer.parallel import fingerprint, run_toys, value_digest
from egmm.infer.teststats import (
    Limits,
    _bounds,
    _fixed_mapping,
    _limits,
    check_poi,
    evaluate,
    get_test_stat,
    profiled_start,
    statistic_value,
)
from egmm.likelihood.cost import _UnbinnedCost
from egmm.likelihood.pyhf import PyhfCost

__all__ = [
    "ToyTestStats",
    "asimov_cost",
    "check_ntoys",
    "check_seed",
    "check_toys",
    "sample_toy",
    "toy_seed",
    "toy_teststats",
]

# pyhf's numpy backend samples from numpy's global random state; seeding it for one toy and
# restoring it must not interleave with another thread doing the same
_GLOBAL_RNG_LOCK = threading.Lock()


def check_seed(seed: Any) -> int:
    """A master seed: a non-negative integer (toys need explicit, reproducible seeds)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed must be a non-negative integer, got {seed!r}")
    return int(seed)


def check_ntoys(ntoys: Any) -> int:
    """A number of toys: a whole number ≥ 1 (1e3 included)."""
    return whole_number(ntoys, "ntoys")


def toy_seed(seed: int, *key: int) -> np.random.SeedSequence:
    """The seed of one toy: ``SeedSequence(seed, spawn_key=key)``.

    With ``key = (i,)`` this is ``SeedSequence(seed).spawn(n)[i]`` for any n > i, computed
    directly: toy i gets the same random numbers however the toys are split among workers.

    Example:
        >>> a = toy_seed(7, 3).generate_state(2)
        >>> b = np.random.SeedSequence(7).spawn(5)[3].generate_state(2)
        >>> bool((a == b).all())
        True
    """
    return np.random.SeedSequence(check_seed(seed), spawn_key=tuple(int(k) for k in key))


def _values(cost: Any, pars: Mapping[str, float]) -> dict[str, float]:
    """Every parameter of ``cost`` from ``pars``: finite, inside the cost's limits; a name
    missing or unknown to the cost (a misspelling) raises :class:`ParameterError`."""
    limits = describe(cost, annotations=True)
    names = list(limits)
    if not isinstance(pars, Mapping):
        raise InputError(f"parameter values must be a mapping name -> value, got "
                         f"{type(pars).__name__}")
    missing = [n for n in names if n not in pars]
    extra = [n for n in pars if n not in limits]
    if missing or extra:
        raise ParameterError(f"parameter values: the cost has {names}; missing {missing}, "
                             f"unknown {extra}")
    out = {n: float(pars[n]) for n in names}
    bad = [n for n, v in out.items() if not math.isfinite(v)]
    if bad:
        raise ParameterError(f"parameter {bad[0]!r} is {out[bad[0]]}")
    for n, v in out.items():
        lo, hi = limits[n] if limits[n] is not None else (-math.inf, math.inf)
        if not lo <= v <= hi:
            raise ParameterError(f"parameter {n!r} = {v} lies outside the cost's limits "
                                 f"[{lo}, {hi}]")
    return out


def _unsupported(item: Any) -> InputError:
    return InputError(
        f"cannot generate data for a {type(item).__name__} term: toys and Asimov data support "
        "UnbinnedNLL, ExtendedUnbinnedNLL, NormalConstraint, PyhfCost and sums of them"
    )


def _sum(items: list[Any]) -> Any:
    return items[0] if len(items) == 1 else functools.reduce(operator.add, items)


def _draw(name: str, density: Any, n: int, theta: dict[str, float], seed: Any,
          columns: list[int]) -> np.ndarray:
    """``n`` events of one component, columns in the cost's observable order."""
    if n == 0:
        return np.zeros((0, len(columns)))
    try:
        x = density.sample(int(n), theta or None, seed)
    except NotImplementedError:
        raise InputError(f"component {name!r}: its density {type(density).__name__} cannot "
                         "sample events, so toys cannot be generated") from None
    except InputError as exc:
        raise type(exc)(f"component {name!r}: {exc}") from None
    return np.asarray(x, dtype=np.float64)[:, columns]


def _parts(item: _UnbinnedCost, values: dict[str, float]
           ) -> list[tuple[str, Any, dict[str, float], list[int]]]:
    out = []
    for name, density, _ in item.parts:
        theta = {p: values[p] for p in density.parameters}
        columns = [density.space.index(o) for o in item.observables]
        out.append((name, density, theta, columns))
    return out


def _toy_unbinned(item: _UnbinnedCost, values: dict[str, float], rng: np.random.Generator
                  ) -> _UnbinnedCost:
    parts = _parts(item, values)
    yields = item.expected_yields(values)
    if yields is None:
        counts = [item.n_events]
    elif item.extended:
        counts = [int(rng.poisson(yields[name])) for name, *_ in parts]
    else:
        nu = np.array([yields[name] for name, *_ in parts])
        if not nu.sum() > 0:
            raise ParameterError("all component yields are zero: cannot share the events")
        counts = [int(c) for c in rng.multinomial(item.n_events, nu / nu.sum())]
    seeds = rng.integers(0, 2**63 - 1, size=len(parts))  # one per component, drawn always
    events = [_draw(name, dens, n, theta, int(s), cols)
              for (name, dens, theta, cols), n, s in zip(parts, counts, seeds)]
    return item.with_data(np.concatenate(events))


def _constraint_toy(item: NormalConstraint, values: dict[str, float],
                    rng: np.random.Generator) -> NormalConstraint:
    names = list(describe(item))
    centre = np.array([values[n] for n in names])
    cov = np.asarray(item.covariance, dtype=np.float64)
    if cov.ndim < 2:
        err = np.sqrt(cov)
        return NormalConstraint(names, rng.normal(centre, err), err)
    return NormalConstraint(names, rng.multivariate_normal(centre, cov), cov)


def _pyhf_pars(item: PyhfCost, values: dict[str, float]) -> np.ndarray:
    return item.pyhf_parameters([values[n] for n in describe(item)])


def _with_pyhf_data(item: PyhfCost, data: np.ndarray) -> PyhfCost:
    # the data come from the model itself (valid by construction): set directly on a copy,
    # without PyhfCost's validation per toy
    new = copy.copy(item)
    new._data = np.asarray(data, dtype=np.float64).reshape(-1)
    return new


def _toy_pyhf(item: PyhfCost, values: dict[str, float], rng: np.random.Generator) -> PyhfCost:
    if pyhf.tensorlib.name != "numpy":
        raise InputError(f"pyhf toys need the numpy backend (pyhf.set_backend('numpy')), "
                         f"the active one is {pyhf.tensorlib.name!r}")
    pars = _pyhf_pars(item, values)
    state_seed = int(rng.integers(0, 2**32))
    with _GLOBAL_RNG_LOCK:
        saved = np.random.get_state()  # noqa: NPY002 (pyhf draws from it)
        try:
            np.random.seed(state_seed)  # noqa: NPY002
            data = np.asarray(item.model.make_pdf(pyhf.tensorlib.astensor(pars)).sample(),
                              dtype=np.float64)
        finally:
            np.random.set_state(saved)  # noqa: NPY002
    return _with_pyhf_data(item, data)


def sample_toy(cost: Any, pars: Mapping[str, float], seed: Any) -> Any:
    """One pseudo-experiment: a cost of the same structure as ``cost`` on data drawn at
    ``pars`` (name -> value for every parameter of ``cost``).

    ``seed``: an int, a ``numpy.random.SeedSequence`` (e.g. :func:`toy_seed`) or a
    ``numpy.random.Generator``. Terms are drawn in order from one generator; every component
    gets its own derived seed. A component whose density cannot sample raises
    :class:`~egmm.InputError` naming it. The toy's events carry no weights, whatever the
    cost's: N ~ Poisson(ν_c) per component (extended), or the cost's event count.

    Example:
        >>> from iminuit.cost import NormalConstraint
        >>> toy = sample_toy(NormalConstraint("a", 0.0, 1.0), {"a": 5.0}, seed=1)
        >>> round(float(toy.value[0]), 4)
        5.3456
    """
    values = _values(cost, pars)
    rng = np.random.default_rng(seed)
    out = []
    for item in _items(cost):
        if isinstance(item, _UnbinnedCost):
            out.append(_toy_unbinned(item, values, rng))
        elif isinstance(item, NormalConstraint):
            out.append(_constraint_toy(item, values, rng))
        elif isinstance(item, PyhfCost):
            out.append(_toy_pyhf(item, values, rng))
        else:
            raise _unsupported(item)
    return _sum(out)


def check_toys(cost: Any, pars: Mapping[str, float], seeds: Iterable[Any]) -> str:
    """Raise the error of bad input (no sampler, unsupported term) before toys are farmed
    out: the first of ``seeds`` whose toy can be made passes; a toy that fails by chance (its
    failure is recorded when it runs) does not stop the study.

    Returns that toy's −2 ln L at ``pars`` (:func:`~egmm.infer.parallel.value_digest`) for
    the key of a stored toy study: it tells apart studies of another model (density, yields,
    constraints) whose toys differ; the observed data do not enter, as the toys do not
    depend on them."""
    if weighted(cost):
        warnings.warn("toys: the events carry weights, but toys are drawn from the model as "
                      "unweighted events (Poisson(ν) of weight 1 per component): the toys' "
                      "distribution of a statistic is the data's only for counting weights",
                      UserWarning, stacklevel=3)
    error: Exception | None = None
    for seed in seeds:
        try:
            toy = sample_toy(cost, pars, seed)
        except Exception as exc:  # the same error for every seed is bad input
            error = error or exc
            continue
        return value_digest(toy, pars)
    if error is not None:
        raise error
    raise InputError("check_toys: no seed given")


def asimov_cost(cost: Any, pars: Mapping[str, float], *, size: int = 100_000, seed: int = 0
                ) -> Any:
    r"""The cost on the Asimov dataset at ``pars``: every observation at its expectation.

    * unbinned costs: ``size`` events from each component with ν_c > 0, weighted
      ν_c/``size`` (extended; for UnbinnedNLL N·ν_c/(Σν·size)), drawn at the fixed
      ``seed``: Σ_i w_i ln λ(x_i) estimates ∫ λ_θ ln λ dx with a relative error ~1/√size
      — but the Asimov −2 ln λ is a small difference of such terms, whose relative error is
      larger: √q_A spread over ~3 % (±1.5 %) across seeds at the default size for a narrow
      peak on a flat background, and the expected limits (∝ 1/√q_A) by the same ±1.5 %;
      1e6–2e6 events make it negligible;
    * ``NormalConstraint``: centre at ``pars``;
    * ``PyhfCost``: ``model.expected_data(pars)`` (main and auxiliary), as in pyhf.

    The minimum of the Asimov cost is at ``pars`` (to the sampling precision for unbinned
    terms), and −2 ln λ on it is the non-centrality Λ of Cowan et al. (2011), Eq. 29.
    """
    size = whole_number(size, "asimov size")
    values = _values(cost, pars)
    out = []
    for k, item in enumerate(_items(cost)):
        if isinstance(item, _UnbinnedCost):
            parts = _parts(item, values)
            yields = item.expected_yields(values)
            if yields is None:
                scale = {parts[0][0]: float(item.sum_weights)}
            elif item.extended:
                scale = yields
            else:
                total = sum(yields.values())
                scale = {n: item.sum_weights * v / total for n, v in yields.items()}
            xs, ws = [], []
            for j, (name, dens, theta, cols) in enumerate(parts):
                if scale[name] > 0:
                    ss = np.random.SeedSequence(check_seed(seed), spawn_key=(k, j))
                    xs.append(_draw(name, dens, int(size), theta, ss, cols))
                    ws.append(np.full(int(size), scale[name] / int(size)))
            if not xs:
                raise ParameterError("Asimov data: every component has zero yield")
            asimov = item.with_data(np.concatenate(xs), np.concatenate(ws))
            # its weights draw the expected density, not events: its curvature is the
            # expected (Fisher) information, the errors wanted (no sandwich, no warnings)
            asimov.expected_data = True
            out.append(asimov)
        elif isinstance(item, NormalConstraint):
            names = list(describe(item))
            cov = np.asarray(item.covariance, dtype=np.float64)
            out.append(NormalConstraint(names, [values[n] for n in names],
                                        np.sqrt(cov) if cov.ndim < 2 else cov))
        elif isinstance(item, PyhfCost):
            pars_vec = pyhf.tensorlib.astensor(_pyhf_pars(item, values))
            data = np.asarray(pyhf.tensorlib.tolist(item.model.expected_data(pars_vec)))
            out.append(_with_pyhf_data(item, data))
        else:
            raise _unsupported(item)
    return _sum(out)


# ----------------------------------------------------------------------------------------------
# distributions of test statistics from toys
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _TeststatJob:
    cost: Any
    pars: dict[str, float]
    poi: str
    mu: float
    test_stat: str
    seed: int
    stream: int
    fixed: Any
    limits: Any
    strategy: int
    tol: float
    steps: dict[str, float] | None = None


def _typical_errors(cost: Any, pars: dict[str, float], seed: np.random.SeedSequence,
                    fixed: Any, limits: Any) -> dict[str, float] | None:
    """The free parameters' HESSE errors of one toy's fit (the toys' first step sizes: their
    fits then take ~30 % fewer MIGRAD calls than from Minuit's default steps, 1 % of each
    value); None if that fit is not valid."""
    try:
        res = fit(sample_toy(cost, pars, seed), pars, fixed=fixed, limits=limits)
    except Exception:  # the same failure is met, and recorded, by toy 0's own task
        return None
    return first_steps(res)


def _teststat_task(job: _TeststatJob, index: int) -> dict[str, Any]:
    """One toy: draw it at ``job.pars``, evaluate the test statistic at ``job.mu``."""
    record: dict[str, Any] = {"index": index, "seed": [job.seed, job.stream, index]}
    try:
        toy = sample_toy(job.cost, job.pars, toy_seed(job.seed, job.stream, index))
        value, fits = evaluate(job.test_stat, job.mu, toy, job.poi, start=job.pars,
                               fixed=job.fixed, limits=job.limits, strategy=job.strategy,
                               tol=job.tol, errors=job.steps)
        record.update(value=float(value), muhat=fits.unconditional.values[job.poi],
                      valid=bool(fits.conditional.valid and fits.unconditional.valid))
    except Exception as exc:  # a toy whose fit raises is recorded and counted, not dropped
        record.update(value=None, muhat=None, valid=False,
                      error=f"{type(exc).__name__}: {exc}")
    return record


def _teststat_batch_task(job: _TeststatJob, indices: list[int]) -> list[dict[str, Any]]:
    """Toys ``indices`` fitted together by :func:`egmm.infer.fit_batched` (unconditional,
    then conditional from its minimum); the same toys, seeds and statistic as
    :func:`_teststat_task`. A batch that cannot be fitted together is done toy by toy."""
    # (batched imports this module's neighbours)
    from egmm.infer.batched import deeper_free_minima, fit_batched

    records: list[dict[str, Any]] = []
    toys, fitted = [], []
    for i in indices:
        record: dict[str, Any] = {"index": i, "seed": [job.seed, job.stream, i],
                                  "batched": True}
        try:
            toys.append(sample_toy(job.cost, job.pars, toy_seed(job.seed, job.stream, i)))
            fitted.append(record)
        except Exception as exc:  # recorded, not dropped
            record.update(value=None, muhat=None, valid=False,
                          error=f"{type(exc).__name__}: {exc}")
        records.append(record)
    if not toys:
        return records
    poi, mu = job.poi, job.mu
    lims = _limits(job.cost, job.limits)
    bounded = job.test_stat in ("qtilde", "ttilde")
    fix = _fixed_mapping(job.cost, job.fixed, job.pars)
    free_limits = dict(job.limits or {})
    start = dict(job.pars)
    if bounded:
        free_limits[poi] = (max(lims[poi][0], 0.0), lims[poi][1])
        start[poi] = max(start[poi], 0.0)
    try:
        unconditional = fit_batched(toys, start, fixed=fix or None, limits=free_limits or None,
                                    validate=False, strategy=job.strategy, minuit_tol=job.tol)
        names = list(unconditional.parameters)
        j = names.index(poi)
        cond_start, profiled = profiled_start(unconditional.values, unconditional.covariance,
                                              j, mu, *_bounds(lims, names),
                                              poi_limits=(max(lims[poi][0], 0.0) if bounded
                                                          else lims[poi][0], lims[poi][1]))
        conditional = fit_batched(toys, cond_start, fixed={**fix, poi: mu},
                                  limits=dict(job.limits) if job.limits else None,
                                  validate=False, strategy=job.strategy, minuit_tol=job.tol)
        # as the loop's fits (teststats._fits): a conditional minimum more than 3 of its
        # expected errors from where it was expected lies in another mode, where the free
        # fit is repeated (from μ̂); one deeper than the free minimum means the free fit
        # missed its minimum (repeated from the conditional one): t compares the deepest
        # minima found, so neither is clipped to 0
        far = np.abs(conditional.values - cond_start) > 3.0 * profiled  # NaN errors: False
        far[:, j] = False
        elsewhere = far.any(axis=1)
        values, fval, valid, _ = deeper_free_minima(
            toys, (unconditional.values, unconditional.fval, unconditional.valid),
            conditional.values, conditional.fval, fixed=fix or None,
            limits=free_limits or None, strategy=job.strategy, tol=job.tol, again=elsewhere,
            poi_start={j: np.where(elsewhere, unconditional.value(poi), mu)})
    except (InputError, ParameterError):
        return [_teststat_task(job, i) for i in indices]
    muhat = values[:, j]
    delta = conditional.fval - fval
    for k, record in enumerate(fitted):
        record.update(value=statistic_value(job.test_stat, mu, float(delta[k]), float(muhat[k])),
                      muhat=float(muhat[k]), valid=bool(valid[k] and conditional.valid[k]))
    return records


_teststat_batch_task.batched = True  # type: ignore[attr-defined]


@dataclass
class ToyTestStats:
    """Test statistics of toys (from :func:`toy_teststats`).

    Attributes:
        values: (ntoys,) test statistic per toy, NaN where the toy failed.
        records: one dict per toy (as stored in JSON): ``index``, ``seed`` ([master, stream,
            index]), ``value`` and ``muhat`` (unconditional POI estimate; ``None`` for a failed
            toy), ``valid`` (both fits valid), ``error`` (only for failed toys).
    """

    values: np.ndarray
    records: list[dict[str, Any]] = field(repr=False)

    @property
    def n_failed(self) -> int:
        """Toys whose generation or fit raised (value NaN)."""
        return sum("error" in r for r in self.records)

    @property
    def n_invalid(self) -> int:
        """Toys with a value but a fit Minuit did not call valid."""
        return sum(not r["valid"] and "error" not in r for r in self.records)


def _check_batchable(cost: Any, values: dict[str, float]) -> None:
    """Raise InputError (naming the term) unless fit_batched can vectorise toys of ``cost``."""
    from egmm.infer.batched import _Batch, _split_costs

    toy = sample_toy(cost, values, toy_seed(0, 0, 0))
    names = tuple(describe(toy))
    try:
        _Batch(*_split_costs([toy], names), names)
    except InputError as exc:
        raise InputError(f"batched=True: these toys cannot be fitted together ({exc}); use "
                         "the default batched=False") from None


def _fixed_key(fixed: Any) -> Any:
    if fixed is None or isinstance(fixed, Mapping):
        return fixed
    return sorted([fixed] if isinstance(fixed, str) else fixed)


def toy_teststats(
    cost: Any,
    pars: Mapping[str, float],
    poi: str,
    mu: float,
    *,
    test_stat: str = "qtilde",
    ntoys: int = 1000,
    seed: int = 0,
    stream: int = 0,
    executor: Any = None,
    out: Any = None,
    progress: bool = True,
    callback: Callable[[dict[str, Any]], None] | None = None,
    fixed: Mapping[str, float] | Iterable[str] | None = None,
    limits: Limits | None = None,
    strategy: int = 0,
    tol: float = 1e-3,
    batched: bool = False,
    batch_size: int = 64,
) -> ToyTestStats:
    """The distribution of ``test_stat`` at ``mu`` for toys generated at ``pars``.

    Toy i uses ``toy_seed(seed, stream, i)``: the ``stream`` separates sets of toys of one
    study (pyhf's s+b and b-only toys use streams 0 and 1). Each toy's fits start from
    ``pars``, with MIGRAD's first steps the errors of one toy's fit (toy 0's, made once here)
    and, for the conditional fit, the errors its unconditional covariance implies (see
    :func:`egmm.infer.teststats.profiled_start`). See :func:`egmm.infer.parallel.run_toys`
    for ``executor``, ``out`` (resumable JSON lines), ``progress`` and ``callback``.

    ``batched=True`` fits ``batch_size`` toys at a time with :func:`egmm.infer.fit_batched`
    (one batched Newton solve for all of them, no Minuit; toys it does not converge are
    refitted by Minuit and flagged) instead of two Minuit fits per toy: the same toys and
    statistic, faster for network densities and many toys. It needs costs fit_batched can
    vectorise (unbinned costs plus NormalConstraints); others raise here. The plain loop
    (the default) is the reference; the two agree to the fits' tolerance.
    """
    get_test_stat(test_stat)
    check_poi(cost, poi, fixed)
    ntoys = check_ntoys(ntoys)
    seed = check_seed(seed)
    values = _values(cost, pars)
    stream = whole_number(stream, "stream", 0)
    strategy, tol = check_strategy(strategy), check_tol(tol)
    digest = check_toys(cost, values, [toy_seed(seed, stream, i) for i in range(min(ntoys, 5))])
    batched = bool(batched)
    if batched:
        batch_size = whole_number(batch_size, "batch_size")
        _check_batchable(cost, values)
    # the loop's fits start with the errors of one toy's fit (toy 0's, fitted here once) as
    # MIGRAD's first steps; the batched fits need none
    steps = None if batched else _typical_errors(cost, values, toy_seed(seed, stream, 0),
                                                 fixed, limits)
    job = _TeststatJob(cost, values, poi, float(mu), test_stat, seed, stream,
                       fixed, limits, strategy, float(tol), steps)
    fields = [test_stat, poi, float(mu), seed, stream,
              {n: float(f"{v:.9g}") for n, v in values.items()},
              _fixed_key(fixed), limits, strategy, float(tol), digest]
    key = "teststat/" + fingerprint(*fields, *(["batched"] if batched else []))
    records = run_toys(_teststat_batch_task if batched else _teststat_task, job, range(ntoys),
                       key=key, executor=executor, out=out, progress=progress,
                       desc=f"{test_stat} {poi}={mu:.4g}", callback=callback,
                       chunk_size=int(batch_size) if batched else None)
    values = np.array([math.nan if r["value"] is None else r["value"] for r in records])
    result = ToyTestStats(values, records)
    if result.n_failed == ntoys:
        raise EgmmError(f"all {ntoys} toys failed; the first: {records[0]['error']}")
    return result
