"""kerasq.datasets: the digits shipped in the package, the IDX reader, and MNIST / Fashion-MNIST folders."""

from __future__ import annotations

import gzip
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from kerasq import datasets
from kerasq.datasets import load_dataset, load_digits, load_idx_dataset, read_idx

DATA_DIR = os.environ.get("KERASQ_DATA", "").strip()
needs_real_data = pytest.mark.skipif(
    not DATA_DIR, reason="KERASQ_DATA is not set (point it at a folder with mnist/, fashion-mnist/)"
)


def _idx_bytes(array: np.ndarray, type_code: int = 0x08) -> bytes:
    header = bytes([0, 0, type_code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.tobytes()


def _write_fake_dataset(folder: Path, n_train: int = 6, n_test: int = 4, gz: bool = True) -> None:
    """Four small IDX files (28x28 images, labels 0..9) named as in the original distribution."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    files = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (9 - np.arange(n_test) % 10).astype(np.uint8),
    }
    for name, array in files.items():
        content = _idx_bytes(array)
        if gz:
            (folder / (name + ".gz")).write_bytes(gzip.compress(content))
        else:
            (folder / name).write_bytes(content)


# ----------------------------------------------------------------------------------------------
# digits
# ----------------------------------------------------------------------------------------------


def test_digits_shapes_ranges_and_determinism():
    (x_train, y_train), (x_test, y_test) = load_digits()
    # scikit-learn's digits: 1,797 images; 25% of each class held out.
    assert x_train.shape == (1347, 8, 8, 1) and x_test.shape == (450, 8, 8, 1)
    assert y_train.shape == (1347,) and y_test.shape == (450,)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    # Pixels are 0..16 counts divided by 16.
    np.testing.assert_array_equal(x_train * 16, np.round(x_train * 16))
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    # Stratified: every class has 44..46 test images (178..183 per class, times 0.25).
    assert np.bincount(y_test, minlength=10).min() >= 44
    assert np.bincount(y_test, minlength=10).max() <= 46

    (x_train2, y_train2), (x_test2, y_test2) = load_digits()
    np.testing.assert_array_equal(x_train, x_train2)
    np.testing.assert_array_equal(y_test, y_test2)
    (_, y_train3), _ = load_digits(seed=1)
    assert not np.array_equal(y_train, y_train3)


def test_digits_split_is_a_partition():
    from sklearn.datasets import load_digits as sk_load_digits

    (x_train, _), (x_test, _) = load_digits(test_fraction=0.5, seed=3)
    assert len(x_train) + len(x_test) == 1797
    reference = sk_load_digits().images.reshape(1797, -1) / 16.0
    ours = np.concatenate([x_train, x_test]).reshape(1797, -1).astype(np.float64)
    rows = {r.tobytes() for r in ours}
    assert rows == {r.tobytes() for r in reference}


def test_digits_rejects_bad_fraction():
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=1.0)


def test_digits_need_no_sklearn(monkeypatch):
    # The data ships inside kerasq: a fresh `pip install .` must run the demo without scikit-learn.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    (x_train, _), (x_test, _) = load_digits()
    assert len(x_train) + len(x_test) == 1797


def test_shipped_digits_equal_scikit_learns():
    from sklearn.datasets import load_digits as sk_load_digits

    pixels, labels = datasets.digits_arrays()
    reference = sk_load_digits()
    assert pixels.dtype == np.uint8 and pixels.shape == (1797, 8, 8) and int(pixels.max()) == 16
    np.testing.assert_array_equal(pixels, reference.images)
    np.testing.assert_array_equal(labels, reference.target)


# ----------------------------------------------------------------------------------------------
# read_idx
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_uint8(tmp_path, gz):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    content = _idx_bytes(array)
    assert content[:4] == b"\x00\x00\x08\x03" and len(content) == 16 + 24
    path = tmp_path / ("a.idx.gz" if gz else "a.idx")
    path.write_bytes(gzip.compress(content) if gz else content)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4)
    np.testing.assert_array_equal(out, array)


def test_read_idx_other_types_are_native_endian(tmp_path):
    values = np.array([[1.5, -2.25], [1e6, 0.0]], dtype=">f4")
    path = tmp_path / "f.idx"
    path.write_bytes(_idx_bytes(values, 0x0D))
    out = read_idx(path)
    assert out.dtype == np.float32 and out.dtype.isnative
    np.testing.assert_array_equal(out, values.astype(np.float32))
    ints = np.array([-70000, 5, 70000], dtype=">i4")
    path.write_bytes(_idx_bytes(ints, 0x0C))
    assert read_idx(path).tolist() == [-70000, 5, 70000]


def test_read_idx_corrupt_files(tmp_path):
    good = _idx_bytes(np.zeros((3, 2), np.uint8))
    cases = {
        "truncated.idx": good[:-1],  # one data byte short
        "long.idx": good + b"\x00",  # one data byte too many
        "magic.idx": b"\x01\x02" + good[2:],
        "type.idx": good[:2] + b"\x07" + good[3:],
        "tiny.idx": b"\x00\x00",
        "header.idx": good[:7],
        "bad.gz": b"\x1f\x8b" + b"not really gzip data",
    }
    for name, content in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ValueError, match=name):
            read_idx(path)
    with pytest.raises(FileNotFoundError, match="absent.idx"):
        read_idx(tmp_path / "absent.idx")


# ----------------------------------------------------------------------------------------------
# load_idx_dataset on small folders
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,folder,gz",
    [("mnist", "mnist", True), ("fashion_mnist", "fashion-mnist", True),
     ("fashion_mnist", "fashion_mnist", False)],
)
def test_load_idx_dataset_from_folder(tmp_path, name, folder, gz):
    _write_fake_dataset(tmp_path / folder, gz=gz)
    (x_train, y_train), (x_test, y_test) = load_idx_dataset(name, tmp_path)
    assert x_train.shape == (6, 28, 28, 1) and x_test.shape == (4, 28, 28, 1)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    raw = read_idx(tmp_path / folder / ("train-images-idx3-ubyte" + (".gz" if gz else "")))
    np.testing.assert_array_equal(x_train[..., 0], raw.astype(np.float32) / 255)
    assert y_train.tolist() == [0, 1, 2, 3, 4, 5] and y_test.tolist() == [9, 8, 7, 6]
    # The data set's own folder works as data_dir too, and load_dataset dispatches here.
    (x_train2, _), _ = load_idx_dataset(name, tmp_path / folder)
    np.testing.assert_array_equal(x_train2, x_train)
    (_, y_train3), _ = load_dataset(name, str(tmp_path))
    np.testing.assert_array_equal(y_train3, y_train)


def test_load_idx_dataset_uses_env_var(tmp_path, monkeypatch):
    _write_fake_dataset(tmp_path / "mnist", n_train=3, n_test=2)
    monkeypatch.setenv("KERASQ_DATA", str(tmp_path))
    (x_train, y_train), (x_test, _) = load_idx_dataset("mnist")
    assert x_train.shape == (3, 28, 28, 1) and x_test.shape == (2, 28, 28, 1)
    assert y_train.tolist() == [0, 1, 2]


def test_load_idx_dataset_missing_file(tmp_path):
    _write_fake_dataset(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
        load_idx_dataset("mnist", tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_idx_dataset("mnist", tmp_path / "nowhere")


def test_load_idx_dataset_missing_folder(tmp_path):
    (tmp_path / "other").mkdir()
    with pytest.raises(FileNotFoundError, match="fashion-mnist"):
        load_idx_dataset("fashion_mnist", tmp_path)


def test_load_idx_dataset_mismatched_counts(tmp_path):
    _write_fake_dataset(tmp_path / "mnist")
    labels = _idx_bytes(np.zeros(5, np.uint8))  # 5 labels for 6 images
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))
    with pytest.raises(ValueError, match="labels"):
        load_idx_dataset("mnist", tmp_path)


def test_unknown_names():
    with pytest.raises(ValueError, match="fashion_mnist"):
        load_idx_dataset("cifar10", "/nonexistent")
    with pytest.raises(ValueError, match="digits"):
        load_dataset("cifar10")


def test_download_fallback_failure_explains(monkeypatch):
    monkeypatch.delenv("KERASQ_DATA", raising=False)

    def offline():
        raise OSError("no network")

    fake_keras = types.SimpleNamespace(
        datasets=types.SimpleNamespace(mnist=types.SimpleNamespace(load_data=offline))
    )
    monkeypatch.setitem(sys.modules, "tf_keras", fake_keras)
    with pytest.raises(RuntimeError, match="KERASQ_DATA") as info:
        load_idx_dataset("mnist")
    assert "data_dir" in str(info.value) and "no network" in str(info.value)


def test_download_fallback_success(monkeypatch):
    monkeypatch.delenv("KERASQ_DATA", raising=False)
    images = np.full((2, 28, 28), 255, np.uint8)
    labels = np.array([3, 4], np.uint8)
    fake_keras = types.SimpleNamespace(
        datasets=types.SimpleNamespace(
            fashion_mnist=types.SimpleNamespace(
                load_data=lambda: ((images, labels), (images, labels))
            )
        )
    )
    monkeypatch.setitem(sys.modules, "tf_keras", fake_keras)
    (x_train, y_train), _ = load_idx_dataset("fashion_mnist")
    assert x_train.shape == (2, 28, 28, 1) and float(x_train.max()) == 1.0
    assert y_train.dtype == np.int64 and y_train.tolist() == [3, 4]


def test_load_dataset_digits():
    (x_train, _), (x_test, _) = load_dataset("digits")
    assert x_train.shape[1:] == (8, 8, 1) and len(x_train) + len(x_test) == 1797


# ----------------------------------------------------------------------------------------------
# The real files
# ----------------------------------------------------------------------------------------------


@needs_real_data
@pytest.mark.parametrize(
    "name,train_first,test_first",
    # First labels of the published files (MNIST: 5, 0, 4, ... / 7, 2, 1, ...;
    # Fashion-MNIST: 9 ankle boot, 0, 0, ... / 9, 2, 1, ...).
    [
        ("mnist", [5, 0, 4, 1, 9], [7, 2, 1, 0, 4]),
        ("fashion_mnist", [9, 0, 0, 3, 0], [9, 2, 1, 1, 6]),
    ],
)
def test_real_idx_dataset(name, train_first, test_first):
    (x_train, y_train), (x_test, y_test) = load_idx_dataset(name, DATA_DIR)
    assert x_train.shape == (60000, 28, 28, 1) and x_test.shape == (10000, 28, 28, 1)
    assert y_train.shape == (60000,) and y_test.shape == (10000,)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    assert x_train.min() == 0.0 and x_train.max() == 1.0
    assert set(np.unique(y_train)) == set(range(10)) == set(np.unique(y_test))
    assert y_train[:5].tolist() == train_first and y_test[:5].tolist() == test_first
    # Both sets are balanced-ish: 10 classes, each 5..15% of the training set.
    counts = np.bincount(y_train, minlength=10) / len(y_train)
    assert counts.min() > 0.05 and counts.max() < 0.15
    del x_train, x_test


def test_module_imports_no_tensorflow():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(datasets))
    top_level = set()
    for node in tree.body:  # module-level imports only; tf_keras is imported inside a function
        if isinstance(node, ast.Import):
            top_level.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top_level.add(node.module.split(".")[0])
    assert not top_level & {"tensorflow", "tf_keras", "keras", "sklearn"}
