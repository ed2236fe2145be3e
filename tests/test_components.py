"""Densities, yields and cross sections of egmm.likelihood.components, against exact answers."""

from __future__ import annotations

import math

import hist
import numpy as np
import pytest
import torch
from scipy import stats

from egmm.errors import EgmmError, InputError, ParameterError
from egmm.likelihood import Component, CrossSection, HistTemplate, TorchDensity, Yield
from egmm.observables import Observable, ObservableSpace

SPACE = ObservableSpace([Observable("x", -math.inf, math.inf)])


def gauss_log_prob(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    z = (x[:, 0] - mu) / sigma
    return -0.5 * z**2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)


def gauss() -> TorchDensity:
    return TorchDensity(SPACE, gauss_log_prob, ("mu", "sigma"),
                        {"mu": (-5.0, 5.0), "sigma": (0.1, 10.0)}, name="gauss")


# -- TorchDensity ----------------------------------------------------------------------------
def test_torch_density_matches_scipy_and_is_differentiable():
    x = np.linspace(-3, 3, 7)
    d = gauss()
    np.testing.assert_allclose(d.log_prob(x, {"mu": 0.5, "sigma": 1.5}),
                               stats.norm.logpdf(x, 0.5, 1.5), rtol=1e-13)
    theta = torch.tensor([0.5, 1.5], dtype=torch.float64, requires_grad=True)
    d.log_prob_tensor(torch.as_tensor(x[:, None]), theta).sum().backward()
    # d/dμ Σ log N = Σ (x − μ)/σ²
    assert theta.grad[0].item() == pytest.approx(np.sum(x - 0.5) / 1.5**2, rel=1e-12)
    # one θ per event (N, P)
    per_event = np.column_stack([x, np.full_like(x, 2.0)])
    np.testing.assert_allclose(d.log_prob(x, per_event), stats.norm.logpdf(x, x, 2.0), rtol=1e-13)


def test_torch_density_from_numpy_has_no_gradient():
    d = TorchDensity.from_numpy(SPACE, lambda x, mu: stats.norm.pdf(x[:, 0], mu), ("mu",),
                                log=False, name="scipy gauss")
    assert d.differentiable is False
    assert "no θ gradient" in repr(d)
    np.testing.assert_allclose(d.log_prob([0.0, 1.0], {"mu": 0.0}), stats.norm.logpdf([0, 1]))


def test_torch_density_bad_inputs():
    with pytest.raises(InputError, match="unknown parameters"):
        TorchDensity(SPACE, gauss_log_prob, ("mu",), {"nu": (0, 1)})
    with pytest.raises(InputError, match="lo < hi"):
        TorchDensity(SPACE, gauss_log_prob, ("mu",), {"mu": (1, 0)})
    with pytest.raises(InputError, match="duplicate"):
        TorchDensity(SPACE, gauss_log_prob, ("mu", "mu"))
    d = gauss()
    with pytest.raises(ParameterError, match=r"'mu'.*outside"):
        d.log_prob([0.0], {"mu": 7.0, "sigma": 1.0})
    with pytest.raises(ParameterError, match="unknown"):
        d.log_prob([0.0], {"mu": 0.0, "sigma": 1.0, "tau": 1.0})
    bad_shape = TorchDensity(SPACE, lambda x: torch.zeros(len(x), 2), name="bad")
    with pytest.raises(InputError, match=r"'bad'.*shape"):
        bad_shape.log_prob([0.0, 1.0])
    # a model that gives NaN (here: log of a negative "pdf") is an error, not a NaN result
    negative = TorchDensity(SPACE, lambda x: torch.log(x[:, 0] - 0.5), name="negative")
    with pytest.raises(EgmmError, match=r"log_prob is NaN for 1 of 3 events, the first in row 0"):
        negative.log_prob([0.0, 1.0, 2.0])
    assert negative.log_prob([0.5])[0] == -np.inf  # a zero density stays -inf


def test_torch_density_sampler():
    d = gauss()
    with pytest.raises(InputError, match="'gauss' has no sampler"):
        d.sample(10, {"mu": 0.0, "sigma": 1.0})
    comp = Component("sig", d, 10.0)
    with pytest.raises(InputError, match=r"component 'sig'.*no sampler"):
        comp.sample(10, {"mu": 0.0, "sigma": 1.0})

    def sampler(n, theta, rng):
        return rng.normal(theta["mu"], theta["sigma"], size=(n, 1))

    d = TorchDensity(SPACE, gauss_log_prob, ("mu", "sigma"), sampler=sampler)
    a = d.sample(2000, {"mu": 1.0, "sigma": 2.0}, seed=3)
    b = d.sample(2000, {"mu": 1.0, "sigma": 2.0}, seed=3)
    np.testing.assert_array_equal(a, b)
    # mean of 2000 draws: standard error 2/√2000 = 0.045, 5σ band
    assert a.mean() == pytest.approx(1.0, abs=0.23)


# -- HistTemplate ----------------------------------------------------------------------------
def make_hist_2d() -> hist.Hist:
    h = hist.Hist(hist.axis.Regular(4, 0.0, 2.0, name="y"),
                  hist.axis.Variable([0.0, 1.0, 3.0], name="x"), storage=hist.storage.Weight())
    rng = np.random.default_rng(0)
    h.fill(y=rng.uniform(0, 2, 500), x=rng.uniform(0, 3, 500), weight=rng.uniform(0.5, 1.5, 500))
    return h


def test_hist_template_density_is_normalised_and_matches_contents():
    h = make_hist_2d()
    space = ObservableSpace([Observable("x", 0.0, 3.0), Observable("y", 0.0, 2.0)])
    t = HistTemplate(h, space)  # axes matched by name: histogram order is (y, x)
    xc, yc = np.meshgrid([0.5, 2.0], np.arange(4) * 0.5 + 0.25, indexing="ij")
    events = np.column_stack([xc.ravel(), yc.ravel()])
    p = np.exp(t.log_prob(events))
    values = h.values().T  # (x, y)
    volume = np.outer([1.0, 2.0], np.full(4, 0.5))
    np.testing.assert_allclose(p, (values / values.sum() / volume).ravel(), rtol=1e-12)
    assert np.sum(p * volume.ravel()) == pytest.approx(1.0, rel=1e-12)
    # the upper edge belongs to the last bin (closed observable bounds)
    assert np.exp(t.log_prob([[3.0, 2.0]]))[0] == pytest.approx(p[-1], rel=1e-12)


def test_hist_template_space_from_axes_and_discrete():
    h = hist.Hist(hist.axis.Integer(0, 4, name="njet"))
    h.fill(njet=[0, 1, 1, 2, 2, 2, 3, 3, 3, 3])
    t = HistTemplate(h)
    assert t.space["njet"].discrete and t.space["njet"].hi == 3
    np.testing.assert_allclose(np.exp(t.log_prob([0, 1, 2, 3])), [0.1, 0.2, 0.3, 0.4])
    s = t.sample(20000, seed=1)
    freq = np.bincount(s[:, 0].astype(int), minlength=4) / 20000
    # binomial standard error ≤ 0.0035: 5σ band
    np.testing.assert_allclose(freq, [0.1, 0.2, 0.3, 0.4], atol=0.018)


def test_hist_template_sampling_follows_contents():
    h = make_hist_2d()
    t = HistTemplate(h)
    s = t.sample(50000, seed=2)
    assert t.space.names == ("y", "x")
    counts, _, _ = np.histogram2d(s[:, 0], s[:, 1], bins=[h.axes[0].edges, h.axes[1].edges])
    expected = h.values() / h.values().sum() * 50000
    chi2 = np.sum((counts - expected) ** 2 / expected)
    assert chi2 < stats.chi2.ppf(0.9999, counts.size - 1)
    np.testing.assert_array_equal(s, t.sample(50000, seed=2))


def test_analytic_samplers_take_every_seed_the_models_take():
    """HistTemplate and TorchDensity check seeds as the trained models do (they had passed
    them to numpy, which refused torch generators and 1e6 with its own errors)."""
    def sampler(n, theta, rng):
        return rng.normal(theta["mu"], theta["sigma"], size=(n, 1))

    d = TorchDensity(SPACE, gauss_log_prob, ("mu", "sigma"), sampler=sampler)
    t = HistTemplate(make_hist_2d())
    for draw in (lambda seed: d.sample(5, {"mu": 0.0, "sigma": 1.0}, seed=seed),
                 lambda seed: t.sample(5, seed=seed)):
        np.testing.assert_array_equal(draw(1e6), draw(1_000_000))
        np.testing.assert_array_equal(draw(torch.Generator().manual_seed(4)),
                                      draw(torch.Generator().manual_seed(4)))
        for bad in (-1, 2.5, "a"):
            with pytest.raises(InputError, match="sample: seed must be"):
                draw(bad)


def test_hist_template_from_arrays_and_root_histograms():
    """(counts, edges) as numpy and uproot's to_numpy() give them, and ROOT histograms (their
    to_hist() axes are "xaxis", "yaxis") with the axes renamed: the same template as from a
    named hist.Hist (an audit: these had been refused, while iminuit takes (n, xe))."""
    h = make_hist_2d()  # axes (y, x)
    space = ObservableSpace([Observable("x", 0.0, 3.0), Observable("y", 0.0, 2.0)])
    ref = HistTemplate(h, space)
    events = np.array([[0.5, 0.25], [2.0, 1.75], [1.2, 0.6]])
    counts_xy = h.values().T
    edges = [h.axes["x"].edges, h.axes["y"].edges]
    for form in ((counts_xy, *edges), (counts_xy, edges)):
        np.testing.assert_allclose(HistTemplate(form, space).log_prob(events),
                                   ref.log_prob(events), rtol=1e-15)
    one = ObservableSpace([Observable("m", 0.0, 10.0)])
    n, xe = np.histogram([1.0, 2.0, 2.5, 7.0], bins=5, range=(0.0, 10.0))
    assert np.exp(HistTemplate((n, xe), one).log_prob([2.2]))[0] == pytest.approx(0.5 / 2.0)

    class RootLike:  # what uproot reads from a TH2: to_hist() with ROOT's axis names
        def to_hist(self):
            out = hist.Hist(hist.axis.Variable(h.axes["y"].edges, name="yaxis"),
                            hist.axis.Variable(h.axes["x"].edges, name="xaxis"),
                            storage=hist.storage.Weight())
            out.view().value = h.values()
            return out

    t = HistTemplate(RootLike(), space, axes={"xaxis": "x", "yaxis": "y"})
    np.testing.assert_allclose(t.log_prob(events), ref.log_prob(events), rtol=1e-15)
    with pytest.raises(InputError, match=r"rename axes with axes=\{'xaxis': 'm'\}"):
        HistTemplate(RootLike(), space)
    with pytest.raises(InputError, match=r"axes renames \['zaxis'\]"):
        HistTemplate(RootLike(), space, axes={"zaxis": "x"})
    with pytest.raises(InputError, match="needs a space"):
        HistTemplate((n, xe))
    with pytest.raises(InputError, match="takes its names from the space"):
        HistTemplate((n, xe), one, axes={"xaxis": "m"})
    with pytest.raises(InputError, match="edges of 'm' must be 6 increasing numbers"):
        HistTemplate((n, xe[:-1]), one)
    with pytest.raises(InputError, match="counts of 1 dimension"):
        HistTemplate((counts_xy, *edges), one)


def test_hist_template_bad_inputs():
    with pytest.raises(InputError, match="Mean storage"):
        HistTemplate(hist.Hist(hist.axis.Regular(2, 0, 1, name="x"), storage=hist.storage.Mean()))
    with pytest.raises(InputError, match="empty"):
        HistTemplate(hist.Hist.new.Reg(2, 0, 1, name="x").Double())
    h = hist.Hist.new.Reg(2, 0, 1, name="x").Double()
    h[0] = -1.0
    h[1] = 2.0
    with pytest.raises(InputError, match="negative bin content"):
        HistTemplate(h)
    h = hist.Hist.new.Reg(2, 0, 1, name="z").Double().fill([0.2])
    with pytest.raises(InputError, match="do not match observables"):
        HistTemplate(h, ObservableSpace([Observable("x", 0, 1)]))
    with pytest.raises(InputError, match="category axis"):
        HistTemplate(hist.Hist.new.StrCat(["a"], name="c").Double())
    t = HistTemplate(hist.Hist.new.Reg(2, 0, 1, name="x").Double().fill([0.2]))
    assert t.log_prob([0.7])[0] == -math.inf
    # a histogram wider than its space: normalised over [0, 20] on a [0, 10] space it had
    # integrated to 0.5 there (a fit's signal yield 422 for 279) and sampled outside it
    wide = hist.Hist.new.Reg(20, 0, 20, name="x").Double().fill(np.linspace(0.5, 19.5, 20))
    with pytest.raises(InputError, match=r"spans \[0, 20\], beyond the observable's bounds"):
        HistTemplate(wide, ObservableSpace([Observable("x", 0.0, 10.0)]))
    counts = hist.Hist.new.Integer(0, 8, name="n").Double().fill([1, 2, 7])
    with pytest.raises(InputError, match="beyond"):
        HistTemplate(counts, ObservableSpace([Observable("n", 0, 6, discrete=True)]))
    HistTemplate(counts, ObservableSpace([Observable("n", 0, 7, discrete=True)]))  # 0 … 7
    assert "x ∈ [0.5, 1]" in t.describe_event(np.array([0.7]))


# -- yields and cross sections ---------------------------------------------------------------
@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad:UserWarning")
def test_yield_algebra_and_gradient():
    xs = CrossSection.from_callable(lambda c: 2.0 + c**2, ("c",))
    mu = Yield.parameter("mu")
    nu = 0.5 * (xs * 139.0) * mu + 3.0
    assert nu.parameters == ("c", "mu")
    assert nu.parameter_bounds["mu"] == (0.0, math.inf)
    assert nu.value(c=1.0, mu=2.0) == pytest.approx(0.5 * 3.0 * 139.0 * 2.0 + 3.0, rel=1e-15)
    c = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    nu(c=c, mu=2.0).backward()
    assert c.grad.item() == pytest.approx(0.5 * 139.0 * 2.0 * 2.0, rel=1e-15)
    assert (xs * "mu").parameters == ("c", "mu")
    with pytest.raises(ParameterError, match="missing"):
        nu(c=1.0)
    with pytest.raises(InputError, match="cannot use"):
        xs * [1, 2]
    for op in (lambda y: y - 1.0, lambda y: 1.0 / y, lambda y: y**2, lambda y: -y):
        with pytest.raises(InputError, match="from_callable"):  # (was a bare TypeError)
            op(mu)
    # a function that leaves torch has no gradient: refused when one is taken (it was 0)
    k = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(InputError, match=r"math\.exp"):
        Yield.from_callable(lambda k: 100 * math.exp(k), ("k",))(k=k)
    assert Yield.from_callable(lambda k: 100 * math.exp(k), ("k",)).value(k=0.0) == 100.0
    assert Yield.from_callable(lambda k: torch.clamp(k, 0.0), ("k",), smooth=False).smooth is False


def test_component_yields():
    d = gauss()
    assert Component("s", d, "n_s").parameters == ("mu", "sigma", "n_s")
    assert Component("s", d, 12.5).yield_.value() == 12.5
    with pytest.raises(InputError, match=r"'s'.*≥ 0"):
        Component("s", d, -1.0)
    with pytest.raises(InputError, match="DensityModel"):
        Component("s", object(), "n")
    with pytest.raises(InputError, match="non-empty name"):
        Component("", d, "n")


def test_quadratic_recovers_exact_coefficients():
    rng = np.random.default_rng(5)
    a, b, c = 3.0, np.array([0.4, -1.2]), np.array([[0.7, 0.3], [0.0, 1.1]])
    pts = rng.uniform(-2, 2, size=(12, 2))
    vals = a + pts @ b + np.einsum("ni,ij,nj->n", pts, c, pts)
    xs = CrossSection.quadratic(pts, vals, parameters=("cx", "cy"))
    fit = xs.fit
    assert fit.terms == ("1", "cx", "cy", "cx^2", "cx*cy", "cy^2")
    np.testing.assert_allclose(fit.coefficients, [3.0, 0.4, -1.2, 0.7, 0.3, 1.1], atol=1e-12)
    assert fit.chi2 < 1e-20 and fit.ndof == 6
    assert xs.value(cx=0.5, cy=-1.0) == pytest.approx(
        a + 0.5 * b[0] - b[1] + 0.7 * 0.25 - 0.3 * 0.5 + 1.1, rel=1e-12)
    # σ_fid(θ) · L and its gradient: dσ/dcx = b0 + 2 c00 cx + c01 cy
    nu = xs * 139.0
    cx = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    out = nu(cx=cx, cy=-1.0)
    out.backward()
    assert out.item() == pytest.approx(139.0 * xs.value(cx=0.5, cy=-1.0), rel=1e-14)
    assert cx.grad.item() == pytest.approx(139.0 * (0.4 + 2 * 0.7 * 0.5 - 0.3), rel=1e-12)


def test_quadratic_weighted_fit_reports_chi2_and_covariance():
    rng = np.random.default_rng(6)
    pts = np.linspace(-2, 2, 30)
    err = np.full(30, 0.1)
    vals = 1.0 + 0.5 * pts + 0.25 * pts**2 + rng.normal(0, 0.1, 30)
    fit = CrossSection.quadratic(pts, vals, err, parameters=("c",)).fit
    design = np.column_stack([np.ones(30), pts, pts**2]) / 0.1
    np.testing.assert_allclose(fit.covariance, np.linalg.inv(design.T @ design), rtol=1e-10)
    # χ² of a correct model: mean ndof = 27, a 5σ-wide window of the χ²₂₇ distribution
    assert 5 < fit.chi2 < 60
    pulls = (fit.coefficients - [1.0, 0.5, 0.25]) / np.sqrt(np.diag(fit.covariance))
    assert np.all(np.abs(pulls) < 5)


def test_quadratic_bad_inputs():
    with pytest.raises(InputError, match="at least 6 points"):
        CrossSection.quadratic(np.zeros((3, 2)), np.ones(3), parameters=("a", "b"))
    with pytest.raises(InputError, match="rank"):
        CrossSection.quadratic(np.column_stack([np.arange(8.0), np.zeros(8)]), np.ones(8),
                               parameters=("a", "b"))
    with pytest.raises(InputError, match="finite"):
        CrossSection.quadratic([0.0, 1.0, np.nan], [1.0, 2.0, 3.0], parameters=("a",))
    with pytest.raises(InputError, match="errors"):
        CrossSection.quadratic([0.0, 1.0, 2.0], [1.0, 2.0, 3.0], [1.0, 0.0, 1.0],
                               parameters=("a",))


def test_interpolate_linear_and_cubic():
    pts = np.array([-1.0, 0.0, 1.0, 3.0])
    vals = np.array([2.0, 1.0, 2.0, 10.0])
    lin = CrossSection.interpolate(pts, vals, parameters=("c",))
    assert lin.value(c=0.5) == pytest.approx(1.5, rel=1e-15)
    assert lin.value(c=2.0) == pytest.approx(6.0, rel=1e-15)
    assert lin.parameter_bounds == {"c": (-1.0, 3.0)}
    cub = CrossSection.interpolate(pts, vals, parameters=("c",), kind="cubic")
    for p, v in zip(pts, vals):
        assert cub.value(c=p) == pytest.approx(v, rel=1e-13)
    # a natural spline reproduces a straight line exactly
    line = CrossSection.interpolate(pts, 2 * pts + 5, parameters=("c",), kind="cubic")
    assert line.value(c=2.2) == pytest.approx(9.4, rel=1e-13)
    c = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    lin(c=c).backward()
    assert c.grad.item() == pytest.approx(1.0)
    with pytest.raises(InputError, match="one parameter"):
        CrossSection.interpolate(np.zeros((3, 2)), np.ones(3), parameters=("a", "b"))
    with pytest.raises(InputError, match="distinct"):
        CrossSection.interpolate([1.0, 1.0], [1.0, 2.0], parameters=("a",))
    with pytest.raises(InputError, match="kind"):
        CrossSection.interpolate(pts, vals, parameters=("c",), kind="quintic")


def test_regression_fits_smooth_cross_section():
    grid = np.linspace(-1, 1, 5)
    pts = np.array([(a, b) for a in grid for b in grid])
    vals = 2.0 + pts[:, 0] + 0.5 * pts[:, 1] ** 2
    xs = CrossSection.regression(pts, vals, parameters=("a", "b"), hidden=(16, 16), epochs=600)
    # a smooth 2-parameter function from 25 points: a percent-level fit is what Adam reaches
    assert xs.fit["max_relative_deviation"] < 0.03
    assert xs.value(a=0.3, b=-0.2) == pytest.approx(2.0 + 0.3 + 0.5 * 0.04, rel=0.03)
    assert xs.parameter_bounds == {"a": (-1.0, 1.0), "b": (-1.0, 1.0)}
    again = CrossSection.regression(pts, vals, parameters=("a", "b"), hidden=(16, 16),
                                    epochs=600)
    assert again.value(a=0.3, b=-0.2) == xs.value(a=0.3, b=-0.2)  # seeded
    a = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    xs(a=a, b=-0.2).backward()
    assert a.grad.item() == pytest.approx(1.0, abs=0.2)
    with pytest.raises(InputError, match="> 0"):
        CrossSection.regression(pts, vals - 3.0, parameters=("a", "b"))


def test_theta_in_named_containers_is_matched_by_name():
    """θ as a structured array, a pandas-like Series (labels as its index) or frame, or an
    awkward record: matched by name like a dict, never read by position."""
    space = ObservableSpace([Observable("x", -10.0, 10.0)])

    def gauss(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return -0.5 * ((x[:, 0] - mu) / sigma) ** 2 - torch.log(sigma)

    dens = TorchDensity(space, gauss, ("mu", "sigma"),
                        {"mu": (-5.0, 5.0), "sigma": (0.1, 10.0)})
    x = np.array([[0.5], [1.5], [-2.0]])
    expected = dens.log_prob(x, {"mu": 1.0, "sigma": 2.0})

    class Series:  # what pandas.Series offers: labels in .index, [label], to_numpy
        def __init__(self, d):
            self.d, self.index = d, list(d)

        def __getitem__(self, k):
            return self.d[k]

        def to_numpy(self):
            return np.array(list(self.d.values()))

        def __array__(self, dtype=None, copy=None):
            return self.to_numpy().astype(dtype)

    class Frame:  # pandas.DataFrame: .columns and [name]
        def __init__(self, d):
            self.d, self.columns = d, list(d)

        def __getitem__(self, k):
            return self.d[k]

    rec = np.rec.fromarrays([[2.0], [1.0]], names=["sigma", "mu"])[0:1]
    for theta in (Series({"sigma": 2.0, "mu": 1.0}), rec,
                  Frame({"sigma": np.full(3, 2.0), "mu": np.full(3, 1.0)})):
        np.testing.assert_array_equal(dens.log_prob(x, theta), expected)
    with pytest.raises(ParameterError, match=r"unknown \['s'\]"):
        dens.log_prob(x, Series({"s": 2.0, "mu": 1.0}))
    # a Series without string labels is an array (one value per parameter, in order)
    unnamed = Series({0: 1.0, 1: 2.0})
    np.testing.assert_array_equal(dens.log_prob(x, unnamed), expected)
    with pytest.raises(ParameterError, match=r"θ: expected 2 numbers \['mu', 'sigma'\]"):
        dens.log_prob(x, [1.0, "wide"])
    ak = pytest.importorskip("awkward")
    np.testing.assert_array_equal(
        dens.log_prob(x, ak.Array({"sigma": [2.0] * 3, "mu": [1.0] * 3})), expected)
