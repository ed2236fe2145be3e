"""PyhfCost: a pyhf model as an iminuit cost, alone and combined with unbinned terms."""

from __future__ import annotations

import math

import numpy as np
import pyhf
import pytest
import torch
from iminuit.cost import NormalConstraint
from iminuit.util import describe

from egmm.errors import InputError, ParameterError
from egmm.infer import fit, start_values
from egmm.infer.fit import parameter_limits
from egmm.likelihood import Component, ExtendedUnbinnedNLL, PyhfCost, TorchDensity, Yield
from egmm.observables import Observable, ObservableSpace

pytestmark = pytest.mark.filterwarnings("ignore:jsonschema.RefResolver:DeprecationWarning")


SPEC = {
    "channels": [{"name": "ch", "samples": [
        {"name": "signal", "data": [5.0, 10.0], "modifiers": [
            {"name": "mu", "type": "normfactor", "data": None},
            {"name": "lumi", "type": "lumi", "data": None}]},
        {"name": "bkg", "data": [50.0, 60.0], "modifiers": [
            {"name": "bkg_norm", "type": "normsys", "data": {"hi": 1.1, "lo": 0.9}},
            {"name": "stat", "type": "staterror", "data": [3.0, 4.0]}]},
    ]}],
    "observations": [{"name": "ch", "data": [57, 72]}],
    "measurements": [{"name": "meas", "config": {"poi": "mu", "parameters": [
        {"name": "lumi", "auxdata": [1.0], "sigmas": [0.02], "inits": [1.0],
         "bounds": [[0.9, 1.1]], "fixed": True}]}}],
    "version": "1.0.0",
}


@pytest.fixture(scope="module")
def workspace():
    ws = pyhf.Workspace(SPEC)
    model = ws.model()
    return model, ws.data(model)


def test_parameters_limits_init_and_fixed(workspace):
    model, data = workspace
    cost = PyhfCost(model, data)
    assert describe(cost) == ["lumi", "mu", "bkg_norm", "stat[0]", "stat[1]"]
    assert cost._parameters["mu"] == (0.0, 10.0)
    assert cost._parameters["stat[1]"] == (1e-10, 10.0)
    assert cost.fixed_parameters == ("lumi",)
    assert cost.init_values() == {"lumi": 1.0, "mu": 1.0, "bkg_norm": 0.0, "stat[0]": 1.0,
                                  "stat[1]": 1.0}
    assert cost.poi == "mu" and cost.errordef == 1 and cost.ndata == 2
    assert not cost.has_grad
    assert "fixed=['lumi']" in repr(cost)


def test_value_is_twice_pyhf_nll(workspace):
    model, data = workspace
    cost = PyhfCost(model, data)
    rng = np.random.default_rng(0)
    for _ in range(5):
        pars = np.array([1.0, rng.uniform(0, 3), rng.normal(), *rng.uniform(0.8, 1.2, 2)])
        assert cost(*pars) == pytest.approx(-2 * model.logpdf(pars, data)[0], rel=1e-14)
    # the main data alone: the model's auxiliary data is appended
    main_only = PyhfCost(model, data[: model.config.nmaindata])
    np.testing.assert_array_equal(main_only.data, np.asarray(data))


def test_fit_reproduces_pyhf_mle(workspace):
    model, data = workspace
    best, twice_nll = pyhf.infer.mle.fit(data, model, return_fitted_val=True)
    res = fit(PyhfCost(model, data), tol=1e-4)
    assert res.valid and res.fixed == ("lumi",)
    # same objective at pyhf's point, exactly
    assert PyhfCost(model, data)(*best) == pytest.approx(float(twice_nll), rel=1e-12)
    # both minimisers converge to EDM ~1e-7: −2 ln L agrees to 1e-6, the parameters to well
    # within 1 % of their errors (the likelihood is shallow: σ(mu) ≈ 1)
    assert res.fval == pytest.approx(float(twice_nll), abs=1e-6)
    for name, value in zip(res.parameters, best):
        assert res.values[name] == pytest.approx(value, abs=0.01 * max(res.errors[name], 1e-3))


def test_bad_data_and_parameters(workspace):
    model, data = workspace
    with pytest.raises(InputError, match="expected 2 main \\+ 4 auxiliary"):
        PyhfCost(model, [1.0, 2.0, 3.0])
    with pytest.raises(InputError, match=r"main bin 1 is -1.0"):
        PyhfCost(model, [1.0, -1.0])
    with pytest.raises(InputError, match="main bin 0 is nan"):
        PyhfCost(model, [np.nan, 1.0])
    with pytest.raises(InputError, match=r"pyhf.Model"):
        PyhfCost(object(), data)
    cost = PyhfCost(model, data)
    with pytest.raises(ParameterError, match="'mu' is nan"):
        cost(1.0, np.nan, 0.0, 1.0, 1.0)
    with pytest.raises(ParameterError, match="expected 5 parameters"):
        cost(1.0, 1.0)


def test_unbinned_plus_constraint_plus_pyhf_in_one_fit(workspace):
    model, data = workspace
    space = ObservableSpace([Observable("m", 0.0, 1.0)])

    def peak(x, width):  # a normal peak at 0.5, truncated to [0, 1]
        z = (x[:, 0] - 0.5) / width
        norm = torch.special.ndtr(0.5 / width) - torch.special.ndtr(-0.5 / width)
        return -0.5 * z**2 - torch.log(width * math.sqrt(2 * math.pi) * norm)

    sig = TorchDensity(space, peak, ("width",), {"width": (0.01, 0.5)})
    flat = TorchDensity(space, lambda x: torch.zeros(len(x), dtype=x.dtype))
    rng = np.random.default_rng(1)
    events = np.concatenate([np.clip(rng.normal(0.5, 0.05, 60), 0, 1), rng.uniform(0, 1, 700)])
    # the unbinned channel expects 50 signal events at mu = 1, shared with pyhf's POI
    nll = ExtendedUnbinnedNLL(events, [Component("sig", sig, Yield.parameter("mu") * 50.0),
                                       Component("bkg", flat, "n_bkg")])
    pyhf_cost = PyhfCost(model, data)
    total = nll + NormalConstraint("n_bkg", 690.0, 30.0) + pyhf_cost
    assert describe(total) == ["width", "mu", "n_bkg", "lumi", "bkg_norm", "stat[0]",
                               "stat[1]"]
    start = start_values(total)
    assert start["n_bkg"] == 690.0 and start["lumi"] == 1.0  # constraint centre, pyhf init
    res = fit(total)
    assert res.valid and "lumi" in res.fixed and not res.retries
    v = res.values
    parts = (nll(v["width"], v["mu"], v["n_bkg"]) + ((v["n_bkg"] - 690.0) / 30.0) ** 2
             + pyhf_cost(*[v[n] for n in describe(pyhf_cost)]))
    assert res.fval == pytest.approx(parts, rel=1e-12)
    # mu is driven by the unbinned channel (≈ 60/50 signal events) and pulled by the binned
    # one (≈ 1.2): both agree, the combined error is below the unbinned one alone
    alone = fit(nll + NormalConstraint("n_bkg", 690.0, 30.0))
    assert res.values["mu"] == pytest.approx(1.2, abs=3 * res.errors["mu"])
    assert res.errors["mu"] < alone.errors["mu"]


def test_a_shared_parameter_gets_the_intersection_of_the_terms_limits():
    # a peak's mean "mu" trained on (4.5, 6) and a pyhf POI "mu" on [0, 10] that pulls it
    # down: iminuit's CostSum keeps the first term's limits, so with the pyhf term first
    # egmm.infer.fit had started at pyhf's init 1 (outside the density's range) and MIGRAD
    # stepped out of it; the fit now intersects the limits, whatever the order
    space = ObservableSpace([Observable("m", 0.0, 10.0)])

    def peak(x, mu):
        z = x[:, 0] - mu
        norm = torch.special.ndtr(10.0 - mu) - torch.special.ndtr(-mu)
        return -0.5 * z**2 - torch.log(math.sqrt(2 * math.pi) * norm)

    dens = TorchDensity(space, peak, ("mu",), {"mu": (4.5, 6.0)})
    events = np.random.default_rng(2).normal(5.0, 1.0, 300).clip(0.01, 9.99)
    nll = ExtendedUnbinnedNLL(events, [Component("s", dens, "ns")])
    spec = {"channels": [{"name": "cr", "samples": [
        {"name": "sig", "data": [50.0, 100.0],
         "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
        {"name": "bkg", "data": [50.0, 60.0], "modifiers": []}]}]}
    binned = PyhfCost(pyhf.Model(spec, poi_name="mu"), [50.0, 60.0])  # wants mu → 0
    results = []
    for total in (nll + binned, binned + nll):
        assert parameter_limits(total)["mu"] == (4.5, 6.0)
        res = fit(total)
        assert res.valid and res.minuit.limits["mu"] == (4.5, 6.0)
        results.append(res)
    assert results[1].values["mu"] == pytest.approx(results[0].values["mu"], abs=1e-3)
    assert results[1].fval == pytest.approx(results[0].fval, abs=1e-6)


def test_negative_auxiliary_data_of_gaussian_constraints(workspace):
    # a Gaussian constraint's auxiliary datum measures its parameter and may be negative (a
    # normsys measured at α = −0.7); the cost is still exactly pyhf's logpdf. A Poisson
    # constraint's (shapesys) is a count and must be ≥ 0.
    model, data = workspace
    aux = np.array(data[model.config.nmaindata:], dtype=float)
    order = model.config.auxdata_order
    i = sum(model.config.param_set(n).n_parameters for n in order[:order.index("bkg_norm")])
    aux[i] = -0.7
    full = np.concatenate([data[:model.config.nmaindata], aux])
    cost = PyhfCost(model, full)
    args = [cost.init_values()[n] for n in describe(cost)]
    expected = -2.0 * float(model.logpdf(cost.pyhf_parameters(args), full)[0])
    assert cost(*args) == pytest.approx(expected, rel=1e-12)
    shapesys = pyhf.simplemodels.uncorrelated_background([5.0, 10.0], [50.0, 60.0], [5.0, 12.0])
    bad = [50.0, 60.0, 100.0, -1.0]  # main counts, then the two shapesys aux counts
    with pytest.raises(InputError, match=r"auxiliary datum 1 \(of a Poisson constraint\) is -1"):
        PyhfCost(shapesys, bad)
