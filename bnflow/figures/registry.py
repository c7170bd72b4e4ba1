"""The figure registry: which paper figure is drawn by which function, what it shows, and which grid cells it draws.

`about` is the static part of every caption (Snakemake's report captions, workflow/report/figures.rst, are generated
from it); `need` says which grid cells a figure draws, so that on a partial grid it names the ones not run yet.
Titles never name layers: the layers drawn depend on params and data, and the figure functions put them in the
REPORT.md heading (Drawn.title).

A paper figure that draws VGG cells is listed once per VGG family (bnflow.figures.scales): the paper's scale under
the paper's file name, the reduced scale of PROTOCOL §10 beside it (`fig04_landscape_vgg_cpu`), the same function
with another `model`. Each is drawn from its own family's runs only, and a reduced-scale one names its scale in its
title (REPORT.md heading and the PNG's) and caption.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from bnflow.figures import activations, curvature, extra, ics, landscape, theorem, thresholds, training, variants
from bnflow.figures.common import LP_VARIANTS, PAPER_LRS, Drawn, Skip
from bnflow.figures.data import FigureData
from bnflow.figures.scales import PAPER_VGG, REDUCED, VGG_FAMILIES, not_run_reason, phrase_of, present_models, \
    scaled_name
from bnflow.figures.select import Need
from bnflow.figures.style import add_title

SB, SBN, SBLP = ("standard", "bn"), ("standard", "bn", "noisy_bn"), ("standard", "bn", *LP_VARIANTS)


@dataclass(frozen=True)
class FigureSpec:
    """One output figure.

    Args:
        name: file stem; paper: the paper's label; title: a short title (no rst markup, no layer numbers).
        about: what the figure shows, a few sentences that hold whatever the data (no data-dependent numbers).
        figure: the function drawing it, figure(data) or, with `model`, figure(data, model=model).
        need: the grid cells it draws (for "not run yet" notes on a partial grid).
        model: the VGG family a paper VGG figure draws (scales.VGG_FAMILIES); None for the others.
    """

    name: str
    paper: str
    title: str
    about: str
    figure: Callable[..., Drawn | Skip]
    need: Need
    model: str | None = None

    def draw(self, data: FigureData) -> Drawn | Skip:
        """The figure from `data`, or why not. A VGG figure whose family has no runs waits ("not run yet"; the
        paper's scale: for a GPU); a reduced-scale one carries its scale (params: train.<model>) in its titles."""
        if self.model is None:
            return _name_scales(self.figure(data), data, self.title)
        present = present_models(data.runs, data.dense.get("metrics"))
        own = self.model in present
        if not own and (self.model != PAPER_VGG or not present & set(self.need.models or ())):
            return Skip(not_run_reason(self.model, data.grid, self.need.requires))
        out = self.figure(data, model=self.model)
        if isinstance(out, Skip):
            return out
        if not own:  # a figure that also draws another model (Fig 5: the DLN) without its VGG panel
            why = not_run_reason(self.model, data.grid, self.need.requires)
            out = dataclasses.replace(out, caption=f"{out.caption} VGG panel: {why}.")
        scale = phrase_of(data.scales, self.model)
        if scale is None:
            return out
        add_title(out.fig, f"{self.paper}, {scale}")
        base = out.title or self.title.removesuffix(_scale_suffix(self.model))  # the registry's title: no numbers
        return dataclasses.replace(out, title=f"{base} — {scale}")


def _name_scales(out: Drawn | Skip, data: FigureData, title: str) -> Drawn | Skip:
    """A figure with a block per model (the extras) that drew a reduced-scale family's cells says so in its heading
    too: its caption names each model it drew by common.model_phrase, which carries the scale."""
    if isinstance(out, Skip):
        return out
    caption = out.caption.lower()
    drawn = [p for m in REDUCED if (p := phrase_of(data.scales, m)) is not None and p.lower() in caption]
    return dataclasses.replace(out, title=f"{out.title or title} — with the {', '.join(drawn)}") if drawn else out


def _scale_suffix(model: str) -> str:
    """What a reduced-scale figure's registry title ends with: its scale without params' numbers (the Snakemake
    report's captions are static); the drawn figure's title carries the numbers instead."""
    return f" — {phrase_of({}, model)}"


def at_scale(spec: FigureSpec, model: str) -> FigureSpec:
    """A paper VGG figure's entry for another VGG family: its own file name, its own cells, its scale named."""
    if model == spec.model:
        return spec
    need = dataclasses.replace(spec.need, models=tuple(model if m == spec.model else m for m in spec.need.models))
    where = REDUCED[model]
    return dataclasses.replace(
        spec, name=scaled_name(spec.name, model), model=model, need=need,
        title=f"{spec.title}{_scale_suffix(model)}",
        about=f"{spec.about} Drawn from the reduced-scale VGG's cells ({model}-*, {where}): the paper's VGG "
              f"protocol at the width and step budget of train.{model}, named in the title; the paper-scale figure "
              "is separate.")


def _per_scale(specs: tuple[FigureSpec, ...]) -> tuple[FigureSpec, ...]:
    """Every VGG figure once per VGG family, the paper's first and its reduced-scale twins right after it."""
    return tuple(at_scale(s, m) for s in specs for m in (VGG_FAMILIES if s.model is not None else (None,)))


def _vgg(variants: tuple[str, ...], lrs=PAPER_LRS, first: bool = False, requires=None) -> Need:
    return Need(("vgg",), variants, lrs, first, requires=requires)


def _dln(variants: tuple[str, ...], lrs=PAPER_LRS, first: bool = False, requires=None) -> Need:
    return Need(("dln",), variants, lrs, first, requires=requires)


LANDSCAPE = ("At each probed step, the loss and gradient on the step's own batch after moving along the negative "
             "gradient g by several step sizes η: (a) the range of the loss over η, (b) the range of the gradient "
             "change ‖∇L(θ − ηg) − g‖ over η, (c) the effective β-smoothness, the largest of that change divided by "
             "‖ηg‖.")
ALL = Need(None, None, PAPER_LRS, True, beyond_paper=True)

FIGURES = _per_scale((
    FigureSpec("fig01_accuracy", "Fig 1a–b", "training and test accuracy, standard vs BatchNorm",
               "Mini-batch training accuracy and test accuracy against the training step for VGG without and with "
               "BatchNorm, a row per learning rate (the paper's 0.1 and 0.5). Thick lines: the mean over seeds; "
               "shaded: the across-seed band. The paper's point: BN trains faster and tolerates the larger lr.",
               training.fig01_accuracy, _vgg(SB, {"vgg": training.FIG1_LRS}), PAPER_VGG),
    FigureSpec("fig01c_activations", "Fig 1c", "distribution of one activation over time, standard vs BatchNorm",
               "How the distribution over the batch of one tracked unit moves during training, at an early and a late "
               "conv layer (the recorded layers nearest the paper's). Shaded: 5–95% and 25–75% of the batch; line: "
               "median. With BN the distribution still moves: BN does not freeze a layer's input distribution.",
               activations.fig01c_activations, _vgg(SB, first=True), PAPER_VGG),
    FigureSpec("fig02_noisy_bn", "Fig 2", "noisy BatchNorm: training accuracy and activation distributions",
               "BN with random noise injected after every BN layer at each training step (paper Algorithm 1), which "
               "makes layer inputs unstable on purpose, beside BN and standard: training accuracy and activation "
               "distributions at three layers. The paper's point: noisy BN trains about as fast as BN, so stable "
               "distributions are not what makes BN work.",
               activations.fig02_noisy_bn, _vgg(SBN, first=True, requires=("noisy_bn",)), PAPER_VGG),
    FigureSpec("fig03a_ics_vgg", "Fig 3a", "internal covariate shift in VGG (ℓ2 difference, cosine)",
               "Internal covariate shift (paper Definition 2.1) of two VGG layers over training: how much a layer's "
               "gradient on the same batch changes when the layers before it take their update (ℓ2 difference, the "
               "same relative to the gradient's norm, cosine), with the training curve, at two lrs. The paper's "
               "point: BN does not reduce this shift.",
               ics.fig03a_ics_vgg, _vgg(SB, {"vgg": ics.PAPER["vgg"]["lrs"]}), PAPER_VGG),
    FigureSpec("fig03b_ics_dln", "Fig 3b", "internal covariate shift in the deep linear network",
               "Internal covariate shift (paper Definition 2.1) of two layers of the deep linear network over "
               "training (full-batch gradient descent): the change of a layer's gradient when the layers before it "
               "take their update (ℓ2 difference, relative, cosine), with the training loss, at two lrs, standard "
               "vs BN.",
               ics.fig03b_ics_dln, _dln(SB, {"dln": ics.PAPER["dln"]["lrs"]})),
    FigureSpec("fig04_landscape_vgg", "Fig 4a–c", "VGG loss landscape, gradient predictiveness, β-smoothness",
               f"{LANDSCAPE} VGG standard vs BN at lr 0.1. The paper's point: with BN the loss varies less along the "
               "step, the gradient stays more predictive and the landscape is smoother.",
               landscape.fig04_landscape_vgg, _vgg(SB), PAPER_VGG),
    FigureSpec("fig05_lp_training", "Fig 5", "ℓp normalisations: VGG accuracy and DLN loss",
               "Training accuracy (VGG) and training loss (deep linear network) with ℓ1, ℓ2 and ℓ∞ normalisation in "
               "place of BN, beside standard and BN. The paper's point: normalisations with no claim to stabilise "
               "distributions help training as much as BN.",
               training.fig05_lp_training, Need(("vgg", "dln"), SBLP, PAPER_LRS, requires=LP_VARIANTS),
               PAPER_VGG),
    FigureSpec("fig06_lp_activations", "Fig 6", "activation distributions under each normalisation",
               "Distribution over time of one tracked unit of a deep VGG layer under each normalisation (the recorded "
               "layer nearest the paper's). ℓp-normalised networks train well although their activations look "
               "nothing like BN's.",
               activations.fig06_lp_activations, _vgg(SBLP, first=True, requires=LP_VARIANTS), PAPER_VGG),
    FigureSpec("fig08a_moment_change", "Fig 8a", "change of activation mean and variance between probes",
               "For standard, BN and noisy BN: how much each tracked channel's batch mean and variance change from "
               "one probe to the next, in units of the channel's earlier scale, at three layers: a direct look at "
               "the distributional stability BN is said to provide.",
               activations.fig08a_moment_change, _vgg(SBN, first=True), PAPER_VGG),
    FigureSpec("fig08b_moment_drift", "Fig 8b", "drift of activation mean and variance from the first probe",
               "For standard, BN and noisy BN: how far each tracked channel's batch mean and variance have drifted "
               "from their values at the first probe, in units of the channel's scale there, at three layers. "
               "Complements Fig 8a's step-to-step change.",
               activations.fig08b_moment_drift, _vgg(SBN, first=True), PAPER_VGG),
    FigureSpec("fig09_dln_activations", "Fig 9", "deep linear network activation distributions",
               "Distribution over time of one tracked unit at three layers of the deep linear network (the recorded "
               "layers nearest the paper's), standard vs BN.",
               activations.fig09_dln_activations, _dln(SB, first=True)),
    FigureSpec("fig10_landscape_dln", "Fig 10a–c", "DLN loss landscape, gradient predictiveness, β-smoothness",
               f"{LANDSCAPE} The deep linear network, standard vs BN, full-batch gradient descent.",
               landscape.fig10_landscape_dln, _dln(SB)),
    FigureSpec("fig11a_grad_eta_vgg", "Fig 11a", "VGG gradient change vs probe step size, per training time",
               "The ℓ2 gradient change ‖∇L(θ − ηg) − g‖ against the probe step size η, a curve per training time "
               "(colour: step), standard and BN side by side: how far along the step the gradient stays "
               "predictive, and how that changes during training.",
               landscape.fig11a_grad_eta_vgg, _vgg(SB, first=True), PAPER_VGG),
    FigureSpec("fig11b_grad_eta_dln", "Fig 11b", "DLN gradient change vs probe step size, per training time",
               "The ℓ2 gradient change ‖∇L(θ − ηg) − g‖ of the deep linear network against the probe step size η, a "
               "curve per training time (colour: step), standard and BN side by side: how far along the step the "
               "full-batch gradient stays predictive.",
               landscape.fig11b_grad_eta_dln, _dln(SB, first=True)),
    FigureSpec("fig12_lp_vgg", "Fig 12a–d", "VGG with ℓp normalisations: accuracy and landscape probes",
               f"The training accuracy, then Fig 4's probes for VGG with ℓ1, ℓ2 and ℓ∞ normalisation beside standard "
               f"and BN. {LANDSCAPE}",
               landscape.fig12_lp_vgg, _vgg(SBLP, requires=LP_VARIANTS), PAPER_VGG),
    FigureSpec("fig13_lp_dln", "Fig 13a–d", "DLN with ℓp normalisations: loss and landscape probes",
               f"The training loss, then Fig 10's probes for the deep linear network with ℓ1, ℓ2 and ℓ∞ "
               f"normalisation beside standard and BN. {LANDSCAPE}",
               landscape.fig13_lp_dln, _dln(SBLP, requires=LP_VARIANTS)),
    FigureSpec("figv1_variants_landscape", "Beyond 1", "every variant: training and loss-landscape probes",
               "Every variant of every model in the grid (new normalisations, a ResNet, plug-in variants) at its "
               "reference lr: the training curve, the spread of the loss over the probe step sizes, the largest "
               "gradient change over them and β_eff, a curve per variant and a block per model. Drawn only when "
               "the grid holds a model or variant the paper's figures do not.",
               variants.figv1_variants_landscape, ALL),
    FigureSpec("figv2_variants_ics", "Beyond 2", "every variant: internal covariate shift",
               "Fig 3's relative internal covariate shift and cos(G, G′) for every variant of every model in the "
               "grid at its reference lr, at the recorded layers nearest the paper's. Drawn only when the grid holds "
               "a model or variant the paper's figures do not.",
               variants.figv2_variants_ics, ALL),
    FigureSpec("figv3_variants_activations", "Beyond 3", "every variant: activation distributions",
               "Distribution over time of one tracked unit of a deep layer, a panel per variant of each model at its "
               "reference lr. Drawn only when the grid holds a model or variant the paper's figures do not.",
               variants.figv3_variants_activations, ALL),
    FigureSpec("figx1_lr_sensitivity", "Extra 1", "final accuracy and loss against the learning rate",
               "Each run's final test accuracy (image classifiers) or final training loss (deep linear network) "
               "against its learning rate, a line per variant over the grid's lrs; a model trained at a single lr "
               "shows a dot per run in a column per variant instead.",
               extra.figx_lr_sensitivity, Need()),
    FigureSpec("figx2_beta_vs_lr", "Extra 2", "effective β-smoothness against 2/lr",
               "β_eff over training beside the stability bound 2/lr, and each run's median β_eff against 2/lr, a "
               "block per model. Gradient descent with step lr is stable on a quadratic only where its curvature "
               "is below 2/lr.",
               extra.figx_beta_vs_lr, Need()),
    FigureSpec("figx3_sharpness", "Extra 3", "top Hessian eigenvalue and batch sharpness against 2/lr",
               "At each saved checkpoint: the largest eigenvalue of the Hessian of the batch loss (λ_max) and the "
               "curvature along the batch gradient (batch sharpness), against the stability bound 2/lr (edge of "
               "stability, Cohen et al. 2021), a block per model with its own legend.",
               curvature.figx3_sharpness, Need()),
    FigureSpec("figx4_theorem41", "Extra 4", "Theorem 4.1 on real BN layers: gradient-norm ratio through BN and the "
               "identity's gap",
               "Paper Theorem 4.1 checked on every BN channel at the saved checkpoints: the squared gradient-norm "
               "ratio ‖g_y‖²/‖g_z‖² between a BN layer's input and output (below 1 BN shrinks the gradient, as the "
               "paper argues; above 1, possible where γ > σ, it grows it), and the largest relative gap between the "
               "theorem's two sides (the paper's formula, and the ε-exact identity that should hold to float "
               "precision).",
               theorem.figx4_theorem41, Need()),
    FigureSpec("figx5_lr_thresholds", "Extra 5", "largest trainable learning rate per variant and seed",
               "From the lr scan's short runs: for each variant and seed, which scanned lrs trained, and the interval "
               "from the largest trainable lr to the first failing one, where the threshold lies; a panel per "
               "model. The paper's 'BN tolerates larger learning rates' as a number.",
               thresholds.figx5_lr_thresholds, Need(cells=False, lrscan=True)),
))
