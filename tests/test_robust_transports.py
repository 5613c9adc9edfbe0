"""The robust rules of issue 22 on the transports: threads and Ray bit for bit, and one Flower run.

Their numbers are tested against numpy references in tests/test_robust_rules.py;
here the same rounds must come out identical on a local Ray of 2 CPUs
(started and shut down by the test), and geometric median behind zeroing on
three Flower nodes (loopback) and Bulyan on seven must give the in-process weights.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from fedr import aggregators, executors, learning  # noqa: E402
from fedr.datasets import ClientData  # noqa: E402



def _model_fn() -> learning.Model:
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, activation="softmax")])
    return learning.from_keras_model(model, "sparse_categorical_crossentropy", ["sparse_categorical_accuracy"])


def _clients(n: int = 7) -> list[ClientData]:
    rng = np.random.default_rng(8)
    clients = []
    for i in range(n):
        x = rng.normal(0.0, 1.0, (24, 5)).astype(np.float32)
        if i == 0:
            x *= 50.0  # one client far off: the robust rules must do something
        clients.append(ClientData(x, rng.integers(0, 3, 24), batch_size=8, client_id=f"c{i}"))
    return clients


def _rules():
    return {
        "geometric_median": aggregators.geometric_median(),
        "bulyan": aggregators.bulyan(1),  # 7 clients = 4f + 3
        "norm_bounded": aggregators.norm_bounded(0.05, inner=aggregators.median()),
        "zeroing": aggregators.zeroing(0.5),
    }


def test_threads_and_ray_give_the_robust_rules_numbers_bit_for_bit():
    ray = pytest.importorskip("ray", reason="ray is installed by make setup")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    clients = _clients()
    executor = executors.ray(num_cpus=2)
    try:
        for name in _rules():
            states, rows = [], []
            for chosen in (executors.threads(workers=2), executor):
                process = learning.build_weighted_fed_avg(
                    _model_fn, learning.optimizer_fn("sgd", 0.1), aggregator=_rules()[name], executor=chosen,
                    seed=5)
                state = process.initialize()
                for _ in range(2):
                    state, metrics = process.next(state, clients)
                states.append(state)
                rows.append(metrics)
            np.testing.assert_array_equal(states[0].flat_weights, states[1].flat_weights, err_msg=name)
            assert rows[0] == rows[1], name
            if name in ("norm_bounded", "zeroing"):
                counted = rows[0]["num_clipped" if name == "norm_bounded" else "num_zeroed"]
                assert counted >= 1, (name, rows[0])
    finally:
        executor.close()
    assert not ray.is_initialized()


def test_geometric_median_behind_zeroing_on_three_flower_nodes_gives_the_in_process_weights(tmp_path, monkeypatch):
    pytest.importorskip("flwr", reason="flwr[simulation]==1.42.0 is installed by make setup")
    from flower_nodes import fashion_clients, fashion_model, run_on_nodes

    def build():
        rule = aggregators.zeroing(100.0, inner=aggregators.geometric_median())
        return learning.build_weighted_fed_avg(fashion_model, learning.optimizer_fn("sgd", 0.02), aggregator=rule,
                                               seed=1)

    reference = build()
    expected = reference.initialize()
    for _ in range(2):
        expected, _ = reference.next(expected, fashion_clients(3))
    result = run_on_nodes(build, tmp_path, monkeypatch, 3, 2, min_nodes=3)
    np.testing.assert_allclose(result.state.flat_weights, expected.flat_weights, rtol=0, atol=1e-6)
    assert [row["num_clients"] for row in result.history] == [3, 3]
    assert all(row["inner_geometric_median_iterations"] >= 1 for row in result.history)


def test_bulyan_on_seven_flower_nodes_gives_the_in_process_weights(tmp_path, monkeypatch):
    """Bulyan needs n >= 4f + 3: seven nodes for f = 1, each serving 600 rows (one round, loopback)."""
    pytest.importorskip("flwr", reason="flwr[simulation]==1.42.0 is installed by make setup")
    from flower_nodes import fashion_clients, fashion_model, run_on_nodes

    def build():
        return learning.build_weighted_fed_avg(fashion_model, learning.optimizer_fn("sgd", 0.02),
                                               aggregator=aggregators.bulyan(1), seed=1)

    reference = build()
    expected, metrics = reference.next(reference.initialize(), fashion_clients(7, 600))
    result = run_on_nodes(build, tmp_path, monkeypatch, 7, 1, rows=600, min_nodes=7, round_timeout=300, timeout=900)
    np.testing.assert_allclose(result.state.flat_weights, expected.flat_weights, rtol=0, atol=1e-6)
    assert [(row["num_clients"], row["bulyan_selected"]) for row in result.history] == [(7, 5)]
    assert metrics["bulyan_selected"] == 5.0
