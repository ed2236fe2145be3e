r"""Hypothesis tests with CLs: asymptotic formulae and toys, with pyhf's names and conventions.

For a tested value μ of the parameter of interest, a calculator gives the observed test
statistic and its distributions under the signal-plus-background hypothesis (μ) and the
background-only hypothesis (μ = 0), from which

.. math::

    \mathrm{CL}_{s+b} = P(q \ge q_\mathrm{obs} \mid μ), \qquad
    \mathrm{CL}_b = P(q \ge q_\mathrm{obs} \mid 0), \qquad
    \mathrm{CL}_s = \mathrm{CL}_{s+b} / \mathrm{CL}_b

and the expected CLs at the ±1σ, ±2σ quantiles of the background-only distribution (the
"Brazil band"). :class:`AsymptoticCalculator` uses the asymptotic distributions of Cowan et
al. (2011) with the Asimov dataset; :class:`ToyCalculator` generates pseudo-experiments. The
arithmetic follows pyhf 0.7 (``pyhf.infer.calculators``), so for a :class:`~egmm.PyhfCost`
the asymptotic numbers agree with ``pyhf.infer.hypotest``; the fits are iminuit's.

References:
    G. Cowan, K. Cranmer, E. Gross, O. Vitells, Eur. Phys. J. C 71 (2011) 1554,
    arXiv:1007.1727; A. L. Read, J. Phys. G 28 (2002) 2693 (CLs);
    ATLAS and CMS, ATL-PHYS-PUB-2011-011 (toys at the conditional MLE of the nuisances).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from egmm.base import is_real_number, whole_number
from egmm.errors import EgmmError, InputError
from egmm.infer.fit import FitResult, check_strategy, check_tol, fit, warn_if_weighted
from egmm.infer.teststats import (
    Limits,
    _fixed_mapping,
    check_poi,
    evaluate,
    get_test_stat,
    tie_tolerance,
)
from egmm.infer.toys import (
    ToyTestStats,
    asimov_cost,
    check_ntoys,
    check_seed,
    toy_teststats,
)

__all__ = [
    "AsymptoticCalculator",
    "AsymptoticTestStatDistribution",
    "EmpiricalDistribution",
    "HypoTestFitResults",
    "ToyCalculator",
    "hypotest",
]

#: normal-distribution percentiles of the expected band (−2σ … +2σ), as in pyhf
_BAND_PERCENTILES = 100 * norm.cdf([-2.0, -1.0, 0.0, 1.0, 2.0])


class AsymptoticTestStatDistribution:
    r"""Asymptotic distribution of the test statistic in −μ̂/σ space (pyhf's convention).

    The statistic ``sqrt(q) - sqrt(q_A)`` (see :meth:`AsymptoticCalculator.teststatistic`) is
    normal with unit variance, centred at ``shift`` (−√q_{μ,A} under μ, 0 under μ = 0); the
    p-value is 1 − Φ(value − shift) (Cowan et al. 2011, Eqs. 57–59, 65–66). With a finite
    ``cutoff`` (``calc_base_dist="clipped_normal"``) values below it have no p-value (NaN).
    """

    def __init__(self, shift: float, cutoff: float = -math.inf) -> None:
        self.shift = float(shift)
        self.cutoff = float(cutoff)

    def cdf(self, value: float) -> float:
        return float(norm.cdf(value - self.shift))

    def pvalue(self, value: float) -> float:
        """P(statistic ≥ value) = Φ(−(value − shift)) (computed without 1 − Φ cancellation)."""
        if value < self.cutoff:
            return math.nan
        return float(norm.cdf(-(value - self.shift)))

    def expected_value(self, nsigma: float) -> float:
        """The statistic ``nsigma`` standard deviations from the centre (at least ``cutoff``)."""
        return max(self.shift + float(nsigma), self.cutoff)


class EmpiricalDistribution:
    r"""The distribution of a test statistic sampled by toys.

    ``samples``: the toys' values; NaN marks toys whose fit failed: they are left out of the
    p-values and counted in ``n_failed`` (never silently). ``tolerance``: how far below a
    value a sample still counts as equal to it (≥) in :meth:`pvalue`. Statistics come from
    fits, which put equal data fitted from different starting points up to their precision
    apart; a discrete statistic (a counting experiment: every toy with the observed count
    has the observed statistic) needs these ties counted, as pyhf's toys (fitted from the
    observed fit's start) count them exactly. :class:`ToyCalculator` and the Neyman
    constructions use :func:`~egmm.infer.teststats.tie_tolerance` of their ``tol`` (2e-4 at
    the toys' default 1e-3); a continuous statistic barely notices (its p-value grows by
    the density of the toys there times the tolerance). Samples of exactly 0 (one-sided
    statistics clipped at 0) tie only with a value ≤ 0: an observed statistic a little above
    0 does not take in the toys' point mass at 0.

    Example:
        >>> d = EmpiricalDistribution([0.0, 0.5, 1.0, 2.0, float("nan")])
        >>> d.pvalue(0.75), d.n_failed, d.expected_value(0.0)
        (0.5, 1, 0.75)
        >>> EmpiricalDistribution([0.0, 1.0 - 1e-9, 2.0], tolerance=1e-4).pvalue([1.0, 5e-5])
        array([0.66666667, 0.66666667])
    """

    def __init__(self, samples: Any, tolerance: float = 0.0) -> None:
        arr = np.asarray(samples, dtype=np.float64).reshape(-1)
        bad = np.isnan(arr)
        if bad.all():
            raise InputError("EmpiricalDistribution: no valid samples")
        if not (is_real_number(tolerance) and math.isfinite(tolerance) and tolerance >= 0):
            raise InputError(f"EmpiricalDistribution: tolerance must be a finite number ≥ 0, "
                             f"got {tolerance!r}")
        self.samples = arr[~bad]
        self.n_failed = int(bad.sum())
        self.tolerance = float(tolerance)
        self._sorted = np.sort(self.samples)
        self._zeros = int(np.count_nonzero(self.samples == 0.0))

    def __len__(self) -> int:
        return len(self.samples)

    def pvalue(self, value: Any) -> Any:
        """Fraction of samples ≥ ``value`` − ``tolerance``, samples of exactly 0 counting
        only for a value ≤ 0 (a float, or an array for an array)."""
        v = np.asarray(value, dtype=np.float64)
        n = len(self._sorted)
        count = n - np.searchsorted(self._sorted, v - self.tolerance, side="left")
        # zeros inside [v − tolerance, v) with v > 0 are the clipped point mass, not ties
        zeros_taken = (v > 0.0) & (v - self.tolerance <= 0.0)
        p = (count - np.where(zeros_taken, self._zeros, 0)) / n
        return float(p) if p.ndim == 0 else p

    def pvalue_error(self, value: float) -> float:
        """Binomial standard error of :meth:`pvalue`: √(p(1 − p)/n)."""
        p = self.pvalue(value)
        return math.sqrt(p * (1 - p) / len(self._sorted))

    def expected_value(self, nsigma: Any) -> Any:
        """The Φ(nsigma) quantile of the samples (linear interpolation, as pyhf)."""
        q = 100 * norm.cdf(np.asarray(nsigma, dtype=np.float64))
        out = np.percentile(self._sorted, q, method="linear")
        return float(out) if np.ndim(out) == 0 else out


@dataclass(frozen=True)
class HypoTestFitResults:
    """The fits behind an asymptotic test statistic (pyhf's names).

    ``asimov_pars``: parameter values the Asimov dataset was made at (the conditional fit to
    the data at the background-only value); the other four are :class:`FitResult`.
    """

    asimov_pars: dict[str, float]
    free_fit_to_data: FitResult
    free_fit_to_asimov: FitResult
    fixed_poi_fit_to_data: FitResult
    fixed_poi_fit_to_asimov: FitResult


class _Calculator:
    """Shared: validation, the fits to the observed data (unconditional fit once)."""

    def __init__(self, cost: Any, poi: str, test_stat: str, start: Mapping[str, float] | None,
                 fixed: Mapping[str, float] | Iterable[str] | None, limits: Limits | None,
                 strategy: int, tol: float) -> None:
        get_test_stat(test_stat)
        check_poi(cost, poi, fixed)
        self.cost = cost
        self.poi = poi
        self.test_stat = test_stat
        self._fit_options = dict(fixed=fixed, limits=limits, strategy=check_strategy(strategy),
                                 tol=check_tol(tol))
        self._start = dict(start) if start is not None else None
        self._free: dict[int, FitResult] = {}  # id(cost) -> unconditional fit
        self._conditional: dict[float, FitResult] = {}

    def _background_value(self) -> float:
        return 1.0 if self.test_stat == "q0" else 0.0  # pyhf's convention for q0

    def _evaluate(self, mu: float, cost: Any, start: Mapping[str, float] | None
                  ) -> tuple[float, Any]:
        value, fits = evaluate(self.test_stat, mu, cost, self.poi, start=start,
                               unconditional=self._free.get(id(cost)), **self._fit_options)
        self._free[id(cost)] = fits.unconditional
        return value, fits

    def _tested(self, poi_test: float) -> float:
        if not (is_real_number(poi_test) and math.isfinite(poi_test)):
            raise InputError(f"the tested value of {self.poi!r} must be a finite number, got "
                             f"{poi_test!r}")
        return 0.0 if self.test_stat == "q0" else float(poi_test)

    def conditional_fit(self, mu: float) -> FitResult:
        """Fit to the observed data with the POI fixed at ``mu`` (nuisances profiled)."""
        mu = float(mu)
        if mu not in self._conditional:
            fix = _fixed_mapping(self.cost, self._fit_options["fixed"], self._start)
            self._conditional[mu] = fit(
                self.cost, self._start, fixed={**fix, self.poi: mu},
                limits=self._fit_options["limits"], strategy=self._fit_options["strategy"],
                tol=self._fit_options["tol"], hesse=False)
        return self._conditional[mu]

    @staticmethod
    def pvalues(teststat: float, sig_plus_bkg_distribution: Any, bkg_only_distribution: Any
                ) -> tuple[float, float, float]:
        """(CLs+b, CLb, CLs) of a test statistic value. CLb = 0 — with toys: the value lies
        beyond every background-only toy — leaves CLs undefined: :class:`~egmm.EgmmError`."""
        clsb = sig_plus_bkg_distribution.pvalue(teststat)
        clb = bkg_only_distribution.pvalue(teststat)
        if not clb > 0:
            samples = getattr(bkg_only_distribution, "samples", None)
            if samples is not None:
                why = f"beyond all {len(samples)} background-only toys; run more toys (ntoys)"
            else:
                why = "where the background-only distribution has no probability left"
            raise EgmmError(f"CLb = {float(clb)}, so CLs = CLs+b/CLb is undefined: the "
                            f"observed test statistic {teststat:.6g} lies {why}")
        return float(clsb), float(clb), float(clsb / clb)


class AsymptoticCalculator(_Calculator):
    r"""Asymptotic CLs with the Asimov dataset (Cowan et al. 2011, Sec. 3–4), as pyhf.

    The Asimov dataset is made at the background-only value of the POI (μ' = 0; 1 for
    ``q0``) with the nuisance parameters at their conditional MLE on the observed data
    (:func:`~egmm.infer.toys.asimov_cost`: pyhf's ``expected_data``, constraint centres at
    the fitted values, a weighted sample of ``asimov_size`` events per unbinned component at
    ``asimov_seed``). With q = q_μ(data) and q_A = q_μ(Asimov), σ² = μ²/q_A (Eq. 31), the
    returned statistic lives in −μ̂/σ space:

    .. math::

        \text{teststat} = \begin{cases} \sqrt{q} - \sqrt{q_A} & q ≤ q_A \text{ (or q, q0)}\\
                          (q - q_A) / (2\sqrt{q_A}) & q > q_A \text{ (qtilde, Eq. 66)}
                          \end{cases}

    distributed as N(−√q_A, 1) under μ and N(0, 1) under μ' = 0.

    Arguments:
        cost: the cost (−2 ln L); ``poi``: the name of the parameter of interest.
        test_stat: ``"qtilde"`` (default), ``"q"`` or ``"q0"``.
        calc_base_dist: ``"normal"`` or ``"clipped_normal"`` (pyhf's option).
        asimov_size, asimov_seed: events per unbinned component of the Asimov sample, seed.
        start, fixed, limits, strategy, tol: fit options (see :func:`egmm.infer.fit`).

    Example:
        >>> import pyhf
        >>> from egmm import PyhfCost
        >>> model = pyhf.simplemodels.uncorrelated_background([5.0], [50.0], [7.0])
        >>> calc = AsymptoticCalculator(PyhfCost(model, [55.0]), "mu")
        >>> t = calc.teststatistic(1.0)
        >>> sb, b = calc.distributions(1.0)
        >>> [round(p, 3) for p in calc.pvalues(t, sb, b)]
        [0.5, 0.688, 0.727]
    """

    def __init__(
        self,
        cost: Any,
        poi: str = "mu",
        *,
        test_stat: str = "qtilde",
        calc_base_dist: str = "normal",
        asimov_size: int = 100_000,
        asimov_seed: int = 0,
        start: Mapping[str, float] | None = None,
        fixed: Mapping[str, float] | Iterable[str] | None = None,
        limits: Limits | None = None,
        strategy: int = 0,
        tol: float = 1e-3,
    ) -> None:
        if test_stat not in ("qtilde", "q", "q0"):
            raise InputError(f"AsymptoticCalculator: test_stat must be 'qtilde', 'q' or 'q0', "
                             f"got {test_stat!r}")
        if calc_base_dist not in ("normal", "clipped_normal"):
            raise InputError(f"unknown calc_base_dist {calc_base_dist!r}; use 'normal' or "
                             "'clipped_normal'")
        super().__init__(cost, poi, test_stat, start, fixed, limits, strategy, tol)
        warn_if_weighted(cost, "AsymptoticCalculator")
        self.calc_base_dist = calc_base_dist
        self.asimov_size = whole_number(asimov_size, "asimov_size")
        self.asimov_seed = check_seed(asimov_seed)
        self._asimov: tuple[dict[str, float], Any] | None = None
        self._sqrt_qA: dict[float, float] = {}
        self.sqrtqmuA_v: float | None = None
        self.fitted_pars: HypoTestFitResults | None = None

    def asimov(self) -> tuple[dict[str, float], Any]:
        """(parameter values, Asimov cost), made once per calculator."""
        if self._asimov is None:
            pars = self.conditional_fit(self._background_value()).values
            self._asimov = (dict(pars), asimov_cost(self.cost, pars, size=self.asimov_size,
                                                    seed=self.asimov_seed))
        return self._asimov

    def teststatistic(self, poi_test: float) -> float:
        """The observed statistic in −μ̂/σ space (see the class docstring)."""
        mu = self._tested(poi_test)
        q, fits = self._evaluate(mu, self.cost, self._start)
        asimov_pars, asimov = self.asimov()
        q_a, fits_a = self._evaluate(mu, asimov, asimov_pars)
        sqrt_q, sqrt_qa = math.sqrt(q), math.sqrt(q_a)
        self._sqrt_qA[float(poi_test)] = sqrt_qa
        self.sqrtqmuA_v = sqrt_qa
        self.fitted_pars = HypoTestFitResults(asimov_pars, fits.unconditional,
                                              fits_a.unconditional, fits.conditional,
                                              fits_a.conditional)
        if self.test_stat in ("q", "q0") or sqrt_q <= sqrt_qa:  # '<=': pyhf issue #1992
            return sqrt_q - sqrt_qa
        return (q - q_a) / (2 * sqrt_qa)

    def distributions(self, poi_test: float
                      ) -> tuple[AsymptoticTestStatDistribution, AsymptoticTestStatDistribution]:
        """(signal+background, background-only) distributions at ``poi_test``."""
        key = float(poi_test)
        if key not in self._sqrt_qA:
            self.teststatistic(poi_test)
        sqrt_qa = self._sqrt_qA[key]
        cutoff = -math.inf if self.calc_base_dist == "normal" else -sqrt_qa
        return (AsymptoticTestStatDistribution(-sqrt_qa, cutoff),
                AsymptoticTestStatDistribution(0.0, cutoff))

    def expected_pvalues(self, sig_plus_bkg_distribution: AsymptoticTestStatDistribution,
                         bkg_only_distribution: AsymptoticTestStatDistribution
                         ) -> list[list[float]]:
        """[CLs+b, CLb, CLs], each at the background-only median and ±1σ, ±2σ (5 values,
        ascending CLs as pyhf: statistic at +2σ … −2σ)."""
        rows = [self.pvalues(bkg_only_distribution.expected_value(n), sig_plus_bkg_distribution,
                             bkg_only_distribution) for n in (2, 1, 0, -1, -2)]
        return [list(col) for col in zip(*rows)]


class ToyCalculator(_Calculator):
    r"""CLs from pseudo-experiments, as pyhf's ``ToyCalculator``.

    Toys of the signal-plus-background hypothesis are generated at the tested μ, those of the
    background-only hypothesis at μ = 0 (1 for ``q0``), the nuisance parameters at their
    conditional MLE on the observed data (LHC convention), by
    :func:`~egmm.infer.toys.toy_teststats`: toy i of the s+b (b-only) set has seed
    ``toy_seed(seed, 0, i)`` (``(seed, 1, i)``) for every tested μ, so CLs(μ) is smooth in μ
    (common random numbers) and results do not depend on the executor. The expected band
    takes the percentiles of the CLs of the background-only toys (pyhf).

    Arguments:
        cost, poi: the cost and the name of the parameter of interest.
        test_stat: ``"qtilde"`` (default), ``"q"``, ``"q0"``, ``"t"`` or ``"ttilde"``.
        ntoys: toys per hypothesis; ``seed``: the master seed.
        executor: ``"serial"``, None (local processes), an Executor or a Dask Client.
        out: JSON-lines file the toys are appended to (resumable; one file can hold many
            hypotheses).
        track_progress: tqdm progress bars.
        start, fixed, limits, strategy, tol: fit options (see :func:`egmm.infer.fit`).
        batched, batch_size: fit the toys ``batch_size`` at a time with
            :func:`egmm.infer.fit_batched` instead of two Minuit fits per toy (see
            :func:`~egmm.infer.toys.toy_teststats`); the observed statistic is always fitted
            with Minuit.

    Attributes:
        toys: the :class:`~egmm.infer.toys.ToyTestStats` of the last :meth:`distributions`,
            ``{"sb": ..., "b": ...}`` (per-toy records, failures).
    """

    def __init__(
        self,
        cost: Any,
        poi: str = "mu",
        *,
        test_stat: str = "qtilde",
        ntoys: int = 2000,
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
    ) -> None:
        super().__init__(cost, poi, test_stat, start, fixed, limits, strategy, tol)
        self.batched = bool(batched)
        self.batch_size = batch_size
        self.ntoys = check_ntoys(ntoys)
        self.seed = check_seed(seed)
        self.executor = executor
        self.out = out
        self.track_progress = bool(track_progress)
        self.toys: dict[str, ToyTestStats] = {}
        self._memo: dict[float, dict[str, ToyTestStats]] = {}

    def teststatistic(self, poi_test: float) -> float:
        """The observed test statistic (q̃_μ, q_μ, q₀, t_μ or t̃_μ) at ``poi_test``."""
        value, _ = self._evaluate(self._tested(poi_test), self.cost, self._start)
        return value

    def distributions(self, poi_test: float, track_progress: bool | None = None
                      ) -> tuple[EmpiricalDistribution, EmpiricalDistribution]:
        """(signal+background, background-only) :class:`EmpiricalDistribution` at
        ``poi_test`` (the toys of a value are made once per calculator)."""
        progress = self.track_progress if track_progress is None else bool(track_progress)
        mu = self._tested(poi_test)
        key = float(poi_test)
        if key not in self._memo:
            made = {}
            for name, stream, at in (("sb", 0, key), ("b", 1, self._background_value())):
                pars = self.conditional_fit(at).values
                toys = toy_teststats(
                    self.cost, pars, self.poi, mu, test_stat=self.test_stat, ntoys=self.ntoys,
                    seed=self.seed, stream=stream, executor=self.executor, out=self.out,
                    progress=progress, batched=self.batched, batch_size=self.batch_size,
                    **self._fit_options)
                if toys.n_failed:
                    warnings.warn(f"{toys.n_failed} of {self.ntoys} {name} toys at "
                                  f"{self.poi}={key:.6g} failed and are left out; see "
                                  "calculator.toys", stacklevel=2)
                made[name] = toys
            self._memo[key] = made
        self.toys = dict(self._memo[key])
        ties = tie_tolerance(self._fit_options["tol"])
        return (EmpiricalDistribution(self.toys["sb"].values, ties),
                EmpiricalDistribution(self.toys["b"].values, ties))

    def expected_pvalues(self, sig_plus_bkg_distribution: EmpiricalDistribution,
                         bkg_only_distribution: EmpiricalDistribution) -> list[list[float]]:
        """[CLs+b, CLb, CLs], each the (2.3, 15.9, 50, 84.1, 97.7) % percentiles over the
        background-only toys taken as observed (pyhf's toy convention)."""
        b = bkg_only_distribution.samples
        clsb = np.asarray(sig_plus_bkg_distribution.pvalue(b))
        clb = np.asarray(bkg_only_distribution.pvalue(b))
        cls = np.divide(clsb, clb, out=np.full_like(clsb, np.nan), where=clb > 0)
        return [np.percentile(v, _BAND_PERCENTILES, method="linear").tolist()
                for v in (clsb, clb, cls)]


_ASYMPTOTIC_OPTIONS = {"test_stat", "calc_base_dist", "asimov_size", "asimov_seed", "start",
                       "fixed", "limits", "strategy", "tol"}
_TOY_OPTIONS = {"test_stat", "ntoys", "seed", "executor", "out", "track_progress", "start",
                "batched", "batch_size",
                "fixed", "limits", "strategy", "tol"}


def make_calculator(calctype: str, cost: Any, poi: str, **kwargs: Any) -> Any:
    """An :class:`AsymptoticCalculator` (``"asymptotics"``) or :class:`ToyCalculator`
    (``"toybased"``); unknown options raise :class:`~egmm.InputError` naming them."""
    if calctype == "asymptotics":
        cls, allowed = AsymptoticCalculator, _ASYMPTOTIC_OPTIONS
    elif calctype == "toybased":
        cls, allowed = ToyCalculator, _TOY_OPTIONS
    else:
        raise InputError(f"unknown calctype {calctype!r}; use 'asymptotics' or 'toybased'")
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise InputError(f"{cls.__name__}: unknown options {unknown}")
    return cls(cost, poi, **kwargs)


def hypotest(
    poi_test: float,
    cost: Any,
    poi: str = "mu",
    *,
    calctype: str = "asymptotics",
    return_tail_probs: bool = False,
    return_expected: bool = False,
    return_expected_set: bool = False,
    return_calculator: bool = False,
    calculator: Any = None,
    **kwargs: Any,
) -> Any:
    r"""CLs of the hypothesis ``poi = poi_test``, with pyhf's arguments and return values.

    .. math:: \mathrm{CL}_s = \frac{\mathrm{CL}_{s+b}}{\mathrm{CL}_b}
              = \frac{p_{s+b}}{1 - p_b}

    (Read 2002; test statistics and asymptotics of Cowan et al. 2011, arXiv:1007.1727.)
    Returns CLs (for ``test_stat="q0"``: CLs+b, the p-value p₀ when ``poi_test = 0``),
    then as requested ``[CLs+b, CLb]`` (``return_tail_probs``; ``[CLb]`` for q0), the
    expected CLs (``return_expected``), the five expected CLs at −2σ … +2σ
    (``return_expected_set``), and the calculator (``return_calculator``). Values are floats.

    Arguments:
        poi_test: tested value; ``cost``, ``poi``: the cost and the POI's name.
        calctype: ``"asymptotics"`` or ``"toybased"``.
        calculator: reuse a calculator (its fits, Asimov data, toys' executor) instead of
            making one from ``calctype`` and ``kwargs`` — what :func:`upper_limit` does.
        kwargs: options of :class:`AsymptoticCalculator` / :class:`ToyCalculator`.

    Example:
        >>> import pyhf
        >>> from egmm import PyhfCost
        >>> model = pyhf.simplemodels.uncorrelated_background([5.0], [50.0], [7.0])
        >>> cls, band = hypotest(1.0, PyhfCost(model, [55.0]), "mu", return_expected_set=True)
        >>> round(cls, 3), [round(v, 3) for v in band]
        (0.727, [0.281, 0.429, 0.624, 0.826, 0.956])
    """
    if calculator is None:
        calculator = make_calculator(calctype, cost, poi, **kwargs)
    elif kwargs:
        raise InputError(f"hypotest: options {sorted(kwargs)} cannot be combined with "
                         "calculator=")
    teststat = calculator.teststatistic(poi_test)
    sb, b = calculator.distributions(poi_test)
    clsb, clb, cls = calculator.pvalues(teststat, sb, b)
    exp_clsb, _, exp_cls = calculator.expected_pvalues(sb, b)
    is_q0 = calculator.test_stat == "q0"
    returns: list[Any] = [clsb if is_q0 else cls]
    if return_tail_probs:
        returns.append([clb] if is_q0 else [clsb, clb])
    band = [float(v) for v in (exp_clsb if is_q0 else exp_cls)]
    if return_expected:
        returns.append(band[2])
    if return_expected_set:
        returns.append(band)
    if return_calculator:
        returns.append(calculator)
    return tuple(returns) if len(returns) > 1 else returns[0]
