"""One client's whole task in a round, the same function on every carrier: train, then the aggregator's client step.

Threads, Ray actors and Flower nodes all run a client through
:func:`train_client` (local training, with SCAFFOLD's control-variate step
when the replica has one) and :func:`apply_client_step` (the aggregator's
``encode``: clip, quantise, mask); :func:`run_client` is both, turning an
exception into the client's :class:`ClientFailure`. :class:`ClientTask` is
that task as an object a remote carrier is handed (it builds the replicas).
Split from :mod:`fedr.learning.client_update`, which owns the compiled
training of one replica.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedr.datasets import ClientData
from fedr.errors import FedValueError
from fedr.learning.client_update import ClientUpdate, check_proximal_mu
from fedr.learning.state import ModelWeights
from fedr.protocol.messages import ClientFailure, ClientOutput, describe_error

__all__ = ["ClientTask", "apply_client_step", "run_client", "train_client"]


def run_client(
    replica: ClientUpdate,
    weights: ModelWeights,
    flat: np.ndarray,
    client: ClientData,
    seed: np.random.SeedSequence | np.ndarray | None,
    aggregator: Any,
    view: Any,
    session: Any = None,
    control: np.ndarray | None = None,
    client_state: Any = None,
) -> ClientOutput | ClientFailure:
    """One client's whole task in a round: local training, then the aggregator's client step (``encode``).

    The same function runs in a local worker thread, in a remote worker (Ray
    actor) and on a Flower node: ``view`` is the aggregator's public view for
    this client, ``session`` its own state of the round's earlier stages,
    kept where it runs. For SCAFFOLD (a replica with ``control_variates``),
    ``control`` is the server's c and ``client_state`` the client's own
    state (None the first time); the output then carries its control delta
    (``parts``) and its new state (``client_state``) for the carrier to keep.
    An exception becomes a :class:`ClientFailure` naming the client: one
    failing client does not fail the round.
    """
    try:
        out = train_client(replica, weights, flat, client, seed, control, client_state)
        return apply_client_step(out, aggregator, view, session)
    except Exception as err:  # noqa: BLE001 - reported as the client's failure
        return ClientFailure(client.client_id, describe_error(err))


def train_client(
    replica: ClientUpdate,
    weights: ModelWeights,
    flat: np.ndarray,
    client: ClientData,
    seed: np.random.SeedSequence | np.ndarray | None,
    control: np.ndarray | None = None,
    client_state: Any = None,
) -> ClientOutput:
    """A client's local training, with SCAFFOLD's client step for a replica with ``control_variates``.

    FedAvg and FedProx: :meth:`ClientUpdate.train`. SCAFFOLD: the steps are
    corrected by ``control`` (the server's c) minus the client's own c_i
    (``client_state``, None the first time), and a finite output carries the
    control delta in ``parts`` and the client's new state in ``client_state``.
    Every carrier (threads, Ray, a Flower node) trains through this function.

    Raises:
        FedValueError: a SCAFFOLD replica without ``control``, or a client state of the wrong shape.
    """
    if not replica.control_variates:
        return replica.train(weights, flat, client, seed)
    from fedr.learning import scaffold

    if control is None:
        raise FedValueError("SCAFFOLD: the round brought no server control variate")
    out = replica.train(weights, flat, client, seed, scaffold.correction(control, client_state))
    if not out.finite:
        return out
    steps = (len(client.offsets) - 1) * replica.local_epochs
    sent, new_state = scaffold.client_result(control, client_state, out.delta, steps, replica.learning_rate)
    if not np.isfinite(sent).all():
        return out._replace(finite=False)
    return out._replace(parts={scaffold.CONTROL_DELTA: sent}, client_state=new_state)


def apply_client_step(out: ClientOutput, aggregator: Any, view: Any, session: Any = None) -> ClientOutput:
    """The aggregator's client step (clip, quantise, mask) on a finite output; non-finite outputs pass as they are."""
    if not out.finite:
        return out
    return out._replace(delta=aggregator.encode(view, out.delta, num_examples=out.num_examples, session=session))


class ClientTask:
    """The client task as an object a carrier can be handed (Ray ships it by reference, no code of the user's).

    ``replica`` builds a client's compiled model from the process's model
    spec; ``run`` is :func:`run_client`. Carriers (``fedr.executors``) run it
    without importing the learning modules themselves.

    Args:
        proximal_mu: FedProx's proximal coefficient of the process (see
            :class:`ClientUpdate`); it travels with the task, so every
            replica a carrier builds trains the process's way. 0 is FedAvg.

        control_variates: SCAFFOLD's client task (its replicas take a
            correction; see :func:`run_client`).

    Raises:
        FedValueError: ``proximal_mu`` is not a finite number >= 0.
    """

    def __init__(self, proximal_mu: float = 0.0, control_variates: bool = False) -> None:
        self.proximal_mu = check_proximal_mu(proximal_mu)
        self.control_variates = bool(control_variates)

    def replica(self, spec: Any, optimizer: dict[str, Any], local_epochs: int) -> ClientUpdate:
        """Build a compiled client replica from the model ``spec`` and the optimizer's Keras config.

        Args:
            spec: The process's :class:`~fedr.learning.ModelSpec`.
            optimizer: The client optimizer's Keras config.
            local_epochs: Passes over a client's batches per round.

        Returns:
            A :class:`ClientUpdate` with this task's ``proximal_mu`` and ``control_variates``.
        """
        import keras

        return ClientUpdate(
            spec.build(), keras.saving.deserialize_keras_object(optimizer), local_epochs=local_epochs,
            proximal_mu=self.proximal_mu, control_variates=self.control_variates,
        )

    def run(self, *args: Any) -> ClientOutput | ClientFailure:
        """Run one client's task: :func:`run_client` with ``args``."""
        return run_client(*args)

    def __repr__(self) -> str:
        parts = ([f"proximal_mu={self.proximal_mu:g}"] if self.proximal_mu else []) + (
            ["control_variates=True"] if self.control_variates else [])
        return f"ClientTask({', '.join(parts)})"
