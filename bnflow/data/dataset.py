"""The prepared dataset: one validated in-memory container and its single-file, pickle-free on-disk form.

The `prepare` step decodes whatever source the user has (torchvision download, official archive, image folder,
synthetic generator) into a `PreparedData` and writes it once with `save_prepared`; every training run then reads
it with `load_prepared`, so decoding cost and source quirks never reach the training loop.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bnflow.errors import DataError

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
FORMAT_VERSION = 1
_ARRAY_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
_META_KEY = "meta_json"
_RERUN_HINT = "re-run `python -m bnflow prepare` to rebuild it"


@dataclass(frozen=True, eq=False)
class PreparedData:
    """A decoded 10-class 32x32 RGB image dataset plus the statistics and provenance training needs.

    Args:
        train_images: uint8 array (N, 32, 32, 3), NHWC, pixel values 0..255.
        train_labels: int64 array (N,), values in [0, 10).
        test_images: uint8 array (M, 32, 32, 3), NHWC.
        test_labels: int64 array (M,), values in [0, 10).
        classes: the 10 class names; label k means classes[k].
        mean: per-channel (R, G, B) mean of the train images scaled to [0, 1] (see `compute_mean_std`).
        std: per-channel population standard deviation of the train images scaled to [0, 1].
        source: where the data came from, e.g. "archive:cifar10-jpeg.tar.gz", "torchvision", "synthetic".
        source_sha256: hex sha256 of the source file (for generated data: of the generated arrays' bytes).

    Raises:
        DataError: an array has the wrong dtype/shape, a label is out of range, or the metadata is malformed.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source: str
    source_sha256: str

    def __post_init__(self) -> None:
        for split in ("train", "test"):
            images = getattr(self, f"{split}_images")
            labels = getattr(self, f"{split}_labels")
            if not isinstance(images, np.ndarray) or images.dtype != np.uint8:
                raise DataError(f"{split}_images must be a uint8 numpy array, got {_describe(images)}")
            if images.ndim != 4 or images.shape[1:] != IMAGE_SHAPE or images.shape[0] == 0:
                raise DataError(f"{split}_images must have shape (N>0, 32, 32, 3) (NHWC), got {images.shape}")
            if not isinstance(labels, np.ndarray) or labels.dtype != np.int64:
                raise DataError(f"{split}_labels must be an int64 numpy array, got {_describe(labels)}")
            if labels.shape != (images.shape[0],):
                raise DataError(f"{split}_labels must have shape ({images.shape[0]},), got {labels.shape}")
            if labels.min() < 0 or labels.max() >= NUM_CLASSES:
                raise DataError(
                    f"{split}_labels must lie in [0, {NUM_CLASSES}), got range [{labels.min()}, {labels.max()}]"
                )
        if (
            not isinstance(self.classes, tuple)
            or len(self.classes) != NUM_CLASSES
            or not all(isinstance(c, str) and c for c in self.classes)
            or len(set(self.classes)) != NUM_CLASSES
        ):
            raise DataError(f"classes must be a tuple of {NUM_CLASSES} distinct non-empty names, got {self.classes!r}")
        for name in ("mean", "std"):
            value = getattr(self, name)
            if (
                not isinstance(value, tuple)
                or len(value) != 3
                or not all(isinstance(v, float) and np.isfinite(v) for v in value)
            ):
                raise DataError(f"{name} must be a tuple of 3 finite floats (R, G, B), got {value!r}")
        if not all(0.0 < s for s in self.std):
            raise DataError(f"std must be positive in every channel, got {self.std!r} (constant images?)")
        if not isinstance(self.source, str) or not self.source:
            raise DataError(f"source must be a non-empty string, got {self.source!r}")
        sha = self.source_sha256
        if not isinstance(sha, str) or len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise DataError(f"source_sha256 must be 64 lowercase hex digits, got {sha!r}")


def _describe(value: object) -> str:
    if isinstance(value, np.ndarray):
        return f"ndarray of dtype {value.dtype}"
    return type(value).__name__


def compute_mean_std(images_uint8: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and population std of uint8 images scaled to [0, 1], computed exactly.

    Per-channel input normalisation is PROTOCOL.md section 2's [choice]. Sums are taken over a 256-bin value
    histogram with Python integers, so the result is the correctly rounded float64 of the exact rational value and
    does not depend on summation order (no float cancellation in E[x^2] - E[x]^2).

    Args:
        images_uint8: uint8 array (N, H, W, 3), NHWC.

    Returns:
        (mean, std): two (R, G, B) tuples of floats in [0, 1]; std is the population (ddof=0) standard deviation.
    """
    if images_uint8.dtype != np.uint8 or images_uint8.ndim != 4 or images_uint8.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {images_uint8.dtype} {images_uint8.shape}")
    count = images_uint8.size // 3
    if count == 0:
        raise ValueError("cannot compute statistics of an empty image array")
    values = np.arange(256, dtype=np.int64)
    means, stds = [], []
    for channel in range(3):
        hist = np.bincount(images_uint8[..., channel].ravel(), minlength=256).astype(np.int64)
        s1 = int(hist @ values)
        s2 = int(hist @ (values * values))
        # var * (255 n)^2 = n*s2 - s1^2 exactly; divide once at the end.
        means.append(s1 / (255 * count))
        var_scaled = (count * s2 - s1 * s1) / ((255 * count) ** 2)
        stds.append(float(np.sqrt(var_scaled)))
    return (means[0], means[1], means[2]), (stds[0], stds[1], stds[2])


def save_prepared(path: Path, data: PreparedData) -> None:
    """Write `data` atomically as one uncompressed, pickle-free .npz file.

    The file is written to `path.with_suffix(".tmp-<pid>")` in the same folder, fsynced and renamed over `path`, so
    a crash or error leaves either the previous file or none, never a partial one.

    Args:
        path: destination file (conventionally ending in .npz); its folder must exist.
        data: the dataset to store.
    """
    path = Path(path)
    meta = {
        "format_version": FORMAT_VERSION,
        "classes": list(data.classes),
        "mean": list(data.mean),
        "std": list(data.std),
        "source": data.source,
        "source_sha256": data.source_sha256,
    }
    arrays = {key: np.ascontiguousarray(getattr(data, key)) for key in _ARRAY_KEYS}
    arrays[_META_KEY] = np.array(json.dumps(meta))
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    try:
        # An open file object stops np.savez from appending ".npz" to the temporary name.
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    # Persist the rename itself; not every platform can open a directory, which only costs durability.
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_prepared(path: Path) -> PreparedData:
    """Read a dataset written by `save_prepared`, validating every array and metadata field.

    Args:
        path: the .npz file.

    Returns:
        The stored `PreparedData`.

    Raises:
        DataError: the file is missing, not a bnflow prepared dataset, truncated, or incomplete; the message names
            the path and says to re-run `python -m bnflow prepare`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prepared dataset not found; {_RERUN_HINT}")
    try:
        # Our own handle: np.load leaks the file it opened when the zip turns out to be damaged.
        with open(path, "rb") as handle:
            stored = np.load(handle, allow_pickle=False)
            if not isinstance(stored, np.lib.npyio.NpzFile):
                raise DataError(f"{path}: a single .npy array, not a prepared-dataset .npz archive; {_RERUN_HINT}")
            with stored:
                missing = [key for key in (*_ARRAY_KEYS, _META_KEY) if key not in stored.files]
                if missing:
                    raise DataError(f"{path}: incomplete prepared dataset (no {', '.join(missing)}); {_RERUN_HINT}")
                arrays = {key: stored[key] for key in _ARRAY_KEYS}
                meta = json.loads(str(stored[_META_KEY]))
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError, TypeError) as exc:
        # np.load on a non-npz raises ValueError (pickle refused); a cut or damaged zip raises BadZipFile/EOFError;
        # json.loads raises ValueError.
        raise DataError(f"{path}: corrupt prepared dataset ({type(exc).__name__}: {exc}); {_RERUN_HINT}") from exc
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise DataError(
            f"{path}: unsupported prepared-dataset format {version!r} (expected {FORMAT_VERSION}); {_RERUN_HINT}"
        )
    try:
        return PreparedData(
            **arrays,
            classes=tuple(meta["classes"]),
            mean=tuple(float(v) for v in meta["mean"]),
            std=tuple(float(v) for v in meta["std"]),
            source=meta["source"],
            source_sha256=meta["source_sha256"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{path}: malformed prepared-dataset metadata ({exc}); {_RERUN_HINT}") from exc
    except DataError as exc:
        raise DataError(f"{path}: invalid prepared dataset ({exc}); {_RERUN_HINT}") from exc
