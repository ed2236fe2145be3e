"""egmm.demo and the `egmm` command: the true pdf in torch, regions, the quick demo end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from iminuit.cost import NormalConstraint
from scipy.stats import kstest

from egmm import GMMDensity, LatentProjection, Observable, ObservableSpace
from egmm.cli import build_parser, main
from egmm.demo import (
    DESIGNS,
    LEVELS,
    _verdict,
    compare,
    demo_config,
    fig16_datasets,
    polygon_area,
    ray_region,
    run_demo,
    true_density,
)
from egmm.errors import InputError, ModelFileError, ParameterError
from egmm.groundtruth import PaperToy
from egmm.infer import wilks_threshold
from egmm.likelihood import UnbinnedNLL


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Tiny tensors: torch's thread pool only adds overhead (and stalls on a busy machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# -- the true pdf ------------------------------------------------------------------------------
@pytest.mark.parametrize("c", [(0.0, 0.0), (0.8, -0.8), (-1.5, 1.5), (0.0, -0.3), (1.2, 0.0)])
def test_true_density_is_the_paper_toy_pdf(c):
    toy = PaperToy()
    x = toy.sample(2000, *c, seed=7)
    got = true_density(toy).log_prob(x, {"cx": c[0], "cy": c[1]})
    np.testing.assert_allclose(got, toy.log_prob(x, *c), rtol=0, atol=1e-12)


def test_true_density_per_event_parameters_and_sampler():
    toy = PaperToy()
    dens = true_density(toy)
    x = toy.sample(500, 0.3, 0.4, seed=1)
    cx = np.linspace(-1.5, 1.5, 500)
    cy = np.linspace(1.0, -1.0, 500)
    np.testing.assert_allclose(dens.log_prob(x, {"cx": cx, "cy": cy}), toy.log_prob(x, cx, cy),
                               rtol=0, atol=1e-12)
    np.testing.assert_array_equal(dens.sample(10, {"cx": 0.3, "cy": 0.4}, seed=3),
                                  toy.sample(10, 0.3, 0.4, seed=np.random.default_rng(3)))


def test_true_cost_gradient_is_exact_away_from_the_cusps():
    events = PaperToy().sample(400, 0.5, -0.6, seed=2)
    cost = UnbinnedNLL(events, true_density())
    assert cost.has_grad
    point, h = np.array([0.45, -0.55]), 1e-6
    numeric = [(cost(*(point + h * e)) - cost(*(point - h * e))) / (2 * h) for e in np.eye(2)]
    np.testing.assert_allclose(cost.grad(*point), numeric, rtol=1e-6)


def test_fig16_datasets_are_fixed_and_independent_of_each_other():
    a, b = fig16_datasets(seed=0), fig16_datasets(seed=0)
    assert len(a) == 9
    for (ca, xa), (cb, xb) in zip(a, b):
        np.testing.assert_array_equal(ca, cb)
        np.testing.assert_array_equal(xa, xb)
        assert xa.shape == (PaperToy.N_EVENTS, 4)
    np.testing.assert_array_equal([c for c, _ in a], PaperToy.TRUE_HYPOTHESES)
    assert not np.array_equal(a[0][1], fig16_datasets(seed=1)[0][1])
    assert not np.array_equal(a[0][1], a[1][1])


# -- regions -----------------------------------------------------------------------------------
def test_polygon_area_shoelace():
    square = [[0, 0], [2, 0], [2, 1], [0, 1]]
    assert polygon_area(square) == pytest.approx(2.0)
    assert polygon_area([*square, square[0]]) == pytest.approx(2.0)  # closed: same area
    assert polygon_area(square[::-1]) == pytest.approx(2.0)  # orientation does not matter
    assert math.isnan(polygon_area([[0, 0], [1, 1]]))


def test_ray_region_of_a_gaussian_is_the_inscribed_ellipse_polygon():
    sx, sy, thr, n = 0.1, 0.05, wilks_threshold(0.6827, 2), 32
    cost = NormalConstraint(["cx", "cy"], [0.2, -0.3], [sx, sy])
    pts = ray_region(cost, {"cx": 0.2, "cy": -0.3}, 0.0, thr, n_rays=n)
    assert pts.shape == (n + 1, 2)
    np.testing.assert_array_equal(pts[0], pts[-1])
    np.testing.assert_allclose([cost(*p) for p in pts], thr, atol=1e-6)
    # equal angles in coordinates scaled by the axes: the affine image of a regular n-gon
    exact = math.pi * sx * sy * thr * n * math.sin(2 * math.pi / n) / (2 * math.pi)
    assert polygon_area(pts) == pytest.approx(exact, rel=1e-6)


def test_ray_region_is_exact_at_a_kink_and_stops_at_limits():
    def cost(cx, cy):  # a V-shaped likelihood: the region is the diamond 4|cx| + 2|cy| ≤ 1
        return 4.0 * abs(cx) + 2.0 * abs(cy)

    pts = ray_region(cost, {"cx": 0.0, "cy": 0.0}, 0.0, 1.0, n_rays=16)
    np.testing.assert_allclose([cost(*p) for p in pts], 1.0, atol=1e-6)
    assert polygon_area(pts) == pytest.approx(2 * 0.25 * 0.5, rel=1e-6)
    cut = ray_region(cost, {"cx": 0.0, "cy": 0.0}, 0.0, 1.0, n_rays=16,
                     limits={"cy": (-0.2, 0.2)})
    assert cut[:, 1].max() == pytest.approx(0.2) and cut[:, 1].min() == pytest.approx(-0.2)


def test_compare_verdicts():
    truth = {"mle": {"cx": 0.0, "cy": 0.0}, "sigma": {"cx": 0.1, "cy": 0.05},
             "areas": {"0.6827": 1.0, "0.9545": 2.0}}
    good = {"mle": {"cx": 0.02, "cy": -0.01}, "areas": {"0.6827": 1.05, "0.9545": 1.9}}
    out = compare(truth, good)
    assert out["shift_over_sigma"] == pytest.approx({"cx": 0.2, "cy": -0.2})
    assert out["area_ratio"] == pytest.approx({"0.6827": 1.05, "0.9545": 0.95})
    assert out["passed"]
    shifted = {**good, "mle": {"cx": 0.03, "cy": 0.0}}
    assert not compare(truth, shifted)["shift_ok"]
    wide = {**good, "areas": {"0.6827": 1.0, "0.9545": 2.3}}
    assert not compare(truth, wide)["area_ok"]
    assert not out["at_other_minimum"] and not compare(truth, shifted)["at_other_minimum"]
    # the truth has a second minimum at cx = 0.3, 0.2 above its MLE: a model there fails the
    # MLE test, flagged as having taken that minimum (within 0.25 σ of it), not one nearby
    mirror = {**truth, "other_minima": [{"cx": 0.3, "cy": 0.0, "delta": 0.2}]}
    there = compare(mirror, {**good, "mle": {"cx": 0.31, "cy": 0.01}})
    assert not there["passed"] and there["at_other_minimum"]
    assert not compare(mirror, {**good, "mle": {"cx": 0.2, "cy": 0.0}})["at_other_minimum"]
    row = {"passed": False, **there}
    assert _verdict(row) == "no §" and _verdict({**row, "shift_ok": True}) == "no"
    assert _verdict({"passed": False}) == "no"  # rows of older results


# -- configuration and the command line ----------------------------------------------------------
def test_demo_config_modes_and_overrides():
    assert demo_config().events_per_point < demo_config(full=True).events_per_point == 50_000
    quick = demo_config(quick=True)
    assert quick.max_epochs <= 2 and quick.contour_size < demo_config().contour_size
    assert demo_config(events_per_point=800, max_epochs=3).events_per_point == 800
    assert demo_config(seed=3).model_key() != demo_config().model_key()
    with pytest.raises(InputError, match="full and quick"):
        demo_config(full=True, quick=True)
    with pytest.raises(InputError, match="events_per_point"):
        demo_config(events_per_point=10)
    # the networks' θ features: a GMMDensity knob, part of the model key (no stale reuse);
    # the default mode gives them |cx|, |cy| (and the smooth SiLU activation); full (the
    # paper's recipe) and quick do neither
    assert demo_config().network == {"theta_features": "abs", "activation": "silu"}
    assert demo_config(full=True).network == {}
    paper = demo_config(theta_features="linear", activation="leaky_relu")
    assert paper.network == {} and paper.model_key() != demo_config().model_key()
    assert demo_config(quick=True, theta_features="abs").network == {
        **demo_config(quick=True).network, "theta_features": "abs"}
    assert demo_config(full=True, theta_features="abs").network == {"theta_features": "abs"}
    with pytest.raises(InputError, match="theta_features must be one of"):
        demo_config(theta_features="cubic")
    from egmm.density import THETA_FEATURES
    for f in THETA_FEATURES:  # the command line offers every kind (spelled out there)
        assert build_parser().parse_args(
            ["demo", "--out", "d", "--theta-features", f]).theta_features == f
    assert build_parser().parse_args(["demo", "--out", "d"]).theta_features is None
    # one kind per observable (x0..x3), on the command line separated by commas
    per = build_parser().parse_args(
        ["demo", "--out", "d", "--theta-features", "even,even,linear,even"]).theta_features
    assert per == ("even", "even", "linear", "even")
    assert demo_config(theta_features=per).network["theta_features"] == list(per)
    for bad in ("even,linear", "even,even,linear,odd"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["demo", "--out", "d", "--theta-features", bad])
    with pytest.raises(InputError, match="four of them"):
        demo_config(theta_features=["even", "linear"])
    # default: the fixed-budget (cosine) recipe; full: the paper's plateau schedule
    default, full = demo_config(), demo_config(full=True)
    assert (default.schedule, default.lr, default.batch_size, default.validation) == (
        "cosine", 2e-3, 1000, 0.2)
    assert (full.schedule, full.lr, full.batch_size, full.validation) == (
        "plateau", 1e-3, 500, 0.4)


def test_demo_config_training_settings():
    """schedule / lr / batch size / validation: overrides of the mode's training settings,
    in the model key, checked up front, offered on the command line."""
    base = demo_config()
    # overrides replace the mode's values (here the paper's, in full mode) and nothing else
    cos = demo_config(full=True, schedule="cosine", lr=2e-3, batch_size=1000, validation=0.2)
    assert (cos.schedule, cos.lr, cos.batch_size, cos.validation) == ("cosine", 2e-3, 1000, 0.2)
    assert cos.events_per_point == demo_config(full=True).events_per_point
    assert demo_config(schedule=base.schedule, lr=base.lr, batch_size=base.batch_size,
                       validation=base.validation) == base
    for changed in (demo_config(schedule="cosine" if base.schedule == "plateau" else "plateau"),
                    demo_config(lr=base.lr * 2), demo_config(batch_size=base.batch_size + 1),
                    demo_config(validation=0.3 if base.validation != 0.3 else 0.25)):
        assert changed.model_key() != base.model_key()
    for bad, match in (({"schedule": "step"}, "schedule must be one of"),
                       ({"lr": 0.0}, "lr must be"), ({"lr": float("nan")}, "lr must be"),
                       ({"batch_size": 0}, "batch_size"), ({"validation": 1.0}, "validation"),
                       ({"validation": 0.0}, "validation")):
        with pytest.raises(InputError, match=match):
            demo_config(**bad)
    args = build_parser().parse_args(["demo", "--out", "d", "--schedule", "cosine", "--lr",
                                      "0.002", "--batch-size", "1000", "--validation", "0.2"])
    assert (args.schedule, args.lr, args.batch_size, args.validation) == (
        "cosine", 0.002, 1000, 0.2)
    from egmm.training import SCHEDULES
    for sched in SCHEDULES:  # the command line offers every schedule (spelled out there)
        assert build_parser().parse_args(["demo", "--out", "d", "--schedule",
                                          sched]).schedule == sched
    assert demo_config().describe_training() == (
        "cosine schedule from lr 0.002, batch 1000, 20% validation, θ inputs abs, "
        "silu activation, score regression α = 2")
    assert demo_config(score_weight=0).describe_training() == (
        "cosine schedule from lr 0.002, batch 1000, 20% validation, θ inputs abs, "
        "silu activation")
    assert "plateau" in demo_config(full=True).describe_training()
    plain = build_parser().parse_args(["demo", "--out", "d"])
    assert (plain.schedule, plain.lr, plain.batch_size, plain.validation) == (None,) * 4


def test_demo_config_score_weight():
    """The score term: on by default (α = 2) and in quick mode (α = 1, its smoke test), off in
    the paper's recipe; part of the model key only when on (keys of plain runs unchanged)."""
    assert demo_config().score_weight == 2.0 and demo_config(quick=True).score_weight == 1.0
    assert demo_config(full=True).score_weight == 0.0
    assert demo_config().model_key()["score_weight"] == 2.0
    assert "score_weight" not in demo_config(score_weight=0).model_key()
    assert demo_config(score_weight=0.5).model_key() != demo_config().model_key()
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(InputError, match="score_weight"):
            demo_config(score_weight=bad)
    parse = build_parser().parse_args
    assert parse(["demo", "--out", "d", "--score-weight", "0"]).score_weight == 0.0
    assert parse(["demo", "--out", "d"]).score_weight is None


def test_demo_config_activation():
    """The default mode's networks are SiLU ones; --activation goes into the network settings
    (and so the model key), LeakyReLU (the paper's, GMMDensity's default) as no key at all, so
    that older LeakyReLU runs keep theirs."""
    silu = demo_config()
    assert silu.network == {"theta_features": "abs", "activation": "silu"}
    assert "silu activation" in silu.describe_training()
    leaky = demo_config(activation="leaky_relu")
    assert leaky.network == {"theta_features": "abs"}
    assert leaky.model_key() != silu.model_key()
    assert "activation" not in leaky.describe_training()
    assert demo_config(full=True, activation="silu").network == {"activation": "silu"}
    assert "activation" not in demo_config(quick=True).network
    assert demo_config(activation="silu", theta_features="even").network == {
        "theta_features": "even", "activation": "silu"}
    with pytest.raises(InputError, match="activation must be one of"):
        demo_config(activation="relu")
    parse = build_parser().parse_args
    assert parse(["demo", "--out", "d", "--activation", "silu"]).activation == "silu"
    assert parse(["demo", "--out", "d"]).activation is None


def test_demo_config_training_designs():
    plain, dense, fine, uniform = (demo_config(design=d)
                                   for d in ("grid", "dense", "fine", "uniform"))
    assert len(plain.grid) == 49 and len(dense.grid) == 81 and uniform.grid is None
    # the dense grid is the 49-point grid plus the rows and columns at ±0.2
    extra = {tuple(p) for p in dense.grid} - {tuple(p) for p in plain.grid}
    assert len(extra) == 32 and all(0.2 in np.abs(p) for p in extra)
    # the fine grid adds those at ±0.1 to the dense one
    extra = {tuple(p) for p in fine.grid} - {tuple(p) for p in dense.grid}
    assert len(extra) == 40 and all(0.1 in np.abs(p) for p in extra)
    assert len({json.dumps(c.model_key()) for c in (plain, dense, fine, uniform)}) == 4
    small = demo_config(design="uniform", events_per_point=60)
    x, theta = small.training_data(PaperToy())
    assert x.shape == (49 * 60, 4) and theta.shape == (49 * 60, 2)
    assert len(np.unique(theta[:, 0])) == len(theta) and np.abs(theta).max() <= 1.5
    np.testing.assert_array_equal(small.training_data(PaperToy())[0], x)  # seeded
    assert "uniform" in small.describe_design() and "81" in dense.describe_design()
    assert "121" in fine.describe_design()
    with pytest.raises(InputError, match="design"):
        demo_config(design="dense81")
    assert build_parser().parse_args(["demo", "--out", "d", "--design", "dense"]).design == (
        "dense")
    assert build_parser().parse_args(["demo", "--out", "d"]).design == "dense"
    assert demo_config().design == "dense"
    for d in DESIGNS:  # the command line offers every design (spelled out there)
        assert build_parser().parse_args(["demo", "--out", "d", "--design", d]).design == d
    # the projection sample: with the paper's points the c = (0, 0) training events, or
    # (uniform) a seeded sample
    small_grid = demo_config(design="grid", events_per_point=60, cusp_spread=0)
    xg, thg = small_grid.training_data(PaperToy())
    ref_grid = small_grid.projection_events(PaperToy(), xg, thg)
    np.testing.assert_array_equal(ref_grid, xg[(thg == 0.0).all(axis=1)])
    assert ref_grid.shape == (60, 4)
    ref = small.projection_events(PaperToy(), x, theta)
    assert ref.shape == (60, 4) and not np.isin(ref[:, 0], x[:, 0]).any()
    np.testing.assert_array_equal(ref, small.projection_events(PaperToy(), x, theta))
    # mixed: two thirds of each point's events on the dense grid, a third's worth uniform,
    # as many in all as the dense design; the projection sample is the grid's c = (0, 0) one
    mixed = demo_config(design="mixed", events_per_point=60, cusp_spread=0)
    xm, thm = mixed.training_data(PaperToy())
    assert xm.shape == (81 * 60, 4) and len(mixed.grid) == 81
    on_grid = (thm[:, None, :] == mixed.grid[None]).all(axis=2).any(axis=1)
    assert on_grid.sum() == 81 * 40 and np.abs(thm).max() <= 1.5
    assert len(np.unique(thm[~on_grid, 0])) == 81 * 20
    np.testing.assert_array_equal(mixed.projection_events(PaperToy(), xm, thm),
                                  xm[(thm == 0.0).all(axis=1)])
    assert "1,620 with (cx, cy) uniform" in mixed.describe_design()
    assert mixed.model_key() != demo_config(events_per_point=60).model_key()
    # its uniform part draws from a stream of its own: not that of grid point 19
    # (SeedSequence(seed, spawn_key=(19,)), as it did before)
    point19 = slice(19 * 40, 20 * 40)
    assert not np.isin(xm[point19, 0], xm[~on_grid, 0]).any()


def test_cusp_spread_moves_the_grid_points_on_the_cusps_off_them():
    toy = PaperToy()
    plain = demo_config(events_per_point=50, cusp_spread=0)
    spread = demo_config(events_per_point=50)  # the default mode's spread: 0.1
    assert spread.cusp_spread == 0.1 and demo_config(design="grid").cusp_spread == 0.1
    # the paper's points in the paper's recipe, the smoke test and the uniform design
    assert demo_config(full=True).cusp_spread == demo_config(quick=True).cusp_spread == 0.0
    assert demo_config(design="uniform").cusp_spread == 0.0
    x, theta = spread.training_data(toy)
    xp, thp = plain.training_data(toy)
    assert x.shape == xp.shape == (81 * 50, 4)
    on_axis = (thp == 0.0)
    # off the axes: the same points and the same events as without the spread
    keep = ~on_axis.any(axis=1)
    np.testing.assert_array_equal(theta[keep], thp[keep])
    np.testing.assert_array_equal(x[keep], xp[keep])
    # on them: the zero coordinate drawn per event from U(−0.1, 0.1), the other one kept
    assert not (theta == 0.0).any()
    assert np.abs(theta[on_axis]).max() <= 0.1 and len(np.unique(theta[on_axis])) == on_axis.sum()
    np.testing.assert_array_equal(theta[~on_axis], thp[~on_axis])
    # (17 points have a zero coordinate, (0, 0) two: 18 × 50 values; mean 0 ± 0.058/√900)
    assert on_axis.sum() == 18 * 50 and abs(theta[on_axis].mean()) < 5 * 0.0577 / 30
    # the events follow their own parameters (PIT uniform on the spread points)
    rows = on_axis.any(axis=1)
    pit = toy.pit(x[rows], theta[rows, 0], theta[rows, 1])
    assert min(kstest(pit[:, j], "uniform").pvalue for j in range(4)) > 1e-3
    np.testing.assert_array_equal(spread.training_data(toy)[1], theta)  # seeded
    # the projection: a c = (0, 0) sample of its own stream (not grid point 17's)
    ref = spread.projection_events(toy, x, theta)
    assert ref.shape == (50, 4) and not np.isin(ref[:, 0], x[:, 0]).any()
    assert spread.model_key() != plain.model_key() and "±0.1" in spread.describe_design()
    assert "cusp_spread" not in plain.model_key()
    for bad in (-0.1, 0.5, float("nan")):
        with pytest.raises(InputError, match="cusp_spread"):
            demo_config(cusp_spread=bad)
    with pytest.raises(InputError, match="uniform"):
        demo_config(design="uniform", cusp_spread=0.1)
    args = build_parser().parse_args(["demo", "--out", "d", "--cusp-spread", "0.05"])
    assert args.cusp_spread == 0.05


def test_uniform_training_data_covers_the_square_and_checks_its_input():
    toy = PaperToy()
    x, theta = toy.training_data_uniform(4000, seed=2)
    assert x.shape == (4000, 4)
    # uniform over [-1.5, 1.5]²: mean 0 ± 0.866/√4000 = 0.014, so 5σ is 0.07
    assert np.abs(theta.mean(0)).max() < 0.07 and theta.min() >= -1.5 and theta.max() <= 1.5
    # each event follows its own parameters: the per-event PIT is uniform
    pit = toy.pit(x, theta[:, 0], theta[:, 1])
    assert min(kstest(pit[:, j], "uniform").pvalue for j in range(4)) > 1e-3
    np.testing.assert_array_equal(toy.training_data_uniform(50, seed=2)[1],
                                  toy.training_data_uniform(50, seed=2)[1])
    with pytest.raises(InputError, match="n_events"):
        toy.training_data_uniform(0)
    with pytest.raises(InputError, match="low < high"):
        toy.training_data_uniform(10, 1.0, -1.0)
    with pytest.raises(ParameterError, match="outside"):
        toy.training_data_uniform(10, -2.5, 2.5)


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("--out", "--full", "--quick", "--seed", "--events-per-point", "--threads"):
        assert option in text
    assert "68.27 % / 95.45 %" in " ".join(text.split())  # descriptions are not %-formatted
    assert main([]) == 2  # no subcommand: help, failure status
    assert "demo" in capsys.readouterr().out


def test_cli_parses_demo_options():
    args = build_parser().parse_args(
        ["demo", "--out", "d", "--quick", "--seed", "3", "--events-per-point", "700",
         "--threads", "0"])
    assert (args.command, args.out, args.quick, args.full) == ("demo", "d", True, False)
    assert (args.seed, args.events_per_point, args.threads) == (3, 700, 0)
    defaults = build_parser().parse_args(["demo", "--out", "d"])
    assert (defaults.events_per_point, defaults.threads, defaults.seed) == (None, 1, 0)
    assert defaults.model is None and defaults.workers is None
    assert build_parser().parse_args(["demo", "--out", "d", "--workers", "3"]).workers == 3
    import os
    assert demo_config().train_workers == (2 if (os.cpu_count() or 1) >= 2 else 1)
    assert demo_config(quick=True).train_workers == 1
    assert demo_config(train_workers=3).model_key() == demo_config().model_key()
    with pytest.raises(InputError, match="workers"):
        demo_config(train_workers=0)
    assert build_parser().parse_args(["demo", "--out", "d", "--model", "m.egmm"]).model == [
        "m.egmm"]
    assert build_parser().parse_args(["demo", "--out", "d", "--model", "a.egmm", "--model",
                                      "b.egmm"]).model == ["a.egmm", "b.egmm"]


@pytest.mark.parametrize("argv", [
    ["demo"],  # --out is required
    ["demo", "--out", "d", "--full", "--quick"],
    ["demo", "--out", "d", "--events-per-point", "0"],
    ["demo", "--out", "d", "--threads", "-1"],
    ["demo", "--out", "d", "--colour"],
    ["demo", "--out", "d", "--design", "dense81"],
])
def test_cli_rejects_bad_options(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_cli_reports_egmm_errors_in_one_line(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--events-per-point", "10"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("egmm demo: error:") and "events_per_point" in err


# -- the quick demo end to end ------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, quick=True, progress=False)


def test_quick_demo_writes_its_outputs(quick_run):
    out, results = quick_run
    for name in ("fig16.png", "table.md", "results.json", "model.egmm", "model.json",
                 "history.json"):
        assert (out / name).stat().st_size > 0, name
    assert not list(out.glob("train-*.ckpt"))  # the checkpoint is removed once saved
    assert (out / "fig16.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["passed"] == results["passed"]
    assert on_disk["wall_time_s"] > 0
    assert set(on_disk["timings_s"]) >= {"data", "training", "fits", "figure", "total"}
    table = (out / "table.md").read_text()
    assert table.count("\n| (") == 9  # one row per dataset
    # trained with the toy's conditional scores (the default's score term): 4 networks' terms
    history = json.loads((out / "history.json").read_text())
    assert len(history["val_score"]) == len(history["epochs"]) >= 1
    assert len(history["val_score"][0]) == 4 and all(v >= 0 for v in history["val_score"][0])


def test_demo_fits_in_worker_processes_as_in_one(quick_run):
    """The nine datasets shared out over two spawned processes give the rows of the quick
    run's single process, number for number (the fits are independent and deterministic)."""
    from dataclasses import replace

    from egmm.demo import _fit_datasets, demo_config, load_paper_toy_model

    out, results = quick_run
    model = load_paper_toy_model(out / "model.egmm")
    said = []
    rows = _fit_datasets(model, replace(demo_config(quick=True), train_workers=2), PaperToy(),
                         said.append, False)
    assert any("2 processes" in m for m in said)
    assert [r["c_true"] for r in rows] == [r["c_true"] for r in results["datasets"]]
    for mine, theirs in zip(rows, results["datasets"]):
        for side in ("truth", "model"):
            assert mine[side]["mle"] == theirs[side]["mle"]
            assert mine[side]["fval"] == theirs[side]["fval"]
        assert mine["area_ratio"] == theirs["area_ratio"]
        assert mine["passed"] == theirs["passed"]


def test_quick_demo_true_pdf_results_are_sane(quick_run):
    _, results = quick_run
    rows = results["datasets"]
    assert len(rows) == 9
    for r in rows:
        truth, c = r["truth"], r["c_true"]
        for p in ("cx", "cy"):
            # N = 400: σ ≈ 0.08 (cx), 0.05 (cy), narrower at the cusps
            assert 0.005 < truth["sigma"][p] < 0.3
            assert abs(truth["mle"][p] - c[p]) < 5 * truth["sigma"][p]
        areas = [truth["areas"][f"{lv:g}"] for lv in LEVELS]
        assert 0 < areas[0] < areas[1] < 1.0
        for key, method in truth["methods"].items():
            assert method in ("contour", "ray")
            pts = np.asarray(truth["regions"][key])
            assert np.isfinite(pts).all()
            lo, hi = pts.min(0), pts.max(0)
            assert (lo <= [truth["mle"]["cx"], truth["mle"]["cy"]]).all()
            assert (hi >= [truth["mle"]["cx"], truth["mle"]["cy"]]).all()
        assert set(r["area_ratio"]) == {f"{lv:g}" for lv in LEVELS}
        assert all(np.isfinite(list(r["shift_over_sigma"].values())))


def test_quick_demo_reuses_a_matching_model(quick_run, tmp_path):
    from egmm.demo import _load_matching_model

    out, _ = quick_run
    key = demo_config(quick=True).model_key()
    assert _load_matching_model(out, key) is not None
    assert _load_matching_model(out, demo_config(quick=True, seed=1).model_key()) is None
    assert _load_matching_model(tmp_path, key) is None


def test_demo_analyses_a_given_model_file(quick_run, tmp_path):
    from egmm.demo import load_paper_toy_model

    out, _ = quick_run
    model = load_paper_toy_model(out / "model.egmm")
    assert model.parameters == ("cx", "cy")
    # a model of another space or parameters is refused with a message naming the mismatch
    space = ObservableSpace([Observable("z", 0.0, 1.0)])
    z = np.random.default_rng(0).uniform(size=(300, 1))
    other = GMMDensity(space, ["c"], LatentProjection.fit(space, z),
                       parameter_bounds={"c": (-1.0, 1.0)}, n_gauss=2, A1=4, B1=4, B2=2, C=1,
                       D=1)
    other.save(tmp_path / "other.egmm")
    with pytest.raises(InputError, match="paper toy"):
        load_paper_toy_model(tmp_path / "other.egmm")
    with pytest.raises(ModelFileError):
        load_paper_toy_model(tmp_path / "missing.egmm")
    # training options with a given model would be recorded as if it had been trained so
    from egmm.demo import run_demo
    with pytest.raises(InputError, match=r"\['lr', 'max_epochs'\] shape the training"):
        run_demo(tmp_path / "d", model=out / "model.egmm", max_epochs=7, lr=1e-3,
                 progress=False)


def test_demo_averages_several_model_files(quick_run, tmp_path):
    from egmm import EnsembleDensity
    from egmm.demo import _train_model, demo_config, load_paper_toy_model

    out, _ = quick_run
    model, meta = _train_model(tmp_path, demo_config(quick=True), PaperToy(), lambda m: None,
                               False, None, [out / "model.egmm", out / "model.egmm"])
    assert isinstance(model, EnsembleDensity) and len(model.members) == 2
    assert meta["ensemble"] == 2
    x = PaperToy().sample(50, 0.3, -0.3, seed=1)
    single = load_paper_toy_model(out / "model.egmm")
    np.testing.assert_allclose(model.log_prob(x, [0.3, -0.3]), single.log_prob(x, [0.3, -0.3]),
                               rtol=1e-12)  # the average of a model with itself
    with pytest.raises(ModelFileError):  # every file is checked like a single one
        _train_model(tmp_path, demo_config(quick=True), PaperToy(), lambda m: None, False,
                     None, [out / "model.egmm", tmp_path / "missing.egmm"])


def test_demo_config_members():
    """The default mode averages two independently trained models; full and quick train one;
    members get their own seeds (member 0 the run's), all else equal."""
    assert demo_config().members == 1 and demo_config().max_epochs == 5
    assert demo_config(full=True).members == demo_config(quick=True).members == 1
    cfg = demo_config(members=3)
    seeds = [cfg.member_seed(k) for k in range(3)]
    assert seeds[0] == cfg.seed and len(set(seeds)) == 3
    assert seeds == [demo_config(members=3).member_seed(k) for k in range(3)]  # fixed
    assert demo_config(seed=1, members=3).member_seed(1) != seeds[1]
    member = cfg.member(2)
    assert (member.seed, member.members) == (seeds[2], 1)
    assert member.model_key() == {**cfg.model_key(), "seed": seeds[2]}
    for bad in (0, -1, True):
        with pytest.raises(InputError, match="members"):
            demo_config(members=bad)
    assert build_parser().parse_args(["demo", "--out", "d", "--members", "3"]).members == 3
    assert build_parser().parse_args(["demo", "--out", "d"]).members is None


def test_demo_trains_and_reuses_ensemble_members(tmp_path):
    from egmm import EnsembleDensity
    from egmm.demo import _Clock, _train_model

    cfg = demo_config(quick=True, members=2)
    messages: list[str] = []
    model, meta = _train_model(tmp_path, cfg, PaperToy(), messages.append, False, _Clock())
    assert isinstance(model, EnsembleDensity) and len(model.members) == 2
    assert meta["ensemble"] == 2 and not meta["reused"] and len(meta["members"]) == 2
    for k in range(2):
        assert json.loads((tmp_path / f"member{k}.json").read_text())["config"]["seed"] == (
            cfg.member_seed(k))
    x = PaperToy().sample(20, 0.3, -0.3, seed=1)
    a, b = (m.log_prob(x, [0.3, -0.3]) for m in model.members)
    assert not np.allclose(a, b)  # independently trained
    np.testing.assert_allclose(model.log_prob(x, [0.3, -0.3]),
                               np.logaddexp(a, b) - np.log(2.0), rtol=1e-12)
    # a second run reuses both members
    again, meta2 = _train_model(tmp_path, cfg, PaperToy(), messages.append, False, _Clock())
    assert meta2["reused"] and sum("reusing" in m for m in messages) == 2
    np.testing.assert_allclose(again.log_prob(x, [0.3, -0.3]), model.log_prob(x, [0.3, -0.3]))


def test_demo_restarts_training_from_an_unusable_checkpoint(tmp_path, capsys):
    # a checkpoint this version cannot resume (another format, a corrupt file) is reported and
    # replaced, not a dead end
    import hashlib

    key = demo_config(quick=True).model_key()
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    (tmp_path / f"train-{digest}.ckpt").write_bytes(b"not a checkpoint")
    results = run_demo(tmp_path, quick=True, progress=True)
    captured = capsys.readouterr()
    assert "training from the start" in captured.out + captured.err
    assert (tmp_path / "model.egmm").is_file() and not list(tmp_path.glob("train-*.ckpt*"))
    assert len(results["datasets"]) == 9


def test_cli_accepts_a_negative_first_theta_value():
    from egmm.cli import _join_negative_points

    argv = ["validate", "m.egmm", "--paper-toy", "--out", "r", "--theta", "-0.8,0.8",
            "--theta", "0.8,-0.8", "--theta-ref", "-.5,0", "--seed", "-1"]
    joined = _join_negative_points(argv)
    assert joined == ["validate", "m.egmm", "--paper-toy", "--out", "r", "--theta=-0.8,0.8",
                      "--theta", "0.8,-0.8", "--theta-ref=-.5,0", "--seed", "-1"]
    args = build_parser().parse_args(joined[:-2])  # (a seed must be ≥ 0: not parsed here)
    assert args.theta == [(-0.8, 0.8), (0.8, -0.8)] and args.theta_ref == (-0.5, 0.0)
    # an option after --theta is left alone (argparse reports the missing value)
    assert _join_negative_points(["--theta", "--out"]) == ["--theta", "--out"]
