"""The server's side: a Flower ``Strategy`` that runs a fedr process over the SuperLink's nodes.

Each connected node is one client. ``configure_train`` starts a round of the
fedr process (:meth:`FedAvgProcess.begin_round`: the aggregator may refuse it,
each client gets its seed words) and sends every selected node the model's
weights; ``aggregate_train`` turns the replies into client outputs (a node
that failed, died or did not answer in time becomes a named failure), applies
the aggregator's client step (clipping under differential privacy) and
finishes the round with the process (:meth:`FedAvgProcess.finish_round`: the
same aggregation and server update as in-process). The whole
:class:`~fedr.learning.ServerState` lives here, not only the weights, and is
checkpointed after every round with :func:`fedr.learning.save_state`.

Nodes are not trusted for what they report: the server recomputes whether
an update is finite from its arrays, and a node that reports more examples
than it declared at its first contact (the query that asks its client id)
is a failed client of that round, named. Which nodes may connect at all is
the SuperLink's affair (TLS, and ``--enable-supernode-auth``; see the README).

A round with fewer usable updates than ``min_clients`` is reported (logged
and in the history) and leaves the state as it was; the run goes on to the
next round. An aggregator that refuses a round (a privacy budget spent) ends
the run, keeping the last good state.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterable
from logging import ERROR, INFO, WARNING
from typing import Any

import numpy as np

from fedr.errors import FedError, FedTypeError, FedValueError, FedWarning
from fedr.flower import _messages as wire
from fedr.learning.client_update import ClientFailure, apply_client_step
from fedr.learning.process import FedAvgProcess, combine_metrics, sample_clients
from fedr.learning.state import ServerState, save_state

__all__ = ["FedrStrategy", "check_examples", "check_flower_aggregator", "check_flower_run"]

try:  # Flower is optional for fedr as a whole; this module needs it.
    from flwr.serverapp.strategy import Strategy as _Strategy
except ImportError:  # pragma: no cover - reported by fedr.flower's __init__
    _Strategy = object  # type: ignore[assignment,misc]


def _log(level: int, text: str, *args: Any) -> None:
    from flwr.supercore import log

    log(level, text, *args)


def check_flower_aggregator(aggregator: Any) -> None:
    """Raise FedValueError for aggregators a Flower federation cannot run yet (secure aggregation)."""
    from fedr.privacy._secagg import _Secure

    inner = getattr(aggregator, "inner", None)
    if isinstance(aggregator, _Secure) or isinstance(inner, _Secure):
        raise FedValueError(
            f"aggregator {aggregator!r}: secure aggregation needs extra rounds of messages between the "
            "nodes (key agreement, shares) that fedr's Flower app does not run yet; use it in-process or "
            "on Ray, or use mean, median, trimmed_mean, krum or differential privacy on Flower"
        )


def check_flower_run(process: Any, min_nodes: Any, fraction: Any) -> None:
    """Raise, naming the argument, for what a Flower run of ``process`` cannot take (checked before it starts)."""
    if not isinstance(process, FedAvgProcess):
        raise FedTypeError(f"process: expected a fedr FedAvgProcess, got {type(process).__name__}")
    check_flower_aggregator(process.aggregator)
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


def _natural(client_id: str) -> list[Any]:
    """Sort key: 'client_2' before 'client_10'."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", client_id)]


class FedrStrategy(_Strategy):
    """A Flower strategy that runs a :class:`~fedr.learning.FedAvgProcess` with the SuperLink's nodes as clients.

    Args:
        process: The fedr process (model, optimizers, aggregator, seed,
            ``min_clients``). Its model must be serialisable
            (:meth:`FedAvgProcess.to_spec`): nodes rebuild it from Keras configs.
        state: The state to start from (default ``process.initialize()``),
            e.g. a checkpoint read with :func:`fedr.learning.load_state`.
        min_nodes: Nodes that must be connected before a round starts.
        fraction: Share of the connected nodes selected per round, drawn from
            (seed, round) as :func:`fedr.learning.sample_clients` does.
        evaluate: Also evaluate each round's model on the nodes (their
            ``eval-data``, else their training data); adds ``eval_*`` columns.
        out_dir: Folder for ``state.npz`` (the last good state, written after
            every round) and ``history.csv``; None keeps them in memory only.
        wait_timeout: Seconds to wait for ``min_nodes`` nodes before failing.

    Attributes:
        state: The current :class:`~fedr.learning.ServerState`.
        history: One dict per round: ``round``, the metrics, ``clients``,
            ``seconds`` and ``events`` (failed or dropped clients, a failed round).
    """

    def __init__(
        self,
        process: FedAvgProcess,
        state: ServerState | None = None,
        *,
        min_nodes: int = 2,
        fraction: float = 1.0,
        evaluate: bool = False,
        out_dir: str | os.PathLike[str] | None = None,
        wait_timeout: float = 300.0,
    ) -> None:
        check_flower_run(process, min_nodes, fraction)
        self.process = process
        self.state = process.check_state(state) if state is not None else process.initialize()
        self.min_nodes = int(min_nodes)
        self.fraction = float(fraction)
        self.evaluate = bool(evaluate)
        self.out_dir = os.fspath(out_dir) if out_dir else None
        if self.out_dir:
            os.makedirs(self.out_dir, exist_ok=True)
        self.wait_timeout = float(wait_timeout)
        spec = process.to_spec()  # raises, naming what cannot travel to the nodes
        self._model_json = wire.to_json({
            "model": spec.model.model, "loss": spec.model.loss, "metrics": list(spec.model.metrics),
            "feature_shape": list(spec.model.feature_shape),
        })
        self._optimizer_json = wire.to_json(spec.client_optimizer)
        self._clients: dict[int, str] = {}
        self._declared: dict[int, int] = {}  # examples each node declared at its first contact
        self._round: tuple[Any, list[tuple[str, int]]] | None = None
        self._eval_pairs: list[tuple[str, int]] = []
        self._started = 0.0
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ nodes

    def summary(self) -> None:
        """Log the strategy's configuration."""
        _log(INFO, "\t├──> fedr process: %r", self.process)
        _log(INFO, "\t├──> min_nodes %d, fraction %.2f, evaluate %s", self.min_nodes, self.fraction, self.evaluate)
        _log(INFO, "\t└──> checkpoints: %s", self.out_dir or "(none)")

    def _nodes(self, grid: Any) -> list[tuple[str, int]]:
        """The connected nodes as (client id, node id), ordered by client id; asks new nodes who they are."""
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        deadline = time.monotonic() + self.wait_timeout
        while len(node_ids := sorted(grid.get_node_ids())) < self.min_nodes:
            if time.monotonic() > deadline:
                raise FedError(
                    f"only {len(node_ids)} node(s) connected after {self.wait_timeout:g} s, fewer than "
                    f"min_nodes = {self.min_nodes}; start more SuperNodes (flower-supernode) or lower min_nodes"
                )
            time.sleep(0.5)
        new = [n for n in node_ids if n not in self._clients]
        if new:
            messages = [
                Message(RecordDict({wire.CONFIG: ConfigRecord({"action": "describe"})}),
                        dst_node_id=n, message_type=MessageType.QUERY)
                for n in new
            ]
            for reply in grid.send_and_receive(messages, timeout=self.wait_timeout):
                node = reply.metadata.src_node_id
                if reply.has_error():
                    _log(WARNING, "node %d left out: %s", node, reply.error.reason)
                    continue
                if wire.FAILURE in reply.content:
                    failure = reply.content[wire.FAILURE]
                    _log(WARNING, "node %d (%s) left out: it cannot serve its data: %s",
                         node, failure.get("client-id"), failure.get("error"))
                    continue
                info = reply.content[wire.DESCRIBE]
                client_id, declared = info.get("client-id"), info.get("num-examples")
                if not isinstance(client_id, str) or not client_id or isinstance(declared, bool) \
                        or not isinstance(declared, int | np.integer) or declared < 0:
                    _log(WARNING, "node %d left out: it described itself as client %r with %r examples; "
                         "expected a client id (text) and a whole number of examples", node, client_id, declared)
                    continue
                clash = [n for n, c in self._clients.items() if c == client_id and n in node_ids]
                if clash:
                    _log(WARNING, "node %d left out: its client id %r is already node %d's; give each node "
                         "its own --node-config client-id", node, client_id, clash[0])
                    continue
                self._clients[node] = client_id
                self._declared[node] = int(declared)
                _log(INFO, "node %d serves client %r (%d examples)", node, client_id, int(declared))
        pairs = [(self._clients[n], n) for n in node_ids if n in self._clients]
        if len(pairs) < self.min_nodes:
            raise FedError(
                f"only {len(pairs)} node(s) can serve data, fewer than min_nodes = {self.min_nodes} "
                "(see the warnings above for the nodes left out)"
            )
        return sorted(pairs, key=lambda p: _natural(p[0]))

    def _config(self, server_round: int, *, train: bool) -> dict[str, Any]:
        config: dict[str, Any] = {"server-round": int(server_round), "model": self._model_json}
        if train:
            config["optimizer"] = self._optimizer_json
            config["local-epochs"] = int(self.process.local_epochs)
        return config

    # ------------------------------------------------------------------ train

    def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Iterable[Any]:
        """Start a fedr round over the selected nodes: one message per node with the weights and its seed words."""
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        pairs = self._nodes(grid)
        if self.fraction < 1:
            pairs = sample_clients(pairs, self.fraction, seed=self.process.seed, round_num=self.state.round_num + 1)
        plan = self.process.begin_round(self.state, [cid for cid, _ in pairs])
        self._round = (plan, pairs)
        self._started = time.monotonic()
        weights = wire.weights_record(self.state.model)
        messages = []
        for (_, node), seed in zip(pairs, plan.seeds, strict=True):
            cfg = self._config(server_round, train=True)
            words = self.process.seed_words(seed)
            if len(words):
                cfg["seed-words"] = [int(w) for w in words]
            content = RecordDict({wire.WEIGHTS: weights, wire.CONFIG: ConfigRecord(cfg)})
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        _log(INFO, "round %d: training on %d node(s): %s", plan.round_num, len(pairs),
             ", ".join(cid for cid, _ in pairs))
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> tuple[Any, Any]:
        """Finish the fedr round from the nodes' replies; a missing or failed node is a named failure."""
        from flwr.app import MetricRecord

        if self._round is None:
            raise FedError("aggregate_train: no round was configured")
        plan, pairs = self._round
        self._round = None
        by_node = {m.metadata.src_node_id: m for m in replies}
        size = plan.state.flat_weights.size
        n_metrics = len(self.process.metric_names)
        results = []
        for (client_id, node) in pairs:
            reply = by_node.get(node)
            if reply is None:
                results.append(ClientFailure(
                    client_id, f"NodeLost: no reply from node {node} within the round's timeout"
                ))
            elif reply.has_error():
                results.append(ClientFailure(client_id, f"NodeError: {reply.error.reason}"))
            else:
                out = check_examples(wire.output_from_reply(client_id, reply.content, n_metrics, size),
                                     node, self._declared.get(node))
                if not isinstance(out, ClientFailure):
                    out = apply_client_step(out, self.process.aggregator, plan.state.aggregator_state, plan.context)
                results.append(out)
        row: dict[str, Any] = {"round": plan.round_num}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FedWarning)
            try:
                output = self.process.finish_round(plan, results)
            except FedError as err:
                output = None
                row["events"] = f"failed: {err}"
                _log(ERROR, "round %d failed, the state stays at round %d: %s",
                     plan.round_num, plan.state.round_num, err)
        events = [str(w.message) for w in caught if issubclass(w.category, FedWarning)]
        for text in events:
            _log(WARNING, "%s", text)
        if events:
            row["events"] = "; ".join(filter(None, [row.get("events"), *events]))
        row["clients"] = ";".join(cid for cid, _ in pairs)
        row["seconds"] = time.monotonic() - self._started
        if output is None:
            row["round_failed"] = 1
            self._record(row)
            return None, None
        self.state = output.state
        row["round_failed"] = 0
        row.update(output.metrics)
        self._record(row)
        numbers = {k: v for k, v in output.metrics.items() if isinstance(v, int | float) and np.isfinite(v)}
        return wire.weights_record(self.state.model), MetricRecord(numbers)

    # --------------------------------------------------------------- evaluate

    def configure_evaluate(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Iterable[Any]:
        """Ask every connected node to evaluate the current model (when ``evaluate`` is on)."""
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        if not self.evaluate:
            return []
        pairs = self._nodes(grid)
        self._eval_pairs = pairs
        content = RecordDict({
            wire.WEIGHTS: wire.weights_record(self.state.model),
            wire.CONFIG: ConfigRecord(self._config(server_round, train=False)),
        })
        return [Message(content, dst_node_id=node, message_type=MessageType.EVALUATE) for _, node in pairs]

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Any]) -> Any:
        """Example-weighted evaluation metrics over the nodes that answered (``eval_`` columns of the history)."""
        from flwr.app import MetricRecord

        per_client, lost = [], []
        names = {node: cid for cid, node in self._eval_pairs} if self.evaluate else {}
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error() or wire.FAILURE in reply.content:
                lost.append(names.get(node, str(node)))
                continue
            per_client.append(wire.evaluation_from_reply(reply.content))
        if not per_client:
            return None
        metrics = combine_metrics(self.process.metric_names, per_client)
        metrics["num_clients_failed"] = len(lost)
        evaluated = {f"eval_{k}": v for k, v in metrics.items()}
        if self.history:
            self.history[-1].update(evaluated)
            self._write_history()
        return MetricRecord({k: v for k, v in evaluated.items() if isinstance(v, int | float)})

    # --------------------------------------------------------------- records

    def _record(self, row: dict[str, Any]) -> None:
        self.history.append(row)
        if self.out_dir and not row.get("round_failed"):
            save_state(self.state, os.path.join(self.out_dir, "state.npz"))
        self._write_history()

    def _write_history(self) -> None:
        if not self.out_dir:
            return
        columns: list[str] = []
        for row in self.history:
            columns += [k for k in row if k not in columns]
        fd, tmp = tempfile.mkstemp(dir=self.out_dir, prefix=".history.", suffix=".csv")
        with os.fdopen(fd, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(tmp, os.path.join(self.out_dir, "history.csv"))

    def start(
        self,
        grid: Any,
        initial_arrays: Any = None,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: Any = None,
        evaluate_config: Any = None,
        evaluate_fn: Any = None,
    ) -> Any:
        """Run ``num_rounds`` rounds (Flower's loop, with fedr's state); returns Flower's ``Result``.

        ``timeout`` is each round's limit in seconds: nodes that have not
        answered by then are left out of the round and named.
        """
        from flwr.app import ConfigRecord
        from flwr.serverapp.strategy import Result

        result = Result()
        result.arrays = wire.weights_record(self.state.model)
        _log(INFO, "fedr on Flower: %d round(s) from round %d", num_rounds, self.state.round_num)
        self.summary()
        if self.out_dir:  # the starting state is the last good state until a round succeeds
            save_state(self.state, os.path.join(self.out_dir, "state.npz"))
        for server_round in range(1, int(num_rounds) + 1):
            try:
                messages = self.configure_train(server_round, result.arrays, train_config or ConfigRecord(), grid)
            except FedError as err:
                _log(ERROR, "the run stops before round %d: %s", self.state.round_num + 1, err)
                self.history.append({"round": self.state.round_num + 1, "round_failed": 1, "events": f"refused: {err}"})
                self._write_history()
                break
            replies = grid.send_and_receive(messages, timeout=timeout)
            arrays, metrics = self.aggregate_train(server_round, replies)
            if arrays is not None:
                result.arrays = arrays
                result.train_metrics_clientapp[server_round] = metrics
                row = self.history[-1]
                shown = [f"{k} {v:.4f}" for k, v in row.items()
                         if k not in ("round", "seconds", "round_failed") and not k.startswith("num_")
                         and isinstance(v, float)]
                _log(INFO, "round %d: %s; %d client(s), %.1f s", self.state.round_num, ", ".join(shown),
                     int(row.get("num_clients", 0)), float(row.get("seconds", 0.0)))
            if self.evaluate:
                replies = grid.send_and_receive(
                    self.configure_evaluate(server_round, result.arrays, evaluate_config or ConfigRecord(), grid),
                    timeout=timeout,
                )
                evaluated = self.aggregate_evaluate(server_round, replies)
                if evaluated is not None:
                    result.evaluate_metrics_clientapp[server_round] = evaluated
        return result
