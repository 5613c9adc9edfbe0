"""fedr on Flower: wire format, node data, and real federations on loopback.

The federation tests start a real SuperLink and SuperNodes (Flower 1.42's own
programs) on 127.0.0.1 with free ports and their own HOME/FLWR_HOME in a temp
folder, bound every wait with a timeout, and stop every process they started.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr[simulation]==1.42.0 is installed by make setup")

import keras  # noqa: E402

from fedr import aggregators, datasets, executors, learning, privacy  # noqa: E402
from fedr.errors import FedValueError  # noqa: E402
from fedr.flower import _messages as wire  # noqa: E402
from fedr.flower import _node  # noqa: E402
from fedr.flower import FedrStrategy, load_node_data  # noqa: E402
from fedr.flower.apps import decode_process, encode_process  # noqa: E402
from fedr.learning.client_update import ClientFailure, ClientOutput  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-6  # float tolerance of Flower vs in-process weights (observed: identical)


def _model_fn() -> learning.Model:
    model = keras.Sequential(
        [keras.Input(shape=(784,)), keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")]
    )
    return learning.from_keras_model(
        model,
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )


def _process(**kwargs) -> learning.FedAvgProcess:
    return learning.build_weighted_fed_avg(
        _model_fn, learning.optimizer_fn("sgd", 0.02), learning.optimizer_fn("sgd", 1.0), seed=1, **kwargs
    )


@pytest.fixture(scope="module")
def fashion():
    if not FASHION.is_dir():
        pytest.fail("Fashion-MNIST is missing: make setup installs dataset-fashion-mnist")
    data = datasets.load_fashion_mnist(FASHION)
    return data, datasets.make_clients(data.x_train, data.y_train, 10)


def _assert_same_weights(a: learning.ServerState, b: learning.ServerState) -> None:
    assert a.model.trainable_names == b.model.trainable_names
    for x, y in zip(a.model.trainable, b.model.trainable, strict=True):
        np.testing.assert_allclose(x, y, rtol=0, atol=TOL)


# --------------------------------------------------------------------- wire format


def test_weights_travel_by_name_and_come_back_equal():
    process = _process()
    weights = process.initialize().model
    back = wire.weights_from_record(wire.weights_record(weights))
    assert back.trainable_names == ("sequential/dense/kernel", "sequential/dense/bias")
    assert [a.shape for a in back.trainable] == [(784, 10), (10,)]
    for a, b in zip(back.trainable, weights.trainable, strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_reply_becomes_the_client_output_and_a_malformed_one_a_failure():
    out = ClientOutput("site_a", np.arange(5, dtype=np.float32), np.zeros(0, np.float32), 40,
                       np.array([0.75]), 12.5, True)
    back = wire.output_from_reply("site_a", wire.output_reply(out), num_metrics=1, size=5)
    assert isinstance(back, ClientOutput)
    np.testing.assert_array_equal(back.delta, out.delta)
    assert (back.num_examples, back.loss_sum, back.finite, back.metrics.tolist()) == (40, 12.5, True, [0.75])
    wrong = wire.output_from_reply("site_a", wire.output_reply(out), num_metrics=1, size=6)
    assert isinstance(wrong, ClientFailure)
    assert wrong.error == "FedValueError: malformed reply from the node (update of float32 (5,), expected float32 (6,))"
    failure = wire.output_from_reply("site_b", wire.output_reply(ClientFailure("site_b", "OSError: disk")), 1, 5)
    assert failure == ClientFailure("site_b", "OSError: disk")


def test_the_process_travels_with_its_state_and_comes_back_the_same():
    process = _process(aggregator=aggregators.median())
    state, _ = process.next(process.initialize(), datasets.make_clients(
        np.random.default_rng(0).integers(0, 255, (60, 28, 28), dtype=np.uint8),
        np.arange(60) % 10, 3, batch_size=10))
    rebuilt, back = decode_process(encode_process(process, state))
    assert repr(rebuilt.aggregator) == repr(process.aggregator)
    assert rebuilt.seed == 1 and back.round_num == 1
    _assert_same_weights(back, state)


def test_secure_aggregation_travels_to_a_flower_run_as_data():
    process = _process(aggregator=privacy.gaussian_fixed(
        noise_multiplier=0.5, clients_per_round=3, clip=1.0, inner=privacy.secure_sum(neighbors=2)))
    rebuilt, _ = decode_process(encode_process(process))
    assert repr(rebuilt.aggregator) == repr(process.aggregator)
    assert FedrStrategy(_process(aggregator=privacy.secure_mean())).trusted_server is False


def test_strategy_arguments_are_checked_by_name():
    with pytest.raises(FedValueError, match=r"^min_nodes: expected a positive integer, got 0$"):
        FedrStrategy(_process(), min_nodes=0)
    with pytest.raises(FedValueError, match=r"^fraction: expected a number in \(0, 1\], got 1.5$"):
        FedrStrategy(_process(), fraction=1.5)


# ------------------------------------------------------------------------ node data


def test_node_data_from_a_dataset_folder_equals_the_in_process_client(fashion):
    _, clients = fashion
    node = load_node_data({"data": str(FASHION), "rows": "6000:12000", "client-id": "client_1"})
    assert node.client_id == "client_1" and node.x.shape == (6000, 784)
    np.testing.assert_array_equal(node.x, clients[1].x)
    np.testing.assert_array_equal(node.y, clients[1].y)
    np.testing.assert_array_equal(node.offsets, clients[1].offsets)


def test_node_data_from_npz_and_csv(tmp_path):
    np.savez(tmp_path / "lab.npz", x=np.arange(12, dtype=np.float32).reshape(6, 2), y=[0, 1, 0, 1, 1, 0])
    client = load_node_data({"data": str(tmp_path / "lab.npz"), "batch-size": 4})
    assert client.client_id == "lab" and client.offsets.tolist() == [0, 4, 6]
    (tmp_path / "site.csv").write_text("age,dose,label\n31,1,0\n45.5,2,1\n60,3,0\n")
    client = load_node_data({"data": str(tmp_path / "site.csv"), "client-id": "north"})
    assert client.client_id == "north"
    np.testing.assert_array_equal(client.x, np.array([[31, 1], [45.5, 2], [60, 3]], np.float32))
    assert client.y.tolist() == [0, 1, 0]


def test_node_data_from_an_r_file(tmp_path):
    pytest.importorskip("rpy2.robjects", reason="rpy2 (and R) read .rds files")
    rscript = shutil.which("Rscript")
    if rscript is None:
        pytest.skip("Rscript writes the .rds file")
    path = tmp_path / "clinic.rds"
    subprocess.run([rscript, "--vanilla", "-e", f"saveRDS(data.frame(age = c(31, 45.5, 60), "
                    f"outcome = factor(c('sick', 'well', 'sick'), levels = c('well', 'sick'))), '{path}')"],
                   check=True, capture_output=True)
    client = load_node_data({"data": str(path), "label": "outcome"})
    assert client.client_id == "clinic"
    np.testing.assert_array_equal(client.x, np.array([[31], [45.5], [60]], np.float32))
    assert client.y.tolist() == [1, 0, 1]


def test_bad_node_configs_name_the_key(tmp_path):
    with pytest.raises(FedValueError, match=r"node config `data`: missing; start the node with --node-config"):
        load_node_data({})
    with pytest.raises(FileNotFoundError, match=r"node config `data`: no file or folder at '/no/such.rds'"):
        load_node_data({"data": "/no/such.rds"})
    (tmp_path / "site.csv").write_text("age,dose\n31,1\n")
    with pytest.raises(FedValueError, match=r"no label column 'label' \(columns: age, dose\)"):
        load_node_data({"data": str(tmp_path / "site.csv")})
    np.savez(tmp_path / "a.npz", x=np.zeros((6, 2), np.float32), y=np.zeros(6))
    with pytest.raises(FedValueError, match=r"node config `rows`: 4:9 is outside the data's 6 rows"):
        load_node_data({"data": str(tmp_path / "a.npz"), "rows": "4:9"})
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FedValueError, match=r"is not a folder, .rds, .npz or .csv file"):
        load_node_data({"data": str(tmp_path / "notes.txt")})


# ----------------------------------------------------------------- real federations


@pytest.fixture
def flower_home(tmp_path, monkeypatch):
    """Flower's programs get their own HOME (and FLWR_HOME, set per program by the launchers)."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def _nodes(link, n, **kwargs):
    from fedr import flower

    return [
        flower.supernode(str(FASHION), link, client_id=f"client_{i}",
                         node_config={"rows": f"{6000 * i}:{6000 * (i + 1)}"}, **kwargs)
        for i in range(n)
    ]


def test_two_nodes_give_the_in_process_weights_and_a_killed_node_is_reported(fashion, flower_home, tmp_path):
    from fedr import flower

    _, clients = fashion
    # In-process: the same process, seed and first two sequential clients.
    reference = _process()
    expected = reference.initialize()
    for _ in range(2):
        expected, metrics = reference.next(expected, clients[:2])

    started = []
    try:
        link = flower.superlink(root=str(tmp_path))  # runs may write inside tmp_path only
        started.append(link)
        nodes = _nodes(link, 2)
        started += nodes
        result = flower.run(_process(), 2, link, out_dir=str(tmp_path / "out"), round_timeout=120,
                            progress=None, timeout=300)
        assert [row["round"] for row in result.history] == [1, 2]
        assert result.history[-1]["num_clients"] == 2 and result.history[-1]["clients"] == "client_0;client_1"
        assert result.state.round_num == 2
        _assert_same_weights(result.state, expected)
        assert result.history[-1]["sparse_categorical_accuracy"] == pytest.approx(
            metrics["sparse_categorical_accuracy"], abs=TOL)
        assert result.history[-1]["loss"] == pytest.approx(metrics["loss"], abs=1e-5)
        assert os.path.exists(tmp_path / "out" / "state.npz")

        # Round 3: node client_1 is killed as the round starts.
        def kill_when_round_starts(line: str) -> None:
            if "round 3: training on 2 node(s)" in line:
                threading.Timer(0.1, nodes[1].kill).start()  # before its ClientApp can answer (>= 0.5 s to start)

        third = flower.run(_process(), 1, link, state=result.state, out_dir=str(tmp_path / "out"),
                           round_timeout=30, progress=kill_when_round_starts, timeout=300)
        assert not nodes[1].alive and nodes[0].alive
        row = third.history[-1]
        assert row["round"] == 3 and row["round_failed"] == 0
        assert (row["num_clients"], row["num_clients_failed"]) == (1, 1)
        assert "1 client(s) failed and were left out: client_1: NodeLost: no reply from node" in row["events"]
        # The round completed with the node that was left: as in-process with client_1 failing.
        alone, _ = reference.next(expected, clients[:1])
        _assert_same_weights(third.state, alone)
        assert third.state.round_num == 3
    finally:
        for process in started:
            process.stop()
    assert not any(p.alive for p in started)


def test_secure_mean_on_three_nodes_equals_threads_and_survives_a_node_killed_after_key_sharing(
        fashion, flower_home, tmp_path):
    """Secure aggregation's stages as message rounds; each node keeps its keys in its Context.state."""
    from fedr import flower

    _, clients = fashion

    def process(executor=None) -> learning.FedAvgProcess:
        return _process(aggregator=privacy.secure_mean(threshold=2), executor=executor)

    reference = process(executors.threads(2))
    expected = reference.initialize()
    expected, _ = reference.next(expected, clients[:3])
    c = clients[2]
    # In-process, client_2 drops after the stages of round 2: an update that is not finite.
    broken = datasets.ClientData(np.full(c.x.shape, 3e38, np.float32), c.y, batch_size=100, client_id="client_2")
    with pytest.warns(learning.ClientsDroppedWarning):
        expected_2, _ = reference.next(expected, [clients[0], clients[1], broken])

    started = []
    try:
        link = flower.superlink(root=str(tmp_path))
        started.append(link)
        nodes = _nodes(link, 3)
        started += nodes
        first = flower.run(process(), 1, link, min_nodes=3, round_timeout=120, progress=None, timeout=600)
        assert first.history[-1]["secure_clients"] == 3.0
        np.testing.assert_array_equal(first.state.flat_weights, expected.flat_weights)  # bit for bit

        def kill_after_key_sharing(line: str) -> None:
            # Logged when the advertise and share stages are done, before the train messages go.
            if "round 2: training on 3 node(s)" in line:
                nodes[2].kill()

        second = flower.run(process(), 1, link, state=first.state, min_nodes=3, round_timeout=60,
                            progress=kill_after_key_sharing, timeout=600)
        row = second.history[-1]
        assert not nodes[2].alive
        assert row["round"] == 2 and row["round_failed"] == 0
        assert (row["secure_clients"], row["secure_dropped"]) == (2.0, 1.0)
        assert "client_2: NodeLost: no reply from node" in row["events"]
        np.testing.assert_array_equal(second.state.flat_weights, expected_2.flat_weights)
    finally:
        for p in started:
            p.stop()


def test_a_nodes_worker_killed_mid_round_is_a_reported_failure_and_the_next_round_recovers(
        fashion, flower_home, tmp_path, monkeypatch):
    """Each node's messages go to its long-lived fedr worker (fedr.flower._worker); kill one while it trains."""
    import signal

    from fedr import flower
    from fedr.flower import _worker

    _, clients = fashion
    runtime = tempfile.mkdtemp(prefix="fw")  # the workers' private folder (short: a socket path)
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    folder = os.path.join(runtime, f"fedr-workers-{os.getuid()}")
    killed: list[int] = []

    def kill_a_training_worker() -> None:
        deadline = time.monotonic() + 120
        while not killed and time.monotonic() < deadline:
            for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
                paths = _worker.WorkerPaths(entry[:-4], folder) if entry.endswith(".pid") else None
                if paths and "train message" in paths.log_tail():
                    os.kill(paths.read_pid(), signal.SIGKILL)  # it logs each message as it starts on it
                    killed.append(paths.read_pid())
                    return
            time.sleep(0.005)

    def on_line(line: str) -> None:
        if "round 1: training on 2 node(s)" in line:
            threading.Thread(target=kill_a_training_worker, daemon=True).start()

    started = []
    try:
        link = flower.superlink(root=str(tmp_path))
        started.append(link)
        started += _nodes(link, 2)
        result = flower.run(_process(), 2, link, out_dir=str(tmp_path / "out"), round_timeout=120,
                            progress=on_line, timeout=300)
        first, second = result.history
        assert killed and (first["num_clients"], first["num_clients_failed"]) == (1, 1)
        lost = "client_0" if "client_0: WorkerLost" in first["events"] else "client_1"
        assert f"{lost}: WorkerLost: the node's fedr worker (pid {killed[0]}) ended before it replied to the " \
               "train message" in first["events"]
        assert (second["num_clients"], second["num_clients_failed"]) == (2, 0)  # a new worker served round 2
        reference = _process()
        expected, _ = reference.next(reference.initialize(), clients[1:2] if lost == "client_0" else clients[:1])
        expected, _ = reference.next(expected, clients[:2])
        _assert_same_weights(result.state, expected)
        # The run's last message (marked by the server) stopped the workers; none is left behind.
        deadline = time.monotonic() + 30
        while any(e.endswith(".pid") for e in os.listdir(folder)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _worker.sweep(folder) == [] and not [e for e in os.listdir(folder) if e.endswith(".pid")]
    finally:
        for process in started:
            process.stop()
        shutil.rmtree(runtime, ignore_errors=True)


def test_a_failed_round_keeps_the_last_good_state_and_is_reported(fashion, flower_home, tmp_path):
    from fedr import flower

    started = []
    try:
        link = flower.superlink(root=str(tmp_path))  # runs may write inside tmp_path only
        started.append(link)
        started += _nodes(link, 1)
        # Every client must answer (min_clients = 1.0) but the only node's data does not fit the model.
        process = learning.build_weighted_fed_avg(
            lambda: learning.from_keras_model(
                keras.Sequential([keras.Input(shape=(10,)), keras.layers.Dense(2, activation="softmax")]),
                loss="sparse_categorical_crossentropy"),
            learning.optimizer_fn("sgd", 0.1), seed=3, min_clients=1.0)
        start = process.initialize()
        with pytest.warns(flower.FlowerRoundWarning, match=r"^failed: round 1: only 0 of 1 clients returned a usable update"):
            result = flower.run(process, 1, link, min_nodes=1, out_dir=str(tmp_path / "out"), progress=None,
                                round_timeout=60, timeout=300)
        assert result.state.round_num == 0
        _assert_same_weights(result.state, start)
        history = result.history
        assert history[0]["round_failed"] == 1
        assert "failed: round 1: only 0 of 1 clients returned a usable update" in history[0]["events"]
        assert "client 'client_0': x has feature shape (784,) but the model expects (10,)" in history[0]["events"]
    finally:
        for process in started:
            process.stop()


def test_a_federation_over_tls(fashion, flower_home, tmp_path):
    from fedr import flower

    _, clients = fashion

    def dp_process() -> learning.FedAvgProcess:
        # Differential privacy, clipped on the node (the default; not a trusted server). The same
        # weights on Flower as in-process need reproducible noise: noise_seed (tests only; it warns).
        with pytest.warns(privacy.ReproducibleNoiseWarning):
            dp = privacy.gaussian_fixed(noise_multiplier=0.5, clients_per_round=1, clip=0.5, noise_seed=3)
        return _process(aggregator=dp)

    reference = dp_process()
    expected, expected_metrics = reference.next(reference.initialize(), clients[:1])
    certs = flower.make_certificates(str(tmp_path / "certs"))
    started = []
    try:
        link = flower.superlink(certificates=certs)
        started.append(link)
        started += _nodes(link, 1, root_certificates=certs["ca"])
        result = flower.run(dp_process(), 1, link, min_nodes=1, root_certificates=certs["ca"], progress=None,
                            round_timeout=120, timeout=300, evaluate=True)
        _assert_same_weights(result.state, expected)
        assert result.history[-1]["clip"] == 0.5
        assert "events" not in result.history[-1]  # no trusted-server event: the node clipped
        assert result.history[-1]["dp_noise_stddev"] == pytest.approx(expected_metrics["dp_noise_stddev"])
        # Federated evaluation on the node (its training data): as in-process.
        evaluated = reference.evaluate(expected, clients[:1])
        row = result.history[-1]
        assert row["eval_num_examples"] == 6000 and row["eval_num_clients_failed"] == 0
        assert row["eval_sparse_categorical_accuracy"] == pytest.approx(
            evaluated["sparse_categorical_accuracy"], abs=TOL)
        assert row["eval_loss"] == pytest.approx(evaluated["loss"], abs=1e-5)
        assert "--insecure" not in link.args and "--ssl-certfile" in link.args
        assert "insecure" not in link.log_text().lower()
        assert link.log_text().count("Activated node_id") == 1
        # A node without TLS cannot join: TLS is really on.
        stranger = flower.supernode(str(FASHION), link, client_id="stranger", node_config={"rows": "0:100"})
        started.append(stranger)
        time.sleep(5)
        assert link.log_text().count("Activated node_id") == 1
    finally:
        for process in started:
            process.stop()


def _wait_port(popen, port, seconds):
    import socket

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert popen.poll() is None, f"the SuperLink exited with {popen.returncode} at start-up"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"the SuperLink did not listen on port {port} within {seconds} s")


def test_the_documented_commands_run_the_example_app(fashion, flower_home, tmp_path):
    """README: flower-superlink, two flower-supernode, flwr run examples/flower (loopback)."""
    from fedr import flower
    from fedr.flower._launch import _env

    _, clients = fashion
    reference = _process()
    expected = reference.initialize()
    for _ in range(2):
        expected, _ = reference.next(expected, clients[:2])
    bin_dir = Path(sys.executable).parent
    home = str(tmp_path / "flwr")
    os.makedirs(home)
    port = flower.free_port()
    env = _env(home)
    env["FEDR_FLOWER_ROOT"] = str(tmp_path)  # the folder the SuperLink's owner lets runs write to
    started = []
    try:
        started.append(subprocess.Popen(
            [bin_dir / "flower-superlink", "--insecure", "--port", str(port),
             "--disable-runtime-dependency-installation"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        # As a user would, wait for the SuperLink to listen before `flwr run` (on a busy machine it takes
        # seconds; `flwr run` before it listens fails with "check your connection configuration").
        _wait_port(started[0], port, 60)
        for i in range(2):
            started.append(subprocess.Popen(
                [bin_dir / "flower-supernode", "--insecure", "--superlink", f"127.0.0.1:{port}",
                 "--port", str(flower.free_port()), "--node-config",
                 f"data='{FASHION}' rows='{6000 * i}:{6000 * (i + 1)}' client-id='client_{i}'"],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        Path(home, "config.toml").write_text(
            f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{port}"\ninsecure = true\n')
        out = tmp_path / "out"
        done = subprocess.run(
            [bin_dir / "flwr", "run", str(ROOT / "examples" / "flower"), "local", "--stream",
             "--run-config", f"num-server-rounds=2 out-dir='{out}'"],
            env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:]
        assert "round 2: training on 2 node(s): client_0, client_1" in done.stdout
        state = learning.load_state(out / "state.npz", reference)
        _assert_same_weights(state, expected)
    finally:
        for popen in started:
            try:
                os.killpg(popen.pid, 9)
            except ProcessLookupError:
                pass
            popen.wait(timeout=30)


def test_the_node_trains_as_the_in_process_client_and_reports_failures_by_name(fashion, tmp_path):
    from flwr.app import ConfigRecord

    _, clients = fashion
    process = _process()
    state = process.initialize()
    plan = process.begin_round(state, ["client_1"])
    strategy = FedrStrategy(process)
    content = {wire.WEIGHTS: wire.weights_record(state.model),
               wire.CONFIG: ConfigRecord(strategy._config(1, train=True))}
    node = {"data": str(FASHION), "rows": "6000:12000", "client-id": "client_1"}
    out = wire.output_from_reply("client_1", _node.train_records(content, node), 1, 7850)
    expected, _ = process.next(state, clients[1:2])
    np.testing.assert_allclose(state.flat_weights + out.delta, expected.flat_weights, rtol=0, atol=TOL)
    assert out.num_examples == 6000 and plan.client_ids == ("client_1",)

    described = _node.describe_records(node)[wire.DESCRIBE]
    assert (described["client-id"], described["num-examples"]) == ("client_1", 6000)
    missing = {"data": str(tmp_path / "missing.npz"), "client-id": "site_z"}
    failure = _node.describe_records(missing)[wire.FAILURE]
    assert failure["client-id"] == "site_z"
    assert failure["error"] == f"FileNotFoundError: node config `data`: no file or folder at '{tmp_path}/missing.npz'"
    np.savez(tmp_path / "small.npz", x=np.zeros((4, 10), np.float32), y=np.zeros(4))
    failed = wire.output_from_reply(
        "small", _node.train_records(content, {"data": str(tmp_path / "small.npz")}), 1, 7850)
    assert failed == ClientFailure(
        "small", "FedValueError: client 'small': x has feature shape (10,) but the model expects (784,)")
