"""Histograms of data and model as :class:`hist.Hist` objects, and the comparisons made of them.

Every histogram has Weight storage (sum of weights and sum of squared weights per bin), so
data, model samples and importance-weighted model samples are handled alike. A model histogram
comes either from a large sample of the model at θ (:func:`model_histogram`) or from one sample
at a reference point θ_ref weighted by p(x|θ)/p(x|θ_ref) (:func:`reweighted_histogram`,
paper Section 5): a scan over θ then reuses one sample, and the ratio p(θ)/p(θ_ref) has strongly
correlated — largely cancelling — sampling fluctuations.

Comparisons (:func:`pulls`, :func:`double_ratio`) normalise both histograms to the same total
(flow bins included) and work on the bin contents; the binning itself is always hist's.

References:
    Menary & Price, Eq. 13 (pull on the ratio), Section 5 (importance weights) and Appendix A
    (double ratios).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import hist
import numpy as np
import torch

from egmm.base import DensityModel, whole_number
from egmm.errors import InputError
from egmm.observables import ObservableSpace

__all__ = [
    "double_ratio",
    "histogram",
    "importance_weights",
    "make_axes",
    "model_histogram",
    "normalized",
    "pulls",
    "reweighted_histogram",
]

#: axes of a histogram: one per observable, named for them (any order) or unnamed (in the
#: space's order), or a mapping observable -> axis
Axes = Sequence[hist.axis.AxesMixin] | Mapping[str, hist.axis.AxesMixin]

#: a finite bound is used as the axis edge when the data's quantile lies this close to it
#: (as a fraction of the quantile range), so that bounded observables get clean edges
_SNAP_FRACTION = 0.1


def make_axes(space: ObservableSpace, reference: Any, *, bins: int | Mapping[str, int] = 40,
              ranges: Mapping[str, tuple[float, float]] | None = None,
              quantile: float = 1e-3) -> tuple[hist.axis.AxesMixin, ...]:
    """One hist axis per observable, named after it and labelled with its unit.

    Continuous observables get ``Regular`` axes with under/overflow. The range is taken from
    ``reference`` events: [q, 1 − q] quantiles, snapped to a finite bound of the observable
    when the quantile lies within 10% of the range of it (so x ∈ [100, 800] GeV gets exactly
    those edges, and an unbounded or long-tailed observable is not spread over empty bins).
    Discrete observables get ``Integer`` axes over {lo, …, hi}.

    Arguments:
        space: the observables.
        reference: events (anything :meth:`ObservableSpace.validate` accepts) that set the ranges.
        bins: bins per continuous axis, or name → bins.
        ranges: name → (lo, hi) overriding the automatic range.
        quantile: tail fraction left out on each side, 0 ≤ q < 0.5.
    """
    if not 0.0 <= quantile < 0.5:
        raise InputError(f"make_axes: quantile must lie in [0, 0.5), got {quantile}")
    x = space.validate(reference, what="reference events")
    ranges = dict(ranges or {})
    unknown = sorted(set(ranges) - set(space.names))
    if isinstance(bins, Mapping):
        unknown += sorted(set(bins) - set(space.names))
    if unknown:
        raise InputError(f"make_axes: unknown observable(s) {unknown}; the space has "
                         f"{list(space.names)}")
    axes = []
    for j, obs in enumerate(space):
        if obs.discrete:
            axes.append(hist.axis.Integer(int(obs.lo), int(obs.hi) + 1, name=obs.name,
                                          label=obs.axis_label, underflow=False,
                                          overflow=False))
            continue
        n = whole_number(bins[obs.name] if isinstance(bins, Mapping) else bins,
                         f"make_axes: bins for {obs.name!r}")
        if obs.name in ranges:
            lo, hi = (float(v) for v in ranges[obs.name])
            if not lo < hi:  # (only the automatic range of a constant column is widened)
                raise InputError(f"make_axes: range of {obs.name!r} must have lo < hi, got "
                                 f"{ranges[obs.name]!r}")
        else:
            lo, hi = (float(v) for v in np.quantile(x[:, j], [quantile, 1.0 - quantile]))
            width = hi - lo
            if math.isfinite(obs.lo) and lo - obs.lo <= _SNAP_FRACTION * width:
                lo = obs.lo
            if math.isfinite(obs.hi) and obs.hi - hi <= _SNAP_FRACTION * width:
                hi = obs.hi
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise InputError(f"make_axes: range of {obs.name!r} must be finite, got {(lo, hi)}")
        if not lo < hi:  # a constant column: a unit-wide range around it
            lo, hi = lo - 0.5, lo + 0.5
        axes.append(hist.axis.Regular(n, lo, hi, name=obs.name, label=obs.axis_label))
    return tuple(axes)


def _select_axes(space: ObservableSpace,
                 axes: Axes,
                 observables: Sequence[str] | None) -> tuple[list[int], list[Any]]:
    """The space's columns and axes of the histogram's observables. Axes are matched to
    observables by name: a mapping observable -> axis, or named axes in any order (an axis
    named for no observable is refused); unnamed axes by position, in the space's order."""
    if isinstance(axes, Mapping):
        unknown = [n for n in axes if n not in space.names]
        if unknown:
            raise InputError(f"axes: {unknown} are no observables of the space "
                             f"{list(space.names)}")
        for n, ax in axes.items():
            if ax.name and ax.name != n:
                raise InputError(f"axes: the axis for {n!r} is named {ax.name!r}; build it "
                                 f"with name={n!r} (or without a name)")
        by_name = dict(axes)
    else:
        axes = list(axes)
        named = [bool(ax.name) for ax in axes]
        if all(named) and axes:
            unknown = [ax.name for ax in axes if ax.name not in space.names]
            if unknown:
                raise InputError(f"axes named {unknown} match no observable of the space "
                                 f"{list(space.names)}")
            by_name = {}
            for ax in axes:
                if ax.name in by_name:
                    raise InputError(f"axes: two axes named {ax.name!r}")
                by_name[ax.name] = ax
        elif any(named):
            raise InputError("axes: name every axis (matched to observables by name) or none "
                             "(matched by position)")
        else:
            if len(axes) != space.dim:
                raise InputError(f"expected {space.dim} axes (one per observable), got "
                                 f"{len(axes)}")
            by_name = dict(zip(space.names, axes))
    names = list(space.names) if observables is None else list(observables)
    if not names:
        raise InputError("observables: at least one name is needed")
    idx = [space.index(n) for n in names]
    if len(set(idx)) != len(idx):
        raise InputError(f"observables: duplicate names in {names}")
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(f"axes: no axis for {missing}")
    return idx, [by_name[n] for n in names]


def histogram(x: Any, space: ObservableSpace, axes: Axes, *,
              observables: Sequence[str] | None = None, weights: Any = None) -> hist.Hist:
    """Events as a Weight-storage :class:`hist.Hist` over the chosen observables.

    Arguments:
        x: events (N, D) or named columns, validated by ``space``.
        axes: one axis per observable of the space (from :func:`make_axes`), matched by
            name (named axes in any order, or a mapping observable -> axis; unnamed axes by
            position).
        observables: names of the histogram's axes (default: all, in the space's order).
        weights: per-event weights (N,), finite; default 1.

    Example:
        >>> from egmm import Observable, ObservableSpace
        >>> space = ObservableSpace([Observable("m", 0.0, 10.0, unit="GeV")])
        >>> x = [[1.0], [2.5], [2.6]]
        >>> h = histogram(x, space, make_axes(space, x, bins=5, ranges={"m": (0, 10)}))
        >>> h.values().tolist(), h.axes[0].label
        ([1.0, 2.0, 0.0, 0.0, 0.0], 'm [GeV]')
    """
    xv = space.validate(x)
    idx, sel = _select_axes(space, axes, observables)
    w = None
    if weights is not None:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (len(xv),):
            raise InputError(f"weights: expected shape ({len(xv)},), got {w.shape}")
        if not np.all(np.isfinite(w)):
            r = int(np.argmax(~np.isfinite(w)))
            raise InputError(f"weights: not finite in row {r} ({w[r]})")
    h = hist.Hist(*sel, storage=hist.storage.Weight())
    # integer axes (discrete observables) are filled with integers: the values are whole
    # numbers (the space checks), and boost-histogram refuses floats there
    h.fill(*(xv[:, i].astype(np.int64) if isinstance(ax, (hist.axis.Integer,
                                                          hist.axis.IntCategory))
             else xv[:, i] for i, ax in zip(idx, sel)), weight=w)
    return h


def model_histogram(model: DensityModel, theta: Any, axes: Axes, *,
                    n: int = 100_000, seed: Any = 0,
                    observables: Sequence[str] | None = None) -> hist.Hist:
    """Histogram of ``n`` events sampled from ``model`` at θ (unit weights, Weight storage)."""
    n = whole_number(n, "model_histogram: n")
    x = model.sample(n, theta, seed=seed)
    return histogram(x, model.space, axes, observables=observables)


def importance_weights(model: DensityModel, x: Any, thetas: Sequence[Any],
                       theta_ref: Any, *, chunk_size: int = 65536) -> np.ndarray:
    """w_k(x) = p(x|θ_k)/p(x|θ_ref) for every θ_k in ``thetas``, shape (K, N).

    For events drawn from the model at θ_ref, weighting them by w_k gives the model at θ_k
    (paper Section 5); it needs p(·|θ_ref) to cover the support of p(·|θ_k). The θ-independent
    part of the model (projection, Jacobian, input branches) is evaluated once per chunk and
    reused for every θ_k (:meth:`DensityModel.prepare`).
    """
    chunk_size = whole_number(chunk_size, "importance_weights: chunk_size")
    xv = model.space.validate(x)
    points = [model.theta_tensor(t) for t in thetas]
    ref = model.theta_tensor(theta_ref)
    if any(p.ndim != 1 for p in [*points, ref]):
        raise InputError("importance_weights: each θ must be one point, not one per event")
    out = np.empty((len(points), len(xv)))
    with torch.no_grad():
        for s in range(0, len(xv), chunk_size):
            prepared = model.prepare(xv[s:s + chunk_size])
            log_ref = model.log_prob_prepared(prepared, ref).double().cpu().numpy()
            for k, p in enumerate(points):
                log_k = model.log_prob_prepared(prepared, p).double().cpu().numpy()
                out[k, s:s + chunk_size] = np.exp(log_k - log_ref)
    return out


def reweighted_histogram(model: DensityModel, x_ref: Any, theta: Any, theta_ref: Any,
                         axes: Axes, *,
                         observables: Sequence[str] | None = None) -> hist.Hist:
    """The model at θ from events ``x_ref`` drawn at θ_ref, weighted by p(x|θ)/p(x|θ_ref).

    The sum of weights estimates N_ref (it is not renormalised); bin variances are Σ w².
    """
    w = importance_weights(model, x_ref, [theta], theta_ref)[0]
    return histogram(x_ref, model.space, axes, observables=observables, weights=w)


def _check_same_binning(*hists: hist.Hist) -> None:
    first = hists[0]
    for h in hists[1:]:
        names, first_names = [a.name for a in h.axes], [a.name for a in first.axes]
        if all(names) and all(first_names) and names != first_names:
            hint = (f" (h.project(*{first_names}) puts them in one order)"
                    if sorted(names) == sorted(first_names) else "")
            raise InputError(f"histograms have axes {names} and {first_names}: compared bin "
                             f"by bin, the axes must be the same{hint}")
        if h.ndim != first.ndim or any(
                a.size != b.size or not np.array_equal(a.edges, b.edges)
                for a, b in zip(h.axes, first.axes)):
            raise InputError("histograms must have the same axes and binning")
        if h.values(flow=True).shape != first.values(flow=True).shape:
            raise InputError("histograms must have the same under- and overflow bins "
                             "(the same edges with flow on one axis and not the other)")
        if h.variances() is None:
            raise InputError("histograms need Weight storage (variances)")
    if first.variances() is None:
        raise InputError("histograms need Weight storage (variances)")


def normalized(h: hist.Hist) -> hist.Hist:
    """``h`` scaled to unit total (flow bins included); variances scale with the square."""
    total = float(h.values(flow=True).sum())
    if not total > 0:
        raise InputError("cannot normalise a histogram with a non-positive total")
    return h * (1.0 / total)


def pulls(h_data: hist.Hist, h_model: hist.Hist, *, min_count: float = 5.0,
          flow: bool = False) -> np.ndarray:
    r"""Pull on the ratio model/data per bin (paper Eq. 13), NaN where the bin is too sparse.

    With the model normalised to the data total (s = D/M, totals over all bins, flow
    included) the pull is the difference s·m − d in units of its standard deviation under
    the hypothesis that both histograms sample one density — "the number of standard
    deviations by which the ratio differs from unity", positive where the model lies above
    the data:

    .. math::

        \text{pull} = \frac{s\,m - d}{\sqrt{D\,\hat p\,(k_d + s / r)}}, \qquad
        \hat p = \frac{d/k_d + r\,m}{D/k_d + r\,M}

    p̂ is the bin's probability estimated from *both* histograms, each weighted by its
    effective number of entries (r = m/σ_m² per bin, 1 for unit weights; k_d = Σσ_d²/Σd,
    1 for unweighted data), so for two unweighted samples the pulls are the Pearson residuals
    of the 2 × B contingency table. Using the observed contents instead (Neyman's χ²) would
    bias Σ pull² upwards by ≈ 3/μ per bin, which a χ² test over hundreds of sparse 2-D bins
    reads as a mismodelling; with a model sample much larger than the data p̂ is the model's
    and the data variance the expected Poisson one.

    Bins with an expected data content D·p̂ below ``min_count`` or with fewer effective model
    entries are NaN: there the normal approximation fails. Weighted data enter through
    their mean weight factor k_d: with weights that vary across the bins the single pulls'
    spread is off (0.7–1.2 in a test with weights rising with x) though Σ pull² stays close
    to its χ² (rejection 0.077 at α = 0.05); :func:`~egmm.validation.report` uses
    unweighted data. The same formula compares two data samples (the floors), with the
    second one in the model's place.

    Returns:
        array of the histogram's shape (flow bins included when ``flow``).
    """
    _check_same_binning(h_data, h_model)
    total_d = float(h_data.values(flow=True).sum())
    total_m = float(h_model.values(flow=True).sum())
    if not (total_d > 0 and total_m > 0):
        raise InputError("pulls: both histograms need a positive total")
    k_d = float(h_data.variances(flow=True).sum()) / total_d
    s = total_d / total_m
    d, m = h_data.values(flow=flow), h_model.values(flow=flow)
    var_m = h_model.variances(flow=flow)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(var_m > 0, m / var_m, 1.0)
        p_hat = (d / k_d + r * m) / (total_d / k_d + r * total_m)
        mu = total_d * p_hat
        out = (s * m - d) / np.sqrt(mu * (k_d + s / r))
    return np.where((mu >= min_count) & (r * m >= min_count), out, np.nan)


def double_ratio(data: hist.Hist, data_ref: hist.Hist, model: hist.Hist, model_ref: hist.Hist,
                 *, same_events: bool = False, min_count: float = 5.0) -> dict[str, np.ndarray]:
    r"""Single ratios p(θ)/p(θ_ref) of data and model and their double ratio (paper App. A).

    Each histogram is normalised to unit total (flow included); per visible bin

        r_data = d̂(θ)/d̂(θ_ref),   r_model = m̂(θ)/m̂(θ_ref),   double = r_data/r_model.

    ``same_events``: ``model`` is ``model_ref``'s events with importance weights (paper
    Section 5); then r_model is the mean weight in the bin over the mean weight overall and
    its variance is the variance of that mean, Var(w | bin)/n_bin — the sampling fluctuations
    of the two model histograms cancel. Otherwise the two model histograms are independent.

    The pull does not use the ratio of two Poisson counts, whose distribution has a heavy
    tail when the denominator is small. Given the n = d + d_ref data events of a bin, the
    number d at θ is binomial with probability π = σ(ln r + ln(D/D_ref)) when the bin's
    ratio is r (D, D_ref the data totals, σ the logistic function); likewise the model's
    n' = m + m_ref events with π' = σ(ln r + ln(M/M_ref)). The pull is the score test of one
    common r for both:

    - ``same_events``: the model's r is known to its (small) sampling error, so
      pull = (d − nπ)/sqrt(nπ(1 − π) + n²(∂π/∂r)² Var(r_model));
    - independent model histograms: r̂ solves d + m = nπ(r̂) + n'π'(r̂) and
      pull = (d − nπ̂)/sqrt(v v'/(v + v')) with v = nπ̂(1 − π̂), v' = n'π̂'(1 − π̂')
      (model counts enter as effective entries).

    It is positive where the data's ratio exceeds the model's. Bins with an expected count
    below ``min_count`` on either side of either split are NaN. ``r_data_error`` and
    ``double_error`` are the observed Poisson errors (for plotting).

    Returns:
        dict of (B,) arrays: r_data, r_data_error, r_model, r_model_error, double,
        double_error, pull.
    """
    _check_same_binning(data, data_ref, model, model_ref)
    totals = [float(h.values(flow=True).sum()) for h in (data, data_ref, model, model_ref)]
    if not all(t > 0 for t in totals):
        raise InputError("double_ratio: every histogram needs a positive total")
    d_tot, dr_tot, m_tot, mr_tot = totals
    d, dr = data.values(), data_ref.values()
    m, mr = model.values(), model_ref.values()
    vm, vmr = model.variances(), model_ref.variances()
    with np.errstate(divide="ignore", invalid="ignore"):
        r_model = (m / m_tot) / (mr / mr_tot)
        if same_events:
            # mean weight in the bin: m/n with n = mr unweighted entries; Var = (⟨w²⟩ − ⟨w⟩²)/n
            mean_w = m / mr
            var_mean_w = np.clip(vm / mr - mean_w**2, 0.0, None) / mr
            var_r_model = var_mean_w * (mr_tot / m_tot) ** 2
        else:
            var_r_model = r_model**2 * (vm / m**2 + vmr / mr**2)
        r_data = (d / d_tot) / (dr / dr_tot)
        r_data_error = r_data * np.sqrt(1.0 / d + 1.0 / dr)
        n = d + dr
        if same_events:
            share = d_tot * r_model / (d_tot * r_model + dr_tot)
            dshare = d_tot * dr_tot / (d_tot * r_model + dr_tot) ** 2
            pull = (d - n * share) / np.sqrt(n * share * (1.0 - share)
                                             + n**2 * dshare**2 * var_r_model)
            ok = (n * share >= min_count) & (n * (1.0 - share) >= min_count)
        else:
            pull, ok = _common_ratio_score(d, dr, d_tot, dr_tot, m, mr, vm, vmr, m_tot,
                                           mr_tot, min_count)
        double = r_data / r_model
        double_error = r_data_error / r_model
    ok = ok & np.isfinite(pull)
    return {
        "r_data": np.where(dr > 0, r_data, np.nan),
        "r_data_error": np.where((d > 0) & (dr > 0), r_data_error, np.nan),
        "r_model": np.where(mr > 0, r_model, np.nan),
        "r_model_error": np.where(mr > 0, np.sqrt(var_r_model), np.nan),
        "double": np.where((dr > 0) & (m > 0) & (mr > 0), double, np.nan),
        "double_error": np.where((d > 0) & (dr > 0) & (m > 0) & (mr > 0), double_error, np.nan),
        "pull": np.where(ok, pull, np.nan),
    }


def _common_ratio_score(d: np.ndarray, dr: np.ndarray, d_tot: float, dr_tot: float,
                        m: np.ndarray, mr: np.ndarray, vm: np.ndarray, vmr: np.ndarray,
                        m_tot: float, mr_tot: float, min_count: float
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Score test that two binomial splits (d of d + dr; m of m + mr) share one bin ratio.

    Weighted model histograms enter with their effective entries (m²/σ²). Returns the pull
    and the mask of bins with enough expected counts.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        # effective entries of the model histograms, and totals on the same scale
        em = np.where(vm > 0, m * m / vm, m)
        emr = np.where(vmr > 0, mr * mr / vmr, mr)
        m_scale = np.where(m > 0, em / m, 1.0)
        mr_scale = np.where(mr > 0, emr / mr, 1.0)
        offset_d = math.log(d_tot / dr_tot)
        offset_m = np.log(m_tot * m_scale / (mr_tot * mr_scale))
        n, n2 = d + dr, em + emr
        usable = (d + em > 0) & (dr + emr > 0) & (n > 0) & (n2 > 0)
        # start from the pooled ratio; f(t) = nπ(t) + n'π'(t) − (d + m') is increasing in
        # t = ln r, so Newton's steps converge from there
        t = np.where(usable, np.log((d + em) / (dr + emr)) - 0.5 * (offset_d + offset_m), 0.0)
        for _ in range(50):
            pi = _logistic(t + offset_d)
            pi2 = _logistic(t + offset_m)
            v, v2 = n * pi * (1.0 - pi), n2 * pi2 * (1.0 - pi2)
            step = np.where(usable & (v + v2 > 0),
                            (n * pi + n2 * pi2 - d - em) / (v + v2), 0.0)
            t = t - np.clip(step, -5.0, 5.0)
            if np.all(np.abs(step) < 1e-10):
                break
        pi = _logistic(t + offset_d)
        pi2 = _logistic(t + offset_m)
        v, v2 = n * pi * (1.0 - pi), n2 * pi2 * (1.0 - pi2)
        pull = (d - n * pi) / np.sqrt(v * v2 / (v + v2))
    ok = (usable & (n * pi >= min_count) & (n * (1.0 - pi) >= min_count)
          & (n2 * pi2 >= min_count) & (n2 * (1.0 - pi2) >= min_count))
    return pull, ok


def _logistic(t: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * t))
