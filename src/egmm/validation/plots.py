"""Figures for looking at a density model next to data, drawn with mplhep from hist objects.

Every function returns a :class:`matplotlib.figure.Figure` built without pyplot (so nothing
global — backend, open figures — is touched; it renders with Agg) and, given ``path``, saves
it. Such a figure is not one of pyplot's: ``plt.show()`` does not show it; save it
(``path=`` or ``fig.savefig``), or let Jupyter display the returned figure. Axis labels
come from the hist axes, i.e. observable names with units. Pull panels hatch the bins with
too few entries for a pull (drawn as no bar, not as a pull of 0).

- :func:`plot_marginals` — 1-D marginals of data and model with ratio and pull panels;
- :func:`plot_corner` — 2-D marginals, data in the lower triangle and model in the upper;
- :func:`plot_pull_maps` — 2-D pull maps on the ratio model/data (paper Eq. 13, Fig. 8) with
  the pull-frequency table against the normal expectation (paper Table 4);
- :func:`plot_double_ratios` — p(θ)/p(θ_ref) of data and model and their double ratio
  (paper Fig. 11 and Appendix A);
- :func:`plot_pit` — histograms of the PIT of every conditional against the flat expectation;
- :func:`plot_checks` — the report's tests per θ point against their floors and threshold;
- :func:`plot_profiles`, :func:`plot_contours` — profile-likelihood scans and 2-D regions of
  inference results (e.g. true pdf vs model) with their Wilks thresholds.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from egmm._io import savefig_atomic
from egmm.errors import InputError
from egmm.validation.histograms import double_ratio, pulls
from egmm.validation.metrics import pull_frequencies

__all__ = [
    "plot_checks",
    "plot_contours",
    "plot_corner",
    "plot_double_ratios",
    "plot_marginals",
    "plot_pit",
    "plot_profiles",
    "plot_pull_maps",
    "set_style",
    "style",
]

DATA_COLOR = "#d62728"
MODEL_COLOR = "black"
FLOOR_COLOR = "#1f77b4"

# paper Fig. 8: green inside ±1, red (model above data) and blue (below) darkening per unit
_PULL_BOUNDS = [-4.0, -3.0, -2.0, -1.0, 1.0, 2.0, 3.0, 4.0]
_PULL_COLORS = ["#2166ac", "#67a9cf", "#d1e5f0", "#a6dba0", "#fddbc7", "#ef8a62", "#b2182b"]
_PULL_UNDER, _PULL_OVER = "#053061", "#67001f"
_SPARSE_COLOR = "0.8"


_STYLE = ["ROOT"]  # the mplhep style every figure here is drawn in (set_style)


def set_style(name: str) -> None:
    """Draw this module's figures (and the validation report's) in mplhep's style ``name``
    — "ROOT" (the default), "CMS", "ATLAS", "LHCb2", "ALICE", … — from now on; the
    figures' layout (font size, ticks) stays scaled for their many panels. Nothing global
    of matplotlib changes: each figure applies the style while it is drawn."""
    import mplhep

    if not isinstance(name, str) or not isinstance(getattr(mplhep.style, name, None), dict):
        known = sorted(n for n in dir(mplhep.style)
                       if n[:1].isupper() and isinstance(getattr(mplhep.style, n), dict))
        raise InputError(f"set_style: {name!r} is not an mplhep style; known: {known}")
    _STYLE[0] = name


@contextlib.contextmanager
def style(font_size: float = 12.0) -> Iterator[None]:
    """mplhep's style (ROOT unless :func:`set_style` chose another), scaled for multi-panel
    figures, for the duration of the block."""
    import matplotlib as mpl
    import mplhep

    rc = dict(getattr(mplhep.style, _STYLE[0]))
    rc.update({
        "font.size": font_size, "axes.linewidth": 1.0, "legend.fontsize": "small",
        "xtick.major.size": 5, "xtick.minor.size": 2.5, "ytick.major.size": 5,
        "ytick.minor.size": 2.5, "xtick.labelsize": "small", "ytick.labelsize": "small",
        "figure.figsize": (8.0, 6.0), "axes.unicode_minus": True,
        "xtick.minor.visible": False, "ytick.minor.visible": False,
    })
    with mpl.rc_context(rc):
        yield


def _figure(figsize: tuple[float, float]) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


@contextlib.contextmanager
def _target(ax: Any, figsize: tuple[float, float], what: str) -> Iterator[tuple[Any, Any]]:
    """(figure, axes) to draw a one-panel plot into: the caller's ``ax`` as it is (its
    figure's style and size are the caller's), or a new figure in this module's style."""
    if ax is None:
        with style():
            fig = _figure(figsize)
            yield fig, fig.add_subplot()
        return
    if not (hasattr(ax, "plot") and getattr(ax, "figure", None) is not None):
        raise InputError(f"{what}: ax must be a matplotlib Axes, got {type(ax).__name__}")
    yield ax.figure, ax


def _save(fig: Any, path: str | os.PathLike | None, dpi: float) -> Any:
    if path is not None:
        with style():
            savefig_atomic(fig, path, dpi=dpi)
    return fig


def theta_label(theta: Mapping[str, float]) -> str:
    """``"cx = +0.80, cy = −0.80"`` for plots and tables."""
    return ", ".join(f"{k} = {v:+.3g}".replace("-", "−") if v else f"{k} = 0"
                     for k, v in theta.items())


def _edges(h: Any, i: int = 0) -> np.ndarray:
    return np.asarray(h.axes[i].edges, dtype=np.float64)


def _shade_missing_pulls(ax: Any, edges: np.ndarray, p: np.ndarray) -> None:
    """Hatch the bins that have no pull (too few entries: NaN), which the pull bars draw as
    0, so that they do not look like bins of perfect agreement."""
    for lo, hi in zip(edges[:-1][np.isnan(p)], edges[1:][np.isnan(p)]):
        ax.axvspan(lo, hi, facecolor="none", edgecolor="0.75", hatch="////", lw=0, zorder=0)


def _scaled_model(h_data: Any, h_model: Any) -> Any:
    return h_model * (float(h_data.values(flow=True).sum())
                      / float(h_model.values(flow=True).sum()))


def plot_marginals(data: Sequence[Any], model: Sequence[Any], *, title: str = "",
                   labels: tuple[str, str] = ("data", "model"), min_count: float = 5.0,
                   path: str | os.PathLike | None = None, dpi: float = 110) -> Any:
    """1-D marginals, one column per observable: spectra, ratio model/data, pulls.

    Arguments:
        data, model: 1-D Weight histograms with the same axes, one per observable; the model
            is scaled to the data total (flow included).
        labels: legend entries of data and model.
        min_count: pulls below this expected content are not drawn (:func:`pulls`).

    The ratio panel shows the model/data ratio (black) over the data's relative Poisson
    error (red band); the pull panel the pull of each bin (paper Eq. 13) with ±2 lines.
    """
    import mplhep

    if len(data) != len(model) or not data:
        raise InputError("plot_marginals: need as many model as data histograms (≥ 1)")
    n = len(data)
    with style():
        fig = _figure((3.9 * n + 0.6, 7.4))
        gs = fig.add_gridspec(3, n, height_ratios=[3.0, 1.1, 1.1])
        for j, (hd, hm) in enumerate(zip(data, model)):
            hs = _scaled_model(hd, hm)
            ax0 = fig.add_subplot(gs[0, j])
            ax1 = fig.add_subplot(gs[1, j], sharex=ax0)
            ax2 = fig.add_subplot(gs[2, j], sharex=ax0)
            mplhep.histplot(hs, ax=ax0, histtype="step", color=MODEL_COLOR, lw=1.5,
                            label=labels[1], flow="none", yerr=False)
            mplhep.histplot(hd, ax=ax0, histtype="errorbar", color=DATA_COLOR, markersize=4,
                            label=labels[0], flow="none")
            ax0.set_ylabel("events / bin")
            ax0.set_ylim(0, None)
            ax0.set_xlabel("")
            ax0.legend(loc="best")
            ax0.tick_params(labelbottom=False)
            edges = _edges(hd)
            d, m = hd.values(), hs.values()
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(d > 0, m / d, np.nan)
                band = np.where(d > 0, np.sqrt(hd.variances()) / d, np.nan)
            ax1.stairs(np.nan_to_num(1.0 + band, nan=1.0), edges,
                       baseline=np.nan_to_num(1.0 - band, nan=1.0), fill=True,
                       color=DATA_COLOR, alpha=0.25, lw=0)
            mplhep.histplot(ratio, bins=edges, ax=ax1, histtype="step", color=MODEL_COLOR,
                            lw=1.3)
            ax1.axhline(1.0, color="0.4", lw=0.8)
            dense = (d >= 4 * min_count) & np.isfinite(ratio)
            spread = float(np.max(np.abs(ratio[dense] - 1.0))) if dense.any() else 0.1
            half = min(max(0.05, 1.3 * spread), 1.0)
            ax1.set_ylim(1.0 - half, 1.0 + half)
            ax1.set_ylabel(f"{labels[1]} / {labels[0]}", fontsize="small")
            ax1.tick_params(labelbottom=False)
            ax1.set_xlabel("")
            p = pulls(hd, hm, min_count=min_count)
            mplhep.histplot(np.nan_to_num(p), bins=edges, ax=ax2, histtype="fill",
                            color="0.45")
            _shade_missing_pulls(ax2, edges, p)
            for level in (-2.0, 2.0):
                ax2.axhline(level, color="0.3", lw=0.8, ls=":")
            ax2.axhline(0.0, color="0.4", lw=0.8)
            top = np.nanmax(np.abs(p)) if np.isfinite(p).any() else 1.0
            lim = min(max(3.0, math.ceil(top + 0.5)), 12.0)
            ax2.set_ylim(-lim, lim)
            ax2.set_ylabel("pull", fontsize="small")
            ax2.set_xlabel(hd.axes[0].label)
            ax0.set_xlim(edges[0], edges[-1])
        if title:
            fig.suptitle(title)
    return _save(fig, path, dpi)


def _pair_grid(keys: Any, what: str) -> int:
    pairs = list(keys)
    if not pairs:
        raise InputError(f"{what}: no pairs of observables given")
    return max(max(i, j) for i, j in pairs) + 1


def plot_corner(data_1d: Sequence[Any], model_1d: Sequence[Any],
                data_2d: Mapping[tuple[int, int], Any], model_2d: Mapping[tuple[int, int], Any],
                *, title: str = "", labels: tuple[str, str] = ("data", "model"),
                path: str | os.PathLike | None = None, dpi: float = 110) -> Any:
    """2-D marginals as a corner plot: data below the diagonal, model above, 1-D on it.

    Arguments:
        data_1d, model_1d: 1-D histograms, one per observable (the diagonal).
        data_2d, model_2d: (i, j) → 2-D histogram of observables i < j (axes in that order).

    Both triangles show the fraction of events per bin on one logarithmic colour scale per
    pair, so that panel (i, j) above the diagonal mirrors panel (j, i) below it.
    """
    import mplhep
    from matplotlib.colors import LogNorm

    n = len(data_1d)
    if _pair_grid(data_2d, "plot_corner") > n or set(data_2d) != set(model_2d):
        raise InputError("plot_corner: pairs must index the 1-D histograms and match")
    with style(font_size=11):
        fig = _figure((2.9 * n + 0.8, 2.9 * n + 0.4))
        axes = fig.subplots(n, n, squeeze=False)
        for i in range(n):
            for j in range(n):
                ax = axes[i, j]
                if i == j:
                    hd = data_1d[i]
                    mplhep.histplot(_scaled_model(hd, model_1d[i]), ax=ax, histtype="step",
                                    color=MODEL_COLOR, label=labels[1], flow="none",
                                    yerr=False)
                    mplhep.histplot(hd, ax=ax, histtype="step", color=DATA_COLOR,
                                    label=labels[0], flow="none", yerr=False)
                    ax.set_yticks([])
                    ax.set_xlim(_edges(hd)[0], _edges(hd)[-1])
                    if i == 0:
                        ax.legend(loc="upper right", fontsize="x-small")
                else:
                    key = (min(i, j), max(i, j))
                    if key not in data_2d:
                        ax.set_axis_off()
                        continue
                    hd, hm = data_2d[key], model_2d[key]
                    vd = hd.values() / float(hd.values(flow=True).sum())
                    vm = hm.values() / float(hm.values(flow=True).sum())
                    vmax = float(vd.max()) if vd.max() > 0 else 1.0
                    norm = LogNorm(vmin=vmax * 1e-3, vmax=vmax)
                    # lower triangle (i > j): x = observable j, y = observable i
                    values = vd if i > j else vm.T
                    xb, yb = (_edges(hd, 0), _edges(hd, 1)) if i > j else (
                        _edges(hm, 1), _edges(hm, 0))
                    mplhep.hist2dplot(np.where(values > 0, values, np.nan), xb, yb, ax=ax,
                                      cbar=False, norm=norm, cmap="viridis", flow="none")
                    ax.text(0.03, 0.95, labels[0] if i > j else labels[1],
                            transform=ax.transAxes, ha="left", va="top", fontsize="x-small",
                            color="white" if i > j else "0.1",
                            bbox={"facecolor": "0.3" if i > j else "white", "alpha": 0.6,
                                  "edgecolor": "none", "pad": 1.5})
                ax.set_xlabel(data_1d[j].axes[0].label if i == n - 1 else "")
                ax.set_ylabel(data_1d[i].axes[0].label if j == 0 and i != 0 else "")
                if i != n - 1:
                    ax.tick_params(labelbottom=False)
                if j != 0 or i == 0:
                    ax.tick_params(labelleft=False)
        fig.suptitle((title + "\n" if title else "")
                     + f"2-D marginals — lower: {labels[0]}, upper: {labels[1]}\n"
                     "(fraction of events per bin, log colour scale)",
                     fontsize="medium" if n > 2 else "small")
    return _save(fig, path, dpi)


def _pull_cmap() -> tuple[Any, Any]:
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap(_PULL_COLORS).with_extremes(under=_PULL_UNDER, over=_PULL_OVER)
    return cmap, BoundaryNorm(_PULL_BOUNDS, cmap.N)


def _draw_pull_map(ax: Any, hd: Any, hm: Any, min_count: float) -> np.ndarray:
    import mplhep
    from matplotlib.colors import ListedColormap

    p = pulls(hd, hm, min_count=min_count)
    occupied = (hd.values() > 0) | (hm.values() > 0)
    xb, yb = _edges(hd, 0), _edges(hd, 1)
    sparse = np.where(occupied & ~np.isfinite(p), 1.0, np.nan)

    mplhep.hist2dplot(sparse, xb, yb, ax=ax, cbar=False, flow="none",
                      cmap=ListedColormap([_SPARSE_COLOR]), cmin=0.0, cmax=2.0)
    cmap, norm = _pull_cmap()
    mplhep.hist2dplot(p, xb, yb, ax=ax, cbar=False, flow="none", cmap=cmap, norm=norm)
    return p


def _frequency_text(pull_values: np.ndarray) -> str:
    rows = pull_frequencies(pull_values)
    lines = [f"{'pull range':<13}{'observed':>10}{'normal':>9}"]
    for r in rows:
        lines.append(f"{pull_range_label(r['lo'], r['hi']):<13}{100 * r['observed']:>9.2f}%"
                     f"{100 * r['expected']:>8.2f}%")
    lines.append(f"{rows[0]['n']} bins with expected content ≥ min_count")
    return "\n".join(lines)


def plot_pull_maps(data_2d: Mapping[tuple[int, int], Any], model_2d: Mapping[tuple[int, int], Any],
                   *, data_1d: Sequence[Any] | None = None, model_1d: Sequence[Any] | None = None,
                   title: str = "", min_count: float = 5.0,
                   path: str | os.PathLike | None = None, dpi: float = 110) -> Any:
    """Pull on the ratio model/data of every 2-D marginal (paper Eq. 13, Fig. 8), as a corner
    plot, with the frequency table of the pulls of all pairs (paper Table 4).

    Colours follow the paper: green for |pull| < 1, red (model above data) and blue (below)
    darkening per unit; grey bins hold events but too few expected (< ``min_count``) for a
    pull; white bins are empty. With ``data_1d``/``model_1d`` the diagonal shows 1-D pulls.
    """
    import mplhep
    from matplotlib.cm import ScalarMappable

    n = _pair_grid(data_2d, "plot_pull_maps")
    if set(data_2d) != set(model_2d):
        raise InputError("plot_pull_maps: data and model pairs differ")
    with style(font_size=11):
        fig = _figure((2.9 * n + 1.4, 2.9 * n + 0.4))
        gs = fig.add_gridspec(n, n)
        all_pulls = []
        panels: list[Any] = []  # every axes of the grid, for the colour bar's placement
        labels = {}
        for (a, b), hd in data_2d.items():
            labels[a], labels[b] = hd.axes[0].label, hd.axes[1].label
        for i in range(n):
            for j in range(i + 1):
                if i == j:
                    if data_1d is None or model_1d is None:
                        continue
                    ax = fig.add_subplot(gs[i, j])
                    p1 = pulls(data_1d[i], model_1d[i], min_count=min_count)
                    mplhep.histplot(np.nan_to_num(p1), bins=_edges(data_1d[i]), ax=ax,
                                    histtype="fill", color="0.45")
                    _shade_missing_pulls(ax, _edges(data_1d[i]), p1)
                    for level in (-2.0, 2.0):
                        ax.axhline(level, color="0.3", lw=0.8, ls=":")
                    lim = max(3.0, math.ceil(np.nanmax(np.abs(p1)) + 0.5)
                              if np.isfinite(p1).any() else 3.0)
                    ax.set_ylim(-lim, lim)
                    ax.set_ylabel("1-D pull", fontsize="small")
                    ax.set_xlim(_edges(data_1d[i])[0], _edges(data_1d[i])[-1])
                    panels.append(ax)
                else:
                    key = (j, i)
                    if key not in data_2d:
                        continue
                    ax = fig.add_subplot(gs[i, j])
                    all_pulls.append(_draw_pull_map(ax, data_2d[key], model_2d[key],
                                                    min_count).ravel())
                    panels.append(ax)
                    if j == 0:
                        ax.set_ylabel(labels[i])
                    else:
                        ax.set_ylabel("")
                ax.set_xlabel(labels.get(j, "") if i == n - 1 else "")
                if i != n - 1:
                    ax.tick_params(labelbottom=False)
        cmap, norm = _pull_cmap()
        fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=panels, extend="both",
                     label="pull on model/data", shrink=0.6, ticks=_PULL_BOUNDS)
        text_ax = fig.add_subplot(gs[0:max(1, n // 2), n - max(1, n // 2):])
        text_ax.set_axis_off()
        text_ax.text(0.0, 1.0, "pull frequencies, all pairs\n(paper Table 4)\n\n"
                     + _frequency_text(np.concatenate(all_pulls)),
                     transform=text_ax.transAxes, ha="left", va="top", family="monospace",
                     fontsize=9 if n > 2 else 7.5)
        if title:
            fig.suptitle(title)
    return _save(fig, path, dpi)


def _grid_layout(n: int, positions: Sequence[tuple[int, int]] | None
                 ) -> tuple[int, int, list[tuple[int, int]]]:
    if positions is None:
        cols = math.ceil(math.sqrt(n))
        positions = [(k // cols, k % cols) for k in range(n)]
    if len(positions) != n:
        raise InputError(f"positions: expected {n}, got {len(positions)}")
    rows = max(r for r, _ in positions) + 1
    cols = max(c for _, c in positions) + 1
    return rows, cols, list(positions)


def plot_double_ratios(panels: Sequence[Mapping[str, Any]], *, reference_label: str,
                       positions: Sequence[tuple[int, int]] | None = None, title: str = "",
                       min_count: float = 5.0, labels: tuple[str, str] = ("data", "model"),
                       path: str | os.PathLike | None = None, dpi: float = 110) -> Any:
    """Single ratios p(θ)/p(θ_ref) of data and model, and their double ratio, per θ point.

    Arguments:
        panels: one mapping per θ with ``label`` (shown in the panel), and 1-D histograms
            ``data``, ``data_ref``, ``model``, ``model_ref`` (see :func:`double_ratio`), and
            ``same_events`` (model from importance weights on the model_ref events). A panel
            without ``data`` is the reference point itself.
        reference_label: the θ_ref of the ratios, for the axis label.
        positions: (row, column) of each panel, e.g. the θ plane's layout; default: a square
            grid in order.

    Each panel: top, data (red points, Poisson errors) and model (black line, band = its
    sampling error); bottom, data/model double ratio with its statistical error (grey band).
    """
    import mplhep

    rows, cols, positions = _grid_layout(len(panels), positions)
    with style(font_size=11):
        fig = _figure((3.6 * cols + 0.5, 3.3 * rows + 0.6))
        outer = fig.add_gridspec(rows, cols)
        xlabel = ""
        legend_drawn = False
        for panel, (r, c) in zip(panels, positions):
            inner = outer[r, c].subgridspec(2, 1, height_ratios=[2.0, 1.0], hspace=0.0)
            ax0 = fig.add_subplot(inner[0])
            ax1 = fig.add_subplot(inner[1], sharex=ax0)
            ax0.set_title(panel["label"], fontsize="small")
            if "data" not in panel:
                ax0.text(0.5, 0.5, "reference point θ_ref", transform=ax0.transAxes,
                         ha="center", va="center")
                for ax in (ax0, ax1):
                    ax.set_xticks([])
                    ax.set_yticks([])
                continue
            hd = panel["data"]
            xlabel = hd.axes[0].label
            res = double_ratio(hd, panel["data_ref"], panel["model"], panel["model_ref"],
                               same_events=bool(panel.get("same_events", False)),
                               min_count=min_count)
            edges = _edges(hd)
            centers = 0.5 * (edges[1:] + edges[:-1])
            band_lo = res["r_model"] - res["r_model_error"]
            ax0.stairs(np.nan_to_num(res["r_model"] + res["r_model_error"]), edges,
                       baseline=np.nan_to_num(band_lo), fill=True, color="0.5", alpha=0.35,
                       lw=0)
            mplhep.histplot(res["r_model"], bins=edges, ax=ax0, histtype="step",
                            color=MODEL_COLOR, lw=1.3, label=labels[1])
            ax0.errorbar(centers, res["r_data"], yerr=res["r_data_error"], fmt="o",
                         color=DATA_COLOR, ms=3, lw=1, label=labels[0])
            ax0.axhline(1.0, color="0.5", lw=0.7, ls=":")
            finite = np.isfinite(res["double"])
            if finite.any():
                rm = res["r_model"][finite]
                lo, hi = float(np.nanmin(rm)), float(np.nanmax(rm))
                if lo > 0 and hi / lo > 10:  # ratios over decades (tails): a log scale
                    ax0.set_yscale("log")
                    ax0.set_ylim(lo / 1.5, hi * 1.5)
                else:
                    pad = 0.25 * (hi - lo) + 0.05
                    ax0.set_ylim(max(0.0, lo - pad), hi + pad)
            ax0.tick_params(labelbottom=False)
            if c == 0:
                ax0.set_ylabel(f"p(θ) / p({reference_label})", fontsize="x-small")
                ax1.set_ylabel(f"{labels[0]} / {labels[1]}", fontsize="x-small")
            err = res["double_error"]
            ax1.stairs(np.nan_to_num(1.0 + err, nan=1.0), edges,
                       baseline=np.nan_to_num(1.0 - err, nan=1.0), fill=True, color="0.6",
                       alpha=0.5, lw=0)
            ax1.errorbar(centers, res["double"], fmt="o", color=MODEL_COLOR, ms=2.5)
            ax1.axhline(1.0, color="0.3", lw=0.8)
            spread = np.nanmax(np.abs(res["double"] - 1.0)) if finite.any() else 0.2
            half = min(max(0.1, 1.2 * float(spread)), 1.0)
            ax1.set_ylim(1.0 - half, 1.0 + half)
            ax1.set_xlabel(xlabel if r == rows - 1 else "", fontsize="small")
            ax0.set_xlim(edges[0], edges[-1])
            if not legend_drawn:
                ax0.legend(loc="best", fontsize="x-small")
                legend_drawn = True
        fig.suptitle((title + "\n" if title else "")
                     + f"{xlabel}: single ratios p(θ)/p({reference_label}) and the double "
                     f"ratio {labels[0]}/{labels[1]} (paper Fig. 11, App. A)")
    return _save(fig, path, dpi)


def plot_pit(pits: Mapping[str, np.ndarray], names: Sequence[str], *, bins: int = 20,
             pvalues: Mapping[str, Mapping[str, float]] | None = None, title: str = "",
             path: str | os.PathLike | None = None, dpi: float = 110) -> Any:
    """PIT histograms: one row per θ label, one column per conditional F_i(x_i | x_<i, θ).

    Arguments:
        pits: label → PIT values (N, D) of data under the model at that θ.
        names: the observable names (columns).
        pvalues: label → name → KS p-value, printed in the panel.

    The band is the ±1σ binomial spread of a flat histogram of N events; a slope means a
    shifted conditional, a ∪ (∩) shape one too narrow (wide).
    """
    import hist as hist_mod
    import mplhep

    d = len(names)
    if not pits:
        raise InputError("plot_pit: no PIT values given")
    with style(font_size=11):
        fig = _figure((3.2 * d + 0.6, 2.3 * len(pits) + 0.8))
        axes = fig.subplots(len(pits), d, squeeze=False, sharex=True)
        for r, (label, values) in enumerate(pits.items()):
            u = np.asarray(values)
            if u.ndim != 2 or u.shape[1] != d:
                raise InputError(f"plot_pit: PIT of {label!r} must be (N, {d}), got {u.shape}")
            n = len(u)
            expected = n / bins
            sigma = math.sqrt(n * (1 / bins) * (1 - 1 / bins))
            for j, name in enumerate(names):
                ax = axes[r, j]
                h = hist_mod.Hist(hist_mod.axis.Regular(bins, 0.0, 1.0),
                                  storage=hist_mod.storage.Weight())
                h.fill(u[:, j])
                ax.axhspan(expected - sigma, expected + sigma, color="0.85")
                ax.axhline(expected, color="0.4", lw=0.8)
                mplhep.histplot(h, ax=ax, histtype="errorbar", color=MODEL_COLOR,
                                markersize=3, flow="none")
                # zoomed on the flat expectation: ±4σ, or wider to show every point
                reach = float(np.max(np.abs(h.values() - expected) + np.sqrt(h.variances())))
                half = max(4.0 * sigma, 1.1 * reach)
                ax.set_ylim(max(0.0, expected - half), expected + half)
                ax.set_xlim(0, 1)
                ax.set_xlabel(f"PIT of {name}" if r == len(pits) - 1 else "")
                ax.set_ylabel(f"{label}\nevents / bin" if j == 0 else "", fontsize="small")
                if pvalues and name in pvalues.get(label, {}):
                    ax.text(0.5, 0.05, f"KS p = {pvalues[label][name]:.2g}",
                            transform=ax.transAxes, ha="center", va="bottom",
                            fontsize="x-small",
                            bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "none"})
                if r == 0:
                    given = ", ".join(names[:j]) if j <= 2 else f"{names[0]}…{names[j - 1]}"
                    ax.set_title(f"F({name} | {given + ', ' if j else ''}θ)",
                                 fontsize="small")
        fig.suptitle((title + "\n" if title else "")
                     + "probability-integral transform of each conditional (flat if the "
                     "model is right; band: ±1σ)")
    return _save(fig, path, dpi)


def plot_checks(checks: Mapping[str, Mapping[str, Any]], theta_labels: Sequence[str], *,
                title: str = "", path: str | os.PathLike | None = None,
                dpi: float = 110) -> Any:
    """−log10 p of every test per θ point, model vs floor, with the pass threshold.

    Arguments:
        checks: name → {"model": [p per θ], "floor": [p per θ], "threshold": p,
            "passed": bool}; None entries are skipped (e.g. the reference θ of a double ratio).
        theta_labels: x tick labels.
    """
    names = list(checks)
    if not names:
        raise InputError("plot_checks: no checks given")
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    x = np.arange(len(theta_labels))
    with style(font_size=11):
        fig = _figure((3.7 * cols + 0.4, 3.3 * rows + 1.4))
        axes = fig.subplots(rows, cols, squeeze=False)
        for k, name in enumerate(names):
            ax = axes[k // cols, k % cols]
            c = checks[name]

            def score(ps: Sequence[float | None]) -> np.ndarray:
                v = np.array([np.nan if p is None else p for p in ps], dtype=np.float64)
                return -np.log10(np.clip(v, 1e-300, 1.0))

            floor, model = score(c["floor"]), score(c["model"])
            ax.plot(x, floor, "o", mfc="none", color=FLOOR_COLOR, ms=7, label="floor")
            ax.plot(x, model, "s", color=MODEL_COLOR, ms=5, label="model")
            line = -math.log10(c["threshold"])
            ax.axhline(line, color=DATA_COLOR, ls="--", lw=1.2, label="threshold")
            verdict = "pass" if c["passed"] else "FAIL"
            allowed = c.get("tests_allowed_at_threshold", 0)
            if allowed:
                verdict += f" ({allowed} test{'s' if allowed > 1 else ''} at the line allowed)"
            ax.set_title(f"{name}: {verdict}", fontsize="small",
                         color="black" if c["passed"] else DATA_COLOR)
            top = np.nanmax(np.concatenate([floor, model, [line]]))
            ax.set_ylim(0, 1.12 * top)
            ax.set_xticks(x)
            ax.set_xticklabels(theta_labels, rotation=60, ha="right", fontsize=7)
            ax.set_ylabel("−log10(smallest p)", fontsize="small")
            ax.set_ylim(0, None)
            ax.minorticks_off()
        for k in range(len(names), rows * cols):
            axes[k // cols, k % cols].set_axis_off()
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize="small")
        fig.suptitle((title + "\n" if title else "")
                     + "smallest p-value of each test family per θ point: model vs floor; a "
                     "point above the line fails")
    return _save(fig, path, dpi)


def _profile_arrays(p: Any) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(p, "grid") and hasattr(p, "delta"):
        return np.asarray(p.grid, dtype=np.float64), np.asarray(p.delta, dtype=np.float64)
    grid, delta = p
    return np.asarray(grid, dtype=np.float64), np.asarray(delta, dtype=np.float64)


def plot_profiles(profiles: Mapping[str, Any], *, parameter: str = "",
                  cl: Sequence[float] = (0.6827, 0.9545), truth: float | None = None,
                  title: str = "", path: str | os.PathLike | None = None,
                  dpi: float = 110, ax: Any = None) -> Any:
    """Profile-likelihood scans Δ(−2 ln L) of one parameter, e.g. true pdf vs model.
    Returns the figure.

    Arguments:
        profiles: label → :class:`egmm.infer.ProfileResult` or (grid, delta) arrays.
        parameter: x-axis label (default: the ProfileResult's poi).
        cl: confidence levels drawn as horizontal lines at ``wilks_threshold(cl, 1)``.
        truth: the true value, drawn as a vertical line.
        ax: a matplotlib Axes to draw into (e.g. one panel of your own figure, in your
            style); default: a new figure in mplhep's style (:func:`set_style`).
    """
    from egmm.infer.profile import wilks_threshold

    if not profiles:
        raise InputError("plot_profiles: no profiles given")
    with _target(ax, (6.4, 4.8), "plot_profiles") as (fig, ax):
        for label, p in profiles.items():
            g, dlt = _profile_arrays(p)
            order = np.argsort(g)
            ax.plot(g[order], dlt[order], lw=1.8, label=label)
            parameter = parameter or getattr(p, "poi", "")
        for level in cl:
            thr = wilks_threshold(level, 1)
            ax.axhline(thr, color="0.4", ls=":", lw=1)
            # inside the panel (x in axes units, y in data): a label beyond the right edge
            # ran into the next panel of the caller's figure
            ax.text(0.99, thr, f"{100 * level:.4g}%" if level < 1 else f"{level:g}σ",
                    transform=ax.get_yaxis_transform(), va="bottom", ha="right",
                    fontsize="x-small", color="0.3")
        if truth is not None:
            ax.axvline(truth, color="0.2", ls="--", lw=1, label="true value")
        ax.set_xlabel(parameter)
        ax.set_ylabel("Δ(−2 ln L)")
        ax.set_ylim(0, None)
        ax.legend(loc="upper center")
        if title:
            ax.set_title(title, fontsize="small")
    return _save(fig, path, dpi)


def plot_contours(regions: Mapping[str, Mapping[float, Any]], *,
                  parameters: tuple[str, str] = ("", ""),
                  mle: Mapping[str, tuple[float, float]] | None = None,
                  truth: tuple[float, float] | None = None, title: str = "",
                  path: str | os.PathLike | None = None, dpi: float = 110,
                  ax: Any = None) -> Any:
    """Profile-likelihood regions of two parameters (e.g. from :func:`egmm.infer.contour`).
    Returns the figure.

    Arguments:
        regions: label → {cl → closed polygon (K, 2)}; each label gets one colour, the
            confidence levels line styles in increasing order (solid, dashed, dotted).
        parameters: axis labels.
        mle: label → best-fit point, drawn as a cross.
        truth: the true point, drawn as a star.
        ax: a matplotlib Axes to draw into; default: a new figure (see
            :func:`plot_profiles`).
    """
    from matplotlib.lines import Line2D

    if not regions:
        raise InputError("plot_contours: no regions given")
    styles = ["-", "--", ":", "-."]
    with _target(ax, (6.0, 5.6), "plot_contours") as (fig, ax):
        handles = []
        colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b"]
        levels = sorted({float(level) for r in regions.values() for level in r})
        for k, (label, by_cl) in enumerate(regions.items()):
            color = colors[k % len(colors)]
            for level, pts in by_cl.items():
                p = np.asarray(pts, dtype=np.float64)
                ls = styles[levels.index(float(level)) % len(styles)]
                ax.plot(p[:, 0], p[:, 1], ls, color=color, lw=1.6)
            if mle and label in mle:
                ax.plot(*mle[label], "x", color=color, ms=9, mew=2)
            handles.append(Line2D([], [], color=color, lw=1.6, label=label))
        for level in levels:
            handles.append(Line2D([], [], color="0.3", lw=1.2,
                                  ls=styles[levels.index(level) % len(styles)],
                                  label=f"{100 * level:.4g}% CL" if level < 1
                                  else f"{level:g}σ"))
        if truth is not None:
            ax.plot(*truth, "*", color="black", ms=13)
            handles.append(Line2D([], [], color="black", ls="", marker="*", ms=11,
                                  label="true value"))
        ax.set_xlabel(parameters[0])
        ax.set_ylabel(parameters[1])
        ax.legend(handles=handles, loc="best", fontsize="x-small")
        if title:
            ax.set_title(title, fontsize="small")
    return _save(fig, path, dpi)


def pull_range_label(lo: float, hi: float) -> str:
    """Row label of a pull range of :data:`egmm.validation.PULL_RANGES`: ``"−1 to 0"``,
    ``"above +4"``."""
    if math.isinf(lo):
        return f"below {hi:+.0f}"
    if math.isinf(hi):
        return f"above {lo:+.0f}"
    return f"{lo:+.0f} to {hi:+.0f}"

