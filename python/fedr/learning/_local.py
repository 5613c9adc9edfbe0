"""The local carrier's way of running many client tasks: model replicas, grouped small clients.

Split from :mod:`fedr.learning.process`: in-process, a round's clients run on
an executor's workers, each borrowing one of at most ``workers`` compiled
replicas; clients of at most :data:`SMALL_CLIENT_ROWS` rows train in groups,
one graph call per group (``ClientUpdate.train_group``), with the numbers of
one call each.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from fedr.datasets import ClientData
from fedr.errors import FedError, FedValueError
from fedr.executors import Executor
from fedr.learning.client_task import apply_client_step, run_client
from fedr.learning.client_update import ClientUpdate
from fedr.learning.state import ModelWeights
from fedr.protocol.messages import ClientFailure, ClientOutput, carry_stage, describe_error

__all__ = ["SMALL_CLIENT_ROWS", "LocalCarrier", "run_local_round"]


class _Replicas:
    """Model replicas, at most one per worker, lent to one client at a time.

    Replicas are built when a round first needs them (up to the executor's
    workers and the round's clients), always on the calling thread, and their
    graphs are traced there too (:meth:`prepare`): user code (from R, R code)
    never runs on a worker thread.
    """

    def __init__(self, build: Callable[[], ClientUpdate], limit: int) -> None:
        self._build = build
        self._limit = limit
        self.first = build()
        self._all = [self.first]
        self._free: queue.SimpleQueue[ClientUpdate] = queue.SimpleQueue()
        self._free.put(self.first)

    def prepare(
        self, clients: Sequence[ClientData], *, train: bool, grouped: Sequence[ClientData] = (), defer: bool = False,
    ) -> Callable[[], None] | None:
        """Build the replicas ``clients`` can use at once and trace their graphs for them.

        ``grouped``: clients that will train in groups (:meth:`ClientUpdate.train_group`); that graph is traced too.
        With ``defer``, only the replicas built already are traced here; the
        function returned (None if there is nothing left to do) builds and
        traces the others, each joining the pool when ready: call it on this
        thread while workers train on the first ones (round 1 then waits for
        one trace, not one per worker).
        """
        jobs = [(c, False) for c in clients] + [(c, True) for c in grouped]
        for replica in self._all:
            self._trace(replica, jobs, train)
        missing = min(self._limit, len(clients)) - len(self._all)
        if missing <= 0:
            return None

        def grow() -> None:
            for _ in range(missing):
                replica = self._new()
                self._trace(replica, jobs, train)
                self._all.append(replica)
                self._free.put(replica)

        if defer:
            return grow
        grow()
        return None

    def _new(self) -> ClientUpdate:
        replica = self._build()
        first = self.first
        if replica.model.keras_model is first.model.keras_model:
            raise FedValueError(
                "model_fn: returned the same Keras model twice; it must build a new model "
                "at every call (each worker trains its own copy)"
            )
        if replica.optimizer is not None and replica.optimizer is first.optimizer:
            raise FedValueError(
                "client_optimizer_fn: returned the same optimizer twice; it must build a new "
                "optimizer at every call, e.g. optimizer_fn('sgd', 0.02)"
            )
        return replica

    @staticmethod
    def _trace(replica: ClientUpdate, jobs: Sequence[tuple[ClientData, bool]], train: bool) -> None:
        for client, group in jobs:
            try:
                replica.prepare(client, train=train, group=group)
            except FedError:
                raise
            except Exception as err:
                what = "training" if train else "evaluation"
                raise FedError(
                    f"client '{client.client_id}': building the {what} graph failed "
                    f"(the model, its loss or metrics raised): {describe_error(err)}"
                ) from err

    def run(self, fn: Callable[[ClientUpdate], Any]) -> Any:
        replica = self._free.get()
        try:
            return fn(replica)
        finally:
            self._free.put(replica)


def _map_while(executor: Executor, fn: Callable[[Any], Any], items: list[Any], work: Callable[[], None]) -> list[Any]:
    """``executor.map(fn, items)`` from a helper thread while ``work()`` runs on this one (it may raise)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["out"] = executor.map(fn, items)
        except BaseException as err:  # noqa: BLE001 - re-raised on the calling thread
            box["err"] = err

    helper = threading.Thread(target=target, name="fedr-round", daemon=True)
    helper.start()
    try:
        work()
    finally:
        helper.join()
    if "err" in box:
        raise box["err"]
    return box["out"]


# Clients with at most this many rows to train on (rows x local epochs) train
# in groups, one graph call per group (ClientUpdate.train_group): below it the
# ~1 ms of dispatch per call outweighs the training (bench/README.md, population.py).
SMALL_CLIENT_ROWS = 1000


def _group_jobs(clients: Sequence[ClientData], local_epochs: int, workers: int) -> list[list[int]]:
    """The round's jobs, in client order: one per large client, groups of small ones of the same shapes.

    Small clients of one data signature are cut into about two groups per
    worker (contiguous in client order), so workers stay busy; results are
    put back in client order, so the aggregate does not depend on the grouping.
    """
    jobs: list[list[int]] = []
    small: dict[tuple[Any, ...], list[int]] = {}
    for i, c in enumerate(clients):
        if len(c.x) * local_epochs <= SMALL_CLIENT_ROWS:
            small.setdefault((c.x.shape[1:], c.x.dtype.str, c.y.shape[1:], c.y.dtype.str, c.scale), []).append(i)
        else:
            jobs.append([i])
    for members in small.values():
        if len(members) < 4:
            jobs += [[i] for i in members]
            continue
        parts = min(len(members) // 2, 2 * max(1, workers))
        jobs += [chunk.tolist() for chunk in np.array_split(np.asarray(members), parts)]
    return sorted(jobs, key=lambda job: job[0])


def run_local_round(
    replicas: _Replicas,
    executor: Executor,
    jobs: list[list[int]],
    grow: Callable[[], None] | None,
    weights: ModelWeights,
    flat: np.ndarray,
    clients: Sequence[ClientData],
    seeds: Sequence[Any],
    aggregator: Any,
    views: Sequence[Any],
    sessions: dict[int, Any],
    lost: dict[int, ClientFailure],
    control: np.ndarray | None = None,
    client_states: Sequence[Any] | None = None,
) -> list[ClientOutput | ClientFailure]:
    """Run a round's client tasks here: one per client, or a group's training in one graph call.

    Each client is :func:`~fedr.learning.client_task.run_client` (train,
    then ``aggregator.encode`` with its view and its session); a group trains
    together and encodes one by one, and a group that fails falls back to one
    call per client to name the failing one. Clients in ``lost`` (dropped in a
    stage before training) do not train. SCAFFOLD's clients get the server's
    ``control`` and their own ``client_states``. Results in client order.
    """

    def one(r: ClientUpdate, i: int) -> ClientOutput | ClientFailure:
        if i in lost:
            return lost[i]
        own = client_states[i] if client_states is not None else None
        return run_client(r, weights, flat, clients[i], seeds[i], aggregator, views[i], sessions.get(i), control, own)

    def group(r: ClientUpdate, job: list[int]) -> list[ClientOutput | ClientFailure]:
        try:
            outs = r.train_group(weights, flat, [clients[i] for i in job], [seeds[i] for i in job])
        except Exception:  # noqa: BLE001 - one client by one, to name the one that fails
            return [one(r, i) for i in job]
        results: list[ClientOutput | ClientFailure] = []
        for i, out in zip(job, outs, strict=True):
            try:
                results.append(lost[i] if i in lost else apply_client_step(out, aggregator, views[i], sessions.get(i)))
            except Exception as err:  # noqa: BLE001 - reported as the client's failure
                results.append(ClientFailure(out.client_id, describe_error(err)))
        return results

    def update(job: list[int]) -> list[ClientOutput | ClientFailure]:
        if len(job) == 1:
            return [replicas.run(lambda r: one(r, job[0]))]
        return replicas.run(lambda r: group(r, job))

    by_job = executor.map(update, jobs) if grow is None else _map_while(executor, update, jobs, grow)
    results: list[Any] = [None] * len(clients)
    for job, outs in zip(jobs, by_job, strict=True):
        for i, out in zip(job, outs, strict=True):
            results[i] = out
    return results


class LocalCarrier:
    """Carries a round to clients that run in this process: its message stages and its client tasks.

    The sessions (a client's round state, e.g. its secure-aggregation keys)
    belong to the clients' side: they live here, with the executor that runs
    the clients, and never in the round's plan or the aggregator's context.
    ``replicas``, ``jobs`` and ``grow`` are the round's local way of training
    (see :func:`run_local_round`); without them the carrier carries stages only.
    """

    round_key = None  # its sessions are here, not on remote workers

    def __init__(self, executor: Executor, replicas: _Replicas | None = None, jobs: list[list[int]] | None = None,
                 grow: Callable[[], None] | None = None) -> None:
        self.executor = executor
        self.replicas, self.jobs, self.grow = replicas, jobs, grow
        self.sessions: dict[int, Any] = {}

    def stage(self, aggregator: Any, stage: str, requests: dict[int, Any],
              client_ids: Sequence[str]) -> dict[int, Any]:
        return carry_stage(aggregator, stage, requests, self.sessions, client_ids, self.executor.map)

    def train(self, job: Any) -> list[ClientOutput | ClientFailure]:
        """The round's client tasks (a RoundJob), here."""
        if self.replicas is None or self.jobs is None:
            raise FedError("LocalCarrier: built for message stages only (no model replicas), it cannot train")
        return run_local_round(self.replicas, self.executor, self.jobs, self.grow, job.weights, job.flat,
                               job.clients, job.seeds, job.aggregator, job.views, self.sessions, job.lost,
                               job.control, job.client_states)

    def close(self) -> None:
        """Forget the round's sessions."""
        self.sessions.clear()
