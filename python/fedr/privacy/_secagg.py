"""Secure aggregation as aggregators: the server learns only the sum (Bonawitz et al. 2017).

:func:`secure_sum` sums the clients' updates and :func:`secure_mean` averages
them by example count, both through the protocol of
:mod:`fedr.privacy._secagg_protocol` (X25519 key agreement, HKDF, AES-GCM
encrypted Shamir shares, ChaCha20 masks, all from ``cryptography``). One round:

- ``start_round`` (the server, before any client trains) fixes the round's
  public parameters and runs key advertisement and key sharing: every client
  object makes its keys and encrypted shares, the server routes them.
- ``client_step`` (in the client's task, after training) quantizes the update
  and returns only its masked vector, a :class:`MaskedInput`.
- ``aggregate`` (the server) collects the masked vectors of the clients that
  finished, asks those survivors for the shares that unmask them (b_u of the
  survivors, s_u^SK of the dropped) and decodes the sum. Clients that dropped
  after sharing keys (a non-finite update, a crash) are recovered as long as
  at least ``threshold`` clients survive; with fewer, the round is refused
  with a :class:`~fedr.errors.FedValueError` and the state is unchanged.

Fixed point. Each coordinate is clipped to [-clip_range, clip_range] and
scaled by ``scale = M / clip_range`` with ``M = (2^(bits-1) - 1) // n`` for
``n`` clients in the round, then rounded stochastically (unbiased: up with
probability equal to the fractional part; the draws come from the round's
seed and the update itself, so seeded runs repeat; rounding noise is not a
secret). The n integers lie in [-M, M], so their sum lies in
[-(2^(bits-1) - 1), 2^(bits-1) - 1] and the sum modulo 2^bits decodes to it
exactly: no overflow whatever the updates. Each client's rounding error is
below 1/scale per coordinate, so the decoded sum is within ``n / scale =
n^2 clip_range / (2^(bits-1) - 1)`` of the sum of the clipped updates (plus
float32 rounding of the result): with bits=32, clip_range=1 and 100 clients,
4.7e-6. ``secure_mean`` sends ``num_examples * update`` and ``num_examples``
(its own, exact coordinate) and needs a bound ``max_examples`` on any client's
count: ``scale = M / (max_examples clip_range)``, hence its default of 64 bits.

The server sees only the masked vectors, which are uniformly distributed
modulo 2^bits whatever the updates, and the sum. Not protected: the number
of examples under ``secure_sum`` (not sent) and ``secure_mean`` (only their
total), which clients took part, and anything outside the aggregator
(training metrics and loss, which the process still averages in the clear).
Non-trainable variables (BatchNorm statistics) are not aggregated.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedr.aggregators import AggregateResult, Aggregator
from fedr.errors import FedTypeError, FedValueError
from fedr.privacy._secagg_protocol import (
    MaskedInput,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    run_setup,
)

__all__ = ["MaskedInput", "SecureMean", "SecureSum", "secure_mean", "secure_sum"]

NamedArrays = tuple[tuple[str, np.ndarray], ...]


def _positive(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise FedTypeError(f"{name}: expected a positive number, got {value!r}")
    if not (math.isfinite(float(value)) and float(value) > 0):
        raise FedValueError(f"{name}: expected a positive finite number, got {value!r}")
    return float(value)


# Why a threshold must be a majority (Bonawitz et al. 2017, section 4): every
# surviving client reveals, for each other client, the share of its self mask
# or that of its mask key, never both; two disjoint groups of t clients exist
# only when t <= n/2, and a server that told each group a different story
# about who dropped would learn both secrets of a client, hence its update.
_MAJORITY = (
    "secure aggregation needs t > n/2 survivors (Bonawitz et al. 2017): with t <= n/2 two disjoint "
    "groups of t clients could each be asked for one of a client's two secrets, and the server "
    "would unmask that client's update"
)


def _integer(value: Any, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise FedValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    return int(value)


@dataclass
class SecureRound:
    """One round's context: the server, the client objects (each with its own secrets), the encoding."""

    config: RoundConfig
    server: SecAggServer
    clients: list[SecAggClient]
    client_ids: tuple[str, ...]
    clip_range: float
    scale: float
    seed_words: np.ndarray | None  # from the round's seed: stochastic rounding
    positions: dict[str, list[int]] = field(default_factory=dict)
    claimed: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False

    def claim(self, client_id: str) -> SecAggClient:
        """The client object of the next position of ``client_id`` not yet used (repeated ids: one each)."""
        with self.lock:
            slots = self.positions.get(client_id, [])
            used = self.claimed.get(client_id, 0)
            if used >= len(slots):
                raise FedValueError(
                    f"client '{client_id}': not in this secure round's clients, or it sent its masked "
                    "update already"
                )
            self.claimed[client_id] = used + 1
            return self.clients[slots[used]]

    def rng(self, values: np.ndarray, extra: int) -> np.random.Generator:
        """Stochastic rounding's generator: from the round's seed and the values rounded."""
        if self.seed_words is None:
            return np.random.default_rng()
        digest = hashlib.sha256(np.ascontiguousarray(values).tobytes()).digest()
        words = np.frombuffer(digest, dtype="<u4")
        return np.random.default_rng(np.random.SeedSequence([*self.seed_words.tolist(), *words.tolist(), extra]))


class _Secure(Aggregator):
    """Shared part of secure_sum and secure_mean: the protocol and the fixed-point code."""

    averages_non_trainable = False
    _default_bits = 32

    def __init__(
        self,
        *,
        clip_range: float = 1.0,
        bits: int | None = None,
        threshold: int | float | None = None,
        neighbors: int | None = None,
    ) -> None:
        self.clip_range = _positive(clip_range, "clip_range")
        bits = self._default_bits if bits is None else bits
        if bits not in (32, 64) or isinstance(bits, bool):
            raise FedValueError(f"bits: expected 32 or 64 (sums modulo 2^bits), got {bits!r}")
        self.bits = int(bits)
        if threshold is not None:
            if isinstance(threshold, float | np.floating):
                if not 0.5 < float(threshold) <= 1:
                    raise FedValueError(
                        f"threshold: a fraction must be in (0.5, 1], got {threshold!r}; {_MAJORITY}"
                    )
                threshold = float(threshold)
            else:
                if isinstance(threshold, int | np.integer) and not isinstance(threshold, bool) and threshold == 1:
                    raise FedValueError(
                        f"threshold: expected an integer >= 2, got 1; {_MAJORITY} (a round has at least 2)"
                    )
                threshold = _integer(threshold, "threshold", 2)
        self.threshold = threshold
        if neighbors is not None:
            neighbors = _integer(neighbors, "neighbors", 2)
            if neighbors % 2:
                raise FedValueError(f"neighbors: expected an even number (a circulant graph), got {neighbors}")
        self.neighbors = neighbors

    # -- the round's parameters

    def round_threshold(self, n: int) -> int:
        """The threshold for a round of ``n`` clients (within a neighbourhood with ``neighbors``)."""
        size = n if self.neighbors is None or self.neighbors >= n - 1 else self.neighbors + 1
        if self.threshold is None:
            return min(size, max(2, math.ceil(2 * size / 3)))
        if isinstance(self.threshold, float):
            return min(size, max(1, math.ceil(self.threshold * size)))
        return self.threshold

    def _levels(self, n: int) -> int:
        """M: each client's integers lie in [-M, M], so n of them cannot overflow 2^(bits-1) - 1."""
        return (2 ** (self.bits - 1) - 1) // n

    def _scale(self, n: int, clip_range: float) -> float:
        return self._levels(n) / clip_range

    def start_round(
        self,
        state: NamedArrays,
        client_ids: Sequence[str],
        *,
        seed: np.random.SeedSequence | None = None,
        clip_range: float | None = None,
    ) -> SecureRound:
        """Fix the round's parameters and run key advertisement and sharing for ``client_ids``.

        Args:
            clip_range: This round's coordinate bound instead of the
                constructor's (e.g. the current clip of adaptive DP clipping,
                which bounds every coordinate of an L2-clipped update).
        """
        ids = tuple(str(c) for c in client_ids)
        n = len(ids)
        if n < 2:
            raise FedValueError(
                f"secure aggregation needs at least 2 clients in a round, got {n}: the sum of one "
                "client is its update"
            )
        clip = self.clip_range if clip_range is None else _positive(clip_range, "clip_range")
        threshold = self.round_threshold(n)
        size = n if self.neighbors is None or self.neighbors >= n - 1 else self.neighbors + 1
        if threshold > size:
            raise FedValueError(
                f"threshold: {threshold} is more than the {size} clients of a round of {n} "
                f"(neighbours included): lower it or select more clients"
            )
        if 2 * threshold <= size:
            raise FedValueError(
                f"threshold: {threshold} is not more than half of the {size} clients of a round of {n} "
                f"(neighbours included); {_MAJORITY}: raise it or select fewer clients"
            )
        graph_rng = None
        seed_words = None
        if seed is not None:
            seed_words = np.asarray(seed.generate_state(4), dtype=np.uint32)
            graph_rng = np.random.default_rng(np.random.SeedSequence([*seed_words.tolist(), 1]))
        config = RoundConfig.build(n, threshold, self.bits, neighbors=self.neighbors, rng=graph_rng)
        self._check_round(n)
        server, clients = run_setup(config)
        positions: dict[str, list[int]] = {}
        for i, cid in enumerate(ids):
            positions.setdefault(cid, []).append(i)
        return SecureRound(config, server, clients, ids, clip, self._scale(n, clip), seed_words, positions)

    def _check_round(self, n: int) -> None:
        if self._levels(n) < 1:
            raise FedValueError(f"bits: {self.bits} bits cannot hold the sum of {n} clients")

    def _context(self, context: Any) -> SecureRound:
        if not isinstance(context, SecureRound):
            raise FedValueError(
                f"context: expected the round context from {self!r}.start_round(...), got {type(context).__name__}"
            )
        return context

    def _quantize(self, values: np.ndarray, ctx: SecureRound, rng: np.random.Generator) -> np.ndarray:
        """Stochastic rounding of ``values * scale`` to int64 in [-M, M] (M: the round's levels)."""
        scaled = values * ctx.scale
        low = np.floor(scaled)
        up = rng.random(scaled.shape) < (scaled - low)
        levels = self._levels(ctx.config.num_clients)
        # Within [-M, M] in exact arithmetic; the clip guards float64 rounding at the edges.
        return np.clip((low + up).astype(np.int64), -levels, levels)

    def _encode(self, delta: np.ndarray, num_examples: int, ctx: SecureRound) -> np.ndarray:
        raise NotImplementedError

    def client_step(
        self,
        state: NamedArrays,
        delta: np.ndarray,
        *,
        client_id: str = "",
        num_examples: int = 0,
        context: Any = None,
    ) -> MaskedInput:
        """Quantize and mask the client's update; only the masked vector leaves the client."""
        ctx = self._context(context)
        client = ctx.claim(str(client_id))
        delta = np.asarray(delta)
        if delta.ndim != 1 or delta.dtype.kind != "f":
            raise FedValueError(f"delta: expected a float vector, got {delta.dtype} {delta.shape}")
        encoded = self._encode(delta, int(num_examples), ctx)
        # int64 -> two's complement modulo 2^bits
        return client.mask(encoded.astype(np.uint64).astype(np.dtype(f"<u{self.bits // 8}")))

    def _unmask(self, outputs: Sequence[Any], ctx: SecureRound) -> tuple[np.ndarray, dict[str, float]]:
        """The server's side: the decoded signed sum (float64) of the survivors, and metrics."""
        if not outputs:
            raise FedValueError("outputs: expected at least one client output, got none")
        inputs = []
        for out in outputs:
            m = out.delta
            if not isinstance(m, MaskedInput):
                raise FedTypeError(
                    f"client '{out.client_id}': expected its masked update (from client_step), got "
                    f"{type(m).__name__}"
                )
            inputs.append(m)
        indices = [m.index for m in inputs]
        if len(set(indices)) != len(indices):
            raise FedValueError("outputs: a client's masked update appears twice")
        server, config = ctx.server, ctx.config
        survivors = sorted(indices)
        names = [ctx.client_ids[u - 1] for u in survivors]
        dropped = sorted(server.shared - set(survivors))
        missing = server.needs(survivors)
        if missing:
            if self.neighbors is None or self.neighbors >= config.num_clients - 1:
                what = f"only {len(survivors)} of {config.num_clients} clients"
            else:
                u, have, _ = missing[0]
                what = (
                    f"only {have} clients of the neighbourhood of client '{ctx.client_ids[u - 1]}' "
                    f"(of {len(config.neighbors[u - 1]) + 1})"
                )
            raise FedValueError(
                f"secure aggregation: {what} sent their masked update ({', '.join(names)}), fewer than "
                f"the threshold {config.threshold}; the masks cannot be removed, so the round is refused "
                f"and the state is unchanged (dropped: {', '.join(ctx.client_ids[u - 1] for u in dropped)})"
            )
        if ctx.done:
            raise FedValueError("context: this secure round was aggregated already; start a new round")
        ctx.done = True
        request = server.collect_masked(inputs)
        responses = [ctx.clients[u - 1].unmask(request) for u in request.survivors]
        total = server.unmask(responses)
        signed = total.view(np.int32 if self.bits == 32 else np.int64).astype(np.float64)
        metrics = {
            "secure_clients": float(len(survivors)),
            "secure_dropped": float(len(dropped)),
            "secure_threshold": float(config.threshold),
        }
        return signed, metrics


class SecureSum(_Secure):
    """The sum of the clients' updates under secure aggregation (see :func:`secure_sum`)."""

    is_sum = True  # differential privacy's inner sum

    def _encode(self, delta: np.ndarray, num_examples: int, ctx: SecureRound) -> np.ndarray:
        clipped = np.clip(delta.astype(np.float64), -ctx.clip_range, ctx.clip_range)
        return self._quantize(clipped, ctx, ctx.rng(delta, 0))

    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[Any],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        ctx = self._context(context)
        signed, metrics = self._unmask(outputs, ctx)
        return AggregateResult(state, (signed / ctx.scale).astype(np.float32), metrics)

    def __repr__(self) -> str:
        extra = f", neighbors={self.neighbors}" if self.neighbors is not None else ""
        return f"secure_sum(clip_range={self.clip_range:g}, bits={self.bits}, threshold={self.threshold!r}{extra})"


class SecureMean(_Secure):
    """The example-weighted mean of the clients' updates under secure aggregation (see :func:`secure_mean`)."""

    _default_bits = 64

    def __init__(self, *, max_examples: int = 2**24, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_examples = _integer(max_examples, "max_examples", 1)

    def _scale(self, n: int, clip_range: float) -> float:
        return self._levels(n) / (self.max_examples * clip_range)

    def _check_round(self, n: int) -> None:
        if self._levels(n) < self.max_examples:
            raise FedValueError(
                f"max_examples: {self.max_examples} examples per client times {n} clients do not fit in "
                f"{self.bits} bits; use bits=64 or a lower max_examples"
            )

    def _encode(self, delta: np.ndarray, num_examples: int, ctx: SecureRound) -> np.ndarray:
        if not 0 < num_examples <= self.max_examples:
            raise FedValueError(
                f"num_examples: {num_examples} is outside 1..max_examples = {self.max_examples} of {self!r}"
            )
        clipped = np.clip(delta.astype(np.float64), -ctx.clip_range, ctx.clip_range)
        # |w x scale| <= max_examples clip_range scale = M: within [-M, M] as for the sum.
        values = self._quantize(clipped * num_examples, ctx, ctx.rng(delta, num_examples))
        return np.append(values, np.int64(num_examples))  # the weight's own, exact coordinate

    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[Any],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        ctx = self._context(context)
        signed, metrics = self._unmask(outputs, ctx)
        weight = signed[-1]
        update = (signed[:-1] / ctx.scale / weight).astype(np.float32)
        metrics["secure_num_examples"] = float(weight)
        return AggregateResult(state, update, metrics)

    def __repr__(self) -> str:
        extra = f", neighbors={self.neighbors}" if self.neighbors is not None else ""
        return (
            f"secure_mean(clip_range={self.clip_range:g}, bits={self.bits}, threshold={self.threshold!r}, "
            f"max_examples={self.max_examples}{extra})"
        )


_ARGS_DOC = """
    Args:
        clip_range: Each coordinate is clipped to [-clip_range, clip_range]
            before quantization; choose it above the largest coordinate of an
            update (under DP, the L2 clip bounds every coordinate).
        bits: 32 or 64: sums are modulo 2^bits. Fixed point with
            M = (2^(bits-1) - 1) // n levels per client for n clients, so the
            sum cannot overflow.
        threshold: How many clients must survive (send their masked update)
            to unmask the sum; more than half of the round's n clients
            (t > n/2, Bonawitz et al. 2017: with t <= n/2 the server could
            learn both secrets of a client from two disjoint groups and
            unmask its update), so a round with t <= n/2 is refused. An int
            >= 2, a fraction of the round's clients in (0.5, 1], or None for
            ceil(2n/3) (at least 2): up to a third of the
            clients may drop; the server with fewer than ``threshold`` clients
            colluding learns nothing more than the sum (Bonawitz et al. 2017,
            Theorem 6.3). With ``neighbors``, n is the neighbourhood's size.
        neighbors: None (default) masks every pair of clients: O(n^2) masks
            per round. An even k builds a k-regular graph over a random order
            of the round's clients (SecAgg+, Bell et al. 2020): each client
            masks with and shares to its k neighbours only, O(n k) work; the
            threshold then applies to each client and its neighbours.
"""


def secure_sum(
    *,
    clip_range: float = 1.0,
    bits: int = 32,
    threshold: int | float | None = None,
    neighbors: int | None = None,
) -> SecureSum:
    """The sum of the clients' updates, computed by secure aggregation (Bonawitz et al. 2017).

    The server learns only the (unweighted) sum: each client sends its update
    quantized and masked with pairwise masks that cancel in the sum and a self
    mask the survivors help remove. Clients that drop after sharing keys are
    recovered while at least ``threshold`` survive. Pass it as the ``inner``
    sum of :func:`fedr.privacy.gaussian_fixed` or
    :func:`fedr.privacy.gaussian_adaptive`; on its own, FedAvg would apply the
    sum, not a mean (use :func:`secure_mean`).

    The result is within n^2 clip_range / (2^(bits-1) - 1) of the sum of the
    clipped updates per coordinate (stochastic rounding; n clients).
    {args}
    Returns:
        An :class:`~fedr.aggregators.Aggregator` reporting ``secure_clients``
        (survivors), ``secure_dropped`` and ``secure_threshold``.

    Raises:
        FedValueError: an argument out of range; at a round, fewer than 2
            clients or a threshold not above half of them, or (in
            ``aggregate``) fewer survivors than the threshold.
    """
    return SecureSum(clip_range=clip_range, bits=bits, threshold=threshold, neighbors=neighbors)


def secure_mean(
    *,
    clip_range: float = 1.0,
    bits: int = 64,
    threshold: int | float | None = None,
    neighbors: int | None = None,
    max_examples: int = 2**24,
) -> SecureMean:
    """The example-weighted mean of the clients' updates under secure aggregation, FedAvg's mean.

    Each client sends ``num_examples * update`` and ``num_examples`` (an exact
    coordinate of its own) through the secure sum; the server divides the two
    sums, so it learns only the total of the weighted updates and the total
    number of examples. See :func:`secure_sum` for the protocol.
    {args}
        max_examples: The most examples any client may report in a round (a
            client above it fails the round); it bounds the fixed point:
            resolution clip_range * max_examples / M per example.

    Returns:
        An :class:`~fedr.aggregators.Aggregator` reporting ``secure_clients``,
        ``secure_dropped``, ``secure_threshold`` and ``secure_num_examples``.

    Raises:
        FedValueError: as :func:`secure_sum`, and when ``max_examples`` times
            the round's clients does not fit in ``bits``.
    """
    return SecureMean(
        clip_range=clip_range, bits=bits, threshold=threshold, neighbors=neighbors, max_examples=max_examples
    )


secure_sum.__doc__ = (secure_sum.__doc__ or "").replace("{args}", _ARGS_DOC.rstrip() + "\n")
secure_mean.__doc__ = (secure_mean.__doc__ or "").replace("{args}", _ARGS_DOC.rstrip())
