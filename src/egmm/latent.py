"""The latent projection h: x → u of Menary & Price (Section 3, Eq. 3-4 and 10).

Each continuous observable is mapped on its own by a strictly increasing function
h = Q_u⁻¹ ∘ Q_x onto the latent box u ∈ [−u_bound, u_bound], where the Gaussian mixture is
easier to fit: the data are spread flat over the middle of the box and fade out smoothly at its
edges. Discrete observables are not projected (u = x).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from egmm.base import whole_number
from egmm.errors import InputError
from egmm.observables import Observable, ObservableSpace

__all__ = ["LatentProjection"]

# Smallest mixing constant used: f = 0 (a pure empirical CDF) is flat wherever the reference
# sample has no events, so h would be neither invertible nor have a finite Jacobian there.
_F_FLOOR = 1e-6
_MIN_EVENTS = 10
_EVENTS_PER_KNOT = 100
_KNOTS_RANGE = (20, 2000)
# Smoothed reference CDF (the default): knots of the tabulated Q_x, and the kernel width as a
# fraction of the core range, c·n_eff^(-1/5) (the usual kernel-density rate), within bounds.
_SMOOTH_KNOTS = 1000
_BANDWIDTH_RULE = (0.2, 0.005, 0.1)   # c, smallest, largest


def _n_eff(w: np.ndarray) -> float:
    """Kish effective size (Σw)²/Σw² of the reference sample."""
    return float(w.sum() ** 2 / (w * w).sum())


def _auto_knots(w: np.ndarray) -> int:
    """Default knot count of an unsmoothed map: about 100 reference events per interval."""
    return int(np.clip(_n_eff(w) // _EVENTS_PER_KNOT, *_KNOTS_RANGE))


def _auto_bandwidth(w: np.ndarray) -> float:
    """Default kernel width (fraction of the core range) for ``w``'s effective size."""
    c, smallest, largest = _BANDWIDTH_RULE
    return float(np.clip(c * _n_eff(w) ** -0.2, smallest, largest))


def _bandwidth(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InputError(f"bandwidth must be a number in [0, 1], got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:
        raise InputError(f"bandwidth must lie in [0, 1] (a fraction of the observable's "
                         f"range; 0 = no smoothing), got {value!r}")
    return value


def _smoothed(mass: np.ndarray, width: float) -> np.ndarray:
    """Bin masses convolved with a Gaussian of ``width`` bins, reflected at both ends of the
    range (no mass leaves it; the total is kept)."""
    from scipy.ndimage import gaussian_filter1d

    out = gaussian_filter1d(mass, width, mode="reflect", truncate=4.0)
    return out * (mass.sum() / out.sum())
# Bound on α·u_bound and αβ + γ: keeps every exponential of the closed forms finite in float32.
_MAX_SHAPE = 60.0
_FORMAT = "egmm.LatentProjection"
_VERSION = 1


def _softplus(z: float) -> float:
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def _sigmoid(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def _positive_float(value: Any, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"{name} must be finite and > 0, got {value!r}")
    return v


class _LatentShape:
    """The latent target density q_u, its exact CDF Q_u and its exact quantile.

    With k = αβ + γ the logistic arguments are k − αu and k + αu; they sum to 2k, hence

        σ(k − αu)·σ(k + αu) = [σ(αu + k) − σ(αu − k)] / (1 − e^{−2k}),
        ∫ q̃_u du = F(u) / (α(1 − e^{−2k})),   F(u) = softplus(αu + k) − softplus(αu − k),

    F rising from 0 to 2k with F(u) + F(−u) = 2k. Both Q_u and its inverse are written in the
    distance Δ = u_bound − |u| to the nearest edge of the box and in the probability mass m
    between that edge and u, so that neither loses digits near the edges:

        m(Δ) = [log1p(c₊ e) − log1p(c₋ e)] / N,   e = expm1(αΔ),  c± = σ(±k − α u_bound),
        Δ(m) = [log1p(e'/A) − log1p(−e'·e^{−Y}/(1 − e^{−Y}))] / α,   e' = expm1(m·N),

    with y₀ = F(−u_bound), Y = F(u_bound) = 2k − y₀, N = Y − y₀ and A = 1 − e^{−y₀}. Δ(m)
    solves m(Δ) = m exactly: e^F is a ratio of linear functions of e^{αu}, so F(u) = y gives
    αu = log(expm1(y)) − log(expm1(2k − y)) + k − y, written here relative to the edge.
    """

    def __init__(self, alpha: float, beta: float, gamma: float, u_bound: float) -> None:
        self.alpha = _positive_float(alpha, "alpha")
        self.u_bound = _positive_float(u_bound, "u_bound")
        try:
            self.beta, self.gamma = float(beta), float(gamma)
        except (TypeError, ValueError):
            raise InputError(f"beta and gamma must be numbers, got {beta!r}, {gamma!r}") from None
        k = self.alpha * self.beta + self.gamma
        au = self.alpha * self.u_bound
        if not (math.isfinite(k) and 0 < k <= _MAX_SHAPE and au <= _MAX_SHAPE):
            raise InputError(
                "latent shape: need 0 < alpha*beta + gamma <= 60 and alpha*u_bound <= 60, got "
                f"alpha={alpha}, beta={beta}, gamma={gamma}, u_bound={u_bound}"
            )
        self.k = k
        y0 = _softplus(k - au) - _softplus(-k - au)
        self.norm = 2.0 * (k - y0)
        self.c_plus = _sigmoid(k - au)
        self.c_minus = _sigmoid(-k - au)
        self.a_edge = -math.expm1(-y0)
        far = 2.0 * k - y0
        self.b_far = -math.exp(-far) / (-math.expm1(-far))
        self.log_norm = math.log(self.norm) - math.log(self.alpha) - math.log(-math.expm1(-2 * k))

    def log_density(self, u: torch.Tensor) -> torch.Tensor:
        """log q_u(u), normalised on the box."""
        au = self.alpha * u
        return F.logsigmoid(self.k - au) + F.logsigmoid(self.k + au) - self.log_norm

    def mass_from_edge(self, delta: torch.Tensor) -> torch.Tensor:
        """Q_u(−u_bound + Δ) for Δ ∈ [0, u_bound]."""
        e = torch.expm1(self.alpha * delta)
        return (torch.log1p(self.c_plus * e) - torch.log1p(self.c_minus * e)) / self.norm

    def edge_distance(self, mass: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`mass_from_edge` for mass ∈ [0, 1/2]."""
        e = torch.expm1(mass * self.norm)
        delta = (torch.log1p(e / self.a_edge) - torch.log1p(e * self.b_far)) / self.alpha
        return delta.clamp(min=0.0)  # rounding only: Δ(m) ≥ 0 exactly

    def cdf(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(Q_u(u), 1 − Q_u(u)), each accurate to its own relative precision."""
        lower = u <= 0
        # where() rather than abs(): gives the lower branch's derivative at u = 0.
        near = self.mass_from_edge(self.u_bound - torch.where(lower, -u, u))
        return torch.where(lower, near, 1.0 - near), torch.where(lower, 1.0 - near, near)

    def quantile(self, p: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
        """Q_u⁻¹ from a probability ``p`` and its complement ``comp`` = 1 − p."""
        lower = p <= comp
        delta = self.edge_distance(torch.where(lower, p, comp))
        return torch.where(lower, delta - self.u_bound, self.u_bound - delta)


@dataclass(eq=False)
class _ObservableMap:
    """Q_x of one continuous observable, float64: knots, Q_x and 1 − Q_x at the knots, tails.

    The complement ``ccdf`` is tabulated separately (summed from the top) so that 1 − Q_x keeps
    its relative precision near the upper edge, in float32 too. ``tail_lo`` / ``tail_hi`` are
    (mass, scale) for an infinite side, ``None`` for a finite one.
    """

    f: float
    knots: np.ndarray
    cdf: np.ndarray
    ccdf: np.ndarray
    tail_lo: tuple[float, float] | None
    tail_hi: tuple[float, float] | None
    slope: np.ndarray = field(init=False)
    log_slope: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.knots = np.array(self.knots, dtype=np.float64)
        self.cdf = np.array(self.cdf, dtype=np.float64)
        self.ccdf = np.array(self.ccdf, dtype=np.float64)
        k, c, cc = self.knots, self.cdf, self.ccdf
        if k.ndim != 1 or k.shape != c.shape or k.shape != cc.shape or k.size < 2:
            raise InputError("latent map: knots, cdf and ccdf must be 1-D of equal length >= 2")
        if not (np.all(np.isfinite(k)) and np.all(np.diff(k) > 0)):
            raise InputError("latent map: knots must be finite and strictly increasing")
        if not (np.all(np.diff(c) > 0) and c[0] >= 0 and c[-1] <= 1):
            raise InputError("latent map: Q_x at the knots must rise strictly within [0, 1]")
        if not (np.all(np.diff(cc) < 0) and np.all(np.abs(c + cc - 1) < 1e-12)):
            raise InputError("latent map: ccdf must be 1 − cdf at the knots")
        self.tail_lo = _tail(self.tail_lo, "tail_lo")
        self.tail_hi = _tail(self.tail_hi, "tail_hi")
        self.slope = np.diff(c) / np.diff(k)
        self.log_slope = np.log(self.slope)

    @property
    def a(self) -> float:
        return float(self.knots[0])

    @property
    def b(self) -> float:
        return float(self.knots[-1])

    def to_dict(self) -> dict[str, Any]:
        def tail(t: tuple[float, float] | None) -> dict[str, float] | None:
            return None if t is None else {"mass": t[0], "scale": t[1]}

        return {
            "f": self.f,
            "knots": self.knots.tolist(),
            "cdf": self.cdf.tolist(),
            "ccdf": self.ccdf.tolist(),
            "tail_lo": tail(self.tail_lo),
            "tail_hi": tail(self.tail_hi),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> _ObservableMap:
        def tail(t: Mapping[str, Any] | None) -> tuple[float, float] | None:
            return None if t is None else (float(t["mass"]), float(t["scale"]))

        return cls(
            float(d["f"]), d["knots"], d["cdf"], d["ccdf"], tail(d["tail_lo"]), tail(d["tail_hi"])
        )

    def rows(self) -> np.ndarray:
        """Per interval i: (t_i, t_{i+1}, Q_x(t_i), 1 − Q_x(t_{i+1}), slope_i, log slope_i)."""
        k, c, cc = self.knots, self.cdf, self.ccdf
        return np.stack([k[:-1], k[1:], c[:-1], cc[1:], self.slope, self.log_slope], axis=1)


def _tail(tail: Sequence[float] | None, what: str) -> tuple[float, float] | None:
    if tail is None:
        return None
    mass, scale = (float(v) for v in tail)
    if not (0 < mass < 1 and 0 < scale < math.inf):
        raise InputError(f"latent map: {what} must be (mass in (0, 1), scale > 0), got {tail}")
    return mass, scale


class _Cells(NamedTuple):
    """A uniform grid over a strictly increasing table T (K + 1 entries): for each cell, the
    interval of T its left edge lies in. Cells at most half as wide as T's narrowest interval
    hold at most one entry of T, so the interval of any x is its cell's or the next one, and
    two comparisons find it — also for an x within rounding of a cell's edge, counted in the
    neighbouring cell (:func:`_interval`): a few vectorised passes instead of torch's
    per-element binary search (~50 ns a lookup in a 201-entry table on this CPU)."""
    lo: float
    scale: float  # cells per unit of T
    start: torch.Tensor  # (M,) int64


class _Tables(NamedTuple):
    knots: torch.Tensor  # (K + 1,) searched by the forward map
    cdf: torch.Tensor  # (K + 1,) searched by the inverse map
    rows: torch.Tensor  # (K, 6) _ObservableMap.rows(): one gather per event
    knot_cells: _Cells | None  # None: torch.searchsorted (see _cells)
    cdf_cells: _Cells | None


#: the most cells of a _Cells grid; a table with a relatively narrower interval is searched
_MAX_CELLS = 1 << 16
#: lookups from which the grid pays (fewer: torch.searchsorted, whose per-call cost is lower;
#: 201-entry table: 400 lookups 15 against 55 µs, 4096 229 against 84, 8192 429 against 122)
_CELLS_MIN = 1024


def _cells(table: torch.Tensor) -> _Cells | None:
    """The :class:`_Cells` of a table as stored (in its dtype), or None where its intervals
    are too uneven for a small grid or rounding made two entries equal."""
    t = table.detach().cpu().double().numpy()
    gaps = np.diff(t)
    if len(t) < 2 or not np.all(gaps > 0):
        return None
    span = float(t[-1] - t[0])
    m = math.ceil(2.0 * span / float(gaps.min()))
    if not (math.isfinite(span) and 1 <= m <= _MAX_CELLS):
        return None
    scale = m / span
    edges = t[0] + np.arange(m) / scale
    start = np.clip(np.searchsorted(t, edges, side="right") - 1, 0, len(t) - 2)
    return _Cells(float(t[0]), scale, torch.as_tensor(start, device=table.device))


def _interval(table: torch.Tensor, cells: _Cells | None, x: torch.Tensor) -> torch.Tensor:
    """The index of the interval [T_i, T_{i+1}) holding each x (any shape), clamped to the K
    intervals: ``searchsorted(table, x, right=True) − 1``, clamped to [0, K − 1]."""
    n = table.shape[0] - 1
    if cells is None or x.numel() < _CELLS_MIN:
        return (torch.searchsorted(table, x, right=True) - 1).clamp_(0, n - 1)
    flat = x.reshape(-1)
    last = cells.start.shape[0] - 1
    # (clamped before and after the conversion: NaN converts to an arbitrary integer)
    cell = ((flat - cells.lo) * cells.scale).clamp_(0, last).long().clamp_(0, last)
    i = cells.start.index_select(0, cell)
    i.add_((table.index_select(0, i + 1) <= flat).long())  # the cell holds the next entry
    i.sub_((table.index_select(0, i) > flat).long())  # x within rounding below the cell
    return i.clamp_(0, n - 1).view(x.shape)


def _fit_map(
    obs: Observable, col: np.ndarray, w: np.ndarray, f: float, n_knots: int, tail_scale: float,
    bandwidth: float = 0.0,
) -> _ObservableMap:
    if np.unique(col).size < 2:
        raise InputError(
            f"reference events: observable {obs.name!r} takes a single value ({col[0]!r}); "
            "a latent projection needs at least 2 distinct values"
        )
    lo_inf, hi_inf = math.isinf(obs.lo), math.isinf(obs.hi)
    left = float(col.min()) if lo_inf else obs.lo
    right = float(col.max()) if hi_inf else obs.hi
    scale = tail_scale * (right - left)
    a = left - scale if lo_inf else obs.lo
    b = right + scale if hi_inf else obs.hi
    s_lo = scale if lo_inf else 0.0
    s_hi = scale if hi_inf else 0.0
    total = s_lo + (b - a) + s_hi
    if not (math.isfinite(total) and scale > 0 and b > a):
        raise InputError(
            f"reference events: observable {obs.name!r} spans [{left}, {right}], too wide for a "
            "finite latent map"
        )
    c = 1.0 / total
    knots = np.linspace(a, b, n_knots + 1)
    # Bins (t_{k-1}, t_k], the first one closed, so that Q_x(t_0) holds no mass.
    idx = np.clip(np.searchsorted(knots, col, side="left") - 1, 0, n_knots - 1)
    mass = np.bincount(idx, weights=w, minlength=n_knots)
    if bandwidth > 0:
        mass = _smoothed(mass, bandwidth * n_knots)
    cum = np.concatenate([[0.0], np.cumsum(mass)])
    total = cum[-1]
    cdf = (1.0 - f) * (cum / total) + f * (c * (s_lo + (knots - a)))
    ccdf = (1.0 - f) * ((total - cum) / total) + f * (c * (s_hi + (b - knots)))
    mass_lo, mass_hi = f * c * s_lo, f * c * s_hi
    # exact joins with the tails / the bounds
    cdf[0], cdf[-1] = mass_lo, 1.0 - mass_hi
    ccdf[0], ccdf[-1] = 1.0 - mass_lo, mass_hi
    if not np.all(np.diff(cdf) > 0):
        raise InputError(
            f"observable {obs.name!r}: n_knots={n_knots} and f={f} give a latent map that is not "
            "strictly increasing in float64; use fewer knots or a larger f"
        )
    return _ObservableMap(
        f,
        knots,
        cdf,
        ccdf,
        (mass_lo, s_lo) if lo_inf else None,
        (mass_hi, s_hi) if hi_inf else None,
    )


def _reference_weights(weights: Any, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().numpy()
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"weights: cannot be read as a numeric array ({exc})") from None
    if w.shape != (n,):
        raise InputError(f"weights: expected shape ({n},), one per reference event, got {w.shape}")
    bad = ~np.isfinite(w)
    if bad.any():
        r = int(np.argmax(bad))
        raise InputError(f"weights: weight {w[r]} in row {r} is not finite")
    if (w < 0).any():
        r = int(np.argmax(w < 0))
        raise InputError(
            f"weights: negative weight {w[r]} in row {r}; the latent projection needs "
            "non-negative weights (a CDF of signed weights need not be monotone)"
        )
    if not w.sum() > 0:
        raise InputError("weights: the total weight of the reference events is zero")
    return w


class LatentProjection:
    r"""Per-observable monotone map h: x → u onto the latent box [−u_bound, u_bound].

    For each continuous observable (Menary & Price, Section 3, Eq. 3-4; Jacobian Eq. 10)

        h(x) = Q_u⁻¹(Q_x(x)),   h⁻¹(u) = Q_x⁻¹(Q_u(u)),
        log|dh/dx| = log Q_x'(x) − log q_u(h(x)).

    **Data side.** Q_x(x) = (1 − f)·D_x(x) + f·L_x(x): D_x is the weighted CDF of a reference
    sample, smoothed (below), taken at ``n_knots + 1`` equally spaced knots of [lo, hi] and
    linear between them; L_x is the linear CDF (x − lo)/(hi − lo). Q_x is continuous, piecewise
    linear and, for f > 0, strictly increasing with slope ≥ f/(hi − lo). An observable's own
    ``Observable.f`` overrides the default ``f``. f = 0 (a pure empirical CDF, flat wherever
    the sample is empty) is replaced by f = 1e-6, which keeps h invertible with a finite
    Jacobian while changing Q_x by at most 1e-6.

    **Smoothing.** The paper's D_x is the raw empirical CDF: its slope is the reference
    histogram, which jumps from knot to knot by the sampling noise (±10 % at 100 events per
    interval). Every model density carries Q_x' in its Jacobian, so a smooth latent density
    becomes a comb in x, and the latent density a model must learn has those jumps: on the
    paper toy (30,000 reference events, 300 knots) they alone cost 0.0045 nats per event of
    KL divergence, nearly all of the ~0.005 the trained models showed. The reference
    histogram is therefore convolved with a Gaussian of ``bandwidth`` × (the core's width),
    reflected at the core's edges, on 1000 knots: Q_x' is then smooth (adjacent slopes differ
    by ~0.3 %)
    and what it misses of the reference density is a smooth factor the model absorbs; the
    likelihood ratios in θ do not depend on h at all (Eq. 10). ``bandwidth=0`` gives the
    paper's map.

    **Infinite bounds.** L_x needs a finite interval, so on an infinite side the linear part
    becomes a uniform density with an exponential tail: the core [a, b] is the reference
    range widened by s = ``tail_scale``·(its width) on each infinite side (a finite bound is
    its own edge), and L_x has density c on [a, b] and c·exp(−|x − edge|/s) beyond, with
    c = 1/(s_lo + (b − a) + s_hi) (s = 0 on a finite side). Beyond the core D_x is 0 or 1, so

        Q_x(x) = f c s·exp((x − a)/s)   (x < a),    1 − Q_x(x) = f c s·exp(−(x − b)/s)   (x > b):

    every real x gets a finite u and the log-Jacobian log(f c) − |x − edge|/s (finite unless
    |x − edge|/s itself overflows, i.e. |x| beyond s·1.8e308), and Q_x is continuous and
    strictly increasing on ℝ. The tail mass f c s is carried as a complement,
    so the tails round-trip as far as u can resolve them; x so far out that its tail mass is
    below ~1e-19 lands on u = ±u_bound exactly, which maps back to ±inf.

    **Latent side.** q̃_u(u) = σ(−(α(u − β) − γ))·σ(α(u + β) + γ) (σ the logistic; flat in the
    middle, smooth turn-off at the edges), normalised on the box. With k = αβ + γ,

        Q_u(u) = [F(u) − F(−u_bound)] / [F(u_bound) − F(−u_bound)],
        F(u) = softplus(αu + k) − softplus(αu − k),
        q_u(u) = α(1 − e^{−2k}) q̃_u(u) / [F(u_bound) − F(−u_bound)],

    and Q_u⁻¹ solves F(u) = y in closed form: αu = log(expm1(y)) − log(expm1(2k − y)) + k − y.
    Both are evaluated from the nearer edge of the box, so nothing is lost to cancellation.

    Arguments (of :meth:`fit`):
        space: the :class:`ObservableSpace`; discrete observables pass through (u = x).
        x_ref: reference events (N, D), anything ``space.validate`` accepts; in the paper the
            sample at the nominal parameter point.
        weights: optional (N,) non-negative finite weights with a positive sum. Negative
            weights are refused: a CDF of signed weights need not be monotone.
        f: default mixing constant in [0, 1].
        n_knots: number of equal intervals of the core on which D_x is tabulated. Default:
            1000 when smoothing; without (``bandwidth=0``) about 100 reference events per
            interval (Kish effective count / 100), between 20 and 2000 — 500 for the paper's
            50k events, finer than its 200 (finer knots make the comb finer and deeper).
        bandwidth: standard deviation of the smoothing kernel as a fraction of the core's
            width, in [0, 1]; 0 = the raw empirical CDF (the paper's). Default: 0.2·n^(−1/5)
            for n effective reference events (the usual kernel-density rate), within
            [0.005, 0.1]: 0.025 for 30,000 events, 0.023 for 50,000.
        alpha, beta, gamma: shape of q_u (paper values 4, 3, 1).
        u_bound: half-width of the latent box (paper value 5).
        tail_scale: margin and decay length of an infinite side, as a fraction of the
            reference range.

    Every method takes either a torch tensor (..., D) - no validation, the result is a tensor
    of the same dtype and device, differentiable - or numpy / array-like / named columns,
    validated by the space (or, for latent values, by :attr:`latent_space`) and answered
    as float64 numpy.

    References:
        Menary & Price, "Learning to discover: expressive Gaussian mixture models for
        multi-dimensional simulation and parameter inference in the physical sciences",
        Section 3 ("Modeling a single observable": Q_x Eq. 3, q̃_u Eq. 4, h = Q_u⁻¹ ∘ Q_x)
        and Eq. 10 (p_x(x) = p_u(h(x))·|dh/dx|). The paper tabulates Q_u as a piecewise
        linear function; here it is exact. (``papers/001_2015fc5d33fdc4c7.txt``)

    Example:
        >>> space = ObservableSpace([Observable("m", 0, 10), Observable("n", 0, 3, discrete=True)])
        >>> rng = np.random.default_rng(0)
        >>> x = np.column_stack([rng.exponential(2.0, 1000).clip(0, 10), rng.integers(0, 4, 1000)])
        >>> proj = LatentProjection.fit(space, x)
        >>> u, log_det = proj.forward_and_log_det(x)
        >>> bool(np.all(np.abs(u[:, 0]) <= 5) and np.allclose(proj.inverse(u), x))
        True
    """

    def __init__(
        self,
        space: ObservableSpace,
        maps: Sequence[_ObservableMap | None],
        *,
        alpha: float = 4.0,
        beta: float = 3.0,
        gamma: float = 1.0,
        u_bound: float = 5.0,
    ) -> None:
        """Assemble from fitted maps; use :meth:`fit` or :meth:`from_dict` instead."""
        if not isinstance(space, ObservableSpace):
            raise InputError(f"space must be an ObservableSpace, got {type(space).__name__}")
        maps = list(maps)
        if len(maps) != space.dim or any(
            (m is None) != bool(o.discrete) for m, o in zip(maps, space)
        ):
            raise InputError("latent maps must match the space: one per continuous observable")
        self.space = space
        self._maps = maps
        self._shape = _LatentShape(alpha, beta, gamma, u_bound)
        self._continuous = [j for j, m in enumerate(maps) if m is not None]
        self.latent_space = ObservableSpace(
            o if o.discrete else Observable(o.name, -self.u_bound, self.u_bound, label=o.label)
            for o in space
        )
        self._cache: dict[tuple[torch.device, torch.dtype], list[_Tables | None]] = {}

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def fit(
        cls,
        space: ObservableSpace,
        x_ref: Any,
        weights: Any = None,
        f: float = 0.5,
        n_knots: int | None = None,
        alpha: float = 4.0,
        beta: float = 3.0,
        gamma: float = 1.0,
        u_bound: float = 5.0,
        *,
        tail_scale: float = 0.05,
        bandwidth: float | None = None,
    ) -> LatentProjection:
        """Build the projection from reference events (see the class docstring).

        Raises:
            InputError: invalid events (via ``space.validate``) or weights, fewer than 10
                events with positive weight, a continuous observable with a single value,
                ``f`` outside [0, 1], ``n_knots`` < 1, ``bandwidth`` outside [0, 1], invalid
                shape parameters.
        """
        if not isinstance(space, ObservableSpace):
            raise InputError(f"space must be an ObservableSpace, got {type(space).__name__}")
        try:
            f = float(f)
        except (TypeError, ValueError):
            raise InputError(f"f must be a number in [0, 1], got {f!r}") from None
        if not 0.0 <= f <= 1.0:
            raise InputError(f"f must lie in [0, 1], got {f!r}")
        if n_knots is not None:
            n_knots = whole_number(n_knots, "n_knots")
        tail_scale = _positive_float(tail_scale, "tail_scale")
        _LatentShape(alpha, beta, gamma, u_bound)  # fail before the work on bad shape parameters
        x = space.validate(x_ref, what="reference events")
        w = _reference_weights(weights, len(x))
        used = w > 0
        if bandwidth is not None:
            bandwidth = _bandwidth(bandwidth)
        elif used.any():
            bandwidth = _auto_bandwidth(w[used])
        if n_knots is None and used.any():
            n_knots = _auto_knots(w[used]) if bandwidth == 0 else _SMOOTH_KNOTS
        continuous = [o.name for o in space if not o.discrete]
        if continuous and used.sum() < _MIN_EVENTS:
            raise InputError(
                f"reference events: {int(used.sum())} events with positive weight; the latent "
                f"maps of {continuous} need at least {_MIN_EVENTS}"
            )
        maps: list[_ObservableMap | None] = []
        for j, obs in enumerate(space):
            if obs.discrete:
                maps.append(None)
                continue
            f_j = float(obs.f if obs.f is not None else f)
            maps.append(
                _fit_map(obs, x[used, j], w[used], max(f_j, _F_FLOOR), int(n_knots), tail_scale,
                         float(bandwidth or 0.0))
            )
        return cls(space, maps, alpha=alpha, beta=beta, gamma=gamma, u_bound=u_bound)

    # -- properties -------------------------------------------------------------------------------
    @property
    def u_bound(self) -> float:
        return self._shape.u_bound

    @property
    def u_lo(self) -> float:
        """Lower edge of the latent box, −u_bound."""
        return -self._shape.u_bound

    @property
    def u_hi(self) -> float:
        """Upper edge of the latent box, u_bound."""
        return self._shape.u_bound

    @property
    def f(self) -> tuple[float | None, ...]:
        """Mixing constant used per observable (``None`` for discrete ones)."""
        return tuple(None if m is None else m.f for m in self._maps)

    def __repr__(self) -> str:
        s = self._shape
        return (
            f"LatentProjection({list(self.space.names)}, alpha={s.alpha}, beta={s.beta}, "
            f"gamma={s.gamma}, u_bound={s.u_bound})"
        )

    def knots(self, observable: str | int) -> np.ndarray:
        """Knots of Q_x of a continuous observable (its core [a, b]; Q_x is linear between)."""
        if isinstance(observable, str):
            j = self.space.index(observable)
        else:
            j = whole_number(observable, "knots: observable index", 0)
            if j >= self.space.dim:
                raise InputError(f"knots: observable index {j} ≥ {self.space.dim} observables")
        m = self._maps[j]
        if m is None:
            raise InputError(f"observable {self.space.names[j]!r} is discrete: no knots")
        return m.knots.copy()

    # -- public maps ------------------------------------------------------------------------------
    def forward(self, x: Any) -> Any:
        """u = h(x), shape (N, D) like ``x``."""
        if isinstance(x, torch.Tensor):
            return self._forward(self._check_tensor(x), want_log_det=False)[0]
        with torch.no_grad():
            u, _ = self._forward(torch.from_numpy(self.space.validate(x)), want_log_det=False)
        return u.numpy()

    def log_abs_det_jacobian(self, x: Any, per_observable: bool = False) -> Any:
        """log|dh/dx|: (N,) summed over observables, or (N, D) with ``per_observable=True``.

        Discrete observables contribute 0.
        """
        if isinstance(x, torch.Tensor):
            _, ld = self._forward(self._check_tensor(x), want_log_det=True)
            return ld if per_observable else ld.sum(-1)
        with torch.no_grad():
            _, ld = self._forward(torch.from_numpy(self.space.validate(x)), want_log_det=True)
        return (ld if per_observable else ld.sum(-1)).numpy()

    def forward_and_log_det(self, x: Any) -> tuple[Any, Any]:
        """(h(x), log|dh/dx| summed over observables) in one pass: (N, D) and (N,)."""
        if isinstance(x, torch.Tensor):
            u, ld = self._forward(self._check_tensor(x), want_log_det=True)
            return u, ld.sum(-1)
        with torch.no_grad():
            u, ld = self._forward(torch.from_numpy(self.space.validate(x)), want_log_det=True)
        return u.numpy(), ld.sum(-1).numpy()

    def inverse(self, u: Any) -> Any:
        """x = h⁻¹(u), shape (N, D) like ``u``.

        Numpy input must lie in the closed box for continuous columns (no clamping) and must
        not sit on the box edge of an infinite side, whose preimage is ±inf.
        """
        if isinstance(u, torch.Tensor):
            return self._inverse(self._check_tensor(u))
        uv = self.latent_space.validate(u, what="latent values")
        with torch.no_grad():
            x = self._inverse(torch.from_numpy(uv)).numpy()
        bad = ~np.isfinite(x)
        if bad.any():
            r, j = (int(i) for i in np.argwhere(bad)[0])
            raise InputError(
                f"latent values: observable {self.space.names[j]!r} has u = {float(uv[r, j])} in "
                f"row {r}, the edge of the box, whose preimage on this unbounded side is "
                f"{float(x[r, j])}"
            )
        return x

    def latent_density(self, u: Any) -> Any:
        """log q_u(u) per column, (N, D); 0 for discrete columns."""
        if isinstance(u, torch.Tensor):
            return self._latent_density(self._check_tensor(u))
        uv = self.latent_space.validate(u, what="latent values")
        with torch.no_grad():
            return self._latent_density(torch.from_numpy(uv)).numpy()

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe description; :meth:`from_dict` rebuilds a bit-for-bit identical map."""
        s = self._shape
        return {
            "format": _FORMAT,
            "version": _VERSION,
            "space": self.space.to_dict(),
            "alpha": s.alpha,
            "beta": s.beta,
            "gamma": s.gamma,
            "u_bound": s.u_bound,
            "maps": [None if m is None else m.to_dict() for m in self._maps],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> LatentProjection:
        """Inverse of :meth:`to_dict`."""
        try:
            if d.get("format") != _FORMAT:
                raise InputError(f"not a LatentProjection description (format={d.get('format')!r})")
            if int(d["version"]) > _VERSION:
                raise InputError(
                    f"LatentProjection description has version {d['version']}, newer than this "
                    f"egmm understands ({_VERSION})"
                )
            space = ObservableSpace.from_dict(d["space"])
            maps = [None if m is None else _ObservableMap.from_dict(m) for m in d["maps"]]
            return cls(
                space,
                maps,
                alpha=d["alpha"],
                beta=d["beta"],
                gamma=d["gamma"],
                u_bound=d["u_bound"],
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            if isinstance(exc, InputError):
                raise
            raise InputError(f"invalid LatentProjection description: {exc!r}") from None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_cache"] = {}  # device tensors are rebuilt on demand
        return state

    # -- torch internals --------------------------------------------------------------------------
    def _check_tensor(self, t: torch.Tensor) -> torch.Tensor:
        if t.ndim < 1 or t.shape[-1] != self.space.dim:
            raise InputError(
                f"expected a tensor of shape (N, {self.space.dim}), got {tuple(t.shape)}"
            )
        if not t.is_floating_point():
            raise InputError(f"expected a floating-point tensor, got {t.dtype}")
        return t

    def _tables(self, like: torch.Tensor) -> list[_Tables | None]:
        key = (like.device, like.dtype)
        tables = self._cache.get(key)
        if tables is None:

            def conv(a: np.ndarray) -> torch.Tensor:
                return torch.as_tensor(a, dtype=like.dtype, device=like.device)

            tables = [
                None if m is None else _table_set(conv(m.knots), conv(m.cdf),
                                                  conv(m.rows()))
                for m in self._maps
            ]
            self._cache[key] = tables
        return tables

    def _forward(
        self, x: torch.Tensor, want_log_det: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        tables = self._tables(x)
        cols = list(x.unbind(-1))
        log_dets = [torch.zeros_like(c) for c in cols] if want_log_det else None
        for j in self._continuous:
            m, tb = self._maps[j], tables[j]
            p, comp, log_dq = _to_mass(m, tb, cols[j].contiguous())
            cols[j] = self._shape.quantile(p, comp)
            if log_dets is not None:
                log_dets[j] = log_dq - self._shape.log_density(cols[j])
        u = torch.stack(cols, -1)
        return u, (None if log_dets is None else torch.stack(log_dets, -1))

    def _inverse(self, u: torch.Tensor) -> torch.Tensor:
        tables = self._tables(u)
        cols = list(u.unbind(-1))
        for j in self._continuous:
            p, comp = self._shape.cdf(cols[j].contiguous())
            cols[j] = _from_mass(self._maps[j], tables[j], p, comp)
        return torch.stack(cols, -1)

    def _latent_density(self, u: torch.Tensor) -> torch.Tensor:
        cols = [
            torch.zeros_like(c) if m is None else self._shape.log_density(c)
            for c, m in zip(u.unbind(-1), self._maps)
        ]
        return torch.stack(cols, -1)


def _table_set(knots: torch.Tensor, cdf: torch.Tensor, rows: torch.Tensor) -> _Tables:
    return _Tables(knots, cdf, rows, _cells(knots), _cells(cdf))


def _rows_at(tb: _Tables, i: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The interval rows (t0, t1, p0, 1 − p1, slope, log slope) at indices ``i`` (any shape),
    each shaped like ``i`` (index_select: 2-4x faster than indexing for 4096 events)."""
    return tb.rows.index_select(0, i.reshape(-1)).view(*i.shape, -1).unbind(-1)


def _to_mass(
    m: _ObservableMap, tb: _Tables, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(Q_x(x), 1 − Q_x(x), log Q_x'(x)) of one column.

    Every branch is evaluated on inputs clamped to its own domain, so that the branch where()
    discards never produces inf/NaN (which would poison the gradients).
    """
    xc = x.clamp(m.a, m.b)
    i = _interval(tb.knots, tb.knot_cells, xc)
    t0, t1, p0, comp1, slope, log_dq = _rows_at(tb, i)
    p = p0 + slope * (xc - t0)
    comp = comp1 + slope * (t1 - xc)
    if m.tail_lo is not None:
        mass, scale = m.tail_lo
        z = (x - m.a).clamp(max=0.0) / scale
        tail = x < m.a
        p_tail = mass * torch.exp(z)
        p = torch.where(tail, p_tail, p)
        comp = torch.where(tail, 1.0 - p_tail, comp)
        log_dq = torch.where(tail, math.log(mass / scale) + z, log_dq)
    if m.tail_hi is not None:
        mass, scale = m.tail_hi
        z = (m.b - x).clamp(max=0.0) / scale
        tail = x > m.b
        comp_tail = mass * torch.exp(z)
        p = torch.where(tail, 1.0 - comp_tail, p)
        comp = torch.where(tail, comp_tail, comp)
        log_dq = torch.where(tail, math.log(mass / scale) + z, log_dq)
    return p, comp, log_dq


def _from_mass(m: _ObservableMap, tb: _Tables, p: torch.Tensor, comp: torch.Tensor) -> torch.Tensor:
    """Q_x⁻¹ of one column from (p, 1 − p); ±inf for zero mass beyond an infinite side."""
    i = _interval(tb.cdf, tb.cdf_cells, p)
    t0, t1, p0, comp1, slope, _ = _rows_at(tb, i)
    # from the nearer end of the interval; the clamp only removes rounding (x ∈ [a, b] exactly)
    x = torch.where(p <= comp, t0 + (p - p0) / slope, t1 - (comp - comp1) / slope)
    x = x.clamp(m.a, m.b)
    tiny = torch.finfo(p.dtype).tiny
    if m.tail_lo is not None:
        mass, scale = m.tail_lo
        z = torch.log(p.clamp(min=tiny, max=mass)) - math.log(mass)
        x_tail = torch.where(p > 0, m.a + scale * z, -math.inf)
        x = torch.where(p < mass, x_tail, x)
    if m.tail_hi is not None:
        mass, scale = m.tail_hi
        z = torch.log(comp.clamp(min=tiny, max=mass)) - math.log(mass)
        x_tail = torch.where(comp > 0, m.b - scale * z, math.inf)
        x = torch.where(comp < mass, x_tail, x)
    return x
