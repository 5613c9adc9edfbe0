"""A run's privacy report: ε per round, the clip, the noise, who took part and who dropped, from its history.

Every DP aggregator reports its releases as round metrics (``epsilon``,
``clip``, ``dp_noise_stddev``; distributed DP adds ``ddp_noise_shares`` and
``ddp_provisioned``; a secure sum ``inner_secure_clients`` and
``inner_secure_dropped``). :func:`report` gathers them per round into
columns, one place for Python and R (``fed_privacy_report()``), and says
which rounds were weaker than planned.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fedr.errors import FedTypeError, FedValueError

__all__ = ["report"]

# Report column <- the first round metric present (aggregators name them differently).
_SOURCES: dict[str, tuple[str, ...]] = {
    "epsilon": ("epsilon",),
    "clip": ("clip",),
    "noise_stddev": ("dp_noise_stddev",),
    "unclipped_fraction": ("dp_unclipped_fraction",),
    "participants": ("inner_secure_clients", "secure_clients", "num_clients"),
    "dropped": ("inner_secure_dropped", "secure_dropped", "num_clients_dropped"),
    "failed": ("num_clients_failed",),
    "noise_shares": ("ddp_noise_shares",),
    "provisioned": ("ddp_provisioned",),
}
_DP = ("epsilon", "clip", "dp_noise_stddev")


def _rows(history: Any) -> list[Mapping[str, Any]]:
    rows = getattr(history, "rows", history)
    if isinstance(rows, Mapping) or not isinstance(rows, Sequence) or isinstance(rows, str):
        raise FedTypeError(
            f"history: expected what fedr.learning.fit or fedr.flower.run returned (or its rows, a list of dicts), "
            f"got {type(history).__name__}"
        )
    if not all(isinstance(r, Mapping) for r in rows):
        raise FedTypeError("history: every row must be a dict of a round's metrics")
    return list(rows)


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def report(history: Any) -> dict[str, list[Any]]:
    """The privacy report of a run: one entry per round in each column.

    Args:
        history: A :class:`fedr.learning.History` (``fit``), a Flower run's
            result (``fedr.flower.run``), or their rows (dicts with ``round``
            and the round's metrics).

    Returns:
        Columns as lists, one element per round: ``round``; ``epsilon`` (ε at
        the aggregator's δ after that round; NaN when not accounted);
        ``clip``; ``noise_stddev`` (of the noise on the sum);
        ``unclipped_fraction`` (adaptive clipping's released fraction, else
        NaN); ``participants`` and ``dropped`` (the secure sum's survivors
        and dropouts when there is one, else the process's counts);
        ``failed``; ``noise_shares`` and ``provisioned`` (distributed DP:
        shares in the sum, shares planned; else NaN); and ``weakened``
        (True where fewer noise shares arrived than were provisioned, so the
        round's ε is above plan).

    Raises:
        FedTypeError: ``history`` is not a history or its rows.
        FedValueError: it has no rounds, or no round released DP metrics.
    """
    rows = _rows(history)
    if not rows:
        raise FedValueError("history: it has no rounds, so there is nothing to report")
    if not any(any(name in r for name in _DP) for r in rows):
        raise FedValueError(
            "history: no round reports epsilon, clip or dp_noise_stddev; was the process built with a DP "
            "aggregator (gaussian_fixed, gaussian_adaptive, distributed_dp)?"
        )
    out: dict[str, list[Any]] = {"round": [int(_number(r.get("round", i + 1))) for i, r in enumerate(rows)]}
    for column, names in _SOURCES.items():
        out[column] = [next((_number(r[n]) for n in names if n in r), math.nan) for r in rows]
    out["weakened"] = [bool(s < p) for s, p in zip(out["noise_shares"], out["provisioned"], strict=True)]
    return out
