"""The one-call validation report: figures, metrics.json and a markdown summary with checks.

:func:`report` compares a density model with held-out data at several parameter points and
writes everything a physicist looks at before trusting the model, with every number next to
its floor and a pass/fail verdict per check.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from egmm._io import savefig_atomic, write_text_atomic
from egmm.base import DensityModel, whole_number
from egmm.errors import InputError, ParameterError
from egmm.validation.histograms import (
    double_ratio,
    histogram,
    importance_weights,
    make_axes,
    pulls,
)
from egmm.validation.metrics import (
    binned_chi2,
    binned_divergences,
    c2st,
    pit,
    pit_uniformity,
    pull_chi2,
    pull_frequencies,
    two_sample_tests,
)

__all__ = ["CHECKS", "report"]

#: the checks of :func:`report`, in the order of its tables
CHECKS: tuple[str, ...] = ("c2st", "pit", "ks", "cvm", "ad", "chi2_1d", "chi2_2d",
                           "double_ratio")

_MIN_EVENTS = 50  # per θ point: the floor splits the data, the C2ST needs 5 events per fold
_AD_P_MIN = 0.001  # scipy's floor on the Anderson-Darling p-value
# importance weights give the model's ratio p(θ)/p(θ_ref) only where p(·|θ_ref) covers p(·|θ)
# well; below this Kish effective-sample fraction (Σw)²/(N Σw²) the weights are heavy-tailed
# and the ratio's error estimate unreliable, so independent samples are used instead
_MIN_ESS = 0.5


class _Reference:
    """A sampler (and PIT) with θ as a mapping: an egmm model or a PaperToy-like truth."""

    def __init__(self, source: Any, parameters: Sequence[str], space: Any, what: str) -> None:
        if not callable(getattr(source, "sample", None)):
            raise InputError(f"{what}: {type(source).__name__} has no sample()")
        names = tuple(getattr(source, "parameters", ()))
        if tuple(names) != tuple(parameters):
            raise InputError(f"{what}: parameters {list(names)} differ from the model's "
                             f"{list(parameters)}")
        other = getattr(source, "space", None)
        if other is not None and tuple(other.names) != tuple(space.names):
            raise InputError(f"{what}: observables {list(other.names)} differ from the "
                             f"model's {list(space.names)}")
        self.source = source
        self.names = names
        self.is_model = isinstance(source, DensityModel)
        self.has_pit = callable(getattr(source, "pit", None))
        self.name = type(source).__name__

    def sample(self, n: int, theta: Mapping[str, float], seed: int) -> np.ndarray:
        if self.is_model:
            return np.asarray(self.source.sample(n, dict(theta), seed=seed))
        return np.asarray(self.source.sample(n, *(theta[p] for p in self.names), seed=seed))

    def pit(self, x: np.ndarray, theta: Mapping[str, float]) -> np.ndarray:
        return pit(self.source, x, dict(theta))


def _seed(seed: int, *path: int) -> int:
    return int(np.random.SeedSequence([int(seed), *path]).generate_state(1)[0])


def _theta_dict(model: DensityModel, key: Any) -> dict[str, float]:
    names = model.parameters
    try:
        if isinstance(key, Mapping):
            if set(key) != set(names):
                raise InputError(f"θ {dict(key)}: expected the parameters {list(names)}")
            arr = np.array([float(key[p]) for p in names])
        else:
            arr = np.atleast_1d(np.asarray(key, dtype=np.float64)).ravel()
    except (TypeError, ValueError):
        raise InputError(f"θ {key!r}: values must be numbers") from None
    if len(arr) != len(names):
        raise InputError(f"θ {key!r}: expected {len(names)} values {list(names)}")
    model.check_theta(arr, allow_outside=True)  # finite values
    for name, value in zip(names, arr):
        lo, hi = model.parameter_bounds.get(name, (-np.inf, np.inf))
        if not lo <= value <= hi:
            raise ParameterError(
                f"θ {key!r}: parameter {name!r} = {value} lies outside the model's range "
                f"[{lo}, {hi}]; a validation report tests a model where it was trained only")
    return dict(zip(names, arr.tolist()))


def _safe(text: str) -> str:
    """``text`` reduced to characters safe in a file name."""
    return re.sub(r"[^A-Za-z0-9_.+-]", "", text) or "x"


def _slug(theta: Mapping[str, float]) -> str:
    return _safe("_".join(f"{k}{v:+.3g}" for k, v in theta.items()) or "nominal")


def _label(theta: Mapping[str, float]) -> str:
    from egmm.validation.plots import theta_label

    return theta_label(theta) or "no parameters"


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    import torch

    if n is None:
        yield
        return
    try:  # BLAS / OpenMP pools (scikit-learn's); installed with scikit-learn
        from threadpoolctl import threadpool_limits
    except ImportError:
        limits: Any = contextlib.nullcontext()
    else:
        limits = threadpool_limits(int(n))
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        with limits:
            yield
    finally:
        torch.set_num_threads(old)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else (None if math.isnan(v) else str(v))
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


class _Binning:
    """The hist axes and the pairs of the report, and the histograms of one sample."""

    def __init__(self, space: Any, pooled: np.ndarray, bins: int, bins_2d: int,
                 pairs: list[tuple[int, int]]) -> None:
        self.space = space
        self.axes = make_axes(space, pooled, bins=bins)
        self.axes_2d = make_axes(space, pooled, bins=bins_2d)
        self.pairs = pairs

    def one_d(self, x: np.ndarray, weights: np.ndarray | None = None) -> list[Any]:
        return [histogram(x, self.space, self.axes, observables=[name], weights=weights)
                for name in self.space.names]

    def two_d(self, x: np.ndarray) -> dict[tuple[int, int], Any]:
        names = self.space.names
        return {(i, j): histogram(x, self.space, self.axes_2d,
                                  observables=[names[i], names[j]]) for i, j in self.pairs}


def _compare(x: np.ndarray, y: np.ndarray, binning: _Binning, *, min_count: float,
             c2st_events: int, folds: int, seed: int, threads: int | None
             ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every two-sample metric of ``x`` (data-like) against ``y`` (model-like)."""
    space = binning.space
    h1x, h1y = binning.one_d(x), binning.one_d(y)
    h2x, h2y = binning.two_d(x), binning.two_d(y)
    names = space.names
    binned_1d = {}
    for name, hx, hy in zip(names, h1x, h1y):
        binned_1d[name] = {**binned_chi2(hx, hy, min_count=min_count),
                           **binned_divergences(hx, hy)}
    binned_2d = {}
    all_pulls = []
    for (i, j), hx in h2x.items():
        p = pulls(hx, h2y[(i, j)], min_count=min_count)
        all_pulls.append(p.ravel())
        binned_2d[f"{names[i]}|{names[j]}"] = {
            **pull_chi2(pulls(hx, h2y[(i, j)], min_count=min_count, flow=True)),
            **binned_divergences(hx, h2y[(i, j)])}
    metrics = {
        "two_sample": two_sample_tests(x, y, space),
        "binned_1d": binned_1d,
        "binned_2d": binned_2d,
        "pull_frequencies_2d": (pull_frequencies(np.concatenate(all_pulls))
                                if all_pulls else []),
        "c2st": _c2st_or_note(x, y, space, folds=folds, seed=seed, max_events=c2st_events,
                              threads=threads),
    }
    return metrics, {"1d": (h1x, h1y), "2d": (h2x, h2y)}


def _c2st_or_note(x: np.ndarray, y: np.ndarray, space: Any, **kwargs: Any) -> dict[str, Any]:
    try:
        return c2st(x, y, space=space, **kwargs)
    except ImportError as exc:  # the one metric that needs scikit-learn
        return {"skipped": str(exc)}


def _family_pvalues(metrics: Mapping[str, Any], family: str) -> list[float]:
    """The p-values of one check family at one θ point (empty: not applicable)."""
    if family == "c2st":
        return [metrics["c2st"]["pvalue"]] if "pvalue" in metrics["c2st"] else []
    if family in ("ks", "cvm", "ad"):
        return [r[family]["pvalue"] for r in metrics["two_sample"].values()
                if r[family]["pvalue"] is not None]  # (CvM, AD: none for discrete ones)
    key = {"pit": "pit", "chi2_1d": "binned_1d", "chi2_2d": "binned_2d",
           "double_ratio": "double_ratio"}[family]
    results = metrics.get(key) or {}
    return [r["pvalue"] for r in results.values()
            if r.get("pvalue") is not None and math.isfinite(r["pvalue"])]


def _ad_max_hits(n_tests: int, alpha: float) -> int:
    """How many of ``n_tests`` Anderson-Darling p-values may sit at scipy's floor of 0.001
    before the family fails: the largest k with P(Binomial(n, 0.001) > k) ≤ α."""
    from scipy.stats import binom

    k = 0
    while binom.sf(k, n_tests, _AD_P_MIN) > alpha:
        k += 1
    return k


def _checks(points: list[dict[str, Any]], alpha: float) -> dict[str, dict[str, Any]]:
    out = {}
    for family in CHECKS:
        model_p = [_family_pvalues(p["model"], family) for p in points]
        floor_p = [_family_pvalues(p["floor"], family) for p in points]
        n_tests = sum(len(ps) for ps in model_p)
        model_min = [min(ps) if ps else None for ps in model_p]
        floor_min = [min(ps) if ps else None for ps in floor_p]
        if n_tests == 0:
            out[family] = {"status": "skipped", "passed": None, "model": model_min,
                           "floor": floor_min, "n_tests": 0, "threshold": None}
            continue
        if family == "ad":
            # scipy clips AD p-values at 0.001, below any Bonferroni threshold of a large
            # family: count the tests at the clip instead
            threshold = _AD_P_MIN
            max_hits = _ad_max_hits(n_tests, alpha)

            def ok(ps: list[list[float]], max_hits: int = max_hits) -> bool:
                return sum(p <= _AD_P_MIN for q in ps for p in q) <= max_hits
        else:
            threshold = alpha / n_tests
            max_hits = 0

            def ok(ps: list[list[float]], threshold: float = threshold) -> bool:
                return all(p > threshold for q in ps for p in q)
        passed, floor_passed = ok(model_p), ok(floor_p)
        out[family] = {
            "status": "pass" if passed else "fail", "passed": passed,
            "floor_passed": floor_passed, "threshold": threshold, "n_tests": n_tests,
            "tests_allowed_at_threshold": max_hits,
            "smallest_p_model": min(p for p in model_min if p is not None),
            "smallest_p_floor": min((p for p in floor_min if p is not None), default=None),
            "model": model_min, "floor": floor_min,
        }
    return out


def _default_reference(points: list[dict[str, Any]], model: DensityModel) -> int:
    """The θ point nearest the centre of the points, in units of the trained range."""
    if len(points) == 1 or not model.parameters:
        return 0
    th = np.array([list(p["theta"].values()) for p in points])
    bounds = getattr(model, "parameter_bounds", {}) or {}
    width = np.array([np.subtract(*bounds.get(n, (np.inf, -np.inf))[::-1])
                      for n in model.parameters])
    spread = np.ptp(th, axis=0)
    # the trained range where there is one, else the spread of the points
    scale = np.where(np.isfinite(width) & (width > 0), width, np.where(spread > 0, spread, 1.0))
    dist = np.linalg.norm((th - th.mean(0)) / scale, axis=1)
    return int(np.argmin(dist))


def _read_points(model: DensityModel, samples_by_theta: Mapping[Any, Any]
                 ) -> list[dict[str, Any]]:
    """The θ points with their validated data, in the order given."""
    points: list[dict[str, Any]] = []
    seen: set[tuple[float, ...]] = set()
    for key, events in samples_by_theta.items():
        theta = _theta_dict(model, key)
        label = _label(theta)
        values = tuple(theta.values())
        if values in seen:
            raise InputError(f"report: θ = ({label}) appears twice in samples_by_theta")
        seen.add(values)
        x = model.space.validate(events, what=f"data at θ = ({label})")
        if len(x) < _MIN_EVENTS:
            raise InputError(f"report: data at θ = ({label}) has {len(x)} events; at least "
                             f"{_MIN_EVENTS} are needed")
        points.append({"theta": theta, "label": label, "slug": _slug(theta), "data": x})
    return points


def _pair_indices(space: Any, pairs: Sequence[tuple[str, str]] | None
                  ) -> list[tuple[int, int]]:
    if pairs is None:
        return list(combinations(range(space.dim), 2))
    out = []
    for a, b in pairs:
        i, j = space.index(a), space.index(b)
        if i == j:
            raise InputError(f"report: pair ({a!r}, {b!r}) repeats an observable")
        out.append((min(i, j), max(i, j)))
    return out


def _reference_index(points: list[dict[str, Any]], model: DensityModel, theta_ref: Any
                     ) -> int:
    if theta_ref is None:
        return _default_reference(points, model)
    target = tuple(_theta_dict(model, theta_ref).values())
    for k, p in enumerate(points):
        if np.allclose(tuple(p["theta"].values()), target):
            return k
    raise InputError(f"report: theta_ref {theta_ref!r} is not one of the θ points")


def _draw_samples(p: dict[str, Any], model: DensityModel, ref: _Reference | None,
                  n_model: int, seed: int, k: int) -> None:
    """The model sample at the point, and the two reference samples of its floor: from the
    truth (data-sized and model-sized) or the data's two random halves."""
    n_data = len(p["data"])
    p["model_sample"] = model.sample(n_model, p["theta"], seed=_seed(seed, k, 1))
    if ref is not None:
        p["ref_a"] = ref.sample(n_data, p["theta"], _seed(seed, k, 2))
        p["ref_b"] = ref.sample(n_model, p["theta"], _seed(seed, k, 3))
    else:
        perm = np.random.default_rng(_seed(seed, k, 4)).permutation(n_data)
        half = n_data // 2
        p["ref_a"], p["ref_b"] = p["data"][perm[:half]], p["data"][perm[half:2 * half]]


def _point_metrics(p: dict[str, Any], model: DensityModel, ref: _Reference | None,
                   binning: _Binning, *, min_count: float, c2st_events: int, folds: int,
                   seeds: tuple[int, int], threads: int | None) -> None:
    """Model and floor metrics of one θ point, with the PIT where the model has one."""
    options = {"min_count": min_count, "c2st_events": c2st_events, "folds": folds,
               "threads": threads}
    p["model"], p["hists"] = _compare(p["data"], p["model_sample"], binning, seed=seeds[0],
                                      **options)
    p["floor"], p["floor_hists"] = _compare(p["ref_a"], p["ref_b"], binning, seed=seeds[1],
                                            **options)
    p["pit_values"] = None
    p["model"]["pit"] = p["floor"]["pit"] = None
    if callable(getattr(model, "pit", None)):
        p["pit_values"] = pit(model, p["data"], p["theta"])
        p["model"]["pit"] = pit_uniformity(p["pit_values"], model.space)
        if ref is not None and ref.has_pit:
            floor_pit = ref.pit(p["ref_a"], p["theta"])
        else:  # exactly uniform if the model's sampler and CDFs agree
            floor_pit = pit(model, p["model_sample"][:len(p["data"])], p["theta"])
        p["floor"]["pit"] = pit_uniformity(floor_pit, model.space)


def _double_ratios(p: dict[str, Any], base: dict[str, Any], weights: np.ndarray | None,
                   binning: _Binning, *, reweight: str, min_count: float, is_ref: bool
                   ) -> None:
    """Double-ratio χ² of data vs model (and of the floor) against the reference point."""
    p["model"]["double_ratio"] = p["floor"]["double_ratio"] = None
    p["double_panels"] = p["double_ratio_model"] = None
    if is_ref:
        return
    ess = None
    if weights is not None:
        ess = float(weights.sum() ** 2 / (weights * weights).sum() / len(weights))
    use_weights = ess is not None and (reweight == "always" or ess >= _MIN_ESS)
    p["double_ratio_model"] = {
        "method": "importance weights on the θ_ref sample" if use_weights
        else "independent samples at θ and θ_ref", "ess_fraction": ess}
    h_model = (binning.one_d(base["model_sample"], weights=weights) if use_weights
               else p["hists"]["1d"][1])
    h_data, h_data_ref = p["hists"]["1d"][0], base["hists"]["1d"][0]
    h_model_ref = base["hists"]["1d"][1]
    fa, fb = p["floor_hists"]["1d"]
    fa_ref, fb_ref = base["floor_hists"]["1d"]
    model_dr, floor_dr, panels = {}, {}, []
    for j, name in enumerate(binning.space.names):
        res = double_ratio(h_data[j], h_data_ref[j], h_model[j], h_model_ref[j],
                           same_events=use_weights, min_count=min_count)
        model_dr[name] = pull_chi2(res["pull"])
        res_f = double_ratio(fa[j], fa_ref[j], fb[j], fb_ref[j], min_count=min_count)
        floor_dr[name] = pull_chi2(res_f["pull"])
        panels.append({"label": p["label"], "data": h_data[j], "data_ref": h_data_ref[j],
                       "model": h_model[j], "model_ref": h_model_ref[j],
                       "same_events": use_weights})
    p["model"]["double_ratio"], p["floor"]["double_ratio"] = model_dr, floor_dr
    p["double_panels"] = panels


def report(model: DensityModel, samples_by_theta: Mapping[Any, Any], out_dir: str | os.PathLike,
           *, truth: Any = None, theta_ref: Any = None, n_model: int = 50_000, bins: int = 40,
           bins_2d: int = 20, pairs: Sequence[tuple[str, str]] | None = None,
           c2st_events: int = 20_000, folds: int = 5, alpha: float = 0.0027,
           min_count: float = 5.0, reweight: str = "auto", seed: int = 0,
           figures: bool = True, corner: str = "ref",
           dpi: float = 110, progress: bool = True, threads: int | None = None
           ) -> dict[str, Any]:
    r"""Validate ``model`` against data at several θ: PNGs, ``metrics.json``, ``summary.md``.

    For every θ point the data are compared with a fresh model sample of ``n_model`` events
    (KS, Cramér-von Mises, Anderson-Darling per observable; binned χ², KL, JS of the 1-D and
    2-D marginals; the C2ST), the PIT of every conditional of the model is evaluated on the
    data, and the ratios p(θ)/p(θ_ref) of data and of the model are compared in a double
    ratio (paper Appendix A), the model's from importance weights on its θ_ref sample (paper
    Section 5) where those cover p(·|θ) well (``reweight``).

    **Floors.** Each metric is computed again for two independent samples of the reference:
    with ``truth``, a truth sample of the data's size against one of the model sample's size
    (and the truth's own PIT on its sample); without, the data split in two random halves
    (and the model's PIT on its own sample). The floor is what the metric reads for a
    perfect model; a floor that fails its check says the test is miscalibrated or the data
    are not one sample.

    **Checks.** Each family of tests — c2st, pit, ks, cvm, ad, chi2_1d, chi2_2d, double_ratio
    — has a p-value per test (θ point × observable, or pair); it passes when every p-value
    exceeds α/m (Bonferroni over its m tests, so that a perfect model fails a family with
    probability ≤ α). The p-values:

    - KS and CvM: scipy's two-sample tests;
    - AD: scipy's, clipped to [0.001, 0.25]; since α/m is usually below the clip, AD fails
      when more of its tests sit at 0.001 than a Binomial(m, 0.001) count exceeds with
      probability α (for m ≥ 3: more than one);
    - chi2_1d, chi2_2d: χ² = Σ pull² (paper Eq. 13, :func:`egmm.validation.pulls`) over bins
      with an expected content ≥ ``min_count``, against χ² with (bins − 1) degrees of freedom;
    - double_ratio: the same with the pulls of :func:`egmm.validation.double_ratio`;
    - pit: one-sample KS of each continuous conditional's PIT against U(0, 1);
    - c2st: the normal tail of (AUC − ½)/σ with σ = √2 σ_Mann-Whitney
      (:func:`egmm.validation.c2st_null_sigma`).

    KL and JS have no check: read them against their floor. Calibration: 100 reports of the
    PaperToy's exact pdf (4 θ points, 2000 events each, truth floors) failed 1 of their 800
    checks, and their floors none; with 1000 events and the data-split floor, 3 and 2 of
    800 — against the ≤ 8 × 0.27 % per report that α = 0.0027 allows.

    Arguments:
        model: the density model (a :class:`egmm.DensityModel`; the PIT needs ``pit``).
        samples_by_theta: θ → held-out data events at θ. θ as a mapping name → value, a
            tuple in the order of ``model.parameters`` (or a number for one parameter); events
            as anything :meth:`ObservableSpace.validate` accepts, ≥ 50 per point, in random
            order.
        out_dir: output folder (created).
        truth: optional ground truth with ``sample(n, *θ values, seed=)`` and ``pit`` like
            :class:`egmm.groundtruth.PaperToy` (or an egmm model) for the floors.
        theta_ref: reference point of the double ratios, one of the θ keys (default: the
            point nearest the centre of all points).
        n_model: model events per θ point.
        bins, bins_2d: bins per axis of the 1-D and 2-D histograms (:func:`make_axes`).
        pairs: observable pairs of the 2-D marginals (default: all).
        c2st_events: events per class in the C2ST (at most the data's).
        folds: C2ST cross-validation folds.
        alpha: family-wise false-alarm probability of each check (default 0.0027, "3σ").
        min_count: minimum expected bin content for a pull.
        reweight: the model's ratio p(θ)/p(θ_ref) in the double ratios — ``"always"`` from
            importance weights on the θ_ref model sample (paper Section 5: correlated
            fluctuations cancel), ``"never"`` from the independent model samples at θ and
            θ_ref, ``"auto"`` (default) weights where their Kish effective sample size is at
            least half the sample, independent samples otherwise (heavy-tailed weights
            make the weighted ratio's error estimate unreliable).
        seed: seeds model samples, truth samples, splits and classifiers.
        figures: write the PNGs. ``corner``: 2-D marginal corner plots at ``"ref"`` (θ_ref
            only), ``"all"`` points or ``"none"``.
        dpi: resolution of the PNGs.
        progress: a tqdm progress bar.
        threads: torch and BLAS/OpenMP threads during the report (None: leave as is).

    Returns:
        the content of ``metrics.json``: ``passed`` (all checks), ``checks``, ``points``
        (per θ: model and floor metrics), ``figures`` (file names in ``out_dir``), settings
        and timing.

    Example:
        >>> from egmm.groundtruth import PaperToy                    # doctest: +SKIP
        >>> toy = PaperToy()                                          # doctest: +SKIP
        >>> data = {(cx, cy): toy.sample(5000, cx, cy, seed=k)        # doctest: +SKIP
        ...         for k, (cx, cy) in enumerate(toy.TRUE_HYPOTHESES)}
        >>> result = report(model, data, "validation", truth=toy)     # doctest: +SKIP
        >>> result["passed"], result["checks"]["c2st"]["status"]      # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    started = time.perf_counter()
    if not isinstance(model, DensityModel):
        raise InputError(f"report: model must be an egmm DensityModel, got "
                         f"{type(model).__name__}")
    if not isinstance(samples_by_theta, Mapping) or not samples_by_theta:
        raise InputError("report: samples_by_theta must be a non-empty mapping θ → events")
    if reweight not in ("auto", "always", "never"):
        raise InputError(f"report: reweight must be 'auto', 'always' or 'never', got "
                         f"{reweight!r}")
    if corner not in ("ref", "all", "none"):
        raise InputError(f"report: corner must be 'ref', 'all' or 'none', got {corner!r}")
    if not 0.0 < alpha < 1.0:
        raise InputError(f"report: alpha must lie in (0, 1), got {alpha}")
    n_model, bins, bins_2d, c2st_events = (
        whole_number(value, f"report: {name}") for name, value in (
            ("n_model", n_model), ("bins", bins), ("bins_2d", bins_2d),
            ("c2st_events", c2st_events)))
    space = model.space
    points = _read_points(model, samples_by_theta)
    pair_idx = _pair_indices(space, pairs)
    ref = _Reference(truth, model.parameters, space, "truth") if truth is not None else None
    k_ref = _reference_index(points, model, theta_ref)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    n_points = len(points)
    bar = tqdm(total=3 * n_points + 2, disable=not progress, desc="validation", unit="step")
    timing: dict[str, float] = {}
    with _threads(threads):
        t0 = time.perf_counter()
        bar.set_description("sampling")
        for k, p in enumerate(points):
            _draw_samples(p, model, ref, n_model, seed, k)
            bar.update()
        weights = None
        if n_points > 1 and reweight != "never":
            weights = importance_weights(model, points[k_ref]["model_sample"],
                                         [p["theta"] for p in points],
                                         points[k_ref]["theta"])
        bar.update()
        timing["sampling_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        binning = _Binning(space, np.concatenate([p["data"] for p in points]), bins, bins_2d,
                           pair_idx)
        for k, p in enumerate(points):
            bar.set_description(f"metrics {p['label']}")
            _point_metrics(p, model, ref, binning, min_count=min_count,
                           c2st_events=c2st_events, folds=folds, seeds=(_seed(seed, k, 5),
                                                                        _seed(seed, k, 6)),
                           threads=threads)
            bar.update()
        timing["metrics_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        for k, p in enumerate(points):
            _double_ratios(p, points[k_ref], None if weights is None else weights[k],
                           binning, reweight=reweight, min_count=min_count,
                           is_ref=k == k_ref)
            bar.update()
        timing["double_ratio_s"] = time.perf_counter() - t0

        checks = _checks(points, alpha)
        passed = all(c["passed"] is not False for c in checks.values())

        # 4. figures
        t0 = time.perf_counter()
        files: list[str] = []
        if figures:
            bar.set_description("figures")
            files = _figures(points, k_ref, checks, space, out, min_count=min_count,
                             corner=corner, dpi=dpi)
        bar.update()
        timing["figures_s"] = time.perf_counter() - t0
    bar.close()
    timing["total_s"] = time.perf_counter() - started

    result = {
        "passed": passed,
        "model": repr(model),
        "observables": [{"name": o.name, "label": o.axis_label} for o in space],
        "parameters": list(model.parameters),
        "theta_ref": points[k_ref]["theta"],
        "floor": (f"two independent samples of the truth ({ref.name})" if ref is not None
                  else "the data split in two random halves"),
        "settings": {"n_model": n_model, "bins": bins, "bins_2d": bins_2d,
                     "c2st_events": c2st_events, "folds": folds, "alpha": alpha,
                     "min_count": min_count, "reweight": reweight, "seed": seed,
                     "pairs": [[space.names[i], space.names[j]] for i, j in pair_idx]},
        "checks": checks,
        "points": [{"theta": p["theta"], "label": p["label"], "n_data": len(p["data"]),
                    "n_model": n_model, "double_ratio_model": p["double_ratio_model"],
                    "model": p["model"], "floor": p["floor"]} for p in points],
        "figures": files,
        "timing": timing,
    }
    result = _json_safe(result)
    write_text_atomic(out / "metrics.json", json.dumps(result, indent=1))
    write_text_atomic(out / "summary.md", _summary(result))
    return result


def _figures(points: list[dict[str, Any]], k_ref: int, checks: Mapping[str, Any], space: Any,
             out: Path, *, min_count: float, corner: str, dpi: float) -> list[str]:
    from egmm.validation import plots

    files = []

    def save(fig: Any, name: str) -> None:
        with plots.style():
            savefig_atomic(fig, out / name, dpi=dpi)
        files.append(name)

    for k, p in enumerate(points):
        h1d, h1m = p["hists"]["1d"]
        h2d, h2m = p["hists"]["2d"]
        title = f"θ: {p['label']}  —  data N = {len(p['data'])}, model N = {len(p['model_sample'])}"
        save(plots.plot_marginals(h1d, h1m, title=title, labels=("data", "model"),
                                  min_count=min_count), f"marginals_{p['slug']}.png")
        if h2d:
            save(plots.plot_pull_maps(h2d, h2m, data_1d=h1d, model_1d=h1m, title=title,
                                      min_count=min_count), f"pullmaps_{p['slug']}.png")
            if corner == "all" or (corner == "ref" and k == k_ref):
                save(plots.plot_corner(h1d, h1m, h2d, h2m, title=title),
                     f"corner_{p['slug']}.png")
    pits = {p["label"]: p["pit_values"] for p in points if p["pit_values"] is not None}
    if pits:
        pvalues = {p["label"]: {n: r["pvalue"] for n, r in p["model"]["pit"].items()
                                if "pvalue" in r} for p in points if p["model"]["pit"]}
        save(plots.plot_pit(pits, space.names, pvalues=pvalues), "pit.png")
    if len(points) > 1:
        positions = _plane_positions([p["theta"] for p in points])
        for j, name in enumerate(space.names):
            panels = [p["double_panels"][j] if p["double_panels"] else {"label": p["label"]}
                      for p in points]
            save(plots.plot_double_ratios(panels, reference_label=points[k_ref]["label"],
                                          positions=positions, min_count=min_count),
                 f"double_ratio_{_safe(name)}.png")
    active = {k: v for k, v in checks.items() if v["status"] != "skipped"}
    save(plots.plot_checks(active, [p["label"] for p in points]), "checks.png")
    return files


def _plane_positions(thetas: list[Mapping[str, float]]) -> list[tuple[int, int]] | None:
    """(row, column) of each point when two parameters form a full grid (first parameter
    along columns, second upwards), else None."""
    if not thetas or len(thetas[0]) != 2:
        return None
    keys = list(thetas[0])
    xs = sorted({t[keys[0]] for t in thetas})
    ys = sorted({t[keys[1]] for t in thetas})
    if len(xs) * len(ys) != len(thetas):
        return None
    return [(len(ys) - 1 - ys.index(t[keys[1]]), xs.index(t[keys[0]])) for t in thetas]


def _fmt_p(p: Any) -> str:
    if p is None:
        return "–"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def _auc_text(model: Mapping[str, Any], floor: Mapping[str, Any]) -> str:
    if "auc" not in model:
        return "skipped"
    return f"{model['auc']:.4f} / {floor['auc']:.4f} (±{model['null_sigma']:.4f})"


def _observable_numbers(metrics: Mapping[str, Any], name: str) -> list[float]:
    """KS D, CvM T, AD, χ²/ndof, KL, JS of one observable at one θ point."""
    tests, binned = metrics["two_sample"][name], metrics["binned_1d"][name]
    return [tests["ks"]["statistic"], tests["cvm"]["statistic"], tests["ad"]["statistic"],
            binned["chi2"] / max(binned["ndof"], 1), binned["kl"], binned["js"]]


def _summary(result: Mapping[str, Any]) -> str:
    """The markdown summary of a report's result dict."""
    from egmm.validation.plots import pull_range_label

    s = result["settings"]
    n_data = [p["n_data"] for p in result["points"]]
    lines = [
        "# Density-model validation report", "",
        f"- model: `{result['model']}`",
        f"- observables: {', '.join(o['label'] for o in result['observables'])}",
        f"- θ points: {len(result['points'])}, with "
        f"{min(n_data) if min(n_data) == max(n_data) else f'{min(n_data)}–{max(n_data)}'} "
        f"data events each; model samples of {s['n_model']} events; reference θ_ref of the double "
        f"ratios: {', '.join(f'{k} = {v:g}' for k, v in result['theta_ref'].items())}",
        f"- floor: {result['floor']}",
        f"- checks at family-wise α = {s['alpha']} (Bonferroni over each family's tests)", "",
        f"**Overall: {'PASS' if result['passed'] else 'FAIL'}**", "",
        "## Checks", "",
        "| check | tests | threshold p | smallest p, model | smallest p, floor | result |",
        "|---|---|---|---|---|---|",
    ]
    for name, c in result["checks"].items():
        if c["status"] == "skipped":
            lines.append(f"| {name} | 0 | – | – | – | skipped |")
            continue
        verdict = "pass" if c["passed"] else "**FAIL**"
        if not c["floor_passed"]:
            verdict += " (floor fails too)"
        threshold = _fmt_p(c["threshold"])
        if c.get("tests_allowed_at_threshold"):
            threshold += f" (≤ {c['tests_allowed_at_threshold']} tests at it allowed)"
        lines.append(f"| {name} | {c['n_tests']} | {threshold} | "
                     f"{_fmt_p(c['smallest_p_model'])} | {_fmt_p(c['smallest_p_floor'])} | "
                     f"{verdict} |")
    lines += ["", "## Per θ point (model / floor)", "",
              "| θ | N data | C2ST AUC (±σ₀) | max KS D | min PIT p | min χ² p (1-D) | "
              "min χ² p (2-D) | min double-ratio p |",
              "|---|---|---|---|---|---|---|---|"]
    for p in result["points"]:
        m, f = p["model"], p["floor"]

        def ks_max(r: Mapping[str, Any]) -> float:
            return max(v["ks"]["statistic"] for v in r["two_sample"].values())

        def min_p(r: Mapping[str, Any] | None) -> float | None:
            if not r:
                return None
            ps = [v["pvalue"] for v in r.values() if v.get("pvalue") is not None]
            return min(ps) if ps else None

        lines.append(
            f"| {p['label']} | {p['n_data']} | {_auc_text(m['c2st'], f['c2st'])} | "
            f"{ks_max(m):.4f} / {ks_max(f):.4f} | "
            f"{_fmt_p(min_p(m['pit']))} / {_fmt_p(min_p(f['pit']))} | "
            f"{_fmt_p(min_p(m['binned_1d']))} / {_fmt_p(min_p(f['binned_1d']))} | "
            f"{_fmt_p(min_p(m['binned_2d']))} / {_fmt_p(min_p(f['binned_2d']))} | "
            f"{_fmt_p(min_p(m['double_ratio']))} / {_fmt_p(min_p(f['double_ratio']))} |")
    lines += ["", "## Per observable, median over θ points (model / floor)", "",
              "| observable | KS D | CvM T | AD T | χ²/ndof | KL [nats] | JS [nats] |",
              "|---|---|---|---|---|---|---|"]
    for o in result["observables"]:
        model = np.median([_observable_numbers(p["model"], o["name"])
                           for p in result["points"]], axis=0)
        floor = np.median([_observable_numbers(p["floor"], o["name"])
                           for p in result["points"]], axis=0)
        lines.append(f"| {o['label']} | "
                     + " | ".join(f"{a:.3g} / {b:.3g}" for a, b in zip(model, floor)) + " |")
    lines += ["", "## Pulls of the 2-D marginals, all θ points and pairs (paper Table 4)", "",
              "| pull range | model | floor | normal |", "|---|---|---|---|"]
    freq = [p["model"]["pull_frequencies_2d"] for p in result["points"]]
    freq_f = [p["floor"]["pull_frequencies_2d"] for p in result["points"]]
    if freq and freq[0]:
        for r in range(len(freq[0])):
            def frac(rows: list[list[dict[str, Any]]], r: int = r) -> str:
                count = sum(x[r]["count"] for x in rows)
                total = sum(x[r]["n"] for x in rows)
                return f"{100 * count / total:.2f} %" if total else "–"

            row = freq[0][r]
            lo = -math.inf if row["lo"] in ("-inf", None) else float(row["lo"])
            hi = math.inf if row["hi"] in ("inf", None) else float(row["hi"])
            lines.append(f"| {pull_range_label(lo, hi)} | {frac(freq)} | {frac(freq_f)} | "
                         f"{100 * row['expected']:.2f} % |")
    lines += ["", "## Figures", ""]
    lines += [f"- `{f}`" for f in result["figures"]] or ["- (none written)"]
    lines += ["", "## Reading the numbers", "",
              "Each number is shown next to its floor: the same metric for two independent "
              "samples of the reference at the same statistics, i.e. what a perfect model "
              "would read. A check fails when one of its p-values falls below its threshold "
              "(α divided by the number of tests in the family; Anderson-Darling p-values are "
              "clipped to [0.001, 0.25] by scipy, so there the check counts the tests at "
              "0.001 against the number chance allows). C2ST: cross-validated ROC "
              "AUC of a gradient-boosted classifier separating data from model events (½ for "
              "a perfect model; σ₀ its spread then). AD T: the standardised k-sample "
              "Anderson-Darling statistic (0 expected). PIT: the conditional CDFs "
              "F_i(x_i | x_<i, θ) of the model evaluated on the data, flat for a perfect "
              "model. χ²: Σ pull² over bins with an expected content ≥ "
              f"{s['min_count']:g}; the pull is paper Eq. 13.", ""]
    return "\n".join(lines)
