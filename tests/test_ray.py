"""Clients on Ray: the same numbers as threads, failures and stragglers named, a killed worker survived.

A local Ray of 2 CPUs is started by the fixture and shut down after the module.
"""

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

ray_module = pytest.importorskip("ray")
keras = pytest.importorskip("keras")

from fedr import aggregators, executors, learning  # noqa: E402
from fedr.datasets import ClientData  # noqa: E402

SHAPE, CLASSES = (6, 6, 1), 3


@pytest.fixture(scope="module")
def ray_executor():
    # Ray's workers cannot import this test module: ship its classes (a test aggregator) by value.
    ray_module.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    executor = executors.ray(num_cpus=2)
    yield executor
    executor.close()
    assert not ray_module.is_initialized()


def _clients(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [
        ClientData(rng.normal(1.0, 2.0, (12, *SHAPE)).astype(np.float32), rng.integers(0, CLASSES, 12),
                   batch_size=4, client_id=f"r{i}")
        for i in range(n)
    ]


def _cnn_fn():
    model = keras.Sequential([
        keras.Input(SHAPE),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.BatchNormalization(),
        keras.layers.Flatten(),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ])
    return learning.from_keras_model(model, "sparse_categorical_crossentropy", ["sparse_categorical_accuracy"])


def _rounds(process, clients, rounds=2):
    state, history = process.initialize(), []
    for _ in range(rounds):
        state, metrics = process.next(state, clients)
        history.append(metrics)
    return state, history


def _same(a, b):
    for x, y in zip([*a.model.trainable, *a.model.non_trainable], [*b.model.trainable, *b.model.non_trainable]):
        np.testing.assert_array_equal(x, y)


def test_ray_gives_the_weights_and_metrics_of_threads(ray_executor):
    clients = _clients()
    on_ray = learning.build_weighted_fed_avg(_cnn_fn, learning.optimizer_fn("sgd", 0.05), seed=7, executor=ray_executor)
    on_threads = learning.build_weighted_fed_avg(_cnn_fn, learning.optimizer_fn("sgd", 0.05), seed=7, workers=2)
    ray_state, ray_history = _rounds(on_ray, clients)
    thread_state, thread_history = _rounds(on_threads, clients)
    _same(ray_state, thread_state)
    assert ray_history == thread_history
    assert ray_history[-1]["num_clients"] == 4 and ray_history[-1]["num_clients_failed"] == 0
    # Evaluation runs locally and reads the state only.
    assert on_ray.evaluate(ray_state, clients) == on_threads.evaluate(thread_state, clients)
    assert repr(ray_executor) == "ray(address=local, num_cpus_per_client=1)"
    assert ray_executor.workers == 2


class _FailFor(aggregators.Mean):
    """The mean, whose client step raises for the given client ids."""

    def __init__(self, ids):
        super().__init__()
        self.ids = set(ids)

    def client_step(self, state, delta, *, client_id="", **kwargs):
        if client_id in self.ids:
            raise RuntimeError(f"disk on fire at {client_id}")
        return delta


@pytest.mark.parametrize("where", ["threads", "ray"])
def test_a_failing_client_is_left_out_and_named(where, ray_executor):
    clients = _clients()
    executor = ray_executor if where == "ray" else executors.threads(2)
    failing = learning.build_weighted_fed_avg(
        _cnn_fn, learning.optimizer_fn("sgd", 0.05), seed=7, executor=executor, aggregator=_FailFor({"r2"})
    )
    without = learning.build_weighted_fed_avg(_cnn_fn, learning.optimizer_fn("sgd", 0.05), seed=7, workers=1)
    start = failing.initialize()
    with pytest.warns(learning.ClientsFailedWarning, match=r"round 1: 1 client\(s\) failed and were left out: r2: RuntimeError: disk on fire at r2"):
        state, metrics = failing.next(start, clients)
    expected, _ = without.next(start, [c for c in clients if c.client_id != "r2"])
    _same(state, expected)
    assert metrics["num_clients"] == 3 and metrics["num_clients_failed"] == 1
    strict = learning.build_weighted_fed_avg(
        _cnn_fn, learning.optimizer_fn("sgd", 0.05), seed=7, executor=executor,
        aggregator=_FailFor({"r1", "r2"}), min_clients=0.75,
    )
    with pytest.raises(ValueError, match=r"round 1: only 2 of 4 clients returned a usable update, fewer than min_clients = 3; left out: r1 \(RuntimeError: disk on fire at r1\); r2 \(RuntimeError: disk on fire at r2\). The state is unchanged"):
        strict.next(start, clients)


def test_min_clients_is_checked():
    with pytest.raises(ValueError, match=r"min_clients: expected a count >= 1 or a fraction in \(0, 1\], got 0"):
        learning.build_weighted_fed_avg(_cnn_fn, learning.optimizer_fn("sgd", 0.05), min_clients=0)
    with pytest.raises(ValueError, match=r"min_clients: expected a count >= 1 or a fraction in \(0, 1\], got 1.5"):
        learning.build_weighted_fed_avg(_cnn_fn, learning.optimizer_fn("sgd", 0.05), min_clients=1.5)
    with pytest.raises(ValueError, match=r"round_timeout: expected a positive number of seconds or None, got 0"):
        executors.ray(round_timeout=0)


def test_round_timeout_drops_stragglers_and_the_next_round_recovers(ray_executor):
    clients = _clients()
    process = learning.build_weighted_fed_avg(_cnn_fn, learning.optimizer_fn("sgd", 0.05), seed=7, executor=ray_executor)
    start = process.initialize()
    process.next(start, clients)  # warm: actors built and traced
    ray_executor.round_timeout = 3.0
    ray_executor._delays = {"r3": 30.0}
    try:
        began = time.monotonic()
        with pytest.warns(learning.ClientsFailedWarning, match=r"r3: TimeoutError: no answer within round_timeout = 3 s"):
            state, metrics = process.next(start, clients)
        assert time.monotonic() - began < 20
        assert metrics["num_clients"] == 3 and metrics["num_clients_failed"] == 1
    finally:
        ray_executor.round_timeout = None
        ray_executor._delays = {}
    # The straggler's actor was replaced: the next round has every client again.
    _, metrics = process.next(state, clients)
    assert metrics["num_clients"] == 4 and metrics["num_clients_failed"] == 0


def test_a_worker_killed_mid_round_does_not_lose_the_round(ray_executor):
    clients = _clients()
    process = learning.build_weighted_fed_avg(_cnn_fn, learning.optimizer_fn("sgd", 0.05), seed=7, executor=ray_executor)
    start = process.initialize()
    reference, _ = process.next(start, clients)
    victim = ray_executor.actor_pids()[0]
    ray_executor._delays = {"r0": 4.0}  # r0 runs on actor 0: kill it while r0 sleeps

    def kill():
        time.sleep(1.5)
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        state, metrics = process.next(start, clients)
    finally:
        killer.join()
        ray_executor._delays = {}
    assert victim not in ray_executor.actor_pids()  # Ray restarted the actor
    assert metrics["num_clients"] == 4 and metrics["num_clients_failed"] == 0
    _same(state, reference)


def test_a_model_that_cannot_travel_is_named_when_ray_is_chosen(ray_executor):
    def own_loss_fn():
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
        return learning.from_keras_model(model, lambda y, p: keras.losses.sparse_categorical_crossentropy(y, p))

    with pytest.raises(TypeError, match=r"loss cannot travel to remote workers: .*use the threads executor"):
        learning.build_weighted_fed_avg(own_loss_fn, learning.optimizer_fn("sgd", 0.1), executor=ray_executor)

    def lambda_layer_fn():
        model = keras.Sequential([keras.Input((6,)), keras.layers.Lambda(lambda x: x * 2),
                                  keras.layers.Dense(3, activation="softmax")])
        return learning.from_keras_model(model, "sparse_categorical_crossentropy")

    with pytest.raises(TypeError, match=r"model cannot travel to remote workers: ValueError: Requested the deserialization of a `Lambda` layer"):
        learning.build_weighted_fed_avg(lambda_layer_fn, learning.optimizer_fn("sgd", 0.1), executor=ray_executor)
    spec = learning.model_spec(_cnn_fn())
    rebuilt = spec.build()
    assert [tuple(v.shape) for v in rebuilt.trainable_variables] == [
        tuple(v.shape) for v in _cnn_fn().trainable_variables
    ]
