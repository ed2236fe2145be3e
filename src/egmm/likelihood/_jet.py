"""Second-order forward-mode differentiation of scalar yield functions ("jets").

A yield ν(θ) is a scalar function of a few parameters, evaluated at every call of a fit. With
torch autograd each value + gradient costs ~60-80 µs of graph building and engine overhead on
0-d tensors, more than the whole closed-form likelihood of a fixed-shape fit. A :class:`Jet`
carries (value, gradient, Hessian) through ordinary arithmetic as Python floats and tiny
numpy arrays: the value, gradient and Hessian of ``20 * mu`` or ``sigma(c) * lumi`` come out
exact (the same chain rule autograd applies), in a few µs.

Only a whitelist of operations is implemented: + − × ÷, powers, exp, log, log1p, expm1,
sqrt, sin, cos, tanh, sigmoid, square, reciprocal and comparisons, as Python operators, as
``torch.*`` functions (through ``__torch_function__``) and as methods. Anything else — another
torch function, a tensor with more than one element or with its own graph, ``float(jet)``,
a domain error — raises :class:`Unsupported` (or the error Python raises), and the caller
evaluates the yield with torch autograd instead. A jet never silently drops a derivative:
there is no ``__float__``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch


class Unsupported(Exception):
    """An operation jets do not implement: evaluate with torch autograd instead."""


class Jet:
    """A scalar with its gradient ``g`` (n,) and Hessian ``h`` (n, n) in n variables
    (``g`` None: the value only; ``h`` None: up to first derivatives)."""

    __slots__ = ("g", "h", "v")
    # numpy defers to the reflected operators (np.float64(2) * jet is a jet); its ufuncs
    # refuse (np.exp(jet) raises TypeError)
    __array_ufunc__ = None

    def __init__(self, v: float, g: np.ndarray | None, h: np.ndarray | None) -> None:
        self.v = v
        self.g = g
        self.h = h

    @staticmethod
    def variables(values: Sequence[float], order: int) -> list[Jet]:
        """The independent variables at ``values``, with derivatives up to ``order``."""
        if order == 0:
            return [Jet(float(v), None, None) for v in values]
        n = len(values)
        eye = np.eye(n)
        return [Jet(float(v), eye[i].copy(), np.zeros((n, n)) if order > 1 else None)
                for i, v in enumerate(values)]

    def _const(self, c: float) -> Jet:
        return Jet(c, None if self.g is None else np.zeros_like(self.g),
                   None if self.h is None else np.zeros_like(self.h))

    def _chain(self, f0: float, f1: float, f2: float) -> Jet:
        """f(self) from f, f' and f'' at self's value."""
        g = self.g
        if g is None:
            return Jet(f0, None, None)
        h = None if self.h is None else f1 * self.h + f2 * np.outer(g, g)
        return Jet(f0, f1 * g, h)

    # -- binary operations ---------------------------------------------------------------------
    def __add__(self, other: Any) -> Jet:
        o = lift(other)
        if isinstance(o, float):
            return Jet(self.v + o, self.g, self.h)
        return Jet(self.v + o.v, _add(self.g, o.g), _add(self.h, o.h))

    __radd__ = __add__

    def __neg__(self) -> Jet:
        return Jet(-self.v, None if self.g is None else -self.g,
                   None if self.h is None else -self.h)

    def __sub__(self, other: Any) -> Jet:
        return self + (-lift(other))

    def __rsub__(self, other: Any) -> Jet:
        return (-self) + lift(other)

    def __mul__(self, other: Any) -> Jet:
        o = lift(other)
        if isinstance(o, float):
            return Jet(self.v * o, None if self.g is None else o * self.g,
                       None if self.h is None else o * self.h)
        a, b = self, o
        if a.g is None or b.g is None:
            return Jet(a.v * b.v, None, None)
        g = a.v * b.g + b.v * a.g
        h = None
        if a.h is not None and b.h is not None:
            cross = np.outer(a.g, b.g)
            h = a.v * b.h + b.v * a.h + cross + cross.T
        return Jet(a.v * b.v, g, h)

    __rmul__ = __mul__

    def reciprocal(self) -> Jet:
        v = self.v
        if v == 0.0:
            raise Unsupported("1/0")
        r = 1.0 / v
        return self._chain(r, -r * r, 2.0 * r * r * r)

    def __truediv__(self, other: Any) -> Jet:
        o = lift(other)
        if isinstance(o, float):
            if o == 0.0:
                raise Unsupported("division by zero")
            return self * (1.0 / o)
        return self * o.reciprocal()

    def __rtruediv__(self, other: Any) -> Jet:
        return self.reciprocal() * lift(other)

    def __pow__(self, other: Any) -> Jet:
        o = lift(other)
        if isinstance(o, float):
            v = self.v
            if o == 0.0:
                return self._const(1.0)
            if o == 1.0:
                return self
            if o == 2.0:
                return self.square()
            if v <= 0.0 and not (v < 0.0 and o.is_integer() and o > 0):
                raise Unsupported("power of a non-positive base")
            return self._chain(v**o, o * v ** (o - 1.0), o * (o - 1.0) * v ** (o - 2.0))
        return (o * self.log()).exp()

    def __rpow__(self, other: Any) -> Jet:
        c = lift(other)
        if not isinstance(c, float) or c <= 0.0:
            raise Unsupported("power of a non-positive base")
        return (self * math.log(c)).exp()

    # -- comparisons by value (branches as a tensor's would) -----------------------------------
    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        raise Unsupported("truth value of a jet")  # a tensor's would compare with zero

    def __eq__(self, other: Any) -> bool:  # type: ignore[override]
        return self.v == _value(other)

    def __ne__(self, other: Any) -> bool:  # type: ignore[override]
        return self.v != _value(other)

    def __lt__(self, other: Any) -> bool:
        return self.v < _value(other)

    def __le__(self, other: Any) -> bool:
        return self.v <= _value(other)

    def __gt__(self, other: Any) -> bool:
        return self.v > _value(other)

    def __ge__(self, other: Any) -> bool:
        return self.v >= _value(other)

    # -- elementary functions ------------------------------------------------------------------
    def exp(self) -> Jet:
        e = math.exp(self.v)
        return self._chain(e, e, e)

    def log(self) -> Jet:
        v = self.v
        if v <= 0.0:
            raise Unsupported("log of a non-positive number")
        return self._chain(math.log(v), 1.0 / v, -1.0 / (v * v))

    def log1p(self) -> Jet:
        v = self.v
        if v <= -1.0:
            raise Unsupported("log1p at or below -1")
        r = 1.0 / (1.0 + v)
        return self._chain(math.log1p(v), r, -r * r)

    def expm1(self) -> Jet:
        e = math.exp(self.v)
        return self._chain(math.expm1(self.v), e, e)

    def sqrt(self) -> Jet:
        v = self.v
        if v <= 0.0:
            raise Unsupported("sqrt at or below 0")
        s = math.sqrt(v)
        return self._chain(s, 0.5 / s, -0.25 / (s * v))

    def square(self) -> Jet:
        return self._chain(self.v * self.v, 2.0 * self.v, 2.0)

    def sin(self) -> Jet:
        s, c = math.sin(self.v), math.cos(self.v)
        return self._chain(s, c, -s)

    def cos(self) -> Jet:
        s, c = math.sin(self.v), math.cos(self.v)
        return self._chain(c, -s, -c)

    def tanh(self) -> Jet:
        t = math.tanh(self.v)
        d = 1.0 - t * t
        return self._chain(t, d, -2.0 * t * d)

    def sigmoid(self) -> Jet:
        v = self.v
        s = 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))
        d = s * (1.0 - s)
        return self._chain(s, d, d * (1.0 - 2.0 * s))

    # -- torch functions -----------------------------------------------------------------------
    @classmethod
    def __torch_function__(cls, func: Any, types: Any, args: Sequence[Any] = (),
                           kwargs: dict[str, Any] | None = None) -> Jet:
        op = _TORCH_OPS.get(getattr(func, "__name__", ""))
        if op is None or kwargs:
            raise Unsupported(f"torch function {func!r}")
        return op(*args)


def _add(a: np.ndarray | None, b: np.ndarray | None) -> np.ndarray | None:
    return None if a is None or b is None else a + b


def lift(x: Any) -> Jet | float:
    """A jet, or a constant as a float (numbers, one-element tensors without a graph)."""
    if isinstance(x, Jet):
        return x
    if isinstance(x, (int, float, np.integer, np.floating)):
        return float(x)
    if isinstance(x, torch.Tensor) and x.numel() == 1 and not x.requires_grad:
        return float(x)
    raise Unsupported(f"operand {type(x).__name__}")


def _value(x: Any) -> float:
    o = lift(x)
    return o if isinstance(o, float) else o.v


def as_jet(x: Any, n: int, order: int) -> Jet:
    """A yield function's result as a jet in n variables (a constant: zero derivatives)."""
    o = lift(x)
    if isinstance(o, Jet):
        return o
    return Jet(o, np.zeros(n) if order > 0 else None, np.zeros((n, n)) if order > 1 else None)


def _jet(x: Any) -> Jet:
    o = lift(x)
    if isinstance(o, float):
        raise Unsupported("no jet among the arguments")
    return o


def _binary(f: Callable[[Any, Any], Jet]) -> Callable[..., Jet]:
    def op(a: Any, b: Any) -> Jet:
        la, lb = lift(a), lift(b)
        if isinstance(la, float) and isinstance(lb, float):
            raise Unsupported("no jet among the arguments")
        return f(la, lb)
    return op


def _unary(name: str) -> Callable[[Any], Jet]:
    return lambda a: getattr(_jet(a), name)()


_TORCH_OPS: dict[str, Callable[..., Jet]] = {
    **{n: _binary(lambda a, b: a + b) for n in ("add", "__add__", "__radd__")},
    **{n: _binary(lambda a, b: a - b) for n in ("sub", "subtract", "__sub__")},
    "__rsub__": _binary(lambda a, b: b - a),
    **{n: _binary(lambda a, b: a * b) for n in ("mul", "multiply", "__mul__", "__rmul__")},
    **{n: _binary(lambda a, b: a / b) for n in ("div", "divide", "true_divide",
                                                   "__truediv__", "__div__")},
    "__rtruediv__": _binary(lambda a, b: b / a),
    **{n: _binary(lambda a, b: a**b) for n in ("pow", "__pow__")},
    "__rpow__": _binary(lambda a, b: b**a),
    **{n: (lambda a: -_jet(a)) for n in ("neg", "negative", "__neg__")},
    **{n: _unary(n) for n in ("exp", "log", "log1p", "expm1", "sqrt", "square", "sin", "cos",
                              "tanh", "sigmoid", "reciprocal")},
    "special_expit": _unary("sigmoid"),
    "special_expm1": _unary("expm1"),
    "special_log1p": _unary("log1p"),
}
