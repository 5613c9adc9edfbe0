"""The node's long-lived fedr worker (fedr.flower._worker): answers, lifecycle, failures, privacy.

These tests drive the ClientApp's side (``forward``) from this process with a
Flower ``Context`` as the SuperNode would give it, so each starts real worker
processes; every worker lives in a private folder of its own
(``XDG_RUNTIME_DIR`` set per test) and is stopped at the end. The worker on a
real federation is tested in tests/test_flower.py.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr[simulation]==1.42.0 is installed by make setup")

import keras  # noqa: E402
from flwr.app import ConfigRecord, Context, RecordDict  # noqa: E402

from fedr import datasets, learning  # noqa: E402
from fedr.errors import FedValueError  # noqa: E402
from fedr.flower import FedrStrategy, _node, _worker  # noqa: E402
from fedr.flower import _messages as wire  # noqa: E402

FASHION = Path("/usr/share/datasets/fashion-mnist")
NODE = {"data": str(FASHION), "rows": "6000:12000", "client-id": "client_1"}


def _process() -> learning.FedAvgProcess:
    def model_fn() -> learning.Model:
        model = keras.Sequential([keras.Input(shape=(784,)),
                                  keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")])
        return learning.from_keras_model(model, loss=keras.losses.SparseCategoricalCrossentropy(),
                                         metrics=[keras.metrics.SparseCategoricalAccuracy()])

    return learning.build_weighted_fed_avg(model_fn, learning.optimizer_fn("sgd", 0.02),
                                           learning.optimizer_fn("sgd", 1.0), seed=1)


@pytest.fixture(scope="module")
def train_content():
    """A round-1 train message's content for one node, as FedrStrategy builds it."""
    process = _process()
    state = process.initialize()
    config = FedrStrategy(process)._config(1, train=True)
    return state, lambda **extra: RecordDict({wire.WEIGHTS: wire.weights_record(state.model),
                                              wire.CONFIG: ConfigRecord({**config, **extra})})


@pytest.fixture()
def folder(monkeypatch):
    """A private runtime folder for this test's workers (short: socket paths are limited to 107 bytes)."""
    base = tempfile.mkdtemp(prefix="fw")
    monkeypatch.setenv("XDG_RUNTIME_DIR", base)
    yield base
    where = os.path.join(base, f"fedr-workers-{os.getuid()}")
    os.chmod(where, 0o700)
    for entry in os.listdir(where):
        if entry.endswith(".pid"):
            pid = _worker.WorkerPaths(entry[:-4], where).read_pid()
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    shutil.rmtree(base, ignore_errors=True)


def _context(run_id: int, node_id: int = 11, **config) -> Context:
    return Context(run_id=run_id, node_id=node_id, node_config={**NODE, **config}, state=RecordDict(),
                   run_config={})


def _pid(context: Context) -> int | None:
    return _worker.worker_paths(context.node_id, context.run_id, context.node_config).read_pid()


def _gone(pid: int, seconds: float = 15.0) -> bool:
    """Whether process ``pid`` ends within ``seconds`` (workers started from this test are its children: reaped)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:  # not this process's child
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return True
        time.sleep(0.05)
    return False


def _train_output(reply: RecordDict):
    return wire.output_from_reply("client_1", reply, 1, 7850)


def test_the_worker_answers_as_the_handlers_do_bit_for_bit_and_keeps_running(folder, train_content):
    state, content = train_content
    context = _context(run_id=1)
    described = _worker.forward("describe", RecordDict(), context)[wire.DESCRIBE]
    assert (described["client-id"], described["num-examples"]) == ("client_1", 6000)
    pid = _pid(context)
    assert pid is not None and pid != os.getpid()

    first = _train_output(_worker.forward("train", content(), context))
    again = _train_output(_worker.forward("train", content(), context))
    assert _pid(context) == pid  # one worker for the run's messages
    direct = _train_output(RecordDict(_node.train_records(content(), dict(context.node_config))))
    off = _train_output(_worker.forward("train", content(), _context(run_id=1, worker="off")))
    for other in (again, direct, off):
        np.testing.assert_array_equal(first.delta, other.delta)
        assert first.metrics == other.metrics and first.num_examples == other.num_examples == 6000
    # The in-process round's delta, as the other Flower tests assert.
    data = datasets.load_fashion_mnist(FASHION)
    expected, _ = _process().next(state, datasets.make_clients(data.x_train, data.y_train, 10)[1:2])
    np.testing.assert_allclose(state.flat_weights + first.delta, expected.flat_weights, rtol=0, atol=1e-6)


def test_a_worker_killed_mid_message_is_a_named_failure_and_the_next_message_starts_a_new_one(folder, train_content):
    _, content = train_content
    context = _context(run_id=2)
    paths = _worker.worker_paths(context.node_id, context.run_id, context.node_config)
    replies = []
    sender = threading.Thread(target=lambda: replies.append(_worker.forward("train", content(), context)))
    sender.start()
    deadline = time.monotonic() + 60
    while "train message" not in paths.log_tail() and time.monotonic() < deadline:
        time.sleep(0.01)  # the worker logs each message as it starts on it; its first training takes seconds
    pid = paths.read_pid()
    os.kill(pid, signal.SIGKILL)
    sender.join(60)
    failure = replies[0][wire.FAILURE]
    assert failure["client-id"] == "client_1"
    assert failure["error"].startswith(f"WorkerLost: the node's fedr worker (pid {pid}) ended before it replied "
                                       "to the train message (EOFError); the next message starts a new one.")
    out = _train_output(_worker.forward("train", content(), context))
    assert out.num_examples == 6000 and np.isfinite(out.delta).all()
    assert paths.read_pid() not in (None, pid)


def test_a_worker_stops_after_its_idle_time_and_after_the_runs_last_message(folder, train_content):
    _, content = train_content
    idle = _context(run_id=3, **{"worker-idle": 1.0})
    _worker.forward("describe", RecordDict(), idle)
    pid = _pid(idle)
    assert _gone(pid)
    assert _pid(idle) is None and not os.path.exists(_worker.worker_paths(11, 3, idle.node_config).socket)

    last = _context(run_id=4)
    _worker.forward("describe", RecordDict(), last)
    pid = _pid(last)
    reply = _worker.forward("train", content(**{wire.FINAL: True}), last)  # the server marks the run's last one
    assert _train_output(reply).num_examples == 6000
    assert _gone(pid) and _pid(last) is None


def test_two_runs_on_one_node_get_two_workers_and_a_worker_ends_with_its_node(folder, monkeypatch):
    node = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # stands in for the SuperExec
    try:
        monkeypatch.setattr(_worker.os, "getppid", lambda: node.pid)
        a, b = _context(run_id=5), _context(run_id=6)
        for context in (a, b):
            assert wire.DESCRIBE in _worker.forward("describe", RecordDict(), context)
        pa, pb = _pid(a), _pid(b)
        assert None not in (pa, pb) and pa != pb
        other_node = _context(run_id=5, node_id=12)
        _worker.forward("describe", RecordDict(), other_node)
        assert _pid(other_node) not in (pa, pb)
    finally:
        node.kill()
        node.wait()
    assert _gone(pa) and _gone(pb)


def test_the_workers_folder_and_socket_are_private(folder, train_content):
    context = _context(run_id=7)
    _worker.forward("describe", RecordDict(), context)
    paths = _worker.worker_paths(context.node_id, context.run_id, context.node_config)
    assert stat.S_IMODE(os.stat(_worker.runtime_dir()).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(paths.key).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(paths.socket).st_mode) & 0o077 == 0
    with pytest.raises(AuthenticationError):
        Client(paths.socket, family="AF_UNIX", authkey=b"not the key")
    assert wire.DESCRIBE in _worker.forward("describe", RecordDict(), context)  # still serving
    # A folder others may enter is refused, by name, as the node's failure.
    where = _worker.runtime_dir()
    os.chmod(where, 0o755)
    failure = _worker.forward("describe", RecordDict(), _context(run_id=8))[wire.FAILURE]
    assert failure["error"].startswith(f"PermissionError: {where}: fedr's worker folder must be a "
                                       "directory of this user with mode 0700 (it is 0o755")
    os.chmod(where, 0o700)


def test_bad_worker_settings_name_the_node_config_key(folder):
    failure = _worker.forward("describe", RecordDict(), _context(run_id=9, **{"worker-idle": "soon"}))[wire.FAILURE]
    assert failure["error"] == ("FedValueError: `worker-idle` (node config): expected a positive number of "
                                "seconds, got 'soon'")
    failure = _worker.forward("describe", RecordDict(), _context(run_id=9, worker="maybe"))[wire.FAILURE]
    assert failure["error"] == "FedValueError: `worker` (node config): expected 'on' or 'off', got 'maybe'"
    # fedr's launcher refuses them before it starts the node, naming the key as data.
    from fedr import flower

    with pytest.raises(FedValueError, match=r"^`worker-idle` \(node config\): expected a positive number of "
                                            r"seconds, got -1$") as caught:
        flower.supernode(FASHION, "127.0.0.1:9", node_config={"worker-idle": -1})
    assert caught.value.argument == "worker-idle"


def test_dead_workers_files_are_swept_when_a_worker_starts(folder):
    context = _context(run_id=10)
    _worker.forward("describe", RecordDict(), context)
    paths = _worker.worker_paths(context.node_id, context.run_id, context.node_config)
    os.kill(paths.read_pid(), signal.SIGKILL)  # killed with its node: no clean-up of its own
    assert _gone(paths.read_pid())
    assert os.path.exists(paths.socket)
    assert _worker.sweep() == [paths.name]
    assert not any(os.path.exists(p) for p in (paths.socket, paths.key, paths.pid, paths.log))
