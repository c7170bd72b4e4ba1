"""params.yaml loaded into frozen, typed objects, validated before any work starts.

Every default lives once, in params.yaml; the dataclasses only say what each key is and which values it may take.
One module per concept, all re-exported here (import from `bnflow.config`, never from a submodule):

    sections   the frozen dataclasses of each params section (`Params`, `TrainConfig`, `Cell`, ...) and `rule`
    claims     the claims registry: `ClaimSpec`, `parse_claims`, `check_claim` (sesoi and margin rules)
    plugins    plug-in variants: `plugin_class`, `check_plugin`, `check_variants` (trial builds at params load)
    checks     rules between keys and sections, safe paths, files the params name (`require_files`)
    loading    YAML without duplicate keys, overlays (`merge`), typed conversion, `load_params`, `to_plain`

Like the rest of bnflow's lower floor it imports only bnflow.vocab and bnflow.errors (tests/test_architecture.py).
"""

from bnflow.config.checks import (CIFAR10_TRAIN_IMAGES, PATH_KEYS, SYNTHETIC_MAX_IMAGES, check_params,
                                  fit_summary_windows, require_files)
from bnflow.config.claims import ClaimSpec, check_claim, parse_claims
from bnflow.config.loading import (REPLACED_BY_OVERLAY, UniqueKeyLoader, expand_seed_counts, from_dict, load_params,
                                   merge, read_yaml, to_plain)
from bnflow.config.plugins import PLUGIN_TRIAL_CHANNELS, check_plugin, check_variants, plugin_class
from bnflow.config.sections import (Cell, CurvatureConfig, DenseModelProbeConfig, DenseProbeConfig, DlnConfig,
                                    ExecutionConfig, FiguresConfig, ImageTrainConfig, LrScanConfig, ModelProbeConfig,
                                    ModelScanConfig, NoiseConfig, NormConfig, NumericsConfig, Params, PluginConfig,
                                    PrepareConfig, ProbeConfig, ProbeOptions, ResNetConfig, SeedsConfig,
                                    StatsConfig, SummarizeConfig, SyntheticConfig, TrainConfig, VggConfig, rule)

__all__ = [
    "CIFAR10_TRAIN_IMAGES", "PATH_KEYS", "PLUGIN_TRIAL_CHANNELS", "REPLACED_BY_OVERLAY", "SYNTHETIC_MAX_IMAGES",
    "Cell", "ClaimSpec", "CurvatureConfig", "DenseModelProbeConfig", "DenseProbeConfig", "DlnConfig",
    "ExecutionConfig", "FiguresConfig", "ImageTrainConfig", "LrScanConfig", "ModelProbeConfig", "ModelScanConfig",
    "NoiseConfig", "NormConfig", "NumericsConfig", "Params", "PluginConfig", "PrepareConfig", "ProbeConfig",
    "ProbeOptions", "ResNetConfig", "SeedsConfig", "StatsConfig", "SummarizeConfig", "SyntheticConfig",
    "TrainConfig", "UniqueKeyLoader", "VggConfig", "check_claim", "check_params", "check_plugin", "check_variants",
    "expand_seed_counts", "fit_summary_windows", "from_dict", "load_params", "merge", "parse_claims", "plugin_class", "read_yaml",
    "require_files", "rule", "to_plain",
]
