"""The `prepare` step: the data one model family trains on, as one compact file per family.

The image models (bnflow.vocab.CLASSIFIERS) read CIFAR-10 from the source chosen in params (prepare.source); the deep
linear network reads its own regression problems (bnflow.data.dln), which need no image at all.

Beside the data file the step writes its *manifest* (`<model>.json`: every array's name, dtype, shape and sha256 of
its bytes), small and kept in git. DVC's stages depend on the manifest, not on the data file (dvc.yaml): a clone
without the DVC cache still has every input its stages hash, and a data file rebuilt with the same arrays (in another
numpy's zip layout, or compressed) changes nothing downstream. The steps that read the data check it against the
manifest (bnflow.dag.artefacts).
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import numpy as np

from bnflow.config import Params, PrepareConfig
from bnflow.data import PreparedData, from_archive, from_torchvision, make_synthetic, save_prepared
from bnflow.dag.jobs import manifest_path
from bnflow.data.dln import save_problems
from bnflow.errors import ConfigError, DataError
from bnflow.io import check_absent, write_json
from bnflow.vocab import CLASSIFIERS

log = logging.getLogger("bnflow.prepare")


def build_dataset(cfg: PrepareConfig) -> PreparedData:
    """Read or generate the dataset described by `cfg` (raises DataError naming the path and the fix)."""
    if cfg.source == "torchvision":
        return from_torchvision(Path(cfg.download_dir))
    if cfg.source == "archive":
        return from_archive(Path(cfg.archive))
    s = cfg.synthetic
    return make_synthetic(s.seed, s.n_train, s.n_test)


def data_manifest(data: Path, model: str) -> dict[str, Any]:
    """What identifies a prepared data file's content: each array's dtype, shape and sha256 of its C-order bytes.

    The arrays identify the data, whatever zip container holds them (numpy's layout of the day, compression).
    """
    try:
        with open(data, "rb") as handle, np.load(handle, allow_pickle=False) as stored:
            arrays = {}
            for name in sorted(stored.files):
                a = stored[name]
                arrays[name] = {"dtype": str(a.dtype), "shape": list(a.shape),
                                "sha256": hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()}
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"{data}: unreadable prepared data ({e}); re-run `python -m bnflow prepare --model "
                        f"{model}`") from None
    return {"model": model, "file": Path(data).name, "arrays": arrays}


def prepare(params: Params, model: str, output: Path, *, force: bool = False) -> None:
    """Write `model`'s prepared data to `output` atomically, then its manifest (manifest_path) beside it; existing
    files are kept unless `force`."""
    manifest = manifest_path(output)
    check_absent(output, manifest, force=force)
    if model != "dln" and model not in CLASSIFIERS:
        raise ConfigError(f"--model {model!r}: no data to prepare; models: {', '.join((*CLASSIFIERS, 'dln'))}")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_data(params, model, output)
    write_json(manifest, data_manifest(output, model))
    log.info("%s: the manifest of %s's data (each array's sha256)", manifest, model)


def write_data(params: Params, model: str, output: Path) -> None:
    """Write `model`'s prepared data to `output` (atomically: a crash leaves the previous file or none)."""
    if model == "dln":
        d = params.train.dln
        meta = save_problems(output, params.train.seeds.base, params.train.seeds.indices("dln"), d.n_samples, d.dim)
        log.info("prepared the DLN's regression problems y = A x for seed indices %s (%d samples, dim %d) -> %s",
                 meta["indices"], d.n_samples, d.dim, output)
        return
    data = build_dataset(params.prepare)
    save_prepared(output, data)
    log.info("prepared %s for %s: %d train / %d test images, %d classes, mean %s std %s -> %s", data.source, model,
             len(data.train_labels), len(data.test_labels), len(data.classes),
             tuple(round(m, 4) for m in data.mean), tuple(round(s, 4) for s in data.std), output)
