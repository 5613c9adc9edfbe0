"""A node's side of a fedr federation: its data from the node config, and what it answers to each message.

A SuperNode is started with a node config that says where its data is
(``flower-supernode --node-config "data='/data/site_a.rds'"``); no Python code
of the node's owner is needed. The ClientApp rebuilds the model the server
describes (Keras configs, see :mod:`fedr.flower._messages`), trains it with
fedr's client update (:class:`fedr.learning.ClientUpdate`, the same as
in-process and on Ray), runs the aggregator's client step the server asks
for (DP's clipping, secure aggregation's masking: :func:`train_records`) and
replies with what that step returns, or with a failure that names what went
wrong. Secure aggregation's stages (:func:`stage_records`) keep the node's
keys in the ClientApp's ``Context.state`` between messages, on the node.
These functions run in the node's long-lived worker (:mod:`fedr.flower._worker`),
to which fedr's thin ClientApp (:mod:`fedr.flower.clientapp`) hands each
message, so the data read, the model built and traced and the aggregator
rebuilt here are kept between the messages of a run.

Node config keys:

``data``
    A path: an R ``.rds`` file (a matrix or data frame with a label column,
    or ``list(x =, y =)``, read by R through rpy2, see :mod:`fedr.rdata`), a
    ``.npz`` file with arrays ``x`` and ``y``, a ``.csv`` file with a header
    and a label column, or a folder of an MNIST-like dataset (IDX or ``.npz``
    files, see :func:`fedr.datasets.load_dataset`).
``client-id``
    The client's name in the federation, a text (default: the file's name
    without its extension). Names must differ between nodes; the server orders its
    clients by name.
``label``
    The label column of a CSV file, data frame or matrix (default ``label``).
``rows``
    ``"a:b"``: only rows a to b-1 of the data (e.g. one client's share of a dataset).
``dataset`` / ``split``
    For a folder: ``fashion_mnist`` (default) or ``kmnist``; ``train`` (default) or ``test``.
``batch-size``
    Rows per batch: a positive integer (default 100, the reference workflow's).
``eval-data``
    Optional held-out data for federated evaluation, in any of the same
    formats (default: the node evaluates on ``data``).
``worker-idle``
    Seconds the node's worker waits for a message before it stops (default 600).
``worker``
    ``"on"`` (default) or ``"off"``: run each message in the ClientApp's own
    process (it then imports TensorFlow for every message; for debugging).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from fedr.datasets import ClientData, prepare_images
from fedr.errors import FedTypeError, FedValueError
from fedr.flower import _messages as wire

__all__ = ["load_node_data"]

_LOCK = threading.Lock()
_DATA: dict[tuple[Any, ...], ClientData] = {}
_REPLICAS: dict[tuple[str, str, int, float], Any] = {}
_AGGREGATORS: dict[str, Any] = {}


def _rows(value: Any, n: int) -> slice:
    if value in (None, ""):
        return slice(0, n)
    try:
        a, b = (int(p) for p in str(value).split(":"))
    except ValueError:
        raise FedValueError(f"node config `rows`: expected 'a:b' (e.g. '0:6000'), got {value!r}") from None
    if not 0 <= a < b <= n:
        raise FedValueError(f"node config `rows`: {a}:{b} is outside the data's {n} rows")
    return slice(a, b)


def _read_csv(path: str, label: str) -> tuple[np.ndarray, np.ndarray]:
    import csv

    with open(path, newline="") as handle:
        header = next(csv.reader(handle), None)
    if not header:
        raise FedValueError(f"node data {path!r}: the CSV file is empty")
    header = [h.strip() for h in header]
    if label not in header:
        raise FedValueError(f"node data {path!r}: no label column {label!r} (columns: {', '.join(header)})")
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
    except ValueError as err:
        raise FedTypeError(f"node data {path!r}: every column must be numeric ({err})") from None
    if table.shape[1] != len(header):
        raise FedValueError(f"node data {path!r}: rows have {table.shape[1]} values but the header {len(header)}")
    j = header.index(label)
    return np.delete(table, j, axis=1).astype(np.float32), table[:, j]


def load_node_data(config: Mapping[str, Any], key: str = "data") -> ClientData:
    """The node's :class:`ClientData` described by its node config (see the module's doc for the keys).

    Raises:
        FedValueError: no ``data`` key, an unknown format, a bad ``rows`` or label column.
        FileNotFoundError: the path does not exist.
    """
    path = config.get(key)
    if not path:
        raise FedValueError(
            f"node config `{key}`: missing; start the node with --node-config \"{key}='/path/to/data.rds'\""
        )
    path = os.path.expanduser(str(path))
    if not os.path.exists(path):
        raise FileNotFoundError(f"node config `{key}`: no file or folder at {path!r}")
    label = str(config.get("label") or "label")
    batch_size = _batch_size(config.get("batch-size"))
    client_id = _client_id(config)
    cache_key = (path, os.path.getmtime(path), label, batch_size, client_id, str(config.get("rows") or ""),
                 str(config.get("dataset") or ""), str(config.get("split") or ""))
    with _LOCK:
        if cache_key in _DATA:
            return _DATA[cache_key]
    if os.path.isdir(path):
        from fedr.datasets import load_dataset

        dataset = load_dataset(str(config.get("dataset") or "fashion_mnist"), path)
        split = str(config.get("split") or "train")
        if split not in ("train", "test"):
            raise FedValueError(f"node config `split`: expected 'train' or 'test', got {split!r}")
        x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
    elif path.endswith(".rds"):
        from fedr import rdata

        client = rdata.read_rds(path, label=config.get("label") or None, batch_size=batch_size, client_id=client_id)
        if isinstance(client, list):
            raise FedValueError(
                f"node config `{key}`: {path!r} holds a list of {len(client)} clients; a node serves one "
                "client's data (save one matrix, data frame or list(x =, y =) per node)"
            )
        x, y = client.x, client.y
    elif path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as arrays:
            if "x" not in arrays or "y" not in arrays:
                raise FedValueError(f"node data {path!r}: expected arrays 'x' and 'y', found {sorted(arrays)}")
            x, y = arrays["x"], arrays["y"]
    elif path.endswith(".csv"):
        x, y = _read_csv(path, label)
    else:
        raise FedValueError(
            f"node config `{key}`: {path!r} is not a folder, .rds, .npz or .csv file"
        )
    rows = _rows(config.get("rows"), len(x))
    x = np.asarray(x)[rows]
    if np.issubdtype(x.dtype, np.integer) and x.ndim >= 3:
        # Images: uint8 pixels divided by 255 in the training graph, as make_clients keeps them.
        prepare_images(x[:0])
        client = ClientData(x.reshape(len(x), -1), np.asarray(y)[rows], batch_size=batch_size,
                            client_id=client_id, scale=255.0)
    else:
        client = ClientData(np.ascontiguousarray(x, np.float32), np.asarray(y)[rows], batch_size=batch_size,
                            client_id=client_id)
    with _LOCK:
        _DATA[cache_key] = client
    return client


def _replica(config: Any, *, train: bool) -> Any:
    """The node's compiled model for the server's spec (built once per spec, optimizer, epochs and mu).

    A train message's config says how to train: the optimizer's Keras config,
    ``local-epochs`` and FedProx's ``proximal-mu`` (missing: 0, FedAvg).

    Raises:
        FedValueError: ``proximal-mu`` is not a finite number >= 0.
    """
    import json

    import keras

    from fedr.learning.client_update import ClientUpdate, check_proximal_mu
    from fedr.learning.model import ModelSpec

    model_json = str(config["model"])
    optimizer_json = str(config.get("optimizer", "")) if train else ""
    epochs = int(config.get("local-epochs", 1)) if train else 1
    mu = check_proximal_mu(config.get("proximal-mu", 0.0)) if train else 0.0
    cv = bool(config.get("scaffold", False)) if train else False
    key = (model_json, optimizer_json, epochs, mu, cv)
    with _LOCK:
        replica = _REPLICAS.get(key)
    if replica is None:
        spec = json.loads(model_json)
        model = ModelSpec(spec["model"], spec["loss"], tuple(spec["metrics"]), tuple(spec["feature_shape"])).build()
        optimizer = keras.saving.deserialize_keras_object(json.loads(optimizer_json)) if train else None
        replica = ClientUpdate(model, optimizer, local_epochs=epochs, proximal_mu=mu, control_variates=cv)
        with _LOCK:
            _REPLICAS[key] = replica
    return replica


def _batch_size(value: Any) -> int:
    """``batch-size`` of the node config: a positive whole number (an integer or its digits), default 100."""
    if value is None or value == "":
        return 100
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FedValueError(f"node config `batch-size`: expected a positive integer, got {value!r}")
    return value


def _client_id(config: Mapping[str, Any]) -> str:
    """The node's client id: ``client-id`` (a text), else the name of its ``data`` without the extension.

    Raises:
        FedTypeError: ``client-id`` is not a text (e.g. a TOML list).
    """
    value = config.get("client-id")
    if value is not None and value != "":
        if not isinstance(value, str):
            raise FedTypeError(
                f"node config `client-id`: expected a text (--node-config \"client-id='site_a'\"), "
                f"got {type(value).__name__} {value!r}"
            )
        return value
    path = str(config.get("data") or "node")
    return os.path.splitext(os.path.basename(path.rstrip(os.sep)))[0]


def _reported_id(config: Mapping[str, Any]) -> str:
    """The client id to name in a failure reply: :func:`_client_id`, or its text when that is malformed."""
    try:
        return _client_id(config)
    except FedTypeError:
        return str(config.get("client-id"))[:100]


def describe_records(node_config: Mapping[str, Any]) -> dict[str, Any]:
    """The node's client id and number of examples (the server's first question to a new node)."""
    from flwr.app import ConfigRecord

    from fedr.protocol import describe_error

    try:
        client = load_node_data(node_config)
        return {wire.DESCRIBE: ConfigRecord({"client-id": client.client_id, "num-examples": int(client.y.shape[0])})}
    except Exception as err:  # noqa: BLE001 - reported to the server, naming the node's data
        return {wire.FAILURE: ConfigRecord({"client-id": _reported_id(node_config), "error": describe_error(err)})}


def _aggregator(text: str) -> Any:
    """The aggregator the server describes (JSON of a built-in one), rebuilt once per description."""
    import json
    import warnings

    from fedr.learning import aggregator_from_data

    with _LOCK:
        found = _AGGREGATORS.get(text)
    if found is None:
        with warnings.catch_warnings():  # its builder's warnings were the server's to give
            warnings.simplefilter("ignore")
            found = aggregator_from_data(json.loads(text), "the server's aggregator")
        with _LOCK:
            _AGGREGATORS[text] = found
    return found


# The node's round state of a protocol with stages (secure aggregation): in the
# ClientApp's Context.state, which the SuperNode keeps on this machine between
# the messages of a run (each message runs in a fresh ClientApp process, which
# hands it to the node's worker with this state and keeps what comes back). It
# holds the client's secrets; they never go into a reply.
SESSION = "fedr-session"
# The client's own state between the rounds of a run (SCAFFOLD's c_i), in the
# same Context.state on the node: it never goes into a reply.
CLIENT_STATE = "fedr-client-state"


def _stage_order(aggregator: Any) -> tuple[str, ...]:
    return (*aggregator.stages_before, "train", *aggregator.stages_after)


def _session(state: Any, aggregator: Any, stage: str, round_num: int) -> Any:
    """The node's session for ``stage`` of round ``round_num``; FedValueError for a stage it does not expect next."""
    from fedr.flower import _codec
    from fedr.privacy import SecAggClient

    if stage == _stage_order(aggregator)[0]:
        _forget(state)  # a round's first stage starts a new session
        return None
    record = state[SESSION] if state is not None and SESSION in state else None
    expected = (int(record["round"]), str(record["next"])) if record is not None else None
    if expected != (round_num, stage):
        what = f"'{expected[1]}' of round {expected[0]}" if expected else "no stage (it has no session)"
        raise FedValueError(
            f"stage: the server sent stage '{stage}' of round {round_num} but this node expected {what}; "
            "the node refuses stages out of order"
        )
    return SecAggClient.restore(_codec.from_text(record["session"]))


def _keep(state: Any, aggregator: Any, stage: str, round_num: int, session: Any) -> None:
    """Store ``session`` with the stage that must come next (or forget it after the last stage)."""
    from flwr.app import ConfigRecord

    from fedr.flower import _codec

    order = _stage_order(aggregator)
    position = order.index(stage)
    if position + 1 == len(order) or session is None:
        _forget(state)  # the round is over for this node: its secrets go
        return
    state[SESSION] = ConfigRecord({"round": int(round_num), "next": order[position + 1],
                                   "session": _codec.to_text(session.export())})


def _client_state(state: Any) -> dict[str, np.ndarray] | None:
    """The client's own state kept on this node (None: the client's first round of the run)."""
    if state is None or CLIENT_STATE not in state:
        return None
    return {key: array.numpy() for key, array in state[CLIENT_STATE].items()}


def _keep_client_state(state: Any, values: Mapping[str, np.ndarray]) -> None:
    from flwr.app import Array, ArrayRecord

    if state is None:
        raise FedValueError("SCAFFOLD: this node has no Context.state to keep its client's control variate in")
    state[CLIENT_STATE] = ArrayRecord(array_dict={k: Array(np.ascontiguousarray(v)) for k, v in values.items()})


def _forget(state: Any) -> None:
    if state is not None and SESSION in state:
        del state[SESSION]


def _released(out: Any, aggregator: Any) -> Any:
    """``out`` with only what its aggregation reads: DP's norm never, its clip bit only for adaptive clipping."""
    from fedr.privacy import ClippedUpdate

    sent = getattr(out, "delta", None)
    if isinstance(sent, ClippedUpdate):
        bit = sent.unclipped if getattr(aggregator, "adaptive", False) else None
        return out._replace(delta=sent._replace(norm=float("nan"), unclipped=bit))
    return out


def train_records(content: Mapping[str, Any], node_config: Mapping[str, Any], state: Any = None) -> dict[str, Any]:
    """Train the server's model (``content``: weights and config) on the node's data; the reply's records.

    When the server sends its aggregator and this client's view (every
    aggregator with a client step, unless the run trusts the server), the
    node runs that step after training (DP's clipping, secure aggregation's
    masking with the session kept in ``state``, the ClientApp's
    ``Context.state``) and replies with only what it returns.
    """
    from fedr.flower import _codec
    from fedr.learning.client_task import apply_client_step, train_client
    from fedr.learning.state import check_weights
    from fedr.protocol import ClientFailure, describe_error

    client_id = _reported_id(node_config)
    try:
        client = load_node_data(node_config)
        client_id = client.client_id
        config = content[wire.CONFIG]
        aggregator = _aggregator(str(config["aggregator"])) if "aggregator" in config else None
        session = None
        if aggregator is not None and aggregator.stages_before:
            session = _session(state, aggregator, "train", int(config["fedr-round"]))
        replica = _replica(config, train=True)
        weights = wire.weights_from_record(content[wire.WEIGHTS])
        check_weights(replica.weights(), weights)
        replica.check(client)
        replica.prepare(client, train=True)
        words = config.get("seed-words")
        seed = np.asarray(words, np.uint32) if words else None
        flat = weights.flat_trainable()
        control = own = None
        if replica.control_variates:
            control = wire.control_from_record(content[wire.CONTROL], flat.size)
            own = _client_state(state)
        out = train_client(replica, weights, flat, client, seed, control, own)
        if out.client_state is not None:
            _keep_client_state(state, out.client_state)
            out = out._replace(client_state=None)
        if aggregator is not None:
            out = _released(apply_client_step(out, aggregator, _codec.from_text(config["view"]), session), aggregator)
            if aggregator.stages_before:
                _keep(state, aggregator, "train", int(config["fedr-round"]), session)
    except Exception as err:  # noqa: BLE001 - the client's failure, reported to the server
        _forget(state)
        out = ClientFailure(client_id, describe_error(err))
    return wire.output_reply(out)


def stage_records(content: Mapping[str, Any], node_config: Mapping[str, Any], state: Any) -> dict[str, Any]:
    """The node's side of a protocol stage (``content[STAGE]``: its name, round, payload, aggregator); the reply.

    The stage must be the one this node expects next in that round (the
    first stage of a round starts afresh); the client's secrets stay in
    ``state`` (the ClientApp's ``Context.state``) and only the public reply
    leaves.
    """
    from flwr.app import ConfigRecord

    from fedr.flower import _codec
    from fedr.protocol import describe_error

    try:
        record = content[wire.STAGE]
        stage, round_num = str(record["stage"]), int(record["round"])
        aggregator = _aggregator(str(record["aggregator"]))
        if stage not in _stage_order(aggregator) or stage == "train":
            raise FedValueError(f"stage: {aggregator!r} has no stage {stage[:40]!r}")
        session = _session(state, aggregator, stage, round_num)
        session, reply = aggregator.client_stage(stage, _codec.from_text(record["payload"]), session)
        _keep(state, aggregator, stage, round_num, session)
        return {wire.STAGE: ConfigRecord({"stage": stage, "round": round_num, "reply": _codec.to_text(reply)})}
    except Exception as err:  # noqa: BLE001 - reported to the server: this client drops out of the round
        _forget(state)
        return {wire.FAILURE: ConfigRecord({"client-id": _reported_id(node_config), "error": describe_error(err)})}


def evaluate_records(content: Mapping[str, Any], node_config: Mapping[str, Any]) -> dict[str, Any]:
    """Evaluate the server's model on the node's ``eval-data`` (or its training data); the reply's records."""
    from flwr.app import ConfigRecord

    from fedr.protocol import describe_error
    from fedr.learning.state import check_weights

    try:
        key = "eval-data" if node_config.get("eval-data") else "data"
        client = load_node_data(node_config, key)
        replica = _replica(content[wire.CONFIG], train=False)
        weights = wire.weights_from_record(content[wire.WEIGHTS])
        check_weights(replica.weights(), weights)
        replica.check(client)
        replica.prepare(client, train=False)
        metrics, loss_sum, count = replica.evaluate(weights, weights.flat_trainable(), client)
        return wire.evaluation_reply(metrics, loss_sum, count)
    except Exception as err:  # noqa: BLE001
        return {wire.FAILURE: ConfigRecord({"client-id": _reported_id(node_config), "error": describe_error(err)})}
