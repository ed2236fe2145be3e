"""egmm.validation: histograms, metrics with their floors, the report and ``egmm validate``.

The statistical assertions use fixed seeds; their tolerances are derived from the expected
spread of each statistic and stated next to them.
"""

from __future__ import annotations

import json
import math

import hist
import numpy as np
import pytest
import torch

import egmm.validation as ev
from egmm import GMMDensity, InputError, LatentProjection, ParameterError, train
from egmm.cli import main
from egmm.demo import true_density
from egmm.groundtruth import PaperToy
from helpers import SMALL, trained_toy_model

TOY = PaperToy()


def perfect_toy_model():
    """The exact paper-toy pdf as an egmm DensityModel, with the toy's analytic PIT."""
    dens = true_density(TOY)
    dens.pit = lambda x, theta: TOY.pit(x, theta["cx"], theta["cy"])
    return dens


@pytest.fixture(scope="module")
def one_epoch_toy_model():
    """A small GMMDensity of the paper toy trained for one epoch: deliberately mis-trained."""
    x, th = TOY.training_data(TOY.GRID_49, 100, seed=5)
    proj = LatentProjection.fit(TOY.space, x[(th == 0).all(1)], f=0.5)
    torch.manual_seed(0)
    model = GMMDensity(TOY.space, ["cx", "cy"], proj, **SMALL,
                       parameter_bounds={"cx": (-1.5, 1.5), "cy": (-1.5, 1.5)})
    train(model, x, th, max_epochs=1, batch_size=500, progress=False)
    return model


# -- histograms -------------------------------------------------------------------------------
def test_axes_follow_the_observables():
    x = TOY.sample(5000, 0.0, 0.0, seed=1)
    axes = ev.make_axes(TOY.space, x, bins=30)
    assert [a.name for a in axes] == ["x0", "x1", "x2", "x3"]
    assert [a.label for a in axes] == ["x0 [GeV]", "x1 [GeV]", "x2 [rad]", "x3"]
    # bounded observables snap to their bounds; the unbounded x3 takes the data's quantiles
    assert (axes[0].edges[0], axes[0].edges[-1]) == (100.0, 800.0)
    assert axes[2].edges[0] == pytest.approx(-math.pi) and axes[2].edges[-1] == pytest.approx(
        math.pi)
    lo, hi = np.quantile(x[:, 3], [1e-3, 1 - 1e-3])
    assert (axes[3].edges[0], axes[3].edges[-1]) == pytest.approx((lo, hi))
    assert all(a.traits.overflow for a in axes)
    # a user's range that is empty or reversed is refused, not replaced by a unit range
    for bad in ((8.0, 2.0), (3.0, 3.0)):
        with pytest.raises(InputError, match="range of 'x3' must have lo < hi"):
            ev.make_axes(TOY.space, x, bins=30, ranges={"x3": bad})
    with pytest.raises(InputError, match="bins for 'x0' must be a whole number"):
        ev.make_axes(TOY.space, x, bins=4.9)



def test_axes_are_matched_to_observables_by_name():
    """Named axes in another order (or as a mapping) fill the same histogram; an axis named
    for no observable, a mapping whose axis carries another name, or a mix of named and
    unnamed axes are refused (an audit: axes given as (x1, x0) had filled axis "x1" with
    column x0, silently)."""
    x = TOY.sample(2000, 0.0, 0.0, seed=2)
    axes = ev.make_axes(TOY.space, x, bins=8)
    ref = ev.histogram(x, TOY.space, axes)
    shuffled = ev.histogram(x, TOY.space, [axes[2], axes[0], axes[3], axes[1]])
    mapped = ev.histogram(x, TOY.space, {a.name: a for a in reversed(axes)})
    for h in (shuffled, mapped):
        assert [a.name for a in h.axes] == ["x0", "x1", "x2", "x3"]
        np.testing.assert_array_equal(h.values(flow=True), ref.values(flow=True))
    # unnamed axes are read by position, in the space's order
    plain = [hist.axis.Regular(8, a.edges[0], a.edges[-1]) for a in axes]
    np.testing.assert_array_equal(ev.histogram(x, TOY.space, plain).values(), ref.values())
    stray = hist.axis.Regular(8, 100.0, 800.0, name="xaxis")
    with pytest.raises(InputError, match=r"axes named \['xaxis'\] match no observable"):
        ev.histogram(x, TOY.space, [stray, *axes[1:]])
    with pytest.raises(InputError, match="the axis for 'x0' is named 'xaxis'"):
        ev.histogram(x, TOY.space, {"x0": stray, **{a.name: a for a in axes[1:]}})
    with pytest.raises(InputError, match="name every axis"):
        ev.histogram(x, TOY.space, [plain[0], *axes[1:]])
    with pytest.raises(InputError, match=r"no axis for \['x3'\]"):
        ev.histogram(x, TOY.space, axes[:3])
    # comparisons refuse histograms whose axes are in another order, and say how to reorder
    h01 = ev.histogram(x, TOY.space, axes, observables=["x0", "x1"])
    h10 = ev.histogram(x, TOY.space, axes, observables=["x1", "x0"])
    with pytest.raises(InputError, match=r"h.project\(\*\['x0', 'x1'\]\)"):
        ev.pulls(h01, h10)
    assert np.all(np.nan_to_num(ev.pulls(h01, h10.project("x0", "x1"))) == 0.0)

def test_divergences_refuse_negative_contents():
    """Negative bin contents (signed weights) had been clipped to 0 silently."""
    import hist

    axis = hist.axis.Regular(2, 0.0, 1.0, underflow=False, overflow=False)
    p, q = hist.Hist(axis, storage=hist.storage.Weight()), hist.Hist(axis)
    p.fill([0.2, 0.7], weight=[2.0, -1.0])
    q.fill([0.2, 0.7])
    with pytest.raises(InputError, match="negative"):
        ev.binned_divergences(p, q, pseudo_count=0.0)
    # an empty histogram is no sample (its pseudo-counts alone had given KL 0.9)
    with pytest.raises(InputError, match="second histogram is empty"):
        ev.binned_divergences(q, hist.Hist(axis, storage=hist.storage.Weight()))
    # the same edges with overflow bins on one side only: said, not numpy's broadcast error
    flowing = hist.Hist(hist.axis.Regular(2, 0.0, 1.0), storage=hist.storage.Weight())
    flowing.fill([0.2, 0.7])
    with pytest.raises(InputError, match="under- and overflow"):
        ev.binned_divergences(q, flowing)


def test_histograms_have_weight_storage_and_right_totals():
    x = TOY.sample(3000, 0.5, -0.5, seed=2)
    axes = ev.make_axes(TOY.space, x, bins=25)
    h = ev.histogram(x, TOY.space, axes, observables=["x0"])
    assert isinstance(h, hist.Hist) and isinstance(h.storage_type(), hist.storage.Weight)
    assert h.sum(flow=True).value == 3000 and h.sum(flow=True).variance == 3000
    w = np.random.default_rng(0).uniform(0.5, 2.0, len(x))
    hw = ev.histogram(x, TOY.space, axes, observables=["x3", "x1"], weights=w)
    assert hw.axes.name == ("x3", "x1")
    assert hw.sum(flow=True).value == pytest.approx(w.sum(), rel=1e-12)
    assert hw.sum(flow=True).variance == pytest.approx((w * w).sum(), rel=1e-12)
    n = ev.normalized(hw)
    assert n.values(flow=True).sum() == pytest.approx(1.0)
    assert n.variances(flow=True).sum() == pytest.approx((w * w).sum() / w.sum() ** 2)


def test_discrete_observables_fill_integer_axes():
    """A discrete observable gets an Integer axis from make_axes, and histogram fills it
    (with the whole-number values the space checks): counts per value, exactly."""
    from egmm import Observable, ObservableSpace

    space = ObservableSpace([Observable("njet", 0, 3, discrete=True), Observable("m", 0, 10)])
    x = np.array([[0, 1.0], [2, 5.5], [2, 9.0], [3, 0.5]])
    axes = ev.make_axes(space, x, bins=5, ranges={"m": (0, 10)})
    assert isinstance(axes[0], hist.axis.Integer)
    h = ev.histogram(x, space, axes)
    assert h.project("njet").values().tolist() == [1.0, 0.0, 2.0, 1.0]
    assert h.project("m").values().tolist() == [2.0, 0.0, 1.0, 0.0, 1.0]
    assert ev.histogram(x, space, axes, observables=["njet"]).sum().value == 4


def test_model_histogram_samples_the_model():
    dens = perfect_toy_model()
    axes = ev.make_axes(TOY.space, TOY.sample(2000, 0, 0, seed=3), bins=20)
    h = ev.model_histogram(dens, {"cx": 0.0, "cy": 0.0}, axes, n=4000, seed=4,
                           observables=["x2"])
    assert h.sum(flow=True).value == 4000


def test_importance_weights_agree_with_the_model_and_reweighting_with_direct_sampling():
    model, x, _ = trained_toy_model(dims=2, epochs=2)
    w = ev.importance_weights(model, x[:500], [{"c": 0.5}, {"c": -0.5}], {"c": 0.0})
    assert w.shape == (2, 500)
    np.testing.assert_allclose(w[0], model.importance_weights(x[:500], {"c": 0.5},
                                                              {"c": 0.0}), rtol=1e-10)
    with pytest.raises(InputError, match="chunk_size"):  # was uninitialised memory
        ev.importance_weights(model, x[:5], [{"c": 0.5}], {"c": 0.0}, chunk_size=-1)
    # the truth at (0.8, 0) from a (0, 0) sample (Kish effective sample size 77 %) against a
    # direct sample: Σ pull² over the bins must be χ²-distributed
    dens = perfect_toy_model()
    ref, theta = {"cx": 0.0, "cy": 0.0}, {"cx": 0.8, "cy": 0.0}
    x_ref = dens.sample(40_000, ref, seed=5)
    axes = ev.make_axes(TOY.space, x_ref, bins=25)
    for name in ("x0", "x2"):
        weighted = ev.reweighted_histogram(dens, x_ref, theta, ref, axes, observables=[name])
        direct = ev.model_histogram(dens, theta, axes, n=40_000, seed=6, observables=[name])
        # the weights average to one: Σw = N within a few standard errors
        total = weighted.sum(flow=True)
        assert abs(total.value - 40_000) < 4 * math.sqrt(total.variance)
        chi2 = ev.binned_chi2(direct, weighted)
        assert chi2["ndof"] >= 20 and chi2["pvalue"] > 1e-3
    # and the θ shift itself is seen: x0's slope changes from k = 4 to 2.4
    direct_x0 = ev.model_histogram(dens, theta, axes, n=40_000, seed=6, observables=["x0"])
    unweighted = ev.histogram(x_ref, TOY.space, axes, observables=["x0"])
    assert ev.binned_chi2(direct_x0, unweighted)["pvalue"] < 1e-6


def test_pulls_follow_equation_13():
    ax = hist.axis.Regular(3, 0.0, 3.0)
    data = hist.Hist(ax, storage=hist.storage.Weight())
    model = hist.Hist(ax, storage=hist.storage.Weight())
    data.fill([0.5] * 40 + [1.5] * 10 + [2.5] * 2)
    model.fill([0.5] * 60 + [1.5] * 36 + [2.5] * 8)
    p = ev.pulls(data, model, min_count=5)
    s = 52 / 104  # model scaled to the data total
    d, m = np.array([40.0, 10.0, 2.0]), np.array([60.0, 36.0, 8.0])
    mu = 52 * (d + m) / (52 + 104)  # expected data content from both samples (pooled)
    expected = (s * m - d) / np.sqrt(mu * (1 + s))  # Var(s·m − d) = μ + s²·(μ/s)
    np.testing.assert_allclose(p[:2], expected[:2])
    assert np.isnan(p[2])  # expected data content 3.3 < min_count
    assert p[1] > 0  # model above data: positive pull (paper Eq. 13)


def test_pull_frequencies_match_the_normal_table():
    z = np.random.default_rng(7).standard_normal(20_000)
    rows = ev.pull_frequencies(z)
    assert len(rows) == 10 and rows[4]["expected"] == pytest.approx(0.3413, abs=1e-4)
    for r in rows:  # binomial standard error of each fraction; 4σ over ten rows
        assert abs(r["observed"] - r["expected"]) < 4 * math.sqrt(r["expected"] / 20_000) + 1e-4


# -- metrics: floors and power ----------------------------------------------------------------
def test_discrete_observables_get_no_tie_blind_p_values():
    # two samples of one Poisson(2): CvM's asymptotic p-value assumes no ties and gave ~3e-9
    # (a perfect model with a discrete observable failed its report); AD's was 5× too often
    # below 0.001. KS stays (conservative with ties); the binned χ² tests the integers.
    from egmm import Observable, ObservableSpace

    space = ObservableSpace([Observable("n", 0, 30, discrete=True), Observable("x", 0.0, 1.0)])
    rng = np.random.default_rng(4)

    def draw(m):
        return np.c_[rng.poisson(2.0, m), rng.uniform(size=m)]

    tests = ev.two_sample_tests(draw(500), draw(2000), space)
    from scipy import stats
    a, b = draw(500)[:, 0], draw(2000)[:, 0]
    assert stats.cramervonmises_2samp(a, b).pvalue < 1e-4  # (what scipy says, ties ignored)
    assert tests["n"]["ks"]["pvalue"] > 0.01
    for kind in ("cvm", "ad"):
        assert tests["n"][kind]["pvalue"] is None and "discrete" in tests["n"][kind]["note"]
        assert tests["x"][kind]["pvalue"] is not None  # the continuous one keeps its tests
    # one value in both samples (a discrete observable at an extreme θ): no scipy error
    flat = ev.two_sample_tests(np.c_[np.zeros(50), rng.uniform(size=50)],
                               np.c_[np.zeros(80), rng.uniform(size=80)], space)
    assert flat["n"]["ks"]["pvalue"] == 1.0


def test_truth_versus_truth_sits_at_the_floor():
    a = TOY.sample(4000, 0.8, -0.8, seed=10)
    b = TOY.sample(20_000, 0.8, -0.8, seed=11)
    tests = ev.two_sample_tests(a, b, TOY.space)
    # 12 p-values, uniform under H0: all above 0.0027/12 (Bonferroni) at this seed
    for name, res in tests.items():
        for kind in ("ks", "cvm", "ad"):
            assert res[kind]["pvalue"] > 0.0027 / 12, (name, kind, res[kind])
    # C2ST: AUC within 3σ of ½ (σ: c2st_null_sigma)
    c = ev.c2st(a, b, space=TOY.space, seed=0, threads=1)
    assert c["n_per_class"] == 4000
    assert abs(c["auc"] - 0.5) < 3 * c["null_sigma"]
    assert c["null_sigma"] == pytest.approx(math.sqrt(2 * 8001 / (12 * 4000**2)))
    # the exact PIT of truth events is uniform
    pits = ev.pit_uniformity(ev.pit(TOY, a, {"cx": 0.8, "cy": -0.8}), TOY.space)
    assert all(r["pvalue"] > 0.0027 / 4 for r in pits.values())
    assert all(abs(r["mean"] - 0.5) < 4 * math.sqrt(1 / 12 / 4000) for r in pits.values())
    # binned: χ² of the pulls consistent with its degrees of freedom; JS near its bias
    axes = ev.make_axes(TOY.space, a, bins=30)
    for name in TOY.space.names:
        ha = ev.histogram(a, TOY.space, axes, observables=[name])
        hb = ev.histogram(b, TOY.space, axes, observables=[name])
        chi2 = ev.binned_chi2(ha, hb)
        assert chi2["pvalue"] > 0.0027 / 4
        # E[JS] ≈ (B − 1)/(8 N_eff) with 1/N_eff = 1/4000 + 1/20000: ≈ 0.001 here
        assert ev.binned_divergences(ha, hb)["js"] < 0.005


def test_report_of_the_true_pdf_passes_every_check(tmp_path):
    """The exact pdf, validated against truth samples, must pass; so must its floors."""
    data = {(cx, cy): TOY.sample(1500, cx, cy, seed=20 + k)
            for k, (cx, cy) in enumerate([(0.0, 0.0), (0.8, -0.8), (-0.8, 0.8)])}
    result = ev.report(perfect_toy_model(), data, tmp_path, truth=TOY, n_model=6000, seed=1,
                       figures=False, progress=False, threads=1)
    assert result["passed"], {k: c["status"] for k, c in result["checks"].items()}
    assert all(c["status"] == "pass" and c["floor_passed"]
               for c in result["checks"].values())
    assert result["theta_ref"] == {"cx": 0.0, "cy": 0.0}
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["passed"] and len(saved["points"]) == 3
    summary = (tmp_path / "summary.md").read_text()
    assert "**Overall: PASS**" in summary and "| c2st | 3 |" in summary


def test_a_ten_percent_shift_is_detected_by_c2st_and_pit():
    """cy shifted by 10 % of its range (0.5 → 0.8), 20 000 events per class.

    Power: KL = 0.05 nats/event (mostly x3's edge positions); at 5 000 events the C2ST gave
    z = 4.5-6.9 over three seeds, so at 20 000 z ≈ 10-14 is expected against a threshold of
    z = 2.8 (α = 0.0027, one test). The PIT of x3 under the hypothesised point has
    KS D ≈ 0.030, i.e. √n·D ≈ 4.3 for n = 20 000 where p = 0.0027/4 needs 1.9.
    """
    data = TOY.sample(20_000, 0.5, 0.8, seed=30)
    model_sample = TOY.sample(20_000, 0.5, 0.5, seed=31)
    c = ev.c2st(data, model_sample, space=TOY.space, seed=0, threads=1)
    assert c["z"] > 6.0 and c["pvalue"] < 1e-9, c
    pits = ev.pit_uniformity(ev.pit(TOY, data, (0.5, 0.5)), TOY.space)
    assert pits["x3"]["pvalue"] < 1e-12 and pits["x2"]["pvalue"] < 1e-3
    # the floor of the same test: data at the right point are uniform
    right = ev.pit_uniformity(ev.pit(TOY, data, (0.5, 0.8)), TOY.space)
    assert min(r["pvalue"] for r in right.values()) > 0.0027 / 4


def test_a_ten_percent_shift_of_cx_is_detected_by_the_pit():
    """cx 0.5 → 0.55 changes x0's slope k from 3 to 2.9: KS D ≈ 0.0094 on x0's PIT, so with
    200 000 events √n·D ≈ 4.2 against 2.1 for p = 0.0027/4 (the C2ST needs > 10⁵ events per
    class for this shift: KL = 5e-4 nats/event)."""
    data = TOY.sample(200_000, 0.55, 0.0, seed=40)
    pits = ev.pit_uniformity(ev.pit(TOY, data, {"cx": 0.5, "cy": 0.0}), TOY.space)
    assert pits["x0"]["pvalue"] < 1e-6
    assert pits["x1"]["pvalue"] > 0.0027 / 4  # x1 | x0 does not depend on c


def test_a_one_epoch_model_fails_the_report(one_epoch_toy_model, tmp_path):
    data = {(cx, cy): TOY.sample(2000, cx, cy, seed=50 + k)
            for k, (cx, cy) in enumerate([(0.0, 0.0), (0.8, 0.8)])}
    result = ev.report(one_epoch_toy_model, data, tmp_path, truth=TOY, n_model=8000, seed=2,
                       figures=False, progress=False, threads=1)
    checks = result["checks"]
    assert not result["passed"]
    for name in ("c2st", "pit", "ks", "chi2_1d", "chi2_2d"):
        assert checks[name]["status"] == "fail", name
        assert checks[name]["floor_passed"], name  # the floors stay where they belong
    assert "**Overall: FAIL**" in (tmp_path / "summary.md").read_text()


def test_pull_panels_hatch_bins_without_a_pull():
    """Bins whose expected content is below min_count have no pull (NaN): the panel hatches
    them instead of showing them as pulls of 0."""
    x = TOY.sample(400, 0.5, -0.5, seed=2)
    axes = ev.make_axes(TOY.space, x, bins=20, quantile=0.0)
    hd = ev.histogram(x, TOY.space, axes, observables=["x0"])
    hm = ev.histogram(TOY.sample(4000, 0.5, -0.5, seed=3), TOY.space, axes, observables=["x0"])
    missing = int(np.isnan(ev.pulls(hd, ev.normalized(hm) * 400, min_count=5.0)).sum())
    assert missing > 0  # the tails of 400 events
    fig = ev.plot_marginals([hd], [hm], min_count=5.0)
    pull_axis = fig.axes[2]
    hatched = [p for p in pull_axis.patches if p.get_hatch() == "////"]
    assert len(hatched) == missing


def test_report_figures_and_the_split_floor(tmp_path):
    """Without a truth the floor splits the data; every figure is written and labelled."""
    model, x, th = trained_toy_model(dims=2, epochs=3)
    data = {c: x[th[:, 0] == c] for c in (0.0, 1.0)}
    result = ev.report(model, data, tmp_path, n_model=3000, bins=20, bins_2d=10, seed=3,
                       progress=False, threads=1, dpi=50)
    assert result["floor"] == "the data split in two random halves"
    assert result["theta_ref"] == {"c": 0.0}
    names = sorted(p.split("/")[-1] for p in result["figures"])
    assert names == sorted([
        "marginals_c+0.png", "marginals_c+1.png", "pullmaps_c+0.png", "pullmaps_c+1.png",
        "corner_c+0.png", "pit.png", "double_ratio_a.png", "double_ratio_b.png",
        "checks.png"])
    for f in result["figures"]:
        assert (tmp_path / f.split("/")[-1]).stat().st_size > 5_000
    point = result["points"][0]
    assert point["n_data"] == 600 and set(point["floor"]["c2st"]) >= {"auc", "null_sigma"}
    assert result["points"][1]["double_ratio_model"]["ess_fraction"] > 0


def test_plots_of_inference_results(tmp_path):
    grid = np.linspace(-1, 1, 21)
    fig = ev.plot_profiles({"true pdf": (grid, 4 * grid**2), "model": (grid, 3 * grid**2)},
                           parameter="cx", truth=0.0, path=tmp_path / "profile.png", dpi=50)
    assert fig.axes[0].get_xlabel() == "cx" and fig.axes[0].get_ylabel() == "Δ(−2 ln L)"
    t = np.linspace(0, 2 * np.pi, 50)
    ring = np.stack([np.cos(t), np.sin(t)], 1)
    ev.plot_contours({"true pdf": {0.6827: 0.5 * ring, 0.9545: ring}},
                     parameters=("cx", "cy"), mle={"true pdf": (0.0, 0.0)}, truth=(0.1, 0.0),
                     path=tmp_path / "contours.png", dpi=50)
    assert (tmp_path / "profile.png").exists() and (tmp_path / "contours.png").exists()


def test_inference_plots_draw_into_the_callers_axes():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3))
    left, right = fig.subplots(1, 2)
    grid = np.linspace(-1, 1, 21)
    out = ev.plot_profiles({"model": (grid, 3 * grid**2)}, parameter="mu", ax=right)
    t = np.linspace(0, 2 * np.pi, 50)
    ring = np.stack([np.cos(t), np.sin(t)], 1)
    assert ev.plot_contours({"m": {0.6827: ring}}, parameters=("a", "b"), ax=left) is fig
    assert out is fig and len(fig.axes) == 2
    assert right.get_xlabel() == "mu" and left.get_xlabel() == "a"
    assert len(right.lines) >= 1 and fig.get_size_inches()[0] == 8
    # the CL labels stay inside their panel (they had run into the next one)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    panel = right.get_window_extent(renderer)
    assert right.texts
    for text in right.texts:
        box = text.get_window_extent(renderer)
        assert panel.x0 <= box.x0 and box.x1 <= panel.x1 + 1
    with pytest.raises(InputError, match="ax must be a matplotlib Axes"):
        ev.plot_profiles({"model": (grid, grid**2)}, ax="left")


# -- command line -----------------------------------------------------------------------------
def test_cli_validate_runs_on_a_tiny_case(tmp_path, capsys):
    model, x, th = trained_toy_model(dims=1, epochs=2)
    model.save(tmp_path / "m.egmm")
    np.savez(tmp_path / "heldout.npz", x=x, theta=th)
    rc = main(["validate", str(tmp_path / "m.egmm"), "--data", str(tmp_path / "heldout.npz"),
               "--out", str(tmp_path / "out"), "--n-model", "2000", "--theta", "0",
               "--theta", "1", "--no-progress", "--no-figures"])
    out = capsys.readouterr().out
    assert rc in (0, 1) and ("PASS" in out) == (rc == 0)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert [p["theta"] for p in saved["points"]] == [{"c": 0.0}, {"c": 1.0}]
    # bad input: exit status 2 with the offending name
    rc = main(["validate", str(tmp_path / "m.egmm"), "--data", str(tmp_path / "nope.npz"),
               "--out", str(tmp_path / "out2")])
    assert rc == 2 and "nope.npz" in capsys.readouterr().err
    rc = main(["validate", str(tmp_path / "m.egmm"), "--paper-toy", "--out",
               str(tmp_path / "out3")])
    assert rc == 2 and "--paper-toy needs a model of the paper toy" in capsys.readouterr().err
    # θ of the wrong size, and --out naming a file, are bad input too (both were tracebacks
    # with status 1, which says "a check failed")
    np.savez(tmp_path / "short.npz", x=x, theta=np.zeros(len(x) + 1))
    rc = main(["validate", str(tmp_path / "m.egmm"), "--data", str(tmp_path / "short.npz"),
               "--out", str(tmp_path / "out4")])
    assert rc == 2 and "theta has shape" in capsys.readouterr().err
    rc = main(["validate", str(tmp_path / "m.egmm"), "--data", str(tmp_path / "heldout.npz"),
               "--out", str(tmp_path / "heldout.npz")])
    assert rc == 2 and "is a file, not a folder" in capsys.readouterr().err
    # a NaN θ names file, parameter and row; a text file is no "pickled data"; a negative
    # seed is bad input (they were a bare message, numpy's pickle advice, a traceback)
    nan_theta = th.astype(float)
    nan_theta[3, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, theta=nan_theta)
    (tmp_path / "text.npz").write_text("x,theta\n0.5,0\n")
    for data, message in (("nan.npz", "nan.npz: theta: parameter 'c' is nan in row 3"),
                          ("text.npz", "text.npz: not an .npz (zip) archive")):
        rc = main(["validate", str(tmp_path / "m.egmm"), "--data", str(tmp_path / data),
                   "--out", str(tmp_path / "out5")])
        assert rc == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["validate", str(tmp_path / "m.egmm"), "--paper-toy", "--seed", "-1",
              "--out", str(tmp_path / "out6")])
    assert exc.value.code == 2 and "--seed" in capsys.readouterr().err


def test_cli_validate_reads_a_root_tree(tmp_path, capsys):
    """--data FILE.root:TREE: one branch per observable and parameter, by name; the same
    metrics as the .npz of the same events (an interop audit: only .npz was read)."""
    uproot = pytest.importorskip("uproot")
    model, x, th = trained_toy_model(dims=1, epochs=2)
    model.save(tmp_path / "m.egmm")
    obs, par = model.space.names[0], model.parameters[0]
    with uproot.recreate(tmp_path / "heldout.root") as f:  # a TTree, as most files hold
        f.mktree("events", {obs: "f8", par: "f8", "weight": "f8"}).extend(
            {obs: x[:, 0], par: th[:, 0], "weight": np.ones(len(x))})
    np.savez(tmp_path / "heldout.npz", x=x, theta=th)
    common = ["--n-model", "2000", "--theta", "0", "--no-progress", "--no-figures"]
    metrics = []
    for data, out in ((f"{tmp_path / 'heldout.root'}:events", "root"),
                      (str(tmp_path / "heldout.root"), "root_only_tree"),
                      (str(tmp_path / "heldout.npz"), "npz")):
        rc = main(["validate", str(tmp_path / "m.egmm"), "--data", data,
                   "--out", str(tmp_path / out), *common])
        assert rc in (0, 1)
        metrics.append(json.loads((tmp_path / out / "metrics.json").read_text())["points"])
    assert metrics[0] == metrics[1] == metrics[2]
    capsys.readouterr()
    with uproot.recreate(tmp_path / "bad.root") as f:  # (uproot ≥ 5.6 writes RNTuples)
        f["events"] = {obs: x[:, 0]}
        f["other"] = {obs: x[:, 0]}
    for data, message in ((f"{tmp_path / 'bad.root'}:events", f"no branches ['{par}']"),
                          (str(tmp_path / "bad.root"), "name the tree"),
                          (f"{tmp_path / 'bad.root'}:nope", "no tree 'nope'"),
                          (str(tmp_path / "missing.root"), "no such data file")):
        rc = main(["validate", str(tmp_path / "m.egmm"), "--data", data,
                   "--out", str(tmp_path / "out_bad")])
        assert rc == 2 and message in capsys.readouterr().err


def test_cli_validate_paper_toy(one_epoch_toy_model, tmp_path, capsys):
    one_epoch_toy_model.save(tmp_path / "toy.egmm")
    rc = main(["validate", str(tmp_path / "toy.egmm"), "--paper-toy", "--events", "1000",
               "--theta", "0,0", "--theta", "0.8,-0.8", "--n-model", "4000",
               "--out", str(tmp_path / "out"), "--no-progress", "--no-figures"])
    assert rc == 1 and "FAIL" in capsys.readouterr().out
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["floor"].startswith("two independent samples of the truth (PaperToy)")


# -- bad input --------------------------------------------------------------------------------
def test_bad_inputs_raise_input_errors(tmp_path):
    model, x, th = trained_toy_model(dims=1, epochs=1)
    good = x[th[:, 0] == 0]
    run = dict(figures=False, progress=False, n_model=500)
    with pytest.raises(InputError, match="non-empty mapping"):
        ev.report(model, {}, tmp_path, **run)
    with pytest.raises(InputError, match="expected 1 values"):
        ev.report(model, {(0.0, 1.0): good}, tmp_path, **run)
    with pytest.raises(ParameterError, match="outside the model's range") as info:
        ev.report(model, {(5.0,): good}, tmp_path, **run)
    assert "allow_outside" not in str(info.value)  # report() has no such option to offer
    bad = good.copy()
    bad[3, 0] = np.nan
    with pytest.raises(InputError, match=r"data at θ = \(c = 0\).*'a'.*row 3"):
        ev.report(model, {0.0: bad}, tmp_path, **run)
    with pytest.raises(InputError, match="at least 50 are needed"):
        ev.report(model, {0.0: good[:10]}, tmp_path, **run)
    with pytest.raises(InputError, match="appears twice"):
        ev.report(model, {0.0: good, (0.0,): good}, tmp_path, **run)
    with pytest.raises(InputError, match="theta_ref"):
        ev.report(model, {0.0: good}, tmp_path, theta_ref=1.0, **run)
    with pytest.raises(InputError, match="parameters"):
        ev.report(model, {0.0: good}, tmp_path, truth=TOY, **run)
    with pytest.raises(InputError, match="reweight"):
        ev.report(model, {0.0: good}, tmp_path, reweight="sometimes", **run)
    axes = ev.make_axes(model.space, good)
    with pytest.raises(InputError, match="weights: expected shape"):
        ev.histogram(good, model.space, axes, weights=np.ones(3))
    with pytest.raises(InputError, match="no observable named 'zz'"):
        ev.histogram(good, model.space, axes, observables=["zz"])
    with pytest.raises(InputError, match="quantile"):
        ev.make_axes(model.space, good, quantile=0.7)
    with pytest.raises(InputError, match="at least 25 events"):
        ev.c2st(good[:10], good[10:20], folds=5)
    with pytest.raises(InputError, match="must lie in"):
        ev.pit_uniformity(np.full((5, 1), 1.5), model.space)
    with pytest.raises(InputError, match="has no pit"):
        ev.pit(object(), good, {"c": 0.0})


def test_report_without_scikit_learn_skips_only_the_c2st(tmp_path, monkeypatch):
    import sys

    for name in ("sklearn", "sklearn.ensemble", "sklearn.model_selection"):
        monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    with pytest.raises(ImportError, match="egmm\\[validation\\]"):
        ev.c2st(np.zeros((50, 1)), np.ones((50, 1)))
    model, x, th = trained_toy_model(dims=1, epochs=1)
    result = ev.report(model, {0.0: x[th[:, 0] == 0]}, tmp_path, n_model=1000,
                       figures=False, progress=False)
    assert result["checks"]["c2st"]["status"] == "skipped"
    assert result["checks"]["ks"]["status"] in ("pass", "fail")
    assert "| c2st | 0 |" in (tmp_path / "summary.md").read_text()


@pytest.mark.slow
def test_report_of_the_fidelity_benchmark_model(tmp_path):
    """The paper-size GMM of benchmarks/fidelity_paper_toy.py against 5000 held-out events at
    each of the nine true hypotheses: every check passes, and so does every floor (the
    benchmark's own report, at 10 000 events, is benchmarks/results/validation_report/)."""
    from pathlib import Path

    path = Path(__file__).parents[1] / "benchmarks" / "results" / "paper_toy_gmm.egmm"
    if not path.exists():
        pytest.skip("run benchmarks/fidelity_paper_toy.py first")
    model = GMMDensity.load(path)
    data = {tuple(p): TOY.sample(5000, *p, seed=np.random.SeedSequence([3, k]))
            for k, p in enumerate(TOY.TRUE_HYPOTHESES)}
    result = ev.report(model, data, tmp_path, truth=TOY, n_model=20_000, figures=False,
                       progress=False, threads=1)
    assert result["passed"], {k: c["status"] for k, c in result["checks"].items()}
    assert all(c["floor_passed"] for c in result["checks"].values())
    # the C2ST cannot tell model from truth: every AUC within 3.5σ₀ of ½
    assert all(abs(p["model"]["c2st"]["auc"] - 0.5) < 3.5 * p["model"]["c2st"]["null_sigma"]
               for p in result["points"])


def test_figures_follow_the_chosen_mplhep_style():
    """set_style picks the mplhep style figures are drawn in (ROOT by default), without
    touching matplotlib's global settings; an unknown name is refused with the known ones."""
    import matplotlib as mpl
    import mplhep

    from egmm.validation.plots import style

    before = dict(mpl.rcParams)
    try:
        ev.set_style("ATLAS")
        with style():
            assert mpl.rcParams["lines.linewidth"] == mplhep.style.ATLAS["lines.linewidth"]
            assert mpl.rcParams["font.size"] == 12.0  # the panels' scaling stays
        ev.set_style("ROOT")
        with style():
            assert mpl.rcParams["lines.linewidth"] == mplhep.style.ROOT.get(
                "lines.linewidth", before["lines.linewidth"])
    finally:
        ev.set_style("ROOT")
    assert dict(mpl.rcParams) == before
    with pytest.raises(InputError, match=r"'CERN' is not an mplhep style; known: .*'CMS'"):
        ev.set_style("CERN")
