"""What travels between a fedr ServerApp and a node's ClientApp, as Flower records.

One module owns the wire format, both directions, so server and node cannot
disagree. Everything is plain data: weights as ``ArrayRecord`` (one array per
variable, keyed by its canonical name), the model and optimizer as Keras
configs in JSON (no pickles: a node never runs code the server sends, it only
rebuilds Keras objects, with Keras's safe mode), numbers in ``ConfigRecord`` /
``MetricRecord``. The base seed never leaves the server: a node gets only the
seed words its model's random generators need.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from fedr.protocol import ClientFailure, ClientOutput
from fedr.learning.state import ModelWeights

# Keys of the records in a message's RecordDict.
WEIGHTS = "arrays"  # ArrayRecord: the server's model
CONFIG = "config"  # ConfigRecord: the round's instructions
UPDATE = "update"  # ArrayRecord: a node's delta and float non-trainable values
METRICS = "metrics"  # MetricRecord: a node's counts and metrics
FAILURE = "failure"  # ConfigRecord: why a node could not do its part
DESCRIBE = "describe"  # ConfigRecord: a node's client id and example count
SENT = "sent"  # ConfigRecord: what wraps the update a node's client step sent (DP's bit, a masked vector's index)
#: Key of a message's CONFIG or STAGE record: the node's last message of the run (its worker stops after it).
FINAL = "fedr-final"
CONTROL = "control"  # ArrayRecord: SCAFFOLD's server control variate c (server -> node, public)
STAGE = "stage"  # ConfigRecord: a protocol stage's name, round and payload (server -> node) or reply (node -> server)

_T, _N = "trainable:", "non_trainable:"
_PART = "part:"  # an UPDATE array that is a named part of the output (ClientOutput.parts)


def control_record(control: np.ndarray) -> Any:
    """SCAFFOLD's server control variate as the ``ArrayRecord`` of a train message."""
    from flwr.app import Array, ArrayRecord

    return ArrayRecord(array_dict={"control": Array(np.ascontiguousarray(control, np.float32))})


def control_from_record(record: Any, size: int) -> np.ndarray:
    """The control variate of :func:`control_record`, checked (float32 of ``size``)."""
    value = record["control"].numpy()
    if value.dtype != np.float32 or value.shape != (size,):
        raise ValueError(f"control variate of {value.dtype} {value.shape}, expected float32 ({size},)")
    return value


def weights_record(weights: ModelWeights) -> Any:
    """The model's variables as an ``ArrayRecord`` keyed ``trainable:<name>`` / ``non_trainable:<name>``."""
    from flwr.app import Array, ArrayRecord

    arrays = {f"{_T}{n}": Array(np.ascontiguousarray(a)) for n, a in zip(weights.trainable_names, weights.trainable, strict=True)}
    arrays.update(
        {f"{_N}{n}": Array(np.ascontiguousarray(a))
         for n, a in zip(weights.non_trainable_names, weights.non_trainable, strict=True)}
    )
    return ArrayRecord(array_dict=arrays)


def weights_from_record(record: Any) -> ModelWeights:
    """The :class:`ModelWeights` of an ``ArrayRecord`` made by :func:`weights_record`."""
    trainable, non_trainable, t_names, n_names = [], [], [], []
    for key, array in record.items():
        value = array.numpy()
        if key.startswith(_T):
            trainable.append(value)
            t_names.append(key[len(_T):])
        elif key.startswith(_N):
            non_trainable.append(value)
            n_names.append(key[len(_N):])
        else:
            raise ValueError(f"unexpected array {key!r} in the model's weights")
    return ModelWeights(tuple(trainable), tuple(non_trainable), tuple(t_names), tuple(n_names))


def to_json(value: Any) -> str:
    """Plain data (Keras configs) as compact JSON."""
    return json.dumps(value, separators=(",", ":"), default=_json_default)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not plain data")


def kind_of(sent: Any) -> str:
    """What a client sent, by its shape: ``array`` (a plain update), ``masked`` (secure aggregation),
    ``clipped/array`` or ``clipped/masked`` (differential privacy over a plain or a secure sum)."""
    from fedr.privacy import ClippedUpdate, MaskedInput

    if isinstance(sent, ClippedUpdate):
        return f"clipped/{kind_of(sent.vector)}"
    if isinstance(sent, MaskedInput):
        return "masked"
    return "array"


def _sent_parts(sent: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """The one array a client sends and the record of what wraps it (no norm: only what aggregation reads)."""
    from fedr.privacy import ClippedUpdate, MaskedInput

    if isinstance(sent, ClippedUpdate):
        array, inner = _sent_parts(sent.vector)
        return array, {**inner, "kind": f"clipped/{inner['kind']}",
                       "unclipped": -1 if sent.unclipped is None else int(bool(sent.unclipped))}
    if isinstance(sent, MaskedInput):
        return np.ascontiguousarray(sent.masked), {"kind": "masked", "index": int(sent.index)}
    return np.ascontiguousarray(sent, np.float32), {"kind": "array"}


def _sent_from_parts(array: np.ndarray, record: Any, size: int) -> Any:
    """The client's sent value of :func:`_sent_parts`, its array checked against ``size`` (the update's length)."""
    from fedr.privacy import ClippedUpdate, MaskedInput

    kind = str(record.get("kind", "array"))
    base = kind.split("/")[-1]
    if base == "array":
        if array.dtype != np.float32 or array.shape != (size,):
            raise ValueError(f"update of {array.dtype} {array.shape}, expected float32 ({size},)")
        vector: Any = array
    elif base == "masked":
        index = record.get("index")
        if array.dtype not in (np.uint32, np.uint64) or array.ndim != 1 or isinstance(index, bool) \
                or not isinstance(index, int | np.integer):
            raise ValueError(f"masked update of {array.dtype} {array.shape} (client {index!r}), expected uint32 "
                             "or uint64 of one dimension")
        vector = MaskedInput(int(index), array)
    else:
        raise ValueError(f"an update of kind {kind[:40]!r}")
    if kind == base:
        return vector
    if kind not in ("clipped/array", "clipped/masked"):
        raise ValueError(f"an update of kind {kind[:40]!r}")
    bit = record.get("unclipped", -1)
    if bit not in (-1, 0, 1) or isinstance(bit, bool):
        raise ValueError(f"unclipped {bit!r}, expected -1, 0 or 1")
    return ClippedUpdate(vector, float("nan"), None if bit == -1 else bool(bit))


def output_reply(out: ClientOutput | ClientFailure) -> dict[str, Any]:
    """The records of a node's training reply: what its aggregator's client step sent, counts and metrics."""
    from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord

    if isinstance(out, ClientFailure):
        return {FAILURE: ConfigRecord({"client-id": out.client_id, "error": out.error})}
    metrics: dict[str, Any] = {
        "num-examples": int(out.num_examples),
        "loss-sum": float(out.loss_sum),
        "finite": int(bool(out.finite)),
    }
    if len(out.metrics):
        metrics["metrics"] = [float(m) for m in out.metrics]
    array, sent = _sent_parts(out.delta)
    arrays = {
        "delta": Array(array),
        "non_trainable": Array(np.ascontiguousarray(out.non_trainable, np.float32)),
    }
    # Further named vectors the client sends (SCAFFOLD's control delta); never its client_state.
    arrays.update({f"{_PART}{name}": Array(np.ascontiguousarray(value, np.float32))
                   for name, value in (out.parts or {}).items()})
    return {
        UPDATE: ArrayRecord(array_dict=arrays),
        SENT: ConfigRecord(sent),
        METRICS: MetricRecord(metrics),
    }


def output_from_reply(client_id: str, content: Any, num_metrics: int, size: int) -> ClientOutput | ClientFailure:
    """The :class:`ClientOutput` (or failure) in a node's training reply; a malformed reply is a failure.

    The output's ``delta`` is what the node's client step sent: its update
    (float32 of ``size``), or the DP-clipped update, or the masked vector.
    ``finite`` is computed here from the arrays and the loss, as the client
    update computes it: the node's own ``finite`` flag is not trusted (a node
    sending NaN with ``finite = 1`` is dropped from the round like any
    non-finite update, instead of breaking the aggregate).
    """
    if FAILURE in content:
        failure = content[FAILURE]
        return ClientFailure(client_id, str(failure.get("error", "the node reported a failure")))
    try:
        update, metrics = content[UPDATE], content[METRICS]
        array = update["delta"].numpy()
        sent = _sent_from_parts(array, content[SENT] if SENT in content else {}, size)
        non_trainable = update["non_trainable"].numpy()
        values = np.asarray(metrics.get("metrics", []), np.float64)
        if non_trainable.dtype != np.float32 or non_trainable.ndim != 1:
            raise ValueError(f"non-trainable values of {non_trainable.dtype} {non_trainable.shape}, expected float32")
        if values.shape != (num_metrics,):
            raise ValueError(f"{values.shape[0]} metric values, expected {num_metrics}")
        count, loss_sum = metrics["num-examples"], float(metrics["loss-sum"])
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise ValueError(f"num-examples {count!r}, expected a whole number >= 0")
        parts = {}
        for key in update.keys():
            if key.startswith(_PART):
                part = update[key].numpy()
                if part.dtype != np.float32 or part.shape != (size,):
                    raise ValueError(f"{key[len(_PART):]!r} of {part.dtype} {part.shape}, expected float32 ({size},)")
                parts[key[len(_PART):]] = part
        finite = bool(np.isfinite(array).all() and np.isfinite(non_trainable).all() and np.isfinite(loss_sum)
                      and all(np.isfinite(p).all() for p in parts.values()))
        return ClientOutput(client_id, sent, non_trainable, int(count), values, loss_sum, finite, parts or None)
    except (KeyError, ValueError, TypeError) as err:
        return ClientFailure(client_id, f"FedValueError: malformed reply from the node ({err})")


def evaluation_reply(metrics: np.ndarray, loss_sum: float, count: int) -> dict[str, Any]:
    """The records of a node's evaluation reply."""
    from flwr.app import MetricRecord

    record: dict[str, Any] = {"num-examples": int(count), "loss-sum": float(loss_sum)}
    if len(metrics):
        record["metrics"] = [float(m) for m in metrics]
    return {METRICS: MetricRecord(record)}


def evaluation_from_reply(content: Any) -> tuple[np.ndarray, float, int]:
    """``(metrics, loss_sum, num_examples)`` of an evaluation reply."""
    metrics = content[METRICS]
    return (
        np.asarray(metrics.get("metrics", []), np.float64), float(metrics["loss-sum"]), int(metrics["num-examples"]),
    )
