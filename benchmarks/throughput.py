"""Events per second of log_prob and sample: the paper-size GMMDensity against zuko MAF and NSF
flows with the same number of weights, each as a fraction of the machine's matrix-product
roofline measured in the same run.

Models (all on the paper toy's space: 4 observables, θ = (cx, cy) on [−1.5, 1.5]²):

* ``gmm``: GMMDensity with paper Table 6 defaults, ``benchmarks/results/paper_toy_gmm.egmm``
  when it exists (else an untrained one: the timing does not depend on the weights);
* ``maf``, ``nsf``: FlowDensity with 3 transforms of two hidden layers each, the width chosen
  so that the flow's trainable weights match the GMM's total (closest width; within ~1 %).
  A MADE layer stores a full weight matrix but masks about 37 % of it to 0 in every call:
  those entries are no weights of the model (they are counted as ``stored_weights``), though
  their products run (they count in the executed FLOPs below).

For every thread count × dtype (float32, float64) × chunk size (events per call):

* ``log_prob``: ``model.log_prob_tensor(x, θ)`` on a device tensor of ``chunk`` events under
  ``torch.no_grad()`` (the work a likelihood does per call, without numpy conversion), one θ
  for all events; ``log_prob_api``: the public ``model.log_prob`` (numpy in and out,
  validation included) at one chunk size;
* ``sample``: ``model.sample(chunk, θ)`` (numpy out), chunks up to ``--sample-max-chunk``.
  GMMDensity samples in float64 whatever is asked unless its ``sample`` takes a ``dtype``;
  the effective dtype is recorded.

Each figure is the best (and the median) of repeated calls after a warm-up: as many calls as
``--events`` needs, stopped after ``--seconds`` (at least one call). The models of a chunk size
and dtype are timed in ``--rounds`` interleaved rounds (default 5: each round times every model
and op in turn for ``--seconds / rounds``), so that a slow spell of a shared machine (on the
2-core VM here the same figure varies by up to 2× between runs minutes apart) falls on the
models compared alike instead of on whichever ran then; each round's best call is kept, and
the summary adds the median of the GMM/peer ratio round by round beside the ratio of the bests.

The roofline: ``torch.matmul`` of rows events through every layer shape (K, N) that runs once
per event in the models, in the faster of the layouts (rows × K) @ (K × N) and
(N × K) @ (K × rows), rows = chunk (capped at 65536 rows to bound the run time), same
dtype, device and thread count, measured just before and just after the models of each chunk
size (the better of the two counts: other jobs' load comes and goes). A model's roofline is
its FLOP-weighted time bound: Σ FLOPs / Σ (FLOPs_layer / GFLOP/s_layer). FLOPs per event are
counted analytically from the layer shapes (2 · in · out per linear product that runs once per
event: GMMDensity's first network has no per-event inputs and its trunk runs once per θ; a
flow samples with one pass of its masked network per observable) and checked against torch's
FlopCounterMode (which counts what is executed, e.g. zeros of a block-diagonal product). Only
matrix products count, not activations, the mixture's special functions or the splines: the
fraction is the share of the wall time that the model's matrix arithmetic alone would need.

Ratios GMM/MAF and GMM/NSF compare the best chunk size of each model. Results:
``benchmarks/results/throughput.json`` (``throughput_cuda.json`` on a GPU, with its name).
Timings depend on the machine and its load (recorded); nothing here passes or fails on them.

    python benchmarks/throughput.py                       # torch's thread count, then 1
    python benchmarks/throughput.py --threads 1 --profile  # + torch.profiler tables
    python benchmarks/throughput.py --quick               # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import inspect
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from egmm import FlowDensity, GMMDensity, LatentProjection
from egmm.groundtruth import PaperToy

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from _common import RESULTS, load_average, machine_info, synchronize, timed, write_json

DEFAULT_MODEL = RESULTS / "paper_toy_gmm.egmm"
DTYPES = {"float32": torch.float32, "float64": torch.float64}
THETA = {"cx": 0.8, "cy": -0.8}
BOUNDS = {"cx": (-1.5, 1.5), "cy": (-1.5, 1.5)}
TRANSFORMS = 3
ROOFLINE_MAX_ROWS = 65536
CHUNKS = (1024, 4096, 16384, 65536, 262144)
SAMPLE_MAX_CHUNK = 65536
QUICK_CHUNKS = (1024, 4096)
METHOD = 2


# -- models ------------------------------------------------------------------------------------
def load_gmm(path: Path, seed: int) -> tuple[GMMDensity, str]:
    """The trained paper-toy model if ``path`` exists, else an untrained Table 6 model."""
    if path.exists():
        return GMMDensity.load(path), f"loaded {path.name}"
    toy = PaperToy()
    proj = LatentProjection.fit(toy.space, toy.sample(20000, 0.0, 0.0, seed=seed), f=0.5)
    torch.manual_seed(seed)
    model = GMMDensity(toy.space, ["cx", "cy"], proj, parameter_bounds=BOUNDS)
    return model, f"untrained Table 6 model (no file {path})"


def trainable_weights(module: nn.Module) -> int:
    """Weights that can be trained: every parameter entry except those a MADE mask (zuko's
    ``MaskedLinear``) multiplies by 0 in every call; such entries are stored but never act."""
    total = 0
    for m in module.modules():
        mask = getattr(m, "mask", None)
        for name, p in m.named_parameters(recurse=False):
            total += (int((mask != 0).sum()) if name == "weight" and mask is not None
                      else p.numel())
    return total


def flow_weights(kind: str, hidden: int, transforms: int) -> int:
    import zuko

    flow = getattr(zuko.flows, kind)(4, 2, transforms=transforms,
                                     hidden_features=(hidden, hidden))
    return trainable_weights(flow)


def matched_hidden(kind: str, target: int, transforms: int) -> int:
    """The hidden width whose flow's trainable weight count is closest to ``target``
    (bisection)."""
    lo, hi = 1, 4096
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if flow_weights(kind, mid, transforms) <= target else (lo, mid)
    return min((lo, hi), key=lambda h: abs(flow_weights(kind, h, transforms) - target))


def build_models(names: Sequence[str], gmm_path: Path, seed: int
                 ) -> dict[str, tuple[Any, dict[str, Any]]]:
    """name -> (model, description) for ``names`` among gmm, maf, nsf (the GMM is always
    built: it sets the flows' weight budget and projection)."""
    gmm, origin = load_gmm(gmm_path, seed)
    target = sum(gmm.n_weights())
    out: dict[str, tuple[Any, dict[str, Any]]] = {}
    if "gmm" in names:
        out["gmm"] = (gmm, {"class": "GMMDensity", "weights": target,
                            "weights_per_network": gmm.n_weights(), "origin": origin,
                            "knobs": {k: list(v) if isinstance(v, tuple) else v
                                      for k, v in gmm.config.items()}})
    for name in ("maf", "nsf"):
        if name not in names:
            continue
        kind = name.upper()
        hidden = matched_hidden(kind, target, TRANSFORMS)
        torch.manual_seed(seed)
        flow = FlowDensity(gmm.space, list(gmm.parameters), gmm.projection, kind=kind,
                           parameter_bounds=gmm.parameter_bounds, transforms=TRANSFORMS,
                           hidden_features=(hidden, hidden))
        weights = trainable_weights(flow.module.flow)
        out[name] = (flow, {"class": f"FlowDensity({kind})", "weights": weights,
                            "stored_weights": flow.n_weights(),
                            "weights_vs_gmm": weights / target, "hidden_features": [hidden] * 2,
                            "transforms": TRANSFORMS, "origin": "untrained zuko flow"})
    return out


# -- FLOPs per event ---------------------------------------------------------------------------
_BRANCHES = ("theta_branch", "input_branch", "joint")


def gmm_layers(model: GMMDensity, *, prepared: bool = False) -> list[tuple[int, int]]:
    """(in, out) of every linear product GMMDensity computes once per event in log_prob and
    sample (``prepared``: in ``log_prob_prepared``, where the input branch is cached).

    The θ branch runs once per θ; so does all of the first network, which has no per-event
    inputs. Per event: the input branch, the input columns of the first joint layer, then
    the trunk and the heads of networks 2…D.
    """
    layers = []
    for net in model.nets:
        branch = getattr(net, "input_branch", None)
        if branch is None:
            continue
        if not prepared:
            layers.append((branch.in_features, branch.out_features))
            layers.append((net.width_inputs, net.joint.out_features))
        layers += [(m.in_features, m.out_features) for name, m in net.named_modules()
                   if isinstance(m, nn.Linear) and name not in _BRANCHES]
    return layers


def flow_layers(flow: FlowDensity, *, sample: bool = False) -> list[tuple[int, int]]:
    """(in, out) of every linear product of a zuko autoregressive flow per event: one pass of
    each transform's masked network for log_prob, ``passes`` (= observables) for sampling."""
    layers = []
    for module in flow.module.flow.modules():
        hyper = getattr(module, "hyper", None)
        if hyper is None or not hasattr(module, "passes"):
            continue
        repeat = int(module.passes) if sample else 1
        for m in hyper.modules():
            if isinstance(m, nn.Linear):
                layers += [(m.in_features, m.out_features)] * repeat
    return layers


def model_layers(model: Any, op: str) -> list[tuple[int, int]]:
    if isinstance(model, GMMDensity):
        return gmm_layers(model, prepared=op == "log_prob_prepared")
    return flow_layers(model, sample=op == "sample")


def layer_flops(layers: Sequence[tuple[int, int]]) -> int:
    return int(sum(2 * k * n for k, n in layers))


def counted_flops(fn: Callable[[], Any]) -> int:
    """Matrix-product FLOPs torch executes in ``fn()`` (FlopCounterMode)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def measured_flops_per_event(model: Any, op: str, x: np.ndarray, device: torch.device,
                             n: int = 512) -> float:
    """FLOPs/event by FlopCounterMode: (FLOPs at 2n events − FLOPs at n events) / n, so that
    the work done once per θ drops out (``n`` at most half of ``x``)."""
    n = min(n, len(x) // 2)

    def run(m: int) -> Callable[[], Any]:
        if op == "sample":
            return lambda: model.sample(m, THETA, seed=0)
        xt = torch.as_tensor(x[:m], dtype=torch.float64, device=device)
        th = torch.tensor([THETA[p] for p in model.parameters], dtype=torch.float64,
                          device=device)
        if op == "log_prob_prepared":
            prepared = model.prepare(x[:m])
            return lambda: model.log_prob_prepared(prepared, th)
        return lambda: model.log_prob_tensor(xt, th)

    with torch.no_grad():
        return (counted_flops(run(2 * n)) - counted_flops(run(n))) / n


# -- the roofline ------------------------------------------------------------------------------
def matmul_rates(shapes: Sequence[tuple[int, int]], rows: int, dtype: torch.dtype,
                 device: torch.device, max_seconds: float) -> dict[tuple[int, int], float]:
    """GFLOP/s of the product of ``rows`` events through a K → N layer, for every (K, N):
    the faster of its two layouts, events as rows (rows × K) @ (K × N) (training, the
    flows' ``F.linear``) and events as columns (N × K) @ (K × rows) (egmm's frozen networks
    and mixture heads), best of a few calls each. A roofline bounds what the machine can do
    for the shape, so the slower layout must not set it: MKL's float64 (rows × 60) @ (60 × 20)
    kernel runs at a third of the speed of the other layout on an EPYC. Each layout gets
    ``max_seconds / 2`` of calls (after three warm-up calls), its best call counts."""
    rates = {}
    gen = torch.Generator(device="cpu").manual_seed(0)
    for k, n in sorted(set(shapes)):
        a = torch.randn(rows, k, generator=gen, dtype=dtype).to(device)
        b = torch.randn(k, n, generator=gen, dtype=dtype).to(device)
        best = math.inf
        for x, y in ((a, b), (b.T.contiguous(), a.T.contiguous())):
            # as many calls as fit in the time (a 400-row product takes ~10 µs: five calls
            # had left its best 30–50 % below the product's speed in a model's warm loop)
            t = timed(lambda x=x, y=y: torch.matmul(x, y), repeats=100_000, warmup=3,
                      max_seconds=max_seconds / 2, device=device)
            best = min(best, t["best"])
        rates[(k, n)] = 2.0 * rows * k * n / best / 1e9
    return rates


def layered_roofline(layers: Sequence[tuple[int, int]],
                     rates: dict[tuple[int, int], float]) -> float:
    """GFLOP/s bound of a sequence of products: Σ FLOPs / Σ (FLOPs / rate)."""
    flops = [2.0 * k * n for k, n in layers]
    seconds = sum(f / rates[s] for f, s in zip(flops, layers))
    return sum(flops) / seconds if seconds > 0 else math.nan


# -- measurements ------------------------------------------------------------------------------
def sample_kwargs(model: Any, dtype: torch.dtype, chunk: int) -> tuple[dict[str, Any], str]:
    """Keyword arguments of ``model.sample`` for ``dtype`` and ``chunk``, and the dtype the
    sampler actually computes in."""
    params = inspect.signature(model.sample).parameters
    kwargs: dict[str, Any] = {}
    if "chunk_size" in params:
        kwargs["chunk_size"] = chunk
    if "dtype" in params:
        kwargs["dtype"] = dtype
        return kwargs, str(dtype).removeprefix("torch.")
    return kwargs, "float64"


def measure_rounds(figures: list[dict[str, Any]], rounds: int, args: argparse.Namespace,
                   device: torch.device) -> list[dict[str, Any]]:
    """Events/s of every figure (a dict with ``fn``, ``warm``, ``events`` and its labels),
    measured in ``rounds`` interleaved rounds: each round times every figure in turn for
    ``--seconds / rounds`` (at least one call), so that a slow spell of a shared machine
    falls on all the models compared rather than on one of them. Per figure: the best and
    the median call over all rounds, and the best call of each round (for paired ratios)."""
    for fig in figures:
        fig["warm"]()
    times: list[list[list[float]]] = [[] for _ in figures]
    for r in range(rounds):
        # the order rotates, so that no figure always follows the same one
        order = list(range(len(figures)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            fig = figures[i]
            repeats = max(1, math.ceil(max(2, math.ceil(args.events / fig["events"])) / rounds))
            t = timed(fig["fn"], repeats=repeats, warmup=0, max_seconds=args.seconds / rounds,
                      device=device)
            times[i].append(t["seconds"])
    rows = []
    for fig, per_round in zip(figures, times):
        calls = sorted(s for round_ in per_round for s in round_)
        median = statistics.median(calls)
        events = fig["events"]
        rows.append({**fig["labels"], "events_per_second": events / calls[0],
                     "events_per_second_median": events / median,
                     "events_per_second_rounds": [events / min(r) for r in per_round],
                     "calls": len(calls), "rounds": rounds,
                     "seconds_per_call_best": calls[0], "seconds_per_call_median": median})
    return rows


def model_figures(name: str, model: Any, dtype_name: str, chunk: int, x: np.ndarray,
                  device: torch.device, api: bool, sample: bool) -> list[dict[str, Any]]:
    """The figures of one model at one dtype and chunk size: log_prob, the public log_prob
    (``api``) and sample (``sample``), each a call to time and a smaller warm-up call."""
    dtype = DTYPES[dtype_name]
    warm_n = min(chunk, 4096)
    th = torch.tensor([THETA[p] for p in model.parameters], dtype=dtype, device=device)
    xt = torch.as_tensor(x[:chunk], dtype=dtype, device=device)
    xw = xt[:warm_n]

    def log_prob(xx: torch.Tensor) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad():
                return model.log_prob_tensor(xx, th)
        return run

    def figure(op: str, effective: str, fn: Callable[[], Any], warm: Callable[[], Any]
               ) -> dict[str, Any]:
        return {"labels": {"model": name, "dtype": dtype_name, "chunk": chunk, "op": op,
                           "dtype_effective": effective},
                "fn": fn, "warm": warm, "events": chunk}

    figures = [figure("log_prob", dtype_name, log_prob(xt), log_prob(xw))]
    if api:
        xa = x[:chunk]
        figures.append(figure(
            "log_prob_api", dtype_name,
            lambda: model.log_prob(xa, THETA, dtype=dtype, chunk_size=chunk),
            lambda: model.log_prob(xa[:warm_n], THETA, dtype=dtype)))
    if sample:
        kwargs, effective = sample_kwargs(model, dtype, chunk)
        figures.append(figure("sample", effective,
                              lambda: model.sample(chunk, THETA, seed=1, **kwargs),
                              lambda: model.sample(warm_n, THETA, seed=0, **kwargs)))
    return figures


def best_rows(rows: list[dict[str, Any]], op: str, dtype: str) -> dict[str, dict[str, Any]]:
    """model -> its fastest row (over chunk sizes) for ``op`` and ``dtype``."""
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        if r["op"] == op and r["dtype"] == dtype:
            if r["model"] not in out or r["events_per_second"] > out[r["model"]][
                    "events_per_second"]:
                out[r["model"]] = r
    return out


def paired_ratios(a: dict[str, Any], b: dict[str, Any]) -> list[float]:
    """Per interleaved round, row ``a``'s best events/s over row ``b``'s (the same round of
    their chunk sizes: measured within seconds of each other when the chunks are equal)."""
    ra, rb = a.get("events_per_second_rounds") or [], b.get("events_per_second_rounds") or []
    return [x / y for x, y in zip(ra, rb)]


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per dtype and op: each model's best chunk, events/s, fraction of its roofline, and the
    ratios GMM/MAF and GMM/NSF of the best events/s; also the median (and range) over the
    interleaved rounds of the ratio round by round, both at their best chunks."""
    out: dict[str, Any] = {}
    for dtype in DTYPES:
        for op in ("log_prob", "sample"):
            best = best_rows(rows, op, dtype)
            if not best:
                continue
            entry = {m: {"chunk": r["chunk"], "events_per_second": r["events_per_second"],
                         "gflops": r.get("gflops"),
                         "fraction_of_roofline": r.get("fraction_of_roofline")}
                     for m, r in best.items()}
            for peer in ("maf", "nsf"):
                if "gmm" in best and peer in best:
                    entry[f"ratio_gmm_{peer}"] = (best["gmm"]["events_per_second"]
                                                  / best[peer]["events_per_second"])
                    paired = paired_ratios(best["gmm"], best[peer])
                    if paired:
                        entry[f"paired_ratio_gmm_{peer}"] = float(np.median(paired))
                        entry[f"paired_ratio_gmm_{peer}_range"] = [min(paired), max(paired)]
            out.setdefault(dtype, {})[op] = entry
    return out


# -- profiles ------------------------------------------------------------------------------------
def profile(fn: Callable[[], Any], device: torch.device, label: str, rows: int = 15
            ) -> dict[str, Any]:
    """torch.profiler of one call of ``fn``: the printed table and its top operators."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    fn()
    with torch_profile(activities=activities) as prof:
        fn()
        synchronize(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    averages = prof.key_averages()
    table = averages.table(sort_by=key, row_limit=rows)
    print(f"\n[profile] {label}\n{table}")
    total = sum(e.self_cpu_time_total for e in averages)
    top = sorted(averages, key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    return {"label": label, "self_cpu_total_us": total,
            "top": [{"name": e.key, "calls": e.count, "self_cpu_us": e.self_cpu_time_total,
                     "cpu_total_us": e.cpu_time_total,
                     "self_cpu_fraction": e.self_cpu_time_total / total if total else None}
                    for e in top],
            "table": table}


# -- driver ------------------------------------------------------------------------------------
def parse_ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", default=None,
                    help="comma-separated torch thread counts (default: torch's, then 1)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--models", default="gmm,maf,nsf")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--chunks", type=parse_ints, default=None,
                    help=f"events per call (default {','.join(map(str, CHUNKS))})")
    ap.add_argument("--events", type=int, default=None,
                    help="events to time per figure (default 2^20; fewer when --seconds is "
                         "reached)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="time limit per figure (default 1.0 s; at least one call)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds per chunk size: each round times every model in "
                         "turn for --seconds / rounds (default 5; 1 in --quick)")
    ap.add_argument("--sample-max-chunk", type=int, default=SAMPLE_MAX_CHUNK,
                    help="largest chunk size of the sampling figures (default 65536: larger "
                         "chunks sample no faster and take minutes per figure)")
    ap.add_argument("--api-chunk", type=int, default=65536,
                    help="chunk size of the public log_prob figure (default 65536)")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the GMMDensity file")
    ap.add_argument("--profile", action="store_true",
                    help="torch.profiler tables of one GMM log_prob and sample chunk")
    ap.add_argument("--quick", action="store_true", help="small sizes, one thread: a smoke run")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--matmul-precision", choices=("highest", "high", "medium"), default=None,
                    help="torch.set_float32_matmul_precision for the run (default: leave "
                         "torch's, 'highest'); on a GPU 'high' lets float32 products use TF32 "
                         "tensor cores, for every model alike. Recorded either way")
    ap.add_argument("--out", type=Path, default=None,
                    help="JSON file (default results/throughput.json, throughput_cuda.json "
                         "on a GPU)")
    args = ap.parse_args(argv)

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device")
    if args.matmul_precision is not None:
        torch.set_float32_matmul_precision(args.matmul_precision)
    default_threads = torch.get_num_threads()
    if args.threads is not None:
        thread_counts = parse_ints(args.threads)
    elif args.quick:
        thread_counts = (1,)
    else:
        thread_counts = tuple(dict.fromkeys((default_threads, 1)))
    chunks = args.chunks or (QUICK_CHUNKS if args.quick else CHUNKS)
    args.events = args.events or (max(chunks) if args.quick else 2**20)
    args.seconds = args.seconds if args.seconds is not None else (0.2 if args.quick else 1.0)
    args.rounds = args.rounds if args.rounds is not None else (1 if args.quick else 5)
    if args.rounds < 1:
        raise SystemExit(f"--rounds must be at least 1, got {args.rounds}")
    dtypes = [d for d in args.dtypes.split(",") if d]
    unknown = [d for d in dtypes if d not in DTYPES]
    if unknown:
        raise SystemExit(f"unknown dtypes {unknown} (float32, float64)")
    names = [m for m in args.models.split(",") if m]
    if [m for m in names if m not in ("gmm", "maf", "nsf")]:
        raise SystemExit(f"unknown models in {names} (gmm, maf, nsf)")
    api_chunk = min(chunks, key=lambda c: abs(c - args.api_chunk))
    out_path = args.out or RESULTS / ("throughput.json" if device.type == "cpu"
                                      else f"throughput_{device.type}.json")

    start = time.perf_counter()
    info = machine_info(device)
    print(f"device {device} ({info['gpu'] or info['cpu']}), torch threads {thread_counts}, "
          f"load average {info['load_average']}")
    models = build_models(names, args.model, args.seed)
    for name, (model, desc) in models.items():
        model.to(device)
        print(f"{name}: {desc['class']}, {desc['weights']} weights"
              + (f" (hidden {desc['hidden_features']}, {desc['weights_vs_gmm']:.3f} × GMM)"
                 if "hidden_features" in desc else f", {desc['origin']}"))
    x = PaperToy().sample(max(chunks), THETA["cx"], THETA["cy"], seed=args.seed)

    layers: dict[str, dict[str, list[tuple[int, int]]]] = {}
    for name, (model, desc) in models.items():
        ops = ("log_prob", "sample") + (("log_prob_prepared",) if name == "gmm" else ())
        layers[name] = {op: model_layers(model, op) for op in ops}
        torch.set_num_threads(thread_counts[0])
        desc["flops_per_event"] = {
            op: {"analytic": layer_flops(layers[name][op]),
                 "measured": measured_flops_per_event(model, op, x, device)}
            for op in ops}
        for op, f in desc["flops_per_event"].items():
            if abs(f["measured"] - f["analytic"]) > 0.01 * max(f["analytic"], 1):
                print(f"note: {name} {op}: FlopCounterMode counts {f['measured']:.0f} "
                      f"FLOPs/event, the layer shapes {f['analytic']}")
        desc["layers"] = {op: [list(s) for s in v] for op, v in layers[name].items()}
    shapes = sorted({s for per_model in layers.values() for v in per_model.values() for s in v})

    runs = []
    # float64 always: GMMDensity samples in float64 whatever dtype is asked
    roof_dtypes = list(dict.fromkeys([*dtypes, "float64"]))
    for threads in thread_counts:
        torch.set_num_threads(threads)
        run: dict[str, Any] = {"threads": threads, "load_average_start": load_average()}
        print(f"\n== {threads} thread(s), load average {run['load_average_start']}")
        roofline: dict[str, dict[str, Any]] = {}
        results = []
        for chunk in chunks:
            # the roofline of this chunk size just before and just after its models: the
            # better of the two is the limit (the load of other jobs comes and goes)
            before = {d: matmul_rates(shapes, min(chunk, ROOFLINE_MAX_ROWS), DTYPES[d], device,
                                      max_seconds=0.05 if args.quick else 0.25)
                      for d in roof_dtypes}
            load = load_average()
            rows = []
            for dtype_name in dtypes:
                figures = [fig for name, (model, _) in models.items()
                           for fig in model_figures(name, model, dtype_name, chunk, x, device,
                                                    api=chunk == api_chunk,
                                                    sample=chunk <= args.sample_max_chunk)]
                rows += measure_rounds(figures, args.rounds, args, device)
            after = {d: matmul_rates(shapes, min(chunk, ROOFLINE_MAX_ROWS), DTYPES[d], device,
                                     max_seconds=0.05 if args.quick else 0.25)
                     for d in roof_dtypes}
            for d in roof_dtypes:
                best = {s: max(before[d][s], after[d][s]) for s in shapes}
                roofline.setdefault(d, {})[str(chunk)] = {
                    "rows": min(chunk, ROOFLINE_MAX_ROWS), "peak_gflops": max(best.values()),
                    "peak_gflops_before": max(before[d].values()),
                    "peak_gflops_after": max(after[d].values()),
                    "load_average": load,
                    "shapes": {f"{k}x{n}": v for (k, n), v in best.items()},
                    "model_gflops": {name: {op: layered_roofline(v, best)
                                            for op, v in per_op.items() if v}
                                     for name, per_op in layers.items()}}
                print(f"roofline {d} rows {min(chunk, ROOFLINE_MAX_ROWS)}: peak "
                      f"{max(before[d].values()):.1f} before, {max(after[d].values()):.1f} "
                      f"after the models (GFLOP/s); load average {load}")
            for row in rows:
                name = row["model"]
                op = "log_prob" if row["op"] == "log_prob_api" else row["op"]
                flops = models[name][1]["flops_per_event"][op]["analytic"]
                limit = roofline[row["dtype_effective"]][str(chunk)]["model_gflops"][
                    name].get(op, math.nan)
                row["flops_per_event"] = flops
                row["gflops"] = flops * row["events_per_second"] / 1e9
                row["roofline_gflops"] = limit
                row["fraction_of_roofline"] = row["gflops"] / limit
                results.append(row)
                print(f"{name:4s} {row['op']:13s} {row['dtype']} chunk {chunk:7d}: "
                      f"{row['events_per_second']:10.4g} events/s, {row['gflops']:6.1f} GFLOP/s"
                      f" = {100 * row['fraction_of_roofline']:5.1f} % of {limit:.1f}",
                      flush=True)
        run.update(roofline=roofline, results=results, summary=summarise(results),
                   load_average_end=load_average())
        runs.append(run)
        print_summary(run)

    profiles = []
    if args.profile and "gmm" in models:
        gmm = models["gmm"][0]
        chunk = api_chunk
        for dtype_name in dtypes:
            dtype = DTYPES[dtype_name]
            xt = torch.as_tensor(x[:chunk], dtype=dtype, device=device)
            th = torch.tensor([THETA["cx"], THETA["cy"]], dtype=dtype, device=device)

            def one_chunk(xt: torch.Tensor = xt, th: torch.Tensor = th) -> Any:
                with torch.no_grad():
                    return gmm.log_prob_tensor(xt, th)

            profiles.append(profile(one_chunk, device,
                                    f"GMMDensity.log_prob_tensor, {chunk} events, {dtype_name}, "
                                    f"{torch.get_num_threads()} thread(s)"))
        kwargs, effective = sample_kwargs(gmm, torch.float32, chunk)
        profiles.append(profile(lambda: gmm.sample(chunk, THETA, seed=1, **kwargs), device,
                                f"GMMDensity.sample, {chunk} events ({effective}), "
                                f"{torch.get_num_threads()} thread(s)"))

    result = {
        "machine": info, "device": str(device), "gpu": info["gpu"],
        "settings": {"models": names, "dtypes": dtypes, "chunks": list(chunks),
                     "float32_matmul_precision": torch.get_float32_matmul_precision(),
                     "threads": list(thread_counts), "torch_default_threads": default_threads,
                     "events": args.events, "seconds": args.seconds, "rounds": args.rounds,
                     "api_chunk": api_chunk,
                     "sample_max_chunk": args.sample_max_chunk,
                     "theta": THETA, "quick": args.quick, "seed": args.seed,
                     "roofline_max_rows": ROOFLINE_MAX_ROWS,
                     # 2: flows matched on trainable weights, the roofline the faster of the
                     # two layouts per shape (1, earlier files: stored weights, rows layout)
                     "method": METHOD},
        "models": {name: desc for name, (_, desc) in models.items()},
        "runs": runs, "profiles": profiles,
        "wall_seconds": time.perf_counter() - start, "load_average_end": load_average(),
    }
    write_json(out_path, result)
    print(f"\n{out_path} ({result['wall_seconds']:.0f} s)")
    return result


def print_summary(run: dict[str, Any]) -> None:
    print(f"\n{run['threads']} thread(s): best chunk per model")
    for dtype, per_op in run["summary"].items():
        for op, entry in per_op.items():
            parts = [f"{m} {e['events_per_second']:.3g}/s ({100 * e['fraction_of_roofline']:.0f} %"
                     f" roofline, chunk {e['chunk']})"
                     for m, e in entry.items() if isinstance(e, dict)]
            ratios = [f"{k.removeprefix('ratio_').replace('_', '/')} {v:.2f}"
                      for k, v in entry.items() if k.startswith("ratio_")]
            print(f"  {op:8s} {dtype}: " + "; ".join(parts + ratios))


if __name__ == "__main__":
    main()
