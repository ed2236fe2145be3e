"""Toy fits per second: vectorised fits of many toys (egmm.infer.fit_batched) against the plain
loop of one Minuit fit per toy (egmm.infer.fit), in the same process, on the same toys.

Two models, K toys of about N events each, every fit started at the generation point (as toy
studies do, e.g. egmm.infer.toy_teststats):

* ``analytic``: a Gaussian peak (μ, σ free) on a flat background, extended, free yields
  (ν_sig = N/4, ν_bkg = 3N/4) and a 5 % Gaussian constraint on ν_bkg;
* ``gmm``: a GMMDensity of the paper-toy size (Table 6 defaults, θ = (cx, cy) on [−1.5, 1.5]²)
  as an UnbinnedNLL of N events; ``benchmarks/results/paper_toy_gmm.egmm`` if it exists,
  otherwise one trained here briefly (a rough model: fine for timing, its likelihood is
  rougher than a well-trained one's). Toys are drawn from the model itself at (0.3, −0.2)
  (``--gmm-truth``).

Reported per model: toys/s of the batched fit alone (``validate=False``: BHHH errors; its
Newton steps with float32 network bodies, the default, and float64 throughout,
``float32_steps=False``), of the batched fit with a MIGRAD validation per toy
(``validate=True``), and of three Minuit loops (``LOOPS``): the plain loop, MIGRAD at
iminuit's defaults (strategy 1) per toy, which the speed-up goal compares with; MIGRAD + HESSE
(egmm.infer.fit's default, for HESSE errors); and MIGRAD at strategy 0, the fastest (both
without HESSE give values and MIGRAD's own errors, like the batched fit's curvature errors);
the speed-ups. All at the same precision: the batched stage stops at MIGRAD's EDM goal for the
loops' tolerance (fit_batched's default: 2e-4 for iminuit's default tol 0.1; the t_mu toys use
the toy calculators' tol 1e-3, so 2e-6 on both sides); the batched fit at a far tighter goal
(1e-7, fit_batched's earlier default) is timed too, for its cost; Newton iterations,
fallbacks, Minuit calls; and how the minima compare (|Δθ|/σ and Δ(−2 ln L) = batched −
plain). Times are wall-clock with one torch thread (``--threads``); never a pass/fail
criterion. After a warm-up of all, the batched fit (``validate=False``) and the Minuit loops
are measured in alternation — five batched runs of all toys, each followed by a fifth of every
loop's toys (in rotating order) — so that all sample the same stretch of the machine's speed;
the batched rate is the median run's (all five stored), a loop's its toys over its total
time; and each round's own ratio (its batched run against a loop's toys right after it) is
stored, with their median (``loops.<loop>.speedup_paired_median``;
``speedup.batched_paired_median`` for the plain loop), which a slow spell in one round moves
least.

Results go to ``benchmarks/results/toys_vectorised.json`` (written atomically).

    python benchmarks/toys_vectorised.py --toys 200 --events 400
    python benchmarks/toys_vectorised.py --models gmm --reference-toys 50
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import iminuit
import numpy as np
import torch
from iminuit.cost import CostSum, NormalConstraint
from scipy import stats

from egmm import GMMDensity, LatentProjection, train
from egmm.groundtruth import PaperToy
from egmm.infer import fit, fit_batched, sample_toy, toy_seed
from egmm.infer.batched import _FLOAT32_FINEST
from egmm.likelihood import Component, ExtendedUnbinnedNLL, TorchDensity, UnbinnedNLL
from egmm.observables import Observable, ObservableSpace

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from _common import machine_info, write_json

RESULTS = Path(__file__).parent / "results"
MINUIT_TOL = 0.1             # iminuit's default, that of the plain loop's egmm.infer.fit
EDM_GOAL = 0.002 * MINUIT_TOL  # MIGRAD's goal, and fit_batched's default decrement goal
TIGHT_TOL = 1e-7
ROUNDS = 5                   # batched runs, each followed by a fifth of the Minuit loops
# The Minuit loops, each one egmm.infer.fit per toy (MIGRAD with the cost's torch gradient,
# from the generation point). "plain_minuit" is the plain loop the goal compares with:
# MIGRAD at iminuit's defaults (strategy 1), values and MIGRAD's errors, as the batched fit
# gives values and its curvature's errors. Beside it the loop with HESSE errors (egmm.infer.
# fit's default: ~27 more calls per toy) and the fastest MIGRAD (strategy 0, as the toy
# calculators run it).
LOOPS = {"plain_minuit": {"hesse": False},
         "minuit_hesse": {"hesse": True},
         "minuit_strategy0": {"hesse": False, "strategy": 0}}
LOOP_LABELS = {"plain_minuit": "MIGRAD (strategy 1)",
               "minuit_hesse": "MIGRAD + HESSE",
               "minuit_strategy0": "MIGRAD, strategy 0"}
LO, HI = 0.0, 10.0


# -- models ------------------------------------------------------------------------------------
def _gauss_log_prob(x: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    z = (x[:, 0] - mu) / sigma
    norm = torch.special.ndtr((HI - mu) / sigma) - torch.special.ndtr((LO - mu) / sigma)
    return -0.5 * z**2 - torch.log(sigma) - 0.5 * math.log(2 * math.pi) - torch.log(norm)


def _gauss_sampler(n: int, theta: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    mu, s = theta["mu"], theta["sigma"]
    return stats.truncnorm.rvs((LO - mu) / s, (HI - mu) / s, loc=mu, scale=s, size=(n, 1),
                               random_state=rng)


def _flat_log_prob(x: torch.Tensor) -> torch.Tensor:
    return torch.full((len(x),), -math.log(HI - LO), dtype=x.dtype)


def _flat_sampler(n: int, theta: dict[str, float], rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(LO, HI, size=(n, 1))


def analytic_model(events: int) -> tuple[Any, dict[str, float], str]:
    space = ObservableSpace([Observable("x", LO, HI)])
    sig = TorchDensity(space, _gauss_log_prob, ("mu", "sigma"),
                       {"mu": (2.0, 8.0), "sigma": (0.2, 3.0)}, _gauss_sampler, name="gauss")
    bkg = TorchDensity(space, _flat_log_prob, sampler=_flat_sampler, name="flat")
    n_bkg = 0.75 * events
    nll = ExtendedUnbinnedNLL(np.array([[5.0]]), [Component("sig", sig, "n_sig"),
                                                  Component("bkg", bkg, "n_bkg")])
    cost = nll + NormalConstraint("n_bkg", n_bkg, 0.05 * n_bkg)
    truth = {"mu": 5.0, "sigma": 0.5, "n_sig": 0.25 * events, "n_bkg": n_bkg}
    return cost, truth, "Gaussian (μ, σ) on flat, extended, free yields, constraint on n_bkg"


def gmm_model(events: int, seed: int, path: Path = RESULTS / "paper_toy_gmm.egmm",
              truth: tuple[float, float] = (0.3, -0.2)) -> tuple[Any, dict[str, float], str]:
    toy = PaperToy()
    if path.exists():
        model = GMMDensity.load(path)
        origin = f"loaded {path.name}"
    else:
        x, th = toy.training_data(toy.GRID_49, 300, seed=seed)
        proj = LatentProjection.fit(toy.space, x)
        torch.manual_seed(seed)
        model = GMMDensity(toy.space, ["cx", "cy"], proj,
                           parameter_bounds={"cx": (-1.5, 1.5), "cy": (-1.5, 1.5)})
        start = time.perf_counter()
        train(model, x, th, max_epochs=4, batch_size=500, progress=False, seed=seed)
        origin = (f"trained here: 49 grid points x 300 events, 4 epochs "
                  f"({time.perf_counter() - start:.0f} s)")
    cost = UnbinnedNLL(toy.sample(events, 0.0, 0.0, seed=seed), model)
    description = (f"paper-toy GMMDensity ({model.config['activation']}), weights "
                   f"{model.n_weights()}, {origin}, toys at (cx, cy) = ({truth[0]:g}, "
                   f"{truth[1]:g})")
    return cost, {"cx": truth[0], "cy": truth[1]}, description


# -- measurement -------------------------------------------------------------------------------
def _quantiles(values: np.ndarray) -> dict[str, float]:
    values = values[np.isfinite(values)]
    if not len(values):
        return {}
    q = np.quantile(values, [0.0, 0.5, 0.9, 1.0])
    return {"min": float(q[0]), "median": float(q[1]), "q90": float(q[2]), "max": float(q[3])}


def measure(name: str, cost: Any, truth: dict[str, float], description: str, n_toys: int,
            n_reference: int, seed: int) -> dict[str, Any]:
    costs = [sample_toy(cost, truth, toy_seed(seed, k)) for k in range(n_toys)]
    events = np.array([sum(getattr(item, "n_events", 0) for item in
                           (list(c) if isinstance(c, CostSum) else [c])) for c in costs])
    print(f"[{name}] {description}: {n_toys} toys, {events.mean():.0f} events on average",
          flush=True)

    # warm-up (first calls build caches), then the batched fit and the Minuit loop measured
    # in alternation: ROUNDS batched runs of all toys, each followed by a part of the loop,
    # so that both sample the same stretch of the machine's speed (a VM's drifts by ±30 %
    # within minutes); batched: the median run, the loop: all its toys over its total time;
    # and each round's own ratio (its batched run against the loop toys right after it),
    # whose median a slow spell in one round moves least
    fit_batched(costs[:4], truth, validate=False)
    for options in LOOPS.values():
        fit(costs[0], truth, **options)
    batched_runs: list[float] = []
    loops: dict[str, list[Any]] = {k: [] for k in LOOPS}
    t_loops = dict.fromkeys(LOOPS, 0.0)
    paired: dict[str, list[float]] = {k: [] for k in LOOPS}
    for r, segment in enumerate(np.array_split(np.arange(n_reference),
                                               max(1, min(ROUNDS, n_reference)))):
        start = time.perf_counter()
        batched = fit_batched(costs, truth, validate=False)
        batched_runs.append(time.perf_counter() - start)
        order = list(LOOPS)
        order = order[r % len(order):] + order[:r % len(order)]  # no loop always first
        for key in order:
            start = time.perf_counter()
            loops[key] += [fit(costs[k], truth, **LOOPS[key]) for k in segment]
            t_segment = time.perf_counter() - start
            t_loops[key] += t_segment
            paired[key].append((n_toys / batched_runs[-1]) / (len(segment) / t_segment))
        print(f"[{name}] batched: {batched_runs[-1]:.2f} s; Minuit loops, toys "
              f"{segment[0]}-{segment[-1]}: "
              + ", ".join(f"{k} {t_loops[k]:.2f} s" for k in LOOPS), flush=True)
    plain, t_plain = loops["plain_minuit"], t_loops["plain_minuit"]
    t_batched = statistics.median(batched_runs)

    start = time.perf_counter()
    all64 = fit_batched(costs, truth, validate=False, float32_steps=False)
    t_all64 = time.perf_counter() - start
    print(f"[{name}] batched, float64 throughout: {t_all64:.2f} s", flush=True)

    start = time.perf_counter()
    tight = fit_batched(costs, truth, validate=False, tol=TIGHT_TOL)
    t_tight = time.perf_counter() - start
    print(f"[{name}] batched at tol {TIGHT_TOL:g}: {t_tight:.2f} s", flush=True)

    start = time.perf_counter()
    validated = fit_batched(costs, truth, validate=True)
    t_validated = time.perf_counter() - start
    print(f"[{name}] batched + MIGRAD validation: {t_validated:.2f} s", flush=True)

    print(f"[{name}] plain Minuit loop ({n_reference} toys): {t_plain:.2f} s", flush=True)

    names = batched.parameters
    ref_values = np.array([[r.values[n] for n in names] for r in plain])
    ref_errors = np.array([[r.errors[n] for n in names] for r in plain])
    ref_fval = np.array([r.fval for r in plain])
    with np.errstate(divide="ignore", invalid="ignore"):
        distance = np.abs(batched.values[:n_reference] - ref_values) / ref_errors
    delta_f = batched.fval[:n_reference] - ref_fval
    rates = {"batched": n_toys / t_batched, "batched_validated": n_toys / t_validated,
             "batched_tight": n_toys / t_tight, "batched_float64": n_toys / t_all64,
             **{k: n_reference / t_loops[k] for k in LOOPS}}
    return {
        "description": description,
        "toys": n_toys,
        "reference_toys": n_reference,
        "mean_events": float(events.mean()),
        "parameters": list(names),
        "truth": truth,
        "batched_runs_seconds": batched_runs,
        "speedup_paired_rounds": paired["plain_minuit"],
        "loops": {k: {"options": LOOPS[k], "label": LOOP_LABELS[k],
                      "seconds": t_loops[k], "toys_per_second": rates[k],
                      "speedup": rates["batched"] / rates[k],
                      "speedup_paired_rounds": paired[k],
                      "speedup_paired_median": statistics.median(paired[k]),
                      "calls_mean": float(np.mean([f.nfcn for f in loops[k]])),
                      "gradient_calls_mean": float(np.mean([f.ngrad for f in loops[k]])),
                      "valid": int(sum(f.valid for f in loops[k])),
                      "fval_batched_minus_loop": _quantiles(
                          batched.fval[:n_reference] - np.array([f.fval for f in loops[k]]))}
                  for k in LOOPS},
        "seconds": {"batched": t_batched, "batched_validated": t_validated,
                    "batched_tight": t_tight, "batched_float64": t_all64,
                    "plain_minuit": t_plain},
        "tolerances": {"batched_decrement_goal": EDM_GOAL, "plain_minuit_tol": MINUIT_TOL,
                       "plain_minuit_edm_goal": EDM_GOAL, "batched_tight": TIGHT_TOL},
        "toys_per_second": rates,
        "speedup": {"batched": rates["batched"] / rates["plain_minuit"],
                    "batched_paired_median": statistics.median(paired["plain_minuit"]),
                    "batched_validated": rates["batched_validated"] / rates["plain_minuit"],
                    "batched_tight": rates["batched_tight"] / rates["plain_minuit"],
                    "batched_float64": rates["batched_float64"] / rates["plain_minuit"]},
        "batched": {
            "converged": int(batched.converged.sum()),
            "fallback": int(batched.fallback.sum()),
            "newton_iterations": {"mean": float(batched.n_iter.mean()),
                                  "max": int(batched.n_iter.max())},
            "decrement": _quantiles(batched.decrement),
            "tight_newton_iterations": {"mean": float(tight.n_iter.mean()),
                                        "max": int(tight.n_iter.max())},
            "fval_minus_tight": _quantiles(batched.fval - tight.fval),
            "float64_newton_iterations": {"mean": float(all64.n_iter.mean()),
                                          "max": int(all64.n_iter.max())},
            "fval_minus_float64": _quantiles(batched.fval - all64.fval),
            "distance_to_float64_in_errors": _quantiles(
                np.max(np.abs(batched.values - all64.values) / all64.errors, axis=1)),
        },
        "validation": {
            "valid": int(validated.valid.sum()),
            "migrad_calls_mean": float(np.mean([r.nfcn for r in validated.fits
                                                if r is not None])),
            "fval_minuit_minus_batched": _quantiles(validated.minuit_fval - validated.fval),
        },
        "plain": {"valid": int(sum(r.valid for r in plain)),
                  "calls_mean": float(np.mean([r.nfcn for r in plain])),
                  "gradient_calls_mean": float(np.mean([r.ngrad for r in plain]))},
        "agreement": {
            "distance_in_errors": _quantiles(distance.max(axis=1)),
            "fval_batched_minus_plain": _quantiles(delta_f),
            "toys_within_1e-3_sigma_and_1e-6": int(np.sum((distance.max(axis=1) < 1e-3)
                                                          & (np.abs(delta_f) < 1e-6))),
            "toys_batched_lower_or_equal_within_1e-3": int(np.sum(delta_f <= 1e-3)),
        },
    }


def measure_teststat(cost: Any, truth: dict[str, float], n_toys: int, seed: int,
                     tol: float = 1e-3) -> dict[str, Any]:
    """t_μ (first parameter as the POI, at its true value) of ``n_toys`` toys through
    ``toy_teststats``: batched=True (fit_batched per batch) against the Minuit loop, same toys,
    both at Minuit tolerance ``tol`` (toy_teststats' default 1e-3: EDM goal 2e-6)."""
    from egmm.infer import toy_teststats

    poi = next(iter(truth))
    out: dict[str, Any] = {"poi": poi, "test_stat": "t", "toys": n_toys, "tol": tol}
    values = {}
    for mode in ("batched", "loop"):
        t0 = time.perf_counter()
        res = toy_teststats(cost, truth, poi, truth[poi], test_stat="t", ntoys=n_toys,
                            seed=seed, executor="serial", progress=False,
                            batched=mode == "batched", batch_size=min(n_toys, 64), tol=tol)
        wall = time.perf_counter() - t0
        values[mode] = res.values
        out[mode] = {"seconds": wall, "toys_per_second": n_toys / wall,
                     "failed": res.n_failed, "invalid": res.n_invalid}
    out["speedup"] = out["batched"]["toys_per_second"] / out["loop"]["toys_per_second"]
    diff = np.abs(values["batched"] - values["loop"])
    out["abs_difference_of_t"] = _quantiles(diff[np.isfinite(diff)])
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--toys", type=int, default=200)
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--models", default="analytic,gmm")
    parser.add_argument("--gmm-model", type=Path, default=RESULTS / "paper_toy_gmm.egmm",
                        help="the paper-toy model file of the gmm case (trained briefly here "
                             "if missing)")
    parser.add_argument("--gmm-truth", default="0.3,-0.2",
                        help="the gmm case's (cx, cy) where toys are drawn and fits start, "
                             "e.g. 0,0: the toy's cusp (default 0.3,-0.2)")
    parser.add_argument("--reference-toys", type=int, default=None,
                        help="toys fitted by the plain loop (default: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "toys_vectorised.json")
    parser.add_argument("--teststat-toys", type=int, default=64,
                        help="toys of the t_mu distribution, batched vs loop (0: skip)")
    parser.add_argument("--teststat-tols", default="0.001",
                        help="Minuit tolerances the t_mu toys are run at, comma-separated "
                             "(default 0.001, toy_teststats' default; 0.1 is iminuit's)")
    args = parser.parse_args(argv)
    try:
        tols = [float(t) for t in args.teststat_tols.split(",")]
    except ValueError:
        parser.error(f"--teststat-tols: numbers separated by commas, got {args.teststat_tols!r}")
    if not tols or any(not t > 0 for t in tols):
        parser.error(f"--teststat-tols must be positive, got {args.teststat_tols!r}")
    try:
        gmm_truth = tuple(float(v) for v in args.gmm_truth.split(","))
    except ValueError:
        gmm_truth = ()
    if len(gmm_truth) != 2 or not all(-1.5 <= v <= 1.5 for v in gmm_truth):
        parser.error(f"--gmm-truth: two numbers cx,cy in [-1.5, 1.5], got {args.gmm_truth!r}")
    torch.set_num_threads(args.threads)
    n_reference = min(args.reference_toys or args.toys, args.toys)

    results = {}
    for name in args.models.split(","):
        if name == "analytic":
            cost, truth, description = analytic_model(args.events)
        elif name == "gmm":
            cost, truth, description = gmm_model(args.events, args.seed, args.gmm_model,
                                                 gmm_truth)
        else:
            raise SystemExit(f"unknown model {name!r} (analytic, gmm)")
        results[name] = measure(name, cost, truth, description, args.toys, n_reference,
                                args.seed)
        if args.teststat_toys:
            runs = [measure_teststat(cost, truth, args.teststat_toys, args.seed, tol)
                    for tol in tols]
            results[name]["teststat"] = runs[0]
            if len(runs) > 1:
                results[name]["teststat_other_tols"] = runs[1:]

    payload = {
        "config": {"toys": args.toys, "events": args.events, "seed": args.seed,
                   "torch_threads": args.threads, "reference_toys": n_reference,
                   # goals down to this one keep float32 steps for smooth (SiLU) networks
                   "float32_finest_goal": _FLOAT32_FINEST},
        "machine": {**machine_info(), "iminuit": iminuit.__version__},
        "results": results,
    }
    write_json(args.out, payload)

    print()
    print(f"{'model':<10} {'batched':>10} {'+validate':>10} {'plain':>10} "
          f"{'speed-up':>9} {'+valid.':>8} {'iter':>6} {'fallback':>8} {'max |Δθ|/σ':>11} "
          f"{'max Δf':>9}")
    for name, r in results.items():
        rate, speed = r["toys_per_second"], r["speedup"]
        agree = r["agreement"]
        print(f"{name:<10} {rate['batched']:>8.2f}/s {rate['batched_validated']:>8.2f}/s "
              f"{rate['plain_minuit']:>8.2f}/s {speed['batched']:>8.1f}x "
              f"{speed['batched_validated']:>7.1f}x "
              f"{r['batched']['newton_iterations']['mean']:>6.1f} "
              f"{r['batched']['fallback']:>8d} "
              f"{agree['distance_in_errors'].get('max', math.nan):>11.2g} "
              f"{agree['fval_batched_minus_plain'].get('max', math.nan):>9.2g}")
    for name, r in results.items():
        rounds = ", ".join(f"{v:.1f}x" for v in r["speedup_paired_rounds"])
        print(f"{name}: round by round (each batched run against the loop toys after it) "
              f"{rounds}; median {r['speedup']['batched_paired_median']:.1f}x")
    for name, r in results.items():
        for ts in ([r["teststat"]] if "teststat" in r else []) + r.get("teststat_other_tols",
                                                                        []):
            print(f"{name}: t_mu toys at tol {ts.get('tol', 1e-3):g}, batched "
                  f"{ts['batched']['toys_per_second']:.2f}/s vs "
                  f"loop {ts['loop']['toys_per_second']:.2f}/s ({ts['speedup']:.1f}x), "
                  f"max |Δt| {ts['abs_difference_of_t'].get('max', math.nan):.2g}")
    print(f"\nwritten to {args.out}")
    return payload


if __name__ == "__main__":
    main()
