"""Every tutorial runs end to end (in its fast mode) and produces what it promises."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

TUTORIALS = Path(__file__).parents[1] / "tutorials"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, TUTORIALS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tutorial_01_signal_background_fit(tmp_path):
    result = _load("01_signal_background_fit").main(fast=True, out=tmp_path)
    assert result["valid"]
    # the background normalisation is pinned by the 2000-event control region and the SR:
    # true value 1.1, error ≈ 0.02; 5σ allows for the barely trained signal model of fast mode
    assert abs(result["values"]["mu_bkg"] - 1.1) < 5 * result["errors"]["mu_bkg"]
    assert (tmp_path / "profile_c.png").stat().st_size > 10_000
    assert (tmp_path / "fit_m.png").stat().st_size > 10_000


def test_tutorial_02_limits_and_coverage(tmp_path):
    r = _load("02_limits_and_coverage").main(fast=True, out=tmp_path)
    # the expected band is ordered (−2σ < −1σ < median < +1σ < +2σ), the limits are positive
    expected = r["expected"]
    assert expected[0] > 0 and np.all(np.diff(expected) > 0)
    assert 0 < r["observed"] < 10 and math.isfinite(r["observed"])
    # the root finder lands on CLs = 0.05, and the grid of the Brazil plot crosses there too
    # (log-linear interpolation between points 0.13 apart: a few 1e-3)
    assert r["cls_at_observed"] == pytest.approx(0.05, abs=1e-4)
    assert r["scan_observed"] == pytest.approx(r["observed"], abs=0.01)
    # the toy-based limit agrees with the asymptotic one within 3 of its statistical errors
    # (binomial errors of CLs+b and CLb from 120 toys each: ≈ 12 % of the limit); the
    # asymptotic formulae themselves are good to a few % here (~120 background events within
    # ±2σ of the peak; with 1000 toys per μ the toy limit is 3.5 ± 3 % above), far inside that
    # window
    err = r["toy_observed_error"]
    assert 0 < err < 0.3 * r["observed"]
    assert abs(r["toy_observed"] - r["observed"]) < 3 * err
    # toys: CLs falls with μ within errors, and every value is a probability
    cls, cls_err = r["toys"]["cls"], r["toys"]["error"]
    assert np.all((cls >= 0) & (cls <= 1))
    assert np.all(np.diff(cls) < 2 * np.hypot(cls_err[1:], cls_err[:-1]))
    # the coverage study at μ = 3: no failed fit, unit pulls and nominal 68.27 % coverage of μ
    # within 3 standard errors (binomial for the coverage: ±0.13 with 120 toys)
    study = r["coverage"]
    assert study.n_failed == 0 and study.ntoys == 120
    mu = study.parameters["mu"]
    assert abs(mu.pull_mean) < 3 * mu.pull_mean_error
    assert abs(mu.pull_width - 1) < 3 * mu.pull_width_error
    (c68,) = [c for c in study.coverage if c.parameters == ("mu",) and c.cl == 0.6827]
    assert abs(c68.deviation) < 3
    # the same toys fitted a batch at a time give the same CLs: their statistics agree with
    # the Minuit loop's to the fits' tolerance, so at most a toy right at the observed value
    # could change sides (one toy of CLs+b: 1/(ntoys·CLb))
    check = r["batched_check"]
    assert abs(check["cls_batched"] - check["cls_loop"]) <= 1.0 / (check["ntoys"]
                                                                  * check["clb_loop"])
    for png in ("brazil.png", "coverage.png"):
        assert (tmp_path / png).stat().st_size > 20_000


def test_tutorial_03_validate_a_model(tmp_path):
    r = _load("03_validate_a_model").main(fast=True, out=tmp_path)
    report = r["report"]
    # fast mode's tiny three-epoch network is rightly failed, while the floors (two samples of
    # the toy itself) pass every check
    assert not report["passed"]
    assert report["checks"]["c2st"]["status"] == "fail"
    assert report["checks"]["pit"]["status"] == "fail"
    assert all(c["floor_passed"] for c in report["checks"].values())
    # one model sample at θ_ref, importance-weighted, agrees with direct sampling at θ
    # (χ² of ~30 bins: p-values far below 1e-3 would mean a wrong weight)
    assert r["reweighting"]["pvalue"] > 1e-3
    # the true pdf's 68.27 % profile interval of cx encloses its MLE
    lo, hi = r["profiles"]["true pdf"].interval(0.6827)
    assert lo < r["mles"]["true pdf"][0] < hi
    for png in ("report/checks.png", "report/pit.png", "reweighted_x0.png", "profile_cx.png"):
        assert (tmp_path / png).stat().st_size > 20_000
