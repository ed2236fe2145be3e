"""Training a :class:`GMMDensity` by weighted maximum likelihood (paper Eq. 5-6).

The objective over all parameter points at once is

    V(φ) = (1/Σw) Σ_events w · log p_φ(h(x) | θ),

minimised as the per-observable negative log-likelihoods −V_i. The networks share no weights
and, with teacher forcing, the loss is a sum of independent terms, so each network gets its own
Adam optimiser, its own learning-rate schedule (× ``lr_factor`` after ``lr_patience`` epochs
without improvement of its validation loss), its own early stopping (``patience`` epochs
without an improvement larger than ``min_delta``) and its own best-weights restore — as if it
had been trained alone, which is what the paper does, in one pass over the data. With
``schedule="cosine"`` the rate instead follows a half cosine from ``lr`` to 0 over a fixed
budget of ``max_epochs`` epochs (Loshchilov & Hutter, SGDR, 2017), for a training that must end
in a given time.

For the same reason the networks can be trained in separate processes (``workers=``): groups
of about equal weight count, one spawned process and one torch thread each, every group on the
same split and the same seeded batches. The merged weights and history are bit-identical to a
serial run with one torch thread.

Negative event weights (NLO generators) are supported: each batch's loss is
−Σ_b w log p / (n_b · w̄) with w̄ the mean weight of the whole training set, an unbiased
estimate of −V that does not blow up when a batch's weights happen to cancel. Σw must be > 0.

Score regression (``score=``). Maximum likelihood learns how p depends on θ only from the
differences between the samples at different θ; what a fit uses — the score ∇θ log p and its
θ-derivative — is learned no better than that. Where the simulator knows, per event, the
gradient of the log density with respect to θ, it can be regressed on directly, as in the
"gold mining" methods of Brehmer, Louppe, Pavez & Cranmer (PNAS 117 (2020) 5242; SCANDAL:
likelihood plus score loss). Network i then minimises

    −V_i + α · Σ_p E_w[(∂_p log p_φ,i − t_ip)²] / I_p,

with t_ip the score of observable i's conditional p(x_i | x_<i, θ) for parameter p,
α = ``score_weight`` and I_p = E_w[(Σ_i t_ip)²] the targets' mean information per event, so
that the term is the fraction of each parameter's information the model gets wrong and does
not depend on the parameters' units. The projection h is θ-independent, so scores in data
space are scores in latent space. Each network still trains alone: its target is its own
conditional's score (shape (N, D, P)). A flow (one unit) takes the whole event's (N, P); there
a joint score t(x, z | θ) of the simulator's latent history z is a valid target too, its
conditional expectation given x being the true score (noisier: the term's minimum is then its
variance rather than 0). A GMM given only the whole event's score would need its networks'
losses coupled, which is not offered.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import glob
import hashlib
import json
import math
import multiprocessing
import os
import pickle
import time
import warnings
from collections.abc import Callable, Mapping
from concurrent.futures.process import BrokenProcessPool
from dataclasses import asdict, dataclass, field
from pathlib import Path
from queue import Empty
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from egmm._io import atomic_path
from egmm._workers import init_worker
from egmm.base import is_real_number, labelled, theta_columns, whole_number
from egmm.errors import EgmmError, InputError, ModelFileError, ParameterError, TrainingError

__all__ = ["TrainableDensity", "TrainingHistory", "train"]


class TrainableDensity(Protocol):
    """What :func:`train` needs of a model (GMMDensity and FlowDensity implement it).

    ``training_units()`` lists independently trained modules (one per observable for the
    autoregressive GMM, one for a flow); ``training_tensors`` precomputes every θ-independent
    per-event tensor once; ``training_log_prob(i, batch)`` is unit i's (B,) log-likelihood term.
    """

    space: Any
    parameters: tuple[str, ...]
    parameter_bounds: dict[str, tuple[float, float]]
    module: torch.nn.Module

    def training_units(self) -> list[torch.nn.Module]: ...
    def training_tensors(self, x: np.ndarray, theta: np.ndarray,
                         dtype: torch.dtype) -> dict[str, torch.Tensor]: ...
    def training_log_prob(self, i: int, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...
    def scale_theta(self, theta: torch.Tensor) -> torch.Tensor: ...
    def set_parameter_bounds(self, bounds: Any) -> None: ...
    def check_theta(self, arr: np.ndarray, *, allow_outside: bool = False) -> None: ...
    def to(self, device: Any) -> Any: ...
    @property
    def device(self) -> torch.device: ...

#: learning-rate schedules of :func:`train`
SCHEDULES = ("plateau", "cosine")



def check_training_settings(*, validation: float = 0.4, batch_size: int = 500,
                            max_epochs: int = 1000, lr: float = 1e-3, schedule: str = "plateau",
                            patience: int = 8, score_weight: float = 1.0,
                            lr_factor: float = 0.5, lr_patience: int = 2,
                            min_delta: float = 1e-6, eval_batch_size: int = 65536) -> None:
    """Raise :class:`InputError` for settings :func:`train` cannot use (its arguments of the
    same names), before any data are prepared."""
    if not is_real_number(validation) or not 0.0 < validation < 1.0:
        raise InputError(f"validation must be a fraction in (0, 1), got {validation!r}")
    whole_number(batch_size, "batch_size")
    whole_number(patience, "patience")
    whole_number(max_epochs, "max_epochs", 0)
    whole_number(lr_patience, "lr_patience", 0)
    whole_number(eval_batch_size, "eval_batch_size")
    if not (is_real_number(lr) and math.isfinite(lr) and lr > 0.0):
        raise InputError(f"lr must be a positive finite number, got {lr!r}")
    if not (is_real_number(lr_factor) and 0.0 < lr_factor < 1.0):
        raise InputError(f"lr_factor must be in (0, 1) (the rate is multiplied by it on a "
                         f"plateau), got {lr_factor!r}")
    if not (is_real_number(min_delta) and math.isfinite(min_delta) and min_delta >= 0.0):
        raise InputError(f"min_delta must be a finite number ≥ 0, got {min_delta!r}")
    if schedule not in SCHEDULES:
        raise InputError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "cosine" and max_epochs < 1:
        raise InputError("schedule='cosine' needs max_epochs ≥ 1 (its budget)")
    if not (is_real_number(score_weight) and math.isfinite(score_weight) and score_weight >= 0.0):
        raise InputError(f"score_weight must be a finite number ≥ 0, got {score_weight!r}")


# signed weights whose Σw is below this fraction of Σ|w| are warned about
_CANCELLING = 1e-3

# 2: the fingerprint holds a data digest and the settings; 3: and a digest of the model's
# configuration (architecture, θ features, projection, parameter bounds), not only its size
_CHECKPOINT_VERSION = 3


@dataclass
class TrainingHistory:
    """What happened during :func:`train`, one entry per epoch.

    ``train_loss``/``val_loss`` are per-observable weighted mean negative log-likelihoods in
    latent space (nats/event), ``lr`` the learning rate of each network, ``active`` which
    networks were still training. A network that has stopped has no training loss (NaN) and
    keeps its last validation loss and learning rate. ``best_epoch``/``best_val_loss`` per
    network are what was restored. ``seconds``: wall time of each epoch (with workers, that of
    the slowest group). ``val_score`` (training with a ``score`` only): per network the
    validation score term Σ_p E[(∂_p log p − t_p)²]/I_p, the fraction of the information the
    network's θ-dependence gets wrong; the restored epoch is the one of least
    ``val_loss + score_weight · val_score``.
    """

    observables: list[str]
    epochs: list[int] = field(default_factory=list)
    train_loss: list[list[float]] = field(default_factory=list)
    val_loss: list[list[float]] = field(default_factory=list)
    lr: list[list[float]] = field(default_factory=list)
    active: list[list[bool]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    best_epoch: list[int] = field(default_factory=list)
    best_val_loss: list[float] = field(default_factory=list)
    stopped: bool = False
    val_score: list[list[float]] = field(default_factory=list)

    @property
    def total_best_val_loss(self) -> float:
        """Σ over observables of the restored validation NLL (nats/event)."""
        return float(sum(self.best_val_loss))

    @property
    def wall_time(self) -> float:
        return float(sum(self.seconds))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingHistory:
        return cls(**d)


def _prepare_inputs(model: TrainableDensity, x: Any, theta: Any, weights: Any
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    xv = model.space.validate(x, what="training events")
    n = len(xv)
    p = len(model.parameters)
    named = labelled(theta)  # name -> scalar or one value per event
    if named is not None:
        th = np.broadcast_to(theta_columns(model.parameters, named, n), (n, p)).copy()
    else:
        try:
            th = np.asarray(theta, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise InputError(f"training θ: expected an ({n}, {p}) array or a mapping of "
                             f"{list(model.parameters)}, got {type(theta).__name__} ({exc})"
                             ) from None
    if th.ndim == 1 and p == 1:
        th = th[:, None]
    if p == 0 and th.size == 0:
        th = np.zeros((n, 0))
    if th.shape != (n, p):
        raise InputError(f"training θ: expected shape ({n}, {p}) for parameters "
                         f"{list(model.parameters)}, got {th.shape}")
    for j, name in enumerate(model.parameters):
        bad = ~np.isfinite(th[:, j])
        if bad.any():
            raise ParameterError(f"training θ: parameter {name!r} is not finite in row "
                                 f"{int(np.argmax(bad))}")
    if weights is None:
        w = np.ones(n)
    else:
        w = np.asarray(weights, dtype=np.float64)
        if w.shape != (n,):
            raise InputError(f"training weights: expected shape ({n},), got {w.shape}")
        bad = ~np.isfinite(w)
        if bad.any():
            raise InputError(f"training weights: not finite in row {int(np.argmax(bad))}")
        with np.errstate(over="ignore"):
            total, size = float(w.sum()), float(np.abs(w).sum())
        if not math.isfinite(size):
            raise InputError("training weights: their sum overflows float64; divide them by "
                             "a common factor (only their ratios matter)")
        if not total > 0:
            raise InputError(f"training weights: the total weight must be > 0, got {total}")
        if total < _CANCELLING * size:
            warnings.warn(f"training weights: signed weights nearly cancel (Σw / Σ|w| = "
                          f"{total / size:.3g}): the loss is a small difference of large "
                          "terms, and its noise is scaled up by Σ|w| / Σw", stacklevel=3)
    return xv, th, w


def _prepare_score(model: TrainableDensity, score: Any, w: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The validated score targets as (N, units, P) and their information I_p per event."""
    n, p = len(w), len(model.parameters)
    n_units = len(model.training_units())
    t = np.asarray(score, dtype=np.float64)
    if p == 0:
        raise InputError("score: the model has no parameters, so there is no score to learn")
    if t.ndim == 2 and n_units == 1:
        t = t[:, None, :]
    if t.shape != (n, n_units, p):
        what = ("the score of each observable's conditional, one network per observable"
                if n_units > 1 else "the score of each event")
        if t.ndim == 2 and n_units > 1:
            what += ("; a whole event's score would couple the networks' losses, which is "
                     "not supported")
        raise InputError(f"score: expected shape ({n}, {n_units}, {p}) ({what}, for parameters "
                         f"{list(model.parameters)}), got {t.shape}")
    bad = ~np.isfinite(t)
    if bad.any():
        row, unit, par = np.argwhere(bad)[0]
        raise InputError(f"score: not finite in row {row} (unit {unit}, parameter "
                         f"{model.parameters[par]!r})")
    info = (w[:, None] * t.sum(axis=1) ** 2).sum(axis=0) / w.sum()
    for j, name in enumerate(model.parameters):
        if not info[j] > 0.0:
            raise InputError(f"score: the information about {name!r} in the targets is "
                             f"{info[j]:g} (it must be > 0 to scale the score term)")
    return t, info


def _state_digest(obj: Any) -> str:
    """SHA-256 of a checkpoint's content: tensors by dtype, shape and bytes, everything else
    by type and repr, mappings and sequences in order (a structure walk, not torch.save's
    bytes, which need not repeat)."""
    h = hashlib.sha256()

    def walk(o: Any) -> None:
        if isinstance(o, torch.Tensor):
            t = o.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel()
                     else b"")
        elif isinstance(o, Mapping):
            h.update(f"M{len(o)}".encode())
            for k, v in o.items():
                h.update(repr(k).encode())
                walk(v)
        elif isinstance(o, (list, tuple)):
            h.update(f"L{len(o)}".encode())
            for v in o:
                walk(v)
        else:
            h.update(f"{type(o).__name__}:{o!r}".encode())

    walk(obj)
    return h.hexdigest()


def _save_checkpoint(content: dict[str, Any], path: Path) -> None:
    """A training checkpoint with the SHA-256 of its content (checked on resume)."""
    with atomic_path(path) as tmp:
        torch.save({**content, "sha256": _state_digest(content)}, tmp)


def _adam_options(device: torch.device) -> dict[str, Any]:
    """Adam's fused kernel (one kernel for all of a network's tensors) where torch has it for
    the device: several times faster per step than the per-tensor loop on small networks."""
    if device.type in ("cpu", "cuda"):
        return {"fused": True}
    return {}


@dataclass(frozen=True)
class _LoopSettings:
    """The knobs of the epoch loop: what a worker process needs besides the model and data."""

    batch_size: int
    max_epochs: int
    lr: float
    lr_factor: float
    lr_patience: int
    patience: int
    min_delta: float
    seed: int
    eval_batch_size: int
    schedule: str = "plateau"
    score_weight: float = 0.0


@dataclass
class _TrainingData:
    """The θ-independent per-event tensors, the weights (mean 1) and the seeded split; with
    score targets also the raw θ (differentiated), the targets (N, units, P) and 1/I_p."""

    tensors: dict[str, torch.Tensor]
    weights: torch.Tensor
    train_idx: torch.Tensor
    val_idx: torch.Tensor
    theta: torch.Tensor | None = None
    score: torch.Tensor | None = None
    score_scale: torch.Tensor | None = None


def train(model: TrainableDensity, x: Any, theta: Any, weights: Any = None, *,
          validation: float = 0.4, batch_size: int = 500, max_epochs: int = 1000,
          lr: float = 1e-3, lr_factor: float = 0.5, lr_patience: int = 2, patience: int = 8,
          min_delta: float = 1e-6, seed: int = 0, device: str | torch.device | None = None,
          dtype: torch.dtype = torch.float32, checkpoint: str | os.PathLike | None = None,
          resume: bool = False, progress: bool = True, eval_batch_size: int = 65536,
          callback: Callable[[int, TrainingHistory], None] | None = None,
          workers: int = 1, schedule: str = "plateau", score: Any = None,
          score_weight: float = 1.0) -> TrainingHistory:
    """Fit ``model`` to weighted events by maximum likelihood, in place; returns the history.

    Arguments:
        model: a :class:`GMMDensity` or :class:`FlowDensity` (projection already fitted).
        x: (N, D) events or named columns; theta: (N, P) parameter values per event
            (the parameter point each event was generated at); weights: (N,) or None.
        validation: fraction held out (seeded split) for the learning-rate schedule and early
            stopping (paper: 0.4).
        batch_size, lr, lr_factor, lr_patience, patience, min_delta: paper Table 6 defaults.
        max_epochs: upper bound on epochs (early stopping normally ends training earlier).
        schedule: the learning rate of each network. ``"plateau"`` (the paper's): ``lr``,
            times ``lr_factor`` after ``lr_patience`` epochs without improvement of its
            validation loss. ``"cosine"``: a fixed budget of ``max_epochs`` epochs, along which
            the rate falls from ``lr`` to 0 as a half cosine, updated after every batch
            (``lr_factor``/``lr_patience`` unused); early stopping and the best-weights
            restore work as with ``"plateau"``, and ``max_epochs`` cannot change on resume.
        seed: seeds the split, the per-epoch shuffles and nothing else (initial weights come
            from the model, i.e. from ``torch.manual_seed`` before constructing it).
        device: where to train (default: the model's device); dtype: training precision.
        checkpoint: file written atomically after every epoch (optimiser, schedules, early
            stopping state, best weights, history); with ``resume=True`` an existing checkpoint
            is continued exactly where it stopped: the final weights equal those of an
            uninterrupted run.
        progress: tqdm bar with the losses; callback(epoch, history) after each epoch.
        workers: processes to train in. With ``workers > 1`` the training units (one network
            per observable) are split into that many groups of about equal weight count, and
            each group is trained in its own "spawn" process with one torch thread, on the same
            split and the same batches; the weights and history are then merged here. As the
            networks share nothing, the result is bit-identical to ``workers=1`` run with one
            torch thread (``history.seconds`` excepted: per epoch, the slowest group's time).
            More workers than units means one per unit; a single unit (a flow) trains in this
            process. Each group has its own checkpoint, ``<checkpoint>.group<g>of<workers>``,
            resumed with the same ``workers``. ``callback`` needs ``workers=1`` (the epochs
            run elsewhere); ``progress`` counts the batches the groups have trained (each
            worker reports every 50 batches), not the losses. Scripts calling
            this with ``workers > 1`` need the ``if __name__ == "__main__":`` guard.
        score: per-event score targets ∇θ log p (module docstring, "Score regression"), in
            the parameters' own units: for a :class:`GMMDensity` the score of each
            observable's conditional, shape (N, D, P) (they sum to the event's score); for a
            flow the event's, (N, P). ``None``: maximum likelihood alone.
        score_weight: α, the weight of the score term (≥ 0; used only with ``score``).

    If the model has no ``parameter_bounds`` yet they are set to the (min, max) of ``theta``.
    """
    workers = whole_number(workers, "workers")
    if resume and checkpoint is None:
        raise InputError("resume=True needs checkpoint= (the file to resume from)")
    check_training_settings(validation=validation, batch_size=batch_size,
                            max_epochs=max_epochs, lr=lr, schedule=schedule, patience=patience,
                            score_weight=score_weight, lr_factor=lr_factor,
                            lr_patience=lr_patience, min_delta=min_delta,
                            eval_batch_size=eval_batch_size)
    seed = whole_number(seed, "seed", 0)
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"dtype must be torch.float32 or torch.float64, got {dtype!r}")
    if device is not None:
        device = _check_device(device)
    if checkpoint is not None and not Path(checkpoint).parent.is_dir():
        raise InputError(f"checkpoint: the folder of {str(checkpoint)!r} does not exist")
    xv, th, w = _prepare_inputs(model, x, theta, weights)
    if score is not None:
        targets, info = _prepare_score(model, score, w)
    if model.parameters and not model.parameter_bounds:
        model.set_parameter_bounds({p: (float(th[:, j].min()), float(th[:, j].max()))
                                    for j, p in enumerate(model.parameters)})
    model.check_theta(th)
    if device is not None:
        model.to(device)
    dev = model.device
    n = len(xv)
    n_val = round(validation * n)
    if n_val < 1 or n - n_val < 1:
        raise InputError(f"too few events ({n}) for a validation fraction of {validation}")
    units = model.training_units()
    n_workers = min(int(workers), len(units))
    if n_workers > 1 and callback is not None:
        raise InputError("callback needs workers=1: with workers > 1 the epochs run in other "
                         "processes")

    # θ-independent preprocessing, once (latent values, scaled network inputs, ...)
    with torch.no_grad():
        tensors = model.training_tensors(xv, th, dtype)
    wt = torch.as_tensor(w / w.mean(), dtype=dtype, device=dev)  # mean weight 1

    split = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(dev)
    for part, rows in (("validation", split[:n_val]), ("training", split[n_val:])):
        if not float(w[rows.cpu().numpy()].sum()) > 0:
            raise InputError(f"training weights: the {part} events (the seeded split, seed "
                             f"{seed}) have a total weight ≤ 0, so their loss is no "
                             "likelihood; use more events, fewer negative weights or another "
                             "seed")
    data = _TrainingData(tensors=tensors, weights=wt, train_idx=split[n_val:],
                         val_idx=split[:n_val])
    if score is not None:
        data.theta = torch.as_tensor(th, dtype=dtype, device=dev)
        data.score = torch.as_tensor(targets, dtype=dtype, device=dev)
        data.score_scale = torch.as_tensor(1.0 / info, dtype=dtype, device=dev)
    settings = _LoopSettings(batch_size=batch_size, max_epochs=max_epochs, lr=lr,
                             lr_factor=lr_factor, lr_patience=lr_patience, patience=patience,
                             min_delta=min_delta, seed=seed, eval_batch_size=eval_batch_size,
                             schedule=schedule,
                             score_weight=float(score_weight) if score is not None else 0.0)
    # what a checkpoint must match to be resumed: the data (a digest of events, θ and
    # weights), the split, the optimisation settings and the model's shape (max_epochs may
    # change with the plateau schedule: a finished run can be continued for more epochs; the
    # cosine schedule's budget is max_epochs)
    digest = hashlib.sha256()
    for arr in (xv, th, w):
        digest.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
    fingerprint = {"n": n, "validation": validation, "batch_size": batch_size, "seed": seed,
                   "weights": [sum(p.numel() for p in u.parameters()) for u in units],
                   "data_sha256": digest.hexdigest(), "lr": lr, "lr_factor": lr_factor,
                   "lr_patience": lr_patience, "patience": patience, "min_delta": min_delta,
                   "dtype": str(dtype)}
    config = getattr(model, "to_config", None)
    if config is not None:  # same-sized weights of another architecture or input scaling
        fingerprint["model_sha256"] = hashlib.sha256(
            json.dumps(config(), sort_keys=True, default=str).encode()).hexdigest()
    if eval_batch_size != 65536:  # validation sums in other batches round differently
        fingerprint["eval_batch_size"] = eval_batch_size  # (older checkpoints: the default)
    if schedule != "plateau":  # (older checkpoints have no key: they are plateau runs)
        fingerprint.update(schedule=schedule, max_epochs=max_epochs)
    if score is not None:
        fingerprint.update(score_sha256=hashlib.sha256(np.ascontiguousarray(
            targets).tobytes()).hexdigest(), score_weight=float(score_weight))
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    groups = _partition(fingerprint["weights"], n_workers)
    ckpt_paths = _checkpoint_paths(ckpt_path, len(groups), resume)
    if len(groups) == 1:
        return _warn_diverged(model, _train_units(
            model, data, groups[0], settings, fingerprint=fingerprint, checkpoint=ckpt_paths[0],
            resume=resume, progress=progress, callback=callback))
    return _warn_diverged(model, _train_in_processes(
        model, data, groups, settings, fingerprint=fingerprint, checkpoints=ckpt_paths,
        resume=resume, progress=progress))


def _check_device(device: Any) -> torch.device:
    """``device`` as a torch.device that this torch can use."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError(f"device: {device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r}: this torch has no CUDA device "
                         f"(torch {torch.__version__})")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise InputError(f"device {device!r}: MPS is not available here")
    return dev


def _partition(weights: list[int], n_groups: int) -> list[list[int]]:
    """Unit indices split into ``n_groups`` non-empty groups of about equal Σ weights.

    Greedy longest-processing-time: the heaviest unit not yet placed goes to the lightest group
    (the emptier one on a tie), which is within 4/3 of the best split. The time of an epoch is
    about proportional to a network's weights, and the slowest group sets the wall time.
    """
    groups: list[list[int]] = [[] for _ in range(n_groups)]
    load = [0] * n_groups
    for i in sorted(range(len(weights)), key=lambda i: (-weights[i], i)):
        g = min(range(n_groups), key=lambda g: (load[g], len(groups[g]), g))
        groups[g].append(i)
        load[g] += weights[i]
    return sorted(sorted(group) for group in groups)


def _checkpoint_paths(path: Path | None, n_groups: int, resume: bool) -> list[Path | None]:
    """The checkpoint file of each group: ``path`` itself for one group, else
    ``<path>.group<g>of<n>``. Resuming from files of the same name written with another number
    of workers is refused rather than silently starting afresh."""
    if path is None:
        return [None] * n_groups
    if n_groups == 1:
        paths = [path]
    else:
        paths = [path.with_name(f"{path.name}.group{g + 1}of{n_groups}")
                 for g in range(n_groups)]
    if resume and not any(p.exists() for p in paths):
        others = [p for p in [path, *path.parent.glob(glob.escape(path.name) + ".group*of*")]
                  if p.exists() and p not in paths]
        if others:
            raise ModelFileError(f"{others[0]}: checkpoint written with another number of "
                                 f"workers; resume with the same workers= (this run has "
                                 f"{n_groups} group(s))")
    return paths


# what each fingerprint key means, for a refused resume's message
_FINGERPRINT_NAMES = {
    "n": "number of events", "validation": "validation fraction", "batch_size": "batch_size",
    "seed": "seed", "weights": "network sizes", "data_sha256": "events, θ or weights",
    "lr": "lr", "lr_factor": "lr_factor", "lr_patience": "lr_patience",
    "patience": "patience", "min_delta": "min_delta", "dtype": "dtype",
    "model_sha256": "model configuration", "schedule": "schedule", "max_epochs": "max_epochs",
    "score_sha256": "score targets", "score_weight": "score_weight", "group": "workers",
    "eval_batch_size": "eval_batch_size",
}


def _check_checkpoint(path: Path, ck: Any, fingerprint: Mapping[str, Any]) -> None:
    """Refuse a checkpoint that is not one of this egmm's, or not of this training, naming
    what differs."""
    if not isinstance(ck, Mapping) or "version" not in ck:
        raise ModelFileError(f"{path}: not an egmm training checkpoint (a "
                             f"{type(ck).__name__} without egmm's keys)")
    version = ck["version"]
    if version != _CHECKPOINT_VERSION:
        newer = isinstance(version, int) and version > _CHECKPOINT_VERSION
        raise ModelFileError(f"{path}: checkpoint format {version!r} of "
                             f"{'a newer' if newer else 'an older'} egmm (this one reads and "
                             f"writes {_CHECKPOINT_VERSION}); "
                             + ("upgrade egmm to resume it" if newer else
                                "train afresh with resume=False or another checkpoint file"))
    stored = ck.get("sha256")  # (checkpoints of egmm before their checksums have none)
    if stored is not None and stored != _state_digest(
            {k: v for k, v in ck.items() if k != "sha256"}):
        raise ModelFileError(f"{path}: damaged checkpoint (its content does not match the "
                             "checksum stored with it); train afresh with resume=False")
    theirs = ck.get("fingerprint")
    if theirs == fingerprint:
        return
    if not isinstance(theirs, Mapping):
        raise ModelFileError(f"{path}: damaged checkpoint (no fingerprint of its training)")
    differ = sorted({_FINGERPRINT_NAMES.get(k, k) for k in set(theirs) | set(fingerprint)
                     if theirs.get(k) != fingerprint.get(k)})
    raise ModelFileError(f"{path}: checkpoint belongs to another training (this call's "
                         f"{', '.join(differ)}: not the checkpoint's); resume with the same "
                         "data and settings, or train afresh with resume=False")


def _train_units(model: TrainableDensity, data: _TrainingData, unit_ids: list[int],
                 settings: _LoopSettings, *, fingerprint: dict[str, Any],
                 checkpoint: Path | None, resume: bool, progress: bool,
                 callback: Callable[[int, TrainingHistory], None] | None,
                 report: Callable[[int], None] | None = None) -> TrainingHistory:
    """The epoch loop for the training units ``unit_ids`` (all of them when serial).

    ``report(n)``: told every ``_REPORT_BATCHES`` batches (and at each epoch's end) how many
    batches were trained since it was last told (a worker's progress, shown by the parent).

    Units outside ``unit_ids`` are neither evaluated nor trained. The history's per-network
    columns are those of ``unit_ids``, in that order. Nothing random depends on which units
    are trained: the split comes with ``data`` and each epoch's shuffle is seeded by
    (seed, epoch), so any group sees exactly the batches of a serial run.
    """
    s = settings
    all_units = model.training_units()
    units = [all_units[i] for i in unit_ids]
    n_nets = len(units)
    dev = model.device
    tensors, wt = data.tensors, data.weights
    train_idx, val_idx = data.train_idx, data.val_idx
    if len(unit_ids) != len(all_units):
        fingerprint = {**fingerprint, "group": list(unit_ids)}
    optims = [torch.optim.Adam(net.parameters(), lr=s.lr, **_adam_options(dev))
              for net in units]
    per_batch = s.schedule == "cosine"
    if per_batch:
        steps = s.max_epochs * math.ceil(len(train_idx) / s.batch_size)
        scheds: list[Any] = [torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=steps)
                             for o in optims]
    else:
        scheds = [torch.optim.lr_scheduler.ReduceLROnPlateau(
            o, mode="min", factor=s.lr_factor, patience=s.lr_patience, threshold=s.min_delta,
            threshold_mode="abs") for o in optims]
    history = TrainingHistory(observables=list(model.space.names))
    state = {
        "epoch": 0,
        "active": [True] * n_nets,
        "bad_epochs": [0] * n_nets,
        "best_val": [math.inf] * n_nets,
        "best_epoch": [0] * n_nets,
        "best_state": [copy.deepcopy(net.state_dict()) for net in units],
    }
    if resume and checkpoint is not None and checkpoint.exists():
        try:
            ck = torch.load(checkpoint, map_location=dev, weights_only=True)
        except Exception as exc:
            raise ModelFileError(f"{checkpoint}: cannot read checkpoint ({exc})") from None
        _check_checkpoint(checkpoint, ck, fingerprint)
        try:
            model.module.load_state_dict(ck["module"])
            for o, sd in zip(optims, ck["optims"], strict=True):
                o.load_state_dict(sd)
            for sc, sd in zip(scheds, ck["scheds"], strict=True):
                sc.load_state_dict(sd)
            state = ck["state"]
            history = TrainingHistory.from_dict(ck["history"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelFileError(f"{checkpoint}: damaged checkpoint ({type(exc).__name__}: "
                                 f"{exc})") from None

    scored = data.score is not None

    def batch_loss(idx: torch.Tensor, nets: list[int], graph: bool = True
                   ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per network: the batch's weighted mean NLL and (with scores) its score term."""
        # (with scores, θ's network input is made per network from the raw θ below)
        batch = {k: v[idx] for k, v in tensors.items() if not (scored and k == "theta")}
        wb = wt[idx]
        if not scored:
            return [-(wb * model.training_log_prob(unit_ids[k], batch)).sum() / len(idx)
                    for k in nets], []
        assert data.theta is not None and data.score is not None
        nll, term = [], []
        th = data.theta[idx].requires_grad_(True)  # one leaf and one θ input for all networks
        batch["theta"] = model.scale_theta(th)
        for k in nets:
            lp = model.training_log_prob(unit_ids[k], batch)
            (grad,) = torch.autograd.grad(lp.sum(), th, create_graph=graph, retain_graph=True,
                                          allow_unused=True)
            if grad is None:  # a network without a θ input
                grad = torch.zeros_like(th)
            miss = (grad - data.score[idx, unit_ids[k]]).square() @ data.score_scale
            nll.append(-(wb * lp).sum() / len(idx))
            term.append((wb * miss).sum() / len(idx))
        return nll, term

    def evaluate(idx: torch.Tensor, nets: list[int]) -> tuple[list[float], list[float]]:
        totals = torch.zeros((2, len(nets)), dtype=torch.float64)
        with torch.set_grad_enabled(scored):  # the score term differentiates in θ
            for start in range(0, len(idx), s.eval_batch_size):
                chunk = idx[start:start + s.eval_batch_size]
                for row, losses in enumerate(batch_loss(chunk, nets, graph=False)):
                    for j, loss in enumerate(losses):
                        totals[row, j] += loss.detach().double().cpu() * len(chunk)
        means = totals / len(idx)
        return means[0].tolist(), means[1].tolist() if scored else []

    if state["epoch"] > 0:  # resumed: say so, and credit the epochs done to the bar
        if progress:
            tqdm.write(f"resuming from {checkpoint}: epoch {state['epoch']} of "
                       f"{s.max_epochs} done")
        if report is not None:
            report(state["epoch"] * math.ceil(len(train_idx) / s.batch_size))
    bar = tqdm(total=s.max_epochs, initial=state["epoch"], disable=not progress, unit="epoch",
               desc="training")
    # the weights require gradients only while training (see TrainedModel)
    grad_flags = [p.requires_grad for net in units for p in net.parameters()]
    for net in units:
        net.requires_grad_(True)
    try:
        while state["epoch"] < s.max_epochs and any(state["active"]):
            t0 = time.perf_counter()
            epoch = state["epoch"]
            active = [k for k in range(n_nets) if state["active"][k]]
            # shuffles seeded by (seed, epoch): a resumed run sees the same batches
            gen = torch.Generator().manual_seed(s.seed * 1_000_003 + epoch + 1)
            order = train_idx[torch.randperm(len(train_idx), generator=gen).to(dev)]
            sums = torch.zeros(n_nets, dtype=torch.float64)
            unreported = 0
            for start in range(0, len(order), s.batch_size):
                if report is not None and unreported == _REPORT_BATCHES:
                    report(unreported)
                    unreported = 0
                unreported += 1
                idx = order[start:start + s.batch_size]
                losses, terms = batch_loss(idx, active)
                for k in active:
                    optims[k].zero_grad(set_to_none=True)
                objective = torch.stack(losses).sum()
                if terms:
                    objective = objective + s.score_weight * torch.stack(terms).sum()
                objective.backward()
                for j, k in enumerate(active):
                    optims[k].step()
                    if per_batch:
                        scheds[k].step()
                    sums[k] += losses[j].detach().double().cpu() * len(idx)
            if report is not None:
                report(unreported)
            # a stopped network's weights no longer change: it keeps its last validation loss
            val = list(history.val_loss[-1]) if history.val_loss else [math.nan] * n_nets
            val_score = (list(history.val_score[-1]) if history.val_score
                         else [math.nan] * n_nets)
            nll_now, score_now = evaluate(val_idx, active)
            for j, k in enumerate(active):
                val[k] = nll_now[j]
                if scored:
                    val_score[k] = score_now[j]
            for k in active:
                # what is minimised: the NLL, plus the weighted score term with scores
                goal = val[k] + s.score_weight * val_score[k] if scored else val[k]
                if not math.isfinite(goal) and not math.isfinite(state["best_val"][k]):
                    _not_finite(model, unit_ids[k], val[k], val_score[k] if scored else None,
                                epoch)
                if not per_batch:
                    scheds[k].step(goal)
                if goal < state["best_val"][k] - s.min_delta:
                    state["best_val"][k] = goal
                    state["best_epoch"][k] = epoch
                    state["best_state"][k] = copy.deepcopy(units[k].state_dict())
                    state["bad_epochs"][k] = 0
                else:
                    state["bad_epochs"][k] += 1
                    if state["bad_epochs"][k] >= s.patience:
                        state["active"][k] = False
            train_mean = (sums / len(order)).tolist()
            history.epochs.append(epoch)
            history.train_loss.append([train_mean[k] if k in active else math.nan
                                       for k in range(n_nets)])
            history.val_loss.append(val)
            if scored:
                history.val_score.append(val_score)
            history.lr.append([o.param_groups[0]["lr"] for o in optims])
            history.active.append(list(state["active"]))
            history.seconds.append(time.perf_counter() - t0)
            state["epoch"] = epoch + 1
            if checkpoint is not None:
                _save_checkpoint({
                    "version": _CHECKPOINT_VERSION, "fingerprint": fingerprint,
                    "module": model.module.state_dict(),
                    "optims": [o.state_dict() for o in optims],
                    "scheds": [sc.state_dict() for sc in scheds],
                    "state": state, "history": history.to_dict()}, checkpoint)
            bar.update(1)
            bar.set_postfix(val=f"{sum(val):.5f}", active=sum(state["active"]))
            if callback is not None:
                callback(epoch, history)
    finally:
        bar.close()
        for p, flag in zip([p for net in units for p in net.parameters()], grad_flags):
            p.requires_grad_(flag)
            p.grad = None  # the last batch's gradients are training state, not the model's
    for k, net in enumerate(units):
        net.load_state_dict(state["best_state"][k])
    history.best_epoch = list(state["best_epoch"])
    history.best_val_loss = list(state["best_val"])
    if scored and history.val_loss:  # the restored epochs' NLL (best_val: NLL + α · score)
        history.best_val_loss = [history.val_loss[e][k] if math.isfinite(b) else b
                                 for k, (e, b) in enumerate(zip(state["best_epoch"],
                                                                state["best_val"]))]
    history.stopped = not any(state["active"])
    return history


def _unit_name(model: TrainableDensity, unit: int) -> str:
    names = model.space.names
    return (f"network {unit} ({names[unit]!r})"
            if len(model.training_units()) == len(names) else f"unit {unit}")


def _not_finite(model: TrainableDensity, unit: int, nll: float, score: float | None,
                epoch: int) -> None:
    """A network's validation objective is not finite and no epoch before it was: there is
    nothing to restore (its initial weights would come back without a word)."""
    term = f", score term {score}" if score is not None else ""
    raise TrainingError(f"{_unit_name(model, unit)}: validation loss {nll}{term} after epoch "
                        f"{epoch}, and none before it was finite: the training diverged (try "
                        f"a smaller lr) or some events have zero density")


def _warn_diverged(model: TrainableDensity, history: TrainingHistory) -> TrainingHistory:
    """Warn (in the calling process) for each network whose validation loss (or score term)
    stopped being finite after finite epochs: such an epoch counts as one without
    improvement, and the best epoch's weights were restored, as for any other."""
    for k in range(len(history.best_epoch)):
        bad = [e for i, e in enumerate(history.epochs)
               if not math.isfinite(history.val_loss[i][k])
               or (history.val_score and not math.isfinite(history.val_score[i][k]))]
        if bad:
            warnings.warn(f"{_unit_name(model, k)}: validation loss not finite from epoch "
                          f"{bad[0]} on (the training diverged: try a smaller lr); restored "
                          f"epoch {history.best_epoch[k]}", RuntimeWarning, stacklevel=3)
    return history


# a worker reports its progress every this many batches (and at each epoch's end); the parent
# looks for reports this often
_REPORT_BATCHES = 50
_POLL_SECONDS = 0.5


# Process-pool initializer: one torch thread per worker, and an end with the parent
_init_worker = init_worker


def _train_group(payload: bytes, unit_ids: list[int], fingerprint: dict[str, Any],
                 checkpoint: Path | None, resume: bool, group: int = 0,
                 queue: Any = None) -> bytes:
    """Worker side: train the units ``unit_ids`` of the pickled (model, data, settings).

    Returns the pickled (history dict, best-restored state dicts of those units). Results and
    arguments travel as plain pickles: ``multiprocessing``'s own pickler would move tensors
    through shared memory, which is not needed for these sizes. ``queue`` (a manager's queue,
    or None) receives ``(group, batches)`` as the training goes, for the parent's bar.
    """
    model, data, settings = pickle.loads(payload)
    report = None if queue is None else (lambda n: queue.put((group, n)))
    history = _train_units(model, data, unit_ids, settings, fingerprint=fingerprint,
                           checkpoint=checkpoint, resume=resume, progress=False, callback=None,
                           report=report)
    units = model.training_units()
    return pickle.dumps((history.to_dict(), [units[i].state_dict() for i in unit_ids]))


def _spawn_failed() -> EgmmError:
    return EgmmError(
        "workers > 1: a worker process died (see any error it printed above). Spawned "
        "processes re-import the main script: if yours calls train() at top level, put that "
        "code under `if __name__ == \"__main__\":`")


def _train_in_processes(model: TrainableDensity, data: _TrainingData, groups: list[list[int]],
                        settings: _LoopSettings, *, fingerprint: dict[str, Any],
                        checkpoints: list[Path | None], resume: bool,
                        progress: bool) -> TrainingHistory:
    """Each group of units trained in its own spawned process; weights and history merged."""
    try:
        payload = pickle.dumps((model, data, settings))
    except Exception as exc:
        raise InputError(f"workers > 1: the model cannot be pickled for the worker processes "
                         f"({exc})") from None
    results: list[tuple[dict[str, Any], list[dict[str, torch.Tensor]]] | None] = [None] * len(
        groups)
    # the bar counts batches of all groups (each trains its units on every batch); a group
    # that stops early or resumed mid-way is credited with its whole share when it ends
    share = settings.max_epochs * math.ceil(len(data.train_idx) / settings.batch_size)
    if progress and resume:
        for path in checkpoints:
            if path is not None and path.exists():
                tqdm.write(f"resuming from {path}")
    bar = tqdm(total=share * len(groups), disable=not progress, unit="batch",
               desc=f"training in {len(groups)} processes")
    counted = [0] * len(groups)
    context = multiprocessing.get_context("spawn")
    try:
        manager = context.Manager() if progress else None
    except EOFError as exc:  # the manager's process died while starting
        raise _spawn_failed() from exc
    queue = manager.Queue() if manager is not None else None

    def drain() -> None:
        if queue is None:
            return
        while True:
            try:
                g, n = queue.get_nowait()
            except Empty:
                return
            n = min(n, share - counted[g])
            counted[g] += n
            bar.update(n)

    try:
        with cf.ProcessPoolExecutor(len(groups), mp_context=context,
                                    initializer=_init_worker) as pool:
            futures = {pool.submit(_train_group, payload, group, fingerprint, path, resume, g,
                                   queue): g
                       for g, (group, path) in enumerate(zip(groups, checkpoints))}
            pending = set(futures)
            while pending:
                done, pending = cf.wait(pending, timeout=_POLL_SECONDS,
                                        return_when=cf.FIRST_COMPLETED)
                drain()
                for fut in done:
                    g = futures[fut]
                    try:
                        results[g] = pickle.loads(fut.result())
                    except BrokenProcessPool as exc:
                        raise _spawn_failed() from exc
                    bar.update(share - counted[g])
                    counted[g] = share
    finally:
        bar.close()
        if manager is not None:
            manager.shutdown()
    units = model.training_units()
    histories = []
    for group, result in zip(groups, results):
        assert result is not None  # every future has completed
        hist, states = result
        histories.append(TrainingHistory.from_dict(hist))
        for i, sd in zip(group, states):
            units[i].load_state_dict(sd)
    return _merge_histories(list(model.space.names), groups, histories)


def _merge_histories(observables: list[str], groups: list[list[int]],
                     histories: list[TrainingHistory]) -> TrainingHistory:
    """One history over all units from the histories of groups of units, as a serial run
    records it: a group that stopped early contributes, for its remaining epochs, what a
    stopped network shows serially (no training loss, its last validation loss and learning
    rate, inactive). ``seconds`` per epoch is that of the slowest group."""
    n_units = sum(map(len, groups))
    longest = max(histories, key=lambda h: len(h.epochs))
    merged = TrainingHistory(observables=observables, epochs=list(longest.epochs))
    for e in range(len(merged.epochs)):
        train_loss, val_loss = [math.nan] * n_units, [math.nan] * n_units
        lr, active = [math.nan] * n_units, [False] * n_units
        seconds = 0.0
        for group, h in zip(groups, histories):
            ran = e < len(h.epochs)
            row = e if ran else -1
            if ran:
                seconds = max(seconds, h.seconds[e])
            elif not h.stopped:  # only resumed checkpoints beyond max_epochs can do this
                raise ModelFileError("the groups' checkpoints cover different numbers of "
                                     f"epochs ({len(h.epochs)} and {len(longest.epochs)})")
            for k, i in enumerate(group):
                val_loss[i], lr[i] = h.val_loss[row][k], h.lr[row][k]
                if ran:
                    train_loss[i], active[i] = h.train_loss[e][k], h.active[e][k]
        merged.train_loss.append(train_loss)
        merged.val_loss.append(val_loss)
        if histories[0].val_score:  # trained with scores (every group or none)
            val_score = [math.nan] * n_units
            for group, h in zip(groups, histories):
                row = e if e < len(h.epochs) else -1
                for k, i in enumerate(group):
                    val_score[i] = h.val_score[row][k]
            merged.val_score.append(val_score)
        merged.lr.append(lr)
        merged.active.append(active)
        merged.seconds.append(seconds)
    merged.best_epoch, merged.best_val_loss = [0] * n_units, [math.inf] * n_units
    for group, h in zip(groups, histories):
        for k, i in enumerate(group):
            merged.best_epoch[i], merged.best_val_loss[i] = h.best_epoch[k], h.best_val_loss[k]
    merged.stopped = all(h.stopped for h in histories)
    return merged
