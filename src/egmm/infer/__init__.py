"""Inference on egmm costs: fits, profile scans, contours (−2 ln L convention, iminuit cl);
test statistics, toys, CLs limits, Neyman/Feldman–Cousins intervals, coverage (pyhf names)."""

from egmm.infer.calculators import (
    AsymptoticCalculator,
    EmpiricalDistribution,
    ToyCalculator,
    hypotest,
)
from egmm.infer.coverage import CoverageResult, coverage
from egmm.infer.fit import (
    FitResult,
    Retry,
    asymptotic_covariance,
    exact_hessian,
    fit,
    make_minuit,
    start_values,
)
from egmm.infer.intervals import (
    NeymanInterval,
    NeymanRegion2D,
    feldman_cousins,
    neyman_interval,
    neyman_region_2d,
    upper_limit,
)
from egmm.infer.parallel import ToyStore, local_executor
from egmm.infer.profile import ProfileResult, contour, profile, wilks_threshold
from egmm.infer.teststats import (
    TEST_STATISTICS,
    TestStatFits,
    q0,
    qmu,
    qmu_tilde,
    tmu,
    tmu_tilde,
)
from egmm.infer.toys import ToyTestStats, asimov_cost, sample_toy, toy_seed, toy_teststats

__all__ = [
    "TEST_STATISTICS",
    "AsymptoticCalculator",
    "CoverageResult",
    "EmpiricalDistribution",
    "FitResult",
    "NeymanInterval",
    "NeymanRegion2D",
    "ProfileResult",
    "Retry",
    "TestStatFits",
    "ToyCalculator",
    "ToyStore",
    "ToyTestStats",
    "asimov_cost",
    "asymptotic_covariance",
    "contour",
    "coverage",
    "exact_hessian",
    "feldman_cousins",
    "fit",
    "hypotest",
    "local_executor",
    "make_minuit",
    "neyman_interval",
    "neyman_region_2d",
    "profile",
    "q0",
    "qmu",
    "qmu_tilde",
    "sample_toy",
    "start_values",
    "tmu",
    "tmu_tilde",
    "toy_seed",
    "toy_teststats",
    "upper_limit",
    "wilks_threshold",
]

from egmm.infer.batched import BatchedFitResult, fit_batched

__all__ += ["BatchedFitResult", "fit_batched"]
