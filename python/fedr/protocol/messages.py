"""What crosses between a round's server side and its clients: plain, picklable data, no TensorFlow.

A round (DESIGN.md, "One round, as data flowing one way"): the server's
``begin_round`` makes, per client, its seed words and the aggregator's public
*view*; aggregators with more than one exchange (secure aggregation) add
message *stages* before and after training; each client answers with a
:class:`ClientOutput` (or a :class:`ClientFailure`). Every carrier (threads,
Ray actors, Flower nodes) moves these same messages; a client's secrets live
in its *session*, kept by the carrier where that client runs, never in the
server's objects.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from fedr.errors import FedValueError

__all__ = ["ClientFailure", "ClientOutput", "carry_stage", "describe_error", "run_locally"]


class ClientFailure(NamedTuple):
    """A client whose round (or one stage of it) raised: left out of the aggregate and named in the round's result."""

    client_id: str
    error: str  # "Type: message"


class ClientOutput(NamedTuple):
    """What one client reports after a round."""

    client_id: str
    delta: Any  # float32 (N,) trained minus initial trainable weights, flattened; after the client step, what it sent
    non_trainable: np.ndarray  # float32 (M,): float non-trainable variables after training, flattened
    num_examples: int  # examples processed (over all local epochs)
    metrics: np.ndarray  # float64 (K,): each model metric's result over the round
    loss_sum: float  # sum of per-example losses over the round
    finite: bool  # False when the update, the statistics or the loss hold NaN or Inf
    # Further named vectors the client sends with its update (SCAFFOLD's "control_delta"); None: none.
    parts: Mapping[str, np.ndarray] | None = None
    # The client's own state after the round (SCAFFOLD's control variate), for the carrier to keep
    # where the client runs; carriers take it off before the server sees the output (see client_state).
    client_state: Mapping[str, np.ndarray] | None = None


def describe_error(err: BaseException) -> str:
    """``Type: message`` of an exception, without the traced-code listing TensorFlow puts first."""
    text = str(err).strip()
    if "in user code:" in text:
        text = [p for p in text.split("\n\n") if p.strip()][-1].strip()
        return text if ": " in text.split("\n")[0] else f"{type(err).__name__}: {text}"
    return f"{type(err).__name__}: {text}"


def carry_stage(
    aggregator: Any,
    stage: str,
    requests: Mapping[int, Any],
    sessions: dict[int, Any],
    client_ids: Sequence[str],
    mapper: Callable[[Callable[[int], Any], list[int]], list[Any]] | None = None,
) -> dict[int, Any]:
    """Run the clients' side of ``stage`` where their sessions are kept; position -> reply, or a ClientFailure.

    For carriers whose clients run in this process (serial, threads):
    ``sessions`` is the carrier's store of the clients' round state (their
    secrets), ``mapper`` maps a function over positions (a thread pool's map;
    default in turn). A client that raises is a :class:`ClientFailure` for
    the server: one dropout rule for every stage and carrier.
    """

    def one(position: int) -> Any:
        try:
            session, reply = aggregator.client_stage(stage, requests[position], sessions.get(position))
        except Exception as err:  # noqa: BLE001 - the client drops out, named
            sessions.pop(position, None)
            return ClientFailure(client_ids[position], describe_error(err))
        sessions[position] = session
        return reply

    positions = sorted(requests)
    replies = mapper(one, positions) if mapper is not None else [one(p) for p in positions]
    return dict(zip(positions, replies, strict=True))


class _Sent(NamedTuple):
    client_id: str
    delta: Any
    num_examples: int


def run_locally(
    aggregator: Any,
    state: Any,
    client_ids: Sequence[str],
    deltas: Sequence[np.ndarray],
    *,
    counts: Sequence[int] | None = None,
    seed: np.random.SeedSequence | None = None,
    keep: Sequence[int] | None = None,
    sessions: dict[int, Any] | None = None,
) -> tuple[Any, list[Any], Any]:
    """One round of ``aggregator`` alone, every stage carried in this process (tests, benchmarks, no model).

    The same sequence as a process's round: ``start_round``, the stages before
    training, each client's view and ``encode`` (with its own session), the
    stages after, ``aggregate``. ``keep`` lists the positions that send their
    update (the others drop out after the stages before training).

    Returns:
        ``(aggregate result, the outputs sent, the round's context)``.
    """
    n = len(client_ids)
    if not n or len(deltas) != n or (counts is not None and len(counts) != n):
        raise FedValueError(
            f"deltas: expected one update (and count) per client of the {n} client_ids, got {len(deltas)} updates"
            + ("" if counts is None else f" and {len(counts)} counts")
        )
    counts = list(counts) if counts is not None else [1] * n
    sessions = {} if sessions is None else sessions
    context = aggregator.start_round(state, list(client_ids), seed=seed)
    for stage in aggregator.stages_before:
        replies = carry_stage(aggregator, stage, aggregator.stage_requests(stage, context), sessions, client_ids)
        aggregator.stage_results(stage, context, replies)
    keep = range(n) if keep is None else keep
    outputs = []
    for i in keep:
        view = aggregator.client_view(state, context, client_ids[i], i)
        sent = aggregator.encode(view, np.asarray(deltas[i]), num_examples=counts[i], session=sessions.get(i))
        outputs.append(_Sent(client_ids[i], sent, counts[i]))
    for stage in aggregator.stages_after:
        requests = aggregator.stage_requests(stage, context, outputs)
        replies = carry_stage(aggregator, stage, requests, sessions, client_ids)
        aggregator.stage_results(stage, context, replies)
    return aggregator.aggregate(state, outputs, seed=seed, context=context), outputs, context
