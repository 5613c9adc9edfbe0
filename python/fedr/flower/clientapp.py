"""fedr's Flower ClientApp: a thin process that hands each message to its node's fedr worker.

Name it in a Flower app's ``pyproject.toml``::

    [tool.flwr.app.components]
    clientapp = "fedr.flower.clientapp:app"

Flower starts a new ClientApp process for every message a node receives.
This module imports Flower and fedr's TensorFlow-free parts only; the
training, evaluation and protocol stages run in the node's long-lived worker
(:mod:`fedr.flower._worker`), which keeps the node's data and the traced
model between messages. What the node does is described in
:mod:`fedr.flower._node` (its node config keys, its replies).
"""

from __future__ import annotations

from typing import Any

from flwr.clientapp import ClientApp

from fedr.flower._worker import forward

__all__ = ["app"]

app = ClientApp()


def _reply(msg: Any, records: Any) -> Any:
    from flwr.app import Message

    return Message(records, reply_to=msg)


@app.query()
def describe(msg: Any, context: Any) -> Any:
    """The node's client id and example count (the server's first question)."""
    return _reply(msg, forward("describe", msg.content, context))


@app.train()
def train(msg: Any, context: Any) -> Any:
    """Train the server's model on the node's data (and run the aggregator's client step)."""
    return _reply(msg, forward("train", msg.content, context))


@app.query("fedr_stage")
def stage(msg: Any, context: Any) -> Any:
    """The node's side of a protocol stage (secure aggregation's key exchange and unmasking)."""
    return _reply(msg, forward("stage", msg.content, context))


@app.evaluate()
def evaluate(msg: Any, context: Any) -> Any:
    """Evaluate the server's model on the node's evaluation data."""
    return _reply(msg, forward("evaluate", msg.content, context))
