"""The names a round writes into its metrics and its history: one list, one owner.

A user's Keras metric may not take any of them, or it would be silently
overwritten (in Python's metrics dict, in R's ``fed_history`` and in Flower's
``history.csv``); :func:`check_metric_names` refuses such a model when it is
built, from Python and R alike. Aggregators and transports name what they
write from here, and a test runs every built-in aggregator to check that
nothing it writes is missing from this list.
"""

from __future__ import annotations

from collections.abc import Iterable

from fedr.errors import FedValueError

__all__ = ["COUNT_COLUMNS", "GOSSIP_COUNT_COLUMNS", "RESERVED_METRICS", "RESERVED_PREFIXES", "check_metric_names", "is_reserved"]

# Counts of a round (integers in R's history, shown after the metrics).
COUNT_COLUMNS: tuple[str, ...] = (
    "num_examples", "num_clients", "num_clients_dropped", "num_clients_failed", "round_failed",
)

# Counts of a gossip round (fedr.gossip): in its history, not on its progress line.
GOSSIP_COUNT_COLUMNS: tuple[str, ...] = (
    "num_peers", "num_peers_failed", "num_peers_absent", "ticks", "ticks_skipped", "bytes_sent", "bytes_sent_total",
)

RESERVED_METRICS: frozenset[str] = frozenset({
    # what every round writes (learning/process.py)
    "loss", *COUNT_COLUMNS,
    # what the history adds (R fed_fit, Flower's history.csv)
    "round", "seconds", "events", "clients", "failed", "best_round",
    # what aggregators write (aggregators/, privacy/)
    "clip", "epsilon", "dp_noise_stddev", "dp_unclipped_fraction",
    "secure_clients", "secure_dropped", "secure_threshold", "secure_num_examples",
    "trimmed_per_side", "krum_selected", "bulyan_selected", "geometric_median_iterations",
    "num_clipped", "num_zeroed", "ddp_noise_shares", "ddp_provisioned",
})

# Prefixes of derived columns: validation (R fed_fit), federated evaluation,
# and an inner aggregator's metrics under its outer one (DP over a secure sum).
RESERVED_PREFIXES: tuple[str, ...] = ("val_", "eval_", "inner_")


def is_reserved(name: str) -> bool:
    """Return whether ``name`` is written by the round itself (a metric may not take it)."""
    return name in RESERVED_METRICS or name.startswith(RESERVED_PREFIXES)


def check_metric_names(names: Iterable[str], arg: str = "metrics") -> list[str]:
    """Return ``names`` as a list; raise FedValueError naming a duplicate or a reserved name.

    Raises:
        FedValueError: a name appears twice, or is one a round writes itself
            (:data:`RESERVED_METRICS`, or starts with ``val_``/``eval_``).
    """
    names = [str(n) for n in names]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise FedValueError(f"{arg}: two metrics are named {name!r}; give each a name of its own (name=)")
        seen.add(name)
        if is_reserved(name):
            why = "starts with a prefix" if name not in RESERVED_METRICS else "is a name"
            raise FedValueError(
                f"{arg}: a metric named {name!r} {why} that fedr's rounds write themselves and would be "
                f"overwritten; rename it (name=), e.g. 'my_{name}'. Reserved: {', '.join(sorted(RESERVED_METRICS))}"
                f" and names starting with {', '.join(RESERVED_PREFIXES)}"
            )
    return names
