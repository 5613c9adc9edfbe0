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

from fedr.learning.client_update import ClientFailure, ClientOutput
from fedr.learning.state import ModelWeights

# Keys of the records in a message's RecordDict.
WEIGHTS = "arrays"  # ArrayRecord: the server's model
CONFIG = "config"  # ConfigRecord: the round's instructions
UPDATE = "update"  # ArrayRecord: a node's delta and float non-trainable values
METRICS = "metrics"  # MetricRecord: a node's counts and metrics
FAILURE = "failure"  # ConfigRecord: why a node could not do its part
DESCRIBE = "describe"  # ConfigRecord: a node's client id and example count

_T, _N = "trainable:", "non_trainable:"


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


def output_reply(out: ClientOutput | ClientFailure) -> dict[str, Any]:
    """The records of a node's training reply."""
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
    return {
        UPDATE: ArrayRecord(array_dict={
            "delta": Array(np.ascontiguousarray(out.delta, np.float32)),
            "non_trainable": Array(np.ascontiguousarray(out.non_trainable, np.float32)),
        }),
        METRICS: MetricRecord(metrics),
    }


def output_from_reply(client_id: str, content: Any, num_metrics: int, size: int) -> ClientOutput | ClientFailure:
    """The :class:`ClientOutput` (or failure) in a node's training reply; a malformed reply is a failure.

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
        delta = update["delta"].numpy()
        non_trainable = update["non_trainable"].numpy()
        values = np.asarray(metrics.get("metrics", []), np.float64)
        if delta.dtype != np.float32 or delta.shape != (size,):
            raise ValueError(f"update of {delta.dtype} {delta.shape}, expected float32 ({size},)")
        if non_trainable.dtype != np.float32 or non_trainable.ndim != 1:
            raise ValueError(f"non-trainable values of {non_trainable.dtype} {non_trainable.shape}, expected float32")
        if values.shape != (num_metrics,):
            raise ValueError(f"{values.shape[0]} metric values, expected {num_metrics}")
        count, loss_sum = metrics["num-examples"], float(metrics["loss-sum"])
        if isinstance(count, bool) or not isinstance(count, int | np.integer) or count < 0:
            raise ValueError(f"num-examples {count!r}, expected a whole number >= 0")
        finite = bool(np.isfinite(delta).all() and np.isfinite(non_trainable).all() and np.isfinite(loss_sum))
        return ClientOutput(client_id, delta, non_trainable, int(count), values, loss_sum, finite)
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
