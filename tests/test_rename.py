"""DensityModel.renamed: a model's parameters under other names, for costs that must keep
two models' parameters apart (iminuit's ``name=``) or give θ a physics name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tests.helpers import trained_toy_model

from egmm import (
    EnsembleDensity,
    GMMDensity,
    InputError,
    Observable,
    ObservableSpace,
    ParameterError,
    TorchDensity,
    UnbinnedNLL,
)
from egmm.infer import fit, fit_batched, sample_toy

SPACE = ObservableSpace([Observable("x", -10.0, 10.0)])


def _gauss() -> TorchDensity:
    """N(mu, 1) on [−10, 10] (the truncation negligible for mu in [−3, 3])."""
    def log_prob(x: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
        return -0.5 * (x[:, 0] - mu) ** 2 - 0.5 * math.log(2 * math.pi)

    def sampler(n: int, theta: dict, rng: np.random.Generator) -> np.ndarray:
        return rng.normal(theta["mu"], 1.0, (n, 1))

    return TorchDensity(SPACE, log_prob, ("mu",), {"mu": (-3.0, 3.0)}, sampler, name="g")


def test_two_channels_of_one_model_get_their_own_parameters():
    g = _gauss()
    rng = np.random.default_rng(3)
    a, b = rng.normal(-0.5, 1.0, 300), rng.normal(1.2, 1.0, 200)
    shared = UnbinnedNLL(a, g) + UnbinnedNLL(b, g)
    apart = UnbinnedNLL(a, g.renamed({"mu": "mu_a"})) + UnbinnedNLL(b, g.renamed({"mu": "mu_b"}))
    res = fit(apart)
    # each channel's MLE is its own sample mean, as in separate fits; the shared one pools.
    # MIGRAD stops within an EDM of 2e-4: within √(2 · 2e-4) ≈ 0.02 errors of the minimum
    assert res.values["mu_a"] == pytest.approx(a.mean(), abs=0.03 / math.sqrt(len(a)))
    assert res.values["mu_b"] == pytest.approx(b.mean(), abs=0.03 / math.sqrt(len(b)))
    assert res.errors["mu_a"] == pytest.approx(1 / math.sqrt(len(a)), rel=0.01)
    assert fit(shared).values["mu"] == pytest.approx(np.concatenate([a, b]).mean(),
                                                     abs=0.03 / math.sqrt(len(a) + len(b)))
    # the limits follow the name; the original keeps its own
    assert res.minuit.limits["mu_a"] == (-3.0, 3.0)
    assert g.parameters == ("mu",) and set(g.parameter_bounds) == {"mu"}
    # the sampler is called with the function's own names
    x = g.renamed({"mu": "m"}).sample(5000, {"m": 2.0}, seed=1)
    assert abs(x.mean() - 2.0) < 5 / math.sqrt(5000)


def test_a_renamed_gmm_is_the_same_density_under_new_names(tmp_path):
    model, x, _ = trained_toy_model(dims=2, epochs=1)
    new = model.renamed({"c": "slope"})
    assert isinstance(new, GMMDensity) and new.parameters == ("slope",)
    assert new.parameter_bounds == {"slope": model.parameter_bounds["c"]}
    lp = model.log_prob(x[:50], {"c": 0.3})
    np.testing.assert_array_equal(new.log_prob(x[:50], {"slope": 0.3}), lp)
    np.testing.assert_array_equal(new.log_prob(x[:50], [0.3]), lp)
    with pytest.raises(ParameterError, match="unknown \\['c'\\]"):
        new.log_prob(x[:5], {"c": 0.3})
    np.testing.assert_array_equal(new.sample(20, {"slope": -0.5}, seed=4),
                                  model.sample(20, {"c": -0.5}, seed=4))
    new.save(tmp_path / "m.egmm")
    loaded = GMMDensity.load(tmp_path / "m.egmm")
    assert loaded.parameters == ("slope",)
    np.testing.assert_allclose(loaded.log_prob(x[:50], {"slope": 0.3}), lp, rtol=0, atol=1e-12)
    # a cost, its toys and the batched fits see the new name
    cost, old = UnbinnedNLL(x[:300], new), UnbinnedNLL(x[:300], model)
    toys = [sample_toy(cost, {"slope": 0.2}, seed=s) for s in range(4)]
    same = [sample_toy(old, {"c": 0.2}, seed=s) for s in range(4)]
    for t, u in zip(toys, same):
        np.testing.assert_array_equal(t.data, u.data)
    batched = fit_batched(toys, validate=False)
    assert batched.parameters == ("slope",)
    np.testing.assert_array_equal(batched.value("slope"),
                                  fit_batched(same, validate=False).value("c"))
    assert fit(cost).values["slope"] == pytest.approx(
        fit(UnbinnedNLL(x[:300], model)).values["c"], abs=1e-9)


def test_a_renamed_ensemble_renames_its_members():
    g = _gauss()
    ens = EnsembleDensity([g, g], weights=[0.5, 0.5]).renamed({"mu": "m"})
    assert ens.parameters == ("m",) and all(m.parameters == ("m",) for m in ens.members)
    x = ens.sample(4000, {"m": -1.0}, seed=2)
    assert abs(x.mean() + 1.0) < 5 / math.sqrt(4000)
    np.testing.assert_allclose(ens.log_prob(x[:10], {"m": -1.0}),
                               g.log_prob(x[:10], {"mu": -1.0}), atol=1e-12)


def test_renamed_refuses_unknown_empty_and_colliding_names():
    model, _, _ = trained_toy_model(dims=1, epochs=1)
    with pytest.raises(ParameterError, match=r"\['mu'\] are not parameters.*\['c'\]"):
        model.renamed({"mu": "x"})
    with pytest.raises(InputError, match="new name of 'c' must be a non-empty string"):
        model.renamed({"c": ""})
    with pytest.raises(InputError, match="expected a mapping"):
        model.renamed(["c"])
    two = TorchDensity(SPACE, lambda x, a, b: -0.5 * (x[:, 0] - a - b) ** 2, ("a", "b"))
    with pytest.raises(InputError, match="would be called \\['b'\\]"):
        two.renamed({"a": "b"})
    assert two.renamed({"a": "b", "b": "a"}).parameters == ("b", "a")
