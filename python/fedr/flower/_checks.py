"""What a Flower run can take and what a node may send: the checks of :class:`~fedr.flower.FedrStrategy`.

Flower nodes are not trusted for what they report. An aggregator's client
step runs on the nodes, so it must travel there as data; a node's reply must
be what that step makes (under DP over a plain sum: within the round's clip)
and may not count more examples than the node declared when it joined.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedr.errors import FedTypeError, FedValueError
from fedr.flower import _messages as wire
from fedr.learning.process import FedAvgProcess
from fedr.protocol import ClientFailure

__all__ = ["check_examples", "check_flower_aggregator", "check_flower_run", "check_sent", "client_aggregator_json",
           "expected_kind", "has_client_step"]


def has_client_step(aggregator: Any) -> bool:
    """Whether ``aggregator`` does anything on the client after training (clip, quantise, mask) or has stages."""
    from fedr.aggregators import Aggregator

    cls = type(aggregator)
    return bool(cls.encode is not Aggregator.encode or cls.client_step is not Aggregator.client_step
                or aggregator.stages_before or aggregator.stages_after)


def client_aggregator_json(aggregator: Any) -> str | None:
    """The aggregator as the nodes rebuild it to run its client step (JSON), or None if it has none.

    What only the server needs stays out: the reproducible noise seed of
    tests (whoever knows it can remove DP's noise).
    """
    from fedr.learning import aggregator_to_data

    if not has_client_step(aggregator):
        return None

    def strip(data: dict[str, Any]) -> dict[str, Any]:
        params = {k: strip(v) if isinstance(v, dict) else v for k, v in data["params"].items()}
        if "noise_seed" in params:
            params["noise_seed"] = None
        return {"name": data["name"], "params": params}

    return wire.to_json(strip(aggregator_to_data(aggregator)))


def check_flower_aggregator(aggregator: Any, trusted_server: bool = False) -> None:
    """Raise for an aggregator a Flower run cannot take: its client step must be able to reach the nodes.

    An aggregator with a client step (DP's clipping, secure aggregation's
    masking) runs it on the nodes, so it must travel as data (a built-in
    aggregator). With ``trusted_server`` the nodes send raw updates and the
    server runs the step, which secure aggregation cannot allow (its keys
    are the clients').
    """
    if not isinstance(trusted_server, bool):
        raise FedTypeError(f"trusted_server: expected True or False, got {trusted_server!r}")
    if trusted_server and (aggregator.stages_before or aggregator.stages_after):
        raise FedValueError(
            f"trusted_server: {aggregator!r} is secure aggregation, whose keys and masking must stay on the "
            "nodes; a trusted server would see every update, so use trusted_server = False"
        )
    if not trusted_server and has_client_step(aggregator):
        try:
            client_aggregator_json(aggregator)
        except FedTypeError as err:
            raise FedTypeError(
                f"aggregator: its client step must run on the nodes, but {err}; use a built-in aggregator, or "
                "trusted_server = True to let the server run it on the nodes' raw updates"
            ) from None


def expected_kind(aggregator: Any) -> str:
    """What a node running ``aggregator``'s client step sends (see :func:`fedr.flower._messages.kind_of`)."""
    from fedr.privacy import GaussianDP, SecureMean, SecureSum

    if isinstance(aggregator, GaussianDP):
        return f"clipped/{expected_kind(aggregator.inner)}"
    if isinstance(aggregator, SecureSum | SecureMean):
        return "masked"
    return "array"


def check_sent(out: Any, kind: str, view: Any, node: int) -> Any:
    """``out``, or a named failure when a node did not send what its client step makes.

    A finite update must have the aggregator's form; under DP over a plain
    sum its norm must be within the round's clip (a receipt that the node
    clipped: an update above it would break the noise's calibration).
    """
    if isinstance(out, ClientFailure) or not out.finite:
        return out
    got = wire.kind_of(out.delta)
    if got != kind:
        return ClientFailure(out.client_id, f"FedValueError: node {node} sent an update of kind '{got}', expected "
                                            f"'{kind}' (the aggregator's client step); its update is refused")
    if kind.endswith("masked"):
        # A node answers for its own position only: another's index would void the round's unmasking.
        index = getattr(view, "index", None) if kind == "masked" else getattr(getattr(view, "inner", None), "index", None)
        sent = out.delta if kind == "masked" else out.delta.vector
        if index is not None and sent.index != index:
            return ClientFailure(out.client_id, f"FedValueError: node {node} sent a masked update as client "
                                                f"{sent.index}, but it is client {index} of this round; its update "
                                                "is refused")
    clip = getattr(view, "clip", None)
    if kind == "clipped/array" and clip is not None:
        norm = float(np.linalg.norm(out.delta.vector.astype(np.float64)))
        if norm > clip * (1 + 1e-5):
            return ClientFailure(out.client_id, f"FedValueError: node {node} sent an update of norm {norm:.6g}, "
                                                f"above this round's clip {clip:.6g}; its update is refused")
    return out


def check_flower_run(process: Any, min_nodes: Any, fraction: Any, trusted_server: Any = False) -> None:
    """Raise, naming the argument, for what a Flower run of ``process`` cannot take (checked before it starts)."""
    if not isinstance(process, FedAvgProcess):
        raise FedTypeError(f"process: expected a fedr FedAvgProcess, got {type(process).__name__}")
    check_flower_aggregator(process.aggregator, trusted_server)
    if isinstance(min_nodes, bool) or not isinstance(min_nodes, int | np.integer) or min_nodes < 1:
        raise FedValueError(f"min_nodes: expected a positive integer, got {min_nodes!r}")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction <= 1:
        raise FedValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")


def check_examples(out: Any, node: int, declared: int | None) -> Any:
    """``out``, or a named failure when the node reports more examples than it declared when it joined.

    A node's example count weighs its update in the mean; a count it may raise
    at will would let one node outweigh all the others, so a round's count is
    bounded by the one the node gave at its first contact (its data's size).
    """
    if isinstance(out, ClientFailure) or declared is None or out.num_examples <= declared:
        return out
    return ClientFailure(
        out.client_id,
        f"FedValueError: node {node} reported {out.num_examples} examples, more than the {declared} it declared "
        "when it joined; its update is refused",
    )
