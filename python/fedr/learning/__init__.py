"""Federated learning of Keras models: FedAvg and its server-optimizer variants, federated evaluation."""

from fedr.learning.client import ClientOutput, ClientRunner
from fedr.learning.fed_avg import (
    FedAvgProcess,
    FederatedEvaluation,
    LearningProcessOutput,
    ServerState,
    build_fed_eval,
    build_federated_averaging_process,
    build_weighted_fed_avg,
    sample_clients,
)
from fedr.learning.model import Model, from_keras_model, optimizer_fn

__all__ = [
    "ClientOutput",
    "ClientRunner",
    "FedAvgProcess",
    "FederatedEvaluation",
    "LearningProcessOutput",
    "Model",
    "ServerState",
    "build_fed_eval",
    "build_federated_averaging_process",
    "build_weighted_fed_avg",
    "from_keras_model",
    "optimizer_fn",
    "sample_clients",
]
