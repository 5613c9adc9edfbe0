"""The gossip process: peers on a graph, each training its own model with fedr's client task, then mixing.

Synchronous rounds are decentralised SGD (D-PSGD, Lian et al. 2017): every
present peer runs :func:`fedr.learning.client_task.train_client` (FedAvg's
client task, from its *own* model, with its seed from (seed, round, peer)
exactly as FedAvg derives a client's) and then every peer sets ``x_i <-
sum_j W_ij x_j`` (:func:`fedr.gossip.mixing.mix`). Asynchronous rounds are
pairwise gossip (Boyd et al. 2006): ``ticks`` times an edge drawn uniformly
(seeded by (seed, round)) has its two peers train and average their models.

The model state of a peer is FedAvg's: its trainable weights and its float
non-trainable variables (BatchNorm statistics), both mixed; integer and
random-generator variables are never mixed (they are the initial model's,
and every local step seeds the generators from the peer's seed).

Peers that are absent (asked for, or whose local step failed: an event in
the round's output) keep their model; their neighbours renormalise
(:func:`fedr.gossip.mixing.restrict`), and they rejoin the next round they
take part in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np

from fedr import _seeds
from fedr.datasets import ClientData
from fedr.errors import FedTypeError, FedValueError
from fedr.gossip._peers import Trainers
from fedr.gossip._state import GossipOutput, GossipState, peer_index
from fedr.gossip.graphs import Graph, check_graph
from fedr.gossip.mixing import (
    check_mixing, consensus_distance, expected_pairwise, metropolis_hastings, mix, restrict, spectral_gap, uniform,
)
from fedr.learning.builders import build_weighted_fed_avg
from fedr.learning.client_update import ClientUpdate
from fedr.learning.model import Model
from fedr.learning.process import combine_metrics
from fedr.learning.state import ModelWeights, ServerState, check_weights
from fedr.protocol.messages import ClientFailure, ClientOutput

__all__ = ["GossipOutput", "GossipProcess", "GossipState", "build_gossip"]

Mode = Literal["sync", "async"]


class GossipProcess:
    """Gossip learning over a peer graph: ``initialize()``, then ``next(state, data)`` per round.

    Built by :func:`build_gossip`, whose arguments it takes; see there.

    Attributes:
        graph: The peer :class:`~fedr.gossip.Graph`.
        weights: The mixing matrix W (float64, read-only; asynchronous: the
            expected matrix of one tick).
        mode: ``"sync"`` or ``"async"``.
        ticks: Asynchronous: pairwise averagings per round.
        model_bytes: Bytes of one model as a peer sends it (float32 weights
            and statistics): a synchronous round costs a peer this much per
            neighbour, a FedAvg round a client this much for its update.
    """

    def __init__(
        self,
        model_fn: Callable[[], Model],
        client_optimizer_fn: Callable[[], Any],
        graph: Graph,
        *,
        weights: Any = None,
        mode: Mode = "sync",
        ticks: int | None = None,
        local_epochs: int = 1,
        executor: Any = None,
        seed: int | None = None,
    ) -> None:
        self.graph = check_graph(graph)
        n = self.graph.num_peers
        if mode not in ("sync", "async"):
            raise FedValueError(f"mode: expected 'sync' or 'async', got {mode!r}")
        self.mode = mode
        if mode == "async":
            if weights is not None:
                raise FedValueError("weights: pairwise (async) gossip averages two peers with weight 1/2; "
                                    "give weights only with mode='sync'")
            if ticks is None:
                ticks = max(1, n // 2)
            if isinstance(ticks, bool) or not isinstance(ticks, int | np.integer) or ticks < 1:
                raise FedValueError(f"ticks: expected a positive integer, got {ticks!r}")
            self.ticks: int | None = int(ticks)
            self.weights = expected_pairwise(self.graph)
        else:
            if ticks is not None:
                raise FedValueError("ticks: are pairwise (async) gossip's; give them with mode='async'")
            self.ticks = None
            if weights is None or (isinstance(weights, str) and weights == "metropolis_hastings"):
                self.weights = metropolis_hastings(self.graph)
            elif isinstance(weights, str) and weights == "uniform":
                if len(self.graph.edges) != n * (n - 1) // 2:
                    raise FedValueError(f"weights: 'uniform' (1/n to every peer) needs the complete graph, "
                                        f"{self.graph.name} has {len(self.graph.edges)} of its {n * (n - 1) // 2} "
                                        "edges; use 'metropolis_hastings'")
                self.weights = check_mixing(uniform(self.graph), self.graph)
            elif isinstance(weights, str):
                raise FedValueError(f"weights: expected 'metropolis_hastings', 'uniform' or a matrix, got {weights!r}")
            else:
                self.weights = check_mixing(weights, self.graph)
        self.weights.flags.writeable = False
        # FedAvg's process, for what gossip shares with it: the seeded initial
        # model, the clients' seeds, the model checks and the evaluation.
        self._inner = build_weighted_fed_avg(model_fn, client_optimizer_fn, local_epochs=local_epochs,
                                             executor=executor, seed=seed)
        self.seed = self._inner.seed
        self.local_epochs = self._inner.local_epochs
        self._base = self.seed if self.seed is not None else int(np.random.SeedSequence().entropy % 2**63)
        self._start = self._inner.initialize()

        def build() -> ClientUpdate:
            model, optimizer = model_fn(), client_optimizer_fn()
            if not isinstance(model, Model):
                raise FedTypeError(f"model_fn: expected it to return fedr.learning.from_keras_model(...), got "
                                   f"{type(model).__name__}")
            return ClientUpdate(model, optimizer, local_epochs=self.local_epochs)

        self._trainers = Trainers(build, self._inner.executor, self._inner, self.local_epochs)
        self._averaged = tuple(self._trainers.first.averaged)
        template = self._start.model
        stats = sum(template.non_trainable[i].size for i in self._averaged)
        self.model_bytes = 4 * (template.flat_trainable().size + stats)

    @property
    def metric_names(self) -> list[str]:
        """The model's metric names."""
        return self._inner.metric_names

    @property
    def executor(self) -> Any:
        """Who runs the peers' local steps."""
        return self._inner.executor

    def __repr__(self) -> str:
        extra = f", ticks={self.ticks}" if self.mode == "async" else ""
        return (f"GossipProcess(graph={self.graph.name}, mode={self.mode!r}{extra}, model={self._inner.model!r}, "
                f"local_epochs={self.local_epochs}, executor={self.executor!r}, seed={self.seed})")

    # ------------------------------------------------------------------ state

    def initialize(self, models: Sequence[ModelWeights] | None = None) -> GossipState:
        """Return round 0: every peer holds FedAvg's initial model (seeded), or its own of ``models``.

        Args:
            models: None, or one :class:`ModelWeights` per peer (each checked
                against the model; its integer and generator state is
                ignored: it is the initial model's).

        Raises:
            FedValueError: ``models`` has the wrong length or a model does not fit.
        """
        template = self._start.model
        n = self.graph.num_peers
        if models is None:
            models = [template] * n
        models = list(models)
        if len(models) != n:
            raise FedValueError(f"models: the graph has {n} peers, got {len(models)} models")
        for i, m in enumerate(models):
            if not isinstance(m, ModelWeights):
                raise FedTypeError(f"models: peer {i}'s model is a {type(m).__name__}, expected ModelWeights")
            check_weights(template, m, f"models: peer {i}")
        flats = np.stack([m.flat_trainable() for m in models])
        stats = np.stack([self._stats(m) for m in models])
        return GossipState(template, flats, stats, self._averaged, 0)

    def _stats(self, weights: ModelWeights) -> np.ndarray:
        parts = [np.asarray(weights.non_trainable[i], np.float32).ravel() for i in self._averaged]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def check_state(self, state: Any) -> GossipState:
        """Return ``state`` if it is a state of this process's graph and model; raise naming what is wrong."""
        if not isinstance(state, GossipState):
            raise FedTypeError(f"state: expected a GossipState, got {type(state).__name__}")
        check_weights(self._start.model, state.template)
        n, p = self.graph.num_peers, self._start.flat_weights.size
        if state.trainable.shape != (n, p) or state.averaged != self._averaged:
            raise FedValueError(f"state: holds {state.trainable.shape[0]} peers of {state.trainable.shape[1]} weights, "
                                f"the process has {n} peers of {p}; is it from another graph or model?")
        return state

    def check_data(self, federated_data: Any, argument: str = "federated_data") -> list[ClientData]:
        """The peers' data, one ClientData per peer in peer order, checked against the model.

        Raises:
            FedTypeError: not a list of ClientData.
            FedValueError: a peer without data (fewer clients than peers, or
                None in its place), or data that does not fit the model.
        """
        if not isinstance(federated_data, list | tuple):
            raise FedTypeError(f"{argument}: expected a list of ClientData, one per peer, got "
                               f"{type(federated_data).__name__}")
        n = self.graph.num_peers
        clients = list(federated_data)
        if len(clients) < n:
            raise FedValueError(f"{argument}: the graph has {n} peers but {len(clients)} clients were given: "
                                f"peer {len(clients)} has no data")
        if len(clients) > n:
            raise FedValueError(f"{argument}: the graph has {n} peers but {len(clients)} clients were given")
        for i, c in enumerate(clients):
            if c is None:
                raise FedValueError(f"{argument}: peer {i} has no data (None)")
            if not isinstance(c, ClientData):
                raise FedTypeError(f"{argument}: peer {i}'s data is a {type(c).__name__}, expected ClientData")
            try:
                self._trainers.check(c)
            except FedValueError as err:
                raise FedValueError(f"{argument}: peer {i}: {err}") from None
        return clients

    def check_held_out(self, data: Any, argument: str = "validation_data") -> None:
        """Raise, naming ``argument``, when held-out clients do not fit the model (FedAvg's check)."""
        self._inner.check_data(data, argument)

    # ------------------------------------------------------------------ rounds

    def _seeds(self, round_num: int, ids: Sequence[str]) -> list[np.random.SeedSequence]:
        """The clients' seeds FedAvg's round ``round_num`` gives ``ids`` (a repeated id counts its repeats)."""
        if not ids:
            return []
        s = self._start
        before = ServerState(s.model, s.optimizer_state, s.aggregator_state, round_num - 1)
        return list(self._inner.begin_round(before, list(ids)).seeds)

    def next(self, state: GossipState, federated_data: Any, *, absent: Sequence[int] = ()) -> GossipOutput:
        """Run one gossip round: local steps, then mixing (sync) or ``ticks`` pairwise averagings (async).

        Args:
            state: From :meth:`initialize` or the previous round.
            federated_data: One ClientData per peer, in peer order.
            absent: Peers (0-based) that sit this round out: they neither
                train nor mix, keep their model, and rejoin when next present.

        Returns:
            :class:`GossipOutput` ``(state, metrics, peers, events)``.

        Raises:
            FedValueError: a bad state or data (see :meth:`check_data`), a bad
                ``absent``, or every peer failed (the state is unchanged).
        """
        state = self.check_state(state)
        clients = self.check_data(federated_data)
        n = self.graph.num_peers
        round_num = state.round_num + 1
        present = np.ones(n, bool)
        for peer in absent:
            present[peer_index(peer, n, "absent")] = False
        events = [{"round": round_num, "peer": int(i), "event": "absent", "message": "absent this round"}
                  for i in np.flatnonzero(~present)]
        status = ["trained" if p else "absent" for p in present]
        flats = state.trainable.copy()
        stats = state.statistics.copy()
        sent = np.zeros(n)
        outputs: dict[int, list[ClientOutput]] = {}

        def step(peers: list[int], seeds: list[Any]) -> list[int]:
            """Train ``peers`` from their current models; the ones that succeeded (their rows updated)."""
            jobs = [(state._weights(flats[i], stats[i]), flats[i].copy(), clients[i], s) for i, s in zip(peers, seeds)]
            done = []
            for i, out in zip(peers, self._trainers.train(jobs), strict=True):
                error = out.error if isinstance(out, ClientFailure) else (
                    None if out.finite else "its update is not finite (NaN or Inf)")
                if error is not None:
                    present[i] = False
                    status[i] = "failed"
                    events.append({"round": round_num, "peer": i, "event": "failed", "message": error})
                    continue
                flats[i] = flats[i] + out.delta
                stats[i] = out.non_trainable
                outputs.setdefault(i, []).append(out)
                done.append(i)
            return done

        extra: dict[str, float] = {}
        if self.mode == "sync":
            peers = [int(i) for i in np.flatnonzero(present)]
            step(peers, self._seeds(round_num, [clients[i].client_id for i in peers]))
            if not present.any():
                raise FedValueError(f"round {round_num}: every peer failed or was absent; the state is unchanged: "
                                    + "; ".join(f"peer {e['peer']}: {e['message']}" for e in events))
            w = restrict(self.weights, present)
            flats, stats = mix(w, flats), mix(w, stats)
            # A peer sends its model to each present neighbour that mixes it in (an absent peer's row is the identity).
            degree = ((w > 0) & ~np.eye(n, dtype=bool)).sum(axis=1)
            sent = np.where(present, degree * self.model_bytes, 0).astype(np.float64)
            gap = spectral_gap(w[np.ix_(present, present)])
        else:
            extra = self._pairwise(state, round_num, clients, present, status, flats, stats, sent, step)
            gap = spectral_gap(expected_pairwise(self.graph, present)[np.ix_(present, present)])
        new = GossipState(state.template, flats, stats, state.averaged, round_num)
        names = self.metric_names
        trained = sorted(outputs)
        if not trained:
            raise FedValueError(f"round {round_num}: no peer trained (all failed, absent or on skipped ticks); "
                                "the state is unchanged: "
                                + "; ".join(f"peer {e['peer']}: {e['message']}" for e in events))
        metrics = combine_metrics(names, [(o.metrics, o.loss_sum, o.num_examples) for i in trained for o in outputs[i]])
        metrics.pop("num_clients")
        metrics["num_peers"] = len(trained)
        metrics.update({
            "num_peers_failed": sum(s == "failed" for s in status),
            "num_peers_absent": sum(s == "absent" for s in status),
            "spectral_gap": gap,
            "consensus_distance": consensus_distance(new.models()),
            "bytes_sent": float(sent.mean()),
            **extra,
        })
        models = new.models().astype(np.float64)
        distance = np.linalg.norm(models - models.mean(axis=0), axis=1)
        rows = []
        for i in range(n):
            row: dict[str, Any] = {"round": round_num, "peer": i, "client_id": clients[i].client_id, "status": status[i]}
            if i in outputs:
                row.update(combine_metrics(names, [(o.metrics, o.loss_sum, o.num_examples) for o in outputs[i]]))
                row.pop("num_clients")
            else:
                row.update({name: float("nan") for name in [*names, "loss"]})
                row["num_examples"] = 0
            row["bytes_sent"] = float(sent[i])
            row["distance"] = float(distance[i])
            rows.append(row)
        return GossipOutput(new, metrics, rows, events)

    def _pairwise(self, state: GossipState, round_num: int, clients: list[ClientData], present: np.ndarray,
                  status: list[str], flats: np.ndarray, stats: np.ndarray, sent: np.ndarray,
                  step: Callable[[list[int], list[Any]], list[int]]) -> dict[str, float]:
        """Asynchronous pairwise gossip (Boyd et al. 2006): ``ticks`` edges, each training and averaging its two peers.

        The edges of the round are drawn up front (seeded by (seed, round)),
        uniformly over the graph's edges, so a peer's failure does not move
        the other draws; a tick on an edge with an absent peer does nothing
        (``ticks_skipped``). Each activation of a peer gets FedAvg's client
        seed for (round, peer, repeat).
        """
        assert self.ticks is not None
        rng = np.random.default_rng(_seeds.derive(self._base, _seeds.SAMPLE, round_num, 1))
        schedule = self.graph.edges[rng.integers(0, len(self.graph.edges), self.ticks)]
        ids = [clients[int(p)].client_id for edge in schedule for p in edge]
        seeds = self._seeds(round_num, ids)
        drawn = np.zeros(len(present), bool)
        skipped = 0
        for t, (i, j) in enumerate(schedule.tolist()):
            drawn[[i, j]] = True
            if not (present[i] and present[j]):
                skipped += 1
                continue
            done = step([i, j], [seeds[2 * t], seeds[2 * t + 1]])
            if len(done) == 2:
                flats[[i, j]] = mix(np.full((1, 2), 0.5), flats[[i, j]])[0]
                stats[[i, j]] = mix(np.full((1, 2), 0.5), stats[[i, j]])[0]
                sent[[i, j]] += self.model_bytes
        for k in range(len(present)):
            if status[k] == "trained" and not drawn[k]:
                status[k] = "idle"
        return {"ticks": float(self.ticks), "ticks_skipped": float(skipped)}

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, state: GossipState, data: Any, peer: int | None = None) -> dict[str, float]:
        """Evaluate the average model (``peer=None``) or peer ``peer``'s (0-based) on ``data``.

        FedAvg's federated evaluation (:meth:`fedr.learning.FedAvgProcess.evaluate`):
        example-weighted metrics over the clients of ``data``.
        """
        state = self.check_state(state)
        weights = state.average() if peer is None else state.peer(peer)
        return self._inner.evaluate(weights, data)


def build_gossip(
    model_fn: Callable[[], Model],
    client_optimizer_fn: Callable[[], Any],
    graph: Graph,
    *,
    weights: Any = None,
    mode: Mode = "sync",
    ticks: int | None = None,
    local_epochs: int = 1,
    executor: Any = None,
    workers: int | None = None,
    seed: int | None = None,
) -> GossipProcess:
    """Build gossip learning on ``graph``: no server, each peer trains its own model and mixes with its neighbours.

    Args:
        model_fn: As in :func:`fedr.learning.build_weighted_fed_avg`: builds a
            fresh model, ``from_keras_model(...)``, at every call.
        client_optimizer_fn: The peers' local optimizer, fresh for every local
            step (as FedAvg's clients'), e.g. ``optimizer_fn("sgd", 0.02)``.
        graph: The peers and their links (:func:`ring`, :func:`torus`,
            :func:`random_regular`, :func:`complete`, :func:`from_edges`,
            :func:`from_adjacency`).
        weights: The synchronous mixing matrix: None or
            ``"metropolis_hastings"`` (the default, Xiao & Boyd 2004),
            ``"uniform"`` (1/n, complete graphs only), or a symmetric doubly
            stochastic ``(n, n)`` matrix zero between non-neighbours (checked).
        mode: ``"sync"`` (D-PSGD: every peer trains, then all mix) or
            ``"async"`` (pairwise gossip: ``ticks`` random edges a round,
            each pair trains and averages).
        ticks: Asynchronous: ticks per round, default ``n // 2`` (each peer
            trains about once a round, as in a synchronous round).
        local_epochs: Passes over its data a peer makes per local step.
        executor: Who runs the local steps: ``fedr.executors.threads()``
            (default), ``serial()`` or ``ray()``; the numbers do not depend on it.
        workers: Shorthand for ``executor=fedr.executors.threads(workers)``.
        seed: With a seed, the initial model (FedAvg's, for the same seed),
            every local step's randomness (FedAvg's client seed for (seed,
            round, peer)) and the asynchronous edges derive from it.

    Returns:
        A :class:`GossipProcess` (``initialize``, ``next``, ``evaluate``); train it with :func:`fedr.gossip.fit`.

    Raises:
        FedTypeError: ``graph`` is not a graph, or an argument of the wrong kind.
        FedValueError: a bad mixing matrix (the message says what is wrong:
            not symmetric, not stochastic, weight between non-neighbours, no
            mixing), a bad ``mode`` or ``ticks``, or FedAvg's refusals.
    """
    if workers is not None:
        if executor is not None:
            raise FedValueError("workers: give `workers` or `executor`, not both")
        from fedr.executors import threads

        executor = threads(workers)
    return GossipProcess(model_fn, client_optimizer_fn, graph, weights=weights, mode=mode, ticks=ticks,
                         local_epochs=local_epochs, executor=executor, seed=seed)
