"""Start and stop Flower's own processes (SuperLink, SuperNodes, ``flwr run``) from Python or R.

These are thin launchers of Flower's command-line programs, the same commands
the README shows: ``flower-superlink``, ``flower-supernode`` and ``flwr run``.
Each started program runs in its own process group with its log in a file;
its handle's ``stop()`` ends the whole group (the SuperLink's SuperExec and
ServerApp, the node's ClientApp processes), and so does the end of the Python
session. :func:`make_certificates` writes a small certificate authority and a
server certificate with ``cryptography``, for TLS between the SuperLink and
its nodes.
"""

from __future__ import annotations

import atexit
import csv
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from fedr._r import own_libpython_first
from fedr.errors import FedError, FedValueError, FedWarning

__all__ = ["FlowerProcess", "FlowerRoundWarning", "FlowerRun", "progress_line", "make_certificates", "run", "superlink", "supernode"]

_LIVE: weakref.WeakSet[FlowerProcess] = weakref.WeakSet()
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
    """

    def __init__(self, name: str, args: list[str], *, address: str, home: str, log: str,
                 cleanup: Sequence[str] = ()) -> None:
        self.name, self.address, self.home, self.log = name, address, home, log
        self.args = args
        self._cleanup = list(cleanup)
        self._handle = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self._popen = subprocess.Popen(
            args, stdout=self._handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=_env(home), start_new_session=True,
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


def superlink(
    host: str = "127.0.0.1",
    port: int | None = None,
    *,
    certificates: Mapping[str, str] | None = None,
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
        home: Its ``FLWR_HOME``; default a temporary folder removed at ``stop()``.
        timeout: Seconds to wait for it to listen.

    Returns:
        A :class:`FlowerProcess`; its ``address`` is what nodes and ``run`` connect to.
    """
    port = free_port(host if host != "0.0.0.0" else "127.0.0.1") if port is None else int(port)
    home, cleanup = _home(home)
    args = [_bin("flower-superlink"), "--host", host, "--port", str(port), "--disable-runtime-dependency-installation"]
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
                            home=home, log=os.path.join(home, "superlink.log"), cleanup=cleanup)
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
            certificate; None connects without TLS (``--insecure``).
        home: Its ``FLWR_HOME``; default a temporary folder removed at ``stop()``.

    Returns:
        A :class:`FlowerProcess`; ``stop()`` ends the node.
    """
    from fedr.datasets import ClientData

    address = superlink.address if isinstance(superlink, FlowerProcess) else str(superlink)
    if ":" not in address:
        raise FedValueError(f"superlink: expected 'host:port', got {address!r}")
    home, cleanup = _home(home)
    config: dict[str, Any] = dict(node_config or {})
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
    log = os.path.join(home, "supernode.log")
    process = FlowerProcess("supernode", args, address=address, home=home, log=log, cleanup=cleanup)
    time.sleep(0.5)
    if not process.alive:
        raise FedError(f"the supernode exited at start-up; its log ends:\n{process.log_text(20)}")
    return process


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FEDR_LINE = re.compile(r"round \d+|fedr on Flower|the run stops|left out|WARNING|ERROR|Error|Traceback")


def progress_line(line: str) -> str | None:
    """A run's log line as shown by default (fedr's rounds, warnings, errors), or None for Flower's chatter."""
    text = _ANSI.sub("", line).strip()
    if not text or not _FEDR_LINE.search(text):
        return None
    return re.sub(r"^(INFO|WARNING|ERROR)\s*:\s*", lambda m: "" if m.group(1) == "INFO" else f"{m.group(1)}: ", text)


def _print_progress(line: str) -> None:
    shown = progress_line(line)
    if shown is not None:
        print(shown, flush=True)


class FlowerRoundWarning(FedWarning):
    """A round of a Flower run failed (too few usable updates) or was refused; the state stayed as it was."""


class FlowerRun(NamedTuple):
    """What :func:`run` returns: the last good state, the history rows, and where they are on disk."""

    state: Any
    history: list[dict[str, Any]]
    out_dir: str


def _read_history(path: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []

    def value(text: str) -> Any:
        for kind in (int, float):
            try:
                return kind(text)
            except ValueError:
                pass
        return text

    with open(path, newline="") as handle:
        return [{k: value(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def run(
    process: Any,
    rounds: int,
    superlink: str | FlowerProcess,
    *,
    state: Any = None,
    out_dir: str | None = None,
    min_nodes: int = 2,
    fraction: float = 1.0,
    evaluate: bool = False,
    round_timeout: float = 600.0,
    root_certificates: str | None = None,
    app: str | None = None,
    home: str | None = None,
    progress: Callable[[str], None] | None = _print_progress,
    timeout: float | None = None,
) -> FlowerRun:
    """Run a fedr process on a Flower federation with ``flwr run`` and return its result.

    The process (its model as Keras configs, optimizers, aggregator, seed) and
    the starting state travel in the run config to fedr's ServerApp on the
    SuperLink's machine, which trains with the connected SuperNodes as
    clients and writes ``state.npz`` and ``history.csv`` to ``out_dir``
    after every round.

    Args:
        process: A :class:`~fedr.learning.FedAvgProcess` whose model can travel
            (Keras objects; no loss or layer written in R or Python).
        rounds: Rounds to run.
        superlink: The SuperLink's ``host:port`` or its :class:`FlowerProcess`.
        state: The state to start from; default ``process.initialize()``.
        out_dir: Where the ServerApp writes ``state.npz`` and ``history.csv``
            (a path on the SuperLink's machine); default a new temporary folder.
        min_nodes: Nodes that must be connected for a round to start.
        fraction: Share of the nodes selected per round (seeded by the process's seed).
        evaluate: Also evaluate on the nodes after each round (``eval_`` columns).
        round_timeout: Seconds a round waits for its nodes; the late are left out and named.
        root_certificates: CA certificate of the SuperLink's TLS certificate;
            None connects without TLS.
        app: The Flower app folder; default fedr's built-in app.
        home: ``FLWR_HOME`` of the ``flwr`` command; default a temporary folder.
        progress: Called with each log line of the run; by default fedr's
            lines (rounds, warnings, errors) are printed (:func:`progress_line`);
            ``print`` shows all of Flower's log; None is quiet.
        timeout: Seconds before the whole run is stopped; None waits.

    Returns:
        A :class:`FlowerRun` with the last good state, the history and
        ``out_dir``. A failed round (fewer usable updates than the process's
        ``min_clients``) or a refused one is a :class:`FlowerRoundWarning`
        and a history row with ``round_failed = 1``; the state stays the last good one.

    Raises:
        FedTypeError: the model cannot travel.
        FedError: ``flwr run`` failed or the ServerApp wrote no state; the message holds the log's end.
    """
    from fedr.flower.apps import encode_process
    from fedr.learning.state import load_state

    if isinstance(rounds, bool) or not isinstance(rounds, int | np.integer) or rounds < 1:
        raise FedValueError(f"rounds: expected a positive integer, got {rounds!r}")
    from fedr.flower._strategy import check_flower_run

    check_flower_run(process, min_nodes, fraction)
    if isinstance(round_timeout, bool) or not isinstance(round_timeout, int | float) or not round_timeout > 0:
        raise FedValueError(f"round_timeout: expected a positive number of seconds, got {round_timeout!r}")
    encoded = encode_process(process, state if state is not None else process.initialize())
    address = superlink.address if isinstance(superlink, FlowerProcess) else str(superlink)
    out_dir = os.path.abspath(out_dir or tempfile.mkdtemp(prefix="fedr-flower-run-"))
    os.makedirs(out_dir, exist_ok=True)
    for name in ("state.npz", "history.csv"):
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    home, cleanup = _home(home)
    try:
        with open(os.path.join(home, "config.toml"), "w") as handle:
            handle.write("[superlink]\ndefault = \"fedr\"\n\n[superlink.fedr]\n")
            handle.write(f"address = {_toml(address)}\n")
            if root_certificates:
                handle.write(f"root-certificates = {_toml(os.path.abspath(root_certificates))}\n")
            else:
                handle.write("insecure = true\n")
        run_config = {
            "num-server-rounds": int(rounds), "min-nodes": int(min_nodes), "fraction": float(fraction),
            "evaluate": bool(evaluate), "round-timeout": float(round_timeout), "out-dir": out_dir,
            "fedr-process": encoded,
        }
        config_path = os.path.join(home, "run-config.toml")
        with open(config_path, "w") as handle:
            handle.writelines(f"{key} = {_toml(value)}\n" for key, value in run_config.items())
        args = [_bin("flwr"), "run", os.path.abspath(app or APP_DIR), "fedr", "--run-config", config_path, "--stream"]
        lines: list[str] = []
        popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                 env=_env(home), cwd=home, start_new_session=True)
        timer = threading.Timer(timeout, lambda: os.killpg(popen.pid, signal.SIGKILL)) if timeout else None
        if timer:
            timer.start()
        try:
            assert popen.stdout is not None
            for line in popen.stdout:
                line = line.rstrip("\n")
                lines.append(line)
                if progress is not None:
                    progress(line)
            code = popen.wait()
        finally:
            if timer:
                timer.cancel()
    finally:
        for path in cleanup:
            shutil.rmtree(path, ignore_errors=True)
    history = _read_history(os.path.join(out_dir, "history.csv"))
    state_path = os.path.join(out_dir, "state.npz")
    if code != 0 or not os.path.exists(state_path):
        tail = "\n".join(lines[-25:])
        raise FedError(f"flwr run failed (exit status {code}) and left no state in {out_dir}; its output ends:\n{tail}")
    for row in history:
        if row.get("round_failed"):
            warnings.warn(str(row.get("events") or f"round {row.get('round')} failed"), FlowerRoundWarning, stacklevel=2)
    return FlowerRun(load_state(state_path, process), history, out_dir)


def make_certificates(
    directory: str, hosts: Sequence[str] = ("127.0.0.1", "localhost"), *, days: int = 365
) -> dict[str, str]:
    """Write a certificate authority and a server certificate for ``hosts`` (TLS for a SuperLink).

    Made with ``cryptography`` (ECDSA P-256, SHA-256). Give the SuperLink
    ``certfile``/``keyfile``/``ca`` and each node and ``flwr`` the ``ca``
    file (``--root-certificates``). For a real federation use certificates of
    your organisation's CA; these are for tests and trials.

    Returns:
        ``{"ca": ..., "certfile": ..., "keyfile": ...}``, paths in ``directory``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedr test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = {"ca": os.path.join(directory, "ca.pem"), "certfile": os.path.join(directory, "server.pem"),
             "keyfile": os.path.join(directory, "server.key")}
    with open(paths["ca"], "wb") as handle:
        handle.write(ca.public_bytes(serialization.Encoding.PEM))
    with open(paths["certfile"], "wb") as handle:
        handle.write(cert.public_bytes(serialization.Encoding.PEM))
    fd = os.open(paths["keyfile"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return paths
