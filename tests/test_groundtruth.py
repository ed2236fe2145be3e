"""Tests of egmm.groundtruth: the paper's toy pdf, its CDFs, inverse CDFs and sampler."""

from __future__ import annotations

import doctest
import math
import warnings

import numpy as np
import pytest
from scipy import integrate, stats

from egmm import InputError, ParameterError, groundtruth
from egmm.groundtruth import PaperToy

TOY = PaperToy()

# Grid corners, the origin, the flat limit |cx| = 2 of p0 (k = 0), a negative rate (|cx| > 2)
# and a point close to the edge of the valid ellipse (0.16 cx² + 0.25 cy² = 0.97).
PARAMETER_POINTS = [
    (1.5, 1.5),
    (-1.5, 1.5),
    (1.5, -1.5),
    (-1.5, -1.5),
    (0.0, 0.0),
    (2.0, 0.0),
    (-2.0, 0.0),
    (2.3, 0.3),
    (0.5, -1.9),
]
# Conditioning values a = (x0 − 100)/700 for p1, including both edges of the truncation.
X0_VALUES = [100.0, 103.5, 135.0, 300.0, 450.0, 765.0, 800.0]
# Conditioning values (x1, x2) for p3, including the corners of their support.
X1_X2_VALUES = [(100.0, -math.pi), (450.0, 0.0), (800.0, math.pi), (300.0, 1.0), (700.0, -2.0)]

QUAD = {"epsabs": 1e-13, "epsrel": 1e-13, "limit": 200}


def conditional_density(j: int, values, cx: float, cy: float, x1=450.0, x2=0.0, x0=450.0):
    """p_j at the given values of x_j (other observables fixed), from log_prob_conditionals."""
    values = np.atleast_1d(np.asarray(values, dtype=np.float64))
    x = np.tile([x0, x1, x2, 0.0], (len(values), 1))
    x[:, j] = values
    return np.exp(TOY.log_prob_conditionals(x, cx, cy)[:, j])


def shift3(cx: float, cy: float, x1: float, x2: float) -> float:
    """Centre offset s(c)(x1' + x2') of p3, from paper-toy.md."""
    s = 0.6 * (math.sqrt(4 + abs(cx)) + abs(cy))
    return s * (2 * (x1 - 100) / 700 - 1 + x2 / math.pi)


# -- exact formulas written out from reference/paper-toy.md, one event at a time ------------------
def reference_log_pdf(x: np.ndarray, cx: float, cy: float) -> float:
    x0, x1, x2, x3 = (float(v) for v in x)
    a, b = (x0 - 100) / 700, (x1 - 100) / 700
    k = 2 * (2 - abs(cx))
    p0 = (1 / 700) * (k / (1 - math.exp(-k)) * math.exp(-k * a) if k != 0 else 1.0)
    sigma = 0.05
    r2s = math.sqrt(2) * sigma
    p1 = (
        (1 / 700)
        * math.exp(-((b - a) ** 2) / (2 * sigma**2))
        / (math.sqrt(math.pi / 2) * sigma * (math.erf(a / r2s) - math.erf((a - 1) / r2s)))
    )
    poly = 1 + 4 / math.pi**2 * x2**2 - 5 / math.pi**4 * x2**4
    z2 = 8 * math.pi / 3 + cy * (12 / math.pi - 120 / math.pi**3)
    p2 = poly * (1 + 0.4 * cx * math.sin(x2) + 0.5 * cy * math.cos(x2)) / z2
    big_k = 11.0
    z3 = (2 * big_k / 10) * math.exp(2 * big_k) / (math.exp(2 * big_k) - 1)
    y = x3 + shift3(cx, cy, x1, x2)
    q3 = 1 / (1 + math.exp(10 * (y - 1) - 1)) / (1 + math.exp(-10 * (y + 1) - 1)) / z3
    return math.log(p0) + math.log(p1) + math.log(p2) + math.log(q3)


# -- normalisation ------------------------------------------------------------------------
@pytest.mark.parametrize(("cx", "cy"), PARAMETER_POINTS)
def test_p0_p2_integrate_to_one(cx, cy):
    total0, _ = integrate.quad(lambda v: conditional_density(0, v, cx, cy)[0], 100, 800, **QUAD)
    total2, _ = integrate.quad(
        lambda v: conditional_density(2, v, cx, cy)[0], -math.pi, math.pi, **QUAD
    )
    assert total0 == pytest.approx(1.0, abs=1e-8)
    assert total2 == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("x0", X0_VALUES)
def test_p1_integrates_to_one(x0):
    # p1 is a 35 GeV wide Gaussian around x0: tell quad where its peak is.
    total, _ = integrate.quad(
        lambda v: conditional_density(1, v, 0.0, 0.0, x0=x0)[0], 100, 800, points=[x0], **QUAD
    )
    assert total == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize(("cx", "cy"), [(1.5, 1.5), (-1.5, -1.5), (0.0, 0.0), (2.0, 0.0)])
@pytest.mark.parametrize(("x1", "x2"), X1_X2_VALUES)
def test_p3_integrates_to_one(cx, cy, x1, x2):
    # q3 is flat on |y| < 1 and falls as e^{−10 |y|} outside: the mass beyond |y| = 8 is
    # ~e^{−70}, so integrating over the centre ± 8 loses nothing at 1e-8.
    centre = -shift3(cx, cy, x1, x2)
    total, _ = integrate.quad(
        lambda v: conditional_density(3, v, cx, cy, x1=x1, x2=x2)[0],
        centre - 8,
        centre + 8,
        points=[centre - 1, centre + 1],
        **QUAD,
    )
    assert total == pytest.approx(1.0, abs=1e-8)


# -- closed forms against the formulas of paper-toy.md --------------------------------------
@pytest.mark.parametrize(("cx", "cy"), PARAMETER_POINTS)
def test_log_prob_matches_reference_formulas(cx, cy):
    x = TOY.sample(20, cx, cy, seed=7)
    expected = [reference_log_pdf(row, cx, cy) for row in x]
    # The stable rewrites (exprel, normal tails, softplus) agree with the naive formulas to
    # rounding; the naive ones lose a few digits in the tails, hence 1e-9.
    np.testing.assert_allclose(TOY.log_prob(x, cx, cy), expected, rtol=1e-9, atol=1e-9)


def test_normalisation_constants():
    # Z3 = (2K/α3) e^{2K}/(e^{2K} − 1) with K = 11 (paper-toy.md quotes 2.2000000006).
    assert math.exp(groundtruth._LOG_Z3) == pytest.approx(2.2000000006, abs=1e-10)
    for cy in (-1.5, 0.0, 1.5):
        # Z2 = 8π/3 + cy (12/π − 120/π³) is the integral of the unnormalised p2.
        z2, _ = integrate.quad(
            lambda v, cy=cy: groundtruth._p2_terms(np.array([v]), 0.0, 0.5 * cy)[0][0],
            -math.pi,
            math.pi,
            **QUAD,
        )
        assert groundtruth._norm2(cy) == pytest.approx(z2, rel=1e-12)


def test_flat_limit_and_small_rate_are_stable():
    x = TOY.sample(50, 2.0, 0.0, seed=1)
    flat = TOY.log_prob_conditionals(x, 2.0, 0.0)[:, 0]
    np.testing.assert_allclose(flat, -math.log(700.0), rtol=1e-15)
    np.testing.assert_allclose(TOY.cdf0(x[:, 0], 2.0), (x[:, 0] - 100) / 700, rtol=1e-14)
    # k = 2e-12 differs from the flat limit by O(k) = 1e-12 in log p0 and in F0.
    near = TOY.log_prob_conditionals(x, 2.0 - 1e-12, 0.0)[:, 0]
    np.testing.assert_allclose(near, flat, atol=1e-11)
    u = np.linspace(0, 1, 11)
    np.testing.assert_allclose(TOY.icdf0(u, -(2.0 - 1e-12)), 100 + 700 * u, atol=1e-8)


# -- CDFs, pdfs and inverse CDFs against each other -----------------------------------------
CDF_CASES = [
    # (conditional j, cdf(v), pdf(v), points v inside the support, lower end)
    *[
        (
            0,
            lambda v, c=c: TOY.cdf0(v, c[0]),
            lambda v, c=c: conditional_density(0, v, *c),
            [100.0, 101.0, 250.0, 612.5, 799.0, 800.0],
            100.0,
        )
        for c in [(1.5, 1.5), (0.0, 0.0), (2.0, 0.0), (2.3, 0.3)]
    ],
    *[
        (
            1,
            lambda v, x0=x0: TOY.cdf1(v, x0),
            lambda v, x0=x0: conditional_density(1, v, 0.0, 0.0, x0=x0),
            list(np.clip([100.0, x0 - 60, x0 - 5, x0, x0 + 17, 800.0], 100, 800)),
            100.0,
        )
        for x0 in X0_VALUES
    ],
    *[
        (
            2,
            lambda v, c=c: TOY.cdf2(v, *c),
            lambda v, c=c: conditional_density(2, v, *c),
            [-math.pi, -3.0, -1.0, 0.3, 2.0, math.pi],
            -math.pi,
        )
        for c in [(1.5, 1.5), (-1.5, -1.5), (0.0, 0.0), (0.5, -1.9)]
    ],
    *[
        (
            3,
            lambda v, c=c, x1=x1, x2=x2: TOY.cdf3(v, x1, x2, *c),
            lambda v, c=c, x1=x1, x2=x2: conditional_density(3, v, *c, x1=x1, x2=x2),
            list(-shift3(*c, x1, x2) + np.array([-1.8, -1.0, -0.2, 0.0, 0.9, 1.5])),
            -shift3(*c, x1, x2) - 8,
        )
        for c in [(1.5, -1.5), (0.0, 0.0)]
        for x1, x2 in X1_X2_VALUES
    ],
]


@pytest.mark.parametrize(("j", "cdf", "pdf", "points", "start"), CDF_CASES)
def test_cdf_is_integral_of_pdf(j, cdf, pdf, points, start):
    values = np.asarray(points)
    # F3 below centre − 8 is ~e^{−70}: the integral from there is the CDF to far below 1e-10.
    integrals = [
        integrate.quad(lambda v: pdf(v)[0], start, v, **QUAD)[0] if v > start else 0.0
        for v in values
    ]
    np.testing.assert_allclose(cdf(values), integrals, atol=1e-10)


@pytest.mark.parametrize(("j", "cdf", "pdf", "points", "start"), CDF_CASES)
def test_pdf_is_derivative_of_cdf(j, cdf, pdf, points, start):
    values = np.asarray(points, dtype=np.float64)
    lo, hi = [(100.0, 800.0), (100.0, 800.0), (-math.pi, math.pi), (-np.inf, np.inf)][j]
    # Central differences: truncation error h² F'''/6 = h² p''/6 and rounding ~1e-16/h. With h
    # 1e-4 of the scale on which each pdf varies (700 GeV, σ1 = 35 GeV, π, 1/α3 = 0.1) both stay
    # below 1e-7 relative to the pdf.
    h = [0.07, 0.0035, 3e-4, 1e-5][j]
    values = values[(values > lo + 2 * h) & (values < hi - 2 * h)]
    derivative = (cdf(values + h) - cdf(values - h)) / (2 * h)
    np.testing.assert_allclose(derivative, pdf(values), rtol=1e-6)


@pytest.mark.parametrize(("cx", "cy"), PARAMETER_POINTS)
def test_inverse_cdfs_invert_cdfs(cx, cy):
    u = np.concatenate([[0.0, 1e-14, 1e-9, 1e-3], np.linspace(0.01, 0.99, 99), [1 - 1e-9, 1.0]])
    x0 = TOY.icdf0(u, cx)
    np.testing.assert_allclose(TOY.cdf0(x0, cx), u, atol=1e-12)
    for a in X0_VALUES:
        np.testing.assert_allclose(TOY.cdf1(TOY.icdf1(u, a), a), u, atol=1e-12)
    np.testing.assert_allclose(TOY.cdf2(TOY.icdf2(u, cx, cy), cx, cy), u, atol=1e-12)
    inner = u[(u > 0) & (u < 1)]
    for x1, x2 in X1_X2_VALUES:
        x3 = TOY.icdf3(inner, x1, x2, cx, cy)
        np.testing.assert_allclose(TOY.cdf3(x3, x1, x2, cx, cy), inner, atol=1e-12)


@pytest.mark.parametrize(("cx", "cy"), [(1.5, 1.5), (0.0, 0.0), (-0.8, 0.8)])
def test_inverse_cdfs_round_trip_events(cx, cy):
    # Sampled events lie where the density is not tiny, so x → F(x) → F⁻¹ is well conditioned.
    x = TOY.sample(2000, cx, cy, seed=11)
    x0, x1, x2, x3 = x.T
    np.testing.assert_allclose(TOY.icdf0(TOY.cdf0(x0, cx), cx), x0, rtol=1e-10)
    np.testing.assert_allclose(TOY.icdf1(TOY.cdf1(x1, x0), x0), x1, rtol=1e-10)
    np.testing.assert_allclose(TOY.icdf2(TOY.cdf2(x2, cx, cy), cx, cy), x2, atol=1e-10)
    np.testing.assert_allclose(
        TOY.icdf3(TOY.cdf3(x3, x1, x2, cx, cy), x1, x2, cx, cy), x3, atol=1e-10
    )


def test_inverse_cdf_endpoints():
    np.testing.assert_allclose(TOY.icdf0([0.0, 1.0], 0.7), [100.0, 800.0], rtol=1e-15)
    np.testing.assert_allclose(TOY.icdf1([0.0, 1.0], 300.0), [100.0, 800.0], rtol=1e-15)
    np.testing.assert_allclose(TOY.icdf2([0.0, 1.0], 1.0, -1.0), [-math.pi, math.pi], atol=1e-7)
    assert TOY.icdf3([0.0, 1.0], 450.0, 0.0, 0.0, 0.0).tolist() == [-np.inf, np.inf]
    assert TOY.cdf3([-1e308, 1e308], 450.0, 0.0, 0.0, 0.0).tolist() == [0.0, 1.0]
    assert TOY.cdf0([0.0, 1000.0], 0.3).tolist() == [0.0, 1.0]
    assert TOY.cdf2([-4.0, 4.0], 0.3, 0.3).tolist() == [0.0, 1.0]


# -- samples against the pdf ----------------------------------------------------------------
# Each statistic below is uniform in p for a correct sampler; at the fixed seed the test is
# deterministic, and p > 1e-3 rejects a correct sampler with probability 1e-3 per statistic
# for a random seed. With 20,000 events a 2 % shift of any bin's probability in a 20-bin
# histogram (σ ≈ 7 % per bin of ~1000 events … 2 % for the largest) or a 1.4 % KS distance
# already gives p < 1e-3.
N_SAMPLE = 20_000
P_MIN = 1e-3


def chi2_pvalue(values: np.ndarray, edges: np.ndarray, expected_probabilities: np.ndarray):
    observed = np.histogram(values, bins=edges)[0]
    assert expected_probabilities.sum() == pytest.approx(1.0, abs=1e-9)
    return stats.chisquare(observed, len(values) * expected_probabilities).pvalue


def x1_bin_probabilities(edges: np.ndarray, cx: float) -> np.ndarray:
    """∫ p0(x0) [F1(hi|x0) − F1(lo|x0)] dx0 by composite Gauss–Legendre (40 × 20 nodes)."""
    nodes, weights = np.polynomial.legendre.leggauss(20)
    cuts = np.linspace(100, 800, 41)
    mid, half = 0.5 * (cuts[1:] + cuts[:-1]), 0.5 * np.diff(cuts)
    x0 = (mid[:, None] + half[:, None] * nodes).ravel()
    w = (half[:, None] * weights).ravel() * conditional_density(0, x0, cx, 0.0)
    cdf = TOY.cdf1(edges[:, None], x0[None, :])
    return (cdf[1:] - cdf[:-1]) @ w


@pytest.mark.parametrize(("cx", "cy"), [(0.8, -0.8), (-1.5, 1.5), (2.0, 0.0)])
def test_samples_follow_pdf(cx, cy):
    x = TOY.sample(N_SAMPLE, cx, cy, seed=2024)
    edges = np.linspace(100, 800, 21)
    assert chi2_pvalue(x[:, 0], edges, np.diff(TOY.cdf0(edges, cx))) > P_MIN
    assert chi2_pvalue(x[:, 1], edges, x1_bin_probabilities(edges, cx)) > P_MIN
    edges2 = np.linspace(-math.pi, math.pi, 21)
    assert chi2_pvalue(x[:, 2], edges2, np.diff(TOY.cdf2(edges2, cx, cy))) > P_MIN
    pit = TOY.pit(x, cx, cy)
    for j in range(4):
        assert stats.kstest(pit[:, j], "uniform").pvalue > P_MIN, f"PIT of x{j}"


def test_samples_with_per_event_parameters_follow_pdf():
    rng = np.random.default_rng(5)
    theta = PaperToy.GRID_49[rng.integers(0, 49, N_SAMPLE)]
    x = TOY.sample(N_SAMPLE, theta[:, 0], theta[:, 1], seed=6)
    pit = TOY.pit(x, theta[:, 0], theta[:, 1])
    for j in range(4):
        assert stats.kstest(pit[:, j], "uniform").pvalue > P_MIN, f"PIT of x{j}"
    # Each event is drawn at its own parameters: x2 and c_x are correlated (δ2 = 0.4 cx tilts
    # p2), while the PIT of x2 carries no trace of c_x (|r| < 4/√N is a 4σ bound).
    assert np.corrcoef(x[:, 2], theta[:, 0])[0, 1] > 0.2
    assert abs(np.corrcoef(pit[:, 2], theta[:, 0])[0, 1]) < 4 / math.sqrt(N_SAMPLE)


def test_samples_are_in_bounds_and_float64():
    x = TOY.sample(10_000, -1.5, -1.5, seed=3)
    assert x.shape == (10_000, 4)
    assert x.dtype == np.float64
    assert np.array_equal(TOY.space.validate(x), x)
    assert TOY.sample(0, 0.0, 0.0, seed=1).shape == (0, 4)


# -- log_prob ---------------------------------------------------------------------------------
def test_log_prob_is_sum_of_conditionals():
    x = TOY.sample(500, 1.0, -0.5, seed=4)
    conditionals = TOY.log_prob_conditionals(x, 1.0, -0.5)
    assert conditionals.shape == (500, 4)
    np.testing.assert_array_equal(TOY.log_prob(x, 1.0, -0.5), conditionals.sum(axis=1))


def test_per_event_parameters_broadcast():
    x = TOY.sample(6, 0.0, 0.0, seed=8)
    cx = np.array([-1.5, -0.5, 0.0, 0.5, 1.0, 2.0])
    cy = np.array([1.5, -1.0, 0.0, 0.2, -1.5, 0.0])
    per_event = TOY.log_prob(x, cx, cy)
    one_by_one = [TOY.log_prob(x[i : i + 1], cx[i], cy[i])[0] for i in range(6)]
    np.testing.assert_array_equal(per_event, one_by_one)
    mixed = TOY.log_prob(x, cx, 0.0)
    np.testing.assert_array_equal(
        mixed, [TOY.log_prob(x[i : i + 1], cx[i], 0.0)[0] for i in range(6)]
    )
    pit = TOY.pit(x, cx, cy)
    np.testing.assert_array_equal(pit[3], TOY.pit(x[3:4], cx[3], cy[3])[0])


def test_named_columns_are_accepted():
    x = TOY.sample(5, 0.5, 0.5, seed=9)
    columns = {name: x[:, j] for j, name in reversed(list(enumerate(TOY.space.names)))}
    np.testing.assert_array_equal(TOY.log_prob(columns, 0.5, 0.5), TOY.log_prob(x, 0.5, 0.5))


def test_boundary_of_x2_has_zero_density_without_warnings():
    x = np.array([[300.0, 310.0, -math.pi, 0.0], [300.0, 310.0, math.pi, 0.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lp = TOY.log_prob(x, 0.3, 0.3)
        assert TOY.log_prob([[300.0, 310.0, 0.0, 1e308]], 0.0, 0.0)[0] == -np.inf
    assert lp.tolist() == [-np.inf, -np.inf]


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cx", "cy"),
    [(2.5, 0.0), (0.0, 2.0), (2.0, 1.2), (-3.0, -3.0), (np.nan, 0.0), (0.0, np.inf)],
)
def test_invalid_parameters_raise(cx, cy):
    x = TOY.sample(3, 0.0, 0.0, seed=1)
    with pytest.raises(ParameterError, match=r"cx|cy"):
        TOY.log_prob(x, cx, cy)
    with pytest.raises(ParameterError):
        TOY.sample(3, cx, cy, seed=1)
    with pytest.raises(ParameterError):
        TOY.cdf2(0.0, cx, cy)
    with pytest.raises(ParameterError):
        TOY.icdf2(0.5, cx, cy)
    with pytest.raises(ParameterError):
        TOY.training_data([[0.0, 0.0], [cx, cy]], 2, seed=0)


def test_invalid_parameter_error_names_the_values():
    with pytest.raises(ParameterError, match=r"\(2\.5, 0\.5\)"):
        TOY.log_prob(TOY.sample(3, 0.0, 0.0, seed=1), [0.0, 2.5, 0.0], 0.5)
    with pytest.raises(ParameterError, match="one value per event"):
        TOY.log_prob(TOY.sample(3, 0.0, 0.0, seed=1), [0.0, 0.5], 0.5)


@pytest.mark.parametrize(
    "x",
    [
        [[450.0, 450.0, 0.0, np.nan]],
        [[99.0, 450.0, 0.0, 0.0]],
        [[450.0, 801.0, 0.0, 0.0]],
        [[450.0, 450.0, 3.2, 0.0]],
        [[450.0, 450.0, 0.0, np.inf]],
        [[450.0, 450.0, 0.0]],
        [450.0, 450.0, 0.0, 0.0],
        np.empty((0, 4)),
        {"x0": [450.0], "x1": [450.0], "x2": [0.0]},
    ],
)
def test_bad_events_raise(x):
    with pytest.raises(InputError):
        TOY.log_prob(x, 0.0, 0.0)
    with pytest.raises(InputError):
        TOY.pit(x, 0.0, 0.0)


def test_bad_arguments_raise():
    with pytest.raises(InputError, match="u"):
        TOY.icdf3(1.5, 450.0, 0.0, 0.0, 0.0)
    with pytest.raises(InputError, match="x0"):
        TOY.cdf1(450.0, 90.0)
    with pytest.raises(InputError, match="NaN"):
        TOY.cdf0(np.nan, 0.0)
    with pytest.raises(InputError, match="broadcast"):
        TOY.cdf2([0.0, 1.0], [0.0, 0.1, 0.2], 0.0)
    with pytest.raises(InputError, match="n"):
        TOY.sample(2.5, 0.0, 0.0)
    with pytest.raises(InputError, match="grid"):
        TOY.training_data([0.0, 0.0], 10, seed=1)


# -- seeds and the experiment's grids ---------------------------------------------------------
def test_seeds_reproduce():
    a = TOY.sample(100, 0.5, -0.5, seed=42)
    np.testing.assert_array_equal(a, TOY.sample(100, 0.5, -0.5, seed=42))
    np.testing.assert_array_equal(a, TOY.sample(100, 0.5, -0.5, seed=np.random.default_rng(42)))
    assert not np.any(a == TOY.sample(100, 0.5, -0.5, seed=43))
    rng = np.random.default_rng(42)
    first, second = TOY.sample(100, 0.5, -0.5, seed=rng), TOY.sample(100, 0.5, -0.5, seed=rng)
    np.testing.assert_array_equal(first, a)
    assert not np.any(first == second)


def test_training_data_streams():
    grid = PaperToy.TRUE_HYPOTHESES
    x, theta = TOY.training_data(grid, 50, seed=123)
    assert x.shape == (9 * 50, 4)
    assert theta.shape == (9 * 50, 2)
    np.testing.assert_array_equal(theta, np.repeat(grid, 50, axis=0))
    children = np.random.SeedSequence(123).spawn(9)
    for i in (0, 4, 8):
        block = TOY.sample(50, *grid[i], seed=np.random.default_rng(children[i]))
        np.testing.assert_array_equal(x[50 * i : 50 * (i + 1)], block)
    again, _ = TOY.training_data(grid, 50, seed=np.random.SeedSequence(123))
    np.testing.assert_array_equal(again, x)
    # The streams are independent: no two points share their uniforms.
    assert len(np.unique(x[:, 3])) == len(x)


def test_grids():
    values = [-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5]
    assert PaperToy.GRID_49.shape == (49, 2)
    assert sorted(set(PaperToy.GRID_49[:, 0])) == values
    assert sorted(set(PaperToy.GRID_49[:, 1])) == values
    assert len({tuple(p) for p in PaperToy.GRID_49}) == 49
    assert PaperToy.GRID_81.shape == (81, 2)
    assert sorted(set(PaperToy.GRID_81[:, 0])) == sorted([*values, -0.2, 0.2])
    assert len({tuple(p) for p in PaperToy.GRID_81}) == 81
    assert {tuple(p) for p in PaperToy.GRID_49} <= {tuple(p) for p in PaperToy.GRID_81}
    assert PaperToy.GRID_121.shape == (121, 2)
    assert sorted(set(PaperToy.GRID_121[:, 1])) == sorted([*values, -0.2, -0.1, 0.1, 0.2])
    assert len({tuple(p) for p in PaperToy.GRID_121}) == 121
    assert {tuple(p) for p in PaperToy.GRID_81} <= {tuple(p) for p in PaperToy.GRID_121}
    assert PaperToy.TRUE_HYPOTHESES.shape == (9, 2)
    assert {tuple(p) for p in PaperToy.TRUE_HYPOTHESES} == {
        (a, b) for a in (-0.8, 0.0, 0.8) for b in (-0.8, 0.0, 0.8)
    }
    assert PaperToy.N_EVENTS == 400
    with pytest.raises(ValueError):
        PaperToy.GRID_49[0, 0] = 7.0


def test_space():
    space = PaperToy.space
    assert space.names == ("x0", "x1", "x2", "x3")
    assert space.lo.tolist() == [100.0, 100.0, -math.pi, -np.inf]
    assert space.hi.tolist() == [800.0, 800.0, math.pi, np.inf]
    assert [o.unit for o in space] == ["GeV", "GeV", "rad", None]
    assert PaperToy.parameters == ("cx", "cy")


def test_docstring_example():
    result = doctest.testmod(groundtruth, extraglobs={"PaperToy": PaperToy})
    assert result.failed == 0
    assert result.attempted > 0


@pytest.mark.parametrize("cx,cy", [(0.8, -0.8), (-1.5, 1.5), (0.2, 0.0), (0.0, -0.2), (0.0, 0.0),
                                   (1.9, 0.3)])
def test_conditional_scores_are_the_derivatives_of_the_conditionals(cx, cy):
    # central differences of log_prob_conditionals (h = 1e-6: truncation ~1e-12, rounding
    # ~1e-10 relative); on the cusps (cx = 0 or cy = 0) the symmetric difference is the mean
    # of the one-sided derivatives, which is what the analytic form takes there; (1.9, 0.3):
    # p0's rate k = 0.2, near the flat limit's series branch
    toy = PaperToy()
    x = toy.sample(5000, cx, cy, seed=11)
    got = toy.conditional_scores(x, cx, cy)
    assert got.shape == (5000, 4, 2) and not got[:, 1].any()  # p1 has no c-dependence
    h = 1e-6
    for p in range(2):
        up = toy.log_prob_conditionals(x, cx + h * (p == 0), cy + h * (p == 1))
        down = toy.log_prob_conditionals(x, cx - h * (p == 0), cy - h * (p == 1))
        np.testing.assert_allclose(got[:, :, p], (up - down) / (2 * h), rtol=1e-7, atol=1e-7)
    # the score has mean zero under p(x|c): Σ over conditionals, within 5 standard errors
    total = got.sum(1)
    assert np.all(np.abs(total.mean(0)) < 5 * total.std(0) / np.sqrt(len(x)))
