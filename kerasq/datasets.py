"""Real image-classification data sets as numpy arrays.

* ``digits``: the 8x8 handwritten digits of the UCI "Optical Recognition of Handwritten
  Digits" data set (1,797 images, the copy scikit-learn ships as ``load_digits``), stored
  inside this package as ``kerasq/data/digits.npz`` (45 kB): works offline, no extra install.
* ``mnist`` and ``fashion_mnist``: 28x28 images from the original IDX files (gzip or raw),
  read from a folder laid out like the original distributions; without a folder, from
  ``$KERASQ_DATA``, and failing that downloaded by ``tf_keras.datasets``.

Every loader returns ``(x_train, y_train), (x_test, y_test)`` with images as float32 in
[0, 1] of shape ``(N, H, W, 1)`` and labels as int64 of shape ``(N,)``. This module needs
numpy only; tf_keras is imported when (and only if) a download is attempted.
"""

from __future__ import annotations

import gzip
import os
import zlib
from importlib import resources
from pathlib import Path
from typing import Union

import numpy as np

__all__ = [
    "DATASETS",
    "IDX_DATASETS",
    "digits_arrays",
    "load_dataset",
    "load_digits",
    "load_idx_dataset",
    "read_idx",
    "to_rgb",
]

PathLike = Union[str, os.PathLike]
Split = tuple[np.ndarray, np.ndarray]

# Environment variable naming a folder that holds ``mnist/`` and ``fashion-mnist/``.
DATA_ENV_VAR = "KERASQ_DATA"

# Data set name -> accepted folder names under the data directory (first is canonical).
IDX_DATASETS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist",),
    "fashion_mnist": ("fashion-mnist", "fashion_mnist"),
}
DATASETS: tuple[str, ...] = ("digits", "mnist", "fashion_mnist")

# The digits inside the package (kerasq/data/), 45 kB.
DIGITS_FILE = "digits.npz"

_IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

# IDX type code (third magic byte) -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def load_digits(test_fraction: float = 0.25, seed: int = 0) -> tuple[Split, Split]:
    """The 8x8 handwritten digits, split into train and test.

    The images are the UCI ML repository's "Optical Recognition of Handwritten Digits" test
    set (E. Alpaydin, C. Kaynak, 1998; CC BY 4.0), identical to scikit-learn's
    ``sklearn.datasets.load_digits()``: 32x32 bitmaps counted in 4x4 blocks, so every pixel
    is an integer 0..16. They ship inside kerasq (``kerasq/data/digits.npz``).

    The split is stratified: from each class, ``round(test_fraction * class_count)`` images
    chosen by a permutation seeded with ``seed`` go to the test set; each split is then
    shuffled with the same generator. The same arguments always give the same arrays.

    Args:
        test_fraction: share of each class held out for testing, in (0, 1).
        seed: seed of the permutation.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: images float32 in [0, 1] (pixel / 16),
        shape ``(N, 8, 8, 1)``; labels int64 in 0..9, shape ``(N,)``. With the default
        0.25 the split is 1,347 / 450 of 1,797 images.

    Raises:
        ValueError: ``test_fraction`` outside (0, 1).
    """
    if not 0.0 < float(test_fraction) < 1.0:
        raise ValueError(
            f"test_fraction must be in (0, 1). Received: test_fraction={test_fraction!r}"
        )
    pixels, labels = digits_arrays()
    images = (pixels.astype(np.float32) / np.float32(16.0))[..., np.newaxis]
    labels = labels.astype(np.int64)

    rng = np.random.default_rng(seed)
    test_parts = []
    train_parts = []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        n_test = int(round(float(test_fraction) * len(members)))
        test_parts.append(members[:n_test])
        train_parts.append(members[n_test:])
    train_idx = rng.permutation(np.concatenate(train_parts))
    test_idx = rng.permutation(np.concatenate(test_parts))
    return (images[train_idx], labels[train_idx]), (images[test_idx], labels[test_idx])


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as stored: ``(pixels uint8 [1797, 8, 8] in 0..16, labels uint8 [1797])``.

    In scikit-learn's order (``load_digits().images`` and ``.target``).
    """
    with resources.files("kerasq").joinpath("data", DIGITS_FILE).open("rb") as f:
        with np.load(f) as archive:
            return archive["images"], archive["labels"]


def read_idx(path: PathLike) -> np.ndarray:
    """Reads an IDX file (the MNIST format), gzip-compressed or raw.

    Layout: two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions, one big-endian uint32 per
    dimension, then the values, big-endian, row-major. Gzip is detected from the content
    (magic ``1f 8b``), not from the file name.

    Args:
        path: the file.

    Returns:
        Array of the shape in the header, in native byte order (e.g. MNIST training images:
        uint8 of shape (60000, 28, 28)).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the content is not a complete IDX file (bad gzip stream, bad magic,
            unknown type, or a size other than the header announces); the message names the
            file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {str(path)!r}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{str(path)!r} is not a readable gzip file: {err}") from err
    if len(raw) < 4:
        raise ValueError(
            f"{str(path)!r} is not an IDX file: {len(raw)} bytes, shorter than the 4-byte magic."
        )
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(
            f"{str(path)!r} is not an IDX file: magic {raw[:4].hex()} (expected 0000TTNN with "
            f"type TT in {[f'{t:02x}' for t in _IDX_DTYPES]})."
        )
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    if ndim == 0:
        raise ValueError(f"{str(path)!r} is not an IDX file: the header declares 0 dimensions.")
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise ValueError(
            f"{str(path)!r} is truncated: {len(raw)} bytes, shorter than its "
            f"{header_size}-byte header."
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(raw) - header_size
    if actual != expected:
        raise ValueError(
            f"{str(path)!r} has {actual} data bytes, but its header shape {shape} of "
            f"{dtype.name} needs {expected}."
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header_size).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=True)


def _find_dataset_folder(name: str, root: Path) -> Path:
    """The folder holding ``name``'s IDX files: a known subfolder of root, or root itself."""
    candidates = [root / folder for folder in IDX_DATASETS[name]]
    for folder in candidates:
        if folder.is_dir():
            return folder
    # A data_dir that is itself the data set's folder.
    if any(
        (root / (base + suffix)).is_file()
        for base in _IDX_FILES.values()
        for suffix in (".gz", "")
    ):
        return root
    raise FileNotFoundError(
        f"No {name} folder in {str(root)!r}: expected one of "
        f"{[str(c) for c in candidates]} holding {sorted(_IDX_FILES.values())} (.gz or raw)."
    )


def _read_idx_folder(name: str, folder: Path) -> dict[str, np.ndarray]:
    arrays = {}
    for key, base in _IDX_FILES.items():
        for file_name in (base + ".gz", base):
            if (folder / file_name).is_file():
                arrays[key] = read_idx(folder / file_name)
                break
        else:
            raise FileNotFoundError(
                f"Missing {name} file {str(folder / (base + '.gz'))!r} "
                f"(or un-gzipped {base!r}) in {str(folder)!r}."
            )
    return arrays


def _to_float_images(images: np.ndarray, labels: np.ndarray, what: str) -> Split:
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise ValueError(f"{what} images must have shape (N, 28, 28). Received: {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(
            f"{what} labels must have shape ({images.shape[0]},) to match the images. "
            f"Received: {labels.shape}"
        )
    x = (images.astype(np.float32) / np.float32(255.0))[..., np.newaxis]
    return x, labels.astype(np.int64)


def _download_with_tf_keras(name: str) -> tuple[tuple, tuple]:
    try:
        import tf_keras

        loader = getattr(tf_keras.datasets, name)
        return loader.load_data()
    except Exception as err:  # no tf_keras, no network, a broken cache: all mean "no data"
        raise RuntimeError(
            f"Could not load {name!r}: no data_dir was given, ${DATA_ENV_VAR} is not set, and "
            f"downloading with tf_keras.datasets.{name}.load_data() failed ({err!r}). Pass "
            f"data_dir= (a folder holding {IDX_DATASETS[name][0]}/ with the four IDX files) or "
            f"set {DATA_ENV_VAR} to such a folder."
        ) from err


def load_idx_dataset(name: str, data_dir: PathLike | None = None) -> tuple[Split, Split]:
    """MNIST or Fashion-MNIST from the original IDX files.

    Where the files come from:

    1. ``data_dir``, if given: its ``mnist/`` or ``fashion-mnist/`` (also ``fashion_mnist/``)
       subfolder, or ``data_dir`` itself if it holds the files;
    2. otherwise ``$KERASQ_DATA``, the same way;
    3. otherwise ``tf_keras.datasets.<name>.load_data()`` (downloads once into ~/.keras).

    Each folder holds ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
    ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz`` (or the same names
    without ``.gz``).

    Args:
        name: ``"mnist"`` or ``"fashion_mnist"``.
        data_dir: folder to read from (see above).

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: images float32 in [0, 1] (pixel / 255),
        shape ``(N, 28, 28, 1)``, N = 60,000 / 10,000; labels int64 in 0..9, shape ``(N,)``.

    Raises:
        ValueError: unknown ``name``, or files whose contents are not the expected arrays.
        FileNotFoundError: the folder or one of the four files is missing (the message names
            it).
        RuntimeError: no ``data_dir``, no ``$KERASQ_DATA``, and the download failed.
    """
    if name not in IDX_DATASETS:
        raise ValueError(
            f"Unknown IDX data set {name!r}. Valid names: {sorted(IDX_DATASETS)}"
        )
    if data_dir is None:
        env_dir = os.environ.get(DATA_ENV_VAR, "").strip()
        if env_dir:
            data_dir = env_dir
    if data_dir is None:
        (x_train, y_train), (x_test, y_test) = _download_with_tf_keras(name)
        return (
            _to_float_images(x_train, y_train, f"{name} train"),
            _to_float_images(x_test, y_test, f"{name} test"),
        )
    root = Path(data_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"Data directory not found: {str(root)!r}")
    folder = _find_dataset_folder(name, root)
    arrays = _read_idx_folder(name, folder)
    return (
        _to_float_images(arrays["x_train"], arrays["y_train"], f"{name} train ({folder})"),
        _to_float_images(arrays["x_test"], arrays["y_test"], f"{name} test ({folder})"),
    )


def to_rgb(images: np.ndarray, size: int = 32) -> np.ndarray:
    """Grey images ``(N, H, W, 1)`` as RGB ``(N, size, size, 3)``: centred with zero padding, channel repeated.

    The usual way to feed MNIST-like data to networks built for colour images (Fashion-MNIST
    28x28 → 32x32x3). ``size`` must be at least ``H`` and ``W``.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 1:
        raise ValueError(f"images must have shape (N, H, W, 1). Received: {images.shape}")
    height, width = images.shape[1:3]
    if size < height or size < width:
        raise ValueError(f"size must be at least the image size {height}x{width}. Received: size={size}")
    top, left = (size - height) // 2, (size - width) // 2
    padded = np.pad(images, ((0, 0), (top, size - height - top), (left, size - width - left), (0, 0)))
    return np.repeat(padded, 3, axis=-1)


def load_dataset(name: str, data_dir: PathLike | None = None) -> tuple[Split, Split]:
    """Loads a data set by name: ``"digits"``, ``"mnist"`` or ``"fashion_mnist"``.

    ``digits`` uses :func:`load_digits` with its default split (``data_dir`` is not used);
    the others use :func:`load_idx_dataset`.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``, images float32 in [0, 1] of shape
        ``(N, H, W, 1)``, labels int64.

    Raises:
        ValueError: unknown name (the message lists the valid ones).
    """
    if name == "digits":
        return load_digits()
    if name in IDX_DATASETS:
        return load_idx_dataset(name, data_dir)
    raise ValueError(f"Unknown data set {name!r}. Valid names: {list(DATASETS)}")
