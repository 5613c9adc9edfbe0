"""The round protocol on Flower: client-side DP by default, the trusted-server option, secure aggregation.

Fast: the strategy runs against a fake grid whose nodes are fedr's own node
handlers called as functions (each with its own ``Context.state``, as a
SuperNode keeps it between the messages of a run); the real federation
with client-side DP is ``test_flower.py::test_a_federation_over_tls``.
"""

from __future__ import annotations

import json
import pickle
import types
import warnings

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr[simulation]==1.42.0 is installed by make setup")

import keras  # noqa: E402
from flwr.app import RecordDict  # noqa: E402

from fedr import executors, learning, privacy  # noqa: E402
from fedr.datasets import ClientData  # noqa: E402
from fedr.errors import FedTypeError, FedValueError  # noqa: E402
from fedr.flower import FedrStrategy, _codec, _node, load_node_data  # noqa: E402
from fedr.flower import _messages as wire  # noqa: E402
from fedr.flower._carrier import STAGE_MESSAGE  # noqa: E402
from fedr.flower._strategy import TRUSTED_SERVER_EVENT, check_sent  # noqa: E402
from fedr.protocol import ClientFailure, ClientOutput  # noqa: E402

NAMES = ("a", "b", "c")


def _model_fn() -> learning.Model:
    model = keras.Sequential([keras.Input(shape=(6,)), keras.layers.Dense(3, activation="softmax")])
    return learning.from_keras_model(model, loss="sparse_categorical_crossentropy",
                                     metrics=[keras.metrics.SparseCategoricalAccuracy()])


def _process(aggregator, executor=None) -> learning.FedAvgProcess:
    return learning.build_weighted_fed_avg(
        _model_fn, learning.optimizer_fn("sgd", 0.5), learning.optimizer_fn("sgd", 1.0), aggregator=aggregator,
        seed=11, executor=executor,
    )


@pytest.fixture(autouse=True)
def _server_identity(monkeypatch):
    """Flower's Message needs the run's identity, which a real ServerApp process has."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


@pytest.fixture
def sites(tmp_path):
    """Three nodes' data files (40, 60, 80 rows); the node configs by node id."""
    rng = np.random.default_rng(4)
    configs = {}
    for node, (name, rows) in enumerate(zip(NAMES, (40, 60, 80), strict=True), 1):
        x = rng.normal(0, 3, (rows, 6)).astype(np.float32)
        np.savez(tmp_path / f"{name}.npz", x=x, y=rng.integers(0, 3, rows))
        configs[node] = {"data": str(tmp_path / f"{name}.npz"), "batch-size": 20}
    return configs


class _Grid:
    """The SuperLink's side for a strategy: every node runs fedr's handlers with its own Context.state.

    ``kill(node, after=(round, stage))`` makes a node stop answering once it
    has answered that stage of that round (a node killed there).
    """

    def __init__(self, configs: dict[int, dict]) -> None:
        self.configs = configs
        self.states = {node: RecordDict() for node in configs}
        self.sent: list = []  # every message the server sent
        self.dead: set[int] = set()
        self.kills: dict[int, tuple[int, str]] = {}
        self.replies_by_id: dict = {}

    def get_node_ids(self):
        return list(self.configs)

    def push_messages(self, messages):
        """Flower's Grid API, as fedr.flower._carrier.exchange uses it: replies are ready at once, by message id."""
        ids = []
        for message in messages:
            key = f"m{len(self.replies_by_id)}-{len(ids)}-{id(message)}"
            for reply in self.send_and_receive([message]):
                reply.metadata.reply_to_message_id = key
                self.replies_by_id[key] = reply
            ids.append(key)
        return ids

    def pull_messages(self, message_ids):
        return [self.replies_by_id.pop(i) for i in list(message_ids) if i in self.replies_by_id]

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for message in messages:
            self.sent.append(message)
            node, kind = message.metadata.dst_node_id, message.metadata.message_type
            if node in self.dead:
                continue
            config, state = self.configs[node], self.states[node]
            if kind == "query":
                content = _node.describe_records(config)
            elif kind == STAGE_MESSAGE:
                content = _node.stage_records(message.content, config, state)
                record = message.content[wire.STAGE]
                if self.kills.get(node) == (record["round"], record["stage"]):
                    self.dead.add(node)
            else:
                content = _node.train_records(message.content, config, state)
            replies.append(types.SimpleNamespace(metadata=types.SimpleNamespace(src_node_id=node),
                                                 content=content, has_error=lambda: False))
        return replies


def _run(strategy: FedrStrategy, grid: _Grid, rounds: int) -> None:
    strategy._timeout = 1.0  # a stage waits this long for a killed node (start(timeout=) sets it on a real run)
    for server_round in range(1, rounds + 1):
        messages = strategy.configure_train(server_round, None, None, grid)
        strategy.aggregate_train(server_round, grid.send_and_receive(messages) if messages else [])


def _clients(configs) -> list[ClientData]:
    return [load_node_data(configs[node]) for node in sorted(configs)]


def _in_process(aggregator, clients, rounds, executor=None, replace=None):
    process = _process(aggregator, executor)
    state = process.initialize()
    rows = []
    for r in range(1, rounds + 1):
        cohort = [replace.get((r, c.client_id), c) for c in clients] if replace else clients
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, metrics = process.next(state, cohort)
        rows.append(metrics)
    return state, rows


def _dp(adaptive: bool):
    with pytest.warns(privacy.ReproducibleNoiseWarning):
        if adaptive:
            return privacy.gaussian_adaptive(0.5, 3, initial_clip=0.05, clipped_count_stddev=1.0, noise_seed=3)
        return privacy.gaussian_fixed(0.5, 3, 0.05, noise_seed=3)


# ---------------------------------------------------------------- DP: clipped on the node by default


@pytest.mark.parametrize("adaptive", [False, True], ids=["fixed", "adaptive"])
def test_dp_clips_on_the_nodes_and_equals_in_process(sites, adaptive):
    aggregator = _dp(adaptive)
    strategy = FedrStrategy(_process(aggregator), min_nodes=3, wait_timeout=5)
    received = []
    strategy.on_receive = lambda client_id, sent: received.append((strategy.state.round_num + 1, client_id, sent))
    grid = _Grid(sites)
    _run(strategy, grid, 2)

    expected, rows = _in_process(aggregator, _clients(sites), 2)
    np.testing.assert_allclose(strategy.state.flat_weights, expected.flat_weights, rtol=0, atol=1e-6)
    assert [h["clip"] for h in strategy.history] == pytest.approx([r["clip"] for r in rows], abs=1e-12)
    # Every vector the server received was clipped on the node: none above its round's clip, and no norm sent.
    clips = {h["round"]: h["clip"] for h in strategy.history}
    assert [(r, c) for r, c, _ in received] == [(1, "a"), (1, "b"), (1, "c"), (2, "a"), (2, "b"), (2, "c")]
    for round_num, _, sent in received:
        assert isinstance(sent, privacy.ClippedUpdate) and np.isnan(sent.norm)
        assert np.linalg.norm(sent.vector.astype(np.float64)) <= clips[round_num] * (1 + 1e-6)
        assert sent.unclipped is (False if adaptive else None)  # adaptive clipping's bit only where it is used
    assert all("events" not in h for h in strategy.history)
    # The nodes got the aggregator (without the tests' noise seed) and their view: the clip, as data.
    train = [m for m in grid.sent if m.metadata.message_type == "train"]
    config = train[0].content[wire.CONFIG]
    assert json.loads(config["aggregator"])["params"]["noise_seed"] is None
    assert _codec.from_text(config["view"]) == privacy.ClipView(0.05, None)


def test_trusted_server_clips_on_the_server_gives_the_same_numbers_and_says_so(sites):
    default = FedrStrategy(_process(_dp(False)), min_nodes=3, wait_timeout=5)
    _run(default, _Grid(sites), 2)
    trusted = FedrStrategy(_process(_dp(False)), min_nodes=3, wait_timeout=5, trusted_server=True)
    received = []
    trusted.on_receive = lambda client_id, sent: received.append(sent)
    grid = _Grid(sites)
    _run(trusted, grid, 2)

    np.testing.assert_array_equal(trusted.state.flat_weights, default.state.flat_weights)
    assert [h["events"] for h in trusted.history] == [TRUSTED_SERVER_EVENT] * 2
    assert TRUSTED_SERVER_EVENT.startswith("trusted server: the nodes sent their raw updates")
    # The server received the raw updates, above the clip, and the nodes were sent no aggregator.
    assert all(isinstance(s, np.ndarray) for s in received)
    assert min(np.linalg.norm(s) for s in received) > 0.05
    assert not any("aggregator" in m.content[wire.CONFIG] for m in grid.sent if m.metadata.message_type == "train")


def test_a_node_that_sends_an_unclipped_raw_or_misnumbered_update_is_refused():
    view = privacy.ClipView(0.5, None)
    big = ClientOutput("m", privacy.ClippedUpdate(np.full(4, 1.0, np.float32), float("nan"), None),
                       np.zeros(0, np.float32), 5, np.zeros(0), 1.0, True)
    assert check_sent(big, "clipped/array", view, 4) == ClientFailure(
        "m", "FedValueError: node 4 sent an update of norm 2, above this round's clip 0.5; its update is refused")
    raw = big._replace(delta=np.full(4, 0.1, np.float32))
    assert check_sent(raw, "clipped/array", view, 4) == ClientFailure(
        "m", "FedValueError: node 4 sent an update of kind 'array', expected 'clipped/array' (the aggregator's "
             "client step); its update is refused")
    fits = big._replace(delta=privacy.ClippedUpdate(np.full(4, 0.25, np.float32), float("nan"), None))
    assert check_sent(fits, "clipped/array", view, 4) is fits
    # Under secure aggregation a node answers as its own position (index) only.
    masked = big._replace(delta=privacy.MaskedInput(1, np.zeros(4, np.uint64)))
    secure_view = types.SimpleNamespace(index=2)
    assert check_sent(masked, "masked", secure_view, 4) == ClientFailure(
        "m", "FedValueError: node 4 sent a masked update as client 1, but it is client 2 of this round; its update "
             "is refused")
    assert check_sent(masked, "masked", types.SimpleNamespace(index=1), 4) is masked


def test_what_cannot_run_on_the_nodes_is_refused_by_name():
    with pytest.raises(FedValueError, match=r"^trusted_server: secure_mean\(.*\) is secure aggregation, whose keys"):
        FedrStrategy(_process(privacy.secure_mean()), trusted_server=True)
    with pytest.raises(FedTypeError, match=r"^trusted_server: expected True or False, got 'yes'$"):
        FedrStrategy(_process(None), trusted_server="yes")

    class Halved(privacy.GaussianDP):
        pass

    custom = Halved(0.0, 3, clip=1.0, adaptive=False)
    with pytest.raises(FedTypeError, match=r"^aggregator: its client step must run on the nodes, but aggregator: "
                                           r".*cannot travel as data.*or trusted_server = True"):
        FedrStrategy(_process(custom))
    FedrStrategy(_process(custom), trusted_server=True)  # the server may run it when trusted


# ---------------------------------------------------------------- secure aggregation as message stages


def test_secure_mean_on_flower_equals_threads_bit_for_bit_and_keeps_keys_on_the_nodes(sites):
    aggregator = privacy.secure_mean(clip_range=2.0)
    strategy = FedrStrategy(_process(aggregator), min_nodes=3, wait_timeout=5)
    grid = _Grid(sites)
    secrets_seen, contexts = [], []
    original = _node._keep

    def spy(state, agg, stage, round_num, session):  # what the nodes keep, and what the server holds then
        original(state, agg, stage, round_num, session)
        if stage == "share":
            secrets_seen.append(session.export()["cipher_key"])
            secrets_seen.append(session.export()["mask_key"])
        if stage in ("share", "unmask"):
            contexts.append(pickle.dumps((strategy._round[0], strategy._round[2].sessions)))

    _node._keep = spy
    try:
        _run(strategy, grid, 3)
    finally:
        _node._keep = original
    expected, rows = _in_process(aggregator, _clients(sites), 3, executors.threads(2))
    np.testing.assert_array_equal(strategy.state.flat_weights, expected.flat_weights)
    assert [h["secure_clients"] for h in strategy.history] == [3.0, 3.0, 3.0]
    assert strategy.history[-1]["secure_num_examples"] == rows[-1]["secure_num_examples"] == 180
    stages = [(m.content[wire.STAGE]["round"], m.content[wire.STAGE]["stage"]) for m in grid.sent
              if m.metadata.message_type == STAGE_MESSAGE]
    assert stages == [(r, s) for r in (1, 2, 3) for s in ("advertise",) * 3 + ("share",) * 3 + ("unmask",) * 3]
    # No private key of a node is in the server's round state (pickled while the round is open).
    assert len(secrets_seen) == 18 and len(contexts) == 18
    assert not any(key in blob for key in secrets_seen for blob in contexts)
    # After the last stage each node forgot its session (its secrets).
    assert all(_node.SESSION not in state for state in grid.states.values())


def test_adaptive_dp_over_a_secure_sum_on_flower_sends_only_masked_vectors_and_equals_threads(sites):
    with pytest.warns(privacy.ReproducibleNoiseWarning):
        aggregator = privacy.gaussian_adaptive(0.5, 3, initial_clip=0.05, clipped_count_stddev=1.0, noise_seed=3,
                                               inner=privacy.secure_sum(neighbors=2))
    strategy = FedrStrategy(_process(aggregator), min_nodes=3, wait_timeout=5)
    received = []
    strategy.on_receive = lambda client_id, sent: received.append(sent)
    _run(strategy, _Grid(sites), 2)
    expected, rows = _in_process(aggregator, _clients(sites), 2, executors.threads(2))
    np.testing.assert_array_equal(strategy.state.flat_weights, expected.flat_weights)
    assert [h["clip"] for h in strategy.history] == [r["clip"] for r in rows]
    # Each node sent a masked vector (the update and its clip bit inside), no norm, no bit in the clear.
    assert len(received) == 6
    for sent in received:
        assert isinstance(sent.vector, privacy.MaskedInput) and sent.vector.masked.dtype == np.uint32
        assert np.isnan(sent.norm) and sent.unclipped is None
        assert sent.vector.masked.size == strategy.state.flat_weights.size + 1


def test_a_node_killed_after_key_sharing_is_recovered_from_the_survivors_shares(sites):
    aggregator = privacy.secure_mean(clip_range=2.0, threshold=2)
    strategy = FedrStrategy(_process(aggregator), min_nodes=3, wait_timeout=5)
    grid = _Grid(sites)
    grid.kills[3] = (2, "share")  # node 3 ("c") dies right after it shared its keys in round 2
    _run(strategy, grid, 2)

    clients = _clients(sites)
    c = clients[2]
    # Data that makes its update non-finite: dropped after the stages, as a node that died there.
    nan = ClientData(np.full_like(c.x, 3e38), c.y, batch_size=20, client_id="c")
    expected, _ = _in_process(aggregator, clients, 2, executors.threads(2), replace={(2, "c"): nan})
    np.testing.assert_array_equal(strategy.state.flat_weights, expected.flat_weights)
    row = strategy.history[-1]
    assert row["round_failed"] == 0 and (row["secure_clients"], row["secure_dropped"]) == (2.0, 1.0)
    assert "c: NodeLost: no reply from node 3 within the round's timeout" in row["events"]


def test_a_node_refuses_stages_out_of_order_and_forgets_its_secrets(sites):
    aggregator = privacy.secure_mean()
    text = json.dumps({"name": "secure_mean", "params": {}})
    state = RecordDict()

    def stage(name, round_num, payload):
        record = {"stage": name, "round": round_num, "aggregator": text, "payload": _codec.to_text(payload)}
        return _node.stage_records({wire.STAGE: record}, sites[1], state)

    from fedr.privacy import AdvertiseRequest, RoundConfig

    config = RoundConfig.build(3, 2, 64)
    refused = stage("share", 1, ())[wire.FAILURE]["error"]
    assert refused == ("FedValueError: stage: the server sent stage 'share' of round 1 but this node expected no "
                       "stage (it has no session); the node refuses stages out of order")
    advert = _codec.from_text(stage("advertise", 1, AdvertiseRequest(1, config))[wire.STAGE]["reply"])
    assert isinstance(advert, privacy.AdvertiseKeys) and advert.index == 1
    assert state[_node.SESSION]["next"] == "share"
    again = stage("unmask", 1, privacy.UnmaskRequest((1, 2)))[wire.FAILURE]["error"]
    assert again.endswith("this node expected 'share' of round 1; the node refuses stages out of order")
    assert _node.SESSION not in state  # a refused stage ends the node's part of the round
    assert repr(aggregator).startswith("secure_mean(")
