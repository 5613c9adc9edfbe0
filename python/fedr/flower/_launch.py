"""Start and stop Flower's own processes (SuperLink, SuperNodes; ``flwr run`` is in :mod:`fedr.flower._run`).

These are thin launchers of Flower's command-line programs, the same commands
the README shows: ``flower-superlink``, ``flower-supernode`` and ``flwr run``.
Each started program runs in its own process group with its log in a file;
its handle's ``stop()`` ends the whole group (the SuperLink's SuperExec and
ServerApp, the node's ClientApp processes), and so does the end of the Python
session. Nodes and runs connect without TLS only to a loopback SuperLink
(:func:`check_tls`); certificates and node keys are made in
:mod:`fedr.flower._credentials`.
"""

from __future__ import annotations

import atexit
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedr._env import own_libpython_first
from fedr.errors import FedError, FedValueError
from fedr.flower import _worker

__all__ = ["FlowerProcess", "check_tls", "free_port", "superlink", "supernode"]

_LIVE: weakref.WeakSet[FlowerProcess] = weakref.WeakSet()
#: Flower's setting of how often its SuperExec polls for work (seconds; Flower's default is 1).
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SUPEREXEC_POLL_SECONDS = "0.1"
APP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "app")


def _bin(name: str) -> str:
    here = os.path.join(os.path.dirname(sys.executable), name)
    found = here if os.path.exists(here) else shutil.which(name)
    if not found:
        raise FedError(f"{name} not found next to {sys.executable} or on PATH; install flwr[simulation]==1.42.0")
    return found


def _env(home: str) -> dict[str, str]:
    """The environment of Flower's programs: this Python's bin first, its own FLWR_HOME, this libpython."""
    env = dict(os.environ)
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env["FLWR_HOME"] = home
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Flower's SuperExec looks for a message to start a ClientApp (or a run to start a ServerApp) for once a
    # second by default; every message waited half a second on it (bench/README.md, issue 20).
    env.setdefault(SUPEREXEC_POLL_ENV, SUPEREXEC_POLL_SECONDS)
    env["PYTHONUNBUFFERED"] = "1"
    own_libpython_first(env)  # started from R, the programs must still load this Python's libpython
    return env


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | np.integer | np.floating):
        return repr(value.item() if isinstance(value, np.generic) else value)
    return json.dumps(str(value))  # a TOML basic string


class FlowerProcess:
    """A running Flower program: ``stop()`` ends it (and its children), ``kill()`` kills it at once.

    Attributes:
        name: ``"superlink"`` or ``"supernode"``.
        address: Where it listens (the SuperLink's ``host:port``) or which SuperLink it joined.
        log: Path of its log file; :meth:`log_text` reads it.
        home: Its ``FLWR_HOME``.
        root: A SuperLink's folder for runs' ``out-dir`` and ``resume`` (None for a node).
    """

    def __init__(self, name: str, args: list[str], *, address: str, home: str, log: str,
                 cleanup: Sequence[str] = (), env: Mapping[str, str] | None = None, root: str | None = None) -> None:
        self.name, self.address, self.home, self.log = name, address, home, log
        self.args = args
        self.root = root
        self._cleanup = list(cleanup)
        self._handle = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self._popen = subprocess.Popen(
            args, stdout=self._handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**_env(home), **(env or {})}, start_new_session=True,
        )
        self.pid = self._popen.pid
        _LIVE.add(self)

    @property
    def alive(self) -> bool:
        """Whether the program is still running."""
        return self._popen.poll() is None

    def log_text(self, last: int | None = None) -> str:
        """The program's log (its ``last`` lines)."""
        try:
            with open(self.log, errors="replace") as handle:
                lines = handle.read().splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-last:] if last else lines)

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def kill(self) -> None:
        """Kill the program and its children at once (SIGKILL), as a machine that dies would."""
        self._signal(signal.SIGKILL)
        self._popen.wait(timeout=30)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the program and its children (SIGTERM, then SIGKILL after ``timeout`` seconds)."""
        if self.alive:
            self._signal(signal.SIGTERM)
            try:
                self._popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._popen.wait(timeout=30)
        self._signal(signal.SIGKILL)  # children that outlived their parent
        self._handle.close()
        for path in self._cleanup:
            shutil.rmtree(path, ignore_errors=True)
        self._cleanup = []
        _LIVE.discard(self)

    def __enter__(self) -> FlowerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.alive else f"stopped ({self._popen.returncode})"
        return f"<Flower {self.name} {self.address}, pid {self.pid}, {state}>"


@atexit.register
def _stop_all() -> None:
    for process in list(_LIVE):
        process.stop(timeout=5)


def _wait_listening(process: FlowerProcess, host: str, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive:
            raise FedError(f"the {process.name} exited at start-up; its log ends:\n{process.log_text(20)}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    process.stop()
    raise FedError(f"the {process.name} did not listen on {host}:{port} within {timeout:g} s; "
                   f"its log ends:\n{process.log_text(20)}")


def _home(home: str | None) -> tuple[str, list[str]]:
    if home:
        os.makedirs(home, exist_ok=True)
        return os.fspath(home), []
    made = tempfile.mkdtemp(prefix="fedr-flwr-")
    return made, [made]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_tls(address: str, root_certificates: Any, argument: str = "root_certificates") -> None:
    """Raise FedValueError, naming ``argument``, when ``address`` is not loopback and no CA certificate is given.

    Without TLS anyone on the path reads the model and the updates and can
    pose as the SuperLink; only a SuperLink on this machine may go without.
    """
    host = address[1:address.index("]")] if address.startswith("[") and "]" in address else address.rsplit(":", 1)[0]
    if not root_certificates and not _is_loopback(host):
        raise FedValueError(
            f"{argument}: connecting to the SuperLink at {address} without TLS is refused (it is not a loopback "
            "address); give the CA certificate of the SuperLink's TLS certificate "
            "(fedr.flower.make_certificates()['ca']), or use a SuperLink on 127.0.0.1"
        )


def superlink(
    host: str = "127.0.0.1",
    port: int | None = None,
    *,
    certificates: Mapping[str, str] | None = None,
    root: str | os.PathLike[str] | None = None,
    node_auth: bool = False,
    home: str | None = None,
    timeout: float = 60.0,
) -> FlowerProcess:
    """Start a Flower SuperLink (``flower-superlink``) and wait until it listens.

    Args:
        host: The address to listen on; ``127.0.0.1`` (loopback) by default.
            Listen on ``0.0.0.0`` only with ``certificates``.
        port: Its port (Fleet, Control and Runtime APIs share it in Flower
            1.42); default a free port.
        certificates: For TLS: ``{"ca": ..., "certfile": ..., "keyfile": ...}``
            as :func:`make_certificates` returns; None runs without TLS
            (``--insecure``), for loopback only.
        root: The folder runs may write to and resume from (their
            ``out-dir`` and ``resume``; ``FEDR_FLOWER_ROOT`` of the SuperLink):
            anything outside it is refused. Default a new temporary folder,
            kept after ``stop()``.
        node_auth: Accept only registered SuperNodes (Flower's
            ``--enable-supernode-auth``; needs ``certificates``): register a
            node's public key (:func:`make_node_key`) with
            ``flwr supernode register`` before it connects.
        home: Its ``FLWR_HOME``; default a temporary folder removed at ``stop()``.
        timeout: Seconds to wait for it to listen.

    Returns:
        A :class:`FlowerProcess`; its ``address`` is what nodes and ``run`` connect to.
    """
    from fedr.flower.apps import ROOT_ENV

    if node_auth and not certificates:
        raise FedValueError("node_auth: SuperNode authentication needs TLS; give certificates= as well")
    port = free_port(host if host != "0.0.0.0" else "127.0.0.1") if port is None else int(port)
    root = os.path.realpath(os.fspath(root)) if root is not None else tempfile.mkdtemp(prefix="fedr-flower-runs-")
    os.makedirs(root, exist_ok=True)
    home, cleanup = _home(home)
    args = [_bin("flower-superlink"), "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
    if node_auth:
        args.append("--enable-supernode-auth")
    if certificates:
        args += ["--ssl-certfile", certificates["certfile"], "--ssl-keyfile", certificates["keyfile"],
                 "--ssl-ca-certfile", certificates["ca"]]
    else:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise FedValueError(
                f"certificates: a SuperLink on {host} must use TLS; give certificates= "
                "(fedr.flower.make_certificates()), or listen on 127.0.0.1"
            )
        args.append("--insecure")
    process = FlowerProcess("superlink", args, address=f"{host if host != '0.0.0.0' else '127.0.0.1'}:{port}",
                            home=home, log=os.path.join(home, "superlink.log"), cleanup=cleanup,
                            env={ROOT_ENV: root}, root=root)
    _wait_listening(process, "127.0.0.1" if host == "0.0.0.0" else host, port, timeout)
    return process


def _node_config(config: Mapping[str, Any]) -> str:
    return " ".join(f"{key}={_toml(value)}" for key, value in config.items() if value is not None)


def supernode(
    data: Any,
    superlink: str | FlowerProcess,
    *,
    client_id: str | None = None,
    node_config: Mapping[str, Any] | None = None,
    root_certificates: str | None = None,
    private_key: str | None = None,
    home: str | None = None,
) -> FlowerProcess:
    """Start a Flower SuperNode (``flower-supernode``) that serves ``data`` to fedr's ClientApp.

    Args:
        data: A path (``.rds``, ``.npz``, ``.csv`` or a dataset folder, see
            :mod:`fedr.flower._node`), a :class:`~fedr.datasets.ClientData`,
            or an ``(x, y)`` pair (written to a ``.npz`` file in the node's
            folder).
        superlink: The SuperLink's ``host:port`` or its :class:`FlowerProcess`.
        client_id: The client's name (default: from the data, see ``client-id``).
        node_config: More node config keys (``rows``, ``label``, ``batch-size``, ``eval-data``, ...).
        root_certificates: The CA certificate to check the SuperLink's TLS
            certificate; None connects without TLS (``--insecure``), which
            only a loopback SuperLink accepts.
        private_key: The node's private key (:func:`make_node_key`) for a
            SuperLink started with SuperNode authentication.
        home: Its ``FLWR_HOME``; default a temporary folder removed at ``stop()``.

    Returns:
        A :class:`FlowerProcess`; ``stop()`` ends the node.

    Raises:
        FedValueError: a non-loopback SuperLink without ``root_certificates``;
            a ``data`` that does not exist.
    """
    from fedr.datasets import ClientData

    address = superlink.address if isinstance(superlink, FlowerProcess) else str(superlink)
    if ":" not in address:
        raise FedValueError(f"superlink: expected 'host:port', got {address!r}")
    check_tls(address, root_certificates)
    home, cleanup = _home(home)
    config: dict[str, Any] = dict(node_config or {})
    _worker.check_settings(config)
    if isinstance(data, ClientData) or (isinstance(data, tuple) and len(data) == 2):
        client = data if isinstance(data, ClientData) else ClientData(data[0], data[1], batch_size=100)
        path = os.path.join(home, f"{client_id or client.client_id or 'client'}.npz")
        np.savez(path, x=client.features(), y=client.y)
        config.setdefault("batch-size", int(np.diff(client.offsets).max()))
        client_id = client_id or client.client_id
        data = path
    elif not isinstance(data, str | os.PathLike):
        raise FedValueError(
            f"data: expected a path, a ClientData or an (x, y) pair, got {type(data).__name__}"
        )
    data = os.path.abspath(os.fspath(data))
    if not os.path.exists(data):
        raise FedValueError(f"data: no file or folder at {data!r}")
    config["data"] = data
    if client_id is not None:
        config["client-id"] = str(client_id)
    args = [_bin("flower-supernode"), "--superlink", address, "--port", str(free_port()),
            "--node-config", _node_config(config)]
    args += ["--root-certificates", root_certificates] if root_certificates else ["--insecure"]
    if private_key:
        args += ["--auth-supernode-private-key", os.path.abspath(os.fspath(private_key))]
    log = os.path.join(home, "supernode.log")
    process = FlowerProcess("supernode", args, address=address, home=home, log=log, cleanup=cleanup)
    time.sleep(0.5)
    if not process.alive:
        raise FedError(f"the supernode exited at start-up; its log ends:\n{process.log_text(20)}")
    return process
