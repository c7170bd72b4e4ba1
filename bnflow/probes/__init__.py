"""Probes on a live network: loss landscape (paper §3.2), internal covariate shift (Def. 2.1), activations.

All probes keep the model's train/eval mode, run in fp32 and leave training bit-identical (see `state`).
"""

from bnflow.probes.activations import (
    activation_stats,
    channel_stats,
    choose_units,
    record_activations,
    recording,
    unit_histograms,
    unit_summaries,
    unit_values,
)
from bnflow.probes.ics import IcsResult, gradient_shift, ics_probe, ics_rows, preceding_params_in_blocks
from bnflow.probes.landscape import LandscapeResult, landscape_probe
from bnflow.probes.state import ProbeError, Snapshot, fp32_exact, preserved, restore, snapshot

__all__ = [
    "IcsResult",
    "LandscapeResult",
    "ProbeError",
    "Snapshot",
    "activation_stats",
    "channel_stats",
    "choose_units",
    "fp32_exact",
    "gradient_shift",
    "ics_probe",
    "ics_rows",
    "landscape_probe",
    "preceding_params_in_blocks",
    "preserved",
    "record_activations",
    "recording",
    "restore",
    "snapshot",
    "unit_histograms",
    "unit_summaries",
    "unit_values",
]
