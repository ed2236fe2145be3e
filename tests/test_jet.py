"""Forward-mode jets for yield functions: exact against torch autograd, refusal of what they
do not cover, and the fixed-shape cost's use of them (with the autograd fallback)."""

import math

import numpy as np
import pytest
import torch

from egmm import ExtendedUnbinnedNLL
from egmm.likelihood import Component, CrossSection, TorchDensity, Yield
from egmm.likelihood._jet import Jet, Unsupported, as_jet
from egmm.observables import Observable, ObservableSpace

F64 = torch.float64

FUNCTIONS = {
    "linear": lambda a, b: 20.0 * a + b - 3,
    "rational": lambda a, b: a * b / (1 + a) - 2.0 / b,
    "exp_log_sqrt": lambda a, b: torch.exp(a) * b**2 - torch.log(b) + torch.sqrt(a * b),
    "powers": lambda a, b: a**2.5 * b**3 + 2.0**a + a**b - b**-1.5,
    "smooth": lambda a, b: torch.sigmoid(b) * torch.tanh(a) - torch.sin(b) * torch.cos(a),
    "tensor_constants": lambda a, b: torch.tensor(2.0, dtype=F64) * a
    - torch.tensor(1.5, dtype=F64) / b + torch.tensor(0.5, dtype=F64) ** a,
    "torch_functions": lambda a, b: torch.log1p(a) + torch.expm1(b) + torch.square(a)
    + torch.reciprocal(b) + torch.special.expit(a) + torch.mul(a, b) - torch.sub(b, a)
    + torch.div(a, b) + torch.pow(b, 2.0) + torch.neg(a) + torch.add(a, 1.0),
    "methods": lambda a, b: a.exp() * b.log() + a.square() - b.sqrt() + a.reciprocal(),
    "branch": lambda a, b: a * b if a > b else 2.0 * a - b,
}


def autograd_derivatives(fn, at):
    x = torch.tensor(at, dtype=F64)

    def f(x):
        return fn(x[0], x[1])

    return (float(f(x)), torch.autograd.functional.jacobian(f, x).numpy(),
            torch.autograd.functional.hessian(f, x).numpy())


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
@pytest.mark.parametrize("at", [(0.7, 1.3), (1.9, 0.4)])
def test_jets_equal_autograd(name, at):
    """Value, gradient and Hessian to rounding, and lower orders carry no derivatives."""
    fn = FUNCTIONS[name]
    value, grad, hess = autograd_derivatives(fn, at)
    jet = fn(*Jet.variables(at, 2))
    assert jet.v == pytest.approx(value, rel=1e-14)
    np.testing.assert_allclose(jet.g, grad, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(jet.h, hess, rtol=1e-12, atol=1e-13)
    first = fn(*Jet.variables(at, 1))
    assert first.h is None
    np.testing.assert_allclose(first.g, grad, rtol=1e-13, atol=1e-14)
    plain = fn(*Jet.variables(at, 0))
    assert plain.g is None and plain.h is None and plain.v == jet.v


def test_jets_refuse_what_they_do_not_cover():
    a, b = Jet.variables([0.5, -1.0], 2)
    for bad in (lambda: torch.clamp(a, min=0.0), lambda: torch.log(b), lambda: b**0.5,
                lambda: torch.sqrt(b), lambda: a / 0.0, lambda: (-2.0) ** a,
                lambda: a * torch.ones(3), lambda: a * torch.ones((), requires_grad=True),
                lambda: torch.add(a, b, alpha=2.0)):
        with pytest.raises(Unsupported):
            bad()
    with pytest.raises(Unsupported):
        bool(a)
    with pytest.raises(TypeError):  # no float(): it would drop the derivatives silently
        float(a)
    with pytest.raises(TypeError):
        np.exp(a)
    assert (np.float64(2.0) * a).g.tolist() == [2.0, 0.0]
    with pytest.raises(AttributeError):
        a.detach()
    # a negative base to a positive integer power is fine
    assert (b**3).v == -1.0 and (b**3).g[1] == pytest.approx(3.0)
    assert as_jet(4.0, 2, 2).g.tolist() == [0.0, 0.0]


SPACE = ObservableSpace([Observable("x", 0.0, 10.0)])


def _cost(yield_, x):
    sig = TorchDensity(SPACE, lambda x: -0.5 * ((x[:, 0] - 5.0) / 0.5) ** 2, name="sig")
    bkg = TorchDensity(SPACE, lambda x: torch.full((len(x),), -math.log(10.0), dtype=F64),
                       name="bkg")
    return ExtendedUnbinnedNLL(x, [Component("sig", sig, yield_),
                                   Component("bkg", bkg, "n_bkg")])


def _yields():
    lumi = 40.0
    quad = CrossSection.quadratic([[-1, 0], [0, 0], [1, 0], [0, 1], [0, -1], [1, 1], [2, 1]],
                                  [3.0, 1.0, 2.0, 2.5, 1.5, 4.5, 9.0], parameters=("c1", "c2"))
    return {
        "function": (Yield.from_callable(lambda mu, k: 300.0 * mu * torch.exp(0.1 * k),
                                         ("mu", "k")), True),
        "algebra": (Yield.parameter("mu") * 200.0 + Yield.from_callable(
            lambda k: 5.0 * k**2, ("k",)), True),
        "quadratic": (quad * lumi, True),
        "clamp": (Yield.from_callable(lambda mu, k: torch.clamp(mu, min=0.0) * 250.0 + k,
                                      ("mu", "k")), False),
        "interpolated": (CrossSection.interpolate([0.0, 1.0, 2.0, 3.0], [100.0, 180.0, 300.0,
                                                                         330.0],
                                                  parameters=("mu",), kind="cubic"), False),
    }


@pytest.mark.parametrize("name", sorted(_yields()))
def test_cost_yields_by_jets_equal_autograd(name):
    """The fixed-shape cost's value, gradient and exact Hessian with yields by jets equal
    those with the yields by autograd; yields with operations jets do not cover fall back to
    autograd by themselves (and stay there)."""
    yield_, jets = _yields()[name]
    x = np.random.default_rng(3).uniform(0.0, 10.0, 300)
    cost = _cost(yield_, x)
    assert cost._shapes is not None
    names = list(cost._names)
    rng = np.random.default_rng(5)
    points = [np.array([rng.uniform(0.3, 1.5) if n != "n_bkg" else 280.0 for n in names])
              for _ in range(3)]
    results = [(cost(*p), cost.grad(p), cost.exact_hessian(*p)) for p in points]
    assert getattr(yield_, "_autograd_only", False) is (not jets)
    yield_._autograd_only = True
    reference = _cost(yield_, x)
    for p, (value, grad, hess) in zip(points, results):
        assert value == pytest.approx(reference(*p), rel=1e-14)
        np.testing.assert_allclose(grad, reference.grad(p), rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(hess, reference.exact_hessian(*p), rtol=1e-12, atol=1e-10)


def test_a_yield_is_evaluated_once_per_point():
    """The last point's yield (and derivatives) is kept: a fit whose yield parameters do not
    move calls the yield function once; a higher order than kept evaluates again."""
    calls = []

    def nu(mu):
        calls.append(mu)
        return 300.0 * mu

    cost = _cost(Yield.from_callable(nu, ("mu",)), np.linspace(0.5, 9.5, 50))
    for n_bkg in (40.0, 41.0, 42.0):
        cost(1.0, n_bkg)
    assert len(calls) == 1
    cost.grad([1.0, 40.0])
    cost.grad([1.0, 43.0])
    assert len(calls) == 2
    cost(1.5, 40.0)
    assert len(calls) == 3
