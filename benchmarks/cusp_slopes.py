"""How well a trained model follows the toy's kinks at a cusp, event by event.

At c = (0, 0) the paper toy's likelihood depends on |cx| and |cy| (p0 and p3): each event's
log density has a kink there, and the size of a dataset's kink — what decides its MLE and
region — is the sum of its events' one-sided scores. For events drawn from the true pdf at
``--at`` this script takes every conditional's one-sided score in each of the four directions
(−cx, +cx, −cy, +cy; a forward difference of step ``--step``), with the truth
(``PaperToy.log_prob_conditionals``) and with each model (its networks in latent space), and
prints, per model, direction and observable whose true score is not zero:

- ``slope``: the least-squares slope of the model's per-event scores on the truth's (1: the
  kink is as deep as the truth's on every event; a smooth network whose kink sits off 0 has
  a slope well below 1 on one side);
- ``resid``: the rms of what is left, relative to the rms of the true score;
- ``bias``: the mean of (model − true) score, in units of the spread of an N = 400 dataset's
  score sum (σ = rms·√400 / 400): a model whose mean score is off by ``bias`` moves every
  N = 400 dataset's kink by that many of its own standard deviations.

    python benchmarks/cusp_slopes.py --model A.egmm --model B.egmm [--events 100000]

Writes ``benchmarks/results/cusp_slopes.json`` (``--out``). About 20 s per model.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from egmm import GMMDensity
from egmm.groundtruth import PaperToy

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from _common import RESULTS, machine_info, model_label, models_parser, write_json

DIRECTIONS = {"-cx": (-1.0, 0.0), "+cx": (1.0, 0.0), "-cy": (0.0, -1.0), "+cy": (0.0, 1.0)}
N_DATASET = 400


def one_sided_scores(log_prob: Any, at: tuple[float, float], step: float
                     ) -> dict[str, np.ndarray]:
    """Per direction, (log p(c + step·d) − log p(c)) / step per event and observable."""
    ref = log_prob(*at)
    return {name: (log_prob(at[0] + step * d[0], at[1] + step * d[1]) - ref) / step
            for name, d in DIRECTIONS.items()}


def compare(model: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Slope, relative residual and mean bias (in N = 400 dataset σ) of one score column."""
    rms = float(truth.std())
    slope = float(model @ truth / (truth @ truth))
    return {"slope": slope, "resid": float((model - slope * truth).std() / rms),
            "bias": float((model - truth).mean() / (rms / np.sqrt(N_DATASET))),
            "true_rms": rms}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = models_parser(__doc__)
    ap.add_argument("--events", type=int, default=100_000,
                    help="events drawn from the true pdf at --at (default 100000)")
    ap.add_argument("--at", type=float, nargs=2, default=(0.0, 0.0), metavar=("CX", "CY"))
    ap.add_argument("--step", type=float, default=0.01, help="one-sided step (default 0.01)")
    ap.add_argument("--seed", type=int, default=321)
    ap.add_argument("--out", type=Path, default=RESULTS / "cusp_slopes.json")
    args = ap.parse_args(argv)
    if args.events < 2 or not args.step > 0:
        raise SystemExit("--events must be ≥ 2 and --step > 0")
    toy = PaperToy()
    at = (float(args.at[0]), float(args.at[1]))
    x = toy.sample(args.events, *at, seed=args.seed)
    truth = one_sided_scores(lambda cx, cy: toy.log_prob_conditionals(x, cx, cy), at, args.step)
    names = list(toy.space.names)
    result: dict[str, Any] = {"machine": machine_info(), "at": list(at), "events": args.events,
                              "step": args.step, "seed": args.seed, "observables": names,
                              "models": {}}
    for path in args.model:
        model = GMMDensity.load(path)
        label = model_label(path).removesuffix(".egmm")
        if label in result["models"]:
            raise SystemExit(f"--model {path}: two models would be labelled {label!r}")
        with torch.no_grad():
            u = model.projection.forward(torch.as_tensor(x, dtype=torch.float64))

            def log_prob(cx: float, cy: float, m: GMMDensity = model,
                         u: torch.Tensor = u) -> np.ndarray:
                theta = torch.tensor([cx, cy], dtype=torch.float64)
                return m.log_prob_latent_per_observable(u, theta).numpy()

            scores = one_sided_scores(log_prob, at, args.step)
        rows = {}
        print(f"\n{label}: one-sided scores at c = {at} against the truth's")
        for direction, t in truth.items():
            for i, name in enumerate(names):
                if not t[:, i].std() > 0:  # this conditional does not depend on the direction
                    continue
                row = compare(scores[direction][:, i], t[:, i])
                rows[f"{direction} {name}"] = row
                print(f"  {direction:>3} {name}: slope {row['slope']:.3f}  resid "
                      f"{row['resid']:.3f}  bias {row['bias']:+.3f} σ(N=400)")
        result["models"][label] = rows
    write_json(args.out, result)
    print(f"\n{args.out}")
    return result


if __name__ == "__main__":
    main()
