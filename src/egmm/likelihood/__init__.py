"""Likelihood terms: densities and yields as components, unbinned and pyhf costs for iminuit."""

from egmm.likelihood.components import (
    Component,
    CrossSection,
    HistTemplate,
    QuadraticFit,
    TorchDensity,
    Yield,
)
from egmm.likelihood.cost import ExtendedUnbinnedNLL, UnbinnedNLL
from egmm.likelihood.pyhf import PyhfCost

__all__ = [
    "Component",
    "CrossSection",
    "ExtendedUnbinnedNLL",
    "HistTemplate",
    "PyhfCost",
    "QuadraticFit",
    "TorchDensity",
    "UnbinnedNLL",
    "Yield",
]
