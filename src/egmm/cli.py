"""The ``egmm`` command.

Subcommands:
    demo       the paper's inference test (Fig. 16) end to end: train, fit, compare, plot
               (:func:`egmm.demo.run_demo`).
    validate   the validation report of a trained model against held-out data: figures,
               metrics.json, summary.md with pass/fail checks (:func:`egmm.validation.report`);
               exit status 0 when every check passes, 1 when one fails.

Example:
    $ egmm demo --out demo-output            # about 10 minutes on two CPU cores
    $ egmm demo --out quick --quick          # smoke test, about a minute
    $ egmm validate model.egmm --data heldout.npz --out report    # x (N, D), theta (N, P)
    $ egmm validate model.egmm --data heldout.root:events --out report  # TTree/RNTuple
    $ egmm validate toy.egmm --paper-toy --events 5000 --out report   # PaperToy held-out data
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {value}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 0, got {value}")
    return value


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="the paper's inference test (Fig. 16): train the model, fit nine datasets",
        description=(
            "Train the expressive Gaussian mixture on the paper toy's dense 81-point grid, then "
            "fit the nine N = 400 datasets of the paper's Fig. 16 with the true pdf and with the "
            "model: MLEs and 68.27 % / 95.45 % profile-likelihood regions (2-parameter Wilks "
            "thresholds). Writes fig16.png, table.md, results.json and the model to --out. "
            "A finished model with the same configuration in --out is reused; an interrupted "
            "training resumes from its checkpoint."
        ),
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true",
                      help="the paper's 50,000 events per point, until early stopping (an hour "
                           "or more)")
    mode.add_argument("--quick", action="store_true",
                      help="smoke test: tiny network, one epoch, coarse regions (not a result)")
    # egmm.demo.DESIGNS, spelled out: the parser does not import the (heavy) demo module
    p.add_argument("--design", choices=("dense", "grid", "fine", "uniform", "mixed"),
                   default="dense",
                   help="training parameters: the paper's dense 81-point grid (default; the "
                        "49-point grid plus cx, cy = ±0.2), its 49-point grid, a finer 121-point "
                        "grid (the dense one plus ±0.1), or (cx, cy) "
                        "drawn uniformly over [-1.5, 1.5]^2 for every event (as many events "
                        "in all as the 49-point grid), or mixed: two thirds of the events on "
                        "the dense grid, one third uniform")
    # egmm.density.THETA_FEATURES, spelled out (the parser stays light)
    p.add_argument("--theta-features", type=_theta_features, default=None, metavar="KIND",
                   help="what the networks see of (cx, cy): one of linear (cx, cy: the "
                        "paper's networks; --full, --quick), abs (also |cx|, |cy|, the "
                        "default: the toy's likelihood has cusps at cx = 0 and cy = 0), "
                        "quadratic (also cx², cy²) or even (|cx|, |cy| alone), or four of "
                        "them separated by commas, one per observable x0..x3, e.g. "
                        "even,even,linear,even (the toy's p0, p1 and p3 depend on |cx|, "
                        "|cy| only)")
    p.add_argument("--activation", choices=("leaky_relu", "silu"), default=None,
                   help="the networks' hidden activation: silu (the default: smooth, so "
                        "that with abs features the likelihood's only kinks are exactly at "
                        "cx = 0 and cy = 0) or leaky_relu (the paper's; --full, --quick)")
    p.add_argument("--seed", type=_non_negative_int, default=0,
                   help="seeds training data, network, split and test datasets (default 0)")
    p.add_argument("--events-per-point", type=_positive_int, metavar="N",
                   help="training events per grid point (default 30000; --full 50000)")
    p.add_argument("--max-epochs", type=_positive_int, metavar="N",
                   help="training epochs per model (default 5, a fixed cosine budget; "
                        "--full: at most 1000, early stopping)")
    # egmm.training.SCHEDULES, spelled out
    p.add_argument("--schedule", choices=("plateau", "cosine"), default=None,
                   help="learning-rate schedule: cosine (default: a fixed budget of "
                        "--max-epochs) or plateau (halve on a plateau, stop early; the paper's, "
                        "--full)")
    p.add_argument("--lr", type=float, default=None, metavar="LR",
                   help="(peak) learning rate (default 2e-3; paper and --full: 1e-3)")
    p.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                   help="training batch size (default 1000; paper and --full: 500)")
    p.add_argument("--validation", type=float, default=None, metavar="F",
                   help="fraction of the events held out for validation (default 0.2; paper "
                        "and --full: 0.4)")
    p.add_argument("--members", type=_positive_int, default=None, metavar="N",
                   help="models trained independently (own data, projection, initialisation "
                        "and split) and averaged (default 1)")
    p.add_argument("--score-weight", type=float, default=None, metavar="A",
                   help="weight of the score term in training, with the toy's exact "
                        "conditional scores as targets (default 2; 0: maximum likelihood "
                        "alone, the paper's training; --full: 0)")
    p.add_argument("--cusp-spread", type=float, default=None, metavar="S",
                   help="grid designs: a grid point's coordinate 0 is drawn per event from "
                        "U(-S, S), so that the score term sees the cusps' one-sided slopes "
                        "(default 0.1; 0: the paper's points, as --full and --design uniform)")
    p.add_argument("--threads", type=_non_negative_int, default=1, metavar="N",
                   help="torch threads for training (default 1; 0: torch's default). Fits "
                        "always use one thread")
    p.add_argument("--workers", type=_positive_int, default=None, metavar="N",
                   help="processes the networks are trained in and the nine datasets "
                        "fitted in (default 2 on a machine with two or more cores; neither "
                        "the model nor the fits depend on it)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars or stage messages (the table is still printed)")
    p.add_argument("--model", metavar="FILE", action="append",
                   help="analyse this trained paper-toy model (e.g. the fidelity benchmark's "
                        "benchmarks/results/paper_toy_gmm.egmm) instead of training one; "
                        "repeat it to analyse the average of several models "
                        "(egmm.EnsembleDensity)")
    p.set_defaults(handler=_run_demo)


def _theta_features(text: str) -> str | tuple[str, ...]:
    kinds = ("linear", "abs", "quadratic", "even")
    parts = tuple(p.strip() for p in text.split(","))
    bad = [p for p in parts if p not in kinds]
    if bad or len(parts) not in (1, 4):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give one of {', '.join(kinds)}, or four of them separated by commas "
            f"(one per observable x0..x3)")
    return parts[0] if len(parts) == 1 else parts


def _run_demo(args: argparse.Namespace) -> int:
    from egmm.demo import run_demo

    results = run_demo(args.out, full=args.full, quick=args.quick, seed=args.seed,
                       progress=not args.no_progress, events_per_point=args.events_per_point,
                       max_epochs=args.max_epochs, threads=args.threads, model=args.model,
                       workers=args.workers, design=args.design,
                       theta_features=args.theta_features, activation=args.activation,
                       schedule=args.schedule,
                       lr=args.lr, batch_size=args.batch_size, validation=args.validation,
                       members=args.members, score_weight=args.score_weight,
                       cusp_spread=args.cusp_spread)
    if args.no_progress:  # run_demo printed nothing: the table still belongs on stdout
        print(Path(args.out, "table.md").read_text())
    n = len(results["datasets"])
    print(f"{results['passed']} of {n} datasets pass; total wall time "
          f"{results['wall_time_s']:.0f} s; outputs in {args.out}")
    return 0


def _point(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated numbers like 0.8,-0.8, got {text!r}") from None


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in (0, 1), got {value}")
    return value


def _add_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="validation report of a model against held-out data (figures, metrics, checks)",
        description=(
            "Compare a trained model with held-out data at each parameter point: 1-D and 2-D "
            "marginals with ratio and pull panels, 2-D pull maps with the pull-frequency "
            "table, double ratios, PIT of every conditional, KS / Cramér-von Mises / "
            "Anderson-Darling, binned χ², KL, JS and a classifier two-sample test, each next "
            "to its data-vs-data floor. Writes PNGs, metrics.json and summary.md to --out. "
            "Exit status 0 when every check passes, 1 when one fails, 2 on bad input."
        ),
    )
    p.add_argument("model", metavar="MODEL", help="model file (.egmm)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", metavar="FILE",
                        help=".npz with the events as 'x' (N, D) in the model's observable "
                             "order or one array per observable name, and their parameters "
                             "as 'theta' (N, P) or one array per parameter name; or a ROOT "
                             "file's TTree or RNTuple, FILE.root:TREE (uproot), one branch per "
                             "observable and per parameter, by name; events are grouped by "
                             "their θ")
    source.add_argument("--paper-toy", action="store_true",
                        help="held-out events of the paper's toy (egmm.groundtruth.PaperToy) "
                             "at its nine true hypotheses (or --theta), with the toy as the "
                             "truth of the floors")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    p.add_argument("--theta", type=_point, action="append", metavar="V,V",
                   help="only this θ point (repeatable), values in the model's parameter "
                        "order (a negative first value works: --theta -0.8,0.8)")
    p.add_argument("--theta-ref", type=_point, metavar="V,V",
                   help="reference point of the double ratios, one of the θ points "
                        "(default: the central one)")
    p.add_argument("--events", type=_positive_int, default=5000, metavar="N",
                   help="--paper-toy: events per θ point (default 5000)")
    p.add_argument("--n-model", type=_positive_int, default=50_000, metavar="N",
                   help="model events per θ point (default 50000)")
    p.add_argument("--bins", type=_positive_int, default=40, metavar="N",
                   help="bins of the 1-D histograms (default 40; 2-D: half)")
    p.add_argument("--alpha", type=_probability, default=0.0027, metavar="P",
                   help="family-wise false-alarm probability of each check (default 0.0027)")
    p.add_argument("--reweight", choices=("auto", "always", "never"), default="auto",
                   help="model ratio of the double ratios from importance weights "
                        "(default auto: where their effective sample size allows)")
    p.add_argument("--corner", choices=("ref", "all", "none"), default="ref",
                   help="2-D marginal corner plots at the reference point, all points, none")
    p.add_argument("--seed", type=_non_negative_int, default=0,
                   help="seed of samples and classifiers")
    p.add_argument("--threads", type=_non_negative_int, default=1, metavar="N",
                   help="torch and BLAS/OpenMP threads (default 1; 0: leave the defaults)")
    p.add_argument("--no-figures", action="store_true", help="metrics and summary only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(handler=_run_validate)


def _is_root(path: str) -> bool:
    """``FILE.root`` or ``FILE.root:TREE``."""
    return path.endswith(".root") or ".root:" in path


def _load_root(path: str, model: Any) -> dict[tuple[float, ...], Any]:
    """Events of a ROOT TTree or RNTuple (``FILE.root:TREE``; the file's only one without
    ``:TREE``),
    one branch per observable and per parameter, grouped by θ as :func:`_load_npz`."""
    from egmm.errors import InputError

    try:
        import uproot
    except ImportError:
        raise InputError(f"{path}: reading ROOT files needs uproot (pip install "
                         f"'egmm[uproot]')") from None
    file_name, _, tree_name = (path.rpartition(":") if ".root:" in path else (path, "", ""))
    try:
        f = uproot.open(file_name)
    except FileNotFoundError:
        raise InputError(f"{file_name}: no such data file") from None
    except Exception as exc:  # uproot's errors for a file that is no ROOT file
        raise InputError(f"{file_name}: not a readable ROOT file ({exc})") from None
    with f:
        trees = [k.split(";")[0] for k, c in f.classnames().items()
                 if c in ("TTree", "ROOT::RNTuple")]  # (uproot ≥ 5.6 writes RNTuples)
        if not tree_name:
            if len(trees) != 1:
                raise InputError(f"{file_name}: name the tree, {file_name}:TREE; the file has "
                                 f"the trees {sorted(set(trees))}")
            tree_name = trees[0]
        if tree_name not in trees:
            raise InputError(f"{file_name}: no tree {tree_name!r}; it has "
                             f"{sorted(set(trees))}")
        tree = f[tree_name]
        wanted = [*model.space.names, *model.parameters]
        missing = [b for b in wanted if b not in tree.keys()]
        if missing:
            raise InputError(f"{path}: no branches {missing} (one per observable and per "
                             f"parameter, by name); it has {sorted(tree.keys())}")
        arrays = tree.arrays(wanted, library="np")
    return _grouped(arrays, path, model)


def _load_npz(path: str, model: Any) -> dict[tuple[float, ...], Any]:
    """Events of ``path`` grouped by θ: {θ tuple: (n, D) array}."""
    import zipfile

    import numpy as np

    from egmm.errors import InputError

    try:
        if not zipfile.is_zipfile(path):  # (numpy would call it pickled data)
            raise InputError(f"{path}: not an .npz (zip) archive of arrays")
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except FileNotFoundError:
        raise InputError(f"{path}: no such data file") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    return _grouped(arrays, path, model)


def _grouped(arrays: dict[str, Any], path: str, model: Any) -> dict[tuple[float, ...], Any]:
    """Events and θ of ``arrays`` ('x' / 'theta' or one array per name), grouped by θ."""
    import numpy as np

    from egmm.errors import InputError

    names, params = model.space.names, model.parameters
    x = arrays["x"] if "x" in arrays else ({n: arrays[n] for n in names}
                                            if all(n in arrays for n in names) else None)
    if x is None:
        raise InputError(f"{path}: needs an array 'x' (N, {len(names)}) or one array per "
                         f"observable {list(names)}; has {sorted(arrays)}")
    x = model.space.validate(x, what=f"{path}: events")
    if "theta" in arrays:
        theta = np.asarray(arrays["theta"], dtype=np.float64)
        if theta.ndim == 1 and theta.size == len(x) * len(params):
            theta = theta.reshape(len(x), -1)
    elif all(p in arrays for p in params):
        theta = np.stack([np.asarray(arrays[p], dtype=np.float64) for p in params], axis=1)
    else:
        raise InputError(f"{path}: needs an array 'theta' (N, {len(params)}) or one array "
                         f"per parameter {list(params)}; has {sorted(arrays)}")
    if theta.shape != (len(x), len(params)):
        raise InputError(f"{path}: theta has shape {theta.shape}, expected "
                         f"({len(x)}, {len(params)}) for parameters {list(params)}")
    bad = ~np.isfinite(theta)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InputError(f"{path}: theta: parameter {params[col]!r} is {theta[row, col]} in "
                         f"row {row}")
    points, index = np.unique(theta, axis=0, return_inverse=True)
    index = np.asarray(index).ravel()
    return {tuple(float(v) for v in pt): x[index == k] for k, pt in enumerate(points)}


def _paper_toy_data(model: Any, thetas: list[tuple[float, ...]] | None, events: int,
                    seed: int) -> tuple[dict[tuple[float, ...], Any], Any]:
    import numpy as np

    from egmm.errors import InputError
    from egmm.groundtruth import PaperToy

    toy = PaperToy()
    if tuple(model.parameters) != toy.parameters or model.space.names != toy.space.names:
        raise InputError(f"--paper-toy needs a model of the paper toy (observables "
                         f"{list(toy.space.names)}, parameters {list(toy.parameters)}); this "
                         f"one has {list(model.space.names)}, {list(model.parameters)}")
    points = thetas or [tuple(float(v) for v in pt) for pt in toy.TRUE_HYPOTHESES]
    # held-out: a seed path of its own, so these are never the training events
    return {pt: toy.sample(events, *pt, seed=np.random.SeedSequence([seed, 7919, k]))
            for k, pt in enumerate(points)}, toy


def _run_validate(args: argparse.Namespace) -> int:
    import numpy as np

    from egmm.errors import InputError
    from egmm.serialization import load_model
    from egmm.validation import report

    model = load_model(args.model)
    for pt in (args.theta or []) + ([args.theta_ref] if args.theta_ref else []):
        if len(pt) != len(model.parameters):
            raise InputError(f"θ point {pt}: expected {len(model.parameters)} values "
                             f"{list(model.parameters)}")
    truth = None
    if args.paper_toy:
        data, truth = _paper_toy_data(model, args.theta, args.events, args.seed)
    else:
        data = (_load_root(args.data, model) if _is_root(args.data)
                else _load_npz(args.data, model))
        if args.theta:
            keep = {}
            for pt in args.theta:
                match = [k for k in data if np.allclose(k, pt)]
                if not match:
                    raise InputError(f"--theta {pt}: no events at this point in {args.data}; "
                                     f"it has {[list(k) for k in data]}")
                keep[match[0]] = data[match[0]]
            data = keep
    result = report(model, data, args.out, truth=truth, theta_ref=args.theta_ref,
                    n_model=args.n_model, bins=args.bins, bins_2d=max(args.bins // 2, 1),
                    alpha=args.alpha, reweight=args.reweight, seed=args.seed,
                    figures=not args.no_figures, corner=args.corner,
                    progress=not args.no_progress, threads=args.threads or None)
    for name, check in result["checks"].items():
        print(f"{name:>13}: {check['status']}")
    print(f"{'PASS' if result['passed'] else 'FAIL'}: {len(result['points'])} θ points; "
          f"summary in {Path(args.out, 'summary.md')}")
    return 0 if result["passed"] else 1


def build_parser() -> argparse.ArgumentParser:
    """The ``egmm`` argument parser (one subparser per subcommand)."""
    from egmm import __version__

    parser = argparse.ArgumentParser(
        prog="egmm",
        description="Neural density models p(x|θ) as unbinned likelihood terms for iminuit.",
    )
    parser.add_argument("--version", action="version", version=f"egmm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_demo(sub)
    _add_validate(sub)
    return parser


_POINT_OPTIONS = ("--theta", "--theta-ref")


def _join_negative_points(argv: Sequence[str]) -> list[str]:
    """``--theta -0.8,0.8`` → ``--theta=-0.8,0.8``: argparse would read a value that starts
    with '-' and is not a plain number as an option."""
    out: list[str] = []
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        nxt = items[i + 1] if i + 1 < len(items) else None
        if item in _POINT_OPTIONS and nxt is not None and nxt.startswith("-") and \
                len(nxt) > 1 and (nxt[1].isdigit() or nxt[1] == "."):
            out.append(f"{item}={nxt}")
            i += 2
            continue
        out.append(item)
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``egmm`` command; returns the exit status.

    egmm's own errors (bad options, unreadable files) and files or folders that cannot be
    written are reported in one line with status 2.
    """
    from egmm.errors import EgmmError, InputError

    parser = build_parser()
    args = parser.parse_args(_join_negative_points(sys.argv[1:] if argv is None else argv))
    if args.command is None:
        parser.print_help()
        return 2
    try:
        out = getattr(args, "out", None)
        if out is not None and Path(out).exists() and not Path(out).is_dir():
            raise InputError(f"--out {out}: is a file, not a folder")
        return int(args.handler(args))
    except EgmmError as exc:
        print(f"egmm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder that cannot be made or written, a full disk
        target = Path(str(exc.filename)) if exc.filename else None
        if out is not None and target is not None and (
                Path(out) in (target, *target.parents)):
            # (named without the temporary suffix of an atomic write)
            name = target.name.split(".tmp")[0]
            message = f"cannot write {name} in --out {out}: {exc.strerror or exc}"
        else:
            message = str(exc)
        print(f"egmm {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"egmm {args.command}: interrupted (rerun the same command to resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
