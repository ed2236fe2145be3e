"""Ensembles of density models: p(x|θ) = Σ_k w_k p_k(x|θ).

Independently trained networks (different seeds, or different training samples) make errors
that are partly uncorrelated; their average is a better density than a typical member (deep
ensembles; Lakshminarayanan, Pritzel & Blundell 2017). The average of normalised densities is
normalised, so an ensemble is an ordinary :class:`~egmm.DensityModel`: it goes into
:class:`~egmm.UnbinnedNLL`, components, toys and batched fits like any member.

The spread of the members' own fits is a handle on the modelling uncertainty: fit the data
with each member (``EnsembleDensity.members``) and with the ensemble, and quote the spread of
the members' MLEs next to the statistical error.

References:
    B. Lakshminarayanan, A. Pritzel, C. Blundell, "Simple and scalable predictive uncertainty
    estimation using deep ensembles", NeurIPS 2017.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from egmm.base import DensityModel, numpy_generator, sample_count
from egmm.errors import InputError

__all__ = ["EnsembleDensity"]


class EnsembleDensity(DensityModel):
    """Weighted mixture Σ_k w_k p_k(x|θ) of density models on one space with one θ.

    Arguments:
        members: the density models (GMMDensity, FlowDensity, any DensityModel); same
            observables (names and ranges) and the same parameters in the same order.
        weights: non-negative, summing to 1 (default: equal weights).

    The trained range of each parameter is the intersection of the members' ranges. Sampling
    picks a member per event with probabilities ``weights``; ``seed`` makes it reproducible.

    Example:
        >>> from egmm import Observable, ObservableSpace, TorchDensity
        >>> space = ObservableSpace([Observable("x", 0.0, 1.0)])
        >>> flat = TorchDensity(space, lambda x: torch.zeros(len(x), dtype=x.dtype))
        >>> ens = EnsembleDensity([flat, flat])
        >>> float(ens.log_prob([[0.5]])[0])
        0.0
    """

    def __init__(self, members: Sequence[DensityModel], weights: Sequence[float] | None = None
                 ) -> None:
        members = list(members)
        if not members:
            raise InputError("EnsembleDensity: needs at least one member")
        for k, m in enumerate(members):
            if not isinstance(m, DensityModel):
                raise InputError(f"EnsembleDensity: member {k} is a {type(m).__name__}, not a "
                                 "DensityModel")
        first = members[0]
        for k, m in enumerate(members[1:], start=1):
            if m.space != first.space:
                raise InputError(f"EnsembleDensity: member {k} is defined on "
                                 f"{m.space!r}, member 0 on {first.space!r}")
            if tuple(m.parameters) != tuple(first.parameters):
                raise InputError(f"EnsembleDensity: member {k} has parameters "
                                 f"{list(m.parameters)}, member 0 {list(first.parameters)}")
        if weights is None:
            w = np.full(len(members), 1.0 / len(members))
        else:
            w = np.asarray(weights, dtype=np.float64).reshape(-1)
            if w.shape != (len(members),):
                raise InputError(f"EnsembleDensity: {len(members)} members but {w.size} "
                                 "weights")
            if not np.all(np.isfinite(w)) or np.any(w < 0) or not math.isclose(
                    float(w.sum()), 1.0, rel_tol=0.0, abs_tol=1e-12):
                raise InputError(f"EnsembleDensity: weights must be ≥ 0 and sum to 1, got "
                                 f"{w.tolist()}")
        self.members = members
        self.weights = w
        self.space = first.space
        self.parameters = tuple(first.parameters)
        bounds = {}
        for p in self.parameters:
            # a model without a trained range yet (untrained, no parameter_bounds=) has
            # none: all of θ, as base.DensityModel treats it
            ranges = [m.parameter_bounds.get(p, (-math.inf, math.inf)) for m in members]
            lo = max(r[0] for r in ranges)
            hi = min(r[1] for r in ranges)
            if not lo < hi:
                raise InputError(f"EnsembleDensity: the members' trained ranges of {p!r} do "
                                 "not overlap")
            bounds[p] = (lo, hi)
        self.parameter_bounds = bounds
        #: gradients by autograd only if every member has them
        self.differentiable = all(getattr(m, "differentiable", True) for m in members)
        #: an exact Hessian for Minuit only if every member is smooth in θ
        self.smooth = all(getattr(m, "smooth", False) for m in members)
        with np.errstate(divide="ignore"):
            self._log_w = np.log(w)

    def renamed(self, names: Mapping[str, str]) -> EnsembleDensity:
        """The ensemble with parameters renamed (see :meth:`egmm.base.DensityModel.renamed`);
        its members are renamed alike."""
        out = super().renamed(names)
        out.members = [m.renamed(names) for m in self.members]
        return out

    @property
    def device(self) -> torch.device:
        return getattr(self.members[0], "device", torch.device("cpu"))

    def _combine(self, logs: list[torch.Tensor]) -> torch.Tensor:
        log_w = torch.as_tensor(self._log_w, dtype=logs[0].dtype, device=logs[0].device)
        return torch.logsumexp(torch.stack(logs, dim=0) + log_w[:, None], dim=0)

    def log_prob_tensor(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return self._combine([m.log_prob_tensor(x, theta) for m in self.members])

    def prepare(self, x: np.ndarray, dtype: torch.dtype = torch.float64) -> list[Any]:
        """Each member's θ-independent work on ``x``."""
        return [m.prepare(x, dtype=dtype) for m in self.members]

    def log_prob_prepared(self, prepared: list[Any], theta: torch.Tensor) -> torch.Tensor:
        return self._combine([m.log_prob_prepared(p, theta)
                              for m, p in zip(self.members, prepared)])

    def member_log_probs(self, x: Any, theta: Any = None, **kwargs: Any) -> np.ndarray:
        """(K, N) log p_k(x|θ) of every member (numpy, validated like :meth:`log_prob`)."""
        return np.stack([m.log_prob(x, theta, **kwargs) for m in self.members])

    def sample(self, n: int, theta: Any = None, seed: Any = None, **kwargs: Any) -> np.ndarray:
        """Draw ``n`` events at θ: a member per event with probabilities ``weights``, then
        that member's sampler. Extra keyword arguments go to the members' ``sample``."""
        n = sample_count(n)
        rng = numpy_generator(seed, "sample: seed")
        th = self.theta_tensor(theta, n_events=n, allow_outside=kwargs.get("allow_outside",
                                                                            False))
        pick = rng.choice(len(self.members), size=n, p=self.weights)
        out = np.empty((n, self.space.dim))
        for k, member in enumerate(self.members):
            rows = np.flatnonzero(pick == k)
            if rows.size == 0:
                continue
            tk = th[torch.as_tensor(rows)].numpy() if th.ndim == 2 else th.numpy()
            sub = {p: tk[..., j] for j, p in enumerate(self.parameters)} or None
            out[rows] = member.sample(rows.size, sub, seed=rng, **kwargs)
        return out

    def __repr__(self) -> str:
        kinds = ", ".join(type(m).__name__ for m in self.members)
        return (f"EnsembleDensity([{kinds}], weights={np.round(self.weights, 4).tolist()}, "
                f"parameters={list(self.parameters)})")
