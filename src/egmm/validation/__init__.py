"""Validation of density models: look at them before trusting them.

Histograms are :class:`hist.Hist` objects with Weight storage (:mod:`.histograms`), figures
are drawn from them with mplhep (:mod:`.plots`), distances and tests come from scipy.stats and
scikit-learn (:mod:`.metrics`), each read against a data-vs-data floor, and :func:`report`
puts everything into PNGs, ``metrics.json`` and a markdown summary with pass/fail checks
(also ``egmm validate`` on the command line). scikit-learn is needed for the C2ST only
(``pip install 'egmm[validation]'``).

References:
    Menary & Price, Sections 4-5 (marginals, pulls Eq. 13, Table 4, importance weights) and
    Appendix A (double ratios).
"""

from egmm.validation.histograms import (
    double_ratio,
    histogram,
    importance_weights,
    make_axes,
    model_histogram,
    normalized,
    pulls,
    reweighted_histogram,
)
from egmm.validation.metrics import (
    PULL_RANGES,
    binned_chi2,
    binned_divergences,
    c2st,
    c2st_null_sigma,
    pit,
    pit_uniformity,
    pull_chi2,
    pull_frequencies,
    two_sample_tests,
)
from egmm.validation.plots import (
    plot_checks,
    plot_contours,
    plot_corner,
    plot_double_ratios,
    plot_marginals,
    plot_pit,
    plot_profiles,
    plot_pull_maps,
    set_style,
)
from egmm.validation.report import CHECKS, report

__all__ = [
    "CHECKS",
    "PULL_RANGES",
    "binned_chi2",
    "binned_divergences",
    "c2st",
    "c2st_null_sigma",
    "double_ratio",
    "histogram",
    "importance_weights",
    "make_axes",
    "model_histogram",
    "normalized",
    "pit",
    "pit_uniformity",
    "plot_checks",
    "plot_contours",
    "plot_corner",
    "plot_double_ratios",
    "plot_marginals",
    "plot_pit",
    "plot_profiles",
    "plot_pull_maps",
    "pull_chi2",
    "pull_frequencies",
    "pulls",
    "report",
    "reweighted_histogram",
    "set_style",
    "two_sample_tests",
]
