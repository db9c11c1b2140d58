"""Data sets for training runs, loaded whole into memory as torch tensors.

``load_dataset(name, data_dir=None) -> Dataset``. Names (:data:`DATASETS`):

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes; ships with scikit-learn, no
  download). Fixed stratified split: 1,438 train / 359 test.
- ``teacher``: synthetic teacher-student regression: x ~ N(0, I_64), y = teacher(x) + noise with a fixed random
  two-layer tanh teacher (64 -> 32 -> 8). 4,096 train / 1,024 test rows.
- ``mnist``, ``fashion_mnist``: the standard idx files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
  ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte`` (each optionally ``.gz``).
- ``cifar10``: the python pickle batches ``cifar-10-batches-py/data_batch_1..5`` and ``test_batch``.

File data sets are read from ``data_dir`` (default ``<TNSTUDIO_HOME>/data``), looking in the folder itself, in
``<data_dir>/<name>`` and in torchvision's layout (``MNIST/raw``, ``FashionMNIST/raw``); nothing is downloaded.
Missing files raise :class:`DataError` naming the files expected and the folders searched.

Images are ``(N, C, H, W)`` float32, standardised with the training set's per-channel mean and std; labels are
int64. MLPs flatten the images; CNNs use them as they are.
"""
from __future__ import annotations

import gzip
import importlib.util
import math
import os
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.home import tnstudio_home

if TYPE_CHECKING:
    import torch

DATASETS = ("digits", "teacher", "mnist", "fashion_mnist", "cifar10")
_ALIASES = {"fashion-mnist": "fashion_mnist", "fashionmnist": "fashion_mnist", "cifar-10": "cifar10",
            "cifar": "cifar10", "teacher_student": "teacher", "teacher-student": "teacher"}
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)
# name -> (input shape per example, outputs, task): known before loading, for checking a model against a design
DATASET_SHAPES: dict[str, tuple[tuple[int, ...], int, str]] = {
    "digits": ((1, 8, 8), 10, "classification"), "teacher": ((64,), 8, "regression"),
    "mnist": ((1, 28, 28), 10, "classification"), "fashion_mnist": ((1, 28, 28), 10, "classification"),
    "cifar10": ((3, 32, 32), 10, "classification"),
}


class DataError(ValueError):
    """A data set that cannot be loaded (missing or malformed files, unknown name)."""


@dataclass
class Dataset:
    """Train and test tensors plus what a model needs to know about them."""

    name: str
    task: str  # "classification" or "regression"
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    input_shape: tuple[int, ...]  # per example: (C, H, W) for images, (features,) for vectors
    num_outputs: int  # classes, or regression targets

    @property
    def in_features(self) -> int:
        return math.prod(self.input_shape)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, {self.task}, train={len(self.x_train)}, test={len(self.x_test)}, "
                f"input={self.input_shape}, outputs={self.num_outputs})")


def dataset_name(name: str) -> str:
    """Canonical data set name, or :class:`DataError` listing the known ones."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in DATASETS:
        raise DataError(f"unknown data set {name!r}: choose one of {', '.join(DATASETS)}")
    return key


def default_data_dir() -> Path:
    return tnstudio_home() / "data"


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a data set by name (see the module docstring)."""
    key = dataset_name(name)
    if key == "digits":
        return load_digits()
    if key == "teacher":
        return teacher_student()
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if key in ("mnist", "fashion_mnist"):
        return load_mnist(root, key)
    return load_cifar10(root)


def check_dataset(name: str, data_dir: str | os.PathLike | None = None) -> None:
    """Raise :class:`DataError` when a data set cannot be found, without reading it (cheap; for launchers)."""
    key = dataset_name(name)
    root = Path(data_dir).expanduser() if data_dir else default_data_dir()
    if key in ("mnist", "fashion_mnist"):
        _find(root, _mnist_folders(key), IDX_FILES, _MNIST_LABELS[key], gz=True)
    elif key == "cifar10":
        _find(root, _CIFAR_FOLDERS, CIFAR_FILES, "CIFAR-10", gz=False)


# ----------------------------------------------------------------------------- helpers
def _standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel standardisation (axis 1) with training statistics; returns float32 tensors."""
    import torch

    axes = (0,) + tuple(range(2, x_train.ndim))
    mean = x_train.mean(axis=axes, keepdims=True, dtype=np.float64)
    std = x_train.std(axis=axes, keepdims=True, dtype=np.float64) + 1e-8
    mean, std = mean.astype(np.float32), std.astype(np.float32)

    def f(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(((a.astype(np.float32) - mean) / std).astype(np.float32, copy=False))

    return f(x_train), f(x_test)


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(len(idx) * test_fraction))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# ----------------------------------------------------------------------------- digits
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The digits data without importing scikit-learn (2 s) when its data file can be found directly."""
    spec = importlib.util.find_spec("sklearn")
    if spec and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
        if path.exists():
            data = np.loadtxt(path, delimiter=",", dtype=np.float64)
            return data[:, :-1], data[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits as sk_load_digits

    b = sk_load_digits()
    return b.data.astype(np.float64), b.target.astype(np.int64)


def load_digits(test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's digits as ``(N, 1, 8, 8)`` images with a fixed stratified split."""
    import torch

    x, y = _digits_arrays()
    tr, te = _stratified_split(y, test_fraction, seed=0)
    x = x.reshape(-1, 1, 8, 8) / 16.0
    xtr, xte = _standardise(x[tr], x[te])
    return Dataset("digits", "classification", xtr, torch.from_numpy(y[tr]), xte, torch.from_numpy(y[te]),
                   (1, 8, 8), 10)


# ----------------------------------------------------------------------------- teacher-student
def teacher_student(n_train: int = 4096, n_test: int = 1024, in_features: int = 64, hidden: int = 32,
                    out_features: int = 8, noise: float = 0.05, seed: int = 1234) -> Dataset:
    """Regression on the outputs of a fixed random teacher network (targets standardised)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(in_features, hidden, generator=g) / math.sqrt(in_features)
    w2 = torch.randn(hidden, out_features, generator=g) / math.sqrt(hidden)
    x = torch.randn(n_train + n_test, in_features, generator=g)
    y = torch.tanh(2.0 * x @ w1) @ w2
    y = (y - y[:n_train].mean(0)) / y[:n_train].std(0)
    y = y + noise * torch.randn(y.shape, generator=g)
    return Dataset("teacher", "regression", x[:n_train].contiguous(), y[:n_train].contiguous(),
                   x[n_train:].contiguous(), y[n_train:].contiguous(), (in_features,), out_features)


# ----------------------------------------------------------------------------- MNIST / Fashion-MNIST
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one idx file (the MNIST format), gzipped or not."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an idx file (bad magic number)")
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    need = math.prod(shape) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) < need:
        raise DataError(f"{path} is truncated: header promises {shape} but holds {len(body)} of {need} bytes")
    return np.frombuffer(body[:need], dtype=dtype).reshape(shape)


def _find(root: Path, folders: list[str], files: tuple[str, ...], label: str, gz: bool) -> dict[str, Path]:
    candidates = list(dict.fromkeys([root] + [root / f for f in folders]))
    for folder in candidates:
        found = {}
        for name in files:
            for suffix in ("", ".gz") if gz else ("",):
                if (folder / (name + suffix)).is_file():
                    found[name] = folder / (name + suffix)
                    break
        if len(found) == len(files):
            return found
    expected = ", ".join(n + ("[.gz]" if gz else "") for n in files)
    raise DataError(f"{label} not found: expected the files {expected} in one of "
                    f"{', '.join(str(c) for c in candidates)}. TN Studio does not download data: copy the "
                    f"standard files there, or point --data-dir at the folder holding them.")


_MNIST_LABELS = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST"}
_CIFAR_FOLDERS = ["cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10"]


def _mnist_folders(name: str) -> list[str]:
    tv = "MNIST" if name == "mnist" else "FashionMNIST"
    return list(dict.fromkeys([name, name.replace("_", "-"), f"{tv}/raw", tv]))


def load_mnist(root: str | os.PathLike, name: str = "mnist") -> Dataset:
    """MNIST or Fashion-MNIST from the four idx files, as ``(N, 1, 28, 28)`` images."""
    import torch

    root = Path(root)
    label = _MNIST_LABELS[name]
    files = _find(root, _mnist_folders(name), IDX_FILES, label, gz=True)
    xtr, ytr, xte, yte = (read_idx(files[n]) for n in IDX_FILES)
    for x, y, split in ((xtr, ytr, "train"), (xte, yte, "test")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{label} {split} files disagree: images {x.shape}, labels {y.shape}")
    xtr_t, xte_t = _standardise(xtr[:, None].astype(np.float32) / 255.0, xte[:, None].astype(np.float32) / 255.0)
    return Dataset(name, "classification", xtr_t, torch.from_numpy(ytr.astype(np.int64)), xte_t,
                   torch.from_numpy(yte.astype(np.int64)), tuple(xtr_t.shape[1:]), 10)


# ----------------------------------------------------------------------------- CIFAR-10
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batches (dicts of numpy arrays and lists) and refuses any other object."""

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
                ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
                ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        try:
            d = _NumpyOnlyUnpickler(f, encoding="bytes").load()
        except Exception as e:  # noqa: BLE001 - any unpickling failure is a bad file
            raise DataError(f"{path} is not a CIFAR-10 python batch: {e}") from None
    get = lambda k: d.get(k.encode(), d.get(k))  # noqa: E731
    data, labels = get("data"), get("labels")
    if data is None or labels is None:
        raise DataError(f"{path} lacks the 'data' and 'labels' entries of a CIFAR-10 batch")
    data = np.asarray(data, dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise DataError(f"{path}: expected data of shape (N, 3072) and N labels, got {data.shape} "
                        f"and {len(labels)}")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def load_cifar10(root: str | os.PathLike) -> Dataset:
    """CIFAR-10 from the python batches, as ``(N, 3, 32, 32)`` images."""
    import torch

    root = Path(root)
    files = _find(root, _CIFAR_FOLDERS, CIFAR_FILES, "CIFAR-10", gz=False)
    parts = [_read_cifar_batch(files[n]) for n in CIFAR_FILES[:5]]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = _read_cifar_batch(files["test_batch"])
    xtr_t, xte_t = _standardise(xtr.astype(np.float32) / 255.0, xte.astype(np.float32) / 255.0)
    return Dataset("cifar10", "classification", xtr_t, torch.from_numpy(ytr), xte_t, torch.from_numpy(yte),
                   (3, 32, 32), 10)
