"""A round's plain records (plan, remote job, output) and its local carrier of message stages.

Split from :mod:`fedr.learning.process`, which composes them; see
:mod:`fedr.protocol` for the messages themselves.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from fedr import _seeds
from fedr.aggregators import Aggregator
from fedr.datasets import ClientData
from fedr.errors import FedValueError, FedWarning
from fedr.learning.state import ModelWeights, ServerState
from fedr.protocol.messages import ClientFailure

__all__ = [
    "ClientsDroppedWarning", "ClientsFailedWarning", "LearningProcessOutput", "RoundJob", "RoundPlan",
    "combine_metrics", "usable_outputs",
]


class ClientsDroppedWarning(FedWarning):
    """Some clients of a round were left out of the aggregate (their update was not finite)."""


class ClientsFailedWarning(FedWarning):
    """Some clients of a round failed (raised, died or did not answer in time) and were left out."""


class RoundJob(NamedTuple):
    """What a remote executor needs to run a round's client updates (all of it picklable, none of it secret)."""

    spec: Any  # fedr.learning.model.ModelSpec
    optimizer: dict[str, Any]  # the client optimizer's Keras config
    local_epochs: int
    weights: ModelWeights
    flat: np.ndarray
    clients: list[ClientData]
    seeds: list[np.random.SeedSequence]
    aggregator: Aggregator
    views: list[Any]  # the aggregator's public view of each client
    lost: dict[int, ClientFailure]  # clients that dropped out in a stage before training (by position)
    round_key: str | None  # where the executor keeps the clients' sessions of this round (None: no stages)
    task: Any  # the client task the carrier runs (ClientTask)
    control: np.ndarray | None = None  # SCAFFOLD: the server's control variate c (public)
    client_states: list[Any] | None = None  # SCAFFOLD: each client's own state, from the store beside its data


class RoundPlan(NamedTuple):
    """A started round (:meth:`FedAvgProcess.begin_round`): what its clients need and what finishing it needs."""

    state: ServerState
    round_num: int
    client_ids: tuple[str, ...]
    seeds: tuple[np.random.SeedSequence, ...]
    context: Any


class LearningProcessOutput(NamedTuple):
    """What ``next`` returns: the new state and the round's training metrics."""

    state: ServerState
    metrics: dict[str, float]


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


def usable_outputs(
    round_num: int, n_clients: int, results: Sequence[Any], min_clients: int | float, stacklevel: int,
) -> tuple[list[Any], list[ClientFailure], list[str]]:
    """A round's usable outputs (finite), its failures and the ids of its non-finite (dropped) outputs.

    One rule for every carrier: failed clients are named in a
    :class:`ClientsFailedWarning`, non-finite updates in a
    :class:`ClientsDroppedWarning`; with fewer than ``min_clients`` (a count,
    or a fraction of the round's ``n_clients``) usable outputs, or none at
    all, the round raises FedValueError and its state stays the last good one.
    ``stacklevel`` is the warnings' (``warnings.warn``'s, from this function).
    """
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
    needed = min_clients if isinstance(min_clients, int) else math.ceil(min_clients * n_clients)
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
    return kept, failed, dropped
