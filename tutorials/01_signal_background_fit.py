"""Tutorial 1 — a trained signal density in a full unbinned fit.

An EFT-like coefficient ``c`` changes both the shape and the rate of a signal in one observable
``m`` (GeV). A detector energy scale ``jes`` (a nuisance parameter, in units of its 1σ
calibration uncertainty) shifts the signal shape. We

1. simulate signal events on a grid of (c, jes) and train a GMMDensity p(m | c, jes);
2. fit the cross section σ(c) = a + b·c + d·c² to "generator" values (CrossSection.quadratic)
   and multiply by the luminosity: the signal yield is σ(c)·L;
3. describe the background by a histogram template (HistTemplate) whose normalisation
   ``mu_bkg`` is shared with a binned control region written in pyhf (PyhfCost);
4. constrain ``jes`` with iminuit's NormalConstraint;
5. add everything with ``+`` and fit with egmm.infer.fit; draw the fit with Minuit's own
   ``visualize`` (fit_m.png); profile c (jes and mu_bkg are re-minimised at every point) and
   draw the profile with its Wilks 68.27% / 95.45% levels (profile_c.png).

Run:  python tutorials/01_signal_background_fit.py [--fast] [--out DIR]
(``--fast``, used by the test suite, trains on fewer events for fewer epochs.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import hist
import matplotlib
import numpy as np
import pyhf
import torch
from iminuit.cost import NormalConstraint

import egmm
from egmm import (
    Component,
    CrossSection,
    ExtendedUnbinnedNLL,
    GMMDensity,
    HistTemplate,
    LatentProjection,
    Observable,
    ObservableSpace,
    PyhfCost,
    Yield,
    train,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt

LUMI = 100.0  # fb⁻¹
M_LO, M_HI = 0.0, 10.0


def simulate_signal(n: int, c: np.ndarray, jes: np.ndarray, rng: np.random.Generator):
    """Signal 'generator': m = (1 + 0.03·jes)·(a Gamma-shaped peak whose width grows with c²),
    kept inside [0, 10] by rejection."""
    out = np.empty(0)
    cs, js = np.empty(0), np.empty(0)
    while len(out) < n:
        k = 2 * n
        ci, ji = np.resize(c, k), np.resize(jes, k)
        m = (1 + 0.03 * ji) * rng.gamma(4.0, 0.8 + 0.15 * ci**2 + 0.1 * ci, size=k)
        keep = (m > M_LO) & (m < M_HI)
        out, cs, js = (np.concatenate([a, b[keep]]) for a, b in ((out, m), (cs, ci), (js, ji)))
    return out[:n, None], np.stack([cs[:n], js[:n]], 1)


def true_cross_section(c):
    return 0.8 + 0.25 * c + 0.6 * c**2  # fb


def main(fast: bool = False, out: Path = Path("tutorial-01-output")) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    space = ObservableSpace([Observable("m", M_LO, M_HI, unit="GeV")])

    # 1. training data on a (c, jes) grid, and the density model
    grid = np.array([(c, j) for c in np.linspace(-1.5, 1.5, 7) for j in (-2.0, 0.0, 2.0)])
    n_per_point = 500 if fast else 10000
    theta = np.repeat(grid, n_per_point, axis=0)
    x, theta = simulate_signal(len(theta), theta[:, 0], theta[:, 1], rng)
    nominal = (theta[:, 0] == 0) & (theta[:, 1] == 0)
    proj = LatentProjection.fit(space, x[nominal], f=0.5)
    torch.manual_seed(0)
    model = GMMDensity(space, ["c", "jes"], proj, n_gauss=10)
    train(model, x, theta, max_epochs=2 if fast else 60, batch_size=500, progress=not fast)

    # 2. cross section from generator points (with their MC errors), times luminosity
    points = np.linspace(-1.5, 1.5, 7)
    xsec = CrossSection.quadratic(points[:, None], true_cross_section(points),
                                  errors=np.full(7, 0.01), parameters=["c"])
    print("σ(c) fit:", xsec.fit)

    # 3. background: a template from background MC; the SR yield is mu_bkg × 500 events
    bkg_mc = rng.exponential(4.0, 200_000)
    bkg_mc = bkg_mc[bkg_mc < M_HI]
    template = hist.Hist(hist.axis.Regular(40, M_LO, M_HI, name="m"), storage=hist.storage.Weight())
    template.fill(m=bkg_mc)
    background = HistTemplate(template, space, name="bkg")

    # a one-bin pyhf control region measuring the same background normalisation
    cr_model = pyhf.Model({
        "channels": [{"name": "CR", "samples": [{
            "name": "bkg", "data": [2000.0],
            "modifiers": [{"name": "mu_bkg", "type": "normfactor", "data": None}],
        }]}],
        "parameters": [{"name": "mu_bkg", "bounds": [[0.0, 5.0]], "inits": [1.0]}],
    }, poi_name=None)

    # pseudo-data: c = 0.6, jes = 0.5, mu_bkg = 1.1
    c_true, jes_true, mu_true = 0.6, 0.5, 1.1
    n_sig = rng.poisson(true_cross_section(c_true) * LUMI)
    n_bkg = rng.poisson(500 * mu_true)
    sig_events, _ = simulate_signal(n_sig, np.full(n_sig, c_true), np.full(n_sig, jes_true), rng)
    data = np.concatenate([sig_events, rng.choice(bkg_mc, n_bkg)[:, None]])
    cr_data = [float(rng.poisson(2000 * mu_true))]

    # 4.-5. the full likelihood: everything shares parameters by name
    signal = Component("signal", model, xsec * LUMI)
    bkg = Component("bkg", background, Yield.parameter("mu_bkg") * 500.0)
    cost = (ExtendedUnbinnedNLL(data, [signal, bkg])
            + PyhfCost(cr_model, cr_data)
            + NormalConstraint("jes", 0.0, 1.0))
    result = egmm.infer.fit(cost)
    print(result.minuit)
    for name in ("c", "jes", "mu_bkg"):
        print(f"{name:7s} = {result.values[name]:+.3f} ± {result.errors[name]:.3f}")

    # Minuit draws the fit as it does for iminuit's own costs: the mass spectrum with the
    # expected counts of signal and background (and the jes constraint; pyhf draws nothing)
    fig = plt.figure(figsize=(9, 4))
    result.minuit.visualize()
    fig.savefig(out / "fit_m.png", dpi=120)
    plt.close(fig)

    scan = egmm.infer.profile(cost, "c", np.linspace(-1.0, 1.5, 11 if fast else 51))
    lo, hi = scan.interval(0.6827)
    print(f"c ∈ [{lo:.3f}, {hi:.3f}] at 68.27% CL (profiled over jes, mu_bkg)")

    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(scan.grid, scan.delta, color="C0", label="profile, jes and mu_bkg free")
    for cl, style in ((0.6827, "--"), (0.9545, ":")):
        ax.axhline(egmm.infer.wilks_threshold(cl, 1), color="gray", ls=style,
                   label=f"{cl:.2%} (Wilks, 1 dof)")
    ax.axvline(c_true, color="k", lw=0.8, label="true c")
    ax.set_xlabel("c")
    ax.set_ylabel(r"$\Delta(-2\ln L)$")
    ax.set_ylim(0, 8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "profile_c.png", dpi=120)
    plt.close(fig)
    return {"values": result.values, "errors": result.errors, "valid": result.valid,
            "interval": (lo, hi), "c_true": c_true}


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--out", type=Path, default=Path("tutorial-01-output"))
    args = ap.parse_args()
    main(fast=args.fast, out=args.out)
