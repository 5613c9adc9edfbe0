"""Federated evaluation: a state's model evaluated on clients, example-weighted."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedr.datasets import ClientData
from fedr.executors import Executor, check_executor
from fedr.learning._checks import _as_weights, _build_model, _clients
from fedr.learning._local import _Replicas
from fedr.learning._round import combine_metrics
from fedr.learning.client_update import ClientUpdate
from fedr.learning.model import Model
from fedr.learning.state import ModelWeights, check_weights

__all__ = ["FederatedEvaluation", "build_fed_eval"]


class FederatedEvaluation:
    """Evaluates a model state on held-out clients; example-weighted metrics."""

    def __init__(self, replicas: _Replicas, executor: Executor, initial: ModelWeights) -> None:
        self._replicas = replicas
        self._executor = executor
        self._initial = initial

    def __call__(self, state: Any, data: Any) -> dict[str, float]:
        """Return the metrics of ``state``'s model over every client in ``data``.

        Evaluation reads only the state (trainable and non-trainable
        variables): the same state gives the same metrics whatever ran before.

        Args:
            state: A :class:`ServerState`, :class:`ModelWeights`, or a list of
                the trainable weight arrays (or of all of them, as
                ``keras.Model.get_weights()`` gives).
            data: Client data: a list of ``ClientData`` or the reference's nested batches.

        Returns:
            ``{metric: value, "loss": ..., "num_examples": ..., "num_clients": ...}``.

        Raises:
            FedTypeError: ``state`` or ``data`` has a wrong type.
            FedValueError: the state does not fit the model (the message names
                the variable), or a client's data does not fit it.
        """
        weights = _as_weights(state, self._initial)
        check_weights(self._initial, weights)
        clients = _clients(data, "data")
        for client in clients:
            self._replicas.first.check(client)
        self._replicas.prepare(clients, train=False)
        flat = weights.flat_trainable()

        def evaluate(client: ClientData) -> tuple[np.ndarray, float, int]:
            return self._replicas.run(lambda r: r.evaluate(weights, flat, client))

        results = self._executor.map(evaluate, clients)
        return combine_metrics(self._replicas.first.model.metric_names, results)


def build_fed_eval(model_fn: Callable[[], Model], *, executor: Executor | None = None) -> FederatedEvaluation:
    """Build federated evaluation: ``evaluation(state, data)`` returns weighted metrics.

    Args:
        model_fn: The same kind of function given to :func:`build_weighted_fed_avg`.
        executor: Who runs the clients; default ``fedr.executors.threads()``.

    Returns:
        A callable :class:`FederatedEvaluation`.
    """
    executor = check_executor(executor)
    replicas = _Replicas(lambda: ClientUpdate(_build_model(model_fn)), executor.workers)
    return FederatedEvaluation(replicas, executor, replicas.first.weights())
