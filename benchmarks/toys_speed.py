"""Toys per second of one toy-based CLs hypothesis test: egmm, a hand-written iminuit loop, pyhf.

The model: m ∈ [100, 160] GeV, a Gaussian resonance (125 GeV, width 2 GeV, truncated to the
range) with yield μ · 20 on an exponential background (slope 0.05/GeV, fixed) whose yield n_bkg
has a Gaussian auxiliary measurement 1000 ± 50. The test: CLs of μ = 1 (≈ 0.1 on these data)
with q̃_μ from ``--ntoys`` signal-plus-background and ``--ntoys`` background-only toys, the
nuisance parameter at its conditional MLE on the observed data (the LHC convention), each toy
fitted twice (μ free with μ ≥ 0, and μ fixed). Implementations:

* ``egmm serial, batched fits``: the same with ``batched=True`` (the toys' fits done by
  ``fit_batched``, 64 toys at a time);
* ``egmm serial`` / ``egmm process pool``: ``egmm.infer.hypotest(calctype="toybased")`` on an
  ``ExtendedUnbinnedNLL`` of two ``TorchDensity`` pdfs + ``iminuit.cost.NormalConstraint``
  (log p cached: the shapes have no parameters), in this process or on ``--workers``
  processes (a warm pool: its start-up is timed separately);
* ``egmm serial, finite-difference HESSE``: the same with the cost's exact Hessian switched
  off (``hessian=False``): Minuit seeds MIGRAD and runs HESSE by finite differences, as
  before egmm gave Minuit the exact Hessian;
* ``iminuit loop``: the same statistic written out by hand with iminuit's own
  ``ExtendedUnbinnedNLL`` over scipy.stats pdfs (evaluated once per toy, as egmm caches its
  fixed shapes), the same number of toys, the same Minuit settings (strategy 0, tol 1e-3),
  Minuit's numerical derivatives (egmm gives Minuit the gradient and the exact Hessian);
* ``egmm serial, binned``: egmm's toys on that binned pyhf model (``PyhfCost``): the same
  model as the pyhf row, egmm's toy machinery and iminuit's fits;
* ``pyhf``: pyhf's ``ToyCalculator`` on the *binned* equivalent (30 bins of 2 GeV; the
  background normalisation a ``histosys`` ±5 % with a unit-Gaussian constraint, i.e. exactly
  n_bkg ~ N(1000, 50)), numpy backend and scipy optimiser. With numpy ≥ 2.4,
  ``pyhf.infer.hypotest(calctype="toybased")`` of pyhf 0.7.6 raises in its expected-CLs
  percentile (numpy removed ``percentile(interpolation=...)``); the exception is recorded and
  the calculator's ``distributions`` + ``pvalues`` (all of the toy work) are timed instead;
* ``zfit + hepstats``: hepstats' ``FrequentistCalculator`` on the same *unbinned* model written
  in zfit (``Gauss`` and ``Exponential`` normalised on [100, 160], the signal yield a
  ``ComposedParameter`` 20 · μ, a ``GaussianConstraint`` on n_bkg), zfit's Minuit minimiser in
  mode (strategy) 0 at its default tolerance, TensorFlow on one thread:
  ``calculator.pvalue(qtilde=True)`` (the observed q̃_μ, the s+b and b-only toys, their fits,
  the p-values) with ``--zfit-ntoys`` toys per hypothesis (default 100: it runs ~50× slower),
  after an untimed warm-up of 5 toys each (TensorFlow traces its graphs on the first fits).
  Optional: zfit pulls in TensorFlow, so neither is a dependency of egmm; without them the
  row records that it was skipped. ``pip install zfit hepstats`` (a separate environment is
  wise) to run it.

Each row reports toys/s = 2 · (its toys per hypothesis) / wall seconds and the observed CLs
(all should agree within the toys' errors, the binned one up to binning). The rows compared
in the goals table — egmm serial, egmm batched, pyhf — run in ``--rounds`` interleaved rounds
(default 3, the order reversed every other round) after an untimed warm-up of 20 toys each:
their seconds are the median round's, and each round's own egmm / pyhf ratio is stored
(``paired_ratios``) with its median, since this VM's speed drifts by more than the margin
between them from one row to the next. Results:
``benchmarks/results/toys_speed.json`` with the machine. Times depend on the machine and its
load; nothing here passes or fails on them.

    python benchmarks/toys_speed.py --ntoys 500 --workers 2
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hist
import iminuit
import numpy as np
import pyhf
import scipy
import torch
from iminuit import Minuit
from iminuit.cost import ExtendedUnbinnedNLL as IminuitExtendedUnbinnedNLL
from iminuit.cost import NormalConstraint
from scipy import stats

import egmm
from egmm import Component, ExtendedUnbinnedNLL, Observable, ObservableSpace, TorchDensity, Yield

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from _common import cpu_model, load_average, usable_cpus, write_json

RESULTS = Path(__file__).parent / "results"
M_LO, M_HI = 100.0, 160.0
PEAK, WIDTH = 125.0, 2.0
SIGNAL_EVENTS = 20.0
BKG_EVENTS, BKG_ERROR = 1000.0, 50.0
SLOPE = 0.05
MU_TEST = 1.0
N_BINS = 30
MU_LIMITS = (0.0, 10.0)
STRATEGY, TOL = 0, 1e-3  # egmm's toy fits: strategy 0, EDM < 0.002 · tol

SPACE = ObservableSpace([Observable("m", M_LO, M_HI, unit="GeV")])
_SIGNAL = stats.truncnorm((M_LO - PEAK) / WIDTH, (M_HI - PEAK) / WIDTH, PEAK, WIDTH)
_BACKGROUND = stats.truncexpon(SLOPE * (M_HI - M_LO), M_LO, 1.0 / SLOPE)


# -- the model, egmm ---------------------------------------------------------------------------
def signal_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log pdf of the truncated Gaussian resonance, (N,)."""
    return torch.as_tensor(_SIGNAL.logpdf(x[:, 0].numpy()), dtype=x.dtype)


def background_log_prob(x: torch.Tensor) -> torch.Tensor:
    """log pdf of the truncated exponential background, (N,)."""
    return torch.as_tensor(_BACKGROUND.logpdf(x[:, 0].numpy()), dtype=x.dtype)


def signal_sampler(n: int, theta: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    return _SIGNAL.rvs(size=n, random_state=rng)[:, None]


def background_sampler(n: int, theta: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    return _BACKGROUND.rvs(size=n, random_state=rng)[:, None]


def mu_yield(mu: torch.Tensor) -> torch.Tensor:
    return SIGNAL_EVENTS * mu


def egmm_cost(data: np.ndarray, hessian: bool | None = None) -> Any:
    """−2 ln L: egmm's extended unbinned likelihood + the auxiliary measurement (``hessian``:
    the cost's exact-Hessian switch; by default on, the yields being smooth)."""
    sig = TorchDensity(SPACE, signal_log_prob, sampler=signal_sampler, name="resonance")
    bkg = TorchDensity(SPACE, background_log_prob, sampler=background_sampler, name="expo")
    comps = [Component("signal", sig, Yield.from_callable(mu_yield, ("mu",),
                                                          {"mu": MU_LIMITS})),
             Component("background", bkg, "n_bkg")]
    return (ExtendedUnbinnedNLL(data, comps, hessian=hessian)
            + NormalConstraint("n_bkg", BKG_EVENTS, BKG_ERROR))


def observed_data(seed: int) -> np.ndarray:
    """The 'observed' events: background only, (N,)."""
    rng = np.random.default_rng(seed)
    return _BACKGROUND.rvs(size=rng.poisson(BKG_EVENTS), random_state=rng)


def run_egmm(cost: Any, ntoys: int, seed: int, executor: Any, batched: bool = False
             ) -> dict[str, Any]:
    start = time.perf_counter()
    cls, (clsb, clb), calc = egmm.infer.hypotest(
        MU_TEST, cost, "mu", calctype="toybased", ntoys=ntoys, seed=seed, executor=executor,
        track_progress=False, return_tail_probs=True, return_calculator=True,
        batched=batched)
    seconds = time.perf_counter() - start
    failed = sum(t.n_failed for t in calc.toys.values())
    return {"seconds": seconds, "cls": cls, "clsb": clsb, "clb": clb, "failed_toys": failed}


# -- the same by hand with iminuit --------------------------------------------------------------
def density_of(x: np.ndarray) -> Callable[..., tuple[float, np.ndarray]]:
    """The (total yield, expected event density) function of iminuit's ExtendedUnbinnedNLL
    on the events ``x``: the two pdfs are evaluated once per dataset (scipy.stats' pdf calls
    cost ~90× the arithmetic per fit call), as egmm caches its fixed shapes' log densities."""
    ps, pb = _SIGNAL.pdf(x), _BACKGROUND.pdf(x)

    def density(_: np.ndarray, mu: float, n_bkg: float) -> tuple[float, np.ndarray]:
        ns = SIGNAL_EVENTS * mu
        return ns + n_bkg, ns * ps + n_bkg * pb

    return density


def iminuit_fit(x: np.ndarray, aux: float, start: dict[str, float], fix_mu: float | None,
                density: Callable[..., Any] | None = None) -> tuple[float, float]:
    """(−2 ln L at the minimum, μ̂) with μ free in [0, 10] or fixed at ``fix_mu``."""
    density = density or density_of(x)
    cost = IminuitExtendedUnbinnedNLL(x, density) + NormalConstraint("n_bkg", aux, BKG_ERROR)
    m = Minuit(cost, mu=start["mu"] if fix_mu is None else fix_mu, n_bkg=start["n_bkg"])
    m.limits["mu"] = MU_LIMITS
    m.limits["n_bkg"] = (0.0, None)
    m.strategy, m.tol = STRATEGY, TOL
    if fix_mu is not None:
        m.fixed["mu"] = True
    m.migrad()
    return float(m.fval), float(m.values["mu"])


def qmu_tilde(x: np.ndarray, aux: float, mu: float, start: dict[str, float]) -> float:
    """q̃_μ (Cowan et al. 2011, Eq. 16) with μ̂ ≥ 0 from the μ limits."""
    density = density_of(x)
    f_free, muhat = iminuit_fit(x, aux, start, None, density)
    f_fixed, _ = iminuit_fit(x, aux, start, mu, density)
    return 0.0 if muhat > mu else max(f_fixed - f_free, 0.0)


def run_iminuit(data: np.ndarray, ntoys: int, seed: int) -> dict[str, Any]:
    start = time.perf_counter()
    # nuisance at its conditional MLE on the data, for μ = MU_TEST (s+b) and μ = 0 (b-only)
    pars = {}
    for mu in (MU_TEST, 0.0):
        cost = IminuitExtendedUnbinnedNLL(data, density_of(data)) + NormalConstraint(
            "n_bkg", BKG_EVENTS, BKG_ERROR)
        m = Minuit(cost, mu=mu, n_bkg=BKG_EVENTS)
        m.fixed["mu"] = True
        m.migrad()
        pars[mu] = {"mu": mu, "n_bkg": float(m.values["n_bkg"])}
    q_obs = qmu_tilde(data, BKG_EVENTS, MU_TEST, pars[0.0])
    rng = np.random.default_rng(seed)
    q = {}
    for mu in (MU_TEST, 0.0):
        values = []
        for _ in range(ntoys):
            ns = rng.poisson(SIGNAL_EVENTS * mu)
            nb = rng.poisson(pars[mu]["n_bkg"])
            x = np.concatenate([_SIGNAL.rvs(size=ns, random_state=rng),
                                _BACKGROUND.rvs(size=nb, random_state=rng)])
            aux = rng.normal(pars[mu]["n_bkg"], BKG_ERROR)
            values.append(qmu_tilde(x, aux, MU_TEST, pars[mu]))
        q[mu] = np.array(values)
    clsb, clb = float(np.mean(q[MU_TEST] >= q_obs)), float(np.mean(q[0.0] >= q_obs))
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cls": clsb / clb, "clsb": clsb, "clb": clb, "failed_toys": 0}


# -- pyhf on the binned equivalent --------------------------------------------------------------
def pyhf_model_and_data(data: np.ndarray) -> tuple[Any, list[float]]:
    axis = hist.axis.Regular(N_BINS, M_LO, M_HI, name="m")
    counts = hist.Hist(axis).fill(data).values()
    edges = axis.edges
    sig = SIGNAL_EVENTS * np.diff(_SIGNAL.cdf(edges))
    bkg = BKG_EVENTS * np.diff(_BACKGROUND.cdf(edges))
    rel = BKG_ERROR / BKG_EVENTS
    spec = {"channels": [{"name": "sr", "samples": [
        {"name": "signal", "data": sig.tolist(),
         "modifiers": [{"name": "mu", "type": "normfactor", "data": None}]},
        {"name": "background", "data": bkg.tolist(),
         "modifiers": [{"name": "bkg_norm", "type": "histosys",  # linear: b(1 + 0.05 α)
                        "data": {"hi_data": (bkg * (1 + rel)).tolist(),
                                 "lo_data": (bkg * (1 - rel)).tolist()}}]}]}],
        "parameters": [{"name": "mu", "bounds": [list(MU_LIMITS)]}]}
    model = pyhf.Model(spec, poi_name="mu")
    return model, counts.tolist() + model.config.auxdata


def run_pyhf(data: np.ndarray, ntoys: int, seed: int, hypotest: bool = True
             ) -> dict[str, Any]:
    """pyhf's toy-based CLs; ``hypotest=False``: its ToyCalculator directly (what is timed
    where ``pyhf.infer.hypotest`` raised once)."""
    pyhf.set_backend("numpy", "scipy")
    model, obs = pyhf_model_and_data(data)
    out: dict[str, Any] = {}
    if hypotest:
        np.random.seed(seed)  # noqa: NPY002 (pyhf's toys draw from numpy's global state)
        start = time.perf_counter()
        try:
            cls, (clsb, clb) = pyhf.infer.hypotest(MU_TEST, obs, model, calctype="toybased",
                                                   ntoys=ntoys, test_stat="qtilde",
                                                   return_tail_probs=True,
                                                   track_progress=False)
            out.update(seconds=time.perf_counter() - start, cls=float(cls), clsb=float(clsb),
                       clb=float(clb), what="pyhf.infer.hypotest")
            return out
        except Exception as exc:  # pyhf 0.7.6 + numpy ≥ 2.4: recorded, then the calculator
            out["hypotest_error"] = "".join(traceback.format_exception_only(exc)).strip()
    np.random.seed(seed)  # noqa: NPY002
    start = time.perf_counter()
    calc = pyhf.infer.calculators.ToyCalculator(obs, model, test_stat="qtilde", ntoys=ntoys,
                                                track_progress=False)
    q_obs = calc.teststatistic(MU_TEST)
    sb, b = calc.distributions(MU_TEST)
    clsb, clb, cls = calc.pvalues(q_obs, sb, b)
    out.update(seconds=time.perf_counter() - start, cls=float(cls), clsb=float(clsb),
               clb=float(clb), what="ToyCalculator.distributions + pvalues")
    return out


# -- zfit + hepstats on the unbinned model (optional) -------------------------------------------
def run_zfit(data: np.ndarray, ntoys: int, seed: int) -> dict[str, Any]:
    """hepstats' FrequentistCalculator with a zfit model: ``{"skipped": why}`` without them."""
    try:
        import tensorflow as tf
    except ImportError as exc:
        return {"skipped": f"not installed ({exc.name}); pip install zfit hepstats"}
    try:  # one thread, as the egmm rows; only possible before TensorFlow's first operation
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:
        pass
    try:
        import hepstats
        import zfit
        from hepstats.hypotests.calculators import FrequentistCalculator
        from hepstats.hypotests.parameters import POI, POIarray
    except ImportError as exc:
        return {"skipped": f"not installed ({exc.name}); pip install zfit hepstats"}
    zfit.settings.set_seed(seed)
    obs = zfit.Space("m", limits=(M_LO, M_HI))
    mu = zfit.Parameter("mu", MU_TEST, *MU_LIMITS)
    n_bkg = zfit.Parameter("n_bkg", BKG_EVENTS, 0.0, 5.0 * BKG_EVENTS)
    n_sig = zfit.ComposedParameter("n_sig", lambda mu: SIGNAL_EVENTS * mu, params={"mu": mu})
    model = zfit.pdf.SumPDF([
        zfit.pdf.Gauss(mu=PEAK, sigma=WIDTH, obs=obs, extended=n_sig),
        zfit.pdf.Exponential(lam=-SLOPE, obs=obs, extended=n_bkg)])
    loss = zfit.loss.ExtendedUnbinnedNLL(
        model=model, data=zfit.Data.from_numpy(obs=obs, array=data[:, None]),
        constraints=zfit.constraint.GaussianConstraint(params=n_bkg, observation=BKG_EVENTS,
                                                       uncertainty=BKG_ERROR))
    minimizer = zfit.minimize.Minuit(mode=STRATEGY)
    poinull, poialt = POIarray(mu, [MU_TEST]), POI(mu, 0.0)

    def pvalues(n: int) -> tuple[float, float]:
        calc = FrequentistCalculator(loss, minimizer, ntoysnull=n, ntoysalt=n)
        pnull, palt = calc.pvalue(poinull=poinull, poialt=poialt, qtilde=True, onesided=True)
        return float(np.asarray(pnull).ravel()[0]), float(np.asarray(palt).ravel()[0])

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # hepstats' progress bars
            start = time.perf_counter()
            pvalues(5)
            warmup = time.perf_counter() - start
            start = time.perf_counter()
            clsb, clb = pvalues(ntoys)
            seconds = time.perf_counter() - start
    except Exception as exc:  # another zfit/hepstats API: recorded, the other rows kept
        why = "".join(traceback.format_exception_only(exc)).strip()
        return {"skipped": f"zfit {zfit.__version__} / hepstats {hepstats.__version__} "
                           f"failed: {why}"}
    return {"seconds": seconds, "cls": clsb / clb if clb > 0 else math.nan,
            "clsb": clsb, "clb": clb, "ntoys_per_hypothesis": ntoys,
            "warmup_seconds": warmup,
            "versions": {"zfit": zfit.__version__, "hepstats": hepstats.__version__,
                         "tensorflow": tf.__version__}}


# -- driver -----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": cpu_model(), "usable_cpus": usable_cpus(),
            "load_average_at_start": load_average(),
            "versions": {"egmm": egmm.__version__, "torch": torch.__version__,
                         "numpy": np.__version__, "scipy": scipy.__version__,
                         "iminuit": iminuit.__version__, "pyhf": pyhf.__version__}}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ntoys", type=int, default=500, help="toys per hypothesis (500)")
    ap.add_argument("--workers", type=int, default=2, help="processes of the egmm pool (2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--skip", default="", help="comma-separated rows to skip: "
                    "egmm-serial, egmm-serial-fd, egmm-batched, egmm-pool, iminuit, "
                    "egmm-binned, pyhf, zfit")
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds of the egmm serial, batched and pyhf rows (3)")
    ap.add_argument("--zfit-ntoys", type=int, default=100,
                    help="toys per hypothesis of the zfit + hepstats row (100)")
    ap.add_argument("--out", type=Path, default=RESULTS / "toys_speed.json")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, got {args.rounds}")
    torch.set_num_threads(1)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    info = machine()
    data = observed_data(args.seed)
    print(f"{len(data)} observed events; CLs of μ = {MU_TEST} with q̃_μ, {args.ntoys} s+b and "
          f"{args.ntoys} b-only toys; load average {info['load_average_at_start']}")
    rows: dict[str, dict[str, Any]] = {}
    cost = egmm_cost(data[:, None])
    pyhf_name = f"pyhf {pyhf.__version__} ToyCalculator (binned)"
    # egmm in one process (Minuit loop, batched fits) and pyhf in interleaved rounds: on a
    # shared machine whose speed drifts between rows, each round's own ratio is the fair one
    paired = {"egmm-serial": ("egmm serial",
                              lambda: run_egmm(cost, args.ntoys, args.seed, "serial")),
              "egmm-batched": ("egmm serial, batched fits",
                               lambda: run_egmm(cost, args.ntoys, args.seed, "serial",
                                                batched=True)),
              "pyhf": (pyhf_name, lambda: run_pyhf(
                  data, args.ntoys, args.seed,
                  hypotest="hypotest_error" not in rows.get(pyhf_name, {})))}
    paired = {k: v for k, v in paired.items() if k not in skip}
    times: dict[str, list[float]] = {name: [] for name, _ in paired.values()}
    # untimed warm-up of each (first fits, first pyhf calls): 20 toys per hypothesis
    for key, batched in (("egmm-serial", False), ("egmm-batched", True)):
        if key in paired:
            run_egmm(cost, 20, args.seed + 1, "serial", batched=batched)
    if "pyhf" in paired:
        run_pyhf(data, 20, args.seed + 1, hypotest=False)
    for r in range(args.rounds):
        for name, run in (list(paired.values()) if r % 2 == 0
                          else list(paired.values())[::-1]):
            row = run()
            rows.setdefault(name, row)
            times[name].append(row["seconds"])
    for name, seconds in times.items():
        rows[name] = {**rows[name], "seconds": statistics.median(seconds),
                      "seconds_rounds": seconds}
    ratios = {}
    if pyhf_name in times:
        for name, label in (("egmm serial", "egmm serial / pyhf"),
                            ("egmm serial, batched fits", "batched / pyhf")):
            if name in times:
                each = [b / a for a, b in zip(times[name], times[pyhf_name])]
                ratios[label] = {"rounds": each, "median": statistics.median(each)}
    if "egmm-serial-fd" not in skip:
        rows["egmm serial, finite-difference HESSE"] = run_egmm(
            egmm_cost(data[:, None], hessian=False), args.ntoys, args.seed, "serial")
    if "egmm-pool" not in skip:
        t0 = time.perf_counter()
        with egmm.infer.local_executor(args.workers) as pool:
            # start the workers (and their torch import) before timing: a warm pool
            list(pool.map(abs, range(args.workers)))
            startup = time.perf_counter() - t0
            row = run_egmm(cost, args.ntoys, args.seed, pool)
        rows[f"egmm process pool ({args.workers} workers)"] = {**row,
                                                               "pool_startup_seconds": startup}
    if "iminuit" not in skip:
        rows["iminuit loop (unbinned, scipy pdfs)"] = run_iminuit(data, args.ntoys, args.seed)
    if "egmm-binned" not in skip:
        pyhf.set_backend("numpy")
        rows["egmm serial, binned (PyhfCost)"] = run_egmm(
            egmm.PyhfCost(*pyhf_model_and_data(data)), args.ntoys, args.seed, "serial")
    if "zfit" not in skip:
        row = run_zfit(data, args.zfit_ntoys, args.seed)
        versions = row.get("versions", {})
        name = (f"zfit {versions['zfit']} + hepstats {versions['hepstats']} (unbinned)"
                if versions else "zfit + hepstats (unbinned)")
        rows[name] = row
    print(f"\n{'implementation':44s} {'seconds':>8s} {'toys/s':>8s} {'CLs':>7s}  ± (binomial)")
    for name, r in rows.items():
        if "skipped" in r:
            print(f"{name:44s} skipped: {r['skipped']}")
            continue
        n = r.setdefault("ntoys_per_hypothesis", args.ntoys)
        r["toys_per_second"] = 2 * n / r["seconds"]
        clsb, clb = r["clsb"], r["clb"]
        r["cls_error"] = (clsb / clb * math.sqrt((1 - clsb) / (max(clsb, 1e-12) * n)
                                                  + (1 - clb) / (clb * n))
                          if clb > 0 else math.nan)
        print(f"{name:44s} {r['seconds']:8.1f} {r['toys_per_second']:8.1f} "
              f"{r['cls']:7.4f}  {r['cls_error']:.4f}")
        if "hypotest_error" in r:
            print(f"    pyhf.infer.hypotest raised: {r['hypotest_error']}\n"
                  f"    (timed: {r['what']})")
    for label, ratio in ratios.items():
        print(f"{label}: toys/s ratio {ratio['median']:.2f} (median of {args.rounds} "
              f"interleaved rounds: {', '.join(f'{v:.2f}' for v in ratio['rounds'])})")
    info["load_average_at_end"] = load_average()
    result = {"machine": info, "settings": {"ntoys_per_hypothesis": args.ntoys,
                                            "mu_test": MU_TEST, "test_stat": "qtilde",
                                            "workers": args.workers, "seed": args.seed,
                                            "n_observed": len(data), "pyhf_bins": N_BINS,
                                            "zfit_ntoys_per_hypothesis": args.zfit_ntoys,
                                            "rounds": args.rounds},
              "rows": rows, "paired_ratios": ratios}
    write_json(args.out, result)
    print(f"\n{args.out}")
    return result


if __name__ == "__main__":
    main()
