"""The public builders of the federated process: FedAvg / FedProx (:func:`build_weighted_fed_avg`) and SCAFFOLD.

Each returns a :class:`~fedr.learning.process.FedAvgProcess`, the one
process that composes the round's parts; split from
:mod:`fedr.learning.process` so that the process and its builders' long
argument documentation each stay readable.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedr.aggregators import Aggregator
from fedr.errors import FedValueError
from fedr.executors import Executor, threads
from fedr.learning.model import Model, optimizer_fn
from fedr.learning.process import FedAvgProcess

__all__ = ["build_federated_averaging_process", "build_scaffold", "build_weighted_fed_avg"]


def _defaults(workers: int | None, executor: Executor | None,
              server_optimizer_fn: Callable[[], Any] | None) -> tuple[Executor | None, Callable[[], Any]]:
    """The builders' shorthands: ``workers`` for a threads executor, server SGD 1.0 by default."""
    if workers is not None:
        if executor is not None:
            raise FedValueError("workers: give `workers` or `executor`, not both")
        executor = threads(workers)
    return executor, server_optimizer_fn if server_optimizer_fn is not None else optimizer_fn("sgd", 1.0)


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
    proximal_mu: float = 0.0,
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
        proximal_mu: FedProx's proximal coefficient mu (Li et al. 2020), a
            finite number >= 0: each client minimises its loss plus
            ``mu / 2 * ||w - w_server||^2`` over the trainable weights, with
            ``w_server`` the round's starting weights, which limits how far
            clients with heterogeneous data drift. The training ``loss``
            reported stays the task loss, without the proximal term. 0 (the
            default) is FedAvg, bit for bit.

    Returns:
        A :class:`FedAvgProcess` with ``initialize``, ``next`` and ``evaluate``.

    Raises:
        FedTypeError: an argument is not of the expected kind.
        FedValueError: ``local_epochs``, ``proximal_mu``, ``seed`` or ``workers``
            is out of range; for ``proximal_mu`` the message starts with
            ``"proximal_mu: expected a number >= 0, got"``.
    """
    executor, server_optimizer_fn = _defaults(workers, executor, server_optimizer_fn)
    return FedAvgProcess(
        model_fn,
        client_optimizer_fn,
        server_optimizer_fn,
        local_epochs=local_epochs,
        aggregator=aggregator,
        executor=executor,
        seed=seed,
        min_clients=min_clients,
        proximal_mu=proximal_mu,
    )


build_federated_averaging_process = build_weighted_fed_avg




def build_scaffold(
    model_fn: Callable[[], Model],
    client_optimizer_fn: Callable[[], Any],
    server_optimizer_fn: Callable[[], Any] | None = None,
    *,
    num_clients: int | None = None,
    local_epochs: int = 1,
    aggregator: Aggregator | None = None,
    executor: Executor | None = None,
    seed: int | None = None,
    workers: int | None = None,
    min_clients: int | float = 1,
    proximal_mu: float = 0.0,
) -> FedAvgProcess:
    """Build SCAFFOLD (Karimireddy et al. 2020, option II control variates): FedAvg corrected for client drift.

    Each client's local SGD steps follow ``g(y) + c - c_i`` instead of its
    own gradient ``g(y)``: ``c`` is the server's control variate (in
    ``ServerState.client_work``, saved with the state), ``c_i`` the client's
    own, which it keeps between the rounds it takes part in (zero the first
    time). After training the client sets ``c_i+ = c_i - c + (x - y) / (K *
    lr)`` over its K local steps and sends its model delta and control delta
    ``c_i+ - c_i``; the server applies the aggregated model delta with the
    server optimizer and moves ``c`` by the sum of the control deltas over
    ``num_clients``. On data split unevenly over clients (e.g. a Dirichlet
    label split) this needs fewer rounds than FedAvg; see bench/README.md.

    The clients' ``c_i`` are never part of the server's state: for clients
    in this process or on Ray they are in ``process.client_states`` (the
    store beside the clients' data; save it with
    :meth:`~fedr.learning.ClientStates.save`, and ``fit(checkpoint_dir=)``
    does), a Flower node keeps its own.

    Args:
        model_fn, server_optimizer_fn, local_epochs, aggregator, executor,
            seed, workers, min_clients, proximal_mu: As in
            :func:`build_weighted_fed_avg`. The aggregator must read the
            updates on the server (not DP or secure aggregation: the control
            deltas travel in plaintext).
        client_optimizer_fn: Plain SGD at a constant learning rate, e.g.
            ``optimizer_fn("sgd", 0.05)`` (option II's formula takes it).
        num_clients: N, the number of clients in the federation, when each
            round samples some of them (the server's c moves by the sum of
            the round's control deltas over N); None (default) takes each
            round's clients, right when every client takes part in every round.

    Returns:
        A :class:`FedAvgProcess` (``process.scaffold`` is True).

    Raises:
        FedValueError: the client optimizer is not plain SGD (the message
            starts with ``client_optimizer_fn:``), ``num_clients`` is not a
            positive integer, the aggregator protects updates, or any of
            :func:`build_weighted_fed_avg`'s refusals; at a round with more
            clients than ``num_clients``.
    """
    executor, server_optimizer_fn = _defaults(workers, executor, server_optimizer_fn)
    return FedAvgProcess(
        model_fn, client_optimizer_fn, server_optimizer_fn, local_epochs=local_epochs, aggregator=aggregator,
        executor=executor, seed=seed, min_clients=min_clients, proximal_mu=proximal_mu, scaffold=True,
        num_clients=num_clients,
    )
