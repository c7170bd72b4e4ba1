"""bnflow's vocabulary: the names every floor shares (models, variants, layer counts, claim terms).

The bottom floor of the package: it imports nothing from bnflow, so config, models, stats and figures can all read
it without importing each other. Names are spelled here once, as params.yaml, run ids and figures spell them.
"""

from __future__ import annotations

import re

MODELS = ("vgg", "vgg_cpu", "dln", "resnet")
"""Model families a grid cell can train (train.grid.*.model): the paper-scale VGG, the reduced-scale VGG of
PROTOCOL §10 (`vgg_cpu`: the same protocol at a CPU-sized width and step budget), the DLN, and the ResNet beyond
the paper (issue 17)."""

PAPER_VARIANTS = ("standard", "bn", "noisy_bn", "noisy_standard", "l1", "l2", "linf")
"""The normalisation variants of the paper (STYLE.md §6)."""

VARIANTS = (*PAPER_VARIANTS, "group_norm", "layer_norm", "weight_norm", "batch_norm_no_affine")
"""Built-in normalisation variants (train.grid.*.variant): the paper's, then four beyond it (issue 17, defined in
bnflow/models/norms.py). A grid cell may also name a plug-in variant of train.plugins."""

VARIANT_NAME = re.compile(r"^[a-z0-9_]+$")
"""How a variant may be spelled (built-in or plug-in): it is the {variant} part of CELL_ID and of run ids."""

DLN_VARIANTS = ("standard", "bn", "l1", "l2", "linf")
"""Variants the paper trains on the deep linear network (PROTOCOL §6)."""

CLASSIFIERS = ("vgg", "vgg_cpu", "resnet")
"""Models that classify images: they have accuracies, a test set and a prepared dataset (the DLN has none)."""

CELL_ID = re.compile(r"^(?P<model>[a-z0-9_]+)-(?P<variant>[a-z0-9_]+)-lr(?P<lr>[0-9.e+-]+)$")
"""A grid cell id, {model}-{variant}-lr{lr}."""

CELL_WILDCARD = r"[a-z0-9_]+-[a-z0-9_]+-lr[0-9.e+-]+"
"""CELL_ID without its named groups: the Snakemake wildcard constraint of {cell} (no shell text, no path parts)."""

# Channel counts per conv layer, "M" = 2x2 max-pool (VGG configurations D and A, PROTOCOL §2).
VGG_LAYERS = {"vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
              "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")}


def vgg_depth(arch: str) -> int:
    """Number of conv layers (layer #1..#depth) of a VGG architecture."""
    return sum(1 for c in VGG_LAYERS[arch] if c != "M")


RESNET_DEPTHS = (8, 14, 20, 32, 44, 56, 110)
"""CIFAR ResNet depths 6n + 2 (He et al. 2016, §4.2): n basic blocks per stage, 3 stages; 20 is the default."""

RESNET_STAGE_WIDTHS = (16, 32, 64)
"""Channels of the CIFAR ResNet's three stages before train.resnet.width_mult (He et al. 2016, §4.2). Params
validation tries plug-ins at these widths without importing the models; bnflow/models/resnet.py still spells its own
STAGE_WIDTHS (a DVC dependency of committed results: it reads this one when they are next re-run), and
tests/test_architecture.py keeps the two equal."""


def resnet_conv_layers(depth: int) -> int:
    """Number of conv layers (layer #1..#(depth - 1)) of a CIFAR ResNet: the stem and 2 per basic block; the
    classifier is the last of its `depth` weight layers and is not numbered (as VGG's)."""
    return depth - 1


def format_lr(lr: float) -> str:
    """The lr as it appears in cell and run ids: Python's shortest general format (0.1, 1e-06)."""
    return format(lr, "g")


# ------------------------------------------------------------------------------------------------- claims (STATS.md)
CHANCE = "chance"
"""arm_b of a claim that compares one arm with chance accuracy (its `reference`, e.g. 0.1 for 10 classes)."""

REFERENCE_ARMS = {
    # arm_b names that stand for a constant (the claim's `reference`) instead of a variant, and how a sentence reads
    # them. "2/lr" is the edge of stability: edge_ratio = lr·λ_max/2 equals 1 when λ_max = 2/lr (never "chance").
    CHANCE: "chance accuracy",
    "2/lr": "the edge of stability, λ_max = 2/lr",
}

_PAPER_FAMILIES = {"primary": "holm", "secondary_noisy": "bh", "secondary_lp": "bh", "secondary_lr": "bh",
                   "secondary_layer": "bh", "secondary_checkpoint": "bh", "early": "holm", "exploratory": "none"}
FAMILY_METHODS = {
    # claims family -> multiplicity adjustment within it (STATS.md "Tests and decisions", "Registry v3 additions"):
    # holm (family-wise error: the confirmatory families), bh (Benjamini-Hochberg, false discovery rate: secondary
    # families), none (exploratory and post hoc claims: never adjusted). Every VGG family has a reduced-scale twin
    # (suffix _cpu, PROTOCOL §10) adjusted the same way but on its own: a paper-scale p never shares a family with a
    # reduced-scale one.
    **_PAPER_FAMILIES,
    **{f"{family}_cpu": method for family, method in _PAPER_FAMILIES.items()},
    "secondary_dln": "bh",
    "dln_early": "holm",  # v3: the DLN's early-window claims, confirmed on fresh seeds 5-19
    "post_hoc": "none",  # v3: the look at seeds 0-4 that generated dln_early; it can never confirm anything
}
CLAIM_FAMILIES = tuple(FAMILY_METHODS)
"""The families a claim may name (claims[*].family); FAMILY_METHODS says how each is adjusted."""
POST_HOC = "post_hoc"
"""The family (and verdict word) of a claim generated by a look at the data: never adjusted, never supported."""
CLAIM_TYPES = ("superiority", "non_inferiority", "equivalence")
CLAIM_DIRECTIONS = ("lower", "higher")
CLAIM_SCALES = ("ratio", "difference")
CLAIM_VERDICTS = ("supported", "contradicted", "not_reproduced", "inconclusive", "not_run_yet", "post_hoc")
"""STATS.md "Verdicts"; not_reproduced exists only for superiority claims (their CI inside the sesoi band); post_hoc
is the verdict of every evaluated claim of the post_hoc family (its numbers are shown, never read as support)."""

CLAIM_METRICS = {
    # per-run summary (runs.csv column, defined in bnflow/summarize.py and STATS.md) -> (kind, scale, models it is
    # measured for). kind: "log" (values are natural logs: differences are log ratios), "positive" (values > 0,
    # compared as log ratios; +inf = a diverged run, ranked worst), "censored_time" (steps capped at the budget:
    # per-seed log ratios, restricted-mean ratio reported), "continuous" (difference of means), "binary" (0/1:
    # difference of proportions). Accuracy metrics exist for image classifiers only; the others for every model.
    "steps_to_acc90": ("censored_time", "ratio", CLASSIFIERS),
    "reached_acc90": ("binary", "difference", CLASSIFIERS),
    "train_acc_auc": ("continuous", "difference", CLASSIFIERS),
    "final_train_acc": ("continuous", "difference", CLASSIFIERS),
    "final_test_acc": ("continuous", "difference", CLASSIFIERS),
    "final_train_loss": ("positive", "ratio", MODELS),
    "train_loss_auc_log": ("log", "ratio", MODELS),
    "loss_band_log": ("log", "ratio", MODELS),
    "grad_change_log": ("log", "ratio", MODELS),
    "beta_q90_log": ("log", "ratio", MODELS),
    "ics_rel_log": ("log", "ratio", MODELS),
    "ics_cos": ("continuous", "difference", MODELS),
    "act_drift_log": ("log", "ratio", MODELS),
    # beyond the paper (PROTOCOL §8): lr·λ_max/2 averaged over checkpoints after warm-up; 1 = edge of stability
    "edge_ratio": ("continuous", "difference", MODELS),
    # registry v3: log of the largest value over the first summarize.early_fraction of the run (the spikes)
    "band_peak_early_log": ("log", "ratio", MODELS),
    "grad_change_peak_early_log": ("log", "ratio", MODELS),
    "beta_peak_early_log": ("log", "ratio", MODELS),
}
