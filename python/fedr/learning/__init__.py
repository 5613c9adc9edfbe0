"""Federated learning of Keras models: FedAvg composed from its parts, federated evaluation, checkpoints.

The parts, one module each (../shared/DESIGN.md): :mod:`~fedr.learning.model`
(the Keras model with its loss and metrics), :mod:`~fedr.learning.state`
(``ModelWeights``, ``ServerState``, ``save_state``/``load_state``),
:mod:`~fedr.learning.client_update` (one client's round, one compiled graph),
:mod:`~fedr.learning.server_update` (the server optimizer) and
:mod:`~fedr.learning.process` (``build_weighted_fed_avg`` composes them with an
aggregator from :mod:`fedr.aggregators` and an executor from :mod:`fedr.executors`).
:func:`fit` (:mod:`fedr.learning.fit`) is the loop over rounds: client sampling,
validation, early stopping, checkpoints and callbacks.
"""

from fedr.learning._spec_json import aggregator_from_data, aggregator_to_data
from fedr.learning.client_update import ClientFailure, ClientOutput, ClientTask, ClientUpdate
from fedr.learning.fit import (
    Callback,
    FitError,
    FitInterrupted,
    History,
    LambdaCallback,
    ProgressLines,
    RoundSkippedWarning,
    fit,
    round_line,
)
from fedr.learning.model import Model, ModelSpec, from_keras_model, model_spec, optimizer_fn
from fedr.learning.process import (
    ClientsDroppedWarning,
    ClientsFailedWarning,
    FedAvgProcess,
    FederatedEvaluation,
    LearningProcessOutput,
    ProcessSpec,
    RoundPlan,
    build_fed_eval,
    build_federated_averaging_process,
    build_weighted_fed_avg,
    sample_clients,
    sample_clients_poisson,
)
from fedr.learning.server_update import ServerOptimizer
from fedr.learning.state import ModelWeights, ServerState, StateFileError, load_state, save_state

__all__ = [
    "Callback",
    "ClientFailure",
    "ClientTask",
    "ClientOutput",
    "ClientUpdate",
    "ClientsDroppedWarning",
    "ClientsFailedWarning",
    "FedAvgProcess",
    "FederatedEvaluation",
    "FitError",
    "FitInterrupted",
    "History",
    "LambdaCallback",
    "LearningProcessOutput",
    "Model",
    "ModelSpec",
    "ModelWeights",
    "ProcessSpec",
    "ProgressLines",
    "RoundSkippedWarning",
    "RoundPlan",
    "ServerOptimizer",
    "ServerState",
    "StateFileError",
    "aggregator_from_data",
    "aggregator_to_data",
    "build_fed_eval",
    "build_federated_averaging_process",
    "build_weighted_fed_avg",
    "fit",
    "from_keras_model",
    "load_state",
    "model_spec",
    "optimizer_fn",
    "round_line",
    "sample_clients",
    "sample_clients_poisson",
    "save_state",
]
