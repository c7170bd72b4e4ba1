"""Readers that turn a CIFAR-10 source (torchvision download, official archive, image folder) into `PreparedData`.

Archives are streamed member by member from memory (tarfile "r:*"); nothing is extracted to disk, so a damaged or
hostile archive can neither leave files behind nor write outside the output folder.
"""

from __future__ import annotations

import bz2
import codecs
import functools
import gzip
import hashlib
import io
import lzma
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from bnflow.data.dataset import NUM_CLASSES, PreparedData, compute_mean_std
from bnflow.errors import DataError

_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
_OFFICIAL_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_OFFICIAL_MEMBERS = (*_OFFICIAL_TRAIN, "test_batch", "batches.meta")
_SPLITS = ("train", "test")
_LAYOUTS = (
    "expected either the official cifar-10-python.tar.gz (cifar-10-batches-py/data_batch_1..5, test_batch, "
    "batches.meta) or an image-folder tree train/<class>/*.{jpg,jpeg,png} and test/<class>/*, as a folder or a "
    ".tar/.tar.gz/.tgz, optionally under one top-level folder"
)
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError)
MEMBER_CAP = {"official": 64 << 20, "image": 1 << 20}
"""The most bytes one member may declare: an official batch holds 30.7 MB, a 32x32 image file a few kB (the shared
JPEG archive's largest is 1.1 kB). Members are read whole into memory: a declared size is checked before reading."""
TOTAL_CAP = 1 << 30
"""The most bytes all files of a source may declare together (the official archive: 178 MB; 60,000 JPEGs: 55 MB).
A few MB of gzip can declare gigabytes (a tar bomb): refused at the header, before anything is read or skipped."""


def from_torchvision(root: Path) -> PreparedData:
    """Download (or reuse) CIFAR-10 through torchvision, which verifies the official archive's checksum.

    Args:
        root: folder torchvision downloads to and extracts `cifar-10-batches-py/` into.

    Returns:
        The 50,000/10,000 CIFAR-10 images with source "torchvision" and the sha256 of `cifar-10-python.tar.gz`
        (or, when only the extracted batches are present, of the batch files in their official order).

    Raises:
        DataError: the download or extraction failed (e.g. no network); the message says how to use an offline copy.
    """
    import torchvision  # imported here: slow to import and only needed for this source

    root = Path(root)
    try:
        train = torchvision.datasets.CIFAR10(str(root), train=True, download=True)
        test = torchvision.datasets.CIFAR10(str(root), train=False, download=True)
    except (OSError, RuntimeError, ValueError, tarfile.TarError, EOFError, zlib.error) as exc:
        # URLError/HTTPError/timeouts are OSErrors; torchvision raises RuntimeError on a checksum mismatch.
        raise DataError(
            f"downloading CIFAR-10 with torchvision to {root} failed ({type(exc).__name__}: {exc}). Without network "
            "access set `prepare.source: archive` and point `prepare.archive:` at an offline copy: the official "
            "cifar-10-python.tar.gz or an image-folder tarball such as ../shared/datasets/cifar10-jpeg.tar.gz"
        ) from exc
    tarball = root / "cifar-10-python.tar.gz"
    if tarball.is_file():
        sha = _sha256_files([tarball])
    else:
        sha = _sha256_files([root / "cifar-10-batches-py" / name for name in _OFFICIAL_MEMBERS])
    return _assemble(
        np.asarray(train.data, dtype=np.uint8),
        np.asarray(train.targets, dtype=np.int64),
        np.asarray(test.data, dtype=np.uint8),
        np.asarray(test.targets, dtype=np.int64),
        tuple(str(c) for c in train.classes),
        source="torchvision",
        sha=sha,
    )


def from_archive(path: Path) -> PreparedData:
    """Decode an offline CIFAR-10 copy, detecting its format (official pickled batches or an image-folder tree).

    Image folders: classes are the sorted class-folder names (CIFAR-10's own label order for its class names),
    files are read in name order within a class, images are converted to RGB and must be 32x32.

    Args:
        path: a tarball (.tar, .tar.gz, .tgz, ...) or a folder.

    Returns:
        The dataset with source "archive:<file name>" and the archive's sha256; for a folder, source
        "directory:<folder name>" and the sha256 over (relative path, sha256 of content) of every file read.

    Raises:
        DataError: the path is missing, unreadable, truncated or corrupt, laid out wrongly, or holds an image that
            is not 32x32; the message names the path (and member) and what is expected.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: dataset source not found; point `prepare.archive:` at a file or folder ({_LAYOUTS})")
    if path.is_dir():
        found = _collect_directory(path)
        source, sha = f"directory:{path.name}", found.tree_sha256()
    else:
        found = _collect_tar(path)
        source, sha = f"archive:{path.name}", _sha256_files([path])
    if found.official():
        arrays = _decode_official(path, found.official())
    elif found.images():
        arrays = _decode_image_folder(path, found.images(), found.dirs)
    else:
        raise DataError(f"{path}: no CIFAR-10 batches and no .jpg/.jpeg/.png images found; {_LAYOUTS}")
    try:
        return _assemble(*arrays, source=source, sha=sha)
    except DataError as exc:
        raise DataError(f"{path}: {exc}; re-create or re-download the archive") from exc


def _assemble(train_x, train_y, test_x, test_y, classes, *, source: str, sha: str) -> PreparedData:
    mean, std = compute_mean_std(train_x)
    return PreparedData(train_x, train_y, test_x, test_y, classes, mean, std, source, sha)


def _sha256_files(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for file in paths:
        with open(file, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@dataclass
class _Found:
    """Official batches and images (bytes, keyed by cleaned relative path parts) and folders of one source."""

    files: dict[tuple[str, ...], bytes] = field(default_factory=dict)
    dirs: set[tuple[str, ...]] = field(default_factory=set)

    def official(self) -> dict[tuple[str, ...], bytes]:
        return {parts: data for parts, data in self.files.items() if parts[-1] in _OFFICIAL_MEMBERS}

    def images(self) -> dict[tuple[str, ...], bytes]:
        return {parts: data for parts, data in self.files.items() if parts[-1] not in _OFFICIAL_MEMBERS}

    def tree_sha256(self) -> str:
        digest = hashlib.sha256()
        for parts in sorted(self.files):
            digest.update("/".join(parts).encode() + b"\0" + hashlib.sha256(self.files[parts]).digest())
        return digest.hexdigest()


def _clean_parts(name: str) -> tuple[str, ...] | None:
    """Relative path parts of a member, or None for entries to skip (hidden files, macOS metadata, '..')."""
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("/", ".", ""))
    if not parts or any(p == ".." or p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return parts


def _wanted(parts: tuple[str, ...]) -> bool:
    return parts[-1] in _OFFICIAL_MEMBERS or PurePosixPath(parts[-1]).suffix.lower() in _IMAGE_SUFFIXES


class _Budget:
    """The declared sizes of a source's files, checked against MEMBER_CAP and TOTAL_CAP before any is read."""

    def __init__(self, path: Path):
        self.path, self.total = path, 0

    def check(self, name: str, size: int, wanted: bool) -> None:
        self.total += size
        kind = "official" if PurePosixPath(name).name in _OFFICIAL_MEMBERS else "image"
        if wanted and size > MEMBER_CAP[kind]:
            what = "an official CIFAR-10 batch" if kind == "official" else "a 32x32 image file"
            raise DataError(f"{self.path}: member {name} declares {size:,} bytes, more than {what} can hold "
                            f"({MEMBER_CAP[kind]:,} at most); refused before reading it: a damaged or hostile "
                            f"archive ({_LAYOUTS})")
        if self.total > TOTAL_CAP:
            raise DataError(f"{self.path}: its files declare more than {TOTAL_CAP:,} bytes in all ({name} declares "
                            f"{size:,} bytes) where CIFAR-10 needs under 200 MB; refused before reading further: a "
                            f"damaged or hostile archive ({_LAYOUTS})")


def _collect_tar(path: Path) -> _Found:
    found = _Found()
    budget = _Budget(path)
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                parts = _clean_parts(member.name)
                if member.isfile():  # every file, read or skipped: skipping a huge one decompresses it too
                    budget.check(member.name, member.size, parts is not None and _wanted(parts))
                if parts is None:
                    continue
                if member.isdir():
                    found.dirs.add(parts)
                elif member.isfile() and _wanted(parts):
                    found.files[parts] = tar.extractfile(member).read()
            _check_complete(tar)
    except _READ_ERRORS as exc:
        raise DataError(
            f"{path}: cannot read the archive ({type(exc).__name__}: {exc}); it is not a tar archive or it is "
            f"truncated or corrupt: re-download or re-create it ({_LAYOUTS})"
        ) from exc
    return found


def _check_complete(tar: tarfile.TarFile) -> None:
    """Raise if the member list ended early; tarfile stops silently at a cut or garbled header after the first."""
    stream = tar.fileobj
    if isinstance(stream, (gzip.GzipFile, bz2.BZ2File, lzma.LZMAFile)):
        # Decompressing to the end makes the stream's own CRC/length check cover every byte read.
        while stream.read(1 << 20):
            pass
        return
    stream.seek(tar.offset)
    if stream.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        raise tarfile.ReadError(f"no end-of-archive marker at byte {tar.offset}")


def _collect_directory(root: Path) -> _Found:
    found = _Found()
    budget = _Budget(root)
    try:
        for folder, subdirs, files in os.walk(root):
            rel = Path(folder).relative_to(root).parts
            subdirs[:] = sorted(d for d in subdirs if _clean_parts("/".join((*rel, d))) is not None)
            found.dirs.update((*rel, d) for d in subdirs)
            for name in sorted(files):
                parts = _clean_parts("/".join((*rel, name)))
                if parts is not None and _wanted(parts):
                    budget.check("/".join(parts), (Path(folder) / name).stat().st_size, True)
                    found.files[parts] = (Path(folder) / name).read_bytes()
    except OSError as exc:
        raise DataError(f"{root}: cannot read the dataset folder ({exc}); check its permissions") from exc
    return found


def _decode_image_folder(path: Path, images: dict[tuple[str, ...], bytes], dirs: set[tuple[str, ...]]):
    """NHWC uint8 arrays, labels and sorted class names from a train/<class>/<file> + test/<class>/<file> tree."""
    tops = {parts[0] for parts in (*images, *dirs)}
    if tops & set(_SPLITS):
        depth = 0
    elif len(tops) == 1:
        depth = 1  # one wrapping folder, e.g. cifar10-jpeg/train/airplane/0001.jpg
    else:
        raise DataError(f"{path}: no train/ or test/ folder (top level holds {sorted(tops)[:5]}); {_LAYOUTS}")
    splits: dict[str, dict[str, list[tuple[str, bytes]]]] = {s: {} for s in _SPLITS}
    for parts in sorted(dirs):
        rel = parts[depth:]
        if len(rel) == 2 and rel[0] in splits:
            splits[rel[0]].setdefault(rel[1], [])
    for parts, data in images.items():
        rel = parts[depth:]
        if not rel or rel[0] not in splits:
            continue  # e.g. a val/ folder or a preview image beside the splits
        if len(rel) != 3:
            raise DataError(f"{path}: image {'/'.join(parts)} is not at <split>/<class>/<file>; {_LAYOUTS}")
        splits[rel[0]].setdefault(rel[1], []).append((rel[2], data))
    for split, by_class in splits.items():
        if not by_class:
            raise DataError(f"{path}: no {split}/<class>/ folders with images found; {_LAYOUTS}")
        empty = sorted(c for c, files in by_class.items() if not files)
        if empty:
            raise DataError(f"{path}: class folder(s) {empty} under {split}/ hold no .jpg/.jpeg/.png images")
    train_classes, test_classes = sorted(splits["train"]), sorted(splits["test"])
    if train_classes != test_classes:
        raise DataError(
            f"{path}: train/ and test/ have different class folders (only in train/: "
            f"{sorted(set(train_classes) - set(test_classes))}, only in test/: "
            f"{sorted(set(test_classes) - set(train_classes))}); both need the same {NUM_CLASSES} classes"
        )
    if len(train_classes) != NUM_CLASSES:
        raise DataError(f"{path}: found {len(train_classes)} class folders {train_classes}, need {NUM_CLASSES}")
    prefix = "/".join(next(iter(images))[:depth])
    arrays = []
    for split in _SPLITS:
        files = [(label, name, data) for label, c in enumerate(train_classes)
                 for name, data in sorted(splits[split][c])]
        pixels = np.empty((len(files), 32, 32, 3), dtype=np.uint8)
        for i, (label, name, data) in enumerate(files):
            member = "/".join(p for p in (prefix, split, train_classes[label], name) if p)
            pixels[i] = _decode_image(path, member, data)
        arrays += [pixels, np.array([label for label, _, _ in files], dtype=np.int64)]
    return (*arrays, tuple(train_classes))


def _decode_image(path: Path, member: str, data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data), formats=("JPEG", "PNG")) as image:
            if image.size != (32, 32):
                raise DataError(f"{path}: image {member} is {image.size[0]}x{image.size[1]} pixels, expected 32x32")
            image.load()  # decode errors surface here, not inside np.asarray
            rgb = image if image.mode == "RGB" else image.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: image {member} cannot be decoded ({exc}); the source is corrupt") from exc


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], object]:
    """The only callables the official batches' pickles need (numpy array reconstruction and bytes decoding)."""
    reconstruct = np.zeros(1).__reduce_ex__(2)[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    scalar = np.float64(0).__reduce_ex__(2)[0]
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): codecs.encode}
    for core in ("numpy.core", "numpy._core"):
        allowed[(f"{core}.multiarray", "_reconstruct")] = reconstruct
        allowed[(f"{core}.multiarray", "scalar")] = scalar
        allowed[(f"{core}.numeric", "_frombuffer")] = frombuffer
    return allowed


class _BatchUnpickler(pickle.Unpickler):
    # The batches are pickles; refusing every other global keeps a tampered archive from running code.
    def find_class(self, module: str, name: str) -> object:
        allowed = _allowed_globals().get((module, name))
        if allowed is None:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")
        return allowed


def _unpickle(path: Path, name: str, raw: bytes) -> dict:
    try:
        value = _BatchUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            OverflowError) as exc:
        raise DataError(f"{path}: member {name} is not a readable CIFAR-10 pickle ({exc}); re-download it") from exc
    if not isinstance(value, dict):
        raise DataError(f"{path}: member {name} holds a {type(value).__name__}, expected a dict; re-download it")
    return value


def _official_batch(path: Path, name: str, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(path, name, raw)
    data = batch.get(b"data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"{path}: member {name} has no uint8 (N, 3072) b'data' array; re-download the archive")
    try:
        labels = np.asarray(batch.get(b"labels"), dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        labels = np.empty(0, dtype=np.int64)
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: member {name} lacks a b'labels' list for its {data.shape[0]} images; re-download it")
    # Rows are channel-planar (1024 R, 1024 G, 1024 B values, each row-major 32x32): CHW -> HWC.
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)), labels


def _decode_official(path: Path, found: dict[tuple[str, ...], bytes]):
    members: dict[str, bytes] = {}
    for parts, data in sorted(found.items()):
        if parts[-1] in members:
            raise DataError(f"{path}: two copies of {parts[-1]} ({'/'.join(parts)}); keep one cifar-10-batches-py")
        members[parts[-1]] = data
    missing = [name for name in _OFFICIAL_MEMBERS if name not in members]
    if missing:
        raise DataError(f"{path}: official CIFAR-10 archive lacks {missing}; re-download cifar-10-python.tar.gz")
    names = _unpickle(path, "batches.meta", members["batches.meta"]).get(b"label_names")
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{path}: batches.meta has no b'label_names' list; re-download cifar-10-python.tar.gz")
    classes = tuple(n.decode(errors="replace") if isinstance(n, bytes) else n for n in names)
    train = [_official_batch(path, name, members[name]) for name in _OFFICIAL_TRAIN]
    test_x, test_y = _official_batch(path, "test_batch", members["test_batch"])
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return train_x, train_y, test_x, test_y, classes
