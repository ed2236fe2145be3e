"""How close each way of fitting toys comes to the minimum of −2 ln L: the batched Newton fits
(egmm.infer.fit_batched) at several decrement goals against MIGRAD (egmm.infer.fit, no HESSE)
at several tolerances, on the same toys. The precision behind toys_vectorised.py's "at the same
precision" (its t_μ toys: MIGRAD at tol 1e-3, the batched fits at the goal 2e-6).

Per toy the reference is the lowest −2 ln L any method found (a batched float64 fit at a far
tighter goal, 1e-10 and up to 300 iterations, is one of them). Per method: wall seconds
(one torch thread, the methods one after the other: a rough figure, not a speed benchmark),
Newton iterations or Minuit calls per toy, and the excess f − best of its minima (f = −2 ln L):
quantiles and how many toys end more than 2e-6, 2e-5, 2e-4 and 1e-3 above the best. On a
likelihood with kinks (LeakyReLU networks) the methods differ in how close they get, not only
in how fast; a few toys end in another local minimum whatever the method.

``--fixed NAME`` fixes that parameter at its true value (the conditional fits of t_μ toys).
Results: ``benchmarks/results/minima_precision.json`` (atomic).

    python benchmarks/minima_precision.py --toys 200                 # paper-size GMM, ~5 min
    python benchmarks/minima_precision.py --toys 200 --fixed cx \\
        --out benchmarks/results/minima_precision_fixed.json
    python benchmarks/minima_precision.py --model analytic --toys 50
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from egmm.infer import fit, fit_batched, sample_toy, toy_seed

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from _common import RESULTS, machine_info, write_json
from toys_vectorised import analytic_model, gmm_model

THRESHOLDS = (2e-6, 2e-5, 2e-4, 1e-3)
REFERENCE = {"tol": 1e-10, "float32_steps": False, "max_iter": 300}


def _floats(text: str, what: str, parser: argparse.ArgumentParser) -> list[float]:
    try:
        values = [float(t) for t in text.split(",")]
    except ValueError:
        parser.error(f"{what}: numbers separated by commas, got {text!r}")
    if not values or not all(v > 0 for v in values):
        parser.error(f"{what}: positive numbers, got {text!r}")
    return values


def excess_summary(excess: np.ndarray) -> dict[str, Any]:
    """Quantiles of the excess over the best minimum and the toys above each threshold."""
    q = np.quantile(excess, [0.5, 0.75, 0.9, 0.99, 1.0])
    out: dict[str, Any] = dict(zip(("median", "q75", "q90", "q99", "max"), map(float, q)))
    out["toys_above"] = {f"{t:g}": int(np.sum(excess > t)) for t in THRESHOLDS}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=("gmm", "analytic"), default="gmm")
    parser.add_argument("--toys", type=int, default=200)
    parser.add_argument("--events", type=int, default=400)
    parser.add_argument("--gmm-model", type=Path, default=RESULTS / "paper_toy_gmm.egmm")
    parser.add_argument("--gmm-truth", default="0.3,-0.2",
                        help="(cx, cy) where the gmm toys are drawn and every fit starts")
    parser.add_argument("--fixed", default=None,
                        help="a parameter fixed at its true value (conditional fits)")
    parser.add_argument("--batched-goals", default="2e-6,2e-5,2e-4",
                        help="fit_batched decrement goals (tol=), comma-separated")
    parser.add_argument("--minuit-tols", default="0.001,0.01,0.1",
                        help="MIGRAD tolerances, comma-separated (EDM goal 0.002 · tol)")
    parser.add_argument("--strategy", type=int, default=0,
                        help="MIGRAD strategy (0: the toy calculators' default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=RESULTS / "minima_precision.json")
    args = parser.parse_args(argv)
    goals = _floats(args.batched_goals, "--batched-goals", parser)
    tols = _floats(args.minuit_tols, "--minuit-tols", parser)
    if args.toys < 1:
        parser.error(f"--toys must be ≥ 1, got {args.toys}")
    torch.set_num_threads(args.threads)

    if args.model == "gmm":
        try:
            truth_xy = tuple(float(v) for v in args.gmm_truth.split(","))
        except ValueError:
            truth_xy = ()
        if len(truth_xy) != 2:
            parser.error(f"--gmm-truth: two numbers cx,cy, got {args.gmm_truth!r}")
        cost, truth, description = gmm_model(args.events, args.seed, args.gmm_model, truth_xy)
    else:
        cost, truth, description = analytic_model(args.events)
    if args.fixed is not None and args.fixed not in truth:
        parser.error(f"--fixed: one of {sorted(truth)}, got {args.fixed!r}")
    fixed = {args.fixed: truth[args.fixed]} if args.fixed else None
    costs = [sample_toy(cost, truth, toy_seed(args.seed, k)) for k in range(args.toys)]
    print(f"{description}; {args.toys} toys" + (f", {args.fixed} fixed" if fixed else ""),
          flush=True)

    methods: dict[str, dict[str, Any]] = {}
    fvals: dict[str, np.ndarray] = {}

    def batched(name: str, record: dict[str, Any], **settings: Any) -> None:
        t0 = time.perf_counter()
        res = fit_batched(costs, truth, fixed=fixed, validate=False, **settings)
        methods[name] = {"kind": "batched", **record, "seconds": time.perf_counter() - t0,
                         "newton_iterations_per_toy": float(np.mean(res.n_iter)),
                         "converged": int(np.sum(res.converged)),
                         "fallback": int(np.sum(res.fallback))}
        fvals[name] = np.asarray(res.fval, dtype=np.float64)
        print(f"{name}: {methods[name]['seconds']:.1f} s", flush=True)

    for goal in goals:
        batched(f"batched goal {goal:g}", {"goal": goal}, tol=goal)
    batched("reference", REFERENCE, **REFERENCE)
    for tol in tols:
        name = f"MIGRAD tol {tol:g}"
        t0 = time.perf_counter()
        fits = [fit(c, truth, fixed=list(fixed) if fixed else None, tol=tol, hesse=False,
                    strategy=args.strategy) for c in costs]
        methods[name] = {"kind": "minuit", "tol": tol, "strategy": args.strategy,
                         "seconds": time.perf_counter() - t0,
                         "calls_per_toy": float(np.mean([f.nfcn for f in fits])),
                         "valid": int(sum(f.valid for f in fits))}
        fvals[name] = np.array([f.fval for f in fits], dtype=np.float64)
        print(f"{name}: {methods[name]['seconds']:.1f} s", flush=True)

    best = np.min(np.stack(list(fvals.values())), axis=0)
    for name, f in fvals.items():
        methods[name]["excess"] = excess_summary(f - best)
        e = methods[name]["excess"]
        print(f"{name:22s} excess median {e['median']:.1e} q90 {e['q90']:.1e} "
              f"max {e['max']:.1e}; toys above " + ", ".join(
                  f"{k}: {v}" for k, v in e["toys_above"].items()))
    result = {"machine": machine_info(), "description": description,
              "settings": {"model": args.model, "toys": args.toys, "events": args.events,
                           "truth": truth, "fixed": fixed, "seed": args.seed,
                           "threads": args.threads, "strategy": args.strategy},
              "methods": methods}
    write_json(args.out, result)
    print(args.out)
    return result


if __name__ == "__main__":
    main()
