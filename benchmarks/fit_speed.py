"""Wall time of one N = 400 maximum-likelihood fit of the paper toy, against its FLOP floor.

The data: ``PaperToy.N_EVENTS`` = 400 events of the paper's toy drawn at (cx, cy) = (0.8, −0.8).
The fits (``egmm.infer.fit``: MIGRAD, then HESSE; every row starts at (0.5, −0.5), inside the
true quadrant, because the true pdf has cusps along cx = 0 and cy = 0):

* ``model, cached``: ``UnbinnedNLL(data, model)`` with the trained paper-toy GMMDensity
  (``benchmarks/results/paper_toy_gmm.egmm``; an untrained one if the file is missing). The
  cost caches the θ-independent work per dataset (``density.prepare``: the projection, its
  Jacobian, each network's input branch); a call runs ``log_prob_prepared``;
* ``model, uncached``: the same model behind a density that does not override ``prepare`` /
  ``log_prob_prepared``, so every call runs ``log_prob_tensor`` from the raw events (the
  projection and the input branches again): what a fit costs without that caching. The cost
  offers no switch; this is the honest emulation;
* ``true pdf``: the exact paper-toy pdf (``egmm.demo.true_density``) as the reference.

Per row: wall seconds (median and best of ``--repeats`` fits on the same cost), Minuit's calls
(nfcn, ngrad), the forward and backward passes the density really ran (counted by a thin
wrapper that adds a function call per pass), seconds per call, one value call and one value +
gradient call timed alone, and the construction time of the cost.

The FLOP floor of the model fits: (FLOPs/event of ``log_prob_prepared`` × 400) × (forward
passes + b × backward passes), b the FLOPs a backward pass executes in forward passes as
FlopCounterMode counts them in a value + gradient call (1: with frozen weights a θ-only
backward runs one product Wᵀδ per layer; it would be 2 with weight gradients), divided by the
matrix-product roofline measured here: 400 events through each per-event layer shape in the
faster of its two layouts (see ``throughput.matmul_rates``), float64 (the cost's dtype), the
same thread count, FLOP-weighted. Only matrix products count (not the mixture's special
functions, not Minuit). The passes are the ones this fit made (HESSE's finite differences
included), so wall / floor is the fit's per-call efficiency — how far its calls are from what
their arithmetic needs — not a bound on the fewest calls a fit could make (the SiLU model's
exact Hessian needs far fewer). The roofline is measured once more
right before each fit of the model's rows (a shorter measurement), and each fit is set
against that one too (``wall_over_floor_paired``, their median): on a shared machine whose
speed drifts, the paired ratio is the steadier figure. The FLOPs torch's FlopCounterMode counts
in one value + gradient call are reported too (3 × forward when weight gradients are computed,
2 × when only θ's are).

One value call of the cached model is then taken apart (``decompose_call``): the call as
Minuit makes it, ``log_prob_prepared`` alone, and its matrix products alone (recorded with
their operands by a TorchDispatchMode and run again back to back), timed in alternation; the
fit's wall / floor is stored as the product of five factors (the products against the
roofline, the FLOPs they execute against the floor's, the density against its products, the
cost's call against the density, the fit against its calls), to say where the time above the
floor goes.

Then a 2-D profile contour (``egmm.infer.contour`` of (cx, cy) at 68.27 %, reusing the cached
fit as its global fit) of the cached model. ``--profile`` prints a torch.profiler table of one
value + gradient call. Results: ``benchmarks/results/fit_speed.json``. Times depend on the
machine and its load (recorded); nothing here passes or fails on them.

    python benchmarks/fit_speed.py                 # 5 fits per row, one torch thread
    python benchmarks/fit_speed.py --profile
    python benchmarks/fit_speed.py --quick         # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import egmm
from egmm import UnbinnedNLL
from egmm.base import DensityModel
from egmm.demo import true_density
from egmm.groundtruth import PaperToy

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from _common import RESULTS, load_average, machine_info, timed, write_json
from throughput import (
    counted_flops,
    gmm_layers,
    layer_flops,
    layered_roofline,
    load_gmm,
    matmul_rates,
    measured_flops_per_event,
    profile,
)

DEFAULT_MODEL = RESULTS / "paper_toy_gmm.egmm"
TRUTH = {"cx": 0.8, "cy": -0.8}
START = {"cx": 0.5, "cy": -0.5}
CL = 0.6827


class CountingDensity(DensityModel):
    """``density`` as seen by a cost, counting the forward and backward passes it runs.

    ``cached``: ``prepare`` / ``log_prob_prepared`` are the density's own (the cost caches
    what they precompute); otherwise the base class's, which hand the raw events to
    ``log_prob_tensor`` on every call — no θ-independent work is cached.
    """

    def __init__(self, density: Any, cached: bool) -> None:
        self.density = density
        self.cached = cached
        self.space = density.space
        self.parameters = tuple(density.parameters)
        self.parameter_bounds = dict(density.parameter_bounds)
        self.name = getattr(density, "name", type(density).__name__)
        self.smooth = bool(getattr(density, "smooth", False))  # an exact Hessian if smooth
        self.forward = 0
        self.backward = 0

    def reset(self) -> None:
        self.forward = self.backward = 0

    def _backward_hook(self, grad: torch.Tensor) -> None:
        self.backward += 1

    def prepare(self, x: np.ndarray, dtype: torch.dtype = torch.float64) -> Any:
        if self.cached:
            return self.density.prepare(x, dtype=dtype)
        return super().prepare(x, dtype=dtype)

    def log_prob_prepared(self, prepared: Any, theta: torch.Tensor) -> torch.Tensor:
        self.forward += 1
        if self.cached:
            out = self.density.log_prob_prepared(prepared, theta)
        else:
            out = self.density.log_prob_tensor(prepared, theta)
        if out.requires_grad:
            out.register_hook(self._backward_hook)
        return out

    def log_prob_tensor(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return self.density.log_prob_tensor(x, theta)

    def sample(self, n: int, theta: Any = None, seed: Any = None) -> np.ndarray:
        return self.density.sample(n, theta, seed)


def time_fits(cost: UnbinnedNLL, density: CountingDensity, repeats: int,
              roofline: Callable[[], float] | None = None) -> dict[str, Any]:
    """``repeats`` fits from START: wall times, Minuit's calls, the density's passes; with
    ``roofline``, the roofline measured again right before each fit (``rooflines``), so that
    each fit has a floor from the same stretch of the machine's speed."""
    seconds, rooflines, result = [], [], None
    for _ in range(repeats):
        if roofline is not None:
            rooflines.append(roofline())
        density.reset()
        t0 = time.perf_counter()
        result = egmm.infer.fit(cost, start=START)
        seconds.append(time.perf_counter() - t0)
    assert result is not None
    median = statistics.median(seconds)
    calls = result.nfcn + result.ngrad
    return {"wall_seconds_median": median, "wall_seconds_best": min(seconds),
            "wall_seconds": seconds, "rooflines": rooflines,
            "nfcn": result.nfcn, "ngrad": result.ngrad,
            "forward_passes": density.forward, "backward_passes": density.backward,
            "seconds_per_call": median / calls if calls else None,
            "nhessian": result.nhessian,
            "valid": result.valid, "fval": result.fval, "values": result.values,
            "errors": result.errors}


def time_calls(cost: UnbinnedNLL, repeats: int) -> dict[str, Any]:
    """One value call and one value + gradient call, each at a point not seen before (the
    cost caches the last point), timed alone."""
    points = [np.array([START["cx"] + 1e-4 * k, START["cy"]]) for k in range(2 * repeats + 4)]
    it = iter(points)

    def value() -> None:
        cost(*next(it))

    def value_and_grad() -> None:
        p = next(it)
        cost(*p)
        cost.grad(p)

    v = timed(value, repeats=repeats, warmup=1)
    g = timed(value_and_grad, repeats=repeats, warmup=1)
    return {"value_seconds_median": v["median"], "value_seconds_best": v["best"],
            "value_and_gradient_seconds_median": g["median"],
            "value_and_gradient_seconds_best": g["best"]}


def row(name: str, density: Any, data: np.ndarray, *, cached: bool, repeats: int,
        hessian: bool | None = False, roofline: Callable[[], float] | None = None
        ) -> tuple[dict[str, Any], UnbinnedNLL, CountingDensity]:
    wrapped = CountingDensity(density, cached)
    t0 = time.perf_counter()
    cost = UnbinnedNLL(data, wrapped, hessian=hessian)
    construction = time.perf_counter() - t0
    out = {"name": name, "cached": cached, "cost_construction_seconds": construction,
           **time_fits(cost, wrapped, repeats, roofline), **time_calls(cost, max(repeats, 3))}
    print(f"{name:18s} fit {out['wall_seconds_median']:.3f} s (best "
          f"{out['wall_seconds_best']:.3f}), nfcn {out['nfcn']}, ngrad {out['ngrad']}, "
          f"nhessian {out['nhessian']}, "
          f"passes {out['forward_passes']} + {out['backward_passes']} backward, "
          f"{1e3 * out['seconds_per_call']:.2f} ms/call; "
          f"value {1e3 * out['value_seconds_best']:.2f} ms, "
          f"value+grad {1e3 * out['value_and_gradient_seconds_best']:.2f} ms; "
          f"(cx, cy) = ({out['values']['cx']:.4f}, {out['values']['cy']:.4f}), "
          f"valid {out['valid']}", flush=True)
    return out, cost, wrapped


def floor(fit: dict[str, Any], flops_per_event: float, n_events: int, gflops: float,
          backward_factor: float) -> dict[str, Any]:
    """The fit's FLOP floor: its forward passes, and its backward passes at
    ``backward_factor`` forward passes each (measured: θ-only gradients of frozen networks
    run one product Wᵀδ per layer, 1 ×), at the roofline ``gflops``."""
    forward_equivalents = fit["forward_passes"] + backward_factor * fit["backward_passes"]
    flops = flops_per_event * n_events * forward_equivalents
    seconds = flops / (gflops * 1e9)
    out = {"forward_equivalents": forward_equivalents, "backward_factor": backward_factor,
           "flops": flops,
           "floor_seconds": seconds, "wall_over_floor": fit["wall_seconds_median"] / seconds}
    if fit.get("rooflines"):  # each fit against the roofline measured just before it
        paired = [wall * rate * 1e9 / flops
                  for wall, rate in zip(fit["wall_seconds"], fit["rooflines"])]
        out["wall_over_floor_paired"] = paired
        out["wall_over_floor_paired_median"] = statistics.median(paired)
    return out


class _MatrixProducts(TorchDispatchMode):
    """Records the matrix products (mm, addmm, bmm, baddbmm, any overload) torch runs, with
    copies of their operands, so that they can be run again alone."""

    OPS = frozenset({"mm", "addmm", "bmm", "baddbmm"})

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Any, tuple[Any, ...], dict[str, Any]]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func.overloadpacket.__name__ in self.OPS:
            def copy(v: Any) -> Any:
                return v.detach().clone() if isinstance(v, torch.Tensor) else v
            self.calls.append((func, tuple(copy(a) for a in args),
                               {k: copy(v) for k, v in kwargs.items()}))
        return func(*args, **kwargs)


def decompose_call(cost: UnbinnedNLL, density: Any, prepared: Any, repeats: int = 200
                   ) -> dict[str, Any]:
    """Where one value call of the cost goes (cached model, no graph): the call as Minuit
    makes it (the cost's validation, caching and sum included); ``log_prob_prepared`` alone;
    and its matrix products alone — the same products on copies of the same operands, in the
    same order, run back to back (what the FLOP floor counts, at the speed this machine gives
    them here). Medians of ``repeats`` calls each, the three timed in alternation."""
    theta = torch.tensor([START["cx"], START["cy"]], dtype=torch.float64)
    recorder = _MatrixProducts()
    with torch.no_grad(), recorder:
        density.log_prob_prepared(prepared, theta)
    calls = recorder.calls
    flops = counted_flops(lambda: [f(*a, **k) for f, a, k in calls])
    point = [START["cx"], START["cy"]]

    def call() -> None:
        point[0] += 1e-9  # a new point each time: the cost caches the last one
        cost(*point)

    def density_alone() -> None:
        with torch.no_grad():
            density.log_prob_prepared(prepared, theta)

    def products() -> None:
        for f, a, k in calls:
            f(*a, **k)

    parts: dict[str, list[float]] = {"call": [], "log_prob_prepared": [], "products": []}
    for fn in (call, density_alone, products):
        fn()  # warm-up
    for _ in range(repeats):
        for key, fn in (("call", call), ("log_prob_prepared", density_alone),
                        ("products", products)):
            t0 = time.perf_counter()
            fn()
            parts[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in parts.items()}
    return {"seconds": med, "matrix_products": len(calls), "product_flops": flops,
            "products_gflops": flops / med["products"] / 1e9,
            "other_in_density_seconds": med["log_prob_prepared"] - med["products"],
            "cost_overhead_seconds": med["call"] - med["log_prob_prepared"]}


def gradient_call_flops(cost: UnbinnedNLL) -> int:
    """Matrix-product FLOPs of one value + gradient call at a new point (FlopCounterMode)."""
    p = np.array([START["cx"] - 3e-4, START["cy"] + 3e-4])

    def call() -> None:
        cost(*p)
        cost.grad(p)

    return counted_flops(call)


def counted_forward_flops(cost: UnbinnedNLL) -> int:
    """Matrix-product FLOPs of one value call at a new point (FlopCounterMode)."""
    p = np.array([START["cx"] + 5e-4, START["cy"] - 5e-4])
    return counted_flops(lambda: cost(*p))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=None, help="fits per row (5; quick 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    ap.add_argument("--contour-size", type=int, default=None,
                    help="contour points (48; quick 8)")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the GMMDensity file")
    ap.add_argument("--smooth-model", type=Path, default=RESULTS / "paper_toy_gmm_50k_silu.egmm",
                    help="a SiLU GMMDensity: fits with and without its exact Hessian (skipped "
                         "if the file is missing)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the 400 events")
    ap.add_argument("--profile", action="store_true",
                    help="torch.profiler table of one value + gradient call")
    ap.add_argument("--quick", action="store_true", help="one fit per row, a small contour")
    ap.add_argument("--out", type=Path, default=RESULTS / "fit_speed.json")
    args = ap.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 5)
    contour_size = args.contour_size or (8 if args.quick else 48)
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")  # 400-event fits are latency-bound: the CPU is their place

    start = time.perf_counter()
    info = machine_info()
    model, origin = load_gmm(args.model, 0)
    n_events = PaperToy.N_EVENTS
    data = PaperToy().sample(n_events, TRUTH["cx"], TRUTH["cy"], seed=args.seed)
    print(f"{n_events} events at (cx, cy) = ({TRUTH['cx']}, {TRUTH['cy']}); model: {origin}, "
          f"{sum(model.n_weights())} weights; {args.threads} thread(s); "
          f"load average {info['load_average']}")

    # the arithmetic of one forward pass per event, and what the hardware does with it
    layers = gmm_layers(model, prepared=True)
    flops_analytic = layer_flops(layers)
    flops_measured = measured_flops_per_event(model, "log_prob_prepared", data, device,
                                              n=n_events // 2)
    rates = matmul_rates(layers, n_events, torch.float64, device,
                         max_seconds=0.1 if args.quick else 0.5)
    roofline = layered_roofline(layers, rates)
    print(f"log_prob_prepared: {flops_analytic} FLOPs/event (FlopCounterMode "
          f"{flops_measured:.0f}); roofline at {n_events} rows, float64: {roofline:.1f} GFLOP/s")

    def roofline_now() -> float:
        return layered_roofline(layers, matmul_rates(layers, n_events, torch.float64, device,
                                                     max_seconds=0.05))

    cached, cost, counter = row("model, cached", model, data, cached=True, repeats=repeats,
                                roofline=roofline_now)
    uncached, _, _ = row("model, uncached", model, data, cached=False, repeats=repeats,
                         roofline=roofline_now)
    reference, _, _ = row("true pdf", true_density(), data, cached=True, repeats=repeats)
    grad_flops = gradient_call_flops(cost)
    forward_flops = flops_analytic * n_events
    # a backward pass's FLOPs in forward passes, as executed (FlopCounterMode's count of one
    # value + gradient call over one forward pass, less the forward pass)
    backward_factor = grad_flops / counted_forward_flops(cost) - 1.0
    for r in (cached, uncached):
        r["floor"] = floor(r, flops_analytic, n_events, roofline, backward_factor)
        print(f"{r['name']}: floor {1e3 * r['floor']['floor_seconds']:.1f} ms "
              f"({r['floor']['forward_equivalents']} forward-pass equivalents); "
              f"wall / floor = {r['floor']['wall_over_floor']:.1f}; each fit against the "
              f"roofline just before it: "
              f"{', '.join(f'{v:.2f}' for v in r['floor']['wall_over_floor_paired'])} "
              f"(median {r['floor']['wall_over_floor_paired_median']:.2f})")
    # the cached fit's wall / floor as a product of factors, from one value call taken apart
    parts = decompose_call(cost, model, model.prepare(data), repeats=50 if args.quick else 300)
    sec = parts["seconds"]
    fl = cached["floor"]
    factors = {
        "products_over_roofline": sec["products"] / (parts["product_flops"] / (roofline * 1e9)),
        "counted_over_analytic_flops": parts["product_flops"] / (flops_analytic * n_events),
        "density_over_products": sec["log_prob_prepared"] / sec["products"],
        "call_over_density": sec["call"] / sec["log_prob_prepared"],
        "fit_over_calls": cached["wall_seconds_median"] / (fl["forward_equivalents"]
                                                           * sec["call"]),
    }
    parts["factors"] = factors
    parts["product_of_factors"] = float(np.prod(list(factors.values())))
    cached["decomposition"] = parts
    print(f"one value call {1e3 * sec['call']:.2f} ms: log_prob_prepared "
          f"{1e3 * sec['log_prob_prepared']:.2f} ms, its {parts['matrix_products']} matrix "
          f"products alone {1e3 * sec['products']:.2f} ms ({parts['products_gflops']:.1f} "
          f"GFLOP/s); wall / floor {fl['wall_over_floor']:.2f} = "
          + " × ".join(f"{v:.2f} ({k})" for k, v in factors.items()), flush=True)
    rows = {"model_cached": cached, "model_uncached": uncached, "true_pdf": reference}
    if args.smooth_model is not None and args.smooth_model.exists():
        # a SiLU model: smooth in θ, so the cost can give Minuit its exact Hessian
        smooth, smooth_origin = load_gmm(args.smooth_model, 0)
        for key, name, hess in (("smooth_model_exact_hessian", "SiLU, exact Hessian", None),
                                ("smooth_model_finite_differences", "SiLU, finite diff.",
                                 False)):
            rows[key], _, _ = row(name, smooth, data, cached=True, repeats=repeats,
                                  hessian=hess)
            rows[key]["model"] = smooth_origin

    gfit = egmm.infer.fit(cost, start=START)
    counter.reset()
    t0 = time.perf_counter()
    regions = egmm.infer.contour(cost, "cx", "cy", cl=CL, size=contour_size, global_fit=gfit)
    contour_seconds = time.perf_counter() - t0
    contour = {"cl": CL, "size": contour_size, "wall_seconds": contour_seconds,
               "forward_passes": counter.forward,
               "backward_passes": counter.backward,
               "points": regions[CL].tolist()}
    print(f"contour ({contour_size} points, {CL}): {contour_seconds:.2f} s, "
          f"{counter.forward} forward + {counter.backward} backward passes")

    profiles = []
    if args.profile:
        p = np.array([START["cx"] + 7e-4, START["cy"]])

        def call() -> None:
            p[0] += 1e-6  # a new point each time: the cost caches the last one
            cost(*p)
            cost.grad(p)

        profiles.append(profile(call, device, f"one value + gradient call of the cached "
                                              f"model cost, {n_events} events"))

    result = {
        "machine": info,
        "settings": {"n_events": n_events, "truth": TRUTH, "start": START, "seed": args.seed,
                     "repeats": repeats, "threads": args.threads, "quick": args.quick,
                     "model": origin, "weights": sum(model.n_weights()), "dtype": "float64"},
        "flops": {"per_event_forward_prepared": flops_analytic,
                  "per_event_forward_prepared_measured": flops_measured,
                  "per_event_forward_uncached": layer_flops(gmm_layers(model)),
                  "layers": [list(s) for s in layers],
                  "value_and_gradient_call_measured": grad_flops,
                  "value_and_gradient_over_forward": grad_flops / forward_flops,
                  "backward_convention": "backward pass = 2 × forward"},
        "roofline": {"rows": n_events, "dtype": "float64", "gflops": roofline,
                     "shapes": {f"{k}x{n}": v for (k, n), v in rates.items()}},
        "fits": rows,
        "caching_speedup": uncached["wall_seconds_median"] / cached["wall_seconds_median"],
        "model_over_true_pdf": cached["wall_seconds_median"] / reference["wall_seconds_median"],
        "contour": contour,
        "profiles": profiles,
        "wall_seconds": time.perf_counter() - start,
        "load_average_end": load_average(),
    }
    write_json(args.out, result)
    print(f"\ncaching: {result['caching_speedup']:.2f}× faster fits; one value + gradient call "
          f"runs {result['flops']['value_and_gradient_over_forward']:.2f} × the forward FLOPs\n"
          f"{args.out} ({result['wall_seconds']:.0f} s)")
    return result


if __name__ == "__main__":
    main()
