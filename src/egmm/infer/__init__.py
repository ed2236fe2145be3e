"""Inference on egmm costs: fits, profile scans, contours (−2 ln L convention, iminuit cl)."""

from egmm.infer.fit import FitResult, Retry, fit, start_values
from egmm.infer.profile import ProfileResult, contour, profile, wilks_threshold

__all__ = [
    "FitResult",
    "ProfileResult",
    "Retry",
    "contour",
    "fit",
    "profile",
    "start_values",
    "wilks_threshold",
]
