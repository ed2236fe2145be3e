"""The density-model protocol every egmm likelihood component speaks.

A :class:`DensityModel` is a normalised density p(x|θ) over an :class:`ObservableSpace` with
named parameters θ. The likelihood layer needs three things from it: a differentiable torch
log density (for gradients with respect to θ), a way to precompute everything that does not
depend on θ once per dataset, and a sampler (for toys). GMMDensity, FlowDensity and
analytic/background pdfs all implement it.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from egmm.errors import EgmmError, InputError, ParameterError
from egmm.observables import ObservableSpace, labelled

__all__ = ["DensityModel", "TrainedModel"]


class DensityModel(ABC):
    """Abstract normalised density p(x|θ) on ``space`` with parameters ``parameters``.

    Subclasses set ``space``, ``parameters`` (tuple of names, possibly empty) and
    ``parameter_bounds`` (name -> (lo, hi), the range the model is valid/trained in) and
    implement :meth:`log_prob_tensor` and :meth:`sample`. :meth:`prepare` /
    :meth:`log_prob_prepared` may be overridden to cache θ-independent work per dataset.

    Conventions: numpy at the public boundary (:meth:`log_prob`, :meth:`sample`), torch inside;
    arrays are ``(N, D)`` in the space's order; θ is ``(P,)`` (one point for all events) or
    ``(N, P)`` (one per event) in the order of ``parameters``.
    """

    space: ObservableSpace
    parameters: tuple[str, ...] = ()
    parameter_bounds: dict[str, tuple[float, float]]
    #: log p is twice continuously differentiable in θ, so that autograd's second derivatives
    #: are its curvature and a cost may give Minuit an exact Hessian. False by default: a
    #: piecewise-linear network (ReLU, LeakyReLU) or spline is differentiable almost
    #: everywhere, but its pointwise Hessian misses the curvature of its kinks.
    smooth: bool = False

    # -- to implement -------------------------------------------------------------------------
    @abstractmethod
    def log_prob_tensor(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        """log p(x|θ) for validated events ``x`` (N, D); differentiable in ``theta``.

        ``theta`` is (P,) or (N, P); the result is (N,) in the dtype of ``x``.
        """

    @abstractmethod
    def sample(self, n: int, theta: Any = None, seed: Any = None) -> np.ndarray:
        """Draw ``n`` events at θ; returns (n, D) float64 numpy in data space."""

    # -- provided -----------------------------------------------------------------------------
    def prepare(self, x: np.ndarray, dtype: torch.dtype = torch.float64) -> Any:
        """Everything about validated events ``x`` that does not depend on θ (opaque)."""
        return torch.as_tensor(x, dtype=dtype)

    def log_prob_prepared(self, prepared: Any, theta: torch.Tensor) -> torch.Tensor:
        """log p(x|θ) from the output of :meth:`prepare`; differentiable in ``theta``."""
        return self.log_prob_tensor(prepared, theta)

    def log_prob(self, x: Any, theta: Any = None, *, allow_outside: bool = False,
                 dtype: torch.dtype = torch.float64, chunk_size: int = 4096) -> np.ndarray:
        """Data-space log p(x|θ), float64 numpy (N,), evaluated in chunks of ``chunk_size``.

        ``x``: (N, D) array or named columns (validated); ``theta``: mapping name → value
        (scalar or per event), a sequence/array (P,) or (N, P). θ outside the trained range
        raises unless ``allow_outside=True``. ``dtype``: evaluation precision.
        """
        if dtype not in (torch.float32, torch.float64):
            raise InputError(f"log_prob: dtype must be torch.float32 or torch.float64, got "
                             f"{dtype!r}")
        chunk_size = whole_number(chunk_size, "log_prob: chunk_size")
        xv = self.space.validate(x)
        th = self.theta_tensor(theta, n_events=len(xv), allow_outside=allow_outside)
        device = getattr(self, "device", torch.device("cpu"))
        out = np.empty(len(xv))
        with torch.no_grad():
            for s in range(0, len(xv), chunk_size):
                xt = torch.as_tensor(xv[s:s + chunk_size], dtype=dtype, device=device)
                tt = th[s:s + chunk_size] if th.ndim == 2 else th
                out[s:s + chunk_size] = self.log_prob_tensor(
                    xt, tt.to(device=device, dtype=dtype)).double().cpu().numpy()
        nan = np.isnan(out)
        if nan.any():  # (−inf is a zero density; NaN is no answer)
            i = int(np.argmax(nan))
            raise EgmmError(f"{type(self).__name__}.log_prob is NaN for {int(nan.sum())} of "
                            f"{len(out)} events, the first in row {i}: {xv[i].tolist()}")
        return out

    def theta_tensor(
        self, theta: Any, n_events: int | None = None, *, allow_outside: bool = False
    ) -> torch.Tensor:
        """θ as a float64 tensor (P,) or (N, P), validated against names and bounds.

        ``theta`` may be a mapping name -> value (scalars or per-event arrays) or any other
        named container (a DataFrame, a Series with the names as labels, a structured or
        awkward record array: see :func:`labelled`), matched by name; a sequence in the
        order of ``parameters``, an array (P,) or (N, P); or ``None`` when the model has no
        parameters.
        """
        names = self.parameters
        if theta is None:
            if names:
                raise ParameterError(f"parameters {list(names)} must be given")
            return torch.zeros(0, dtype=torch.float64)
        named = labelled(theta)
        if named is not None:
            arr = theta_columns(names, named, n_events)
        else:
            if isinstance(theta, torch.Tensor):
                theta = theta.detach().cpu().numpy()
            try:
                arr = np.asarray(theta if not isinstance(theta, Sequence) else list(theta),
                                 dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ParameterError(f"θ: expected {len(names)} numbers {list(names)} per "
                                     f"point, a mapping or a named container, got "
                                     f"{type(theta).__name__} ({exc})") from None
            if arr.ndim == 0:
                arr = arr[None]
        if arr.shape[-1] != len(names) or arr.ndim > 2:
            raise ParameterError(
                f"θ must have {len(names)} values {list(names)} per point, got shape {arr.shape}"
            )
        if arr.ndim == 2 and n_events is not None and arr.shape[0] != n_events:
            raise ParameterError(f"θ has {arr.shape[0]} rows for {n_events} events")
        self.check_theta(arr, allow_outside=allow_outside)
        return torch.as_tensor(arr, dtype=torch.float64)

    def renamed(self, names: Mapping[str, str]) -> DensityModel:
        """This model with parameters renamed, ``{"old": "new"}`` (the others keep their
        names), as iminuit's costs rename with ``name=``: terms of a likelihood share a
        parameter exactly when they use one name, so two channels' models trained with the
        same θ name get their own parameters this way, and θ can take a physics name.

        The copy is the same density: it shares the original's networks, trained range and
        prepared work (nothing is copied but the names); its files (``save``) carry the
        new names. Positional θ keeps its order.

        Raises:
            ParameterError: a name that is not a parameter of this model.
            InputError: a new name that is empty or not a string, or names that collide.
        """
        if not isinstance(names, Mapping):
            raise InputError(f"renamed: expected a mapping old name -> new name, got "
                             f"{type(names).__name__}")
        unknown = [k for k in names if k not in self.parameters]
        if unknown:
            raise ParameterError(f"renamed: {unknown} are not parameters of this model; it "
                                 f"has {list(self.parameters)}")
        for old, new in names.items():
            if not isinstance(new, str) or not new:
                raise InputError(f"renamed: the new name of {old!r} must be a non-empty "
                                 f"string, got {new!r}")
        new_names = tuple(names.get(p, p) for p in self.parameters)
        dupes = sorted({n for n in new_names if new_names.count(n) > 1})
        if dupes:
            raise InputError(f"renamed: two parameters would be called {dupes}")
        out = copy.copy(self)
        out.parameters = new_names
        out.parameter_bounds = {names.get(p, p): b for p, b in self.parameter_bounds.items()}
        return out

    def check_theta(self, arr: np.ndarray, *, allow_outside: bool = False) -> None:
        """Raise :class:`ParameterError` for non-finite θ or θ outside ``parameter_bounds``."""
        arr = np.atleast_2d(arr)
        for j, name in enumerate(self.parameters):
            col = arr[:, j]
            if not np.all(np.isfinite(col)):
                bad = col[~np.isfinite(col)][0]
                raise ParameterError(f"parameter {name!r} is not finite: {bad}")
            lo, hi = self.parameter_bounds.get(name, (-np.inf, np.inf))
            if allow_outside:
                # extrapolation, but not where a trained network's output is no density
                # any more (a paper-toy model at 1e10 half-widths: conditionals integrating
                # to 1e294, +inf log p, NaN samples; at 1e8 still exact)
                half = 0.5 * (hi - lo)
                if half > 0 and math.isfinite(half):
                    far = np.abs(col - 0.5 * (lo + hi)) > _EXTRAPOLATION_LIMIT * half
                    if far.any():
                        raise ParameterError(
                            f"parameter {name!r} = {col[far][0]} lies more than "
                            f"{_EXTRAPOLATION_LIMIT:g} half-widths outside the model's range "
                            f"[{lo}, {hi}], where its extrapolation is no density")
                continue
            bad = (col < lo) | (col > hi)
            if bad.any():
                raise ParameterError(
                    f"parameter {name!r} = {col[bad][0]} lies outside the model's range "
                    f"[{lo}, {hi}] (pass allow_outside=True to extrapolate deliberately)"
                )


class TrainedModel(DensityModel):
    """What trained egmm models (GMMDensity, FlowDensity) share: an ``nn.Module`` holding the
    weights and the θ scaling buffers, the trained range of θ, its map onto [−2, 2] at the
    network input, the device, and the common part of the file config.

    Subclasses set ``space``, ``parameters`` and ``projection``, then call
    :meth:`_init_module` before building their networks into ``self.module`` and
    :meth:`_freeze` after.

    Outside :func:`egmm.train` the weights do not require gradients: a fit differentiates
    −2 ln L with respect to θ only, and autograd would otherwise also compute the gradient for
    every weight (most of a backward pass). A hand-written training loop calls
    ``model.module.requires_grad_(True)`` first.
    """

    module: torch.nn.Module

    def _init_module(self, parameter_bounds: Mapping[str, tuple[float, float]] | None) -> None:
        self.module = torch.nn.Module()
        n = len(self.parameters)
        self.module.register_buffer("theta_center", torch.zeros(n, dtype=torch.float64))
        self.module.register_buffer("theta_halfwidth", torch.ones(n, dtype=torch.float64))
        self.parameter_bounds = {}
        if parameter_bounds is not None:
            self.set_parameter_bounds(parameter_bounds)

    def _freeze(self) -> None:
        self.module.requires_grad_(False)

    def set_parameter_bounds(self, bounds: Mapping[str, tuple[float, float]]) -> None:
        """Set the trained range of θ (and the map of θ onto [−2, 2] at the network input)."""
        missing = [p for p in self.parameters if p not in bounds]
        extra = [p for p in bounds if p not in self.parameters]
        if missing or extra:
            raise ParameterError(f"parameter_bounds: missing {missing}, unknown {extra}")
        out = {}
        for p in self.parameters:
            lo, hi = (float(v) for v in bounds[p])
            if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
                raise ParameterError(f"parameter_bounds[{p!r}] = {(lo, hi)} is not a finite range")
            out[p] = (lo, hi)
        self.parameter_bounds = out
        if self.parameters:
            lo = torch.tensor([out[p][0] for p in self.parameters], dtype=torch.float64)
            hi = torch.tensor([out[p][1] for p in self.parameters], dtype=torch.float64)
            self.module.theta_center.copy_(0.5 * (lo + hi))
            # a parameter trained at a single value gets unit scale (no division by zero)
            half = torch.where(hi > lo, 0.5 * (hi - lo), torch.ones_like(lo))
            self.module.theta_halfwidth.copy_(half)

    def scale_theta(self, theta: torch.Tensor) -> torch.Tensor:
        """θ → [−2, 2] over the trained range (paper Section 4)."""
        center = self.module.theta_center.to(theta)
        return 2.0 * (theta - center) / self.module.theta_halfwidth.to(theta)

    @property
    def device(self) -> torch.device:
        return self.module.theta_center.device

    def _base_config(self) -> dict[str, Any]:
        """The JSON-safe config every trained model's file carries."""
        return {
            "space": self.space.to_dict(),
            "parameters": list(self.parameters),
            "parameter_bounds": {k: list(v) for k, v in self.parameter_bounds.items()},
            "projection": self.projection.to_dict(),  # type: ignore[attr-defined]
        }


def theta_columns(names: Sequence[str], theta: Mapping[str, Any],
                  n_events: int | None = None) -> np.ndarray:
    """θ given as a mapping name -> value, in the order of ``names``: (P,) when every value
    is a scalar, else (N, P) with scalars repeated and per-event arrays of length N
    (``n_events``, or the longest array's). Names missing or unknown, and arrays of another
    length or shape, raise :class:`ParameterError` naming the parameter."""
    missing = [n for n in names if n not in theta]
    extra = [k for k in theta if k not in names]
    if missing or extra:
        raise ParameterError(
            f"parameters: expected {list(names)}, missing {missing}, unknown {extra}")
    cols = [np.asarray(theta[n], dtype=np.float64) for n in names]
    if all(c.ndim == 0 for c in cols):
        return np.array([float(c) for c in cols])
    length = n_events if n_events is not None else max(c.size for c in cols)
    for name, c in zip(names, cols):
        if c.ndim > 1 or (c.ndim == 1 and c.size not in (1, length)):
            raise ParameterError(
                f"parameter {name!r}: expected a scalar or {length} values (one per event), "
                f"got shape {c.shape}")
    return np.stack([np.broadcast_to(c, (length,)) for c in cols], axis=1)


def whole_number(value: Any, name: str, minimum: int = 1) -> int:
    """``value`` as an int if it is a whole number ≥ ``minimum`` (an integral float such as
    1e6 included); anything else — 2.5, nan, a bool, a string — raises :class:`InputError`
    naming ``name`` rather than being truncated."""
    try:
        count = int(value)
        whole = not isinstance(value, (bool, str)) and count == value
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise InputError(f"{name} must be a whole number, got {value!r}")
    if count < minimum:
        raise InputError(f"{name} must be ≥ {minimum}, got {count}")
    return count


def is_real_number(value: Any) -> bool:
    """A real number of Python's or numpy's (NaN and ±inf included: callers test finiteness
    themselves), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, bool)


#: how far (in half-widths of the trained range, from its centre) allow_outside extrapolates
_EXTRAPOLATION_LIMIT = 1e6

_SEED_KINDS = ("None, a whole number ≥ 0, a sequence of them, a numpy.random.SeedSequence, "
               "a numpy.random.Generator or a torch.Generator")


def check_sampler_seed(seed: Any, name: str = "seed") -> Any:
    """``seed`` if a sampler can use it (see :data:`_SEED_KINDS`: an integral float such as
    1e3 counts as whole), else :class:`InputError` naming ``name``; whole numbers come back as
    ints, sequences of them as lists."""
    if seed is None or isinstance(seed, (np.random.Generator, np.random.SeedSequence,
                                         torch.Generator)):
        return seed
    if isinstance(seed, Sequence) and not isinstance(seed, str) and len(seed) > 0:
        try:
            return [whole_number(s, name, 0) for s in seed]
        except InputError:
            pass
    else:
        try:
            return whole_number(seed, name, 0)
        except InputError:
            pass
    raise InputError(f"{name} must be {_SEED_KINDS}, got {seed!r}")


def torch_generator(seed: Any, name: str = "seed") -> torch.Generator:
    """A CPU ``torch.Generator`` for ``seed`` (:func:`check_sampler_seed`): a
    torch.Generator as is, fresh entropy for None, one draw of a numpy Generator, else
    seeded through ``numpy.random.SeedSequence``."""
    seed = check_sampler_seed(seed, name)
    if isinstance(seed, torch.Generator):
        return seed
    gen = torch.Generator()
    if seed is None:
        gen.seed()
    elif isinstance(seed, np.random.Generator):
        gen.manual_seed(int(seed.integers(0, 2**63 - 1)))
    else:
        sequence = seed if isinstance(seed, np.random.SeedSequence) else (
            np.random.SeedSequence(seed))
        gen.manual_seed(int(sequence.generate_state(1, np.uint64)[0] >> 1))
    return gen


def numpy_generator(seed: Any, name: str = "seed") -> np.random.Generator:
    """A ``numpy.random.Generator`` for ``seed`` (:func:`check_sampler_seed`); a
    torch.Generator gives one draw of it as the seed."""
    seed = check_sampler_seed(seed, name)
    if isinstance(seed, torch.Generator):
        seed = int(torch.randint(0, 2**62, (1,), generator=seed))
    return np.random.default_rng(seed)


def sample_count(n: Any) -> int:
    """The number of events ``sample`` is asked for (:func:`whole_number` ≥ 0)."""
    return whole_number(n, "sample: n", 0)
