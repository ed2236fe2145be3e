"""The ``egmm`` command.

Subcommands:
    demo   the paper's inference test (Fig. 16) end to end: train, fit, compare, plot
           (:func:`egmm.demo.run_demo`).

Example:
    $ egmm demo --out demo-output            # about 15 minutes on two CPU cores
    $ egmm demo --out quick --quick          # smoke test, under a minute
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

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
            "Train the expressive Gaussian mixture on the paper toy's 49-point grid, then fit "
            "the nine N = 400 datasets of the paper's Fig. 16 with the true pdf and with the "
            "model: MLEs and 68.27 %% / 95.45 %% profile-likelihood regions (2-parameter Wilks "
            "thresholds). Writes fig16.png, table.md, results.json and the model to --out. "
            "A finished model with the same configuration in --out is reused; an interrupted "
            "training resumes from its checkpoint."
        ),
    )
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (created)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--full", action="store_true",
                      help="the paper's 50,000 events per point, until early stopping (hours)")
    mode.add_argument("--quick", action="store_true",
                      help="smoke test: tiny network, one epoch, coarse regions (not a result)")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds training data, network, split and test datasets (default 0)")
    p.add_argument("--events-per-point", type=_positive_int, metavar="N",
                   help="training events per grid point (default 10000; --full 50000)")
    p.add_argument("--max-epochs", type=_positive_int, metavar="N",
                   help="upper bound on training epochs (default 30; --full 1000)")
    p.add_argument("--threads", type=_non_negative_int, default=1, metavar="N",
                   help="torch threads for training (default 1; 0: torch's default). Fits "
                        "always use one thread")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars or stage messages (the table is still printed)")
    p.set_defaults(handler=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from egmm.demo import run_demo

    results = run_demo(args.out, full=args.full, quick=args.quick, seed=args.seed,
                       progress=not args.no_progress, events_per_point=args.events_per_point,
                       max_epochs=args.max_epochs, threads=args.threads)
    if args.no_progress:  # run_demo printed nothing: the table still belongs on stdout
        print(Path(args.out, "table.md").read_text())
    n = len(results["datasets"])
    print(f"{results['passed']} of {n} datasets pass; total wall time "
          f"{results['wall_time_s']:.0f} s; outputs in {args.out}")
    return 0


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``egmm`` command; returns the exit status.

    egmm's own errors (bad options, unreadable files) are reported in one line with status 2.
    """
    from egmm.errors import EgmmError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.handler(args))
    except EgmmError as exc:
        print(f"egmm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"egmm {args.command}: interrupted (rerun the same command to resume)",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
