"""Who runs the peers' local steps: compiled replicas on this process's executor, or the Ray executor's actors.

Each peer trains from its *own* model, so unlike a FedAvg round (one weight
vector for every client) each local step is its own job; the step itself is
FedAvg's client task, :func:`fedr.learning.client_task.train_client`.
"""

from __future__ import annotations

import queue
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedr.aggregators import mean
from fedr.datasets import ClientData
from fedr.errors import FedValueError
from fedr.learning.client_task import ClientTask, train_client
from fedr.learning.client_update import ClientUpdate
from fedr.learning.process import RoundJob
from fedr.learning.state import ModelWeights
from fedr.protocol.messages import ClientFailure, ClientOutput, describe_error

__all__ = ["Trainers"]


class Trainers:
    """Runs peers' local steps (each from its own model) on the process's executor.

    In this process: at most ``workers`` compiled replicas built from the
    user's ``model_fn`` on the calling thread (their graphs traced there too,
    so no user code, which from R is R code, runs on a worker thread), lent
    to one peer at a time. On Ray: the Ray executor's ``run_each`` (every
    peer from its own model, all in flight at once on the actors, which run
    the same client task).
    """

    def __init__(self, build: Callable[[], ClientUpdate], executor: Any, inner: Any, local_epochs: int) -> None:
        self.executor = executor
        self.remote = bool(getattr(executor, "remote", False))
        self.first = build()
        if self.first.model.keras_model is inner.model.keras_model:
            raise FedValueError("model_fn: returned the same Keras model twice; it must build a new model at every call")
        self._all = [self.first]
        self._build = build
        self._limit = 1 if self.remote else max(1, int(executor.workers))
        self._free: queue.SimpleQueue[ClientUpdate] = queue.SimpleQueue()
        self._free.put(self.first)
        self._job: tuple[Any, dict[str, Any], int, ClientTask] | None = None
        if self.remote:
            spec = inner.to_spec()  # one spec object: the Ray executor keeps its actors for it
            self._job = (spec.model, spec.client_optimizer, local_epochs, ClientTask())
        self._aggregator = mean()  # its client step is the identity: the peer's update as trained

    def check(self, client: ClientData) -> None:
        """Raise FedValueError when ``client``'s data does not fit the model (FedAvg's check)."""
        self.first.check(client)

    def _prepare(self, clients: Sequence[ClientData]) -> None:
        while len(self._all) < min(self._limit, len(clients)):
            replica = self._build()
            if replica.model.keras_model is self.first.model.keras_model or (
                    replica.optimizer is not None and replica.optimizer is self.first.optimizer):
                raise FedValueError("model_fn, client_optimizer_fn: must build a new model and optimizer at every call")
            self._all.append(replica)
            self._free.put(replica)
        for replica in self._all:
            for client in clients:
                replica.prepare(client, train=True)

    def train(self, jobs: Sequence[tuple[ModelWeights, np.ndarray, ClientData, Any]]) -> list[ClientOutput | ClientFailure]:
        """Each job ``(weights, flat, client, seed)``'s local step, in order; a failure is a ClientFailure."""
        if self.remote:
            assert self._job is not None
            if not jobs:
                return []
            spec, optimizer, epochs, task = self._job
            first_weights, first_flat = jobs[0][0], jobs[0][1]
            job = RoundJob(spec, optimizer, epochs, first_weights, first_flat, [j[2] for j in jobs],
                           [j[3] for j in jobs], self._aggregator, [None] * len(jobs), {}, None, task)
            return self.executor.run_each(job, [(j[0], j[1]) for j in jobs])  # the peers in parallel on the actors
        self._prepare([job[2] for job in jobs])

        def one(job: tuple[ModelWeights, np.ndarray, ClientData, Any]) -> ClientOutput | ClientFailure:
            replica = self._free.get()
            try:
                return train_client(replica, *job)
            except Exception as err:  # noqa: BLE001 - the peer's failure, an event of the round
                return ClientFailure(job[2].client_id, describe_error(err))
            finally:
                self._free.put(replica)

        return self.executor.map(one, list(jobs))
