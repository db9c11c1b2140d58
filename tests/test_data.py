"""Data sets: digits and the teacher task in memory, MNIST / Fashion-MNIST / CIFAR-10 from small files written here
in their standard formats."""
from __future__ import annotations

import gzip
import pickle
import struct

import numpy as np
import pytest
import torch

from engine.train.data import (CIFAR_FILES, DATASET_SHAPES, IDX_FILES, DataError, check_dataset, load_dataset,
                         read_idx)


def write_idx(path, array: np.ndarray, gz: bool = False) -> None:
    """The idx format written from its specification: 0, 0, type code 0x08 (ubyte), ndim, big-endian dims."""
    arr = np.ascontiguousarray(array, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


def fake_mnist(folder, n_train=30, n_test=12, gz=False, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test)}
    for name, a in arrays.items():
        write_idx(folder / name, a, gz=gz)
    return arrays


def expected_standardised(train: np.ndarray, other: np.ndarray) -> np.ndarray:
    """Independent per-channel standardisation of uint8 images (N, C, H, W) with training statistics."""
    t = train.astype(np.float64) / 255.0
    mean = t.mean(axis=(0, 2, 3), keepdims=True)
    std = t.std(axis=(0, 2, 3), keepdims=True)
    return (other.astype(np.float64) / 255.0 - mean) / std


def test_digits_is_sklearns_data_with_a_stratified_split():
    from sklearn.datasets import load_digits

    ref = load_digits()
    ds = load_dataset("digits")
    assert ds.task == "classification" and ds.num_outputs == 10 and ds.input_shape == (1, 8, 8)
    assert len(ds.x_train) == 1438 and len(ds.x_test) == 359
    assert np.array_equal(np.bincount(torch.cat([ds.y_train, ds.y_test]).numpy()), np.bincount(ref.target))
    frac = np.bincount(ds.y_test.numpy(), minlength=10) / np.bincount(ref.target)
    assert np.all(np.abs(frac - 0.2) < 0.01)  # every class is ~20% test
    xt = ds.x_train.reshape(len(ds.x_train), -1).double().numpy()
    assert abs(xt.mean()) < 1e-4 and abs(xt.std() - 1.0) < 1e-3  # standardised with train statistics
    # one channel, so the map is affine; pixels span 0..16 in train: invert it and find every row in sklearn's
    lo, hi = xt.min(), xt.max()
    both = torch.cat([ds.x_train, ds.x_test]).reshape(1797, -1).double().numpy()
    recovered = np.round((both - lo) / (hi - lo) * 16.0, 4)
    key = lambda rows: sorted(map(tuple, rows))  # noqa: E731
    labels = torch.cat([ds.y_train, ds.y_test]).numpy()
    assert key(np.c_[recovered, labels]) == key(np.c_[ref.data, ref.target])


def test_teacher_student_regression_is_deterministic_and_learnable_shape():
    a, b = load_dataset("teacher"), load_dataset("teacher-student")
    assert a.task == "regression" and a.input_shape == (64,) and a.num_outputs == 8
    assert a.x_train.shape == (4096, 64) and a.y_test.shape == (1024, 8)
    assert torch.equal(a.y_train, b.y_train)
    assert (a.input_shape, a.num_outputs, a.task) == DATASET_SHAPES["teacher"]
    # a linear fit leaves a clear residual (the teacher is nonlinear), but explains a real part of the variance
    x = torch.cat([a.x_train, torch.ones(len(a.x_train), 1)], 1).double()
    coef = torch.linalg.lstsq(x, a.y_train.double()).solution
    r2 = 1 - ((x @ coef - a.y_train) ** 2).mean() / a.y_train.var()
    assert 0.2 < r2 < 0.95


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    arrays = fake_mnist(tmp_path / "mnist", gz=gz)
    ds = load_dataset("mnist", tmp_path)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (12, 1, 28, 28)
    assert ds.input_shape == (1, 28, 28) and ds.in_features == 784
    assert np.array_equal(ds.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    assert np.array_equal(ds.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    tr = arrays["train-images-idx3-ubyte"][:, None]
    te = arrays["t10k-images-idx3-ubyte"][:, None]
    np.testing.assert_allclose(ds.x_test.numpy(), expected_standardised(tr, te), atol=1e-5)
    np.testing.assert_allclose(ds.x_train.numpy(), expected_standardised(tr, tr), atol=1e-5)


def test_fashion_mnist_in_torchvision_layout(tmp_path):
    arrays = fake_mnist(tmp_path / "FashionMNIST" / "raw", seed=3)
    check_dataset("fashion_mnist", tmp_path)
    ds = load_dataset("fashion-mnist", tmp_path)
    assert ds.name == "fashion_mnist"
    assert np.array_equal(ds.y_train.numpy(), arrays["train-labels-idx1-ubyte"])


def test_missing_mnist_names_the_files_and_folders(tmp_path):
    for call in (lambda: load_dataset("mnist", tmp_path), lambda: check_dataset("mnist", tmp_path)):
        with pytest.raises(DataError) as e:
            call()
        msg = str(e.value)
        assert all(f in msg for f in IDX_FILES) and str(tmp_path) in msg and "MNIST" in msg


def test_truncated_and_foreign_idx_files_are_refused(tmp_path):
    write_idx(tmp_path / "a", np.zeros((4, 5, 5)))
    raw = (tmp_path / "a").read_bytes()
    (tmp_path / "short").write_bytes(raw[:-10])
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short")
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(tmp_path / "png")
    assert read_idx(tmp_path / "a").shape == (4, 5, 5)


def fake_cifar(folder, n=6, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in CIFAR_FILES:
        d = {b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
             b"labels": [int(v) for v in rng.integers(0, 10, n)], b"batch_label": name.encode()}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
        batches[name] = d
    return batches


def test_cifar10_python_batches(tmp_path):
    batches = fake_cifar(tmp_path / "cifar-10-batches-py")
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
    labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    assert ds.y_train.tolist() == labels and ds.y_test.tolist() == batches["test_batch"][b"labels"]
    tr = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    te = batches["test_batch"][b"data"].reshape(-1, 3, 32, 32)
    np.testing.assert_allclose(ds.x_test.numpy(), expected_standardised(tr, te), atol=1e-5)


def test_cifar_refuses_pickles_that_are_not_data(tmp_path):
    fake_cifar(tmp_path)
    (tmp_path / "test_batch").write_bytes(pickle.dumps({"data": print}))
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        load_dataset("cifar10", tmp_path)


def test_missing_cifar_and_unknown_names(tmp_path):
    with pytest.raises(DataError, match="data_batch_1.*test_batch"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DataError, match="digits, teacher, mnist"):
        load_dataset("imagenet")
