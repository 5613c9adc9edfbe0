"""Federated building blocks: the reference article's numbers, operators and type errors."""

import re

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

import fedr  # noqa: E402
from fedr import computations as fc  # noqa: E402


def _local_average(dataset):
    sum_and_count = dataset.reduce((0.0, 0.0), lambda acc, y: (acc[0] + y, acc[1] + 1))
    return sum_and_count[0] / tf.cast(sum_and_count[1], tf.float32)


@pytest.fixture(scope="module")
def local_average():
    return fedr.tf_computation(_local_average, fedr.SequenceType(tf.float32))


@pytest.fixture(scope="module")
def global_average(local_average):
    return fedr.federated_computation(
        lambda readings: fedr.federated_mean(fedr.federated_map(local_average, readings)),
        fedr.FederatedType(fedr.SequenceType(tf.float32), fedr.CLIENTS),
    )


def test_local_average_of_reference_is_2(local_average):
    assert local_average([1, 2, 3]) == 2.0


def test_global_average_of_reference_is_7(global_average):
    assert global_average([[1, 1, 1], [13]]) == 7.0


def test_weighted_federated_mean():
    value = fc.FederatedValue([1.0, 2.0], fedr.CLIENTS)
    weight = fc.FederatedValue([1.0, 3.0], fedr.CLIENTS)
    assert fedr.federated_mean(value, weight).members[0] == pytest.approx(1.75)
    assert fedr.federated_mean(value).members[0] == pytest.approx(1.5)


def test_sum_and_broadcast():
    total = fedr.federated_sum([np.array([1.0, 2.0]), np.array([3.0, 4.0])])
    assert total.placement is fedr.SERVER
    np.testing.assert_array_equal(total.members[0], [4.0, 6.0])
    sent = fedr.federated_broadcast(total)
    assert sent.placement is fedr.CLIENTS and sent.all_equal


def test_decorator_form_and_dataset_ops():
    @fedr.tf_computation(fedr.SequenceType("float32"))
    def count_large(ds):
        return ds.filter(lambda v: v > 2.0).map(lambda v: v * 2.0).reduce(0.0, lambda a, v: a + v)

    assert count_large([1, 2, 3, 4]) == 14.0


def test_server_placed_argument():
    double = fedr.federated_computation(
        lambda v: fedr.federated_broadcast(v), fedr.FederatedType("float32", "server")
    )
    assert double(2.5) == 2.5


@pytest.mark.parametrize(
    ("value", "given"),
    [
        (["a", "b"], "list[str]"),
        ("abc", "str"),
        ([[1, 2], [3]], "list[list[int]]"),
        (5, "int"),
    ],
)
def test_sequence_type_mismatch_names_both_types(local_average, value, given):
    with pytest.raises(TypeError, match=rf"expected float32\*, got {re.escape(given)}"):
        local_average(value)


def test_federated_type_mismatch_names_client(global_average):
    with pytest.raises(TypeError, match=r"client 1: expected float32\*, got int"):
        global_average([[1.0], 2])
    with pytest.raises(fedr.FedTypeError, match=r"expected \{float32\*\}@CLIENTS, got str"):
        global_average("not clients")


def test_wrong_type_spec_kinds():
    with pytest.raises(TypeError, match="non-federated type"):
        fedr.tf_computation(_local_average, fedr.FederatedType("float32", fedr.CLIENTS))
    with pytest.raises(TypeError, match="takes a FederatedType"):
        fedr.federated_computation(lambda v: v, fedr.SequenceType("float32"))
    with pytest.raises(TypeError, match="dtype: expected one of"):
        fedr.SequenceType("float33")


@pytest.mark.parametrize(
    ("weight", "message"),
    [
        ([1.0, -1.0], "weight: weights[1] is -1.0; weights must be non-negative"),
        ([1.0, np.inf], "weight: weights[1] is inf; weights must be finite"),
        ([0.0, 0.0], "weight: weights sum to 0.0; the total weight must be positive and finite"),
        ([1.0, 2.0, 3.0], "weight: weights has 3 entries but updates has K=2"),
    ],
)
def test_weighted_mean_rejects_bad_weights(weight, message):
    with pytest.raises(fedr.FedValueError, match=f"^{re.escape(message)}$"):
        fedr.federated_mean([1.0, 2.0], weight)


def test_weighted_mean_uses_the_aggregators_rules(monkeypatch):
    """One owner for the rules on weights: fedr._weights.check_weights (fedr.aggregators.check_weights)."""
    from fedr import _weights, aggregators

    assert aggregators.check_weights is _weights.check_weights

    seen = []

    def spy(weights, k):
        seen.append((np.asarray(weights).tolist(), k))
        return np.asarray(weights, dtype=np.float64)

    monkeypatch.setattr(_weights, "check_weights", spy)
    fedr.federated_mean([1.0, 2.0], [1.0, 3.0])
    assert seen == [([1.0, 3.0], 2)]


def test_values_from_r_fit_scalar_and_sequence_types(local_average):
    # R has no scalars: a number is a vector of length one.
    assert fedr.SequenceType("float32").convert(13.0, from_r=True).cardinality().numpy() == 1
    assert fedr.TensorType("float32", [None]).convert(2.0, from_r=True).tolist() == [2.0]
    with pytest.raises(TypeError, match=r"^expected float32\*, got float$"):
        fedr.SequenceType("float32").convert(13.0)
    clients = fedr.FederatedType(fedr.SequenceType("float32"), fedr.CLIENTS)
    # ... and R counts clients from 1.
    with pytest.raises(TypeError, match=r"^client 2: expected float32\*, got str$"):
        clients.convert([[1.0], "a"], from_r=True)
    with pytest.raises(TypeError, match=r"^client 1: expected float32\*, got str$"):
        clients.convert([[1.0], "a"])
    assert clients.convert([[1.0, 1.0, 1.0], 13.0], from_r=True).placement is fedr.CLIENTS


@pytest.mark.parametrize("shape", [(-1,), (2.5,), ("a",), (True,)])
def test_tensor_type_rejects_bad_shapes(shape):
    with pytest.raises(TypeError, match=r"^shape: expected non-negative whole numbers or None"):
        fedr.TensorType("float32", shape)


def test_tensor_type_shape_takes_whole_floats_and_none():
    assert fedr.TensorType("float32", [None, 784.0]).shape == (None, 784)
    assert str(fedr.TensorType("float32", [None, 784.0])) == "float32[?,784]"

