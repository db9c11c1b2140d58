"""Data sets for training runs, loaded whole into memory as torch tensors, from one registry.

``load_dataset(name, data_dir=None) -> Dataset``. Every data set is registered once, with
:func:`register_dataset` on its loader, as a :class:`DatasetSpec` (input shape per example, outputs, task, aliases,
the files it needs, a one-line description). The CLI's ``--dataset`` choices, the studio's Train form and
:func:`engine.train.models.check_fit` all read the registry (:func:`dataset_specs`, :func:`dataset_spec`), so a
new data set is added here and nowhere else. This module imports torch only inside loaders.

Built in (``tnstudio train --help`` lists them with their descriptions):

- ``digits``: scikit-learn's 8x8 handwritten digits, fixed stratified split 1,438 / 359.
- ``teacher``: synthetic teacher-student regression (64 -> 8).
- ``mnist1d``: the MNIST-1D benchmark regenerated locally by the ``mnist1d`` package with its published default
  arguments (4,000 / 1,000 signals of length 40, 10 classes); cached in ``<TNSTUDIO_HOME>/data/mnist1d.npz``
  (checked whole when read: a damaged cache is regenerated, with a logged notice).
- ``synthetic_images``: seeded class-dependent colour gratings, 3x16x16, 500 / 200, for fast CNN checks.
- ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: read by torchvision's dataset classes with
  ``download=False`` from ``data_dir`` (default ``<TNSTUDIO_HOME>/data``) in torchvision's layout
  (``MNIST/raw``, ``FashionMNIST/raw``, ``cifar-10-batches-py``, ``cifar-100-python``). Nothing is downloaded; a
  missing file raises :class:`DataError` naming the files expected and the folder. MNIST files may also be
  gzipped (``.gz``): they are unpacked beside themselves first, as torchvision's own download does. torchvision
  checks the CIFAR files against the published md5 checksums before unpickling them.

Images are ``(N, C, H, W)`` float32, standardised with the training set's per-channel mean and std; labels are
int64. MLPs flatten the inputs; CNNs take the images as they are.
"""
from __future__ import annotations

import gzip
import importlib.util
import logging
import math
import os
import random
import shutil
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Literal

import numpy as np

from engine.files import atomic_write, expand_user
from engine.home import tnstudio_home

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

Task = Literal["classification", "regression"]
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta")
CIFAR100_FILES = ("train", "test", "meta")


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


# ----------------------------------------------------------------------------- the registry
Loader = Callable[[Path], Dataset]


@dataclass(frozen=True)
class DatasetSpec:
    """What is known about a data set before loading it, and how to load it."""

    name: str
    input_shape: tuple[int, ...]  # per example
    num_outputs: int  # classes, or regression targets
    task: Task
    description: str  # one line, for help texts and the studio
    loader: Loader  # data folder -> Dataset
    title: str = ""  # the data set's usual name in messages ("CIFAR-10"); default: name
    aliases: tuple[str, ...] = ()
    folder: str = ""  # where the files lie under the data folder (torchvision's layout)
    files: tuple[str, ...] = ()  # the files a loader needs in ``folder`` (empty: none)
    gz_ok: bool = False  # each file may also be present gzipped (``name.gz``)

    @property
    def needs_files(self) -> bool:
        return bool(self.files)

    @property
    def is_image(self) -> bool:
        return len(self.input_shape) == 3

    @property
    def in_features(self) -> int:
        return math.prod(self.input_shape)

    @property
    def label(self) -> str:
        return self.title or self.name


_REGISTRY: dict[str, DatasetSpec] = {}
_ALIASES: dict[str, str] = {}


def _key(name: str) -> str:
    return name.strip().lower()


def register_dataset(name: str, *, input_shape: tuple[int, ...], num_outputs: int, task: Task, description: str,
                     title: str = "", aliases: tuple[str, ...] = (), folder: str = "", files: tuple[str, ...] = (),
                     gz_ok: bool = False) -> Callable[[Loader], Loader]:
    """Decorator registering ``loader(data_folder) -> Dataset`` as data set ``name`` (see :class:`DatasetSpec`)."""
    key = _key(name)
    taken = {key, *map(_key, aliases)} & (set(_REGISTRY) | set(_ALIASES))
    if taken:
        raise ValueError(f"data set name(s) already registered: {', '.join(sorted(taken))}")
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be classification or regression, got {task!r}")

    def decorate(loader: Loader) -> Loader:
        _REGISTRY[key] = DatasetSpec(key, tuple(input_shape), num_outputs, task, description, loader, title,
                                     tuple(map(_key, aliases)), folder, tuple(files), gz_ok)
        _ALIASES.update({_key(a): key for a in aliases})
        return loader

    return decorate


def dataset_specs() -> tuple[DatasetSpec, ...]:
    """Every registered data set, in registration order."""
    return tuple(_REGISTRY.values())


def dataset_names() -> tuple[str, ...]:
    """The canonical names of the registered data sets."""
    return tuple(_REGISTRY)


def dataset_name(name: str) -> str:
    """Canonical data set name (aliases and case folded), or :class:`DataError` listing the known ones."""
    key = _key(name)
    key = _ALIASES.get(key, key)
    if key not in _REGISTRY:
        raise DataError(f"unknown data set {name!r}: choose one of {', '.join(_REGISTRY)}")
    return key


def dataset_spec(name: str) -> DatasetSpec:
    """The spec of a data set by name or alias (:class:`DataError` when unknown)."""
    return _REGISTRY[dataset_name(name)]


def default_data_dir() -> Path:
    return tnstudio_home() / "data"


def _root(data_dir: str | os.PathLike | None) -> Path:
    return expand_user(data_dir) if data_dir else default_data_dir()


def load_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Dataset:
    """Load a data set by name or alias; file data sets are read from ``data_dir`` (see the module docstring)."""
    spec = dataset_spec(name)
    ds = spec.loader(_root(data_dir))
    if ds.input_shape != spec.input_shape or ds.num_outputs != spec.num_outputs:
        raise DataError(f"{spec.label}: the loader gave inputs {ds.input_shape} and {ds.num_outputs} outputs, the "
                        f"registry promises {spec.input_shape} and {spec.num_outputs}")
    return ds


def check_dataset(name: str, data_dir: str | os.PathLike | None = None) -> None:
    """Raise :class:`DataError` when a data set's files cannot be found, or (idx files) their headers say they are
    not the data set's, reading only the headers (for launchers: a launch, or `train --dry-run`, refuses them)."""
    spec = dataset_spec(name)
    if spec.needs_files:
        for path in find_files(spec, _root(data_dir)).values():
            if "-idx" in path.name:
                _check_idx_header(spec, path)


IDX_MAGIC = {1: 0x801, 3: 0x803}  # idx files: 0x08 (unsigned bytes) and the number of dimensions, big-endian


def _check_idx_header(spec: DatasetSpec, path: Path) -> None:
    """An idx file's magic number, and for an uncompressed one its size against the dimensions its header gives
    (MNIST's format: labels ``idx1``, images ``idx3`` of the data set's shape); :class:`DataError` naming the file."""
    ndim = 3 if "idx3" in path.name else 1
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            head = f.read(4 + 4 * ndim)
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{spec.label}: cannot read {path}: {e}") from None
    bad = f"{spec.label}: {path} is not an idx{ndim} file of {spec.label}"
    if len(head) < 4 + 4 * ndim or int.from_bytes(head[:4], "big") != IDX_MAGIC[ndim]:
        raise DataError(f"{bad} (its header is not idx{ndim}'s): copy the original file there")
    dims = [int.from_bytes(head[4 + 4 * k:8 + 4 * k], "big") for k in range(ndim)]
    if ndim == 3 and tuple(dims[1:]) != tuple(spec.input_shape[-2:]):
        raise DataError(f"{bad} (its images are {dims[1]}x{dims[2]}, not {spec.input_shape[-2]}x"
                        f"{spec.input_shape[-1]})")
    if path.suffix != ".gz" and path.stat().st_size != len(head) + math.prod(dims):
        raise DataError(f"{bad} (its header gives {math.prod(dims):,} bytes of data, the file holds "
                        f"{path.stat().st_size - len(head):,}): cut short? copy the original file there")


def find_files(spec: DatasetSpec, root: Path) -> dict[str, Path]:
    """The path of each file a data set needs (``.gz`` ones where allowed); :class:`DataError` names the files
    expected and the folder when one is missing."""
    folder = root / spec.folder
    found: dict[str, Path] = {}
    for name in spec.files:
        for suffix in ("", ".gz") if spec.gz_ok else ("",):
            if (folder / (name + suffix)).is_file():
                found[name] = folder / (name + suffix)
                break
    if len(found) == len(spec.files):
        return found
    missing = [n for n in spec.files if n not in found]
    expected = ", ".join(n + ("[.gz]" if spec.gz_ok else "") for n in spec.files)
    which = f" (missing: {', '.join(missing)})" if found else ""
    raise DataError(f"{spec.label} not found: expected the files {expected} in {folder}{which}. TN Studio does not "
                    f"download data: copy the standard files there, or point --data-dir at the folder holding "
                    f"{spec.folder}/.")


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


def _image_dataset(spec: DatasetSpec, x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                   y_test: np.ndarray) -> Dataset:
    """uint8 images (N, C, H, W) -> a standardised float32 :class:`Dataset`."""
    import torch

    xtr, xte = _standardise(x_train.astype(np.float32) / 255.0, x_test.astype(np.float32) / 255.0)
    return Dataset(spec.name, spec.task, xtr, torch.from_numpy(np.asarray(y_train, dtype=np.int64)), xte,
                   torch.from_numpy(np.asarray(y_test, dtype=np.int64)), tuple(xtr.shape[1:]), spec.num_outputs)


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


@register_dataset("digits", input_shape=(1, 8, 8), num_outputs=10, task="classification",
                  description="scikit-learn's 8x8 handwritten digits (1,438 train / 359 test), built in")
def load_digits(root: Path | None = None, test_fraction: float = 0.2) -> Dataset:
    """scikit-learn's digits as ``(N, 1, 8, 8)`` images with a fixed stratified split (``root`` is unused)."""
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


@register_dataset("teacher", input_shape=(64,), num_outputs=8, task="regression",
                  aliases=("teacher_student", "teacher-student"),
                  description="synthetic regression: a fixed random tanh teacher 64 -> 32 -> 8 (4,096 / 1,024)")
def _load_teacher(root: Path) -> Dataset:
    return teacher_student()


# ----------------------------------------------------------------------------- torchvision's data sets
def _gunzip_missing(files: dict[str, Path]) -> None:
    """Unpack ``name.gz`` to ``name`` beside it (atomically) where only the gzipped file is there."""
    for name, path in files.items():
        if path.suffix == ".gz" and path.name == name + ".gz":
            def write(f, src: Path = path) -> None:
                with gzip.open(src, "rb") as g:
                    shutil.copyfileobj(g, f)

            try:
                atomic_write(path.with_name(name), write)
            except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
                raise DataError(f"could not unpack {path} beside itself: {e}") from None


def _load_torchvision_mnist(spec: DatasetSpec, root: Path, cls_name: str) -> Dataset:
    """MNIST-format data through ``torchvision.datasets.<cls_name>(root, download=False)``."""
    from torchvision import datasets

    _gunzip_missing(find_files(spec, root))
    cls = getattr(datasets, cls_name)
    try:
        train, test = (cls(str(root), train=t, download=False) for t in (True, False))
    # torchvision parses idx files with asserts and tensor views: a foreign or truncated file raises one of these
    except (AssertionError, RuntimeError, TypeError, ValueError, KeyError) as e:
        raise DataError(f"{spec.label}: the files in {root / spec.folder} are not valid idx files "
                        f"({type(e).__name__}: {e or 'bad header'})") from None
    xtr, xte = train.data.numpy()[:, None], test.data.numpy()[:, None]
    return _image_dataset(spec, xtr, train.targets.numpy(), xte, test.targets.numpy())


def _load_torchvision_cifar(spec: DatasetSpec, root: Path, cls_name: str) -> Dataset:
    """CIFAR data through ``torchvision.datasets.<cls_name>(root, download=False)`` (md5-checked)."""
    from torchvision import datasets

    find_files(spec, root)
    cls = getattr(datasets, cls_name)
    try:
        train, test = (cls(str(root), train=t, download=False) for t in (True, False))
    except RuntimeError as e:  # torchvision: "not found or corrupted" - the checksums do not match
        raise DataError(f"{spec.label}: the files in {root / spec.folder} do not match the published ones "
                        f"(torchvision checks their md5 checksums before unpickling them): copy the original "
                        f"files there ({e})") from None
    to_nchw = lambda a: np.ascontiguousarray(np.asarray(a, dtype=np.uint8).transpose(0, 3, 1, 2))  # noqa: E731
    return _image_dataset(spec, to_nchw(train.data), np.asarray(train.targets), to_nchw(test.data),
                          np.asarray(test.targets))


@register_dataset("mnist", input_shape=(1, 28, 28), num_outputs=10, task="classification", title="MNIST",
                  folder="MNIST/raw", files=IDX_FILES, gz_ok=True,
                  description="MNIST handwritten digits, 60,000 / 10,000, from torchvision's MNIST/raw folder")
def load_mnist(root: Path) -> Dataset:
    """MNIST as ``(N, 1, 28, 28)`` images."""
    return _load_torchvision_mnist(dataset_spec("mnist"), Path(root), "MNIST")


@register_dataset("fashion_mnist", input_shape=(1, 28, 28), num_outputs=10, task="classification",
                  title="Fashion-MNIST", aliases=("fashion-mnist", "fashionmnist"), folder="FashionMNIST/raw",
                  files=IDX_FILES, gz_ok=True,
                  description="Fashion-MNIST clothing images, 60,000 / 10,000, from FashionMNIST/raw")
def load_fashion_mnist(root: Path) -> Dataset:
    """Fashion-MNIST as ``(N, 1, 28, 28)`` images."""
    return _load_torchvision_mnist(dataset_spec("fashion_mnist"), Path(root), "FashionMNIST")


@register_dataset("cifar10", input_shape=(3, 32, 32), num_outputs=10, task="classification", title="CIFAR-10",
                  aliases=("cifar-10", "cifar"), folder="cifar-10-batches-py", files=CIFAR_FILES,
                  description="CIFAR-10 colour images, 50,000 / 10,000, from cifar-10-batches-py")
def load_cifar10(root: Path) -> Dataset:
    """CIFAR-10 as ``(N, 3, 32, 32)`` images."""
    return _load_torchvision_cifar(dataset_spec("cifar10"), Path(root), "CIFAR10")


@register_dataset("cifar100", input_shape=(3, 32, 32), num_outputs=100, task="classification", title="CIFAR-100",
                  aliases=("cifar-100",), folder="cifar-100-python", files=CIFAR100_FILES,
                  description="CIFAR-100 colour images, 100 fine classes, 50,000 / 10,000, from cifar-100-python")
def load_cifar100(root: Path) -> Dataset:
    """CIFAR-100 (fine labels) as ``(N, 3, 32, 32)`` images."""
    return _load_torchvision_cifar(dataset_spec("cifar100"), Path(root), "CIFAR100")


# ----------------------------------------------------------------------------- MNIST-1D
MNIST1D_CACHE = "mnist1d.npz"
_MNIST1D_KEYS = ("x_train", "y_train", "x_test", "y_test")


def _mnist1d_version() -> str:
    try:
        return metadata.version("mnist1d")
    except metadata.PackageNotFoundError:
        return "unknown"


def generate_mnist1d() -> dict[str, np.ndarray]:
    """MNIST-1D from the ``mnist1d`` package's generator with its published default arguments (no network).

    The generator seeds Python's and numpy's global random state; both are restored afterwards."""
    from mnist1d.data import get_dataset_args, make_dataset

    states = random.getstate(), np.random.get_state()
    try:
        d = make_dataset(get_dataset_args())
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
    return {"x_train": d["x"].astype(np.float32), "y_train": d["y"].astype(np.int64),
            "x_test": d["x_test"].astype(np.float32), "y_test": d["y_test"].astype(np.int64)}


def _read_mnist1d_cache(path: Path, version: str) -> dict[str, np.ndarray] | None:
    """The cached arrays, or None when the cache is absent, unreadable or made by another mnist1d version."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["version"]) != version:
                return None
            arrays = {k: z[k] for k in _MNIST1D_KEYS}
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:  # a damaged cache: regenerate it
        log.warning("ignoring the MNIST-1D cache %s (%s): regenerating it", path, e)
        return None
    problem = _mnist1d_problem(arrays)
    if problem:  # readable but damaged: trusting it would fail every run the same way
        log.warning("ignoring the MNIST-1D cache %s (%s): regenerating it", path, problem)
        return None
    return {k: v.astype(np.int64 if k.startswith("y") else np.float32, copy=False) for k, v in arrays.items()}


def _mnist1d_problem(arrays: dict[str, np.ndarray]) -> str | None:
    """What is wrong with MNIST-1D arrays read from a cache (None: nothing): per split, x is real numbers of shape
    (N, 40), all finite, and y is N integer labels from 0 to 9."""
    classes = dataset_spec("mnist1d").num_outputs
    for split, n in (("train", 4000), ("test", 1000)):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype.kind not in "iuf":
            return f"x_{split} holds {x.dtype} values, not real numbers"
        if y.dtype.kind not in "iu":
            return f"y_{split} holds {y.dtype} values, not integer labels"
        if x.shape != (n, 40):
            return f"x_{split} has shape {x.shape}, expected {(n, 40)}"
        if y.shape != (n,):
            return f"y_{split} has shape {y.shape}, expected {(n,)} (one label per example)"
        if not np.isfinite(x).all():
            return f"x_{split} holds values that are not finite"
        if y.size and (y.min() < 0 or y.max() >= classes):
            return f"y_{split} holds labels from {y.min()} to {y.max()}, outside 0 to {classes - 1}"
    return None


@register_dataset("mnist1d", input_shape=(1, 40), num_outputs=10, task="classification",
                  title="MNIST-1D", aliases=("mnist-1d", "mnist_1d"),
                  description="MNIST-1D: 1-D signals of length 40, 10 classes, 4,000 / 1,000, generated locally")
def load_mnist1d(root: Path | None = None) -> Dataset:
    """MNIST-1D as ``(N, 1, 40)`` signals (already centred and scaled by the generator).

    Cached in ``<TNSTUDIO_HOME>/data/mnist1d.npz`` (written atomically; ``root`` is unused) so later runs load it
    at once; a cache that cannot be written is only logged."""
    import torch

    path = default_data_dir() / MNIST1D_CACHE
    version = _mnist1d_version()
    arrays = _read_mnist1d_cache(path, version)
    if arrays is None:
        arrays = generate_mnist1d()
        try:
            atomic_write(path, lambda f: np.savez(f, version=np.array(version), **arrays))
        except OSError as e:  # a read-only home: train from the generated arrays anyway
            log.warning("could not cache MNIST-1D in %s: %s", path, e)
    t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    return Dataset("mnist1d", "classification", t["x_train"][:, None], t["y_train"], t["x_test"][:, None],
                   t["y_test"], (1, 40), 10)


# ----------------------------------------------------------------------------- synthetic images
def synthetic_images(n_train: int = 500, n_test: int = 200, classes: int = 10, size: int = 16, seed: int = 0,
                     noise: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Seeded colour gratings: class ``c`` has its own orientation, spatial frequency and colour (and a faint
    colour cast, so even a linear model gets a start); each example a random phase and Gaussian noise.

    Returns float32 images ``(N, 3, size, size)`` and int64 labels for train and test, balanced over classes."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    y = np.tile(np.arange(classes), -(-n // classes))[:n]
    y = np.concatenate([rng.permutation(y[:n_train]), rng.permutation(y[n_train:])])
    angle = np.pi * y / classes
    freq = 2 * np.pi * (2 + (y % 3)) / size
    colour = np.stack([np.cos(2 * np.pi * y / classes), np.sin(2 * np.pi * y / classes), (y % 2) * 2 - 1], 1) + 1.5
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    proj = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
    phase = rng.uniform(0, 2 * np.pi, n)
    wave = np.sin(freq[:, None, None] * proj + phase[:, None, None])
    x = colour[:, :, None, None] * (wave[:, None] + 0.03) + noise * rng.standard_normal((n, 3, size, size))
    x = x.astype(np.float32)
    return x[:n_train], y[:n_train].astype(np.int64), x[n_train:], y[n_train:].astype(np.int64)


@register_dataset("synthetic_images", input_shape=(3, 16, 16), num_outputs=10, task="classification",
                  aliases=("synthetic", "synthetic-images"),
                  description="seeded colour gratings, 3x16x16, 10 classes, 500 / 200 (fast CNN checks)")
def load_synthetic_images(root: Path | None = None) -> Dataset:
    """:func:`synthetic_images` standardised per channel, as a :class:`Dataset` (``root`` is unused)."""
    import torch

    xtr, ytr, xte, yte = synthetic_images()
    xtr_t, xte_t = _standardise(xtr, xte)
    return Dataset("synthetic_images", "classification", xtr_t, torch.from_numpy(ytr), xte_t, torch.from_numpy(yte),
                   (3, 16, 16), 10)
