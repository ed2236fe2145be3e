"""Calculators, hypotest, upper limits and toy Neyman constructions.

Against pyhf (asymptotics, the same model through PyhfCost), against exact answers (Gaussian
measurements, where t_μ is exactly χ² and the Feldman–Cousins acceptance is known in closed
form), and toys against asymptotics at large statistics.
"""

from __future__ import annotations

import math

import numpy as np
import pyhf
import pytest
import torch
from iminuit.cost import NormalConstraint
from scipy import stats
from scipy.optimize import brentq

from egmm.errors import EgmmError, InputError, ParameterError
from egmm.infer import (
    AsymptoticCalculator,
    EmpiricalDistribution,
    ToyCalculator,
    feldman_cousins,
    hypotest,
    neyman_interval,
    neyman_region_2d,
    upper_limit,
)
from egmm.infer.toys import sample_toy, toy_seed
from egmm.likelihood import PyhfCost
from test_toys import analytic_cost

pytestmark = pytest.mark.filterwarnings("ignore:jsonschema.RefResolver:DeprecationWarning")


@pytest.fixture(scope="module")
def simple():
    pyhf.set_backend("numpy")
    model = pyhf.simplemodels.uncorrelated_background([5.0], [50.0], [7.0])
    data = [55.0, *model.config.auxdata]
    return model, data, PyhfCost(model, data)


def _floats(x):
    return [float(v) for v in x]


# ----------------------------------------------------------------------------------------------
# asymptotics against pyhf: both minimise to EDM ~1e-6, the numbers agree to ~1e-5; the
# required agreement is 1e-3
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("test_stat", ["qtilde", "q"])
def test_asymptotic_hypotest_matches_pyhf(simple, test_stat):
    model, data, cost = simple
    calc = AsymptoticCalculator(cost, "mu", test_stat=test_stat)
    for mu in (0.5, 1.0, 2.0, 4.0):
        cls, tails, band = pyhf.infer.hypotest(mu, data, model, test_stat=test_stat,
                                                return_tail_probs=True,
                                                return_expected_set=True)
        ours = hypotest(mu, cost, "mu", return_tail_probs=True, return_expected_set=True,
                        calculator=calc)
        assert ours[0] == pytest.approx(float(cls), abs=1e-3)
        np.testing.assert_allclose(ours[1], _floats(tails), atol=1e-3)
        np.testing.assert_allclose(ours[2], _floats(band), atol=1e-3)
    assert calc.fitted_pars.fixed_poi_fit_to_data.values["mu"] == 4.0


def test_discovery_q0_matches_pyhf(simple):
    model, data, cost = simple
    p0, tails, band = pyhf.infer.hypotest(0.0, data, model, test_stat="q0",
                                          return_tail_probs=True, return_expected_set=True)
    ours = hypotest(0.0, cost, "mu", test_stat="q0", return_tail_probs=True,
                    return_expected_set=True, return_expected=True)
    assert ours[0] == pytest.approx(float(p0), abs=1e-3)
    np.testing.assert_allclose(ours[1], _floats(tails), atol=1e-3)
    assert ours[2] == pytest.approx(float(band[2]), abs=1e-3)
    np.testing.assert_allclose(ours[3], _floats(band), atol=1e-3)


def test_upper_limit_matches_pyhf(simple):
    model, data, cost = simple
    obs, exp = pyhf.infer.intervals.upper_limits.upper_limit(data, model, rtol=1e-4)
    ours_obs, ours_exp, (mus, results) = upper_limit(cost, "mu", rtol=1e-4,
                                                     return_results=True)
    assert ours_obs == pytest.approx(float(obs), rel=1e-3)
    np.testing.assert_allclose(ours_exp, _floats(exp), rtol=1e-3)
    assert mus == sorted(mus) and len(results) == len(mus)
    # at the limit, CLs is the level (root finding, not a grid)
    assert hypotest(ours_obs, cost, "mu") == pytest.approx(0.05, abs=1e-5)
    scan = np.linspace(0.5, 9.5, 19)
    s_obs, s_exp = pyhf.infer.intervals.upper_limits.upper_limit(data, model, scan=scan)
    o, e = upper_limit(cost, "mu", scan=scan)
    assert o == pytest.approx(float(s_obs), rel=1e-3)
    np.testing.assert_allclose(e, _floats(s_exp), rtol=1e-3)
    # a scan that does not reach the limit is an error, not its end point (pyhf's interp
    # returns 1.0 here; the limit is 4.76)
    with pytest.raises(EgmmError, match=r"observed CLs stays above 0.05 at μ = 1: the scan"):
        upper_limit(cost, "mu", scan=[0.0, 0.5, 1.0])
    with pytest.raises(EgmmError, match="is already below"):
        upper_limit(cost, "mu", scan=[9.0, 10.0])


def test_empirical_distribution_follows_pyhf():
    samples = np.random.default_rng(0).chisquare(1, 101)
    ours = EmpiricalDistribution(samples)
    ref = pyhf.infer.calculators.EmpiricalDistribution(samples)
    for v in (0.0, 0.3, 1.3, 5.0):
        assert ours.pvalue(v) == float(ref.pvalue(v))
    # pyhf's expected_value calls np.percentile(interpolation=...), removed in numpy 2.4:
    # its definition is the linear percentile at Φ(nσ)
    nsigma = np.array([-2, -1, 0, 1, 2])
    np.testing.assert_allclose(ours.expected_value(nsigma),
                               np.percentile(samples, 100 * stats.norm.cdf(nsigma)))
    assert EmpiricalDistribution([1.0, np.nan]).n_failed == 1
    with pytest.raises(InputError, match="no valid samples"):
        EmpiricalDistribution([np.nan])


# ----------------------------------------------------------------------------------------------
# toys against asymptotics at large statistics
# ----------------------------------------------------------------------------------------------
def test_toy_cls_matches_asymptotics_on_a_large_pyhf_model():
    """100 signal on 1000 ± 30 background: q̃_μ is close to its asymptotic form, so toy CLs+b,
    CLb and CLs agree with the asymptotic ones within 3.5 binomial σ of 300 toys each."""
    model = pyhf.simplemodels.uncorrelated_background([100.0], [1000.0], [30.0])
    cost = PyhfCost(model, [1040.0])
    mu = 1.0
    _, (a_sb, a_b) = hypotest(mu, cost, "mu", return_tail_probs=True)
    cls, (clsb, clb), calc = hypotest(mu, cost, "mu", calctype="toybased", ntoys=300, seed=5,
                                      executor="serial", track_progress=False,
                                      return_tail_probs=True, return_calculator=True)
    n = 300
    assert abs(clsb - a_sb) < 3.5 * math.sqrt(a_sb * (1 - a_sb) / n)
    assert abs(clb - a_b) < 3.5 * math.sqrt(a_b * (1 - a_b) / n)
    err = cls * math.hypot(math.sqrt(clsb * (1 - clsb) / n) / clsb,
                           math.sqrt(clb * (1 - clb) / n) / clb)
    assert abs(cls - a_sb / a_b) < 3.5 * err
    assert calc.toys["sb"].n_failed == 0 and len(calc.toys["b"].records) == n


def test_toy_upper_limit_matches_asymptotic_within_toy_error():
    """Unbinned analytic model (ν_s = 50 μ on 1000 flat events), background-only data.

    The toy CLs limit (toms748 on toy CLs, 150 toys per hypothesis, common random numbers
    across μ, stopping at 0.01 in μ) agrees with the asymptotic one within 3 standard
    deviations of the toy limit, σ_μ = σ(CLs) / |dCLs/dμ| (binomial σ of CLs+b and CLb at the
    limit; slope of the asymptotic curve), plus 2 % for the asymptotic approximation.
    """
    cost = analytic_cost(mu=0.0, seed=28)
    acalc = AsymptoticCalculator(cost, "mu", asimov_size=50_000)
    asym, _ = upper_limit(cost, "mu", rtol=1e-4, expected=False, calculator=acalc)
    calc = ToyCalculator(cost, "mu", ntoys=150, seed=4, executor="serial",
                         track_progress=False)
    toy, exp = upper_limit(cost, "mu", bounds=(0.85 * asym, 1.2 * asym), rtol=0.02, atol=0.01,
                           expected=False, calculator=calc)
    assert exp is None
    _, (clsb, clb) = hypotest(toy, cost, "mu", return_tail_probs=True, calculator=calc)
    n = 150
    sigma_cls = clsb / clb * math.hypot(math.sqrt(clsb * (1 - clsb) / n) / max(clsb, 1 / n),
                                        math.sqrt(clb * (1 - clb) / n) / clb)
    h = 0.02 * asym
    slope = (hypotest(asym + h, cost, "mu", calculator=acalc)
             - hypotest(asym - h, cost, "mu", calculator=acalc)) / (2 * h)
    sigma_mu = sigma_cls / abs(slope)
    assert abs(toy - asym) < 3 * sigma_mu + 0.02 * asym


# ----------------------------------------------------------------------------------------------
# Neyman and Feldman–Cousins constructions on a Gaussian measurement (exact answers)
# ----------------------------------------------------------------------------------------------
X0 = 0.3  # the measurement: x ~ N(μ, 1), μ ≥ 0 for Feldman–Cousins; b is a dummy nuisance


def _gauss_cost():
    return NormalConstraint(["mu", "b"], [X0, 0.0], [1.0, 1.0])


def _fc_pvalue(mu: float, x0: float) -> float:
    """Exact P(t̃_μ(X) ≥ t̃_μ(x0)) for X ~ N(μ, 1), with t̃_μ(x) = (x − μ)² for x ≥ 0 and
    μ² − 2xμ for x < 0 (μ̂ = max(x, 0))."""
    t0 = (x0 - mu) ** 2 if x0 >= 0 else mu**2 - 2 * x0 * mu
    root = math.sqrt(t0)
    if mu**2 >= t0:
        lo = mu - root
    else:  # x < 0 also accepted down to where μ² − 2xμ = t0 (everything at μ = 0)
        lo = (mu**2 - t0) / (2 * mu) if mu > 0 else -math.inf
    return 1 - (stats.norm.cdf(mu + root - mu) - stats.norm.cdf(lo - mu))


def test_neyman_interval_on_a_gaussian_is_the_wilks_interval():
    """t_μ = (x − μ)² is exactly χ²₁: p-values within 4 binomial σ of 1 − χ²₁.cdf(t_obs) and
    the 68.27 % interval X0 ± 1 within 0.1 (grid 0.2, ~0.05 toy error at the ends)."""
    grid = np.linspace(-1.5, 2.1, 19)
    r = neyman_interval(_gauss_cost(), "mu", grid, ntoys=300, seed=1, executor="serial",
                        track_progress=False)
    exact = stats.chi2(1).sf((X0 - grid) ** 2)
    assert np.all(np.abs(r.pvalue - exact) <= 4 * np.sqrt(exact * (1 - exact) / 300) + 1e-9)
    np.testing.assert_allclose(r.observed, (X0 - grid) ** 2, atol=1e-6)
    assert r.lower == pytest.approx(X0 - 1, abs=0.1) and r.upper == pytest.approx(X0 + 1,
                                                                                  abs=0.1)
    assert r.wilks == pytest.approx(1.0, rel=1e-3) and not r.notes


def test_feldman_cousins_on_a_bounded_gaussian():
    """t̃_μ toy p-values within 4 binomial σ of the exact ones; the interval ends within 0.1
    of the exact Feldman–Cousins ends (found by root finding on the exact p-value)."""
    grid = np.linspace(0.0, 1.8, 10)
    r = feldman_cousins(_gauss_cost(), "mu", grid, ntoys=300, seed=2, executor="serial",
                        track_progress=False)
    exact = np.array([_fc_pvalue(m, X0) for m in grid])
    assert np.all(np.abs(r.pvalue - exact) <= 4 * np.sqrt(exact * (1 - exact) / 300) + 1e-9)
    alpha = 1 - 0.6827
    upper = brentq(lambda m: _fc_pvalue(m, X0) - alpha, X0 + 0.1, 5.0)
    assert r.lower == 0.0  # the acceptance reaches the physical boundary, the lowest point
    assert not any("extend the grid" in n for n in r.notes if "lowest" in n)  # (nothing below)
    assert r.upper == pytest.approx(upper, abs=0.1)
    assert r.test_stat == "ttilde"


def test_two_poi_critical_values_are_chi2_2():
    """t(a, b) = (a − 0.2)² + (b + 0.1)² is exactly χ²₂: the observed values to 1e-6, the
    toy 68.27 % quantile within 4 standard errors of 2.30 (σ ≈ 0.21 for 200 toys)."""
    cost = NormalConstraint(["a", "b", "c"], [0.2, -0.1, 0.0], [1.0, 1.0, 1.0])
    r = neyman_region_2d(cost, ("a", "b"), [0.0, 1.5], [-0.1, 1.0], ntoys=200, seed=3,
                         executor="serial", track_progress=False)
    a, b = np.meshgrid(r.x, r.y, indexing="ij")
    t = (a - 0.2) ** 2 + (b + 0.1) ** 2
    np.testing.assert_allclose(r.observed, t, atol=1e-6)
    assert np.all(np.abs(r.critical - r.wilks) < 4 * 0.21)
    assert r.wilks == pytest.approx(2.2958, abs=1e-3)
    np.testing.assert_array_equal(r.accepted, stats.chi2(2).sf(t) > 1 - 0.6827)


# ----------------------------------------------------------------------------------------------
# bad input
# ----------------------------------------------------------------------------------------------
def test_bad_input(simple):
    _, _, cost = simple
    with pytest.raises(ParameterError, match="unknown parameter of interest 'nu'"):
        hypotest(1.0, cost, "nu")
    with pytest.raises(ParameterError, match="is fixed"):
        hypotest(1.0, cost, "mu", fixed=["mu"])
    with pytest.raises(InputError, match="calctype"):
        hypotest(1.0, cost, "mu", calctype="bayes")
    with pytest.raises(InputError, match=r"unknown options \['ntoys'\]"):
        hypotest(1.0, cost, "mu", ntoys=10)
    with pytest.raises(InputError, match="ntoys"):
        ToyCalculator(cost, "mu", ntoys=0)
    with pytest.raises(InputError, match="seed"):
        ToyCalculator(cost, "mu", seed=-3)
    with pytest.raises(InputError, match="test_stat"):
        AsymptoticCalculator(cost, "mu", test_stat="t")
    with pytest.raises(ParameterError, match="outside its limits"):
        hypotest(11.0, cost, "mu")
    with pytest.raises(InputError, match="level"):
        upper_limit(cost, "mu", level=1.5)
    with pytest.raises(InputError, match="cannot be combined"):
        hypotest(1.0, cost, "mu", calculator=AsymptoticCalculator(cost), test_stat="q")
    with pytest.raises(InputError, match="cl"):
        neyman_interval(_gauss_cost(), "mu", [0.0, 1.0], cl=-1, ntoys=5, executor="serial")
    with pytest.raises(InputError, match="two different POIs"):
        neyman_region_2d(_gauss_cost(), ("mu", "mu"), [0.0], [0.0], ntoys=5)
    # what was a TypeError / ValueError from float(), numpy or scipy deep inside
    for level in ("0.05", None):
        with pytest.raises(InputError, match="level must be a number"):
            upper_limit(cost, "mu", level=level)
    for mu in ("a", None, float("nan")):
        with pytest.raises(InputError, match="tested value of 'mu' must be a finite number"):
            hypotest(mu, cost, "mu")
    with pytest.raises(InputError, match="scan cannot be read as numbers"):
        upper_limit(cost, "mu", scan="abc")
    with pytest.raises(InputError, match="rtol must be a positive number"):
        upper_limit(cost, "mu", rtol=-1)
    with pytest.raises(ParameterError, match="must have lo < hi"):  # was "outside [5, 2]"
        hypotest(3.0, cost, "mu", limits={"mu": (5.0, 2.0)})


@pytest.mark.parametrize("module", ["teststats", "toys", "calculators", "intervals",
                                    "coverage", "parallel"])
def test_docstring_examples(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"egmm.infer.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0


def test_neyman_interval_with_batched_toys_equals_the_loop():
    """batched=True reaches toy_teststats: the same toys at every grid point give the same
    t_μ toy by toy (both fits at their minima to ~1e-5 in −2 ln L, see test_toys)."""
    cost = analytic_cost(mu=1.0, seed=31)
    grid = [0.6, 1.0, 1.4]
    kwargs = dict(ntoys=20, seed=4, executor="serial", track_progress=False)
    loop = neyman_interval(cost, "mu", grid, **kwargs)
    batched = neyman_interval(cost, "mu", grid, batched=True, batch_size=8, **kwargs)
    for a, b in zip(loop.toys, batched.toys):
        assert all(r["batched"] for r in b.records)
        np.testing.assert_allclose(b.values, a.values, atol=2e-3)
    np.testing.assert_array_equal(batched.observed, loop.observed)


def test_toy_cls_with_clb_zero_is_an_error():
    """An observed statistic beyond every background-only toy gives CLb = 0 and no CLs: an
    error that says to run more toys (it had returned CLs = nan)."""
    from iminuit.cost import NormalConstraint

    cost = NormalConstraint("mu", -4.0, 1.0)  # a 4σ deficit: q_obs = 9 at μ = 1
    with pytest.raises(EgmmError, match=r"beyond all 50 background-only toys; run more toys"):
        hypotest(1.0, cost, "mu", calctype="toybased", ntoys=50, executor="serial",
                 track_progress=False)


# ----------------------------------------------------------------------------------------------
# discrete statistics: toys that repeat the observed count tie with the observed statistic
# ----------------------------------------------------------------------------------------------
def _counting(s, b, n):
    """One bin, signal s·μ on a known background b, n observed (no nuisance parameter): the
    statistics take one value per count N."""
    pyhf.set_backend("numpy")
    spec = {"channels": [{"name": "c", "samples": [
        {"name": "sig", "data": [s], "modifiers": [{"name": "mu", "type": "normfactor",
                                                    "data": None}]},
        {"name": "bkg", "data": [b], "modifiers": []}]}]}
    return PyhfCost(pyhf.Model(spec, poi_name="mu"), [float(n)])


def _ttilde(n, mu, s, b, one_sided):
    """Exact t̃_μ (or q̃_μ when one_sided) of a count n: −2 ln λ with μ̂ ≥ 0."""
    def nll2(nu):
        return 2.0 * (nu - (n * math.log(nu) if n > 0 else 0.0))
    muhat = max((n - b) / s, 0.0)
    if one_sided and muhat > mu:
        return 0.0
    return max(nll2(mu * s + b) - nll2(muhat * s + b), 0.0)


def _toy_counts(cost, pars, seed, stream, ntoys):
    return [float(sample_toy(cost, pars, toy_seed(seed, stream, i)).data[0])
            for i in range(ntoys)]


def test_toy_pvalues_count_the_toys_that_repeat_the_observed_count():
    # before, fits put such toys 1e-14 to 2e-5 below the observed q̃ and every one of them was
    # left out: CLs+b 0.070 against the exact 0.1185 (s = 5, b = 10, n = 10, μ = 1)
    s, b, n, mu, ntoys = 5.0, 10.0, 10, 1.0, 150
    cost = _counting(s, b, n)
    calc = ToyCalculator(cost, "mu", ntoys=ntoys, seed=3, executor="serial",
                         track_progress=False)
    q_obs = calc.teststatistic(mu)
    assert q_obs == pytest.approx(_ttilde(n, mu, s, b, True), abs=1e-5)
    sb, bonly = calc.distributions(mu)
    exact_obs = _ttilde(n, mu, s, b, True)
    for dist, stream, at in ((sb, 0, mu), (bonly, 1, 0.0)):
        counts = _toy_counts(cost, calc.conditional_fit(at).values, 3, stream, ntoys)
        assert counts.count(n) > 5  # ties to count
        same_toys = np.mean([_ttilde(k, mu, s, b, True) >= exact_obs - 1e-12 for k in counts])
        assert dist.pvalue(q_obs) == same_toys  # the toys' own p-value, to the last toy


def test_feldman_cousins_counts_ties_on_a_poisson_count():
    # FC Table IV's case b = 3, n = 3: the p-value at each μ is the fraction of its toys with
    # t̃(N) ≥ t̃(n) (tied toys dropped had made the 90 % intervals too short: n = 2 gave
    # [0, 2.09] for the exact [0, 3.04])
    s, b, n, ntoys = 1.0, 3.0, 3, 100
    cost = _counting(s, b, n)
    grid = [1.0, 3.0]
    r = feldman_cousins(cost, "mu", grid, cl=0.9, ntoys=ntoys, seed=1, executor="serial",
                        track_progress=False)
    for k, mu in enumerate(grid):
        counts = _toy_counts(cost, {"mu": mu}, 1, 2, ntoys)  # (Neyman toys: stream 2)
        assert counts.count(n) > 3
        t_obs = _ttilde(n, mu, s, b, False)
        assert r.pvalue[k] == np.mean([_ttilde(c, mu, s, b, False) >= t_obs - 1e-12
                                       for c in counts])


def test_feldman_cousins_stays_on_the_physical_side():
    cost = _gauss_cost()
    # t̃ keeps μ̂ ≥ 0: a grid below 0 gave a lower end of −0.73 from the toys that did not fail
    with pytest.raises(InputError, match="defined for mu ≥ 0"):
        feldman_cousins(cost, "mu", [-1.5, 0.0, 1.0], ntoys=5, executor="serial")
    # a cl whose probability rounds to 1 accepted the whole grid
    with pytest.raises(InputError, match="rounds to 1"):
        feldman_cousins(cost, "mu", [0.0, 1.0], cl=40, ntoys=5, executor="serial")
    with pytest.raises(InputError, match="one-dimensional"):
        feldman_cousins(cost, "mu", [[0.0, 1.0], [2.0, 3.0]], ntoys=5, executor="serial")


def test_empirical_ties_leave_the_point_mass_at_zero_alone():
    d = EmpiricalDistribution([0.0, 0.0, 1.0 - 3e-5, 1.0, 2.0], tolerance=2e-4)
    assert d.pvalue(1.0) == 0.6  # 1 − 3e-5 ties with 1
    assert d.pvalue(0.0) == 1.0
    # an observed q̃ of 1e-4 (μ̂ just below μ) does not take in the toys clipped to 0
    assert d.pvalue(1e-4) == 0.6
    assert EmpiricalDistribution([0.0, 1.0]).pvalue(1.0 - 1e-9) == 0.5
    with pytest.raises(InputError, match="tolerance"):
        EmpiricalDistribution([1.0], tolerance=-1.0)


def test_tolerances_that_minuit_cannot_use_are_refused(simple):
    _, _, cost = simple
    for tol in (float("nan"), 0.0, -1.0, "1e-3"):
        with pytest.raises(InputError, match="tol must be"):
            ToyCalculator(cost, "mu", tol=tol)
        with pytest.raises(InputError, match="tol must be"):
            hypotest(1.0, cost, "mu", tol=tol)


def test_an_extended_cost_of_zero_events_gives_the_classic_limit():
    # n = 0 observed: the constructor refused it (only with_data took it), and its toys that
    # fluctuated to 0 events failed (with_data rebuilt them from the observed first event)
    from egmm.likelihood import Component, ExtendedUnbinnedNLL, TorchDensity, Yield
    from egmm.observables import Observable, ObservableSpace

    space = ObservableSpace([Observable("x", 0.0, 1.0)])

    def flat_sampler(n, theta, rng):
        return rng.uniform(0.0, 1.0, size=(n, 1))

    flat = TorchDensity(space, lambda x: torch.zeros(len(x), dtype=x.dtype),
                        sampler=flat_sampler)
    s, b = 3.0, 1.5
    cost = ExtendedUnbinnedNLL(np.zeros((0, 1)), [
        Component("sig", flat, Yield.parameter("mu") * s),
        Component("bkg", flat, Yield.constant(b))])
    assert cost.n_events == 0 and cost(0.5) == pytest.approx(2 * (0.5 * s + b))
    toys = [sample_toy(cost, {"mu": 0.0}, toy_seed(0, 0, i)) for i in range(30)]
    assert sum(t.n_events == 0 for t in toys) > 2  # P(0 | 1.5) = 0.22: such toys work
    twin = _counting(s, b, 0)  # the same likelihood as one pyhf bin
    obs, expected = upper_limit(cost, "mu")
    obs_p, expected_p = upper_limit(twin, "mu")
    assert obs == pytest.approx(obs_p, rel=1e-4)
    np.testing.assert_allclose(expected, expected_p, rtol=1e-4)
    with pytest.raises(InputError, match="empty"):  # a plain likelihood of nothing: none
        from egmm.likelihood import UnbinnedNLL
        UnbinnedNLL(np.zeros((0, 1)), flat)
