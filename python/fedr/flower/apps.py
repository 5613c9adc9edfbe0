"""fedr's Flower apps: ``server_app`` (a process sent in the run config) and ``client_app`` (every node).

A Flower app's ``pyproject.toml`` names its components::

    [tool.flwr.app.components]
    serverapp = "fedr.flower.apps:server_app"   # or your own, see server_app_for()
    clientapp = "fedr.flower.clientapp:app"

The ClientApp (:mod:`fedr.flower.clientapp`; ``client_app`` here is the
same object) serves the node's data (its node config, see
:mod:`fedr.flower._node`) to whatever fedr process the server runs, through
the node's long-lived worker (:mod:`fedr.flower._worker`).
``server_app`` runs the process in the run config's ``fedr-process`` (written
by :func:`fedr.flower.run`, e.g. from R); :func:`server_app_for` makes a
ServerApp from a Python function that builds the process.

Run config keys read by the ServerApp: ``num-server-rounds``, ``min-nodes``
(2), ``fraction`` (1.0), ``evaluate`` (false), ``round-timeout`` (600 s),
``trusted-server`` (false: the aggregator's client step runs on the nodes),
``out-dir`` (where ``state.npz`` and ``history.csv`` go, on the SuperLink's
machine), ``resume`` (a ``state.npz`` to start from), ``fedr-process``.

Whoever can submit a run chooses the run config, so the ServerApp treats it
as data: ``fedr-process`` is JSON (:meth:`fedr.learning.ProcessSpec.to_json`:
Keras configs, numbers, a built-in aggregator by name), never a pickle; and
``out-dir`` and ``resume`` must lie inside the folder the SuperLink's owner
allows: the environment variable ``FEDR_FLOWER_ROOT`` of the SuperLink
(``fedr.flower.superlink(root=)`` sets it), else the SuperLink's working
directory. A relative path is read inside that folder; anything that
resolves outside it (an absolute path elsewhere, ``..``, a symbolic link
out) refuses the run. Flower also gives the run config to every node's
ClientApp: what ``fedr-process`` holds (the model, the starting state, the
aggregator's parameters) is visible to the nodes. So the process seed does
not travel there: :func:`fedr.flower.run` writes it to ``.fedr-secret.json``
in ``out-dir`` on the SuperLink's machine (mode 0600) and the ServerApp reads
it from there; a node gets only its keyed seed words (``fedr._seeds``).
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import tempfile
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flwr.serverapp import ServerApp

from fedr.errors import FedValueError
from fedr.flower.clientapp import app as client_app
from fedr.learning.state import ServerState, load_state, save_state

if TYPE_CHECKING:
    from fedr.learning.process import FedAvgProcess

__all__ = ["ROOT_ENV", "SECRET_FILE", "allowed_root", "client_app", "confined_path", "decode_process",
           "encode_process", "server_app", "server_app_for", "write_secret"]

#: The SuperLink's environment variable naming the folder a run config may read and write.
ROOT_ENV = "FEDR_FLOWER_ROOT"
_FORMAT = "fedr-flower-process"
#: In ``out-dir``: what the server needs and the nodes must not see (the process seed).
SECRET_FILE = ".fedr-secret.json"


def allowed_root() -> str:
    """The folder run configs may use (``$FEDR_FLOWER_ROOT``, else the working directory), resolved."""
    return os.path.realpath(os.environ.get(ROOT_ENV) or os.getcwd())


def confined_path(value: Any, key: str, root: str | None = None) -> str:
    """``value`` resolved inside ``root`` (default :func:`allowed_root`); FedValueError naming ``key`` if outside.

    A relative path is taken inside ``root``; the check is on the resolved path
    (``..`` and symbolic links followed), so nothing outside can be reached.
    """
    root = os.path.realpath(root or allowed_root())
    text = os.fspath(value) if isinstance(value, os.PathLike) else str(value)
    path = os.path.realpath(os.path.join(root, text))
    if os.path.commonpath([root, path]) != root:
        raise FedValueError(
            f"{key}: {text!r} is outside the folder this SuperLink allows run configs to use ({root}); "
            f"give a path inside it (the SuperLink's owner chooses the folder with {ROOT_ENV}, "
            "fedr.flower.superlink(root=))"
        )
    return path


def encode_process(process: FedAvgProcess, state: ServerState | None = None, *, seed_in_secret: bool = False) -> str:
    """A process (and optionally its state) as JSON text for the run config's ``fedr-process``.

    The process is its :class:`~fedr.learning.ProcessSpec` as JSON (Keras
    configs, numbers, a built-in aggregator by name and parameters) and the
    state is its ``state.npz`` file (base64; numpy arrays, no pickles): the
    ServerApp rebuilds both as data and runs none of the sender's code.

    Args:
        process: The process.
        state: Its starting state, or None.
        seed_in_secret: Leave the process seed out (the nodes see the run
            config); the ServerApp then reads it from :data:`SECRET_FILE` in
            ``out-dir``, written by :func:`write_secret`.

    Raises:
        FedTypeError: the model, an optimizer or the aggregator cannot travel as data.
    """
    spec = process.to_spec()
    if seed_in_secret:
        spec = spec._replace(seed=None)
    payload: dict[str, Any] = {"format": _FORMAT, "spec": spec.to_json(), "state": None, "seed-in-secret": seed_in_secret}
    if state is not None:
        process.check_state(state)
        with tempfile.TemporaryDirectory() as tmp:
            path = save_state(state, os.path.join(tmp, "state.npz"))
            with open(path, "rb") as handle:
                payload["state"] = base64.b64encode(handle.read()).decode("ascii")
    return json.dumps(payload, separators=(",", ":"))


def write_secret(out_dir: str, seed: int) -> str:
    """Write the process seed to :data:`SECRET_FILE` in ``out_dir``, readable by this user only; return its path."""
    path = os.path.join(out_dir, SECRET_FILE)
    if os.path.lexists(path):
        os.remove(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"format": _FORMAT, "seed": int(seed)}, handle)
    return path


def _read_secret(out_dir: str | None) -> int:
    path = os.path.join(out_dir, SECRET_FILE) if out_dir else None
    try:
        with open(path or "", encoding="utf-8") as handle:
            secret = json.load(handle)
        seed = secret["seed"]
        if secret.get("format") != _FORMAT or isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(seed)
    except (OSError, ValueError, KeyError, TypeError):
        raise FedValueError(
            f"run config `fedr-process`: its seed is kept on the SuperLink's machine, but {path or 'out-dir'} "
            "holds no readable seed; start the run with fedr.flower.run() on the SuperLink's machine"
        ) from None
    return seed


def decode_process(text: str, out_dir: str | None = None) -> tuple[FedAvgProcess, ServerState | None]:
    """The process (built with the serial executor: the nodes train) and state of :func:`encode_process`.

    Args:
        text: The run config's ``fedr-process``.
        out_dir: The run's ``out-dir`` (resolved), where a seed kept out of
            the run config is (:func:`write_secret`).

    Raises:
        FedValueError: empty, or not fedr's JSON (a pickle is refused unread),
            an unknown aggregator, or a secret seed that ``out_dir`` does not hold.
    """
    from fedr.executors import serial
    from fedr.learning.spec import ProcessSpec

    if not text:
        raise FedValueError(
            "run config `fedr-process`: empty; start runs of fedr's built-in app with fedr.flower.run() "
            "(R: fed_flower_run()), or write your own ServerApp with fedr.flower.server_app_for()"
        )
    try:
        payload = json.loads(text)
    except ValueError:
        payload = None
    keys = {"format", "spec", "state", "seed-in-secret"}
    if not isinstance(payload, dict) or payload.get("format") != _FORMAT or set(payload) != keys:
        raise FedValueError(
            "run config `fedr-process`: not a fedr process in JSON, so the run is refused (fedr never unpickles "
            "or runs code from a run config); start the run with fedr.flower.run() of this fedr version"
        )
    try:
        spec = ProcessSpec.from_json(payload["spec"])
    except FedValueError as err:
        raise FedValueError(f"run config `fedr-process`: {err}") from None
    if payload["seed-in-secret"] is True:
        spec = spec._replace(seed=_read_secret(out_dir))
    process = spec.build(executor=serial())
    state = None
    if payload["state"] is not None:
        try:
            data = base64.b64decode(str(payload["state"]), validate=True)
        except (binascii.Error, ValueError):
            raise FedValueError("run config `fedr-process`: its state is not base64") from None
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "state.npz")
            with open(path, "wb") as handle:
                handle.write(data)
            state = load_state(path, process)
    return process, state


def _paths(config: dict[str, Any]) -> tuple[str | None, str | None]:
    """``resume`` and ``out-dir`` of the run config, inside :func:`allowed_root` (checked before anything runs)."""
    resume = confined_path(config["resume"], "run config `resume`") if config.get("resume") else None
    out_dir = confined_path(config["out-dir"], "run config `out-dir`") if config.get("out-dir") else None
    return resume, out_dir


def _run(process: FedAvgProcess, state: ServerState | None, grid: Any, config: dict[str, Any],
         paths: tuple[str | None, str | None]) -> None:
    from fedr.flower._strategy import FedrStrategy

    resume, out_dir = paths
    if resume:
        state = load_state(resume, process)
    strategy = FedrStrategy(
        process, state,
        min_nodes=int(config.get("min-nodes", 2)),
        fraction=float(config.get("fraction", 1.0)),
        evaluate=bool(config.get("evaluate", False)),
        out_dir=out_dir,
        wait_timeout=float(config.get("wait-timeout", 300)),
        trusted_server=config.get("trusted-server", False) is True,
    )
    strategy.start(grid, num_rounds=int(config.get("num-server-rounds", 1)),
                   timeout=float(config.get("round-timeout", 600)))


def server_app_for(process_fn: Callable[[dict[str, Any]], FedAvgProcess]) -> ServerApp:
    """A Flower ``ServerApp`` that runs the fedr process ``process_fn(run_config)`` builds.

    Args:
        process_fn: Builds the process from the run config (a dict of the
            app's ``[tool.flwr.app.config]`` with the run's overrides), e.g.
            with :func:`fedr.learning.build_weighted_fed_avg`.

    Returns:
        The ServerApp, for ``serverapp = "<module>:app"`` in the app's ``pyproject.toml``.
    """
    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        config = dict(context.run_config)
        paths = _paths(config)
        process = process_fn(config)
        from fedr.learning.process import FedAvgProcess

        if not isinstance(process, FedAvgProcess):
            raise FedValueError(f"process_fn: expected it to return a FedAvgProcess, got {type(process).__name__}")
        _run(process, None, grid, config, paths)

    return app


server_app = ServerApp()


@server_app.main()
def _main(grid: Any, context: Any) -> None:
    config = dict(context.run_config)
    paths = _paths(config)
    process, state = decode_process(str(config.get("fedr-process", "")), paths[1])
    _run(process, state, grid, config, paths)
