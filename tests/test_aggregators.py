"""Tests of fedr.aggregators: weighted mean, accumulator, flattening, numpy fallback."""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import fedr
from fedr import aggregators
from fedr.aggregators import (
    Backend,
    WeightedMeanAccumulator,
    flatten_weights,
    unflatten_weights,
    weighted_mean,
    weighted_mean_numpy,
)
from fedr.errors import FedTypeError, FedValueError

BACKENDS: list[Backend] = ["kernel", "numpy"]


def reference(matrix: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean computed entirely in float64."""
    w = np.asarray(weights, dtype=np.float64)
    return (w @ matrix.astype(np.float64)) / w.sum()


def random_case(k: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((k, n), dtype=np.float32)
    counts = rng.integers(1, 1000, size=k)
    return matrix, counts


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# --- literal values -------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_1_and_3_over_updates_1_and_2_give_1_75(backend: Backend) -> None:
    # Prepare
    updates = [np.array([1.0, 1.0], np.float32), np.array([2.0, 2.0], np.float32)]
    # Execute
    got = weighted_mean(updates, [1, 3], backend=backend)
    # Assert
    assert_array_equal(got, np.array([1.75, 1.75], np.float32))
    assert got.dtype == np.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_example_counts_weight_the_mean(backend: Backend) -> None:
    matrix = np.array([[0.0, 10.0], [6.0, -2.0], [3.0, 4.0]], np.float32)
    got = weighted_mean(matrix, np.array([1, 2, 3]), backend=backend)
    assert_array_equal(got, np.array([3.5, 3.0], np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulator_of_two_updates_is_1_75(backend: Backend) -> None:
    acc = WeightedMeanAccumulator(2, backend=backend)
    acc.add(np.array([1.0, 1.0], np.float32), 1)
    acc.add(np.array([2.0, 2.0], np.float32), 3)
    assert_array_equal(acc.result(), np.array([1.75, 1.75], np.float32))
    assert (acc.count, acc.total_weight, acc.n, acc.backend) == (2, 4.0, 2, backend)


# --- kernel, numpy fallback and float64 reference agree ------------------------


@pytest.mark.parametrize(("k", "n"), [(1, 1), (1, 7), (2, 1031), (7, 1031), (33, 4097)])
def test_kernel_and_numpy_match_float64_reference(k: int, n: int) -> None:
    matrix, counts = random_case(k, n)
    expected = reference(matrix, counts)
    kernel_matrix = weighted_mean(matrix, counts, backend="kernel")
    kernel_list = weighted_mean(list(matrix), list(counts), backend="kernel")
    fallback = weighted_mean_numpy([row.copy() for row in matrix], counts)
    assert_allclose(kernel_matrix, expected, rtol=1e-6, atol=0)
    assert_array_equal(kernel_list, kernel_matrix)
    assert_allclose(fallback, expected, rtol=1e-6, atol=0)
    assert_allclose(fallback, kernel_matrix, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulator_equals_weighted_mean(backend: Backend) -> None:
    matrix, counts = random_case(9, 1031, seed=1)
    acc = WeightedMeanAccumulator(1031, backend=backend)
    for row, count in zip(matrix, counts, strict=True):
        acc.add(row, count)
    assert_allclose(acc.result(), weighted_mean(matrix, counts), rtol=1e-6, atol=0)
    assert acc.count == 9
    assert acc.total_weight == float(counts.sum())


@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulator_reset_starts_over(backend: Backend) -> None:
    acc = WeightedMeanAccumulator(2, backend=backend)
    acc.add(np.array([100.0, 100.0], np.float32), 9)
    acc.reset()
    acc.add(np.array([1.0, 3.0], np.float32), 2)
    assert_array_equal(acc.result(), np.array([1.0, 3.0], np.float32))
    assert (acc.count, acc.total_weight) == (1, 2.0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulator_memory_is_independent_of_the_number_of_updates(backend: Backend) -> None:
    # Prepare: 300 fresh 1 MB updates would add 300 MB if any were kept.
    n = 250_000
    acc = WeightedMeanAccumulator(n, backend=backend)
    acc.add(np.zeros(n, np.float32), 1.0)
    before = rss_bytes()
    # Execute
    for i in range(300):
        acc.add(np.full(n, i, np.float32), 1.0)
    # Assert
    assert rss_bytes() - before < 30_000_000
    assert acc.nbytes == 8 * n
    assert acc.count == 301
    assert_allclose(acc.result()[:3], [44850 / 301] * 3, rtol=1e-6)


def test_accumulator_does_not_keep_a_reference_to_updates() -> None:
    acc = WeightedMeanAccumulator(3)
    update = np.ones(3, np.float32)
    refs = sys.getrefcount(update)
    acc.add(update, 1.0)
    assert sys.getrefcount(update) == refs


def test_repr_shows_the_state() -> None:
    acc = WeightedMeanAccumulator(3, backend="numpy")
    acc.add(np.ones(3, np.float32), 2)
    assert repr(acc) == "WeightedMeanAccumulator(n=3, count=1, total_weight=2.0, backend='numpy')"


def test_have_kernel_says_whether_the_extension_imports() -> None:
    assert aggregators.HAVE_KERNEL is (importlib.util.find_spec("fedr._kernels") is not None)


@pytest.fixture
def without_kernel(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """Load a fresh copy of fedr.aggregators as if fedr._kernels were not built."""
    monkeypatch.setitem(sys.modules, "fedr._kernels", None)
    monkeypatch.delattr(fedr, "_kernels", raising=False)
    spec = importlib.util.spec_from_file_location("fedr_aggregators_nokernel", aggregators._weighted_mean.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_without_kernel_everything_falls_back_to_numpy(without_kernel: ModuleType) -> None:
    matrix, counts = random_case(4, 100, seed=2)
    got = without_kernel.weighted_mean(matrix, counts)
    acc = without_kernel.WeightedMeanAccumulator(100)
    for row, count in zip(matrix, counts, strict=True):
        acc.add(row, count)
    assert without_kernel.HAVE_KERNEL is False
    assert acc.backend == "numpy"
    assert_allclose(got, reference(matrix, counts), rtol=1e-6, atol=0)
    assert_allclose(acc.result(), got, rtol=1e-6, atol=0)
    with pytest.raises(ImportError, match=r"fedr\._kernels is not built"):
        without_kernel.weighted_mean(matrix, counts, backend="kernel")


# --- flatten / unflatten --------------------------------------------------------


def test_flatten_then_unflatten_round_trips() -> None:
    arrays: list[np.ndarray] = [
        np.arange(6, dtype=np.float64).reshape(2, 3),
        np.array([7], np.int32),
        np.zeros((0, 4)),
    ]
    vec = flatten_weights(arrays)
    back = unflatten_weights(vec, [a.shape for a in arrays])
    assert_array_equal(vec, np.array([0, 1, 2, 3, 4, 5, 7], np.float32))
    assert vec.dtype == np.float32 and vec.flags.c_contiguous
    assert [b.shape for b in back] == [(2, 3), (1,), (0, 4)]
    assert_array_equal(back[0], [[0, 1, 2], [3, 4, 5]])
    assert back[0].base is vec


def test_flatten_reads_fortran_order_arrays_in_c_order() -> None:
    vec = flatten_weights([np.asfortranarray(np.array([[1, 2], [3, 4]], np.float32))])
    assert_array_equal(vec, np.array([1, 2, 3, 4], np.float32))


def test_flattened_updates_feed_the_mean() -> None:
    client_a = [np.ones((2, 2), np.float32), np.ones(3, np.float32)]
    client_b = [np.full((2, 2), 2, np.float32), np.full(3, 2, np.float32)]
    mean = weighted_mean([flatten_weights(client_a), flatten_weights(client_b)], [1, 3])
    layers = unflatten_weights(mean, [(2, 2), (3,)])
    assert_array_equal(layers[0], np.full((2, 2), 1.75, np.float32))
    assert_array_equal(layers[1], np.full(3, 1.75, np.float32))


def test_flatten_rejects_bad_input() -> None:
    with pytest.raises(FedTypeError, match="arrays: expected a list of numpy arrays, got ndarray"):
        flatten_weights(np.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(FedValueError, match=r"arrays\[1\]: expected real numbers, got dtype <U1"):
        flatten_weights([np.zeros(2), np.array(["a"])])


def test_unflatten_rejects_sizes_that_do_not_add_up() -> None:
    with pytest.raises(
        FedValueError, match=r"shapes hold 6 elements but vec has 7 \(shape \(7,\)\)"
    ):
        unflatten_weights(np.zeros(7, np.float32), [(2, 3)])


def test_unflatten_rejects_bad_input() -> None:
    with pytest.raises(FedValueError, match=r"vec: expected a 1-D array, got shape \(2, 2\)"):
        unflatten_weights(np.zeros((2, 2), np.float32), [(4,)])
    with pytest.raises(
        FedValueError, match=r"shapes\[0\]: expected non-negative sizes, got \(-1,\)"
    ):
        unflatten_weights(np.zeros(1, np.float32), [(-1,)])
    with pytest.raises(FedValueError, match=r"shapes\[0\]: expected a tuple of ints, got 'ab'"):
        unflatten_weights(np.zeros(1, np.float32), ["ab"])  # type: ignore[list-item]
    with pytest.raises(FedTypeError, match=r"vec: expected a numpy\.ndarray, got list"):
        unflatten_weights([1.0], [(1,)])  # type: ignore[arg-type]


# --- bad inputs -----------------------------------------------------------------

BAD_MEAN_INPUTS = [
    (np.zeros((2, 3)), [1, 1], r"updates: expected dtype float32, got float64 with shape \(2, 3\)"),
    (
        [np.zeros(3, np.float32), np.zeros(3)],
        [1, 1],
        r"updates\[1\]: expected dtype float32, got float64",
    ),
    (
        np.zeros((2, 6), np.float32)[:, ::2],
        [1, 1],
        r"updates: expected a C-contiguous array, got a strided view with shape \(2, 3\)",
    ),
    (
        np.zeros(3, np.float32),
        [1, 1, 1],
        r"updates: expected a 2-D \(K, N\) array .* got shape \(3,\)",
    ),
    (np.zeros((2, 3), np.float32), [1, 1, 1], "weights has 3 entries but updates has K=2"),
    (
        np.zeros((2, 3), np.float32),
        [1, -0.5],
        r"weights\[1\] is -0.5; weights must be non-negative",
    ),
    (
        np.zeros((2, 3), np.float32),
        [1, float("nan")],
        r"weights\[1\] is nan; weights must be finite",
    ),
    (
        np.zeros((2, 3), np.float32),
        [float("inf"), 1],
        r"weights\[0\] is inf; weights must be finite",
    ),
    (
        np.zeros((2, 3), np.float32),
        [0, 0],
        "weights sum to 0.0; the total weight must be positive and finite",
    ),
    (
        np.zeros((0, 3), np.float32),
        [],
        r"updates: expected at least one update, got shape \(0, 3\)",
    ),
    ([], [], r"updates: expected at least one update, got an empty list \(K=0\)"),
    (
        [np.zeros(2, np.float32), np.zeros(3, np.float32)],
        [1, 1],
        r"updates are ragged: updates\[0\] has shape \(2,\) but updates\[1\] has shape \(3,\)",
    ),
    (
        [np.zeros((2, 2), np.float32)],
        [1],
        r"updates\[0\]: expected a 1-D array, got shape \(2, 2\)",
    ),
    (np.zeros((2, 3), np.float32), ["a", "b"], "weights: expected numbers, got dtype <U1"),
    (
        np.zeros((2, 3), np.float32),
        [[1, 1]],
        r"weights: expected a 1-D sequence of K=2 numbers, got shape \(1, 2\)",
    ),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("updates", "weights", "message"), BAD_MEAN_INPUTS)
def test_weighted_mean_rejects_bad_input(
    updates: object, weights: object, message: str, backend: Backend
) -> None:
    with pytest.raises(FedValueError, match=message):
        weighted_mean(updates, weights, backend=backend)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", BACKENDS)
def test_weighted_mean_rejects_non_arrays(backend: Backend) -> None:
    with pytest.raises(
        FedTypeError,
        match="updates: expected a 2-D float32 array or a list of 1-D float32 arrays, got str",
    ):
        weighted_mean("abc", [1], backend=backend)  # type: ignore[arg-type]
    with pytest.raises(
        FedTypeError, match=r"updates\[0\]: expected a numpy.ndarray of float32, got list"
    ):
        weighted_mean([[1.0, 2.0]], [1], backend=backend)  # type: ignore[list-item,arg-type]


def test_unknown_backend_is_rejected() -> None:
    with pytest.raises(
        FedValueError, match="backend: expected 'auto', 'kernel' or 'numpy', got 'gpu'"
    ):
        weighted_mean(np.zeros((1, 1), np.float32), [1], backend="gpu")  # type: ignore[arg-type]


BAD_ADD_INPUTS = [
    (np.zeros(5, np.float32), 1.0, r"update: expected shape \(4,\), got shape \(5,\)"),
    (np.zeros((2, 3), np.float32), 1.0, r"update: expected shape \(4,\), got shape \(2, 3\)"),
    (np.zeros(4), 1.0, r"update: expected dtype float32, got float64 with shape \(4,\)"),
    (
        np.zeros(8, np.float32)[::2],
        1.0,
        r"update: expected a C-contiguous array, got a strided view",
    ),
    (np.zeros(4, np.float32), -1.0, "weight is -1.0; weights must be non-negative"),
    (np.zeros(4, np.float32), float("nan"), "weight is nan; weights must be finite"),
    (np.zeros(4, np.float32), float("inf"), "weight is inf; weights must be finite"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("update", "weight", "message"), BAD_ADD_INPUTS)
def test_accumulator_rejects_bad_input(
    update: np.ndarray, weight: float, message: str, backend: Backend
) -> None:
    acc = WeightedMeanAccumulator(4, backend=backend)
    with pytest.raises(FedValueError, match=message):
        acc.add(update, weight)
    assert acc.count == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulator_rejects_overflowing_total(backend: Backend) -> None:
    acc = WeightedMeanAccumulator(1, backend=backend)
    acc.add(np.ones(1, np.float32), 1e308)
    with pytest.raises(FedValueError, match=r"weight 1e\+308: the total weight would overflow"):
        acc.add(np.ones(1, np.float32), 1e308)
    assert acc.count == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_accumulator_without_positive_weight_has_no_result(backend: Backend) -> None:
    acc = WeightedMeanAccumulator(2, backend=backend)
    acc.add(np.ones(2, np.float32), 0)
    with pytest.raises(FedValueError, match=r"total weight is 0.0 after 1 update\(s\)"):
        acc.result()


def test_accumulator_rejects_bad_length_and_weight_types() -> None:
    with pytest.raises(FedValueError, match="n: expected a non-negative int, got -1"):
        WeightedMeanAccumulator(-1)
    with pytest.raises(FedTypeError, match="n: expected an int, got float"):
        WeightedMeanAccumulator(2.0)  # type: ignore[arg-type]
    with pytest.raises(FedTypeError, match="weight: expected a number, got str"):
        WeightedMeanAccumulator(1).add(np.ones(1, np.float32), "1")  # type: ignore[arg-type]


def test_errors_are_value_errors_for_callers_that_catch_builtins() -> None:
    with pytest.raises(ValueError, match=r"weights sum to 0\.0"):
        weighted_mean(np.zeros((1, 1), np.float32), [0])
