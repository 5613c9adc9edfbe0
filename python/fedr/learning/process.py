"""Federated averaging (FedAvg) composed from its parts, and federated evaluation.

McMahan et al. 2016, "Communication-Efficient Learning of Deep Networks from
Decentralized Data": each selected client starts from the server's model,
trains locally, and reports its model delta and example count; the server
aggregates the deltas (by default their example-weighted mean) and applies the
aggregate with a server optimizer. The default server optimizer, SGD with
learning rate 1.0, adds the mean delta to the weights and so recovers the
original FedAvg.

One round is data flowing one way (../shared/DESIGN.md)::

    ClientData -> executor.map(client update) -> aggregator.aggregate -> server update -> ServerState

Everything a round needs is in the :class:`ServerState` it is given: the same
state and data give the same result whatever ran before, and a state saved
with :func:`fedr.learning.save_state` resumes bit for bit.
"""

from __future__ import annotations

import math
import queue
import threading
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from fedr import _seeds
from fedr.protocol.names import COUNT_COLUMNS
from fedr.aggregators import Aggregator, check_aggregator, weighted_mean
from fedr.datasets import ClientData, as_client_data
from fedr.errors import FedError, FedTypeError, FedValueError, FedWarning
from fedr.executors import Executor, threads
from fedr.executors._local import check_executor
from fedr.learning.client_update import (
    ClientFailure, ClientOutput, ClientUpdate, apply_client_step, describe_error, run_client,
)
from fedr.learning.model import Model, model_spec, optimizer_fn
from fedr.learning.server_update import ServerOptimizer
from fedr.learning.state import ModelWeights, ServerState, check_weights

__all__ = [
    "ClientsDroppedWarning",
    "ClientsFailedWarning",
    "FedAvgProcess",
    "FederatedEvaluation",
    "LearningProcessOutput",
    "ProcessSpec",
    "RoundPlan",
    "build_fed_eval",
    "build_federated_averaging_process",
    "build_weighted_fed_avg",
    "combine_metrics",
    "sample_clients",
    "sample_clients_poisson",
]


class ClientsDroppedWarning(FedWarning):
    """Some clients of a round were left out of the aggregate (their update was not finite)."""


class ClientsFailedWarning(FedWarning):
    """Some clients of a round failed (raised, died or did not answer in time) and were left out."""


class RoundJob(NamedTuple):
    """What a remote executor needs to run a round's client updates (all of it picklable)."""

    spec: Any  # fedr.learning.model.ModelSpec
    optimizer: dict[str, Any]  # the client optimizer's Keras config
    local_epochs: int
    weights: ModelWeights
    flat: np.ndarray
    clients: list[ClientData]
    seeds: list[np.random.SeedSequence]
    aggregator: Aggregator
    aggregator_state: Any
    context: Any


class RoundPlan(NamedTuple):
    """A started round (:meth:`FedAvgProcess.begin_round`): what its clients need and what finishing it needs."""

    state: ServerState
    round_num: int
    client_ids: tuple[str, ...]
    seeds: tuple[np.random.SeedSequence, ...]
    context: Any


class ProcessSpec(NamedTuple):
    """A :class:`FedAvgProcess` as data (Keras configs, the aggregator object, numbers): no user code.

    What a Flower ServerApp needs to run the process an R or Python session
    built (:meth:`FedAvgProcess.to_spec`); picklable (between one's own
    processes), and JSON (:meth:`to_json`) wherever the receiver must not run
    the sender's code.
    """

    model: Any  # fedr.learning.model.ModelSpec
    client_optimizer: dict[str, Any]
    server_optimizer: dict[str, Any]
    local_epochs: int
    aggregator: Aggregator
    seed: int | None
    min_clients: int | float

    def build(self, executor: Executor | None = None) -> FedAvgProcess:
        """Build the process again (with ``executor``, default threads)."""
        import keras

        def client_optimizer() -> Any:
            return keras.saving.deserialize_keras_object(self.client_optimizer)

        def server_optimizer() -> Any:
            return keras.saving.deserialize_keras_object(self.server_optimizer)

        return FedAvgProcess(
            self.model.build, client_optimizer, server_optimizer, local_epochs=self.local_epochs,
            aggregator=self.aggregator, executor=executor, seed=self.seed, min_clients=self.min_clients,
        )

    def to_json(self) -> str:
        """This spec as JSON: Keras configs, numbers, the aggregator by name and parameters (no pickle).

        Raises:
            FedTypeError: the aggregator is not one of fedr's built-in ones, or a field is not plain data.
        """
        from fedr.learning._spec_json import spec_to_json

        return spec_to_json(self)

    @staticmethod
    def from_json(text: str) -> ProcessSpec:
        """The spec of :meth:`to_json`'s text.

        Raises:
            FedValueError: not a fedr process spec, or an unknown aggregator or field.
        """
        from fedr.learning._spec_json import spec_from_json

        return spec_from_json(text)


class LearningProcessOutput(NamedTuple):
    """What ``next`` returns: the new state and the round's training metrics."""

    state: ServerState
    metrics: dict[str, float]


def _check_factory(fn: Any, argument: str) -> None:
    if not callable(fn):
        raise FedTypeError(f"{argument}: expected a function with no arguments, got {type(fn).__name__}")


def _build_model(model_fn: Callable[[], Model]) -> Model:
    import keras

    if isinstance(model_fn, keras.Model | Model):
        # A Keras model is callable too: called with no inputs, Keras would
        # say "missing a required argument: 'inputs'", which helps nobody.
        raise FedTypeError(
            f"model_fn: expected a function with no arguments returning from_keras_model(...), got a built "
            f"{type(model_fn).__name__}; every client trains its own fresh copy, so pass e.g. "
            "`lambda: fedr.learning.from_keras_model(keras.models.clone_model(model), loss=..., metrics=[...])`"
        )
    _check_factory(model_fn, "model_fn")
    model = model_fn()
    if not isinstance(model, Model):
        raise FedTypeError(
            "model_fn: expected a function returning fedr.learning.from_keras_model(...), "
            f"got one returning {type(model).__name__}"
        )
    return model


def _build_optimizer(fn: Callable[[], Any], argument: str) -> Any:
    import keras

    _check_factory(fn, argument)
    optimizer = fn()
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise FedTypeError(
            f"{argument}: expected a function returning a Keras optimizer, got one returning "
            f"{type(optimizer).__name__}"
        )
    return optimizer


def combine_metrics(names: list[str], per_client: Sequence[tuple[np.ndarray, float, int]]) -> dict[str, float]:
    """Example-weighted mean of client metrics; the loss over all examples."""
    counts = np.array([c for _, _, c in per_client], dtype=np.float64)
    total = counts.sum()
    metrics = np.stack([m for m, _, _ in per_client]) if names else np.zeros((len(counts), 0))
    out: dict[str, Any] = {name: float(counts @ metrics[:, i] / total) for i, name in enumerate(names)}
    out["loss"] = float(sum(s for _, s, _ in per_client) / total)
    out["num_examples"] = int(total)
    out["num_clients"] = len(per_client)
    return out


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


def _check_min_clients(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise FedValueError(f"min_clients: expected a count >= 1 or a fraction in (0, 1], got {value!r}")
    if isinstance(value, int | np.integer):
        if value < 1:
            raise FedValueError(f"min_clients: expected a count >= 1 or a fraction in (0, 1], got {value!r}")
        return int(value)
    if not 0 < float(value) <= 1:
        raise FedValueError(f"min_clients: expected a count >= 1 or a fraction in (0, 1], got {value!r}")
    return float(value)


def _optimizer_config(optimizer: Any) -> dict[str, Any]:
    import keras

    try:
        return keras.saving.serialize_keras_object(optimizer)
    except Exception as err:  # noqa: BLE001
        raise FedTypeError(
            f"client_optimizer_fn: its optimizer cannot travel to remote workers ({describe_error(err)})"
        ) from None


def _clients(data: Any, argument: str) -> list[ClientData]:
    if isinstance(data, list | tuple) and not data:
        raise FedValueError(f"{argument}: expected at least one client, got an empty list")
    clients = as_client_data(data)
    return clients


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


def _client_seeds(base: int, round_num: int, client_ids: Sequence[str]) -> list[np.random.SeedSequence]:
    """Each client's seed, keyed by the server (HMAC of round, client id, repeat); a repeated id counts its repeats."""
    key = _seeds.server_key(base)
    seen: dict[str, int] = {}
    seeds = []
    for client_id in client_ids:
        repeat = seen.get(client_id, 0)
        seen[client_id] = repeat + 1
        seeds.append(_seeds.client_seed(key, round_num, client_id, repeat))
    return seeds


def _as_weights(state: Any, initial: ModelWeights) -> ModelWeights:
    """The model weights of a ServerState, ModelWeights, or a list of weight arrays."""
    if isinstance(state, ServerState):
        return state.model
    if isinstance(state, ModelWeights):
        unnamed = state.trainable_names == tuple(f"trainable_{i}" for i in range(len(state.trainable)))
        if unnamed and len(state.trainable) == len(initial.trainable):
            # Built without names: read in the model's variable order.
            return ModelWeights(
                state.trainable,
                state.non_trainable or initial.non_trainable,
                initial.trainable_names,
                initial.non_trainable_names,
            )
        return state
    if not isinstance(state, list | tuple):
        raise FedTypeError(
            f"state: expected a ServerState, ModelWeights or a list of weight arrays, got {type(state).__name__}"
        )
    n_train, n_all = len(initial.trainable), len(initial.trainable) + len(initial.non_trainable)
    if len(state) not in (n_train, n_all):
        raise FedValueError(
            f"state: expected {n_train} trainable weight arrays (or all {n_all} variables, as "
            f"keras.Model.get_weights() gives), got {len(state)}"
        )
    refs = initial.trainable + initial.non_trainable
    arrays = [np.asarray(w) for w in state]
    arrays = [a.astype(r.dtype) if a.dtype.kind in "biuf" else a for a, r in zip(arrays, refs, strict=False)]
    non_trainable = tuple(arrays[n_train:]) if len(state) == n_all else initial.non_trainable
    return ModelWeights(
        tuple(arrays[:n_train]), non_trainable, initial.trainable_names, initial.non_trainable_names
    )


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


class FedAvgProcess:
    """The federated averaging process: ``initialize()`` then ``next(state, data)`` per round."""

    def __init__(
        self,
        model_fn: Callable[[], Model],
        client_optimizer_fn: Callable[[], Any],
        server_optimizer_fn: Callable[[], Any],
        *,
        local_epochs: int = 1,
        aggregator: Aggregator | None = None,
        executor: Executor | None = None,
        seed: int | None = None,
        min_clients: int | float = 1,
    ) -> None:
        if isinstance(local_epochs, bool) or not isinstance(local_epochs, int | np.integer) or local_epochs < 1:
            raise FedValueError(f"local_epochs: expected a positive integer, got {local_epochs!r}")
        _check_factory(client_optimizer_fn, "client_optimizer_fn")
        _check_factory(server_optimizer_fn, "server_optimizer_fn")
        self.seed = _seeds.check_seed(seed)
        self.aggregator = check_aggregator(aggregator)
        self.executor = check_executor(executor)
        self.min_clients = _check_min_clients(min_clients)
        self._client_optimizer_fn = client_optimizer_fn
        # Without a seed, fresh randomness: a base seed drawn from the OS.
        self._base_seed = (
            self.seed if self.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        )
        if self.seed is not None:
            import keras

            # The initial weights are the first replica's, built right after this.
            init = _seeds.derive(self.seed, _seeds.INIT).generate_state(1)[0]
            keras.utils.set_random_seed(int(init))
        def build() -> ClientUpdate:
            return ClientUpdate(
                _build_model(model_fn),
                _build_optimizer(client_optimizer_fn, "client_optimizer_fn"),
                local_epochs=int(local_epochs),
            )

        # The first replica now, for the initial weights; the others when a
        # round needs them (see _Replicas). A remote executor trains elsewhere:
        # here the replicas only check data and evaluate, on local threads.
        self._remote = bool(getattr(self.executor, "remote", False))
        self._local = threads() if self._remote else self.executor
        self._replicas = _Replicas(build, self._local.workers)
        self._first = self._replicas.first
        self._initial = self._first.weights()
        self._spec = None
        if self._remote:
            # Fail now, naming what cannot travel (and the argument it came from), not in the first round.
            try:
                self._spec = model_spec(self._first.model)
            except FedTypeError as err:
                raise FedTypeError(f"model_fn: {err}") from None
            self._optimizer_config = _optimizer_config(self._first.optimizer)
        self.server = ServerOptimizer(server_optimizer_fn, self._first.num_weights)
        self.local_epochs = int(local_epochs)
        self._evaluation = FederatedEvaluation(self._replicas, self._local, self._initial)
        self._metric_names = self._first.model.metric_names
        self._agg_names = tuple(name for name, _ in self.aggregator.init())
        if self._first.averaged and not self.aggregator.averages_non_trainable:
            names = [self._initial.non_trainable_names[i] for i in self._first.averaged]
            warnings.warn(
                f"aggregator {self.aggregator!r} does not aggregate non-trainable variables "
                f"({', '.join(names)}): they keep their initial values on the server",
                stacklevel=3,
            )

    @property
    def model(self) -> Model:
        """The first model replica (its variables are scratch space of the client updates)."""
        return self._first.model

    def __repr__(self) -> str:
        return (
            f"FedAvgProcess(model={self._first.model!r}, "
            f"client_optimizer={type(self._first.optimizer).__name__}, "
            f"server_optimizer={type(self.server.optimizer).__name__}, "
            f"local_epochs={self.local_epochs}, aggregator={self.aggregator!r}, "
            f"executor={self.executor!r}, seed={self.seed})"
        )

    def initialize(self) -> ServerState:
        """Return the starting state: the model's initial variables, round 0."""
        return ServerState(self._initial, self.server.init(), self.aggregator.init(), 0)

    def check_state(self, state: Any) -> ServerState:
        """Return ``state`` if it belongs to this process's model; raise naming what is wrong."""
        if not isinstance(state, ServerState):
            raise FedTypeError(f"state: expected a ServerState, got {type(state).__name__}")
        check_weights(self._initial, state.model)
        self.server.check(state.optimizer_state)
        names = tuple(name for name, _ in state.aggregator_state)
        if names != self._agg_names:
            raise FedValueError(
                f"state: aggregator state has {list(names)} but the aggregator {self.aggregator!r} "
                f"has {list(self._agg_names)}; is it from a process with another aggregator?"
            )
        return state

    def check_data(self, federated_data: Any, argument: str = "federated_data") -> None:
        """Raise when a client of ``federated_data`` does not fit the model; the message starts with ``argument``.

        For data used later (held-out clients of a fit loop): checked now, before
        any round trains, and named as the caller's argument, not only the client.

        Raises:
            FedTypeError: ``federated_data`` is not client data.
            FedValueError: a client's features or labels do not fit the model or its loss.
        """
        clients = _clients(federated_data, argument)
        for client in clients:
            try:
                self._first.check(client)
            except FedValueError as err:
                raise FedValueError(f"{argument}: {err}") from None

    def next(self, state: ServerState, federated_data: Any) -> LearningProcessOutput:
        """Run one round of FedAvg over the clients in ``federated_data``.

        Args:
            state: The server state from ``initialize()``, the previous round or
                :func:`fedr.learning.load_state`.
            federated_data: The selected clients: a list of ``ClientData`` or the
                reference's list over clients of lists of ``OrderedDict(x=, y=)``.

        Returns:
            ``LearningProcessOutput(state, metrics)``; ``result[0]`` and
            ``result[1]`` work as in the reference. ``metrics`` holds the
            model's metrics and ``loss`` over the clients kept,
            ``num_examples``, ``num_clients`` (kept), ``num_clients_dropped``
            (left out for a non-finite update; a
            :class:`ClientsDroppedWarning` names them) and the aggregator's
            metrics.

        Raises:
            FedTypeError: ``state`` is not a ServerState or the data has a wrong type.
            FedValueError: the state does not fit the model, a client's data does
                not fit the model or its loss, every client diverged, or the
                server update made the weights non-finite. The state passed in
                is never changed.
        """
        self.check_state(state)
        clients = _clients(federated_data, "federated_data")
        for client in clients:
            self._first.check(client)
        jobs = [] if self._remote else _group_jobs(clients, self.local_epochs, self._local.workers)
        grow = None
        if not self._remote:
            grouped = [clients[job[0]] for job in jobs if len(job) > 1]
            grow = self._replicas.prepare(clients, train=True, grouped=grouped, defer=True)
        plan = self.begin_round(state, [c.client_id for c in clients])
        weights, flat = state.model, state.flat_weights
        aggregator, agg_state, context = self.aggregator, state.aggregator_state, plan.context
        if self._remote:
            results = self.executor.run_round(RoundJob(
                self._spec, self._optimizer_config, self.local_epochs, weights, flat, clients, list(plan.seeds),
                aggregator, agg_state, context,
            ))
        else:
            seeds = plan.seeds

            def one(r: ClientUpdate, i: int) -> ClientOutput | ClientFailure:
                return run_client(r, weights, flat, clients[i], seeds[i], aggregator, agg_state, context)

            def group(r: ClientUpdate, job: list[int]) -> list[ClientOutput | ClientFailure]:
                try:
                    outs = r.train_group(weights, flat, [clients[i] for i in job], [seeds[i] for i in job])
                except Exception:  # noqa: BLE001 - one client by one, to name the one that fails
                    return [one(r, i) for i in job]
                results = []
                for out in outs:
                    try:
                        results.append(apply_client_step(out, aggregator, agg_state, context))
                    except Exception as err:  # noqa: BLE001 - reported as the client's failure
                        results.append(ClientFailure(out.client_id, describe_error(err)))
                return results

            def update(job: list[int]) -> list[ClientOutput | ClientFailure]:
                if len(job) == 1:
                    return [self._replicas.run(lambda r: one(r, job[0]))]
                return self._replicas.run(lambda r: group(r, job))

            by_job = self.executor.map(update, jobs) if grow is None else _map_while(self.executor, update, jobs, grow)
            results = [None] * len(clients)
            for job, outs in zip(jobs, by_job, strict=True):
                for i, out in zip(job, outs, strict=True):
                    results[i] = out
        return self.finish_round(plan, results, stacklevel=3)

    def begin_round(self, state: ServerState, client_ids: Sequence[str]) -> RoundPlan:
        """Start a round for ``client_ids`` whose updates run elsewhere; :meth:`next` is both halves.

        For executors whose clients hold their own data (Flower nodes): the
        aggregator's ``start_round`` (which may refuse the round) runs here,
        and each client gets its seed from (seed, round, client id). Run the
        clients' updates (:func:`~fedr.learning.client_update.apply_client_step`
        on each finite output), then call :meth:`finish_round`.

        Raises:
            FedTypeError, FedValueError: a bad state, no clients, fewer clients
                than a ``min_clients`` count, or the aggregator refused the round.
        """
        self.check_state(state)
        ids = [str(c) for c in client_ids]
        if not ids:
            raise FedValueError("client_ids: expected at least one client, got none")
        if isinstance(self.min_clients, int) and len(ids) < self.min_clients:
            # Refused before anyone trains: running with fewer would quietly lower the user's limit.
            raise FedValueError(
                f"min_clients: the round has {len(ids)} client(s), fewer than min_clients = "
                f"{self.min_clients}; select at least {self.min_clients} clients or lower min_clients"
            )
        round_num = state.round_num + 1
        context = self.aggregator.start_round(
            state.aggregator_state, ids, seed=_seeds.derive(self._base_seed, _seeds.AGGREGATE, round_num, 0),
        )
        return RoundPlan(state, round_num, tuple(ids), tuple(_client_seeds(self._base_seed, round_num, ids)), context)

    def seed_words(self, seed: np.random.SeedSequence) -> np.ndarray:
        """The draws a client's model takes from its seed (what a remote node needs, not the seed itself)."""
        return self._first.seed_words(seed)

    def finish_round(
        self, plan: RoundPlan, results: Sequence[ClientOutput | ClientFailure], *, stacklevel: int = 2
    ) -> LearningProcessOutput:
        """Aggregate a round's client results (one per client of ``plan``, in its order) into the next state.

        Failed clients are left out and named (:class:`ClientsFailedWarning`),
        non-finite updates dropped (:class:`ClientsDroppedWarning`); with fewer
        than ``min_clients`` usable updates the round raises and ``plan.state``
        stays the last good state.
        """
        state, round_num, context = plan.state, plan.round_num, plan.context
        weights, flat = state.model, state.flat_weights
        aggregator, agg_state = self.aggregator, state.aggregator_state
        if len(results) != len(plan.client_ids):
            raise FedValueError(
                f"round {round_num}: expected {len(plan.client_ids)} client results, got {len(results)}"
            )
        failed = [r for r in results if isinstance(r, ClientFailure)]
        outputs = [r for r in results if not isinstance(r, ClientFailure)]
        kept = [out for out in outputs if out.finite]
        dropped = [out.client_id for out in outputs if not out.finite]
        if not kept and not failed:
            raise FedValueError(
                f"round {round_num}: every client's update was non-finite (NaN or Inf), so training "
                f"diverged ({len(dropped)} client(s): {', '.join(dropped)}); lower the client learning "
                "rate and start again from this round's state"
            )
        n_clients = len(plan.client_ids)
        needed = self.min_clients if isinstance(self.min_clients, int) else math.ceil(self.min_clients * n_clients)
        needed = max(1, needed)
        if len(kept) < needed:
            parts = [f"{f.client_id} ({f.error})" for f in failed] + [f"{d} (non-finite update)" for d in dropped]
            raise FedValueError(
                f"round {round_num}: only {len(kept)} of {n_clients} clients returned a usable update, "
                f"fewer than min_clients = {needed}; left out: {'; '.join(parts)}. The state is unchanged"
            )
        if failed:
            warnings.warn(
                f"round {round_num}: {len(failed)} client(s) failed and were left out: "
                + "; ".join(f"{f.client_id}: {f.error}" for f in failed),
                ClientsFailedWarning,
                stacklevel=stacklevel,
            )
        if dropped:
            warnings.warn(
                f"round {round_num}: {len(dropped)} client(s) left out of the aggregate because their "
                f"update was not finite (NaN or Inf): {', '.join(dropped)}",
                ClientsDroppedWarning,
                stacklevel=stacklevel,
            )
        result = aggregator.aggregate(
            agg_state, kept, seed=_seeds.derive(self._base_seed, _seeds.AGGREGATE, round_num), context=context
        )
        update = result.update
        if not (isinstance(update, np.ndarray) and update.dtype == np.float32 and update.shape == flat.shape):
            raise FedValueError(
                f"aggregator {aggregator!r}: returned an update of "
                f"{getattr(update, 'dtype', type(update).__name__)} {getattr(update, 'shape', '')}, "
                f"expected float32 {flat.shape}"
            )
        clash = set(result.metrics) & {"loss", *COUNT_COLUMNS, *self._metric_names}
        if clash:
            raise FedValueError(f"aggregator {aggregator!r}: its metrics {sorted(clash)} clash with the round's")
        opt_state, new_flat = self.server.apply(state.optimizer_state, flat, update)
        non_trainable = self._aggregate_non_trainable(weights, kept)
        model = ModelWeights(
            weights.with_trainable(new_flat), non_trainable, weights.trainable_names, weights.non_trainable_names
        )
        if not np.isfinite(new_flat).all():
            raise FedValueError(
                f"round {round_num}: the server update made the model weights non-finite (NaN or Inf); "
                "training diverged: lower the client or server learning rate. The state passed in is unchanged"
            )
        new_state = ServerState(model, opt_state, result.state, round_num)
        metrics = combine_metrics(self._metric_names, [(o.metrics, o.loss_sum, o.num_examples) for o in kept])
        metrics["num_clients_dropped"] = len(dropped)
        metrics["num_clients_failed"] = len(failed)
        released = aggregator.released_metrics
        if released is not None:
            # E.g. differential privacy: report only what its guarantee covers.
            metrics = {name: value for name, value in metrics.items() if name in released}
        metrics.update(result.metrics)
        return LearningProcessOutput(new_state, metrics)

    def to_spec(self) -> ProcessSpec:
        """This process as plain data (:class:`ProcessSpec`), to rebuild it in another process or machine.

        Raises:
            FedTypeError: the model, its loss or metrics, or an optimizer cannot
                be serialised (a loss or layer written in R or Python); the
                message names which.
        """
        import keras

        return ProcessSpec(
            model_spec(self._first.model),
            _optimizer_config(self._first.optimizer),
            keras.saving.serialize_keras_object(self.server.optimizer),
            self.local_epochs,
            self.aggregator,
            self.seed,
            self.min_clients,
        )

    @property
    def metric_names(self) -> list[str]:
        """The model's metric names, in the order of ``ClientOutput.metrics``."""
        return list(self._metric_names)

    def _aggregate_non_trainable(self, weights: ModelWeights, kept: list[ClientOutput]) -> tuple[np.ndarray, ...]:
        """Float non-trainable variables: the example-weighted mean of the clients' values."""
        values = list(weights.non_trainable)
        averaged = self._first.averaged
        if not averaged or not self.aggregator.averages_non_trainable:
            return tuple(values)
        mean = weighted_mean([o.non_trainable for o in kept], [float(o.num_examples) for o in kept])
        start = 0
        for i in averaged:
            ref = values[i]
            values[i] = mean[start : start + ref.size].reshape(ref.shape).astype(ref.dtype)
            start += ref.size
        return tuple(values)

    def evaluate(self, state: Any, federated_data: Any) -> dict[str, float]:
        """Evaluate ``state`` on held-out clients; see :class:`FederatedEvaluation`."""
        return self._evaluation(state, federated_data)

    def get_model_weights(self, state: ServerState) -> ModelWeights:
        """The model weights of ``state`` (as TensorFlow Federated's ``get_model_weights``)."""
        return self.check_state(state).model


def build_weighted_fed_avg(
    model_fn: Callable[[], Model],
    client_optimizer_fn: Callable[[], Any],
    server_optimizer_fn: Callable[[], Any] | None = None,
    *,
    local_epochs: int = 1,
    aggregator: Aggregator | None = None,
    executor: Executor | None = None,
    seed: int | None = None,
    workers: int | None = None,
    min_clients: int | float = 1,
) -> FedAvgProcess:
    """Build the example-weighted federated averaging process.

    Args:
        model_fn: A function with no arguments that builds a fresh Keras model and
            returns ``from_keras_model(...)``.
        client_optimizer_fn: A function returning the clients' Keras optimizer,
            e.g. ``optimizer_fn("sgd", 0.02)``; it is fresh (state reset) for
            every client in every round.
        server_optimizer_fn: A function returning the server's Keras optimizer.
            Default SGD with learning rate 1.0, the original FedAvg.
        local_epochs: Passes over its data each client makes per round.
        aggregator: How client updates are combined; default
            ``fedr.aggregators.mean()``, the example-weighted mean.
        executor: Who runs the clients; default ``fedr.executors.threads()``,
            one thread and model replica per core. Results do not depend on it.
        seed: With a seed, the initial weights and every client's randomness
            (Dropout, ...) derive from (seed, round, client), so runs repeat bit
            for bit with any executor. ``None`` draws fresh randomness. A seed
            also seeds Keras's global generators (``keras.utils.set_random_seed``)
            before ``model_fn`` runs.
        workers: Shorthand for ``executor=fedr.executors.threads(workers)``.
        min_clients: How many clients must return a usable update for a round
            to count: a count (an int; a round with fewer clients is refused
            before they train), or a fraction (a float in (0, 1]) of the
            round's clients. A client
            that raises, dies or times out is left out and named
            (``num_clients_failed`` and a :class:`ClientsFailedWarning`); with
            fewer than ``min_clients`` left the round fails and the state is
            unchanged.

    Returns:
        A :class:`FedAvgProcess` with ``initialize``, ``next`` and ``evaluate``.

    Raises:
        FedTypeError: an argument is not of the expected kind.
        FedValueError: ``local_epochs``, ``seed`` or ``workers`` is out of range.
    """
    if workers is not None:
        if executor is not None:
            raise FedValueError("workers: give `workers` or `executor`, not both")
        executor = threads(workers)
    if server_optimizer_fn is None:
        server_optimizer_fn = optimizer_fn("sgd", 1.0)
    return FedAvgProcess(
        model_fn,
        client_optimizer_fn,
        server_optimizer_fn,
        local_epochs=local_epochs,
        aggregator=aggregator,
        executor=executor,
        seed=seed,
        min_clients=min_clients,
    )


build_federated_averaging_process = build_weighted_fed_avg


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


def sample_clients(
    clients: Sequence[Any], fraction: float, *, seed: int | None = None, round_num: int | None = None
) -> list[Any]:
    """Pick a seeded random fraction of the clients (at least one), kept in order.

    Args:
        clients: The population of clients.
        fraction: Share of clients to select, in (0, 1].
        seed: Seed of the generator; ``None`` draws fresh randomness.
        round_num: With a seed, the round the sample is for: each round then
            draws its own sample from (seed, round), e.g.
            ``sample_clients(population, 0.1, seed=1, round_num=state.round_num + 1)``.
            ``None`` uses the seed alone (the same sample every call).

    Returns:
        The selected clients, in their original order.

    Raises:
        FedValueError: ``fraction`` outside (0, 1], a bad seed, or no clients.
    """
    seed = _seeds.check_seed(seed)
    n = len(clients)
    if n == 0:
        raise FedValueError("clients: expected at least one client, got none")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float | np.integer | np.floating):
        raise FedValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    if not 0 < float(fraction) <= 1:
        raise FedValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    k = max(1, int(round(float(fraction) * n)))
    if round_num is not None:
        round_num = _seeds.check_seed(round_num, "round_num")
    if seed is not None and round_num is not None:
        rng = np.random.default_rng(_seeds.derive(seed, _seeds.SAMPLE, round_num))
    else:
        rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=k, replace=False))
    return [clients[i] for i in chosen]


def sample_clients_poisson(
    clients: Sequence[Any], rate: float, *, seed: int | None = None, round_num: int | None = None
) -> list[Any]:
    """Poisson sampling: each client takes part independently with probability ``rate``, kept in order.

    The sampling that differential privacy's accounting assumes
    (``PoissonSampledDpEvent(rate, ...)``, see :func:`fedr.privacy.epsilon`):
    use ``rate = clients_per_round / population_size``. The sample's size
    varies from round to round and may be empty (skip such a round: the
    budget is spent all the same).

    Args:
        clients: The population of clients.
        rate: Probability of each client taking part, in (0, 1].
        seed: Seed; with ``round_num`` each round draws its own sample from (seed, round).
        round_num: The round the sample is for.

    Returns:
        The selected clients, in their original order (possibly none).

    Raises:
        FedValueError: ``rate`` outside (0, 1], a bad seed or round, or no clients.
    """
    seed = _seeds.check_seed(seed)
    if round_num is not None:
        round_num = _seeds.check_seed(round_num, "round_num")
    if len(clients) == 0:
        raise FedValueError("clients: expected at least one client, got none")
    if isinstance(rate, bool) or not isinstance(rate, int | float | np.integer | np.floating) or not 0 < float(rate) <= 1:
        raise FedValueError(f"rate: expected a number in (0, 1], got {rate!r}")
    if seed is not None and round_num is not None:
        rng = np.random.default_rng(_seeds.derive(seed, _seeds.SAMPLE, round_num, 1))
    else:
        rng = np.random.default_rng(seed)
    chosen = np.flatnonzero(rng.random(len(clients)) < float(rate))
    return [clients[i] for i in chosen]
