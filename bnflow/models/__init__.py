"""Networks (VGG, deep linear net, CIFAR ResNet) and normalisation layers, with the norm variant as a parameter."""

from bnflow.models.dln import DLN, build_dln, dln_loss, make_dln_data
from bnflow.models.norms import (
    NORMS,
    ActivationNoise,
    LpNorm,
    NoiseSpec,
    NormFactory,
    group_count,
    make_norm,
    noise_modules,
    normalises_activations,
    set_noise_generator,
    weight_normalise_,
)
from bnflow.models.resnet import ResNet, build_resnet
from bnflow.models.vgg import VGG, VGG_CONFIGS, build_vgg, glorot_init_

__all__ = [
    "DLN",
    "NORMS",
    "VGG",
    "VGG_CONFIGS",
    "ActivationNoise",
    "LpNorm",
    "NoiseSpec",
    "NormFactory",
    "ResNet",
    "build_dln",
    "build_resnet",
    "build_vgg",
    "dln_loss",
    "glorot_init_",
    "group_count",
    "make_dln_data",
    "make_norm",
    "noise_modules",
    "normalises_activations",
    "set_noise_generator",
    "weight_normalise_",
]
