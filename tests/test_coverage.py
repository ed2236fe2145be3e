"""Coverage studies: nominal coverage of Wilks regions, pulls, failures, resumption."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from egmm.errors import InputError, ParameterError
from egmm.groundtruth import PaperToy
from egmm.infer import coverage
from egmm.likelihood import TorchDensity, UnbinnedNLL
from egmm.observables import Observable, ObservableSpace
from test_toys import analytic_cost

LINE = ObservableSpace([Observable("x", -math.inf, math.inf)])


def normal_log_prob(x, mu, sigma):
    return -0.5 * ((x[:, 0] - mu) / sigma) ** 2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi)


def normal_sampler(n, theta, rng):
    return rng.normal(theta["mu"], theta["sigma"], (n, 1))


NORMAL = TorchDensity(LINE, normal_log_prob, ("mu", "sigma"), {"sigma": (0.05, 10.0)},
                      normal_sampler, name="normal")


def normal_cost(x):
    return UnbinnedNLL(x, NORMAL)


def normal_data(rng):
    return rng.normal(1.0, 2.0, 60)[:, None]


def sometimes_broken(rng):
    """One dataset in five has a NaN: its cost raises InputError, a failure to count."""
    x = normal_data(rng)
    if rng.random() < 0.2:
        x[7, 0] = np.nan
    return x


def test_analytic_model_has_nominal_coverage():
    """The model itself as truth (Poisson yields, 50 signal on 1000 flat events), 200 toys:
    every 1-D and 2-D Wilks region covers within 3 binomial σ of its cl; pulls have mean 0
    and width 1 within 3 of their standard errors, and the bias is below 3 of its errors."""
    truth = analytic_cost(mu=1.0, seed=0)
    res = coverage(truth, None, {"mu": 1.0, "n_b": 1000.0}, ntoys=200, seed=5,
                   executor="serial", progress=False)
    assert res.n_failed == 0 and res.ntoys == 200
    assert {c.parameters for c in res.coverage} == {("mu",), ("n_b",), ("mu", "n_b")}
    for c in res.coverage:
        assert c.n == 200 and abs(c.deviation) < 3, c
    for s in res.parameters.values():
        assert abs(s.pull_mean) < 3 * s.pull_mean_error
        assert abs(s.pull_width - 1) < 3 * s.pull_width_error
        assert abs(s.bias) < 3 * s.bias_error
    assert "coverage" in res.table()


def test_failed_fits_are_counted_not_dropped():
    res = coverage(sometimes_broken, normal_cost, {"mu": 1.0, "sigma": 2.0}, ntoys=40,
                   seed=2, executor="serial", progress=False, cl=0.6827)
    assert 0 < res.n_failed < 40
    assert len(res.failures) == res.n_failed
    assert all("nan" in reason.lower() for _, reason in res.failures)
    assert all(c.n == 40 - res.n_failed for c in res.coverage)
    assert res.parameters["mu"].n == 40 - res.n_failed
    assert f"{res.n_failed} failed" in res.table()


def test_interrupted_coverage_study_resumes(tmp_path):
    kwargs = dict(ntoys=20, seed=4, executor="serial", progress=False, pairs=[])
    straight = coverage(normal_data, normal_cost, {"mu": 1.0, "sigma": 2.0}, **kwargs)
    out = tmp_path / "coverage.jsonl"

    class Killed(Exception):
        pass

    def kill(record):
        if record["index"] == 7:
            raise Killed

    with pytest.raises(Killed):
        coverage(normal_data, normal_cost, {"mu": 1.0, "sigma": 2.0}, out=out,
                 callback=kill, **kwargs)
    assert len(out.read_text().splitlines()) == 8
    resumed = coverage(normal_data, normal_cost, {"mu": 1.0, "sigma": 2.0}, out=out, **kwargs)
    assert resumed.records == straight.records
    assert resumed.coverage == straight.coverage and resumed.parameters == straight.parameters


def test_studies_of_different_densities_do_not_share_stored_toys(tmp_path):
    """Two lambda factories (same qualname) fitting different densities into one out= file:
    the second study must run its own toys, not reuse the first one's."""
    wide = TorchDensity(LINE, normal_log_prob, ("mu", "sigma"), {"sigma": (0.05, 20.0)},
                        normal_sampler, name="wide")
    out = tmp_path / "shared.jsonl"
    kwargs = dict(ntoys=5, seed=1, executor="serial", progress=False, pairs=[], out=out)
    coverage(normal_data, lambda x: UnbinnedNLL(x, NORMAL), {"mu": 1.0, "sigma": 2.0}, **kwargs)
    coverage(normal_data, lambda x: UnbinnedNLL(x, wide), {"mu": 1.0, "sigma": 2.0}, **kwargs)
    assert len(out.read_text().splitlines()) == 10


def test_paper_toy_and_density_truths():
    """The truth may be a sampler object with parameters (PaperToy) or a DensityModel."""
    toy = PaperToy()
    dens = TorchDensity.from_numpy(PaperToy.space, toy.log_prob, ("cx", "cy"),
                                   {"cx": (-1.5, 1.5), "cy": (-1.2, 1.2)}, name="paper toy")
    res = coverage(toy, lambda x: UnbinnedNLL(x, dens), {"cx": 0.8, "cy": -0.8}, ntoys=2,
                   seed=1, n_events=300, executor="serial", progress=False, pairs=[])
    assert res.n_failed == 0 and set(res.parameters) == {"cx", "cy"}
    res = coverage(NORMAL, normal_cost, {"mu": 1.0, "sigma": 2.0}, ntoys=3, seed=1,
                   n_events=50, poisson=True, executor="serial", progress=False)
    assert res.n_failed == 0 and res.ntoys == 3


def test_bad_input():
    args = (normal_data, normal_cost, {"mu": 1.0, "sigma": 2.0})
    with pytest.raises(InputError, match="ntoys"):
        coverage(*args, ntoys=0, seed=1)
    with pytest.raises(InputError, match="seed"):
        coverage(*args, ntoys=3, seed=1.5)
    with pytest.raises(ParameterError, match=r"unknown parameters.*'tau'"):
        coverage(*args, ntoys=3, seed=1, parameters=["tau"], executor="serial")
    with pytest.raises(ParameterError, match=r"no truth value.*'sigma'"):
        coverage(normal_data, normal_cost, {"mu": 1.0}, ntoys=3, seed=1,
                 parameters=["mu", "sigma"], executor="serial")
    with pytest.raises(InputError, match="n_events"):
        coverage(NORMAL, normal_cost, {"mu": 1.0, "sigma": 2.0}, ntoys=3, seed=1)
    with pytest.raises(ParameterError, match=r"parameters \['sigma'\] are fixed"):
        coverage(*args, ntoys=3, seed=1, parameters=["mu", "sigma"], fixed=["sigma"],
                 executor="serial")
    with pytest.raises(ParameterError, match=r"truth_pars names \['sigam'\], which neither"):
        coverage(normal_data, normal_cost, {"mu": 1.0, "sigma": 2.0, "sigam": 2.0}, ntoys=3,
                 seed=1, executor="serial")  # a misspelling, not silently ignored
    toy = PaperToy()
    dens = TorchDensity.from_numpy(PaperToy.space, toy.log_prob, ("cx", "cy"),
                                   {"cx": (-1.5, 1.5), "cy": (-1.2, 1.2)}, name="paper toy")
    with pytest.raises(ParameterError, match=r"truth_pars names \['foo'\]"):
        coverage(toy, lambda x: UnbinnedNLL(x, dens), {"cx": 0.8, "cy": 0.8, "foo": 1.0},
                 ntoys=3, seed=1, n_events=50, executor="serial")
    with pytest.raises(InputError, match="cannot generate data"):
        coverage(42, normal_cost, {"mu": 1.0}, ntoys=3, seed=1)
    # a truth no fit can reach is said before the toys (it was "every fit failed" after them)
    with pytest.raises(ParameterError, match=r"truth mu=1.0 lies outside its limits \[2.0"):
        coverage(*args, ntoys=3, seed=1, limits={"mu": (2.0, 5.0)}, executor="serial")
    # levels as a numpy array, as a list (was "cl must be a number")
    res = coverage(*args, ntoys=3, seed=1, cl=np.array([0.6827, 0.9]), executor="serial",
                   progress=False)
    assert sorted({round(c.cl, 4) for c in res.coverage}) == [0.6827, 0.9]


def test_fits_hesse_rejects_at_a_kink_keep_their_regions():
    """At the paper toy's cusp (0, 0) HESSE rejects fits whose MIGRAD converged (its finite
    differences across the |c| kink): such toys count in the bias and the Wilks coverage
    (their Δ(−2 ln L) is a profile) and only their pulls are left out; leaving them out
    altogether would summarise the toys whose minimum is off the kink (measured: 3 of 12)."""
    from egmm.demo import true_density

    toy = PaperToy()
    dens = true_density(toy)
    res = coverage(toy, lambda x: UnbinnedNLL(x, dens), {"cx": 0.0, "cy": 0.0}, ntoys=12,
                   seed=3, n_events=400, executor="serial", progress=False, pairs=[])
    rejected = [r for r in res.records if r.get("hesse_valid") is False]
    assert res.n_hesse_invalid == len(rejected) >= 2
    assert all(r["valid"] and "delta" in r for r in rejected)
    good = [r for r in res.records if r["valid"] and "delta" in r]
    assert len(good) == res.ntoys - res.n_failed
    for c in res.coverage:
        assert c.n == len(good)
    s = res.parameters["cx"]
    assert s.n == len(good)
    pulls = [r["values"]["cx"] / r["errors"]["cx"] for r in good if r.get("hesse_valid", True)]
    assert s.pull_mean == pytest.approx(np.mean(pulls), rel=1e-12)
    assert f"{len(rejected)} without a pull" in res.table()
