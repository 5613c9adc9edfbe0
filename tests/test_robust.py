"""Tests of the robust aggregators: median, trimmed mean, Krum (kernel vs numpy, errors, an attack)."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from fedr import _kernels, aggregators
from fedr.aggregators import (
    Aggregator,
    Backend,
    coordinate_median,
    coordinate_trimmed_mean,
    krum,
    krum_numpy,
    krum_scores,
    median,
    median_numpy,
    pairwise_sq_distances,
    pairwise_sq_distances_numpy,
    trimmed_mean,
    trimmed_mean_numpy,
)
from fedr.aggregators import _robust_math as _robust  # the kernels and their numpy references
from fedr.errors import FedTypeError, FedValueError

BACKENDS: list[Backend] = ["kernel", "numpy"]
SHAPES = [(1, 1), (1, 9), (2, 7), (3, 1000), (4, 33), (10, 1001), (11, 4097), (100, 3000), (101, 700)]


def outputs_of(rows: Any, counts: Any = None) -> list[SimpleNamespace]:
    counts = counts if counts is not None else [1] * len(rows)
    return [
        SimpleNamespace(client_id=f"client_{i}", delta=np.ascontiguousarray(row, np.float32), num_examples=c)
        for i, (row, c) in enumerate(zip(rows, counts, strict=True))
    ]


def sorted_trimmed_mean(matrix: np.ndarray, trim: int) -> np.ndarray:
    """An independent trimmed mean: sort each column in float64, drop trim per side."""
    k = matrix.shape[0]
    return np.sort(matrix.astype(np.float64), axis=0)[trim : k - trim].mean(axis=0)


# --- literal values --------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_median_of_three_and_of_two(backend: Backend) -> None:
    # Prepare
    odd = np.array([[1.0, 5.0], [3.0, 2.0], [2.0, 9.0]], np.float32)
    even = np.array([[1.0, -1.0], [4.0, 2.0]], np.float32)
    # Execute, Assert
    assert_array_equal(coordinate_median(odd, backend=backend), np.array([2.0, 5.0], np.float32))
    assert_array_equal(coordinate_median(even, backend=backend), np.array([2.5, 0.5], np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_trimmed_mean_cuts_floor_beta_k_per_side(backend: Backend) -> None:
    matrix = np.array([[1.0], [2.0], [3.0], [100.0], [-50.0]], np.float32)
    # floor(0.25 * 5) = 1 per side: mean of 1, 2, 3.
    assert_array_equal(coordinate_trimmed_mean(matrix, 0.25, backend=backend), np.array([2.0], np.float32))
    # floor(0.4 * 5) = 2 per side: the median.
    assert_array_equal(coordinate_trimmed_mean(matrix, 0.4, backend=backend), np.array([2.0], np.float32))
    # beta = 0 is the plain mean: 56 / 5.
    assert_allclose(coordinate_trimmed_mean(matrix, 0.0, backend=backend), [11.2], rtol=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_distances_of_a_small_case(backend: Backend) -> None:
    x = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]], np.float32)
    got = pairwise_sq_distances(x, backend=backend)
    assert got.dtype == np.float64
    assert_array_equal(got, [[0.0, 25.0, 2.0], [25.0, 0.0, 13.0], [2.0, 13.0, 0.0]])


# Krum by hand: x0=(0,0) x1=(1,0) x2=(0,2) x3=(3,3) x4=(10,10); n=5, f=1, so each
# score sums the n - f - 2 = 2 smallest squared distances to the others:
# d01=1 d02=4 d03=18 d04=200 d12=5 d13=13 d14=181 d23=10 d24=164 d34=98.
KRUM_X = np.array([[0, 0], [1, 0], [0, 2], [3, 3], [10, 10]], np.float32)
KRUM_SCORES = [1 + 4, 1 + 5, 4 + 5, 10 + 13, 98 + 164]


@pytest.mark.parametrize("backend", BACKENDS)
def test_krum_scores_and_selection_by_hand(backend: Backend) -> None:
    # Execute
    scores = krum_scores(pairwise_sq_distances(KRUM_X, backend=backend), 1)
    one = krum(1).aggregate((), outputs_of(KRUM_X))
    two = krum(1, num_selected=2).aggregate((), outputs_of(KRUM_X, [1, 3, 1, 1, 1]))
    # Assert
    assert_array_equal(scores, KRUM_SCORES)
    assert_array_equal(one.update, [0.0, 0.0])
    assert one.metrics == {"krum_selected": 1.0}
    # Multi-Krum: x0 and x1 weighted by their example counts 1 and 3.
    assert_array_equal(two.update, np.array([0.75, 0.0], np.float32))
    assert two.metrics == {"krum_selected": 2.0}
    assert two.update.dtype == np.float32


def test_krum_numpy_matches_the_aggregator() -> None:
    update, selected = krum_numpy(KRUM_X, 1, 3, weights=[1, 1, 2, 1, 1])
    assert_array_equal(selected, [0, 1, 2])
    assert_array_equal(update, np.array([0.25, 1.0], np.float32))
    got = krum(1, num_selected=3).aggregate((), outputs_of(KRUM_X, [1, 1, 2, 1, 1]))
    assert_array_equal(got.update, update)


def test_krum_ties_go_to_the_earlier_client() -> None:
    same = np.array([[1.0, 1.0]] * 5, np.float32)
    update, selected = krum_numpy(same, 1)
    assert_array_equal(selected, [0])
    assert_array_equal(krum(1).aggregate((), outputs_of(same)).update, update)


def test_aggregators_ignore_state_and_report_metrics() -> None:
    rows = np.array([[0.0], [1.0], [2.0], [3.0], [40.0]], np.float32)
    med = median().aggregate((), outputs_of(rows, [10, 1, 1, 1, 1]))
    trim = trimmed_mean(0.2).aggregate((), outputs_of(rows))
    assert_array_equal(med.update, [2.0])  # example counts do not weight the median
    assert med.metrics == {} and med.state == ()
    assert_array_equal(trim.update, [2.0])
    assert trim.metrics == {"trimmed_per_side": 1.0}


def test_reprs() -> None:
    assert repr(median()) == "median()"
    assert repr(trimmed_mean(0.3)) == "trimmed_mean(beta=0.3)"
    assert repr(krum(3)) == "krum(num_byzantine=3, num_selected=1)"
    assert repr(krum(2, num_selected=4)) == "krum(num_byzantine=2, num_selected=4)"
    assert all(isinstance(a, Aggregator) for a in (median(), trimmed_mean(0.1), krum(0)))


# --- kernel == numpy reference ---------------------------------------------------


@pytest.mark.parametrize(("k", "n"), SHAPES)
def test_kernel_median_equals_numpy_exactly(k: int, n: int) -> None:
    matrix = np.random.default_rng(k * 7 + n).standard_normal((k, n), dtype=np.float32)
    got = coordinate_median(matrix, backend="kernel")
    assert_array_equal(got, median_numpy(matrix))
    assert_array_equal(got, np.median(matrix.astype(np.float64), axis=0).astype(np.float32))


@pytest.mark.parametrize(("k", "n"), SHAPES)
@pytest.mark.parametrize("beta", [0.0, 0.1, 0.25, 0.3, 0.49])
def test_kernel_trimmed_mean_equals_numpy(k: int, n: int, beta: float) -> None:
    matrix = np.random.default_rng(k * 7 + n).standard_normal((k, n), dtype=np.float32)
    trim = int(np.floor(beta * k))
    got = coordinate_trimmed_mean(matrix, beta, backend="kernel")
    ref = trimmed_mean_numpy(matrix, beta)
    # Both sum the same float64 values, in a different order: equal to float32 rounding.
    assert_allclose(got, ref, rtol=1e-6, atol=1e-7)
    assert_allclose(got, sorted_trimmed_mean(matrix, trim), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(("k", "n"), SHAPES)
def test_kernel_distances_equal_numpy(k: int, n: int) -> None:
    rng = np.random.default_rng(k * 7 + n)
    # Shared offset plus small differences: the cancellation the Gram form must survive.
    matrix = (rng.standard_normal(n) + 0.3 * rng.standard_normal((k, n))).astype(np.float32)
    got = pairwise_sq_distances(matrix, backend="kernel")
    x = matrix.astype(np.float64)
    direct = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    scale = float((x**2).sum(axis=1).max())
    assert_allclose(got, direct, rtol=0, atol=1e-6 * scale)
    assert_allclose(pairwise_sq_distances_numpy(matrix), direct, rtol=0, atol=1e-12 * scale)
    assert_array_equal(got, got.T)
    assert_array_equal(np.diag(got), 0.0)


@pytest.mark.parametrize("k", [2, 3, 10, 11])
def test_ties_give_exact_results(k: int) -> None:
    # Few distinct values: every column has ties, and sums are exact.
    matrix = np.random.default_rng(k).integers(-3, 4, size=(k, 2049)).astype(np.float32)
    assert_array_equal(coordinate_median(matrix, backend="kernel"), median_numpy(matrix))
    for beta in (0.1, 0.3, 0.45):
        got = coordinate_trimmed_mean(matrix, beta, backend="kernel")
        assert_array_equal(got, trimmed_mean_numpy(matrix, beta))
    dup = np.vstack([matrix, matrix[:1]])  # the last row repeats the first
    d = pairwise_sq_distances(dup, backend="kernel")
    assert d[0, k] == 0.0
    assert_array_equal(d, pairwise_sq_distances_numpy(dup))


def test_one_update_is_its_own_median_trimmed_mean_and_krum_input() -> None:
    row = np.random.default_rng(0).standard_normal((1, 5000), dtype=np.float32)
    assert_array_equal(coordinate_median(row, backend="kernel"), row[0])
    assert_array_equal(coordinate_trimmed_mean(row, 0.4, backend="kernel"), row[0])
    assert_array_equal(pairwise_sq_distances(row, backend="kernel"), [[0.0]])


@pytest.mark.parametrize("k", [10, 100])
def test_kernel_results_do_not_depend_on_threads_or_input_form(k: int) -> None:
    matrix = np.random.default_rng(k).standard_normal((k, 200_003), dtype=np.float32)
    rows = list(matrix)
    for fn in (_kernels.coordinate_median, _kernels.pairwise_sq_distances):
        one = fn(matrix, num_threads=1)
        assert_array_equal(fn(matrix, num_threads=2), one)
        assert_array_equal(fn(matrix, num_threads=3), one)
        assert_array_equal(fn(rows), one)
    one = _kernels.coordinate_trimmed_mean(matrix, 0.2, num_threads=1)
    assert_array_equal(_kernels.coordinate_trimmed_mean(matrix, 0.2, num_threads=2), one)
    assert_array_equal(_kernels.coordinate_trimmed_mean(rows, 0.2), one)


def test_aggregators_equal_the_numpy_references() -> None:
    matrix = np.random.default_rng(5).standard_normal((12, 3001), dtype=np.float32)
    matrix[9:] *= -10  # three outliers
    counts = list(range(1, 13))
    outputs = outputs_of(matrix, counts)
    assert_array_equal(median().aggregate((), outputs).update, median_numpy(matrix))
    assert_allclose(trimmed_mean(0.3).aggregate((), outputs).update, trimmed_mean_numpy(matrix, 0.3), rtol=1e-6)
    for m in (1, 4):
        update, selected = krum_numpy(matrix, 3, m, weights=counts)
        assert all(i < 9 for i in selected)
        assert_allclose(krum(3, num_selected=m).aggregate((), outputs).update, update, rtol=1e-6)


def test_aggregators_fall_back_to_numpy_without_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = np.random.default_rng(6).standard_normal((6, 500), dtype=np.float32)
    expected = [a.aggregate((), outputs_of(matrix)).update for a in (median(), trimmed_mean(0.2), krum(1))]
    monkeypatch.setattr(_robust, "HAVE_ROBUST_KERNEL", False)
    monkeypatch.setattr(_robust, "_kernels", None)  # any kernel call would fail
    got = [a.aggregate((), outputs_of(matrix)).update for a in (median(), trimmed_mean(0.2), krum(1))]
    assert_array_equal(got[0], expected[0])
    assert_allclose(got[1], expected[1], rtol=1e-6)
    assert_array_equal(got[2], expected[2])
    with pytest.raises(ImportError, match="fedr._kernels has no robust kernels"):
        coordinate_median(matrix, backend="kernel")


# --- errors ----------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_is_named_by_row_and_index(backend: Backend) -> None:
    matrix = np.zeros((4, 10), np.float32)
    matrix[2, 7] = np.nan
    matrix[3, 1] = np.nan
    with pytest.raises(FedValueError, match=re.escape("updates[2] is nan at index 7; the median needs updates without NaN")):
        coordinate_median(matrix, backend=backend)
    with pytest.raises(FedValueError, match=re.escape("updates[2] is nan at index 7; the trimmed mean needs")):
        coordinate_trimmed_mean(matrix, 0.25, backend=backend)
    matrix[2, 7] = 0.0
    matrix[1, 4] = np.inf
    with pytest.raises(FedValueError, match=re.escape("updates[1] is inf at index 4; distances need finite updates")):
        pairwise_sq_distances(matrix, backend=backend)


def test_infinity_is_a_value_for_the_median() -> None:
    matrix = np.array([[np.inf], [1.0], [-np.inf]], np.float32)
    assert_array_equal(coordinate_median(matrix, backend="kernel"), [1.0])


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_updates_are_rejected(backend: Backend) -> None:
    with pytest.raises(FedValueError, match=r"updates: expected dtype float32, got float64 with shape \(2, 3\)"):
        coordinate_median(np.zeros((2, 3)), backend=backend)
    with pytest.raises(FedValueError, match="updates: expected a C-contiguous array"):
        coordinate_median(np.zeros((3, 2), np.float32).T, backend=backend)
    with pytest.raises(FedValueError, match=r"updates: expected at least one update, got shape \(0, 4\)"):
        coordinate_trimmed_mean(np.zeros((0, 4), np.float32), 0.1, backend=backend)
    with pytest.raises(FedValueError, match=r"updates are ragged: updates\[0\] has shape \(2,\) but updates\[1\]"):
        pairwise_sq_distances([np.zeros(2, np.float32), np.zeros(3, np.float32)], backend=backend)


def test_kernel_errors_are_value_errors_with_clear_messages() -> None:
    with pytest.raises(ValueError, match=re.escape("beta must be in [0, 0.5), got 0.5")):
        _kernels.coordinate_trimmed_mean(np.zeros((2, 2), np.float32), 0.5)
    with pytest.raises(ValueError, match=re.escape("updates has dtype float64 and shape (2, 2); expected float32")):
        _kernels.coordinate_median(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=re.escape("updates is empty (K=0); need at least one update")):
        _kernels.pairwise_sq_distances([])
    with pytest.raises(ValueError, match=re.escape("updates must be a 2-D (K, N) array or a list of K 1-D arrays, got shape (4,)")):
        _kernels.coordinate_median(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match=re.escape("num_threads must be >= 0, got -1")):
        _kernels.coordinate_median(np.zeros((2, 2), np.float32), num_threads=-1)


@pytest.mark.parametrize("beta", [0.5, -0.1, 1.0, float("nan")])
def test_beta_out_of_range(beta: float) -> None:
    with pytest.raises(FedValueError, match=re.escape(f"beta: expected a number in [0, 0.5), got {beta!r}")):
        trimmed_mean(beta)
    with pytest.raises(FedValueError, match=re.escape("beta: expected a number in [0, 0.5)")):
        trimmed_mean_numpy(np.zeros((2, 2), np.float32), beta)


def test_constructor_type_errors() -> None:
    with pytest.raises(FedTypeError, match="beta: expected a number in \\[0, 0.5\\), got str"):
        trimmed_mean("0.1")  # type: ignore[arg-type]
    with pytest.raises(FedTypeError, match="num_byzantine: expected an int >= 0, got float"):
        krum(1.0)  # type: ignore[arg-type]
    with pytest.raises(FedValueError, match="num_byzantine: expected an int >= 0, got -1"):
        krum(-1)
    with pytest.raises(FedValueError, match="num_selected: expected an int >= 1, got 0"):
        krum(1, num_selected=0)
    with pytest.raises(FedTypeError, match="num_selected: expected an int >= 1, got bool"):
        krum(1, num_selected=True)


def test_krum_needs_more_than_2f_plus_2_clients() -> None:
    six = outputs_of(np.zeros((6, 3), np.float32))
    with pytest.raises(
        FedValueError,
        match=re.escape("num_byzantine=2: Krum needs more than 2 * num_byzantine + 2 = 6 clients, got 6 clients"),
    ):
        krum(2).aggregate((), six)
    krum(1).aggregate((), six)  # 6 > 4
    with pytest.raises(
        FedValueError,
        match=re.escape("num_selected=6: expected at most the number of clients minus num_byzantine (6 - 1 = 5)"),
    ):
        krum(1, num_selected=6).aggregate((), six)
    with pytest.raises(FedValueError, match="expected at least one client output, got none"):
        median().aggregate((), [])


# --- the attack: 3 of 10 clients send scaled, sign-flipped updates ----------------


class SignFlipAttack(Aggregator):
    """Test-only wrapper: the attackers' client step returns -10 times their update."""

    def __init__(self, inner: Aggregator, attackers: set[str], scale: float = -10.0) -> None:
        self.inner, self.attackers, self.scale = inner, frozenset(attackers), np.float32(scale)
        self.averages_non_trainable = inner.averages_non_trainable

    def init(self) -> Any:
        return self.inner.init()

    def start_round(self, state: Any, client_ids: Any, *, seed: Any = None) -> Any:
        return self.inner.start_round(state, client_ids, seed=seed)

    def client_step(self, state: Any, delta: Any, *, client_id: str = "", num_examples: int = 0, context: Any = None) -> Any:
        out = self.inner.client_step(state, delta, client_id=client_id, num_examples=num_examples, context=context)
        return out * self.scale if client_id in self.attackers else out

    def aggregate(self, state: Any, outputs: Any, *, seed: Any = None, context: Any = None) -> Any:
        return self.inner.aggregate(state, outputs, seed=seed, context=context)

    def __repr__(self) -> str:
        return f"sign_flip({self.inner!r})"


FEATURES, CLASSES = 20, 4


def _blobs(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian blobs around fixed class centres: a learnable, not trivial, problem."""
    centres = np.random.default_rng(0).normal(0.0, 1.0, (CLASSES, FEATURES))
    rng = np.random.default_rng(seed)
    y = rng.integers(0, CLASSES, n)
    return (centres[y] + rng.normal(0.0, 1.0, (n, FEATURES))).astype(np.float32), y


def test_attackers_break_the_mean_but_not_the_robust_aggregators() -> None:
    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    from fedr import learning
    from fedr.datasets import ClientData

    # Prepare: 10 training clients, 3 of them attackers; 3 held-out clients to evaluate on.
    train = [ClientData(*_blobs(100, 10 + i), batch_size=20, client_id=f"client_{i}") for i in range(10)]
    held_out = [ClientData(*_blobs(300, 100 + i), batch_size=100, client_id=f"held_out_{i}") for i in range(3)]
    attackers = {"client_1", "client_4", "client_7"}

    def model_fn() -> Any:
        model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES, activation="softmax")])
        return learning.from_keras_model(
            model, loss="sparse_categorical_crossentropy", metrics=["sparse_categorical_accuracy"]
        )

    def accuracy(aggregator: Aggregator) -> float:
        process = learning.build_weighted_fed_avg(
            model_fn, learning.optimizer_fn("sgd", 0.1), aggregator=aggregator, seed=1
        )
        state = process.initialize()
        for _ in range(12):
            state, _ = process.next(state, train)
        return float(process.evaluate(state, held_out)["sparse_categorical_accuracy"])

    # Execute
    clean = accuracy(aggregators.mean())
    attacked = {
        name: accuracy(SignFlipAttack(agg, attackers))
        for name, agg in [
            ("mean", aggregators.mean()),
            ("median", median()),
            ("trimmed_mean", trimmed_mean(0.3)),
            ("krum", krum(3)),
        ]
    }

    # Assert: clean FedAvg learns; under attack the mean collapses (gradient
    # ascent: 0.7 d - 0.3 * 10 d = -2.3 d), the robust ones stay within 2 points.
    assert clean > 0.9, clean
    assert attacked["mean"] < 0.3, attacked
    for name in ("median", "trimmed_mean", "krum"):
        assert attacked[name] > clean - 0.02, (name, attacked[name], clean)
