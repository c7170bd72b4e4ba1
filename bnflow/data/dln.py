"""The deep linear network's data (PROTOCOL §6), prepared like the images: one file, independent of CIFAR-10.

Each seed index of the grid has its own regression problem y = A x, drawn from that run's data stream
(SeedSequence((base, index, "data")), bnflow.seeds): A (dim × dim) with i.i.d. N(0, 1) entries, then x (n_samples ×
dim) ~ N(0, I). The `prepare` step writes every seed's (x, A) into one pickle-free .npz, so the DLN's inputs are a
versioned artefact of their own (DVC caches it) and the DLN cells never wait for, or re-train after, the images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bnflow import seeds
from bnflow.errors import DataError
from bnflow.io import atomic_path

FORMAT_VERSION = 1
_META = "meta_json"
_HINT = "re-run `python -m bnflow prepare --model dln` (snakemake / dvc repro do it)"


@dataclass(frozen=True)
class DlnProblem:
    """One seed's regression problem: x (n_samples, dim) float32, y = x Aᵀ, A (dim, dim)."""

    x: torch.Tensor
    y: torch.Tensor
    a: torch.Tensor


def draw_problem(base: int, index: int, n_samples: int, dim: int) -> DlnProblem:
    """The problem of seed (base, index): A first, then x, from the run's data stream (on the CPU)."""
    g = seeds.torch_generator(base, index, "data")
    a = torch.randn(dim, dim, generator=g, dtype=torch.float32)
    x = torch.randn(n_samples, dim, generator=g, dtype=torch.float32)
    return DlnProblem(x, x @ a.T, a)


def save_problems(path: Path, base: int, indices: tuple[int, ...], n_samples: int, dim: int) -> dict:
    """Draw every seed's problem and write them to `path` atomically; returns the file's metadata."""
    arrays = {}
    for i in indices:
        p = draw_problem(base, i, n_samples, dim)
        arrays[f"x_s{i}"], arrays[f"a_s{i}"] = p.x.numpy(), p.a.numpy()
    meta = {"format_version": FORMAT_VERSION, "base": base, "indices": list(indices), "n_samples": n_samples,
            "dim": dim}
    arrays[_META] = np.array(json.dumps(meta, sort_keys=True))
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: np.savez must not append ".npz"
        np.savez(handle, **arrays)
    return meta


def load_problem(path: Path, base: int, index: int, n_samples: int, dim: int) -> DlnProblem:
    """Seed `index`'s problem from a file written by save_problems, checked against the params that need it."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: the DLN's prepared data not found; {_HINT}")
    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as stored:
            meta = json.loads(str(stored[_META]))
            x, a = stored[f"x_s{index}"], stored[f"a_s{index}"]
    except KeyError:
        raise DataError(f"{path}: holds no problem for seed index {index} (train.seeds changed?); {_HINT}") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable DLN data file ({e}); {_HINT}") from None
    want = {"base": base, "n_samples": n_samples, "dim": dim}
    got = {k: meta.get(k) for k in want}
    if got != want:
        raise DataError(f"{path}: prepared for {got}, but the params ask for {want}; {_HINT}")
    xt, at = torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(a))
    return DlnProblem(xt, xt @ at.T, at)
