"""A deterministic, learnable 10-class 32x32 RGB dataset for CPU tests and the quick run (no download needed).

Each class is a smooth random texture: a sum of a few low-frequency plane waves on the 32x32 torus, each with its
own colour. A sample is its class texture circularly shifted by a random offset, maybe mirrored, with per-sample
contrast/brightness jitter and Gaussian pixel noise, quantised to uint8. Integer frequencies make every texture
zero-mean in every channel and exactly periodic, so with the default full-range shift every pixel has the same
distribution in every class (a single pixel predicts the label at chance), while a conv net can still read the
class from local frequency, orientation and colour structure.
"""

from __future__ import annotations

import hashlib

import numpy as np

from bnflow.data.dataset import NUM_CLASSES, PreparedData, compute_mean_std

_SIDE = 32


def make_synthetic(
    seed: int,
    n_train: int,
    n_test: int,
    *,
    noise: float = 0.2,
    max_shift: int = 16,
    flip: bool = True,
    contrast_jitter: float = 0.3,
    brightness_jitter: float = 0.1,
    amplitude: float = 0.15,
    n_modes: int = 4,
    max_freq: int = 3,
) -> PreparedData:
    """Generate the synthetic dataset; the same arguments always give byte-identical arrays.

    Randomness: `numpy.random.default_rng(seed)` spawns three independent streams (class textures, train samples,
    test samples), so the test set does not change when `n_train` does.

    Args:
        seed: dataset seed; different seeds give different class textures and samples.
        n_train: number of training images (>= 10); classes are balanced (counts differ by at most one).
        n_test: number of test images (>= 10), balanced the same way.
        noise: standard deviation of the i.i.d. Gaussian pixel noise, in [0, 1] intensity units.
        max_shift: largest circular shift in pixels along each axis (uniform in [-max_shift, max_shift]);
            16 or more makes every offset equally likely, which removes all per-pixel class information.
        flip: mirror each sample left-right with probability 1/2.
        contrast_jitter: per-sample contrast factor drawn from U(1 - c, 1 + c).
        brightness_jitter: per-sample brightness offset drawn from U(-b, b), in [0, 1] intensity units.
        amplitude: standard deviation of each class texture (over pixels and channels) before jitter, in [0, 1]
            units; larger is easier.
        n_modes: plane waves per class texture; more gives busier, harder-to-tell-apart textures.
        max_freq: largest spatial frequency (cycles per 32 pixels) along each axis; textures stay smooth when small.

    Returns:
        `PreparedData` with classes "class0".."class9", source "synthetic" and source_sha256 = sha256 of the bytes of
        train_images, train_labels, test_images, test_labels (labels as little-endian int64), in that order.
    """
    if n_train < NUM_CLASSES or n_test < NUM_CLASSES:
        raise ValueError(f"n_train and n_test must be >= {NUM_CLASSES}, got {n_train} and {n_test}")
    if not 1 <= max_freq <= _SIDE // 2 or n_modes < 1 or max_shift < 0:
        raise ValueError(f"need 1 <= max_freq <= 16, n_modes >= 1, max_shift >= 0, got {max_freq, n_modes, max_shift}")
    if min(noise, contrast_jitter, brightness_jitter) < 0 or amplitude <= 0 or contrast_jitter >= 1:
        raise ValueError("noise, brightness_jitter >= 0, 0 <= contrast_jitter < 1 and amplitude > 0 are required")
    texture_rng, train_rng, test_rng = np.random.default_rng(seed).spawn(3)
    textures = class_textures(texture_rng, n_modes=n_modes, max_freq=max_freq, amplitude=amplitude)
    jitter = dict(noise=noise, max_shift=max_shift, flip=flip, contrast=contrast_jitter, brightness=brightness_jitter)
    train_x, train_y = _sample(train_rng, textures, n_train, **jitter)
    test_x, test_y = _sample(test_rng, textures, n_test, **jitter)
    digest = hashlib.sha256()
    for array in (train_x, train_y.astype("<i8"), test_x, test_y.astype("<i8")):
        digest.update(array.tobytes())
    mean, std = compute_mean_std(train_x)
    classes = tuple(f"class{k}" for k in range(NUM_CLASSES))
    return PreparedData(train_x, train_y, test_x, test_y, classes, mean, std, "synthetic", digest.hexdigest())


def class_textures(rng: np.random.Generator, *, n_modes: int, max_freq: int, amplitude: float) -> np.ndarray:
    """One smooth periodic colour texture per class.

    Args:
        rng: source of the random frequencies, phases and colours.
        n_modes: plane waves summed per texture.
        max_freq: largest integer frequency per axis, in cycles per 32 pixels.
        amplitude: standard deviation each texture is scaled to.

    Returns:
        float64 array (10, 32, 32, 3), zero mean per class and channel, standard deviation `amplitude` per class.
    """
    rows, cols = np.meshgrid(np.arange(_SIDE), np.arange(_SIDE), indexing="ij")
    textures = np.zeros((NUM_CLASSES, _SIDE, _SIDE, 3))
    for k in range(NUM_CLASSES):
        for _ in range(n_modes):
            freq = np.zeros(2, dtype=np.int64)
            while not freq.any():  # the (0, 0) mode is a constant colour: a trivial per-pixel cue
                freq = rng.integers(-max_freq, max_freq + 1, size=2)
            phase = rng.uniform(0.0, 2 * np.pi)
            colour = rng.normal(size=3)
            wave = np.cos(2 * np.pi * (freq[0] * rows + freq[1] * cols) / _SIDE + phase)
            textures[k] += wave[..., None] * colour
        # Modes can cancel; rescaling keeps every class equally visible above the noise.
        textures[k] *= amplitude / textures[k].std()
    return textures


def _sample(
    rng: np.random.Generator,
    textures: np.ndarray,
    n: int,
    *,
    noise: float,
    max_shift: int,
    flip: bool,
    contrast: float,
    brightness: float,
) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)
    images = np.empty((n, _SIDE, _SIDE, 3), dtype=np.uint8)
    for i, label in enumerate(labels):
        shift = rng.integers(-max_shift, max_shift + 1, size=2)
        texture = np.roll(textures[label], (int(shift[0]), int(shift[1])), axis=(0, 1))
        mirror = rng.random() < 0.5  # drawn even when flip is off so the other knobs keep their draws
        if flip and mirror:
            texture = texture[:, ::-1]
        gain = rng.uniform(1.0 - contrast, 1.0 + contrast)
        offset = rng.uniform(-brightness, brightness)
        pixels = 0.5 + gain * texture + offset + rng.normal(0.0, noise, size=texture.shape)
        images[i] = np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)
    return images, labels
