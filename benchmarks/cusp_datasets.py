"""How often a trained model passes the demo's test on datasets drawn on the toy's cusps.

The demo (paper Fig. 16) draws one dataset of N = 400 events per true point; three of its nine
points lie on the cusps of the toy's likelihood (cy = 0; (0, 0) on both), where the MLE sits on
a kink and the regions are V-shaped, and one dataset says little about how often a model
passes there. This script draws ``--datasets`` K fresh datasets at each point asked for
(default (0, 0) only; ``--axes`` adds (±0.8, 0) and (0, ±0.8)), analyses each exactly as the
demo does (``egmm.demo.analyse``: the true pdf's MLE from the four closed quadrants and its
regions, the model's; the same targets, |ΔMLE| < 0.25 σ and areas within 10 %), for every model
given, and prints per point and model the pass fraction with the median and spread of ΔMLE/σ
and of the area ratios.

    python benchmarks/cusp_datasets.py --model A.egmm --model B.egmm [--datasets 20] [--axes]

Results: ``benchmarks/results/cusp_datasets.json`` (``--out``). Datasets: dataset k at point p
from ``SeedSequence(seed, spawn_key=(p, k))``, seed 1000 by default (not the demo's datasets).
About 7 s per dataset and model on one core, the truth's analysis (shared by the models) as
much again; ``--workers`` processes share the datasets out.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from egmm.demo import (
    MAX_AREA_DEVIATION,
    MAX_SHIFT,
    analyse,
    compare,
    load_paper_toy_model,
    true_density,
)
from egmm.groundtruth import PaperToy
from egmm.likelihood import UnbinnedNLL

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from _common import RESULTS, machine_info, model_label, models_parser, write_json

ORIGIN = ((0.0, 0.0),)
AXES = ((0.0, 0.0), (-0.8, 0.0), (0.8, 0.0), (0.0, -0.8), (0.0, 0.8))
CONTOUR_SIZE = 48


def compare_on(events: np.ndarray, models: list[tuple[str, Any]]) -> dict[str, Any]:
    """The demo's analysis of one dataset with the true pdf and with each named density,
    compared: per name ΔMLE/σ, the area ratios (68.27 %, 95.45 %), the verdict, and
    ``at_other_minimum`` (``egmm.demo.compare``): the model's MLE is within 0.25 σ of another
    minimum of the true likelihood less than Δ(−2 ln L) = 1 above the true MLE, i.e. the
    model picked the other of two near-equal minima."""
    truth = analyse(UnbinnedNLL(events, true_density(PaperToy())), cusps=True,
                    size=CONTOUR_SIZE)
    out = {}
    for name, density in models:
        fitted = analyse(UnbinnedNLL(events, density), size=CONTOUR_SIZE, intervals=False)
        c = compare(truth, fitted)
        out[name] = {"shift_over_sigma": c["shift_over_sigma"],
                     "area_ratio": list(c["area_ratio"].values()), "passed": c["passed"],
                     "at_other_minimum": c["at_other_minimum"]}
    return out


def _one(paths: list[str], point: tuple[float, float], p: int, k: int, seed: int
         ) -> dict[str, Any]:
    """Dataset k at point p: the truth's analysis and each model's comparison with it."""
    torch.set_num_threads(1)
    toy = PaperToy()
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(p, k)))
    events = toy.sample(toy.N_EVENTS, *point, seed=rng)
    models = [(path, load_paper_toy_model(path)) for path in paths]
    return {"point": list(point), "k": k, "models": compare_on(events, models)}


def summarise(rows: list[dict[str, Any]], path: str) -> dict[str, Any]:
    shifts = np.array([[r["models"][path]["shift_over_sigma"][n] for n in ("cx", "cy")]
                       for r in rows])
    areas = np.array([r["models"][path]["area_ratio"] for r in rows], dtype=float)
    passed = np.array([r["models"][path]["passed"] for r in rows])
    shift_fails = (np.abs(shifts) >= MAX_SHIFT).any(1)
    other = np.array([r["models"][path].get("at_other_minimum", False) for r in rows])
    return {"datasets": len(rows), "passed": int(passed.sum()),
            # MLE fails where the model took the truth's other, near-equal minimum
            "shift_fails_other_minimum": int((shift_fails & other).sum()),
            "shift_median": np.median(shifts, 0).tolist(),
            "shift_abs_max": np.abs(shifts).max(0).tolist(),
            "area_median": np.median(areas, 0).tolist(),
            "area_worst": areas.flat[np.abs(areas - 1).argmax()].item(),
            "shift_fails": int(shift_fails.sum()),
            "area_fails": int((np.abs(areas - 1) > MAX_AREA_DEVIATION).any(1).sum())}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = models_parser(__doc__)
    ap.add_argument("--datasets", type=int, default=20, help="datasets per point (K)")
    ap.add_argument("--axes", action="store_true",
                    help="also the points (±0.8, 0), (0, ±0.8), not only (0, 0)")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=RESULTS / "cusp_datasets.json")
    args = ap.parse_args(argv)
    if args.datasets < 1 or args.workers < 1:
        ap.error("--datasets and --workers must be ≥ 1")
    paths = [str(p) for p in args.model]
    for p in paths:  # fail early on a bad file, not in a worker
        load_paper_toy_model(p)
    points = AXES if args.axes else ORIGIN
    jobs = [(paths, pt, p, k, args.seed) for p, pt in enumerate(points)
            for k in range(args.datasets)]
    start = time.perf_counter()
    with cf.ProcessPoolExecutor(args.workers,
                                mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(_one, *job) for job in jobs]
        for _ in tqdm(cf.as_completed(futures), total=len(futures), unit="dataset"):
            pass
        rows = [f.result() for f in futures]
    wall = time.perf_counter() - start
    summary: dict[str, Any] = {}
    for pt in points:
        at = [r for r in rows if tuple(r["point"]) == pt]
        key = f"({pt[0]:+.1f}, {pt[1]:+.1f})"
        summary[key] = {}
        for path in paths:
            s = summarise(at, path)
            summary[key][path] = s
            print(f"{key} {model_label(path)}: {s['passed']} of {s['datasets']} pass "
                  f"(MLE fails {s['shift_fails']}, {s['shift_fails_other_minimum']} of them "
                  f"at the truth's other minimum; area fails {s['area_fails']}); median "
                  f"ΔMLE/σ ({s['shift_median'][0]:+.2f}, {s['shift_median'][1]:+.2f}), "
                  f"max |ΔMLE|/σ ({s['shift_abs_max'][0]:.2f}, {s['shift_abs_max'][1]:.2f}); "
                  f"median areas {s['area_median'][0]:.2f} / {s['area_median'][1]:.2f}, "
                  f"worst {s['area_worst']:.2f}", flush=True)
    result = {"machine": machine_info(), "settings": {
        "datasets_per_point": args.datasets, "seed": args.seed, "workers": args.workers,
        "points": [list(p) for p in points], "wall_s": wall},
        "summary": summary, "datasets": rows}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
