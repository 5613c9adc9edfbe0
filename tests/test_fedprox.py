"""FedProx (Li et al. 2020) against a numpy transcription of its local step, and as data.

Each client minimises its loss plus mu/2 * ||w - w_server||^2 over the
trainable weights; the reference below is that objective's SGD written out in
numpy (float64): softmax and cross-entropy gradients of one dense layer by
hand, plus mu * (w - w_server), over the client's batches in order, then the
example-weighted mean of the deltas applied with server SGD (learning rate 1).
mu = 0 must be FedAvg bit for bit; the process travels as JSON with its mu, to
a remote carrier (the ClientTask) and to a Flower node (the train config).
"""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from fedr import learning  # noqa: E402
from fedr.datasets import ClientData  # noqa: E402
from fedr.errors import FedValueError  # noqa: E402
from fedr.executors import SerialExecutor  # noqa: E402
from fedr.learning.client_task import ClientTask  # noqa: E402
from fedr.learning.client_update import ClientUpdate  # noqa: E402

FEATURES, CLASSES, ROWS, BATCH = 5, 3, 30, 10
LR, EPOCHS, MU, ROUNDS, SEED = 0.1, 2, 0.5, 3, 11


def _model_fn() -> learning.Model:
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES, activation="softmax")])
    return learning.from_keras_model(model, "sparse_categorical_crossentropy", ["sparse_categorical_accuracy"])


def _clients() -> list[ClientData]:
    rng = np.random.default_rng(5)
    return [
        ClientData(rng.normal(0.0, 1.0, (ROWS, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, ROWS),
                   batch_size=BATCH, client_id=f"c{i}")
        for i in range(3)
    ]


def _process(executor=None, **options) -> learning.FedAvgProcess:
    return learning.build_weighted_fed_avg(
        _model_fn, learning.optimizer_fn("sgd", LR), learning.optimizer_fn("sgd", 1.0), local_epochs=EPOCHS,
        seed=SEED, executor=executor, **options,
    )


def _run(process, clients, rounds=ROUNDS):
    state = process.initialize()
    out = []
    for _ in range(rounds):
        state, metrics = process.next(state, clients)
        out.append((state, metrics))
    return out


# --- an independent numpy transcription of FedProx's rounds ------------------------------


def _np_client(w0, b0, client, mu):
    """One client's local FedProx: SGD on mean cross-entropy + mu/2 ||w - w0||^2, batches in order."""
    w, b = w0.copy(), b0.copy()
    loss_sum = 0.0
    count = 0
    for _ in range(EPOCHS):
        for batch in client.batches():
            x, y = batch["x"].astype(np.float64), batch["y"]
            n = len(y)
            z = x @ w + b
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            loss_sum += -np.log(p[np.arange(n), y]).sum()  # the task loss only: what the process reports
            count += n
            g = p.copy()
            g[np.arange(n), y] -= 1.0
            g /= n  # sparse_categorical_crossentropy averages over the batch
            grad_w = x.T @ g + mu * (w - w0)
            grad_b = g.sum(axis=0) + mu * (b - b0)
            w, b = w - LR * grad_w, b - LR * grad_b
    return w - w0, b - b0, loss_sum, count


def _np_rounds(w, b, clients, mu):
    w, b = w.astype(np.float64), b.astype(np.float64)
    history = []
    for _ in range(ROUNDS):
        deltas, counts, losses, steps = [], [], 0.0, 0
        for client in clients:
            dw, db, loss_sum, count = _np_client(w, b, client, mu)
            deltas.append((dw, db))
            counts.append(client.num_examples)
            losses += loss_sum
            steps += count
        weights = np.asarray(counts, np.float64) / sum(counts)
        # Server SGD with learning rate 1.0: add the example-weighted mean delta.
        w = w + sum(a * d[0] for a, d in zip(weights, deltas, strict=True))
        b = b + sum(a * d[1] for a, d in zip(weights, deltas, strict=True))
        history.append((w.copy(), b.copy(), losses / steps))
    return history


# --- (a) mu = 0 is FedAvg -------------------------------------------------------------------


def test_mu_zero_is_fedavg_bit_for_bit_over_three_seeded_rounds():
    clients = _clients()
    fedavg = _run(_process(), clients)
    zero = _run(_process(proximal_mu=0.0), clients)
    for (s0, m0), (s1, m1) in zip(fedavg, zero, strict=True):
        for a, b in zip(s0.model.trainable, s1.model.trainable, strict=True):
            np.testing.assert_array_equal(a, b)
        assert m0 == m1
    assert _process(proximal_mu=0).proximal_mu == 0.0


# --- (b) mu > 0 is the paper's local objective ---------------------------------------------


@pytest.mark.parametrize("executor", [None, SerialExecutor()], ids=["threads", "serial"])
def test_fedprox_equals_the_numpy_reference_over_three_seeded_rounds(executor):
    clients = _clients()
    process = _process(executor, proximal_mu=MU)
    w0, b0 = process.initialize().model.trainable
    rounds = _run(process, clients)
    expected = _np_rounds(w0, b0, clients, MU)
    for (state, metrics), (w, b, loss) in zip(rounds, expected, strict=True):
        np.testing.assert_allclose(state.model.trainable[0], w, rtol=0, atol=1e-6)
        np.testing.assert_allclose(state.model.trainable[1], b, rtol=0, atol=1e-6)
        # The reported loss is the task loss, without the proximal term.
        assert metrics["loss"] == pytest.approx(loss, rel=1e-6)
    # The proximal term did something: FedAvg's weights are elsewhere.
    plain = _np_rounds(w0, b0, clients, 0.0)[-1]
    assert np.abs(plain[0] - expected[-1][0]).max() > 1e-3
    assert np.abs(rounds[-1][0].model.trainable[0] - plain[0]).max() > 1e-3


def test_the_proximal_term_pulls_towards_the_server_weights():
    clients = _clients()
    w0 = _process().initialize().flat_weights
    moved = [np.linalg.norm(_run(_process(proximal_mu=mu), clients, 1)[0][0].flat_weights - w0)
             for mu in (0.0, 0.5, 5.0)]
    assert moved[0] > moved[1] > moved[2] > 0


# --- (c) bad values --------------------------------------------------------------------------


@pytest.mark.parametrize("value, shown", [(-1, "-1"), (math.nan, "nan"), ("a", "'a'"), (math.inf, "inf"),
                                          (True, "True"), (None, "None")])
def test_a_bad_proximal_mu_is_refused_by_name(value, shown):
    message = f"proximal_mu: expected a number >= 0, got {shown}"
    with pytest.raises(FedValueError) as err:
        _process(proximal_mu=value)
    assert str(err.value) == message
    assert err.value.argument == "proximal_mu"
    with pytest.raises(FedValueError, match="^proximal_mu: expected a number >= 0, got"):
        ClientUpdate(_model_fn(), proximal_mu=value)
    with pytest.raises(FedValueError, match="^proximal_mu: expected a number >= 0, got"):
        ClientTask(value)


def test_proximal_mu_shows_in_repr():
    assert "proximal_mu=0.5," in repr(_process(proximal_mu=MU))
    assert "proximal_mu=0," in repr(_process())


# --- (d) the process as data -----------------------------------------------------------------


def test_the_process_travels_as_json_with_its_mu_and_rebuilds_the_same():
    clients = _clients()
    process = _process(proximal_mu=MU)
    spec = process.to_spec()
    assert spec.proximal_mu == MU
    text = spec.to_json()
    assert json.loads(text)["spec"]["proximal_mu"] == MU
    back = learning.ProcessSpec.from_json(text)
    assert back.proximal_mu == MU
    rebuilt = back.build()
    assert rebuilt.proximal_mu == MU
    for (s0, m0), (s1, m1) in zip(_run(process, clients, 2), _run(rebuilt, clients, 2), strict=True):
        for a, b in zip(s0.model.trainable, s1.model.trainable, strict=True):
            np.testing.assert_array_equal(a, b)
        assert m0 == m1


def test_a_json_spec_without_proximal_mu_reads_as_fedavg_and_unknown_fields_are_still_refused():
    data = json.loads(_process(proximal_mu=MU).to_spec().to_json())
    del data["spec"]["proximal_mu"]
    old = learning.ProcessSpec.from_json(json.dumps(data))
    assert old.proximal_mu == 0.0
    assert old.build().proximal_mu == 0.0
    data["spec"]["proximal_mu"], data["spec"]["momentum"] = MU, 0.9
    with pytest.raises(FedValueError, match=r"unknown fields \['momentum'\]"):
        learning.ProcessSpec.from_json(json.dumps(data))
    del data["spec"]["seed"], data["spec"]["momentum"]
    with pytest.raises(FedValueError, match=r"missing fields \['seed'\]"):
        learning.ProcessSpec.from_json(json.dumps(data))


def test_a_spec_built_without_proximal_mu_is_fedavg():
    spec = _process(proximal_mu=MU).to_spec()
    old = learning.ProcessSpec(*spec[:7])  # as a caller written before FedProx builds it
    assert old.proximal_mu == 0.0
    bad = spec._replace(proximal_mu=-1.0)
    with pytest.raises(FedValueError, match=r"^proximal_mu: expected a number >= 0, got -1\.0$"):
        bad.build()


# --- carriers that rebuild the model elsewhere --------------------------------------------------


class _Elsewhere(SerialExecutor):
    """A remote executor as Ray's is, without Ray: each round's task and job cross a pickle, as to an actor."""

    remote = True

    def __init__(self):
        self.tasks = []

    def stage_carrier(self, spec, optimizer, local_epochs, task):
        executor = self

        class Carrier:
            round_key = None

            def stage(self, *args):
                raise AssertionError("the mean has no stages")

            def train(self, job):
                job = pickle.loads(pickle.dumps(job))
                executor.tasks.append(job.task)
                replica = job.task.replica(job.spec, job.optimizer, job.local_epochs)
                results = []
                for client, seed, view in zip(job.clients, job.seeds, job.views, strict=True):
                    replica.prepare(client, train=True)
                    results.append(job.task.run(replica, job.weights, job.flat, client, seed, job.aggregator, view))
                return results

            def close(self):
                pass

        return Carrier()

    def __repr__(self):
        return "elsewhere()"


def test_a_remote_carrier_gets_mu_with_the_client_task_and_trains_the_same():
    clients = _clients()
    executor = _Elsewhere()
    remote = _run(_process(executor, proximal_mu=MU), clients, 2)
    local = _run(_process(proximal_mu=MU), clients, 2)
    assert [t.proximal_mu for t in executor.tasks] == [MU, MU]
    assert repr(executor.tasks[0]) == "ClientTask(proximal_mu=0.5)"
    for (s0, _), (s1, _) in zip(local, remote, strict=True):
        np.testing.assert_allclose(s1.flat_weights, s0.flat_weights, rtol=0, atol=1e-6)
    assert ClientTask().proximal_mu == 0.0 and repr(ClientTask()) == "ClientTask()"


def test_a_flower_node_trains_with_the_servers_mu(tmp_path):
    pytest.importorskip("flwr")
    from flwr.app import ConfigRecord

    from fedr.flower import FedrStrategy, _node
    from fedr.flower import _messages as wire

    clients = _clients()
    client = clients[0]
    np.savez(tmp_path / "c0.npz", x=client.x, y=client.y)
    node = {"data": str(tmp_path / "c0.npz"), "client-id": "c0", "batch-size": BATCH}
    for mu in (MU, 0.0):
        process = _process(proximal_mu=mu)
        state = process.initialize()
        config = FedrStrategy(process)._config(1, train=True)
        assert config.get("proximal-mu") == (mu or None)  # FedAvg's config is as before FedProx
        content = {wire.WEIGHTS: wire.weights_record(state.model), wire.CONFIG: ConfigRecord(config)}
        out = wire.output_from_reply("c0", _node.train_records(content, node), 1, state.flat_weights.size)
        expected, _ = process.next(state, [client])
        np.testing.assert_allclose(state.flat_weights + out.delta, expected.flat_weights, rtol=0, atol=1e-6)
    bad = {**config, "proximal-mu": -2.0}
    content = {wire.WEIGHTS: wire.weights_record(state.model), wire.CONFIG: ConfigRecord(bad)}
    failed = wire.output_from_reply("c0", _node.train_records(content, node), 1, state.flat_weights.size)
    assert failed.error == "FedValueError: proximal_mu: expected a number >= 0, got -2.0"
