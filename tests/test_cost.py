"""UnbinnedNLL / ExtendedUnbinnedNLL against iminuit's own costs on an analytic model.

Model on x ∈ [0, 10]: a truncated Gaussian signal (μ, σ) and a truncated exponential
background (λ), with yields. The same pdfs are given to iminuit as scipy functions, so both
costs compute the same function: values agree to rounding (1e-10 relative), and Minuit run
without the torch gradient follows the same path to the same minimum and errors (1e-6).
"""

from __future__ import annotations

import math
import warnings

import hist
import numpy as np
import pytest
import torch
from iminuit import Minuit
from iminuit import cost as icost
from scipy import stats

from egmm.errors import EgmmError, InputError, ParameterError
from egmm.likelihood import (
    Component,
    CrossSection,
    ExtendedUnbinnedNLL,
    HistTemplate,
    TorchDensity,
    UnbinnedNLL,
    Yield,
)
from egmm.observables import Observable, ObservableSpace

A, B = 0.0, 10.0
SPACE = ObservableSpace([Observable("x", A, B)])
TRUTH = {"mu": 5.0, "sigma": 0.5, "n_sig": 300.0, "lam": 0.3, "n_bkg": 700.0}
LIMITS = {"mu": (2.0, 8.0), "sigma": (0.1, 3.0), "lam": (0.01, 2.0)}


def signal_log_prob(x, mu, sigma):
    z = (x[:, 0] - mu) / sigma
    norm = torch.special.ndtr((B - mu) / sigma) - torch.special.ndtr((A - mu) / sigma)
    return -0.5 * z**2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi) - torch.log(norm)


def background_log_prob(x, lam):
    return torch.log(lam) - lam * x[:, 0] - torch.log1p(-torch.exp(-lam * B))


def signal_pdf(x, mu, sigma):
    return stats.truncnorm.pdf(x, (A - mu) / sigma, (B - mu) / sigma, loc=mu, scale=sigma)


def background_pdf(x, lam):
    return stats.truncexpon.pdf(x, b=B * lam, scale=1 / lam)


def signal(**kw):
    return TorchDensity(SPACE, signal_log_prob, ("mu", "sigma"),
                        {k: LIMITS[k] for k in ("mu", "sigma")}, name="signal", **kw)


def background():
    return TorchDensity(SPACE, background_log_prob, ("lam",), {"lam": LIMITS["lam"]},
                        name="background")


def components():
    return [Component("sig", signal(), "n_sig"), Component("bkg", background(), "n_bkg")]


def sample(seed=1, n_sig=300, n_bkg=700):
    rng = np.random.default_rng(seed)
    xs = stats.truncnorm.rvs(-10, 10, loc=5.0, scale=0.5, size=n_sig, random_state=rng)
    xb = stats.truncexpon.rvs(b=3.0, scale=1 / 0.3, size=n_bkg, random_state=rng)
    return np.concatenate([xs, xb])


def reference_extended(x):
    def density(x, mu, sigma, n_sig, lam, n_bkg):
        return n_sig + n_bkg, n_sig * signal_pdf(x, mu, sigma) + n_bkg * background_pdf(x, lam)

    return icost.ExtendedUnbinnedNLL(x, density)


def minuit(cost, start, tol=None, **kw):
    m = Minuit(cost, **{n: v for n, v in start.items() if n in cost._parameters}, **kw)
    if tol is not None:
        m.tol = tol
    for name, lim in LIMITS.items():
        if name in m.parameters:
            m.limits[name] = lim
    for name in ("n_sig", "n_bkg"):
        if name in m.parameters:
            m.limits[name] = (0, None)
    return m


START = {"mu": 4.8, "sigma": 0.7, "n_sig": 250.0, "lam": 0.4, "n_bkg": 800.0}
POINTS = [TRUTH, START, {"mu": 2.5, "sigma": 2.0, "n_sig": 1.0, "lam": 1.5, "n_bkg": 50.0}]


# -- agreement with iminuit -------------------------------------------------------------------
def test_extended_matches_iminuit_values_fit_and_errors():
    x = sample()
    nll = ExtendedUnbinnedNLL(x, components())
    ref = reference_extended(x)
    assert list(nll._parameters) == ["mu", "sigma", "n_sig", "lam", "n_bkg"]
    assert nll.errordef == 1 and nll.ndata == np.inf
    for p in POINTS:
        args = [p[n] for n in nll._parameters]
        assert nll(*args) == pytest.approx(ref(*args), rel=1e-10)
    # without the torch gradient Minuit sees the same numbers and takes the same path
    # (errors: HESSE's second differences amplify the ~1e-13 rounding differences of the two
    # costs to ~1e-7 relative)
    m = minuit(nll, START, grad=False).migrad().hesse()
    r = minuit(ref, START).migrad().hesse()
    assert m.valid and r.valid
    for n in nll._parameters:
        assert m.values[n] == pytest.approx(r.values[n], rel=1e-6)
        assert m.errors[n] == pytest.approx(r.errors[n], rel=1e-6)
    assert m.fval == pytest.approx(r.fval, rel=1e-10)
    # Δ(−2 ln L) away from the minimum
    for p in POINTS:
        args = [p[n] for n in nll._parameters]
        assert nll(*args) - m.fval == pytest.approx(ref(*args) - r.fval, rel=1e-6)
    # with the gradient: the same minimum within Minuit's convergence (EDM < 2e-7 at
    # tol=1e-4, i.e. parameters within ~1e-3 of their errors)
    g = minuit(nll, START, tol=1e-4).migrad().hesse()
    t = minuit(ref, START, tol=1e-4).migrad().hesse()
    assert g.valid and t.valid
    for n in nll._parameters:
        assert g.values[n] == pytest.approx(t.values[n], abs=2e-3 * t.errors[n])
        assert g.errors[n] == pytest.approx(t.errors[n], rel=1e-3)


def test_unbinned_matches_iminuit():
    x = sample(seed=2, n_bkg=0)
    nll = UnbinnedNLL(x, signal())
    ref = icost.UnbinnedNLL(x, signal_pdf)
    assert list(nll._parameters) == ["mu", "sigma"]
    for mu, sigma in [(5.0, 0.5), (4.0, 2.0), (7.5, 0.2)]:
        assert nll(mu, sigma) == pytest.approx(ref(mu, sigma), rel=1e-10)
    m = minuit(nll, {"mu": 4.8, "sigma": 0.7}, grad=False).migrad().hesse()
    r = minuit(ref, {"mu": 4.8, "sigma": 0.7}).migrad().hesse()
    for n in ("mu", "sigma"):
        assert m.values[n] == pytest.approx(r.values[n], rel=1e-6)
        assert m.errors[n] == pytest.approx(r.errors[n], rel=1e-6)
    assert nll(4.9, 0.55) - m.fval == pytest.approx(ref(4.9, 0.55) - r.fval, rel=1e-6)


@pytest.mark.parametrize("extended", [True, False])
def test_integer_weights_equal_repeated_events(extended):
    x = sample(seed=3)
    w = np.random.default_rng(4).integers(0, 4, len(x)).astype(float)
    repeated = np.repeat(x, w.astype(int))
    if extended:
        weighted = ExtendedUnbinnedNLL(x, components(), weights=w)
        plain = ExtendedUnbinnedNLL(repeated, components())
        ref = reference_extended(repeated)
    else:
        weighted = UnbinnedNLL(x, signal(), weights=w)
        plain = UnbinnedNLL(repeated, signal())
        ref = icost.UnbinnedNLL(repeated, signal_pdf)
    assert weighted.sum_weights == pytest.approx(len(repeated))
    for p in POINTS:
        args = [p[n] for n in weighted._parameters]
        assert weighted(*args) == pytest.approx(plain(*args), rel=1e-10)
        assert weighted(*args) == pytest.approx(ref(*args), rel=1e-10)
        np.testing.assert_allclose(weighted.grad(*args), plain.grad(*args), rtol=1e-9)
    # hence the same weighted MLE and errors as iminuit's cost on the repeated events
    m = minuit(weighted, START, grad=False).migrad().hesse()
    r = minuit(ref, START).migrad().hesse()
    assert m.valid and r.valid
    for n in weighted._parameters:
        assert m.values[n] == pytest.approx(r.values[n], rel=1e-6)
        assert m.errors[n] == pytest.approx(r.errors[n], rel=1e-6)


def test_nonextended_mixture_is_paper_eq15():
    x = sample(seed=5)
    mix = UnbinnedNLL(x, [Component("sig", signal(), "n_sig"),
                          Component("bkg", background(), 700.0)])
    assert list(mix._parameters) == ["mu", "sigma", "n_sig", "lam"]

    def fraction_pdf(x, mu, sigma, n_sig, lam):
        f = n_sig / (n_sig + 700.0)
        return f * signal_pdf(x, mu, sigma) + (1 - f) * background_pdf(x, lam)

    ref = icost.UnbinnedNLL(x, fraction_pdf)
    for p in POINTS:
        args = [p[n] for n in mix._parameters]
        assert mix(*args) == pytest.approx(ref(*args), rel=1e-10)
    m = minuit(mix, START).migrad()
    assert m.valid
    # the signal fraction n_sig / (n_sig + 700) is estimated: 300 of 1000 events, ±0.02
    assert m.values["n_sig"] == pytest.approx(300, abs=5 * 25)


# -- gradient --------------------------------------------------------------------------------
@pytest.mark.parametrize("chunk_size", [None, 97])
def test_gradient_matches_finite_differences(chunk_size):
    x = sample(seed=6)
    kw = {} if chunk_size is None else {"chunk_size": chunk_size}
    w = np.random.default_rng(7).uniform(0.5, 1.5, len(x))
    yields = CrossSection.quadratic([0.0, 1.0, 2.0], [1.0, 2.0, 5.0], parameters=("mu",)) * 20.0
    cost = ExtendedUnbinnedNLL(x, [Component("sig", signal(), yields),
                                   Component("bkg", background(), "n_bkg")], weights=w, **kw)
    assert cost.has_grad
    args = np.array([5.1, 0.6, 0.35, 650.0])
    g = cost.grad(*args)
    for i in range(len(args)):
        h = 1e-5 * max(1.0, abs(args[i]))
        up, down = args.copy(), args.copy()
        up[i] += h
        down[i] -= h
        # central differences: truncation O(h²) and rounding ~1e-16·|f|/h ≈ 1e-7 here
        fd = (cost(*up) - cost(*down)) / (2 * h)
        assert g[i] == pytest.approx(fd, rel=1e-5, abs=1e-4)


def test_chunked_evaluation_equals_single_pass():
    x = sample(seed=8)
    one = ExtendedUnbinnedNLL(x, components())
    many = ExtendedUnbinnedNLL(x, components(), chunk_size=64)
    args = [TRUTH[n] for n in one._parameters]
    assert many(*args) == pytest.approx(one(*args), rel=1e-12)
    np.testing.assert_allclose(many.grad(*args), one.grad(*args), rtol=1e-10)


def test_minuit_uses_the_gradient():
    x = sample(seed=9)
    nll = ExtendedUnbinnedNLL(x, components())
    with_grad = minuit(nll, START).migrad()
    without = minuit(nll, START, grad=False).migrad()
    assert with_grad.valid and without.valid
    assert with_grad.ngrad > 0 and without.ngrad == 0
    assert with_grad.nfcn < without.nfcn


def test_value_and_gradient_share_one_forward_pass():
    calls = []

    def counted(x, lam):
        calls.append(1)
        return background_log_prob(x, lam)

    dens = TorchDensity(SPACE, counted, ("lam",), {"lam": LIMITS["lam"]})
    cost = ExtendedUnbinnedNLL(sample(seed=10), [Component("b", dens, "n")])
    v = cost(0.3, 1000.0)
    g = cost.grad(0.3, 1000.0)
    assert len(calls) == 1
    assert cost(0.3, 1000.0) == v and np.array_equal(cost.grad(0.3, 1000.0), g)
    assert len(calls) == 1
    cost.grad(0.31, 1000.0)  # a new point: one pass for both
    cost(0.31, 1000.0)
    assert len(calls) == 2


def test_numpy_density_falls_back_to_numerical_gradient():
    x = sample(seed=11)
    numpy_signal = TorchDensity.from_numpy(SPACE, lambda x, mu, sigma: signal_pdf(x[:, 0], mu,
                                                                                  sigma),
                                           ("mu", "sigma"), {k: LIMITS[k] for k in LIMITS
                                                             if k != "lam"}, log=False)
    cost = ExtendedUnbinnedNLL(x, [Component("sig", numpy_signal, "n_sig"),
                                   Component("bkg", background(), "n_bkg")])
    assert not cost.has_grad
    ref = ExtendedUnbinnedNLL(x, components())
    args = [START[n] for n in cost._parameters]
    assert cost(*args) == pytest.approx(ref(*args), rel=1e-10)
    with pytest.raises(EgmmError, match="'sig'"):
        cost.grad(*args)
    m = minuit(cost, START).migrad()
    assert m.valid and m.ngrad == 0


# -- composition -----------------------------------------------------------------------------
def test_costs_add_with_iminuit_costs_and_share_parameters():
    a = ExtendedUnbinnedNLL(sample(seed=12), components())
    b = ExtendedUnbinnedNLL(sample(seed=13, n_sig=100, n_bkg=300),
                            [Component("sig", signal(), "n_sig_2"),
                             Component("bkg", background(), "n_bkg_2")])
    total = a + b + icost.NormalConstraint("lam", 0.3, 0.01)
    assert list(total._parameters) == ["mu", "sigma", "n_sig", "lam", "n_bkg", "n_sig_2",
                                       "n_bkg_2"]
    assert total._parameters["mu"] == LIMITS["mu"]
    vals = dict(START, n_sig_2=100.0, n_bkg_2=300.0)
    args = [vals[n] for n in total._parameters]
    expected = (a(*[vals[n] for n in a._parameters]) + b(*[vals[n] for n in b._parameters])
                + ((vals["lam"] - 0.3) / 0.01) ** 2)
    assert total(*args) == pytest.approx(expected, rel=1e-12)
    m = Minuit(total, **vals).migrad()
    assert m.valid and m.ngrad > 0
    assert m.values["mu"] == pytest.approx(5.0, abs=0.2)


def test_hist_template_background_component():
    h = hist.Hist.new.Reg(20, A, B, name="x").Double()
    rng = np.random.default_rng(14)
    h.fill(stats.truncexpon.rvs(b=3.0, scale=1 / 0.3, size=100000, random_state=rng))
    template = HistTemplate(h, SPACE, name="bkg template")
    x = sample(seed=15)
    cost = ExtendedUnbinnedNLL(x, [Component("sig", signal(), "n_sig"),
                                   Component("bkg", template, "n_bkg")])
    widths = np.diff(h.axes[0].edges)
    p_bkg = (h.values() / h.values().sum() / widths)[h.axes[0].index(x)]
    expected = 2 * (1000.0 - np.sum(np.log(300 * signal_pdf(x, 5.0, 0.5) + 700 * p_bkg)))
    assert cost(5.0, 0.5, 300.0, 700.0) == pytest.approx(expected, rel=1e-10)
    assert "bkg template" in repr(cost)


# -- fixed shapes: θ only in the yields ---------------------------------------------------------
def fixed_shapes(extended: bool, weights=None, x=None):
    """Signal and background at fixed shapes, yields a parameter, a function of μ and a
    constant: the closed-form path (every density θ-independent)."""
    x = sample(seed=21) if x is None else x
    f64 = torch.float64
    sig = TorchDensity(SPACE, lambda x: signal_log_prob(x, torch.tensor(5.0, dtype=f64),
                                                        torch.tensor(0.5, dtype=f64)),
                       name="sig")
    bkg = TorchDensity(SPACE, lambda x: background_log_prob(x, torch.tensor(0.3, dtype=f64)),
                       name="bkg")
    comps = [Component("sig", sig, Yield.from_callable(lambda mu: 300.0 * mu + 20.0 * mu**2,
                                                         ("mu",), {"mu": (0.0, 5.0)})),
             Component("bkg", bkg, "n_bkg"), Component("flat", bkg, Yield.constant(40.0))]
    cls = ExtendedUnbinnedNLL if extended else UnbinnedNLL
    return cls(x, comps, weights=weights)


@pytest.mark.parametrize("extended", [True, False])
@pytest.mark.parametrize("weighted", [False, True])
def test_fixed_shapes_take_the_closed_form_path(extended, weighted):
    """θ-independent densities with free, functional and constant yields: values, gradients
    and exact Hessians from the closed form equal iminuit's own cost and the general
    autograd path (forced by dropping the precomputed shapes) to rounding."""
    x = sample(seed=21)
    w = np.random.default_rng(4).uniform(0.5, 1.5, len(x)) if weighted else None
    cost = fixed_shapes(extended, w, x)
    assert cost._shapes is not None
    general = fixed_shapes(extended, w, x)
    general._shapes = None

    def density(x, mu, n_bkg):
        nu = np.array([300.0 * mu + 20.0 * mu**2, n_bkg, 40.0])
        p = np.stack([signal_pdf(x, 5.0, 0.5), background_pdf(x, 0.3),
                      background_pdf(x, 0.3)])
        return nu.sum(), nu @ p

    def ref(mu, n_bkg):  # iminuit's costs take no event weights: written out
        total, lam = density(x, mu, n_bkg)
        ll = np.log(lam) if extended else np.log(lam / total)
        return 2.0 * total * extended - 2.0 * (ll.sum() if w is None else w @ ll)

    if not weighted:
        imin = (icost.ExtendedUnbinnedNLL(x, density) if extended else
                icost.UnbinnedNLL(x, lambda x, mu, n_bkg: density(x, mu, n_bkg)[1]
                                  / density(x, mu, n_bkg)[0]))
        assert imin(1.0, 700.0) == pytest.approx(ref(1.0, 700.0), rel=1e-12)
    for p in ([1.0, 700.0], [0.2, 950.0], [2.5, 300.0]):
        assert cost(*p) == pytest.approx(ref(*p), rel=1e-10)
        assert cost(*p) == pytest.approx(general(*p), rel=1e-12)
        np.testing.assert_allclose(cost.grad(p), general.grad(p), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(cost.exact_hessian(*p), general.exact_hessian(*p),
                                   rtol=1e-9, atol=1e-12)
    # the same fit
    m = Minuit(cost, mu=0.8, n_bkg=600.0)
    m.limits = [(0.0, 5.0), (0.0, None)]
    r = Minuit(ref, mu=0.8, n_bkg=600.0)
    r.limits = [(0.0, 5.0), (0.0, None)]
    m.migrad(), r.migrad()
    assert m.valid and r.valid
    for n in ("mu", "n_bkg"):
        assert m.values[n] == pytest.approx(r.values[n], abs=2e-2 * r.errors[n])


def test_fixed_shapes_refuse_zero_yields():
    cost = fixed_shapes(True)
    with pytest.raises(ParameterError, match=r"yield .* = -1\.0"):
        cost._shapes.evaluate(cost, np.array([0.0, -1.0]), 0)
    zero = ExtendedUnbinnedNLL(sample(seed=2), [
        Component("sig", TorchDensity(SPACE, lambda x: torch.full((len(x),), -math.log(B)),
                                      name="flat"), "n_a"),
        Component("bkg", TorchDensity(SPACE, lambda x: torch.full((len(x),), -math.log(B)),
                                      name="flat2"), "n_b")])
    with pytest.raises(ParameterError, match="Σ ν_c p_c is zero"):
        zero(0.0, 0.0)


# -- bad input -------------------------------------------------------------------------------
def test_bad_data_is_refused():
    with pytest.raises(InputError, match="'x' is nan in row 2"):
        ExtendedUnbinnedNLL([1.0, 2.0, np.nan], components())
    with pytest.raises(InputError, match=r"'x' = 11.0 in row 1 lies outside"):
        UnbinnedNLL([1.0, 11.0], signal())
    with pytest.raises(InputError, match="empty"):
        UnbinnedNLL(np.zeros((0, 1)), signal())
    with pytest.raises(InputError, match=r"weights must have shape \(3,\)"):
        UnbinnedNLL([1.0, 2.0, 3.0], signal(), weights=[1.0, 2.0])
    with pytest.raises(InputError, match="event 1 has weight nan"):
        UnbinnedNLL([1.0, 2.0, 3.0], signal(), weights=[1.0, np.nan, 1.0])
    with pytest.raises(InputError, match="unique"):
        ExtendedUnbinnedNLL([1.0], [Component("a", signal(), 1.0), Component("a", signal(), 1.0)])
    other = TorchDensity(ObservableSpace([Observable("y", 0, 1)]), lambda x: x[:, 0] * 0)
    with pytest.raises(InputError, match="component 'b' has observables"):
        ExtendedUnbinnedNLL([1.0], [Component("a", signal(), 1.0), Component("b", other, 1.0)])
    narrow = TorchDensity(ObservableSpace([Observable("x", 0, 5)]), lambda x: x[:, 0] * 0 - 5)
    with pytest.raises(InputError, match=r"component 'b'.*'x' = 6.0 in row 1"):
        ExtendedUnbinnedNLL([1.0, 6.0], [Component("a", signal(), 1.0),
                                         Component("b", narrow, 1.0)])
    with pytest.raises(InputError, match="list of Component"):
        ExtendedUnbinnedNLL([1.0], signal())


def test_zero_probability_events_are_refused():
    h = hist.Hist.new.Reg(10, A, B, name="x").Double().fill([0.5, 1.5, 2.5, 9.5])
    template = HistTemplate(h, SPACE)
    with pytest.raises(InputError, match=r"component 'bkg': event 1 \(x=5\.5\) in bin "
                                         r"\(x ∈ \[5, 6\)\).*zero probability"):
        ExtendedUnbinnedNLL([0.7, 5.5], [Component("sig", signal(), "n_sig"),
                                         Component("bkg", template, "n_bkg")])

    def window(x, cut):  # zero density above a θ-dependent cut
        inside = x[:, 0] < cut
        return torch.where(inside, -torch.log(cut), torch.full_like(x[:, 0], -math.inf))

    dens = TorchDensity(SPACE, window, ("cut",), {"cut": (1.0, 10.0)})
    cost = ExtendedUnbinnedNLL([0.5, 2.0, 3.0], [Component("w", dens, "n")])
    assert np.isfinite(cost(5.0, 3.0))
    with pytest.raises(InputError, match=r"component 'w': event 1 \(x=2\).*cut=1\.5"):
        cost(1.5, 3.0)
    nan_dens = TorchDensity(SPACE, lambda x, a: x[:, 0] * torch.nan * a, ("a",), name="nan")
    with pytest.raises(InputError, match="'nan': log p = nan for event 0"):
        UnbinnedNLL([1.0], nan_dens)(1.0)


def test_parameter_checks():
    cost = ExtendedUnbinnedNLL(sample(seed=16), components())
    with pytest.raises(ParameterError, match=r"'mu' = 9.0 lies outside its range.*allow_"):
        cost(9.0, 0.5, 300.0, 0.3, 700.0)
    # a yield's range: allow_outside does not widen it, so the message does not suggest it
    with pytest.raises(ParameterError, match=r"'n_bkg' = -1.0 .* of the yield of 'bkg' \(keep"):
        cost(5.0, 0.5, 300.0, 0.3, -1.0)
    with pytest.raises(ParameterError, match="'sigma' is nan"):
        cost(5.0, np.nan, 300.0, 0.3, 700.0)
    with pytest.raises(ParameterError, match="'n_sig' is inf"):  # within [0, ∞], not finite
        cost(5.0, 0.5, math.inf, 0.3, 700.0)
    with pytest.raises(ParameterError, match="expected 5 parameters"):
        cost(5.0, 0.5)
    # an ulp beyond a limit (Minuit's bounded transform) is put back on the limit
    assert np.isfinite(cost(np.nextafter(8.0, 9.0), 0.5, 300.0, 0.3, 700.0))
    # σ(c) = (1 − c)² − 0.5 is negative at c = 1
    xs = CrossSection.quadratic([0.0, 1.0, 2.0], [1.0, 0.0, 1.0], parameters=("c",)) + (-0.5)
    cost = ExtendedUnbinnedNLL(sample(seed=16), [Component("sig", signal(), xs)])
    with pytest.raises(ParameterError, match=r"component 'sig': yield .* = -0.4999"):
        cost(5.0, 0.5, 1.0)


def test_allow_outside_drops_theta_limits_but_keeps_yields_positive():
    x = sample(seed=17)
    cost = ExtendedUnbinnedNLL(x, components(), allow_outside=True)
    assert cost._parameters["mu"] is None
    assert cost._parameters["n_sig"] == (0.0, math.inf)
    assert np.isfinite(cost(9.0, 0.5, 300.0, 0.3, 700.0))
    assert cost.init_values()["mu"] == pytest.approx(5.0)


def test_init_values_and_repr():
    cost = ExtendedUnbinnedNLL(sample(seed=18), components())
    assert cost.init_values() == {"mu": 5.0, "sigma": 1.55, "n_sig": 500.0, "lam": 1.005,
                                  "n_bkg": 500.0}
    text = repr(cost)
    assert "1000 events" in text and "sig:" in text and "Yield.parameter('n_bkg')" in text


def test_read_only_weights_are_copied_without_a_warning():
    """pandas' copy-on-write columns arrive as read-only arrays: used as they are, torch would
    warn about non-writable memory; the cost copies them, with the same value."""
    x = sample(seed=3)
    w = np.random.default_rng(4).uniform(0.5, 2.0, len(x))
    frozen = w.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cost = UnbinnedNLL(x, signal(), weights=frozen)
    args = [POINTS[0][n] for n in cost._parameters]
    assert cost(*args) == UnbinnedNLL(x, signal(), weights=w)(*args)


@pytest.mark.parametrize("extended", [True, False])
def test_visualize_draws_data_and_expected_counts_for_minuit(extended):
    """Minuit.visualize() draws through the cost: the data histogram and the model's expected
    counts per bin, whose integral is the expected total (ν_sig + ν_bkg extended, N else);
    one curve per component; multi-observable costs are pointed to plot_marginals."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    x = sample()
    cost = (ExtendedUnbinnedNLL(x, components()) if extended
            else UnbinnedNLL(x, components()))
    values = [TRUTH[n] for n in cost._parameters]
    m = Minuit(cost, *values)
    plt.figure()
    m.visualize()
    ax = plt.gca()
    data = ax.containers[0]  # the errorbar: counts per bin
    counts = np.asarray(data.lines[0].get_ydata())
    assert counts.sum() == len(x) and len(counts) == 50
    band = ax.collections[-1].get_paths()[0].vertices  # the model's total, filled
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert {"sig", "bkg"} <= set(lines)
    total = lines["sig"].get_ydata() + lines["bkg"].get_ydata()
    width = (B - A) / 50
    expected = TRUTH["n_sig"] + TRUTH["n_bkg"] if extended else len(x)
    xm = lines["sig"].get_xdata()  # midpoints of 200 equal cells
    np.testing.assert_allclose(xm, A + (np.arange(200) + 0.5) * (B - A) / 200)
    integral = total.sum() * ((B - A) / 200) / width
    assert integral == pytest.approx(expected, rel=2e-3)  # the midpoint rule's error
    assert band[:, 1].max() == pytest.approx(total.max())
    plt.close("all")
    two = ObservableSpace([Observable("x", A, B), Observable("y", 0, 1)])
    flat = TorchDensity(two, lambda x: torch.zeros(len(x), dtype=x.dtype) - math.log(B - A))
    with pytest.raises(InputError, match="plot_marginals"):
        UnbinnedNLL(np.c_[x, np.full(len(x), 0.5)], flat).visualize([])
