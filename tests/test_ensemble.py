"""EnsembleDensity: a weighted mixture of density models is an ordinary DensityModel."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from tests.helpers import trained_toy_model

from egmm import (
    DensityModel,
    EnsembleDensity,
    InputError,
    Observable,
    ObservableSpace,
    TorchDensity,
    UnbinnedNLL,
)
from egmm.infer import fit, fit_batched

SPACE = ObservableSpace([Observable("x", 0.0, 1.0)])


def _gauss(width: float, name: str) -> TorchDensity:
    """N(μ, width) truncated to [0, 1], μ the parameter: exact log pdf and sampler."""
    def log_prob(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        z = (x[:, 0] - mu) / width
        norm = torch.special.ndtr((1.0 - mu) / width) - torch.special.ndtr(-mu / width)
        return -0.5 * z * z - math.log(width * math.sqrt(2 * math.pi)) - torch.log(norm)

    def sampler(n: int, theta: dict, rng: np.random.Generator) -> np.ndarray:
        mu = np.broadcast_to(np.asarray(theta["mu"], dtype=float), (n,))
        return stats.truncnorm.rvs(-mu / width, (1 - mu) / width, loc=mu, scale=width,
                                   size=n, random_state=rng)[:, None]

    return TorchDensity(SPACE, log_prob, ("mu",), {"mu": (0.0, 1.0)}, sampler, name=name)


def _reference(x: np.ndarray, mu: float, w: tuple[float, float]) -> np.ndarray:
    pdfs = [stats.truncnorm.pdf(x, -mu / s, (1 - mu) / s, loc=mu, scale=s) for s in (0.1, 0.3)]
    return np.log(w[0] * pdfs[0] + w[1] * pdfs[1])


@pytest.fixture(scope="module")
def ensemble() -> EnsembleDensity:
    return EnsembleDensity([_gauss(0.1, "narrow"), _gauss(0.3, "wide")], weights=[0.3, 0.7])


def test_log_prob_is_the_weighted_mixture_and_normalised(ensemble):
    x = np.linspace(0.0, 1.0, 41)
    np.testing.assert_allclose(ensemble.log_prob(x[:, None], {"mu": 0.4}),
                               _reference(x, 0.4, (0.3, 0.7)), rtol=1e-12)
    total, _ = integrate.quad(lambda v: math.exp(ensemble.log_prob([[v]], {"mu": 0.8})[0]),
                              0.0, 1.0, points=[0.8], limit=200)
    assert total == pytest.approx(1.0, abs=1e-9)
    per_member = ensemble.member_log_probs(x[:, None], {"mu": 0.4})
    assert per_member.shape == (2, len(x))
    np.testing.assert_allclose(np.log(0.3 * np.exp(per_member[0]) + 0.7 * np.exp(per_member[1])),
                               ensemble.log_prob(x[:, None], {"mu": 0.4}), rtol=1e-12)


def test_sampling_follows_the_mixture(ensemble):
    n = 20_000
    x = ensemble.sample(n, {"mu": 0.5}, seed=3)[:, 0]
    assert np.array_equal(x, ensemble.sample(n, {"mu": 0.5}, seed=3)[:, 0])  # reproducible
    cdf_parts = [stats.truncnorm(-0.5 / s, 0.5 / s, loc=0.5, scale=s) for s in (0.1, 0.3)]
    ks = stats.kstest(x, lambda v: 0.3 * cdf_parts[0].cdf(v) + 0.7 * cdf_parts[1].cdf(v))
    assert ks.pvalue > 1e-3
    # TorchDensity samplers draw at one θ point: θ per event is refused, not mixed up
    with pytest.raises(InputError, match="one θ point"):
        ensemble.sample(10, {"mu": np.linspace(0.1, 0.9, 10)}, seed=4)


def test_fits_gradient_and_batched_fits(ensemble):
    data = ensemble.sample(500, {"mu": 0.45}, seed=5)
    cost = UnbinnedNLL(data, ensemble)
    # autograd gradient against central differences of the cost
    g = cost.grad(0.37)
    h = 1e-6
    assert g[0] == pytest.approx((cost(0.37 + h) - cost(0.37 - h)) / (2 * h), rel=1e-6)
    res = fit(cost, start={"mu": 0.5}, tol=1e-4)
    assert res.valid
    # the MLE of the mixture against scipy on the same events
    nll = lambda m: -2.0 * _reference(data[:, 0], m, (0.3, 0.7)).sum()  # noqa: E731
    from scipy.optimize import minimize_scalar
    ref = minimize_scalar(nll, bounds=(0.05, 0.95), method="bounded",
                          options={"xatol": 1e-9}).x
    # EDM < 2e-7 (tol 1e-4): the minimum to within √(2 EDM) ≈ 6e-4 of its error
    assert res.values["mu"] == pytest.approx(ref, abs=2e-3 * res.errors["mu"])
    # the vectorised toy fitter treats an ensemble like any density
    toys = [UnbinnedNLL(ensemble.sample(300, {"mu": 0.45}, seed=s), ensemble) for s in (6, 7)]
    # (both far below the default goals, which allow √(2·2e-4) ≈ 0.02 σ each)
    batched = fit_batched(toys, start={"mu": 0.5}, tol=1e-9)
    for k, toy in enumerate(toys):
        one = fit(toy, start={"mu": 0.5}, tol=1e-4)
        assert batched.values[k, 0] == pytest.approx(one.values["mu"],
                                                     abs=2e-3 * one.errors["mu"])


def test_ensemble_of_trained_gmms():
    a, x, theta = trained_toy_model(dims=2, epochs=2, seed=0)
    b, _, _ = trained_toy_model(dims=2, epochs=2, seed=1)
    ens = EnsembleDensity([a, b])
    lp = ens.log_prob(x[:200], theta[:200])
    ref = np.logaddexp(a.log_prob(x[:200], theta[:200]), b.log_prob(x[:200], theta[:200]))
    np.testing.assert_allclose(lp, ref - math.log(2.0), rtol=1e-12)
    # the cached (prepare) path equals the direct one
    prep = ens.prepare(x[:200])
    th = torch.as_tensor(theta[:200])
    np.testing.assert_allclose(ens.log_prob_prepared(prep, th).detach().numpy(), lp,
                               rtol=1e-12)
    assert ens.sample(50, {"c": 0.3}, seed=0).shape == (50, 2)
    assert "GMMDensity" in repr(ens)


class _Echo(DensityModel):
    """Flat on [0, 1]; its 'samples' are (μ + offset) / 2 per event, so the test can see which
    member drew an event and at which θ."""

    def __init__(self, offset: float) -> None:
        self.space, self.parameters = SPACE, ("mu",)
        self.parameter_bounds = {"mu": (0.0, 1.0)}
        self.offset = offset

    def log_prob_tensor(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return torch.zeros(len(x), dtype=x.dtype)

    def sample(self, n: int, theta=None, seed=None) -> np.ndarray:
        th = self.theta_tensor(theta, n_events=n)
        mu = th[:, 0] if th.ndim == 2 else th[0].expand(n)
        return ((mu + self.offset) / 2).numpy()[:, None]


def test_sampling_with_theta_per_event_routes_rows():
    ens = EnsembleDensity([_Echo(0.0), _Echo(1.0)], weights=[0.25, 0.75])
    mu = np.linspace(0.0, 1.0, 4001)
    x = ens.sample(len(mu), {"mu": mu}, seed=9)[:, 0]
    member = np.rint(2 * x - mu).astype(int)  # 0 or 1: which member drew the event
    np.testing.assert_allclose(2 * x - mu, member, atol=1e-12)  # each row at its own μ
    assert abs(member.mean() - 0.75) < 3 * math.sqrt(0.75 * 0.25 / len(mu))


def test_bad_members_and_weights(ensemble):
    other = ObservableSpace([Observable("y", 0.0, 1.0)])
    flat_y = TorchDensity(other, lambda x: torch.zeros(len(x), dtype=x.dtype))
    flat_x = TorchDensity(SPACE, lambda x: torch.zeros(len(x), dtype=x.dtype))
    g = _gauss(0.1, "g")
    with pytest.raises(InputError, match="at least one member"):
        EnsembleDensity([])
    with pytest.raises(InputError, match="not a DensityModel"):
        EnsembleDensity([g, object()])
    with pytest.raises(InputError, match="member 1 is defined on"):
        EnsembleDensity([flat_x, flat_y])
    with pytest.raises(InputError, match="member 1 has parameters"):
        EnsembleDensity([g, flat_x])
    with pytest.raises(InputError, match="2 members but 3 weights"):
        EnsembleDensity([g, g], weights=[0.2, 0.3, 0.5])
    with pytest.raises(InputError, match="sum to 1"):
        EnsembleDensity([g, g], weights=[0.2, 0.3])
    with pytest.raises(InputError, match="sum to 1"):
        EnsembleDensity([g, g], weights=[1.5, -0.5])
    narrow = TorchDensity(SPACE, lambda x, mu: torch.zeros(len(x), dtype=x.dtype), ("mu",),
                          {"mu": (0.0, 0.2)})
    wide = TorchDensity(SPACE, lambda x, mu: torch.zeros(len(x), dtype=x.dtype), ("mu",),
                        {"mu": (0.5, 1.0)})
    with pytest.raises(InputError, match="do not overlap"):
        EnsembleDensity([narrow, wide])
    assert ensemble.parameter_bounds == {"mu": (0.0, 1.0)}
    # a member without a range (an untrained model, no bounds given) limits nothing
    free = TorchDensity(SPACE, lambda x, mu: torch.zeros(len(x), dtype=x.dtype), ("mu",))
    free.parameter_bounds = {}
    assert EnsembleDensity([free, narrow]).parameter_bounds == {"mu": (0.0, 0.2)}
