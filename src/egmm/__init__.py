"""egmm: neural density models as unbinned likelihood terms for iminuit.

The public names; see DESIGN.md for the contract.
"""

from egmm.base import DensityModel
from egmm.density import GMMDensity
from egmm.errors import EgmmError, InputError, ModelFileError, ParameterError
from egmm.flows import FlowDensity
from egmm.latent import LatentProjection
from egmm.observables import Observable, ObservableSpace
from egmm.training import TrainingHistory, train

__version__ = "0.1.0"

__all__ = [
    "DensityModel",
    "EgmmError",
    "FlowDensity",
    "GMMDensity",
    "InputError",
    "LatentProjection",
    "ModelFileError",
    "Observable",
    "ObservableSpace",
    "ParameterError",
    "TrainingHistory",
    "__version__",
    "train",
]
