"""Coverage of the MLE and of Wilks regions on the paper's toy: the true pdf, and a trained model.

For each true hypothesis (cx, cy) away from the cusps of the toy's likelihood (it depends on
|cx| and |cy|, so it has kinks along cx = 0 and cy = 0), ``--ntoys`` datasets of N = 400 events
(the paper's size, ``PaperToy.N_EVENTS``) are drawn from the exact pdf and fitted by maximum
likelihood, with ``egmm.infer.coverage``:

* with the true pdf itself as the fitted density (``UnbinnedNLL`` over a torch port of
  ``PaperToy.log_prob``, checked against it to 1e-10 before anything runs): the reference, where
  only the asymptotic approximations (Gaussian MLE, Wilks) can fail;
* with ``--model PATH``, a trained ``GMMDensity`` (``GMMDensity.load``) as the fitted density, the
  data still drawn from the true pdf: bias and under-coverage here measure what the model's
  imperfection costs in inference.

Reported per hypothesis: bias of ĉ with its error, pull mean and width (HESSE errors), and the
coverage of the 1-D (cx, cy) and 2-D (cx, cy) profile-likelihood regions at 68.27 % and 95.45 %
(Wilks thresholds 1, 4 and 2.30, 6.18), each with its binomial error and its deviation from
nominal in units of the binomial error expected at nominal; failed fits are counted, never
dropped. Toys are appended to resumable JSON-lines stores under ``benchmarks/results/`` (a
killed run continues where it stopped); the summary goes to
``benchmarks/results/coverage_paper_toy.json``.

    python benchmarks/coverage_paper_toy.py --ntoys 1000 \\
        --model benchmarks/results/paper_toy_gmm.egmm          # full study (two cores: ~1 h)
    python benchmarks/coverage_paper_toy.py --ntoys 200         # a quick look, true pdf only

``--batched`` (off by default) passes ``batched=True`` to ``coverage``: each batch of 64 toys is
fitted together by ``egmm.infer.fit_batched`` (the global fits and the conditional fits at the
truth), with only HESSE per toy for the pulls; the same toys and numbers to the fits'
tolerance. Its toys are stored under their own key, apart from the plain loop's.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from egmm import GMMDensity, TorchDensity, UnbinnedNLL
from egmm.groundtruth import PaperToy
from egmm.infer import CoverageResult, coverage, local_executor

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from _common import machine_info, write_json

RESULTS = Path(__file__).parent / "results"
DEFAULT_MODEL = RESULTS / "paper_toy_gmm.egmm"
SUMMARY = RESULTS / "coverage_paper_toy.json"

#: true hypotheses, |cx|, |cy| ≥ 0.5 so that the fits stay away from the cusps at 0
HYPOTHESES: tuple[tuple[float, float], ...] = ((0.8, 0.8), (-0.8, 0.8))
#: the fitted parameter range: the paper's training range (inside the toy's ellipse
#: 0.16 cx² + 0.25 cy² < 1, where p2 is a density)
BOUNDS = {"cx": (-1.5, 1.5), "cy": (-1.5, 1.5)}
CL = (0.6827, 0.9545)

# the toy's constants (PaperToy docstring): p1 width, p3 = flat-top double logistic
_SIGMA1 = 0.05
_ALPHA3, _K3 = 10.0, 11.0  # α3 and K = α3·β3 + γ3 with β3 = γ3 = 1
_LOG_Z3 = math.log(2.0 * _K3 / _ALPHA3) - math.log(-math.expm1(-2.0 * _K3))
_LOG_700 = math.log(700.0)


def _softplus(t: torch.Tensor) -> torch.Tensor:
    """ln(1 + eᵗ), exact for every t (torch's softplus switches to t above a threshold)."""
    return t.clamp(min=0.0) + torch.log1p(torch.exp(-t.abs()))


def paper_toy_log_prob(x: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    r"""log p(x|cx, cy) of :class:`~egmm.groundtruth.PaperToy` in torch (differentiable in c).

    The four factors of the PaperToy docstring with a = (x0 − 100)/700, b = (x1 − 100)/700:
    p0 a truncated exponential of rate k = 2(2 − |cx|), p1 a Gaussian in b around a (width
    0.05) truncated to [0, 1], p2 = P(x2)(1 + 0.4 cx sin x2 + 0.5 cy cos x2)/Z2(cy), and p3 the
    double logistic q3 at x3 + s(c)(2b − 1 + x2/π), s = 0.6(√(4 + |cx|) + |cy|).

    Arguments:
        x: events (N, 4) in the order (x0, x1, x2, x3), float64.
        cx, cy: 0-d tensors or (N,), with |cx| < 2 (k > 0).

    Returns:
        (N,) log density per GeV² rad.
    """
    a = (x[:, 0] - 100.0) / 700.0
    b = (x[:, 1] - 100.0) / 700.0
    x2, x3 = x[:, 2], x[:, 3]
    k = 4.0 - 2.0 * cx.abs()
    log_p0 = torch.log(k / -torch.expm1(-k)) - k * a - _LOG_700
    inside = 1.0 - torch.special.ndtr(-a / _SIGMA1) - torch.special.ndtr((a - 1.0) / _SIGMA1)
    log_p1 = (-0.5 * ((b - a) / _SIGMA1) ** 2 - torch.log(inside)
              - math.log(math.sqrt(2.0 * math.pi) * _SIGMA1) - _LOG_700)
    r = x2 / math.pi
    z2 = 8.0 * math.pi / 3.0 + cy * (12.0 / math.pi - 120.0 / math.pi**3)
    log_p2 = (torch.log1p(-r) + torch.log1p(r) + torch.log1p(5.0 * r * r)
              + torch.log1p(0.4 * cx * torch.sin(x2) + 0.5 * cy * torch.cos(x2)) - torch.log(z2))
    shift = 0.6 * (torch.sqrt(4.0 + cx.abs()) + cy.abs())
    t = _ALPHA3 * (x3 + shift * (2.0 * b - 1.0 + r))
    log_p3 = -_softplus(t - _K3) - _softplus(-t - _K3) - _LOG_Z3
    return log_p0 + log_p1 + log_p2 + log_p3


def true_density() -> TorchDensity:
    """The exact paper-toy pdf as a :class:`~egmm.TorchDensity` on :data:`BOUNDS` (not smooth:
    cusps on the axes, so Minuit's HESSE keeps its finite differences)."""
    toy = PaperToy()

    def sampler(n: int, theta: dict[str, float], rng: np.random.Generator) -> np.ndarray:
        return toy.sample(n, theta["cx"], theta["cy"], seed=rng)

    return TorchDensity(PaperToy.space, paper_toy_log_prob, ("cx", "cy"), BOUNDS, sampler,
                        name="paper toy (true pdf)", smooth=False)


def port_deviation(density: TorchDensity, n: int = 4000, seed: int = 0) -> float:
    """Largest |log p_torch − PaperToy.log_prob| over ``n`` events at every hypothesis and at
    the corners of the fitted range (evaluated at the hypothesis they were drawn at)."""
    toy = PaperToy()
    points = [*HYPOTHESES, (1.5, 1.5), (-1.5, -1.5), (0.3, -1.2)]
    worst = 0.0
    for k, (cx, cy) in enumerate(points):
        x = toy.sample(n, cx, cy, seed=np.random.SeedSequence([seed, k]))
        d = density.log_prob(x, {"cx": cx, "cy": cy}) - toy.log_prob(x, cx, cy)
        worst = max(worst, float(np.max(np.abs(d))))
    return worst


class DensityCost:
    """``data -> UnbinnedNLL(data, density)``: the cost factory of a coverage study.

    A class, so that it pickles to worker processes. Its ``repr`` names the density by
    ``label``: ``coverage`` keys its resumable store with it, so the label must identify the
    density (and must not be the default repr, whose memory address changes every run).
    """

    def __init__(self, density: Any, label: str) -> None:
        self.density = density
        self.label = label

    def __call__(self, data: np.ndarray) -> UnbinnedNLL:
        return UnbinnedNLL(data, self.density)

    def __repr__(self) -> str:
        return f"DensityCost({self.label!r})"


def summarise(result: CoverageResult, cx: float, cy: float, seconds: float, new_toys: int,
              workers: int) -> dict[str, Any]:
    """One hypothesis as a JSON-able dict."""
    return {
        "cx": cx, "cy": cy, "ntoys": result.ntoys, "n_failed": result.n_failed,
        "failures": [{"index": i, "reason": why} for i, why in result.failures[:20]],
        "new_toys": new_toys, "wall_seconds": seconds, "workers": workers,
        "wall_seconds_per_toy": seconds / new_toys if new_toys else None,
        "parameters": {name: {k: v for k, v in vars(s).items() if k != "name"}
                       for name, s in result.parameters.items()},
        "coverage": [{"parameters": list(c.parameters), "cl": c.cl, "threshold": c.threshold,
                      "covered": c.covered, "n": c.n, "fraction": c.fraction, "error": c.error,
                      "deviation_sigma": c.deviation} for c in result.coverage],
    }


def study(density: Any, label: str, store: Path, *, ntoys: int, seed: int, executor: Any,
          workers: int, progress: bool, batched: bool = False) -> list[dict[str, Any]]:
    """Coverage of ``density`` fitted to toys of the true pdf at every hypothesis."""
    rows = []
    for cx, cy in HYPOTHESES:
        new: list[dict[str, Any]] = []  # the records of toys run now (not resumed)
        start = time.perf_counter()
        res = coverage(PaperToy(), DensityCost(density, label), {"cx": cx, "cy": cy}, ntoys, seed,
                       cl=CL, n_events=PaperToy.N_EVENTS, executor=executor, out=store,
                       progress=progress, callback=new.append, batched=batched)
        seconds = time.perf_counter() - start
        print(f"\n[{label}] truth (cx, cy) = ({cx:+.1f}, {cy:+.1f}), N = {PaperToy.N_EVENTS}; "
              f"{len(new)} new toys in {seconds:.0f} s"
              + (f" ({seconds / len(new):.3f} s/toy wall, {workers} worker(s))" if new else ""))
        print(res.table())
        rows.append(summarise(res, cx, cy, seconds, len(new), workers))
    return rows


def file_digest(path: Path) -> str:
    """First 12 hex digits of the SHA-256 of a file: the model's identity in the store name."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the studies (command-line arguments as in the module docstring); returns the
    summary that is written to ``coverage_paper_toy.json``."""
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ntoys", type=int, default=1000, help="toys per hypothesis (1000)")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--workers", type=int, default=None,
                    help="processes (default: the usable CPUs; 0 runs serially)")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                    help=f"trained GMMDensity to study as well (default {DEFAULT_MODEL}); "
                         "skipped with a message if the file is not there")
    ap.add_argument("--no-model", action="store_true", help="study the true pdf only")
    ap.add_argument("--results", type=Path, default=RESULTS, help="stores and summary folder")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--batched", action="store_true",
                    help="fit the toys in batches with egmm.infer.fit_batched (default: off)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # 400-event fits are latency-bound; workers run one thread each

    density = true_density()
    deviation = port_deviation(density)
    if not deviation < 1e-10:
        raise SystemExit(f"the torch port of PaperToy.log_prob deviates by {deviation:.3g}")
    print(f"torch port of PaperToy.log_prob: max |Δ log p| = {deviation:.2g} over 20000 events")

    workers = (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1) if args.workers is None else args.workers
    results = args.results
    summary: dict[str, Any] = {
        "machine": machine_info(),
        "settings": {"ntoys": args.ntoys, "seed": args.seed, "n_events": PaperToy.N_EVENTS,
                     "hypotheses": [list(h) for h in HYPOTHESES], "cl": list(CL),
                     "bounds": BOUNDS, "workers": workers, "batched": args.batched},
        "port_max_abs_deviation": deviation,
    }
    pool = local_executor(workers) if workers > 0 else None
    executor = pool if pool is not None else "serial"
    try:
        summary["true_pdf"] = study(density, "true pdf", results / "coverage_paper_toy_true.jsonl",
                                    ntoys=args.ntoys, seed=args.seed, executor=executor,
                                    workers=max(workers, 1), progress=not args.quiet,
                                    batched=args.batched)
        summary["model"] = {"skipped": "--no-model"}
        if not args.no_model:
            if args.model.exists():
                model = GMMDensity.load(args.model)
                digest = file_digest(args.model)
                summary["model"] = {
                    "path": str(args.model), "sha256_12": digest,
                    "rows": study(model, f"model {args.model.name} {digest}",
                                  results / f"coverage_paper_toy_model-{digest}.jsonl",
                                  ntoys=args.ntoys, seed=args.seed, executor=executor,
                                  workers=max(workers, 1), progress=not args.quiet,
                                  batched=args.batched)}
            else:
                print(f"\nno trained model at {args.model}: skipping the model study "
                      "(benchmarks/fidelity_paper_toy.py writes one)")
                summary["model"] = {"skipped": f"no file {args.model}"}
    finally:
        if pool is not None:
            pool.shutdown()
    write_json(results / SUMMARY.name, summary)
    print(f"\nsummary: {results / SUMMARY.name}")
    return summary


if __name__ == "__main__":
    main()
