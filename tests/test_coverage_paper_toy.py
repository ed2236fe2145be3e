"""The paper-toy coverage benchmark (benchmarks/coverage_paper_toy.py) on a small scale.

With the true pdf as the fitted density, nothing but the asymptotic approximation stands between
the Wilks regions and their nominal coverage; at N = 400 events and a truth far from the cusps
(the MLE's spread is ≈ 0.07 in cx and cy, the cusps are > 10 of those away) it holds to well
below the statistical precision of a few hundred toys.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

from egmm.groundtruth import PaperToy
from egmm.infer import coverage, toy_seed

BENCHMARK = Path(__file__).parents[1] / "benchmarks" / "coverage_paper_toy.py"


def _load():
    spec = importlib.util.spec_from_file_location("coverage_paper_toy", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return _load()


def test_torch_port_is_the_paper_toy_pdf(bench):
    assert bench.port_deviation(bench.true_density(), n=500) < 1e-10


def test_true_pdf_covers_at_nominal(bench):
    """200 toys at (0.8, 0.8): the 68.27 % profile-likelihood interval of cx and of cy covers
    the truth within 3 binomial standard errors of 68.27 %.

    If Wilks holds, the number of covering toys is Binomial(n, 0.6827), so (fraction − 0.6827)
    / √(0.6827 · 0.3173 / n) is ≈ N(0, 1): |·| < 3 fails by chance in 0.27 % of seeds (the seed
    is fixed, so the test is deterministic), while a real failure of the asymptotics (or a
    wrong threshold: 1-D uses Δ = 1, not the 2-D 2.30) shows up as many σ. With n = 200 the
    window is ±9.9 percentage points.
    """
    cx, cy = 0.8, 0.8
    res = coverage(PaperToy(), bench.DensityCost(bench.true_density(), "true pdf"),
                   {"cx": cx, "cy": cy}, ntoys=200, seed=11, cl=0.6827,
                   n_events=PaperToy.N_EVENTS, executor="serial", progress=False, pairs=[])
    assert res.n_failed == 0
    for c in res.coverage:
        assert c.parameters in {("cx",), ("cy",)} and c.n == 200
        assert c.threshold == pytest.approx(1.0, abs=1e-3)
        assert abs(c.fraction - 0.6827) < 3 * math.sqrt(0.6827 * 0.3173 / c.n), c
    row = bench.summarise(res, cx, cy, 1.0, 200, 1)
    assert row["n_failed"] == 0 and {tuple(c["parameters"]) for c in row["coverage"]} == {
        ("cx",), ("cy",)}


def test_failed_fits_are_counted(bench):
    """A cost factory that breaks every dataset whose first event has x3 > 0 (NaN in the
    data: the cost refuses it). The failures are exactly those toys, found again here from the
    documented seeding (toy i draws from toy_seed(seed, i)); the summaries use the others."""

    class Breaking(bench.DensityCost):
        def __call__(self, data):
            if data[0, 3] > 0:
                data = data.copy()
                data[0, 3] = np.nan
            return super().__call__(data)

    cx, cy, ntoys, seed = -0.8, 0.8, 24, 5
    expected = [i for i in range(ntoys)
                if PaperToy().sample(PaperToy.N_EVENTS, cx, cy,
                                     seed=np.random.default_rng(toy_seed(seed, i)))[0, 3] > 0]
    assert 0 < len(expected) < ntoys
    res = coverage(PaperToy(), Breaking(bench.true_density(), "breaking"), {"cx": cx, "cy": cy},
                   ntoys=ntoys, seed=seed, n_events=PaperToy.N_EVENTS, executor="serial",
                   progress=False)
    assert res.n_failed == len(expected)
    assert sorted(i for i, _ in res.failures) == expected
    assert all("x3" in why for _, why in res.failures)
    assert all(c.n == ntoys - len(expected) for c in res.coverage)
    row = bench.summarise(res, cx, cy, 1.0, ntoys, 1)
    assert row["n_failed"] == len(expected) and len(row["failures"]) == len(expected)
