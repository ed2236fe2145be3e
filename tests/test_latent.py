"""Tests of egmm.latent: the latent projection h = Q_u⁻¹ ∘ Q_x."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.integrate import quad

from egmm.errors import InputError
from egmm.latent import LatentProjection, _LatentShape
from egmm.observables import Observable, ObservableSpace

U = 5.0
SPACE = ObservableSpace(
    [
        Observable("m", 100.0, 800.0),
        Observable("pt", 0.0, math.inf),
        Observable("eta", -math.inf, math.inf),
        Observable("njet", 0, 5, discrete=True),
    ]
)
BOUNDED, HALF, FREE, DISCRETE = 0, 1, 2, 3


def _reference(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.column_stack(
        [
            # clipped at the upper bound: a point mass on the edge, the hard case
            100 + rng.exponential(100.0, n).clip(0, 700),
            rng.gamma(2.0, 3.0, n),
            rng.normal(0.0, 1.0, n),
            rng.integers(0, 6, n),
        ]
    )


X_REF = _reference(3000, 1)
PROJ = LatentProjection.fit(SPACE, X_REF)
SLOW = settings(max_examples=25, deadline=None)


def _events(j: int, values) -> np.ndarray:
    """Events that vary observable j and copy the first reference event elsewhere."""
    x = np.tile(X_REF[0], (len(values), 1))
    x[:, j] = values
    return x


def _core(j: int) -> tuple[float, float, float]:
    """(a, b, tail scale) of observable j's map."""
    m = PROJ._maps[j]
    tail = m.tail_hi or m.tail_lo
    return m.a, m.b, (tail[1] if tail else 0.0)


def _q_tilde(u, alpha=4.0, beta=3.0, gamma=1.0):
    def sig(z):
        return 1.0 / (1.0 + np.exp(-z))

    return sig(-(alpha * (u - beta) - gamma)) * sig(alpha * (u + beta) + gamma)


def _quad(fn, lo, hi):
    return quad(fn, lo, hi, epsabs=1e-15, epsrel=1e-13, limit=200)[0]


# -- monotonicity and round trips ---------------------------------------------------------------


@SLOW
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=60), st.sampled_from([0, 1, 2]))
def test_forward_is_strictly_increasing(fractions, j):
    a, b, s = _core(j)
    lo = a - 8 * s if j == FREE else a
    hi = b + 8 * s if j != BOUNDED else b
    x = np.unique(lo + (hi - lo) * np.asarray(fractions))
    x = x[np.concatenate([[True], np.diff(x) > 1e-9 * (hi - lo)])]
    u = PROJ.forward(_events(j, x))[:, j]
    assert np.all(np.diff(u) > 0)


def test_forward_is_monotone_on_the_whole_real_line():
    x = np.concatenate([-np.logspace(308, -3, 400), [0.0], np.logspace(-3, 308, 400)])
    u = PROJ.forward(_events(FREE, x))[:, FREE]
    assert np.all(np.diff(u) >= 0) and np.all(np.abs(u) <= U)
    assert np.all(np.diff(u)[(np.abs(x[1:]) < 10)] > 0)


@SLOW
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50))
def test_round_trip_bounded(fractions):
    lo, hi = SPACE.lo[BOUNDED], SPACE.hi[BOUNDED]
    eps = 10.0 ** -np.arange(1, 16)
    x = np.concatenate(
        [
            lo + (hi - lo) * np.asarray(fractions),
            lo + (hi - lo) * eps,
            hi - (hi - lo) * eps,
            [lo, hi],
        ]
    )
    back = PROJ.inverse(PROJ.forward(_events(BOUNDED, x)))[:, BOUNDED]
    assert np.max(np.abs(back - x)) < 1e-9 * (hi - lo)


@SLOW
@given(st.lists(st.floats(-0.5, 1.5), min_size=1, max_size=50), st.sampled_from([1, 2]))
def test_round_trip_unbounded_core_and_near_tails(fractions, j):
    a, b, _ = _core(j)
    x = a + (b - a) * np.asarray(fractions)  # reaches ~10 tail scales beyond the core
    x = x[x >= SPACE.lo[j]]
    if x.size == 0:
        return
    back = PROJ.inverse(PROJ.forward(_events(j, x)))[:, j]
    assert np.max(np.abs(back - x)) < 1e-9 * (b - a)


@SLOW
@given(st.lists(st.floats(-U, U, exclude_min=True, exclude_max=True), min_size=1, max_size=50))
def test_inverse_then_forward(values):
    eps = 10.0 ** -np.arange(1, 16)
    u1 = np.concatenate([values, -U + eps, U - eps, [0.0]])
    u = np.tile(u1[:, None], (1, 4))
    u[:, DISCRETE] = 2.0
    x = PROJ.inverse(u)
    back, log_det = PROJ.forward(x), PROJ.log_abs_det_jacobian(x, per_observable=True)
    # tolerance: u carries ~1 ulp of its own, plus the rounding of x, amplified by dh/dx
    tol = 4e-15 + 4 * np.spacing(np.abs(x)) * np.exp(log_det)
    assert np.all(np.abs(back - u) <= tol)
    assert np.max(np.abs(back - u)[:, FREE]) < 1e-13


def test_strictly_inside_maps_strictly_inside_and_edges_are_finite():
    lo, hi = SPACE.lo[BOUNDED], SPACE.hi[BOUNDED]
    eps = 10.0 ** -np.arange(1, 13)
    x = np.concatenate([lo + (hi - lo) * eps, hi - (hi - lo) * eps])
    u = PROJ.forward(_events(BOUNDED, x))[:, BOUNDED]
    assert np.all(np.abs(u) < U)
    u, log_det = PROJ.forward_and_log_det(_events(BOUNDED, [lo, hi]))
    assert u[:, BOUNDED].tolist() == [-U, U]
    assert np.all(np.isfinite(log_det))


# -- Jacobian ---------------------------------------------------------------------------------


@pytest.mark.parametrize("j", [BOUNDED, HALF, FREE])
def test_log_det_matches_finite_differences(j):
    rng = np.random.default_rng(j)
    knots = PROJ._maps[j].knots
    i = rng.integers(0, len(knots) - 1, 200)
    width = knots[i + 1] - knots[i]
    x = knots[i] + width * rng.uniform(0.3, 0.7, 200)  # well inside one linear piece
    a, b, s = _core(j)
    if s:
        x = np.concatenate([x, b + s * np.array([0.5, 2.0, 6.0])])
        width = np.concatenate([width, [s, s, s]])
        if j == FREE:
            x = np.concatenate([x, a - s * np.array([0.5, 2.0, 6.0])])
            width = np.concatenate([width, [s, s, s]])
    h = 1e-4 * width  # truncation error ~ (h·u'''/u')²/6, far below rtol
    up = PROJ.forward(_events(j, x + h))[:, j]
    down = PROJ.forward(_events(j, x - h))[:, j]
    numeric = (up - down) / (2 * h)
    exact = np.exp(PROJ.log_abs_det_jacobian(_events(j, x), per_observable=True)[:, j])
    np.testing.assert_allclose(numeric, exact, rtol=1e-6)


def test_log_det_sums_per_observable_and_forward_and_log_det_agree():
    x = X_REF[:500]
    per = PROJ.log_abs_det_jacobian(x, per_observable=True)
    assert per.shape == (500, 4) and np.all(per[:, DISCRETE] == 0)
    u, total = PROJ.forward_and_log_det(x)
    np.testing.assert_array_equal(u, PROJ.forward(x))
    np.testing.assert_allclose(total, per.sum(1), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(total, PROJ.log_abs_det_jacobian(x))


def test_autograd_gives_the_jacobian():
    x = torch.tensor(
        np.concatenate([X_REF[:300], _events(FREE, [-30.0, 30.0, 1e300])]), requires_grad=True
    )
    u = PROJ.forward(x)
    u.sum().backward()
    expected = torch.exp(PROJ.log_abs_det_jacobian(x.detach(), per_observable=True))
    torch.testing.assert_close(x.grad, expected, rtol=1e-10, atol=0)


def test_autograd_of_inverse_is_finite():
    u = torch.tensor(
        [[-U, -U, -U + 1e-9, 0.0], [0.0, 0.0, 0.0, 1.0], [U, 4.9, 2.0, 5.0]],
        dtype=torch.float64,
        requires_grad=True,
    )
    x = PROJ.inverse(u)
    x[:, :2].sum().backward()
    assert torch.all(torch.isfinite(u.grad))


# -- the latent density -------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(4.0, 3.0, 1.0, 5.0), (2.0, 2.0, 0.5, 4.0), (8.0, 1.0, -1.0, 3)])
def test_latent_cdf_is_exact_and_normalised(shape):
    alpha, beta, gamma, bound = shape
    q = _LatentShape(alpha, beta, gamma, bound)

    def q_tilde(v):
        return _q_tilde(v, alpha, beta, gamma)

    norm = _quad(q_tilde, -bound, 0.0) + _quad(q_tilde, 0.0, bound)
    np.testing.assert_allclose(math.exp(q.log_norm), norm, rtol=1e-12)
    u = np.linspace(-bound, bound, 41)
    p, comp = q.cdf(torch.tensor(u))
    exact = np.array([_quad(q_tilde, -bound, v) for v in u]) / norm
    np.testing.assert_allclose(p.numpy(), exact, rtol=0, atol=1e-10)
    np.testing.assert_allclose(comp.numpy(), 1 - exact, rtol=0, atol=1e-10)
    density = torch.exp(q.log_density(torch.tensor(u))).numpy()
    np.testing.assert_allclose(density, q_tilde(u) / norm, rtol=1e-12)
    # Q_u⁻¹(Q_u(u)) = u, also within 1e-12 of the edges
    u = torch.tensor(np.concatenate([u, -bound + 10.0 ** -np.arange(1, 13), [1e-300]]))
    np.testing.assert_allclose(q.quantile(*q.cdf(u)).numpy(), u.numpy(), rtol=0, atol=4e-15)
    # measured from the edge, tail masses keep their relative precision
    mass = torch.tensor([1e-300, 1e-30, 1e-17, 1e-3, 0.5], dtype=torch.float64)
    back = q.mass_from_edge(q.edge_distance(mass))
    np.testing.assert_allclose(back.numpy(), mass.numpy(), rtol=1e-13)


def test_pure_linear_map_is_the_latent_cdf():
    """With f = 1 on [0, 1], h⁻¹ = Q_u: the public API exposes the closed form."""
    space = ObservableSpace([Observable("x", 0.0, 1.0, f=1.0)])
    proj = LatentProjection.fit(space, np.linspace(0.1, 0.2, 20))
    assert proj.f == (1.0,)
    u = np.linspace(-U, U, 21)
    norm = _quad(_q_tilde, -U, 0.0) + _quad(_q_tilde, 0.0, U)
    exact = np.array([_quad(_q_tilde, -U, v) for v in u]) / norm
    np.testing.assert_allclose(proj.inverse(u)[:, 0], exact, rtol=0, atol=1e-10)
    np.testing.assert_allclose(np.exp(proj.latent_density(u)[:, 0]), _q_tilde(u) / norm, rtol=1e-12)


def test_latent_box_and_density_columns():
    assert (PROJ.u_lo, PROJ.u_hi) == (-U, U)
    u = np.array([[0.0, -4.0, 4.5, 3.0]])
    dens = PROJ.latent_density(u)
    assert dens.shape == (1, 4) and dens[0, DISCRETE] == 0
    assert dens[0, 0] > dens[0, 1] > dens[0, 2]
    assert PROJ.latent_space.names == SPACE.names


# -- fit options ------------------------------------------------------------------------------


def test_integer_weights_equal_repeated_events():
    rng = np.random.default_rng(7)
    x = _reference(400, 7)
    w = rng.integers(0, 4, 400).astype(float)
    # knots and bandwidth fixed: by default they follow the effective sample size, which differs
    opts = dict(n_knots=300, bandwidth=0.03)
    weighted = LatentProjection.fit(SPACE, x, weights=w, **opts)
    repeated = LatentProjection.fit(SPACE, np.repeat(x, w.astype(int), axis=0), **opts)
    probe = np.concatenate([X_REF[:300], _events(FREE, [-12.0, 12.0]), _events(HALF, [60.0])])
    for method in ("forward", "log_abs_det_jacobian"):
        np.testing.assert_allclose(
            getattr(weighted, method)(probe), getattr(repeated, method)(probe), rtol=0, atol=1e-12
        )


def test_default_knots_follow_effective_sample_size():
    # unsmoothed (the paper's map): about 100 events per interval
    few = LatentProjection.fit(SPACE, _reference(500, 1), bandwidth=0)
    many = LatentProjection.fit(SPACE, _reference(50_000, 1), bandwidth=0)
    assert len(few.knots(BOUNDED)) == 20 + 1  # the floor
    assert len(many.knots(BOUNDED)) == 500 + 1
    # smoothed (the default): 1000 knots whatever the sample size
    assert len(LatentProjection.fit(SPACE, _reference(500, 1)).knots(BOUNDED)) == 1000 + 1
    np.testing.assert_array_equal(few.knots(SPACE.names[BOUNDED]), few.knots(BOUNDED))
    for bad in (BOUNDED + 0.7, SPACE.dim, -1):  # a fraction had been truncated to an index
        with pytest.raises(InputError, match="knots: observable index"):
            few.knots(bad)


def _slope_ratio(proj: LatentProjection, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """log(Q_x' / its expectation) on the knot intervals of 'm' inside [lo, hi], for
    reference events m − 100 ~ Exponential(100): Q_x' = (1 − f)·p(m) + f/700 exactly."""
    m = proj._maps[BOUNDED]
    slope = np.diff(m.cdf) / np.diff(m.knots)
    mid = 0.5 * (m.knots[1:] + m.knots[:-1])
    expected = (1 - m.f) * np.exp(-(mid - 100.0) / 100.0) / 100.0 + m.f / 700.0
    inside = (mid > lo) & (mid < hi)
    return mid[inside], np.log(slope / expected)[inside]


def test_smoothing_removes_the_histogram_comb():
    # The raw empirical CDF's slope is a histogram of ~100 events per interval: it jumps by
    # ±10 % · (1 − f) from one interval to the next, and every density carries that comb in
    # its Jacobian. Smoothed (kernel sd h = 0.023 · 700 ≈ 16 for 50,000 events), the relative
    # noise of the slope is 1/√(n h p(m) 2√π) ≤ 2.7 % · (1 − f) for m ≤ 400, correlated over
    # h: neighbours differ by ~(0.7/16) of that. Bounds: 3-4 × those, edges (2 h) excluded.
    x = _reference(50_000, 11)
    raw = LatentProjection.fit(SPACE, x, bandwidth=0)
    smooth = LatentProjection.fit(SPACE, x)
    _, r_raw = _slope_ratio(raw, 140.0, 400.0)
    _, r_smooth = _slope_ratio(smooth, 140.0, 400.0)
    assert np.std(np.diff(r_raw)) > 0.05  # the comb: ~ √2 · 0.1 · (1 − f) · p/(p + f/700·2)
    assert np.max(np.abs(np.diff(r_smooth))) < 0.002
    assert np.max(np.abs(r_smooth - r_smooth.mean())) < 0.05
    # the smoothing keeps every event's mass inside the range: Q_x runs from 0 to 1 exactly
    m = smooth._maps[BOUNDED]
    assert m.cdf[0] == 0.0 and m.cdf[-1] == 1.0 and np.all(np.diff(m.cdf) > 0)


def test_bandwidth_scales_the_smoothing():
    x = _reference(5000, 12)
    wide = LatentProjection.fit(SPACE, x, bandwidth=0.1)
    narrow = LatentProjection.fit(SPACE, x, bandwidth=0.01)
    # a wider kernel averages more events: smaller slope wiggles around the truth
    _, r_wide = _slope_ratio(wide, 250.0, 450.0)
    _, r_narrow = _slope_ratio(narrow, 250.0, 450.0)
    assert np.std(np.diff(r_wide)) < np.std(np.diff(r_narrow))


def test_weights_change_the_map():
    x = _reference(500, 3)
    w = np.where(x[:, BOUNDED] > 300, 10.0, 1.0)
    plain, weighted = LatentProjection.fit(SPACE, x), LatentProjection.fit(SPACE, x, weights=w)
    probe = _events(BOUNDED, [300.0])
    assert weighted.forward(probe)[0, BOUNDED] < plain.forward(probe)[0, BOUNDED] - 0.1


def test_f_zero_stays_strictly_increasing_and_f_override():
    space = ObservableSpace([Observable("x", 0.0, 1.0), Observable("y", 0.0, 1.0, f=0.25)])
    x = np.random.default_rng(0).uniform(0.0, 0.4, (200, 2))
    proj = LatentProjection.fit(space, x, f=0.0)
    assert proj.f == (1e-6, 0.25)
    probe = np.linspace(0.5, 1.0, 50)[:, None].repeat(2, 1)  # no reference events here
    u, log_det = proj.forward_and_log_det(probe)
    assert np.all(np.diff(u, axis=0) > 0) and np.all(np.isfinite(log_det))
    back = proj.inverse(u)
    assert np.max(np.abs(back - probe)) < 1e-9


def test_discrete_columns_pass_through():
    x = X_REF[:200]
    u = PROJ.forward(x)
    np.testing.assert_array_equal(u[:, DISCRETE], x[:, DISCRETE])
    np.testing.assert_array_equal(PROJ.inverse(u)[:, DISCRETE], x[:, DISCRETE])
    assert PROJ.f[DISCRETE] is None


# -- unbounded observables ----------------------------------------------------------------------


def test_every_real_value_has_finite_u_and_jacobian():
    big = np.finfo(np.float64).max
    values = [-big, -1e300, -1e10, -100.0, -1.0, 0.0, 1e-300, 1.0, 100.0, 1e10, 1e300, big]
    x = _events(FREE, values)
    x[:, HALF] = np.abs(values)
    u, log_det = PROJ.forward_and_log_det(x)
    per = PROJ.log_abs_det_jacobian(x, per_observable=True)
    assert np.all(np.isfinite(u)) and np.all(np.abs(u) <= U)
    assert np.all(np.diff(u[:, FREE]) >= 0)
    # log|dh/dx| = log(f c) − |x − edge|/s: finite until |x|/s overflows (s < 1 here)
    assert np.all(np.isfinite(log_det[1:-1])) and np.all(np.isfinite(per[1:-1]))
    assert log_det[1] < log_det[2] < log_det[3] and log_det[-2] < log_det[-3] < log_det[-4]


@pytest.mark.parametrize("j", [HALF, FREE])
def test_round_trip_in_the_tails(j):
    a, b, s = _core(j)
    depth = np.arange(0.0, 36.0, 0.5)
    x = np.concatenate([b + s * depth] + ([a - s * depth] if j == FREE else []))
    xx = _events(j, x)
    u = PROJ.forward(xx)
    back = PROJ.inverse(u)[:, j]
    # as deep as u resolves the tail: the error is ~1 ulp of u_bound divided by dh/dx
    h_prime = np.exp(PROJ.log_abs_det_jacobian(xx, per_observable=True)[:, j])
    assert np.all(np.abs(back - x) <= 1e-9 * (b - a) + 4 * np.spacing(U) / h_prime)
    shallow = np.abs(x - np.clip(x, a, b)) <= 10 * s
    assert np.max(np.abs(back - x)[shallow]) < 1e-9 * (b - a)


def test_box_edge_of_an_unbounded_side_is_infinite():
    u = torch.tensor([[0.0, U, -U, 0.0], [0.0, -U, U, 1.0]], dtype=torch.float64)
    x = PROJ.inverse(u)
    assert x[0, 1] == math.inf and x[0, 2] == -math.inf and x[1, 2] == math.inf
    assert x[1, 1] == 0.0  # the finite lower bound of "pt"
    with pytest.raises(InputError, match="'pt'"):
        PROJ.inverse(u.numpy())


# -- dtypes, devices, caching -------------------------------------------------------------------


def test_float32_agrees_with_float64():
    x32 = torch.tensor(np.concatenate([X_REF, _events(FREE, [-9.0, 9.0])]), dtype=torch.float32)
    u32, ld32 = PROJ.forward_and_log_det(x32)
    u64, ld64 = PROJ.forward_and_log_det(x32.double())
    assert u32.dtype == torch.float32 and ld32.dtype == torch.float32
    torch.testing.assert_close(u32.double(), u64, rtol=0, atol=2e-5)
    torch.testing.assert_close(ld32.double(), ld64, rtol=0, atol=1e-4)
    back = PROJ.inverse(u32)
    assert back.dtype == torch.float32
    torch.testing.assert_close(back.double(), x32.double(), rtol=2e-6, atol=2e-4)
    x32.requires_grad_(True)
    PROJ.forward(x32).sum().backward()
    assert torch.all(torch.isfinite(x32.grad))


def test_tensor_path_keeps_dtype_and_leading_dims_and_caches_tables():
    proj = LatentProjection.fit(SPACE, X_REF[:500], n_knots=50)
    x = torch.tensor(X_REF[:12]).reshape(3, 4, 4)
    u = proj.forward(x)
    assert u.shape == (3, 4, 4) and u.dtype == torch.float64
    np.testing.assert_array_equal(u.reshape(12, 4).numpy(), proj.forward(X_REF[:12]))
    assert proj.log_abs_det_jacobian(x).shape == (3, 4)
    proj.forward(x.float())
    proj.inverse(u.float())
    assert len(proj._cache) == 2
    if torch.cuda.is_available():
        xc = x.cuda()
        torch.testing.assert_close(proj.forward(xc).cpu(), u)


def test_numpy_inputs_accept_named_columns():
    cols = {name: X_REF[:20, j] for j, name in enumerate(SPACE.names)}
    np.testing.assert_array_equal(PROJ.forward(cols), PROJ.forward(X_REF[:20]))
    u = PROJ.forward(X_REF[:20])
    named_u = {name: u[:, j] for j, name in enumerate(SPACE.names)}
    np.testing.assert_array_equal(PROJ.inverse(named_u), PROJ.inverse(u))


# -- serialisation ------------------------------------------------------------------------------


def test_to_dict_round_trip_is_bit_for_bit():
    text = json.dumps(PROJ.to_dict(), allow_nan=False)
    assert '"inf"' in text
    back = LatentProjection.from_dict(json.loads(text))
    x = np.concatenate([X_REF, _events(FREE, [-10.0, 10.0])])
    u = PROJ.forward(x)
    np.testing.assert_array_equal(back.forward(x), u)
    np.testing.assert_array_equal(back.log_abs_det_jacobian(x), PROJ.log_abs_det_jacobian(x))
    np.testing.assert_array_equal(back.inverse(u), PROJ.inverse(u))
    np.testing.assert_array_equal(back.latent_density(u), PROJ.latent_density(u))
    x32 = torch.tensor(x, dtype=torch.float32)
    assert torch.equal(back.forward(x32), PROJ.forward(x32))
    assert back.space == SPACE and back.f == PROJ.f


def test_pickle_round_trip():
    PROJ.forward(torch.tensor(X_REF[:5]))
    back = pickle.loads(pickle.dumps(PROJ))
    assert back._cache == {}
    np.testing.assert_array_equal(back.forward(X_REF), PROJ.forward(X_REF))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(format="something else"),
        lambda d: d.update(version=99),
        lambda d: d.pop("maps"),
        lambda d: d["maps"][0].update(knots=d["maps"][0]["knots"][::-1]),
        lambda d: d["maps"][0].update(cdf=[0.5] * len(d["maps"][0]["cdf"])),
        lambda d: d["maps"][1].update(tail_hi={"mass": -1.0, "scale": 1.0}),
        lambda d: d["maps"].pop(),
        lambda d: d.update(alpha=-4.0),
    ],
)
def test_from_dict_rejects_bad_descriptions(mutate):
    d = json.loads(json.dumps(PROJ.to_dict()))
    mutate(d)
    with pytest.raises(InputError):
        LatentProjection.from_dict(d)


# -- bad input --------------------------------------------------------------------------------

SMALL = X_REF[:50]


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: LatentProjection.fit(SPACE, SMALL, weights=np.zeros(50)), "total weight"),
        (lambda: LatentProjection.fit(SPACE, SMALL, weights=-np.ones(50)), "negative"),
        (lambda: LatentProjection.fit(SPACE, SMALL, weights=np.r_[-1.0, np.ones(49)]), "negative"),
        (
            lambda: LatentProjection.fit(SPACE, SMALL, weights=np.r_[np.nan, np.ones(49)]),
            "not finite",
        ),
        (
            lambda: LatentProjection.fit(SPACE, SMALL, weights=np.r_[np.inf, np.ones(49)]),
            "not finite",
        ),
        (lambda: LatentProjection.fit(SPACE, SMALL, weights=np.ones(49)), "shape"),
        (lambda: LatentProjection.fit(SPACE, SMALL, weights=np.ones((50, 1))), "shape"),
        (lambda: LatentProjection.fit(SPACE, SMALL, weights=["a"] * 50), "numeric"),
        (lambda: LatentProjection.fit(SPACE, SMALL[:9]), "at least 10"),
        (
            lambda: LatentProjection.fit(SPACE, SMALL, weights=np.r_[np.ones(9), np.zeros(41)]),
            "at least 10",
        ),
        (lambda: LatentProjection.fit(SPACE, np.repeat(SMALL[:1], 20, axis=0)), "'m'"),
        (lambda: LatentProjection.fit(SPACE, np.r_[SMALL, [[99.0, 1.0, 0.0, 1.0]]]), "'m'"),
        (lambda: LatentProjection.fit(SPACE, np.r_[SMALL, [[200.0, np.nan, 0.0, 1.0]]]), "'pt'"),
        (lambda: LatentProjection.fit(SPACE, SMALL, f=1.5), "f must"),
        (lambda: LatentProjection.fit(SPACE, SMALL, n_knots=0), "n_knots"),
        (lambda: LatentProjection.fit(SPACE, SMALL, bandwidth=-0.1), "bandwidth"),
        (lambda: LatentProjection.fit(SPACE, SMALL, bandwidth=1.5), "bandwidth"),
        (lambda: LatentProjection.fit(SPACE, SMALL, bandwidth=math.nan), "bandwidth"),
        (lambda: LatentProjection.fit(SPACE, SMALL, bandwidth="wide"), "bandwidth"),
        (lambda: LatentProjection.fit(SPACE, SMALL, bandwidth=True), "bandwidth"),
        (lambda: LatentProjection.fit(SPACE, SMALL, alpha=-1.0), "alpha"),
        (lambda: LatentProjection.fit(SPACE, SMALL, beta=-3.0), "latent shape"),
        (lambda: LatentProjection.fit(SPACE, SMALL, u_bound=math.inf), "u_bound"),
        (lambda: LatentProjection.fit(SPACE, SMALL, tail_scale=0.0), "tail_scale"),
        (lambda: LatentProjection.fit(SPACE.to_dict(), SMALL), "ObservableSpace"),
        (lambda: PROJ.forward([[801.0, 1.0, 0.0, 1.0]]), "'m'"),
        (lambda: PROJ.forward([[200.0, -1.0, 0.0, 1.0]]), "'pt'"),
        (lambda: PROJ.forward([[200.0, 1.0, math.inf, 1.0]]), "'eta'"),
        (lambda: PROJ.forward([[200.0, 1.0, 0.0, 1.5]]), "'njet'"),
        (lambda: PROJ.log_abs_det_jacobian([[200.0, 1.0, 0.0]]), "shape"),
        (lambda: PROJ.inverse([[5.0 + 1e-12, 0.0, 0.0, 1.0]]), "'m'"),
        (lambda: PROJ.inverse([[0.0, -5.5, 0.0, 1.0]]), "'pt'"),
        (lambda: PROJ.inverse([[0.0, 0.0, np.nan, 1.0]]), "'eta'"),
        (lambda: PROJ.inverse([[0.0, 0.0, 0.0, 7.0]]), "'njet'"),
        (lambda: PROJ.latent_density([[0.0, 0.0, -6.0, 1.0]]), "'eta'"),
        (lambda: PROJ.forward(torch.zeros(3, 2)), "shape"),
        (lambda: PROJ.forward(torch.zeros(3, 4, dtype=torch.int64)), "floating"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(InputError, match=match):
        call()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_interval_lookup_equals_searchsorted(dtype):
    """The maps' interval index by a uniform cell grid (many events) is exactly
    searchsorted(T, x, right=True) − 1 clamped to the K intervals: for a fitted map's uniform
    knots and uneven CDF, a random uneven table, at every entry, one ulp either side, at the
    cells' edges and beyond both ends; a table too uneven for the grid (or small batches)
    falls back to searchsorted; NaN gives an index in range, no error."""
    from egmm.latent import _CELLS_MIN, _cells, _interval

    rng = np.random.default_rng(3)
    space = ObservableSpace([Observable("a", 0.0, 10.0), Observable("b", -math.inf, math.inf)])
    x = np.column_stack([rng.gamma(2.0, 1.5, 4000).clip(0, 10), rng.normal(size=4000)])
    proj = LatentProjection.fit(space, x)
    tables = [t for tb in proj._tables(torch.zeros(1, dtype=dtype)) for t in (tb.knots, tb.cdf)]
    tables.append(torch.as_tensor(np.cumsum(rng.uniform(0.2, 1.0, 60)), dtype=dtype))
    tables.append(torch.arange(9, dtype=dtype))  # entries exactly on cell edges (width ½)
    inf = torch.tensor(math.inf, dtype=dtype)
    for table in tables:
        cells = _cells(table)
        assert cells is not None
        t = table.double().numpy()
        width = t[-1] - t[0]
        points = torch.as_tensor(np.concatenate([
            rng.uniform(t[0] - 0.1 * width, t[-1] + 0.1 * width, 20_000), t,
            cells.lo + np.arange(len(cells.start)) / cells.scale, [math.inf, -math.inf]]),
            dtype=dtype)
        points = torch.cat([points, torch.nextafter(points, inf), torch.nextafter(points, -inf)])
        assert len(points) >= _CELLS_MIN
        want = (torch.searchsorted(table, points, right=True) - 1).clamp(0, len(t) - 2)
        assert torch.equal(_interval(table, cells, points), want)
        assert torch.equal(_interval(table, cells, points.view(3, -1)), want.view(3, -1))
        assert torch.equal(_interval(table, cells, points[:10]), want[:10])  # searchsorted
        nan = _interval(table, cells, torch.full((_CELLS_MIN,), math.nan, dtype=dtype))
        assert bool(((nan >= 0) & (nan <= len(t) - 2)).all())
        # a point within rounding of a cell's edge may be counted in the neighbouring cell:
        # grids shifted by a hair put the entries and edges there, either side
        for shift in (1e-9, -1e-9):
            moved = cells._replace(lo=cells.lo + shift / cells.scale)
            assert torch.equal(_interval(table, moved, points), want)
    # an interval 1e-7 of the span: a grid would need 2e7 cells; and two equal entries
    assert _cells(torch.tensor([0.0, 1e-7, 0.5, 1.0], dtype=torch.float64)) is None
    assert _cells(torch.tensor([0.0, 0.5, 0.5, 1.0], dtype=torch.float64)) is None
