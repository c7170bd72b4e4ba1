"""The `prepare` step's data layer: read a CIFAR-10 source (or generate synthetic data) into one compact file.

Public API:
    PreparedData        validated container of uint8 NHWC images, int64 labels, class names, mean/std, provenance.
    save_prepared       write a PreparedData atomically as one uncompressed, pickle-free .npz.
    load_prepared       read it back (DataError when missing/corrupt: re-run `python -m bnflow prepare`).
    compute_mean_std    exact per-channel mean and population std of uint8 images in [0, 1].
    from_torchvision    download CIFAR-10 with torchvision.
    from_archive        decode the official cifar-10-python.tar.gz or an image-folder tree/tarball.
    make_synthetic      deterministic learnable 10-class synthetic dataset.
"""

from bnflow.data.dataset import PreparedData, compute_mean_std, load_prepared, save_prepared
from bnflow.data.sources import from_archive, from_torchvision
from bnflow.data.synthetic import make_synthetic

__all__ = [
    "PreparedData",
    "compute_mean_std",
    "from_archive",
    "from_torchvision",
    "load_prepared",
    "make_synthetic",
    "save_prepared",
]
