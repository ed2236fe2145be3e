"""The MLE bias a trained model's θ-dependence implies, from its expected score.

KL(true ‖ model) measures the density everywhere, including errors that do not depend on θ and
so never change a likelihood ratio; an unbinned fit sees only how log p_model changes with θ.
At a point θ0 the MLE of N events drawn from the true pdf moves, to first order, by

    δθ = I⁻¹ (E[∇θ log p_model(x|θ0)] − E[∇θ log p_true(x|θ0)]),   x ~ p_true(·|θ0),

(I the per-event Fisher information; the true expected score is 0, its sample mean is
subtracted on the same events to cancel their noise), and its statistical error is
σ = √(diag I⁻¹ / N). This script prints δθ/σ for N = 400 (the demo's datasets) at points off
the toy's cusps (cx, cy ≠ 0, where the score exists), for each model given, and their rms and
maximum: the part of the demo's MLE shifts that does not depend on which 400 events were drawn.
The true score is a central difference (step 1e-5) of ``PaperToy.log_prob``; the model's is
autograd through ``log_prob_tensor``. Several models given with ``--average`` are also
evaluated as their average (``EnsembleDensity``).

    python benchmarks/score_bias.py --model A.egmm --model B.egmm [--average] [--events 400000]

Results: ``benchmarks/results/score_bias.json`` (``--out``). About a minute per model on two
threads with the default 400 000 events per point.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from egmm import EnsembleDensity, GMMDensity
from egmm.groundtruth import PaperToy

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from _common import RESULTS, machine_info, write_json

POINTS = ((-0.8, -0.8), (-0.8, 0.8), (0.8, -0.8), (0.8, 0.8), (0.4, 0.6), (-0.3, -1.0))
STEP = 1e-5
CHUNK = 50_000


def true_scores(toy: PaperToy, x: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """(n, 2) ∇θ log p_true per event by central differences."""
    return np.stack([
        (toy.log_prob(x, cx + STEP, cy) - toy.log_prob(x, cx - STEP, cy)) / (2 * STEP),
        (toy.log_prob(x, cx, cy + STEP) - toy.log_prob(x, cx, cy - STEP)) / (2 * STEP)], 1)


def mean_model_score(model: Any, x: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """(2,) mean over the events of ∇θ log p_model (autograd, chunked)."""
    xt = torch.as_tensor(x, dtype=torch.float64)
    total = np.zeros(2)
    for start in range(0, len(x), CHUNK):
        theta = torch.tensor([cx, cy], dtype=torch.float64, requires_grad=True)
        (grad,) = torch.autograd.grad(model.log_prob_tensor(xt[start:start + CHUNK],
                                                            theta).sum(), theta)
        total += grad.numpy()
    return total / len(x)


def shifts(models: list[tuple[str, Any]], toy: PaperToy, events: int, n: int, seed: int,
           points: tuple[tuple[float, float], ...] = POINTS
           ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(per point: c and σ_n; per model: δθ/σ at each point, rms, max) for named models."""
    out: dict[str, list[list[float]]] = {name: [] for name, _ in models}
    rows = []
    for k, (cx, cy) in enumerate(points):
        x = toy.sample(events, cx, cy, seed=np.random.SeedSequence([seed, k]))
        st = true_scores(toy, x, cx, cy)
        info = st.T @ st / len(x)
        sigma = np.sqrt(np.diag(np.linalg.inv(info)) / n)
        line = f"({cx:+.1f}, {cy:+.1f}) σ_{n} = ({sigma[0]:.3f}, {sigma[1]:.3f}):"
        for name, model in models:
            delta = mean_model_score(model, x, cx, cy) - st.mean(0)
            shift = np.linalg.solve(info, delta) / sigma
            out[name].append(shift.tolist())
            line += f"  {Path(name).name[:32]} ({shift[0]:+.3f}, {shift[1]:+.3f})"
        rows.append({"cx": cx, "cy": cy, "sigma": sigma.tolist()})
        print(line, flush=True)
    summary = {}
    for name, per_point in out.items():
        a = np.asarray(per_point)
        summary[name] = {"shift_over_sigma": per_point, "rms": float(np.sqrt((a * a).mean())),
                         "max_abs": float(np.abs(a).max())}
        print(f"{name}: rms δθ/σ {summary[name]['rms']:.3f}, max {summary[name]['max_abs']:.3f}")
    return rows, summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", action="append", required=True, type=Path,
                    help="a trained paper-toy GMMDensity (repeat for several)")
    ap.add_argument("--average", action="store_true",
                    help="also evaluate the average of all models given (EnsembleDensity)")
    ap.add_argument("--events", type=int, default=400_000, help="true events per point")
    ap.add_argument("--n", type=int, default=400, help="dataset size σ refers to")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--out", type=Path, default=RESULTS / "score_bias.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    toy = PaperToy()
    models: list[tuple[str, Any]] = [(str(p), GMMDensity.load(p)) for p in args.model]
    if args.average and len(models) > 1:
        models.append(("average of " + ", ".join(p.name for p in args.model),
                       EnsembleDensity([m for _, m in models])))
    points, summary = shifts(models, toy, args.events, args.n, args.seed)
    result = {"machine": machine_info(), "settings": {
        "events_per_point": args.events, "n": args.n, "seed": args.seed, "step": STEP},
        "points": points, "models": summary}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
