"""Errors of fits to weighted events: the sandwich (asymptotic) covariance against the spread of
the estimates over toys, HESSE's curvature where weights count repeated events."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from iminuit.cost import NormalConstraint

from egmm import Component, ExtendedUnbinnedNLL, Observable, ObservableSpace, TorchDensity
from egmm.errors import InputError
from egmm.infer import fit
from egmm.infer.fit import asymptotic_covariance, weighted

LO, HI = 0.0, 10.0
SPACE = ObservableSpace([Observable("x", LO, HI)])


def _expo_log_prob(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    t = x[:, 0] - LO
    return torch.log(lam) - lam * t - torch.log(-torch.expm1(-lam * (HI - LO)))


def _expo_sample(n: int, lam: float, rng: np.random.Generator) -> np.ndarray:
    u = rng.uniform(size=n)
    return (LO - np.log1p(-u * -math.expm1(-lam * (HI - LO))) / lam)[:, None]


EXPO = TorchDensity(SPACE, _expo_log_prob, parameters=("lam",),
                    parameter_bounds={"lam": (0.01, 2.0)}, name="expo",
                    sampler=lambda n, th, rng: _expo_sample(n, th["lam"], rng))
LAM, NU = 0.3, 600.0


def _pulls(weight: float | None, method: str, n_toys: int, seed: int,
           variable: bool = False) -> np.ndarray:
    """Pulls (lam, n) of extended fits to toys whose events carry ``weight`` (None: no
    weights; ``variable``: weights drawn uniformly in [0.5, 1.5] · weight): the raw count is
    Poisson with mean ν / E[w], so that the weighted yield estimates ν."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n_toys):
        n = rng.poisson(NU / (weight or 1.0))
        x = _expo_sample(n, LAM, rng)
        w = None
        if weight is not None:
            w = (weight * rng.uniform(0.5, 1.5, size=n) if variable
                 else np.full(n, weight))
        cost = ExtendedUnbinnedNLL(x, [Component("bkg", EXPO, "n")], weights=w)
        res = fit(cost, {"lam": LAM, "n": NU}, weighted_errors=method)
        assert res.valid
        out.append([(res.values["lam"] - LAM) / res.errors["lam"],
                    (res.values["n"] - NU) / res.errors["n"]])
    return np.array(out)


# 200 toys: the standard deviation of 200 unit-normal pulls scatters by 1/√400 = 0.05; the
# bounds below are 3.5 of that (and HESSE's √2 for weights 2 is 8σ away from 1)
N_TOYS = 200
SPREAD = 3.5 / math.sqrt(2 * N_TOYS)


def test_asymptotic_errors_cover_weighted_events():
    """Every event weight 2 (a luminosity scaling): the asymptotic errors give unit pulls,
    HESSE's curvature √2 too narrow ones (an audit's finding: pull widths 1.46 and 1.33)."""
    asym = _pulls(2.0, "asymptotic", N_TOYS, seed=1)
    hesse = _pulls(2.0, "hesse", N_TOYS, seed=1)
    np.testing.assert_allclose(asym.std(axis=0), 1.0, atol=SPREAD)
    np.testing.assert_allclose(hesse.std(axis=0), math.sqrt(2.0), atol=SPREAD * math.sqrt(2))
    # the same minima, only the errors differ: by √2 for every weight 2 (up to the sampling
    # difference of observed and outer-product information, a few % at ~300 events)
    x = _expo_sample(300, LAM, np.random.default_rng(8))
    cost = ExtendedUnbinnedNLL(x, [Component("bkg", EXPO, "n")], weights=np.full(300, 2.0))
    a, h = fit(cost, weighted_errors="asymptotic"), fit(cost, weighted_errors="hesse")
    assert a.values == pytest.approx(h.values, rel=1e-12)
    assert (a.error_method, h.error_method) == ("asymptotic", "hesse")
    for n in ("lam", "n"):
        assert a.errors[n] / h.errors[n] == pytest.approx(math.sqrt(2.0), rel=0.1)


def test_asymptotic_errors_with_variable_weights():
    pulls = _pulls(1.0, "asymptotic", N_TOYS, seed=2, variable=True)
    np.testing.assert_allclose(pulls.std(axis=0), 1.0, atol=SPREAD)


def test_unweighted_and_unit_weights_keep_hesse():
    rng = np.random.default_rng(3)
    x = _expo_sample(500, LAM, rng)
    plain = fit(ExtendedUnbinnedNLL(x, [Component("bkg", EXPO, "n")]))
    ones = fit(ExtendedUnbinnedNLL(x, [Component("bkg", EXPO, "n")], weights=np.ones(500)))
    assert plain.error_method == ones.error_method == "hesse"
    assert plain.errors == pytest.approx(ones.errors, rel=1e-9)
    assert fit(ExtendedUnbinnedNLL(x, [Component("bkg", EXPO, "n")]),
               hesse=False).error_method == "migrad"


def test_sandwich_of_unit_weights_is_close_to_hesse():
    """With weights 1 the sandwich H⁻¹ (Σ s sᵀ) H⁻¹ and H⁻¹ differ only by the sampling
    difference of observed and outer-product information: O(1/√N) relative, a few % here."""
    rng = np.random.default_rng(4)
    x = _expo_sample(2000, LAM, rng)
    cost = ExtendedUnbinnedNLL(x, [Component("bkg", EXPO, "n")])
    res = fit(cost)
    cov = asymptotic_covariance(cost, res.values, res.covariance, [False, False])
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), np.sqrt(np.diag(res.covariance)),
                               rtol=0.1)


def test_constraint_enters_the_middle_of_the_sandwich():
    """A parameter measured only by a Gaussian constraint: no event depends on it, so D holds
    the constraint's V⁻¹ alone and the sandwich gives back the constraint's width exactly; a
    fixed parameter's row and column are 0."""
    rng = np.random.default_rng(5)
    x = _expo_sample(300, LAM, rng)
    w = np.full(300, 2.0)
    cost = (ExtendedUnbinnedNLL(x, [Component("bkg", EXPO, "n")], weights=w)
            + NormalConstraint("n", 600.0, 30.0) + NormalConstraint("b", 0.0, 0.7))
    res = fit(cost, {"lam": LAM, "n": 600.0, "b": 0.0})
    assert res.error_method == "asymptotic" and res.valid
    assert res.errors["b"] == pytest.approx(0.7, rel=1e-6)
    fixed = fit(cost, {"lam": LAM, "n": 600.0, "b": 0.0}, fixed=["n"])
    assert fixed.error_method == "asymptotic"
    assert fixed.covariance[1, 1] == 0.0 and fixed.covariance[0, 1] == 0.0
    assert fixed.errors["lam"] > 0


def test_weighted_predicate_and_bad_option():
    x = _expo_sample(10, LAM, np.random.default_rng(6))
    comps = [Component("bkg", EXPO, "n")]
    assert not weighted(ExtendedUnbinnedNLL(x, comps))
    assert not weighted(ExtendedUnbinnedNLL(x, comps, weights=np.ones(10)))
    assert weighted(ExtendedUnbinnedNLL(x, comps, weights=np.full(10, 0.5))
                    + NormalConstraint("n", 5.0, 1.0))
    with pytest.raises(InputError, match="weighted_errors"):
        fit(ExtendedUnbinnedNLL(x, comps), weighted_errors="sumw2")


def test_unsupported_structure_warns_and_keeps_hesse():
    """A numpy density has no θ gradient, so no per-event scores: HESSE's errors, said so."""
    rng = np.random.default_rng(7)
    x = _expo_sample(400, LAM, rng)

    def numpy_log_prob(xx: np.ndarray, lam: float) -> np.ndarray:
        return _expo_log_prob(torch.as_tensor(xx), torch.tensor(lam)).numpy()

    dens = TorchDensity.from_numpy(SPACE, numpy_log_prob, parameters=("lam",),
                                   parameter_bounds={"lam": (0.01, 2.0)}, log=True)
    cost = ExtendedUnbinnedNLL(x, [Component("bkg", dens, "n")], weights=np.full(400, 2.0))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = fit(cost, {"lam": LAM, "n": 800.0})
    assert res.error_method == "hesse"
    assert any("asymptotic errors need" in str(c.message) for c in caught)


def test_likelihood_regions_of_weighted_events_warn():
    x = _expo_sample(300, LAM, np.random.default_rng(9))
    cost = ExtendedUnbinnedNLL(x, [Component("bkg", EXPO, "n")], weights=np.full(300, 2.0))
    from egmm.infer import contour, profile

    with pytest.warns(UserWarning, match="events carry weights"):
        profile(cost, "lam", [0.25, 0.3, 0.35])
    with pytest.warns(UserWarning, match="events carry weights"):
        contour(cost, "lam", "n", cl=0.68, size=8, refine=False)


def test_batched_fits_give_the_same_asymptotic_errors():
    from egmm.infer import fit_batched

    rng = np.random.default_rng(10)
    costs = []
    for _ in range(6):
        n = rng.poisson(3000)
        costs.append(ExtendedUnbinnedNLL(_expo_sample(n, LAM, rng),
                                         [Component("bkg", EXPO, "n")],
                                         weights=rng.uniform(1.0, 3.0, size=n)))
    start = {"lam": LAM, "n": 6000.0}
    batched = fit_batched(costs, start, validate=False, tol=1e-8)
    curvature = fit_batched(costs, start, validate=False, tol=1e-8, weighted_errors="hesse")
    for k, cost in enumerate(costs):
        one = fit(cost, start, tol=1e-4)
        assert one.error_method == "asymptotic"
        # the outer-product curvature against HESSE's inside the sandwich: both estimate
        # the same matrix, each to ~CV(w s²)/√N ≈ 1.7/√3000 = 3 %, which enters twice
        np.testing.assert_allclose(batched.errors[k], [one.errors["lam"], one.errors["n"]],
                                   rtol=0.15)
    # the sandwich widens the curvature's errors by about √(E[w²]/E[w]) = 1.04 here
    assert np.all(batched.errors > curvature.errors)


def test_a_parameter_on_its_limit_keeps_a_finite_asymptotic_error():
    """A yield fitted onto its limit 0: Minuit's covariance has no row left there (an audit:
    error 1.8e-8, valid, silent). Its error is then the one-parameter sandwich √D_jj / H_jj
    (outer-product curvature): for every weight 2 exactly twice the unweighted one-parameter
    error 1/√Σ(p_s/λ)² of the raw events (the yield counts weighted events); the others keep
    the sandwich of HESSE's covariance, √2 HESSE's."""
    rng = np.random.default_rng(11)
    x = _expo_sample(400, LAM, rng)
    flat = TorchDensity(SPACE, lambda xx: torch.full_like(xx[:, 0], -math.log(HI - LO)),
                        name="flat")
    cost = ExtendedUnbinnedNLL(x, [Component("bkg", EXPO, "n"), Component("sig", flat, "s")],
                               weights=np.full(400, 2.0))
    res = fit(cost, {"lam": LAM, "n": 800.0, "s": 0.0})
    hesse = fit(cost, {"lam": LAM, "n": 800.0, "s": 0.0}, weighted_errors="hesse")
    assert res.values["s"] == pytest.approx(0.0, abs=1e-3) and res.fmin["has_parameters_at_limit"]
    assert res.error_method == "asymptotic"
    for n in ("lam", "n"):
        assert res.errors[n] / hesse.errors[n] == pytest.approx(math.sqrt(2.0), rel=0.25)
    lam_x = res.values["n"] / 2.0 * np.exp(_expo_log_prob(torch.as_tensor(x),
                                                           torch.tensor(res.values["lam"]))
                                          .numpy())  # λ of the raw events at the minimum
    one_parameter = 1.0 / math.sqrt(np.sum((1.0 / (HI - LO) / lam_x) ** 2))
    assert res.errors["s"] == pytest.approx(2.0 * one_parameter, rel=1e-6)


def test_toys_and_coverage_of_weighted_costs_warn():
    from egmm.infer import coverage, toy_teststats

    x = _expo_sample(300, LAM, np.random.default_rng(12))
    cost = ExtendedUnbinnedNLL(x, [Component("bkg", EXPO, "n")], weights=np.full(300, 2.0))
    with pytest.warns(UserWarning, match="toys are drawn from the model as unweighted"):
        toy_teststats(cost, {"lam": LAM, "n": 600.0}, "n", 600.0, test_stat="t", ntoys=2,
                      executor="serial", progress=False)
    def factory(events):
        return ExtendedUnbinnedNLL(events, [Component("bkg", EXPO, "n")],
                                   weights=np.full(len(events), 2.0))
    with pytest.warns(UserWarning, match="coverage: the events carry weights"):
        coverage(EXPO, factory, {"lam": LAM}, n_events=100, ntoys=2, seed=0,
                 executor="serial", progress=False)
