"""Tests of the C++ kernel fedr._kernels against literal values and a float64 reference."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from fedr import _kernels


def reference(matrix: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean computed entirely in float64."""
    w = np.asarray(weights, dtype=np.float64)
    return (w @ matrix.astype(np.float64)) / w.sum()


def random_case(k: int, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    matrix = rng.standard_normal((k, n), dtype=np.float32)
    weights = rng.integers(1, 1000, size=k).astype(np.float64)
    return matrix, weights


# --- literal values -------------------------------------------------------------


def test_weighted_mean_of_two_updates_is_1_75() -> None:
    # Prepare
    updates = [np.array([1.0, 1.0], np.float32), np.array([2.0, 2.0], np.float32)]
    # Execute
    got = _kernels.weighted_mean(updates, [1, 3])
    # Assert
    assert_array_equal(got, np.array([1.75, 1.75], np.float32))
    assert got.dtype == np.float32


def test_weighted_mean_of_matrix_rows() -> None:
    matrix = np.array([[0.0, 10.0, -4.0], [4.0, 20.0, 4.0]], np.float32)
    got = _kernels.weighted_mean(matrix, np.array([3.0, 1.0], np.float32))
    assert_array_equal(got, np.array([1.0, 12.5, -2.0], np.float32))


def test_zero_weight_ignores_that_update() -> None:
    updates = [np.array([5.0], np.float32), np.array([1e30], np.float32)]
    got = _kernels.weighted_mean(updates, [2, 0])
    assert_array_equal(got, np.array([5.0], np.float32))


def test_single_update_is_returned_unchanged() -> None:
    update = np.array([0.1, -2.5, 3e-7], np.float32)
    got = _kernels.weighted_mean(update[None, :], [7])
    assert_array_equal(got, update)


def test_empty_updates_of_length_zero_give_empty_result() -> None:
    got = _kernels.weighted_mean(np.zeros((3, 0), np.float32), [1, 1, 1])
    assert got.shape == (0,)


# --- against the float64 reference ----------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 9])
@pytest.mark.parametrize("n", [1, 7, 1031, 2048, 2049, 70_001])
def test_matrix_matches_float64_reference(k: int, n: int) -> None:
    matrix, weights = random_case(k, n)
    got = _kernels.weighted_mean(matrix, weights)
    assert got.shape == (n,)
    assert_allclose(got, reference(matrix, weights), rtol=1e-6, atol=0)


@pytest.mark.parametrize(("k", "n"), [(1, 1), (3, 7), (6, 1031), (13, 4099)])
def test_list_of_arrays_matches_float64_reference(k: int, n: int) -> None:
    matrix, weights = random_case(k, n, seed=1)
    # Separate allocations, so the rows are not one strided buffer.
    updates = [row.copy() for row in matrix]
    got = _kernels.weighted_mean(updates, list(weights))
    assert_allclose(got, reference(matrix, weights), rtol=1e-6, atol=0)


def test_tuple_of_arrays_and_float32_weights_are_accepted() -> None:
    matrix, weights = random_case(4, 33, seed=2)
    got = _kernels.weighted_mean(tuple(matrix), weights.astype(np.float32))
    assert_allclose(got, reference(matrix, weights), rtol=1e-6, atol=0)


@pytest.mark.parametrize("num_threads", [1, 2, 3, 8])
def test_threaded_split_matches_reference(num_threads: int) -> None:
    # 5000 columns cut into chunks at multiples of 64 with a ragged tail.
    matrix, weights = random_case(6, 5000, seed=3)
    got = _kernels.weighted_mean(matrix, weights, num_threads=num_threads)
    assert_allclose(got, reference(matrix, weights), rtol=1e-6, atol=0)


def test_large_input_takes_the_parallel_path_and_matches() -> None:
    k = 8
    n = 2 * _kernels.PARALLEL_MIN_ELEMENTS // k + 123
    matrix, weights = random_case(k, n, seed=4)
    got = _kernels.weighted_mean(matrix, weights)
    assert_allclose(got, reference(matrix, weights), rtol=1e-6, atol=0)


def test_inputs_are_not_modified_or_retained() -> None:
    matrix, weights = random_case(3, 100, seed=5)
    before = matrix.copy()
    refs = sys.getrefcount(matrix)
    _kernels.weighted_mean(matrix, weights)
    assert_array_equal(matrix, before)
    assert sys.getrefcount(matrix) == refs


# --- streaming accumulator ------------------------------------------------------


def test_accumulator_of_two_updates_is_1_75() -> None:
    acc = _kernels.WeightedMeanAccumulator(2)
    acc.add(np.array([1.0, 1.0], np.float32), 1.0)
    acc.add(np.array([2.0, 2.0], np.float32), 3.0)
    assert_array_equal(acc.result(), np.array([1.75, 1.75], np.float32))
    assert acc.count == 2
    assert acc.total_weight == 4.0
    assert acc.n == 2


@pytest.mark.parametrize(("k", "n"), [(1, 1), (5, 1031), (12, 3 * _kernels.BLOCK + 5)])
def test_accumulator_equals_weighted_mean(k: int, n: int) -> None:
    matrix, weights = random_case(k, n, seed=6)
    acc = _kernels.WeightedMeanAccumulator(n)
    for row, w in zip(matrix, weights, strict=True):
        acc.add(row, float(w))
    assert_allclose(acc.result(), _kernels.weighted_mean(matrix, weights), rtol=1e-6, atol=0)
    assert_allclose(acc.result(), reference(matrix, weights), rtol=1e-6, atol=0)


def test_threaded_accumulator_matches_reference() -> None:
    matrix, weights = random_case(3, 10_000, seed=7)
    acc = _kernels.WeightedMeanAccumulator(10_000, num_threads=2)
    for row, w in zip(matrix, weights, strict=True):
        acc.add(row, float(w))
    assert_allclose(acc.result(), reference(matrix, weights), rtol=1e-6, atol=0)


def test_accumulator_reset_forgets_updates() -> None:
    acc = _kernels.WeightedMeanAccumulator(3)
    acc.add(np.array([9.0, 9.0, 9.0], np.float32), 5.0)
    acc.reset()
    acc.add(np.array([1.0, 2.0, 3.0], np.float32), 2.0)
    assert_array_equal(acc.result(), np.array([1.0, 2.0, 3.0], np.float32))
    assert acc.count == 1
    assert acc.total_weight == 2.0


def test_accumulator_memory_does_not_grow_with_updates() -> None:
    n = 10_000
    acc = _kernels.WeightedMeanAccumulator(n)
    rng = np.random.default_rng(8)
    update = rng.standard_normal(n, dtype=np.float32)
    refs = sys.getrefcount(update)
    for _ in range(1000):
        acc.add(update, 1.0)
    assert acc.nbytes == 8 * n
    assert sys.getrefcount(update) == refs
    assert acc.count == 1000


def test_accumulator_repr_names_its_state() -> None:
    acc = _kernels.WeightedMeanAccumulator(4)
    acc.add(np.zeros(4, np.float32), 2.5)
    assert repr(acc) == "WeightedMeanAccumulator(n=4, count=1, total_weight=2.5)"


# --- bad inputs -----------------------------------------------------------------


def test_float64_updates_are_rejected_not_cast() -> None:
    with pytest.raises(
        ValueError, match=r"updates has dtype float64 and shape \(2, 3\); expected float32"
    ):
        _kernels.weighted_mean(np.zeros((2, 3)), [1, 1])


def test_float64_row_in_list_is_rejected() -> None:
    updates = [np.zeros(3, np.float32), np.zeros(3)]
    with pytest.raises(ValueError, match=r"updates\[1\] has dtype float64"):
        _kernels.weighted_mean(updates, [1, 1])


def test_non_contiguous_updates_are_rejected() -> None:
    matrix = np.zeros((3, 8), np.float32)[:, ::2]
    with pytest.raises(ValueError, match=r"updates with shape \(3, 4\) is not C-contiguous"):
        _kernels.weighted_mean(matrix, [1, 1, 1])


def test_fortran_ordered_updates_are_rejected() -> None:
    matrix = np.asfortranarray(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="not C-contiguous"):
        _kernels.weighted_mean(matrix, [1, 1, 1])


def test_one_dimensional_matrix_is_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"updates must be a 2-D \(K, N\) array .* got shape \(3,\)"
    ):
        _kernels.weighted_mean(np.zeros(3, np.float32), [1, 1, 1])


def test_weights_length_must_equal_k() -> None:
    with pytest.raises(ValueError, match="weights has 3 entries but updates has K=2"):
        _kernels.weighted_mean(np.zeros((2, 5), np.float32), [1, 2, 3])


def test_negative_weight_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"weights\[1\] is -1; weights must be non-negative"):
        _kernels.weighted_mean(np.zeros((2, 5), np.float32), [1, -1])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weight_is_rejected(bad: float) -> None:
    with pytest.raises(ValueError, match=r"weights\[0\] is -?(nan|inf); weights must be finite"):
        _kernels.weighted_mean(np.zeros((2, 5), np.float32), [bad, 1.0])


def test_zero_total_weight_is_rejected() -> None:
    with pytest.raises(ValueError, match="weights sum to 0; the total weight must be positive"):
        _kernels.weighted_mean(np.zeros((2, 5), np.float32), [0, 0])


def test_overflowing_total_weight_is_rejected() -> None:
    with pytest.raises(ValueError, match="weights sum to inf"):
        _kernels.weighted_mean(np.zeros((2, 5), np.float32), [1e308, 1e308])


def test_non_numeric_weights_are_rejected() -> None:
    with pytest.raises(ValueError, match="weights must be numbers, got dtype <U"):
        _kernels.weighted_mean(np.zeros((2, 5), np.float32), ["1", "2"])


def test_two_dimensional_weights_are_rejected() -> None:
    with pytest.raises(
        ValueError, match=r"weights must be 1-D with K=2 entries, got shape \(2, 1\)"
    ):
        _kernels.weighted_mean(np.zeros((2, 5), np.float32), [[1], [2]])


def test_empty_matrix_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"updates is empty \(shape \(0, 5\)\)"):
        _kernels.weighted_mean(np.zeros((0, 5), np.float32), [])


def test_empty_list_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"updates is empty \(K=0\)"):
        _kernels.weighted_mean([], [])


def test_ragged_list_is_rejected() -> None:
    updates = [np.zeros(4, np.float32), np.zeros(5, np.float32)]
    with pytest.raises(
        ValueError,
        match=r"updates are ragged: updates\[0\] has shape \(4,\) "
        r"but updates\[1\] has shape \(5,\)",
    ):
        _kernels.weighted_mean(updates, [1, 1])


def test_two_dimensional_row_in_list_is_rejected() -> None:
    updates = [np.zeros((2, 2), np.float32)]
    with pytest.raises(ValueError, match=r"updates\[0\] must be 1-D, got shape \(2, 2\)"):
        _kernels.weighted_mean(updates, [1])


def test_non_array_updates_raise_type_error() -> None:
    with pytest.raises(TypeError, match="updates must be a 2-D float32 numpy array or a list"):
        _kernels.weighted_mean("abc", [1])
    with pytest.raises(
        TypeError, match=r"updates\[0\] must be a numpy.ndarray of float32, got list"
    ):
        _kernels.weighted_mean([[1.0, 2.0]], [1])


def test_negative_thread_count_is_rejected() -> None:
    with pytest.raises(ValueError, match="num_threads must be >= 0, got -1"):
        _kernels.weighted_mean(np.zeros((1, 2), np.float32), [1], num_threads=-1)


def test_accumulator_rejects_update_of_wrong_length() -> None:
    acc = _kernels.WeightedMeanAccumulator(4)
    with pytest.raises(ValueError, match=r"update must have shape \(4,\), got shape \(5,\)"):
        acc.add(np.zeros(5, np.float32), 1.0)


def test_accumulator_rejects_two_dimensional_update() -> None:
    acc = _kernels.WeightedMeanAccumulator(4)
    with pytest.raises(ValueError, match=r"update must have shape \(4,\), got shape \(2, 3\)"):
        acc.add(np.zeros((2, 3), np.float32), 1.0)


def test_accumulator_rejects_float64_and_strided_updates() -> None:
    acc = _kernels.WeightedMeanAccumulator(4)
    with pytest.raises(ValueError, match="update has dtype float64"):
        acc.add(np.zeros(4), 1.0)
    with pytest.raises(ValueError, match=r"update with shape .* is not C-contiguous"):
        acc.add(np.zeros(8, np.float32)[::2], 1.0)


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        (-2.0, "weight is -2; weights must be non-negative"),
        (float("nan"), "weight is nan; weights must be finite"),
        (float("inf"), "weight is inf; weights must be finite"),
    ],
)
def test_accumulator_rejects_bad_weight(weight: float, message: str) -> None:
    acc = _kernels.WeightedMeanAccumulator(2)
    with pytest.raises(ValueError, match=message):
        acc.add(np.ones(2, np.float32), weight)
    assert acc.count == 0


def test_accumulator_without_positive_weight_has_no_result() -> None:
    acc = _kernels.WeightedMeanAccumulator(2)
    acc.add(np.ones(2, np.float32), 0.0)
    with pytest.raises(ValueError, match=r"total weight is 0 after 1 update\(s\)"):
        acc.result()


def test_accumulator_rejects_negative_length() -> None:
    with pytest.raises(ValueError, match="n must be >= 0, got -3"):
        _kernels.WeightedMeanAccumulator(-3)


def test_accumulator_rejects_overflowing_total_and_keeps_its_state() -> None:
    acc = _kernels.WeightedMeanAccumulator(1)
    acc.add(np.ones(1, np.float32), 1e308)
    with pytest.raises(ValueError, match="total weight would overflow to inf"):
        acc.add(np.ones(1, np.float32), 1e308)
    assert (acc.count, acc.total_weight) == (1, 1e308)
