"""Tests of fedr.datasets: file readers, loaders, client splits and ClientData (numpy only)."""

from __future__ import annotations

import gzip
import re
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from fedr import _idx
from fedr.datasets import (
    ClientData,
    Dataset,
    DatasetNotFoundError,
    as_client_data,
    as_labels,
    label_distribution,
    load_dataset,
    load_fashion_mnist,
    load_kmnist,
    make_clients,
    make_federated_data,
    prepare_images,
    read_idx,
    read_npz,
    read_rds,
    split_indices,
    to_batches,
)
from fedr.errors import FedError, FedTypeError, FedValueError

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
NPZ_NAMES = (
    "kmnist-train-imgs.npz",
    "kmnist-train-labels.npz",
    "kmnist-test-imgs.npz",
    "kmnist-test-labels.npz",
)
IDX_CODES = {
    np.dtype("u1"): 0x08,
    np.dtype("i1"): 0x09,
    np.dtype("i2"): 0x0B,
    np.dtype("i4"): 0x0C,
    np.dtype("f4"): 0x0D,
    np.dtype("f8"): 0x0E,
}
REAL_DIR = Path("/usr/share/datasets/fashion-mnist")


# --------------------------------------------------------------------------- helpers


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array as IDX: zero, zero, dtype code, ndim, big-endian dims, big-endian data."""
    array = np.asarray(array)
    code = IDX_CODES[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def images(n: int, offset: int = 0) -> np.ndarray:
    return ((np.arange(n * 784) + offset) % 256).astype(np.uint8).reshape(n, 28, 28)


def labels(n: int) -> np.ndarray:
    return (np.arange(n) % 10).astype(np.uint8)


def write_idx_dataset(directory: Path, n_train: int = 6, n_test: int = 4, gz: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = (images(n_train), labels(n_train), images(n_test, offset=7), labels(n_test))
    for name, array in zip(IDX_NAMES, arrays, strict=True):
        write_idx(directory / (name + (".gz" if gz else "")), array)
    return directory


def write_npz_dataset(directory: Path, n_train: int = 6, n_test: int = 4) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = (images(n_train), labels(n_train), images(n_test, offset=7), labels(n_test))
    for name, array in zip(NPZ_NAMES, arrays, strict=True):
        np.savez_compressed(directory / name, array)
    return directory


def tiny_dataset(n_train: int = 20, n_test: int = 10) -> Dataset:
    return Dataset(
        name="tiny",
        x_train=images(n_train),
        y_train=labels(n_train).astype(np.int64),
        x_test=images(n_test, offset=7),
        y_test=labels(n_test).astype(np.int64),
        class_names=tuple("abcdefghij"),
    )


# --------------------------------------------------------------------------- errors module


def test_error_types_subclass_the_builtin_ones():
    assert issubclass(FedValueError, FedError) and issubclass(FedValueError, ValueError)
    assert issubclass(FedTypeError, FedError) and issubclass(FedTypeError, TypeError)
    assert issubclass(DatasetNotFoundError, FedError) and issubclass(
        DatasetNotFoundError, FileNotFoundError
    )


# --------------------------------------------------------------------------- IDX reader


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trips_uint8_images(tmp_path, suffix):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / f"images-idx3-ubyte{suffix}", array)

    got = read_idx(path)

    assert got.dtype == np.uint8
    assert got.shape == (2, 3, 4)
    assert_array_equal(got, array)


def test_read_idx_round_trips_labels(tmp_path):
    path = write_idx(tmp_path / "labels-idx1-ubyte.gz", np.array([0, 9, 8, 3], dtype=np.uint8))

    assert read_idx(path).tolist() == [0, 9, 8, 3]


@pytest.mark.parametrize(
    ("values", "dtype"),
    [
        ([1, -2, 70000], "i4"),
        ([-3, 300], "i2"),
        ([-1, 5], "i1"),
        ([0.5, -1.25], "f4"),
        ([1e300], "f8"),
    ],
)
def test_read_idx_decodes_big_endian_types_to_native(tmp_path, values, dtype):
    path = write_idx(tmp_path / "data-idx1", np.array(values, dtype=dtype))

    got = read_idx(path)

    assert got.dtype == np.dtype(dtype)
    assert got.dtype.isnative
    assert got.tolist() == values


def test_read_idx_detects_gzip_from_content_not_name(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    path.write_bytes(gzip.compress(idx_bytes(np.array([4, 2], dtype=np.uint8))))

    assert read_idx(path).tolist() == [4, 2]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x00\x00", "not an IDX file: 2 bytes, shorter than the 4-byte magic number"),
        (
            b"\x01\x02\x08\x03" + bytes(12),
            "not an IDX file: magic number 0x01020803 does not start with two zero bytes",
        ),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "unknown IDX dtype code 0x07"),
        (b"\x00\x00\x08\x00", "IDX header declares 0 dimensions"),
        (
            b"\x00\x00\x08\x03\x00\x00\x00\x02",
            "truncated IDX header: 3 dimensions need 16 bytes, file has 8",
        ),
        (
            idx_bytes(np.zeros((2, 3, 4), np.uint8))[:-1],
            "IDX data truncated: header says 2x3x4 uint8 = 24 bytes, file has 23",
        ),
        (
            idx_bytes(np.zeros((2, 3), np.int32)) + b"\x00",
            "IDX data has trailing bytes: header says 2x3 int32 = 24 bytes, file has 25",
        ),
    ],
)
def test_read_idx_rejects_corrupt_files_naming_file_and_problem(tmp_path, data, message):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(data)

    with pytest.raises(FedValueError, match=re.escape(f"{path}: {message}")):
        read_idx(path)


def test_read_idx_rejects_truncated_gzip(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    compressed = gzip.compress(idx_bytes(images(5)))
    path.write_bytes(compressed[: len(compressed) // 2])

    with pytest.raises(FedValueError, match=re.escape(f"{path}: corrupt or truncated gzip stream")):
        read_idx(path)


def test_read_idx_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent.gz")


# --------------------------------------------------------------------------- npz reader


def test_read_npz_reads_arr_0(tmp_path):
    array = images(3)
    np.savez_compressed(tmp_path / "kmnist-train-imgs.npz", array)

    got = read_npz(tmp_path / "kmnist-train-imgs.npz")

    assert got.dtype == np.uint8
    assert_array_equal(got, array)


def test_read_npz_accepts_single_array_under_any_key(tmp_path):
    np.savez(tmp_path / "a.npz", labels=np.array([3, 1, 2]))

    assert read_npz(tmp_path / "a.npz").tolist() == [3, 1, 2]


def test_read_npz_prefers_arr_0_among_several(tmp_path):
    np.savez(tmp_path / "a.npz", np.array([1]), extra=np.array([2]))

    assert read_npz(tmp_path / "a.npz").tolist() == [1]


def test_read_npz_rejects_several_arrays_without_arr_0(tmp_path):
    path = tmp_path / "a.npz"
    np.savez(path, a=np.array([1]), b=np.array([2]))

    with pytest.raises(
        FedValueError,
        match=re.escape(
            f"{path}: expected one array (or one named 'arr_0'), found keys ['a', 'b']"
        ),
    ):
        read_npz(path)


def test_read_npz_rejects_non_zip(tmp_path):
    path = tmp_path / "kmnist-train-imgs.npz"
    path.write_bytes(b"hello world")

    with pytest.raises(FedValueError, match=re.escape(f"{path}: not an npz file")):
        read_npz(path)


def test_read_npz_rejects_truncated_archive(tmp_path):
    path = tmp_path / "kmnist-train-imgs.npz"
    np.savez_compressed(path, images(50))
    path.write_bytes(path.read_bytes()[:-200])

    with pytest.raises(FedValueError, match=re.escape(f"{path}: corrupt or truncated npz file")):
        read_npz(path)


# --------------------------------------------------------------------------- loaders


@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_from_path(tmp_path, gz):
    write_idx_dataset(tmp_path, gz=gz)

    ds = load_fashion_mnist(tmp_path)

    assert ds.name == "fashion_mnist"
    assert ds.x_train.shape == (6, 28, 28) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (4, 28, 28)
    assert ds.y_train.dtype == np.int64
    assert ds.y_train.tolist() == [0, 1, 2, 3, 4, 5]
    assert ds.y_test.tolist() == [0, 1, 2, 3]
    assert_array_equal(ds.x_train, images(6))
    assert_array_equal(ds.x_test, images(4, offset=7))
    assert ds.class_names == (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    )


def test_dataset_repr_shows_shapes(tmp_path):
    ds = load_fashion_mnist(write_idx_dataset(tmp_path))

    assert repr(ds) == (
        "Dataset(name='fashion_mnist', x_train=uint8(6, 28, 28), y_train=int64(6,), "
        "x_test=uint8(4, 28, 28), y_test=int64(4,), classes=10)"
    )


@pytest.mark.parametrize("subdir", ["fashion-mnist", ""])
def test_load_fashion_mnist_honours_fedr_data_dir(tmp_path, monkeypatch, subdir):
    write_idx_dataset(tmp_path / subdir, n_train=3)
    monkeypatch.setenv("FEDR_DATA_DIR", str(tmp_path))

    ds = load_fashion_mnist()

    # 3 examples, not the 60000 of a Debian install: FEDR_DATA_DIR comes first.
    assert ds.x_train.shape == (3, 28, 28)


def test_load_fashion_mnist_missing_lists_every_directory(tmp_path, monkeypatch):
    env = tmp_path / "data"
    env.mkdir()
    (env / "train-images-idx3-ubyte.gz").write_bytes(b"")
    default = tmp_path / "debian"
    monkeypatch.setenv("FEDR_DATA_DIR", str(env))
    monkeypatch.setattr(_idx, "FASHION_MNIST_DIR", str(default))

    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist()

    assert str(info.value) == (
        "fashion_mnist files not found. fedr looked in:\n"
        f"  {env}/fashion-mnist (no such directory)\n"
        f"  {env} (missing train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], "
        "t10k-labels-idx1-ubyte[.gz])\n"
        f"  {default} (no such directory)\n"
        "Install them with `apt-get install dataset-fashion-mnist` (or `make setup`), "
        "or pass `path=` / set FEDR_DATA_DIR to a directory holding them."
    )
    assert isinstance(info.value, FileNotFoundError)


def test_load_fashion_mnist_with_path_looks_only_there(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDR_DATA_DIR", str(tmp_path))

    with pytest.raises(
        DatasetNotFoundError, match=r"fedr looked in:\n  \S+/nowhere \(no such directory\)\nInstall"
    ):
        load_fashion_mnist(tmp_path / "nowhere")


def test_load_kmnist_from_npz(tmp_path):
    write_npz_dataset(tmp_path)

    ds = load_kmnist(tmp_path)

    assert ds.name == "kmnist"
    assert ds.x_train.shape == (6, 28, 28) and ds.x_train.dtype == np.uint8
    assert ds.y_test.tolist() == [0, 1, 2, 3] and ds.y_test.dtype == np.int64
    assert_array_equal(ds.x_test, images(4, offset=7))
    assert ds.class_names == ("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo")


def test_load_kmnist_from_idx(tmp_path):
    write_idx_dataset(tmp_path, n_train=5, gz=False)

    ds = load_kmnist(tmp_path)

    assert ds.y_train.tolist() == [0, 1, 2, 3, 4]
    assert_array_equal(ds.x_train, images(5))


def test_load_kmnist_honours_fedr_data_dir(tmp_path, monkeypatch):
    write_npz_dataset(tmp_path / "kmnist", n_train=2)
    monkeypatch.setenv("FEDR_DATA_DIR", str(tmp_path))

    assert load_kmnist().y_train.tolist() == [0, 1]


def test_load_kmnist_missing_without_any_directory(monkeypatch):
    monkeypatch.delenv("FEDR_DATA_DIR", raising=False)

    with pytest.raises(DatasetNotFoundError) as info:
        load_kmnist()

    assert str(info.value) == (
        "kmnist files not found. fedr looked in:\n"
        "  (no directory: `path` is None and FEDR_DATA_DIR is unset)\n"
        "Download the four files (kmnist-*-imgs.npz and kmnist-*-labels.npz, or the IDX "
        "*-ubyte.gz files) from https://github.com/rois-codh/kmnist, then pass `path=` "
        "or set FEDR_DATA_DIR to their directory."
    )


def test_load_kmnist_missing_names_both_formats(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_kmnist(tmp_path)

    assert (
        f"  {tmp_path} (missing kmnist-train-imgs.npz, kmnist-train-labels.npz, kmnist-test-imgs.npz, "
        "kmnist-test-labels.npz; or missing train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], "
        "t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz])\n" in str(info.value)
    )


def test_load_dataset_by_name(tmp_path):
    write_idx_dataset(tmp_path / "f")
    write_npz_dataset(tmp_path / "k")

    assert load_dataset("fashion_mnist", tmp_path / "f").name == "fashion_mnist"
    assert load_dataset("fashion-mnist", tmp_path / "f").name == "fashion_mnist"
    assert load_dataset("kmnist", tmp_path / "k").name == "kmnist"
    with pytest.raises(
        FedValueError, match=r"`name` must be one of 'fashion_mnist', 'kmnist'; got 'mnist'"
    ):
        load_dataset("mnist")


def test_loader_reports_corrupt_file(tmp_path):
    write_idx_dataset(tmp_path)
    bad = tmp_path / "t10k-labels-idx1-ubyte.gz"
    bad.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09\x01"))

    with pytest.raises(FedValueError, match=re.escape(f"{bad}: IDX data truncated")):
        load_fashion_mnist(tmp_path)


def test_loader_reports_count_mismatch_and_rank(tmp_path):
    write_idx_dataset(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels(5))
    with pytest.raises(
        FedValueError,
        match=r"train-images-idx3-ubyte.gz: 6 images but \S+train-labels-idx1-ubyte.gz has 5 labels",
    ):
        load_fashion_mnist(tmp_path)

    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels(6).reshape(6, 1))
    with pytest.raises(
        FedValueError, match=r"train-labels-idx1-ubyte.gz: expected a 1-D array, got shape \(6, 1\)"
    ):
        load_fashion_mnist(tmp_path)


@pytest.mark.skipif(not REAL_DIR.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_default_path(monkeypatch):
    monkeypatch.delenv("FEDR_DATA_DIR", raising=False)

    ds = load_fashion_mnist()

    assert ds.x_train.shape == (60000, 28, 28) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (10000, 28, 28)
    assert np.bincount(ds.y_train).tolist() == [6000] * 10
    assert np.bincount(ds.y_test).tolist() == [1000] * 10
    assert ds.y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert int(ds.x_train.max()) == 255

    clients = make_federated_data(ds)

    assert [c.num_examples for c in clients] == [6000] * 10
    assert [c.num_batches for c in clients] == [60] * 10
    batch = to_batches(clients)[4][0]
    assert batch["x"].shape == (100, 784) and batch["x"].dtype == np.float32
    assert batch["y"].tolist() == ds.y_train[24000:24100].tolist()


# --------------------------------------------------------------------------- prepare_images


def test_prepare_images_scales_integers_like_the_reference():
    x = np.array([[[0, 51], [255, 102]], [[1, 2], [3, 4]]], dtype=np.uint8)

    got = prepare_images(x)

    assert got.dtype == np.float32 and got.shape == (2, 4)
    assert got.flags.c_contiguous
    assert_allclose(got[0], [0.0, 0.2, 1.0, 0.4], rtol=1e-7)
    # Same rounding as the reference's float32 cast followed by /255.
    assert_array_equal(got, x.reshape(2, 4).astype(np.float32) / np.float32(255))


def test_prepare_images_keeps_float32_as_is():
    x = np.linspace(0, 1, 3 * 784, dtype=np.float32).reshape(3, 784)

    got = prepare_images(x)

    assert np.shares_memory(got, x)
    assert_array_equal(got, x)


def test_prepare_images_converts_float64_without_scaling():
    got = prepare_images(np.array([[0.5, 2.0]]))

    assert got.dtype == np.float32
    assert got.tolist() == [[0.5, 2.0]]


@pytest.mark.parametrize(
    ("x", "error", "message"),
    [
        (
            np.zeros(3, np.uint8),
            FedValueError,
            r"`x` must have shape \(n, ...\) with at least 2 dimensions; got shape \(3,\)",
        ),
        (np.array([[0.0, np.nan]]), FedValueError, r"`x` has non-finite values"),
        (np.array([[0.0, np.inf]], np.float32), FedValueError, r"`x` has non-finite values"),
        (
            np.array([[0, 300]], np.int16),
            FedValueError,
            r"`x` integer pixels must be in 0..255; got values in 0..300",
        ),
        (
            np.array([[True]]),
            FedTypeError,
            r"`x` must be an integer or float array; got dtype bool",
        ),
    ],
)
def test_prepare_images_rejects_bad_input(x, error, message):
    with pytest.raises(error, match=message):
        prepare_images(x)


# --------------------------------------------------------------------------- split_indices


def test_sequential_split_is_the_references_ten_percent_ranges():
    parts = split_indices(60000, 10)

    assert [len(p) for p in parts] == [6000] * 10
    assert all(p.dtype == np.int64 for p in parts)
    assert_array_equal(parts[0], np.arange(6000))
    assert parts[9][0] == 54000 and parts[9][-1] == 59999


def test_sequential_split_uses_floor_boundaries():
    parts = split_indices(10, 3)

    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]]


def test_sequential_split_takes_labels_too():
    assert [p.tolist() for p in split_indices(np.array([5, 5, 7, 7]), 2)] == [[0, 1], [2, 3]]


def test_iid_split_is_a_seeded_permutation():
    parts = split_indices(100, 3, "iid", seed=7)

    assert [len(p) for p in parts] == [33, 33, 34]
    assert sorted(np.concatenate(parts).tolist()) == list(range(100))
    assert not all((np.diff(p) > 0).all() for p in parts)  # shuffled, not sorted
    again = split_indices(100, 3, "iid", seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))
    other = split_indices(100, 3, "iid", seed=8)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other, strict=True))


def test_iid_split_without_seed_is_fresh():
    first = np.concatenate(split_indices(1000, 2, "iid"))
    second = np.concatenate(split_indices(1000, 2, "iid"))

    assert not np.array_equal(first, second)


def mean_max_share(y: np.ndarray, parts: list[np.ndarray]) -> float:
    """Mean over clients of the share of the client's most common label."""
    return float(np.mean([np.bincount(y[p]).max() / len(p) for p in parts]))


def test_dirichlet_split_small_alpha_skews_labels():
    y = np.repeat(np.arange(10), 100)

    skewed = mean_max_share(y, split_indices(y, 10, "dirichlet", seed=0, alpha=0.1))
    near_iid = mean_max_share(y, split_indices(y, 10, "dirichlet", seed=0, alpha=100.0))

    assert skewed > 0.6
    assert near_iid < 0.2
    assert_allclose(mean_max_share(y, split_indices(y, 10, "iid", seed=0)), 0.1, atol=0.1)


def test_dirichlet_split_covers_every_index_once_and_no_client_is_empty():
    y = np.tile(np.arange(10), 50)

    for seed in range(5):
        parts = split_indices(y, 10, "dirichlet", seed=seed, alpha=0.05)
        assert min(len(p) for p in parts) >= 1
        assert np.sort(np.concatenate(parts)).tolist() == list(range(500))
        assert all((np.diff(p) > 0).all() for p in parts)  # file order within a client


def test_dirichlet_split_honours_min_size_and_seed():
    y = np.tile(np.arange(10), 50)

    parts = split_indices(y, 5, "dirichlet", seed=3, alpha=0.3, min_size=40)
    again = split_indices(y, 5, "dirichlet", seed=3, alpha=0.3, min_size=40)

    assert min(len(p) for p in parts) >= 40
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_dirichlet_split_accepts_whole_float_labels():
    y = np.tile([0.0, 1.0, 2.0], 10)

    parts = split_indices(y, 3, "dirichlet", seed=1)

    assert sum(len(p) for p in parts) == 30


def test_dirichlet_split_gives_up_after_bounded_tries():
    y = np.tile(np.arange(2), 10)

    with pytest.raises(
        FedValueError,
        match=r"`method` 'dirichlet' gave some client fewer than 2 examples in 1000 draws with alpha=0.001",
    ):
        split_indices(y, 10, "dirichlet", seed=0, alpha=0.001, min_size=2)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((100, 0), {}, r"`n_clients` must be a positive integer; got 0"),
        ((100, True), {}, r"`n_clients` must be a positive integer; got True"),
        ((100, 2.5), {}, r"`n_clients` must be a positive integer; got 2.5"),
        ((10, 11), {}, r"`n_clients` must be at most the number of examples \(10\); got 11"),
        ((0, 1), {}, r"`y_or_n` must be labels or a positive number of examples; got 0"),
        ((np.array([]), 1), {}, r"`y_or_n` must hold at least one label; got shape \(0,\)"),
        (
            (100, 2, "random"),
            {},
            r"`method` must be one of 'sequential', 'iid', 'dirichlet'; got 'random'",
        ),
        (
            (100, 2, "dirichlet"),
            {},
            r"`method` 'dirichlet' needs labels in `y_or_n`; got the count 100",
        ),
        (
            (np.zeros(10), 2, "dirichlet"),
            {"alpha": 0},
            r"`alpha` must be a positive finite number; got 0",
        ),
        (
            (np.zeros(10), 2, "dirichlet"),
            {"alpha": float("inf")},
            r"`alpha` must be a positive finite number; got inf",
        ),
        (
            (np.zeros(10), 2, "dirichlet"),
            {"min_size": -1},
            r"`min_size` must be a non-negative integer; got -1",
        ),
        (
            (np.zeros(10), 2, "dirichlet"),
            {"min_size": 6},
            r"`min_size` times `n_clients` \(6 x 2\) exceeds the 10 examples",
        ),
        ((np.array([0.5, 1.0]), 2, "dirichlet"), {}, r"`y_or_n` must hold whole-number labels"),
        (
            (np.array([-1, 1]), 2, "dirichlet"),
            {},
            r"`y_or_n` must hold non-negative labels; got -1",
        ),
        (
            (np.zeros((4, 2)), 2, "dirichlet"),
            {},
            r"`y_or_n` must be 1-D labels; got shape \(4, 2\)",
        ),
    ],
)
def test_split_indices_rejects_bad_arguments(args, kwargs, message):
    with pytest.raises(FedValueError, match=message):
        split_indices(*args, **kwargs)


# --------------------------------------------------------------------------- ClientData


def test_client_data_batches_250_examples_by_100():
    x = np.arange(250 * 4, dtype=np.float32).reshape(250, 4).copy()  # owns its data
    y = np.arange(250) % 10

    client = ClientData(x, y, batch_size=100)

    assert client.offsets.tolist() == [0, 100, 200, 250]
    assert client.offsets.dtype == np.int64
    assert (client.num_examples, client.num_batches, client.batch_size, len(client)) == (
        250,
        3,
        100,
        3,
    )
    # The client's arrays are read-only: writeable input is copied once, read-only
    # float32 C-contiguous input is kept as it is.
    assert not client.x.flags.writeable and not np.shares_memory(client.x, x)
    x.flags.writeable = False
    assert ClientData(x, y, batch_size=100).x is x
    assert client.y.dtype == np.int32
    batches = client.batches()
    assert [len(b["y"]) for b in batches] == [100, 100, 50]
    assert all(isinstance(b, OrderedDict) and list(b) == ["x", "y"] for b in batches)
    assert np.shares_memory(batches[2]["x"], client.x)  # batches are views
    assert_array_equal(batches[2]["x"], x[200:])
    assert [len(b["x"]) for b in client] == [100, 100, 50]


def test_client_data_defaults_to_one_batch_and_converts_dtypes():
    client = ClientData(np.ones((3, 2), dtype=np.float64), [1.0, 0.0, 9.0], client_id="a")

    assert client.offsets.tolist() == [0, 3]
    assert client.x.dtype == np.float32 and client.x.flags.c_contiguous
    assert client.y.dtype == np.int32 and client.y.tolist() == [1, 0, 9]
    assert client.client_id == "a"


def test_client_data_with_offsets_and_2d_targets():
    client = ClientData(np.zeros((5, 2), np.uint8), np.ones((5, 3)), offsets=[0, 3, 5])

    assert [len(b["x"]) for b in client.batches()] == [3, 2]
    assert client.batch_size == 3
    assert client.y.dtype == np.float32 and client.y.shape == (5, 3)
    assert client.x.dtype == np.float32


def test_client_data_offsets_are_read_only():
    client = ClientData(np.zeros((4, 2), np.float32), [0, 1, 2, 3], batch_size=2)

    with pytest.raises(ValueError):
        client.offsets[1] = 3


def test_client_data_repr():
    client = ClientData(
        np.zeros((250, 784), np.float32), np.zeros(250, int), batch_size=100, client_id="client_3"
    )

    assert repr(client) == (
        "ClientData(client_id='client_3', num_examples=250, num_batches=3, batch_size=100, "
        "x=float32(250, 784), y=int32(250,))"
    )


X4 = np.zeros((4, 2), np.float32)


@pytest.mark.parametrize(
    ("x", "y", "kwargs", "error", "message"),
    [
        (
            np.zeros((100, 2)),
            np.zeros(99),
            {},
            FedValueError,
            r"client 'client_3': x has 100 rows but y has 99",
        ),
        (np.zeros((0, 2)), np.zeros(0), {}, FedValueError, r"client 'client_3': has no examples"),
        (
            np.array([[0.0, np.nan]]),
            [0],
            {},
            FedValueError,
            r"client 'client_3': x has non-finite values",
        ),
        (
            np.zeros(4),
            np.zeros(4),
            {},
            FedValueError,
            r"client 'client_3': x must have at least 2 dimensions \(n, ...\); got shape \(4,\)",
        ),
        (
            X4,
            np.zeros((4, 1, 1)),
            {},
            FedValueError,
            r"client 'client_3': y must be 1-D labels or 2-D targets; got shape \(4, 1, 1\)",
        ),
        (
            X4,
            [0.5, 1, 2, 3],
            {},
            FedValueError,
            r"client 'client_3': y must hold whole-number labels",
        ),
        (
            X4,
            [0, -1, 2, 3],
            {},
            FedValueError,
            r"client 'client_3': y must hold non-negative labels; got -1",
        ),
        (
            X4,
            np.full((4, 1), np.inf),
            {},
            FedValueError,
            r"client 'client_3': y has non-finite values",
        ),
        (
            X4,
            ["a", "b", "c", "d"],
            {},
            FedTypeError,
            r"client 'client_3': y must be integer labels; got dtype <U1",
        ),
        (
            np.array([["a"]]),
            ["b"],
            {},
            FedTypeError,
            r"client 'client_3': x must be a float or integer array; got dtype <U1",
        ),
        (
            X4,
            [0, 1, 2, 3],
            {"batch_size": 2, "offsets": [0, 4]},
            FedValueError,
            r"client 'client_3': give `batch_size` or `offsets`, not both",
        ),
        (
            X4,
            [0, 1, 2, 3],
            {"batch_size": 0},
            FedValueError,
            r"`batch_size` must be a positive integer; got 0",
        ),
        (
            X4,
            [0, 1, 2, 3],
            {"offsets": [0, 3, 2, 4]},
            FedValueError,
            r"client 'client_3': offsets must increase strictly from 0 to 4; got \[0, 3, 2, 4\]",
        ),
        (
            X4,
            [0, 1, 2, 3],
            {"offsets": [1, 4]},
            FedValueError,
            r"offsets must increase strictly from 0 to 4; got \[1, 4\]",
        ),
        (
            X4,
            [0, 1, 2, 3],
            {"offsets": [0, 3]},
            FedValueError,
            r"offsets must increase strictly from 0 to 4; got \[0, 3\]",
        ),
        (
            X4,
            [0, 1, 2, 3],
            {"offsets": [0, 2, 2, 4]},
            FedValueError,
            r"offsets must increase strictly",
        ),
        (
            X4,
            [0, 1, 2, 3],
            {"offsets": [0.0, 4.0]},
            FedValueError,
            r"client 'client_3': offsets must be 1-D integers with at least 2 entries; got dtype float64 shape \(2,\)",
        ),
        (
            X4,
            [0, 1, 2, 3],
            {"offsets": [4]},
            FedValueError,
            r"offsets must be 1-D integers with at least 2 entries; got dtype int64 shape \(1,\)",
        ),
    ],
)
def test_client_data_rejects_bad_input_naming_the_client(x, y, kwargs, error, message):
    with pytest.raises(error, match=message):
        ClientData(x, y, client_id="client_3", **kwargs)


def test_client_data_rejects_non_string_id():
    with pytest.raises(FedTypeError, match=r"`client_id` must be a str; got int"):
        ClientData(X4, [0, 1, 2, 3], client_id=3)


def reference_batches() -> list[OrderedDict]:
    """Three batches as the reference builds them: float32 (B, 784) in [0, 1], float labels."""
    rows = [100, 100, 50]
    x = (np.arange(250 * 784) % 256).astype(np.float32).reshape(250, 784) / np.float32(255)
    y = (np.arange(250) % 10).astype(np.float32)
    starts = [0, 100, 200]
    return [OrderedDict(x=x[s : s + r], y=y[s : s + r]) for s, r in zip(starts, rows, strict=True)]


def test_from_batches_round_trips_the_reference_structure():
    batches = reference_batches()

    client = ClientData.from_batches(batches, client_id="client_5")

    assert client.client_id == "client_5"
    assert client.offsets.tolist() == [0, 100, 200, 250]
    assert client.x.shape == (250, 784) and client.y.dtype == np.int32
    for got, want in zip(client.batches(), batches, strict=True):
        assert_array_equal(got["x"], want["x"])
        assert_array_equal(got["y"], want["y"])


def test_from_batches_accepts_tuples_and_images():
    batches = [
        (np.zeros((2, 28, 28), np.uint8), np.array([1, 2])),
        (np.ones((1, 28, 28), np.uint8), np.array([3])),
    ]

    client = ClientData.from_batches(batches)

    assert client.x.shape == (3, 28, 28)
    assert client.y.tolist() == [1, 2, 3]
    assert client.offsets.tolist() == [0, 2, 3]


@pytest.mark.parametrize(
    ("batches", "error", "message"),
    [
        ([], FedValueError, r"client 'c': has no batches"),
        ({"x": 1}, FedTypeError, r"client 'c': expected a list of batches; got dict"),
        (
            [{"x": np.zeros((1, 2)), "y": [0]}, {"x": np.zeros((1, 2)), "label": [0]}],
            FedValueError,
            r"client 'c': batch 1 has keys \['x', 'label'\], expected 'x' and 'y'",
        ),
        (
            [(np.zeros((3, 2)), np.zeros(2))],
            FedValueError,
            r"client 'c': batch 0 has x of shape \(3, 2\) but y of shape \(2,\)",
        ),
        (
            [(np.zeros((1, 2)), [0]), (np.zeros((1, 3)), [0])],
            FedValueError,
            r"client 'c': batch 1 has x rows of shape \(3,\), batch 0 \(2,\)",
        ),
        (
            [(np.zeros(3), np.zeros(3))],
            FedValueError,
            r"client 'c': batch 0 has x of shape \(3,\), expected \(B, ...\)",
        ),
        (
            [(np.zeros((1, 2)), [0]), (np.zeros((0, 2)), np.zeros(0))],
            FedValueError,
            r"client 'c': batch 1 is empty",
        ),
        (
            [7],
            FedTypeError,
            r"client 'c': batch 0 must be a dict with keys 'x' and 'y' or an \(x, y\) tuple; got int",
        ),
    ],
)
def test_from_batches_rejects_bad_batches(batches, error, message):
    with pytest.raises(error, match=message):
        ClientData.from_batches(batches, client_id="c")


# --------------------------------------------------------------------------- as_client_data


def test_as_client_data_accepts_every_form():
    one = ClientData(X4, [0, 1, 2, 3], client_id="mine")
    nested = [reference_batches(), reference_batches()[:1]]
    pairs = [(np.zeros((3, 2)), np.array([0, 1, 2])), [np.zeros((2, 2)), [1, 1]]]

    assert as_client_data(one) == [one]
    assert as_client_data([one, one]) == [one, one]
    from_nested = as_client_data(nested)
    assert [(c.client_id, c.num_examples, c.num_batches) for c in from_nested] == [
        ("client_0", 250, 3),
        ("client_1", 100, 1),
    ]
    from_pairs = as_client_data(pairs)
    assert [(c.client_id, c.num_examples, c.num_batches) for c in from_pairs] == [
        ("client_0", 3, 1),
        ("client_1", 2, 1),
    ]
    batched = as_client_data(pairs, batch_size=2)
    assert batched[0].offsets.tolist() == [0, 2, 3]
    mixed = as_client_data((one, reference_batches()))
    assert [c.client_id for c in mixed] == ["mine", "client_1"]


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        ([], FedValueError, r"expected at least one client; got an empty list"),
        (
            {"x": 1},
            FedTypeError,
            r"expected a ClientData, a list of ClientData, a list over clients of lists of "
            r"\{'x', 'y'\} batches, or a list of \(x, y\) pairs; got dict",
        ),
        (np.zeros((2, 2)), FedTypeError, r"\(x, y\) pairs; got ndarray"),
        ([1, 2], FedTypeError, r"\(x, y\) pairs; got list whose item 0 is int"),
        (
            [[(np.zeros((2, 2)), [0])]],
            FedValueError,
            r"client 'client_0': batch 0 has x of shape \(2, 2\) but y of shape \(1,\)",
        ),
    ],
)
def test_as_client_data_rejects_other_forms(data, error, message):
    with pytest.raises(error, match=message):
        as_client_data(data)


# --------------------------------------------------------------------------- make_clients and helpers


def test_make_clients_sequential_prepares_and_batches():
    x = images(250)
    y = labels(250)

    clients = make_clients(x, y, n_clients=2, batch_size=100)

    assert [c.client_id for c in clients] == ["client_0", "client_1"]
    assert [c.offsets.tolist() for c in clients] == [[0, 100, 125], [0, 100, 125]]
    # Integer pixels stay uint8; the model sees x / 255, the values prepare_images gives.
    assert clients[1].x.shape == (125, 784) and clients[1].x.dtype == np.uint8 and clients[1].scale == 255
    assert_array_equal(clients[1].x, x.reshape(250, 784)[125:])
    assert clients[1].features().dtype == np.float32
    assert_array_equal(clients[1].features(), prepare_images(x)[125:])
    floats = make_clients(prepare_images(x), y, n_clients=2, batch_size=100)
    assert floats[1].x.dtype == np.float32 and floats[1].scale is None
    assert_array_equal(floats[1].x, clients[1].features())
    assert clients[1].y.tolist() == (np.arange(125, 250) % 10).tolist()
    assert clients[0].x.flags.c_contiguous and clients[1].x.flags.c_contiguous


@pytest.mark.parametrize("method", ["iid", "dirichlet"])
def test_make_clients_random_methods_are_seeded(method):
    x, y = images(200), labels(200)

    first = make_clients(x, y, 4, method, batch_size=30, seed=11)
    second = make_clients(x, y, 4, method, batch_size=30, seed=11)

    assert sum(c.num_examples for c in first) == 200
    for a, b in zip(first, second, strict=True):
        assert_array_equal(a.y, b.y)
        assert_array_equal(a.x, b.x)
        assert a.offsets.tolist()[:2] == [0, 30]


def test_make_clients_rejects_bad_input():
    with pytest.raises(FedValueError, match=r"`x` has 5 rows but `y` has shape \(4,\)"):
        make_clients(images(5), labels(4), 2)
    with pytest.raises(FedValueError, match=r"`batch_size` must be a positive integer; got -1"):
        make_clients(images(5), labels(5), 2, batch_size=-1)


def test_make_federated_data_from_dataset():
    ds = tiny_dataset()

    train = make_federated_data(ds, n_clients=4, batch_size=2)
    test = make_federated_data(ds, n_clients=5, batch_size=2, split="test")

    assert [c.num_examples for c in train] == [5, 5, 5, 5]
    assert train[0].offsets.tolist() == [0, 2, 4, 5]
    assert [c.num_examples for c in test] == [2] * 5
    assert_array_equal(test[0].features(), prepare_images(ds.x_test[:2]))
    with pytest.raises(FedValueError, match=r"`split` must be one of 'train', 'test'; got 'valid'"):
        make_federated_data(ds, split="valid")
    with pytest.raises(FedTypeError, match=r"`dataset` must be a Dataset; got tuple"):
        make_federated_data((ds.x_train, ds.y_train))


def test_to_batches_gives_the_reference_nested_structure():
    clients = make_clients(images(400), labels(400), n_clients=2, batch_size=100)

    nested = to_batches(clients)

    assert [len(c) for c in nested] == [2, 2]
    batch = nested[1][0]
    assert isinstance(batch, OrderedDict) and list(batch) == ["x", "y"]
    assert batch["x"].shape == (100, 784) and batch["x"].dtype == np.float32
    assert batch["x"].min() >= 0.0 and batch["x"].max() <= 1.0
    assert batch["y"][:3].tolist() == [0, 1, 2]


def test_label_distribution_counts_per_client():
    clients = as_client_data([(np.zeros((2, 1)), [0, 0]), (np.zeros((3, 1)), [1, 2, 1])])

    assert label_distribution(clients).tolist() == [[2, 0, 0], [0, 2, 1]]
    assert label_distribution(clients, num_classes=4).tolist() == [[2, 0, 0, 0], [0, 2, 1, 0]]
    assert label_distribution(clients).dtype == np.int64
    with pytest.raises(
        FedValueError, match=r"`num_classes` must exceed the largest label \(2\); got 2"
    ):
        label_distribution(clients, num_classes=2)
    with pytest.raises(FedValueError, match=r"client 'client_0': y holds 2-D targets, not labels"):
        label_distribution([(np.zeros((2, 1)), np.zeros((2, 1)))])


# --------------------------------------------------------------------------- labels


def test_as_labels_returns_int32_and_names_the_argument():
    labels = as_labels(np.array([0.0, 9.0, 3.0]), 3, what="`labels`")
    assert labels.dtype == np.int32
    assert_array_equal(labels, [0, 9, 3])
    assert as_labels([1, 2]).tolist() == [1, 2]


@pytest.mark.parametrize(
    ("y", "n", "error", "message"),
    [
        ([0.0, 0.5], None, FedValueError, "`labels` must hold whole-number labels; got non-integer floats"),
        ([0, -1], None, FedValueError, "`labels` must hold non-negative labels; got -1"),
        (["a", "b"], None, FedTypeError, "`labels` must be integer labels; got dtype <U1"),
        ([[0, 1], [1, 0]], None, FedValueError, "`labels` must be 1-D labels; got shape (2, 2)"),
        ([0, 1, 1], 2, FedValueError, "`labels` must have one label per example (2); got 3"),
        ([2**40], None, FedValueError, "`labels` has labels beyond int32; got 1099511627776"),
    ],
)
def test_as_labels_rejects_what_client_data_rejects(y, n, error, message):
    with pytest.raises(error, match=f"^{re.escape(message)}$"):
        as_labels(y, n, what="`labels`")


# --------------------------------------------------------------------------- .rds files


def _rscript(code: str) -> None:
    """Run plain R in a subprocess (R that only writes data: no reticulate)."""
    import shutil
    import subprocess

    rscript = shutil.which("Rscript")
    if rscript is None:
        pytest.skip("Rscript is needed to write .rds files")
    subprocess.run([rscript, "--vanilla", "-e", code], check=True, capture_output=True, text=True)


def test_read_rds_reads_a_data_frame_and_a_list_of_clients(tmp_path):
    pytest.importorskip("rpy2.robjects", reason="rpy2 (and R) are needed to read .rds files")
    one, many = tmp_path / "ward_a.rds", tmp_path / "clients.rds"
    _rscript(
        f"saveRDS(data.frame(age = c(31, 45.5, 60), dose = 1:3,"
        f" label = factor(c('sick', 'well', 'sick'), levels = c('well', 'sick'))), '{one}');"
        f" saveRDS(list(north = data.frame(t = c(0.25, 0.5), label = c(1L, 0L)),"
        f" south = list(x = matrix(c(1, 2, 3, 4, 5, 6), nrow = 3), y = c(2, 0, 1))), '{many}')"
    )

    ward = read_rds(one, batch_size=2)
    clients = read_rds(many, batch_size=2)

    assert isinstance(ward, ClientData)
    assert ward.client_id == "ward_a"
    assert ward.x.dtype == np.float32
    assert_array_equal(ward.x, np.array([[31, 1], [45.5, 2], [60, 3]], np.float32))
    assert ward.y.dtype == np.int32
    assert_array_equal(ward.y, [1, 0, 1])  # level 1 ("well") is class 0
    assert_array_equal(ward.offsets, [0, 2, 3])
    assert [c.client_id for c in clients] == ["north", "south"]
    assert_array_equal(clients[0].x, np.array([[0.25], [0.5]], np.float32))
    assert_array_equal(clients[0].y, [1, 0])
    assert_array_equal(clients[1].x, np.array([[1, 4], [2, 5], [3, 6]], np.float32))
    assert_array_equal(clients[1].y, [2, 0, 1])
    assert_array_equal(clients[1].offsets, [0, 2, 3])


def test_read_rds_applies_the_label_rule(tmp_path):
    pytest.importorskip("rpy2.robjects", reason="rpy2 (and R) are needed to read .rds files")
    path = tmp_path / "bad.rds"
    _rscript(f"saveRDS(data.frame(a = c(1, 2), label = c(0, -1)), '{path}')")
    message = "client 'bad': column 'label' must hold non-negative labels; got -1.0"
    with pytest.raises(FedValueError, match=f"^{re.escape(message)}$"):
        read_rds(path)


def test_read_rds_without_rpy2_says_what_to_install(tmp_path, monkeypatch):
    path = tmp_path / "any.rds"
    path.write_bytes(b"")
    monkeypatch.setitem(sys.modules, "rpy2", None)
    monkeypatch.setitem(sys.modules, "rpy2.robjects", None)
    with pytest.raises(ImportError, match=r"needs rpy2 and R: pip install 'rpy2==3\.5\.17'"):
        read_rds(path)
