"""Observables and the space they span.

An :class:`ObservableSpace` is the one place where event arrays enter egmm: it knows the names,
bounds and types of the observables and validates every array before anything is computed on it,
so that NaNs, out-of-range values or misordered columns become a clear error instead of a NaN
likelihood.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from egmm.errors import InputError

__all__ = ["Observable", "ObservableSpace"]


@dataclass(frozen=True)
class Observable:
    """One observable: a name, a closed interval [lo, hi] and its type.

    Arguments:
        name: the column name, unique within a space.
        lo, hi: closed bounds, ``lo < hi``; ``-inf``/``inf`` allowed for continuous observables.
        discrete: integer-valued on {lo, ..., hi} (e.g. a jet multiplicity); needs finite integer
            bounds. Discrete observables are modelled by a categorical network and not projected.
        f: the latent-projection mixing constant for this observable (fraction of the linear CDF,
            see :class:`egmm.LatentProjection`); ``None`` takes the projection's default.
        unit: unit for axis labels, e.g. ``"GeV"``.
        label: axis label (LaTeX allowed); defaults to the name.

    Example:
        >>> Observable("m_jj", 100.0, 800.0, unit="GeV")
        Observable(name='m_jj', lo=100.0, hi=800.0, discrete=False, f=None, unit=None, label=None)
    """

    name: str
    lo: float
    hi: float
    discrete: bool = False
    f: float | None = None
    unit: str | None = None
    label: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise InputError(f"observable name must be a non-empty string, got {self.name!r}")
        lo, hi = float(self.lo), float(self.hi)
        if math.isnan(lo) or math.isnan(hi):
            raise InputError(f"observable {self.name!r}: bounds must not be NaN")
        if not lo < hi:
            raise InputError(f"observable {self.name!r}: need lo < hi, got [{lo}, {hi}]")
        if self.discrete:
            if not (math.isfinite(lo) and math.isfinite(hi)):
                raise InputError(f"discrete observable {self.name!r} needs finite bounds")
            if lo != round(lo) or hi != round(hi):
                raise InputError(
                    f"discrete observable {self.name!r} needs integer bounds, got [{lo}, {hi}]"
                )
        if self.f is not None and not 0.0 <= float(self.f) <= 1.0:
            raise InputError(f"observable {self.name!r}: f must lie in [0, 1], got {self.f}")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)
        object.__setattr__(self, "discrete", bool(self.discrete))
        if self.f is not None:
            object.__setattr__(self, "f", float(self.f))

    def __repr__(self) -> str:  # shows the fields as given, in a stable order
        return (
            f"Observable(name={self.name!r}, lo={self.lo!r}, hi={self.hi!r}, "
            f"discrete={self.discrete!r}, f={self.f!r}, unit={self.unit!r}, label={self.label!r})"
        )

    @property
    def n_categories(self) -> int:
        """Number of values {lo, ..., hi} of a discrete observable."""
        if not self.discrete:
            raise InputError(f"observable {self.name!r} is continuous")
        return int(self.hi - self.lo) + 1

    @property
    def axis_label(self) -> str:
        """Label with unit, for plots: ``"m_jj [GeV]"``."""
        text = self.label or self.name
        return f"{text} [{self.unit}]" if self.unit else text

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description (infinite bounds as the strings ``"inf"``/``"-inf"``)."""
        return {
            "name": self.name,
            "lo": _float_to_json(self.lo),
            "hi": _float_to_json(self.hi),
            "discrete": self.discrete,
            "f": self.f,
            "unit": self.unit,
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Observable:
        """Inverse of :meth:`to_dict`."""
        return cls(
            name=d["name"],
            lo=float(d["lo"]),
            hi=float(d["hi"]),
            discrete=bool(d.get("discrete", False)),
            f=d.get("f"),
            unit=d.get("unit"),
            label=d.get("label"),
        )


def _float_to_json(v: float) -> float | str:
    return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")


class ObservableSpace(Sequence[Observable]):
    """An ordered set of observables; arrays are ``(N, D)`` in this order.

    :meth:`validate` is the gate every event array passes through.

    Example:
        >>> space = ObservableSpace([Observable("x", 0, 1), Observable("n", 0, 3, discrete=True)])
        >>> space.validate({"n": [1, 2], "x": [0.5, 0.25]}).tolist()
        [[0.5, 1.0], [0.25, 2.0]]
    """

    def __init__(self, observables: Iterable[Observable]) -> None:
        obs = tuple(observables)
        if not obs:
            raise InputError("an ObservableSpace needs at least one observable")
        for o in obs:
            if not isinstance(o, Observable):
                raise InputError(f"expected Observable, got {type(o).__name__}: {o!r}")
        names = [o.name for o in obs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise InputError(f"duplicate observable names: {dupes}")
        self._obs = obs
        self.lo = np.array([o.lo for o in obs], dtype=np.float64)
        self.hi = np.array([o.hi for o in obs], dtype=np.float64)
        self.discrete = np.array([o.discrete for o in obs], dtype=bool)

    # Sequence protocol
    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, str):
            return self._obs[self.index(i)]
        return self._obs[i]

    def __len__(self) -> int:
        return len(self._obs)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObservableSpace) and self._obs == other._obs

    def __hash__(self) -> int:
        return hash(self._obs)

    def __repr__(self) -> str:
        return f"ObservableSpace([{', '.join(repr(o) for o in self._obs)}])"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self._obs)

    @property
    def dim(self) -> int:
        return len(self._obs)

    def index(self, name: str) -> int:  # type: ignore[override]
        """Position of the observable called ``name``."""
        for i, o in enumerate(self._obs):
            if o.name == name:
                return i
        raise InputError(f"no observable named {name!r}; the space has {list(self.names)}")

    def to_dict(self) -> dict[str, Any]:
        return {"observables": [o.to_dict() for o in self._obs]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ObservableSpace:
        return cls(Observable.from_dict(o) for o in d["observables"])

    def validate(self, x: Any, *, what: str = "events", allow_empty: bool = False
                 ) -> np.ndarray:
        """Return ``x`` as a float64 ``(N, D)`` array in this space's order, or raise.

        Accepts a numpy array ``(N, D)`` (columns in the space's order; ``(N,)`` when D = 1),
        a numpy structured array, or any mapping / data frame indexable by observable name
        (dict of arrays, ``pandas.DataFrame``, ``uproot`` ``arrays(library="np")``).
        Extra named columns are ignored; missing ones are an error. Zero events are an error
        unless ``allow_empty`` (an extended likelihood of an empty dataset).

        Raises:
            InputError: empty input, wrong shape or columns, NaN/inf, values outside an
                observable's bounds, non-integer values of a discrete observable; the message
                names the observable and the first offending row.
        """
        arr = self._as_array(x, what)
        if arr.shape[0] == 0 and not allow_empty:
            raise InputError(f"{what}: empty input (0 events)")
        for j, o in enumerate(self._obs):
            col = arr[:, j]
            bad = ~np.isfinite(col)
            if bad.any():
                r = int(np.argmax(bad))
                raise InputError(f"{what}: observable {o.name!r} is {col[r]} in row {r}")
            bad = (col < o.lo) | (col > o.hi)
            if bad.any():
                r = int(np.argmax(bad))
                v = float(col[r])
                # a float32 branch cut at a bound holds float32(bound), a hair outside it
                near = o.lo if abs(v - o.lo) <= abs(v - o.hi) else o.hi
                hint = ("; it is the bound rounded to float32 (a float32 column cut at the "
                        "bound): widen the bound by a float32 step or cut in float64"
                        if math.isfinite(near) and v == float(np.float32(near)) else "")
                raise InputError(
                    f"{what}: observable {o.name!r} = {v!r} in row {r} lies "
                    f"outside its bounds [{o.lo}, {o.hi}]{hint}"
                )
            if o.discrete:
                bad = col != np.round(col)
                if bad.any():
                    r = int(np.argmax(bad))
                    raise InputError(
                        f"{what}: discrete observable {o.name!r} = {float(col[r])!r} in row "
                        f"{r} is not an integer"
                    )
        return arr

    def _as_array(self, x: Any, what: str) -> np.ndarray:
        names = self.names
        named = labelled(x, series=False)
        if named is not None:  # matched by name, whatever the order
            missing = [n for n in names if n not in named]
            if missing:
                raise InputError(f"{what}: missing columns {missing}; got {list(named)}")
            cols = [_column(named[n], n, what) for n in names]
        else:
            _refuse_non_real(x, what)
            try:
                arr = np.asarray(x, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise InputError(f"{what}: cannot be read as a numeric array ({exc})") from None
            if arr.ndim == 1 and self.dim == 1:
                arr = arr[:, None]
            if arr.ndim != 2 or arr.shape[1] != self.dim:
                raise InputError(
                    f"{what}: expected shape (N, {self.dim}) with columns {list(names)}, "
                    f"got {arr.shape}"
                )
            return np.ascontiguousarray(arr)
        lengths = {len(c) for c in cols}
        if len(lengths) != 1:
            raise InputError(
                f"{what}: columns have different lengths "
                f"{dict(zip(names, (len(c) for c in cols)))}"
            )
        return np.ascontiguousarray(np.stack(cols, axis=1))


def labelled(x: Any, *, series: bool = True) -> dict[str, Any] | None:
    """``x``'s columns by name when it carries names, else None (a plain array or sequence,
    whose columns are taken in order): a mapping's keys, a DataFrame's columns, a structured
    array's fields, an awkward record array's fields (uproot's default output) and, with
    ``series``, a pandas Series whose labels are all strings (one value per name, as
    ``df.iloc[0]`` gives). Named input is always matched by name, never by position."""
    if isinstance(x, np.ndarray):
        names = x.dtype.names
    elif isinstance(x, Mapping):
        names = list(x.keys())
    elif hasattr(x, "columns"):
        names = list(x.columns)
    elif isinstance(getattr(x, "fields", None), list) and (
            x.fields or getattr(getattr(x, "layout", None), "is_record", False)):
        names = list(x.fields)  # (an awkward record of no fields: named, with none)
    else:
        index = getattr(x, "index", None)
        names = None
        if series and index is not None and not callable(index) and hasattr(x, "to_numpy"):
            labels = list(index)
            if labels and all(isinstance(k, str) for k in labels):
                names = labels
    return None if names is None else {k: x[k] for k in names}


def _refuse_non_real(x: Any, what: str) -> None:
    """Strings and complex numbers are no events: numpy would parse "0.5" or drop the
    imaginary part."""
    kind = getattr(getattr(x, "dtype", None), "kind", None)
    if kind is None and isinstance(x, (list, tuple)):
        try:
            kind = np.asarray(x).dtype.kind
        except (TypeError, ValueError):  # ragged: reported by the float conversion
            return
    if kind in ("c", "U", "S"):
        raise InputError(f"{what}: expected real numbers, got "
                         f"{'complex numbers' if kind == 'c' else 'strings'}")


def _column_problem(c: Any, name: str, what: str, exc: Exception) -> str:
    """Why column ``name`` is not one number per event: for an awkward array (uproot's
    output) missing values (None, an option type) by row, or a variable-length (jagged)
    branch, in words rather than awkward's kernel message."""
    if getattr(c, "layout", None) is not None and callable(getattr(c, "to_numpy", None)):
        try:
            masked = np.ma.asarray(c.to_numpy(allow_missing=True))
        except (TypeError, ValueError):
            return (f"{what}: column {name!r} is not one number per event: a variable-length "
                    f"(jagged) column; select one value per event (e.g. ak.firsts, or a "
                    f"reduction such as ak.max) or leave the branch out")
        missing = np.ma.getmaskarray(masked)
        if missing.any():
            row = int(np.argmax(missing.reshape(len(missing), -1).any(axis=1)))
            return (f"{what}: column {name!r} has missing (None) values, the first in row "
                    f"{row}; drop or fill them (e.g. ak.fill_none) first")
    return (f"{what}: column {name!r} is not one number per event (a jagged or non-numeric "
            f"column: {exc})")


def _column(c: Any, name: str, what: str) -> np.ndarray:
    _refuse_non_real(c, f"{what}: column {name!r}")
    try:
        col = np.asarray(c, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(_column_problem(c, name, what, exc)) from None
    if col.ndim != 1:
        raise InputError(f"{what}: column {name!r} must be one-dimensional, got {col.shape}")
    return col
