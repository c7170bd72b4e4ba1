"""bnflow.data: source readers, the prepared-file format, exact statistics and the synthetic dataset.

Fixtures are generated here under tmp_path; expected values come from independent computations (explicit index
formulas, numpy statistics, hashlib, pixels kept while writing lossless PNGs).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import re
import tarfile
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bnflow.data import (
    PreparedData,
    compute_mean_std,
    from_archive,
    from_torchvision,
    load_prepared,
    make_synthetic,
    save_prepared,
)
from bnflow.errors import DataError

CIFAR = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SHARED_ARCHIVE = Path(__file__).parents[2] / "shared/datasets/cifar10-jpeg.tar.gz"
SHARED_SHA256 = "ff26949c34c4e67da3fa472a1f142e33365dea058f94f1fa369b14ef3d986968"


# ---------------------------------------------------------------- fixtures


def _tar(folder: Path, out: Path, prefix: str = "", mode: str = "w:gz") -> Path:
    """Tar every file/folder below `folder` under `prefix` (reverse name order: readers must sort)."""
    with tarfile.open(out, mode) as tar:
        for item in sorted(folder.rglob("*"), reverse=True):
            name = item.relative_to(folder).as_posix()
            tar.add(item, arcname=f"{prefix}/{name}" if prefix else name, recursive=False)
    return out


def _png(path: Path, pixels: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Lossless PNG: (H, W, 3) as RGB, (H, W) as L, or (H, W) palette indices as P when `palette` is given."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels)
    if palette is not None:
        image.putpalette(palette.ravel().tolist())  # turns the L image into a P image
        assert image.mode == "P"
    image.save(path, format="PNG")


@pytest.fixture
def image_tree(tmp_path: Path):
    """train/<class>/{a.png (exact RGB), b.jpg (smooth)} and test/<class>/c.png (L for class 0, P for class 1)."""
    rng = np.random.default_rng(1)
    root = tmp_path / "tree"
    expected = {"train": [], "test": []}
    ramp = np.linspace(40, 200, 32)
    for label, name in reversed(list(enumerate(CIFAR))):  # created in reverse: readers must sort
        exact = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        _png(root / "train" / name / "a.png", exact)
        rows, cols = np.meshgrid(ramp, ramp, indexing="ij")
        smooth = np.stack([rows, cols, np.full((32, 32), 20.0 * label)], axis=-1).astype(np.uint8)
        Image.fromarray(smooth).save(root / "train" / name / "b.jpg", format="JPEG", quality=95)
        if label == 0:
            grey = rng.integers(0, 256, size=(32, 32), dtype=np.uint8)
            _png(root / "test" / name / "c.png", grey)
            test_pixels = np.repeat(grey[..., None], 3, axis=-1)
        elif label == 1:
            index = rng.integers(0, 4, size=(32, 32), dtype=np.uint8)
            palette = rng.integers(0, 256, size=(256, 3), dtype=np.uint8)
            _png(root / "test" / name / "c.png", index, palette=palette)
            test_pixels = palette[index]
        else:
            test_pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
            _png(root / "test" / name / "c.png", test_pixels)
        expected["train"].insert(0, (label, exact, smooth))
        expected["test"].insert(0, (label, test_pixels))
    return root, expected


def _official_members(rng: np.random.Generator, per_batch: int = 4) -> tuple[dict[str, bytes], dict]:
    """Pickles in the official layout: b'data' (N, 3072) uint8 channel-planar rows, b'labels' a list."""
    members, truth = {}, {"train_rows": [], "train_labels": []}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]
        batch = {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
                 b"filenames": [f"img{i}.png".encode() for i in range(per_batch)]}
        members[name] = pickle.dumps(batch, protocol=2)
        if name == "test_batch":
            truth["test_rows"], truth["test_labels"] = rows, labels
        else:
            truth["train_rows"].append(rows)
            truth["train_labels"] += labels
    meta = {b"label_names": [c.encode() for c in CIFAR], b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    members["batches.meta"] = pickle.dumps(meta, protocol=2)
    members["readme.html"] = b"<html></html>"
    return members, truth


def _write_members(out: Path, members: dict[str, bytes], folder: str = "cifar-10-batches-py") -> Path:
    with tarfile.open(out, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out


def _rows_to_hwc(rows: np.ndarray) -> np.ndarray:
    """The official row format by its definition: value (c, h, w) sits at column c*1024 + h*32 + w."""
    out = np.empty((len(rows), 32, 32, 3), dtype=np.uint8)
    for c in range(3):
        for h in range(32):
            for w in range(32):
                out[:, h, w, c] = rows[:, c * 1024 + h * 32 + w]
    return out


def _data(n_train: int = 20, n_test: int = 10, seed: int = 0) -> PreparedData:
    rng = np.random.default_rng(seed)
    train = rng.integers(0, 256, size=(n_train, 32, 32, 3), dtype=np.uint8)
    mean, std = compute_mean_std(train)
    return PreparedData(train, np.arange(n_train, dtype=np.int64) % 10,
                        rng.integers(0, 256, size=(n_test, 32, 32, 3), dtype=np.uint8),
                        np.arange(n_test, dtype=np.int64) % 10, CIFAR, mean, std, "test", "0" * 64)


# ---------------------------------------------------------------- statistics and container


def test_mean_std_matches_numpy_and_a_hand_computed_case():
    images = np.random.default_rng(3).integers(0, 256, size=(7, 32, 32, 3), dtype=np.uint8)
    mean, std = compute_mean_std(images)
    scaled = images.astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, scaled.mean(axis=(0, 1, 2)), rtol=1e-13)
    np.testing.assert_allclose(std, scaled.std(axis=(0, 1, 2)), rtol=1e-12)
    # half the pixels 0, half 255 in channel 0; constant 51 (= 0.2) in channel 1; 0/51 split in channel 2
    hand = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    hand[0, ..., 0] = 255
    hand[..., 1] = 51
    hand[1, ..., 2] = 51
    mean, std = compute_mean_std(hand)
    assert mean == (0.5, 0.2, 0.1) and std == (0.5, 0.0, 0.1)


@pytest.mark.parametrize("field, value, needle", [
    ("train_labels", np.arange(20, dtype=np.int32) % 10, "int64"),
    ("test_labels", np.full(10, 10, dtype=np.int64), "range"),
    ("train_images", np.zeros((20, 32, 32, 1), dtype=np.uint8), "shape"),
    ("test_images", np.zeros((10, 32, 32, 3), dtype=np.float32), "uint8"),
    ("classes", CIFAR[:9], "10 distinct"),
    ("source_sha256", "xyz", "hex"),
])
def test_prepared_data_rejects_bad_fields(field, value, needle):
    good = _data()
    fields = {name: getattr(good, name) for name in good.__dataclass_fields__}
    with pytest.raises(DataError, match=needle):
        PreparedData(**{**fields, field: value})


# ---------------------------------------------------------------- save / load


def test_save_load_roundtrip_is_exact_uncompressed_and_pickle_free(tmp_path):
    data = _data()
    path = tmp_path / "prepared.npz"
    save_prepared(path, data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared.npz"]
    with zipfile.ZipFile(path) as archive:
        assert {info.compress_type for info in archive.infolist()} == {zipfile.ZIP_STORED}
    back = load_prepared(path)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert getattr(back, name).dtype == getattr(data, name).dtype
        np.testing.assert_array_equal(getattr(back, name), getattr(data, name))
    assert (back.classes, back.mean, back.std, back.source, back.source_sha256) == (
        data.classes, data.mean, data.std, data.source, data.source_sha256)


def test_failed_save_leaves_no_file_and_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "prepared.npz"

    def broken_savez(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_prepared(path, _data())
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    save_prepared(path, _data(seed=1))
    before = path.read_bytes()
    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError):
        save_prepared(path, _data(seed=2))
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["prepared.npz"]


def test_load_reports_missing_corrupt_and_incomplete_files(tmp_path):
    path = tmp_path / "prepared.npz"
    with pytest.raises(DataError, match=r"not found.*python -m bnflow prepare") as err:
        load_prepared(path)
    assert str(path) in str(err.value)
    save_prepared(path, _data())
    whole = path.read_bytes()
    bad_files = {"half.npz": whole[: len(whole) // 2],
                 "noise.npz": np.random.default_rng(0).bytes(5000)}
    partial = io.BytesIO()
    np.savez(partial, train_images=np.zeros((1, 32, 32, 3), np.uint8))
    bad_files["partial.npz"] = partial.getvalue()
    for name, content in bad_files.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError, match="python -m bnflow prepare") as err:
            load_prepared(tmp_path / name)
        assert name in str(err.value)


# ---------------------------------------------------------------- official archive


def test_official_archive_decodes_pixels_labels_and_classes(tmp_path):
    members, truth = _official_members(np.random.default_rng(5))
    path = _write_members(tmp_path / "cifar-10-python.tar.gz", members)
    data = from_archive(path)
    train_rows = np.concatenate(truth["train_rows"])
    assert data.train_images.shape == (20, 32, 32, 3) and data.test_images.shape == (4, 32, 32, 3)
    np.testing.assert_array_equal(data.train_images, _rows_to_hwc(train_rows))
    np.testing.assert_array_equal(data.test_images, _rows_to_hwc(truth["test_rows"]))
    assert data.train_labels.tolist() == truth["train_labels"] and data.train_labels.dtype == np.int64
    assert data.test_labels.tolist() == truth["test_labels"]
    assert data.classes == CIFAR
    assert data.source == "archive:cifar-10-python.tar.gz"
    assert data.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    scaled = data.train_images / 255.0
    np.testing.assert_allclose(data.mean, scaled.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(data.std, scaled.std(axis=(0, 1, 2)), rtol=1e-12)


def test_official_archive_missing_member_or_code_in_pickle_is_refused(tmp_path):
    members, _ = _official_members(np.random.default_rng(6))
    without_test = {k: v for k, v in members.items() if k != "test_batch"}
    with pytest.raises(DataError, match="test_batch"):
        from_archive(_write_members(tmp_path / "a.tar.gz", without_test))

    class RunsCode:  # unpickling it would call os.getcwd: the reader must refuse any such global
        def __reduce__(self):
            return (os.getcwd, ())

    hostile = {**members, "batches.meta": pickle.dumps({b"label_names": RunsCode()}, protocol=2)}
    with pytest.raises(DataError, match=r"batches\.meta.*refusing to load .*getcwd"):
        from_archive(_write_members(tmp_path / "b.tar.gz", hostile))


# ---------------------------------------------------------------- image folders


def _check_tree_result(data: PreparedData, expected) -> None:
    assert data.classes == CIFAR
    assert data.train_labels.tolist() == [k for k in range(10) for _ in range(2)]
    assert data.test_labels.tolist() == list(range(10))
    for label, exact, smooth in expected["train"]:
        np.testing.assert_array_equal(data.train_images[2 * label], exact)  # a.png sorts before b.jpg
        error = np.abs(data.train_images[2 * label + 1].astype(int) - smooth.astype(int)).mean()
        assert error < 3.0, f"class {label}: JPEG decoded {error:.1f} grey levels off on average"
    for label, pixels in expected["test"]:
        np.testing.assert_array_equal(data.test_images[label], pixels)
    mean, std = compute_mean_std(data.train_images)
    assert (data.mean, data.std) == (mean, std)


def test_image_folder_as_directory_and_tarballs_give_the_same_dataset(image_tree, tmp_path):
    root, expected = image_tree
    from_dir = from_archive(root)
    _check_tree_result(from_dir, expected)
    assert from_dir.source == "directory:tree"
    wrapped = _tar(root, tmp_path / "mini.tar.gz", prefix="cifar10-mini")  # one top-level folder
    plain = _tar(root, tmp_path / "mini.tar", prefix=".", mode="w")  # ./train/... members, uncompressed
    for archive in (wrapped, plain):
        data = from_archive(archive)
        _check_tree_result(data, expected)
        assert data.source == f"archive:{archive.name}"
        assert data.source_sha256 == hashlib.sha256(archive.read_bytes()).hexdigest()
        np.testing.assert_array_equal(data.train_images, from_dir.train_images)


def test_unreadable_archives_raise_data_error_naming_the_path(image_tree, tmp_path):
    root, _ = image_tree
    gz = _tar(root, tmp_path / "mini.tar.gz", prefix="top")
    plain = _tar(root, tmp_path / "mini.tar", mode="w")
    with tarfile.open(plain) as tar:
        # a cut exactly before a header: tarfile itself would just stop there and return fewer members
        boundary = [m.offset for m in tar.getmembers()][len(tar.getmembers()) // 2]
    cases = {
        "missing.tar.gz": None,
        "half.tar.gz": gz.read_bytes()[: gz.stat().st_size // 2],
        "half.tar": plain.read_bytes()[: plain.stat().st_size // 2],
        "boundary.tar": plain.read_bytes()[:boundary],
        "noise.tgz": np.random.default_rng(0).bytes(4096),
        "flipped.tar.gz": _flip_byte(gz.read_bytes()),  # same length: only the gzip CRC can tell
    }
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
        with pytest.raises(DataError) as err:
            from_archive(tmp_path / name)
        assert str(tmp_path / name) in str(err.value), name
        assert ("not found" if content is None else "truncated or corrupt") in str(err.value), name


def _flip_byte(content: bytes) -> bytes:
    damaged = bytearray(content)
    damaged[len(damaged) // 2] ^= 0xFF
    return bytes(damaged)


def _mutated_tree_errors(root: Path, tmp_path: Path, mutate) -> list[str]:
    """DataError messages for the mutated tree read as a folder and as a tarball with a top-level folder."""
    mutate(root)
    messages = []
    for source in (root, _tar(root, tmp_path / "mutated.tar.gz", prefix="top")):
        with pytest.raises(DataError) as err:
            from_archive(source)
        assert str(source) in str(err.value)
        messages.append(str(err.value))
    return messages


def _rename(root: Path, old: str, new: str) -> None:
    (root / old).rename(root / new)


@pytest.mark.parametrize("mutate, needle", [
    (lambda r: _rename(r, "test", "val"), "no test/<class>/ folders"),
    (lambda r: _rename(r, "test/truck", "test/lorry"), r"only in train/: \['truck'\], only in test/: \['lorry'\]"),
    (lambda r: _png(r / "train/cat/z.png", np.zeros((30, 32, 3), np.uint8)), r"train/cat/z\.png is 32x30 pixels"),
    (lambda r: (r / "train/dog/d.png").write_bytes(b"\x89PNG not really"), r"train/dog/d\.png cannot be decoded"),
    (lambda r: [p.unlink() for p in (r / "test/ship").iterdir()], r"\['ship'\] under test/ hold no"),
    (lambda r: _png(r / "train/e.png", np.zeros((32, 32, 3), np.uint8)), r"train/e\.png is not at <split>/<class>"),
])
def test_wrong_layouts_and_images_are_explained(image_tree, tmp_path, mutate, needle):
    root, _ = image_tree
    for message in _mutated_tree_errors(root, tmp_path, mutate):
        assert re.search(needle, message), message


def test_nine_classes_or_no_images_are_rejected(image_tree, tmp_path):
    root, _ = image_tree
    for split in ("train", "test"):
        for item in (root / split / "truck").iterdir():
            item.unlink()
        (root / split / "truck").rmdir()
    with pytest.raises(DataError, match="found 9 class folders"):
        from_archive(root)
    empty = tmp_path / "empty"
    (empty / "docs").mkdir(parents=True)
    (empty / "docs" / "README.txt").write_text("nothing here")
    with pytest.raises(DataError, match="no CIFAR-10 batches and no .jpg"):
        from_archive(empty)


# ---------------------------------------------------------------- torchvision


def test_torchvision_download_failure_says_how_to_work_offline(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", offline)
    with pytest.raises(DataError, match=r"prepare\.source: archive.*prepare\.archive") as err:
        from_torchvision(tmp_path / "downloads")
    assert str(tmp_path / "downloads") in str(err.value)


def test_torchvision_result_is_passed_through_with_the_tarball_hash(tmp_path, monkeypatch):
    import torchvision

    rng = np.random.default_rng(8)
    sets = {True: (rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8), [0, 1, 2, 3, 4, 9]),
            False: (rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8), [5, 6, 7])}

    class FakeCIFAR10:
        def __init__(self, root, train, download):
            (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"pretend archive")
            self.data, self.targets, self.classes = *sets[train], list(CIFAR)

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    data = from_torchvision(tmp_path)
    np.testing.assert_array_equal(data.train_images, sets[True][0])
    assert data.test_labels.tolist() == [5, 6, 7] and data.classes == CIFAR and data.source == "torchvision"
    assert data.source_sha256 == hashlib.sha256(b"pretend archive").hexdigest()


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_balanced_and_hashed():
    a, b, c = make_synthetic(3, 50, 20), make_synthetic(3, 50, 20), make_synthetic(4, 50, 20)
    for name in ("train_images", "train_labels", "test_images", "test_labels"):
        assert getattr(a, name).tobytes() == getattr(b, name).tobytes()
    assert not np.array_equal(a.train_images, c.train_images) and a.source_sha256 != c.source_sha256
    assert np.bincount(a.train_labels).tolist() == [5] * 10 and np.bincount(a.test_labels).tolist() == [2] * 10
    assert np.bincount(make_synthetic(3, 53, 20).train_labels, minlength=10).tolist() == [6, 6, 6] + [5] * 7
    # the test split has its own stream: it does not move when n_train changes
    np.testing.assert_array_equal(make_synthetic(3, 80, 20).test_images, a.test_images)
    digest = hashlib.sha256(b"".join(getattr(a, n).tobytes() for n in
                                     ("train_images", "train_labels", "test_images", "test_labels")))
    assert a.source_sha256 == digest.hexdigest() and a.classes == tuple(f"class{k}" for k in range(10))


def test_synthetic_is_learnable_by_a_conv_net_but_not_from_one_pixel():
    data = make_synthetic(0, 1000, 500)
    flat_train = data.train_images.reshape(1000, -1).astype(np.float64)
    flat_test = data.test_images.reshape(500, -1).astype(np.float64)
    # best single pixel/channel (chosen on train) with a nearest-class-mean rule, scored on test
    centres = np.stack([flat_train[data.train_labels == k].mean(0) for k in range(10)])
    train_hits = np.abs(flat_train[:, None, :] - centres).argmin(1) == data.train_labels[:, None]
    best = train_hits.mean(0).argmax()
    pixel_acc = (np.abs(flat_test[:, best, None] - centres[:, best]).argmin(1) == data.test_labels).mean()
    assert pixel_acc < 0.16, f"one pixel predicts the class with accuracy {pixel_acc:.3f}"

    mean, std = torch.tensor(data.mean).view(1, 3, 1, 1), torch.tensor(data.std).view(1, 3, 1, 1)

    def tensor(images):
        return ((torch.from_numpy(images).permute(0, 3, 1, 2).double() / 255 - mean) / std).float()

    x, y, x_test = tensor(data.train_images), torch.from_numpy(data.train_labels), tensor(data.test_images)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            net = torch.nn.Sequential(
                torch.nn.Conv2d(3, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 10))
        optimiser = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
        order = torch.Generator().manual_seed(0)
        for _ in range(150):
            idx = torch.randint(0, 1000, (32,), generator=order)
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        with torch.no_grad():
            accuracy = (net(x_test).argmax(1).numpy() == data.test_labels).mean()
    finally:
        torch.set_num_threads(threads)
    assert accuracy > 0.3, f"tiny conv net reached only {accuracy:.3f} test accuracy (chance 0.1)"


# ---------------------------------------------------------------- the real offline copy


@pytest.mark.slow  # ~10 s idle, over a minute on a loaded 2-core machine (issue 14)
@pytest.mark.skipif(not SHARED_ARCHIVE.is_file(), reason=f"{SHARED_ARCHIVE} not present")
def test_shared_cifar10_jpeg_archive():
    data = from_archive(SHARED_ARCHIVE)
    assert data.train_images.shape == (50_000, 32, 32, 3) and data.test_images.shape == (10_000, 32, 32, 3)
    assert np.bincount(data.train_labels).tolist() == [5000] * 10
    assert np.bincount(data.test_labels).tolist() == [1000] * 10
    assert data.classes == CIFAR and data.source == "archive:cifar10-jpeg.tar.gz"
    assert data.source_sha256 == SHARED_SHA256
    # JPEG re-encoding moves CIFAR-10's published channel means (0.4914, 0.4822, 0.4465) only slightly
    np.testing.assert_allclose(data.mean, (0.4914, 0.4822, 0.4465), atol=3e-3)


# ------------------------------------------------------------------------------------------ issue 26: tar bombs
def _bomb(path: Path, name: str, size: int) -> Path:
    """A .tar.gz whose one member header declares `size` bytes and carries none of them (nothing allocated)."""
    info = tarfile.TarInfo(name)
    info.size = size
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb") as gz:
        gz.write(info.tobuf(format=tarfile.GNU_FORMAT))
    return path


@pytest.mark.parametrize("name", ["cifar-10-batches-py/data_batch_1", "train/cat/a.png", "junk/skipped.bin",
                                  ".hidden"])
def test_a_member_declaring_gigabytes_is_refused_at_its_header(tmp_path, name):
    """A 4.4 MB .tar.gz holding a 4 GB member reached 4.7 GB of memory before it was refused (read whole)."""
    bomb = _bomb(tmp_path / "bomb.tar.gz", name, 4 << 30)
    with pytest.raises(DataError, match=rf"bomb.tar.gz: .*{re.escape(name)} declares 4,294,967,296 bytes.*"
                                        r"refused before reading"):
        from_archive(bomb)


def test_archive_members_are_capped_one_by_one_and_in_all(image_tree, tmp_path, monkeypatch):
    import bnflow.data.sources as sources

    root, expected = image_tree
    archive = _tar(root, tmp_path / "mini.tar.gz", prefix="top")
    sizes = [m.size for m in tarfile.open(archive) if m.isfile()]
    monkeypatch.setattr(sources, "MEMBER_CAP", {"official": 1 << 20, "image": max(sizes) - 1})
    with pytest.raises(DataError, match=r"more than a 32x32 image file can hold"):
        from_archive(archive)
    with pytest.raises(DataError, match=r"more than a 32x32 image file can hold"):
        from_archive(root)  # the same caps for a folder
    monkeypatch.setattr(sources, "MEMBER_CAP", {"official": 1 << 20, "image": max(sizes)})
    monkeypatch.setattr(sources, "TOTAL_CAP", sum(sizes) - 1)
    with pytest.raises(DataError, match=r"declare more than .* bytes in all"):
        from_archive(archive)
    monkeypatch.setattr(sources, "TOTAL_CAP", sum(sizes))
    _check_tree_result(from_archive(archive), expected)  # exactly at the caps: read as before
