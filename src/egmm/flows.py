"""Normalizing-flow peers: :class:`FlowDensity`, a zuko conditional flow behind the same
DensityModel protocol as :class:`egmm.GMMDensity`, so flows plug into every cost, fit and toy
and can be compared with the Gaussian mixture on equal terms (same projection, same training
loop, same files).

The flow models the latent values of the same :class:`egmm.LatentProjection`, moved from the
latent box (u_lo, u_hi) onto ℝ by the fixed logit map

    y = log(u − u_lo) − log(u_hi − u),
    log|dy/du| = log(u_hi − u_lo) − log(u − u_lo) − log(u_hi − u),

so that the flow's density on ℝ^D is a normalised density on the box, and hence on the
observables' support: no probability leaks. Discrete observables are not supported by flows.

References:
    Durkan et al., "Neural Spline Flows" (2019); Papamakarios et al., "Masked Autoregressive
    Flow for Density Estimation" (2017); zuko (Rozet et al.).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from egmm.base import TrainedModel, sample_count, torch_generator, whole_number
from egmm.errors import InputError
from egmm.latent import LatentProjection
from egmm.observables import ObservableSpace
from egmm.serialization import SavableModel

__all__ = ["FlowDensity"]

_KINDS = ("NSF", "MAF")


def _zuko() -> Any:
    try:
        import zuko
    except ImportError:  # pragma: no cover - exercised only without the extra
        raise ImportError("FlowDensity needs zuko: pip install 'egmm[flows]'") from None
    return zuko


def _storable(value: Any) -> bool:
    """Whether a model file's JSON config can hold ``value``."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


class FlowDensity(TrainedModel, SavableModel):
    """A zuko conditional flow p(x|θ) (``kind`` "NSF" or "MAF") on the latent space.

    Arguments:
        space, parameters, projection, parameter_bounds: as for :class:`egmm.GMMDensity`.
        kind: "NSF" (rational-quadratic spline flow) or "MAF" (affine autoregressive).
        **flow_kwargs: passed to ``zuko.flows.NSF``/``MAF`` (e.g. ``transforms=3``,
            ``hidden_features=(64, 64)``, ``bins=8``).

    Example:
        >>> from egmm import Observable, ObservableSpace, LatentProjection
        >>> space = ObservableSpace([Observable("x", 0.0, 1.0), Observable("y", 0.0, 1.0)])
        >>> proj = LatentProjection.fit(space, np.random.default_rng(0).uniform(size=(500, 2)))
        >>> flow = FlowDensity(space, ["c"], proj, parameter_bounds={"c": (0.0, 1.0)})
        >>> flow.sample(3, {"c": 0.5}, seed=1).shape
        (3, 2)
    """

    def __init__(self, space: ObservableSpace, parameters: Sequence[str] = (),
                 projection: LatentProjection | None = None, *, kind: str = "NSF",
                 parameter_bounds: Mapping[str, tuple[float, float]] | None = None,
                 **flow_kwargs: Any) -> None:
        if kind not in _KINDS:
            raise InputError(f"FlowDensity: kind must be one of {_KINDS}, got {kind!r}")
        if projection is None or projection.space != space:
            raise InputError("FlowDensity: a LatentProjection fitted on this space is required")
        if space.discrete.any():
            names = [o.name for o in space if o.discrete]
            raise InputError(f"FlowDensity: discrete observables {names} are not supported")
        self.space = space
        self.projection = projection
        self.parameters = tuple(str(p) for p in parameters)
        self.kind = kind
        self.flow_kwargs = {k: list(v) if isinstance(v, tuple) else v
                            for k, v in flow_kwargs.items()}
        # options a model file cannot store are refused here rather than at save()
        bad = {k: v for k, v in self.flow_kwargs.items() if not _storable(v)}
        if bad:
            raise InputError(f"FlowDensity: options {bad} cannot be stored in a model file: "
                             "give numbers, strings or lists of them (zuko's defaults for "
                             "anything else)")
        self._init_module(parameter_bounds)
        zuko = _zuko()
        cls = getattr(zuko.flows, kind)
        try:
            self.module.flow = cls(space.dim, len(self.parameters), **flow_kwargs)
        except TypeError as exc:
            raise InputError(f"FlowDensity: bad flow option ({exc})") from None
        self._flow64: tuple[Any, nn.Module] | None = None
        self._freeze()

    def to(self, device: str | torch.device) -> FlowDensity:
        self.module.to(device)
        self._flow64 = None
        return self

    def n_weights(self) -> int:
        return sum(p.numel() for p in self.module.flow.parameters())

    # -- internals -----------------------------------------------------------------------------
    def _flow(self, dtype: torch.dtype) -> nn.Module:
        flow = self.module.flow
        if dtype == next(flow.parameters()).dtype:
            return flow
        # evaluation in another precision uses a converted copy, refreshed when weights change
        key = (dtype, tuple(p._version for p in flow.parameters()),
               tuple(p.data_ptr() for p in flow.parameters()))
        if self._flow64 is None or self._flow64[0] != key:
            self._flow64 = (key, copy.deepcopy(flow).to(dtype))
        return self._flow64[1]

    def _to_real(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo, hi = self.projection.u_lo, self.projection.u_hi
        a, b = torch.log(u - lo), torch.log(hi - u)
        return a - b, (np.log(hi - lo) - a - b).sum(-1)

    def _from_real(self, y: torch.Tensor) -> torch.Tensor:
        lo, hi = self.projection.u_lo, self.projection.u_hi
        return lo + (hi - lo) * torch.sigmoid(y)

    def _dist(self, theta_s: torch.Tensor, dtype: torch.dtype) -> Any:
        flow = self._flow(dtype)
        if not self.parameters:
            return flow()
        return flow(theta_s if theta_s.ndim == 2 else theta_s.unsqueeze(0))

    # -- DensityModel protocol -----------------------------------------------------------------
    def log_prob_tensor(self, x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        u, logdet = self.projection.forward_and_log_det(x)
        y, logdet_y = self._to_real(u)
        dist = self._dist(self.scale_theta(theta.to(x.dtype)), x.dtype)
        out = dist.log_prob(y) + logdet_y + logdet
        inside = torch.isfinite(y).all(-1)
        if bool(inside.all()):
            return out
        # on the latent box's boundary the logit is ±inf: there the flow's density is 0
        # (its base tails fall faster than the map's Jacobian grows), not inf − inf = NaN
        return torch.where(inside, out, out.new_tensor(-math.inf))


    def sample(self, n: int, theta: Any = None, seed: Any = None, *,
               allow_outside: bool = False, dtype: torch.dtype = torch.float32,
               chunk_size: int = 65536) -> np.ndarray:
        """Draw ``n`` events at θ, (n, D) float64 in data space.

        ``theta`` one point (shared) or (n, P) per event; ``seed``: int, SeedSequence,
        ``numpy.random.Generator``, ``torch.Generator`` or None (fresh entropy: calls differ);
        ``dtype``: precision of the flow's pass (float32 or float64); ``chunk_size``: events
        per pass, which bounds the memory of the flow's intermediate tensors (the draws of one
        seed depend on it, as a GMMDensity's do).
        """
        if dtype not in (torch.float32, torch.float64):
            raise InputError(f"sample: dtype must be torch.float32 or torch.float64, got {dtype}")
        n = sample_count(n)
        chunk_size = whole_number(chunk_size, "sample: chunk_size")
        th = self.theta_tensor(theta, n_events=n, allow_outside=allow_outside)
        # zuko draws from torch's global generator: seeded (from fresh entropy when seed is
        # None, so that unseeded calls differ) inside a fork that leaves the caller's alone
        gen = torch_generator(seed, "sample: seed")
        out = np.empty((n, self.space.dim))
        # sigmoid rounding can reach the box edge exactly; stay strictly inside it
        eps = 1e-12 * (self.projection.u_hi - self.projection.u_lo)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            shared = None if th.ndim == 2 else self._dist(
                self.scale_theta(th.to(self.device, dtype)), dtype)  # (one θ: built once)
            for s in range(0, n, chunk_size):
                m = min(chunk_size, n - s)
                if shared is None:
                    dist = self._dist(self.scale_theta(th[s:s + m].to(self.device, dtype)), dtype)
                    y = dist.sample()
                else:
                    y = shared.sample((m,)).reshape(m, self.space.dim)
                u = self._from_real(y.double())
                u = u.clamp(self.projection.u_lo + eps, self.projection.u_hi - eps)
                out[s:s + m] = self.projection.inverse(u).cpu().numpy()
        return out

    # -- training hooks ------------------------------------------------------------------------
    def training_units(self) -> list[nn.Module]:
        return [self.module.flow]

    def training_tensors(self, x: np.ndarray, theta: np.ndarray,
                         dtype: torch.dtype) -> dict[str, torch.Tensor]:
        u = self.projection.forward(torch.as_tensor(x, device=self.device))
        y, logdet_y = self._to_real(u)
        edge = ~torch.isfinite(y)
        if bool(edge.any()):
            row, col = (int(v) for v in edge.nonzero()[0])
            name = self.space.names[col]
            raise InputError(
                f"training events: row {row} has {name} = {float(x[row, col])!r}, on the "
                f"boundary of the latent box, where a flow's density is 0 (its logit map is "
                f"infinite there): move such events inside the range of {name!r} or train a "
                f"GMMDensity, which is finite on the boundary")
        return {"y": y.to(dtype), "logdet": logdet_y.to(dtype),
                "theta": self.scale_theta(torch.as_tensor(theta, device=self.device)).to(dtype)}

    def training_log_prob(self, i: int, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        flow = self.module.flow
        dist = flow(batch["theta"]) if self.parameters else flow()
        return dist.log_prob(batch["y"]) + batch["logdet"]

    # -- files ---------------------------------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        return {
            **self._base_config(),
            "kind": self.kind,
            "flow_kwargs": self.flow_kwargs,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> FlowDensity:
        kwargs = {k: tuple(v) if isinstance(v, list) else v
                  for k, v in config["flow_kwargs"].items()}
        return cls(ObservableSpace.from_dict(config["space"]), config["parameters"],
                   LatentProjection.from_dict(config["projection"]), kind=config["kind"],
                   parameter_bounds=config["parameter_bounds"] or None, **kwargs)

    def __repr__(self) -> str:
        return (f"FlowDensity(kind={self.kind!r}, observables={list(self.space.names)}, "
                f"parameters={list(self.parameters)}, weights={self.n_weights()})")
