"""The speed benchmarks (benchmarks/throughput.py, fit_speed.py, make_table.py) in a smoke mode:
tiny sizes into a temporary folder, checking what they store, never how fast anything ran."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Quick runs of throughput.py and fit_speed.py, then make_table.py on their files."""
    folder = tmp_path_factory.mktemp("results")
    throughput = _load("throughput").main([
        "--quick", "--device", "cpu", "--threads", "1", "--chunks", "256,512",
        "--events", "512", "--seconds", "0.01", "--rounds", "2",
        "--out", str(folder / "throughput.json")])
    fit_speed = _load("fit_speed").main([
        "--quick", "--repeats", "1", "--contour-size", "6",
        "--out", str(folder / "fit_speed.json")])
    text = _load("make_table").main(["--results", str(folder), "--out",
                                     str(folder / "README.md")])
    return folder, throughput, fit_speed, text


def test_throughput_json(results):
    folder, returned, _, _ = results
    data = json.loads((folder / "throughput.json").read_text())
    assert data["settings"]["chunks"] == [256, 512]
    assert data["settings"]["float32_matmul_precision"] == "highest"  # torch's default
    assert data["machine"]["load_average"] is not None
    assert set(data["models"]) == {"gmm", "maf", "nsf"}
    gmm = data["models"]["gmm"]
    assert data["settings"]["method"] == 2
    for peer in ("maf", "nsf"):
        # matched on trainable weights: a MADE layer stores ~37 % masked zeros besides
        assert abs(data["models"][peer]["weights"] / gmm["weights"] - 1) < 0.05
        assert data["models"][peer]["stored_weights"] > 1.4 * data["models"][peer]["weights"]
    assert gmm.get("stored_weights", gmm["weights"]) == gmm["weights"]
    (run,) = data["runs"]
    assert run["threads"] == 1
    ops = {(r["model"], r["op"], r["dtype"], r["chunk"]) for r in run["results"]}
    for model in ("gmm", "maf", "nsf"):
        for dtype in ("float32", "float64"):
            for chunk in (256, 512):
                assert {(model, "log_prob", dtype, chunk), (model, "sample", dtype, chunk)} <= ops
    for r in run["results"]:
        assert r["events_per_second"] > 0
        # two interleaved rounds, each with its best call; the overall best is the best round
        assert r["rounds"] == 2 and len(r["events_per_second_rounds"]) == 2
        assert r["events_per_second"] == pytest.approx(max(r["events_per_second_rounds"]))
        assert r["gflops"] == pytest.approx(r["flops_per_event"] * r["events_per_second"] / 1e9)
        assert r["fraction_of_roofline"] == pytest.approx(r["gflops"] / r["roofline_gflops"])
    for dtype in ("float32", "float64"):
        for op in ("log_prob", "sample"):
            entry = run["summary"][dtype][op]
            assert {"gmm", "maf", "nsf", "ratio_gmm_maf", "ratio_gmm_nsf"} <= set(entry)
            lo, hi = entry["paired_ratio_gmm_maf_range"]
            assert lo <= entry["paired_ratio_gmm_maf"] <= hi
        assert run["roofline"][dtype]["256"]["peak_gflops"] > 0
    assert returned["runs"][0]["summary"] == run["summary"]


def test_trainable_weights_leave_out_masked_entries():
    import zuko

    tp = _load("throughput")
    flow = zuko.flows.MAF(3, 1, transforms=1, hidden_features=(5,))
    masked = [m for m in flow.modules() if getattr(m, "mask", None) is not None]
    assert masked
    expected = sum(p.numel() for p in flow.parameters()) - sum(
        int((m.mask == 0).sum()) for m in masked)
    assert tp.trainable_weights(flow) == expected
    assert tp.trainable_weights(torch.nn.Linear(4, 3)) == 15


def test_roofline_takes_the_faster_layout(monkeypatch):
    """matmul_rates times both layouts of a layer shape and keeps the faster one."""
    tp = _load("throughput")
    seen = []

    def fake_timed(fn, **kwargs):
        out = fn()
        seen.append(tuple(out.shape))
        return {"best": 1.0 if out.shape == (64, 20) else 0.5}  # events as columns faster

    monkeypatch.setattr(tp, "timed", fake_timed)
    rates = tp.matmul_rates([(60, 20)], 64, torch.float64, torch.device("cpu"), 0.1)
    assert seen == [(64, 20), (20, 64)]
    assert rates[(60, 20)] == pytest.approx(2 * 64 * 60 * 20 / 0.5 / 1e9)


def test_flops_per_event_of_the_paper_model(results):
    """Table 6 model: networks 2-4 run per event, 2·in·out per product (the first network's
    trunk runs once per θ); a flow samples with one pass per observable."""
    folder, _, _, _ = results
    models = json.loads((folder / "throughput.json").read_text())["models"]
    per_net = [2 * i * (50 + 20 * i) + 2 * (50 + 20 * i) * w + 2 * w * w + 2 * w * 180
               + 3 * 2 * 60 * 20 for i, w in ((1, 120), (2, 140), (3, 160))]
    assert models["gmm"]["flops_per_event"]["log_prob"]["analytic"] == sum(per_net) == 370360
    assert models["gmm"]["flops_per_event"]["log_prob_prepared"]["analytic"] == 292000
    for peer in ("maf", "nsf"):
        f = models[peer]["flops_per_event"]
        assert f["sample"]["analytic"] == 4 * f["log_prob"]["analytic"]
        assert f["log_prob"]["measured"] == pytest.approx(f["log_prob"]["analytic"], rel=1e-6)


def test_fit_speed_json(results):
    folder, _, _, _ = results
    data = json.loads((folder / "fit_speed.json").read_text())
    fits = data["fits"]
    base = {"model_cached", "model_uncached", "true_pdf"}
    smooth = {"smooth_model_exact_hessian", "smooth_model_finite_differences"}
    # the SiLU rows appear when the committed smooth model is there (it is in the repository)
    assert set(fits) in (base, base | smooth)
    if smooth <= set(fits):
        exact, fd = fits["smooth_model_exact_hessian"], fits["smooth_model_finite_differences"]
        assert exact["nhessian"] > 0 and fd["nhessian"] == 0
        # the same minimum whichever way Minuit gets its second derivatives
        assert exact["fval"] == pytest.approx(fd["fval"], abs=1e-3)
    cached, uncached = fits["model_cached"], fits["model_uncached"]
    # caching changes where the work is done, not the likelihood
    assert cached["fval"] == pytest.approx(uncached["fval"], rel=1e-10)
    assert (cached["nfcn"], cached["ngrad"]) == (uncached["nfcn"], uncached["ngrad"])
    for r in (cached, uncached):
        assert 0 < r["forward_passes"] <= r["nfcn"] + r["ngrad"]
        assert r["backward_passes"] <= r["ngrad"]
        fl = r["floor"]
        # a θ-only backward pass of frozen networks executes one forward pass's products
        assert fl["backward_factor"] == pytest.approx(1.0, abs=0.02)
        assert fl["forward_equivalents"] == pytest.approx(
            r["forward_passes"] + fl["backward_factor"] * r["backward_passes"])
        assert fl["wall_over_floor"] == pytest.approx(r["wall_seconds_median"]
                                                      / fl["floor_seconds"])
    # the value call taken apart: the replayed products are the forward pass's (the per-event
    # layers' 292 000 FLOPs/event plus the per-θ work of the θ branches and the first network),
    # and the factors multiply to the fit's wall / floor
    parts = cached["decomposition"]
    per_event = parts["product_flops"] / data["settings"]["n_events"]
    assert 292000 < per_event < 292000 * 1.02
    assert parts["product_of_factors"] == pytest.approx(cached["floor"]["wall_over_floor"],
                                                        rel=1e-9)
    assert all(v > 0 for v in parts["seconds"].values())
    assert data["flops"]["per_event_forward_prepared"] == 292000
    assert data["roofline"]["gflops"] > 0
    assert len(data["contour"]["points"]) == 7


def test_table(results):
    folder, _, _, text = results
    assert (folder / "README.md").read_text() == text
    for heading in ("## How to run", "## Goals", "### throughput.json", "## One N = 400 fit",
                    "No results yet: `python benchmarks/toys_speed.py`"):
        assert heading in text
    assert "log_prob ≥ 1.0 × zuko MAF, equal (trainable) weights, float32" in text
    assert "no H100 run yet" in text
    # the interleaved rounds: their count, and the GMM / MAF ratio round by round, rendered
    assert "timed in 2 interleaved rounds per chunk size" in text
    entry = json.loads((folder / "throughput.json").read_text())["runs"][0]["summary"][
        "float32"]["log_prob"]
    assert f"round by round {entry['paired_ratio_gmm_maf']:.2f}×" in text


def test_table_h100_row_names_the_matmul_precision(results, tmp_path):
    """A GPU file's log_prob rate fills the H100 goal row, and a float32 figure taken with
    TF32 products (--matmul-precision high) says so."""
    folder, _, _, _ = results
    data = json.loads((folder / "throughput.json").read_text())
    data.update(device="cuda", gpu="NVIDIA H100 80GB HBM3")
    data["settings"]["float32_matmul_precision"] = "high"
    gpu = tmp_path / "gpu"
    gpu.mkdir()
    (gpu / "throughput_cuda.json").write_text(json.dumps(data))
    text = _load("make_table").main(["--results", str(gpu), "--out", str(tmp_path / "R.md")])
    row = next(line for line in text.splitlines() if line.startswith("| H100"))
    assert "(float32, matmul precision high)" in row and "(float64)" in row
    assert "no H100 run yet" not in row


def test_table_without_results(tmp_path):
    text = _load("make_table").main(["--results", str(tmp_path / "none"),
                                     "--out", str(tmp_path / "README.md")])
    assert "No results yet: `python benchmarks/throughput.py`" in text
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "fit_speed.json").write_text("{")
    (tmp_path / "bad" / "toys_speed.json").write_text('{"rows": 3}')
    text = _load("make_table").main(["--results", str(tmp_path / "bad"),
                                     "--out", str(tmp_path / "README.md")])
    assert "fit_speed.json: unreadable" in text
    assert "`toys_speed.json` has an unexpected layout" in text


def test_table_toys_speed_peers(tmp_path):
    """The analytic toys' goals against pyhf and zfit + hepstats (a row with its own toy
    count), and a peer that was not installed shown as skipped, not as a figure."""
    folder = tmp_path / "results"
    folder.mkdir()
    rows = {
        "egmm serial": {"seconds": 4.0, "toys_per_second": 250.0, "cls": 0.1, "clsb": 0.05,
                        "clb": 0.5, "cls_error": 0.02, "ntoys_per_hypothesis": 500},
        "pyhf 0.7.6 ToyCalculator (binned)": {
            "seconds": 5.0, "toys_per_second": 200.0, "cls": 0.1, "clsb": 0.05, "clb": 0.5,
            "cls_error": 0.02, "ntoys_per_hypothesis": 500},
        "zfit 0.28.0 + hepstats 0.10.1 (unbinned)": {
            "seconds": 50.0, "toys_per_second": 4.0, "cls": 0.12, "clsb": 0.06, "clb": 0.5,
            "cls_error": 0.05, "ntoys_per_hypothesis": 100}}
    settings = {"ntoys_per_hypothesis": 500}
    (folder / "toys_speed.json").write_text(json.dumps({"settings": settings, "rows": rows}))
    text = _load("make_table").main(["--results", str(folder),
                                     "--out", str(tmp_path / "README.md")])
    assert "analytic-pdf toys no slower per toy than pyhf's ToyCalculator" in text
    assert "62× (egmm (Minuit fits) / zfit, toys_speed.json" in text  # 250 / 4 = 62.5
    assert "(100 toys per hypothesis)" in text
    del rows["zfit 0.28.0 + hepstats 0.10.1 (unbinned)"]
    rows["zfit + hepstats (unbinned)"] = {"skipped": "not installed (tensorflow)"}
    (folder / "toys_speed.json").write_text(json.dumps({"settings": settings, "rows": rows}))
    text = _load("make_table").main(["--results", str(folder),
                                     "--out", str(tmp_path / "README.md")])
    assert "skipped: not installed (tensorflow)" in text
    assert "faster than zfit + hepstats" not in text
    # interleaved rounds: the goal uses the median of the rounds' own ratios
    paired = {"egmm serial / pyhf": {"rounds": [0.9, 1.3, 1.1], "median": 1.1},
              "batched / pyhf": {"rounds": [1.5, 1.9, 1.7], "median": 1.7}}
    (folder / "toys_speed.json").write_text(json.dumps({"settings": settings, "rows": rows,
                                                        "paired_ratios": paired}))
    text = _load("make_table").main(["--results", str(folder),
                                     "--out", str(tmp_path / "README.md")])
    assert ("1.10× (egmm (Minuit fits) / pyhf, rounds' median, toys_speed.json, ?); 1.70× "
            "(egmm (batched fits) / pyhf" in text)
    assert "egmm serial / pyhf: 1.10× (median of 3 interleaved rounds: 0.90, 1.30, 1.10)" in text


def test_timed_counts_calls():
    common = _load("_common")
    calls = []
    t = common.timed(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and t["repeats"] == 3 and len(t["seconds"]) == 3
    assert t["best"] <= t["median"]
    calls.clear()
    t = common.timed(lambda: calls.append(1), repeats=10, warmup=0, max_seconds=0.0)
    assert len(calls) == 1 and t["repeats"] == 1


def test_write_json_is_atomic(tmp_path):
    common = _load("_common")
    path = tmp_path / "a" / "b.json"
    common.write_json(path, {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None,
                    reason="TensorFlow is installed here: the zfit row would run")
def test_zfit_row_without_tensorflow_is_skipped():
    """zfit (TensorFlow) is no dependency: without it the row says so and times nothing."""
    row = _load("toys_speed").run_zfit(_load("toys_speed").observed_data(1), 5, 0)
    assert set(row) == {"skipped"} and "pip install zfit hepstats" in row["skipped"]


def test_older_benchmarks_keep_their_machine_keys():
    info = _load("toys_speed").machine()
    assert set(info) == {"platform", "python", "cpu", "usable_cpus", "load_average_at_start",
                         "versions"}
    assert {"platform", "python", "cpu", "usable_cpus", "load_average", "torch", "egmm"} <= set(
        _load("_common").machine_info())


def test_cusp_scan_splits_the_likelihood_by_observable(tmp_path):
    """The truth's scans are the exact pdf's Δ(−2 ln L); a model's per-observable terms (latent
    space) add up to its data-space Δ(−2 ln L), the projection's Jacobian cancelling."""
    import numpy as np
    import torch

    from egmm import GMMDensity, LatentProjection
    from egmm.demo import fig16_datasets
    from egmm.groundtruth import PaperToy
    from helpers import SMALL

    toy = PaperToy()
    proj = LatentProjection.fit(toy.space, toy.sample(2000, 0.0, 0.0, seed=3), f=0.5)
    torch.manual_seed(0)
    model = GMMDensity(toy.space, ["cx", "cy"], proj, **SMALL)
    model.save(tmp_path / "m.egmm")
    out = tmp_path / "scan.json"
    result = _load("cusp_scan").main(["--model", str(tmp_path / "m.egmm"), "--dataset", "5",
                                      "--at-cx", "0.1", "--at-cy", "0.7", "--out", str(out)])
    assert json.loads(out.read_text())["scans"] == result["scans"]
    _, x = fig16_datasets(0, toy)[5]
    assert result["true_c"] == [0.0, 0.8] and result["at"] == [0.1, 0.7]

    def nll(log_prob, cx, cy):
        return -2.0 * float(np.sum(log_prob(cx, cy)))

    curves = {"true pdf": lambda cx, cy: toy.log_prob(x, cx, cy),
              "m": lambda cx, cy: model.log_prob(x, {"cx": cx, "cy": cy})}
    for axis, name in enumerate(("cx", "cy")):
        for label, log_prob in curves.items():
            rows = result["scans"][name][label]
            assert len(rows) == 8
            for r in rows:
                assert r["c"][1 - axis] == [0.1, 0.7][1 - axis]
                expected = nll(log_prob, *r["c"]) - nll(log_prob, 0.1, 0.7)
                assert r["total"] == pytest.approx(expected, abs=1e-8)
                assert sum(r["per_observable"]) == pytest.approx(r["total"], abs=1e-9)
    # two demos' model.egmm files get their folders' names, not one label for both
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        model.save(tmp_path / d / "model.egmm")
    both = _load("cusp_scan").main(["--model", str(tmp_path / "a" / "model.egmm"),
                                    "--model", str(tmp_path / "b" / "model.egmm"),
                                    "--out", str(tmp_path / "two.json")])
    assert set(both["scans"]["cx"]) == {"true pdf", "a/model", "b/model"}
    with pytest.raises(SystemExit, match="labelled"):
        _load("cusp_scan").main(["--model", str(tmp_path / "a" / "model.egmm"),
                                 "--model", str(tmp_path / "a" / "model.egmm"),
                                 "--out", str(tmp_path / "same.json")])


def test_cusp_slopes_compares_one_sided_scores(tmp_path):
    """compare(): slope, relative residual and mean bias (in N = 400 dataset σ) are exact on
    constructed scores; main() lists only the conditionals the truth's kink moves (p1 never;
    p0 not along cy) and stores what it prints."""
    import numpy as np
    import torch

    from egmm import GMMDensity, LatentProjection
    from egmm.groundtruth import PaperToy
    from helpers import SMALL

    cs = _load("cusp_slopes")
    t = np.random.default_rng(1).standard_normal(10_000)
    same = cs.compare(t, t)
    assert same["slope"] == pytest.approx(1.0) and same["resid"] == pytest.approx(0.0, abs=1e-12)
    assert same["bias"] == pytest.approx(0.0, abs=1e-12)
    half = cs.compare(0.5 * t + 0.1 * t.std() / 20, t)  # shallower, and off by 0.1 σ(N = 400)
    assert half["slope"] == pytest.approx(0.5, abs=1e-3)
    assert half["bias"] == pytest.approx(0.1 - 0.5 * t.mean() / (t.std() / 20), abs=1e-9)

    toy = PaperToy()
    proj = LatentProjection.fit(toy.space, toy.sample(2000, 0.0, 0.0, seed=3), f=0.5)
    torch.manual_seed(0)
    GMMDensity(toy.space, ["cx", "cy"], proj, **SMALL).save(tmp_path / "m.egmm")
    out = tmp_path / "slopes.json"
    result = cs.main(["--model", str(tmp_path / "m.egmm"), "--events", "2000", "--out", str(out)])
    assert json.loads(out.read_text())["models"] == result["models"]
    assert set(result["models"]["m"]) == {"-cx x0", "-cx x2", "-cx x3", "+cx x0", "+cx x2",
                                          "+cx x3", "-cy x2", "-cy x3", "+cy x2", "+cy x3"}


def test_toys_vectorised_json_and_table(tmp_path):
    """toys_vectorised.py on a few analytic toys: the batched fits at MIGRAD's EDM goal agree
    with the plain loop's minima (same goal), the tight goal is timed too, and make_table
    shows both goals and the CPU."""
    out = tmp_path / "toys_vectorised.json"
    data = _load("toys_vectorised").main([
        "--models", "analytic", "--toys", "12", "--events", "200", "--teststat-toys", "4",
        "--teststat-tols", "0.001,0.1", "--out", str(out)])
    assert json.loads(out.read_text())["results"] == data["results"]
    r = data["results"]["analytic"]
    assert r["tolerances"] == {"batched_decrement_goal": 2e-4, "plain_minuit_tol": 0.1,
                               "plain_minuit_edm_goal": 2e-4, "batched_tight": 1e-7}
    assert set(r["speedup"]) == {"batched", "batched_validated", "batched_tight",
                                 "batched_float64", "batched_paired_median"}
    # three Minuit loops on the same toys: the plain one (MIGRAD at iminuit's defaults, the
    # goal's peer), with HESSE (here the cost's exact Hessian: no value calls), and
    # strategy 0, which saves calls
    loops = r["loops"]
    assert set(loops) == {"plain_minuit", "minuit_hesse", "minuit_strategy0"}
    assert loops["plain_minuit"]["options"] == {"hesse": False}
    assert loops["minuit_hesse"]["calls_mean"] >= loops["plain_minuit"]["calls_mean"]
    assert loops["minuit_strategy0"]["calls_mean"] <= loops["plain_minuit"]["calls_mean"]
    for v in loops.values():
        assert v["valid"] == 12 and len(v["speedup_paired_rounds"]) == 5
        assert abs(v["fval_batched_minus_loop"]["max"]) < 1e-3
    assert r["speedup"]["batched"] == pytest.approx(loops["plain_minuit"]["speedup"])
    # five rounds: a batched run of all toys, then a fifth of the loop; their own ratios
    assert len(r["batched_runs_seconds"]) == len(r["speedup_paired_rounds"]) == 5
    assert r["speedup"]["batched_paired_median"] == pytest.approx(
        statistics.median(r["speedup_paired_rounds"]))
    assert r["batched"]["converged"] == 12 and r["plain"]["valid"] == 12
    # an analytic density has no float32 stage: the same minima either way
    assert r["batched"]["fval_minus_float64"]["max"] == 0.0
    assert r["batched"]["distance_to_float64_in_errors"]["max"] == 0.0
    # both stop at EDM 2e-4: minima within ~√(2·2e-4) ≈ 0.02 σ of each other, and the tight
    # batched fit at most 2e-4 (its goal) below the default one
    assert r["agreement"]["distance_in_errors"]["max"] < 0.05
    assert -1e-9 <= r["batched"]["fval_minus_tight"]["min"]
    assert r["batched"]["fval_minus_tight"]["max"] <= 4e-4
    assert r["teststat"]["abs_difference_of_t"]["max"] < 1e-3
    # t_μ toys again at iminuit's default tol: EDM goal 2e-4 on both sides, so the two t of a
    # toy (differences of two minima, each within 2e-4) agree to about 1e-3
    (loose,) = r["teststat_other_tols"]
    assert (r["teststat"]["tol"], loose["tol"]) == (1e-3, 0.1) and loose["toys"] == 4
    assert loose["abs_difference_of_t"]["max"] < 2e-3
    assert data["machine"]["cpu"] and data["machine"]["iminuit"]
    # a variant run (another model, --out toys_vectorised_NAME.json) gets its own table
    (tmp_path / "toys_vectorised_variant.json").write_text(out.read_text())
    text = _load("make_table").main(["--results", str(tmp_path), "--out",
                                     str(tmp_path / "README.md")])
    assert "Both stop at MIGRAD's EDM goal 0.0002 (Minuit tol 0.1)" in text
    assert "batched, float64" in text
    assert "(rounds: " in text
    assert f"### toys_vectorised_variant.json ({r['description']})" in text
    assert text.count("| model | batched toys/s |") == 2
    assert "| analytic | 0.001 | 4 |" in text and "| analytic | 0.1 | 4 |" in text
    assert data["machine"]["cpu"] in text
    assert "| analytic | MIGRAD (strategy 1) |" in text and "MIGRAD + HESSE" in text


def test_score_bias_is_zero_for_the_true_pdf_and_matches_finite_differences(tmp_path):
    """δθ = I⁻¹(E[s_model] − E[s_true]) on the same events: the true pdf as the model gives 0
    (up to the central difference's error); an untrained model's mean score is the finite
    difference of its mean log density."""
    import numpy as np
    import torch

    from egmm import GMMDensity, LatentProjection
    from egmm.demo import true_density
    from egmm.groundtruth import PaperToy
    from helpers import SMALL

    sb = _load("score_bias")
    toy = PaperToy()
    proj = LatentProjection.fit(toy.space, toy.sample(2000, 0.0, 0.0, seed=3), f=0.5)
    torch.manual_seed(0)
    model = GMMDensity(toy.space, ["cx", "cy"], proj, **SMALL)
    points, summary = sb.shifts([("truth", true_density(toy)), ("m", model)], toy, 3000, 400,
                                seed=5, points=((0.8, -0.8), (-0.3, 0.6)))
    assert [p["cx"] for p in points] == [0.8, -0.3]
    assert summary["truth"]["max_abs"] < 1e-5
    assert summary["m"]["max_abs"] > 0.1  # an untrained model is far off
    text = _load("make_table").score_bias_section(
        {"settings": {"n": 400, "events_per_point": 3000}, "points": points, "models": summary})
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ")]
    assert [r[0] for r in rows[1:]] == ["| truth", "| m"] and len(rows[0]) == 6
    # stored as score_bias.json and as a variant (score_bias_NAME.json): each its own table
    stored = {"settings": {"n": 400, "events_per_point": 3000}, "points": points,
              "models": summary}
    for name in ("score_bias", "score_bias_variant"):
        (tmp_path / f"{name}.json").write_text(json.dumps(stored))
    page = _load("make_table").main(["--results", str(tmp_path), "--out",
                                     str(tmp_path / "README.md")])
    assert "### score_bias_variant.json" in page and page.count(text) == 2
    # the truth as the model: its Hessian by differences of its autograd score against the
    # truth's second differences of log p, area ratio 1
    np.testing.assert_allclose(summary["truth"]["area_ratio"], 1.0, atol=1e-5)
    assert all(0 <= e < 1e-5 for e in summary["truth"]["area_ratio_error"])  # jackknife
    x = toy.sample(500, 0.4, 0.6, seed=9)
    h = 1e-6
    fd = [(model.log_prob(x, [0.4 + h, 0.6]).mean() - model.log_prob(x, [0.4 - h, 0.6]).mean())
          / (2 * h),
          (model.log_prob(x, [0.4, 0.6 + h]).mean() - model.log_prob(x, [0.4, 0.6 - h]).mean())
          / (2 * h)]
    np.testing.assert_allclose(sb.mean_model_score(model, x, 0.4, 0.6), fd, rtol=1e-5,
                               atol=1e-7)
    # the Hessian (differences of the autograd score) against a double backward, which is
    # exact for a network that is smooth in θ (SiLU)
    torch.manual_seed(1)
    smooth = GMMDensity(toy.space, ["cx", "cy"], proj, activation="silu", **SMALL)
    xt = torch.as_tensor(x, dtype=torch.float64)
    exact = torch.autograd.functional.hessian(
        lambda t: smooth.log_prob_tensor(xt, t).mean(),
        torch.tensor([0.4, 0.6], dtype=torch.float64)).numpy()
    np.testing.assert_allclose(sb.mean_model_hessian(smooth, x, 0.4, 0.6), exact, rtol=1e-4,
                               atol=1e-6)


def test_cusp_datasets_compares_like_the_demo_and_renders(tmp_path):
    # the true pdf as the "model": no shift, areas equal, a pass; summaries and the table
    import numpy as np

    from egmm.demo import true_density
    from egmm.groundtruth import PaperToy

    cd = _load("cusp_datasets")
    toy = PaperToy()
    events = toy.sample(400, 0.0, 0.0, seed=np.random.SeedSequence(1000, spawn_key=(0, 0)))
    out = cd.compare_on(events, [("truth", true_density(toy))])["truth"]
    assert out["passed"] and max(abs(v) for v in out["shift_over_sigma"].values()) < 1e-3
    np.testing.assert_allclose(out["area_ratio"], 1.0, atol=1e-3)
    failed = {"shift_over_sigma": {"cx": 0.3, "cy": 0.0}, "area_ratio": [1.2, 1.0],
              "passed": False}
    rows = [{"point": [0.0, 0.0], "k": k, "models": {"m": r}}
            for k, r in enumerate([out, failed])]
    assert out["at_other_minimum"] is False
    s = cd.summarise(rows, "m")
    assert (s["datasets"], s["passed"], s["shift_fails"], s["area_fails"]) == (2, 1, 1, 1)
    assert s["area_worst"] == 1.2 and s["shift_abs_max"][0] == 0.3
    assert s["shift_fails_other_minimum"] == 0  # "failed" predates the check: not counted
    text = _load("make_table").cusp_datasets_section(
        {"settings": {"datasets_per_point": 2, "seed": 1000}, "summary": {"(+0.0, +0.0)": {
            "runs/x/model.egmm": s}}})
    row = next(line for line in text.splitlines() if line.startswith("| (+0.0"))
    assert "`x/model.egmm`" in row and "1 / 2" in row and "| 1 (0) |" in row


def test_cusp_datasets_names_a_model_that_took_the_truths_other_minimum():
    # dataset 6 at (−0.8, 0) of cusp_datasets' seed 1000: the true likelihood has mirror
    # minima at cy ≈ ∓0.08, 0.12 apart in −2 ln L. The truth with cy's sign flipped (a
    # "model" whose likelihood is the mirror image) has its MLE at the other one: an MLE
    # fail of ~3.4 σ in cy, but at the truth's other minimum, with the same areas.
    import numpy as np

    from egmm import TorchDensity
    from egmm.demo import BOUNDS, toy_log_prob
    from egmm.groundtruth import PaperToy

    cd = _load("cusp_datasets")
    toy = PaperToy()
    events = toy.sample(400, -0.8, 0.0, seed=np.random.SeedSequence(1000, spawn_key=(1, 6)))

    def flipped(x: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
        return toy_log_prob(x, cx, -cy)

    mirror = TorchDensity(toy.space, flipped, ("cx", "cy"), BOUNDS, name="mirror",
                          smooth=False)
    out = cd.compare_on(events, [("mirror", mirror)])["mirror"]
    assert not out["passed"] and out["at_other_minimum"]
    assert abs(out["shift_over_sigma"]["cy"]) > 3 and abs(out["shift_over_sigma"]["cx"]) < 0.25
    # the mirror image's regions are the truth's reflected: the same areas
    np.testing.assert_allclose(out["area_ratio"], 1.0, atol=0.02)
    rows = [{"point": [-0.8, 0.0], "k": 6, "models": {"m": out}}]
    assert cd.summarise(rows, "m")["shift_fails_other_minimum"] == 1


def test_minima_precision_json_and_table(tmp_path):
    """minima_precision.py on a few analytic toys (a smooth −2 ln L): every method's excess
    over the lowest minimum found is ≥ 0 and, for a smooth likelihood, within twice its goal
    (batched: the decrement goal; MIGRAD: its EDM goal 0.002 · tol; the factor 2 allows the
    curvature estimates' error), the tight reference is among the best, a fixed parameter
    gives conditional fits, and make_table renders the file."""
    module = _load("minima_precision")
    out = tmp_path / "minima_precision.json"
    data = module.main(["--model", "analytic", "--toys", "6", "--events", "200",
                        "--batched-goals", "2e-6,2e-4", "--minuit-tols", "0.001,0.1",
                        "--out", str(out)])
    assert json.loads(out.read_text())["methods"] == data["methods"]
    methods = data["methods"]
    assert list(methods) == ["batched goal 2e-06", "batched goal 0.0002", "reference",
                             "MIGRAD tol 0.001", "MIGRAD tol 0.1"]
    goals = {"batched goal 2e-06": 2e-6, "batched goal 0.0002": 2e-4, "reference": 1e-10,
             "MIGRAD tol 0.001": 2e-6, "MIGRAD tol 0.1": 2e-4}
    for name, m in methods.items():
        e = m["excess"]
        assert 0.0 <= e["median"] <= e["q90"] <= e["max"] <= 2 * goals[name] + 1e-9, name
        assert list(e["toys_above"]) == ["2e-06", "2e-05", "0.0002", "0.001"]
    assert methods["MIGRAD tol 0.1"]["valid"] == 6 and methods["reference"]["converged"] == 6
    fixed = module.main(["--model", "analytic", "--toys", "3", "--events", "200",
                         "--batched-goals", "2e-6", "--minuit-tols", "0.001", "--fixed", "mu",
                         "--out", str(tmp_path / "minima_precision_fixed.json")])
    assert fixed["settings"]["fixed"] == {"mu": 5.0}
    text = _load("make_table").main(["--results", str(tmp_path), "--out",
                                     str(tmp_path / "README.md")])
    assert "## Precision of the minima (minima_precision.py)" in text
    assert "### minima_precision_fixed.json" in text and "mu fixed at the truth" in text
    assert "| MIGRAD tol 0.001 |" in text
    with pytest.raises(SystemExit):
        module.main(["--model", "analytic", "--fixed", "nope", "--out", str(out)])
    with pytest.raises(SystemExit):
        module.main(["--model", "analytic", "--batched-goals", "2e-6,-1", "--out", str(out)])
