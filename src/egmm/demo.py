"""The paper's inference test (Menary & Price, Section 6, Fig. 16), end to end: ``egmm demo``.

1. Generate the paper toy on the paper's dense 81-point training grid (:attr:`PaperToy.GRID_81`:
   its 49-point grid :attr:`PaperToy.GRID_49` with ±0.2 added on both axes, so that the model
   sees the likelihood's cusps at cx = 0 and cy = 0 from close by), on the 49-point grid, or
   with parameters drawn uniformly over the trained square, one per event
   (:meth:`PaperToy.training_data_uniform`).
2. Fit the latent projection on the c = (0, 0) sample (f = 0.5, smoothed), build the Table 6
   :class:`~egmm.GMMDensity` (by default with |cx|, |cy| as extra network inputs,
   ``theta_features="abs"``, and the smooth SiLU activation) and :func:`~egmm.train` it (by
   default for a fixed budget of 5 epochs along a cosine, with the toy's exact conditional
   scores regressed on as well: ``train(score=)``; ``full``: the paper's recipe, maximum
   likelihood alone; resumable; a finished model whose configuration matches is reused). With
   ``members`` > 1 several such models are trained independently (own data, projection,
   initialisation and split) and averaged (:class:`~egmm.EnsembleDensity`).
3. For each of the nine datasets of Fig. 16 (true c ∈ {−0.8, 0, 0.8}², N = 400 events drawn
   from the true pdf) build two costs on the same events — the exact toy pdf and the trained
   model — and compute the MLE and the 68.27 % / 95.45 % profile-likelihood regions with the
   2-parameter Wilks thresholds Δ(−2 ln L) = 2.296 / 6.180 (the paper's Fig. 16 drew Δ = 1 / 4,
   which for two parameters enclose 39 % / 86 %).
4. Compare model with truth: (MLE_model − MLE_true)/σ_true per parameter, with σ_true the
   half-width of the true pdf's 68.27 % profile interval (Δ(−2 ln L) = 1, as MINOS), and the
   ratio of region areas model/true. Targets: |ΔMLE| < 0.25 σ and areas within 10 %.

Outputs in the chosen folder: ``fig16.png``, ``table.md``, ``results.json``, the model
(``model.egmm`` with ``model.json``) and its training history (``history.json``); with several
members ``member<k>.egmm`` / ``.json`` / ``-history.json`` for each.

The true pdf depends on |cx| and |cy|, so its likelihood has cusps along cx = 0 and cy = 0,
and near-mirror minima (only p2 tells the signs of cx and cy apart). Every MLE is therefore the
best of MIGRAD fits inside each of the four closed quadrants (where the true likelihood is
smooth), polished by an unrestricted MIGRAD; where Minuit's MNCONTOUR cannot follow a region
across a cusp, the region is found by :func:`ray_region` instead (both methods place every
vertex on the Wilks level, so areas are comparable). ``results.json`` records which method
drew which region.

References:
    Menary & Price, Section 6 and Fig. 16 (``papers/001_2015fc5d33fdc4c7.txt``);
    the resolved toy: ``reference/paper-toy.md``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import pickle
import platform
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.stats import chi2
from tqdm.auto import tqdm

from egmm._io import savefig_atomic, write_text_atomic
from egmm.base import DensityModel, whole_number
from egmm.density import GMM_DEFAULTS, THETA_FEATURES, GMMDensity
from egmm.ensemble import EnsembleDensity
from egmm.errors import EgmmError, InputError, ModelFileError
from egmm.groundtruth import PaperToy
from egmm.infer import FitResult, contour, fit, wilks_threshold
from egmm.latent import LatentProjection
from egmm.likelihood import TorchDensity, UnbinnedNLL
from egmm.networks import check_activation
from egmm.training import TrainingHistory, _init_worker, check_training_settings, train

try:  # POSIX only
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

__all__ = [
    "DemoConfig",
    "demo_config",
    "fig16_datasets",
    "polygon_area",
    "ray_region",
    "run_demo",
    "toy_log_prob",
    "true_density",
]

#: Confidence levels of the regions drawn and compared (iminuit semantics: probabilities).
LEVELS = (0.6827, 0.9545)
#: The 2-D region whose projections are the 1-D 68.27 % profile intervals (Δ(−2 ln L) = 1).
SIGMA_LEVEL = float(chi2.cdf(1.0, 2))
#: Targets of the comparison model vs. truth.
MAX_SHIFT = 0.25  # |MLE_model − MLE_true| / σ_true
MAX_AREA_DEVIATION = 0.10  # |area_model / area_true − 1|
#: Trained range of (cx, cy): the training grid.
BOUNDS = {"cx": (-1.5, 1.5), "cy": (-1.5, 1.5)}
#: Training designs (:class:`DemoConfig`'s ``design``).
DESIGNS = ("dense", "grid", "fine", "uniform", "mixed")
# the grid designs' PaperToy attributes (one place for the grid and the model key's name of it)
_GRID_NAMES = {"grid": "GRID_49", "dense": "GRID_81", "fine": "GRID_121", "mixed": "GRID_81"}

_PI = math.pi
_LOG_700 = math.log(700.0)
_SIGMA1 = 0.05
_LOG_NORM1 = 0.5 * math.log(2.0 * _PI) + math.log(_SIGMA1) + _LOG_700
_K3 = 11.0
_LOG_Z3 = math.log(2.0 * _K3 / 10.0) - math.log(-math.expm1(-2.0 * _K3))
# the test datasets draw from SeedSequence(seed, spawn_key=(_DATASET_KEY, i)), independent of
# the training data (grid designs: children SeedSequence(seed).spawn(P), keys (0,) … (P − 1,),
# never two entries long; uniform design: SeedSequence(seed) itself)
_DATASET_KEY = 16
# the projection sample of a design without exact c = (0, 0) events: the uniform design's
# from SeedSequence(seed, spawn_key=(_PROJECTION_KEY,)) (its training data use
# SeedSequence(seed) itself, so no grid child key can coincide), a grid design's with
# cusp_spread from (_PROJECTION_KEY, 0) (a one-entry key would be grid point 17's stream)
_PROJECTION_KEY = 17
# ensemble member k ≥ 1 trains from SeedSequence(seed, spawn_key=(_MEMBER_KEY, k)) (member 0
# from the seed itself, as a single model does)
_MEMBER_KEY = 18
# the mixed design's uniformly drawn events: SeedSequence(seed, spawn_key=(_MIXED_KEY, 0))
# (two entries: (_MIXED_KEY,) is the stream of the grid's point 19)
_MIXED_KEY = 19
# a Minuit contour whose fit lies this far (in −2 ln L) above the best quadrant fit is not used
_FVAL_TOLERANCE = 1e-4
# quadrant minima closer than this in cx and cy are one minimum (the narrowest σ on the toy's
# datasets is ~0.013, at (0, 0); mirror minima lie ~0.1 apart)
_DISTINCT = 0.01


# -- configuration --------------------------------------------------------------------------------
@dataclass(frozen=True)
class DemoConfig:
    """Everything that decides what the demo computes.

    Attributes:
        mode: "default", "full" (the paper's 50,000 events per point) or "quick" (smoke test).
        events_per_point: training events per grid point.
        max_epochs: training epochs: the fixed budget of the cosine schedule, or the upper
            bound of the plateau schedule (whose early stopping usually ends earlier).
        batch_size: training batch size (paper: 500).
        lr: (peak) learning rate (paper: 1e-3).
        schedule: ``egmm.train``'s learning-rate schedule: "plateau" (the paper's: halve on a
            plateau, stop early) or "cosine" (a fixed budget of ``max_epochs`` epochs).
        validation: the fraction of events held out for validation (paper: 0.4).
        network: GMMDensity options overriding paper Table 6 (empty: Table 6).
        contour_size: vertices per confidence region.
        seed: seeds the training data, the network initialisation, the split and the nine
            test datasets.
        members: models trained independently (each its own training data, projection,
            initialisation and split: :meth:`member_seed`) and averaged by
            :class:`~egmm.EnsembleDensity`; 1: a single model.
        design: the training parameters: "dense" (default: the paper's 81-point grid, which
            adds cx, cy = ±0.2 to the 49-point one so that the model sees the likelihood's
            cusps at cx = 0 and cy = 0 from close by), "grid" (the paper's 49-point grid),
            "fine" (121 points: the dense grid plus ±0.1 on both axes; not in the paper) or
            "uniform" (each event's (cx, cy) drawn uniformly over [−1.5, 1.5]², as many
            events in all as the 49-point grid has) or "mixed" (two thirds of
            ``events_per_point`` at each point of the dense grid, the other third's worth
            drawn uniformly: the grid's axes pin the cusps, the uniform part covers θ
            between the points; as many events as the dense grid).
        train_threads: torch threads while training (0: torch's default); fits use one.
        train_workers: processes the networks are trained in (``egmm.train(workers=)``; the
            model is the same for any number), and the nine datasets are fitted in (the
            results are those of one process). Default: 2, or 1 on a one-core machine.
        score_weight: α of ``egmm.train``'s score term, with the toy's exact conditional
            scores (:meth:`PaperToy.conditional_scores`) as targets; 0: maximum likelihood
            alone (the paper's training).
        cusp_spread: s > 0: the grid designs' points on the cusps (cx = 0 or cy = 0) get
            that coordinate drawn per event uniformly from [−s, s] instead of exactly 0, so
            that the score term sees the cusps' one-sided slopes (exactly on a cusp the
            score is the mean of the two, and the slope right next to it is otherwise
            pinned only by the points at ±0.2); the projection then gets its own
            c = (0, 0) sample. 0: the paper's points (``full``, ``quick``); the default
            mode's is 0.1.
    """

    mode: str
    events_per_point: int
    max_epochs: int
    batch_size: int = 500
    network: Mapping[str, Any] = field(default_factory=dict)
    lr: float = 1e-3
    schedule: str = "plateau"
    validation: float = 0.4
    contour_size: int = 48
    seed: int = 0
    train_threads: int = 1
    train_workers: int = 1
    design: str = "dense"
    members: int = 1
    score_weight: float = 0.0
    cusp_spread: float = 0.0

    def member_seed(self, k: int) -> int:
        """The seed member ``k`` is trained with: ``seed`` itself for member 0, for k ≥ 1 one
        drawn from ``SeedSequence(seed, spawn_key=(18, k))`` (independent of the test
        datasets' and the other members' streams)."""
        if k == 0:
            return self.seed
        # 32 bits: train() derives per-epoch torch seeds from it by multiplication
        return int(np.random.SeedSequence(self.seed, spawn_key=(_MEMBER_KEY, k))
                   .generate_state(1)[0])

    def member(self, k: int) -> DemoConfig:
        """The configuration member ``k`` is trained with (its seed, one member)."""
        return replace(self, seed=self.member_seed(k), members=1)

    @property
    def grid(self) -> np.ndarray | None:
        """The training grid ``(P, 2)`` in the order (cx, cy); None for the uniform design."""
        name = _GRID_NAMES.get(self.design)
        return None if name is None else getattr(PaperToy, name)

    def _mixed_split(self) -> tuple[int, int]:
        """The mixed design's events per grid point and its uniformly drawn events: two
        thirds of ``events_per_point`` at each point, the other third's worth uniform."""
        per_point = (2 * self.events_per_point) // 3
        assert self.grid is not None
        return per_point, (self.events_per_point - per_point) * len(self.grid)

    def training_data(self, toy: PaperToy) -> tuple[np.ndarray, np.ndarray]:
        """The training events and their parameters ``(x, theta)`` of this design."""
        if self.grid is None:
            n = self.events_per_point * len(PaperToy.GRID_49)
            return toy.training_data_uniform(n, *BOUNDS["cx"], seed=self.seed)
        if self.design == "mixed":
            per_point, n_uniform = self._mixed_split()
            x, theta = self._grid_data(toy, per_point)
            xu, thu = toy.training_data_uniform(
                n_uniform, *BOUNDS["cx"],
                seed=np.random.SeedSequence(self.seed, spawn_key=(_MIXED_KEY, 0)))
            return np.concatenate([x, xu]), np.concatenate([theta, thu])
        return self._grid_data(toy, self.events_per_point)

    def _grid_data(self, toy: PaperToy, per_point: int) -> tuple[np.ndarray, np.ndarray]:
        """``per_point`` events at each grid point; with ``cusp_spread`` s > 0, a zero
        coordinate of a point is drawn per event from U(−s, s) (point i's parameters and
        events both from the i-th child of ``SeedSequence(seed)``, as
        :meth:`PaperToy.training_data`)."""
        grid = self.grid
        assert grid is not None
        if self.cusp_spread == 0.0:
            return toy.training_data(grid, per_point, seed=self.seed)
        xs, thetas = [], []
        for point, child in zip(grid, np.random.SeedSequence(self.seed).spawn(len(grid))):
            rng = np.random.default_rng(child)
            theta = np.tile(point, (per_point, 1))
            for j in np.flatnonzero(point == 0.0):
                theta[:, j] = rng.uniform(-self.cusp_spread, self.cusp_spread, per_point)
            xs.append(toy.sample(per_point, theta[:, 0], theta[:, 1], seed=rng))
            thetas.append(theta)
        return np.concatenate(xs), np.concatenate(thetas)

    def projection_events(self, toy: PaperToy, x: np.ndarray, theta: np.ndarray
                          ) -> np.ndarray:
        """The events the latent projection is fitted on: the c = (0, 0) sample of the
        training data ``(x, theta)``, as in the paper; the uniform design has none, so it
        gets one of the grid designs' size from its own stream of the seed, as does a grid
        design with ``cusp_spread`` (its events near (0, 0) are spread)."""
        if self.grid is None:
            key: tuple[int, ...] = (_PROJECTION_KEY,)
        elif self.cusp_spread > 0.0:
            key = (_PROJECTION_KEY, 0)
        else:
            return x[(theta == 0.0).all(axis=1)]
        return toy.sample(self.events_per_point, 0.0, 0.0,
                          seed=np.random.SeedSequence(self.seed, spawn_key=key))

    def describe_design(self) -> str:
        """The training design in words, for messages and tables."""
        if self.grid is None:
            n = self.events_per_point * len(PaperToy.GRID_49)
            return (f"{n:,} events with (cx, cy) uniform over [−1.5, 1.5]² "
                    f"({self.events_per_point:,} per 49-point-grid point)")
        if self.design == "mixed":
            per_point, n_uniform = self._mixed_split()
            return (f"{per_point:,} events at each of {len(self.grid)} grid points"
                    f"{self._spread_words()} and "
                    f"{n_uniform:,} with (cx, cy) uniform over [−1.5, 1.5]²")
        return (f"{self.events_per_point:,} events at each of {len(self.grid)} grid points"
                f"{self._spread_words()}")

    def _spread_words(self) -> str:
        return ("" if self.cusp_spread == 0.0 else
                f" (a 0 coordinate spread over ±{self.cusp_spread:g})")

    def describe_training(self) -> str:
        """The training recipe in words, for tables."""
        inputs = self.network.get("theta_features", "linear")
        inputs = inputs if isinstance(inputs, str) else "/".join(inputs)
        schedule = ("cosine schedule" if self.schedule == "cosine"
                    else "plateau schedule with early stopping")
        score = (f", score regression α = {self.score_weight:g}" if self.score_weight > 0
                 else "")
        act = (f", {self.network['activation']} activation" if "activation" in self.network
               else "")
        return (f"{schedule} from lr {self.lr:g}, batch {self.batch_size}, "
                f"{self.validation:.0%} validation, θ inputs {inputs}{act}{score}")

    def model_key(self) -> dict[str, Any]:
        """The settings that determine the trained model (compared before reusing one)."""
        from egmm import __version__

        return {
            "events_per_point": self.events_per_point,
            "max_epochs": self.max_epochs,
            "batch_size": self.batch_size,
            "network": dict(self.network),
            "lr": self.lr,
            "schedule": self.schedule,
            "validation": self.validation,
            "seed": self.seed,
            "grid": ("PaperToy.GRID_81 (2/3) + uniform over [-1.5, 1.5]^2 (1/3)"
                     if self.design == "mixed" else
                     f"PaperToy.{_GRID_NAMES[self.design]}" if self.design in _GRID_NAMES
                     else "uniform over [-1.5, 1.5]^2"),
            "projection_f": 0.5,
            "projection_bandwidth": "auto",  # LatentProjection.fit's smoothed reference CDF
            "egmm_version": __version__,
            **({"score_weight": self.score_weight} if self.score_weight > 0 else {}),
            **({"cusp_spread": self.cusp_spread} if self.cusp_spread > 0 else {}),
        }


def _network_with(network: Mapping[str, Any], key: str, value: Any) -> dict[str, Any]:
    """``network`` with ``key`` set to ``value``, or without the key where ``value`` is
    GMMDensity's default (so that runs with the default keep the model key of older runs)."""
    changed = {**network, key: value}
    if value == GMM_DEFAULTS[key]:
        del changed[key]
    return changed


def demo_config(*, full: bool = False, quick: bool = False, seed: int = 0,
                events_per_point: int | None = None, max_epochs: int | None = None,
                train_threads: int = 1, train_workers: int | None = None,
                design: str = "dense",
                theta_features: str | Sequence[str] | None = None,
                activation: str | None = None,
                schedule: str | None = None, lr: float | None = None,
                batch_size: int | None = None, validation: float | None = None,
                members: int | None = None, score_weight: float | None = None,
                cusp_spread: float | None = None) -> DemoConfig:
    """The configuration of a run.

    Default: 30,000 events at each of the 81 points of the dense grid, the paper's network
    (Table 6) with |cx|, |cy| as extra inputs (``theta_features="abs"``: the toy's likelihood
    has cusps at cx = 0 and cy = 0) and the smooth SiLU activation (so that those inputs' kinks,
    exactly at 0, are the only ones the likelihood has), trained for a fixed budget of 5 epochs
    (cosine schedule from lr 2e-3, batches of 1000, 20 % validation) on the likelihood and the
    toy's exact conditional scores (``score_weight`` 2), the grid points on the cusps spread
    over ±0.1 in their zero coordinate (``cusp_spread`` 0.1; 0 with the uniform design, which
    has no such points): about 10 minutes with two worker processes on a 2-core CPU. ``full``: the
    paper's recipe (50,000 events per point, its linear inputs, batch 500, lr 1e-3 halved on
    plateaus, 40 % validation, early stopping; an hour or more on a CPU). ``quick``: a few
    hundred events, one epoch of a small network and coarse regions (a smoke test, not a
    result). ``events_per_point``, ``max_epochs``, ``theta_features`` ("linear" for the paper's
    networks), ``activation`` ("leaky_relu" for the paper's), ``schedule``, ``lr``,
    ``batch_size`` and ``validation`` override the mode's values; ``design`` chooses the
    training parameters (see :class:`DemoConfig`; any mode).
    """
    if full and quick:
        raise InputError("demo: choose at most one of full and quick")
    if members is not None and (isinstance(members, bool) or int(members) < 1):
        raise InputError(f"members must be ≥ 1, got {members}")
    if train_workers is None:
        train_workers = 2 if (os.cpu_count() or 1) >= 2 and not quick else 1
    if design not in DESIGNS:
        raise InputError(f"design must be one of {', '.join(DESIGNS)}, got {design!r}")
    train_workers = whole_number(train_workers, "workers")
    if theta_features is not None:
        kinds = ([theta_features] if isinstance(theta_features, str)
                 else list(theta_features))
        if len(kinds) not in (1, 4) or any(k not in THETA_FEATURES for k in kinds):
            raise InputError(f"theta_features must be one of {', '.join(THETA_FEATURES)}, "
                             f"or four of them (one per observable), got {theta_features!r}")
        theta_features = kinds[0] if isinstance(theta_features, str) else kinds
    common = {"seed": seed, "train_threads": train_threads,
              "train_workers": train_workers, "design": design}
    if full:
        cfg = DemoConfig("full", 50_000, 1000, **common)
    elif quick:
        cfg = DemoConfig("quick", 300, 1, contour_size=12,
                         network={"n_gauss": 4, "A1": 8, "B1": 8, "B2": 4, "C": 1, "D": 2},
                         score_weight=1.0, **common)
    else:
        # the fixed-budget recipe of benchmarks/fidelity_paper_toy.py (README, "Benchmarks"),
        # 5 epochs, with the toy's exact conditional scores regressed on (α = 2): maximum
        # likelihood alone leaves each model's θ-dependence ~0.1 σ (MLE) and 10-20 % (region
        # areas) off, seed by seed, which the score term removes (benchmarks/score_bias.py);
        # |cx|, |cy| as network inputs: the toy's cusps; the smooth SiLU activation: with
        # LeakyReLU the networks are piecewise linear in θ and put kinks of their own near the
        # cusps, a little off 0 (benchmarks/cusp_slopes.py: one-sided x3 score slopes 0.32-0.52
        # of the truth's on one side; SiLU 0.99-1.04; cusp datasets 116 of 120 against 109);
        # α = 2 rather than 1: with SiLU, the x3 score's mean bias at (0, 0) halves
        # (cusp_slopes.py, seed 0: -0.07 against -0.13 sigma of an N = 400 kink)
        # cusp_spread 0.1 on the grid designs: the score term then sees the cusps' one-sided
        # slopes (benchmarks/cusp_datasets.py: 109 of 120 cusp datasets pass over three
        # training seeds, against 61 of 80 with the paper's points)
        cfg = DemoConfig("default", 30_000, 5, batch_size=1000, lr=2e-3, schedule="cosine",
                         validation=0.2, members=1,
                         network={"theta_features": "abs", "activation": "silu"},
                         score_weight=2.0, cusp_spread=0.0 if design == "uniform" else 0.1,
                         **common)
    changes: dict[str, Any] = {}
    if events_per_point is not None:
        changes["events_per_point"] = whole_number(events_per_point, "events_per_point", 50)
    if max_epochs is not None:
        changes["max_epochs"] = whole_number(max_epochs, "max_epochs")
    whole_number(train_threads, "threads (0: torch's default)", 0)
    if theta_features is not None:
        changes["network"] = _network_with(cfg.network, "theta_features", theta_features)
    if activation is not None:
        check_activation(activation)
        changes["network"] = _network_with(changes.get("network", cfg.network), "activation",
                                           activation)
    if members is not None:
        changes["members"] = whole_number(members, "members")
    if score_weight is not None:
        changes["score_weight"] = float(score_weight)
    if cusp_spread is not None:
        spread = float(cusp_spread)
        if not 0.0 <= spread < 0.5:  # the grids' nearest points off an axis are at 0.2, 0.5
            raise InputError(f"cusp_spread must be in [0, 0.5), got {cusp_spread!r}")
        if design == "uniform" and spread > 0:
            raise InputError("cusp_spread applies to the grid designs, not to 'uniform' "
                             "(which has no points on the cusps)")
        changes["cusp_spread"] = spread
    for name, value, kind in (("schedule", schedule, str), ("lr", lr, float),
                              ("validation", validation, float)):
        if value is not None:
            changes[name] = kind(value)
    if batch_size is not None:
        changes["batch_size"] = whole_number(batch_size, "batch_size")
    if changes:
        cfg = DemoConfig(**{**asdict(cfg), **changes})
    # train()'s own checks, before any data are generated
    check_training_settings(validation=cfg.validation, batch_size=cfg.batch_size,
                            max_epochs=cfg.max_epochs, lr=cfg.lr, schedule=cfg.schedule,
                            score_weight=cfg.score_weight)
    return cfg


# -- the true pdf as a differentiable density --------------------------------------------------
def toy_log_prob(x: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    r"""log p(x|c) of the paper toy in torch: the pdf of :class:`~egmm.groundtruth.PaperToy`.

    The same formulas (see its docstring), written with torch operations so that Minuit gets
    the exact θ gradient. At cx = 0 or cy = 0 the pdf has a kink (it depends on |cx|, |cy|);
    torch's gradient there is the average of the two one-sided slopes.

    Arguments:
        x: validated events ``(N, 4)`` in the order (x0, x1, x2, x3), float64.
        cx, cy: 0-d tensors (one point) or ``(N,)`` (one per event), inside the trained range
            (|cx|, |cy| ≤ 1.5, where the rate k = 2(2 − |cx|) of p0 stays ≥ 1).

    Returns:
        ``(N,)`` log density, per GeV² rad (x3 dimensionless).
    """
    a = (x[:, 0] - 100.0) / 700.0
    b = (x[:, 1] - 100.0) / 700.0
    x2, x3 = x[:, 2], x[:, 3]
    k = 2.0 * (2.0 - cx.abs())
    log_p0 = torch.log(k) - torch.log(-torch.expm1(-k)) - k * a - _LOG_700
    z = (b - a) / _SIGMA1
    mass1 = 1.0 - torch.special.ndtr(-a / _SIGMA1) - torch.special.ndtr((a - 1.0) / _SIGMA1)
    log_p1 = -0.5 * z * z - torch.log(mass1) - _LOG_NORM1
    r = x2 / _PI
    log_p2 = (torch.log1p(-r) + torch.log1p(r) + torch.log1p(5.0 * r * r)
              + torch.log1p(0.4 * cx * torch.sin(x2) + 0.5 * cy * torch.cos(x2))
              - torch.log(8.0 * _PI / 3.0 + cy * (12.0 / _PI - 120.0 / _PI**3)))
    shift = 0.6 * (torch.sqrt(4.0 + cx.abs()) + cy.abs())
    t = 10.0 * (x3 + shift * (2.0 * b - 1.0 + r))
    zero = torch.zeros_like(t)
    # logaddexp(0, ·) is an exact softplus (torch's softplus linearises above 20)
    log_p3 = -torch.logaddexp(zero, t - _K3) - torch.logaddexp(zero, -t - _K3) - _LOG_Z3
    return log_p0 + log_p1 + log_p2 + log_p3


def true_density(toy: PaperToy | None = None) -> TorchDensity:
    """The exact paper-toy pdf as a :class:`~egmm.TorchDensity` on (cx, cy) ∈ [−1.5, 1.5]².

    Differentiable in θ (:func:`toy_log_prob`); samples with :meth:`PaperToy.sample`. Not
    ``smooth``: the pdf depends on |cx| and |cy| (cusps on the axes), so fits use Minuit's
    finite-difference HESSE, not the autodiff Hessian.

    Example:
        >>> dens = true_density()
        >>> x = PaperToy().sample(3, 0.5, -0.5, seed=1)
        >>> bool(np.allclose(dens.log_prob(x, {"cx": 0.5, "cy": -0.5}),
        ...                  PaperToy().log_prob(x, 0.5, -0.5), rtol=0, atol=1e-12))
        True
    """
    toy = toy or PaperToy()

    def sampler(n: int, theta: dict[str, float], rng: np.random.Generator) -> np.ndarray:
        return toy.sample(n, theta["cx"], theta["cy"], seed=rng)

    return TorchDensity(toy.space, toy_log_prob, ("cx", "cy"), BOUNDS, sampler,
                        name="paper toy (true pdf)", smooth=False)


# -- regions ------------------------------------------------------------------------------------
def polygon_area(points: Any) -> float:
    """Area enclosed by a polygon ``(n, 2)`` (closed or not), by the shoelace formula."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) < 3:
        return math.nan
    x, y = p[:, 0], p[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def ray_region(cost: Any, center: Mapping[str, float], fmin: float, threshold: float, *,
               x: str = "cx", y: str = "cy", n_rays: int = 48,
               limits: Mapping[str, tuple[float, float]] | None = None,
               xtol: float = 1e-6) -> np.ndarray:
    r"""The region Δ(−2 ln L) ≤ ``threshold`` of a 2-parameter cost, by root finding on rays.

    From the MLE ``center`` (where −2 ln L = ``fmin``), along ``n_rays`` rays at equal angles
    in coordinates scaled by the region's extent on the axes, the crossing
    −2 ln L(center + s·d) = fmin + threshold is bracketed and solved with Brent's method,
    so every vertex is on the level (s within ``xtol``, s ≈ 1 on the level). A ray reaching a
    limit first ends on the limit. It needs nothing but values of the cost, so it is exact
    where the likelihood has kinks (MNCONTOUR's first steps are not); it assumes the region is
    star-shaped around the MLE and that the cost has exactly the parameters ``x`` and ``y``.

    Returns:
        ``(n_rays + 1, 2)`` vertices, the first repeated at the end (as
        :func:`egmm.infer.contour`).
    """
    c = np.array([center[x], center[y]], dtype=np.float64)
    lims = np.array([(limits or {}).get(p, (-math.inf, math.inf)) for p in (x, y)], dtype=float)

    def crossing(d: np.ndarray) -> float:
        with np.errstate(divide="ignore", invalid="ignore"):
            steps = np.where(d > 0, (lims[:, 1] - c) / d,
                             np.where(d < 0, (lims[:, 0] - c) / d, np.inf))
        s_max = float(np.min(steps))
        seen: dict[float, float] = {}  # brentq re-evaluates the bracket ends: reuse them
        lo, hi = 0.0, math.inf

        def excess(t: float) -> float:
            nonlocal lo, hi
            if t not in seen:
                q = c + t * d
                seen[t] = float(cost(float(q[0]), float(q[1]))) - fmin - threshold
                if seen[t] < 0.0:
                    lo = max(lo, t)
                else:
                    hi = min(hi, t)
            return seen[t]

        first = min(1.0, s_max)
        delta = excess(first) + threshold
        # near a minimum Δ grows about quadratically along the ray: bracket the predicted root
        guess = first * math.sqrt(threshold / delta) if delta > 0 else 2.0 * first
        for t in (0.97 * guess, 1.03 * guess):
            if lo < t < min(hi, s_max):
                excess(t)
        while hi == math.inf:
            if lo >= s_max:
                return s_max
            if lo > 1e6:
                raise EgmmError("ray_region: the region does not close (Δ stays below the level)")
            excess(min(1.5 * lo, s_max))
        return float(brentq(excess, lo, hi, xtol=xtol))

    # extents along the axes set the scale, so that rays are spread evenly around the region
    guess = 0.05
    ext = [crossing(np.array(v) * guess) * guess
           for v in ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))]
    scale = np.array([0.5 * (ext[0] + ext[1]), 0.5 * (ext[2] + ext[3])])
    scale = np.where(scale > 0, scale, guess)
    phi = np.linspace(0.0, 2.0 * math.pi, int(n_rays), endpoint=False)
    pts = []
    for angle in phi:
        d = scale * np.array([math.cos(angle), math.sin(angle)])
        pts.append(c + crossing(d) * d)
    pts.append(pts[0])
    return np.array(pts)


# -- one cost: MLE and regions ---------------------------------------------------------------------
def _quadrant_limits() -> list[dict[str, tuple[float, float]]]:
    halves = {p: [(lo, 0.0), (0.0, hi)] for p, (lo, hi) in BOUNDS.items()}
    return [{"cx": hx, "cy": hy} for hx in halves["cx"] for hy in halves["cy"]]


def _best_fit(cost: Any, cusps: bool
              ) -> tuple[dict[str, float], float, FitResult, list[str], list[dict[str, float]]]:
    """MLE values, −2 ln L there, a global FitResult for MNCONTOUR, notes, and the other
    minima (:func:`_other_minima`).

    The toy's likelihood has near-mirror minima: |cx| and |cy| enter p0 and p3, only p2 tells
    the signs apart. So MIGRAD runs from the middle of the range and restricted to each
    closed quadrant (where the true likelihood is also smooth), and the best point is polished
    by an unrestricted MIGRAD. With ``cusps`` (the true pdf) HESSE is skipped: its finite
    differences straddle the kink and spoil Minuit's EDM.
    """
    notes: list[str] = []
    first = fit(cost, hesse=False)
    best_values, best_fval = dict(first.values), first.fval
    quadrant_minima = []
    for lim in _quadrant_limits():
        middle = {p: 0.5 * (lo + hi) for p, (lo, hi) in lim.items()}  # not the corner (0, 0)
        q = fit(cost, start=middle, limits=lim, hesse=False)
        quadrant_minima.append((dict(q.values), q.fval))
        if q.fval < best_fval:
            best_values, best_fval = dict(q.values), q.fval
    if best_fval < first.fval - 1.0:  # a distinct (mirror) minimum, not MIGRAD's tolerance
        notes.append(f"MIGRAD from the middle of the range stopped at a local minimum "
                     f"{first.fval - best_fval:.3g} above the best quadrant fit")
    gfit = fit(cost, start=best_values, hesse=not cusps)
    if gfit.fval < best_fval:
        best_values, best_fval = dict(gfit.values), gfit.fval
    if not gfit.valid:
        notes.append(f"MIGRAD not valid at the MLE ({gfit!r})")
    on_cusp = [p for p in ("cx", "cy") if cusps and abs(best_values[p]) < 1e-4]
    if on_cusp:
        notes.append(f"MLE on the cusp {' and '.join(p + ' = 0' for p in on_cusp)}")
    others = _other_minima(cost, quadrant_minima, best_values, best_fval)
    for m in others:
        notes.append(f"a second minimum at ({m['cx']:+.3f}, {m['cy']:+.3f}), only "
                     f"{m['delta']:.3g} above the MLE in −2 ln L: which of the two is the MLE "
                     f"is decided by less than the 68.27 % interval's Δ = 1")
    return best_values, best_fval, gfit, notes, others


def _other_minima(cost: Any, minima: Sequence[tuple[Mapping[str, float], float]],
                  best: Mapping[str, float], best_fval: float) -> list[dict[str, float]]:
    """The local minima other than the MLE that lie less than Δ(−2 ln L) = 1 above it,
    lowest first: where the MLE is decided by less than its own 1-σ interval (a model
    that picks the other one has not failed by much). Candidates are the quadrant fits'
    minima; each is polished by an unrestricted MIGRAD (a quadrant's edge is not a
    minimum of the whole) and kept if it stays more than ``_DISTINCT`` from the MLE and
    from those kept before it, in cx or cy."""
    def distinct(values: Mapping[str, float], points: list[Mapping[str, float]]) -> bool:
        return all(max(abs(values[p] - q[p]) for p in ("cx", "cy")) > _DISTINCT
                   for q in points)

    found: list[dict[str, float]] = []
    for values, fval in sorted(minima, key=lambda m: m[1]):
        if not fval - best_fval < 1.0 or not distinct(values, [best, *found]):
            continue
        polished = fit(cost, start=dict(values), hesse=False)
        if not distinct(dict(polished.values), [best]):  # its basin drains into the MLE
            continue
        if polished.fval < fval:
            values, fval = dict(polished.values), polished.fval
        if fval - best_fval < 1.0 and distinct(values, found):
            found.append({"cx": float(values["cx"]), "cy": float(values["cy"]),
                          "delta": float(max(fval - best_fval, 0.0))})
    return found


def _region(cost: Any, gfit: FitResult, values: Mapping[str, float], fval: float,
            level: float, size: int) -> tuple[np.ndarray, str, str | None]:
    """Polygon of one region, the method that drew it, and why MNCONTOUR was not used."""
    why: str | None = None
    if not gfit.valid:
        why = "global fit not valid"
    elif gfit.fval > fval + _FVAL_TOLERANCE:
        why = "global fit above the MLE"
    else:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                pts = contour(cost, "cx", "cy", cl=level, size=size, global_fit=gfit)[level]
            except (EgmmError, RuntimeError, ValueError) as exc:
                pts, why = None, f"contour failed: {exc}"
        if pts is not None:
            messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
            if pts.shape != (size + 1, 2) or not np.isfinite(pts).all():
                why = "MNCONTOUR found no closed contour"
            elif messages:
                why = messages[0]
            else:
                return pts, "contour", None
    pts = ray_region(cost, values, fval, wilks_threshold(level, 2), n_rays=size, limits=BOUNDS)
    return pts, "ray", why


def analyse(cost: Any, *, cusps: bool = False, size: int = 48, intervals: bool = True
            ) -> dict[str, Any]:
    """MLE, 1-D profile half-widths and the 68.27 % / 95.45 % regions of a (cx, cy) cost.

    With ``intervals``, σ± of each parameter are the distances from the MLE to the ends of its
    68.27 % profile interval (Δ(−2 ln L) = 1, as MINOS), read off the 2-D region at Δ = 1
    whose projections those intervals are; ``sigma`` is their mean. ``cusps``: the cost is
    kinked along cx = 0 and cy = 0 (the true pdf), see :func:`_best_fit`.

    Returns:
        a JSON-ready dict: ``mle``, ``fval``, ``valid``, ``other_minima`` (other local
        minima less than Δ(−2 ln L) = 1 above the MLE: ``cx``, ``cy``, ``delta``; the toy's
        mirror minima), ``regions`` (level → vertices), ``areas``, ``methods`` ("contour"
        or "ray"), ``notes``, and with
        ``intervals`` ``sigma``, ``sigma_minus``, ``sigma_plus``.
    """
    values, fval, gfit, notes, others = _best_fit(cost, cusps)
    out: dict[str, Any] = {"mle": values, "fval": fval, "valid": bool(gfit.valid),
                           "other_minima": others}
    regions, methods, areas = {}, {}, {}
    for level in ((SIGMA_LEVEL,) if intervals else ()) + LEVELS:
        pts, method, why = _region(cost, gfit, values, fval, level, size)
        if why is not None:
            notes.append(f"region {level:.4g}: ray scan ({why.splitlines()[0][:120]})")
        if level == SIGMA_LEVEL:
            lower = {p: float(values[p] - pts[:, j].min()) for j, p in enumerate(("cx", "cy"))}
            upper = {p: float(pts[:, j].max() - values[p]) for j, p in enumerate(("cx", "cy"))}
            out["sigma"] = {p: 0.5 * (lower[p] + upper[p]) for p in ("cx", "cy")}
            out["sigma_minus"], out["sigma_plus"] = lower, upper
        else:
            key = f"{level:g}"
            regions[key], methods[key], areas[key] = pts.tolist(), method, polygon_area(pts)
    out.update(regions=regions, areas=areas, methods=methods, notes=notes)
    return out


def compare(truth: Mapping[str, Any], model: Mapping[str, Any]) -> dict[str, Any]:
    """Shift of the model's MLE in units of σ_true and area ratios model/true, with verdicts.

    ``at_other_minimum``: the model's MLE lies within ``MAX_SHIFT`` σ_true of one of the
    truth's ``other_minima`` (minima less than Δ(−2 ln L) = 1 above its MLE): a model that
    fails the MLE test there picked the other of two near-equal minima.
    """
    shift = {p: (model["mle"][p] - truth["mle"][p]) / truth["sigma"][p] for p in ("cx", "cy")}
    ratio = {k: model["areas"][k] / truth["areas"][k] for k in truth["areas"]}
    shift_ok = all(abs(v) < MAX_SHIFT for v in shift.values())
    area_ok = all(abs(v - 1.0) < MAX_AREA_DEVIATION for v in ratio.values())
    other = any(all(abs(model["mle"][p] - m[p]) < MAX_SHIFT * truth["sigma"][p]
                    for p in ("cx", "cy")) for m in truth.get("other_minima", ()))
    return {"shift_over_sigma": shift, "area_ratio": ratio, "shift_ok": shift_ok,
            "area_ok": area_ok, "passed": shift_ok and area_ok, "at_other_minimum": other}


# -- stages ------------------------------------------------------------------------------------
def _cpu_seconds() -> float:
    """CPU time of this process (all threads) and of its finished child processes (the
    training workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN) if resource is not None else None
    return time.process_time() + (children.ru_utime + children.ru_stime if children else 0.0)


class _Clock:
    """Wall and CPU seconds (this process, all threads, and its finished child processes) per
    stage; CPU time is what a busy, shared machine does not inflate."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        wall, cpu = time.perf_counter(), _cpu_seconds()
        try:
            yield
        finally:
            # repeated stages (one training per ensemble member) add up
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - wall
            self.cpu[name] = self.cpu.get(name, 0.0) + _cpu_seconds() - cpu

    def total(self) -> float:
        return time.perf_counter() - self.start


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to ``n`` (0: leave as is) inside the block, then restored."""
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1, allow_nan=True) + "\n")


def _load_matching_model(out: Path, key: Mapping[str, Any], name: str = "model"
                         ) -> tuple[GMMDensity, dict] | None:
    """The finished model ``name`` in ``out`` if its recorded configuration equals ``key``."""
    meta_path, model_path = out / f"{name}.json", out / f"{name}.egmm"
    if not (meta_path.is_file() and model_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("config") != json.loads(json.dumps(key)):
            return None
        return GMMDensity.load(model_path), meta
    except (OSError, ValueError, ModelFileError):
        return None


def load_paper_toy_model(path: str | os.PathLike) -> GMMDensity:
    """A trained model file for the paper toy: its observables and parameters must be the
    toy's (x0, x1, x2, x3; cx, cy) and its trained range must hold the nine datasets' c."""
    try:
        model = GMMDensity.load(path)
    except ModelFileError:
        raise
    except Exception as exc:  # e.g. a FlowDensity file ("PATH: holds a FlowDensity, …")
        reason = str(exc).removeprefix(f"{path}: ")
        raise ModelFileError(f"{path}: not a GMMDensity model file ({reason})") from None
    toy = PaperToy()
    if list(model.space.names) != list(toy.space.names) or model.parameters != ("cx", "cy"):
        raise InputError(f"{path}: a model of {list(model.space.names)} with parameters "
                         f"{list(model.parameters)}; the demo needs the paper toy's "
                         f"{list(toy.space.names)} with ('cx', 'cy')")
    for name in ("cx", "cy"):
        lo, hi = model.parameter_bounds[name]
        if not (lo <= -0.8 and hi >= 0.8):
            raise InputError(f"{path}: trained range of {name} [{lo}, {hi}] does not hold "
                             "the datasets' values ±0.8")
    return model


def _model_paths(model: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    """One model file, or several (averaged by :class:`~egmm.EnsembleDensity`)."""
    paths = [Path(model)] if isinstance(model, (str, os.PathLike)) else [Path(q) for q in model]
    if not paths:
        raise InputError("model: give at least one model file")
    return paths


def _train_model(out: Path, cfg: DemoConfig, toy: PaperToy, say: Any, progress: bool,
                 clock: _Clock,
                 model_path: str | os.PathLike | Sequence[str | os.PathLike] | None = None
                 ) -> tuple[DensityModel, dict[str, Any]]:
    """Stages 1-2: training data, projection, model (trained, or reused if it matches)."""
    if model_path is not None:
        paths = _model_paths(model_path)
        if len(paths) == 1:
            say(f"[1-2/4] using the trained model {paths[0]} (no training)")
            return load_paper_toy_model(paths[0]), {"source": str(paths[0]), "epochs": "?",
                                                    "reused": True}
        say(f"[1-2/4] using the average of {len(paths)} trained models (no training): "
            + ", ".join(str(q) for q in paths))
        ensemble = EnsembleDensity([load_paper_toy_model(q) for q in paths])
        return ensemble, {"source": [str(q) for q in paths], "ensemble": len(paths),
                          "epochs": "?", "reused": True}
    if cfg.members == 1:
        return _train_one(out, cfg, toy, say, progress, clock, "model", "")
    members, metas = [], []
    for k in range(cfg.members):
        model, meta = _train_one(out, cfg.member(k), toy, say, progress, clock, f"member{k}",
                                 f" (member {k + 1} of {cfg.members})")
        members.append(model)
        metas.append(meta)
    say(f"      the model is the average of the {cfg.members} members (EnsembleDensity)")
    return EnsembleDensity(members), {
        "ensemble": cfg.members, "members": metas,
        "epochs": metas[0]["epochs"] if len({m["epochs"] for m in metas}) == 1 else "?",
        "reused": all(m["reused"] for m in metas)}


def _train_one(out: Path, cfg: DemoConfig, toy: PaperToy, say: Any, progress: bool,
               clock: _Clock, name: str, which: str) -> tuple[GMMDensity, dict[str, Any]]:
    """Stages 1-2 for one model, saved as ``name``.egmm / .json in ``out`` (or reused from
    there if its configuration matches)."""
    key = cfg.model_key()
    found = _load_matching_model(out, key, name)
    if found is not None:
        model, meta = found
        say(f"[1-2/4] reusing the trained model {out / (name + '.egmm')}{which} "
            f"(same configuration; delete it to retrain)")
        return model, {**meta, "reused": True}
    if (out / f"{name}.egmm").exists():
        say(f"      {out / (name + '.egmm')} was trained with another configuration: the new "
            f"model replaces it once trained; the old one is kept as {name}-previous.egmm")

    say(f"[1/4] generating the paper toy{which}: {cfg.describe_design()}")
    with clock.stage("data"):
        x, theta = cfg.training_data(toy)
        x_ref = cfg.projection_events(toy, x, theta)
    with clock.stage("projection"):
        proj = LatentProjection.fit(toy.space, x_ref, f=0.5)
        torch.manual_seed(cfg.seed)
        model = GMMDensity(toy.space, ["cx", "cy"], proj, parameter_bounds=BOUNDS,
                           **cfg.network)

    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    ckpt = out / f"train-{digest}.ckpt"
    # (with workers, each group checkpoints to <ckpt>.group<g>of<n>)
    for stale in out.glob("train-*.ckpt*"):
        if not stale.name.startswith(ckpt.name):
            stale.unlink()
    threads = cfg.train_threads or torch.get_num_threads()
    where = (f"{threads} torch thread(s)" if cfg.train_workers == 1 else
             f"the networks split over {cfg.train_workers} processes of one thread each")
    budget = (f"{cfg.max_epochs} epochs, learning rate {cfg.lr:g} falling along a cosine"
              if cfg.schedule == "cosine" else
              f"at most {cfg.max_epochs} epochs (early stopping after 8 without improvement)")
    say(f"[2/4] training{which} {model!r} on {len(x):,} events: {budget}, {where}; "
        f"checkpoint {ckpt.name} (Ctrl-C safe: rerun to resume)")
    score = None
    if cfg.score_weight > 0:
        with clock.stage("data"):
            score = toy.conditional_scores(x, theta[:, 0], theta[:, 1])

    def run() -> TrainingHistory:
        return train(model, x, theta, max_epochs=cfg.max_epochs, batch_size=cfg.batch_size,
                     lr=cfg.lr, schedule=cfg.schedule, validation=cfg.validation,
                     seed=cfg.seed, checkpoint=ckpt, resume=True, progress=progress,
                     workers=cfg.train_workers, score=score, score_weight=cfg.score_weight)

    wall0, cpu0 = clock.wall.get("training", 0.0), clock.cpu.get("training", 0.0)
    with clock.stage("training"), _torch_threads(cfg.train_threads):
        try:
            history = run()
        except ModelFileError as exc:  # a checkpoint this version cannot resume: start afresh
            say(f"      {exc}; training from the start")
            for old in out.glob(ckpt.name + "*"):
                old.unlink()
            history = run()
    (out / f"{name}.json").unlink(missing_ok=True)  # an .egmm without it is never reused
    if (out / f"{name}.egmm").exists():  # another configuration's model (said above): kept
        os.replace(out / f"{name}.egmm", out / f"{name}-previous.egmm")
    model.save(out / f"{name}.egmm")
    _write_json(out / ("history.json" if name == "model" else f"{name}-history.json"),
                history.to_dict())
    meta = _model_meta(key, history, clock.wall["training"] - wall0,
                       clock.cpu["training"] - cpu0)
    _write_json(out / f"{name}.json", meta)  # written last: marks the model as complete
    for done in out.glob(ckpt.name + "*"):
        done.unlink(missing_ok=True)
    say(f"      {len(history.epochs)} epochs in {meta['training_wall_s']:.0f} s "
        f"({history.wall_time / max(len(history.epochs), 1):.1f} s per epoch), "
        f"{'early-stopped' if history.stopped else 'stopped at max_epochs'}; best validation "
        f"NLL per observable {[round(v, 4) for v in history.best_val_loss]} (latent, nats)"
        + (f"; score term (fraction of the information missed) "
           f"{[float(f'{history.val_score[e][k]:.2g}') for k, e in enumerate(history.best_epoch)]}"
           if history.val_score else ""))
    return model, {**meta, "reused": False}


def _model_meta(key: Mapping[str, Any], history: TrainingHistory, wall: float,
                cpu: float) -> dict[str, Any]:
    return {
        "config": dict(key),
        "epochs": len(history.epochs),
        "early_stopped": history.stopped,
        "best_epoch": history.best_epoch,
        "best_val_loss": history.best_val_loss,
        "training_wall_s": wall,
        "training_cpu_s": cpu,
    }


def fig16_datasets(seed: int = 0, toy: PaperToy | None = None
                   ) -> list[tuple[np.ndarray, np.ndarray]]:
    """The nine datasets of Fig. 16: (true c, N = 400 events from the true pdf), fixed seeds.

    Dataset i is drawn from ``SeedSequence(seed, spawn_key=(16, i))``.
    """
    toy = toy or PaperToy()
    out = []
    for i, (cx, cy) in enumerate(toy.TRUE_HYPOTHESES):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_DATASET_KEY, i)))
        out.append((np.array([cx, cy]), toy.sample(toy.N_EVENTS, cx, cy, seed=rng)))
    return out


def _analyse_dataset(model: DensityModel, truth_pdf: TorchDensity, c_true: np.ndarray,
                     events: np.ndarray, contour_size: int) -> dict[str, Any]:
    """One dataset: MLE and regions of the true pdf and of the model, compared."""
    t0 = time.perf_counter()
    truth = analyse(UnbinnedNLL(events, truth_pdf), cusps=True, size=contour_size)
    t1 = time.perf_counter()
    fitted = analyse(UnbinnedNLL(events, model), size=contour_size, intervals=False)
    t2 = time.perf_counter()
    return {"c_true": {"cx": float(c_true[0]), "cy": float(c_true[1])},
            "truth": truth, "model": fitted, **compare(truth, fitted),
            "seconds": {"truth": t1 - t0, "model": t2 - t1}}


def _analyse_in_worker(payload: bytes, c_true: np.ndarray, events: np.ndarray,
                       contour_size: int) -> bytes:
    """Worker side of :func:`_fit_datasets`: one dataset, one torch thread; the model
    arrives pickled once per task (plain pickles, as the training workers use)."""
    model, toy = pickle.loads(payload)
    return pickle.dumps(_analyse_dataset(model, true_density(toy), c_true, events,
                                         contour_size))


def _fit_datasets(model: DensityModel, cfg: DemoConfig, toy: PaperToy, say: Any,
                  progress: bool) -> list[dict[str, Any]]:
    """Stage 3: MLE and regions of the true pdf and of the model on the nine datasets; the
    datasets are shared out over ``cfg.train_workers`` spawned processes of one torch thread
    each (the fits are independent, so the results are those of one process)."""
    datasets = fig16_datasets(cfg.seed, toy)
    workers = min(cfg.train_workers, len(datasets))
    payload = None
    if workers > 1:
        try:
            payload = pickle.dumps((model, toy))
        except Exception as exc:  # e.g. a user density with local functions
            say(f"      (the model cannot be pickled for worker processes: {exc}; "
                "fitting in this process)")
    say(f"[3/4] fitting the nine datasets of Fig. 16 (N = {toy.N_EVENTS} each) with the true "
        "pdf and with the model; regions at Δ(−2 ln L) = "
        f"{wilks_threshold(LEVELS[0], 2):.3f} / {wilks_threshold(LEVELS[1], 2):.3f}"
        + (f"; {workers} processes." if payload is not None else "."))
    say("      The true likelihood has cusps at cx = 0 and cy = 0: Minuit may print "
        "'MnContours unable to find …' there; such regions are redone by a ray scan.")
    bar = tqdm(total=len(datasets), disable=not progress, unit="dataset", desc="fits")
    rows: list[dict[str, Any] | None] = [None] * len(datasets)
    try:
        if payload is None:
            truth_pdf = true_density(toy)
            with _torch_threads(1):
                for i, (c_true, events) in enumerate(datasets):
                    bar.set_postfix(c=f"({c_true[0]:+.1f}, {c_true[1]:+.1f})")
                    rows[i] = _analyse_dataset(model, truth_pdf, c_true, events,
                                               cfg.contour_size)
                    bar.update()
        else:
            with cf.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                        initializer=_init_worker) as pool:
                futures = {pool.submit(_analyse_in_worker, payload, c_true, events,
                                       cfg.contour_size): i
                           for i, (c_true, events) in enumerate(datasets)}
                for fut in cf.as_completed(futures):
                    rows[futures[fut]] = pickle.loads(fut.result())
                    bar.update()
    finally:
        bar.close()
    assert all(r is not None for r in rows)  # a failed dataset raises above
    return rows  # type: ignore[return-value]


# -- outputs -----------------------------------------------------------------------------------
def _verdict(row: Mapping[str, Any]) -> str:
    if row["passed"]:
        return "yes"
    # a missed MLE at the truth's other, near-equal minimum (rows of older results lack it)
    return "no §" if not row.get("shift_ok", True) and row.get("at_other_minimum") else "no"


def format_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the comparison, one line per dataset."""
    head = ("| true (cx, cy) | MLE true | MLE model | σ_true (cx, cy) | Δcx/σ | Δcy/σ "
            "| area 68.27% model/true | area 95.45% model/true | pass |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        t, m, s, a = r["truth"], r["model"], r["shift_over_sigma"], r["area_ratio"]
        mark = {k: ("†" if t["methods"][k] == "ray" else "")
                + ("‡" if m["methods"][k] == "ray" else "") for k in t["methods"]}
        lines.append(
            f"| ({r['c_true']['cx']:+.1f}, {r['c_true']['cy']:+.1f}) "
            f"| ({t['mle']['cx']:+.3f}, {t['mle']['cy']:+.3f}) "
            f"| ({m['mle']['cx']:+.3f}, {m['mle']['cy']:+.3f}) "
            f"| ({t['sigma']['cx']:.3f}, {t['sigma']['cy']:.3f}) "
            f"| {s['cx']:+.2f} | {s['cy']:+.2f} "
            f"| {a[f'{LEVELS[0]:g}']:.3f}{mark[f'{LEVELS[0]:g}']} "
            f"| {a[f'{LEVELS[1]:g}']:.3f}{mark[f'{LEVELS[1]:g}']} "
            f"| {_verdict(r)} |"
        )
    return "\n".join(lines)


def plot_fig16(rows: list[dict[str, Any]], path: str | os.PathLike, *, subtitle: str = "",
               grid: np.ndarray | None = PaperToy.GRID_49) -> None:
    """The 3×3 figure: per dataset the true point, both MLEs and both pairs of regions.

    Panels are laid out like the (cx, cy) plane (cx increasing to the right, cy upwards),
    each centred on its true point; open circles are the training grid points (``grid``,
    default the 49-point grid; None: no grid, for a model trained on continuous parameters).
    """
    # a bare Figure renders with Agg and leaves pyplot's global backend and figures alone
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    colors = {"truth": "tab:orange", "model": "tab:blue"}
    styles = {f"{LEVELS[0]:g}": "-", f"{LEVELS[1]:g}": "--"}
    fig = Figure(figsize=(13, 14), layout="constrained")
    axes = fig.subplots(3, 3)
    half = 0.55
    for r in rows:
        cx, cy = r["c_true"]["cx"], r["c_true"]["cy"]
        col = round(cx / 0.8) + 1
        row = 1 - round(cy / 0.8)
        ax = axes[row, col]
        if grid is not None:
            ax.scatter(grid[:, 0], grid[:, 1], s=70, facecolors="none", edgecolors="0.55",
                       linewidths=1.2, zorder=1)
        for kind in ("truth", "model"):
            res = r[kind]
            for key, pts in res["regions"].items():
                p = np.asarray(pts)
                ax.plot(p[:, 0], p[:, 1], styles[key], color=colors[kind], lw=1.8, zorder=2)
            ax.plot(res["mle"]["cx"], res["mle"]["cy"], "x", color=colors[kind], ms=9,
                    mew=2.2, zorder=3)
        ax.plot(cx, cy, "*", color="black", ms=13, zorder=4)
        s, a = r["shift_over_sigma"], r["area_ratio"]
        verdict = "pass" if r["passed"] else "FAIL"
        ax.text(0.03, 0.03,
                f"ΔMLE/σ: cx {s['cx']:+.2f}, cy {s['cy']:+.2f}\n"
                f"area ratio: 68% {a[f'{LEVELS[0]:g}']:.3f}, 95% {a[f'{LEVELS[1]:g}']:.3f}"
                f"  [{verdict}]",
                transform=ax.transAxes, fontsize=10, va="bottom", ha="left",
                bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "0.7"})
        ax.set_xlim(cx - half, cx + half)
        ax.set_ylim(cy - half, cy + half)
        ax.set_aspect("equal")
        ax.set_title(f"true c = ({cx:+.1f}, {cy:+.1f})", fontsize=13)
        ax.set_xlabel("cx", fontsize=12)
        ax.set_ylabel("cy", fontsize=12)
        ax.tick_params(labelsize=10)
        ax.grid(alpha=0.25)
    handles = [
        Line2D([], [], color=colors["truth"], ls="-", lw=1.8, label="true pdf, 68.27 %"),
        Line2D([], [], color=colors["truth"], ls="--", lw=1.8, label="true pdf, 95.45 %"),
        Line2D([], [], color=colors["truth"], ls="", marker="x", ms=9, mew=2.2,
               label="MLE, true pdf"),
        Line2D([], [], color="black", ls="", marker="*", ms=13, label="true c"),
        Line2D([], [], color=colors["model"], ls="-", lw=1.8, label="model, 68.27 %"),
        Line2D([], [], color=colors["model"], ls="--", lw=1.8, label="model, 95.45 %"),
        Line2D([], [], color=colors["model"], ls="", marker="x", ms=9, mew=2.2,
               label="MLE, model"),
    ]
    if grid is not None:
        handles.append(Line2D([], [], color="0.55", ls="", marker="o", mfc="none", ms=9,
                              mew=1.2, label="training grid point"))
    fig.legend(handles=handles, loc="outside lower center", ncol=4, fontsize=11,
               frameon=False)
    title = ("Paper toy (Fig. 16): N = 400 events per dataset, profile-likelihood regions "
             f"68.27 % (Δ(−2 ln L) = {wilks_threshold(LEVELS[0], 2):.3f}) and 95.45 % "
             f"(Δ = {wilks_threshold(LEVELS[1], 2):.3f})")
    fig.suptitle(title + (f"\n{subtitle}" if subtitle else ""), fontsize=13)
    savefig_atomic(fig, path, dpi=110)


def _members_words(cfg: DemoConfig) -> str:
    return ("" if cfg.members == 1 else
            f"the average of {cfg.members} independently trained models, each ")


def _table_document(rows: list[dict[str, Any]], cfg: DemoConfig, meta: Mapping[str, Any],
                    clock: _Clock) -> str:
    passed = sum(r["passed"] for r in rows)
    stage_times = ", ".join(f"{k} {v:.1f} s (CPU {clock.cpu[k]:.1f} s)"
                            for k, v in clock.wall.items())
    return "\n".join([
        "# egmm demo: the paper's inference test (Fig. 16)",
        "",
        (f"Model: {meta['source']} (trained elsewhere); seed {cfg.seed}." if "source" in meta
         else f"Model: {_members_words(cfg)}{cfg.describe_design()}, "
              f"{meta.get('epochs', '?')} epochs ({cfg.describe_training()})"
              f"{' (reused)' if meta.get('reused') else ''}; mode {cfg.mode}, seed {cfg.seed}."),
        "",
        format_table(rows),
        "",
        f"{passed} of {len(rows)} datasets pass (|ΔMLE| < {MAX_SHIFT} σ for both parameters "
        f"and both area ratios within {MAX_AREA_DEVIATION:.0%}).",
        "",
        "- ΔMLE/σ = (MLE_model − MLE_true)/σ_true, σ_true the half-width of the true pdf's "
        "68.27 % profile interval (Δ(−2 ln L) = 1).",
        "- Areas: shoelace areas of the 2-parameter Wilks regions (Δ = 2.296 and 6.180).",
        "- † / ‡: the true-pdf / model region was drawn by the ray scan (MNCONTOUR failed: "
        "the true likelihood has cusps at cx = 0 and cy = 0, and the model's is sharply "
        "curved there).",
        *(["- §: the model's MLE is at the true likelihood's other minimum, less than "
           "Δ(−2 ln L) = 1 above the true MLE (the toy's mirror minima): the two were nearly "
           "tied in the data."] if any("§" in _verdict(r) for r in rows) else []),
        f"- Wall time: {stage_times}; total {clock.total():.1f} s.",
        "",
    ])


def run_demo(out_dir: str | os.PathLike, *, full: bool = False, quick: bool = False,
             seed: int = 0, progress: bool = True, events_per_point: int | None = None,
             max_epochs: int | None = None, threads: int = 1,
             model: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
             workers: int | None = None, design: str = "dense",
             theta_features: str | Sequence[str] | None = None,
             activation: str | None = None,
             schedule: str | None = None,
             lr: float | None = None, batch_size: int | None = None,
             validation: float | None = None, members: int | None = None,
             score_weight: float | None = None,
             cusp_spread: float | None = None) -> dict[str, Any]:
    """Run the demo into ``out_dir`` (created if needed) and return the results.

    Arguments:
        out_dir: output folder (``fig16.png``, ``table.md``, ``results.json``, the model).
        full: the paper's 50,000 events per point, training until early stopping (an hour
            or more on a CPU).
        quick: a smoke test in well under a minute (tiny network, one epoch): not a result.
        seed: seeds training data, network, split and the nine test datasets.
        progress: stage messages, tqdm bars and the final table on the terminal.
        events_per_point, max_epochs: override the mode's values.
        design: the training parameters: "dense" (the paper's 81-point grid, default),
            "grid" (its 49-point grid), "fine" (121 points: the dense grid plus ±0.1) or
            "uniform" (one uniform (cx, cy) per event).
        theta_features: "abs" (the default mode's: the networks also see |cx| and |cy|,
            the toy's likelihood having cusps at cx = 0 and cy = 0), "linear" (the paper's
            networks; ``full`` and ``quick``) or "quadratic"; see :class:`~egmm.GMMDensity`.
        activation: the networks' hidden activation, "silu" (the default mode's: smooth,
            so that the likelihood's only kinks are those of the "abs" inputs, exactly at
            cx = 0 and cy = 0) or "leaky_relu" (the paper's; ``full`` and ``quick``).
        schedule, lr, batch_size, validation: override the mode's training settings
            (:func:`~egmm.train`'s arguments of these names).
        members: independently trained models averaged (:class:`~egmm.EnsembleDensity`;
            each with its own training data, projection, initialisation and split; default:
            1 = one model).
        score_weight: the weight α of the score term in training, with the toy's exact
            conditional scores as targets (:func:`~egmm.train`'s ``score=``; default mode:
            2; ``quick``: 1; ``full``: 0, maximum likelihood alone as in the paper).
        cusp_spread: s > 0 spreads the grid points' zero coordinates over U(−s, s) per
            event (:class:`DemoConfig`; default mode: 0.1 on the grid designs; ``full``: 0,
            the paper's points).
        workers: processes the networks are trained in and the datasets fitted in
            (default: 2 where there are two cores; neither the model nor the fits depend
            on it).
        threads: torch threads while training (0: torch's default). Fits always use one:
            they are latency-bound (N = 400), and on a busy machine torch's thread pool
            stalls them.
        model: a trained paper-toy model file to analyse instead of training one (e.g. the
            fidelity benchmark's, ``benchmarks/results/paper_toy_gmm.egmm``), or several
            files, analysed as their average (:class:`~egmm.EnsembleDensity`).

    Returns:
        the content of ``results.json``: ``config``, ``model``, ``datasets`` (per dataset the
        true point, both analyses, ``shift_over_sigma``, ``area_ratio``, ``passed``),
        ``passed``, ``timings_s`` (wall, per stage and ``total``), ``cpu_time_s`` (per
        stage), ``wall_time_s``, ``notes``.
    """
    clock = _Clock()
    if model is not None:
        # options that only shape the training would be recorded in results.json's config
        # as if the analysed model had been trained with them
        given = {"events_per_point": events_per_point, "max_epochs": max_epochs,
                 "theta_features": theta_features, "activation": activation,
                 "schedule": schedule, "lr": lr, "batch_size": batch_size,
                 "validation": validation, "members": members, "score_weight": score_weight,
                 "cusp_spread": cusp_spread, "full": full or None,
                 "design": None if design == "dense" else design}
        unused = sorted(k for k, v in given.items() if v is not None)
        if unused:
            raise InputError(f"run_demo: {unused} shape the training, which a given model "
                             "(model=, --model) skips: leave them out")
    cfg = demo_config(full=full, quick=quick, seed=seed, events_per_point=events_per_point,
                      max_epochs=max_epochs, train_threads=threads, train_workers=workers,
                      design=design, theta_features=theta_features, activation=activation,
                      schedule=schedule, lr=lr,
                      batch_size=batch_size, validation=validation, members=members,
                      score_weight=score_weight, cusp_spread=cusp_spread)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def say(message: str) -> None:
        if progress:
            tqdm.write(message)

    say(f"egmm demo ({cfg.mode}): output in {out.resolve()}")
    toy = PaperToy()
    model_path = model
    model, meta = _train_model(out, cfg, toy, say, progress, clock, model_path)
    with clock.stage("fits"):
        rows = _fit_datasets(model, cfg, toy, say, progress)
    say("[4/4] writing fig16.png, table.md and results.json")
    with clock.stage("figure"):
        subtitle = (f"model: {'' if cfg.members == 1 else f'{cfg.members} × '}"
                    f"{cfg.describe_design()}, "
                    f"{meta.get('epochs', '?')} epochs"
                    f"{', with scores' if cfg.score_weight > 0 else ''} ({cfg.mode} demo)")
        if model_path is not None:
            paths = _model_paths(model_path)
            kind = "average of " if len(paths) > 1 else ""
            subtitle = f"model: {kind}{', '.join(q.name for q in paths)} (trained elsewhere)"
        plot_fig16(rows, out / "fig16.png", subtitle=subtitle,
                   grid=None if model_path is not None else cfg.grid)  # (not known)

    notes = [
        "The true pdf depends on |cx| and |cy|: its likelihood has cusps along cx = 0 and "
        "cy = 0, and near-mirror minima (only p2 tells the signs apart). Every MLE is the "
        "best of MIGRAD fits in the four closed quadrants, polished by an unrestricted "
        "MIGRAD; regions MNCONTOUR cannot follow across a cusp are drawn by a ray scan "
        "(see methods).",
        "Regions use the 2-parameter Wilks thresholds 2.296 / 6.180; the paper's Fig. 16 "
        "used Δ(−2 ln L) = 1 / 4 (39 % / 86 % for two parameters).",
    ]
    if cfg.mode == "quick":
        notes.append("quick mode: a tiny network trained for one epoch — a smoke test only.")
    for r in rows:
        for kind in ("truth", "model"):
            notes += [f"c = ({r['c_true']['cx']:+.1f}, {r['c_true']['cy']:+.1f}), {kind}: {n}"
                      for n in r[kind]["notes"]]
    results = {
        "config": asdict(cfg),
        "model": meta,
        "targets": {"max_abs_shift_over_sigma": MAX_SHIFT,
                    "max_area_ratio_deviation": MAX_AREA_DEVIATION},
        "levels": {f"{lv:g}": wilks_threshold(lv, 2) for lv in LEVELS},
        "datasets": rows,
        "passed": int(sum(r["passed"] for r in rows)),
        "timings_s": {**clock.wall, "total": clock.total()},
        "cpu_time_s": clock.cpu,
        "wall_time_s": clock.total(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "notes": notes,
    }
    document = _table_document(rows, cfg, meta, clock)
    write_text_atomic(out / "table.md", document)
    _write_json(out / "results.json", results)
    say("")
    say(document)
    return results
