"""The server's side: a Flower ``Strategy`` that runs a fedr process over the SuperLink's nodes.

Each connected node is one client. ``configure_train`` starts a round of the
fedr process (:meth:`FedAvgProcess.begin_round`: the aggregator may refuse it,
each client gets its seed words), carries the aggregator's message stages
before training (secure aggregation's ``advertise`` and ``share``, one
message round each, :mod:`fedr.flower._carrier`) and sends every selected
node the model's weights with the aggregator and the node's *view* of the
round (DP: the clip), so that the node runs the aggregator's client step
(clip, mask) itself; ``aggregate_train`` turns the replies into client
outputs (a node that failed, died or did not answer in time becomes a named
failure), checks that each is what the client step makes (under DP, within
the clip) and finishes the round with the process
(:meth:`FedAvgProcess.finish_round`: the stages after training, then the
same aggregation and server update as in-process). With
``trusted_server=True`` the nodes send raw updates and the server runs the
client step, which every round's events say. The whole
:class:`~fedr.learning.ServerState` lives here, not only the weights, and is
checkpointed after every round with :func:`fedr.learning.save_state`.

Nodes are not trusted for what they report: the server recomputes whether
an update is finite from its arrays, and a node that reports more examples
than it declared at its first contact (the query that asks its client id)
is a failed client of that round, named. Which nodes may connect at all is
the SuperLink's affair (TLS, and ``--enable-supernode-auth``; see the README).

A round with fewer usable updates than ``min_clients`` (or too few nodes
through secure aggregation's stages) is reported (logged and in the
history) and leaves the state as it was; the run goes on to the next round.
An aggregator that refuses a round (a privacy budget spent) ends the run,
keeping the last good state.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from logging import ERROR, INFO, WARNING
from typing import Any

import numpy as np

from fedr.errors import FedError, FedWarning
from fedr.flower import _codec
from fedr.flower import _messages as wire
from fedr.flower._carrier import FlowerCarrier, exchange
from fedr.flower._checks import (
    check_examples,
    check_flower_aggregator,
    check_flower_run,
    check_sent,
    client_aggregator_json,
    expected_kind,
    has_client_step,
)
from fedr.learning.process import FedAvgProcess, combine_metrics, sample_clients
from fedr.learning.state import ServerState, save_state
from fedr.protocol import ClientFailure

__all__ = ["TRUSTED_SERVER_EVENT", "FedrStrategy", "check_examples", "check_flower_aggregator", "check_flower_run"]

#: The history's event of every round run with ``trusted_server=True`` (an aggregator with a client step).
TRUSTED_SERVER_EVENT = (
    "trusted server: the nodes sent their raw updates and the server ran the aggregator's client step "
    "(clipping) on them"
)

try:  # Flower is optional for fedr as a whole; this module needs it.
    from flwr.serverapp.strategy import Strategy as _Strategy
except ImportError:  # pragma: no cover - reported by fedr.flower's __init__
    _Strategy = object  # type: ignore[assignment,misc]


def _log(level: int, text: str, *args: Any) -> None:
    from flwr.supercore import log

    log(level, text, *args)


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
        trusted_server: False (default): the aggregator's client step runs on
            the nodes (differential privacy's clipping, secure aggregation's
            masking) and the server receives only what it returns (the
            clipped update, adaptive clipping's bit; a masked vector). True:
            the nodes send their raw updates and the server clips them
            (central DP with a trusted server: whoever runs or breaks into
            the server sees every node's update). Same numbers either way;
            every round of a trusted run says so in its ``events``. Secure
            aggregation refuses it.

    Attributes:
        state: The current :class:`~fedr.learning.ServerState`.
        history: One dict per round: ``round``, the metrics, ``clients``,
            ``seconds`` and ``events`` (failed or dropped clients, a failed
            round, a trusted server).
        on_receive: For tests and audits: None, or a function called as
            ``on_receive(client_id, sent)`` with every update the server
            receives from a node, as received (before any step of the
            server): an array, a :class:`~fedr.privacy.ClippedUpdate` or a
            :class:`~fedr.privacy.MaskedInput`.
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
        trusted_server: bool = False,
    ) -> None:
        check_flower_run(process, min_nodes, fraction, trusted_server)
        self.trusted_server = trusted_server
        self._client_json = None if trusted_server else client_aggregator_json(process.aggregator)
        self._kind = "array" if trusted_server else expected_kind(process.aggregator)
        self.on_receive: Callable[[str, Any], None] | None = None
        self._timeout = 600.0  # each stage's and round's limit, from start(timeout=)
        self._refused: FedError | None = None
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
        self._round: tuple[Any, list[tuple[str, int]], FlowerCarrier, dict[int, Any], list[Any]] | None = None
        self._eval_pairs: list[tuple[str, int]] = []
        self._started = 0.0
        self._last_round = 0  # start()'s last round: its last message to a node tells the node's worker to stop
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ nodes

    def summary(self) -> None:
        """Log the strategy's configuration."""
        _log(INFO, "\t├──> fedr process: %r", self.process)
        _log(INFO, "\t├──> min_nodes %d, fraction %.2f, evaluate %s", self.min_nodes, self.fraction, self.evaluate)
        _log(INFO, "\t├──> client step: %s", "on the server (trusted_server)" if self.trusted_server else "on the nodes")
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
            for reply in exchange(grid, messages, self.wait_timeout):
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
        """The config of a round's messages to the nodes: the model and, to train, how to train it.

        A train message carries the client optimizer (its Keras config as
        JSON), ``local-epochs`` and, for FedProx, ``proximal-mu`` (left out
        when it is 0, FedAvg, so a node of a fedr without FedProx still serves
        a FedAvg run).
        """
        config: dict[str, Any] = {"server-round": int(server_round), "model": self._model_json}
        if train:
            config["optimizer"] = self._optimizer_json
            config["local-epochs"] = int(self.process.local_epochs)
            mu = float(self.process.proximal_mu)
            if mu:
                config["proximal-mu"] = mu
            if self.process.scaffold:
                config["scaffold"] = True  # SCAFFOLD's local step; the message carries c (wire.CONTROL)
        return config

    # ------------------------------------------------------------------ train

    def configure_train(self, server_round: int, arrays: Any, config: Any, grid: Any) -> Iterable[Any]:
        """Start a fedr round over the selected nodes: its stages before training, then one message per node.

        Each train message holds the weights, the client's seed words and,
        unless the server is trusted, the aggregator and this client's view
        (e.g. DP's clip), for the node to run the client step itself.
        """
        from flwr.app import ConfigRecord, Message, MessageType, RecordDict

        pairs = self._nodes(grid)
        if self.fraction < 1:
            pairs = sample_clients(pairs, self.fraction, seed=self.process.seed, round_num=self.state.round_num + 1)
        plan = self.process.begin_round(self.state, [cid for cid, _ in pairs])
        self._started = time.monotonic()
        aggregator = self.process.aggregator
        last = server_round == self._last_round  # the nodes' last message of the run is marked (FINAL)
        final_stage = aggregator.stages_after[-1] if last and not self.evaluate and aggregator.stages_after else None
        carrier = FlowerCarrier(grid, [node for _, node in pairs], self._client_json or "", plan.round_num,
                                self._timeout, final_stage=final_stage)
        if aggregator.stages_before:
            _log(INFO, "round %d: stages %s with %d node(s)", plan.round_num, ", ".join(aggregator.stages_before),
                 len(pairs))
        # A refusal here (too few nodes shared keys) is a failed round, as when too few updates arrive.
        self._round = (plan, pairs, carrier, {}, [])
        try:
            lost = self.process.run_stages(plan, aggregator.stages_before, carrier)
            views = self.process.client_views(plan)
        except FedError as err:
            self._refused = err
            return []
        self._refused = None
        self._round = (plan, pairs, carrier, lost, views)
        weights = wire.weights_record(self.state.model)
        control = wire.control_record(dict(self.state.client_work)["scaffold/control"]) if self.process.scaffold \
            else None
        messages = []
        for i, ((_, node), seed) in enumerate(zip(pairs, plan.seeds, strict=True)):
            if i in lost:
                continue
            cfg = self._config(server_round, train=True)
            cfg["fedr-round"] = int(plan.round_num)
            words = self.process.seed_words(seed)
            if len(words):
                cfg["seed-words"] = [int(w) for w in words]
            if self._client_json is not None:
                cfg["aggregator"] = self._client_json
                cfg["view"] = _codec.to_text(views[i])
            if last and not self.evaluate and not aggregator.stages_after:
                cfg[wire.FINAL] = True
            records = {wire.WEIGHTS: weights, wire.CONFIG: ConfigRecord(cfg)}
            if control is not None:
                records[wire.CONTROL] = control
            content = RecordDict(records)
            messages.append(Message(content, dst_node_id=node, message_type=MessageType.TRAIN))
        _log(INFO, "round %d: training on %d node(s): %s", plan.round_num, len(messages),
             ", ".join(cid for i, (cid, _) in enumerate(pairs) if i not in lost))
        return messages

    def _result(self, i: int, client_id: str, node: int, reply: Any, lost: dict[int, Any], view: Any,
                size: int) -> Any:
        """Client ``i``'s result of the round: its output as sent (checked), or a named failure."""
        from fedr.learning.client_task import apply_client_step

        if i in lost:
            return lost[i]
        if reply is None:
            return ClientFailure(client_id, f"NodeLost: no reply from node {node} within the round's timeout")
        if reply.has_error():
            return ClientFailure(client_id, f"NodeError: {reply.error.reason}")
        out = wire.output_from_reply(client_id, reply.content, len(self.process.metric_names), size)
        if not isinstance(out, ClientFailure) and self.on_receive is not None:
            self.on_receive(client_id, out.delta)
        out = check_sent(check_examples(out, node, self._declared.get(node)), self._kind, view, node)
        if self.trusted_server and not isinstance(out, ClientFailure):
            # The trusted server runs the client step the nodes would have run.
            out = apply_client_step(out, self.process.aggregator, view, None)
        return out

    def aggregate_train(self, server_round: int, replies: Iterable[Any]) -> tuple[Any, Any]:
        """Finish the fedr round from the nodes' replies (and its stages after training); a missing or failed
        node is a named failure."""
        if self._round is None:
            raise FedError("aggregate_train: no round was configured")
        plan, pairs, carrier, lost, views = self._round
        try:
            return self._finish(plan, pairs, carrier, lost, views, replies)
        finally:
            self._round = None

    def _finish(self, plan: Any, pairs: list[tuple[str, int]], carrier: FlowerCarrier, lost: dict[int, Any],
                views: list[Any], replies: Iterable[Any]) -> tuple[Any, Any]:
        from flwr.app import MetricRecord

        by_node = {m.metadata.src_node_id: m for m in replies}
        size = plan.state.flat_weights.size
        results = [] if self._refused else [
            self._result(i, cid, node, by_node.get(node), lost, views[i], size) for i, (cid, node) in enumerate(pairs)
        ]
        row: dict[str, Any] = {"round": plan.round_num}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FedWarning)
            try:
                if self._refused is not None:
                    raise self._refused
                output = self.process.finish_round(plan, results, carry=carrier)
            except FedError as err:
                output = None
                row["events"] = f"failed: {err}"
                _log(ERROR, "round %d failed, the state stays at round %d: %s",
                     plan.round_num, plan.state.round_num, err)
        events = [str(w.message) for w in caught if issubclass(w.category, FedWarning)]
        if self.trusted_server and has_client_step(self.process.aggregator):
            events.insert(0, TRUSTED_SERVER_EVENT)
        for text in events:
            _log(INFO if text == TRUSTED_SERVER_EVENT else WARNING, "%s", text)
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
        cfg = self._config(server_round, train=False)
        if server_round == self._last_round:
            cfg[wire.FINAL] = True
        content = RecordDict({wire.WEIGHTS: wire.weights_record(self.state.model), wire.CONFIG: ConfigRecord(cfg)})
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

        self._timeout = float(timeout)
        self._last_round = int(num_rounds)
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
            replies = exchange(grid, messages, timeout)
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
                replies = exchange(
                    grid, self.configure_evaluate(server_round, result.arrays, evaluate_config or ConfigRecord(), grid),
                    timeout,
                )
                evaluated = self.aggregate_evaluate(server_round, replies)
                if evaluated is not None:
                    result.evaluate_metrics_clientapp[server_round] = evaluated
        return result
