"""SCAFFOLD (Karimireddy et al. 2020, option II) against a numpy transcription of Algorithm 1, and its client state.

The reference below writes SCAFFOLD out in numpy (float64) for one dense
softmax layer: each local step y <- y - lr * (g(y) + c - c_i) over the
client's batches in order, then c_i+ = c_i - c + (x - y) / (K lr); the server
adds the example-weighted mean model delta (server SGD 1.0) and moves c by
the sum of the control deltas over N. Each client's c_i lives in the store
beside its data (``process.client_states``), never in the server's state; it
survives checkpoints and a killed Ray actor, and a failed round leaves it as
it was.
"""

from __future__ import annotations

import json
import os
import signal
import sys

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from fedr import aggregators, executors, learning, privacy  # noqa: E402
from fedr.datasets import ClientData  # noqa: E402
from fedr.errors import FedValueError  # noqa: E402
from fedr.executors import SerialExecutor  # noqa: E402
from fedr.learning import scaffold  # noqa: E402
from fedr.learning.state import StateFileError  # noqa: E402

FEATURES, CLASSES, ROWS, BATCH = 5, 3, 30, 10
LR, EPOCHS, ROUNDS, SEED = 0.1, 2, 3, 11


def _model_fn() -> learning.Model:
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES, activation="softmax")])
    return learning.from_keras_model(model, "sparse_categorical_crossentropy", ["sparse_categorical_accuracy"])


def _clients(n: int = 3) -> list[ClientData]:
    rng = np.random.default_rng(5)
    out = []
    for i in range(n):
        # Skewed labels (client i mostly class i) so that the clients drift apart and c matters.
        y = np.where(rng.random(ROWS) < 0.8, i % CLASSES, rng.integers(0, CLASSES, ROWS))
        x = rng.normal(0.0, 1.0, (ROWS, FEATURES)).astype(np.float32) + y[:, None].astype(np.float32) * 0.3
        out.append(ClientData(x, y, batch_size=BATCH, client_id=f"c{i}"))
    return out


def _process(executor=None, **options) -> learning.FedAvgProcess:
    return learning.build_scaffold(
        _model_fn, learning.optimizer_fn("sgd", LR), learning.optimizer_fn("sgd", 1.0), local_epochs=EPOCHS,
        seed=SEED, executor=executor, **options,
    )


def _control(state) -> np.ndarray:
    return dict(state.client_work)[scaffold.CONTROL]


def _own(process, client_id) -> np.ndarray:
    return process.client_states.get(client_id)[scaffold.CONTROL]


# --- an independent numpy transcription of SCAFFOLD ------------------------------------------


def _np_client(w0, b0, client, cw, cb, ciw, cib):
    """Option II's local work: K corrected SGD steps, then the new c_i. Returns (dw, db, new ciw, new cib, loss, n)."""
    w, b = w0.copy(), b0.copy()
    loss_sum, count, steps = 0.0, 0, 0
    for _ in range(EPOCHS):
        for batch in client.batches():
            x, y = batch["x"].astype(np.float64), batch["y"]
            n = len(y)
            z = x @ w + b
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            loss_sum += -np.log(p[np.arange(n), y]).sum()
            count += n
            g = p.copy()
            g[np.arange(n), y] -= 1.0
            g /= n
            w = w - LR * (x.T @ g + cw - ciw)
            b = b - LR * (g.sum(axis=0) + cb - cib)
            steps += 1
    new_ciw = ciw - cw + (w0 - w) / (steps * LR)
    new_cib = cib - cb + (b0 - b) / (steps * LR)
    return w - w0, b - b0, new_ciw, new_cib, loss_sum, count


def _np_rounds(w, b, clients, schedule, num_clients=None):
    """SCAFFOLD's rounds; ``schedule[r]`` lists the positions of round r's clients."""
    w, b = w.astype(np.float64), b.astype(np.float64)
    cw, cb = np.zeros_like(w), np.zeros_like(b)
    own = {c.client_id: (np.zeros_like(w), np.zeros_like(b)) for c in clients}
    history = []
    for picked in schedule:
        chosen = [clients[i] for i in picked]
        outs = [_np_client(w, b, c, cw, cb, *own[c.client_id]) for c in chosen]
        counts = np.asarray([c.num_examples for c in chosen], np.float64)
        a = counts / counts.sum()
        n = num_clients or len(chosen)
        dcw = sum(o[2] - own[c.client_id][0] for o, c in zip(outs, chosen, strict=True)) / n
        dcb = sum(o[3] - own[c.client_id][1] for o, c in zip(outs, chosen, strict=True)) / n
        w = w + sum(ai * o[0] for ai, o in zip(a, outs, strict=True))
        b = b + sum(ai * o[1] for ai, o in zip(a, outs, strict=True))
        cw, cb = cw + dcw, cb + dcb
        for o, c in zip(outs, chosen, strict=True):
            own[c.client_id] = (o[2], o[3])
        loss = sum(o[4] for o in outs) / sum(o[5] for o in outs)
        history.append((w.copy(), b.copy(), cw.copy(), cb.copy(), {k: (v[0].copy(), v[1].copy()) for k, v in own.items()},
                        loss))
    return history


def _flat(w, b) -> np.ndarray:
    return np.concatenate([w.ravel(), b.ravel()])


def _check_against_reference(process, clients, schedule, num_clients=None):
    state = process.initialize()
    w0, b0 = state.model.trainable
    expected = _np_rounds(w0, b0, clients, schedule, num_clients)
    for picked, (w, b, cw, cb, own, loss) in zip(schedule, expected, strict=True):
        state, metrics = process.next(state, [clients[i] for i in picked])
        np.testing.assert_allclose(state.model.trainable[0], w, rtol=0, atol=1e-6)
        np.testing.assert_allclose(state.model.trainable[1], b, rtol=0, atol=1e-6)
        np.testing.assert_allclose(_control(state), _flat(cw, cb), rtol=0, atol=1e-6)
        for cid, (ciw, cib) in own.items():
            if cid in process.client_states:
                np.testing.assert_allclose(_own(process, cid), _flat(ciw, cib), rtol=0, atol=1e-6)
            else:  # never picked yet: the reference's c_i is still zero
                assert not ciw.any() and not cib.any()
        assert metrics["loss"] == pytest.approx(loss, rel=1e-6)
    return state, expected


@pytest.mark.parametrize("executor", [None, SerialExecutor()], ids=["threads", "serial"])
def test_scaffold_equals_the_numpy_reference_over_three_seeded_rounds(executor):
    clients = _clients()
    process = _process(executor)
    state, expected = _check_against_reference(process, clients, [[0, 1, 2]] * ROUNDS)
    assert process.client_states.ids() == ["c0", "c1", "c2"] and process.client_states.round_num == ROUNDS
    # The correction did something: FedAvg from the same start ends elsewhere.
    fedavg = learning.build_weighted_fed_avg(_model_fn, learning.optimizer_fn("sgd", LR), local_epochs=EPOCHS,
                                             seed=SEED)
    plain = fedavg.initialize()
    for _ in range(ROUNDS):
        plain, _ = fedavg.next(plain, clients)
    assert np.abs(plain.flat_weights - state.flat_weights).max() > 1e-3
    assert np.linalg.norm(_control(state)) > 1e-2


def test_with_sampled_clients_c_moves_by_the_sum_over_num_clients_and_new_clients_start_at_zero():
    clients = _clients(4)
    schedule = [[0, 1], [1, 2], [2, 3]]  # c2 and c3 appear only later: their c_i starts at zero
    process = _process(num_clients=4)
    _check_against_reference(process, clients, schedule, num_clients=4)
    assert process.client_states.ids() == ["c0", "c1", "c2", "c3"]


def test_the_clients_own_state_never_enters_the_server_state_or_what_the_server_reads():
    clients = _clients()
    process = _process()
    state, _ = process.next(process.initialize(), clients)
    assert [name for name, _ in state.client_work] == ["scaffold/control"]
    assert all("scaffold" not in name for name, _ in state.aggregator_state + state.optimizer_state)
    seen = []
    finish = process.finish_round

    def spy(plan, results, **kw):
        seen.extend(results)
        return finish(plan, results, **kw)

    process.finish_round = spy
    process.next(state, clients)
    assert len(seen) == 3 and all(r.client_state is None for r in seen)
    assert all(set(r.parts) == {"control_delta"} for r in seen)


def test_a_failed_round_leaves_the_clients_states_as_they_were():
    clients = _clients()
    # Finite data so large that training diverges: the client's update is not finite and it is dropped.
    bad = ClientData(np.full((ROWS, FEATURES), 3e38, np.float32), clients[2].y, batch_size=BATCH, client_id="c2")
    process = _process(min_clients=3)
    state, _ = process.next(process.initialize(), clients)
    before = {cid: _own(process, cid).copy() for cid in process.client_states.ids()}
    with pytest.raises(FedValueError, match=r"only 2 of 3 clients .* fewer than min_clients = 3; left out: c2 \(non-finite"):
        process.next(state, [clients[0], clients[1], bad])
    assert process.client_states.round_num == 1
    for cid, value in before.items():
        np.testing.assert_array_equal(_own(process, cid), value)


def test_client_states_save_and_load_and_a_fit_checkpoint_resumes_bit_for_bit(tmp_path):
    clients = _clients()
    straight = learning.fit(_process(), clients, rounds=4)
    first = _process()
    learning.fit(first, clients, rounds=2, checkpoint_dir=tmp_path / "run")
    stored = learning.load_client_states(tmp_path / "run" / "clients.fedr")
    assert stored.round_num == 2 and stored.ids() == ["c0", "c1", "c2"]
    resumed_process = _process()  # a new session: its store is empty until the checkpoint fills it
    resumed = learning.fit(resumed_process, clients, rounds=4, checkpoint_dir=tmp_path / "run", resume=True)
    np.testing.assert_array_equal(resumed.state.flat_weights, straight.state.flat_weights)
    np.testing.assert_array_equal(_control(resumed.state), _control(straight.state))
    assert resumed_process.client_states.round_num == 4
    # save/load by hand, and a file that is not one
    path = resumed_process.client_states.save(tmp_path / "clients.fedr")
    back = learning.load_client_states(path)
    for cid in ("c0", "c1", "c2"):
        np.testing.assert_array_equal(back.get(cid)[scaffold.CONTROL], _own(resumed_process, cid))
    whole = open(path, "rb").read()
    (tmp_path / "junk.fedr").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(StateFileError, match="junk.fedr' is not a readable fedr client-states file: truncated"):
        learning.load_client_states(tmp_path / "junk.fedr")
    learning.save_state(resumed.state, tmp_path / "state.fedr")
    with pytest.raises(StateFileError, match="not a fedr client-states header"):
        learning.load_client_states(tmp_path / "state.fedr")


def test_a_fresh_fit_starts_every_client_from_zero_again():
    clients = _clients()
    process = _process()
    one = learning.fit(process, clients, rounds=2)
    two = learning.fit(process, clients, rounds=2)
    np.testing.assert_array_equal(one.state.flat_weights, two.state.flat_weights)
    assert len(process.client_states) == 3
    process.initialize()  # a new run by hand: the clients' store starts empty too
    assert len(process.client_states) == 0 and process.client_states.round_num == 0


def test_threads_and_ray_bit_for_bit_and_a_killed_actor_loses_no_client_state():
    ray = pytest.importorskip("ray", reason="ray is installed by make setup")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    clients = _clients()
    local = _process(executors.threads(workers=2))
    state = local.initialize()
    for _ in range(ROUNDS):
        state, _ = local.next(state, clients)
    executor = executors.ray(num_cpus=2, num_workers=2)
    try:
        remote = _process(executor)
        other = remote.initialize()
        for r in range(ROUNDS):
            other, _ = remote.next(other, clients)
            if r == 0:
                os.kill(executor.actor_pids()[0], signal.SIGKILL)  # Ray restarts it; the c_i are not on it
    finally:
        executor.close()
    np.testing.assert_array_equal(other.flat_weights, state.flat_weights)
    np.testing.assert_array_equal(_control(other), _control(state))
    for cid in ("c0", "c1", "c2"):
        np.testing.assert_array_equal(_own(remote, cid), _own(local, cid))


def test_the_process_travels_as_json_with_scaffold_and_rebuilds_the_same():
    clients = _clients()
    process = _process(num_clients=5)
    text = process.to_spec().to_json()
    spec = json.loads(text)["spec"]
    assert (spec["scaffold"], spec["num_clients"]) == (True, 5)
    rebuilt = learning.ProcessSpec.from_json(text).build()
    assert rebuilt.scaffold and rebuilt.num_clients == 5
    a, b = process.initialize(), rebuilt.initialize()
    for _ in range(2):
        a, _ = process.next(a, clients)
        b, _ = rebuilt.next(b, clients)
    np.testing.assert_array_equal(a.flat_weights, b.flat_weights)
    data = json.loads(learning.build_weighted_fed_avg(_model_fn, learning.optimizer_fn("sgd", LR)).to_spec().to_json())
    del data["spec"]["scaffold"], data["spec"]["num_clients"]  # a spec from before SCAFFOLD: FedAvg
    assert not learning.ProcessSpec.from_json(json.dumps(data)).build().scaffold


def test_wrong_optimizers_counts_aggregators_and_states_are_named():
    with pytest.raises(FedValueError, match=r"^client_optimizer_fn: SCAFFOLD's local steps are plain SGD .* Adam"):
        learning.build_scaffold(_model_fn, learning.optimizer_fn("adam", 0.01))
    with pytest.raises(FedValueError, match=r"^client_optimizer_fn: .* without momentum, got momentum = 0.9"):
        learning.build_scaffold(_model_fn, learning.optimizer_fn("sgd", 0.1, momentum=0.9))
    for bad in (0, -1, 2.5, "3", True):
        with pytest.raises(FedValueError, match=r"^num_clients: expected None or a positive integer"):
            _process(num_clients=bad)
    for agg in (privacy.gaussian_fixed(1.0, 3, 1.0), privacy.secure_sum()):
        with pytest.raises(FedValueError, match=r"^aggregator: SCAFFOLD's clients send their control deltas"):
            _process(aggregator=agg)
    with pytest.raises(FedValueError, match=r"^num_clients: the round has 3 clients, more than .* num_clients = 2"):
        process = _process(num_clients=2)
        process.next(process.initialize(), _clients())
    fedavg_state = learning.build_weighted_fed_avg(_model_fn, learning.optimizer_fn("sgd", LR)).initialize()
    with pytest.raises(FedValueError, match=r"^state: its client-work state has \[\] but this process has SCAFFOLD's"):
        _process().next(fedavg_state, _clients())
    with pytest.raises(FedValueError, match=r"^num_clients: is SCAFFOLD's N"):
        learning.FedAvgProcess(_model_fn, learning.optimizer_fn("sgd", LR), learning.optimizer_fn("sgd", 1.0),
                               num_clients=3)
    assert "SCAFFOLDProcess(" in repr(_process()) and "num_clients=None)" in repr(_process())


def test_robust_aggregators_compose_with_scaffold():
    clients = _clients(5)
    process = _process(aggregator=aggregators.median())
    state = process.initialize()
    for _ in range(2):
        state, metrics = process.next(state, clients)
    assert metrics["num_clients"] == 5 and np.isfinite(state.flat_weights).all()
    assert len(process.client_states) == 5


# --- Flower: the node keeps its client's c_i in its Context.state --------------------------------


def test_a_flower_node_keeps_its_clients_control_variate_in_its_context_state(tmp_path):
    pytest.importorskip("flwr", reason="flwr[simulation]==1.42.0 is installed by make setup")
    from flwr.app import ConfigRecord, RecordDict

    from fedr.flower import FedrStrategy, _node
    from fedr.flower import _messages as wire

    clients = _clients()
    client = clients[0]
    np.savez(tmp_path / "c0.npz", x=client.x, y=client.y)
    node = {"data": str(tmp_path / "c0.npz"), "client-id": "c0", "batch-size": BATCH}
    process, reference = _process(), _process()
    state = expected = process.initialize()
    context_state = RecordDict()
    for round_num in (1, 2):
        strategy = FedrStrategy(process)
        config = strategy._config(round_num, train=True)
        assert config["scaffold"] is True
        seed = process.begin_round(state, ["c0"]).seeds[0]
        config["seed-words"] = [int(w) for w in process.seed_words(seed)]
        content = {wire.WEIGHTS: wire.weights_record(state.model), wire.CONFIG: ConfigRecord(config),
                   wire.CONTROL: wire.control_record(_control(state))}
        reply = _node.train_records(content, node, context_state)
        out = wire.output_from_reply("c0", reply, 1, state.flat_weights.size)
        assert out.client_state is None and set(out.parts) == {"control_delta"}
        # what leaves the node: the update, the statistics and the control delta; c_i stays in the Context.state
        assert set(reply[wire.UPDATE].keys()) == {"delta", "non_trainable", "part:control_delta"}
        plan = process.begin_round(state, ["c0"])
        state, _ = process.finish_round(plan, [out])
        expected, _ = reference.next(expected, [client])
        np.testing.assert_allclose(state.flat_weights, expected.flat_weights, rtol=0, atol=1e-6)
        np.testing.assert_allclose(_control(state), _control(expected), rtol=0, atol=1e-6)
        kept = context_state[_node.CLIENT_STATE]["scaffold/control"].numpy()
        np.testing.assert_allclose(kept, _own(reference, "c0"), rtol=0, atol=1e-6)
    assert len(process.client_states) == 0  # the server side never saw a c_i
    # a train message of a SCAFFOLD run without c is the node's named failure
    del content[wire.CONTROL]
    failed = wire.output_from_reply("c0", _node.train_records(content, node, context_state), 1,
                                    state.flat_weights.size)
    assert failed.error.startswith("KeyError") and "control" in failed.error


def test_on_flower_two_nodes_give_the_in_process_weights_and_control_variate(tmp_path, monkeypatch):
    pytest.importorskip("flwr", reason="flwr[simulation]==1.42.0 is installed by make setup")
    from flower_nodes import fashion_clients, fashion_model, run_on_nodes

    def build():
        return learning.build_scaffold(fashion_model, learning.optimizer_fn("sgd", 0.02), seed=1)

    reference = build()
    expected = reference.initialize()
    for _ in range(2):
        expected, _ = reference.next(expected, fashion_clients(2))
    result = run_on_nodes(build, tmp_path, monkeypatch, 2, 2)
    np.testing.assert_allclose(result.state.flat_weights, expected.flat_weights, rtol=0, atol=1e-6)
    np.testing.assert_allclose(_control(result.state), _control(expected), rtol=0, atol=1e-6)
    assert np.linalg.norm(_control(expected)) > 1e-3
