"""Exact Hessians: costs' exact_hessian against finite differences of the exact gradient, which
densities offer one, sums with constraints, and Minuit fits that use it (iminuit ≥ 2.32)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from iminuit.cost import NormalConstraint
from scipy import stats

from egmm import GMMDensity, LatentProjection, Observable, ObservableSpace
from egmm.errors import EgmmError, InputError
from egmm.infer import contour, exact_hessian, fit, profile
from egmm.infer.fit import _MINUIT_TAKES_HESSIAN, make_minuit
from egmm.likelihood import (
    Component,
    CrossSection,
    ExtendedUnbinnedNLL,
    TorchDensity,
    UnbinnedNLL,
)
from helpers import SMALL

SPACE = ObservableSpace([Observable("x", -5.0, 5.0)])
needs_hessian = pytest.mark.skipif(not _MINUIT_TAKES_HESSIAN,
                                   reason="iminuit < 2.32 takes no user Hessian")


def _gauss(x, mu, sigma):
    z = (x[:, 0] - mu) / sigma
    mass = torch.special.ndtr((5.0 - mu) / sigma) - torch.special.ndtr((-5.0 - mu) / sigma)
    return -0.5 * z * z - torch.log(sigma) - 0.5 * math.log(2 * math.pi) - torch.log(mass)


SIGNAL = TorchDensity(SPACE, _gauss, ("mu", "sigma"), {"mu": (-2.0, 2.0), "sigma": (0.2, 3.0)})
FLAT = TorchDensity(SPACE, lambda x: torch.full((len(x),), -math.log(10.0), dtype=x.dtype))


def _data(seed=1):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(0.3, 1.1, 300), rng.uniform(-5.0, 5.0, 200)])


def _extended(x, **kwargs):
    return ExtendedUnbinnedNLL(x, [Component("s", SIGNAL, "ns"), Component("b", FLAT, "nb")],
                               **kwargs)


def _finite_difference(cost, p, eps=1e-5):
    rows = [(cost.grad(*(p + eps * e)) - cost.grad(*(p - eps * e))) / (2 * eps)
            for e in np.eye(len(p))]
    return np.array(rows)


def test_exact_hessian_equals_finite_differences_of_the_gradient():
    x = _data()
    w = np.random.default_rng(2).uniform(0.5, 1.5, len(x))
    p = np.array([0.2, 1.0, 290.0, 210.0])
    for cost in (_extended(x), _extended(x, weights=w), _extended(x, chunk_size=37)):
        assert cost.has_exact_hessian
        h = cost.exact_hessian(*p)
        np.testing.assert_allclose(h, h.T)
        # central differences of the float64 gradient: error ~ eps² · f''' ≈ 1e-8 relative
        np.testing.assert_allclose(h, _finite_difference(cost, p), rtol=1e-6,
                                   atol=1e-6 * np.abs(h).max())
    # chunking does not change the sum beyond rounding; an array argument works too
    np.testing.assert_allclose(_extended(x, chunk_size=37).exact_hessian(p),
                               _extended(x).exact_hessian(*p), rtol=1e-10)
    # the mixture of Eq. 15 (shape only) with a cross-section ratio
    xsec = CrossSection.quadratic([[-1.0], [0.0], [1.0]], [2.0, 1.0, 2.0], [0.1, 0.1, 0.1],
                                  parameters=("mu",))
    mix = UnbinnedNLL(x, [Component("s", SIGNAL, xsec), Component("b", FLAT, 1.0)])
    q = np.array([0.4, 1.2])
    np.testing.assert_allclose(mix.exact_hessian(*q), _finite_difference(mix, q), rtol=1e-6,
                               atol=1e-6 * np.abs(mix.exact_hessian(*q)).max())


def test_which_costs_offer_an_exact_hessian():
    x = _data()
    # numpy densities have no gradient, linear interpolation has kinks: none; cubic: yes
    numpy_sig = TorchDensity.from_numpy(SPACE, lambda x, mu: stats.norm.logpdf(x[:, 0], mu),
                                        ("mu",), {"mu": (-2.0, 2.0)})
    assert not UnbinnedNLL(x, numpy_sig).has_exact_hessian
    with pytest.raises(InputError, match="no θ gradient"):
        UnbinnedNLL(x, numpy_sig, hessian=True)
    with pytest.raises(InputError, match="hessian must be"):
        UnbinnedNLL(x, SIGNAL, hessian="yes")
    kinked = TorchDensity(SPACE, _gauss, ("mu", "sigma"), {"mu": (-2.0, 2.0),
                                                           "sigma": (0.2, 3.0)}, smooth=False)
    assert not UnbinnedNLL(x, kinked).has_exact_hessian
    assert UnbinnedNLL(x, kinked, hessian=True).has_exact_hessian  # the caller vouches
    assert not UnbinnedNLL(x, SIGNAL, hessian=False).has_exact_hessian
    # a cost made for other data (every toy is) keeps the choice: it had fallen back to the
    # default both ways
    assert not UnbinnedNLL(x, SIGNAL, hessian=False).with_data(x[:50]).has_exact_hessian
    assert UnbinnedNLL(x, kinked, hessian=True).with_data(x[:50]).has_exact_hessian
    with pytest.raises(EgmmError, match="no exact Hessian"):
        UnbinnedNLL(x, SIGNAL, hessian=False).exact_hessian(0.0, 1.0)
    points, values = [[-1.0], [0.0], [1.0]], [2.0, 1.0, 2.0]
    for kind, smooth in (("linear", False), ("cubic", True)):
        xs = CrossSection.interpolate(points, values, parameters=("mu",), kind=kind)
        cost = ExtendedUnbinnedNLL(x, [Component("s", SIGNAL, xs * 100.0),
                                       Component("b", FLAT, "nb")])
        assert cost.has_exact_hessian is smooth
    # GMMDensity: LeakyReLU networks are piecewise linear in θ, SiLU ones smooth
    space = ObservableSpace([Observable("a", 0.0, 1.0), Observable("b", 0.0, 1.0)])
    u = np.random.default_rng(0).uniform(0.05, 0.95, (200, 2))
    proj = LatentProjection.fit(space, u)
    for activation, smooth in (("leaky_relu", False), ("silu", True)):
        torch.manual_seed(0)
        model = GMMDensity(space, ["c"], proj, parameter_bounds={"c": (-1.0, 1.0)},
                           activation=activation, **SMALL)
        assert model.smooth is smooth
        assert UnbinnedNLL(u, model).has_exact_hessian is smooth
    # the SiLU model's Hessian is its curvature
    cost = UnbinnedNLL(u, model)
    h = cost.exact_hessian(0.3)
    np.testing.assert_allclose(h, _finite_difference(cost, np.array([0.3])), rtol=1e-5)


def test_exact_hessian_of_sums():
    x = _data()
    cost = _extended(x)
    p = np.array([0.2, 1.0, 290.0, 210.0])
    total = cost + NormalConstraint("sigma", 1.0, 0.1) + NormalConstraint(
        ["mu", "nb"], [0.0, 200.0], [[0.04, 0.1], [0.1, 400.0]])
    h = exact_hessian(total)(*p)
    expected = cost.exact_hessian(*p)
    expected[1, 1] += 2.0 / 0.01
    cov_inv = np.linalg.inv([[0.04, 0.1], [0.1, 400.0]])
    expected[np.ix_([0, 3], [0, 3])] += 2.0 * cov_inv
    np.testing.assert_allclose(h, expected, rtol=1e-12)
    np.testing.assert_allclose(h, _finite_difference(total, p), rtol=1e-6,
                               atol=1e-6 * np.abs(h).max())
    # a part without one: no Hessian for the sum
    kinked = ExtendedUnbinnedNLL(x, [Component("s", SIGNAL, "ns"), Component("b", FLAT, "nb")],
                                 hessian=False)
    assert exact_hessian(kinked + NormalConstraint("sigma", 1.0, 0.1)) is None


@needs_hessian
def test_fits_with_the_exact_hessian_agree_with_finite_difference_hesse():
    """Same minimum (within the EDM goal) and the same errors as numerical HESSE (within its
    ~1e-3 accuracy), in a fraction of the calls; also with parameters fixed and for MINOS."""
    x = _data()
    exact, plain = _extended(x), _extended(x, hessian=False)
    a, b = fit(exact, tol=1e-4), fit(plain, tol=1e-4)
    assert a.valid and b.valid and a.nhessian > 0 and b.nhessian == 0
    assert a.nfcn + a.ngrad < (b.nfcn + b.ngrad) / 3
    for n in a.parameters:
        assert a.values[n] == pytest.approx(b.values[n], abs=0.01 * b.errors[n])
        assert a.errors[n] == pytest.approx(b.errors[n], rel=2e-3)
    assert a.fval == pytest.approx(b.fval, abs=1e-5)
    # fixed parameters (iminuit 2.32-2.33 read the user's matrix for the free ones in the
    # top-left block; make_minuit lays it out accordingly)
    fixed = {"mu": 0.25, "sigma": 1.05}
    c, d = fit(exact, fixed=fixed, tol=1e-4), fit(plain, fixed=fixed, tol=1e-4)
    assert c.nhessian > 0
    for n in ("ns", "nb"):
        assert c.errors[n] == pytest.approx(d.errors[n], rel=2e-3)
    assert c.fval == pytest.approx(d.fval, abs=1e-5)
    # MINOS on the Minuit of a Hessian fit
    a.minuit.minos("mu")
    b.minuit.minos("mu")
    assert a.minuit.merrors["mu"].lower == pytest.approx(b.minuit.merrors["mu"].lower,
                                                         rel=2e-3)


@needs_hessian
def test_minimum_on_a_limit_falls_back_to_finite_differences():
    """μ ≥ 0 with the measurement at −0.5: the minimum lies on the limit, where the
    Hessian-seeded MIGRAD of iminuit 2.32–2.33 is unreliable; fits from inside, and from the
    limit itself, end on it and are valid."""
    cost = NormalConstraint(["mu", "b"], [-0.5, 0.0], [1.0, 1.0])
    for start in (0.5, 2.0, 0.0):
        r = fit(cost, start={"mu": start}, limits={"mu": (0.0, None)})
        assert r.valid
        assert r.values["mu"] == pytest.approx(0.0, abs=1e-3)
        assert r.fval == pytest.approx(0.25, abs=2e-4)
    assert not make_minuit(cost, {"mu": 0.0}, limits={"mu": (0.0, None)}).hessian


@needs_hessian
def test_profile_and_contour_with_the_exact_hessian_match_finite_differences():
    x = _data()
    exact, plain = _extended(x), _extended(x, hessian=False)
    gx, gp = fit(exact, tol=1e-4), fit(plain, tol=1e-4)
    grid = gx.values["mu"] + gx.errors["mu"] * np.array([-2.0, -1.0, 0.5, 1.5])
    px = profile(exact, "mu", grid, global_fit=gx)
    pp = profile(plain, "mu", grid, global_fit=gp)
    assert px.valid.all()
    np.testing.assert_allclose(px.delta, pp.delta, atol=2e-4)
    cx = contour(exact, "mu", "sigma", cl=0.6827, size=12, global_fit=gx)[0.6827]
    cp = contour(plain, "mu", "sigma", cl=0.6827, size=12, global_fit=gp)[0.6827]
    radius = np.hypot(*(cx - np.array([gx.values["mu"], gx.values["sigma"]])).T)
    assert np.all(radius > 0)
    # both polygons lie on the same level curve: compare their areas (the points differ)
    def area(p):
        return 0.5 * abs(np.dot(p[:-1, 0], p[1:, 1]) - np.dot(p[1:, 0], p[:-1, 1]))
    assert area(cx) == pytest.approx(area(cp), rel=0.02)
