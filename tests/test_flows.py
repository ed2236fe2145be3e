"""FlowDensity: the zuko peer behind the same protocol, trainer and files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

import egmm
from egmm import (
    FlowDensity,
    GMMDensity,
    InputError,
    LatentProjection,
    Observable,
    ObservableSpace,
    train,
)
from helpers import quadrature_nodes, toy_2d, toy_2d_scores

pytest.importorskip("zuko")


@pytest.fixture(scope="module", params=["NSF", "MAF"])
def flow(request):
    x, th = toy_2d(400)
    inside = (x[:, 1] > 0.0) & (x[:, 1] < 1.0)  # (a flow is refused events on the bounds)
    x, th = x[inside], th[inside]
    space = ObservableSpace([Observable("a", 0.0, 1.0), Observable("b", 0.0, 1.0)])
    # 20 knots (the smoothed default's 1000 would make the 2-D quadrature below 2500× larger)
    proj = LatentProjection.fit(space, x, n_knots=20)
    torch.manual_seed(0)
    model = FlowDensity(space, ["c"], proj, kind=request.param, transforms=2,
                        hidden_features=(16, 16))
    train(model, x, th, max_epochs=2, batch_size=100, progress=False)
    return model


def test_flow_density_normalised(flow):
    na, wa = quadrature_nodes(0.0, 1.0, flow.projection.knots("a"), order=4, edge_levels=30)
    nb, wb = quadrature_nodes(0.0, 1.0, flow.projection.knots("b"), order=4, edge_levels=30)
    pts = np.stack(np.meshgrid(na, nb, indexing="ij"), -1).reshape(-1, 2)
    p = np.exp(flow.log_prob(pts, {"c": 0.5})).reshape(len(na), len(nb))
    assert abs(wa @ p @ wb - 1.0) < 1e-3


def test_flow_sample_consistent_with_log_prob(flow):
    # the marginal CDF of a from quadrature of the model density, against model samples
    x = flow.sample(4000, {"c": 0.0}, seed=1)
    assert np.all((x > 0.0) & (x < 1.0))
    np.testing.assert_array_equal(x, flow.sample(4000, {"c": 0.0}, seed=1))
    na, wa = quadrature_nodes(0.0, 1.0, flow.projection.knots("a"), order=4, edge_levels=30)
    nb, wb = quadrature_nodes(0.0, 1.0, flow.projection.knots("b"), order=4, edge_levels=30)
    pts = np.stack(np.meshgrid(na, nb, indexing="ij"), -1).reshape(-1, 2)
    pa = (np.exp(flow.log_prob(pts, {"c": 0.0})).reshape(len(na), len(nb)) @ wb) * wa
    order = np.argsort(na)
    cdf_nodes, cdf_vals = na[order], np.cumsum(pa[order])

    def cdf(v):
        return np.interp(v, cdf_nodes, cdf_vals)

    assert stats.kstest(x[:, 0], cdf).pvalue > 1e-3


def test_flow_sampling_draws_afresh_is_chunked_and_checked(flow):
    # unseeded calls differ (torch's fork_rng had restored one state: every call was equal)
    assert not np.array_equal(flow.sample(5, {"c": 0.0}), flow.sample(5, {"c": 0.0}))
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    flow.sample(5, {"c": 0.0}, seed=1)
    assert torch.equal(torch.rand(1), before)  # the caller's generator is left alone
    assert flow.sample(0, {"c": 0.0}).shape == (0, 2)
    # chunks bound the memory (the draws themselves depend on the chunk size, as the GMM's):
    # per-event θ in chunks of 7 follow the same distribution as one pass
    th = {"c": np.tile(np.linspace(-0.5, 0.5, 10), 200)}
    one, chunked = flow.sample(2000, th, seed=4), flow.sample(2000, th, seed=5, chunk_size=7)
    for col in range(2):
        assert stats.ks_2samp(one[:, col], chunked[:, col]).pvalue > 1e-3
    for bad in ({"seed": 2.5}, {"seed": -1}, {"dtype": torch.float16}, {"chunk_size": 0}):
        with pytest.raises(InputError):
            flow.sample(5, {"c": 0.0}, **bad)


def test_flow_save_load_and_gradient(flow, tmp_path):
    path = tmp_path / "flow.egmm"
    flow.save(path)
    loaded = FlowDensity.load(path)
    assert isinstance(egmm.load_model(path), FlowDensity)  # the class the file names
    with pytest.raises(InputError, match="holds a FlowDensity, not a GMMDensity"):
        GMMDensity.load(path)
    x = flow.sample(100, {"c": 0.3}, seed=2)
    np.testing.assert_array_equal(loaded.log_prob(x, {"c": 0.3}), flow.log_prob(x, {"c": 0.3}))
    th = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    val = flow.log_prob_prepared(flow.prepare(x), th).sum()
    (g,) = torch.autograd.grad(val, th)
    h = 1e-6
    fd = (flow.log_prob(x, {"c": 0.3 + h}).sum() - flow.log_prob(x, {"c": 0.3 - h}).sum()) / (2 * h)
    assert g.item() == pytest.approx(fd, rel=1e-5, abs=1e-6)


def test_flow_bad_input():
    space = ObservableSpace([Observable("n", 0, 3, discrete=True), Observable("y", 0.0, 1.0)])
    x = np.stack([np.arange(40) % 4, np.linspace(0.01, 0.99, 40)], 1)
    proj = LatentProjection.fit(space, x)
    with pytest.raises(InputError, match="discrete"):
        FlowDensity(space, (), proj)
    cont = ObservableSpace([Observable("y", 0.0, 1.0)])
    with pytest.raises(InputError, match="kind"):
        FlowDensity(cont, (), LatentProjection.fit(cont, x[:, 1:]), kind="RealNVP")
    # an option a model file cannot store is refused when the flow is made, not at save()
    with pytest.raises(InputError, match="activation"):
        FlowDensity(cont, (), LatentProjection.fit(cont, x[:, 1:]), activation=torch.nn.ELU)


def test_flow_trains_with_the_events_score():
    # a flow is one network: it takes the whole event's score (N, P), as (N, 1, P) too
    x, th = toy_2d(200)
    inside = (x[:, 1] > 0.0) & (x[:, 1] < 1.0)  # (b's clipped edges: the flow's logit is ±inf)
    x, th = x[inside], th[inside]
    space = ObservableSpace([Observable("a", 0.0, 1.0), Observable("b", 0.0, 1.0)])
    proj = LatentProjection.fit(space, x, n_knots=20)
    score = toy_2d_scores(x, th).sum(1)
    for given in (score, score[:, None, :]):
        torch.manual_seed(0)
        model = FlowDensity(space, ["c"], proj, kind="MAF", transforms=1,
                            hidden_features=(8,))
        hist = train(model, x, th, score=given, max_epochs=2, batch_size=100, progress=False)
        assert np.array(hist.val_score).shape == (2, 1) and np.isfinite(hist.val_loss).all()
        assert np.isfinite(hist.val_score).all() and hist.val_score[-1][0] > 0


def test_flow_on_the_boundary_is_zero_density_and_refused_in_training(flow):
    # an event on an observable's bound maps to the latent box's edge, where the flow's logit
    # is infinite: its density there is 0 (log −inf), never NaN; training on such events is
    # refused with the observable named
    x = np.array([[0.3, 0.6], [0.3, 1.0], [0.0, 0.5]])
    lp = flow.log_prob(x, {"c": 0.2})
    assert np.isfinite(lp[0]) and np.all(lp[1:] == -np.inf)
    x_train, th = toy_2d(100)
    assert (x_train[:, 1] == 1.0).any()  # toy_2d clips b to [0, 1]
    space = ObservableSpace([Observable("a", 0.0, 1.0), Observable("b", 0.0, 1.0)])
    model = FlowDensity(space, ["c"], LatentProjection.fit(space, x_train, n_knots=20),
                        kind="MAF", transforms=1, hidden_features=(8,))
    with pytest.raises(InputError, match=r"has b = .*boundary.*GMMDensity"):
        train(model, x_train, th, max_epochs=1, progress=False)
