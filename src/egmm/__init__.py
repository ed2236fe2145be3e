"""egmm: neural density models as unbinned likelihood terms for iminuit."""

from egmm.errors import EgmmError, InputError, ModelFileError, ParameterError
from egmm.observables import Observable, ObservableSpace

__version__ = "0.1.0"

__all__ = [
    "EgmmError",
    "InputError",
    "ModelFileError",
    "Observable",
    "ObservableSpace",
    "ParameterError",
    "__version__",
]
