"""bnflow's vocabulary: the names every floor shares (models, variants, layer counts, claim terms).

The bottom floor of the package: it imports nothing from bnflow, so config, models, stats and figures can all read
it without importing each other. Names are spelled here once, as params.yaml, run ids and figures spell them.
"""

from __future__ import annotations

import re

MODELS = ("vgg", "dln")
"""Model families a grid cell can train (train.grid.*.model)."""

VARIANTS = ("standard", "bn", "noisy_bn", "noisy_standard", "l1", "l2", "linf")
"""Normalisation variants (train.grid.*.variant), STYLE.md §6."""

DLN_VARIANTS = ("standard", "bn", "l1", "l2", "linf")
"""Variants the paper trains on the deep linear network (PROTOCOL §6)."""

CLASSIFIERS = ("vgg",)
"""Models that classify images: they have accuracies, a test set and a prepared dataset (the DLN has none)."""

CELL_ID = re.compile(r"^(?P<model>[a-z0-9]+)-(?P<variant>[a-z0-9_]+)-lr(?P<lr>[0-9.e+-]+)$")
"""A grid cell id, {model}-{variant}-lr{lr}; also the Snakemake wildcard constraint of {cell}."""

# Channel counts per conv layer, "M" = 2x2 max-pool (VGG configurations D and A, PROTOCOL §2).
VGG_LAYERS = {"vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
              "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")}


def vgg_depth(arch: str) -> int:
    """Number of conv layers (layer #1..#depth) of a VGG architecture."""
    return sum(1 for c in VGG_LAYERS[arch] if c != "M")


def format_lr(lr: float) -> str:
    """The lr as it appears in cell and run ids: Python's shortest general format (0.1, 1e-06)."""
    return format(lr, "g")


# ------------------------------------------------------------------------------------------------- claims (STATS.md)
CHANCE = "chance"
"""arm_b of a claim that compares one arm with a constant (its `reference`)."""

CLAIM_FAMILIES = ("primary", "secondary_noisy", "secondary_lr", "secondary_lp", "secondary_dln", "secondary_layer",
                  "secondary_checkpoint", "secondary_control", "exploratory")
CLAIM_TYPES = ("superiority", "non_inferiority", "equivalence")
CLAIM_DIRECTIONS = ("lower", "higher")
CLAIM_SCALES = ("ratio", "difference")

CLAIM_METRICS = {
    # per-run summary (runs.csv column) -> (kind, scale, models it is measured for). kind: "log" (values are natural
    # logs: differences are log ratios), "censored_time" (steps capped at the budget: log restricted-mean ratio),
    # "continuous" (difference of means), "binary" (0/1: difference of proportions).
    "steps_to_acc90": ("censored_time", "ratio", ("vgg",)),
    "train_acc_auc": ("continuous", "difference", ("vgg",)),
    "final_train_acc": ("continuous", "difference", ("vgg",)),
    "final_test_acc": ("continuous", "difference", ("vgg",)),
    "loss_range_log": ("log", "ratio", ("vgg", "dln")),
    "grad_change_log": ("log", "ratio", ("vgg", "dln")),
    "beta_smooth_log": ("log", "ratio", ("vgg", "dln")),
    "ics_rel_log": ("log", "ratio", ("vgg", "dln")),
    "ics_cos": ("continuous", "difference", ("vgg", "dln")),
    "reached_acc90": ("binary", "difference", ("vgg",)),
    # beyond the paper (PROTOCOL §8): lr·λ_max/2 averaged over checkpoints after warm-up; 1 = edge of stability
    "edge_ratio": ("continuous", "difference", ("vgg", "dln")),
}
