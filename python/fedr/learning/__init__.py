"""Federated learning of Keras models: FedAvg composed from its parts, federated evaluation, checkpoints.

The parts, one module each (../shared/DESIGN.md): :mod:`~fedr.learning.model`
(the Keras model with its loss and metrics), :mod:`~fedr.learning.state`
(``ModelWeights``, ``ServerState``, ``save_state``/``load_state``),
:mod:`~fedr.learning.client_update` (one client's round, one compiled graph),
:mod:`~fedr.learning.server_update` (the server optimizer) and
:mod:`~fedr.learning.process` (``build_weighted_fed_avg`` composes them with an
aggregator from :mod:`fedr.aggregators` and an executor from :mod:`fedr.executors`).
:func:`fit` is the loop over rounds: client sampling, validation, early
stopping, checkpoints and callbacks.

The names load on first use (PEP 562): ``import fedr.learning`` and its
TensorFlow-free parts (``state``: ModelWeights, ServerState, checkpoints)
import no TensorFlow; the model, client update and process do.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

# Each public name and the module that owns it.
_OWNERS: dict[str, str] = {
    "BudgetExhaustedWarning": "fedr.learning._fit",
    "Callback": "fedr.learning._fit",
    "ClientFailure": "fedr.learning.client_update",
    "ClientOutput": "fedr.learning.client_update",
    "ClientStates": "fedr.learning.client_state",
    "ClientTask": "fedr.learning.client_task",
    "ClientUpdate": "fedr.learning.client_update",
    "ClientsDroppedWarning": "fedr.learning.process",
    "ClientsFailedWarning": "fedr.learning.process",
    "FedAvgProcess": "fedr.learning.process",
    "FedOpt": "fedr.learning.fedopt",
    "FederatedEvaluation": "fedr.learning.process",
    "FitError": "fedr.learning._fit",
    "FitInterrupted": "fedr.learning._fit",
    "History": "fedr.learning._fit",
    "LambdaCallback": "fedr.learning._fit",
    "LearningProcessOutput": "fedr.learning.process",
    "Model": "fedr.learning.model",
    "ModelSpec": "fedr.learning.model",
    "ModelWeights": "fedr.learning.state",
    "ProcessSpec": "fedr.learning.process",
    "ProgressLines": "fedr.learning._fit",
    "RoundPlan": "fedr.learning.process",
    "RoundSkippedWarning": "fedr.learning._fit",
    "ServerOptimizer": "fedr.learning.server_update",
    "ServerState": "fedr.learning.state",
    "StateFileError": "fedr.learning.state",
    "aggregator_from_data": "fedr.learning._spec_json",
    "aggregator_to_data": "fedr.learning._spec_json",
    "build_fed_eval": "fedr.learning.process",
    "build_federated_averaging_process": "fedr.learning.builders",
    "build_scaffold": "fedr.learning.builders",
    "build_weighted_fed_avg": "fedr.learning.builders",
    "fit": "fedr.learning._fit",
    "from_keras_model": "fedr.learning.model",
    "load_client_states": "fedr.learning.client_state",
    "load_state": "fedr.learning.state",
    "model_spec": "fedr.learning.model",
    "optimizer_fn": "fedr.learning.model",
    "round_line": "fedr.learning._fit",
    "sample_clients": "fedr.learning.process",
    "sample_clients_poisson": "fedr.learning.process",
    "save_state": "fedr.learning.state",
}

__all__ = sorted(_OWNERS)


def __getattr__(name: str) -> Any:
    owner = _OWNERS.get(name)
    if owner is None:
        if importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return importlib.import_module(f"{__name__}.{name}")  # a submodule: fedr.learning.process
    value = getattr(importlib.import_module(owner), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_OWNERS))
