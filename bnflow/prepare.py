"""The `prepare` step: one compact dataset file from the source chosen in params (prepare.source)."""

from __future__ import annotations

import logging
from pathlib import Path

from bnflow.config import PrepareConfig
from bnflow.data import PreparedData, from_archive, from_torchvision, make_synthetic, save_prepared
from bnflow.io import check_absent

log = logging.getLogger("bnflow.prepare")


def build_dataset(cfg: PrepareConfig) -> PreparedData:
    """Read or generate the dataset described by `cfg` (raises DataError naming the path and the fix)."""
    if cfg.source == "torchvision":
        return from_torchvision(Path(cfg.download_dir))
    if cfg.source == "archive":
        return from_archive(Path(cfg.archive))
    s = cfg.synthetic
    return make_synthetic(s.seed, s.n_train, s.n_test)


def prepare(cfg: PrepareConfig, output: Path, *, force: bool = False) -> PreparedData:
    """Write the prepared dataset to `output` atomically; an existing file is kept unless `force`."""
    check_absent(output, force=force)
    data = build_dataset(cfg)
    output.parent.mkdir(parents=True, exist_ok=True)
    save_prepared(output, data)
    log.info("prepared %s: %d train / %d test images, %d classes, mean %s std %s -> %s", data.source,
             len(data.train_labels), len(data.test_labels), len(data.classes),
             tuple(round(m, 4) for m in data.mean), tuple(round(s, 4) for s in data.std), output)
    return data
