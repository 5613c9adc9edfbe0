"""No silent results (issue 18, section 3; issue 17, item 8): bad input is a clear error naming the argument.

Each theme is one group of tests: a limit the user set is never quietly lowered,
data that cannot be right does not load, arithmetic that underflowed gives the
right mean, and raw library messages (numpy, std::vector, R, the OS) become
fedr errors that name the argument and the user's value.
"""

from __future__ import annotations

import gzip
import math
import os
import tempfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

from fedr import aggregators, datasets, executors, learning, privacy
from fedr.aggregators import WeightedMeanAccumulator, weighted_mean
from fedr.aggregators._weighted_mean import HAVE_KERNEL
from fedr.datasets import ClientData
from fedr.errors import FedTypeError, FedValueError

BACKENDS = ["numpy", pytest.param("kernel", marks=pytest.mark.skipif(not HAVE_KERNEL, reason="kernel not built"))]


def _outputs(n: int, size: int = 4) -> list[SimpleNamespace]:
    rows = np.arange(n * size, dtype=np.float32).reshape(n, size)
    return [SimpleNamespace(client_id=f"c{i}", delta=rows[i], num_examples=1) for i in range(n)]


def _dense_fn(features: int = 4):
    keras = pytest.importorskip("keras")

    def fn():
        model = keras.Sequential([keras.Input((features,)), keras.layers.Dense(2, activation="softmax")])
        return learning.from_keras_model(model, "sparse_categorical_crossentropy")

    return fn


def _clients(n: int, features: int = 4) -> list[ClientData]:
    rng = np.random.default_rng(0)
    return [
        ClientData(rng.random((4, features), dtype=np.float32), np.array([0, 1, 0, 1]), client_id=f"c{i}")
        for i in range(n)
    ]


# --- a limit the user set is never quietly lowered ----------------------------------------------


def test_min_clients_count_above_the_round_is_refused_before_training():
    process = learning.build_weighted_fed_avg(
        _dense_fn(), learning.optimizer_fn("sgd", 0.1), workers=1, seed=0, min_clients=5
    )
    state = process.initialize()
    message = r"^min_clients: the round has 2 client\(s\), fewer than min_clients = 5; select at least 5 clients"
    with pytest.raises(FedValueError, match=message):
        process.next(state, _clients(2))
    with pytest.raises(FedValueError, match=message):
        process.begin_round(state, ["a", "b"])
    # Five clients are enough; a fraction still scales with the round.
    out = process.next(state, _clients(5))
    assert out.metrics["num_clients"] == 5
    half = learning.build_weighted_fed_avg(_dense_fn(), learning.optimizer_fn("sgd", 0.1), workers=1, min_clients=0.5)
    assert half.next(half.initialize(), _clients(2)).metrics["num_clients"] == 2


@pytest.mark.parametrize(
    ("aggregator", "n", "message"),
    [
        (aggregators.trimmed_mean(0.3), 3,
         r"^beta=0.3: the trimmed mean of 3 client\(s\) trims floor\(0.3 \* 3\) = 0 values from each side, so it "
         r"cannot outvote a single bad client; it needs at least 4 clients$"),
        (aggregators.trimmed_mean(0.1), 9, r"trims floor\(0.1 \* 9\) = 0 values .* it needs at least 10 clients$"),
        (aggregators.median(), 2,
         r"^median\(\): a round of 2 client\(s\) cannot outvote a single bad client \(the median of 2 is their "
         r"mean\); it needs at least 3 clients$"),
        (aggregators.krum(1), 4,
         r"^num_byzantine=1: Krum needs more than 2 \* num_byzantine \+ 2 = 4 clients, got 4 clients$"),
    ],
)
def test_robust_aggregators_refuse_a_round_they_cannot_outvote_anyone_in(aggregator, n, message):
    ids = [f"c{i}" for i in range(n)]
    # Before any client trains, and again after dropouts at aggregation.
    with pytest.raises(FedValueError, match=message):
        aggregator.start_round((), ids)
    with pytest.raises(FedValueError, match=message):
        aggregator.aggregate((), _outputs(n))


def test_robust_aggregators_run_from_the_smallest_round_that_outvotes_one():
    trimmed = aggregators.trimmed_mean(0.3).aggregate((), _outputs(4))
    assert trimmed.metrics == {"trimmed_per_side": 1.0}
    assert_array_equal(trimmed.update, [6, 7, 8, 9])  # rows 1 and 2 of 0..15 by 4
    assert_array_equal(aggregators.median().aggregate((), _outputs(3)).update, [4, 5, 6, 7])
    assert aggregators.krum(1).start_round((), list("abcde")) is None
    # beta = 0 and f = 0 tolerate nobody by request: no refusal for that.
    assert_array_equal(aggregators.trimmed_mean(0).aggregate((), _outputs(2)).update, [2, 3, 4, 5])


def test_a_robust_round_too_small_fails_in_the_process_before_clients_train():
    process = learning.build_weighted_fed_avg(
        _dense_fn(), learning.optimizer_fn("sgd", 0.1), workers=1, aggregator=aggregators.trimmed_mean(0.3)
    )
    with pytest.raises(FedValueError, match=r"^beta=0.3: the trimmed mean of 3 client\(s\)"):
        process.next(process.initialize(), _clients(3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(threshold=1), r"^threshold: expected an integer >= 2, got 1; secure aggregation needs t > n/2 survivors "
                            r"\(Bonawitz et al. 2017\)"),
        (dict(threshold=0.5), r"^threshold: a fraction must be in \(0.5, 1\], got 0.5; secure aggregation needs t > n/2"),
        (dict(threshold=1.0 / 3), r"^threshold: a fraction must be in \(0.5, 1\]"),
    ],
)
def test_secure_threshold_must_be_a_majority(kwargs, message):
    for build in (privacy.secure_sum, privacy.secure_mean):
        with pytest.raises(FedValueError, match=message):
            build(**kwargs)


def test_secure_threshold_of_half_the_round_is_refused_at_the_round():
    with pytest.raises(
        FedValueError,
        match=r"^threshold: 2 is not more than half of the 4 clients of a round of 4 \(neighbours included\); "
              r"secure aggregation needs t > n/2 survivors .* would unmask that client's update: raise it",
    ):
        privacy.secure_sum(threshold=2).start_round((), list("abcd"))
    context = privacy.secure_sum(threshold=3).start_round((), list("abcd"))
    assert context.config.threshold == 3
    assert privacy.secure_sum(threshold=0.75).round_threshold(4) == 3
    assert privacy.secure_sum().round_threshold(2) == 2  # the default ceil(2n/3), at least 2, is a majority


# --- data that cannot be right does not load ----------------------------------------------------


def _idx(array: np.ndarray) -> bytes:
    code = {np.dtype("u1"): 0x08, np.dtype("f4"): 0x0D}[array.dtype]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _fashion_dir(tmp_path: Path, train_labels: np.ndarray) -> Path:
    n = len(train_labels)
    files = {
        "train-images-idx3-ubyte.gz": np.zeros((n, 28, 28), np.uint8),
        "train-labels-idx1-ubyte.gz": train_labels,
        "t10k-images-idx3-ubyte.gz": np.zeros((2, 28, 28), np.uint8),
        "t10k-labels-idx1-ubyte.gz": np.array([0, 9], np.uint8),
    }
    for name, array in files.items():
        (tmp_path / name).write_bytes(gzip.compress(_idx(array)))
    return tmp_path


def test_idx_labels_beyond_the_class_names_do_not_load(tmp_path):
    directory = _fashion_dir(tmp_path, np.array([0, 3, 10, 9, 200], np.uint8))
    with pytest.raises(
        FedValueError,
        match=r"train-labels-idx1-ubyte.gz: label 10 at index 2 is not a class of fashion_mnist, which has 10 "
              r"classes \(labels 0..9\); 2 label\(s\) out of range$",
    ):
        datasets.load_fashion_mnist(directory)
    ok = datasets.load_fashion_mnist(_fashion_dir(tmp_path, np.array([0, 9, 5], np.uint8)))
    assert_array_equal(ok.y_train, [0, 9, 5])


def test_idx_labels_that_are_fractions_do_not_load(tmp_path):
    directory = _fashion_dir(tmp_path, np.array([0.0, 1.5, 2.0], np.float32))
    with pytest.raises(FedValueError, match=r"label 1.5 at index 1 is not a whole number \(a class id\)$"):
        datasets.load_fashion_mnist(directory)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_weight_totals_give_the_right_mean(backend):
    ones = np.ones((2, 5), np.float32)
    # 1 / 2e-320 is Inf in float64: the old kernel multiplied by it and returned Inf.
    assert_array_equal(weighted_mean(ones, [1e-320, 1e-320], backend=backend), np.ones(5, np.float32))
    rows = np.array([[1.0] * 3, [3.0] * 3], np.float32)
    # Subnormal weights keep few bits: (1 * 1e-320 + 3 * 3e-320) / 4e-320 = 2.5 to about 1e-3.
    assert_allclose(weighted_mean(rows, [1e-320, 3e-320], backend=backend), 2.5, rtol=1e-3)
    assert_array_equal(weighted_mean(rows, [1e-300, 3e-300], backend=backend), np.full(3, 2.5, np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_tiny_weights_in_the_accumulator_give_the_right_mean(backend):
    acc = WeightedMeanAccumulator(3, backend=backend)
    acc.add(np.ones(3, np.float32), 1e-320)
    acc.add(np.full(3, 3.0, np.float32), 3e-320)
    assert_allclose(acc.result(), 2.5, rtol=1e-3)
    assert acc.total_weight == 1e-320 + 3e-320
    # A much larger weight after a tiny one (the running sum is rescaled) and a tiny one after it.
    acc.reset()
    acc.add(np.ones(3, np.float32), 1e-320)
    acc.add(np.full(3, 3.0, np.float32), 2.0)
    acc.add(np.full(3, 5.0, np.float32), 1e-310)
    assert_array_equal(acc.result(), np.full(3, 3.0, np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
def test_weights_in_the_normal_range_give_the_same_bits_as_before(backend):
    # The fix scales the weights by a power of two, which is exact: the mean of
    # ordinary weights is bit for bit the old formula's (reference numbers hold).
    rng = np.random.default_rng(3)
    rows = rng.standard_normal((7, 1001), dtype=np.float32)
    weights = rng.integers(1, 600, 7).astype(np.float64)
    old = np.zeros(1001)
    for row, w in zip(rows, weights, strict=True):
        old += np.multiply(row, w, dtype=np.float64)
    old = (old * (1.0 / weights.sum())).astype(np.float32)
    assert_array_equal(weighted_mean(rows, weights, backend=backend), old)
    acc = WeightedMeanAccumulator(1001, backend=backend)
    for row, w in zip(rows, weights, strict=True):
        acc.add(row, float(w))
    assert_array_equal(acc.result(), old)


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_absurd_accumulator_size_is_named(backend):
    with pytest.raises(
        FedValueError,
        match=r"^n: a running sum of 1000000000000000000 float64 values \(7.45e\+09 GiB\) cannot be allocated; "
              r"n is the number of model weights$",
    ):
        WeightedMeanAccumulator(10**18, backend=backend)


# --- raw library errors become fedr errors naming the argument -----------------------------------


@pytest.mark.parametrize("seed", [1.5, float("nan"), "a", -1])
def test_a_seed_that_is_not_an_integer_is_named(seed):
    message = rf"^seed: expected a non-negative integer or None, got {seed!r}$".replace("(", r"\(")
    with pytest.raises(FedValueError, match=message):
        datasets.split_indices(10, 2, "iid", seed=seed)
    with pytest.raises(FedValueError, match=message):
        datasets.make_clients(np.zeros((10, 3), np.float32), np.zeros(10, int), 2, "iid", seed=seed)
    # A Generator is still taken as is.
    assert len(datasets.split_indices(10, 2, "iid", seed=np.random.default_rng(1))) == 2


def test_a_corrupt_rds_file_is_named(tmp_path):
    pytest.importorskip("rpy2")
    from fedr import rdata

    bad = tmp_path / "site_a.rds"
    bad.write_bytes(b"not an R file at all")
    with pytest.raises(
        FedValueError,
        match=rf"^path: '{bad}' is not an R data file that readRDS\(\) can read \(unknown input format\); "
              r"write it with saveRDS\(\) in R$",
    ):
        rdata.read_rds(bad)


def _state():
    process = learning.build_weighted_fed_avg(_dense_fn(), learning.optimizer_fn("sgd", 0.1), workers=1, seed=0)
    return process.initialize()


def test_save_state_onto_a_directory_or_into_a_read_only_place_names_the_path(tmp_path, monkeypatch):
    state = _state()
    with pytest.raises(FedValueError, match=rf"^path: '{tmp_path}' is a directory; give the checkpoint a file name, "
                                            rf"e.g. '{tmp_path}/state.fedr'$"):
        learning.save_state(state, tmp_path)
    with pytest.raises(FedValueError, match=rf"^path: '{tmp_path}' is a directory, not a checkpoint file"):
        learning.load_state(tmp_path)
    target = str(tmp_path / "state.fedr")

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", os.path.join(str(tmp_path), ".fedr-x1y2.tmp"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(PermissionError) as err:
        learning.save_state(state, target)
    assert str(err.value) == (
        f"path: cannot write the checkpoint {target!r}: Permission denied (a temporary file in {str(tmp_path)!r} "
        "is written first, then renamed over it; the directory must be writable)"
    )
    assert ".fedr-" not in str(err.value)
    assert not os.path.exists(target)


def test_a_built_keras_model_where_a_model_function_belongs_says_what_to_pass():
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    with pytest.raises(
        FedTypeError,
        match=r"^model_fn: expected a function with no arguments returning from_keras_model\(...\), got a built "
              r"Sequential; every client trains its own fresh copy, so pass e.g. `lambda: "
              r"fedr.learning.from_keras_model\(keras.models.clone_model\(model\)",
    ):
        learning.build_weighted_fed_avg(model, learning.optimizer_fn("sgd", 0.1), workers=1)
    with pytest.raises(FedTypeError, match=r"^model_fn: .*got a built Model;"):
        learning.build_weighted_fed_avg(_dense_fn()(), learning.optimizer_fn("sgd", 0.1), workers=1)


def test_held_out_data_that_does_not_fit_is_named_before_training():
    process = learning.build_weighted_fed_avg(_dense_fn(), learning.optimizer_fn("sgd", 0.1), workers=1)
    with pytest.raises(
        FedValueError,
        match=r"^validation_data: client 'c0': x has feature shape \(6,\) but the model expects \(4,\)$",
    ):
        process.check_data(_clients(1, features=6), "validation_data")
    with pytest.raises(FedValueError, match=r"^validation_data: expected at least one client, got an empty list$"):
        process.check_data([], "validation_data")
    assert process.check_data(_clients(2)) is None


class _FakeRemote(executors.Executor):
    """An executor that says it trains elsewhere: the process then builds the model's spec at once."""

    remote = True
    workers = 1

    def map(self, fn, items):
        return [fn(item) for item in items]


def test_a_model_that_cannot_travel_is_blamed_on_model_fn():
    keras = pytest.importorskip("keras")

    def own_loss(y, p):
        return keras.losses.sparse_categorical_crossentropy(y, p)

    def own_loss_fn():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        return learning.from_keras_model(model, own_loss)

    with pytest.raises(FedTypeError, match=r"^model_fn: loss cannot travel to remote workers: "):
        learning.build_weighted_fed_avg(own_loss_fn, learning.optimizer_fn("sgd", 0.1), executor=_FakeRemote())


def test_bad_numbers_are_named():
    # Found while trying NaN and out-of-range values across the API; each names its argument.
    nan = math.nan
    cases = [
        (lambda: learning.build_weighted_fed_avg(_dense_fn(), learning.optimizer_fn("sgd", 0.1), min_clients=nan),
         r"^min_clients: expected a count >= 1 or a fraction in \(0, 1\], got nan$"),
        (lambda: privacy.gaussian_fixed(nan, 10, 1.0), r"^noise_multiplier: expected a finite number >= 0, got nan$"),
        (lambda: aggregators.trimmed_mean(nan), r"^beta: expected a number in \[0, 0.5\), got nan$"),
    ]
    for call, message in cases:
        with pytest.raises(FedValueError, match=message):
            call()
