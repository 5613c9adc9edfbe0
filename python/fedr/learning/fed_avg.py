"""Federated averaging (FedAvg) as an iterative process, and federated evaluation.

McMahan et al. 2016, "Communication-Efficient Learning of Deep Networks from
Decentralized Data": each selected client starts from the server weights,
trains locally, and reports its model delta and example count; the server
takes the example-weighted mean of the deltas and applies it with a server
optimizer.  The default server optimizer, SGD with learning rate 1.0, adds the
mean delta to the weights and so recovers the original FedAvg; SGD with
momentum gives FedAvgM (Hsu et al. 2019) and Adam gives FedAdam (Reddi et al.
2020, "Adaptive Federated Optimization").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import os
import queue
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fedr.aggregators import WeightedMeanAccumulator
from fedr.datasets import ClientData, as_client_data
from fedr.errors import FedTypeError, FedValueError
from fedr.learning.client import ClientOutput, ClientRunner
from fedr.learning.model import Model, optimizer_fn

__all__ = [
    "ServerState",
    "LearningProcessOutput",
    "FedAvgProcess",
    "FederatedEvaluation",
    "build_weighted_fed_avg",
    "build_federated_averaging_process",
    "build_fed_eval",
    "sample_clients",
]


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.flags.writeable = False
    return arr


@dataclass(frozen=True)
class ServerState:
    """The server's state between rounds; every round returns a new one."""

    flat_weights: np.ndarray  # float32 (N,): trainable weights, flattened in variable order
    shapes: tuple[tuple[int, ...], ...]  # shape of each trainable variable
    optimizer_state: tuple[np.ndarray, ...]  # server optimizer variables (iteration, slots)
    round_num: int = 0
    model_weights: tuple[np.ndarray, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        _readonly(self.flat_weights)
        splits = np.cumsum([int(np.prod(s)) for s in self.shapes])[:-1]
        parts = np.split(self.flat_weights, splits)
        views = tuple(p.reshape(s) for p, s in zip(parts, self.shapes, strict=True))
        object.__setattr__(self, "model_weights", views)

    def __repr__(self) -> str:
        shapes = ", ".join(str(s) for s in self.shapes)
        return f"ServerState(round_num={self.round_num}, model_weights=[{shapes}])"


class LearningProcessOutput(NamedTuple):
    """What ``next`` returns: the new state and the round's training metrics."""

    state: ServerState
    metrics: dict[str, float]


def _check_factory(fn: Any, argument: str) -> None:
    if not callable(fn):
        raise FedTypeError(f"{argument}: expected a function with no arguments, got {type(fn).__name__}")


def _build_model(model_fn: Callable[[], Model]) -> Model:
    _check_factory(model_fn, "model_fn")
    model = model_fn()
    if not isinstance(model, Model):
        raise FedTypeError(
            "model_fn: expected a function returning fedr.learning.from_keras_model(...), "
            f"got one returning {type(model).__name__}"
        )
    return model


def _combine(
    names: list[str], per_client: list[tuple[np.ndarray, float, int]]
) -> dict[str, float]:
    """Example-weighted mean of client metrics; the loss over all examples."""
    counts = np.array([c for _, _, c in per_client], dtype=np.float64)
    total = counts.sum()
    metrics = np.stack([m for m, _, _ in per_client]) if names else np.zeros((len(counts), 0))
    out = {name: float(counts @ metrics[:, i] / total) for i, name in enumerate(names)}
    out["loss"] = float(sum(s for _, s, _ in per_client) / total)
    out["num_examples"] = int(total)
    out["num_clients"] = len(per_client)
    return out


def _clients(data: Any, runner: ClientRunner) -> list[ClientData]:
    clients = as_client_data(data)
    for client in clients:
        runner.check(client)
    return clients


class FederatedEvaluation:
    """Evaluates server weights on held-out client data; example-weighted metrics."""

    def __init__(self, runner: ClientRunner) -> None:
        self.runner = runner

    def __call__(self, state: ServerState | Sequence[np.ndarray], data: Any) -> dict[str, float]:
        """Return the metrics of ``state``'s weights over every client in ``data``.

        Args:
            state: A :class:`ServerState` or a list of trainable weight arrays.
            data: Client data: a list of ``ClientData`` or the reference's nested batches.

        Returns:
            ``{metric: value, "loss": ..., "num_examples": ..., "num_clients": ...}``.
        """
        if isinstance(state, ServerState):
            flat = state.flat_weights
        else:
            flat = np.concatenate([np.asarray(w, np.float32).ravel() for w in state])
        if flat.shape != (self.runner.num_weights,):
            raise FedValueError(
                f"state: expected {self.runner.num_weights} trainable weights, got {flat.size}"
            )
        clients = _clients(data, self.runner)
        results = [self.runner.evaluate(flat, c) for c in clients]
        return _combine(self.runner.model.metric_names, results)


class FedAvgProcess:
    """The federated averaging process: ``initialize()`` then ``next(state, data)`` per round."""

    def __init__(
        self,
        model_fn: Callable[[], Model],
        client_optimizer_fn: Callable[[], Any],
        server_optimizer_fn: Callable[[], Any],
        *,
        local_epochs: int = 1,
        workers: int | None = None,
    ) -> None:
        import tensorflow as tf

        _check_factory(client_optimizer_fn, "client_optimizer_fn")
        _check_factory(server_optimizer_fn, "server_optimizer_fn")
        if isinstance(local_epochs, bool) or not isinstance(local_epochs, (int, np.integer)) or local_epochs < 1:
            raise FedValueError(f"local_epochs: expected a positive integer, got {local_epochs!r}")
        if workers is None:
            workers = min(2, os.cpu_count() or 1)
        if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
            raise FedValueError(f"workers: expected a positive integer, got {workers!r}")
        # One model and client optimizer per worker thread: TensorFlow releases the
        # GIL while a graph runs, so clients train in parallel on separate cores.
        self.runners = [
            ClientRunner(_build_model(model_fn), client_optimizer_fn(), local_epochs=int(local_epochs))
            for _ in range(int(workers))
        ]
        self.runner = self.runners[0]
        self._free: queue.SimpleQueue[ClientRunner] = queue.SimpleQueue()
        for runner in self.runners:
            self._free.put(runner)
        self._pool = ThreadPoolExecutor(len(self.runners)) if len(self.runners) > 1 else None
        self._initial = self.runner.flat_weights()
        # The server optimizer sees the flat weights as one variable; SGD and Adam
        # act elementwise, so this equals applying them per layer.
        self._server_var = tf.Variable(self._initial)
        self._server_opt = server_optimizer_fn()
        self._server_opt.build([self._server_var])
        lr = getattr(self._server_opt, "_learning_rate", None)
        self._server_opt_vars = [v for v in self._server_opt.variables if v is not lr]
        self._apply = tf.function(self._apply_graph)
        self._evaluation = FederatedEvaluation(self.runner)

    def __repr__(self) -> str:
        return (
            f"FedAvgProcess(model={self.runner.model!r}, "
            f"client_optimizer={type(self.runner.optimizer).__name__}, "
            f"server_optimizer={type(self._server_opt).__name__}, "
            f"local_epochs={self.runner.local_epochs})"
        )

    def initialize(self) -> ServerState:
        """Return the starting state: the model's initial weights, round 0."""
        opt_state = tuple(np.zeros(v.shape, v.dtype) for v in self._server_opt_vars)
        return ServerState(self._initial.copy(), tuple(self.runner.shapes), opt_state, 0)

    def _apply_graph(self, weights: Any, mean_delta: Any, opt_state: Any) -> Any:
        import tensorflow as tf

        self._server_var.assign(weights)
        for var, value in zip(self._server_opt_vars, opt_state, strict=True):
            var.assign(value)
        # The delta points downhill; optimizers step against the gradient.
        self._server_opt.apply_gradients([(-mean_delta, self._server_var)])
        return tf.identity(self._server_var), [tf.identity(v) for v in self._server_opt_vars]

    def next(self, state: ServerState, federated_data: Any) -> LearningProcessOutput:
        """Run one round of FedAvg over the clients in ``federated_data``.

        Args:
            state: The server state from ``initialize()`` or the previous round.
            federated_data: The selected clients: a list of ``ClientData`` or the
                reference's list over clients of lists of ``OrderedDict(x=, y=)``.

        Returns:
            ``LearningProcessOutput(state, metrics)``; ``result[0]`` and
            ``result[1]`` work as in the reference.

        Raises:
            FedTypeError: ``state`` is not a ServerState or the data has a wrong type.
            FedValueError: bad client data, or no client produced a finite update.
        """
        if not isinstance(state, ServerState):
            raise FedTypeError(f"state: expected a ServerState, got {type(state).__name__}")
        if state.flat_weights.shape != (self.runner.num_weights,):
            raise FedValueError(
                f"state: expected {self.runner.num_weights} trainable weights, got {state.flat_weights.size}"
            )
        clients = _clients(federated_data, self.runner)
        accumulator = WeightedMeanAccumulator(self.runner.num_weights)
        reports = []

        def train(client: ClientData) -> ClientOutput:
            runner = self._free.get()
            try:
                return runner.train(state.flat_weights, client)
            finally:
                self._free.put(runner)

        # Results arrive in client order, so the sum is the same whatever the timing.
        outputs = self._pool.map(train, clients) if self._pool else map(train, clients)
        for out in outputs:
            # As in TFF, a client whose update is not finite gets zero weight.
            if out.finite:
                accumulator.add(out.delta, float(out.num_examples))
            reports.append((out.metrics, out.loss_sum, out.num_examples))
        if accumulator.count == 0:
            raise FedValueError("federated_data: no client produced a finite model update")
        new_weights, opt_state = self._apply(
            state.flat_weights, accumulator.result(), list(state.optimizer_state)
        )
        new_state = ServerState(
            new_weights.numpy(),
            state.shapes,
            tuple(v.numpy() for v in opt_state),
            state.round_num + 1,
        )
        metrics = _combine(self.runner.model.metric_names, reports)
        return LearningProcessOutput(new_state, metrics)

    def evaluate(self, state: ServerState, federated_data: Any) -> dict[str, float]:
        """Evaluate ``state`` on held-out clients; see :class:`FederatedEvaluation`."""
        return self._evaluation(state, federated_data)


def build_weighted_fed_avg(
    model_fn: Callable[[], Model],
    client_optimizer_fn: Callable[[], Any],
    server_optimizer_fn: Callable[[], Any] | None = None,
    *,
    local_epochs: int = 1,
    workers: int | None = None,
) -> FedAvgProcess:
    """Build the example-weighted federated averaging process.

    Args:
        model_fn: A function with no arguments that builds a fresh Keras model and
            returns ``from_keras_model(...)``.
        client_optimizer_fn: A function returning the clients' Keras optimizer,
            e.g. ``lambda: keras.optimizers.SGD(learning_rate=0.02)``; it is fresh
            (state reset) for every client in every round.
        server_optimizer_fn: A function returning the server's Keras optimizer.
            Default SGD with learning rate 1.0, the original FedAvg.
        local_epochs: Passes over its data each client makes per round.
        workers: Clients trained at once, each by its own copy of the model in
            its own thread; default the number of cores, at most 2.  Results do
            not depend on it.

    Returns:
        A :class:`FedAvgProcess` with ``initialize``, ``next`` and ``evaluate``.

    Raises:
        FedTypeError: an argument is not a function of the expected kind.
        FedValueError: ``local_epochs`` is not a positive integer.
    """
    if server_optimizer_fn is None:
        server_optimizer_fn = optimizer_fn("sgd", 1.0)
    return FedAvgProcess(
        model_fn, client_optimizer_fn, server_optimizer_fn, local_epochs=local_epochs, workers=workers
    )


build_federated_averaging_process = build_weighted_fed_avg


def build_fed_eval(model_fn: Callable[[], Model]) -> FederatedEvaluation:
    """Build federated evaluation: ``evaluation(state, data)`` returns weighted metrics.

    Args:
        model_fn: The same kind of function given to :func:`build_weighted_fed_avg`.

    Returns:
        A callable :class:`FederatedEvaluation`.
    """
    return FederatedEvaluation(ClientRunner(_build_model(model_fn)))


def sample_clients(clients: Sequence[Any], fraction: float, *, seed: int | None = None) -> list[Any]:
    """Pick a seeded random fraction of the clients (at least one), kept in order.

    Args:
        clients: The population of clients.
        fraction: Share of clients to select, in (0, 1].
        seed: Seed of the generator; ``None`` draws fresh randomness.

    Returns:
        The selected clients, in their original order.

    Raises:
        FedValueError: ``fraction`` outside (0, 1] or no clients.
    """
    n = len(clients)
    if n == 0:
        raise FedValueError("clients: expected at least one client, got none")
    if not 0 < float(fraction) <= 1:
        raise FedValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    k = max(1, int(round(float(fraction) * n)))
    chosen = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))
    return [clients[i] for i in chosen]
