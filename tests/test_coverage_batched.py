"""coverage() and neyman_region_2d() with batched=True against the plain per-toy Minuit loop.

The batched studies fit the same toys (same seeds, same data) with egmm.infer.fit_batched; only
HESSE runs per toy (coverage pulls). With a small Minuit tolerance both paths reach the minima
to far below the errors, so the records agree toy by toy: MLEs to 1e-3 of their errors,
Δ(−2 ln L) at the truth to 1e-5, and hence the same coverage verdicts.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pyhf
import pytest

import egmm.infer.batched
from egmm.errors import InputError
from egmm.infer import coverage, local_executor, neyman_region_2d, sample_toy
from egmm.likelihood import PyhfCost, TorchDensity, UnbinnedNLL
from test_batched import signal_background
from test_coverage import LINE, normal_cost, normal_log_prob, normal_sampler, sometimes_broken
from test_toys import analytic_cost

pytestmark = pytest.mark.filterwarnings("ignore:jsonschema.RefResolver:DeprecationWarning")

TRUTH = {"mu": 1.0, "n_b": 1000.0}
#: tol 1e-4: Minuit's EDM goal 2e-7, and the batched stage's decrement goal (0.002 · tol)
STUDY = dict(ntoys=40, seed=5, progress=False, tol=1e-4)


@pytest.fixture(scope="module")
def studies():
    """The analytic model (Gaussian signal μ·50 on 1000 flat events, extended) as its own
    truth: the plain loop and the batched study (batches of 16) of the same 40 toys."""
    truth = analytic_cost(mu=1.0, seed=0)
    loop = coverage(truth, None, TRUTH, executor="serial", **STUDY)
    batched = coverage(truth, None, TRUTH, executor="serial", batched=True, batch_size=16,
                       **STUDY)
    return truth, loop, batched


def test_batched_coverage_equals_the_loop_toy_by_toy(studies):
    _, loop, batched = studies
    assert loop.n_failed == batched.n_failed == 0
    assert batched.n_fallback == 0 and loop.n_fallback == 0
    assert all(r["batched"] and r["fallback"] == [] for r in batched.records)
    thresholds = {(c.parameters, c.threshold) for c in loop.coverage}
    for a, b in zip(loop.records, batched.records, strict=True):
        assert (a["index"], a["seed"]) == (b["index"], b["seed"])
        assert a["valid"] and b["valid"]
        for p, err in a["errors"].items():
            assert abs(b["values"][p] - a["values"][p]) < 1e-3 * err, (a["index"], p)
            assert b["errors"][p] == pytest.approx(err, rel=1e-3)  # HESSE at both minima
        assert set(b["delta"]) == set(a["delta"]) == {"mu", "n_b", "mu,n_b"}
        for label, delta in a["delta"].items():
            assert b["delta"][label] == pytest.approx(delta, abs=1e-5)
        for region, threshold in thresholds:
            label = ",".join(region)
            assert (a["delta"][label] <= threshold) == (b["delta"][label] <= threshold)
    assert batched.coverage == loop.coverage  # the same covered counts at every cl
    for p, s in loop.parameters.items():
        assert batched.parameters[p].pull_width == pytest.approx(s.pull_width, abs=1e-3)


def test_process_pool_equals_the_serial_batched_run(studies):
    """Batches are the tasks; a worker fits exactly the toys the serial run fits together."""
    truth, _, batched = studies
    with local_executor(2) as pool:
        pooled = coverage(truth, None, TRUTH, executor=pool, batched=True, batch_size=16,
                          **STUDY)
    assert pooled.records == batched.records
    assert pooled.coverage == batched.coverage and pooled.parameters == batched.parameters


def test_toys_the_batch_does_not_converge_are_refitted_by_minuit(monkeypatch):
    """No Newton step allowed: every fit falls back to Minuit from the loop's start, is
    flagged in the record's ``fallback`` and counted, and gives the loop's global fits (its
    profile fits to their tolerance). (The 2-D region fixes both parameters: nothing to fit,
    its Δ is the cost at the truth.)"""
    truth = analytic_cost(mu=1.0, seed=0)
    kwargs = dict(STUDY, ntoys=8, executor="serial")
    loop = coverage(truth, None, TRUTH, **kwargs)
    monkeypatch.setattr(egmm.infer.batched, "fit_batched",
                        functools.partial(egmm.infer.batched.fit_batched, max_iter=0))
    refitted = coverage(truth, None, TRUTH, batched=True, **kwargs)
    assert refitted.n_fallback == 8 and refitted.n_failed == 0
    for a, b in zip(loop.records, refitted.records, strict=True):
        assert b["fallback"] == ["free", "mu", "n_b"]
        assert b["values"] == pytest.approx(a["values"], rel=1e-12)
        assert b["errors"] == pytest.approx(a["errors"], rel=1e-12)
        # the conditional fits start elsewhere (the loop's at the point its free fit's HESSE
        # covariance predicts, profiled_start): the same minima to their EDM goal (2e-7 at
        # tol 1e-4), so Δ within twice that
        assert b["delta"] == pytest.approx(a["delta"], abs=4e-7)


def test_failed_toys_are_counted_as_in_the_loop():
    """Datasets the cost refuses (NaN) fail in both paths, with the same reasons."""
    kwargs = dict(ntoys=20, seed=2, executor="serial", progress=False, cl=0.6827, tol=1e-4)
    loop = coverage(sometimes_broken, normal_cost, {"mu": 1.0, "sigma": 2.0}, **kwargs)
    batched = coverage(sometimes_broken, normal_cost, {"mu": 1.0, "sigma": 2.0}, batched=True,
                       batch_size=8, **kwargs)
    assert 0 < batched.n_failed == loop.n_failed < 20
    assert batched.failures == loop.failures
    assert batched.coverage == loop.coverage


# ----------------------------------------------------------------------------------------------
# neyman_region_2d
# ----------------------------------------------------------------------------------------------
def _toy_values(path: Path) -> list[np.ndarray]:
    """The toys' t values per grid point (in the order the points ran) from a JSON-lines store."""
    by_key: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        by_key.setdefault(record["key"], []).append(record["value"])
    return [np.array(v) for v in by_key.values()]


def test_batched_region_equals_the_loop_toy_by_toy(tmp_path):
    """A Gaussian peak (μ, σ, n_sig) on a flat background (n_bkg, constrained): POIs (μ,
    n_sig), σ and n_bkg profiled; 2 × 2 points, 16 toys each."""
    truth = {"mu": 5.0, "sigma": 0.5, "n_sig": 100.0, "n_bkg": 400.0}
    cost = sample_toy(signal_background(), truth, 7)
    kwargs = dict(ntoys=16, seed=3, executor="serial", track_progress=False)
    grid = ([4.95, 5.1], [90.0, 115.0])
    loop = neyman_region_2d(cost, ("mu", "n_sig"), *grid, out=tmp_path / "loop.jsonl",
                            **kwargs)
    batched = neyman_region_2d(cost, ("mu", "n_sig"), *grid, out=tmp_path / "batched.jsonl",
                               batched=True, batch_size=8, **kwargs)
    toys_loop, toys_batched = _toy_values(tmp_path / "loop.jsonl"), _toy_values(
        tmp_path / "batched.jsonl")
    assert len(toys_loop) == len(toys_batched) == 4
    for a, b in zip(toys_loop, toys_batched):
        np.testing.assert_allclose(b, a, atol=1e-4)
    records = [json.loads(line) for line in (tmp_path / "batched.jsonl").read_text().splitlines()]
    assert all(r["batched"] and r["valid"] and not r["fallback"] for r in records)
    np.testing.assert_array_equal(batched.observed, loop.observed)
    np.testing.assert_allclose(batched.critical, loop.critical, atol=1e-4)
    np.testing.assert_array_equal(batched.pvalue, loop.pvalue)
    np.testing.assert_array_equal(batched.accepted, loop.accepted)
    np.testing.assert_array_equal(batched.n_failed, loop.n_failed)


# ----------------------------------------------------------------------------------------------
# costs that cannot be fitted together
# ----------------------------------------------------------------------------------------------
def test_unsupported_costs_raise_before_any_toy():
    model = pyhf.simplemodels.uncorrelated_background([5.0], [50.0], [7.0])
    cost = PyhfCost(model, [55.0])
    with pytest.raises(InputError, match=r"batched=True.*PyhfCost"):
        coverage(cost, None, {"mu": 1.0, "uncorr_bkguncrt[0]": 1.0}, ntoys=4, seed=1,
                 executor="serial", progress=False, batched=True)
    with pytest.raises(InputError, match=r"batched=True.*PyhfCost"):
        neyman_region_2d(cost, ("mu", "uncorr_bkguncrt[0]"), [1.0], [1.0], ntoys=4,
                         executor="serial", track_progress=False, batched=True)
    with pytest.raises(InputError, match="batch_size"):
        coverage(analytic_cost(), None, TRUTH, ntoys=4, seed=1, executor="serial",
                 progress=False, batched=True, batch_size=0)


def test_toys_with_their_own_density_objects_raise():
    """A factory that builds a new density for every dataset: toys that share no density
    cannot be evaluated in one batch, which the first two toys show."""

    def factory(x):
        return UnbinnedNLL(x, TorchDensity(LINE, normal_log_prob, ("mu", "sigma"),
                                           {"sigma": (0.05, 10.0)}, normal_sampler))

    def data(rng):
        return rng.normal(1.0, 2.0, 60)[:, None]

    with pytest.raises(InputError, match="same density object"):
        coverage(data, factory, {"mu": 1.0, "sigma": 2.0}, ntoys=4, seed=1, executor="serial",
                 progress=False, batched=True)


def test_batched_coverage_and_regions_refit_a_free_fit_that_missed_its_minimum(tmp_path):
    """A likelihood with local modes (helpers.multimode_cost): where a toy's conditional
    minimum lies deeper than its free one, the batched paths fit it free again from there,
    as the loop's _profile_ratio does, instead of clipping Δ to 0. Coverage toy 33 of seed
    21: free fits stop at m̂ = 7.65 (batched) and 4.84 (loop) in different modes, and Δ at
    the true m = 5 is 0.165 on both paths (batched: 0 before the refit)."""
    from helpers import MULTIMODE_PARS, multimode_cost

    cost = multimode_cost()
    kwargs = dict(ntoys=34, seed=21, executor="serial", progress=False)
    batched = coverage(cost, None, MULTIMODE_PARS, batched=True, **kwargs)
    loop = coverage(cost, None, MULTIMODE_PARS, **kwargs)
    # toy 33: its free fits end in different modes on the two paths (m̂ 7.65 and 4.84), and
    # both find the conditional minimum at the truth deeper than their first free fit
    assert abs(batched.records[33]["values"]["m"] - loop.records[33]["values"]["m"]) > 1.0
    assert loop.records[33]["delta"]["m"] > 0.1
    assert batched.records[33]["delta"]["m"] == pytest.approx(loop.records[33]["delta"]["m"],
                                                              abs=1e-3)
    for label in ("m", "mu", "n_b"):
        b = np.array([r["delta"][label] for r in batched.records])
        lp = np.array([r["delta"][label] for r in loop.records])
        assert not np.any((b < 1e-9) & (lp > 1e-3)), label
    # the 2-D Neyman construction's toys: the same statistic per toy on both paths
    values = {}
    for mode in ("batched", "loop"):
        store = tmp_path / f"{mode}.jsonl"
        neyman_region_2d(cost, ("m", "mu"), [3.0], [0.5], ntoys=40, seed=3, executor="serial",
                         track_progress=False, out=store, batched=mode == "batched",
                         start=MULTIMODE_PARS)
        records = [json.loads(line) for line in store.read_text().splitlines()]
        values[mode] = np.array([r["value"] for r in sorted(records, key=lambda r: r["index"])])
    np.testing.assert_allclose(values["batched"], values["loop"], atol=1e-3)
