"""Mixing matrices of gossip: Metropolis-Hastings weights, the checks of a user's matrix, spectral gap, consensus.

Decentralised SGD (D-PSGD, Lian et al. 2017, "Can Decentralized Algorithms
Outperform Centralized Algorithms?"): after its local step each peer sets
``x_i <- sum_j W_ij x_j``. With ``W`` symmetric and doubly stochastic the
mixing keeps the peers' average and, on a connected graph, drives every
peer to it geometrically: the deviation from the average shrinks by the
second largest eigenvalue modulus ``1 - gap`` per round (Xiao & Boyd 2004,
"Fast linear iterations for distributed averaging"). Metropolis-Hastings
weights ``W_ij = 1 / (1 + max(d_i, d_j))`` on the edges and ``W_ii = 1 -
sum_j W_ij`` (Xiao & Boyd 2004, section 4.2) need only each peer's and its
neighbours' degrees.

Pairwise (asynchronous) gossip (Boyd et al. 2006, "Randomized gossip
algorithms"): each tick an edge ``(i, j)`` drawn uniformly averages its two
peers, ``W = I - (e_i - e_j)(e_i - e_j)^T / 2``; its expectation over the
``m`` edges is ``I - L / (2 m)`` with ``L`` the graph Laplacian, and the mean
square deviation shrinks by that matrix's second largest eigenvalue per tick.

numpy only (float64); no TensorFlow.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fedr.errors import FedTypeError, FedValueError
from fedr.gossip.graphs import Graph, subgraph_edges

__all__ = [
    "check_mixing", "consensus_distance", "expected_pairwise", "metropolis_hastings", "mix", "restrict",
    "spectral_gap", "uniform",
]

# How far a user's matrix may be from symmetric and stochastic (float64 rounding of fractions like 1/3).
TOLERANCE = 1e-9


def metropolis_hastings(graph: Graph) -> np.ndarray:
    """The Metropolis-Hastings mixing matrix of ``graph`` (Xiao & Boyd 2004): float64 ``(n, n)``.

    ``W_ij = 1 / (1 + max(d_i, d_j))`` for each edge, 0 off the graph, and
    ``W_ii = 1 - sum_{j != i} W_ij``: symmetric, doubly stochastic, with a
    positive diagonal (so its eigenvalues are above -1 and it mixes on any
    connected graph, bipartite ones included).
    """
    d = graph.degrees().astype(np.float64)
    n = graph.num_peers
    w = np.zeros((n, n))
    i, j = graph.edges[:, 0], graph.edges[:, 1]
    values = 1.0 / (1.0 + np.maximum(d[i], d[j]))
    w[i, j] = values
    w[j, i] = values
    w[np.arange(n), np.arange(n)] = 1.0 - w.sum(axis=1)
    return w


def uniform(graph: Graph) -> np.ndarray:
    """``1 / n`` everywhere: exact averaging in one round, valid on the complete graph only."""
    n = graph.num_peers
    return np.full((n, n), 1.0 / n)


def check_mixing(weights: Any, graph: Graph | None = None, argument: str = "weights", base: int = 0) -> np.ndarray:
    """Return a user's mixing matrix as float64 ``(n, n)`` after checking it; raise naming what is wrong.

    A mixing matrix must be square (of the graph's size), finite,
    non-negative, symmetric, with rows (and so columns) summing to 1, zero
    between peers that are not neighbours in ``graph``, and connected (its
    spectral gap above 0, else the peers never agree). Messages number
    rows, columns and peers from ``base`` (1 for R).

    Raises:
        FedTypeError: not a numeric matrix.
        FedValueError: the first property that fails, with the entry (0-based
            ``[i, j]``) or row it fails at.
    """
    w = np.asarray(weights)
    if w.dtype.kind not in "iuf" or w.dtype == np.bool_:
        raise FedTypeError(f"{argument}: expected a numeric matrix, got {w.dtype}")
    w = w.astype(np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise FedValueError(f"{argument}: expected a square matrix, got shape {w.shape}")
    n = w.shape[0]
    if graph is not None and n != graph.num_peers:
        raise FedValueError(f"{argument}: the graph has {graph.num_peers} peers, the matrix is {n} x {n}")
    if not np.isfinite(w).all():
        i, j = np.argwhere(~np.isfinite(w))[0]
        raise FedValueError(f"{argument}: [{i + base}, {j + base}] is {w[i, j]}, expected finite weights")
    if (w < 0).any():
        i, j = np.argwhere(w < 0)[0]
        raise FedValueError(f"{argument}: [{i + base}, {j + base}] = {w[i, j]:g} is negative; mixing weights are >= 0")
    asym = np.abs(w - w.T)
    if asym.max() > TOLERANCE:
        i, j = np.unravel_index(int(np.argmax(asym)), asym.shape)
        raise FedValueError(
            f"{argument}: not symmetric, [{i + base}, {j + base}] = {w[i, j]:g} but [{j + base}, {i + base}] = "
            f"{w[j, i]:g}; D-PSGD keeps "
            "the peers' average only with a symmetric doubly stochastic matrix"
        )
    rows = w.sum(axis=1)
    if np.abs(rows - 1).max() > TOLERANCE:
        i = int(np.argmax(np.abs(rows - 1)))
        raise FedValueError(
            f"{argument}: not doubly stochastic, row {i + base} sums to {rows[i]:.12g}, expected 1 (each peer's "
            "new model is a weighted average)"
        )
    if graph is not None:
        off = w * (1 - graph.adjacency() - np.eye(n))
        if (off > 0).any():
            i, j = np.argwhere(off > 0)[0]
            raise FedValueError(
                f"{argument}: [{i + base}, {j + base}] = {w[i, j]:g} but peers {i + base} and {j + base} are not "
                "neighbours in the graph"
            )
    if n > 1 and spectral_gap(w) <= TOLERANCE:
        raise FedValueError(
            f"{argument}: does not mix, its spectral gap is {spectral_gap(w):.3g} (disconnected, or every "
            "weight on the diagonal); the peers would never agree"
        )
    out = w.copy()
    out.flags.writeable = False
    return out


def spectral_gap(weights: np.ndarray) -> float:
    """``1 - max(|lambda_2|, |lambda_n|)`` of a symmetric mixing matrix: the consensus rate per round.

    The eigenvalues are numpy's (``numpy.linalg.eigvalsh``), in ascending
    order; the largest is 1 for a stochastic matrix and is left out. A
    1 x 1 matrix (one peer) has gap 1.
    """
    w = np.asarray(weights, np.float64)
    if w.shape[0] < 2:
        return 1.0
    values = np.linalg.eigvalsh((w + w.T) / 2)
    return float(1.0 - max(abs(values[-2]), abs(values[0])))


def consensus_distance(models: np.ndarray) -> float:
    """The mean distance of the peers' models to their average, ``mean_i ||x_i - x_bar||`` (float64).

    Args:
        models: ``(n, p)``: one flat model (weights and averaged statistics) per peer.
    """
    x = np.asarray(models, np.float64)
    return float(np.linalg.norm(x - x.mean(axis=0), axis=1).mean())


def restrict(weights: np.ndarray, present: Any) -> np.ndarray:
    """The mixing matrix of a round where only ``present`` peers take part; float64 ``(n, n)``.

    A peer that is absent (dropped out, or failed this round) keeps its
    model (its row and column are those of the identity), and each present
    neighbour renormalises by keeping for itself the weight it gave it:
    ``W'_ii = 1 - sum_{j present, j != i} W_ij``. The result is again
    symmetric and doubly stochastic, so the present peers' average is kept.
    """
    keep = np.asarray(present, bool)
    w = np.array(weights, np.float64, copy=True)
    w[~keep, :] = 0.0
    w[:, ~keep] = 0.0
    np.fill_diagonal(w, 0.0)
    w[np.arange(len(w)), np.arange(len(w))] = 1.0 - w.sum(axis=1)
    return w


def expected_pairwise(graph: Graph, present: Any = None) -> np.ndarray:
    """The expected matrix of one pairwise-gossip tick: ``I - L' / (2 m)``, float64 ``(n, n)``.

    Each tick draws one of the graph's ``m`` edges uniformly; ``L'`` is the
    Laplacian of the edges between ``present`` peers (all by default): a
    tick on an edge with an absent peer does nothing.
    """
    n = graph.num_peers
    edges = graph.edges if present is None else subgraph_edges(graph, present)
    w = np.eye(n)
    if not len(edges):
        return w
    i, j = edges[:, 0], edges[:, 1]
    step = 1.0 / (2.0 * len(graph.edges))
    np.add.at(w, (i, j), step)
    np.add.at(w, (j, i), step)
    np.add.at(w, (i, i), -step)
    np.add.at(w, (j, j), -step)
    return w


def mix(weights: np.ndarray, models: np.ndarray) -> np.ndarray:
    """``W @ X`` in float64, cast back to the models' dtype: each peer's weighted average of its neighbours.

    Args:
        weights: ``(n, n)`` mixing matrix.
        models: ``(n, p)`` flat models, one row per peer.
    """
    x = np.asarray(models)
    return (np.asarray(weights, np.float64) @ x.astype(np.float64)).astype(x.dtype)
