"""Large populations: 10,000 clients held once (views of one array), 1,000 of them sampled per round.

Issue 9, "Large populations": client data for 10,000+ clients is held once,
so memory grows with the data, not with the number of ClientData objects.
Timings and peak memory of whole runs are in bench/population.py.
"""

import tracemalloc

import numpy as np
import pytest

from fedr.datasets import make_clients

N_EXAMPLES, SIDE, CLASSES = 60_000, 8, 10


def _root(array):
    """The array that owns the memory behind ``array``."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (N_EXAMPLES, SIDE, SIDE), dtype=np.uint8)
    y = rng.integers(0, CLASSES, N_EXAMPLES)
    return x, y


# Dirichlet splits of 6 examples a client leave some client empty: 1,000 clients there.
@pytest.mark.parametrize(("method", "n"), [("sequential", 10_000), ("iid", 10_000), ("dirichlet", 1_000)])
def test_ten_thousand_clients_are_views_of_one_read_only_array(images, method, n):
    x, y = images
    clients = make_clients(x, y, n, method, batch_size=6, seed=1, alpha=1.0)
    assert len(clients) == n

    base = _root(clients[0].x)
    # Integer pixels stay uint8 (the model sees x / 255, ClientData.scale).
    assert base.size == N_EXAMPLES * SIDE * SIDE and base.dtype == np.uint8
    assert clients[0].scale == 255
    assert base.flags.c_contiguous and not base.flags.writeable
    assert all(_root(c.x) is base for c in clients)
    assert np.shares_memory(clients[0].x, base) and np.shares_memory(clients[-1].x, base)
    assert not any(np.shares_memory(c.x, x) for c in clients[:10])
    # In client order, back to back: client i's rows follow client i - 1's.
    starts = [(c.x.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // (SIDE * SIDE)
              for c in clients]
    sizes = [c.num_examples for c in clients]
    assert starts == np.cumsum([0, *sizes[:-1]]).tolist()
    assert sum(sizes) == N_EXAMPLES
    assert all(not c.x.flags.writeable and c.x.flags.c_contiguous for c in clients)
    # The caller's arrays are left as they were.
    assert x.flags.writeable and y.flags.writeable


@pytest.mark.parametrize("method", ["sequential", "iid"])
def test_per_client_overhead_is_small_next_to_the_data(images, method):
    x, y = images
    data_bytes = N_EXAMPLES * SIDE * SIDE  # uint8 pixels
    held = {}
    for n in (100, 10_000):
        tracemalloc.start()
        try:
            clients = make_clients(x, y, n, method, batch_size=6, seed=1)
            held[n], _ = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        del clients
    # The features once, plus a few hundred bytes per client (the ClientData,
    # its views, labels, offsets and id): measured about 550 bytes.
    per_client = (held[10_000] - data_bytes) / 10_000
    assert per_client < 1500, f"{per_client:.0f} bytes per client"
    assert held[100] >= data_bytes
    assert held[10_000] - held[100] < 9_900 * 1500


def test_a_round_over_1000_sampled_of_10000_clients(images):
    keras = pytest.importorskip("keras")
    from fedr import learning

    x, y = images
    clients = make_clients(x, y, 10_000, "iid", batch_size=6, seed=2)

    def model_fn():
        model = keras.Sequential([
            keras.Input((SIDE * SIDE,)),
            keras.layers.Dense(CLASSES, activation="softmax", kernel_initializer="zeros"),
        ])
        return learning.from_keras_model(model, "sparse_categorical_crossentropy", ["sparse_categorical_accuracy"])

    process = learning.build_weighted_fed_avg(model_fn, learning.optimizer_fn("sgd", 0.02), seed=3, workers=2)
    state = process.initialize()
    ids = []
    for r in (1, 2):
        sample = learning.sample_clients(clients, 0.1, seed=4, round_num=r)
        assert len(sample) == 1000
        ids.append([c.client_id for c in sample])
        state, metrics = process.next(state, sample)
        assert metrics["num_clients"] == 1000
        assert metrics["num_examples"] == 6000
        assert metrics["num_clients_failed"] == 0 and metrics["num_clients_dropped"] == 0
        assert np.isfinite(metrics["loss"])
    assert state.round_num == 2
    assert ids[0] != ids[1]
    assert ids[0] == [c.client_id for c in learning.sample_clients(clients, 0.1, seed=4, round_num=1)]
    assert any(np.any(w != 0) for w in state.model.trainable)


# ------------------------------------------------------------- small clients in groups


def _tiny_model_fn():
    import keras

    from fedr import learning

    def model_fn():
        model = keras.Sequential([
            keras.Input((16,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(3, activation="softmax"),
        ])
        return learning.from_keras_model(model, loss="sparse_categorical_crossentropy",
                                         metrics=["sparse_categorical_accuracy"])

    return model_fn


def _mixed_clients():
    from fedr.datasets import ClientData

    rng = np.random.default_rng(5)
    sizes = [5, 7, 3, 1200, 6, 6, 2, 9, 4, 1500, 5, 8]
    return [
        ClientData(rng.normal(size=(n, 16)).astype(np.float32), rng.integers(0, 3, n), batch_size=4,
                   client_id=f"c{i}")
        for i, n in enumerate(sizes)
    ]


def test_small_clients_train_in_groups_with_the_same_numbers_as_one_call_each(monkeypatch):
    from fedr import learning
    from fedr.learning import _local as process_module  # the local carrier owns the grouping

    clients = _mixed_clients()
    jobs = process_module._group_jobs(clients, local_epochs=1, workers=2)
    # The two large clients alone; the ten small ones in four contiguous groups.
    assert jobs == [[0, 1, 2], [3], [4, 5, 6], [7, 8], [9], [10, 11]]
    assert process_module._group_jobs(clients, local_epochs=1000, workers=2) == [[i] for i in range(12)]

    def run(workers):
        process = learning.build_weighted_fed_avg(_tiny_model_fn(), learning.optimizer_fn("sgd", 0.1),
                                                  seed=4, workers=workers)
        state = process.initialize()
        for _ in range(2):
            state, metrics = process.next(state, clients)
        return state, metrics

    grouped, grouped_metrics = run(2)
    monkeypatch.setattr(process_module, "SMALL_CLIENT_ROWS", 0)  # every client its own call
    single, single_metrics = run(2)
    serial, _ = run(1)
    for a, b, c in zip(grouped.model.trainable + grouped.model.non_trainable,
                       single.model.trainable + single.model.non_trainable,
                       serial.model.trainable + serial.model.non_trainable, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert grouped_metrics == single_metrics
    assert grouped_metrics["num_clients"] == 12 and grouped_metrics["num_examples"] == 2755


def test_a_client_failing_inside_a_group_is_named_and_the_others_kept():
    from fedr import aggregators, learning
    from fedr.learning import ClientsFailedWarning

    class Picky(aggregators.Mean):
        def client_step(self, state, delta, *, client_id="", num_examples=0, context=None):
            if client_id == "c5":
                raise RuntimeError("refused c5's update")
            return delta

    clients = [c for c in _mixed_clients() if c.num_examples < 100]
    process = learning.build_weighted_fed_avg(_tiny_model_fn(), learning.optimizer_fn("sgd", 0.1), seed=4,
                                              workers=2, aggregator=Picky())
    with pytest.warns(ClientsFailedWarning, match=r"^round 1: 1 client\(s\) failed and were left out: "
                                                  r"c5: RuntimeError: refused c5's update$"):
        _, metrics = process.next(process.initialize(), clients)
    assert (metrics["num_clients"], metrics["num_clients_failed"]) == (9, 1)
    assert metrics["num_examples"] == 55 - 6
