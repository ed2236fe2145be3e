"""Training a :class:`GMMDensity` by weighted maximum likelihood (paper Eq. 5-6).

The objective over all parameter points at once is

    V(φ) = (1/Σw) Σ_events w · log p_φ(h(x) | θ),

minimised as the per-observable negative log-likelihoods −V_i. The networks share no weights
and, with teacher forcing, the loss is a sum of independent terms, so each network gets its own
Adam optimiser, its own learning-rate schedule (× ``lr_factor`` after ``lr_patience`` epochs
without improvement of its validation loss), its own early stopping (``patience`` epochs
without an improvement larger than ``min_delta``) and its own best-weights restore — as if it
had been trained alone, which is what the paper does, in one pass over the data.

Negative event weights (NLO generators) are supported: each batch's loss is
−Σ_b w log p / (n_b · w̄) with w̄ the mean weight of the whole training set, an unbiased
estimate of −V that does not blow up when a batch's weights happen to cancel. Σw must be > 0.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from egmm.errors import InputError, ModelFileError, ParameterError

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
    def set_parameter_bounds(self, bounds: Any) -> None: ...
    def check_theta(self, arr: np.ndarray, *, allow_outside: bool = False) -> None: ...
    def to(self, device: Any) -> Any: ...
    @property
    def device(self) -> torch.device: ...

_CHECKPOINT_VERSION = 1


@dataclass
class TrainingHistory:
    """What happened during :func:`train`, one entry per epoch.

    ``train_loss``/``val_loss`` are per-observable weighted mean negative log-likelihoods in
    latent space (nats/event), ``lr`` the learning rate of each network, ``active`` which
    networks were still training. ``best_epoch``/``best_val_loss`` per network are what was
    restored.
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
    th = np.asarray(theta, dtype=np.float64)
    p = len(model.parameters)
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
        if not w.sum() > 0:
            raise InputError(f"training weights: the total weight must be > 0, got {w.sum()}")
    return xv, th, w


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _adam_options(device: torch.device) -> dict[str, Any]:
    """Adam's fused kernel (one kernel for all of a network's tensors) where torch has it for
    the device: several times faster per step than the per-tensor loop on small networks."""
    if device.type in ("cpu", "cuda"):
        return {"fused": True}
    return {}


def train(model: TrainableDensity, x: Any, theta: Any, weights: Any = None, *,
          validation: float = 0.4, batch_size: int = 500, max_epochs: int = 1000,
          lr: float = 1e-3, lr_factor: float = 0.5, lr_patience: int = 2, patience: int = 8,
          min_delta: float = 1e-6, seed: int = 0, device: str | torch.device | None = None,
          dtype: torch.dtype = torch.float32, checkpoint: str | os.PathLike | None = None,
          resume: bool = False, progress: bool = True, eval_batch_size: int = 65536,
          callback: Callable[[int, TrainingHistory], None] | None = None) -> TrainingHistory:
    """Fit ``model`` to weighted events by maximum likelihood, in place; returns the history.

    Arguments:
        model: a :class:`GMMDensity` or :class:`FlowDensity` (projection already fitted).
        x: (N, D) events or named columns; theta: (N, P) parameter values per event
            (the parameter point each event was generated at); weights: (N,) or None.
        validation: fraction held out (seeded split) for the learning-rate schedule and early
            stopping (paper: 0.4).
        batch_size, lr, lr_factor, lr_patience, patience, min_delta: paper Table 6 defaults.
        max_epochs: upper bound on epochs (early stopping normally ends training earlier).
        seed: seeds the split, the per-epoch shuffles and nothing else (initial weights come
            from the model, i.e. from ``torch.manual_seed`` before constructing it).
        device: where to train (default: the model's device); dtype: training precision.
        checkpoint: file written atomically after every epoch (optimiser, schedules, early
            stopping state, best weights, history); with ``resume=True`` an existing checkpoint
            is continued exactly where it stopped: the final weights equal those of an
            uninterrupted run.
        progress: tqdm bar with the losses; callback(epoch, history) after each epoch.

    If the model has no ``parameter_bounds`` yet they are set to the (min, max) of ``theta``.
    """
    if not 0.0 < validation < 1.0:
        raise InputError(f"validation must be a fraction in (0, 1), got {validation}")
    if batch_size < 1 or max_epochs < 0 or patience < 1:
        raise InputError("batch_size and patience must be ≥ 1 and max_epochs ≥ 0")
    xv, th, w = _prepare_inputs(model, x, theta, weights)
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

    # θ-independent preprocessing, once (latent values, scaled network inputs, ...)
    with torch.no_grad():
        tensors = model.training_tensors(xv, th, dtype)
    wt = torch.as_tensor(w / w.mean(), dtype=dtype, device=dev)  # mean weight 1

    split = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(dev)
    val_idx, train_idx = split[:n_val], split[n_val:]
    units = model.training_units()
    n_nets = len(units)
    optims = [torch.optim.Adam(net.parameters(), lr=lr, **_adam_options(dev)) for net in units]
    scheds = [torch.optim.lr_scheduler.ReduceLROnPlateau(
        o, mode="min", factor=lr_factor, patience=lr_patience, threshold=min_delta,
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
    fingerprint = {"n": n, "validation": validation, "batch_size": batch_size, "seed": seed,
                   "weights": [sum(p.numel() for p in u.parameters()) for u in units],
                   "x_sum": float(xv.sum()),
                   "theta_sum": float(th.sum())}
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if resume and ckpt_path is not None and ckpt_path.exists():
        try:
            ck = torch.load(ckpt_path, map_location=dev, weights_only=True)
        except Exception as exc:
            raise ModelFileError(f"{ckpt_path}: cannot read checkpoint ({exc})") from None
        if ck.get("version") != _CHECKPOINT_VERSION or ck.get("fingerprint") != fingerprint:
            raise ModelFileError(f"{ckpt_path}: checkpoint belongs to a different training "
                                 "(data, split, batch size, seed or model differ)")
        model.module.load_state_dict(ck["module"])
        for o, s in zip(optims, ck["optims"]):
            o.load_state_dict(s)
        for sc, s in zip(scheds, ck["scheds"]):
            sc.load_state_dict(s)
        state = ck["state"]
        history = TrainingHistory.from_dict(ck["history"])

    def batch_loss(idx: torch.Tensor, nets: list[int]) -> list[torch.Tensor]:
        batch = {k: v[idx] for k, v in tensors.items()}
        wb = wt[idx]
        return [-(wb * model.training_log_prob(i, batch)).sum() / len(idx) for i in nets]

    def evaluate(idx: torch.Tensor) -> list[float]:
        totals = torch.zeros(n_nets, dtype=torch.float64)
        with torch.no_grad():
            for s in range(0, len(idx), eval_batch_size):
                chunk = idx[s:s + eval_batch_size]
                for i, loss in enumerate(batch_loss(chunk, list(range(n_nets)))):
                    totals[i] += loss.double().cpu() * len(chunk)
        return (totals / len(idx)).tolist()

    bar = tqdm(total=max_epochs, initial=state["epoch"], disable=not progress, unit="epoch",
               desc="training")
    # the weights require gradients only while training (see TrainedModel)
    grad_flags = [p.requires_grad for net in units for p in net.parameters()]
    for net in units:
        net.requires_grad_(True)
    try:
        while state["epoch"] < max_epochs and any(state["active"]):
            t0 = time.perf_counter()
            epoch = state["epoch"]
            active = [i for i in range(n_nets) if state["active"][i]]
            # shuffles seeded by (seed, epoch): a resumed run sees the same batches
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 1)
            order = train_idx[torch.randperm(len(train_idx), generator=gen).to(dev)]
            sums = torch.zeros(n_nets, dtype=torch.float64)
            for s in range(0, len(order), batch_size):
                idx = order[s:s + batch_size]
                losses = batch_loss(idx, active)
                for i in active:
                    optims[i].zero_grad(set_to_none=True)
                torch.stack(losses).sum().backward()
                for k, i in enumerate(active):
                    optims[i].step()
                    sums[i] += losses[k].detach().double().cpu() * len(idx)
            val = evaluate(val_idx)
            for i in active:
                scheds[i].step(val[i])
                if val[i] < state["best_val"][i] - min_delta:
                    state["best_val"][i] = val[i]
                    state["best_epoch"][i] = epoch
                    state["best_state"][i] = copy.deepcopy(units[i].state_dict())
                    state["bad_epochs"][i] = 0
                else:
                    state["bad_epochs"][i] += 1
                    if state["bad_epochs"][i] >= patience:
                        state["active"][i] = False
            train_mean = (sums / len(order)).tolist()
            history.epochs.append(epoch)
            history.train_loss.append([train_mean[i] if i in active else math.nan
                                       for i in range(n_nets)])
            history.val_loss.append(val)
            history.lr.append([o.param_groups[0]["lr"] for o in optims])
            history.active.append(list(state["active"]))
            history.seconds.append(time.perf_counter() - t0)
            state["epoch"] = epoch + 1
            if ckpt_path is not None:
                _atomic_torch_save({
                    "version": _CHECKPOINT_VERSION, "fingerprint": fingerprint,
                    "module": model.module.state_dict(),
                    "optims": [o.state_dict() for o in optims],
                    "scheds": [sc.state_dict() for sc in scheds],
                    "state": state, "history": history.to_dict()}, ckpt_path)
            bar.update(1)
            bar.set_postfix(val=f"{sum(val):.5f}", active=sum(state["active"]))
            if callback is not None:
                callback(epoch, history)
    finally:
        bar.close()
        for p, flag in zip([p for net in units for p in net.parameters()], grad_flags):
            p.requires_grad_(flag)
            p.grad = None  # the last batch's gradients are training state, not the model's
    for i, net in enumerate(units):
        net.load_state_dict(state["best_state"][i])
    history.best_epoch = list(state["best_epoch"])
    history.best_val_loss = list(state["best_val"])
    history.stopped = not any(state["active"])
    return history
