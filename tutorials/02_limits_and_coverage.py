"""Tutorial 2 — a CLs upper limit (asymptotic and with toys) and a coverage study.

A narrow resonance at m = 125 GeV (Gaussian, width 2 GeV) is searched for in an observable
m ∈ [100, 160] GeV over a falling exponential background. The signal strength μ scales a
benchmark signal of S = 20 expected events. The background has two nuisance parameters: its
yield ``n_bkg``, known from an auxiliary measurement to be 1000 ± 50 events (iminuit's
NormalConstraint), and its slope ``lam``, measured by the data themselves (the sidebands).
We

1. write both pdfs as TorchDensity objects with exact samplers (toys draw from them) and build
   the extended unbinned likelihood −2 ln L = ExtendedUnbinnedNLL + NormalConstraint;
2. compute CLs with the asymptotic formulae (q̃_μ and the Asimov dataset, Cowan et al. 2011)
   on a grid of μ with ``egmm.infer.hypotest`` and draw the Brazil plot; the observed and
   expected 95 % CL limits come from ``egmm.infer.upper_limit``;
3. repeat CLs with pseudo-experiments (``calctype="toybased"``) at a few μ near the limit: the
   toy-based limit, with its statistical error from the toys' binomial p-value errors, checks
   the asymptotic one; at one μ the same toys are fitted a batch at a time
   (``ToyCalculator(..., batched=True)``: ``egmm.infer.fit_batched``), which gives the same CLs
   several times faster;
4. run a coverage study at μ = 3 with ``egmm.infer.coverage``: do the HESSE errors give pulls
   of unit width, and do the profile-likelihood intervals (Wilks thresholds) cover the truth
   as often as they claim?

Run:  python tutorials/02_limits_and_coverage.py [--fast] [--out DIR] [--workers N]
(``--fast``, used by the test suite, uses a coarser grid and fewer toys, all in one process.)
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import hist
import matplotlib
import numpy as np
import torch
from iminuit.cost import NormalConstraint
from scipy import stats

import egmm
from egmm import Component, ExtendedUnbinnedNLL, Observable, ObservableSpace, TorchDensity, Yield

matplotlib.use("Agg")
import matplotlib.pyplot as plt

M_LO, M_HI = 100.0, 160.0  # GeV
PEAK, WIDTH = 125.0, 2.0  # GeV
SIGNAL_EVENTS = 20.0  # expected signal events at μ = 1
BKG_EVENTS, BKG_ERROR = 1000.0, 50.0  # auxiliary measurement of the background yield
SLOPE = 0.05  # true background slope, 1/GeV
LEVEL = 0.05  # CLs < 0.05: excluded at 95 % CL

SPACE = ObservableSpace([Observable("m", M_LO, M_HI, unit="GeV")])
# mass of the Gaussian inside [M_LO, M_HI]: the truncated pdf is normalised on the range
_CDF_LO, _CDF_HI = stats.norm.cdf([M_LO, M_HI], PEAK, WIDTH)
_LOG_NORM_SIGNAL = math.log(WIDTH * math.sqrt(2 * math.pi) * (_CDF_HI - _CDF_LO))


def signal_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log of the Gaussian peak truncated to [100, 160] GeV, (N,) for events (N, 1)."""
    z = (x[:, 0] - PEAK) / WIDTH
    return -0.5 * z**2 - _LOG_NORM_SIGNAL


def signal_sampler(n: int, theta: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """Exact draws by inverting the CDF on the uniform interval that maps into the range."""
    return stats.norm.ppf(rng.uniform(_CDF_LO, _CDF_HI, n), PEAK, WIDTH)[:, None]


def background_log_prob(x: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """log of λ e^{−λ(m − 100)} / (1 − e^{−60λ}), the exponential truncated to the range."""
    return (torch.log(lam) - lam * (x[:, 0] - M_LO)
            - torch.log(-torch.expm1(-lam * (M_HI - M_LO))))


def background_sampler(n: int, theta: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    """Exact draws by inverting the truncated exponential's CDF."""
    lam = theta["lam"]
    u = rng.random(n)
    return (M_LO - np.log1p(u * np.expm1(-lam * (M_HI - M_LO))) / lam)[:, None]


SIGNAL = TorchDensity(SPACE, signal_log_prob, sampler=signal_sampler, name="resonance")
BACKGROUND = TorchDensity(SPACE, background_log_prob, ("lam",), {"lam": (0.005, 0.2)},
                          background_sampler, name="exponential")


def signal_yield(mu: torch.Tensor) -> torch.Tensor:
    """ν_s = μ · S."""
    return SIGNAL_EVENTS * mu


def make_cost(data: np.ndarray) -> Any:
    """−2 ln L of the search: extended unbinned likelihood of signal + background, plus the
    Gaussian auxiliary measurement of the background yield."""
    signal = Component("signal", SIGNAL,
                       Yield.from_callable(signal_yield, ("mu",), {"mu": (0.0, 10.0)}))
    background = Component("background", BACKGROUND, "n_bkg")
    return (ExtendedUnbinnedNLL(data, [signal, background])
            + NormalConstraint("n_bkg", BKG_EVENTS, BKG_ERROR))


def crossing(mu: np.ndarray, cls: np.ndarray, level: float = LEVEL) -> tuple[float, int]:
    """Where CLs(μ) first falls below ``level``, interpolating ln CLs linearly (CLs falls
    about exponentially in μ), and the index of the first point below. NaN if the grid does
    not bracket the level."""
    below = np.nonzero(np.asarray(cls) < level)[0]
    if below.size == 0 or below[0] == 0:
        return math.nan, -1
    i = int(below[0])
    a, b = cls[i - 1], cls[i]
    f = ((math.log(level) - math.log(a)) / (math.log(b) - math.log(a)) if b > 0
         else (level - a) / (b - a))  # a curve that drops to 0: linear
    return float(mu[i - 1] + f * (mu[i] - mu[i - 1])), i


def limit_error(limit: float, mu: np.ndarray, cls: np.ndarray, error: np.ndarray, i: int,
                smooth_cls: Callable[[float], float]) -> float:
    """Statistical error of a limit found by :func:`crossing` between points i − 1 and i:
    σ(ln CLs) there (interpolated) over |d ln CLs/dμ| of ``smooth_cls`` at the limit."""
    if i <= 0:
        return math.nan
    f = (limit - mu[i - 1]) / (mu[i] - mu[i - 1])
    rel = [error[k] / cls[k] if cls[k] > 0 else 1.0 for k in (i - 1, i)]
    h = 0.02 * limit
    log_slope = (math.log(smooth_cls(limit + h)) - math.log(smooth_cls(limit - h))) / (2 * h)
    return float(((1 - f) * rel[0] + f * rel[1]) / abs(log_slope))


def toy_cls_error(clsb: float, clb: float, n_sb: int, n_b: int) -> float:
    """Binomial error of CLs = CLs+b / CLb from the two independent sets of toys."""
    clsb = max(clsb, 1.0 / n_sb)  # no s+b toy above the observed value: one toy's worth
    return clsb / clb * math.sqrt((1 - clsb) / (clsb * n_sb) + (1 - clb) / (clb * n_b))


def brazil_plot(path: Path, grid: np.ndarray, observed: np.ndarray, band: np.ndarray,
                toys: dict[str, Any], limits: dict[str, Any]) -> None:
    """CLs vs μ: expected median with ±1σ/±2σ bands, observed (asymptotic and toys), α."""
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    ax.fill_between(grid, band[:, 0], band[:, 4], color="#ffdf3a", label=r"expected $\pm2\sigma$")
    ax.fill_between(grid, band[:, 1], band[:, 3], color="#3ac43a", label=r"expected $\pm1\sigma$")
    ax.plot(grid, band[:, 2], "k--", lw=1.2, label="expected (median)")
    ax.plot(grid, observed, "k-", lw=1.6, label="observed, asymptotic")
    ax.errorbar(toys["mu"], toys["cls"], toys["error"], fmt="s", ms=5, color="navy", capsize=3,
                label=f"observed, toys ({toys['ntoys']} s+b, {toys['ntoys']} b-only per μ)")
    ax.axhline(LEVEL, color="red", lw=1.2, label=rf"$\alpha$ = {LEVEL}")
    ax.axvline(limits["observed"], color="k", lw=0.8, ls=":")
    ax.set_xlabel(rf"signal strength $\mu$ (signal events / {SIGNAL_EVENTS:g})")
    ax.set_ylabel(r"CL$_s$")
    ax.set_xlim(grid[0], grid[-1])
    ax.set_ylim(0, 1)
    exp = limits["expected"]
    text = (f"95% CL upper limits on μ\n"
            f"observed: {limits['observed']:.3f} (asymptotic)\n"
            f"               {limits['toy_observed']:.2f} ± {limits['toy_observed_error']:.2f}"
            f" (toys)\n"
            f"expected: {exp[2]:.3f} +{exp[3] - exp[2]:.2f} −{exp[2] - exp[1]:.2f} (asymptotic)")
    if limits.get("toy_expected") is not None:
        t = limits["toy_expected"]
        text += f"\n               {t[2]:.2f} +{t[3] - t[2]:.2f} −{t[2] - t[1]:.2f} (toys)"
    ax.text(0.97, 0.60, text, transform=ax.transAxes, ha="right", va="top", fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "0.7"})
    ax.legend(fontsize=8, loc="upper right")
    ax.set_title(r"CL$_s$ scan, $\tilde q_\mu$; resonance on exponential background", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def coverage_plot(path: Path, result: Any, truth: dict[str, float]) -> None:
    """Pull histograms with the unit Gaussian, and coverage vs nominal with binomial errors."""
    good = [r for r in result.records if r["valid"] and "delta" in r]
    fig = plt.figure(figsize=(10, 4.4))
    grid = fig.add_gridspec(2, 2, height_ratios=(2.2, 1), width_ratios=(1, 1.05))
    ax_pull = fig.add_subplot(grid[:, 0])
    ax_cov = fig.add_subplot(grid[0, 1])
    ax_diff = fig.add_subplot(grid[1, 1], sharex=ax_cov)

    axis = hist.axis.Regular(24, -4.0, 4.0, name="pull", label="pull")
    for k, (name, label) in enumerate((("mu", r"$\mu$"), ("n_bkg", r"$n_\mathrm{bkg}$"))):
        pulls = np.array([(r["values"][name] - truth[name]) / r["errors"][name] for r in good])
        h = hist.Hist(axis).fill(pulls)
        s = result.parameters[name]
        text = (f"{label}: mean {s.pull_mean:+.2f} ± {s.pull_mean_error:.2f}, "
                f"width {s.pull_width:.2f} ± {s.pull_width_error:.2f}")
        if k == 0:
            ax_pull.errorbar(h.axes[0].centers, h.values(), np.sqrt(h.values()), fmt="o",
                             ms=4, color="k", label=text)
        else:
            ax_pull.stairs(h.values(), h.axes[0].edges, color=f"C{k}", label=text)
    x = np.linspace(-4, 4, 400)
    ax_pull.plot(x, len(good) * axis.widths[0] * stats.norm.pdf(x), color="C3", lw=1.5,
                 label="unit Gaussian")
    ax_pull.set_xlabel(r"pull $(\hat\theta - \theta_0)/\hat\sigma_\theta$ (HESSE)")
    ax_pull.set_ylabel(f"toys / {axis.widths[0]:.2f}")
    ax_pull.set_ylim(0, ax_pull.get_ylim()[1] * 1.35)
    ax_pull.legend(fontsize=7.5, loc="upper left")
    ax_pull.set_title(f"{result.ntoys} toys at μ = {truth['mu']:g} "
                      f"({result.n_failed} failed fits)", fontsize=9)

    for k, (region, label) in enumerate(((("mu",), r"1-D: $\mu$"),
                                         (("mu", "n_bkg"), r"2-D: $\mu$, $n_\mathrm{bkg}$"))):
        rows = [c for c in result.coverage if c.parameters == region]
        cl = np.array([c.cl for c in rows])
        frac = np.array([c.fraction for c in rows])
        # 68.27 % Clopper-Pearson intervals: unlike √(p(1 − p)/n) they do not shrink to
        # nothing when every toy covers
        ci = [stats.binomtest(c.covered, c.n).proportion_ci(0.6827) for c in rows]
        err = np.array([[f - v.low for f, v in zip(frac, ci)],
                        [v.high - f for f, v in zip(frac, ci)]])
        shift = 0.006 * (2 * k - 1)  # side by side, so that the error bars stay visible
        for ax, y in ((ax_cov, frac), (ax_diff, frac - cl)):
            ax.errorbar(cl + shift, y, err, fmt="os"[k], ms=4, capsize=2, color=f"C{k}",
                        label=label)
    ax_cov.plot([0, 1], [0, 1], color="0.5", lw=1, label="nominal")
    ax_diff.axhline(0, color="0.5", lw=1)
    ax_cov.set_ylabel("coverage (Wilks regions)")
    ax_cov.set_title("fraction of toys whose region contains the truth (binomial 68% CI)",
                     fontsize=9)
    ax_cov.legend(fontsize=8, loc="upper left")
    ax_cov.tick_params(labelbottom=False)
    ax_diff.set_xlabel("nominal confidence level")
    ax_diff.set_ylabel("coverage − nominal")
    ax_cov.set_xlim(0.2, 1.02)
    ax_cov.set_ylim(0.2, 1.02)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(fast: bool = False, out: Path = Path("tutorial-02-output"),
         workers: int | None = None) -> dict:
    """Run the tutorial; figures go to ``out``. ``workers``: processes for the toys (default:
    one per CPU, or none in fast mode)."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)

    # 1. the observed data: a small signal (μ = 0.5) we pretend not to know, on the background
    n_sig, n_bkg = rng.poisson(0.5 * SIGNAL_EVENTS), rng.poisson(BKG_EVENTS)
    data = np.concatenate([signal_sampler(n_sig, {}, rng),
                           background_sampler(n_bkg, {"lam": SLOPE}, rng)])
    cost = make_cost(data)
    best = egmm.infer.fit(cost)
    print(f"{len(data)} events; fit: " + ", ".join(
        f"{n} = {best.values[n]:.4g} ± {best.errors[n]:.2g}" for n in ("mu", "n_bkg", "lam")))

    # 2. asymptotic CLs on a grid (one calculator: the fits to the data and the Asimov
    #    dataset are made once) and the limits by root finding
    asymptotic = egmm.infer.AsymptoticCalculator(cost, "mu")
    grid = np.linspace(0.05, 3.0, 24 if fast else 60)
    scan = [egmm.infer.hypotest(mu, cost, "mu", return_expected_set=True, calculator=asymptotic)
            for mu in grid]
    cls_observed = np.array([cls for cls, _ in scan])
    cls_band = np.array([band for _, band in scan])  # (n, 5): −2σ … +2σ
    observed, expected = egmm.infer.upper_limit(cost, "mu", level=LEVEL, rtol=1e-4,
                                                calculator=asymptotic)
    cls_at_limit = egmm.infer.hypotest(observed, cost, "mu", calculator=asymptotic)

    # 3. CLs from toys at a few μ around the asymptotic limit (hypotest with calctype
    #    "toybased": 2 × ntoys toys per μ). Every μ reuses the same toy seeds, so CLs(μ) is
    #    smooth in μ. The limit's statistical error is σ(ln CLs) at the crossing, from the
    #    binomial errors of CLs+b and CLb, over |d ln CLs/dμ| (taken from the smooth
    #    asymptotic curve: the toys' own finite differences are noisy)
    ntoys = 120 if fast else 1000
    serial = workers == 0 or (fast and workers is None)
    processes = 1 if serial else workers or len(os.sched_getaffinity(0))
    executor = "serial" if serial else egmm.infer.local_executor(processes)
    try:
        toy_calc = egmm.infer.ToyCalculator(cost, "mu", ntoys=ntoys, seed=7, executor=executor,
                                            track_progress=not fast)
        if fast:
            toy_grid = observed * np.array([0.8, 1.0, 1.2])
        else:  # wide enough for the expected band too
            toy_grid = np.linspace(0.8 * expected[0], 1.1 * max(expected[4], observed), 12)
        toy_cls, toy_err, toy_band, toy_clb, toy_seconds = [], [], [], [], []
        for mu in toy_grid:
            start = time.perf_counter()
            cls, (clsb, clb), band = egmm.infer.hypotest(
                mu, cost, "mu", return_tail_probs=True, return_expected_set=True,
                calculator=toy_calc)
            toy_seconds.append(time.perf_counter() - start)
            sb, b = toy_calc.distributions(mu)
            toy_cls.append(cls)
            toy_clb.append(clb)
            toy_err.append(toy_cls_error(clsb, clb, len(sb), len(b)))
            toy_band.append(band)
        toy_cls, toy_err, toy_band = np.array(toy_cls), np.array(toy_err), np.array(toy_band)
        toy_observed, i = crossing(toy_grid, toy_cls)
        toy_error = limit_error(toy_observed, toy_grid, toy_cls, toy_err, i, lambda mu:
                                egmm.infer.hypotest(mu, cost, "mu", calculator=asymptotic))
        toy_expected = None if fast else [crossing(toy_grid, toy_band[:, k])[0]
                                          for k in range(5)]

        # the same toys (same seeds) fitted a batch at a time in this process (batched=True:
        # fit_batched, one Newton solve for each batch of toys instead of two MIGRADs per
        # toy): the same statistic toy by toy, to the fits' tolerance, hence the same CLs
        mid = len(toy_grid) // 2
        batched_calc = egmm.infer.ToyCalculator(cost, "mu", ntoys=ntoys, seed=7,
                                                executor="serial", batched=True,
                                                track_progress=not fast)
        start = time.perf_counter()
        cls_batched = egmm.infer.hypotest(toy_grid[mid], cost, "mu", calculator=batched_calc)
        batched_check = {"mu": toy_grid[mid], "ntoys": ntoys, "cls_loop": toy_cls[mid],
                         "clb_loop": toy_clb[mid], "cls_batched": cls_batched,
                         "seconds_loop": toy_seconds[mid],
                         "loop_processes": processes,
                         "seconds_batched": time.perf_counter() - start}

        # 4. coverage at μ = 3: toys of the whole model (Poisson yields, a new auxiliary
        #    measurement per toy), each fitted; regions for μ and for (μ, n_bkg), the slope
        #    profiled. The truth is ≈ 5σ from the boundary μ = 0, which plays no role here
        truth = {"mu": 3.0, "n_bkg": BKG_EVENTS, "lam": SLOPE}
        levels = (0.3, 0.5, 0.6827, 0.8, 0.9, 0.9545, 0.99)
        study = egmm.infer.coverage(cost, None, truth, ntoys=120 if fast else 2000, seed=3,
                                    cl=levels, parameters=("mu", "n_bkg"),
                                    pairs=[("mu", "n_bkg")], executor=executor,
                                    progress=not fast)
    finally:
        if not isinstance(executor, str):
            executor.shutdown()

    limits = {"observed": observed, "expected": expected, "toy_observed": toy_observed,
              "toy_observed_error": toy_error, "toy_expected": toy_expected}
    brazil_plot(out / "brazil.png", grid, cls_observed, cls_band,
                {"mu": toy_grid, "cls": toy_cls, "error": toy_err, "ntoys": ntoys}, limits)
    coverage_plot(out / "coverage.png", study, truth)

    print(f"\n95% CL upper limit on μ (CLs with q̃_μ; μ = 1 is {SIGNAL_EVENTS:g} signal events)")
    print(f"  observed  asymptotic {observed:.3f}   toys {toy_observed:.3f} ± {toy_error:.3f} "
          f"({ntoys} toys per hypothesis and μ)")
    print(f"  expected  asymptotic {expected[2]:.3f}   ±1σ [{expected[1]:.3f}, {expected[3]:.3f}]"
          f"   ±2σ [{expected[0]:.3f}, {expected[4]:.3f}]")
    if toy_expected is not None:
        print(f"            toys       {toy_expected[2]:.3f}   ±1σ [{toy_expected[1]:.3f}, "
              f"{toy_expected[3]:.3f}]   ±2σ [{toy_expected[0]:.3f}, {toy_expected[4]:.3f}]")
    check = batched_check
    print(f"  toys at μ = {check['mu']:.3f}: CLs {check['cls_loop']:.4f} with a Minuit fit per "
          f"toy ({check['seconds_loop']:.1f} s, {check['loop_processes']} process(es)), "
          f"{check['cls_batched']:.4f} with batched fits ({check['seconds_batched']:.1f} s, "
          f"one process)")
    print(f"\ncoverage study at μ = {truth['mu']:g}:")
    print(study.table())
    print(f"\nfigures: {out / 'brazil.png'}, {out / 'coverage.png'}")
    return {
        "observed": observed, "expected": list(expected), "cls_at_observed": cls_at_limit,
        "scan": {"mu": grid, "observed": cls_observed, "expected": cls_band},
        "scan_observed": crossing(grid, cls_observed)[0],
        "toys": {"mu": toy_grid, "cls": toy_cls, "error": toy_err, "expected": toy_band,
                 "ntoys": ntoys},
        "toy_observed": toy_observed, "toy_observed_error": toy_error,
        "toy_expected": toy_expected, "batched_check": batched_check,
        "coverage": study, "truth": truth,
        "figures": [out / "brazil.png", out / "coverage.png"],
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("tutorial-02-output"))
    ap.add_argument("--workers", type=int, default=None,
                    help="processes for toys (default: one per CPU; 0 or --fast: serial)")
    args = ap.parse_args()
    torch.set_num_threads(1)  # small fits are latency-bound
    main(fast=args.fast, out=args.out, workers=args.workers)
