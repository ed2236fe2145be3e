"""GMMDensity: normalisation, sampling vs log_prob, gradients, caching, files, bad input."""

from __future__ import annotations

import json
import math
import struct

import numpy as np
import pytest
import torch
from scipy import stats

from egmm import (
    GMMDensity,
    InputError,
    LatentProjection,
    ModelFileError,
    Observable,
    ObservableSpace,
    ParameterError,
    train,
)
from egmm.density import truncated_normal_log_mass
from egmm.groundtruth import PaperToy
from helpers import SMALL, quadrature_nodes, trained_toy_model


@pytest.fixture(scope="module")
def trained_2d():
    return trained_toy_model(dims=2)[0]


@pytest.fixture(scope="module")
def trained_1d():
    return trained_toy_model(dims=1)[0]


def test_paper_table6_weight_counts():
    toy = PaperToy()
    x = toy.sample(2000, 0.0, 0.0, seed=0)
    proj = LatentProjection.fit(toy.space, x)
    model = GMMDensity(toy.space, ["cx", "cy"], proj, parameter_bounds={"cx": (-1.5, 1.5),
                                                                         "cy": (-1.5, 1.5)})
    assert model.n_weights() == [18090, 54770, 68940, 84750]  # paper-toy.md, Table 6


def test_truncated_normal_log_mass_accurate_in_tails():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    a = [-1.0, 5.0, -40.0, 8.0, -3.0, 2.0]
    b = [1.0, 6.0, -39.0, 30.0, 9.0, 2.0 + 1e-6]
    expected = [float(mpmath.log(mpmath.ncdf(hi) - mpmath.ncdf(lo))) for lo, hi in zip(a, b)]
    got = truncated_normal_log_mass(torch.tensor(a, dtype=torch.float64),
                                    torch.tensor(b, dtype=torch.float64)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    # float32: the erfc fast path and the log_ndtr fallback, to float32 rounding (absolute
    # 1e-6 near mass 1, relative 2e-5 in the tails; the last interval, 1e-6 wide, is not
    # resolvable in float32); an empty interval is −inf, gradients stay finite
    a32 = torch.tensor(a[:-1], dtype=torch.float32, requires_grad=True)
    b32 = torch.tensor(b[:-1], dtype=torch.float32)
    expected32 = [float(mpmath.log(mpmath.ncdf(float(hi)) - mpmath.ncdf(float(lo))))
                  for lo, hi in zip(a32.detach(), b32)]  # of the float32-rounded edges
    got32 = truncated_normal_log_mass(a32, b32)
    np.testing.assert_allclose(got32.detach().numpy(), expected32, rtol=2e-5, atol=1e-6)
    got32.sum().backward()
    assert torch.isfinite(a32.grad).all()
    empty = truncated_normal_log_mass(torch.tensor([0.3, -50.0]), torch.tensor([0.3, -50.0]))
    assert torch.all(empty == -math.inf)


def test_1d_density_integrates_to_one(trained_1d):
    nodes, weights = quadrature_nodes(0.0, 1.0, trained_1d.projection.knots("a"))
    for c in (-1.0, 0.3, 1.0):
        total = np.exp(trained_1d.log_prob(nodes[:, None], {"c": c})) @ weights
        assert abs(total - 1.0) < 1e-3


def test_2d_density_integrates_to_one(trained_2d):
    na, wa = quadrature_nodes(0.0, 1.0, trained_2d.projection.knots("a"), order=4,
                              edge_levels=30)
    nb, wb = quadrature_nodes(0.0, 1.0, trained_2d.projection.knots("b"), order=4,
                              edge_levels=30)
    pts = np.stack(np.meshgrid(na, nb, indexing="ij"), -1).reshape(-1, 2)
    for c in (-0.5, 1.0):
        p = np.exp(trained_2d.log_prob(pts, {"c": c})).reshape(len(na), len(nb))
        assert abs(wa @ p @ wb - 1.0) < 1e-3


def test_unbounded_observable_integrates_to_one():
    rng = np.random.default_rng(3)
    space = ObservableSpace([Observable("y", -np.inf, np.inf)])
    x = rng.standard_normal((2000, 1))
    proj = LatentProjection.fit(space, x)
    torch.manual_seed(1)
    model = GMMDensity(space, (), proj, **SMALL)
    train(model, x, np.zeros((2000, 0)), max_epochs=2, progress=False)
    knots = proj.knots("y")
    core_nodes, core_w = quadrature_nodes(knots[0], knots[-1], knots)
    # beyond the core the map is an exponential tail: substitute t = exp(-|x - edge|)
    t, tw = np.polynomial.legendre.leggauss(200)
    t, tw = 0.5 * (t + 1), 0.5 * tw
    dist = -np.log(t)
    lo_x, hi_x = knots[0] - dist, knots[-1] + dist
    total = (np.exp(model.log_prob(core_nodes[:, None])) @ core_w
             + (np.exp(model.log_prob(lo_x[:, None])) / t) @ tw
             + (np.exp(model.log_prob(hi_x[:, None])) / t) @ tw)
    assert abs(total - 1.0) < 1e-3


def test_samples_have_uniform_pit(trained_2d):
    # For samples of the model itself the PIT of every conditional is exactly uniform: KS at
    # a fixed seed, failing only with probability 1e-3 per column if the code is right.
    for c in (-1.0, 0.5):
        x = trained_2d.sample(20000, {"c": c}, seed=11)
        assert np.all((x >= 0.0) & (x <= 1.0))
        pit = trained_2d.pit(x, {"c": c})
        for j in range(2):
            assert stats.kstest(pit[:, j], "uniform").pvalue > 1e-3


def test_float32_sampling_has_uniform_pit(trained_2d):
    # the network pass in float32 (the inversion in float64) still samples the model: the
    # float64 PIT of its samples is uniform (KS, failing with probability 1e-3 per column)
    x = trained_2d.sample(20000, {"c": 0.3}, seed=12, dtype=torch.float32)
    pit = trained_2d.pit(x, {"c": 0.3})
    for j in range(2):
        assert stats.kstest(pit[:, j], "uniform").pvalue > 1e-3
    with pytest.raises(InputError, match="dtype"):
        trained_2d.sample(10, {"c": 0.3}, dtype=torch.float16)


def test_sample_seeded_and_per_event_theta(trained_2d):
    a = trained_2d.sample(100, {"c": 0.2}, seed=5)
    b = trained_2d.sample(100, {"c": 0.2}, seed=5)
    c = trained_2d.sample(100, {"c": 0.2}, seed=6)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    per_event = trained_2d.sample(4, {"c": np.array([-1.0, -1.0, 1.0, 1.0])}, seed=1)
    assert per_event.shape == (4, 2)


def test_per_event_theta_equals_shared(trained_2d):
    x = trained_2d.sample(50, {"c": 0.0}, seed=2)
    shared = trained_2d.log_prob(x, {"c": 0.4})
    per = trained_2d.log_prob(x, {"c": np.full(50, 0.4)})
    np.testing.assert_allclose(per, shared, rtol=1e-12)


def test_chunking_float32_and_prepare_agree(trained_2d):
    # x representable in float32, so that both precisions see the same events
    x = trained_2d.sample(1000, {"c": 0.1}, seed=3).astype(np.float32).astype(np.float64)
    full = trained_2d.log_prob(x, {"c": -0.3})
    chunked = trained_2d.log_prob(x, {"c": -0.3}, chunk_size=7)
    f32 = trained_2d.log_prob(x, {"c": -0.3}, dtype=torch.float32)
    np.testing.assert_allclose(chunked, full, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(f32, full, atol=2e-4)
    prep = trained_2d.prepare(trained_2d.space.validate(x))
    th = torch.tensor([-0.3], dtype=torch.float64)
    np.testing.assert_allclose(trained_2d.log_prob_prepared(prep, th).detach().numpy(), full,
                               rtol=1e-12)


def test_theta_gradient_matches_finite_differences(trained_2d):
    x = torch.as_tensor(trained_2d.sample(200, {"c": 0.0}, seed=4))
    prep = trained_2d.prepare(x.numpy())
    th = torch.tensor([0.37], dtype=torch.float64, requires_grad=True)
    total = trained_2d.log_prob_prepared(prep, th).sum()
    (grad,) = torch.autograd.grad(total, th)
    h = 1e-6
    with torch.no_grad():
        up = trained_2d.log_prob_tensor(x, th.detach() + h).sum()
        dn = trained_2d.log_prob_tensor(x, th.detach() - h).sum()
    assert torch.isfinite(grad).all()
    np.testing.assert_allclose(grad.item(), ((up - dn) / (2 * h)).item(), rtol=1e-5, atol=1e-6)


def test_importance_weights_average_to_one(trained_2d):
    # E_{x~p(θ_ref)}[p(x|θ)/p(x|θ_ref)] = 1; the spread of the mean is std(w)/√n
    x = trained_2d.sample(40000, {"c": 0.0}, seed=9)
    w = trained_2d.importance_weights(x, {"c": 0.5}, {"c": 0.0})
    assert abs(w.mean() - 1.0) < 4 * w.std() / np.sqrt(len(w))


def test_save_load_bit_identical(trained_2d, tmp_path):
    path = tmp_path / "model.egmm"
    trained_2d.save(path)
    loaded = GMMDensity.load(path)
    x = trained_2d.sample(500, {"c": 0.5}, seed=1)
    np.testing.assert_array_equal(loaded.log_prob(x, {"c": 0.5}),
                                  trained_2d.log_prob(x, {"c": 0.5}))
    np.testing.assert_array_equal(loaded.sample(50, {"c": 0.5}, seed=2),
                                  trained_2d.sample(50, {"c": 0.5}, seed=2))
    assert loaded.parameter_bounds == trained_2d.parameter_bounds
    assert not list(tmp_path.glob("*.tmp*"))
    # the file gets the permissions of any file the user writes (umask), not owner-only
    import os
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


def test_model_file_errors(trained_2d, tmp_path):
    path = tmp_path / "model.egmm"
    trained_2d.save(path)
    data = path.read_bytes()
    with pytest.raises(ModelFileError, match="no such"):
        GMMDensity.load(tmp_path / "missing.egmm")
    (tmp_path / "trunc.egmm").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match=r"trunc\.egmm"):
        GMMDensity.load(tmp_path / "trunc.egmm")
    (tmp_path / "junk.egmm").write_bytes(b"\x00" * 64)
    with pytest.raises(ModelFileError):
        GMMDensity.load(tmp_path / "junk.egmm")
    # a file from a newer schema: rewrite the header's schema field
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])

    def rewritten(name, metadata):
        """The model file with its safetensors header's metadata replaced."""
        text = json.dumps({**header, "__metadata__": metadata}).encode()
        text += b" " * ((8 - len(text) % 8) % 8)
        (tmp_path / name).write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])
        return tmp_path / name

    with pytest.raises(ModelFileError, match="schema 99"):
        GMMDensity.load(rewritten("newer.egmm", {**header["__metadata__"], "schema": "99"}))
    # one flipped bit in the weights: the checksum refuses it (it had loaded, changing log p)
    flipped = bytearray(data)
    flipped[8 + n + (len(data) - 8 - n) // 2] ^= 0x01
    (tmp_path / "flipped.egmm").write_bytes(bytes(flipped))
    with pytest.raises(ModelFileError, match="checksum"):
        GMMDensity.load(tmp_path / "flipped.egmm")
    # a file without a checksum (written before it existed) whose trained range was edited:
    # the range no longer matches the network's input scaling
    old = {k: v for k, v in header["__metadata__"].items() if k != "sha256"}
    config = json.loads(old["config"])
    config["parameter_bounds"] = {"c": [-7.0, 1.0]}
    with pytest.raises(ModelFileError, match="trained range"):
        GMMDensity.load(rewritten("edited.egmm", {**old, "config": json.dumps(config)}))
    GMMDensity.load(rewritten("unchecked.egmm", old))  # (an old file as it was: loads)
    with pytest.raises(ModelFileError, match="folder does not exist"):
        trained_2d.save(tmp_path / "no" / "such" / "model.egmm")


def test_float64_weights_stay_float64_and_threads_save_one_path(trained_2d, tmp_path):
    import concurrent.futures as cf
    import copy

    double = copy.deepcopy(trained_2d)
    double.module.double()
    path = tmp_path / "double.egmm"
    double.save(path)
    loaded = GMMDensity.load(path)
    assert all(p.dtype == torch.float64 for p in loaded.module.parameters())
    x = trained_2d.sample(200, {"c": 0.5}, seed=1)
    np.testing.assert_array_equal(loaded.log_prob(x, {"c": 0.5}), double.log_prob(x, {"c": 0.5}))
    # threads of one process saving one path used to share a temporary name (half failed)
    with cf.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: trained_2d.save(tmp_path / "shared.egmm"), range(16)))
    GMMDensity.load(tmp_path / "shared.egmm")
    assert not list(tmp_path.glob("*.tmp*"))


def test_extrapolation_stops_where_it_is_no_density(trained_2d):
    # allow_outside extrapolates, but 1e10 half-widths out a trained model's conditionals
    # had integrated to 1e294 (+inf log p, NaN samples) without a word
    x = trained_2d.sample(5, {"c": 0.5}, seed=1)
    assert np.all(np.isfinite(trained_2d.log_prob(x, {"c": 3.0}, allow_outside=True)))
    for far in (1e10, -1e20):
        with pytest.raises(ParameterError, match="half-widths outside"):
            trained_2d.log_prob(x, {"c": far}, allow_outside=True)
        with pytest.raises(ParameterError, match="half-widths outside"):
            trained_2d.sample(5, {"c": far}, allow_outside=True)
    # the PIT and the latent density extrapolate alike, and refuse without allow_outside
    u = trained_2d.projection.forward(torch.as_tensor(x)).numpy()
    for method, arg in ((trained_2d.pit, x), (trained_2d.log_prob_latent, u)):
        with pytest.raises(ParameterError, match="outside the model's range"):
            method(arg, {"c": 3.0})
        assert np.all(np.isfinite(method(arg, {"c": 3.0}, allow_outside=True)))
    lat = trained_2d.log_prob_latent(u, {"c": 3.0}, allow_outside=True)
    assert np.all(lat != trained_2d.log_prob_latent(u, {"c": 0.5}))


def test_seeds_and_dtypes_are_checked(trained_2d):
    x = trained_2d.sample(5, {"c": 0.5}, seed=3)
    for bad in (-1, 2.5, "a", True, [1, -2]):
        with pytest.raises(InputError, match="seed must be"):
            trained_2d.sample(5, {"c": 0.5}, seed=bad)
    np.testing.assert_array_equal(trained_2d.sample(5, {"c": 0.5}, seed=3.0), x)
    assert trained_2d.sample(5, {"c": 0.5}, seed=np.random.SeedSequence(4)).shape == (5, 2)
    for dtype in (torch.float16, torch.bfloat16, torch.int64):
        with pytest.raises(InputError, match="dtype"):
            trained_2d.log_prob(x, {"c": 0.5}, dtype=dtype)


def test_discrete_observable():
    rng = np.random.default_rng(0)
    n = 3000
    c = rng.choice([0.0, 1.0], n)
    k = rng.poisson(1.0 + 2.0 * c).clip(0, 5)
    y = rng.uniform(size=n) * (1 + k) / 6
    space = ObservableSpace([Observable("njet", 0, 5, discrete=True), Observable("y", 0, 1)])
    x = np.stack([k, y], 1).astype(float)
    proj = LatentProjection.fit(space, x)
    torch.manual_seed(0)
    model = GMMDensity(space, ["c"], proj, categorical_hidden=(16,), **SMALL)
    train(model, x, c[:, None], max_epochs=3, progress=False)
    # sum over the categories of the integral over y is 1
    nodes, weights = quadrature_nodes(0.0, 1.0, proj.knots("y"))
    total = sum(np.exp(model.log_prob(np.stack([np.full(len(nodes), kk), nodes], 1),
                                      {"c": 0.5})) @ weights for kk in range(6))
    assert abs(total - 1.0) < 1e-3
    s = model.sample(500, {"c": 1.0}, seed=0)
    assert np.all(s[:, 0] == np.round(s[:, 0])) and s[:, 0].min() >= 0 and s[:, 0].max() <= 5


def test_bad_input(trained_2d):
    with pytest.raises(InputError, match="unknown option"):
        GMMDensity(trained_2d.space, ["c"], trained_2d.projection, n_gaus=3)
    with pytest.raises(InputError, match="projection"):
        GMMDensity(trained_2d.space, ["c"], None)
    # knob values the networks cannot use name the knob (eps = -1 or nan had given NaN
    # densities and samples; f_sigma = 0 a bare "math domain error")
    for knobs, name in (({"eps": -1.0}, "eps"), ({"eps": float("nan")}, "eps"),
                        ({"s_sigma": float("nan")}, "s_sigma"), ({"f_sigma": 0.0}, "f_sigma"),
                        ({"n_gauss": 0}, "n_gauss"), ({"n_gauss": 2.5}, "n_gauss"),
                        ({"B1": -3}, "B1"), ({"categorical_hidden": ()}, "categorical_hidden")):
        with pytest.raises(InputError, match=name):
            GMMDensity(trained_2d.space, ["c"], trained_2d.projection, **knobs)
    with pytest.raises(ParameterError, match="outside the model's range"):
        trained_2d.log_prob([[0.5, 0.5]], {"c": 3.0})
    trained_2d.log_prob([[0.5, 0.5]], {"c": 3.0}, allow_outside=True)
    with pytest.raises(ParameterError, match="not finite"):
        trained_2d.log_prob([[0.5, 0.5]], {"c": np.nan})
    with pytest.raises(ParameterError, match="unknown"):
        trained_2d.log_prob([[0.5, 0.5]], {"c": 0.0, "d": 1.0})
    with pytest.raises(ParameterError, match="parameter 'c': expected a scalar or 3 values"):
        trained_2d.log_prob(np.full((3, 2), 0.5), {"c": np.zeros(10)})
    with pytest.raises(ParameterError, match="parameter 'c'"):
        trained_2d.log_prob(np.full((3, 2), 0.5), {"c": np.zeros((3, 1))})
    with pytest.raises(InputError, match="'b'"):
        trained_2d.log_prob([[0.5, 1.5]], {"c": 0.0})
    with pytest.raises(InputError, match="latent box"):
        trained_2d.log_prob_latent([[0.0, 7.0]], {"c": 0.0})
    with pytest.raises(InputError, match="n must be"):
        trained_2d.sample(-1, {"c": 0.0})
    for bad in (2.5, float("nan"), "3", True):  # refused, not truncated
        with pytest.raises(InputError, match="n must be a whole number"):
            trained_2d.sample(bad, {"c": 0.0})
    assert trained_2d.sample(3.0, {"c": 0.0}, seed=1).shape == (3, 2)
    # a chunk size < 1 had returned np.empty's uninitialised memory as results
    for bad in (-1, 0, 2.5):
        with pytest.raises(InputError, match="chunk_size"):
            trained_2d.log_prob(np.full((3, 2), 0.5), {"c": 0.0}, chunk_size=bad)
        with pytest.raises(InputError, match="chunk_size"):
            trained_2d.sample(3, {"c": 0.0}, chunk_size=bad)



@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_folded_heads_equal_the_three_heads(dtype):
    """Frozen weights: the three heads run as one batched product with their output maps
    folded in (float64: padded to 24 columns for the BLAS kernels); the mixture equals the
    one the training path computes from the three heads as written."""
    from egmm.networks import ConditionalGMMNet

    torch.manual_seed(4)
    net = ConditionalGMMNet(2, 1, u_lo=-5.0, u_hi=5.0)
    pre = torch.randn(300, net.joint.out_features, dtype=dtype)
    written = net.mixture(pre)  # trainable weights: three products and the output maps
    net.requires_grad_(False)
    folded = net.mixture(pre.clone())
    for a, b in zip(written, folded):
        assert b.shape == (300, 20) and b.is_contiguous()
        torch.testing.assert_close(b, a.detach(), rtol=1e-5 if dtype == torch.float32 else 1e-12,
                                   atol=1e-5 if dtype == torch.float32 else 1e-12)

def test_capped_logsumexp_equals_torch_logsumexp():
    # terms more than 80 below the largest are evaluated at −80: a change below float64
    # rounding of the result; rows of −inf stay −inf
    from egmm.density import _logsumexp

    rng = np.random.default_rng(3)
    t = torch.as_tensor(rng.normal(0.0, 300.0, (2000, 20)))
    t[0] = -math.inf
    t[1, 5] = -math.inf
    np.testing.assert_allclose(_logsumexp(t).numpy(), torch.logsumexp(t, -1).numpy(),
                               rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_truncated_mixture_log_prob_against_scipy(dtype):
    # the mixture's fused evaluation (2Z = |erfc(c·b) − erfc(c·a)|, constants added per
    # event) against scipy's truncnorm, with components inside, across and far outside the
    # box: masses that underflow the fast path take the exact fallback, values stay finite
    # and the gradient with respect to the mixture parameters is finite and correct
    from scipy import stats

    from egmm.density import _truncated_mixture_log_prob

    lo, hi = -4.0, 4.0
    mu = torch.tensor([[0.0, 3.9, -3.5, 12.0, -60.0, 4.5]], dtype=torch.float64)
    sigma = torch.tensor([[1.0, 0.05, 2.0, 0.3, 1.5, 0.01]], dtype=torch.float64)
    logits = torch.tensor([[0.0, -1.0, 0.5, -2.0, -3.0, 0.2]], dtype=torch.float64)
    u = torch.tensor([-3.99, -1.0, 0.0, 2.5, 3.95, 3.999], dtype=torch.float64)
    # the reference at the dtype-rounded inputs (a 0.01-wide component amplifies float32's
    # rounding of u and μ)
    u, mu, sigma = (t.to(dtype).double() for t in (u, mu, sigma))
    f = torch.softmax(logits.to(dtype).double(), -1)[0].numpy()
    ref = np.log(sum(
        f[g] * stats.truncnorm.pdf(u.numpy(), (lo - m) / s, (hi - m) / s, loc=m, scale=s)
        for g, (m, s) in enumerate(zip(mu[0].numpy(), sigma[0].numpy()))))
    mu_d = mu.to(dtype).expand(len(u), -1).clone().requires_grad_(True)
    sigma_d = sigma.to(dtype).clone().requires_grad_(True)
    got = _truncated_mixture_log_prob(u.to(dtype), torch.log_softmax(logits.to(dtype), -1),
                                      mu_d, sigma_d, lo, hi)
    # float32: the 0.01-wide component beyond the edge at 4.5 enters with −z²/2 and −ln Z
    # of about ±1255 that cancel, each rounded to 1255 · 6e-8 ≈ 8e-5
    tol = 1e-12 if dtype == torch.float64 else 3e-4
    np.testing.assert_allclose(got.detach().double().numpy(), ref, rtol=tol, atol=tol)
    got.sum().backward()
    assert torch.isfinite(mu_d.grad).all() and torch.isfinite(sigma_d.grad).all()
    if dtype == torch.float64:  # ∂/∂μ against central differences of the reference form
        def total(m: np.ndarray) -> float:
            return float(np.log(sum(
                f[g] * stats.truncnorm.pdf(u.numpy(), (lo - m[g]) / s, (hi - m[g]) / s,
                                           loc=m[g], scale=s)
                for g, s in enumerate(sigma[0].numpy()))).sum())
        m0, h = mu[0].numpy(), 1e-6
        fd = [(total(m0 + h * np.eye(6)[g]) - total(m0 - h * np.eye(6)[g])) / (2 * h)
              for g in range(6)]
        np.testing.assert_allclose(mu_d.grad.sum(0).numpy(), fd, rtol=1e-5, atol=1e-7)


def _assert_knob_kept_in_files(model, knob, x, theta, path, old_default):
    """The GMMDensity option ``knob`` survives save/load (same log_prob at ``theta``), and a
    file written before the option existed (no such knob) loads with ``old_default``."""
    model.save(path)
    loaded = GMMDensity.load(path)
    assert loaded.config[knob] == model.config[knob]
    np.testing.assert_array_equal(loaded.log_prob(x, theta), model.log_prob(x, theta))
    old = model.to_config()
    del old["knobs"][knob]
    assert GMMDensity.from_config(old).config[knob] == old_default


def test_smooth_activation_option(tmp_path):
    # activation="silu": a different, smooth network; kept in the model file; files without
    # the knob (older models) load as the paper's LeakyReLU; an unknown name is refused
    space = ObservableSpace([Observable("a", 0.0, 1.0), Observable("b", 0.0, 1.0)])
    x = np.random.default_rng(0).uniform(size=(400, 2))
    proj = LatentProjection.fit(space, x)
    torch.manual_seed(0)
    silu = GMMDensity(space, ["c"], proj, parameter_bounds={"c": (-1.0, 1.0)},
                      activation="silu", **SMALL)
    torch.manual_seed(0)
    leaky = GMMDensity(space, ["c"], proj, parameter_bounds={"c": (-1.0, 1.0)}, **SMALL)
    assert all(net.activation == "silu" for net in silu.nets)
    a, b = silu.log_prob(x[:50], {"c": 0.3}), leaky.log_prob(x[:50], {"c": 0.3})
    assert np.all(np.isfinite(a)) and not np.allclose(a, b)
    # smooth in θ: the θ-gradient is continuous (central differences converge to it)
    xt = torch.as_tensor(x[:50])
    th = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    silu.log_prob_tensor(xt, th).sum().backward()
    h = 1e-5
    up = silu.log_prob(x[:50], {"c": 0.3 + h}).sum()
    down = silu.log_prob(x[:50], {"c": 0.3 - h}).sum()
    assert float(th.grad[0]) == pytest.approx((up - down) / (2 * h), rel=1e-5)
    _assert_knob_kept_in_files(silu, "activation", x[:50], {"c": 0.3}, tmp_path / "silu.egmm",
                               "leaky_relu")
    with pytest.raises(InputError, match="activation must be one of"):
        GMMDensity(space, ["c"], proj, activation="tanh")


def test_theta_features_option(tmp_path):
    # theta_features: the θ branch also sees |θ| ("abs") or θ² ("quadratic"), measured from
    # θ = 0 in units of the half-width; kept in the model file; older files load as "linear"
    space = ObservableSpace([Observable("a", 0.0, 1.0), Observable("b", 0.0, 1.0)])
    x = np.random.default_rng(0).uniform(size=(400, 2))
    proj = LatentProjection.fit(space, x)
    bounds = {"c": (-1.0, 2.0)}  # centre 0.5, half-width 1.5
    torch.manual_seed(0)
    model = GMMDensity(space, ["c"], proj, parameter_bounds=bounds, theta_features="abs",
                       activation="silu", **SMALL)
    th = torch.tensor([[-0.6], [0.9]], dtype=torch.float64)
    np.testing.assert_allclose(model.scale_theta(th).numpy(),
                               [[2 * (-1.1) / 1.5, 2 * 0.6 / 1.5], [2 * 0.4 / 1.5, 2 * 0.9 / 1.5]])
    assert all(net.theta_branch.in_features == 2 for net in model.nets)
    assert not model.smooth  # |θ| has a kink at 0: no exact Hessian
    quad = GMMDensity(space, ["c"], proj, parameter_bounds=bounds,
                      theta_features="quadratic", activation="silu", **SMALL)
    np.testing.assert_allclose(quad.scale_theta(th)[:, 1].numpy(), [(1.2 / 1.5) ** 2,
                                                                     (1.8 / 1.5) ** 2])
    assert quad.smooth
    # the feature reaches the networks: without the linear input the model is exactly even
    # in θ, with a cusp at 0 (one-sided slopes of opposite sign)
    for net in model.nets:
        net.theta_branch.weight[:, 0] = 0.0
    a = model.log_prob(x[:50], {"c": 0.7})
    np.testing.assert_array_equal(a, model.log_prob(x[:50], {"c": -0.7}))
    assert not np.allclose(a, model.log_prob(x[:50], {"c": 0.3}))
    h = 1e-6
    at0 = model.log_prob(x[:50], {"c": 0.0}).sum()
    right = (model.log_prob(x[:50], {"c": h}).sum() - at0) / h
    left = (at0 - model.log_prob(x[:50], {"c": -h}).sum()) / h
    assert right == pytest.approx(-left, rel=1e-4) and abs(right) > 1e-3
    _assert_knob_kept_in_files(model, "theta_features", x[:50], {"c": 0.7},
                               tmp_path / "abs.egmm", "linear")
    with pytest.raises(InputError, match="theta_features must be one of"):
        GMMDensity(space, ["c"], proj, theta_features="cubic")


def test_theta_features_per_observable_and_even(tmp_path):
    # one kind per observable: "even" networks see |θ| alone, so their conditionals are
    # exactly even in θ while a "linear" one is not; each network's θ input has its own width
    space = ObservableSpace([Observable("a", 0.0, 1.0), Observable("b", 0.0, 1.0),
                             Observable("d", 0.0, 1.0)])
    x = np.random.default_rng(1).uniform(size=(400, 3))
    proj = LatentProjection.fit(space, x)
    bounds = {"c": (-1.0, 2.0), "e": (-1.0, 1.0)}
    torch.manual_seed(0)
    model = GMMDensity(space, ["c", "e"], proj, parameter_bounds=bounds,
                       theta_features=["even", "linear", "quadratic"], **SMALL)
    assert [net.theta_branch.in_features for net in model.nets] == [2, 2, 4]
    th = torch.tensor([[-0.6, 0.5]], dtype=torch.float64)
    s = model.scale_theta(th)  # blocks: θ', |z|, z² (z = θ · 2/halfwidth)
    np.testing.assert_allclose(s.numpy(), [[2 * -1.1 / 1.5, 2 * 0.5, 2 * 0.6 / 1.5, 1.0,
                                            (1.2 / 1.5) ** 2, 1.0]])
    np.testing.assert_array_equal(model.theta_input(0, s).numpy(), s[:, 2:4].numpy())
    np.testing.assert_array_equal(model.theta_input(2, s).numpy(), s[:, [0, 1, 4, 5]].numpy())
    u = proj.forward(torch.as_tensor(x[:50]))

    def per_observable(c, e):
        return model.log_prob_latent_per_observable(
            u, torch.tensor([c, e], dtype=torch.float64)).detach().numpy()

    plus, minus = per_observable(0.7, -0.4), per_observable(-0.7, 0.4)
    np.testing.assert_array_equal(plus[:, 0], minus[:, 0])  # even in (c, e)
    assert not np.allclose(plus[:, 1], minus[:, 1]) and not np.allclose(plus[:, 2], minus[:, 2])
    assert not np.allclose(plus[:, 0], per_observable(0.3, -0.4)[:, 0])
    # the same through the training hook and the sampler's path: the whole model is finite
    assert np.isfinite(model.log_prob(x[:50], {"c": 0.0, "e": 0.0})).all()
    assert model.sample(20, {"c": 0.5, "e": -0.5}, seed=1).shape == (20, 3)
    assert not model.smooth  # |θ| has a kink at 0
    _assert_knob_kept_in_files(model, "theta_features", x[:50], {"c": 0.7, "e": 0.1},
                               tmp_path / "per.egmm", "linear")
    assert GMMDensity.load(tmp_path / "per.egmm").config["theta_features"] == [
        "even", "linear", "quadratic"]
    with pytest.raises(InputError, match="one kind per observable"):
        GMMDensity(space, ["c"], proj, theta_features=["even", "linear"])
    with pytest.raises(InputError, match="theta_features of 'b' must be one of"):
        GMMDensity(space, ["c"], proj, theta_features=["even", "odd", "linear"])


@pytest.mark.parametrize("activation", ["leaky_relu", "silu"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_events_as_columns_equal_the_row_path(activation, dtype):
    """log_prob_prepared evaluates frozen networks with events as columns (the bias as a
    weight column, reductions across events; ``mixture_t``): values, θ gradients and (smooth
    activation) θ Hessians equal the row layout's, which the same prepared events without
    their transposed input parts take."""
    model, x, _ = trained_toy_model(epochs=1, activation=activation)
    xs = model.space.validate(x[:400])
    prep = model.prepare(xs, dtype=dtype)
    rows = {k: v for k, v in prep.items() if k != "input_parts_t"}
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5,
                                                                         "atol": 1e-5}

    def value(p, th):
        return model.log_prob_prepared(p, th)

    for c in (-0.7, 0.2):
        th = torch.tensor([c], dtype=torch.float64)
        with torch.no_grad():
            torch.testing.assert_close(value(prep, th), value(rows, th), **tol)
        leaf = th.clone().requires_grad_(True)
        g_cols = torch.autograd.grad(value(prep, leaf).sum(), leaf)[0]
        g_rows = torch.autograd.grad(value(rows, leaf).sum(), leaf)[0]
        torch.testing.assert_close(g_cols, g_rows, **tol)
        if activation == "silu" and dtype == torch.float64:
            h_cols = torch.autograd.functional.hessian(lambda t: value(prep, t).sum(), th)
            h_rows = torch.autograd.functional.hessian(lambda t: value(rows, t).sum(), th)
            torch.testing.assert_close(h_cols, h_rows, rtol=1e-10, atol=1e-10)
    # log_prob from raw events (the input branches run per call), θ shared and per event:
    # columns without a graph, rows with one
    xt = torch.as_tensor(xs, dtype=dtype)
    for th in (torch.tensor([0.3], dtype=dtype),
               torch.linspace(-0.9, 0.9, len(xs), dtype=dtype)[:, None]):
        with torch.no_grad():
            cols = model.log_prob_tensor(xt, th)
        rows = model.log_prob_tensor(xt, th.clone().requires_grad_(True)).detach()
        torch.testing.assert_close(cols, rows, **tol)


@pytest.mark.parametrize("activation", ["leaky_relu", "silu"])
@pytest.mark.parametrize("C", [0, 1, 2])
def test_mixture_t_is_the_transposed_mixture(C, activation):
    """Frozen networks of any depth: mixture_t of the transposed pre-activation (with its row
    of ones) is mixture's output transposed, with and without a graph (bias as a weight
    column, or addmm), for both activations."""
    from egmm.networks import ConditionalGMMNet, ones_row

    torch.manual_seed(5)
    net = ConditionalGMMNet(2, 1, u_lo=-5.0, u_hi=5.0, C=C,
                            activation=activation).requires_grad_(False)
    for layer in net.modules():  # biases start at zero, which would hide a bias error
        if isinstance(layer, torch.nn.Linear):
            layer.bias.normal_(0.0, 0.5)
    pre = torch.randn(300, net.joint.out_features, dtype=torch.float64)
    rows = net.mixture(pre.clone())
    cols = ones_row(pre.shape[1], 300, pre)
    cols[1:] = pre.t()
    graph = torch.cat([torch.ones(1, 300, dtype=pre.dtype), pre.t().requires_grad_(True)])
    for out in (net.mixture_t(cols), net.mixture_t(graph)):
        for a, b in zip(rows, out):
            assert b.shape == (20, 300)
            torch.testing.assert_close(b.t(), a, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sampling_with_events_as_columns_equals_rows(trained_2d, dtype):
    """Frozen networks sample with events as columns; the same seed through the row layout
    (weights that take gradients) draws the same events, θ shared and per event."""
    for theta in ({"c": 0.4}, {"c": np.linspace(-0.8, 0.8, 700)}):
        cols = trained_2d.sample(700, theta, seed=11, dtype=dtype)
        trained_2d.module.requires_grad_(True)
        try:
            rows = trained_2d.sample(700, theta, seed=11, dtype=dtype)
        finally:
            trained_2d.module.requires_grad_(False)
        np.testing.assert_allclose(cols, rows, rtol=1e-9 if dtype == torch.float64 else 1e-4,
                                   atol=1e-9 if dtype == torch.float64 else 1e-4)


@pytest.mark.parametrize("n", [1, 300, 1024, 5000])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_draw_index_inverts_the_cumulative_sum(n, dtype):
    """The sampler's component draw (row-by-row sums for wide batches, torch.cumsum for
    narrow ones) picks exactly the index torch.cumsum's inversion picks from the same
    uniforms, per event and shared (K, 1) alike; it leaves its input untouched, and the
    indices follow the probabilities (a χ² test)."""
    from egmm.density import _ROW_SCAN_MIN, _draw_index

    assert 300 < _ROW_SCAN_MIN <= 1024  # both regimes are exercised
    gen = torch.Generator().manual_seed(1)
    for log_p in (torch.log_softmax(torch.randn(20, n, generator=gen, dtype=dtype), 0),
                  torch.log_softmax(torch.randn(20, 1, generator=gen, dtype=dtype), 0),
                  torch.log_softmax(torch.randn(n, 7, generator=gen, dtype=dtype), 1).t()):
        before = log_p.clone()
        got = _draw_index(log_p, n, torch.Generator().manual_seed(5))
        r = torch.rand(1, n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        cdf = torch.cumsum(log_p.double().exp(), dim=0)
        want = (cdf < r * cdf[-1:]).sum(0).clamp(max=log_p.shape[0] - 1)
        assert got.dtype == torch.int64 and got.shape == (n,)
        assert torch.equal(got, want)
        assert torch.equal(log_p, before)
    # one shared distribution, many draws: the frequencies match it
    p = np.array([0.5, 0.3, 0.15, 0.05])
    k = _draw_index(torch.tensor(np.log(p), dtype=dtype)[:, None], 40_000,
                    torch.Generator().manual_seed(2 + n))
    counts = np.bincount(k.numpy(), minlength=4)
    assert stats.chisquare(counts, 40_000 * p).pvalue > 1e-3


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_stacked_networks_equal_one_at_a_time(dtype):
    """Three or more observables: the networks with inputs run their layers one by one and
    their mixtures' maps, masses and log-sum-exp together (no graph); values equal the row
    layout's, and θ gradients (a graph: one network at a time) too."""
    rng = np.random.default_rng(1)
    space = ObservableSpace([Observable(n, 0.0, 1.0) for n in "abcd"])
    x = rng.uniform(size=(2000, 4)) ** np.array([1.0, 2.0, 0.5, 1.5])
    torch.manual_seed(3)
    model = GMMDensity(space, ["c"], LatentProjection.fit(space, x), **SMALL)
    assert len(model._stackable(model.prepare(x[:5])["input_parts_t"],
                                torch.zeros(1, dtype=torch.float64))) == 3
    prep = model.prepare(x[:300], dtype=dtype)
    rows = {k: v for k, v in prep.items() if k != "input_parts_t"}
    tol = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-5,
                                                                         "atol": 1e-5}
    th = torch.tensor([0.4], dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(model.log_prob_prepared(prep, th),
                                   model.log_prob_prepared(rows, th), **tol)
    leaf = th.clone().requires_grad_(True)
    g = [torch.autograd.grad(model.log_prob_prepared(p, leaf).sum(), leaf)[0]
         for p in (prep, rows)]
    torch.testing.assert_close(g[0], g[1], **tol)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_first_order_mixture_node_equals_autograd(dtype):
    """Within first_order_graphs a frozen network's truncated mixture is one autograd node
    with a written-out backward: its values and its gradients with respect to the heads (log f,
    μ and σ pre-activations) and u equal autograd's through the elementwise form, for
    components inside, across and far outside the box (masses on the exact tail path), with
    one mixture per event or one for all; a second differentiation is refused."""
    from egmm.density import _truncated_mixture_log_prob, _TruncatedMixtureT, first_order_graphs

    lo, hi, eps = -4.0, 4.0, 1e-4
    mu = torch.tensor([0.0, 3.9, -3.5, 5.0, 12.0, -60.0, 4.5], dtype=torch.float64)
    sigma = torch.tensor([1.0, 0.05, 2.0, 0.5, 0.3, 1.5, 0.01], dtype=torch.float64)
    logits = torch.tensor([0.0, -1.0, 0.5, -0.5, -2.0, -3.0, 0.2], dtype=torch.float64)
    if dtype == torch.float32:
        # components 27-50 σ outside the box (the last three) make ∂/∂μ, ∂/∂σ differences of
        # terms ~α/σ, α²/σ (up to ~1e7) that cancel to O(1): in float32 both forms are then
        # off by up to ~10 % (checked against 60-digit mpmath); float64 tests them
        mu, sigma, logits = mu[:4], sigma[:4], logits[:4]
    raw = torch.log(torch.expm1(sigma - eps))                  # softplus(raw) + ε = σ
    u = torch.tensor([-3.99, -1.0, 0.0, 2.5, 3.95, 3.999], dtype=dtype)
    rng = torch.Generator().manual_seed(2)
    shared = torch.stack([logits, mu, raw])[..., None]          # (3, G, 1)
    per_event = shared + 0.05 * torch.randn(3, len(mu), len(u), generator=rng,
                                            dtype=torch.float64)
    # float64: there both forms err by up to 3e-10 (mpmath; 1e-13 for the other components)
    tol = {"rtol": 1e-9, "atol": 1e-9} if dtype == torch.float64 else {"rtol": 2e-4,
                                                                       "atol": 2e-4}
    for heads in (shared, per_event):
        h_ref = heads.to(dtype).clone().requires_grad_(True)
        u_ref = u.clone().requires_grad_(True)
        sig = torch.nn.functional.softplus(h_ref[2]) + eps
        ref = _truncated_mixture_log_prob(u_ref, torch.log_softmax(h_ref[0], 0), h_ref[1], sig,
                                          lo, hi, dim=0)
        w = torch.linspace(0.5, 1.5, len(u), dtype=dtype)       # a non-uniform upstream grad
        g_ref = torch.autograd.grad((w * ref).sum(), (h_ref, u_ref))
        h_new = heads.to(dtype).clone().requires_grad_(True)
        u_new = u.clone().requires_grad_(True)
        with first_order_graphs():
            new = _TruncatedMixtureT.apply(h_new, u_new, lo, hi, eps)
        torch.testing.assert_close(new, ref.detach(), **tol)
        g_new = torch.autograd.grad((w * new).sum(), (h_new, u_new), retain_graph=True)
        assert g_new[0].shape == heads.shape
        for a, b in zip(g_new, g_ref):
            torch.testing.assert_close(a, b, **tol)
        again = torch.autograd.grad((w * new).sum(), (h_new, u_new))  # saved tensors kept
        torch.testing.assert_close(again[0], g_new[0], rtol=0, atol=0)
        with pytest.raises(RuntimeError, match="differentiated twice"):
            new2 = _TruncatedMixtureT.apply(h_new, u_new, lo, hi, eps)
            torch.autograd.grad(new2.sum(), h_new, create_graph=True)


def test_first_order_graphs_in_the_cost_and_model(monkeypatch):
    """The model's θ gradients inside first_order_graphs equal those outside it (the
    elementwise graph); the cost's gradient takes that path, and its exact Hessian (SiLU,
    reverse-over-reverse) is unaffected: the cost computes it outside that context."""
    from egmm import UnbinnedNLL
    from egmm.density import _TruncatedMixtureT, first_order_graphs

    calls = []
    apply = _TruncatedMixtureT.apply
    monkeypatch.setattr(_TruncatedMixtureT, "apply",
                        lambda *a: calls.append(1) or apply(*a))

    model, x, _ = trained_toy_model(epochs=1, activation="silu")
    xs = model.space.validate(x[:300])
    prep = model.prepare(xs)
    th = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    g_plain = torch.autograd.grad(model.log_prob_prepared(prep, th).sum(), th)[0]
    assert not calls  # outside the context: the elementwise graph
    with first_order_graphs():
        lp = model.log_prob_prepared(prep, th)
    assert calls  # inside: the node
    g_node = torch.autograd.grad(lp.sum(), th)[0]
    torch.testing.assert_close(g_node, g_plain, rtol=1e-12, atol=1e-12)
    cost = UnbinnedNLL(xs, model)
    h = cost.exact_hessian(0.3)
    ref = torch.autograd.functional.hessian(
        lambda t: -2.0 * model.log_prob_prepared(prep, t).sum(), th.detach())
    np.testing.assert_allclose(h, ref.numpy(), rtol=1e-9)
    before = len(calls)
    np.testing.assert_allclose(cost.grad([0.3]), -2.0 * g_plain.numpy(), rtol=1e-11)
    assert len(calls) > before
