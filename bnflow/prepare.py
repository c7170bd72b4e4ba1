"""The `prepare` step: the data one model family trains on, as one compact file per family.

The image models (bnflow.vocab.CLASSIFIERS) read CIFAR-10 from the source chosen in params (prepare.source); the deep
linear network reads its own regression problems (bnflow.data.dln), which need no image at all.
"""

from __future__ import annotations

import logging
from pathlib import Path

from bnflow.config import Params, PrepareConfig
from bnflow.data import PreparedData, from_archive, from_torchvision, make_synthetic, save_prepared
from bnflow.data.dln import save_problems
from bnflow.errors import ConfigError
from bnflow.io import check_absent
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


def prepare(params: Params, model: str, output: Path, *, force: bool = False) -> None:
    """Write `model`'s prepared data to `output` atomically; an existing file is kept unless `force`."""
    check_absent(output, force=force)
    output.parent.mkdir(parents=True, exist_ok=True)
    if model == "dln":
        d = params.train.dln
        meta = save_problems(output, params.train.seeds.base, params.train.seeds.indices("dln"), d.n_samples, d.dim)
        log.info("prepared the DLN's regression problems y = A x for seed indices %s (%d samples, dim %d) -> %s",
                 meta["indices"], d.n_samples, d.dim, output)
        return
    if model not in CLASSIFIERS:
        raise ConfigError(f"--model {model!r}: no data to prepare; models: {', '.join((*CLASSIFIERS, 'dln'))}")
    data = build_dataset(params.prepare)
    save_prepared(output, data)
    log.info("prepared %s for %s: %d train / %d test images, %d classes, mean %s std %s -> %s", data.source, model,
             len(data.train_labels), len(data.test_labels), len(data.classes),
             tuple(round(m, 4) for m in data.mean), tuple(round(s, 4) for s in data.std), output)
