"""FedAdagrad, FedYogi and FedAdam (Reddi et al. 2021) on the server, against a numpy transcription of the paper.

The reference below is Algorithm 2 of "Adaptive Federated Optimization"
written out in numpy from the paper (float64), fed with the aggregate delta
each round really had (recorded where the process hands it to the server
optimizer); the process's weights and its m and v must equal it within 1e-6
over 3 seeded rounds. Threads and Ray give the same numbers bit for bit, a
checkpoint resumes bit for bit, and one run on Flower (2 nodes, FedProx
clients as well) gives the in-process weights.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from fedr import executors, learning  # noqa: E402
from fedr.datasets import ClientData  # noqa: E402
from fedr.errors import FedValueError  # noqa: E402

VARIANTS = ("fedadagrad", "fedyogi", "fedadam")


def _model_fn() -> learning.Model:
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    return learning.from_keras_model(model, "sparse_categorical_crossentropy", ["sparse_categorical_accuracy"])


def _clients(n: int = 4) -> list[ClientData]:
    rng = np.random.default_rng(3)
    return [ClientData(rng.normal(0.0, 1.0, (30, 5)).astype(np.float32), rng.integers(0, 3, 30), batch_size=10,
                       client_id=f"c{i}") for i in range(n)]


def _process(name: str, executor=None, proximal_mu=0.0, **options) -> learning.FedAvgProcess:
    return learning.build_weighted_fed_avg(
        _model_fn, learning.optimizer_fn("sgd", 0.1), learning.optimizer_fn(name, 0.05, **options), seed=7,
        executor=executor, proximal_mu=proximal_mu)


def _paper_step(name, x, m, v, delta, lr, beta_1=0.9, beta_2=0.99, tau=1e-3):
    """One server step of Algorithm 2 (Reddi et al. 2021), float64."""
    m = beta_1 * m + (1 - beta_1) * delta
    if name == "fedadagrad":
        v = v + delta ** 2
    elif name == "fedyogi":
        v = v - (1 - beta_2) * delta ** 2 * np.sign(v - delta ** 2)
    else:
        v = beta_2 * v + (1 - beta_2) * delta ** 2
    return x + lr * m / (np.sqrt(v) + tau), m, v


def _named(state, suffix):
    (value,) = [v for n, v in state.optimizer_state if n.endswith(suffix)]
    return value


@pytest.mark.parametrize("name", VARIANTS)
def test_the_server_step_is_the_papers_over_three_seeded_rounds(name):
    options = {"tau": 1e-2, "beta_1": 0.8} | ({} if name == "fedadagrad" else {"beta_2": 0.95})
    process = _process(name, **options)
    deltas = []
    apply = process.server.apply

    def recording(state, weights, update):
        deltas.append(np.array(update, np.float64))
        return apply(state, weights, update)

    process.server.apply = recording
    state = process.initialize()
    x = state.flat_weights.astype(np.float64)
    m = np.zeros_like(x)
    v = np.full_like(x, options["tau"] ** 2)  # v_{-1} = tau^2
    np.testing.assert_array_equal(_named(state, "_v"), np.float32(options["tau"] ** 2))
    clients = _clients()
    for r in range(3):
        state, metrics = process.next(state, clients)
        x, m, v = _paper_step(name, x, m, v, deltas[r], 0.05, **options)
        np.testing.assert_allclose(state.flat_weights, x, rtol=0, atol=1e-6)
        np.testing.assert_allclose(_named(state, "_m"), m, rtol=0, atol=1e-6)
        np.testing.assert_allclose(_named(state, "_v"), v, rtol=1e-5, atol=1e-9)
        assert np.isfinite(metrics["loss"])
    assert len(deltas) == 3 and np.abs(deltas[2]).max() > 1e-4  # the rounds really moved
    # Not Keras's Adam (bias correction, epsilon inside): the paper's optimizer is a different one.
    if name == "fedadam":
        keras_adam = learning.build_weighted_fed_avg(
            _model_fn, learning.optimizer_fn("sgd", 0.1), learning.optimizer_fn("adam", 0.05), seed=7)
        other = keras_adam.initialize()
        for _ in range(3):
            other, _ = keras_adam.next(other, clients)
        assert np.abs(other.flat_weights - state.flat_weights).max() > 1e-3


def test_a_checkpoint_resumes_bit_for_bit(tmp_path):
    process, clients = _process("fedyogi"), _clients()
    state = process.initialize()
    for _ in range(2):
        state, _ = process.next(state, clients)
    learning.save_state(state, tmp_path / "state.npz")
    straight, _ = process.next(state, clients)
    resumed = learning.load_state(tmp_path / "state.npz", _process("fedyogi"))
    np.testing.assert_array_equal(_named(resumed, "_v"), _named(state, "_v"))
    again, _ = _process("fedyogi").next(resumed, clients)
    np.testing.assert_array_equal(again.flat_weights, straight.flat_weights)
    np.testing.assert_array_equal(_named(again, "_m"), _named(straight, "_m"))


def test_threads_and_ray_give_the_same_numbers_bit_for_bit_with_fedprox_clients_too():
    ray = pytest.importorskip("ray", reason="ray is installed by make setup")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    clients = _clients()
    results = []
    executor = executors.ray(num_cpus=2)
    try:
        for chosen in (executors.threads(workers=2), executor):
            process = _process("fedadam", executor=chosen, proximal_mu=0.3)
            state = process.initialize()
            for _ in range(3):
                state, _ = process.next(state, clients)
            results.append(state)
    finally:
        executor.close()
    np.testing.assert_array_equal(results[0].flat_weights, results[1].flat_weights)
    for (n0, v0), (n1, v1) in zip(results[0].optimizer_state, results[1].optimizer_state, strict=True):
        assert n0 == n1
        np.testing.assert_array_equal(v0, v1)


def test_the_process_travels_as_json_with_its_server_optimizer():
    process = _process("fedadagrad", tau=0.1)
    text = process.to_spec().to_json()
    server = json.loads(text)["spec"]["server_optimizer"]
    assert (server["registered_name"], server["config"]["variant"], server["config"]["tau"]) == (
        "fedr>FedOpt", "adagrad", 0.1)
    rebuilt = learning.ProcessSpec.from_json(text).build()
    clients = _clients()
    a, b = process.initialize(), rebuilt.initialize()
    for _ in range(2):
        a, _ = process.next(a, clients)
        b, _ = rebuilt.next(b, clients)
    np.testing.assert_array_equal(a.flat_weights, b.flat_weights)


def test_wrong_options_and_a_server_optimizer_on_the_clients_are_named():
    with pytest.raises(FedValueError, match=r"^beta_2: unknown option of 'fedadagrad'; options are beta_1, tau$"):
        learning.optimizer_fn("fedadagrad", 0.1, beta_2=0.9)
    with pytest.raises(FedValueError, match=r"^tau: expected a positive number, got 0$"):
        learning.optimizer_fn("fedyogi", 0.1, tau=0)
    with pytest.raises(FedValueError, match=r"^beta_1: expected a number in \[0, 1\), got 1$"):
        learning.optimizer_fn("fedadam", 0.1, beta_1=1)
    with pytest.raises(FedValueError, match=r"^client_optimizer_fn: fedadam is a server optimizer"):
        learning.build_weighted_fed_avg(_model_fn, learning.optimizer_fn("fedadam", 0.1))


def test_on_flower_two_nodes_give_the_in_process_weights_with_fedprox_clients_too(tmp_path, monkeypatch):
    """FedYogi on the ServerApp and FedProx (mu 0.1) on the nodes: the in-process numbers."""
    pytest.importorskip("flwr", reason="flwr[simulation]==1.42.0 is installed by make setup")
    from flower_nodes import fashion_clients, fashion_model, run_on_nodes

    clients = fashion_clients(2)

    def build():
        return learning.build_weighted_fed_avg(fashion_model, learning.optimizer_fn("sgd", 0.02),
                                               learning.optimizer_fn("fedyogi", 0.01), seed=1, proximal_mu=0.1)

    expected = build().initialize()
    reference = build()
    for _ in range(2):
        expected, _ = reference.next(expected, clients)
    result = run_on_nodes(build, tmp_path, monkeypatch, 2, 2)
    np.testing.assert_allclose(result.state.flat_weights, expected.flat_weights, rtol=0, atol=1e-6)
    np.testing.assert_allclose(_named(result.state, "_v"), _named(expected, "_v"), rtol=1e-6, atol=1e-12)
    plain = build().initialize()  # the proximal term reached the nodes: without it the weights differ
    without = learning.build_weighted_fed_avg(fashion_model, learning.optimizer_fn("sgd", 0.02),
                                              learning.optimizer_fn("fedyogi", 0.01), seed=1)
    for _ in range(2):
        plain, _ = without.next(plain, clients)
    assert np.abs(plain.flat_weights - expected.flat_weights).max() > 1e-4
