"""Counts and sizes given as fractions, bools or below their minimum raise InputError naming
the argument; before, int() had truncated them (or, for some, a negative count had been taken
as none: an untrained cross-section network, no validation batches)."""

from __future__ import annotations

import numpy as np
import pytest
from iminuit.cost import NormalConstraint

from egmm import CrossSection, InputError, UnbinnedNLL
from egmm.base import whole_number
from egmm.infer import AsymptoticCalculator, contour, coverage, fit, toy_teststats
from test_coverage import NORMAL, normal_cost, normal_data


def test_whole_number():
    assert whole_number(3, "n") == 3 and whole_number(np.int64(4), "n") == 4
    assert whole_number(1e3, "n") == 1000 and whole_number(0, "n", 0) == 0
    for bad in (2.5, float("nan"), float("inf"), "3", True, None, [2]):
        with pytest.raises(InputError, match="n must be a whole number"):
            whole_number(bad, "n")
    with pytest.raises(InputError, match="n must be ≥ 1, got 0"):
        whole_number(0, "n")


def test_user_counts_are_refused_not_truncated():
    x = normal_data(np.random.default_rng(0))
    cost = normal_cost(x)
    with pytest.raises(InputError, match="sample: n"):
        NORMAL.sample(2.7, {"mu": 0.0, "sigma": 1.0}, seed=1)
    with pytest.raises(InputError, match="chunk_size"):
        UnbinnedNLL(x, NORMAL, chunk_size=2.9)
    with pytest.raises(InputError, match="coverage: n_events"):
        coverage(NORMAL, normal_cost, {"mu": 1.0, "sigma": 2.0}, ntoys=3, seed=1,
                 n_events=50.9, executor="serial")
    with pytest.raises(InputError, match="stream"):
        toy_teststats(cost, {"mu": 1.0, "sigma": 2.0}, "mu", 1.0, ntoys=2, seed=1,
                      stream=1.5, executor="serial", progress=False)
    with pytest.raises(InputError, match="strategy must be 0, 1 or 2"):
        fit(cost, strategy=3)
    with pytest.raises(InputError, match="strategy must be a whole number"):
        toy_teststats(cost, {"mu": 1.0, "sigma": 2.0}, "mu", 1.0, ntoys=2, seed=1,
                      strategy=1.9, executor="serial", progress=False)
    with pytest.raises(InputError, match="fit: retries"):
        fit(cost, retries=-3)
    with pytest.raises(InputError, match="fit: ncall"):
        fit(cost, ncall=100.5)
    constraint = NormalConstraint(["a", "b"], [0.0, 0.0], [1.0, 1.0])
    with pytest.raises(InputError, match="contour: size"):
        contour(constraint, "a", "b", size=20.9)
    with pytest.raises(InputError, match="asimov_size"):
        AsymptoticCalculator(constraint, "a", asimov_size=1000.9)
    pts = np.array([[0.0], [0.5], [1.0]])
    with pytest.raises(InputError, match="epochs"):
        CrossSection.regression(pts, [1.0, 2.0, 3.0], parameters=("a",), epochs=-5)
    with pytest.raises(InputError, match="hidden width"):
        CrossSection.regression(pts, [1.0, 2.0, 3.0], parameters=("a",), hidden=(32.7,))


def test_validation_counts_are_refused_not_truncated():
    from egmm import validation as ev

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(200, 2)), rng.normal(size=(200, 2))
    with pytest.raises(InputError, match="c2st: folds"):
        ev.c2st(x, y, folds=2.9)
    with pytest.raises(InputError, match="c2st: max_events must be ≥ 1"):  # 0 was "no cap"
        ev.c2st(x, y, max_events=0)
