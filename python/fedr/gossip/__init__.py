"""Gossip learning: federated training without a server, peers on a graph mixing with their neighbours.

Each round every peer runs fedr's client task (FedAvg's local training,
:func:`fedr.learning.client_task.train_client`) on its own data from its own
model, then mixes ``x_i <- sum_j W_ij x_j`` (decentralised SGD, Lian et al.
2017) with Metropolis-Hastings weights (Xiao & Boyd 2004) or a matrix of
yours; or, asynchronously, random edges average their two peers (Boyd et
al. 2006). See :func:`build_gossip` and :func:`fit`::

    from fedr import gossip, learning
    process = gossip.build_gossip(model_fn, learning.optimizer_fn("sgd", 0.02), gossip.ring(10), seed=1)
    history = gossip.fit(process, clients, rounds=20)
    process.evaluate(history.state, test_clients)          # the average model
    process.evaluate(history.state, test_clients, peer=3)  # peer 3's

Graphs and mixing matrices are numpy only; the process imports TensorFlow
(through :mod:`fedr.learning`) when it is first used.
"""

from __future__ import annotations

import importlib
from typing import Any

from fedr.gossip.graphs import Graph, complete, from_adjacency, from_edges, random_regular, ring, torus
from fedr.gossip.mixing import (
    check_mixing, consensus_distance, expected_pairwise, metropolis_hastings, mix, restrict, spectral_gap, uniform,
)

# The process and its loop import TensorFlow: loaded on first use.
_LAZY = {
    "GossipHistory": "fedr.gossip._fit",
    "GossipOutput": "fedr.gossip._state",
    "GossipProcess": "fedr.gossip._process",
    "GossipState": "fedr.gossip._state",
    "build_gossip": "fedr.gossip._process",
    "fit": "fedr.gossip._fit",
}

__all__ = [
    "GossipHistory", "GossipOutput", "GossipProcess", "GossipState", "Graph", "build_gossip", "check_mixing",
    "complete", "consensus_distance", "expected_pairwise", "fit", "from_adjacency", "from_edges",
    "metropolis_hastings", "mix", "random_regular", "restrict", "ring", "spectral_gap", "torus", "uniform",
]


def __getattr__(name: str) -> Any:
    owner = _LAZY.get(name)
    if owner is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(owner), name)
    globals()[name] = value
    return value
