"""The aggregator interface, and the (weighted) mean of client updates, FedAvg's default.

An aggregator is a pair of functions with explicit state, like optax's
``(init, update)``: ``init()`` returns its state, ``client_step(state, delta)``
runs in each client's task after local training (where clipping, encoding or
masking go), and ``aggregate(state, outputs, seed=...)`` sees all of a round's
client outputs at once and returns the new state, the aggregate update and
metrics. States are tuples of ``(name, array)`` pairs so that checkpoints can
save them (see :mod:`fedr.learning.state`).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

import numpy as np

from fedr.aggregators._weighted_mean import weighted_mean
from fedr.errors import FedTypeError, FedValueError

__all__ = ["AggregateResult", "Aggregator", "ClientResult", "Mean", "Sum", "mean", "sum_"]

NamedArrays = tuple[tuple[str, np.ndarray], ...]


class ClientResult(Protocol):
    """What an aggregator reads of a client's output (see ``fedr.learning.ClientOutput``)."""

    client_id: str
    delta: np.ndarray  # float32 (N,), after client_step
    num_examples: int


class LegacyView(NamedTuple):
    """The view of an aggregator that overrides only ``client_step``: what that step is called with."""

    state: Any
    context: Any
    client_id: str


class AggregateResult(NamedTuple):
    """What ``aggregate`` returns: new state, the aggregate update (float32 (N,)), metrics.

    ``selected``: the positions (in the outputs given) of the clients whose
    updates the aggregate is made of, when a rule keeps only some (Krum,
    Bulyan, zeroing); None means all. The process averages the clients'
    float non-trainable variables (BatchNorm statistics) over the same
    clients, so a client a robust rule left out does not reach the model
    through them.
    """

    state: NamedArrays
    update: np.ndarray
    metrics: dict[str, float]
    selected: tuple[int, ...] | None = None


class Aggregator(abc.ABC):
    """Base class of aggregators: ``init``, ``start_round``, ``client_step`` and ``aggregate``.

    One round calls, in order: ``context = start_round(state, client_ids,
    seed=...)`` on the calling thread before any client trains (it may refuse
    the round by raising, e.g. a privacy budget); ``client_step(state, delta,
    client_id=..., num_examples=..., context=context)`` in each client's task
    after local training, whose result the process passes on as the output's
    ``delta`` (an array, or anything the same aggregator understands, e.g. a
    clipped update with its norm, or a masked vector); and
    ``aggregate(state, outputs, seed=..., context=context)`` with the outputs
    of the clients that finished with a finite update, in client order.

    Attributes:
        averages_non_trainable: Whether the process may average the clients'
            float non-trainable variables (BatchNorm statistics) by example
            count. An aggregator that protects updates (differential privacy,
            secure aggregation) sets it False: those values would leak
            unprotected; they then keep their initial values on the server.
        is_sum: Whether ``aggregate`` returns the plain sum of the outputs'
            deltas; differential privacy needs it of its ``inner`` aggregator
            (and refuses a mean or a median when it is built).
        released_metrics: The process's own round metrics (``loss``, the
            model's metrics, ``num_examples``, ``num_clients``, ...) that may
            be reported with this aggregator: None for all of them; a DP
            aggregator lets through only what its guarantee covers.
    """

    averages_non_trainable: bool = True
    is_sum: bool = False
    released_metrics: frozenset[str] | None = None
    #: Message stages a round of this aggregator needs besides training (e.g.
    #: secure aggregation's key advertisement and sharing before, unmasking
    #: after); the driver carries them (see :mod:`fedr.protocol`).
    stages_before: tuple[str, ...] = ()
    stages_after: tuple[str, ...] = ()

    def init(self) -> NamedArrays:
        """Return the aggregator's initial state (none by default)."""
        return ()

    def start_round(
        self, state: NamedArrays, client_ids: Sequence[str], *, seed: np.random.SeedSequence | None = None
    ) -> Any:
        """Prepare a round for ``client_ids`` before they train; return the round's context (None by default)."""
        return None

    def client_view(self, state: NamedArrays, context: Any, client_id: str, position: int = -1) -> Any:
        """The public data one client's step needs this round (picklable, nobody's secret); None by default.

        The server makes it after the round's stages before training
        (``position`` is the client's 0-based place in the round); the client
        task receives it, wherever it runs (a thread, a Ray actor, a Flower
        node), and passes it to :meth:`encode`. An aggregator written against
        the older interface (it overrides only ``client_step``) gets a view
        holding its state and context, so its step runs on the client as before.
        """
        if self._legacy_step():
            return LegacyView(state, context, client_id)
        return None

    def _legacy_step(self) -> bool:
        cls = type(self)
        return cls.client_step is not Aggregator.client_step and cls.encode is Aggregator.encode

    def stage_requests(self, stage: str, context: Any, outputs: Sequence[Any] | None = None) -> dict[int, Any]:
        """The server's message to each client position in ``stage`` (``outputs``: the trained ones, after training)."""
        raise FedValueError(f"stage: {self!r} has no message stages, got {stage!r}")

    def stage_results(self, stage: str, context: Any, replies: dict[int, Any]) -> None:
        """Take the clients' replies of ``stage`` (position -> reply, or a ClientFailure: the client dropped)."""
        raise FedValueError(f"stage: {self!r} has no message stages, got {stage!r}")

    def client_stage(self, stage: str, payload: Any, session: Any) -> tuple[Any, Any]:
        """The client's side of ``stage``, where the client runs: ``(its new session, its reply)``."""
        raise FedValueError(f"stage: {self!r} has no message stages, got {stage!r}")

    def encode(self, view: Any, delta: np.ndarray, *, num_examples: int = 0, session: Any = None) -> Any:
        """The client step, on the client: its flat update as it is sent (clip, quantise, mask); identity by default.

        Args:
            view: What :meth:`client_view` made for this client.
            delta: The client's flat float32 update.
            num_examples: Its example count.
            session: The client's own state of the round's earlier stages
                (its secrets), kept where the client runs; None without stages.
        """
        if isinstance(view, LegacyView):
            return self.client_step(view.state, delta, client_id=view.client_id, num_examples=num_examples,
                                    context=view.context)
        return delta

    def client_step(
        self,
        state: NamedArrays,
        delta: np.ndarray,
        *,
        client_id: str = "",
        num_examples: int = 0,
        context: Any = None,
    ) -> Any:
        """:meth:`encode` with the client's :meth:`client_view`, in one process (what the client task runs)."""
        return self.encode(self.client_view(state, context, client_id), delta, num_examples=num_examples)

    @abc.abstractmethod
    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[ClientResult],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        """Combine a round's client outputs (at least one) into one update.

        Args:
            state: The state from ``init`` or the previous round.
            outputs: The round's client outputs, in client order, all finite;
                ``delta`` is what ``client_step`` returned.
            seed: The round's seed, for aggregators that draw random numbers.
            context: What ``start_round`` returned.
        """


def deltas(outputs: Sequence[ClientResult]) -> list[np.ndarray]:
    """The outputs' deltas, in client order; FedValueError for a round without outputs."""
    if not outputs:
        raise FedValueError("outputs: expected at least one client output, got none")
    return [out.delta for out in outputs]


def _weighted_mean(outputs: Sequence[ClientResult], weights: Sequence[float]) -> np.ndarray:
    """The weighted mean of the outputs' deltas (C++ kernel), summed in client order."""
    return weighted_mean(deltas(outputs), weights)


class Mean(Aggregator):
    """The mean of client updates, weighted by example count or not (C++ kernel)."""

    def __init__(self, *, weighted: bool = True) -> None:
        if not isinstance(weighted, bool):
            raise FedTypeError(f"weighted: expected True or False, got {weighted!r}")
        self.weighted = weighted

    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[ClientResult],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        weights = [float(out.num_examples) if self.weighted else 1.0 for out in outputs]
        return AggregateResult(state, _weighted_mean(outputs, weights), {})

    def __repr__(self) -> str:
        return f"mean(weighted={self.weighted})"


class Sum(Aggregator):
    """The plain sum of client updates: the default inner sum of differential privacy."""

    is_sum = True

    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[ClientResult],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        # The kernel's mean (float64 sums) times the count is the sum.
        total = _weighted_mean(outputs, [1.0] * len(outputs)).astype(np.float64) * len(outputs)
        return AggregateResult(state, total.astype(np.float32), {})

    def __repr__(self) -> str:
        return "sum()"


def sum_() -> Sum:
    """The unweighted sum of the clients' updates (not a mean).

    Used as the ``inner`` sum of :func:`fedr.privacy.gaussian_fixed` and
    :func:`fedr.privacy.gaussian_adaptive`; :func:`fedr.privacy.secure_sum`
    computes the same under secure aggregation.

    Returns:
        An :class:`Aggregator`.
    """
    return Sum()


def mean(*, weighted: bool = True) -> Mean:
    """The mean of the clients' model updates, FedAvg's aggregator and the default.

    Args:
        weighted: Weight each client by its number of examples (McMahan et al.
            2016); False gives every client the same weight.

    Returns:
        An :class:`Aggregator`.
    """
    return Mean(weighted=weighted)


def check_aggregator(aggregator: Any) -> Aggregator:
    """Return ``aggregator``, or the default mean for None; raise FedTypeError otherwise."""
    if aggregator is None:
        return Mean()
    if not isinstance(aggregator, Aggregator):
        raise FedTypeError(
            "aggregator: expected a fedr aggregator such as fedr.aggregators.mean(), "
            f"got {type(aggregator).__name__}"
        )
    return aggregator
