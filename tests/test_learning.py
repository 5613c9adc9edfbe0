"""FedAvg against an independent numpy computation of the same rounds, optimizers, evaluation."""

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from fedr import learning  # noqa: E402
from fedr.datasets import ClientData  # noqa: E402

FEATURES, CLASSES = 6, 3


def _clients(sizes=(9, 5, 12), batch_size=4, seed=0):
    rng = np.random.default_rng(seed)
    return [
        ClientData(
            rng.random((n, FEATURES), dtype=np.float32),
            rng.integers(0, CLASSES, n),
            batch_size=batch_size,
            client_id=f"client_{i}",
        )
        for i, n in enumerate(sizes)
    ]


INIT_W = np.random.default_rng(42).normal(0, 0.5, (FEATURES, CLASSES)).astype(np.float32)
INIT_B = np.array([0.1, -0.2, 0.05], np.float32)


def _model_fn():
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES, activation="softmax")])
    model.set_weights([INIT_W, INIT_B])
    return learning.from_keras_model(
        model,
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )


# --- an independent numpy implementation of the same round -------------------------------


def _np_sgd(lr, momentum=0.0):
    def init(params):
        return {"m": [np.zeros_like(p) for p in params]}

    def step(params, grads, s, t):
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            if momentum:
                s["m"][i] = momentum * s["m"][i] - lr * g
                out.append(p + s["m"][i])
            else:
                out.append(p - lr * g)
        return out

    return init, step


def _np_adam(lr, b1=0.9, b2=0.999, eps=1e-7):
    def init(params):
        return {"m": [np.zeros_like(p) for p in params], "v": [np.zeros_like(p) for p in params]}

    def step(params, grads, s, t):
        alpha = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
        out = []
        for i, (p, g) in enumerate(zip(params, grads)):
            s["m"][i] = b1 * s["m"][i] + (1 - b1) * g
            s["v"][i] = b2 * s["v"][i] + (1 - b2) * g * g
            out.append(p - alpha * s["m"][i] / (np.sqrt(s["v"][i]) + eps))
        return out

    return init, step


def _np_client(params, client, opt):
    init, step = opt
    state, params = init(params), [p.astype(np.float64) for p in params]
    correct = loss_sum = 0.0
    for t, batch in enumerate(client.batches(), start=1):
        x, y = batch["x"].astype(np.float64), batch["y"]
        z = x @ params[0] + params[1]
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        correct += np.sum(p.argmax(axis=1) == y)
        loss_sum += -np.log(p[np.arange(len(y)), y]).sum()
        g = p.copy()
        g[np.arange(len(y)), y] -= 1
        g /= len(y)
        params = step(params, [x.T @ g, g.sum(axis=0)], state, t)
    return params, correct, loss_sum


def _np_rounds(clients, rounds, client_opt, server_opt):
    params = [INIT_W.astype(np.float64), INIT_B.astype(np.float64)]
    s_init, s_step = server_opt
    s_state = s_init(params)
    history = []
    for r in range(1, rounds + 1):
        deltas, counts, correct, losses = [], [], 0.0, 0.0
        for c in clients:
            new, corr, loss = _np_client(params, c, client_opt)
            deltas.append([n - p for n, p in zip(new, params)])
            counts.append(c.num_examples)
            correct += corr
            losses += loss
        w = np.array(counts, float) / sum(counts)
        mean_delta = [sum(wi * d[j] for wi, d in zip(w, deltas)) for j in range(2)]
        params = s_step(params, [-d for d in mean_delta], s_state, r)
        history.append((correct / sum(counts), losses / sum(counts)))
    return params, history


OPTIMIZERS = {
    "fedavg": (("sgd", 0.1, {}), ("sgd", 1.0, {}), _np_sgd(0.1), _np_sgd(1.0)),
    "fedavgm": (("sgd", 0.1, {"momentum": 0.5}), ("sgd", 1.0, {"momentum": 0.9}),
                _np_sgd(0.1, 0.5), _np_sgd(1.0, 0.9)),
    "fedadam": (("adam", 0.05, {}), ("adam", 0.01, {}), _np_adam(0.05), _np_adam(0.01)),
}


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_rounds_equal_numpy_reference(name):
    client_spec, server_spec, np_client_opt, np_server_opt = OPTIMIZERS[name]
    clients = _clients()
    process = learning.build_weighted_fed_avg(
        _model_fn,
        learning.optimizer_fn(client_spec[0], client_spec[1], **client_spec[2]),
        learning.optimizer_fn(server_spec[0], server_spec[1], **server_spec[2]),
    )
    state = process.initialize()
    history = []
    for _ in range(2):
        state, metrics = process.next(state, clients)
        history.append((metrics["sparse_categorical_accuracy"], metrics["loss"]))
        assert metrics["num_examples"] == 26 and metrics["num_clients"] == 3
    expected_params, expected_history = _np_rounds(clients, 2, np_client_opt, np_server_opt)
    np.testing.assert_allclose(state.model_weights[0], expected_params[0], atol=1e-5)
    np.testing.assert_allclose(state.model_weights[1], expected_params[1], atol=1e-5)
    np.testing.assert_allclose(history, expected_history, rtol=1e-5)
    assert state.round_num == 2


def test_reference_structure_and_result_indexing():
    clients = _clients()
    nested = [c.batches() for c in clients]
    process = learning.build_federated_averaging_process(_model_fn, learning.optimizer_fn("sgd", 0.1))
    state = process.initialize()
    result = process.next(state, nested)
    same = process.next(state, clients)
    np.testing.assert_array_equal(result[0].flat_weights, same.state.flat_weights)
    assert result[1] == same.metrics
    # The state is a value: next() did not change the one passed in.
    np.testing.assert_array_equal(state.model_weights[0], INIT_W)


@pytest.mark.parametrize("workers", [1, 2])
def test_two_runs_are_identical(workers):
    runs = []
    for _ in range(2):
        process = learning.build_weighted_fed_avg(_model_fn, learning.optimizer_fn("sgd", 0.1), workers=workers)
        state = process.initialize()
        for _ in range(3):
            state, metrics = process.next(state, _clients())
        runs.append((state.flat_weights.copy(), metrics))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]


def test_client_subset_and_sampling():
    clients = _clients()
    chosen = learning.sample_clients(clients, 0.67, seed=3)
    assert len(chosen) == 2
    assert [c.client_id for c in chosen] == [c.client_id for c in learning.sample_clients(clients, 0.67, seed=3)]
    process = learning.build_weighted_fed_avg(_model_fn, learning.optimizer_fn("sgd", 0.1))
    _, metrics = process.next(process.initialize(), chosen)
    assert metrics["num_clients"] == 2
    assert metrics["num_examples"] == sum(c.num_examples for c in chosen)
    with pytest.raises(ValueError, match=r"fraction: expected a number in \(0, 1\], got 1.5"):
        learning.sample_clients(clients, 1.5)


def test_local_epochs_count_examples_twice():
    process = learning.build_weighted_fed_avg(_model_fn, learning.optimizer_fn("sgd", 0.1), local_epochs=2)
    _, metrics = process.next(process.initialize(), _clients())
    assert metrics["num_examples"] == 52


def test_federated_evaluation_equals_numpy():
    clients = _clients(seed=7)
    evaluation = learning.build_fed_eval(_model_fn)
    metrics = evaluation([INIT_W, INIT_B], clients)
    x = np.concatenate([c.x for c in clients]).astype(np.float64)
    y = np.concatenate([c.y for c in clients])
    z = x @ INIT_W + INIT_B
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    assert metrics["sparse_categorical_accuracy"] == pytest.approx(np.mean(p.argmax(1) == y))
    assert metrics["loss"] == pytest.approx(-np.mean(np.log(p[np.arange(len(y)), y])), rel=1e-5)
    assert metrics["num_examples"] == 26


def test_bad_inputs():
    process = learning.build_weighted_fed_avg(_model_fn, learning.optimizer_fn("sgd", 0.1))
    state = process.initialize()
    wrong = ClientData(np.zeros((4, 5), np.float32), np.zeros(4, int), client_id="client_9")
    with pytest.raises(ValueError, match=r"client 'client_9': x has feature shape \(5,\) but the model expects \(6,\)"):
        process.next(state, [wrong])
    with pytest.raises(TypeError, match="state: expected a ServerState, got dict"):
        process.next({}, _clients())
    with pytest.raises(TypeError, match="model_fn: expected a function returning"):
        learning.build_weighted_fed_avg(lambda: keras.Sequential(), learning.optimizer_fn("sgd", 0.1))
    with pytest.raises(ValueError, match="local_epochs: expected a positive integer, got 0"):
        learning.build_weighted_fed_avg(_model_fn, learning.optimizer_fn("sgd", 0.1), local_epochs=0)
    with pytest.raises(ValueError, match="name: expected one of"):
        learning.optimizer_fn("rmsprop", 0.1)
    with pytest.raises(ValueError, match="learning_rate: expected a positive number, got -1"):
        learning.optimizer_fn("sgd", -1)
    with pytest.raises(TypeError, match="keras_model: expected a keras.Model, got str"):
        learning.from_keras_model("model", loss="sparse_categorical_crossentropy")


def test_non_finite_client_update_is_dropped_and_named():
    clients = _clients()
    # Linear regression: features of 1e18 make the first step's weights huge and the second's Inf/NaN.
    diverging = ClientData(np.full((8, FEATURES), 1e18, np.float32), np.ones(8, int), batch_size=4, client_id="wild")

    def regression_fn():
        model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1, kernel_initializer="ones")])
        return learning.from_keras_model(model, loss="mean_squared_error")

    process = learning.build_weighted_fed_avg(regression_fn, learning.optimizer_fn("sgd", 0.1))
    state = process.initialize()
    without, metrics_without = process.next(state, clients)
    with pytest.warns(learning.ClientsDroppedWarning, match=r"round 1: 1 client\(s\) left out .*: wild"):
        with_bad, metrics = process.next(state, [*clients, diverging])
    np.testing.assert_array_equal(with_bad.flat_weights, without.flat_weights)
    assert metrics == {**metrics_without, "num_clients_dropped": 1}
    assert metrics["num_clients"] == 3 and metrics_without["num_clients_dropped"] == 0
    with pytest.raises(ValueError, match=r"round 1: every client's update was non-finite .*wild.*lower the client learning rate"):
        process.next(state, [diverging])


def test_loss_and_metric_given_by_name_match_objects():
    def named_fn():
        model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES, activation="softmax")])
        model.set_weights([INIT_W, INIT_B])
        return learning.from_keras_model(
            model, loss="sparse_categorical_crossentropy", metrics=["sparse_categorical_accuracy"]
        )

    by_name = learning.build_weighted_fed_avg(named_fn, learning.optimizer_fn("sgd", 0.1))
    by_object = learning.build_weighted_fed_avg(_model_fn, learning.optimizer_fn("sgd", 0.1))
    state_a, metrics_a = by_name.next(by_name.initialize(), _clients())
    state_b, metrics_b = by_object.next(by_object.initialize(), _clients())
    np.testing.assert_allclose(state_a.flat_weights, state_b.flat_weights, rtol=1e-6)
    assert metrics_a["sparse_categorical_accuracy"] == metrics_b["sparse_categorical_accuracy"]
    assert metrics_a["loss"] == pytest.approx(metrics_b["loss"], rel=1e-6)
