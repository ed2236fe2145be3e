"""Test statistics q0, qmu, qmu_tilde, tmu, tmu_tilde: exact values, pyhf, profile scans.

A Gaussian measurement μ̂ = x ± 1 (``NormalConstraint``) has closed forms: t_μ = (x − μ)²;
with μ̂ bounded at 0 and x < 0, t̃_μ = (x − μ)² − x². Fits converge to EDM < 2e-6, so values
agree to 1e-6.
"""

from __future__ import annotations

import numpy as np
import pyhf
import pytest
from iminuit.cost import NormalConstraint

from egmm.errors import InputError, ParameterError
from egmm.infer import (
    TEST_STATISTICS,
    TestStatFits,
    fit,
    profile,
    q0,
    qmu,
    qmu_tilde,
    tmu,
    tmu_tilde,
)
from egmm.infer.teststats import get_test_stat, profiled_start
from egmm.likelihood import PyhfCost
from test_toys import analytic_cost

pytestmark = pytest.mark.filterwarnings("ignore:jsonschema.RefResolver:DeprecationWarning")


def gauss(x: float) -> NormalConstraint:
    return NormalConstraint(["mu", "theta"], [x, 0.5], [1.0, 2.0])


@pytest.mark.parametrize("x", [-0.5, 0.4, 2.0])
@pytest.mark.parametrize("mu", [0.0, 1.0, 3.0])
def test_closed_forms_on_a_gaussian(x, mu):
    cost = gauss(x)
    t = (x - mu) ** 2
    t_tilde = t - x**2 if x < 0 else t
    assert tmu(mu, cost) == pytest.approx(t, abs=1e-6)
    assert tmu_tilde(mu, cost) == pytest.approx(t_tilde, abs=1e-6)
    assert qmu(mu, cost) == pytest.approx(0.0 if x > mu else t, abs=1e-6)
    assert qmu_tilde(mu, cost) == pytest.approx(0.0 if x > mu else t_tilde, abs=1e-6)
    assert q0(0.0, cost) == pytest.approx(x**2 if x >= 0 else 0.0, abs=1e-6)


def test_return_fits():
    value, fits = qmu_tilde(1.5, gauss(-0.5), "mu", return_fits=True)
    assert isinstance(fits, TestStatFits)
    conditional, unconditional = fits  # unpacks like pyhf's (mubhathat, muhatbhat)
    assert conditional.values["mu"] == 1.5 and "mu" in conditional.fixed
    assert unconditional.values["mu"] == pytest.approx(0.0, abs=1e-6)  # bounded at 0
    assert unconditional.values["theta"] == pytest.approx(0.5, abs=1e-5)
    assert value == pytest.approx(conditional.fval - unconditional.fval)
    # reusing the unconditional fit gives the same value
    assert qmu_tilde(2.0, gauss(-0.5), unconditional=unconditional) == pytest.approx(
        qmu_tilde(2.0, gauss(-0.5)), abs=1e-9)


@pytest.mark.parametrize("name", ["qtilde", "ttilde", "q0"])
def test_matches_pyhf(name):
    """pyhf's scipy fits and ours agree to ~1e-5 on the test statistic."""
    pyhf.set_backend("numpy")
    model = pyhf.simplemodels.uncorrelated_background([12.0, 11.0], [50.0, 52.0], [3.0, 7.0])
    data = [62.0, 48.0, *model.config.auxdata]
    cost = PyhfCost(model, data)
    init, bounds = model.config.suggested_init(), model.config.suggested_bounds()
    fixed = model.config.suggested_fixed()
    ref_fn = {"qtilde": pyhf.infer.test_statistics.qmu_tilde,
              "ttilde": pyhf.infer.test_statistics.tmu_tilde,
              "q0": pyhf.infer.test_statistics.q0}[name]
    for mu in ([0.0] if name == "q0" else [0.5, 1.0, 2.5]):
        ref = float(ref_fn(mu, data, model, init, bounds, fixed))
        assert get_test_stat(name)(mu, cost, "mu") == pytest.approx(ref, abs=2e-4)


def test_unbinned_tmu_is_the_profile_scan():
    """On an unbinned cost, t_μ equals the profile likelihood Δ(−2 ln L) of egmm.infer.profile
    (both minimise to EDM ~1e-6)."""
    cost = analytic_cost(mu=1.0, seed=3)
    scan = profile(cost, "mu", [0.5, 1.0, 1.8], global_fit=fit(cost, tol=1e-3))
    for mu, delta in zip(scan.grid, scan.delta):
        assert tmu(mu, cost) == pytest.approx(delta, abs=1e-4)


def correlated(m: list[float], cov: np.ndarray) -> NormalConstraint:
    return NormalConstraint(["mu", "a", "b"], m, cov)


COV = np.array([[1.0, 0.6, -0.3], [0.6, 2.0, 0.4], [-0.3, 0.4, 0.5]])


def test_profiled_start_is_the_conditional_minimum_of_a_gaussian():
    """For a Gaussian likelihood the profiled start is the conditional minimum itself and its
    errors the conditional ones, exactly: ν̂ + C_νμ/C_μμ (μ − μ̂), √(C_νν − C_νμ²/C_μμ)."""
    m = [0.4, -1.0, 2.0]
    cost = correlated(m, COV)
    lo, hi = np.full(3, -np.inf), np.full(3, np.inf)
    start, errors = profiled_start(np.array(m), COV, 0, 1.5, lo, hi)
    reference = fit(cost, {"mu": 1.5, "a": -1.0, "b": 2.0}, fixed=["mu"], tol=1e-5)
    np.testing.assert_allclose(start[1:], [reference.values["a"], reference.values["b"]],
                               atol=1e-4)
    assert start[0] == 1.5 and errors[0] == 0.0
    np.testing.assert_allclose(errors[1:], [reference.errors["a"], reference.errors["b"]],
                               rtol=1e-4)
    # two parameters fixed: ν̂ + C_νμ C_μμ⁻¹ (μ − μ̂), the conditional error likewise
    start2, errors2 = profiled_start(np.array(m), COV, [0, 1], [1.5, 0.0], lo, hi)
    reference2 = fit(cost, {"mu": 1.5, "a": 0.0, "b": 2.0}, fixed=["mu", "a"], tol=1e-5)
    assert start2[:2].tolist() == [1.5, 0.0] and errors2[:2].tolist() == [0.0, 0.0]
    assert start2[2] == pytest.approx(reference2.values["b"], abs=1e-4)
    assert errors2[2] == pytest.approx(reference2.errors["b"], rel=1e-4)
    # batched: (K, P) and (K, P, P); a toy without a usable covariance, and one whose shifted
    # point would leave the limits, start at ν̂ with unknown errors
    values = np.array([m, m, m])
    cov = np.stack([COV, np.full((3, 3), np.nan), COV])
    lo = np.array([-np.inf, -np.inf, -np.inf])
    hi = np.array([np.inf, np.inf, np.inf])
    mus = 1.5
    got, err = profiled_start(values, cov, 0, mus, lo, hi)
    np.testing.assert_array_equal(got[0], start)
    np.testing.assert_array_equal(got[1], [1.5, -1.0, 2.0])
    assert np.isnan(err[1, 1:]).all()
    tight = np.array([np.inf, np.inf, start[2] - 1e-3])  # b's shifted value lies above it
    got, err = profiled_start(values, cov, 0, mus, lo, tight)
    np.testing.assert_array_equal(got[2], [1.5, -1.0, 2.0])
    assert np.isnan(err[2, 1:]).all()
    # μ̂ less than one error inside the unconditional fit's limits of the POI: no shift (at a
    # limit the covariance does not describe the likelihood)
    got, err = profiled_start(values, cov, 0, mus, lo, hi, poi_limits=(0.0, np.inf))
    np.testing.assert_array_equal(got[0], [1.5, -1.0, 2.0])
    got, _ = profiled_start(values, cov, 0, mus, lo, hi, poi_limits=(-0.61, np.inf))
    np.testing.assert_array_equal(got[0], start)
    # μ 10 errors from μ̂: a's shift 0.6 · 10 = 6 exceeds 3 of its errors (4.24), so no shift;
    # at 7 errors (4.2) it is made
    far, err = profiled_start(np.array(m), COV, 0, 10.4, lo, hi)
    assert far.tolist() == [10.4, -1.0, 2.0] and np.isnan(err[1:]).all()
    near, _ = profiled_start(np.array(m), COV, 0, 7.4, lo, hi)
    assert near[1] == pytest.approx(-1.0 + 0.6 * 7.0)


def test_conditional_fits_start_at_the_profiled_point():
    """t_μ's conditional fit starts where the unconditional covariance puts its minimum, with
    the conditional errors as MIGRAD's first steps: the closed form on a Gaussian, and on an
    unbinned signal + background cost the same minima as fits from ν̂ in fewer calls."""
    m = [0.4, -1.0, 2.0]
    value, fits = tmu(2.0, correlated(m, COV), return_fits=True)
    assert value == pytest.approx((2.0 - 0.4) ** 2 / COV[0, 0], abs=1e-5)
    init = fits.conditional.minuit.init_params
    cov = fits.unconditional.covariance
    start, errors = profiled_start(np.array(list(fits.unconditional.values.values())), cov, 0,
                                   2.0, np.full(3, -np.inf), np.full(3, np.inf))
    assert [init[n].value for n in ("mu", "a", "b")] == start.tolist()
    assert [init[n].error for n in ("a", "b")] == errors[1:].tolist()
    calls = {"profiled": 0, "from the minimum": 0}
    for seed in range(4):
        cost = analytic_cost(mu=1.0, seed=seed)
        for mu in (0.3, 2.0):
            t, both = tmu(mu, cost, return_fits=True)
            plain = fit(cost, {"mu": mu, "n_b": both.unconditional.values["n_b"]},
                        fixed=["mu"], tol=1e-3, hesse=False, strategy=0)
            assert t == pytest.approx(plain.fval - both.unconditional.fval, abs=1e-5)
            calls["profiled"] += both.conditional.nfcn
            calls["from the minimum"] += plain.nfcn
    assert calls["profiled"] < calls["from the minimum"], calls


def two_modes(mu: float, nu: float) -> float:
    """−2 ln L with two modes: A, narrow in ν, at (0, −1) with 0; B, the global one, at
    (1, 1) with −0.5 (the lower of two quadratics: a kink between them)."""
    return min(25.0 * (nu + 1.0) ** 2 + 10.0 * mu**2,
               (nu - 1.0) ** 2 + (mu - 1.0) ** 2 - 0.5)


two_modes.errordef = 1.0  # type: ignore[attr-defined]


def test_a_conditional_minimum_in_another_mode_makes_the_unconditional_fit_look_there():
    """Started in mode A, the unconditional fit stays there (0 at (0, −1)); at μ = 0.8 the
    conditional fit falls into mode B (−0.46 at ν = 1), 2 ≫ 3 errors (0.6) away, so the
    unconditional fit is repeated from there and finds B's minimum (−0.5): t = 0.04, the
    profile ratio of the deepest minima, rather than −0.46 − 0 clipped to 0."""
    t, fits = tmu(0.8, two_modes, "mu", start={"mu": 0.0, "nu": -1.0}, return_fits=True)
    assert fits.conditional.values["nu"] == pytest.approx(1.0, abs=1e-3)
    assert fits.unconditional.fval == pytest.approx(-0.5, abs=1e-5)
    assert fits.unconditional.values["mu"] == pytest.approx(1.0, abs=1e-3)
    assert t == pytest.approx(0.04, abs=1e-5)
    # in one mode nothing is repeated: t from mode A's minima
    t_a, fits_a = tmu(0.1, two_modes, "mu", start={"mu": 0.0, "nu": -1.0}, return_fits=True)
    assert fits_a.unconditional.values["nu"] == pytest.approx(-1.0, abs=1e-3)
    assert t_a == pytest.approx(10.0 * 0.1**2, abs=1e-5)


def test_bad_input():
    cost = gauss(0.3)
    assert set(TEST_STATISTICS) == {"q0", "q", "qtilde", "t", "ttilde"}
    with pytest.raises(ParameterError, match=r"unknown parameter of interest 'nu'.*'theta'"):
        qmu_tilde(1.0, cost, "nu")
    with pytest.raises(ParameterError, match="'mu' is fixed"):
        tmu(1.0, cost, "mu", fixed=["mu"])
    with pytest.raises(ParameterError, match="outside its limits"):
        qmu(11.0, PyhfCost(pyhf.simplemodels.uncorrelated_background([5.0], [50.0], [7.0]),
                           [55.0]), "mu")
    with pytest.raises(ParameterError, match="must be a number"):
        tmu("a", cost)
    with pytest.raises(ParameterError, match="not finite"):
        tmu(np.nan, cost)
    with pytest.raises(InputError, match="unknown test statistic 'z'"):
        get_test_stat("z")
    with pytest.raises(InputError, match="iminuit cost"):
        tmu(1.0, object())


def test_free_fit_that_missed_its_minimum_is_refitted():
    """A global fit stuck in a shallower mode makes the conditional minimum the deeper one
    (Δ = −3.9): the free fit starts again from the conditional minimum, so t is the exact
    −2 ln λ (it had been clipped to 0); a given unconditional fit with the POI fixed is
    refused."""
    from scipy.optimize import minimize_scalar

    def cost(mu, b):  # a tilted double well in μ, the deeper mode at μ ≈ 2.1
        return b ** 2 + (mu ** 2 - 4.0) ** 2 / 4.0 - mu

    cost.errordef = 1.0
    shallow = fit(cost, start={"mu": -2.0, "b": 0.5})
    assert shallow.values["mu"] < 0
    t = tmu(2.0, cost, "mu", unconditional=shallow)
    best = minimize_scalar(lambda m: (m ** 2 - 4.0) ** 2 / 4.0 - m, bracket=(1.5, 2.5)).fun
    assert t == pytest.approx(cost(2.0, 0.0) - best, abs=1e-6)  # 0.0590
    with pytest.raises(ParameterError, match="'mu' fixed"):
        tmu(1.0, cost, "mu", unconditional=fit(cost, fixed={"mu": 3.0}))


def test_direct_statistic_warns_when_a_fit_is_not_valid(monkeypatch):
    """tmu & co. called directly warn when Minuit did not accept one of their fits (toy
    studies record this per toy instead)."""
    import dataclasses

    from egmm.infer import teststats

    cost = NormalConstraint(["mu", "b"], [0.0, 0.0], [1.0, 1.0])
    value, fits = teststats.evaluate("t", 1.0, cost, "mu")
    broken = teststats.TestStatFits(dataclasses.replace(fits.conditional, valid=False),
                                    fits.unconditional)
    monkeypatch.setattr(teststats, "evaluate", lambda *a, **k: (value, broken))
    with pytest.warns(RuntimeWarning, match="t at mu=1: the conditional fit is not valid"):
        assert tmu(1.0, cost, "mu") == value


def test_a_poi_that_is_the_only_free_parameter_gives_valid_fits():
    """With every other parameter fixed, the conditional fit has nothing to vary: its minimum
    is the cost at that point. MIGRAD reports such a fit with an EDM of ±fval (invalid for
    a negative −2 ln L), so every loop toy was marked invalid and the direct statistics
    warned; the batched path was right. Fits, profile scans and toys now agree, valid."""
    import warnings

    from egmm.infer import fit, profile, toy_teststats

    cost = analytic_cost(mu=1.0, n_b=1000.0, seed=3)
    fixed = {"n_b": 1000.0}
    assert cost(1.5, 1000.0) < 0  # a negative −2 ln L: where MIGRAD's verdict was False
    nothing = fit(cost, {"mu": 1.5, "n_b": 1000.0}, fixed=["mu", "n_b"])
    assert nothing.valid and nothing.fval == cost(1.5, 1000.0) and nothing.nfcn == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, fits = tmu(1.5, cost, "mu", fixed=fixed, return_fits=True)
    assert fits.conditional.valid and fits.unconditional.valid
    assert value == pytest.approx(fits.conditional.fval - fits.unconditional.fval, abs=1e-9)
    scan = profile(cost, "mu", [0.5, 1.5], fixed=fixed)
    assert scan.valid.all() and not scan.notes
    kwargs = dict(test_stat="t", ntoys=6, seed=5, executor="serial", progress=False,
                  fixed=fixed)
    pars = {"mu": 1.0, "n_b": 1000.0}
    loop = toy_teststats(cost, pars, "mu", 1.0, **kwargs)
    batched = toy_teststats(cost, pars, "mu", 1.0, batched=True, **kwargs)
    assert all(r["valid"] for r in loop.records) and all(r["valid"] for r in batched.records)
    np.testing.assert_allclose(loop.values, batched.values, atol=1e-5)
