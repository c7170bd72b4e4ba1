"""Multiplicity adjustment of claim p-values (STATS.md): Holm for the confirmatory families (primary, early,
dln_early and their reduced-scale twins), Benjamini–Hochberg within each secondary family, none for exploratory and
post hoc claims. The family → method table is vocab.FAMILY_METHODS; nothing here tests family names.

A declared claim whose p-value is missing (an arm without runs) still counts in its family's size m: it was declared
before the results existed, and dropping it would make the other claims easier to pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from bnflow.vocab import FAMILY_METHODS

METHODS = ("holm", "bh", "none")


def family_method(family: str) -> str:
    """The adjustment a claims family gets (vocab.FAMILY_METHODS): "holm", "bh" or "none"."""
    try:
        return FAMILY_METHODS[family]
    except KeyError:
        raise ValueError(f"unknown claims family {family!r}; known: {', '.join(FAMILY_METHODS)}") from None


def _prepare(p: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p as float array, NaN mask, p with NaN → 1 so that missing claims rank last but still count in m)."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if ((p < 0) | (p > 1)).any():
        raise ValueError("p-values must lie in [0, 1]")
    missing = np.isnan(p)
    return p, missing, np.where(missing, 1.0, p)


def holm(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values (family-wise error control): p̃_(i) = max_{j ≤ i} min(1, (m − j + 1) p_(j)).

    Args:
        p: raw p-values, shape (m,); NaN stays NaN but counts in m.
    """
    p, missing, filled = _prepare(p)
    m = filled.size
    order = np.argsort(filled, kind="stable")
    stepped = np.maximum.accumulate((m - np.arange(m)) * filled[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    adjusted[missing] = np.nan
    return adjusted


def benjamini_hochberg(p: Sequence[float] | np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg step-up adjusted p-values (false discovery rate): p̃_(i) = min_{j ≥ i} min(1, m p_(j) / j).

    Args:
        p: raw p-values, shape (m,); NaN stays NaN but counts in m.
    """
    p, missing, filled = _prepare(p)
    m = filled.size
    order = np.argsort(filled, kind="stable")
    scaled = filled[order] * m / np.arange(1, m + 1)
    stepped = np.minimum.accumulate(scaled[::-1])[::-1]
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    adjusted[missing] = np.nan
    return adjusted


def adjust(p: Sequence[float] | np.ndarray, method: str) -> np.ndarray:
    """Adjusted p-values of one family by `method` ("holm", "bh" or "none")."""
    if method == "holm":
        return holm(p)
    if method == "bh":
        return benjamini_hochberg(p)
    if method == "none":
        return np.asarray(p, dtype=np.float64).reshape(-1).copy()
    raise ValueError(f"unknown adjustment method {method!r}; choose one of {METHODS}")
