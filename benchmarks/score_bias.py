"""The MLE bias and region size a trained model's θ-dependence implies, from its expected score.

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

The same events give the regions' size: the 2-parameter Wilks region of N events has area
∝ det(N·I)^(−1/2), I = −E[∇²θ log p(x|θ0)], so a model's region is, to leading order,
``area_ratio`` = √(det I_true / det I_model) times the truth's (the demo's "area model/true").
I_true is the truth's second difference of the mean log density (step 1e-4), I_model the
difference of the model's autograd mean score (step 1e-3; see :func:`mean_model_hessian`).
A ratio below 1: the model's likelihood is sharper in θ than the truth's (regions too small).
Its statistical error (a jackknife over 8 blocks of the events) is printed and stored with it:
the model's curvature, a difference across kinks that differ from event to event, is noisy.

    python benchmarks/score_bias.py --model A.egmm --model B.egmm [--average] [--events 400000]

Results: ``benchmarks/results/score_bias.json`` (``--out``). About 6 min per model on two
threads with the default 400 000 events per point (3 min with ``--events 200000``, the stored
results).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from egmm import EnsembleDensity, GMMDensity
from egmm.groundtruth import PaperToy

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from _common import RESULTS, machine_info, models_parser, write_json

POINTS = ((-0.8, -0.8), (-0.8, 0.8), (0.8, -0.8), (0.8, 0.8), (0.4, 0.6), (-0.3, -1.0))
# --near-cusps: points H off the cusps next to the demo's datasets on them, (0, 0), (±0.8, 0)
# and (0, ±0.8), one per side: there the one-sided scores set where a fit's kink lies relative
# to its smooth part (the truth's expected one-sided score is 0 there too)
H = 0.005
NEAR_CUSPS = tuple((sx * H, sy * H) for sx in (1, -1) for sy in (1, -1)) + tuple(
    p for c in (0.8, -0.8) for s in (1, -1) for p in ((c, s * H), (s * H, c)))
STEP = 1e-5
H_STEP = 1e-3  # the model Hessian's difference step (see mean_model_hessian)
BLOCKS = 8  # the events of a point are split in blocks for the area ratio's jackknife error
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


def true_hessian(toy: PaperToy, x: np.ndarray, cx: float, cy: float, h: float = 1e-4
                 ) -> np.ndarray:
    """(2, 2) mean over the events of ∇²θ log p_true (central second differences)."""
    def f(dx: float, dy: float) -> float:
        return float(toy.log_prob(x, cx + dx, cy + dy).mean())
    f0 = f(0, 0)
    hxx = (f(h, 0) - 2 * f0 + f(-h, 0)) / h**2
    hyy = (f(0, h) - 2 * f0 + f(0, -h)) / h**2
    hxy = (f(h, h) - f(h, -h) - f(-h, h) + f(-h, -h)) / (4 * h * h)
    return np.array([[hxx, hxy], [hxy, hyy]])


def mean_model_hessian(model: Any, x: np.ndarray, cx: float, cy: float, h: float = H_STEP
                       ) -> np.ndarray:
    """(2, 2) mean over the events of ∇²θ log p_model: central differences of the autograd
    mean score. Not a double backward: a LeakyReLU network is piecewise linear in θ, so autograd
    sees only the curvature inside each linear piece; the kinks, at θ values that differ from
    event to event, are dense in θ over many events and make up the rest of the curvature of
    the mean log density, which a difference over ``h`` collects."""
    rows = [(mean_model_score(model, x, cx + h, cy) - mean_model_score(model, x, cx - h, cy)),
            (mean_model_score(model, x, cx, cy + h) - mean_model_score(model, x, cx, cy - h))]
    hess = np.array(rows) / (2 * h)
    return (hess + hess.T) / 2


def area_ratio(hess_true: np.ndarray, hess_model: np.ndarray, sizes: np.ndarray
               ) -> tuple[float | None, float | None]:
    """√(det H_true / det H_model) from per-block mean Hessians (B, 2, 2) of blocks of
    ``sizes`` events, and its jackknife standard error over the blocks; (None, None) where the
    model's expected log-likelihood has no maximum (its Hessian is not negative definite)."""
    def ratio(keep: np.ndarray) -> float | None:
        w = sizes[keep] / sizes[keep].sum()
        ht, hm = np.tensordot(w, hess_true[keep], 1), np.tensordot(w, hess_model[keep], 1)
        if not np.all(np.linalg.eigvalsh(hm) < 0):
            return None
        return float(np.sqrt(np.linalg.det(ht) / np.linalg.det(hm)))
    full = ratio(np.ones(len(sizes), bool))
    if full is None:
        return None, None
    loo = [ratio(np.arange(len(sizes)) != b) for b in range(len(sizes))]
    if any(v is None for v in loo):
        return full, None
    a = np.asarray(loo, dtype=float)
    return full, float(np.sqrt((len(a) - 1) / len(a) * ((a - a.mean()) ** 2).sum()))


def shifts(models: list[tuple[str, Any]], toy: PaperToy, events: int, n: int, seed: int,
           points: tuple[tuple[float, float], ...] = POINTS
           ) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(per point: c and σ_n; per model: δθ/σ at each point, rms, max, and the area ratio
    with its jackknife error at each point, their mean and largest deviation from 1) for named
    models."""
    out: dict[str, list[list[float]]] = {name: [] for name, _ in models}
    areas: dict[str, list[float | None]] = {name: [] for name, _ in models}
    area_errors: dict[str, list[float | None]] = {name: [] for name, _ in models}
    rows = []
    for k, (cx, cy) in enumerate(points):
        x = toy.sample(events, cx, cy, seed=np.random.SeedSequence([seed, k]))
        st = true_scores(toy, x, cx, cy)
        info = st.T @ st / len(x)
        blocks = np.array_split(np.arange(len(x)), BLOCKS)  # for the areas' jackknife
        sizes = np.array([len(b) for b in blocks], dtype=float)
        hess_true = np.stack([true_hessian(toy, x[b], cx, cy) for b in blocks])
        sigma = np.sqrt(np.diag(np.linalg.inv(info)) / n)
        line = f"({cx:+.3f}, {cy:+.3f}) σ_{n} = ({sigma[0]:.3f}, {sigma[1]:.3f}):"
        for name, model in models:
            delta = mean_model_score(model, x, cx, cy) - st.mean(0)
            shift = np.linalg.solve(info, delta) / sigma
            out[name].append(shift.tolist())
            # region area ∝ det(−Hessian of the expected log-likelihood)^(−1/2)
            hess = np.stack([mean_model_hessian(model, x[b], cx, cy) for b in blocks])
            area, error = area_ratio(hess_true, hess, sizes)
            areas[name].append(area)
            area_errors[name].append(error)
            line += (f"  {Path(name).name[:32]} ({shift[0]:+.3f}, {shift[1]:+.3f}) area×"
                     + ("—" if area is None else f"{area:.3f}")
                     + ("" if error is None else f"±{error:.3f}"))
        rows.append({"cx": cx, "cy": cy, "sigma": sigma.tolist()})
        print(line, flush=True)
    summary = {}
    for name, per_point in out.items():
        a = np.asarray(per_point)
        r = np.asarray([v for v in areas[name] if v is not None])
        no_max = len(areas[name]) - len(r)
        summary[name] = {"shift_over_sigma": per_point, "rms": float(np.sqrt((a * a).mean())),
                         "max_abs": float(np.abs(a).max()), "area_ratio": areas[name],
                         "area_ratio_error": area_errors[name],
                         "area_ratio_mean": float(r.mean()) if len(r) else None,
                         "area_ratio_max_dev": float(np.abs(r - 1).max()) if len(r) else None,
                         "points_without_maximum": no_max}
        areas_text = (f"area ratio mean {r.mean():.3f}, max |ratio − 1| {np.abs(r - 1).max():.3f}"
                      if len(r) else "area ratio undefined")
        print(f"{name}: rms δθ/σ {summary[name]['rms']:.3f}, max {summary[name]['max_abs']:.3f}; "
              + areas_text + (f" ({no_max} points without a maximum)" if no_max else ""))
    return rows, summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = models_parser(__doc__)
    ap.add_argument("--average", action="store_true",
                    help="also evaluate the average of all models given (EnsembleDensity)")
    ap.add_argument("--events", type=int, default=400_000, help="true events per point")
    ap.add_argument("--n", type=int, default=400, help="dataset size σ refers to")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--near-cusps", action="store_true",
                    help=f"evaluate at the {len(NEAR_CUSPS)} points ±{H} off the cusps next "
                         "to the demo's datasets on them (one-sided scores), not the "
                         "off-cusp points")
    ap.add_argument("--out", type=Path, default=RESULTS / "score_bias.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    toy = PaperToy()
    models: list[tuple[str, Any]] = [(str(p), GMMDensity.load(p)) for p in args.model]
    if args.average and len(models) > 1:
        models.append(("average of " + ", ".join(p.name for p in args.model),
                       EnsembleDensity([m for _, m in models])))
    points, summary = shifts(models, toy, args.events, args.n, args.seed,
                             NEAR_CUSPS if args.near_cusps else POINTS)
    result = {"machine": machine_info(), "settings": {
        "events_per_point": args.events, "n": args.n, "seed": args.seed, "step": STEP,
        "near_cusps": args.near_cusps},
        "points": points, "models": summary}
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
