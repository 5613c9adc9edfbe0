"""A node's long-lived fedr worker: the ClientApp hands it each message, so TensorFlow starts once per run.

Flower 1.42's SuperNode starts a new ``flwr-clientapp`` process for every
message (long-lived ClientApps were removed in Flower 1.21). If that process
trained, every message would import TensorFlow, rebuild and trace the model
and read the node's data again: about 8 CPU-seconds per client per round for
a training step of milliseconds (bench/README.md, issue 20). So fedr's
ClientApp (:mod:`fedr.flower.clientapp`) imports only Flower and this module
(no TensorFlow) and forwards the message to a worker process of its node and
run, which keeps the data, the built and traced model and the rebuilt
aggregator between messages, runs the same handlers as before
(:mod:`fedr.flower._node`) and sends back the reply. The numbers are the
same bit for bit: the worker runs the same code on the same inputs.

Lifecycle:

- **Start**: the first message of a run to a node starts its worker (so it
  works the same under fedr's launchers and under a ``flower-supernode``
  started by hand); once it has answered it (the server's question who the
  node is), it imports TensorFlow while the server waits for the other nodes.
- **One per node and run**: the worker's name is a hash of the node id, the
  run id and the node config; two runs on one node never share one.
- **Stop**: after the run's last message (the server marks it, see
  :data:`fedr.flower._messages.FINAL`), when the node's Flower processes end (it watches the
  SuperExec that starts the ClientApps, and it is in the SuperNode's process
  group), or after ``worker-idle`` seconds without a message (node config,
  default :data:`IDLE_SECONDS`).
- **Death**: a worker that dies mid-message makes that message's reply a
  failure naming it (the round reports it like any client failure, nothing
  waits on it); the next message starts a new worker. The node's session
  between a round's stages (secure aggregation's keys) is in the ClientApp's
  ``Context.state`` on the node, as before, so it survives a restart.
- **Private**: the socket is in a folder only the node's user may enter
  (mode 0700, checked), and each connection proves a random key read from a
  file only that user can read (``multiprocessing.connection``'s HMAC
  challenge). Only bytes cross it: Flower's own protobuf encoding of the
  message's records, never a pickle.

Node config ``worker = "off"`` runs the handlers in the ClientApp process
instead (every message pays TensorFlow's start, as before; for debugging).
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

__all__ = ["IDLE_SECONDS", "WorkerPaths", "forward", "runtime_dir", "serve", "sweep", "worker_paths"]

#: Seconds a worker waits for its next message before it stops (node config ``worker-idle``).
IDLE_SECONDS = 600.0
#: Seconds a ClientApp waits for a new worker to listen.
START_SECONDS = 120.0
_KINDS = ("describe", "train", "stage", "evaluate")


def runtime_dir() -> str:
    """The folder of this user's fedr workers (``$XDG_RUNTIME_DIR`` or the temp folder), mode 0700.

    Raises:
        PermissionError: the folder exists but belongs to someone else or others may enter it.
    """
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = os.path.join(base, f"fedr-workers-{os.getuid()}")
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise PermissionError(
            f"{path}: fedr's worker folder must be a directory of this user with mode 0700 "
            f"(it is {oct(info.st_mode & 0o777)}, owner uid {info.st_uid}); remove it and retry"
        )
    return path


class WorkerPaths:
    """Where one worker's socket, key, lock, pid and log files are (all in :func:`runtime_dir`)."""

    def __init__(self, name: str, folder: str | None = None) -> None:
        folder = folder or runtime_dir()
        self.name = name
        self.socket = os.path.join(folder, f"{name}.sock")
        self.key = os.path.join(folder, f"{name}.key")
        self.lock = os.path.join(folder, f"{name}.lock")
        self.pid = os.path.join(folder, f"{name}.pid")
        self.log = os.path.join(folder, f"{name}.log")

    def read_pid(self) -> int | None:
        """The worker's pid as it wrote it, or None."""
        try:
            with open(self.pid, encoding="ascii") as handle:
                return int(handle.read().strip())
        except (OSError, ValueError):
            return None

    def log_tail(self, lines: int = 12) -> str:
        """The last ``lines`` of the worker's log (empty if none)."""
        try:
            with open(self.log, errors="replace") as handle:
                return "\n".join(handle.read().splitlines()[-lines:])
        except OSError:
            return ""


def worker_paths(node_id: int, run_id: int, node_config: Mapping[str, Any]) -> WorkerPaths:
    """The paths of the worker of node ``node_id`` in run ``run_id`` (a hash of both and the node config)."""
    text = json.dumps([int(node_id), int(run_id), {str(k): str(v) for k, v in node_config.items()}], sort_keys=True)
    return WorkerPaths("w" + hashlib.sha256(text.encode()).hexdigest()[:24])


def _idle_seconds(node_config: Mapping[str, Any]) -> float:
    value = node_config.get("worker-idle")
    if value in (None, ""):
        return IDLE_SECONDS
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds > 0:
        from fedr.errors import FedValueError

        raise FedValueError(f"`worker-idle` (node config): expected a positive number of seconds, got {value!r}",
                            argument="worker-idle")
    return seconds


def _worker_off(node_config: Mapping[str, Any]) -> bool:
    value = node_config.get("worker")
    if value in (None, "", True, "on"):
        return False
    if value in (False, "off"):
        return True
    from fedr.errors import FedValueError

    raise FedValueError(f"`worker` (node config): expected 'on' or 'off', got {value!r}", argument="worker")


def check_settings(node_config: Mapping[str, Any]) -> None:
    """Raise a :class:`~fedr.errors.FedValueError` naming the key if the worker's node config is wrong.

    The node's own check: :func:`fedr.flower.supernode` calls it before it
    starts the node, and every message's ClientApp before it forwards (a
    node started by hand reports it as the node's failure).
    """
    _idle_seconds(node_config)
    _worker_off(node_config)


# --- the ClientApp's side ----------------------------------------------------------------------------------


def _to_bytes(records: Any) -> bytes:
    from flwr.common import serde

    return serde.recorddict_to_proto(records).SerializeToString()


def _from_bytes(data: bytes) -> Any:
    from flwr.common import serde
    from flwr.proto.recorddict_pb2 import RecordDict as ProtoRecordDict

    proto = ProtoRecordDict()
    proto.ParseFromString(data)
    return serde.recorddict_from_proto(proto)


def _read_key(paths: WorkerPaths) -> bytes:
    with open(paths.key, "rb") as handle:
        return handle.read()


def _connect(paths: WorkerPaths) -> Connection | None:
    """A connection to a live worker, or None when none listens there."""
    try:
        return Client(paths.socket, family="AF_UNIX", authkey=_read_key(paths))
    except (OSError, EOFError, AuthenticationError):  # no socket, nobody listening, or a stale key
        return None


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep(folder: str | None = None) -> list[str]:
    """Remove the files of workers that died without cleaning up (killed with their node); their names."""
    folder = folder or runtime_dir()
    gone = []
    for entry in os.listdir(folder):
        if not entry.endswith(".pid"):
            continue
        paths = WorkerPaths(entry[:-4], folder)
        if _alive(paths.read_pid()):
            continue
        gone.append(paths.name)
        for path in (paths.socket, paths.key, paths.pid, paths.log, paths.lock):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
    return gone


def _spawn(paths: WorkerPaths, idle: float) -> subprocess.Popen[bytes]:
    """Start a worker (its key written first, readable by this user only); the caller holds the lock."""
    sweep(os.path.dirname(paths.socket))
    for stale in (paths.socket, paths.key, paths.pid):
        try:
            os.remove(stale)
        except FileNotFoundError:
            pass
    fd = os.open(paths.key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(32))
    args = [sys.executable, "-m", "fedr.flower._worker", "--name", paths.name, "--folder", os.path.dirname(paths.socket),
            "--watch-pid", str(os.getppid()), "--idle", repr(float(idle))]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(paths.log, "ab") as log:
        # Not a new session: the worker stays in the SuperNode's process group, so stopping the node stops it.
        return subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                close_fds=True)


def _worker_for(paths: WorkerPaths, idle: float) -> Connection:
    """A connection to this node's worker, starting one (under a file lock) if none listens.

    Raises:
        RuntimeError: the new worker exited or did not listen within :data:`START_SECONDS`; names its log.
    """
    conn = _connect(paths)
    if conn is not None:
        return conn
    with open(paths.lock, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        conn = _connect(paths)  # another ClientApp may have started it meanwhile
        if conn is not None:
            return conn
        worker = _spawn(paths, idle)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"WorkerStart: fedr's worker exited at start-up (status {worker.returncode}); "
                                   f"its log {paths.log} ends:\n{paths.log_tail()}")
            if os.path.exists(paths.socket):
                conn = _connect(paths)
                if conn is not None:
                    return conn
            time.sleep(0.02)
        worker.kill()
        raise RuntimeError(f"WorkerStart: fedr's worker did not listen within {START_SECONDS:g} s; "
                           f"its log {paths.log} ends:\n{paths.log_tail()}")


def _failure(node_config: Mapping[str, Any], error: str) -> Any:
    from flwr.app import ConfigRecord, RecordDict

    from fedr.flower import _messages as wire

    client_id = node_config.get("client-id")
    if not isinstance(client_id, str) or not client_id:
        path = str(node_config.get("data") or "node")
        client_id = os.path.splitext(os.path.basename(path.rstrip(os.sep)))[0]
    return RecordDict({wire.FAILURE: ConfigRecord({"client-id": client_id[:100], "error": error})})


def forward(kind: str, content: Any, context: Any) -> Any:
    """Hand a message's ``content`` (``kind``: describe, train, stage or evaluate) to the node's worker; its reply.

    ``context`` is the ClientApp's: its node config, node and run ids name
    the worker, and its ``state`` (the node's session between a round's
    stages) goes to the worker and comes back updated. Any failure to reach
    the worker, or its death before it replies, is a failure reply naming
    it, never an exception in Flower's ClientApp.
    """
    from fedr.protocol import describe_error

    node_config = dict(context.node_config)
    try:
        if _worker_off(node_config):
            return _from_bytes(_handle(kind, _to_bytes(content), node_config, context.state)[0])
        paths = worker_paths(context.node_id, context.run_id, node_config)
        conn = _worker_for(paths, _idle_seconds(node_config))
    except Exception as err:  # noqa: BLE001 - reported to the server as this client's failure
        return _failure(node_config, describe_error(err))
    pid = paths.read_pid()
    try:
        with conn:
            conn.send_bytes(json.dumps({"kind": kind, "node_config": node_config}).encode())
            conn.send_bytes(_to_bytes(content))
            conn.send_bytes(_to_bytes(context.state))
            reply = conn.recv_bytes()
            state = conn.recv_bytes()
    except (EOFError, OSError) as err:
        return _failure(node_config, f"WorkerLost: the node's fedr worker (pid {pid}) ended before it replied to "
                                     f"the {kind} message ({type(err).__name__}); the next message starts a new "
                                     f"one. Its log {paths.log} ends:\n{paths.log_tail()}")
    new_state = _from_bytes(state)
    context.state.clear()
    context.state.update(new_state)
    return _from_bytes(reply)


# --- the worker's side -------------------------------------------------------------------------------------


def _handle(kind: str, content: bytes, node_config: Mapping[str, Any], state: Any) -> tuple[bytes, bool]:
    """Run the node's handler of ``kind``; (the reply's bytes, whether this was the run's last message)."""
    from flwr.app import RecordDict

    from fedr.flower import _messages as wire
    from fedr.flower import _node

    records = _from_bytes(content)
    handlers: dict[str, Callable[[], dict[str, Any]]] = {
        "describe": lambda: _node.describe_records(node_config),
        "train": lambda: _node.train_records(records, node_config, state),
        "stage": lambda: _node.stage_records(records, node_config, state),
        "evaluate": lambda: _node.evaluate_records(records, node_config),
    }
    if kind not in handlers:
        return _to_bytes(_failure(node_config, f"FedValueError: the worker has no handler for {kind[:40]!r}")), False
    final = any(wire.FINAL in records[name] for name in (wire.CONFIG, wire.STAGE) if name in records)
    return _to_bytes(RecordDict(handlers[kind]())), final


def _prewarm() -> None:
    """Import what training needs (the worker calls it once, between two messages)."""
    try:
        import keras  # noqa: F401

        import fedr.flower._node  # noqa: F401
        import fedr.learning.client_update  # noqa: F401
    except Exception:  # noqa: BLE001 - the first message that needs it reports the error
        pass


class _Worker:
    def __init__(self, paths: WorkerPaths, watch_pid: int, idle: float) -> None:
        self.paths, self.watch_pid, self.idle = paths, watch_pid, idle
        self.lock = threading.Lock()
        self.last = time.monotonic()
        self.busy = False

    def _watch(self) -> None:
        while True:
            time.sleep(0.25)
            with self.lock:
                idle = not self.busy and time.monotonic() - self.last > self.idle
            if idle:
                self.exit(f"no message for {self.idle:g} s")
            try:
                os.kill(self.watch_pid, 0)
            except ProcessLookupError:
                self.exit(f"the node's process {self.watch_pid} ended")
            except PermissionError:
                pass

    def exit(self, why: str) -> None:
        print(f"fedr worker {os.getpid()}: stopping: {why}", flush=True)
        for path in (self.paths.socket, self.paths.key, self.paths.pid, self.paths.log, self.paths.lock):
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        os._exit(0)

    def serve(self) -> None:
        key = _read_key(self.paths)
        old = os.umask(0o177)
        try:
            listener = Listener(self.paths.socket, family="AF_UNIX", authkey=key)
        finally:
            os.umask(old)
        with open(self.paths.pid, "w", encoding="ascii") as handle:
            handle.write(str(os.getpid()))
        signal.signal(signal.SIGTERM, lambda *_: self.exit("SIGTERM"))
        threading.Thread(target=self._watch, daemon=True).start()
        warm = False
        while True:
            try:
                conn = listener.accept()
            except Exception:  # noqa: BLE001 - a client that failed the key check or went away
                continue
            with self.lock:
                self.busy = True
            final = False
            try:
                with conn:
                    header = json.loads(conn.recv_bytes())
                    content, state_bytes = conn.recv_bytes(), conn.recv_bytes()
                    print(f"fedr worker {os.getpid()}: {str(header['kind'])[:40]} message", flush=True)
                    state = _from_bytes(state_bytes)
                    reply, final = _handle(str(header["kind"]), content, dict(header["node_config"]), state)
                    conn.send_bytes(reply)
                    conn.send_bytes(_to_bytes(state))
            except Exception as err:  # noqa: BLE001 - this message's ClientApp sees the connection end
                print(f"fedr worker {os.getpid()}: a message failed: {type(err).__name__}: {err}", flush=True)
            finally:
                with self.lock:
                    self.busy = False
                    self.last = time.monotonic()
            if final:
                self.exit("the run's last message was answered")
            if not warm:
                # After the first reply (the server's question who the node is), while the server waits for
                # the other nodes. In this thread, before the next message is read: an import in a second
                # thread beside a message that imports TensorFlow deadlocks on Python's module locks.
                warm = True
                _prewarm()


def serve(argv: list[str] | None = None) -> None:
    """The worker's main: ``python -m fedr.flower._worker --name N --folder F --watch-pid P --idle S``."""
    parser = argparse.ArgumentParser(prog="python -m fedr.flower._worker", description="fedr's node worker")
    parser.add_argument("--name", required=True)
    parser.add_argument("--folder", required=True)
    parser.add_argument("--watch-pid", type=int, required=True)
    parser.add_argument("--idle", type=float, default=IDLE_SECONDS)
    args = parser.parse_args(argv)
    import fedr  # noqa: F401 - TensorFlow's load-time lines filtered, thread settings, before anything else

    _Worker(WorkerPaths(args.name, args.folder), args.watch_pid, args.idle).serve()


if __name__ == "__main__":
    serve()
