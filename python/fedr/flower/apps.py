"""fedr's Flower apps: ``client_app`` (every node) and ``server_app`` (a process sent in the run config).

A Flower app's ``pyproject.toml`` names its components::

    [tool.flwr.app.components]
    serverapp = "fedr.flower.apps:server_app"   # or your own, see server_app_for()
    clientapp = "fedr.flower.apps:client_app"

``client_app`` serves the node's data (its node config, see
:mod:`fedr.flower._node`) to whatever fedr process the server runs.
``server_app`` runs the process in the run config's ``fedr-process`` (written
by :func:`fedr.flower.run`, e.g. from R); :func:`server_app_for` makes a
ServerApp from a Python function that builds the process.

Run config keys read by the ServerApp: ``num-server-rounds``, ``min-nodes``
(2), ``fraction`` (1.0), ``evaluate`` (false), ``round-timeout`` (600 s),
``out-dir`` (where ``state.npz`` and ``history.csv`` go, on the SuperLink's
machine), ``resume`` (a ``state.npz`` to start from), ``fedr-process``.
"""

from __future__ import annotations

import base64
import os
import pickle
import tempfile
from collections.abc import Callable
from typing import Any

from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

from fedr.errors import FedValueError
from fedr.flower import _node
from fedr.flower._strategy import FedrStrategy
from fedr.learning.process import FedAvgProcess, ProcessSpec
from fedr.learning.state import ServerState, load_state, save_state

__all__ = ["client_app", "decode_process", "encode_process", "server_app", "server_app_for"]

client_app = ClientApp()
client_app.train()(_node.train)
client_app.evaluate()(_node.evaluate)
client_app.query()(_node.describe)


def encode_process(process: FedAvgProcess, state: ServerState | None = None) -> str:
    """A process (and optionally its state) as one string for the run config's ``fedr-process``.

    It is a pickle (base64) of the :class:`~fedr.learning.ProcessSpec` and the
    state file's bytes: read only by the ServerApp of the person who starts
    the run (the same trust as the app's own code), never by the nodes.
    """
    payload: dict[str, Any] = {"spec": process.to_spec(), "state": None}
    if state is not None:
        process.check_state(state)
        with tempfile.TemporaryDirectory() as tmp:
            path = save_state(state, os.path.join(tmp, "state.npz"))
            with open(path, "rb") as handle:
                payload["state"] = handle.read()
    return base64.b64encode(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)).decode("ascii")


def decode_process(text: str) -> tuple[FedAvgProcess, ServerState | None]:
    """The process (built with the serial executor: the nodes train) and state of :func:`encode_process`."""
    from fedr.executors import serial

    if not text:
        raise FedValueError(
            "run config `fedr-process`: empty; start runs of fedr's built-in app with fedr.flower.run() "
            "(R: fed_flower_run()), or write your own ServerApp with fedr.flower.server_app_for()"
        )
    payload = pickle.loads(base64.b64decode(text))  # noqa: S301 - written by the run's owner, see encode_process
    spec: ProcessSpec = payload["spec"]
    process = spec.build(executor=serial())
    state = None
    if payload.get("state") is not None:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "state.npz")
            with open(path, "wb") as handle:
                handle.write(payload["state"])
            state = load_state(path, process)
    return process, state


def _run(process: FedAvgProcess, state: ServerState | None, grid: Any, config: dict[str, Any]) -> None:
    if config.get("resume"):
        state = load_state(str(config["resume"]), process)
    strategy = FedrStrategy(
        process, state,
        min_nodes=int(config.get("min-nodes", 2)),
        fraction=float(config.get("fraction", 1.0)),
        evaluate=bool(config.get("evaluate", False)),
        out_dir=str(config.get("out-dir") or "") or None,
        wait_timeout=float(config.get("wait-timeout", 300)),
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
        process = process_fn(config)
        if not isinstance(process, FedAvgProcess):
            raise FedValueError(f"process_fn: expected it to return a FedAvgProcess, got {type(process).__name__}")
        _run(process, None, grid, config)

    return app


server_app = ServerApp()


@server_app.main()
def _main(grid: Any, context: Any) -> None:
    config = dict(context.run_config)
    process, state = decode_process(str(config.get("fedr-process", "")))
    _run(process, state, grid, config)
