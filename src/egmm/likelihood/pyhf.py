"""A pyhf model (binned channels) as an iminuit cost, to combine with unbinned terms."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyhf
from iminuit.cost import Cost

from egmm.errors import EgmmError, InputError, ParameterError

__all__ = ["PyhfCost"]


class PyhfCost(Cost):
    r"""A ``pyhf.Model`` with its observed data as an iminuit cost: −2 ln L of pyhf.

    .. math:: -2 \ln L(θ) = -2\, \texttt{model.logpdf}(θ, \text{data})

    exactly the objective ``pyhf.infer.mle.twice_nll`` minimises (Poisson main term with its
    ln n! constants, plus the auxiliary constraint terms), errordef 1. It adds with
    :class:`egmm.ExtendedUnbinnedNLL`, ``iminuit.cost.NormalConstraint`` and other costs;
    parameters shared by name (e.g. a signal strength ``mu`` or a luminosity nuisance) are
    fitted jointly.

    Parameters are pyhf's ``model.config.par_names``: scalar parameters by name, vector
    parameters expanded as ``name[i]``. Their limits are pyhf's suggested bounds;
    :meth:`init_values` and :attr:`fixed_parameters` give pyhf's suggested starting values and
    fixed parameters (used by :func:`egmm.infer.fit`). The model is evaluated with the active
    pyhf backend; no gradient is provided (``has_grad`` is False), so Minuit differentiates
    numerically — also for the unbinned costs it is added to.

    Arguments:
        model: a ``pyhf.Model``.
        data: observed main data followed by the auxiliary data (``model.config.nmaindata +
            model.config.nauxdata`` numbers); the main data alone is accepted too, the
            model's nominal auxiliary data is then appended.
        verbose: iminuit verbosity.

    Example:
        >>> model = pyhf.simplemodels.uncorrelated_background([5.0], [50.0], [5.0])
        >>> cost = PyhfCost(model, [55.0])
        >>> from iminuit.util import describe
        >>> describe(cost)
        ['mu', 'uncorr_bkguncrt[0]']
        >>> bool(np.isclose(cost(1.0, 1.0), -2 * model.logpdf([1.0, 1.0], [55.0, 100.0])[0]))
        True
    """

    def __init__(self, model: Any, data: Any, *, verbose: int = 0) -> None:
        config = getattr(model, "config", None)
        if config is None or not hasattr(model, "logpdf"):
            raise InputError(f"PyhfCost needs a pyhf.Model, got {type(model).__name__}")
        names: list[str] = []
        positions: list[int] = []
        for par in config.par_order:
            sl = config.par_slice(par)
            pset = config.param_set(par)
            if pset.is_scalar:
                names.append(par)
                positions.append(sl.start)
            else:
                for j in range(pset.n_parameters):
                    names.append(f"{par}[{j}]")
                    positions.append(sl.start + j)
        self._model = model
        self._names = tuple(names)
        self._positions = np.asarray(positions, dtype=np.int64)
        self._npars = int(config.npars)
        self._data = self._validate_data(config, data)
        bounds = [tuple(float(v) for v in b) for b in config.suggested_bounds()]
        init = [float(v) for v in config.suggested_init()]
        fixed = [bool(v) for v in config.suggested_fixed()]
        self._init = {n: init[p] for n, p in zip(names, positions)}
        self._fixed = tuple(n for n, p in zip(names, positions) if fixed[p])
        super().__init__({n: bounds[p] for n, p in zip(names, positions)}, verbose)

    @staticmethod
    def _validate_data(config: Any, data: Any) -> np.ndarray:
        try:
            arr = np.asarray(data, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError) as exc:
            raise InputError(f"PyhfCost: data cannot be read as numbers ({exc})") from None
        nmain, naux = int(config.nmaindata), int(config.nauxdata)
        if len(arr) == nmain and naux > 0:
            arr = np.concatenate([arr, np.asarray(config.auxdata, dtype=np.float64)])
        if len(arr) != nmain + naux:
            raise InputError(
                f"PyhfCost: expected {nmain} main + {naux} auxiliary data = {nmain + naux} "
                f"numbers (or the {nmain} main ones), got {len(arr)}"
            )
        bad = ~np.isfinite(arr)
        if bad.any():
            i = int(np.argmax(bad))
            part = f"main bin {i}" if i < nmain else f"auxiliary datum {i - nmain}"
            raise InputError(f"PyhfCost: data {part} is {arr[i]}; data must be finite")
        # counts must be ≥ 0: the main bins and the auxiliary data of Poisson constraints
        # (shapesys); a Gaussian constraint's auxiliary datum (normsys, histosys, staterror,
        # lumi) is a measurement of its parameter and may be negative
        counts = np.zeros(len(arr), dtype=bool)
        counts[:nmain] = True
        start = nmain
        for name in config.auxdata_order:
            pset = config.param_set(name)
            if getattr(pset, "pdf_type", "normal") == "poisson":
                counts[start:start + pset.n_parameters] = True
            start += pset.n_parameters
        negative = counts & (arr < 0)
        if negative.any():
            i = int(np.argmax(negative))
            part = (f"main bin {i}" if i < nmain else
                    f"auxiliary datum {i - nmain} (of a Poisson constraint)")
            raise InputError(f"PyhfCost: data {part} is {arr[i]}; counts must be ≥ 0")
        return arr

    # -- Cost protocol -------------------------------------------------------------------------
    def _ndata(self) -> int:
        return int(self._model.config.nmaindata)

    def _has_grad(self) -> bool:
        return False

    def _grad(self, args: Sequence[float]) -> np.ndarray:
        raise EgmmError("PyhfCost has no gradient; Minuit differentiates it numerically")

    def _value(self, args: Sequence[float]) -> float:
        pars = self.pyhf_parameters(args)
        tensorlib = pyhf.tensorlib
        logpdf = self._model.logpdf(tensorlib.astensor(pars), tensorlib.astensor(self._data))
        value = -2.0 * float(np.asarray(tensorlib.tolist(logpdf)).reshape(-1)[0])
        if math.isnan(value):
            text = ", ".join(f"{n}={v:.6g}" for n, v in zip(self._names, pars[self._positions]))
            raise ParameterError(f"PyhfCost: the pyhf model's logpdf is NaN at {{{text}}}")
        return value

    # -- conveniences --------------------------------------------------------------------------
    def pyhf_parameters(self, args: Sequence[float]) -> np.ndarray:
        """Cost arguments (in ``par_names`` order) as pyhf's parameter vector."""
        values = np.asarray(args, dtype=np.float64).reshape(-1)
        if values.shape != (len(self._names),):
            raise ParameterError(
                f"PyhfCost: expected {len(self._names)} parameters, got {values.shape[0]}"
            )
        bad = ~np.isfinite(values)
        if bad.any():
            i = int(np.argmax(bad))
            raise ParameterError(f"PyhfCost: parameter {self._names[i]!r} is {values[i]}")
        pars = np.empty(self._npars)
        pars[self._positions] = values
        return pars

    @property
    def model(self) -> Any:
        return self._model

    @property
    def data(self) -> np.ndarray:
        """Main data followed by auxiliary data (a copy)."""
        return self._data.copy()

    @property
    def poi(self) -> str | None:
        """pyhf's parameter of interest, if the model has one."""
        return self._model.config.poi_name

    @property
    def fixed_parameters(self) -> tuple[str, ...]:
        """Parameters pyhf suggests to fix (e.g. ``fixed: true`` in the workspace)."""
        return self._fixed

    def init_values(self) -> dict[str, float]:
        """pyhf's suggested starting values, by parameter name."""
        return dict(self._init)

    def __repr__(self) -> str:
        fixed = f", fixed={list(self._fixed)}" if self._fixed else ""
        return (
            f"PyhfCost({self._model.config.nmaindata} bins, "
            f"channels={list(self._model.config.channels)}, parameters={list(self._names)}"
            f"{fixed})"
        )
