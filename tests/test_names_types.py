"""One list of the names a round writes (fedr.protocol.names), and federated_* keeping the member type."""

from __future__ import annotations

import numpy as np
import pytest

from fedr import aggregators, computations, datasets, privacy, protocol
from fedr.errors import FedValueError

keras = pytest.importorskip("keras")
from fedr import learning  # noqa: E402


def _model_fn(metric_name: str = "sparse_categorical_accuracy"):
    def model_fn():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        return learning.from_keras_model(
            model, keras.losses.SparseCategoricalCrossentropy(),
            [keras.metrics.SparseCategoricalAccuracy(name=metric_name)],
        )

    return model_fn


def _clients(n: int = 6) -> list[datasets.ClientData]:
    rng = np.random.default_rng(0)
    return [
        datasets.ClientData(rng.standard_normal((20, 4)).astype(np.float32), rng.integers(0, 3, 20), batch_size=10,
                            client_id=f"c{i}")
        for i in range(n)
    ]


@pytest.mark.parametrize("name", ["num_clients_failed", "num_examples", "loss", "epsilon", "clip", "round",
                                  "val_accuracy", "eval_loss", "secure_dropped"])
def test_a_metric_named_as_the_round_writes_is_refused_naming_it(name):
    with pytest.raises(FedValueError, match=rf"^metrics: a metric named '{name}' .*rename it"):
        _model_fn(name)()


def test_two_metrics_of_one_name_are_refused():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    with pytest.raises(FedValueError, match="metrics: two metrics are named 'acc'"):
        learning.from_keras_model(model, "sparse_categorical_crossentropy",
                                  [keras.metrics.SparseCategoricalAccuracy(name="acc"),
                                   keras.metrics.SparseCategoricalAccuracy(name="acc")])


def _aggregators():
    return {
        "mean": aggregators.mean(),
        "sum": aggregators.sum(),
        "median": aggregators.median(),
        "trimmed_mean": aggregators.trimmed_mean(0.2),
        "krum": aggregators.krum(1),
        "geometric_median": aggregators.geometric_median(),
        "bulyan": aggregators.bulyan(0),  # six clients: f = 1 needs 4f + 3 = 7
        "norm_bounded": aggregators.norm_bounded(0.01),
        "zeroing": aggregators.zeroing(10.0, inner=aggregators.median()),
        "secure_mean": privacy.secure_mean(),
        "gaussian_fixed": privacy.gaussian_fixed(0.5, 6, 1.0, population_size=6, target_delta=1e-5,
                                                 sampling="all"),
        "gaussian_adaptive": privacy.gaussian_adaptive(0.5, 6, population_size=6, target_delta=1e-5,
                                                       sampling="all"),
        "dp_secure": privacy.gaussian_fixed(0.5, 6, 1.0, inner=privacy.secure_sum(), sampling="all"),
        "distributed_dp": privacy.distributed_dp(0.5, 6, 1.0, population_size=6, target_delta=1e-5),
    }


@pytest.mark.parametrize("kind", list(_aggregators()))
def test_every_name_a_built_in_aggregator_writes_is_in_the_one_list(kind):
    process = learning.build_weighted_fed_avg(_model_fn(), learning.optimizer_fn("sgd", 0.1),
                                              aggregator=_aggregators()[kind], seed=1)
    _, metrics = process.next(process.initialize(), _clients())
    written = set(metrics) - {"sparse_categorical_accuracy"}
    assert written, kind
    assert {n for n in written if not protocol.is_reserved(n)} == set()


def test_count_columns_are_reserved():
    assert set(protocol.COUNT_COLUMNS) <= protocol.RESERVED_METRICS
    assert "num_clients_failed" in protocol.COUNT_COLUMNS


# --- federated_mean / federated_sum keep the member type ------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_federated_mean_and_sum_keep_a_float_member_type(dtype):
    scalars = [dtype(1.0), dtype(2.0), dtype(4.5)]
    mean = computations.federated_mean(scalars).members[0]
    total = computations.federated_sum(scalars).members[0]
    assert (mean.dtype, float(mean)) == (np.dtype(dtype), 2.5)
    assert (total.dtype, float(total)) == (np.dtype(dtype), 7.5)
    arrays = [np.array([1, 2], dtype), np.array([3, 5], dtype)]
    assert computations.federated_mean(arrays).members[0].dtype == dtype
    np.testing.assert_array_equal(computations.federated_sum(arrays).members[0], np.array([4, 7], dtype))


def test_federated_sum_of_int32_stays_int32_and_refuses_overflow():
    total = computations.federated_sum([np.int32(2**30), np.int32(2**30 - 1)]).members[0]
    assert total.dtype == np.int32 and int(total) == 2**31 - 1
    with pytest.raises(FedValueError, match=r"value: the sum of the 2 int32 client values overflows int32"):
        computations.federated_sum([np.int32(2**30), np.int32(2**30)])
    with pytest.raises(FedValueError, match="overflows int64"):
        computations.federated_sum([np.int64(2**62), np.int64(2**62)])
    exact = computations.federated_sum([np.array([2**40, 1], np.int64), np.array([3, -1], np.int64)]).members[0]
    np.testing.assert_array_equal(exact, np.array([2**40 + 3, 0], np.int64))
    assert exact.dtype == np.int64


def test_python_numbers_sum_as_float64_and_int64():
    assert computations.federated_mean([1.0, 13.0]).members[0].dtype == np.float64
    assert float(computations.federated_mean([1.0, 13.0]).members[0]) == 7.0
    assert computations.federated_sum([1, 2]).members[0].dtype == np.int64


@pytest.mark.parametrize("fn", [computations.federated_sum, computations.federated_mean])
def test_zero_clients_is_an_error_that_says_why(fn):
    name = fn.__name__
    with pytest.raises(FedValueError, match=rf"^value: {name} over zero clients: with no client values there is no "
                                             "member type"):
        fn([])
