"""Building blocks of a likelihood: densities, yields and the components that pair them.

A :class:`Component` is one process in a fit: a normalised density p_c(x|θ) (any
:class:`~egmm.base.DensityModel`: a trained :class:`egmm.GMMDensity`, an analytic
:class:`TorchDensity`, a :class:`HistTemplate`) times an expected yield ν_c(θ), so that its
expected event density is ν_c(θ) p_c(x|θ) (paper Eq. 14 with ν = σ_fid · L).

Yields form a small algebra: a :class:`Yield` is a differentiable torch function of named
parameters; numbers, parameter names and other yields combine with ``*`` and ``+``, e.g.
``CrossSection.quadratic(...) * 139.0`` is σ_fid(θ) · L for L = 139 fb⁻¹.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations_with_replacement
from typing import Any

import hist
import numpy as np
import torch

from egmm.base import DensityModel, numpy_generator, sample_count, whole_number
from egmm.errors import InputError, ParameterError
from egmm.likelihood._jet import Jet, lift
from egmm.observables import Observable, ObservableSpace

__all__ = [
    "Component",
    "CrossSection",
    "HistTemplate",
    "QuadraticFit",
    "TorchDensity",
    "Yield",
]

Bounds = tuple[float, float]


# ----------------------------------------------------------------------------------------------
# densities
# ----------------------------------------------------------------------------------------------
def _check_bounds(
    parameters: tuple[str, ...], bounds: Mapping[str, Sequence[float]] | None, owner: str
) -> dict[str, Bounds]:
    bounds = dict(bounds or {})
    unknown = [k for k in bounds if k not in parameters]
    if unknown:
        raise InputError(f"{owner}: bounds given for unknown parameters {unknown}")
    out: dict[str, Bounds] = {}
    for name in parameters:
        lo, hi = (float(v) for v in bounds.get(name, (-math.inf, math.inf)))
        if math.isnan(lo) or math.isnan(hi) or not lo < hi:
            raise InputError(f"{owner}: parameter {name!r} needs bounds lo < hi, got ({lo}, {hi})")
        out[name] = (lo, hi)
    return out


def _check_names(names: Sequence[str], owner: str) -> tuple[str, ...]:
    if isinstance(names, str):
        names = (names,)
    names = tuple(names)
    for n in names:
        if not isinstance(n, str) or not n:
            raise InputError(f"{owner}: parameter names must be non-empty strings, got {n!r}")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"{owner}: duplicate parameter names {dupes}")
    return names


class TorchDensity(DensityModel):
    r"""A normalised density from a user function of torch tensors.

    For analytic signal shapes and background pdfs. ``log_prob_fn(x, **theta)`` receives the
    validated events ``x`` as a tensor (N, D) in the space's order and each parameter as a
    keyword tensor (0-d for one θ point, (N,) for one θ per event) and returns
    log p(x|θ), shape (N,). The function must be normalised over the space: egmm does not
    integrate it. Written with torch operations it is differentiable in θ, so Minuit gets an
    exact gradient.

    Arguments:
        space: the observables.
        log_prob_fn: ``(x: Tensor (N, D), **theta: Tensor) -> Tensor (N,)``.
        parameters: names of θ, in the order used for arrays.
        parameter_bounds: name -> (lo, hi), the range the pdf may be used in (default: none).
        sampler: optional ``sampler(n, theta: dict[str, float], rng: numpy.random.Generator)``
            returning (n, D) events; needed only for :meth:`sample` (toys).
        name: used in messages.
        smooth: the function is twice continuously differentiable in θ (analytic pdfs are),
            so costs give Minuit its exact Hessian (torch autograd); pass False for a
            function with kinks in θ (``abs``, ``clamp``, piecewise definitions), for which
            Minuit's HESSE then takes finite differences.

    Example:
        >>> space = ObservableSpace([Observable("x", 0.0, math.inf)])
        >>> expo = TorchDensity(space, lambda x, lam: torch.log(lam) - lam * x[:, 0],
        ...                     parameters=("lam",), parameter_bounds={"lam": (0.01, 10.0)})
        >>> expo.log_prob([[0.0], [1.0]], {"lam": 1.0}).tolist()
        [0.0, -1.0]
    """

    differentiable: bool = True

    def __init__(
        self,
        space: ObservableSpace,
        log_prob_fn: Callable[..., torch.Tensor],
        parameters: Sequence[str] = (),
        parameter_bounds: Mapping[str, Sequence[float]] | None = None,
        sampler: Callable[[int, dict[str, float], np.random.Generator], Any] | None = None,
        *,
        name: str | None = None,
        smooth: bool = True,
    ) -> None:
        if not isinstance(space, ObservableSpace):
            raise InputError(f"TorchDensity needs an ObservableSpace, got {type(space).__name__}")
        if not callable(log_prob_fn):
            raise InputError("TorchDensity: log_prob_fn must be callable")
        if sampler is not None and not callable(sampler):
            raise InputError("TorchDensity: sampler must be callable or None")
        self.name = name or getattr(log_prob_fn, "__name__", "TorchDensity")
        self.space = space
        self.parameters = _check_names(parameters, f"TorchDensity {self.name!r}")
        self.parameter_bounds = _check_bounds(
            self.parameters, parameter_bounds, f"TorchDensity {self.name!r}"
        )
        self._fn = log_prob_fn
        self._sampler = sampler
        # the names the functions are called with (``renamed`` changes only the public ones)
        self._call_names = self.parameters
        self.smooth = bool(smooth)

    @classmethod
    def from_numpy(
        cls,
        space: ObservableSpace,
        fn: Callable[..., Any],
        parameters: Sequence[str] = (),
        parameter_bounds: Mapping[str, Sequence[float]] | None = None,
        sampler: Callable[[int, dict[str, float], np.random.Generator], Any] | None = None,
        *,
        log: bool = True,
        name: str | None = None,
    ) -> TorchDensity:
        """A density from a numpy function ``fn(x: ndarray (N, D), **theta: float) -> (N,)``.

        ``fn`` returns log p (``log=True``) or p (``log=False``, e.g. ``scipy.stats`` pdfs).
        There is no θ gradient through numpy: costs using this density report
        ``has_grad = False`` and Minuit falls back to numerical derivatives.

        Example:
            >>> from scipy.stats import norm
            >>> space = ObservableSpace([Observable("x", -math.inf, math.inf)])
            >>> g = TorchDensity.from_numpy(space, lambda x, mu: norm.logpdf(x[:, 0], mu),
            ...                             parameters=("mu",))
            >>> round(float(g.log_prob([[0.0]], {"mu": 0.0})[0]), 6)
            -0.918939
        """
        if not callable(fn):
            raise InputError("TorchDensity.from_numpy: fn must be callable")

        def log_prob_fn(x: torch.Tensor, **theta: torch.Tensor) -> torch.Tensor:
            kwargs = {k: _to_numpy_arg(v) for k, v in theta.items()}
            with np.errstate(divide="ignore"):
                out = np.asarray(fn(x.detach().cpu().numpy(), **kwargs), dtype=np.float64)
                if not log:
                    out = np.log(out)
            return torch.as_tensor(out, dtype=x.dtype, device=x.device)

        dens = cls(space, log_prob_fn, parameters, parameter_bounds, sampler,
                   name=name or getattr(fn, "__name__", "numpy pdf"))
        dens.differentiable = False
        dens.smooth = False
        return dens

    def __repr__(self) -> str:
        kind = "" if self.differentiable else ", numpy (no θ gradient)"
        return (
            f"TorchDensity({self.name!r}, observables={list(self.space.names)}, "
            f"parameters={list(self.parameters)}{kind})"
        )

    def log_prob_tensor(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        theta = torch.as_tensor(theta)
        kwargs = {name: theta[..., j] for j, name in enumerate(self._call_names)}
        out = self._fn(x, **kwargs)
        if not isinstance(out, torch.Tensor):
            out = torch.as_tensor(np.asarray(out, dtype=np.float64), device=x.device)
        if out.ndim == 0:
            out = out.expand(x.shape[0])
        if out.shape != (x.shape[0],):
            raise InputError(
                f"TorchDensity {self.name!r}: log_prob_fn returned shape {tuple(out.shape)} "
                f"for {x.shape[0]} events, expected ({x.shape[0]},)"
            )
        return out.to(x.dtype)

    def sample(self, n: int, theta: Any = None, seed: Any = None) -> np.ndarray:
        if self._sampler is None:
            raise InputError(
                f"TorchDensity {self.name!r} has no sampler: pass sampler=... to generate events"
            )
        th = self.theta_tensor(theta)
        if th.ndim != 1:
            raise InputError(f"TorchDensity {self.name!r}: its sampler draws at one θ point; "
                             f"got θ per event, shape {tuple(th.shape)}")
        values = {name: float(th[j]) for j, name in enumerate(self._call_names)}
        out = self._sampler(sample_count(n), values, numpy_generator(seed, "sample: seed"))
        return self.space.validate(out, what=f"events sampled by {self.name!r}")


def _axis_observable(ax: Any, name: str | None = None) -> Observable:
    edges = np.asarray(ax.edges, dtype=np.float64)
    name = ax.name if name is None else name
    if isinstance(ax, hist.axis.Integer):  # integer k fills bin [k, k + 1)
        return Observable(name, edges[0], edges[-1] - 1.0, discrete=True)
    return Observable(name, edges[0], edges[-1])


def _to_numpy_arg(v: torch.Tensor) -> float | np.ndarray:
    arr = v.detach().cpu().numpy()
    return float(arr) if arr.ndim == 0 else arr


class HistTemplate(DensityModel):
    r"""Piecewise-constant density from a histogram (a binned template, e.g. a background).

    .. math:: p(x) = \frac{n_b}{\sum_{b'} n_{b'} \cdot V_b} \quad \text{for } x \in \text{bin } b

    with n_b the bin content (sum of weights for weighted storages, flow bins ignored) and V_b
    the bin volume (for a discrete observable the number of integers in the bin). Axes are
    matched to observables by name. Events in an empty bin have p = 0: a cost using the
    template refuses such data at construction, naming the event and the bin.

    Arguments:
        h: a ``hist.Hist`` with named, non-category axes and non-negative contents
            (``Double``, ``Int64``, ``Weight`` … storages; not ``Mean``); a boost-histogram
            one only if its axes have a ``name`` (plain boost-histogram axes have none); a
            ROOT histogram read by uproot (anything with ``to_hist()``; its axes are named
            ``"xaxis"``, ``"yaxis"``…: rename them with ``axes``); or ``(counts, edges)`` /
            ``(counts, edges_0, edges_1, …)`` / ``(counts, [edges…])`` as ``np.histogram``,
            ``np.histogramdd`` and uproot's ``to_numpy()`` give them, with ``space`` naming
            the axes in order.
        space: the observables; by default one per axis with the axis range as bounds
            (discrete for ``Integer`` axes). If given, every observable must have an axis of
            the same name; the template's support is the histogram range.
        name: used in messages.
        axes: histogram axis name -> observable name, e.g. ``{"xaxis": "m"}``.

    Example:
        >>> h = hist.Hist.new.Reg(2, 0.0, 1.0, name="x").Double()
        >>> _ = h.fill(x=[0.1, 0.2, 0.7])
        >>> np.exp(HistTemplate(h).log_prob([[0.25], [0.75]])).round(4).tolist()
        [1.3333, 0.6667]
    """

    def __init__(self, h: Any, space: ObservableSpace | None = None, *, name: str = "template",
                 axes: Mapping[str, str] | None = None):
        self.name = name
        rename = dict(axes or {})
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in rename.items()):
            raise InputError(f"HistTemplate {name!r}: axes must map axis names to observable "
                             f"names (strings), got {axes!r}")
        if isinstance(h, (tuple, list)):
            if rename:
                raise InputError(f"HistTemplate {name!r}: axes renames named histogram axes; "
                                 f"(counts, edges) takes its names from the space")
            contents, edge_list = self._from_arrays(h, space, name)
            ax_names = list(space.names) if space is not None else []
            hist_axes = None
        else:
            if not hasattr(h, "axes") and callable(getattr(h, "to_hist", None)):
                h = h.to_hist()  # a ROOT histogram read by uproot (axes "xaxis", "yaxis", …)
            hist_axes = list(getattr(h, "axes", ()))
            if not hist_axes:
                raise InputError(f"HistTemplate {name!r}: expected a hist.Hist, a histogram "
                                 f"with to_hist() (uproot) or (counts, edges…), got "
                                 f"{type(h).__name__}")
            storage = str(getattr(h, "storage_type", "")).lower()
            if "mean" in storage:
                raise InputError(
                    f"HistTemplate {name!r}: a Mean storage holds averages, not counts; "
                    "use a Double/Int64/Weight storage"
                )
            for ax in hist_axes:
                if isinstance(ax, (hist.axis.StrCategory, hist.axis.IntCategory,
                                   hist.axis.Boolean)):
                    raise InputError(
                        f"HistTemplate {name!r}: category axis {ax.name!r} is not supported"
                    )
                if not getattr(ax, "name", ""):
                    raise InputError(f"HistTemplate {name!r}: every axis needs a name (the "
                                     f"observable it is matched to); axis {ax!r} has none: "
                                     f"build the histogram with hist axes, e.g. "
                                     f"hist.axis.Regular(20, 0, 10, name='m'), or pass "
                                     f"(counts, edges) with a space")
            unknown = [k for k in rename if k not in [ax.name for ax in hist_axes]]
            if unknown:
                raise InputError(f"HistTemplate {name!r}: axes renames {unknown}, but the "
                                 f"histogram's axes are {[ax.name for ax in hist_axes]}")
            ax_names = [rename.get(ax.name, ax.name) for ax in hist_axes]
            if space is None:
                space = ObservableSpace(_axis_observable(ax, n)
                                        for ax, n in zip(hist_axes, ax_names))
            contents = np.asarray(h.values(flow=False), dtype=np.float64)
            edge_list = [np.asarray(ax.edges, dtype=np.float64) for ax in hist_axes]
        assert space is not None
        missing = [n for n in space.names if n not in ax_names]
        extra = [n for n in ax_names if n not in space.names]
        if missing or extra:
            raise InputError(
                f"HistTemplate {name!r}: histogram axes {ax_names} do not match observables "
                f"{list(space.names)} (missing {missing}, extra {extra}"
                + ("; rename axes with axes={'xaxis': 'm'}" if hist_axes else "") + ")"
            )
        order = [ax_names.index(n) for n in space.names]
        values = contents.transpose(order)
        axes_edges = [edge_list[i] for i in order]
        if not np.all(np.isfinite(values)):
            raise InputError(f"HistTemplate {name!r}: bin contents must be finite")
        if np.any(values < 0):
            idx = np.unravel_index(int(np.argmax(values < 0)), values.shape)
            raise InputError(
                f"HistTemplate {name!r}: negative bin content {values[idx]} in bin "
                f"{self._bin_text(space, axes_edges, idx)}"
            )
        total = values.sum()
        if not total > 0:
            raise InputError(f"HistTemplate {name!r}: the histogram is empty")

        self.space = space
        self.parameters = ()
        self.parameter_bounds = {}
        self._edges = axes_edges
        for obs, edges in zip(space, self._edges):
            # normalised over the histogram: a range beyond the space would leave part of the
            # probability outside it (a [0, 20] histogram on a [0, 10] space integrated to 0.5)
            first, last = ((math.ceil(edges[0]), math.ceil(edges[-1]) - 1) if obs.discrete
                           else (edges[0], edges[-1]))
            if first < obs.lo or last > obs.hi:
                raise InputError(
                    f"HistTemplate {name!r}: axis {obs.name!r} spans [{edges[0]:g}, "
                    f"{edges[-1]:g}], beyond the observable's bounds [{obs.lo:g}, {obs.hi:g}]; "
                    "slice the histogram to the bounds (h[hist.loc(lo):hist.loc(hi)]) or "
                    "widen the observable")
        widths = []
        for obs, edges in zip(space, self._edges):
            if obs.discrete:  # integers in [lo, hi), as boost-histogram fills them
                widths.append(np.maximum(np.ceil(edges[1:]) - np.ceil(edges[:-1]), 0.0))
            else:
                widths.append(np.diff(edges))
        volume = widths[0]
        for w in widths[1:]:
            volume = np.multiply.outer(volume, w)
        with np.errstate(divide="ignore", invalid="ignore"):
            density = np.where(values > 0, values / (total * volume), 0.0)
        bad = (values > 0) & ~(volume > 0)
        if bad.any():
            idx = np.unravel_index(int(np.argmax(bad)), bad.shape)
            raise InputError(
                f"HistTemplate {name!r}: bin {self._bin_text(space, self._edges, idx)} has "
                "content but contains no allowed (integer) value"
            )
        self._shape = values.shape
        self._probability = (values / total).ravel()
        with np.errstate(divide="ignore"):
            self._log_density = torch.as_tensor(np.log(density).ravel(), dtype=torch.float64)

    @staticmethod
    def _from_arrays(h: Sequence[Any], space: ObservableSpace | None, name: str
                     ) -> tuple[np.ndarray, list[np.ndarray]]:
        """Contents and edges of ``(counts, edges)``, ``(counts, edges_0, edges_1, …)`` or
        ``(counts, [edges_0, …])`` (numpy's and uproot's ``to_numpy()`` forms), axes in the
        order of ``space``'s observables."""
        if space is None:
            raise InputError(f"HistTemplate {name!r}: (counts, edges) needs a space (its "
                             f"observables name the axes, in order)")
        if len(h) == 2 and isinstance(h[1], (list, tuple)):
            h = (h[0], *h[1])
        try:
            contents = np.asarray(h[0], dtype=np.float64)
            edges = [np.asarray(e, dtype=np.float64) for e in h[1:]]
        except (TypeError, ValueError) as exc:
            raise InputError(f"HistTemplate {name!r}: (counts, edges) cannot be read as "
                             f"numbers ({exc})") from None
        if contents.ndim != space.dim or len(edges) != space.dim:
            raise InputError(f"HistTemplate {name!r}: expected counts of {space.dim} "
                             f"dimension(s) and {space.dim} edge array(s) for observables "
                             f"{list(space.names)}, got counts of shape {contents.shape} and "
                             f"{len(edges)} edge array(s)")
        for obs, e, size in zip(space, edges, contents.shape):
            if e.ndim != 1 or len(e) != size + 1 or not np.all(np.diff(e) > 0):
                raise InputError(f"HistTemplate {name!r}: edges of {obs.name!r} must be "
                                 f"{size + 1} increasing numbers, got {e.size}")
        return contents, edges

    def __repr__(self) -> str:
        bins = "×".join(str(s) for s in self._shape)
        return f"HistTemplate({self.name!r}, observables={list(self.space.names)}, bins={bins})"

    @staticmethod
    def _bin_text(space: ObservableSpace, edges: list[np.ndarray], idx: Sequence[int]) -> str:
        parts = [
            f"{o.name} ∈ [{e[i]:.6g}, {e[i + 1]:.6g}"
            + ("]" if i == len(e) - 2 and not o.discrete else ")")
            for o, e, i in zip(space, edges, idx)
        ]
        return "(" + ", ".join(parts) + ")"

    def _flat_bins(self, x: np.ndarray) -> np.ndarray:
        """Flat bin index per event, -1 outside the histogram range."""
        flat = np.zeros(len(x), dtype=np.int64)
        outside = np.zeros(len(x), dtype=bool)
        for j, edges in enumerate(self._edges):
            col = x[:, j]
            i = np.searchsorted(edges, col, side="right") - 1
            if not self.space[j].discrete:  # closed upper edge, like the observable bounds
                i = np.where(col == edges[-1], len(edges) - 2, i)
            outside |= (i < 0) | (i > len(edges) - 2)
            flat = flat * (len(edges) - 1) + np.clip(i, 0, len(edges) - 2)
        return np.where(outside, -1, flat)

    def describe_event(self, row: np.ndarray) -> str:
        """Which bin an event (D,) falls in, for error messages."""
        b = int(self._flat_bins(np.asarray(row, dtype=np.float64)[None, :])[0])
        if b < 0:
            return "outside the histogram range"
        idx = np.unravel_index(b, self._shape)
        content = self._probability[b]
        return f"bin {self._bin_text(self.space, self._edges, idx)} (fraction {content:.3g})"

    def prepare(self, x: np.ndarray, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """log p per event (N,): the template has no parameters, so everything is cached."""
        x = np.asarray(x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x)
        b = self._flat_bins(np.asarray(x, dtype=np.float64))
        out = torch.full((len(b),), -math.inf, dtype=torch.float64)
        inside = torch.as_tensor(b >= 0)
        out[inside] = self._log_density[torch.as_tensor(b[b >= 0])]
        return out.to(dtype)

    def log_prob_prepared(self, prepared: Any, theta: torch.Tensor) -> torch.Tensor:
        return prepared

    def log_prob_tensor(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        return self.prepare(x, dtype=x.dtype)

    def sample(self, n: int, theta: Any = None, seed: Any = None) -> np.ndarray:
        """Draw bins by content, then uniformly within the bin (integers for discrete axes)."""
        self.theta_tensor(theta)
        n = sample_count(n)
        rng = numpy_generator(seed, "sample: seed")
        bins = rng.choice(len(self._probability), size=n, p=self._probability)
        idx = np.unravel_index(bins, self._shape)
        out = np.empty((n, self.space.dim), dtype=np.float64)
        for j, (obs, edges) in enumerate(zip(self.space, self._edges)):
            lo, hi = edges[idx[j]], edges[idx[j] + 1]
            if obs.discrete:
                ilo = np.ceil(lo)
                out[:, j] = ilo + np.floor(rng.random(n) * (np.ceil(hi) - ilo))
            else:
                out[:, j] = lo + rng.random(n) * (hi - lo)
        return out


# ----------------------------------------------------------------------------------------------
# yields
# ----------------------------------------------------------------------------------------------
class Yield:
    r"""An expected number of events ν(θ): a differentiable torch function of named parameters.

    ``yield(**params)`` takes the parameters as keyword tensors (or floats) and returns a 0-d
    float64 tensor. Yields combine with ``*`` and ``+`` (with numbers, parameter names and
    other yields); the result depends on the union of the parameters.

    A yield must be a pure function of its parameters. Costs whose densities do not depend
    on θ (fixed shapes) keep its last point's value and evaluate it with forward-mode jets
    (value, gradient and Hessian as floats, a few µs) where it uses only arithmetic, powers
    and elementary functions, and with torch autograd otherwise (found on the first call,
    per yield).

    Build one with :meth:`parameter` (a free yield), :meth:`constant`, :meth:`from_callable`
    or the :class:`CrossSection` constructors.

    Example:
        >>> nu = CrossSection.from_callable(lambda c: 2.0 + c**2, ("c",)) * 10.0
        >>> nu.parameters, float(nu(c=1.0))
        (('c',), 30.0)
    """

    parameters: tuple[str, ...] = ()
    parameter_bounds: dict[str, Bounds]
    differentiable: bool = True
    #: twice continuously differentiable (see :attr:`egmm.base.DensityModel.smooth`); False
    #: for piecewise-linear interpolation
    smooth: bool = True

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        parameters: Sequence[str],
        parameter_bounds: Mapping[str, Sequence[float]] | None = None,
        *,
        description: str | None = None,
    ) -> None:
        if not callable(fn):
            raise InputError(f"{type(self).__name__}: fn must be callable")
        owner = type(self).__name__
        self.parameters = _check_names(parameters, owner)
        self.parameter_bounds = _check_bounds(self.parameters, parameter_bounds, owner)
        self._fn = fn
        self.description = description or getattr(fn, "__name__", "fn")

    # -- construction --------------------------------------------------------------------------
    @classmethod
    def from_callable(
        cls,
        fn: Callable[..., torch.Tensor],
        parameters: Sequence[str],
        parameter_bounds: Mapping[str, Sequence[float]] | None = None,
        *,
        smooth: bool = True,
    ) -> Yield:
        """``fn(**params: Tensor) -> Tensor`` (0-d), written with torch ops for a gradient
        (``math.exp`` on a parameter is refused when the gradient is taken: it leaves torch,
        whose gradient would be 0). ``smooth=False`` for a function with kinks (``clamp``,
        ``abs``, ``max``): the cost's HESSE then uses finite differences, not an exact
        Hessian that sees one side of the kink."""
        made = cls(fn, parameters, parameter_bounds)
        made.smooth = bool(smooth)
        return made

    @staticmethod
    def parameter(name: str) -> Yield:
        """A free yield: the parameter ``name`` itself, bounded to [0, ∞)."""
        return _ParameterYield(name)

    @staticmethod
    def constant(value: float) -> Yield:
        """A fixed number of events (or a fixed factor such as a luminosity)."""
        return _ConstantYield(value)

    # -- evaluation ----------------------------------------------------------------------------
    def __call__(self, **params: Any) -> torch.Tensor:
        missing = [p for p in self.parameters if p not in params]
        unknown = [p for p in params if p not in self.parameters]
        if missing or unknown:
            raise ParameterError(
                f"{self!r}: expected parameters {list(self.parameters)}, "
                f"missing {missing}, unknown {unknown}"
            )
        return self._evaluate({k: torch.as_tensor(v, dtype=torch.float64) for k, v in
                               params.items()})

    def _evaluate(self, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = self._fn(**{p: params[p] for p in self.parameters})
        if torch.is_grad_enabled() and any(params[p].requires_grad for p in self.parameters) \
                and not (isinstance(out, torch.Tensor) and out.requires_grad):
            raise InputError(f"{self!r}: the function returned a {type(out).__name__} "
                             "without a torch graph of its parameters, so its gradient would "
                             "be 0: write it with torch operations (torch.exp, not math.exp)")
        return torch.as_tensor(out, dtype=torch.float64)

    def _jet_evaluate(self, params: Mapping[str, Jet]) -> Jet | float:
        """ν with its derivatives from jets of the parameters (a float: constant), or
        :class:`~egmm.likelihood._jet.Unsupported` (the caller uses autograd)."""
        out = self._fn(**{p: params[p] for p in self.parameters})
        return out if isinstance(out, Jet) else lift(out)

    def value(self, **params: float) -> float:
        """ν at the given parameter values, as a float."""
        with torch.no_grad():
            return float(self(**params))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description}, parameters={list(self.parameters)})"

    # -- algebra -------------------------------------------------------------------------------
    def __mul__(self, other: Any) -> Yield:
        return _Combination("*", (self, as_yield(other, algebra=True)))

    def __rmul__(self, other: Any) -> Yield:
        return _Combination("*", (as_yield(other, algebra=True), self))

    def __add__(self, other: Any) -> Yield:
        return _Combination("+", (self, as_yield(other, algebra=True)))

    def __radd__(self, other: Any) -> Yield:
        return _Combination("+", (as_yield(other, algebra=True), self))

    def _no_algebra(self, *_: Any) -> Yield:
        raise InputError(f"{self!r}: yields combine by * and + only; write −, /, ** or a "
                         "function in Yield.from_callable(fn, parameters)")

    __sub__ = __rsub__ = __truediv__ = __rtruediv__ = __pow__ = __rpow__ = _no_algebra
    __neg__ = _no_algebra


class _ParameterYield(Yield):
    def __init__(self, name: str) -> None:
        (name,) = _check_names((name,), "yield")
        super().__init__(lambda **p: p[name], (name,), {name: (0.0, math.inf)},
                         description=repr(name))

    def _jet_evaluate(self, params: Mapping[str, Jet]) -> Jet | float:
        return params[self.parameters[0]]

    def __repr__(self) -> str:
        return f"Yield.parameter({self.description})"


class _ConstantYield(Yield):
    def __init__(self, value: float) -> None:
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise InputError(f"a yield constant must be a number, got {value!r}") from None
        if not math.isfinite(value):
            raise InputError(f"a yield constant must be finite, got {value}")
        self.constant_value = value
        super().__init__(lambda: torch.tensor(value, dtype=torch.float64), (),
                         description=f"{value:g}")

    def _jet_evaluate(self, params: Mapping[str, Jet]) -> Jet | float:
        return self.constant_value

    def __repr__(self) -> str:
        return f"Yield.constant({self.description})"


class _Combination(Yield):
    def __init__(self, op: str, terms: Sequence[Yield]) -> None:
        flat: list[Yield] = []
        for t in terms:  # flatten (a*b)*c into one product, for readable reprs
            flat.extend(t.terms if isinstance(t, _Combination) and t.op == op else [t])
        names: list[str] = []
        bounds: dict[str, Bounds] = {}
        for t in flat:
            for p in t.parameters:
                if p not in names:
                    names.append(p)
                lo, hi = t.parameter_bounds.get(p, (-math.inf, math.inf))
                olo, ohi = bounds.get(p, (-math.inf, math.inf))
                bounds[p] = (max(lo, olo), min(hi, ohi))
        for p, (lo, hi) in bounds.items():
            if not lo < hi:
                raise InputError(f"yield parameter {p!r}: the terms' ranges do not overlap")
        self.op = op
        self.terms = tuple(flat)
        self.differentiable = all(t.differentiable for t in flat)
        self.smooth = all(t.smooth for t in flat)
        super().__init__(self._combine, names, bounds,
                         description=f" {op} ".join(_term_text(t) for t in flat))

    def _combine(self, **params: torch.Tensor) -> torch.Tensor:
        values = [t._evaluate(params) for t in self.terms]
        out = values[0]
        for v in values[1:]:
            out = out * v if self.op == "*" else out + v
        return out

    def _jet_evaluate(self, params: Mapping[str, Jet]) -> Jet | float:
        values = [t._jet_evaluate(params) for t in self.terms]
        out = values[0]
        for v in values[1:]:
            out = out * v if self.op == "*" else out + v
        return out

    def __repr__(self) -> str:
        return f"Yield({self.description})"


def _term_text(t: Yield) -> str:
    if isinstance(t, (_ConstantYield, _ParameterYield)):
        return t.description
    if isinstance(t, _Combination):
        return f"({t.description})"
    return repr(t)


def as_yield(obj: Any, *, algebra: bool = False) -> Yield:
    """A :class:`Yield` from a parameter name, a number, or a yield-like object.

    Yield-like: any callable with a ``parameters`` attribute that maps keyword tensors to a
    0-d tensor. Outside the algebra (``algebra=False``) a number must be ≥ 0.
    """
    if isinstance(obj, Yield):
        return obj
    if isinstance(obj, str):
        return Yield.parameter(obj)
    if isinstance(obj, (int, float, np.integer, np.floating)) and not isinstance(obj, bool):
        y = Yield.constant(obj)
        if not algebra and y.constant_value < 0:
            raise InputError(f"a constant yield must be ≥ 0, got {obj}")
        return y
    if callable(obj) and hasattr(obj, "parameters"):
        return Yield(obj, tuple(obj.parameters), getattr(obj, "parameter_bounds", None),
                     description=type(obj).__name__)
    raise InputError(
        f"cannot use {obj!r} as a yield: give a parameter name, a number or a Yield "
        "(e.g. CrossSection.quadratic(...) * luminosity)"
    )


@dataclass(frozen=True)
class QuadraticFit:
    r"""Result of :meth:`CrossSection.quadratic`: σ = a + Σ b_i θ_i + Σ_{i≤j} c_ij θ_i θ_j.

    Attributes:
        terms: names of the coefficients, e.g. ``("1", "cx", "cy", "cx^2", "cx*cy", "cy^2")``.
        coefficients: (K,) values in the order of ``terms``.
        covariance: (K, K) covariance of the coefficients: (Aᵀ W A)⁻¹ with W = diag(1/err²)
            when errors are given, else (AᵀA)⁻¹ · χ²/ndof (NaN when ndof = 0).
        chi2: Σ ((σ_fit − σ_i)/err_i)² (err_i = 1 when no errors are given).
        ndof: number of points minus K.
        a, b, c: the constant, linear (P,) and quadratic (P, P, upper triangle) coefficients.
    """

    terms: tuple[str, ...]
    coefficients: np.ndarray
    covariance: np.ndarray
    chi2: float
    ndof: int
    a: float
    b: np.ndarray
    c: np.ndarray


class CrossSection(Yield):
    r"""A fiducial cross section σ_fid(θ) as a differentiable function of named parameters.

    Multiply by a luminosity (``xsec * 139.0``) to get the expected yield ν(θ) = σ_fid(θ) · L
    of paper Eq. 14. Constructors: :meth:`from_callable` (any torch function),
    :meth:`quadratic` (the exact EFT form, linear least squares), :meth:`interpolate`
    (1-D piecewise linear / natural cubic spline) and :meth:`regression` (a small MLP, paper
    Sec. 5 after Eq. 14).

    Example:
        >>> pts = [[-1.0], [0.0], [1.0], [2.0]]
        >>> xs = CrossSection.quadratic(pts, [2.0, 1.0, 2.0, 5.0], parameters=("c",))
        >>> round(float(xs(c=3.0)), 10), xs.fit.terms
        (10.0, ('1', 'c', 'c^2'))
    """

    fit: Any = None

    def _jet_evaluate(self, params: Mapping[str, Jet]) -> Jet | float:
        fit = self.fit
        if not isinstance(fit, QuadraticFit):
            return super()._jet_evaluate(params)
        th = [params[n] for n in self.parameters]
        out: Jet | float = fit.a
        for i, t in enumerate(th):
            out = out + float(fit.b[i]) * t
        for i, j in zip(*np.nonzero(fit.c)):
            out = out + float(fit.c[i, j]) * th[i] * th[j]
        return out

    @classmethod
    def quadratic(
        cls,
        points: Any,
        values: Any,
        errors: Any = None,
        *,
        parameters: Sequence[str],
    ) -> CrossSection:
        r"""σ(θ) = a + Σ_i b_i θ_i + Σ_{i≤j} c_ij θ_i θ_j by (weighted) linear least squares.

        The exact dependence of a cross section on EFT coefficients at dimension-6 squared.
        ``points`` (M, P) (or (M,) when P = 1), ``values`` (M,), optional ``errors`` (M,)
        (weights 1/err²). Needs M ≥ K = 1 + P + P(P+1)/2 points spanning all terms. The fit
        report (χ², covariance of the coefficients) is in ``.fit`` (a :class:`QuadraticFit`).
        """
        names = _check_names(parameters, "CrossSection.quadratic")
        pts, vals = _points_values(points, values, len(names), "CrossSection.quadratic")
        m, p = pts.shape
        if errors is None:
            err = np.ones(m)
        else:
            err = np.asarray(errors, dtype=np.float64).reshape(-1)
            if err.shape != (m,) or not np.all(np.isfinite(err)) or np.any(err <= 0):
                raise InputError(
                    f"CrossSection.quadratic: errors must be {m} positive finite numbers"
                )
        pairs = list(combinations_with_replacement(range(p), 2))
        terms = ("1", *names, *(
            f"{names[i]}^2" if i == j else f"{names[i]}*{names[j]}" for i, j in pairs
        ))
        k = len(terms)
        if m < k:
            raise InputError(
                f"CrossSection.quadratic: {k} coefficients need at least {k} points, got {m}"
            )
        design = np.column_stack(
            [np.ones(m), pts, *(pts[:, i] * pts[:, j] for i, j in pairs)]
        )
        aw = design / err[:, None]
        coef, _, rank, _ = np.linalg.lstsq(aw, vals / err, rcond=None)
        if rank < k:
            raise InputError(
                "CrossSection.quadratic: the points do not determine all coefficients "
                f"(rank {rank} < {k}); add points that vary every parameter and pair"
            )
        resid = (design @ coef - vals) / err
        chi2 = float(resid @ resid)
        ndof = m - k
        cov = np.linalg.inv(aw.T @ aw)
        if errors is None:
            cov = cov * (chi2 / ndof if ndof > 0 else math.nan)
        c = np.zeros((p, p))
        for (i, j), v in zip(pairs, coef[1 + p:]):
            c[i, j] = v
        fit = QuadraticFit(terms, coef, cov, chi2, ndof, float(coef[0]), coef[1:1 + p].copy(), c)
        a_t = torch.tensor(fit.a, dtype=torch.float64)
        b_t = torch.as_tensor(fit.b, dtype=torch.float64)
        c_t = torch.as_tensor(fit.c, dtype=torch.float64)

        def quadratic(**params: torch.Tensor) -> torch.Tensor:
            th = torch.stack([params[n] for n in names], dim=-1)
            return a_t + th @ b_t + torch.einsum("...i,ij,...j->...", th, c_t, th)

        xs = cls(quadratic, names, description="quadratic")
        xs.fit = fit
        return xs

    @classmethod
    def interpolate(
        cls,
        points: Any,
        values: Any,
        *,
        parameters: Sequence[str],
        kind: str = "linear",
    ) -> CrossSection:
        """Interpolate σ between simulated points of **one** parameter, in torch.

        ``kind="linear"`` (piecewise linear) or ``"cubic"`` (natural cubic spline). The
        parameter's range is bounded to the span of the points (beyond it the end segment
        would be extrapolated). N-D interpolation is not provided: use :meth:`quadratic` or
        :meth:`regression` for several parameters.
        """
        names = _check_names(parameters, "CrossSection.interpolate")
        if len(names) != 1:
            raise InputError(
                "CrossSection.interpolate works for one parameter only; use "
                "CrossSection.quadratic or CrossSection.regression for several"
            )
        if kind not in ("linear", "cubic"):
            raise InputError(f"CrossSection.interpolate: unknown kind {kind!r}; "
                             "use 'linear' or 'cubic'")
        pts, vals = _points_values(points, values, 1, "CrossSection.interpolate")
        order = np.argsort(pts[:, 0])
        knots, y = pts[order, 0], vals[order]
        if len(knots) < 2 or np.any(np.diff(knots) <= 0):
            raise InputError("CrossSection.interpolate needs ≥ 2 distinct points")
        h = np.diff(knots)
        m2 = np.zeros(len(knots))
        if kind == "cubic" and len(knots) > 2:  # natural spline: second derivatives, ends = 0
            n = len(knots) - 2
            mat = np.zeros((n, n))
            rhs = 6 * (np.diff(y[1:]) / h[1:] - np.diff(y[:-1]) / h[:-1])
            for i in range(n):
                mat[i, i] = 2 * (h[i] + h[i + 1])
                if i > 0:
                    mat[i, i - 1] = h[i]
                if i < n - 1:
                    mat[i, i + 1] = h[i + 1]
            m2[1:-1] = np.linalg.solve(mat, rhs)
        kt, yt, mt, ht = (torch.as_tensor(a, dtype=torch.float64) for a in (knots, y, m2, h))
        name = names[0]

        def interpolated(**params: torch.Tensor) -> torch.Tensor:
            t = params[name]
            i = torch.clamp(torch.searchsorted(kt, t.detach().reshape(-1), right=True) - 1,
                            0, len(knots) - 2).reshape(t.shape)
            x0, x1, hh = kt[i], kt[i + 1], ht[i]
            a, b = (x1 - t) / hh, (t - x0) / hh
            out = a * yt[i] + b * yt[i + 1]
            return out + ((a**3 - a) * mt[i] + (b**3 - b) * mt[i + 1]) * hh**2 / 6

        xsec = cls(interpolated, names, {name: (float(knots[0]), float(knots[-1]))},
                   description=f"{kind} interpolation")
        xsec.smooth = kind == "cubic" or len(knots) == 2  # (a natural spline is C²)
        return xsec

    @classmethod
    def regression(
        cls,
        points: Any,
        values: Any,
        *,
        parameters: Sequence[str],
        hidden: Sequence[int] = (32, 32),
        seed: int = 0,
        epochs: int = 2000,
        learning_rate: float = 0.01,
    ) -> CrossSection:
        """A small feed-forward network σ(θ) fitted to simulated points (paper, after Eq. 14).

        The network (tanh hidden layers ``hidden``, float64) regresses log σ on standardised
        θ with full-batch Adam for ``epochs`` steps, so σ > 0 everywhere and the fit weighs
        relative deviations. The parameters are bounded to the span of the points (a network
        does not extrapolate). ``.fit`` holds ``{"loss": final mean squared log residual,
        "max_relative_deviation": on the points}``.
        """
        names = _check_names(parameters, "CrossSection.regression")
        pts, vals = _points_values(points, values, len(names), "CrossSection.regression")
        if np.any(vals <= 0):
            raise InputError("CrossSection.regression: cross sections must be > 0")
        mean, scale = pts.mean(0), pts.std(0)
        scale = np.where(scale > 0, scale, 1.0)
        target = np.log(vals)
        t_mean, t_scale = target.mean(), max(float(target.std()), 1e-12)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            layers: list[torch.nn.Module] = []
            width = len(names)
            for hdim in hidden:
                hdim = whole_number(hdim, "CrossSection.regression: hidden width")
                layers += [torch.nn.Linear(width, hdim), torch.nn.Tanh()]
                width = hdim
            layers.append(torch.nn.Linear(width, 1))
            net = torch.nn.Sequential(*layers).to(torch.float64)
        xin = torch.as_tensor((pts - mean) / scale, dtype=torch.float64)
        yt = torch.as_tensor((target - t_mean) / t_scale, dtype=torch.float64)
        opt = torch.optim.Adam(net.parameters(), lr=learning_rate)
        for _ in range(whole_number(epochs, "CrossSection.regression: epochs")):
            opt.zero_grad()
            loss = torch.mean((net(xin)[:, 0] - yt) ** 2)
            loss.backward()
            opt.step()
        net.requires_grad_(False)
        mean_t, scale_t = (torch.as_tensor(a, dtype=torch.float64) for a in (mean, scale))

        def network(**params: torch.Tensor) -> torch.Tensor:
            th = (torch.stack([params[n] for n in names], dim=-1) - mean_t) / scale_t
            return torch.exp(net(th)[..., 0] * t_scale + t_mean)

        bounds = {n: (float(pts[:, j].min()), float(pts[:, j].max())) for j, n in
                  enumerate(names) if pts[:, j].min() < pts[:, j].max()}
        xs = cls(network, names, bounds, description=f"MLP{tuple(int(h) for h in hidden)}")
        with torch.no_grad():
            pred = network(**{n: xin.new_tensor(pts[:, j]) for j, n in enumerate(names)})
            loss = float(torch.mean((torch.log(pred) - torch.as_tensor(target)) ** 2))
            dev = float(torch.max(torch.abs(pred / torch.as_tensor(vals) - 1)))
        xs.fit = {"loss": loss, "max_relative_deviation": dev}
        xs.network = net
        return xs


def _points_values(points: Any, values: Any, p: int, owner: str) -> tuple[np.ndarray, np.ndarray]:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim == 1 and p == 1:
        pts = pts[:, None]
    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    if pts.ndim != 2 or pts.shape[1] != p:
        raise InputError(f"{owner}: points must have shape (M, {p}), got {pts.shape}")
    if len(vals) != len(pts):
        raise InputError(f"{owner}: {len(pts)} points but {len(vals)} values")
    if not (np.all(np.isfinite(pts)) and np.all(np.isfinite(vals))):
        raise InputError(f"{owner}: points and values must be finite")
    return pts, vals


# ----------------------------------------------------------------------------------------------
# components
# ----------------------------------------------------------------------------------------------
class Component:
    """One process of a fit: a density p(x|θ) with an expected yield ν(θ).

    Arguments:
        name: unique within a cost; used in every message about this process.
        density: any :class:`~egmm.base.DensityModel` (``GMMDensity``, :class:`TorchDensity`,
            :class:`HistTemplate`, …).
        yield_: a parameter name (a free yield, limits [0, ∞)), a number (a constant
            yield), or a :class:`Yield` such as ``CrossSection.quadratic(...) * lumi``.

    Example:
        >>> h = hist.Hist.new.Reg(4, 0.0, 1.0, name="x").Double().fill([0.1, 0.4, 0.6, 0.9])
        >>> Component("bkg", HistTemplate(h), "n_bkg").parameters
        ('n_bkg',)
    """

    def __init__(self, name: str, density: DensityModel, yield_: Any) -> None:
        if not isinstance(name, str) or not name:
            raise InputError(f"a component needs a non-empty name, got {name!r}")
        if not isinstance(density, DensityModel):
            raise InputError(
                f"component {name!r}: density must be a DensityModel (GMMDensity, "
                f"TorchDensity, HistTemplate, …), got {type(density).__name__}"
            )
        try:
            self.yield_ = as_yield(yield_)
        except InputError as exc:
            raise InputError(f"component {name!r}: {exc}") from None
        self.name = name
        self.density = density

    @property
    def parameters(self) -> tuple[str, ...]:
        """Density parameters, then yield parameters (each once)."""
        names = list(self.density.parameters)
        names += [p for p in self.yield_.parameters if p not in names]
        return tuple(names)

    @property
    def differentiable(self) -> bool:
        return bool(getattr(self.density, "differentiable", True) and self.yield_.differentiable)

    def sample(self, n: int, theta: Mapping[str, float] | None = None, seed: Any = None
               ) -> np.ndarray:
        """Draw ``n`` events (n, D) from the density at θ (extra names in ``theta`` ignored)."""
        theta = dict(theta or {})
        sub = {p: theta[p] for p in self.density.parameters if p in theta}
        try:
            return self.density.sample(n, sub or None, seed)
        except InputError as exc:
            raise type(exc)(f"component {self.name!r}: {exc}") from None

    def __repr__(self) -> str:
        return f"Component({self.name!r}, {self.density!r}, yield_={self.yield_!r})"
