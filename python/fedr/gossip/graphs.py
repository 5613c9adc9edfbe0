"""Peer graphs for gossip learning: ring, 2-D torus, random k-regular, complete, a user's edges or adjacency.

A :class:`Graph` is plain data: the number of peers and its undirected edges
``(i, j)`` with ``i < j``, sorted, each once. Every builder checks that the
graph is connected (gossip over a disconnected graph never reaches consensus)
and has no self loops (a peer's own weight ``W_ii`` is implied by the mixing
matrix, :mod:`fedr.gossip.mixing`). numpy only: no TensorFlow, no networkx.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedr import _seeds
from fedr.errors import FedTypeError, FedValueError

__all__ = ["Graph", "complete", "from_adjacency", "from_edges", "random_regular", "ring", "torus"]


def _count(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise FedValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _components(n: int, edges: np.ndarray) -> list[list[int]]:
    """The connected components of the graph, each a sorted list of peers, in order of their first peer."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in edges.tolist():
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


@dataclass(frozen=True, eq=False)
class Graph:
    """An undirected, connected graph of peers 0 .. ``num_peers - 1``, without self loops.

    Build it with :func:`ring`, :func:`torus`, :func:`random_regular`,
    :func:`complete`, :func:`from_edges` or :func:`from_adjacency`; those check it.

    Attributes:
        num_peers: The number of peers (at least 2).
        edges: int64 array ``(m, 2)``: each edge once as ``(i, j)``, ``i < j``, sorted; read-only.
        name: How it was built, e.g. ``"ring(10)"``.
    """

    num_peers: int
    edges: np.ndarray
    name: str = "graph"

    def __post_init__(self) -> None:
        edges = np.array(self.edges, dtype=np.int64, copy=True).reshape(-1, 2)
        edges.flags.writeable = False
        object.__setattr__(self, "edges", edges)

    def adjacency(self) -> np.ndarray:
        """The 0/1 adjacency matrix, float64 ``(n, n)``, symmetric with a zero diagonal."""
        a = np.zeros((self.num_peers, self.num_peers))
        a[self.edges[:, 0], self.edges[:, 1]] = 1.0
        a[self.edges[:, 1], self.edges[:, 0]] = 1.0
        return a

    def degrees(self) -> np.ndarray:
        """Each peer's number of neighbours, int64 ``(n,)``."""
        return np.bincount(self.edges.ravel(), minlength=self.num_peers).astype(np.int64)

    def neighbours(self, peer: int) -> list[int]:
        """The neighbours of ``peer``, ascending."""
        e = self.edges
        return sorted(e[e[:, 0] == peer, 1].tolist() + e[e[:, 1] == peer, 0].tolist())

    def __repr__(self) -> str:
        return f"Graph({self.name}: {self.num_peers} peers, {len(self.edges)} edges)"


def _graph(n: int, pairs: np.ndarray, name: str, argument: str, base: int = 0) -> Graph:
    """Check ``pairs`` (``(m, 2)`` 0-based ints) as the edges of a connected graph of ``n`` peers; the Graph.

    Messages number peers from ``base`` (R numbers them from 1).
    """
    if n < 2:
        raise FedValueError(f"{argument}: a gossip graph needs at least 2 peers, got {n}")
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= n):
        bad = pairs[(pairs < 0).any(axis=1) | (pairs >= n).any(axis=1)][0].tolist()
        raise FedValueError(f"{argument}: edge {tuple(b + base for b in bad)} names a peer outside {base}..{n - 1 + base}")
    loops = pairs[pairs[:, 0] == pairs[:, 1]]
    if len(loops) == len(pairs) and len(pairs):
        raise FedValueError(
            f"{argument}: only self loops ({len(pairs)}), no edge between two peers; a peer's own weight is "
            "implied, give the edges between neighbours"
        )
    if len(loops):
        raise FedValueError(
            f"{argument}: self loop on peer {int(loops[0, 0]) + base}; a peer always keeps part of its own model "
            "(W_ii), give only edges between distinct peers"
        )
    edges = np.unique(np.sort(pairs, axis=1), axis=0) if len(pairs) else np.zeros((0, 2), np.int64)
    parts = _components(n, edges)
    if len(parts) > 1:
        alone = [p for p in parts if len(p) == 1]
        what = (f"peer {alone[0][0] + base} has no neighbour" if alone else
                f"peers {[p + base for p in parts[1][:5]]} cannot reach peer {base}")
        raise FedValueError(
            f"{argument}: disconnected, {len(parts)} components ({what}); gossip on a disconnected graph "
            "never reaches consensus"
        )
    return Graph(n, edges, name)


def from_edges(num_peers: int, edges: Any, *, base: int = 0) -> Graph:
    """A graph from an edge list: pairs of peers; ``(i, j)`` and ``(j, i)`` are the same edge.

    Args:
        num_peers: The number of peers.
        edges: A sequence of ``(i, j)`` pairs or an integer array ``(m, 2)``,
            peers numbered from ``base``.
        base: The number of the first peer: 0 (Python), or 1 (R); the
            graph's peers are 0-based whatever it is, and messages use it.

    Returns:
        The :class:`Graph`.

    Raises:
        FedValueError: a peer outside ``0 .. num_peers - 1``, a self loop,
            only self loops, or a disconnected graph (the message says which
            peers); fewer than 2 peers.
        FedTypeError: ``edges`` is not pairs of integers.
    """
    n = _count(num_peers, "num_peers", 2)
    array = np.asarray(edges)
    if array.size == 0:
        array = np.zeros((0, 2), np.int64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise FedTypeError(f"edges: expected pairs (i, j) of peers, an array (m, 2), got shape {array.shape}")
    if array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array)):
        array = array.astype(np.int64)  # whole numbers, as R gives them
    if array.dtype.kind not in "iu":
        raise FedTypeError(f"edges: expected integer peer indices, got {array.dtype}")
    base = _count(base, "base", 0)
    return _graph(n, array.astype(np.int64) - base, f"edges({n})", "edges", base)


def from_adjacency(adjacency: Any, *, base: int = 0) -> Graph:
    """A graph from a symmetric 0/1 (or boolean) adjacency matrix with a zero diagonal.

    ``base`` numbers rows, columns and peers in messages (1 for R).

    Raises:
        FedValueError: the matrix is not square, not symmetric (names an
            entry), has entries other than 0 and 1, has a non-zero diagonal
            (self loops), or the graph is disconnected.
    """
    a = np.asarray(adjacency)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise FedValueError(f"adjacency: expected a square matrix, got shape {a.shape}")
    if a.dtype.kind not in "biuf":
        raise FedTypeError(f"adjacency: expected a numeric or logical matrix, got {a.dtype}")
    a = a.astype(np.float64)
    if not np.isin(a, (0.0, 1.0)).all():
        i, j = np.argwhere(~np.isin(a, (0.0, 1.0)))[0]
        raise FedValueError(f"adjacency: expected entries 0 or 1, got {a[i, j]!r} at [{i + base}, {j + base}]")
    if (a != a.T).any():
        i, j = np.argwhere(a != a.T)[0]
        raise FedValueError(
            f"adjacency: not symmetric, [{i + base}, {j + base}] = {a[i, j]:g} but [{j + base}, {i + base}] = "
            f"{a[j, i]:g}; gossip "
            "links are undirected"
        )
    pairs = np.argwhere(np.triu(a) > 0)  # the diagonal included: self loops are refused by _graph
    return _graph(a.shape[0], pairs.astype(np.int64), f"adjacency({a.shape[0]})", "adjacency", _count(base, "base", 0))


def ring(num_peers: int) -> Graph:
    """The ring (cycle) of ``num_peers`` peers: peer i is linked to i - 1 and i + 1 (mod n).

    Raises:
        FedValueError: fewer than 3 peers (a ring of 2 is :func:`complete` of 2).
    """
    n = _count(num_peers, "num_peers", 3)
    i = np.arange(n)
    return _graph(n, np.stack([i, (i + 1) % n], axis=1), f"ring({n})", "num_peers")


def torus(rows: int, cols: int) -> Graph:
    """The 2-D torus of ``rows x cols`` peers: peer ``r * cols + c`` is linked to its 4 grid neighbours, wrapping.

    With 2 rows (or columns) the two vertical (horizontal) neighbours are one
    peer, linked once: degree 3.

    Raises:
        FedValueError: ``rows`` or ``cols`` below 2.
    """
    r_, c_ = _count(rows, "rows", 2), _count(cols, "cols", 2)
    r, c = np.divmod(np.arange(r_ * c_), c_)
    right = np.stack([r * c_ + c, r * c_ + (c + 1) % c_], axis=1)
    down = np.stack([r * c_ + c, ((r + 1) % r_) * c_ + c], axis=1)
    return _graph(r_ * c_, np.concatenate([right, down]), f"torus({r_}x{c_})", "rows")


def complete(num_peers: int) -> Graph:
    """The complete graph: every peer linked to every other.

    Raises:
        FedValueError: fewer than 2 peers.
    """
    n = _count(num_peers, "num_peers", 2)
    return _graph(n, np.argwhere(np.triu(np.ones((n, n)), 1) > 0), f"complete({n})", "num_peers")


def random_regular(num_peers: int, degree: int, seed: int | None = None) -> Graph:
    """A connected random ``degree``-regular graph, seeded.

    The construction starts from the circulant graph (each peer linked to
    the ``degree // 2`` next peers on each side, and for an odd ``degree``
    to the opposite peer) and randomises it with degree-preserving double
    edge swaps, ``10 * m`` attempted swaps of two random edges ``(a, b),
    (c, d) -> (a, d), (c, b)``, each refused when it would make a self loop
    or a double edge (the switching chain of Milo et al. 2003, whose
    stationary distribution is uniform over the simple ``degree``-regular
    graphs). A result that is disconnected is swapped again, up to 200
    times. The random draws derive from ``seed`` (numpy's SeedSequence, as
    every seeded choice of fedr), so a seed gives the same graph everywhere.

    Args:
        num_peers: n, at least 3.
        degree: k, with ``2 <= k < n`` and ``n * k`` even.
        seed: A non-negative integer, or None for fresh randomness.

    Raises:
        FedValueError: ``n * k`` is odd, ``k >= n``, ``k < 2`` (a perfect
            matching is disconnected for n > 2), or no connected graph was
            found (only possible for ``k = 2`` and a very large ``n``).
    """
    n = _count(num_peers, "num_peers", 3)
    k = _count(degree, "degree", 1)
    seed = _seeds.check_seed(seed)
    if k >= n:
        raise FedValueError(f"degree: a {k}-regular graph of {n} peers needs degree < num_peers, got {k}")
    if (n * k) % 2:
        raise FedValueError(f"degree: no {k}-regular graph of {n} peers exists, num_peers * degree ({n * k}) is odd")
    if k < 2:
        raise FedValueError(f"degree: a 1-regular graph of {n} peers is disconnected (a perfect matching); use degree >= 2")
    i = np.arange(n)
    pairs = [np.stack([i, (i + s) % n], axis=1) for s in range(1, k // 2 + 1)]
    if k % 2:
        pairs.append(np.stack([i[: n // 2], i[: n // 2] + n // 2], axis=1))
    start = np.unique(np.sort(np.concatenate(pairs), axis=1), axis=0)
    rng = np.random.default_rng(_seeds.derive(seed, _seeds.SAMPLE) if seed is not None else None)
    for _ in range(200):
        edges = _swap(start, n, rng)
        if len(_components(n, edges)) == 1:
            return Graph(n, edges, f"random_regular({n}, {k}, seed={seed})")
    raise FedValueError(f"degree: found no connected random {k}-regular graph of {n} peers in 200 tries; use degree >= 3")


def _swap(edges: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Degree-preserving double edge swaps of ``edges`` (see :func:`random_regular`); the new sorted edges."""
    e = edges.copy()
    m = len(e)
    present = {(int(a), int(b)) for a, b in e}
    for _ in range(10 * m):
        x, y = rng.integers(0, m, 2)
        if x == y:
            continue
        a, b = e[x]
        c, d = e[y] if rng.random() < 0.5 else e[y][::-1]
        new1, new2 = (min(a, d), max(a, d)), (min(c, b), max(c, b))
        if a == d or c == b or new1 == new2 or new1 in present or new2 in present:
            continue
        present -= {(int(e[x][0]), int(e[x][1])), (int(e[y][0]), int(e[y][1]))}
        present |= {new1, new2}
        e[x], e[y] = new1, new2
    return np.unique(np.sort(e, axis=1), axis=0)


def check_graph(graph: Any, argument: str = "graph") -> Graph:
    """Return ``graph`` if it is a :class:`Graph`; raise FedTypeError naming ``argument`` otherwise."""
    if not isinstance(graph, Graph):
        raise FedTypeError(
            f"{argument}: expected a fedr.gossip graph (ring(), torus(), random_regular(), complete(), "
            f"from_edges(), from_adjacency()), got {type(graph).__name__}"
        )
    return graph


def subgraph_edges(graph: Graph, present: Sequence[bool]) -> np.ndarray:
    """The edges of ``graph`` whose two peers are both ``present``."""
    keep = np.asarray(present, bool)
    e = graph.edges
    return e[keep[e[:, 0]] & keep[e[:, 1]]]
