"""Shared test fixtures (importable as ``helpers``: pytest puts tests/ on sys.path)."""

from __future__ import annotations

import numpy as np

#: a GMMDensity small enough to train in about a second
SMALL = {"n_gauss": 6, "A1": 8, "B1": 8, "B2": 4, "C": 1, "D": 2}


def toy_2d(n_per_point: int = 600, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Two observables on [0, 1]² at c ∈ {−1, 0, 1}: a ~ truncated exponential with slope c,
    b | a ~ N(a, 0.2) clipped to [0, 1]. Returns (x (N, 2), θ (N, 1))."""
    rng = np.random.default_rng(seed)
    cs = np.repeat([-1.0, 0.0, 1.0], n_per_point)
    u = rng.uniform(size=len(cs))
    k = np.where(cs == 0, 1e-9, cs)
    x0 = -np.log1p(-u * (1 - np.exp(-k))) / k
    x1 = np.clip(x0 + 0.2 * rng.standard_normal(len(cs)), 0.0, 1.0)
    return np.stack([x0, x1], 1), cs[:, None]


def toy_2d_scores(x: np.ndarray, th: np.ndarray) -> np.ndarray:
    """∂ log p/∂c of toy_2d's two conditionals: p(a | c) ∝ e^{−c a} on [0, 1] gives
    1/c − 1/expm1(c) − a (1/2 − a at c = 0); b | a does not depend on c."""
    c = th[:, 0]
    safe = np.where(c == 0.0, 1.0, c)
    d0 = np.where(c == 0.0, 0.5, 1.0 / safe - 1.0 / np.expm1(safe)) - x[:, 0]
    return np.stack([d0, np.zeros_like(d0)], 1)[:, :, None]  # (N, 2 observables, 1)


def quadrature_nodes(lo: float, hi: float, knots: np.ndarray, order: int = 8,
                     edge_levels: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights integrating a data-space density of egmm on [lo, hi].

    The density is smooth between the projection's knots (Q_x is linear there) but can peak
    sharply at the bounds, where the latent density q_u of the box edge is tiny and |dh/dx|
    large; so: Gauss-Legendre of ``order`` on every knot interval, and the two outer intervals
    split geometrically (halving ``edge_levels`` times) towards the bound.
    """
    gl_x, gl_w = np.polynomial.legendre.leggauss(order)
    edges = [float(v) for v in knots if lo < v < hi]
    pieces = [(a, b) for a, b in zip([lo, *edges], [*edges, hi])]
    (a0, b0), (a1, b1) = pieces[0], pieces[-1]
    cuts = 0.5 ** np.arange(edge_levels)
    first = [(a0 + (b0 - a0) * c / 2, a0 + (b0 - a0) * c) for c in cuts] + [(a0, a0 + (b0 - a0)
                                                                            * cuts[-1] / 2)]
    last = [(b1 - (b1 - a1) * c, b1 - (b1 - a1) * c / 2) for c in cuts] + [(b1 - (b1 - a1)
                                                                           * cuts[-1] / 2, b1)]
    nodes, weights = [], []
    for a, b in [*first, *pieces[1:-1], *last]:
        nodes.append(0.5 * (a + b) + 0.5 * (b - a) * gl_x)
        weights.append(0.5 * (b - a) * gl_w)
    return np.concatenate(nodes), np.concatenate(weights)


def trained_toy_model(dims: int = 2, epochs: int = 3, seed: int = 0,
                      activation: str = "leaky_relu"):
    """A SMALL GMMDensity p(a[, b] | c) trained briefly on :func:`toy_2d` (about a second).
    Returns (model, x, θ)."""
    import torch

    from egmm import GMMDensity, LatentProjection, Observable, ObservableSpace, train

    x, th = toy_2d()
    x = x[:, :dims]
    space = ObservableSpace([Observable(n, 0.0, 1.0) for n in "ab"[:dims]])
    # the paper's unsmoothed projection: the model (and the kink allowances that the batched
    # fit tests measured on it) as before LatentProjection smoothed by default; the smoothed
    # default is tested with its own models (test_latent, test_density)
    proj = LatentProjection.fit(space, x[th[:, 0] == 0], bandwidth=0)
    torch.manual_seed(seed)
    model = GMMDensity(space, ["c"], proj, **SMALL, activation=activation)
    train(model, x, th, max_epochs=epochs, batch_size=200, progress=False)
    return model, x, th


# -- a likelihood with local modes: a weak Gaussian peak of unknown mean on a flat background --
_MM_LO, _MM_HI, _MM_WIDTH = 0.0, 10.0, 0.5


def _mm_signal_log_prob(x, m):
    import math

    import torch

    z = (x[:, 0] - m) / _MM_WIDTH
    mass = (torch.special.ndtr((_MM_HI - m) / _MM_WIDTH)
            - torch.special.ndtr((_MM_LO - m) / _MM_WIDTH))
    return -0.5 * z**2 - math.log(_MM_WIDTH * math.sqrt(2 * math.pi)) - torch.log(mass)


def _mm_signal_sampler(n, theta, rng):
    from scipy import stats

    m = theta["m"]
    u = rng.uniform(stats.norm.cdf(_MM_LO, m, _MM_WIDTH), stats.norm.cdf(_MM_HI, m, _MM_WIDTH),
                    n)
    return np.clip(stats.norm.ppf(u, m, _MM_WIDTH), _MM_LO, _MM_HI)[:, None]


def _mm_flat_log_prob(x):
    import math

    import torch

    return torch.full((x.shape[0],), -math.log(_MM_HI - _MM_LO), dtype=x.dtype)


def _mm_flat_sampler(n, theta, rng):
    return rng.uniform(_MM_LO, _MM_HI, (n, 1))


def _mm_signal_yield(mu):
    return 20.0 * mu


def multimode_cost():
    """A Gaussian peak (width 0.5) of unknown mean m ∈ [2, 8] and yield 20·mu on a flat
    background of yield n_b, x ∈ [0, 10]: with mu ≈ 0.5 and n_b ≈ 200 (``MULTIMODE_PARS``)
    the likelihood in m has several local modes (any upward fluctuation of the background is
    a candidate peak), so fits from the truth often end in a mode that is not the deepest."""
    from egmm.likelihood import Component, ExtendedUnbinnedNLL, TorchDensity, Yield
    from egmm.observables import Observable, ObservableSpace

    space = ObservableSpace([Observable("x", _MM_LO, _MM_HI)])
    sig = TorchDensity(space, _mm_signal_log_prob, ("m",), {"m": (2.0, 8.0)},
                       sampler=_mm_signal_sampler, name="peak")
    bkg = TorchDensity(space, _mm_flat_log_prob, sampler=_mm_flat_sampler, name="flat")
    data = _mm_flat_sampler(10, {}, np.random.default_rng(0))
    return ExtendedUnbinnedNLL(data, [
        Component("sig", sig, Yield.from_callable(_mm_signal_yield, ("mu",),
                                                  {"mu": (0.0, 20.0)})),
        Component("bkg", bkg, "n_b")])


MULTIMODE_PARS = {"m": 5.0, "mu": 0.5, "n_b": 200.0}
