"""bnflow: a reproducible pipeline for "How Does Batch Normalization Help Optimization?" (Santurkar et al., 2018)."""

__version__ = "0.1.0"
