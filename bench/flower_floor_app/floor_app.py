"""Flower's floor: weights out to every node and back unchanged, timed per round by the ServerApp.

``poll = "flower"`` waits for replies with Flower's ``grid.send_and_receive``
(it asks every 3 s); ``poll = "fedr"`` with :func:`fedr.flower._carrier.exchange`
(every 0.05 s), as fedr's strategy does. The ServerApp writes the rounds'
seconds to the JSON file ``out``. Neither side imports TensorFlow.
"""

from __future__ import annotations

import json
import time

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import ServerApp

client = ClientApp()
server = ServerApp()


@client.train()
def train(msg, context):
    """Send the weights back as they came."""
    return Message(RecordDict({"arrays": msg.content["arrays"]}), reply_to=msg)


@server.main()
def main(grid, context):
    config = context.run_config
    rounds, min_nodes = int(config["num-server-rounds"]), int(config["min-nodes"])
    while len(list(grid.get_node_ids())) < min_nodes:
        time.sleep(0.1)
    nodes = sorted(grid.get_node_ids())
    weights = ArrayRecord({"kernel": Array(np.zeros((784, 10), np.float32)), "bias": Array(np.zeros(10, np.float32))})
    if config["poll"] == "fedr":
        from fedr.flower._carrier import exchange

        def barrier(messages):
            return exchange(grid, messages, 600)
    else:
        def barrier(messages):
            return list(grid.send_and_receive(messages, timeout=600))
    seconds = []
    for _ in range(rounds):
        start = time.monotonic()
        messages = [Message(RecordDict({"arrays": weights}), dst_node_id=n, message_type=MessageType.TRAIN)
                    for n in nodes]
        replies = barrier(messages)
        seconds.append(time.monotonic() - start)
        if len(replies) != len(nodes):
            raise RuntimeError(f"{len(replies)} of {len(nodes)} nodes replied")
        print(f"floor round {len(seconds)}: {seconds[-1]:.2f} s", flush=True)
    with open(config["out"], "w") as handle:
        json.dump(seconds, handle)
