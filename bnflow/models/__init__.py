"""Networks (VGG, deep linear net) and normalisation layers, with the norm variant as a parameter."""

from bnflow.models.dln import DLN, build_dln, dln_loss, make_dln_data
from bnflow.models.norms import (
    NORMS,
    ActivationNoise,
    LpNorm,
    NoiseSpec,
    make_norm,
    noise_modules,
    set_noise_generator,
)
from bnflow.models.vgg import VGG, VGG_CONFIGS, build_vgg, glorot_init_

__all__ = [
    "DLN",
    "NORMS",
    "VGG",
    "VGG_CONFIGS",
    "ActivationNoise",
    "LpNorm",
    "NoiseSpec",
    "build_dln",
    "build_vgg",
    "dln_loss",
    "glorot_init_",
    "make_dln_data",
    "make_norm",
    "noise_modules",
    "set_noise_generator",
]
