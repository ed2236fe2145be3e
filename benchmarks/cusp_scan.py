"""Where a trained model's likelihood differs from the truth: per-observable Δ(−2 ln L) scans.

For one of the demo's nine datasets (paper Fig. 16; ``--dataset 4`` is the one drawn at
c = (0, 0), where both cusps of the toy's likelihood meet), scans −2 ln L along cx (cy held at
``--at-cy``) and along cy (cx held at ``--at-cx``), relative to its value at (at-cx, at-cy),
with the true pdf and with each trained ``GMMDensity``, and splits every scan into the four
conditionals of the chain, p(x0|c) · p(x1|x0, c) · p(x2|x0, x1, c) · p(x3|x0..x2, c): the
truth's from ``PaperToy.log_prob_conditionals``, the model's from its networks in latent space
(the projection's Jacobian does not depend on c, so the differences are the data-space ones).
A model whose total is too flat somewhere shows which observable's conditional is to blame.

    python benchmarks/cusp_scan.py --model benchmarks/results/paper_toy_gmm_dense30k.egmm \\
        --model benchmarks/results/paper_toy_gmm_fine20k.egmm

Prints the scans and writes them to ``benchmarks/results/cusp_scan.json`` (``--out``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from egmm import GMMDensity
from egmm.demo import fig16_datasets
from egmm.groundtruth import PaperToy

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from _common import RESULTS, machine_info, model_label, models_parser, write_json

STEPS = (-0.2, -0.1, -0.05, -0.02, 0.02, 0.05, 0.1, 0.2)


def model_terms(model: GMMDensity, x: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """−2 Σ_events log p_i(u_i | u_<i, c) per observable i, (4,)."""
    with torch.no_grad():
        u = model.projection.forward(torch.as_tensor(x, dtype=torch.float64))
        theta = torch.tensor([cx, cy], dtype=torch.float64)
        return -2.0 * model.log_prob_latent_per_observable(u, theta).sum(0).numpy()


def true_terms(toy: PaperToy, x: np.ndarray, cx: float, cy: float) -> np.ndarray:
    return -2.0 * toy.log_prob_conditionals(x, cx, cy).sum(0)


def scan(terms: Any, at: tuple[float, float], axis: int) -> list[dict[str, Any]]:
    """Δ(−2 ln L) per observable and in total at ``at`` + step along ``axis``."""
    ref = terms(*at)
    rows = []
    for step in STEPS:
        c = list(at)
        c[axis] += step
        d = terms(*c) - ref
        rows.append({"c": c, "total": float(d.sum()), "per_observable": d.tolist()})
    return rows


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = models_parser(__doc__)
    ap.add_argument("--dataset", type=int, default=4,
                    help="which of the demo's nine datasets (0–8, cx slowest; default 4: "
                         "the one drawn at c = (0, 0))")
    ap.add_argument("--seed", type=int, default=0, help="the demo's seed")
    ap.add_argument("--at-cx", type=float, default=0.0, help="the scans' origin, cx")
    ap.add_argument("--at-cy", type=float, default=0.0, help="the scans' origin, cy")
    ap.add_argument("--out", type=Path, default=RESULTS / "cusp_scan.json")
    args = ap.parse_args(argv)
    toy = PaperToy()
    datasets = fig16_datasets(args.seed, toy)
    if not 0 <= args.dataset < len(datasets):
        raise SystemExit(f"--dataset must be in 0..{len(datasets) - 1}, got {args.dataset}")
    truth_c, x = datasets[args.dataset]
    at = (args.at_cx, args.at_cy)
    fns = {"true pdf": lambda cx, cy: true_terms(toy, x, cx, cy)}
    for path in args.model:
        model = GMMDensity.load(path)
        label = model_label(path).removesuffix(".egmm")
        if label in fns:
            raise SystemExit(f"--model {path}: two models would be labelled {label!r}")
        fns[label] = lambda cx, cy, m=model: model_terms(m, x, cx, cy)
    result: dict[str, Any] = {
        "machine": machine_info(), "dataset": args.dataset,
        "true_c": [float(v) for v in truth_c], "events": len(x), "at": list(at),
        "observables": list(toy.space.names), "models": [str(p) for p in args.model],
        "scans": {}}
    for axis, name in enumerate(("cx", "cy")):
        result["scans"][name] = {label: scan(fn, at, axis) for label, fn in fns.items()}
        print(f"\nΔ(−2 ln L) along {name} from {at}, dataset drawn at c = "
              f"{tuple(result['true_c'])}: total [x0, x1, x2, x3]")
        for label, rows in result["scans"][name].items():
            print(f"  {label}")
            for r in rows:
                per = ", ".join(f"{v:+6.2f}" for v in r["per_observable"])
                print(f"    {name} = {r['c'][axis]:+.2f}: {r['total']:7.3f}  [{per}]")
    write_json(args.out, result)
    print(f"\n{args.out}")
    return result


if __name__ == "__main__":
    main()
