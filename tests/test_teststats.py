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
from egmm.infer.teststats import get_test_stat
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
