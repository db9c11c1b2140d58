"""Data sets: the registry; digits, the teacher task, MNIST-1D and the synthetic images in memory; MNIST /
Fashion-MNIST / CIFAR-10 / CIFAR-100 read by torchvision from small files written here in torchvision's folder
layout and the standard formats."""
from __future__ import annotations

import gzip
import json
import re
import hashlib
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
import torch
from torchvision import datasets as tv

from engine.train.data import (CIFAR100_FILES, CIFAR_FILES, IDX_FILES, DataError, check_dataset, dataset_name,
                               dataset_names, dataset_spec, load_dataset)


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
    """The four idx files in ``folder`` (torchvision reads ``<root>/MNIST/raw`` or ``<root>/FashionMNIST/raw``)."""
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
    spec = dataset_spec("teacher")
    assert (a.input_shape, a.num_outputs, a.task) == (spec.input_shape, spec.num_outputs, spec.task)
    # a linear fit leaves a clear residual (the teacher is nonlinear), but explains a real part of the variance
    x = torch.cat([a.x_train, torch.ones(len(a.x_train), 1)], 1).double()
    coef = torch.linalg.lstsq(x, a.y_train.double()).solution
    r2 = 1 - ((x @ coef - a.y_train) ** 2).mean() / a.y_train.var()
    assert 0.2 < r2 < 0.95


# ----------------------------------------------------------------------------- MNIST, Fashion-MNIST (torchvision)
@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files(tmp_path, gz):
    arrays = fake_mnist(tmp_path / "MNIST" / "raw", gz=gz)
    ds = load_dataset("mnist", tmp_path)
    assert ds.x_train.shape == (30, 1, 28, 28) and ds.x_test.shape == (12, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.input_shape == (1, 28, 28) and ds.in_features == 784
    assert np.array_equal(ds.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    assert np.array_equal(ds.y_test.numpy(), arrays["t10k-labels-idx1-ubyte"])
    tr = arrays["train-images-idx3-ubyte"][:, None]
    te = arrays["t10k-images-idx3-ubyte"][:, None]
    np.testing.assert_allclose(ds.x_test.numpy(), expected_standardised(tr, te), atol=1e-5)
    np.testing.assert_allclose(ds.x_train.numpy(), expected_standardised(tr, tr), atol=1e-5)
    if gz:  # unpacked beside the .gz files (as torchvision's own download does), then read by torchvision
        assert all((tmp_path / "MNIST" / "raw" / n).is_file() for n in IDX_FILES)


def test_fashion_mnist_in_torchvision_layout(tmp_path):
    arrays = fake_mnist(tmp_path / "FashionMNIST" / "raw", seed=3)
    check_dataset("fashion_mnist", tmp_path)
    ds = load_dataset("fashion-mnist", tmp_path)
    assert ds.name == "fashion_mnist"
    assert np.array_equal(ds.y_train.numpy(), arrays["train-labels-idx1-ubyte"])
    ref = tv.FashionMNIST(str(tmp_path), train=True, download=False)  # the same files through torchvision itself
    assert np.array_equal(ds.y_train.numpy(), ref.targets.numpy())


def test_missing_mnist_names_the_files_and_folders(tmp_path):
    for call in (lambda: load_dataset("mnist", tmp_path), lambda: check_dataset("mnist", tmp_path)):
        with pytest.raises(DataError) as e:
            call()
        msg = str(e.value)
        assert all(f in msg for f in IDX_FILES) and str(tmp_path / "MNIST" / "raw") in msg and "MNIST" in msg
        assert "does not download" in msg
    fake_mnist(tmp_path / "MNIST" / "raw")
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="missing: t10k-labels-idx1-ubyte"):
        check_dataset("mnist", tmp_path)


def test_truncated_and_foreign_idx_files_are_refused(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    fake_mnist(raw)
    good = (raw / "train-images-idx3-ubyte").read_bytes()
    (raw / "train-images-idx3-ubyte").write_bytes(good[:-10])
    with pytest.raises(DataError, match="not valid idx files"):
        load_dataset("mnist", tmp_path)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(DataError, match="not valid idx files"):
        load_dataset("mnist", tmp_path)
    (raw / "train-images-idx3-ubyte").write_bytes(good)
    assert load_dataset("mnist", tmp_path).x_train.shape == (30, 1, 28, 28)


# ----------------------------------------------------------------------------- CIFAR-10, CIFAR-100 (torchvision)
def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def fake_cifar(root, monkeypatch, n=6, seed=0, hundred=False):
    """CIFAR python batches in torchvision's folder, with torchvision's published checksums replaced by those of
    these fakes (torchvision checks every file's md5 before unpickling it)."""
    rng = np.random.default_rng(seed)
    cls = tv.CIFAR100 if hundred else tv.CIFAR10
    folder = root / cls.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    label_key, classes = ("fine_labels", 100) if hundred else ("labels", 10)
    batches = {}
    for name, _ in cls.train_list + cls.test_list:
        d = {"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8),
             label_key: [int(v) for v in rng.integers(0, classes, n)], "batch_label": name}
        (folder / name).write_bytes(pickle.dumps(d, protocol=2))
        batches[name] = d
    meta_key = cls.meta["key"]
    (folder / cls.meta["filename"]).write_bytes(pickle.dumps({meta_key: [f"c{i}" for i in range(classes)]}))
    monkeypatch.setattr(cls, "train_list", [[n_, _md5(folder / n_)] for n_, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[n_, _md5(folder / n_)] for n_, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", dict(cls.meta, md5=_md5(folder / cls.meta["filename"])))
    return batches


def test_cifar10_python_batches(tmp_path, monkeypatch):
    batches = fake_cifar(tmp_path, monkeypatch)
    assert set(batches) | {"batches.meta"} == set(CIFAR_FILES)
    ds = load_dataset("cifar10", tmp_path)
    assert ds.x_train.shape == (30, 3, 32, 32) and ds.x_test.shape == (6, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    labels = sum((batches[f"data_batch_{i}"]["labels"] for i in range(1, 6)), [])
    assert ds.y_train.tolist() == labels and ds.y_test.tolist() == batches["test_batch"]["labels"]
    tr = np.concatenate([batches[f"data_batch_{i}"]["data"] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    te = batches["test_batch"]["data"].reshape(-1, 3, 32, 32)
    np.testing.assert_allclose(ds.x_test.numpy(), expected_standardised(tr, te), atol=1e-5)
    np.testing.assert_allclose(ds.x_train.numpy(), expected_standardised(tr, tr), atol=1e-5)
    per_channel = ds.x_train.permute(1, 0, 2, 3).reshape(3, -1).double()
    assert torch.allclose(per_channel.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(per_channel.std(1, correction=0), torch.ones(3, dtype=torch.float64), atol=1e-4)


def test_cifar100_fine_labels(tmp_path, monkeypatch):
    batches = fake_cifar(tmp_path, monkeypatch, n=8, hundred=True)
    assert set(batches) | {"meta"} == set(CIFAR100_FILES)
    check_dataset("cifar-100", tmp_path)
    ds = load_dataset("cifar-100", tmp_path)
    assert ds.name == "cifar100" and ds.num_outputs == 100 and ds.input_shape == (3, 32, 32)
    assert ds.x_train.shape == (8, 3, 32, 32) and ds.y_test.tolist() == batches["test"]["fine_labels"]
    tr, te = (batches[k]["data"].reshape(-1, 3, 32, 32) for k in ("train", "test"))
    np.testing.assert_allclose(ds.x_test.numpy(), expected_standardised(tr, te), atol=1e-5)


class _Marker:
    """Unpickling this touches a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_cifar_refuses_pickles_that_are_not_the_published_files(tmp_path, monkeypatch):
    fake_cifar(tmp_path, monkeypatch)
    marker = tmp_path / "unpickled"
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({"data": _Marker(marker)}))
    with pytest.raises(DataError, match="do not match the published ones"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()  # the checksum refused the file before anything was unpickled


def test_missing_cifar_and_unknown_names(tmp_path):
    with pytest.raises(DataError, match="data_batch_1.*test_batch"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DataError, match="cifar-100-python"):
        check_dataset("cifar100", tmp_path)
    with pytest.raises(DataError, match="digits, teacher, mnist"):
        load_dataset("imagenet")


# ----------------------------------------------------------------------------- the registry
def test_registry_names_aliases_and_specs():
    assert dataset_names()[:5] == ("digits", "teacher", "mnist", "fashion_mnist", "cifar10")
    assert {"cifar100", "mnist1d", "synthetic_images"} <= set(dataset_names())
    assert [dataset_name(a) for a in ("Fashion-MNIST", "CIFAR", "mnist-1d", "synthetic")] == \
        ["fashion_mnist", "cifar10", "mnist1d", "synthetic_images"]
    for name in dataset_names():
        spec = dataset_spec(name)
        assert spec.name == name and spec.description and spec.task in ("classification", "regression")
        assert spec.needs_files == (name in ("mnist", "fashion_mnist", "cifar10", "cifar100"))
    assert dataset_spec("cifar100").num_outputs == 100 and dataset_spec("mnist1d").input_shape == (1, 40)


def test_a_registered_data_set_reaches_the_config_and_the_fit_check(monkeypatch):
    """Registering is the one step: the run config accepts the name, check_fit knows its shape."""
    from engine.train import data
    from engine.train.config import RunConfig
    from engine.train.models import ModelError, check_fit

    monkeypatch.setattr(data, "_REGISTRY", dict(data._REGISTRY))
    monkeypatch.setattr(data, "_ALIASES", dict(data._ALIASES))

    @data.register_dataset("tiny", input_shape=(5,), num_outputs=3, task="classification", aliases=("wee",),
                           description="a tiny test set")
    def _tiny(root):
        x = torch.zeros(4, 5)
        return data.Dataset("tiny", "classification", x, torch.zeros(4, dtype=torch.int64), x,
                            torch.zeros(4, dtype=torch.int64), (5,), 3)

    config = RunConfig(dataset="WEE")
    assert config.dataset == "tiny" and load_dataset("tiny").in_features == 5
    from engine.design.templates import make_template

    check_fit(config, make_template("mpo", 5, 3, 2, in_factors=[5], out_factors=[3]))
    with pytest.raises(ModelError, match="needs an image data set"):
        check_fit(RunConfig(dataset="tiny", model="cnn"), None)
    with pytest.raises(ValueError, match="already registered"):
        data.register_dataset("wee", input_shape=(1,), num_outputs=1, task="regression", description="x")


# ----------------------------------------------------------------------------- MNIST-1D, synthetic images
def test_mnist1d_is_generated_with_the_published_defaults_without_network(tmp_path, monkeypatch):
    """Generated by the mnist1d package (never downloaded: sockets refused), cached atomically, and loaded from
    the cache by later processes without importing the generator."""
    import os
    import socket

    from mnist1d.data import get_dataset_args

    from engine.train import data

    args = get_dataset_args(as_dict=True)
    assert (args["num_samples"], args["train_split"], args["final_seq_length"], args["seed"]) == (5000, 0.8, 40, 42)

    def no_network(*a, **k):
        raise AssertionError("MNIST-1D tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("TNSTUDIO_HOME", str(tmp_path))
    state = np.random.get_state()
    ds = load_dataset("mnist1d")
    assert np.array_equal(np.random.get_state()[1], state[1])  # the generator's global seeding is undone
    assert ds.task == "classification" and ds.num_outputs == 10 and ds.input_shape == (1, 40)
    assert ds.x_train.shape == (4000, 1, 40) and ds.x_test.shape == (1000, 1, 40)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert set(ds.y_train.unique().tolist()) == set(range(10))
    cache = tmp_path / "data" / "mnist1d.npz"
    assert cache.is_file() and not list(cache.parent.glob(".*.tmp"))  # written atomically

    code = ("import sys\nfrom engine.train.data import load_dataset\nd = load_dataset('mnist1d')\n"
            "assert d.x_train.shape == (4000, 1, 40), d\nprint(float(d.x_train.double().sum()), 'mnist1d' in sys.modules)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "TNSTUDIO_HOME": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    total, imported = r.stdout.split()
    # summed in float64: a float32 sum's rounding depends on how many threads reduce it (this process's tests may
    # have set another number than a fresh interpreter has), which once moved it by 2.4e-6 relative
    assert float(total) == pytest.approx(float(ds.x_train.double().sum()), rel=1e-12) and imported == "False"

    calls = []
    arrays = {"x_train": ds.x_train[:, 0].numpy(), "y_train": ds.y_train.numpy(), "x_test": ds.x_test[:, 0].numpy(),
              "y_test": ds.y_test.numpy()}
    monkeypatch.setattr(data, "generate_mnist1d", lambda: calls.append(1) or arrays)
    assert torch.equal(load_dataset("mnist-1d").x_test, ds.x_test) and calls == []  # from the cache
    cache.write_bytes(b"not a zip")  # a damaged cache is regenerated, not trusted
    assert torch.equal(load_dataset("mnist1d").x_test, ds.x_test) and calls == [1]
    assert torch.equal(load_dataset("mnist1d").y_train, ds.y_train) and calls == [1]  # and rewritten


@pytest.mark.parametrize("damage, reason", [
    (lambda z: z.update(y_train=z["y_train"][:7]), "y_train has shape (7,), expected (4000,)"),
    (lambda z: z.update(x_train=z["x_train"].astype(str)), "x_train holds <U32 values, not real numbers"),
    (lambda z: z.update(y_train=z["y_train"] * 1000), "y_train holds labels from 0 to 9000, outside 0 to 9"),
    (lambda z: z.update(y_test=z["y_test"].astype(np.float64)), "y_test holds float64 values, not integer labels"),
    (lambda z: z["x_test"].__setitem__((3, 4), np.nan), "x_test holds values that are not finite"),
])
def test_a_damaged_but_readable_mnist1d_cache_is_regenerated(damage, reason, tmp_path, monkeypatch, caplog):
    """A cache that loads but holds the wrong data (too few labels, text, labels out of range, NaN) is checked
    whole, named in a logged notice, regenerated and rewritten: later runs do not fail the same way."""
    from engine.train import data

    rng = np.random.default_rng(0)
    good = {"x_train": rng.standard_normal((4000, 40)).astype(np.float32), "y_train": rng.integers(0, 10, 4000),
            "x_test": rng.standard_normal((1000, 40)).astype(np.float32), "y_test": rng.integers(0, 10, 1000)}
    calls = []
    monkeypatch.setattr(data, "generate_mnist1d", lambda: calls.append(1) or {k: v.copy() for k, v in good.items()})
    monkeypatch.setenv("TNSTUDIO_HOME", str(tmp_path))
    cache = tmp_path / "data" / "mnist1d.npz"
    cache.parent.mkdir()
    bad = {k: v.copy() for k, v in good.items()}
    damage(bad)
    np.savez(cache, version=np.array(data._mnist1d_version()), **bad)
    with caplog.at_level("WARNING", logger="engine.train.data"):
        ds = load_dataset("mnist1d")
    assert calls == [1] and reason in caplog.text and "regenerating it" in caplog.text, caplog.text
    assert torch.equal(ds.y_train, torch.from_numpy(good["y_train"])) and ds.x_train.dtype == torch.float32
    caplog.clear()
    again = load_dataset("mnist1d")  # the rewritten cache is good: no second regeneration, no notice
    assert calls == [1] and not caplog.text and torch.equal(again.x_test[:, 0], torch.from_numpy(good["x_test"]))


def test_synthetic_images_are_seeded_balanced_and_standardised():
    a, b = load_dataset("synthetic_images"), load_dataset("synthetic")
    assert a.input_shape == (3, 16, 16) and a.is_image and a.num_outputs == 10
    assert a.x_train.shape == (500, 3, 16, 16) and a.x_test.shape == (200, 3, 16, 16)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert np.bincount(a.y_train.numpy()).tolist() == [50] * 10
    per_channel = a.x_train.permute(1, 0, 2, 3).reshape(3, -1).double()
    assert torch.allclose(per_channel.mean(1), torch.zeros(3, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(per_channel.std(1), torch.ones(3, dtype=torch.float64), atol=1e-3)


def test_data_module_does_not_import_torch():
    code = ("import sys\nfrom engine.train import data, models, config\n"
            "assert data.dataset_names() and models.model_names() and config.RunConfig().dataset == 'digits'\n"
            "assert 'torch' not in sys.modules, 'importing the registries imported torch'\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("gz", [False, True])
def test_a_launch_reads_the_idx_headers_before_it_records_a_run(gz, tmp_path):
    """`train --dataset mnist --dry-run` said ok over idx files of garbage, and the real launch recorded a run that
    failed in its trainer (exit 1). check_dataset (every launch, and --dry-run) now reads each idx file's header:
    a foreign, cut-short or wrongly shaped file is refused, naming it; the standard files pass."""
    from engine.cli import main

    raw = tmp_path / "MNIST" / "raw"
    fake_mnist(raw, gz=gz)
    check_dataset("mnist", tmp_path)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    good = (raw / name).read_bytes()
    plain = gzip.decompress(good) if gz else good
    cases = [(b"\x89PNG\r\n\x1a\n" + bytes(100), "its header is not idx3's"),
             (plain[:8], "its header is not idx3's"),
             (bytes([0, 0, 8, 3]) + struct.pack(">3I", 30, 32, 32) + bytes(30 * 32 * 32), "its images are 32x32")]
    if not gz:
        cases.append((plain[:-10], "cut short?"))
    for data, words in cases:
        (raw / name).write_bytes(gzip.compress(data) if gz else data)
        with pytest.raises(DataError, match=re.escape(words)):
            check_dataset("mnist", tmp_path)
    design = tmp_path / "m.json"
    design.write_text(json.dumps(__import__("engine.design.templates", fromlist=["x"]).make_template(
        "mpo", 784, 10, 2).to_dict()))
    assert main(["train", str(design), "--dataset", "mnist", "--data-dir", str(tmp_path), "--dry-run"]) == 2
    (raw / name).write_bytes(good)
    check_dataset("mnist", tmp_path)
