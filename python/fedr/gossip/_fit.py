"""The gossip loop over rounds: absences and rejoins, the average model's evaluation, the history."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedr.errors import FedTypeError, FedValueError
from fedr.gossip._process import GossipProcess
from fedr.gossip._state import GossipState

__all__ = ["GossipHistory", "fit"]


@dataclass(frozen=True, eq=False)
class GossipHistory:
    """What :func:`fit` returns.

    Attributes:
        rows: One dict per round: ``round``, the round's metrics (see
            :class:`~fedr.gossip.GossipOutput`), ``bytes_sent_total`` (bytes
            a peer sent so far, on average), the average model's metrics on
            the training data (``average_`` columns, with
            ``evaluate_average``) and on ``validation_data`` (``val_``), ``seconds``.
        peers: One dict per peer and round (``GossipOutput.peers``).
        events: Dicts ``{"round", "peer", "event", "message"}``: ``absent``,
            ``failed``, ``rejoined``.
        state: The final :class:`GossipState`.
        graph: The process's graph; ``weights``: its mixing matrix.
    """

    rows: tuple[dict[str, Any], ...]
    peers: tuple[dict[str, Any], ...]
    events: tuple[dict[str, Any], ...]
    state: GossipState
    graph: Any
    weights: np.ndarray
    mode: str = "sync"
    metric_names: tuple[str, ...] = field(default=())

    def column(self, name: str) -> list[float]:
        """The values of one column of ``rows``, one per round (NaN where a row lacks it)."""
        return [row.get(name, math.nan) for row in self.rows]


def _absent_for(absent: Any, round_num: int, n: int) -> list[int]:
    if absent is None:
        return []
    peers = absent(round_num) if callable(absent) else absent.get(round_num, ())
    if peers is None:
        return []
    if isinstance(peers, int | np.integer):
        peers = [peers]
    return [int(p) for p in peers]


def fit(
    process: GossipProcess,
    federated_data: Any,
    rounds: int,
    *,
    state: GossipState | None = None,
    validation_data: Any = None,
    absent: Mapping[int, Sequence[int]] | Callable[[int], Sequence[int]] | None = None,
    evaluate_average: bool = True,
    callbacks: Sequence[Any] | None = None,
) -> GossipHistory:
    """Run ``rounds`` gossip rounds and return the history.

    Args:
        process: From :func:`fedr.gossip.build_gossip`.
        federated_data: One ClientData per peer, in peer order.
        rounds: Rounds to run.
        state: Where to start; None is ``process.initialize()``.
        validation_data: Held-out clients; after each round the average model
            is evaluated on them (``val_`` columns).
        absent: The peers (0-based) that sit a round out: a mapping round ->
            peers, or a function of the round. An absent or failed peer keeps
            its model and rejoins the next round it takes part in (a
            ``rejoined`` event).
        evaluate_average: Evaluate the average model on ``federated_data``
            after each round (``average_loss`` and ``average_<metric>``).
        callbacks: As :func:`fedr.learning.fit`'s (e.g.
            ``fedr.learning.ProgressLines()`` for a line per round):
            ``on_round_end(round_num, row, state)`` after each round (``state``
            the :class:`GossipState`), ``on_fit_end(history)`` at the end.

    Returns:
        A :class:`GossipHistory`.

    Raises:
        FedTypeError, FedValueError: a bad argument (before any round).
        fedr.learning.FitError: a round failed (e.g. every peer failed); its
            ``history`` holds the rounds that finished (``state``: the last
            good one) and a ``failed`` event, its ``cause`` the error.
    """
    if not isinstance(process, GossipProcess):
        raise FedTypeError(f"process: expected a GossipProcess (fedr.gossip.build_gossip), got {type(process).__name__}")
    if isinstance(rounds, bool) or not isinstance(rounds, int | np.integer) or rounds < 1:
        raise FedValueError(f"rounds: expected a positive integer, got {rounds!r}")
    if absent is not None and not (callable(absent) or isinstance(absent, Mapping)):
        raise FedTypeError(f"absent: expected a mapping round -> peers or a function of the round, got "
                           f"{type(absent).__name__}")
    clients = process.check_data(federated_data)
    callbacks = list(callbacks or ())
    if isinstance(absent, Mapping):
        bad = [k for k in absent if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1]
        if bad:
            raise FedValueError(f"absent: its keys are rounds (integers from 1), got {bad[0]!r}")
    if validation_data is not None:
        process.check_held_out(validation_data, "validation_data")
    state = process.initialize() if state is None else process.check_state(state)
    rows, peers, events = [], [], []
    total = 0.0
    away: set[int] = set()
    for _ in range(int(rounds)):
        started = time.perf_counter()
        round_num = state.round_num + 1
        try:
            out = process.next(state, clients, absent=_absent_for(absent, round_num, process.graph.num_peers))
        except Exception as err:
            # The finished rounds are the user's work: they travel with the error, as learning.fit's do.
            from fedr.learning import FitError

            text = f"{type(err).__name__}: {err}"
            events.append({"round": round_num, "peer": None, "event": "failed", "message": text})
            kept = GossipHistory(tuple(rows), tuple(peers), tuple(events), state, process.graph, process.weights,
                                 process.mode, tuple(process.metric_names))
            done = (f"Rounds 1-{round_num - 1} of this call finished and are kept in the error's `history` (its "
                    "`state` is the last good state)." if rows else "No round of this call finished.")
            raise FitError(f"Round {round_num} failed: {text}\n{done}", kept, round_num, err, None) from err
        state = out.state
        took_part = {p["peer"] for p in out.peers if p["status"] in ("trained", "idle")}
        events += [{"round": round_num, "peer": p, "event": "rejoined", "message": "back after being away"}
                   for p in sorted(away & took_part)]
        events += out.events
        away = (away - took_part) | {e["peer"] for e in out.events}
        total += out.metrics["bytes_sent"]
        row: dict[str, Any] = {"round": round_num, **out.metrics, "bytes_sent_total": total}
        if evaluate_average:
            row.update({f"average_{k}": v for k, v in process.evaluate(state, clients).items()
                        if k not in ("num_examples", "num_clients")})
        if validation_data is not None:
            row.update({f"val_{k}": v for k, v in process.evaluate(state, validation_data).items()
                        if k not in ("num_examples", "num_clients")})
        row["seconds"] = time.perf_counter() - started
        rows.append(row)
        peers += out.peers
        for callback in callbacks:
            if hasattr(callback, "on_round_end"):
                callback.on_round_end(round_num, row, state)
    history = GossipHistory(tuple(rows), tuple(peers), tuple(events), state, process.graph, process.weights,
                            process.mode, tuple(process.metric_names))
    for callback in callbacks:
        if hasattr(callback, "on_fit_end"):
            callback.on_fit_end(history)
    return history
