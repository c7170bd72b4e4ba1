"""Loss curvature (Hessian spectrum, batch sharpness) and numerical checks of the paper's Theorems 4.1/4.2.

Like the probes, everything runs in fp32 with TF32 off, keeps train-mode BN and leaves the model bit-identical.
"""

from bnflow.curvature.hessian import (
    CurvatureResult,
    EigResult,
    LossHessian,
    batch_sharpness,
    curvature_probe,
    flatten,
    gradient_in_top_subspace,
    hvp,
    top_eigenvalues,
    unflatten,
)
from bnflow.curvature.theorems import bn_layers, theorem41_check, theorem41_sides, theorem42_check

__all__ = [
    "CurvatureResult",
    "EigResult",
    "LossHessian",
    "batch_sharpness",
    "bn_layers",
    "curvature_probe",
    "flatten",
    "gradient_in_top_subspace",
    "hvp",
    "theorem41_check",
    "theorem41_sides",
    "theorem42_check",
    "top_eigenvalues",
    "unflatten",
]
