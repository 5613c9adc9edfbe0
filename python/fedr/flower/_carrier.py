"""The Flower carrier of a round's protocol stages: one message round to the nodes per stage.

The process's round (:meth:`fedr.learning.FedAvgProcess.run_stages`) asks a
*carrier* to take each stage's requests to the clients and bring back their
replies (see :mod:`fedr.protocol`). On Flower each stage is one
message barrier (:func:`exchange`) with the round's timeout, as in Flower's
own SecAgg+ workflow: a ``query.fedr_stage`` message per node with the
stage's name, the round and the public payload (JSON of the protocol's
types, :mod:`fedr.flower._codec`); the node answers from the session it keeps
in its ``Context.state`` (:func:`fedr.flower._node.stage_records`). A node that
does not answer in time, answers with an error or with a malformed reply
drops out of the round: a :class:`~fedr.protocol.ClientFailure` naming it.
The carrier itself keeps no session: the clients' secrets stay on the nodes.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from fedr.flower import _codec
from fedr.flower import _messages as wire
from fedr.protocol import ClientFailure

__all__ = ["POLL_SECONDS", "STAGE_MESSAGE", "FlowerCarrier", "exchange"]

#: The message type of protocol stages (a query with fedr's action name).
STAGE_MESSAGE = "query.fedr_stage"
#: How often :func:`exchange` asks the SuperLink for replies (Flower's ``send_and_receive`` asks every 3 s).
POLL_SECONDS = 0.05


def exchange(grid: Any, messages: Iterable[Any], timeout: float, poll: float = POLL_SECONDS) -> list[Any]:
    """Send ``messages`` and return the replies that arrive within ``timeout`` seconds (a barrier).

    What Flower's ``Grid.send_and_receive`` does, through the same public
    ``push_messages`` / ``pull_messages``, but asking for replies every
    ``poll`` seconds instead of every 3: on loopback its 3-second sleep was
    half of every round (bench/README.md, issue 20). A message the SuperLink
    did not accept (Flower returns no id for it) gets no reply; the caller
    names that node as lost, as for one that does not answer.
    """
    messages = list(messages)
    if not messages:
        return []
    waiting = {i for i in grid.push_messages(messages) if i}
    replies: list[Any] = []
    deadline = time.monotonic() + float(timeout)
    while waiting:
        got = list(grid.pull_messages(waiting))
        replies += got
        waiting -= {m.metadata.reply_to_message_id for m in got}
        if not waiting or time.monotonic() >= deadline:
            break
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
    return replies


class FlowerCarrier:
    """Carries message stages to the nodes of one round.

    Args:
        grid: Flower's grid of the ServerApp.
        nodes: The node id of each client position of the round.
        aggregator_json: The aggregator as JSON (what the nodes rebuild).
        round_num: The fedr round (the nodes refuse a stage of another round).
        timeout: Seconds each stage waits for its replies.
        final_stage: The stage whose message is the nodes' last of the run
            (marked :data:`~fedr.flower._messages.FINAL`: the node's worker stops after it), or None.
    """

    def __init__(self, grid: Any, nodes: Sequence[int], aggregator_json: str, round_num: int, timeout: float,
                 final_stage: str | None = None) -> None:
        self.final_stage = final_stage
        self.grid = grid
        self.nodes = list(nodes)
        self.aggregator_json = aggregator_json
        self.round_num = int(round_num)
        self.timeout = float(timeout)

    def stage(self, aggregator: Any, stage: str, requests: dict[int, Any], client_ids: Sequence[str]) -> dict[int, Any]:
        """Send ``stage``'s request to each position's node; position -> reply, or a ClientFailure."""
        from flwr.app import ConfigRecord, Message, RecordDict

        messages, by_node = [], {}
        for position in sorted(requests):
            node = self.nodes[position]
            by_node[node] = position
            record = ConfigRecord({"stage": stage, "round": self.round_num, "aggregator": self.aggregator_json,
                                   "payload": _codec.to_text(requests[position])})
            if stage == self.final_stage:
                record[wire.FINAL] = True
            messages.append(Message(RecordDict({wire.STAGE: record}), dst_node_id=node, message_type=STAGE_MESSAGE))
        replies: dict[int, Any] = {}
        for reply in exchange(self.grid, messages, self.timeout):
            position = by_node.get(reply.metadata.src_node_id)
            if position is None or position in replies:
                continue  # not a node of this stage, or a second reply: ignored
            replies[position] = self._reply(stage, reply, client_ids[position])
        for position in requests:
            if position not in replies:
                replies[position] = ClientFailure(
                    client_ids[position],
                    f"NodeLost: no reply from node {self.nodes[position]} to stage '{stage}' within {self.timeout:g} s",
                )
        return replies

    def _reply(self, stage: str, reply: Any, client_id: str) -> Any:
        if reply.has_error():
            return ClientFailure(client_id, f"NodeError: stage '{stage}': {reply.error.reason}")
        content = reply.content
        if wire.FAILURE in content:
            return ClientFailure(client_id, str(content[wire.FAILURE].get("error", "the node reported a failure")))
        try:
            record = content[wire.STAGE]
            if record["stage"] != stage or int(record["round"]) != self.round_num:
                raise ValueError(f"a reply to stage {record['stage']!r} of round {record['round']!r}")
            return _codec.from_text(record["reply"])
        except (KeyError, ValueError, TypeError) as err:
            return ClientFailure(client_id, f"FedValueError: malformed reply to stage '{stage}' ({err})")

    @property
    def sessions(self) -> dict[int, Any]:
        """The clients' sessions held here: none (they are on the nodes)."""
        return {}

    def close(self) -> None:
        """Nothing to forget here: the sessions are on the nodes (each forgets its own after the last stage)."""
