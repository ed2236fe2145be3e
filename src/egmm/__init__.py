"""egmm: neural density models as unbinned likelihood terms for iminuit.

The public names (the README documents them; `help(egmm.infer)` for inference).
"""

from egmm import infer
from egmm.base import DensityModel
from egmm.density import GMMDensity
from egmm.ensemble import EnsembleDensity
from egmm.errors import EgmmError, InputError, ModelFileError, ParameterError, TrainingError
from egmm.flows import FlowDensity
from egmm.latent import LatentProjection
from egmm.likelihood import (
    Component,
    CrossSection,
    ExtendedUnbinnedNLL,
    HistTemplate,
    PyhfCost,
    QuadraticFit,
    TorchDensity,
    UnbinnedNLL,
    Yield,
)
from egmm.observables import Observable, ObservableSpace
from egmm.serialization import load_model
from egmm.training import TrainingHistory, train

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    # egmm.validation needs matplotlib, mplhep and scikit-learn: imported on first use, so
    # that ``import egmm`` stays light
    if name == "validation":
        import importlib

        return importlib.import_module("egmm.validation")
    raise AttributeError(f"module 'egmm' has no attribute {name!r}")

__all__ = [
    "Component",
    "CrossSection",
    "DensityModel",
    "EgmmError",
    "EnsembleDensity",
    "ExtendedUnbinnedNLL",
    "FlowDensity",
    "GMMDensity",
    "HistTemplate",
    "InputError",
    "LatentProjection",
    "ModelFileError",
    "Observable",
    "ObservableSpace",
    "ParameterError",
    "PyhfCost",
    "QuadraticFit",
    "TorchDensity",
    "TrainingError",
    "TrainingHistory",
    "UnbinnedNLL",
    "Yield",
    "__version__",
    "infer",
    "load_model",
    "train",
    "validation",
]
