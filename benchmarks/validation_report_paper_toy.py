"""Validation report of the GMM trained by ``fidelity_paper_toy.py`` against held-out toy data.

Held-out PaperToy events at the nine true hypotheses of the paper's Fig. 16 ({−0.8, 0, 0.8}²,
drawn from a seed path the training never used) are compared with the model by
:func:`egmm.validation.report`, with the toy itself as the truth of the floors: figures,
``metrics.json`` and ``summary.md`` go to ``benchmarks/results/validation_report/``.

``--one-epoch`` also trains the same network on the same data for a single epoch — a
deliberately mis-trained model — and writes its report (metrics and summary only) next to it,
to show that the checks tell the two apart.

    python benchmarks/validation_report_paper_toy.py                 # ~2 minutes on 1 thread
    python benchmarks/validation_report_paper_toy.py --events 400 --no-figures \\
        --out benchmarks/results/validation_report_n400             # at the Fig. 16 size
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

import egmm.validation as ev
from egmm import GMMDensity, LatentProjection, train
from egmm.groundtruth import PaperToy

RESULTS = Path(__file__).parent / "results"


def held_out(toy: PaperToy, events: int, seed: int) -> dict[tuple[float, float], np.ndarray]:
    """Events at the nine true hypotheses; SeedSequence([seed, 7919, k]) is not a path of
    ``PaperToy.training_data`` (which spawns children of SeedSequence(seed))."""
    return {(float(cx), float(cy)): toy.sample(events, cx, cy,
                                                seed=np.random.SeedSequence([seed, 7919, k]))
            for k, (cx, cy) in enumerate(toy.TRUE_HYPOTHESES)}


def one_epoch_model(toy: PaperToy, setup: dict) -> GMMDensity:
    """The fidelity benchmark's GMM, on its training data, trained for one epoch only."""
    x, th = toy.training_data(toy.GRID_49, setup["events_per_point"], seed=setup["seed"])
    proj = LatentProjection.fit(toy.space, x[(th[:, 0] == 0) & (th[:, 1] == 0)], f=0.5)
    torch.manual_seed(setup["seed"])
    model = GMMDensity(toy.space, ["cx", "cy"], proj,
                       parameter_bounds={"cx": (-1.5, 1.5), "cy": (-1.5, 1.5)})
    train(model, x, th, batch_size=setup["batch_size"], max_epochs=1, seed=setup["seed"])
    return model


def print_checks(name: str, result: dict) -> None:
    print(f"{name}: {'PASS' if result['passed'] else 'FAIL'} "
          f"({result['timing']['total_s']:.0f} s)")
    for check, c in result["checks"].items():
        if c["status"] == "skipped":
            continue
        print(f"  {check:>13}: {c['status']:<4}  smallest p {c['smallest_p_model']:.3g} "
              f"(floor {c['smallest_p_floor']:.3g}, threshold {c['threshold']:.3g})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=RESULTS / "paper_toy_gmm.egmm")
    ap.add_argument("--out", type=Path, default=RESULTS / "validation_report")
    ap.add_argument("--events", type=int, default=10_000, help="held-out events per θ point")
    ap.add_argument("--n-model", type=int, default=50_000, help="model events per θ point")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dpi", type=float, default=110)
    ap.add_argument("--no-figures", action="store_true")
    ap.add_argument("--one-epoch", action="store_true",
                    help="also report on the same network trained for one epoch")
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (0: default)")
    args = ap.parse_args()
    threads = args.threads or None
    if threads:
        torch.set_num_threads(threads)

    toy = PaperToy()
    data = held_out(toy, args.events, args.seed)
    model = GMMDensity.load(args.model)
    result = ev.report(model, data, args.out, truth=toy, n_model=args.n_model,
                       seed=args.seed, figures=not args.no_figures, dpi=args.dpi,
                       threads=threads)
    print_checks(f"{args.model.name} -> {args.out}", result)

    if args.one_epoch:
        setup = json.loads((RESULTS / "fidelity_paper_toy.json").read_text())["setup"]
        t0 = time.perf_counter()
        bad = one_epoch_model(toy, setup)
        print(f"one-epoch model trained in {time.perf_counter() - t0:.0f} s")
        out = args.out.with_name(args.out.name + "_one_epoch")
        bad_result = ev.report(bad, data, out, truth=toy, n_model=args.n_model,
                               seed=args.seed, figures=False, threads=threads)
        print_checks(f"one-epoch model -> {out}", bad_result)


if __name__ == "__main__":
    main()
