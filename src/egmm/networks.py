"""Per-observable conditional networks of the expressive Gaussian mixture (paper Fig. 4).

Each observable u_i of the autoregressive chain p(u|θ) = Π_i p_i(u_i | u_<i, θ) gets one
network. It has two input branches,

    θ branch:   θ' ∈ [−2, 2]^Nθ     → Dense(N1 = A1 + A2·Nθ) + LeakyReLU(0.2)
    u branch:   u'_<i ∈ [−2, 2]^i   → Dense(N2 = B1 + B2·i) + LeakyReLU(0.2)      (i > 0)

whose outputs are concatenated and passed through C × [Dense(N1 + N2) + LeakyReLU], then
through three heads, each Dense(D·N_G) + LeakyReLU → Dense(N_G), giving the mixture

    f   = softmax(s_f · z_f)                                           (amplitudes)
    μ_g = s_μ · z_μ,g + u_lo + (u_hi − u_lo)·g/(N_G − 1)       (means, evenly spaced at init)
    σ_g = softplus(s_σ · z_σ,g + softplus⁻¹(w0)) + ε,  w0 = f_σ·(u_hi − u_lo)/N_G   (widths)

A discrete observable gets the same branches followed by hidden layers and a softmax over its
values (:class:`CategoricalNet`).

The first layer after the concatenation is linear in the two branch outputs, so its
pre-activation splits into a θ part and an input part: ``theta_part(θ') + input_part(u')``.
The input part does not depend on θ and is what a likelihood fit caches per dataset; the θ part
is computed once per parameter point, not once per event.

References:
    Menary & Price, "Learning to discover: expressive Gaussian mixture models for
    multi-dimensional simulation and parameter inference in the physical sciences",
    Section 4 and Fig. 4.
"""

from __future__ import annotations

import itertools
import math
import warnings
import weakref
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from egmm.errors import InputError

__all__ = ["CategoricalNet", "ConditionalGMMNet", "init_linear"]

NEGATIVE_SLOPE = 0.2


def init_linear(layer: nn.Linear, first: bool) -> None:
    """Paper initialisation: zero biases, uniform weights ±10/(3√N_in) on the first layer of a
    branch and ±2.5/√N_in elsewhere (the released code's choice; the paper quotes 10/(3√N_in))."""
    n_in = layer.in_features
    with torch.no_grad():
        layer.bias.zero_()
        if n_in == 0:
            return
        bound = (10.0 / 3.0 if first else 2.5) / math.sqrt(n_in)
        layer.weight.uniform_(-bound, bound)


# Frozen weights cast to another dtype (float64 evaluation of float32 weights), per layer:
# (dtype, device, weight version, bias version) -> (weight, bias). Tensor versions change with
# every in-place update (optimiser steps, load_state_dict), which invalidates an entry.
# The same cache keeps the other forms frozen weights are used in (folded heads, weights with
# their bias as a column), one entry per owner and tag.
_CAST_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[str, tuple[Any, ...]]] = (
    weakref.WeakKeyDictionary())


# Output columns of the folded heads' product are padded (with zeros) to a multiple of this,
# per dtype: MKL's float64 kernels for a (N × 60) @ (60 × 20) product run at ~14 GFLOP/s on
# the AMD EPYC of the benchmarks, 60 → 24 at ~31; in float32 the unpadded product is as fast (the
# slicing afterwards costs more than it gains). Measured on the paper-size model, float64,
# 4096 events: sample ~10 % and log_prob ~3 % faster.
_HEAD_COLUMNS = {torch.float64: 8}


def _frozen(*tensors: torch.Tensor) -> bool:
    return not any(t.requires_grad for t in tensors)


def records_graph(t: torch.Tensor) -> bool:
    """Whether autograd records operations on ``t`` (then nothing may be done in place)."""
    return torch.is_grad_enabled() and t.requires_grad


def _cached(owner: nn.Module, tensors: list[torch.Tensor], dtype: torch.dtype,
            build: Any, tag: str = "cast") -> Any:
    """``build()`` for frozen ``tensors`` of ``owner`` (one entry per ``tag``), kept until one
    of them changes (its version), or the dtype or device asked for does."""
    key = (dtype, tensors[0].device, *(t._version for t in tensors))
    entries = _CAST_CACHE.setdefault(owner, {})
    hit = entries.get(tag)
    if hit is None or hit[0] != key:
        hit = (key, build())
        entries[tag] = hit
    return hit[1]


def _cast(layer: nn.Linear, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The layer's (weight, bias) in ``dtype``. Weights live in float32 for training and a
    likelihood may run in float64: trainable weights are cast per call (inside autograd),
    frozen ones once and cached until they change."""
    w, b = layer.weight, layer.bias
    if w.dtype == dtype:
        return w, b
    if not _frozen(w, b):
        return w.to(dtype), b.to(dtype)
    return _cached(layer, [w, b], dtype, lambda: (w.to(dtype), b.to(dtype)))


def _augmented(layer: nn.Linear, dtype: torch.dtype) -> torch.Tensor:
    """(out, 1 + in): the frozen layer's bias as the first column, then its weight, so that
    ``W' @ [1; h] = W h + b`` for events as columns: one matrix product, no pass to add the
    bias (which torch's ``addmm`` makes by copying it into every output row first)."""
    w, b = layer.weight, layer.bias
    return _cached(layer, [w, b], dtype, lambda: torch.cat([b[:, None], w], 1).to(dtype),
                   "augmented")


def ones_row(rows: int, n: int, like: torch.Tensor) -> torch.Tensor:
    """An uninitialised (1 + rows, n) tensor whose first row is ones: the layout of events as
    columns that :func:`_augmented` weights multiply (:meth:`ConditionalGMMNet.mixture_t`)."""
    out = like.new_empty((1 + rows, n))
    out[0].fill_(1.0)
    return out


def ones_row_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """:func:`ones_row` holding ``a + b`` (rows, n) below its row of ones: a network's first
    joint pre-activation with events as columns, from its input part and θ part (no graph)."""
    out = ones_row(a.shape[0], a.shape[1], a)
    torch.add(a, b, out=out[1:])
    return out


def _linear(layer: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    w, b = _cast(layer, h.dtype)
    return F.linear(h, w, b)


def _linear_no_bias(layer: nn.Linear, h: torch.Tensor, columns: slice) -> torch.Tensor:
    return F.linear(h, _cast(layer, h.dtype)[0][:, columns])


#: hidden-layer activations: name -> (out of place, in place). "leaky_relu" (slope 0.2) is the
#: paper's; "silu" (x·sigmoid(x)) is smooth, so the likelihood is infinitely differentiable
#: in θ (no kinks for Newton steps, HESSE or MNCONTOUR to trip over).
ACTIVATIONS: dict[str, tuple[Any, Any]] = {
    "leaky_relu": (lambda h: F.leaky_relu(h, NEGATIVE_SLOPE),
                   lambda h: F.leaky_relu_(h, NEGATIVE_SLOPE)),
    "silu": (F.silu, lambda h: F.silu(h, inplace=True)),
}
#: activations autograd differentiates in place: leaky_relu_'s backward reads its result
#: (the sign of the input, the slope being positive), silu's needs the input it overwrote
_IN_PLACE_UNDER_AUTOGRAD = frozenset({"leaky_relu"})


def check_activation(name: Any) -> str:
    """``name`` if it is one of :data:`ACTIVATIONS`, else :class:`~egmm.InputError`."""
    if name not in ACTIVATIONS:
        raise InputError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return str(name)


class _BranchedNet(nn.Module):
    """θ branch + input branch + the first linear layer after their concatenation."""

    def __init__(self, n_theta: int, n_inputs: int, width_theta: int, width_inputs: int,
                 first_out: int, activation: str = "leaky_relu") -> None:
        super().__init__()
        self.activation = check_activation(activation)
        self.n_theta = n_theta
        self.n_inputs = n_inputs
        self.theta_branch = nn.Linear(n_theta, width_theta) if n_theta > 0 else None
        self.input_branch = nn.Linear(n_inputs, width_inputs) if n_inputs > 0 else None
        self.width_theta = width_theta if n_theta > 0 else 0
        self.width_inputs = width_inputs if n_inputs > 0 else 0
        with warnings.catch_warnings():  # torch warns that a 0-input layer's init is a no-op
            warnings.simplefilter("ignore", UserWarning)
            self.joint = nn.Linear(self.width_theta + self.width_inputs, first_out)
        if self.joint.in_features == 0:
            with torch.no_grad():  # a constant input for the trunk (zero would stay dead)
                self.joint.bias.uniform_(-1.0, 1.0)
        for layer in (self.theta_branch, self.input_branch):
            if layer is not None:
                init_linear(layer, first=True)
        init_linear(self.joint, first=False)

    def _act(self, h: torch.Tensor) -> torch.Tensor:
        return ACTIVATIONS[self.activation][0](h)

    def _act_fresh(self, h: torch.Tensor) -> torch.Tensor:
        """The activation of a tensor nobody else holds (a layer's fresh output): in place
        where autograd allows it (no graph recorded, or an activation whose backward reads
        its result and ``h`` is not a leaf), which saves an allocation and a memory pass per
        layer."""
        out_of_place, in_place = ACTIVATIONS[self.activation]
        if records_graph(h) and (h.is_leaf or self.activation not in _IN_PLACE_UNDER_AUTOGRAD):
            return out_of_place(h)
        return in_place(h)

    def theta_part(self, theta_scaled: torch.Tensor) -> torch.Tensor:
        """θ contribution to the first joint pre-activation: (M, P) → (M, first_out)."""
        if self.theta_branch is None:
            return theta_scaled.new_zeros((*theta_scaled.shape[:-1], self.joint.out_features))
        h = self._act_fresh(_linear(self.theta_branch, theta_scaled))
        return _linear_no_bias(self.joint, h, slice(0, self.width_theta))

    def input_part(self, inputs_scaled: torch.Tensor,
                   theta_part: torch.Tensor | None = None) -> torch.Tensor:
        """Input (u_<i) contribution plus bias: (N, i) → (N, first_out); θ-independent.

        The first network of the chain has no inputs: its part is the bias alone, (1,
        first_out), so that everything after it is computed once per θ, not once per event.
        With ``theta_part`` (one row, or one per event) the result is the whole first joint
        pre-activation, with θ's part folded into the product's bias (one memory pass fewer
        than adding it afterwards); always a new tensor then.
        """
        weight, bias = _cast(self.joint, inputs_scaled.dtype)
        if theta_part is not None:
            bias = bias + theta_part
        if self.input_branch is None:
            return bias if bias.ndim == 2 else bias.unsqueeze(0)
        h = self._act_fresh(_linear(self.input_branch, inputs_scaled))
        weight = weight[:, self.width_theta:]
        if bias.ndim == 2 and bias.shape[0] == 1:
            bias = bias[0]
        if bias.ndim == 1:
            return F.linear(h, weight, bias)
        return torch.addmm(bias, h, weight.t())

    def pre_t(self, inputs: torch.Tensor, theta_part: torch.Tensor) -> torch.Tensor:
        """The first joint pre-activation with events as columns, (1 + first_out, N) after a
        row of ones (what :meth:`ConditionalGMMNet.mixture_t` takes), for frozen weights and
        no graph: ``inputs`` (1 + D, N) a row of ones and the scaled inputs as columns (this
        network reads the first 1 + n_inputs rows), ``theta_part`` (1, first_out) shared or
        (N, first_out) per event. A shared θ part is folded into the joint layer's bias
        column; a network without inputs then gives one column (its output is θ's alone)."""
        n = inputs.shape[1]
        width = self.joint.out_features
        joint = _cached(self.joint, [self.joint.weight, self.joint.bias], inputs.dtype,
                        lambda: torch.cat([self.joint.bias[:, None],
                                           self.joint.weight[:, self.width_theta:]],
                                          1).to(inputs.dtype), "inputs_t")
        shared = theta_part.shape[0] == 1
        if shared:
            joint = joint.clone()
            joint[:, 0] += theta_part[0]
        if self.input_branch is None:
            if shared:
                out = ones_row(width, 1, inputs)
                out[1:, 0] = joint[:, 0]
                return out
            out = ones_row(width, n, inputs)
            torch.add(joint[:, :1], theta_part.t(), out=out[1:])
            return out
        h = ones_row(self.input_branch.out_features, n, inputs)
        torch.mm(_augmented(self.input_branch, inputs.dtype), inputs[:1 + self.n_inputs],
                 out=h[1:])
        self._act_fresh(h[1:])
        out = ones_row(width, n, inputs)
        torch.mm(joint, h, out=out[1:])
        if not shared:
            out[1:].add_(theta_part.t())
        return out


class ConditionalGMMNet(_BranchedNet):
    """Network i of the chain: (θ', u'_<i) → mixture of N_G Gaussians for u_i.

    Arguments:
        n_theta: number of parameters Nθ; n_inputs: number of earlier observables i.
        n_gauss, A1, A2, B1, B2, C, D, s_f, s_mu, s_sigma, f_sigma, eps: paper Table 6 knobs.
        u_lo, u_hi: the latent box of this observable.

    Example:
        >>> net = ConditionalGMMNet(2, 1, u_lo=-5.0, u_hi=5.0)
        >>> log_f, mu, sigma = net.mixture(net.theta_part(torch.zeros(1, 2))
        ...                                + net.input_part(torch.zeros(3, 1)))
        >>> tuple(mu.shape)
        (3, 20)
    """

    def __init__(self, n_theta: int, n_inputs: int, *, u_lo: float, u_hi: float,
                 n_gauss: int = 20, A1: int = 50, A2: int = 0, B1: int = 50, B2: int = 20,
                 C: int = 2, D: int = 3, s_f: float = 0.01, s_mu: float = 0.01,
                 s_sigma: float = 0.01, f_sigma: float = 0.25, eps: float = 1e-4,
                 activation: str = "leaky_relu") -> None:
        width_theta = A1 + A2 * n_theta
        width_inputs = B1 + B2 * n_inputs
        width = (width_theta if n_theta > 0 else 0) + (width_inputs if n_inputs > 0 else 0)
        if width == 0:
            # unconditional first observable: the joint layer has no inputs, its bias (a
            # learned constant of width A1) feeds the trunk
            width = A1
        head_width = D * n_gauss
        first_out = width if C > 0 else 3 * head_width
        super().__init__(n_theta, n_inputs, width_theta, width_inputs, first_out, activation)
        self.trunk = nn.ModuleList(nn.Linear(width, width) for _ in range(max(C - 1, 0)))
        self.head_hidden = nn.Linear(width, 3 * head_width) if C > 0 else None
        self.heads = nn.ModuleList(nn.Linear(head_width, n_gauss) for _ in range(3))
        for layer in [*self.trunk, *self.heads]:
            init_linear(layer, first=False)
        if self.head_hidden is not None:
            init_linear(self.head_hidden, first=False)
        self.n_gauss = n_gauss
        self.head_width = head_width
        self.s_f, self.s_mu, self.s_sigma, self.eps = s_f, s_mu, s_sigma, eps
        w0 = f_sigma * (u_hi - u_lo) / n_gauss
        self.sigma_offset = w0 + math.log(-math.expm1(-w0))  # softplus⁻¹(w0), stable
        self.register_buffer(
            "centers", torch.linspace(u_lo, u_hi, n_gauss, dtype=torch.float64), persistent=False
        )

    def _folded_heads(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The three heads as one batched product, their output maps folded in: weights
        (3, D·N_G, N_G) and biases (3, 1, N_G) such that ``baddbmm(b, z, w)`` gives the
        pre-activations of log f = log_softmax(·), μ = (·) and σ = softplus(·) + ε directly
        (W' = s·W; b' = s·b, plus the evenly spaced centres for μ and softplus⁻¹(w0) for σ).
        For frozen weights only: cached until they change."""
        def build() -> tuple[torch.Tensor, torch.Tensor]:
            head_f, head_mu, head_s = self.heads
            scales = (self.s_f, self.s_mu, self.s_sigma)
            weight = torch.stack([head.weight.to(dtype).t() * scale
                                  for head, scale in zip(self.heads, scales)])
            bias = torch.stack([head_f.bias.to(dtype) * self.s_f,
                                head_mu.bias.to(dtype) * self.s_mu + self.centers.to(dtype),
                                head_s.bias.to(dtype) * self.s_sigma + self.sigma_offset])
            bias = bias.unsqueeze(1)
            pad = (-self.n_gauss) % _HEAD_COLUMNS.get(dtype, 1)
            if pad:  # zero columns: a product whose width suits the BLAS kernels
                weight, bias = F.pad(weight, (0, pad)), F.pad(bias, (0, pad))
            return weight, bias

        return _cached(self, self._head_tensors(), dtype, build, "heads")

    def _folded_heads_t(self, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`_folded_heads` for events as columns: weights (3, N_G, D·N_G) and biases
        (3, N_G, 1), unpadded (the events are the long side of the product)."""
        def build() -> tuple[torch.Tensor, torch.Tensor]:
            weight, bias = self._folded_heads(dtype)
            g = self.n_gauss
            return (weight[..., :g].transpose(1, 2).contiguous(),
                    bias[..., :g].transpose(1, 2).contiguous())

        return _cached(self, self._head_tensors(), dtype, build, "heads_t")

    def mixture_t(self, pre: torch.Tensor, raw_widths: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`mixture` with events as columns, for frozen weights (a likelihood's or a
        sampler's networks): ``pre`` (1 + first_out, N), a row of ones and the first joint
        pre-activation (:func:`ones_row`, :meth:`pre_t`) → log amplitudes, means and widths
        (``raw_widths``: their pre-activations), each (N_G, N).

        Without a graph, ``pre`` is a temporary the caller does not keep: every layer is one
        matrix product with its bias as an extra weight column (:func:`_augmented`), written
        into the next such tensor and activated in place; reductions over the components run
        along the first axis, across events. With a graph (θ gradients, Hessians) each layer
        is an ``addmm`` whose result is activated as in :meth:`_act_fresh`.
        """
        out = self.heads_t(pre)
        log_f = torch.log_softmax(out[0], dim=0)
        return log_f, out[1], out[2] if raw_widths else self.widths(out[2])

    def heads_t(self, pre: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """The folded heads' outputs of :meth:`mixture_t` before their last maps: (3, N_G,
        N), the pre-activations of log f (a softmax away), μ and σ (a softplus away); written
        into ``out`` if given (no graph)."""
        layers = [*self.trunk, *([self.head_hidden] if self.head_hidden is not None else [])]
        if records_graph(pre):
            h = self._act(pre[1:])
            for layer in layers:
                w, b = _cast(layer, pre.dtype)
                h = self._act_fresh(torch.addmm(b[:, None], w, h))
        else:
            h = pre
            self._act_fresh(h[1:])
            for layer in layers:
                wa = _augmented(layer, pre.dtype)
                nxt = ones_row(wa.shape[0], h.shape[1], h)
                torch.mm(wa, h, out=nxt[1:])
                self._act_fresh(nxt[1:])
                h = nxt
            h = h[1:]
        weight, bias = self._folded_heads_t(pre.dtype)
        z = h.view(3, self.head_width, h.shape[1])
        if out is None:
            return torch.baddbmm(bias, weight, z)
        return torch.baddbmm(bias, weight, z, out=out)

    def _head_tensors(self) -> list[torch.Tensor]:
        return [t for head in self.heads for t in (head.weight, head.bias)]

    def widths(self, raw: torch.Tensor) -> torch.Tensor:
        """σ = softplus(raw) + ε from the width pre-activations ``mixture(raw_widths=True)``
        returns."""
        sigma = F.softplus(raw)
        return sigma + self.eps if records_graph(sigma) else sigma.add_(self.eps)

    def mixture(self, pre: torch.Tensor, fresh: bool = False, raw_widths: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """First joint pre-activation (..., first_out) → (log amplitudes, means, widths).

        ``fresh``: ``pre`` is a temporary the caller does not keep (activated in place).
        ``raw_widths``: the widths' pre-activations instead (:meth:`widths` maps them), for a
        caller that needs the widths of a few components only (sampling)."""
        h = self._act_fresh(pre) if fresh else self._act(pre)
        for layer in self.trunk:
            h = self._act_fresh(_linear(layer, h))
        if self.head_hidden is not None:
            h = self._act_fresh(_linear(self.head_hidden, h))
        if not _frozen(*self._head_tensors()):
            # training: three products and the output maps as written (fewer autograd nodes
            # than folding the maps into the weights at every step)
            z_f, z_mu, z_sigma = (_linear(head, z) for head, z in
                                  zip(self.heads, h.split(self.head_width, dim=-1)))
            log_f = torch.log_softmax(self.s_f * z_f, dim=-1)
            mu = self.s_mu * z_mu + self.centers.to(h.dtype)
            raw = self.s_sigma * z_sigma + self.sigma_offset
            return log_f, mu, raw if raw_widths else self.widths(raw)
        # frozen weights: the three heads read column blocks of h, as one batched product
        # over strided views, with the output maps folded into the (cached) weights
        lead = h.shape[:-1]
        z = h.reshape(-1, 3, self.head_width).transpose(0, 1)
        weight, bias = self._folded_heads(h.dtype)
        out = torch.baddbmm(bias, z, weight)
        if out.shape[-1] != self.n_gauss:  # padded: the components' columns, contiguous
            out = out[..., :self.n_gauss].contiguous()
        out = out.reshape(3, *lead, self.n_gauss)
        log_f = torch.log_softmax(out[0], dim=-1)
        sigma = out[2] if raw_widths else self.widths(out[2])
        return log_f, out[1], sigma


class CategoricalNet(_BranchedNet):
    """Network for a discrete observable with ``n_classes`` values: softmax over the values.

    Same θ and input branches as :class:`ConditionalGMMNet`, then hidden layers (paper
    Section 4 uses e.g. 300 and 200 units) with LeakyReLU and a linear layer to the logits.
    """

    def __init__(self, n_theta: int, n_inputs: int, n_classes: int, *, A1: int = 50,
                 A2: int = 0, B1: int = 50, B2: int = 20,
                 hidden: tuple[int, ...] = (300, 200), activation: str = "leaky_relu") -> None:
        if not hidden:
            raise ValueError("a categorical network needs at least one hidden layer")
        width_theta = A1 + A2 * n_theta
        width_inputs = B1 + B2 * n_inputs
        super().__init__(n_theta, n_inputs, width_theta, width_inputs, hidden[0], activation)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(hidden))
        self.out = nn.Linear(hidden[-1], n_classes)
        for layer in [*self.hidden, self.out]:
            init_linear(layer, first=False)
        self.n_classes = n_classes

    def log_probs(self, pre: torch.Tensor, fresh: bool = False) -> torch.Tensor:
        """First joint pre-activation (..., hidden[0]) → log class probabilities (..., K).

        ``fresh``: ``pre`` is a temporary the caller does not keep (activated in place)."""
        h = self._act_fresh(pre) if fresh else self._act(pre)
        for layer in self.hidden:
            h = self._act_fresh(_linear(layer, h))
        return torch.log_softmax(_linear(self.out, h), dim=-1)
