"""fedr on Flower against a hostile run submitter, node or network (issue 17, items 5-7; issue 18, node config).

Fast: the ServerApp's decoding and path checks, the strategy and the node's
handlers are called as functions (a fake grid answers for the nodes); one
test starts a real SuperLink with SuperNode authentication on 127.0.0.1.
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import subprocess
import time
import types
import warnings

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr[simulation]==1.42.0 is installed by make setup")

import keras  # noqa: E402

from fedr import aggregators, learning, privacy  # noqa: E402
from fedr.errors import FedTypeError, FedValueError  # noqa: E402
from fedr.flower import FedrStrategy, _node, check_tls, load_node_data  # noqa: E402
from fedr.flower import _messages as wire  # noqa: E402
from fedr.flower import apps  # noqa: E402
from fedr.learning.client_update import ClientOutput  # noqa: E402


def _process(aggregator=None) -> learning.FedAvgProcess:
    def model_fn() -> learning.Model:
        model = keras.Sequential([keras.Input(shape=(4,)), keras.layers.Dense(2, kernel_initializer="zeros")])
        return learning.from_keras_model(model, loss=keras.losses.MeanSquaredError())

    return learning.build_weighted_fed_avg(
        model_fn, learning.optimizer_fn("sgd", 0.1), learning.optimizer_fn("sgd", 1.0), aggregator=aggregator,
        seed=5,
    )


# ------------------------------------------------------------- item 5: the run config is data


class _Exploit:
    """A pickle that creates a file when it is loaded (what today's decode_process ran)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickled_run_config(path: str) -> str:
    return base64.b64encode(pickle.dumps({"spec": _Exploit(path), "state": None})).decode("ascii")


def test_a_pickled_run_config_is_refused_unread(tmp_path):
    # The payload is real: loaded as the old ServerApp loaded it, it creates its file.
    pickle.loads(base64.b64decode(_pickled_run_config(str(tmp_path / "control"))))  # noqa: S301
    assert (tmp_path / "control").exists()

    target = tmp_path / "pwned"
    refused = r"^run config `fedr-process`: not a fedr process in JSON, so the run is refused \(fedr never unpickles"
    with pytest.raises(FedValueError, match=refused):
        apps.decode_process(_pickled_run_config(str(target)))
    context = types.SimpleNamespace(run_config={"fedr-process": _pickled_run_config(str(target))})
    with pytest.raises(FedValueError, match=refused):
        apps._main(None, context)  # the ServerApp's main refuses the run before any round
    assert not target.exists()


def test_the_process_travels_as_json_and_rebuilds_every_builtin_aggregator():
    for aggregator in [aggregators.mean(weighted=False), aggregators.median(), aggregators.trimmed_mean(0.2),
                       aggregators.krum(1, 2),
                       privacy.gaussian_fixed(0.5, 3, 0.7, population_size=100, target_delta=1e-5, max_epsilon=30),
                       privacy.gaussian_adaptive(0.5, 4, initial_clip=0.2, clipped_count_stddev=2.0)]:
        process = _process(aggregator)
        text = apps.encode_process(process, process.initialize())
        assert text.startswith('{"format":"fedr-flower-process","spec":"{')
        rebuilt, state = apps.decode_process(text)
        assert repr(rebuilt.aggregator) == repr(aggregator)
        assert rebuilt.seed == 5 and state.round_num == 0
        np.testing.assert_array_equal(state.flat_weights, process.initialize().flat_weights)
    spec = _process(privacy.gaussian_fixed(0.5, 3, 0.7)).to_spec()
    assert learning.ProcessSpec.from_json(spec.to_json()).aggregator.initial_clip == 0.7


def test_the_seed_stays_on_the_superlinks_machine_not_in_the_run_config(tmp_path):
    # Flower gives the run config to every node: the seed goes to out-dir instead.
    process = _process()
    text = apps.encode_process(process, process.initialize(), seed_in_secret=True)
    payload = json.loads(text)
    assert payload["seed-in-secret"] is True
    assert json.loads(payload["spec"])["spec"]["seed"] is None
    with pytest.raises(FedValueError, match=r"its seed is kept on the SuperLink's machine, but .* holds no readable "
                                            r"seed"):
        apps.decode_process(text, str(tmp_path))
    path = apps.write_secret(str(tmp_path), 5)
    assert path == str(tmp_path / apps.SECRET_FILE)
    assert os.stat(path).st_mode & 0o777 == 0o600
    rebuilt, state = apps.decode_process(text, str(tmp_path))
    assert rebuilt.seed == 5
    np.testing.assert_array_equal(state.flat_weights, process.initialize().flat_weights)
    # A forged secret (not a seed) is refused, not used.
    (tmp_path / apps.SECRET_FILE).write_text('{"format": "fedr-flower-process", "seed": "__import__"}')
    with pytest.raises(FedValueError, match="holds no readable seed"):
        apps.decode_process(text, str(tmp_path))


def test_an_unknown_or_custom_aggregator_cannot_travel():
    from fedr.learning._spec_json import aggregator_from_data, aggregator_to_data

    with pytest.raises(FedValueError, match=r"^aggregator: unknown aggregator 'os.system'; expected one of fedr's "
                                            r"built-in aggregators \(mean, sum, median, trimmed_mean, krum, "
                                            r"geometric_median, bulyan, norm_bounded, zeroing, "
                                            r"gaussian_fixed, gaussian_adaptive, distributed_dp, secure_sum, secure_mean\)$"):
        aggregator_from_data({"name": "os.system", "params": {}})
    with pytest.raises(FedValueError, match=r"^aggregator.inner: unknown aggregator 'builtins.eval'"):
        aggregator_from_data({"name": "gaussian_fixed", "params": {
            "noise_multiplier": 1.0, "clients_per_round": 2, "clip": 1.0, "inner": {"name": "builtins.eval", "params": {}}}})
    with pytest.raises(FedValueError, match=r"^aggregator: krum\(\) has no parameter 'evil'"):
        aggregator_from_data({"name": "krum", "params": {"num_byzantine": 1, "evil": 2}})

    class Louder(aggregators.Mean):
        pass

    with pytest.raises(FedTypeError, match=r"^aggregator: mean\(weighted=True\) \(Louder\) cannot travel as data"):
        aggregator_to_data(Louder())


def test_out_dir_and_resume_stay_inside_the_owners_folder(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    root.mkdir()
    (root / "escape").symlink_to("/etc")
    outside = r"is outside the folder this SuperLink allows run configs to use"
    for bad in ("/etc", "../../x", "escape/passwd", str(tmp_path / "elsewhere")):
        with pytest.raises(FedValueError, match=rf"^run config `out-dir`: '{bad}' {outside} \({root}\)"):
            apps.confined_path(bad, "run config `out-dir`", str(root))
    assert apps.confined_path("site/a", "out-dir", str(root)) == str(root / "site" / "a")
    assert apps.confined_path(str(root / "b"), "out-dir", str(root)) == str(root / "b")

    # The ServerApp reads the folder from FEDR_FLOWER_ROOT and checks before it decodes the process.
    monkeypatch.setenv(apps.ROOT_ENV, str(root))
    for key in ("out-dir", "resume"):
        context = types.SimpleNamespace(run_config={key: "../../x", "fedr-process": "not even read"})
        with pytest.raises(FedValueError, match=rf"^run config `{key}`: '../../x' {outside}"):
            apps._main(None, context)
    assert not (tmp_path / "x").exists()
    # flower.run says so too, naming its argument, before it starts anything.
    from fedr import flower

    with pytest.raises(FedValueError, match=rf"^out_dir: '/etc' {outside}"):
        flower.run(_process(), 1, "127.0.0.1:9", out_dir="/etc", progress=None)


# --------------------------------------------------------- item 6: what a node reports is checked


class _FakeGrid:
    """The SuperLink's side for a strategy: node i answers queries with its node config, training with ``train[i]``."""

    def __init__(self, configs: dict[int, dict], train: dict[int, dict]) -> None:
        self.configs, self.train = configs, train
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
            node = message.metadata.dst_node_id
            content = (_node.describe_records(self.configs[node]) if message.metadata.message_type == "query"
                       else self.train[node])
            replies.append(types.SimpleNamespace(metadata=types.SimpleNamespace(src_node_id=node),
                                                 content=content, has_error=lambda: False))
        return replies


def _reply(client_id: str, value: float, count: int, *, finite: bool = True) -> dict:
    delta = np.full(10, value, np.float32)
    return wire.output_reply(ClientOutput(client_id, delta, np.zeros(0, np.float32), count, np.zeros(0), 1.0, finite))


@pytest.fixture(autouse=True)
def _server_identity(monkeypatch):
    """Flower's Message needs the run's identity, which a real ServerApp process has."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


def _round(tmp_path, aggregator, attacker: dict) -> tuple[FedrStrategy, np.ndarray, list]:
    """One round with honest nodes 1-3 (deltas 0.01, 0.02, 0.03; 10, 20, 30 examples) and ``attacker`` as node 4."""
    configs, train = {}, {}
    for node, (name, value, count) in enumerate([("a", 0.01, 10), ("b", 0.02, 20), ("c", 0.03, 30), ("m", 0, 5)], 1):
        np.savez(tmp_path / f"{name}.npz", x=np.zeros((count, 4), np.float32), y=np.zeros((count, 2), np.float32))
        configs[node] = {"data": str(tmp_path / f"{name}.npz")}
        train[node] = _reply(name, value, count)
    train[4] = attacker
    strategy = FedrStrategy(_process(aggregator), min_nodes=4, wait_timeout=5)
    start = strategy.state.flat_weights.copy()
    grid = _FakeGrid(configs, train)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        messages = strategy.configure_train(1, None, None, grid)
        strategy.aggregate_train(1, grid.send_and_receive(messages))
    return strategy, strategy.state.flat_weights - start, caught


@pytest.mark.parametrize(("aggregator", "expected"), [
    (aggregators.mean(), (10 * 0.01 + 20 * 0.02 + 30 * 0.03) / 60), (aggregators.median(), 0.02)])
def test_a_nan_update_flagged_finite_is_dropped_not_fatal(tmp_path, aggregator, expected):
    nan = _reply("m", np.nan, 5, finite=True)
    assert nan[wire.METRICS]["finite"] == 1  # the node claims its update is finite
    strategy, moved, _ = _round(tmp_path, aggregator, nan)
    row = strategy.history[-1]
    assert row["round_failed"] == 0 and strategy.state.round_num == 1
    assert (row["num_clients"], row["num_clients_dropped"]) == (3, 1)
    assert "m" in row["events"] and "not finite" in row["events"]
    np.testing.assert_allclose(moved, expected, rtol=0, atol=1e-7)


def test_a_node_reporting_more_examples_than_it_declared_is_refused(tmp_path):
    strategy, moved, _ = _round(tmp_path, aggregators.mean(), _reply("m", -3.0, 10**12))
    row = strategy.history[-1]
    assert row["round_failed"] == 0 and (row["num_clients"], row["num_clients_failed"]) == (3, 1)
    assert ("m: FedValueError: node 4 reported 1000000000000 examples, more than the 5 it declared when it joined; "
            "its update is refused") in row["events"]
    np.testing.assert_allclose(moved, (10 * 0.01 + 20 * 0.02 + 30 * 0.03) / 60, rtol=0, atol=1e-7)
    assert strategy._declared == {1: 10, 2: 20, 3: 30, 4: 5}


# ------------------------------------------------------------- item 7: no TLS, no remote link


def test_nodes_and_runs_refuse_a_remote_superlink_without_tls(tmp_path):
    from fedr import flower

    np.savez(tmp_path / "a.npz", x=np.zeros((4, 4), np.float32), y=np.zeros(4))
    refused = r"^root_certificates: connecting to the SuperLink at {} without TLS is refused \(it is not a loopback"
    with pytest.raises(FedValueError, match=refused.format("10.1.2.3:9092")):
        flower.supernode(str(tmp_path / "a.npz"), "10.1.2.3:9092")
    with pytest.raises(FedValueError, match=refused.format("server.example.org:9093")):
        flower.run(_process(), 1, "server.example.org:9093", progress=None)
    for address in ("127.0.0.1:9092", "127.8.9.1:1", "localhost:9092", "[::1]:9092"):
        check_tls(address, None)  # loopback may go without TLS
    check_tls("10.1.2.3:9092", "ca.pem")


# ------------------------------------------------------------- issue 18: node config


def test_node_config_batch_size_and_client_id_are_checked_by_key(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((6, 2), np.float32), y=np.zeros(6))
    data = str(tmp_path / "a.npz")
    for bad in (0, -3, 2.5, "ten", True):
        with pytest.raises(FedValueError, match=rf"^node config `batch-size`: expected a positive integer, got {bad!r}$"):
            load_node_data({"data": data, "batch-size": bad})
    assert load_node_data({"data": data, "batch-size": "4"}).offsets.tolist() == [0, 4, 6]
    assert load_node_data({"data": data}).offsets.tolist() == [0, 6]
    with pytest.raises(FedTypeError, match=r"^node config `client-id`: expected a text .* got list \['a', 'b'\]$"):
        load_node_data({"data": data, "client-id": ["a", "b"]})
    failure = _node.describe_records({"data": data, "client-id": ["a", "b"]})[wire.FAILURE]
    assert failure["error"].startswith("FedTypeError: node config `client-id`: expected a text")


# ------------------------------------------------------- SuperNode authentication on a real SuperLink


def test_supernode_authentication_admits_only_registered_nodes(tmp_path, monkeypatch):
    from fedr import flower
    from fedr.flower._launch import _bin, _env

    monkeypatch.setenv("HOME", str(tmp_path))
    np.savez(tmp_path / "a.npz", x=np.zeros((4, 4), np.float32), y=np.zeros(4))
    certs = flower.make_certificates(str(tmp_path / "certs"))
    with pytest.raises(FedValueError, match=r"^node_auth: SuperNode authentication needs TLS"):
        flower.superlink(node_auth=True)
    registered = flower.make_node_key(str(tmp_path / "keys"), "registered")
    stranger = flower.make_node_key(str(tmp_path / "keys"), "stranger")
    assert oct(os.stat(registered["private"]).st_mode & 0o777) == "0o600"
    started = []
    try:
        link = flower.superlink(certificates=certs, node_auth=True, root=str(tmp_path / "runs"))
        started.append(link)
        assert "--enable-supernode-auth" in link.args
        home = str(tmp_path / "flwr")
        os.makedirs(home)
        with open(os.path.join(home, "config.toml"), "w") as handle:
            handle.write(f'[superlink]\ndefault = "fedr"\n\n[superlink.fedr]\naddress = "{link.address}"\n'
                         f'root-certificates = "{certs["ca"]}"\n')
        done = subprocess.run([_bin("flwr"), "supernode", "register", registered["public"], "fedr"],
                              env=_env(home), cwd=home, capture_output=True, text=True, timeout=120)
        found = re.search(r"SuperNode (\d+) registered successfully", done.stdout)
        assert done.returncode == 0 and found, done.stdout + done.stderr
        for name, key in (("registered", registered["private"]), ("stranger", stranger["private"]), ("keyless", None)):
            started.append(flower.supernode(str(tmp_path / "a.npz"), link, client_id=name,
                                            root_certificates=certs["ca"], private_key=key))
        deadline = time.monotonic() + 60
        while link.log_text().count("Activated node_id") < 1 and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(5)  # give the two others time to be refused
        assert link.log_text().count("Activated node_id") == 1
        listed = subprocess.run([_bin("flwr"), "supernode", "list", "fedr", "--format", "json"],
                                env=_env(home), cwd=home, capture_output=True, text=True, timeout=120)
        assert listed.returncode == 0, listed.stdout + listed.stderr
        online = [n["node-id"] for n in json.loads(listed.stdout)["nodes"] if n["status"] == "online"]
        assert online == [found.group(1)]  # the registered node only: not the stranger's key, not the keyless node
        assert "Connection attempt failed" in started[-1].log_text()
    finally:
        for process in started:
            process.stop()
