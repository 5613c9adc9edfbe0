"""The state of a gossip run (every peer's model) and what a round returns: plain values, no TensorFlow."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from fedr.errors import FedValueError
from fedr.learning.state import ModelWeights

__all__ = ["GossipOutput", "GossipState", "peer_index"]


@dataclass(frozen=True, eq=False)
class GossipState:
    """Every peer's model after a round; a value (read-only arrays), a new one each round.

    Attributes:
        template: The initial :class:`ModelWeights`: variable names and
            shapes, and the variables that are never mixed (integer and
            random-generator state).
        trainable: float32 ``(n, p)``: peer i's flat trainable weights in row i.
        statistics: float32 ``(n, s)``: peer i's float non-trainable
            variables (BatchNorm statistics), flat, in row i.
        averaged: The positions in ``template.non_trainable`` that
            ``statistics`` holds, in order.
        round_num: Rounds completed.
    """

    template: ModelWeights
    trainable: np.ndarray
    statistics: np.ndarray
    averaged: tuple[int, ...] = ()
    round_num: int = 0

    def __post_init__(self) -> None:
        for name in ("trainable", "statistics"):
            array = np.array(getattr(self, name), np.float32, copy=True)
            array.flags.writeable = False
            object.__setattr__(self, name, array)
        object.__setattr__(self, "averaged", tuple(int(i) for i in self.averaged))
        object.__setattr__(self, "round_num", int(self.round_num))

    @property
    def num_peers(self) -> int:
        """The number of peers."""
        return int(self.trainable.shape[0])

    def models(self) -> np.ndarray:
        """float32 ``(n, p + s)``: each peer's whole mixed state (weights, then statistics) in a row."""
        return np.concatenate([self.trainable, self.statistics], axis=1)

    def _weights(self, flat: np.ndarray, stats: np.ndarray) -> ModelWeights:
        values, start = list(self.template.non_trainable), 0
        for i in self.averaged:
            ref = values[i]
            values[i] = stats[start : start + ref.size].reshape(ref.shape).astype(ref.dtype)
            start += ref.size
        t = self.template
        return ModelWeights(t.with_trainable(flat), tuple(values), t.trainable_names, t.non_trainable_names)

    def peer(self, peer: int) -> ModelWeights:
        """Peer ``peer``'s (0-based) model as :class:`ModelWeights`, for evaluation or saving.

        Raises:
            FedValueError: ``peer`` is not a peer of the state.
        """
        i = peer_index(peer, self.num_peers, "peer")
        return self._weights(self.trainable[i], self.statistics[i])

    def average(self) -> ModelWeights:
        """The average model, ``x_bar = mean_i x_i`` (weights and statistics, in float64, cast to float32)."""
        return self._weights(
            self.trainable.astype(np.float64).mean(axis=0).astype(np.float32),
            self.statistics.astype(np.float64).mean(axis=0).astype(np.float32),
        )

    def __repr__(self) -> str:
        return f"GossipState(round_num={self.round_num}, num_peers={self.num_peers}, weights={self.trainable.shape[1]})"


class GossipOutput(NamedTuple):
    """What :meth:`GossipProcess.next` returns.

    Attributes:
        state: The new :class:`GossipState`.
        metrics: The round's numbers: the peers' training metrics and
            ``loss`` (example-weighted over the peers that trained, as FedAvg
            reports its clients'), ``num_examples``, ``num_peers`` (that
            trained), ``num_peers_failed``, ``num_peers_absent``,
            ``spectral_gap`` (of the round's mixing matrix over the present
            peers; asynchronous: of the expected tick), ``consensus_distance``
            (``mean_i ||x_i - x_bar||`` after mixing), ``bytes_sent`` (mean
            per peer this round) and, asynchronous, ``ticks`` and ``ticks_skipped``.
        peers: One dict per peer: ``peer`` (0-based), ``client_id``,
            ``status`` (``trained``, ``failed``, ``absent``; asynchronous also
            ``idle``: no tick drew it), ``loss`` and the metrics (NaN unless
            trained), ``num_examples``, ``bytes_sent``, ``distance`` (to the average).
        events: Dicts ``{"round", "peer", "event", "message"}``: a peer that
            failed (``failed``, with the error) or was absent (``absent``).
    """

    state: GossipState
    metrics: dict[str, float]
    peers: list[dict[str, Any]]
    events: list[dict[str, Any]]


def peer_index(peer: Any, n: int, argument: str) -> int:
    """``peer`` as an int if it is a peer of ``n`` (0-based); raise FedValueError naming ``argument`` otherwise."""
    if isinstance(peer, bool) or not isinstance(peer, int | np.integer) or not 0 <= peer < n:
        raise FedValueError(f"{argument}: expected a peer index in 0..{n - 1}, got {peer!r}")
    return int(peer)
