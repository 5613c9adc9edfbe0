"""``flwr run`` of a fedr process from Python or R, and what it returns (see :func:`run`)."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from fedr.errors import FedError, FedValueError, FedWarning
from fedr.flower._launch import APP_DIR, FlowerProcess, _bin, _env, _home, _toml, check_tls

__all__ = ["FlowerRoundWarning", "FlowerRun", "FlowerSeedWarning", "check_run_target", "flwr_run", "progress_line",
           "run"]


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


class FlowerSeedWarning(FedWarning):
    """The process seed travels in the run config, where every node can read it (see :func:`run`)."""


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


def check_run_target(superlink: Any, root_certificates: Any = None, out_dir: Any = None) -> str | None:
    """Check where a run goes, naming the argument: TLS for a remote SuperLink, ``out_dir`` inside its root.

    The root is the SuperLink handle's ``root`` (or this session's
    ``FEDR_FLOWER_ROOT`` for an address); the SuperLink checks again, this
    says it before anything starts.

    Returns:
        ``out_dir`` as an absolute path, or None when it is None.

    Raises:
        FedValueError: a non-loopback SuperLink without ``root_certificates``
            (``root_certificates``), an ``out_dir`` outside the root (``out_dir``).
    """
    from fedr.flower.apps import ROOT_ENV, confined_path

    address = superlink.address if isinstance(superlink, FlowerProcess) else str(superlink)
    check_tls(address, root_certificates)
    if out_dir is None:
        return None
    out_dir = os.path.abspath(os.fspath(out_dir))
    root = superlink.root if isinstance(superlink, FlowerProcess) else os.environ.get(ROOT_ENV)
    return confined_path(out_dir, "out_dir", root) if root else out_dir


def flwr_run(
    app: str,
    address: str,
    run_config: dict[str, Any],
    *,
    root_certificates: str | None = None,
    home: str | None = None,
    progress: Callable[[str], None] | None = None,
    timeout: float | None = None,
) -> tuple[int, list[str]]:
    """``flwr run <app> --stream`` against the SuperLink at ``address``; (its exit status, its output lines).

    Args:
        app: The Flower app folder.
        address: The SuperLink's ``host:port``.
        run_config: The run config (written to a TOML file for ``--run-config``).
        root_certificates: CA certificate for TLS; None connects with ``insecure = true``.
        home: ``FLWR_HOME`` of the ``flwr`` command (its ``config.toml`` names the
            SuperLink); default a temporary folder, removed afterwards.
        progress: Called with each output line as it comes, or None.
        timeout: Seconds before ``flwr run`` is killed; None waits.
    """
    home, cleanup = _home(home)
    try:
        with open(os.path.join(home, "config.toml"), "w") as handle:
            handle.write("[superlink]\ndefault = \"fedr\"\n\n[superlink.fedr]\n")
            handle.write(f"address = {_toml(address)}\n")
            if root_certificates:
                handle.write(f"root-certificates = {_toml(os.path.abspath(root_certificates))}\n")
            else:
                handle.write("insecure = true\n")
        config_path = os.path.join(home, "run-config.toml")
        with open(config_path, "w") as handle:
            handle.writelines(f"{key} = {_toml(value)}\n" for key, value in run_config.items())
        args = [_bin("flwr"), "run", os.path.abspath(app), "fedr", "--run-config", config_path, "--stream"]
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
    return code, lines


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
    trusted_server: bool = False,
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
            (a path on the SuperLink's machine, inside the SuperLink's
            ``root``, see :func:`superlink`); default a new folder in it.
        min_nodes: Nodes that must be connected for a round to start.
        fraction: Share of the nodes selected per round (seeded by the process's seed).
        evaluate: Also evaluate on the nodes after each round (``eval_`` columns).
        round_timeout: Seconds a round (and each of its message stages) waits for its
            nodes; the late are left out and named.
        trusted_server: False (default): the aggregator's client step
            (differential privacy's clipping, secure aggregation's masking)
            runs on each node, and the server receives only its result. True:
            the nodes send their raw updates and the server clips them:
            central DP with a trusted server, which sees every update. The
            numbers are the same; each round's ``events`` names it. Refused
            with secure aggregation.
        root_certificates: CA certificate of the SuperLink's TLS certificate;
            None connects without TLS, which only a loopback SuperLink accepts.
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
        FedTypeError: the model or the aggregator cannot travel as data.
        FedValueError: a non-loopback SuperLink without ``root_certificates``;
            an ``out_dir`` outside the SuperLink's ``root``.
        FedError: ``flwr run`` failed or the ServerApp wrote no state; the message holds the log's end.
    """
    from fedr.flower.apps import ROOT_ENV, encode_process, write_secret
    from fedr.learning.state import load_state

    if isinstance(rounds, bool) or not isinstance(rounds, int | np.integer) or rounds < 1:
        raise FedValueError(f"rounds: expected a positive integer, got {rounds!r}")
    from fedr.flower._checks import check_flower_run

    check_flower_run(process, min_nodes, fraction, trusted_server)
    if isinstance(round_timeout, bool) or not isinstance(round_timeout, int | float) or not round_timeout > 0:
        raise FedValueError(f"round_timeout: expected a positive number of seconds, got {round_timeout!r}")
    address = superlink.address if isinstance(superlink, FlowerProcess) else str(superlink)
    out_dir = check_run_target(superlink, root_certificates, out_dir)
    root = superlink.root if isinstance(superlink, FlowerProcess) else os.environ.get(ROOT_ENV)
    # Flower hands the run config to every node: the seed goes beside the run's
    # output on the SuperLink's machine instead, where only its owner reads it.
    # That needs this machine to be the SuperLink's (a handle, or its root here).
    secret = process.seed is not None and bool(root)
    if process.seed is not None and not secret:
        warnings.warn(
            f"the process seed travels in the run config, which Flower gives to every node of {address}; "
            f"run from the SuperLink's machine (its handle, or {ROOT_ENV} set to its root) to keep it on the "
            "server, or use seed=None",
            FlowerSeedWarning, stacklevel=2,
        )
    encoded = encode_process(process, state if state is not None else process.initialize(), seed_in_secret=secret)
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="fedr-flower-run-", dir=root)
    os.makedirs(out_dir, exist_ok=True)
    for name in ("state.npz", "history.csv"):
        if os.path.exists(os.path.join(out_dir, name)):
            os.remove(os.path.join(out_dir, name))
    if secret:
        write_secret(out_dir, process.seed)
    run_config = {
        "num-server-rounds": int(rounds), "min-nodes": int(min_nodes), "fraction": float(fraction),
        "evaluate": bool(evaluate), "round-timeout": float(round_timeout), "out-dir": out_dir,
        "trusted-server": bool(trusted_server),
        "fedr-process": encoded,
    }
    code, lines = flwr_run(app or APP_DIR, address, run_config, root_certificates=root_certificates, home=home,
                           progress=progress, timeout=timeout)
    history = _read_history(os.path.join(out_dir, "history.csv"))
    state_path = os.path.join(out_dir, "state.npz")
    if code != 0 or not os.path.exists(state_path):
        tail = "\n".join(lines[-25:])
        raise FedError(f"flwr run failed (exit status {code}) and left no state in {out_dir}; its output ends:\n{tail}")
    for row in history:
        if row.get("round_failed"):
            warnings.warn(str(row.get("events") or f"round {row.get('round')} failed"), FlowerRoundWarning, stacklevel=2)
    return FlowerRun(load_state(state_path, process), history, out_dir)
