"""The ground-truth toy model of the paper: an exact pdf and a fast sampler.

Menary & Price (Section 6, Appendix B) test their density model on a toy with four observables
x = (x0, x1, x2, x3) and two parameters c = (cx, cy) whose pdf is known in closed form, so that
likelihoods, fits and confidence regions from a trained model can be compared with the exact
ones. Appendix B is garbled in places; :class:`PaperToy` follows the resolved model of
``reference/paper-toy.md``.
"""

from __future__ import annotations

import math
import operator
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike
from scipy import special

from egmm.base import numpy_generator
from egmm.errors import InputError, ParameterError
from egmm.observables import Observable, ObservableSpace

__all__ = ["PaperToy"]

_PI = math.pi
_LOG_700 = math.log(700.0)

# p1: width of the truncated Gaussian in unit coordinates (the paper's text omits it).
_SIGMA1 = 0.05
_LOG_NORM1 = 0.5 * math.log(2.0 * _PI) + math.log(_SIGMA1) + _LOG_700

# p2: δ2 = 0.4 cx, ε2 = 0.5 cy; Z2 = 8π/3 + cy (12/π − 120/π³); G2(−π) = −4π/3 + δ2 E(π) + ε2 O(π)
# with E, O the even and odd parts of the antiderivative (see _p2_terms).
_Z2_CONST = 8.0 * _PI / 3.0
_Z2_CY = 12.0 / _PI - 120.0 / _PI**3
_E2_AT_PI = 52.0 / _PI**2 - 120.0 / _PI**4
_O2_AT_PI = -12.0 / _PI + 120.0 / _PI**3
# Newton iterations stop once a step is below this (rad); the error left after that step is
# of order (p2'/p2) · step² ≈ 1e-20, far below the 1e-12 the sampler promises.
_X2_STEP_TOL = 1e-10
_X2_MAX_ITERATIONS = 100
_X2_TABLE_LEVELS = 10

# p3: α3 = 10, β3 = 1, γ3 = 1, K = α3 β3 + γ3, Z3 = (2K/α3) / (1 − e^{−2K}).
_ALPHA3 = 10.0
_K3 = 11.0
_LOG_Z3 = math.log(2.0 * _K3 / _ALPHA3) - math.log(-math.expm1(-2.0 * _K3))

# Generator.random draws multiples of 2^-53 from [0, 1); an exact 0 would send x3 to −inf
# (and x2 onto the boundary where p2 = 0), so that one lattice point is moved to 2^-54.
_U_MIN = 2.0**-54


class PaperToy:
    r"""The toy model of Menary & Price, Section 6 / Appendix B: p(x|c) in closed form.

    Observables x = (x0, x1, x2, x3) with x0, x1 ∈ [100, 800] GeV, x2 ∈ [−π, π] rad, x3 ∈ ℝ;
    parameters c = (cx, cy). With unit coordinates a = (x0 − 100)/700, b = (x1 − 100)/700,

    .. math::

        p(x|c) &= p_0(x_0|c_x)\, p_1(x_1|x_0)\, p_2(x_2|c)\, p_3(x_3|c, x_1, x_2)

        p_0 &= \frac{1}{700} \frac{k\, e^{-k a}}{1 - e^{-k}}, \qquad k = 2(2 - |c_x|)

        p_1 &= \frac{1}{700} \frac{\phi((b - a)/\sigma_1)}
               {\sigma_1 [\Phi(a/\sigma_1) - \Phi((a - 1)/\sigma_1)]}, \qquad \sigma_1 = 0.05

        p_2 &= \frac{(1 + \tfrac{4}{\pi^2} x_2^2 - \tfrac{5}{\pi^4} x_2^4)
               (1 + 0.4 c_x \sin x_2 + 0.5 c_y \cos x_2)}
               {8\pi/3 + c_y (12/\pi - 120/\pi^3)}

        p_3 &= q_3\big(x_3 + s(c)\,(x_1' + x_2')\big), \qquad
               s(c) = \tfrac{3}{5}\big(\sqrt{4 + |c_x|} + |c_y|\big),
               \quad x_1' = 2b - 1, \quad x_2' = x_2/\pi

        q_3(y) &= \frac{1}{Z_3}\,
                  \frac{1}{1 + e^{\alpha_3 (y - \beta_3) - \gamma_3}}\,
                  \frac{1}{1 + e^{-\alpha_3 (y + \beta_3) - \gamma_3}}, \qquad
                  Z_3 = \frac{2K}{\alpha_3} \frac{1}{1 - e^{-2K}}, \quad
                  K = \alpha_3\beta_3 + \gamma_3

    with α3 = 10, β3 = γ3 = 1 (φ, Φ: the standard normal pdf and CDF). p1 is a Gaussian in b
    of mean a truncated to [0, 1]; k = 0 (|cx| = 2) is the flat limit of p0. p2 is a density
    only inside the ellipse 0.16 cx² + 0.25 cy² < 1; parameters outside it, or non-finite, raise
    :class:`~egmm.ParameterError`. The pdf depends on |cx| and |cy| through p0 and p3, so the
    likelihood has cusps along cx = 0 and cy = 0.

    Sampling is sequential inverse-CDF sampling with four independent uniforms (Eq. B.6):
    closed-form inverses for p0, p1 and p3 and a safeguarded Newton iteration for p2.

    The class attributes hold the paper's experiment: :attr:`GRID_49` (training grid
    cx, cy ∈ {−1.5, −1, …, 1.5}), :attr:`GRID_81` (adds ±0.2 on both axes),
    :attr:`GRID_121` (adds ±0.1 and ±0.2: a finer look at the cusps; not in the paper),
    :attr:`TRUE_HYPOTHESES` ({−0.8, 0, 0.8}²) and :attr:`N_EVENTS` (events per test dataset).

    References:
        | Menary & Price, Section 6 and Appendix B (``papers/001_2015fc5d33fdc4c7.txt``).
        | The resolved formulas: ``reference/paper-toy.md``.

    Example:
        >>> toy = PaperToy()
        >>> x = toy.sample(1000, cx=0.5, cy=-1.0, seed=1)
        >>> x.shape
        (1000, 4)
        >>> toy.log_prob(x, 0.5, -1.0).shape
        (1000,)
        >>> float(toy.cdf0(450.0, cx=2.0))
        0.5
    """

    space: ClassVar[ObservableSpace] = ObservableSpace(
        [
            Observable("x0", 100.0, 800.0, unit="GeV"),
            Observable("x1", 100.0, 800.0, unit="GeV"),
            Observable("x2", -_PI, _PI, unit="rad"),
            Observable("x3", -math.inf, math.inf),
        ]
    )
    parameters: ClassVar[tuple[str, ...]] = ("cx", "cy")

    GRID_49: ClassVar[np.ndarray]
    GRID_81: ClassVar[np.ndarray]
    GRID_121: ClassVar[np.ndarray]
    TRUE_HYPOTHESES: ClassVar[np.ndarray]
    N_EVENTS: ClassVar[int] = 400

    # -- densities ----------------------------------------------------------------------------
    def log_prob(self, x: Any, cx: ArrayLike, cy: ArrayLike) -> np.ndarray:
        """log p(x|c), float64 ``(N,)``.

        Arguments:
            x: events ``(N, 4)`` or named columns ``x0 … x3``, validated by :attr:`space`.
            cx, cy: scalars, or per-event arrays ``(N,)``.

        The density is zero (log −inf) on the boundary x2 = ±π.
        """
        return self.log_prob_conditionals(x, cx, cy).sum(axis=1)

    def log_prob_conditionals(self, x: Any, cx: ArrayLike, cy: ArrayLike) -> np.ndarray:
        """The four conditional log densities (log p0, log p1, log p2, log p3), ``(N, 4)``.

        Each is a density in its own data-space observable (per GeV for x0 and x1, per rad
        for x2); they sum to :meth:`log_prob`. Arguments as in :meth:`log_prob`.
        """
        xv = self.space.validate(x)
        cx, cy = _parameters(cx, cy, n_events=len(xv))
        a = (xv[:, 0] - 100.0) / 700.0
        b = (xv[:, 1] - 100.0) / 700.0
        out = np.empty_like(xv)
        out[:, 0] = _log_p0(a, cx)
        out[:, 1] = _log_p1(b, a)
        out[:, 2] = _log_p2(xv[:, 2], cx, cy)
        out[:, 3] = _log_q3(xv[:, 3] + _shift3(cx, cy) * (2.0 * b - 1.0 + xv[:, 2] / _PI))
        return out

    def conditional_scores(self, x: Any, cx: ArrayLike, cy: ArrayLike) -> np.ndarray:
        """∂ log p_i/∂(cx, cy) of each conditional, ``(N, 4, 2)``: the score targets of
        :func:`egmm.train` (``score=``), analytic; they sum over the conditionals to the
        score of :meth:`log_prob`. p1 has none. On the cusps (cx = 0 or cy = 0) the
        derivatives of |cx| and |cy| are taken as 0, the mean of the two one-sided ones (what
        a central difference gives, and torch's convention for ``abs``). Arguments as in
        :meth:`log_prob`.
        """
        xv = self.space.validate(x)
        cx, cy = _parameters(cx, cy, n_events=len(xv))
        a = (xv[:, 0] - 100.0) / 700.0
        b = (xv[:, 1] - 100.0) / 700.0
        x2 = xv[:, 2]
        out = np.zeros((len(xv), 4, 2))
        # p0: log p0 = −k a + ln k − ln(1 − e^{−k}) + const, k = 2(2 − |cx|)
        k = _rate0(cx)
        small = np.abs(k) < 1e-4
        k_safe = np.where(small, 1.0, k)
        dlog_dk = np.where(small, 0.5 - k / 12.0, 1.0 / k_safe - 1.0 / np.expm1(k_safe)) - a
        out[:, 0, 0] = -2.0 * np.sign(cx) * dlog_dk
        # p2: ln(1 + δ sin x + ε cos x) − ln Z2(cy), δ = 0.4 cx, ε = 0.5 cy
        sin, cos = np.sin(x2), np.cos(x2)
        modulation = 1.0 + 0.4 * cx * sin + 0.5 * cy * cos
        out[:, 2, 0] = 0.4 * sin / modulation
        out[:, 2, 1] = 0.5 * cos / modulation - _Z2_CY / _norm2(cy)
        # p3: ln q3(y), y = x3 + s(c)(x1' + x2'), s = 0.6(√(4 + |cx|) + |cy|)
        lever = 2.0 * b - 1.0 + x2 / _PI
        t = _ALPHA3 * (xv[:, 3] + _shift3(cx, cy) * lever)
        dlog_dy = _ALPHA3 * (special.expit(-t - _K3) - special.expit(t - _K3))
        out[:, 3, 0] = dlog_dy * lever * 0.3 * np.sign(cx) / np.sqrt(4.0 + np.abs(cx))
        out[:, 3, 1] = dlog_dy * lever * 0.6 * np.sign(cy)
        return out

    # -- CDFs ---------------------------------------------------------------------------------
    def cdf0(self, x0: ArrayLike, cx: ArrayLike) -> np.ndarray:
        """F0(x0|cx) = (1 − e^{−ka})/(1 − e^{−k}); arguments broadcast together.

        Defined on the whole real line (0 below 100 GeV, 1 above 800 GeV).
        """
        x0, cx = _broadcast(x0=x0, cx=cx)
        _check_parameters(cx, np.zeros_like(cx))
        a = np.clip((x0 - 100.0) / 700.0, 0.0, 1.0)
        k = _rate0(cx)
        return a * special.exprel(-k * a) / special.exprel(-k)

    def cdf1(self, x1: ArrayLike, x0: ArrayLike) -> np.ndarray:
        """F1(x1|x0), the truncated-Gaussian CDF in b; arguments broadcast together.

        Defined on the whole real line for x1; ``x0`` must lie in [100, 800].
        """
        x1, x0 = _broadcast(x1=x1, x0=x0)
        _check_within(x0, "x0", 100.0, 800.0)
        return _cdf1(np.clip((x1 - 100.0) / 700.0, 0.0, 1.0), (x0 - 100.0) / 700.0)

    def cdf2(self, x2: ArrayLike, cx: ArrayLike, cy: ArrayLike) -> np.ndarray:
        """F2(x2|c) = (G2(x2) − G2(−π))/Z2 with G2 the antiderivative of Eq. B.5.

        Arguments broadcast together; defined on the whole real line (0 below −π, 1 above π).
        """
        x2, cx, cy = _broadcast(x2=x2, cx=cx, cy=cy)
        _check_parameters(cx, cy)
        x2 = np.clip(x2, -_PI, _PI)
        _, primitive = _p2_terms(x2, 0.4 * cx, 0.5 * cy)
        return np.clip(primitive / _norm2(cy), 0.0, 1.0)

    def cdf3(
        self, x3: ArrayLike, x1: ArrayLike, x2: ArrayLike, cx: ArrayLike, cy: ArrayLike
    ) -> np.ndarray:
        """F3(x3|c, x1, x2) = I3(x3 + s(c)(x1' + x2')); arguments broadcast together.

        I3(y) = [ln(1 + e^{α3 y + K}) − ln(1 + e^{α3 y − K})]/(2K), the CDF of q3.
        """
        x3, x1, x2, cx, cy = _broadcast(x3=x3, x1=x1, x2=x2, cx=cx, cy=cy)
        _check_parameters(cx, cy)
        _check_within(x1, "x1", 100.0, 800.0)
        _check_within(x2, "x2", -_PI, _PI)
        return _cdf3(x3 + _shift3(cx, cy) * ((x1 - 100.0) / 350.0 - 1.0 + x2 / _PI))

    def pit(self, x: Any, cx: ArrayLike, cy: ArrayLike) -> np.ndarray:
        """Probability integral transform: the conditional CDFs (F0, F1, F2, F3), ``(N, 4)``.

        For events drawn from p(x|c) the four columns are independent and uniform on [0, 1].
        Arguments as in :meth:`log_prob`.
        """
        xv = self.space.validate(x)
        cx, cy = _parameters(cx, cy, n_events=len(xv))
        x0, x1, x2, x3 = xv.T
        return np.stack(
            [
                self.cdf0(x0, cx),
                self.cdf1(x1, x0),
                self.cdf2(x2, cx, cy),
                self.cdf3(x3, x1, x2, cx, cy),
            ],
            axis=1,
        )

    # -- inverse CDFs -------------------------------------------------------------------------
    def icdf0(self, u: ArrayLike, cx: ArrayLike) -> np.ndarray:
        """x0 with F0(x0|cx) = u: a = −ln(1 − u(1 − e^{−k}))/k, written stably for k → 0."""
        u, cx = _broadcast(u=u, cx=cx)
        _check_within(u, "u", 0.0, 1.0)
        _check_parameters(cx, np.zeros_like(cx))
        return 100.0 + 700.0 * _icdf0_unit(u, _rate0(cx))

    def icdf1(self, u: ArrayLike, x0: ArrayLike) -> np.ndarray:
        """x1 with F1(x1|x0) = u (the normal quantile taken in the nearer tail)."""
        u, x0 = _broadcast(u=u, x0=x0)
        _check_within(u, "u", 0.0, 1.0)
        _check_within(x0, "x0", 100.0, 800.0)
        return 100.0 + 700.0 * _icdf1_unit(u, (x0 - 100.0) / 700.0)

    def icdf2(self, u: ArrayLike, cx: ArrayLike, cy: ArrayLike) -> np.ndarray:
        """x2 with F2(x2|c) = u, by safeguarded Newton iteration.

        F2 at the result equals ``u`` to a few 1e-16, so x2 is exact to ~1e-15 rad wherever p2
        is not close to 0 (within ~1e-8 rad of ±π the float resolution of F2 limits it).
        """
        u, cx, cy = _broadcast(u=u, cx=cx, cy=cy)
        _check_within(u, "u", 0.0, 1.0)
        _check_parameters(cx, cy)
        return _icdf2(u, cx, cy)

    def icdf3(
        self, u: ArrayLike, x1: ArrayLike, x2: ArrayLike, cx: ArrayLike, cy: ArrayLike
    ) -> np.ndarray:
        """x3 with F3(x3|c, x1, x2) = u: I3⁻¹(u) − s(c)(x1' + x2') (Eq. B.6, B.8).

        u = 0 and u = 1 give −inf and +inf.
        """
        u, x1, x2, cx, cy = _broadcast(u=u, x1=x1, x2=x2, cx=cx, cy=cy)
        _check_within(u, "u", 0.0, 1.0)
        _check_parameters(cx, cy)
        _check_within(x1, "x1", 100.0, 800.0)
        _check_within(x2, "x2", -_PI, _PI)
        return _icdf3(u) - _shift3(cx, cy) * ((x1 - 100.0) / 350.0 - 1.0 + x2 / _PI)

    # -- sampling -----------------------------------------------------------------------------
    def sample(self, n: int, cx: ArrayLike, cy: ArrayLike, seed: Any = None) -> np.ndarray:
        """Draw ``n`` events from p(x|c) by sequential inverse-CDF sampling, float64 ``(n, 4)``.

        Arguments:
            n: number of events.
            cx, cy: scalars, or per-event arrays ``(n,)``.
            seed: an int, a :class:`numpy.random.SeedSequence` or a
                :class:`numpy.random.Generator` (used, hence advanced, in place); the same seed
                gives the same events. ``None`` draws fresh entropy.
        """
        n = _event_count(n, "n", minimum=0)
        cx, cy = _parameters(cx, cy, n_events=n)
        u = np.maximum(numpy_generator(seed, "sample: seed").random((4, n)), _U_MIN)
        a = _icdf0_unit(u[0], _rate0(cx))
        b = _icdf1_unit(u[1], a)
        x2 = _icdf2(u[2], cx, cy)
        x3 = _icdf3(u[3]) - _shift3(cx, cy) * (2.0 * b - 1.0 + x2 / _PI)
        return np.stack([100.0 + 700.0 * a, 100.0 + 700.0 * b, x2, x3], axis=1)

    def training_data(
        self, grid: ArrayLike, n_per_point: int, seed: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Events at every point of a parameter grid, as the paper's training set.

        Arguments:
            grid: parameter points ``(P, 2)`` in the order (cx, cy), e.g. :attr:`GRID_49`.
            n_per_point: events per point (the paper uses 50,000).
            seed: an int or :class:`numpy.random.SeedSequence`; point i draws from the i-th
                child of ``SeedSequence(seed).spawn(P)``, so its events depend only on
                ``seed`` and i, not on how the other points are sampled.

        Returns:
            ``(x, theta)``: events ``(P · n_per_point, 4)`` and their parameters
            ``(P · n_per_point, 2)``, point by point in the order of ``grid``.
        """
        points = np.asarray(grid, dtype=np.float64)
        if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
            raise InputError(
                f"grid must have shape (P, 2) with columns (cx, cy), got {points.shape}"
            )
        _check_parameters(points[:, 0], points[:, 1])
        seeds = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        x = np.concatenate(
            [
                self.sample(n_per_point, cx, cy, seed=np.random.default_rng(child))
                for (cx, cy), child in zip(points, seeds.spawn(len(points)))
            ]
        )
        return x, np.repeat(points, n_per_point, axis=0)

    def training_data_uniform(
        self, n_events: int, low: float = -1.5, high: float = 1.5, seed: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Events whose parameters are drawn uniformly over a square, one (cx, cy) per event.

        A continuous alternative to the paper's grid design (:meth:`training_data`): the
        model sees every parameter value in the square rather than 49 or 81 of them, so it
        is constrained between grid points too, e.g. along the likelihood's cusps at cx = 0
        and cy = 0, where a model trained on a grid has to interpolate.

        Arguments:
            n_events: number of events (each with its own parameters).
            low, high: the square [low, high]² the parameters are drawn from (default the
                paper's trained range [−1.5, 1.5]²); it must lie where the pdf is valid.
            seed: an int, a :class:`numpy.random.SeedSequence` or a
                :class:`numpy.random.Generator`; the same seed gives the same data.

        Returns:
            ``(x, theta)``: events ``(n_events, 4)`` and their parameters ``(n_events, 2)``.
        """
        n_events = _event_count(n_events, "n_events", minimum=1)
        low, high = float(low), float(high)
        if not (math.isfinite(low) and math.isfinite(high) and low < high):
            raise InputError(f"need finite low < high, got low={low!r}, high={high!r}")
        # the square is valid iff its corners are (the valid region is a centred ellipse)
        _check_parameters(np.array([low, low, high, high]), np.array([low, high, low, high]))
        rng = numpy_generator(seed, "training_data_uniform: seed")
        theta = rng.uniform(low, high, size=(n_events, 2))
        return self.sample(n_events, theta[:, 0], theta[:, 1], seed=rng), theta


def _event_count(value: Any, name: str, minimum: int) -> int:
    """``value`` as an int ≥ ``minimum`` (0 or 1), else :class:`~egmm.InputError` naming it."""
    try:
        n = operator.index(value)
    except TypeError:
        raise InputError(f"{name} must be an integer number of events, got {value!r}") from None
    if n < minimum:
        raise InputError(f"{name} must be {'positive' if minimum else 'non-negative'}, got {n}")
    return n


def _square_grid(values: list[float]) -> np.ndarray:
    """All (cx, cy) pairs of ``values``, cx varying slowest; read-only ``(len² , 2)``."""
    v = np.asarray(values, dtype=np.float64)
    grid = np.stack(np.meshgrid(v, v, indexing="ij"), axis=-1).reshape(-1, 2)
    grid.setflags(write=False)
    return grid


PaperToy.GRID_49 = _square_grid([-1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5])
PaperToy.GRID_81 = _square_grid([-1.5, -1.0, -0.5, -0.2, 0.0, 0.2, 0.5, 1.0, 1.5])
PaperToy.GRID_121 = _square_grid([-1.5, -1.0, -0.5, -0.2, -0.1, 0.0, 0.1, 0.2, 0.5, 1.0, 1.5])
PaperToy.TRUE_HYPOTHESES = _square_grid([-0.8, 0.0, 0.8])


# -- argument handling ------------------------------------------------------------------------
def _broadcast(**arguments: ArrayLike) -> list[np.ndarray]:
    """The arguments as float64 arrays broadcast together.

    NaN is an error here for observables and probabilities; parameters are checked, with
    their own error, by _check_parameters.
    """
    arrays = []
    for name, value in arguments.items():
        error = ParameterError if name in PaperToy.parameters else InputError
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise error(f"{name} cannot be read as a numeric array ({exc})") from None
        if name not in PaperToy.parameters and np.isnan(arr).any():
            raise InputError(f"{name} contains NaN")
        arrays.append(arr)
    try:
        return list(np.broadcast_arrays(*arrays))
    except ValueError:
        shapes = ", ".join(f"{name} {a.shape}" for name, a in zip(arguments, arrays))
        raise InputError(f"arguments do not broadcast together: {shapes}") from None


def _parameters(cx: ArrayLike, cy: ArrayLike, n_events: int) -> tuple[np.ndarray, np.ndarray]:
    """cx, cy as float64 arrays of shape () or (n_events,), checked to be valid."""
    out = []
    for name, value in (("cx", cx), ("cy", cy)):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise ParameterError(f"parameter {name!r} is not numeric ({exc})") from None
        if arr.ndim > 1 or (arr.ndim == 1 and len(arr) != n_events):
            raise ParameterError(
                f"parameter {name!r} must be a scalar or have one value per event "
                f"({n_events}), got shape {arr.shape}"
            )
        out.append(arr)
    cx_arr, cy_arr = np.broadcast_arrays(*out)
    _check_parameters(cx_arr, cy_arr)
    return cx_arr, cy_arr


def _check_parameters(cx: np.ndarray, cy: np.ndarray) -> None:
    """Raise ParameterError unless every (cx, cy) is finite with 0.16 cx² + 0.25 cy² < 1."""
    for name, arr in (("cx", cx), ("cy", cy)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise ParameterError(f"parameter {name!r} is not finite: {arr[bad].flat[0]}")
    form = 0.16 * cx**2 + 0.25 * cy**2
    bad = ~(form < 1.0)
    if bad.any():
        i = np.flatnonzero(bad)[0]
        raise ParameterError(
            f"parameters (cx, cy) = ({float(cx.flat[i])!r}, {float(cy.flat[i])!r}) lie outside "
            f"the region 0.16 cx² + 0.25 cy² < 1 (value {float(form.flat[i]):.6g}) where the "
            "paper toy is a density"
        )


def _check_within(arr: np.ndarray, name: str, lo: float, hi: float) -> None:
    bad = (arr < lo) | (arr > hi)
    if bad.any():
        raise InputError(f"{name} = {float(arr[bad].flat[0])!r} lies outside [{lo}, {hi}]")


# -- p0: truncated exponential in a -----------------------------------------------------------
def _rate0(cx: np.ndarray) -> np.ndarray:
    return 2.0 * (2.0 - np.abs(cx))


def _log_p0(a: np.ndarray, cx: np.ndarray) -> np.ndarray:
    # k/(1 − e^{−k}) = 1/exprel(−k), which is exact at k = 0 (flat) and accurate near it.
    k = _rate0(cx)
    return -k * a - np.log(special.exprel(-k)) - _LOG_700


def _icdf0_unit(u: np.ndarray, k: np.ndarray) -> np.ndarray:
    # −ln(1 + t)/k with t = u·expm1(−k) equals u · exprel(−k) · ln(1 + t)/t, finite at k = 0.
    t = u * np.expm1(-k)
    nonzero = t != 0.0
    log1p_ratio = np.ones_like(t)
    log1p_ratio[nonzero] = np.log1p(t[nonzero]) / t[nonzero]
    return np.clip(u * special.exprel(-k) * log1p_ratio, 0.0, 1.0)


# -- p1: Gaussian in b of mean a and width σ1, truncated to [0, 1] ----------------------------
def _mass1(a: np.ndarray) -> np.ndarray:
    """D = Φ(a/σ1) − Φ((a − 1)/σ1), written as 1 − (two small tails) for precision."""
    return 1.0 - special.ndtr(-a / _SIGMA1) - special.ndtr((a - 1.0) / _SIGMA1)


def _log_p1(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    z = (b - a) / _SIGMA1
    return -0.5 * z * z - np.log(_mass1(a)) - _LOG_NORM1


def _cdf1(b: np.ndarray, a: np.ndarray) -> np.ndarray:
    # Each side of the mean is computed from its own tail, so both tails keep their precision.
    mass = _mass1(a)
    below = (special.ndtr((b - a) / _SIGMA1) - special.ndtr(-a / _SIGMA1)) / mass
    above = (special.ndtr((a - b) / _SIGMA1) - special.ndtr((a - 1.0) / _SIGMA1)) / mass
    return np.clip(np.where(b <= a, below, 1.0 - above), 0.0, 1.0)


def _icdf1_unit(u: np.ndarray, a: np.ndarray) -> np.ndarray:
    """b with F1(b|a) = u for ``u`` and ``a`` of the same shape."""
    # The paper's a − √2σ1 erfinv(…) in the normal quantile; for u ≥ 1/2 the mirror image
    # (b → 1 − b, a → 1 − a, u → 1 − u, exact in floating point) keeps ndtri in a lower tail.
    lower = u < 0.5
    upper = ~lower
    mass = _mass1(a)
    b = np.empty_like(u)
    al = a[lower]
    b[lower] = al + _SIGMA1 * special.ndtri(special.ndtr(-al / _SIGMA1) + u[lower] * mass[lower])
    au = a[upper]
    b[upper] = au - _SIGMA1 * special.ndtri(
        special.ndtr((au - 1.0) / _SIGMA1) + (1.0 - u[upper]) * mass[upper]
    )
    return np.clip(b, 0.0, 1.0)


# -- p2: polynomial times harmonic modulation in x2 -------------------------------------------
def _norm2(cy: np.ndarray) -> np.ndarray:
    return _Z2_CONST + _Z2_CY * cy


def _p2_terms(x: np.ndarray, delta: np.ndarray, eps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unnormalised p2 integrand g(x) and its integral G(x) − G(−π) from −π.

    With P(x) = 1 + (4/π²)x² − (5/π⁴)x⁴ = (1 − r²)(1 + 5r²), r = x/π, repeated integration
    by parts gives G = ∫P + (δ O + ε E) sin x + (ε O − δ E) cos x with E = P − P'' + P''''
    and O = P' − P''' (the f2 of Eq. B.5).
    """
    r2 = (x / _PI) ** 2
    sin, cos = np.sin(x), np.cos(x)
    poly = (1.0 - r2) * (1.0 + 5.0 * r2)
    even = poly + (60.0 * r2 - 8.0) / _PI**2 - 120.0 / _PI**4
    odd = x * (8.0 / _PI**2 + (120.0 - 20.0 * x * x) / _PI**4)
    primitive = x * (1.0 + r2 * (4.0 / 3.0 - r2))
    g = poly * (1.0 + delta * sin + eps * cos)
    lower = -4.0 * _PI / 3.0 + delta * _E2_AT_PI + eps * _O2_AT_PI
    big_g = primitive + (delta * odd + eps * even) * sin + (eps * odd - delta * even) * cos
    return g, big_g - lower


def _log_p2(x: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    r = x / _PI
    # x = ±π is in the support's closure where p2 = 0: log 0 = −inf is the right answer there.
    with np.errstate(divide="ignore"):
        log_poly = np.log1p(-r) + np.log1p(r) + np.log1p(5.0 * r * r)
    modulation = np.log1p(0.4 * cx * np.sin(x) + 0.5 * cy * np.cos(x))
    return log_poly + modulation - np.log(_norm2(cy))


# G2(x) − G2(−π) is linear in (δ2, ε2): its three components at equally spaced nodes give the
# sampler's starting bracket for any c without re-evaluating sines.
_X2_NODES = np.linspace(-_PI, _PI, 2**_X2_TABLE_LEVELS + 1)
_X2_TABLE = np.stack(
    [_p2_terms(_X2_NODES, d, e)[1] for d, e in ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0))]
)
_X2_TABLE[1:] -= _X2_TABLE[0]


def _table_integral(i: np.ndarray, delta: np.ndarray, eps: np.ndarray) -> np.ndarray:
    return _X2_TABLE[0, i] + delta * _X2_TABLE[1, i] + eps * _X2_TABLE[2, i]


def _icdf2(u: np.ndarray, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    """Solve F2(x) = u for x; cx, cy of shape () or broadcasting against ``u``.

    A search in a table of F2 (vectorised bisection when c varies per event) finds the node
    interval holding the root; linear interpolation in it starts Newton steps kept inside that
    shrinking bracket, with bisection whenever a step leaves it. Two or three steps reach
    machine precision.
    """
    shape = np.broadcast_shapes(u.shape, cx.shape, cy.shape)
    u = np.broadcast_to(u, shape).ravel()
    delta, eps = 0.4 * cx, 0.5 * cy
    if delta.ndim or eps.ndim:
        delta = np.broadcast_to(delta, shape).ravel()
        eps = np.broadcast_to(eps, shape).ravel()
    target = u * _norm2(2.0 * eps)

    last = len(_X2_NODES) - 1
    if delta.ndim:
        lo_node = np.zeros(u.size, dtype=np.intp)
        hi_node = np.full(u.size, last, dtype=np.intp)
        for _ in range(_X2_TABLE_LEVELS):
            mid = (lo_node + hi_node) >> 1
            right = _table_integral(mid, delta, eps) <= target
            lo_node = np.where(right, mid, lo_node)
            hi_node = np.where(right, hi_node, mid)
    else:
        table = _table_integral(np.arange(last + 1), delta, eps)
        hi_node = np.clip(np.searchsorted(table, target, side="right"), 1, last)
        lo_node = hi_node - 1
    integral_lo = _table_integral(lo_node, delta, eps)
    integral_hi = _table_integral(hi_node, delta, eps)
    lo, hi = _X2_NODES[lo_node], _X2_NODES[hi_node]
    x = np.clip(lo + (target - integral_lo) / (integral_hi - integral_lo) * (hi - lo), lo, hi)

    active = np.arange(u.size)
    for _ in range(_X2_MAX_ITERATIONS):
        if active.size == 0:
            break
        xa = x[active]
        g, integral = _p2_terms(xa, _take(delta, active), _take(eps, active))
        residual = integral - target[active]
        above = residual > 0.0
        lo_a = np.where(above, lo[active], xa)
        hi_a = np.where(above, xa, hi[active])
        # g = 0 only at ±π, where the step is ±inf and the bisection below takes over.
        with np.errstate(divide="ignore", invalid="ignore"):
            step = residual / g
        new = xa - step
        newton = (new >= lo_a) & (new <= hi_a)
        new = np.where(newton, new, 0.5 * (lo_a + hi_a))
        x[active], lo[active], hi[active] = new, lo_a, hi_a
        done = (newton & (np.abs(step) <= _X2_STEP_TOL)) | (hi_a - lo_a <= _X2_STEP_TOL)
        active = active[~done]
    return x.reshape(shape)


def _take(arr: np.ndarray, index: np.ndarray) -> np.ndarray:
    return arr[index] if arr.ndim else arr


# -- p3: shifted flat-top double logistic -----------------------------------------------------
def _shift3(cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    return 0.6 * (np.sqrt(4.0 + np.abs(cx)) + np.abs(cy))


def _log_q3(y: np.ndarray) -> np.ndarray:
    # α3·y overflows only for |x3| near the float maximum, where log q3 = −inf is the limit.
    with np.errstate(over="ignore"):
        t = _ALPHA3 * y
    return -np.logaddexp(0.0, t - _K3) - np.logaddexp(0.0, -t - _K3) - _LOG_Z3


def _cdf3(y: np.ndarray) -> np.ndarray:
    # I3(y) = [softplus(t + K) − softplus(t − K)]/(2K) with t = α3 y, accurate in the lower
    # tail; the upper half uses the symmetry I3(y) = 1 − I3(−y) to avoid inf − inf.
    with np.errstate(over="ignore"):
        t = -_ALPHA3 * np.abs(y)
    tail = (np.logaddexp(0.0, t + _K3) - np.logaddexp(0.0, t - _K3)) / (2.0 * _K3)
    return np.where(y <= 0.0, tail, 1.0 - tail)


def _icdf3(u: np.ndarray) -> np.ndarray:
    # Eq. B.8 with h3 = e^{K(2u − 1)}: α3 y = ln expm1(2Ku) − K − ln(−expm1(−2K(1 − u))),
    # evaluated in the lower half and mirrored (y → −y, u → 1 − u, exact) for u > 1/2.
    v = np.minimum(u, 1.0 - u)
    with np.errstate(divide="ignore"):
        tail = (
            np.log(np.expm1(2.0 * _K3 * v)) - _K3 - np.log(-np.expm1(-2.0 * _K3 * (1.0 - v)))
        ) / _ALPHA3
    return np.where(u <= 0.5, tail, -tail)
