"""Secure aggregation as aggregators: the server learns only the sum (Bonawitz et al. 2017).

:func:`secure_sum` sums the clients' updates and :func:`secure_mean` averages
them by example count, both through the protocol of
:mod:`fedr.privacy._secagg_protocol` (X25519 key agreement, HKDF, AES-GCM
encrypted Shamir shares, ChaCha20 masks, all from ``cryptography``). One round:

- ``start_round`` (the server, before any client trains) fixes the round's
  public parameters (:class:`RoundConfig`); the server side of the round holds
  no secret of any client.
- Stages before training, carried by the driver as messages
  (``stages_before``): ``advertise`` (each client makes its keys *where it
  runs* and sends its public keys) and ``share`` (each client sends its
  encrypted Shamir shares; the server routes ciphertexts it cannot read). A
  client's secrets stay in its *session*, which the carrier keeps where the
  client runs (its thread's store, its Ray actor, its Flower node).
- ``encode`` (in the client's task, after training) quantizes the update and
  returns only its masked vector, a :class:`MaskedInput`.
- A stage after training (``stages_after``): ``unmask``. The server asks the
  clients whose masked vector arrived for the shares that unmask them (b_u of
  the survivors, s_u^SK of the dropped); ``aggregate`` decodes the sum.
  Clients that dropped after sharing keys (a non-finite update, a crash, no
  answer) are recovered as long as at least ``threshold`` clients survive;
  with fewer, the round is refused with a :class:`~fedr.errors.FedValueError`
  and the state is unchanged.

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

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedr.aggregators import AggregateResult, Aggregator
from fedr.errors import FedTypeError, FedValueError
from fedr.privacy._secagg_protocol import (
    AdvertiseKeys,
    MaskedInput,
    RoundConfig,
    SecAggClient,
    SecAggServer,
    UnmaskRequest,
    UnmaskResponse,
)
from fedr.protocol.messages import ClientFailure
from fedr.privacy._secagg_round import AdvertiseRequest, SecureRound, SecureView, _MAJORITY, _integer, _positive  # noqa: F401 - split out, names kept here

__all__ = ["MaskedInput", "SecureMean", "SecureSum", "SecureView", "secure_mean", "secure_sum"]

NamedArrays = tuple[tuple[str, np.ndarray], ...]


class _Secure(Aggregator):
    """Shared part of secure_sum and secure_mean: the protocol and the fixed-point code."""

    averages_non_trainable = False
    _default_bits = 32
    stages_before = ("advertise", "share")
    stages_after = ("unmask",)

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
        noise_stddev: float = 0.0,
        noise_words: tuple[int, ...] | None = None,
    ) -> SecureRound:
        """Fix the round's parameters and run key advertisement and sharing for ``client_ids``.

        Args:
            clip_range: This round's coordinate bound instead of the
                constructor's (e.g. the current clip of adaptive DP clipping,
                which bounds every coordinate of an L2-clipped update).
            noise_stddev: Distributed DP (sums only): the standard deviation,
                in the update's units, of the integer noise share each client
                adds inside its masked vector (:func:`fedr.privacy.distributed_dp`).
            noise_words: Reproducible noise shares from these words (tests only).
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
        scale = self._scale(n, clip)
        noise = 0.0
        if noise_stddev:
            scale = self._noisy_scale(n, clip, float(noise_stddev))
            noise = float(noise_stddev) * scale
        return SecureRound(config, SecAggServer(config), ids, clip, scale, seed_words, noise,
                           None if noise_words is None else tuple(int(w) for w in noise_words))

    # Distributed DP: the noised sum must still fit in 2^(bits-1) - 1 (headroom of
    # _HEADROOM standard deviations of the total noise: overflow below 1e-30 per
    # coordinate), and a share's Poisson rate stay where numpy draws it exactly (at 1e15 its
    # variance is 20% off; below 1e10, right to 1e-3).
    _HEADROOM = 12.0
    _MAX_NOISE_INTEGERS = 2.0**17

    def _noisy_scale(self, n: int, clip: float, noise_stddev: float) -> float:
        """The fixed-point scale with room for n clients' noise shares (sums only)."""
        if not self.is_sum:
            raise FedValueError(f"{self!r}: distributed DP noise needs a secure sum (secure_sum), not a mean")
        room = 2 ** (self.bits - 1) - 1 - n  # n: each client's rounding up
        scale = room / (n * clip + self._HEADROOM * math.sqrt(n) * noise_stddev)
        return min(scale, self._MAX_NOISE_INTEGERS / noise_stddev)

    def _check_round(self, n: int) -> None:
        if self._levels(n) < 1:
            raise FedValueError(f"bits: {self.bits} bits cannot hold the sum of {n} clients")

    def _context(self, context: Any) -> SecureRound:
        if not isinstance(context, SecureRound):
            raise FedValueError(
                f"context: expected the round context from {self!r}.start_round(...), got {type(context).__name__}"
            )
        return context

    def _quantize(self, values: np.ndarray, view: SecureView, rng: np.random.Generator) -> np.ndarray:
        """Stochastic rounding of ``values * scale`` to int64 in [-M, M] (M: the round's levels)."""
        scaled = values * view.scale
        low = np.floor(scaled)
        up = rng.random(scaled.shape) < (scaled - low)
        levels = self._levels(view.config.num_clients)
        # Within [-M, M] in exact arithmetic; the clip guards float64 rounding at the edges.
        return np.clip((low + up).astype(np.int64), -levels, levels)

    def _encode(self, delta: np.ndarray, num_examples: int, view: SecureView) -> np.ndarray:
        raise NotImplementedError

    # -- the stages: the server's side (requests, results) and the client's (client_stage)

    def stage_requests(self, stage: str, context: Any, outputs: Sequence[Any] | None = None) -> dict[int, Any]:
        """What the server sends each client position (0-based) in ``stage``: public messages only."""
        ctx = self._context(context)
        if stage == "advertise":
            return {i: AdvertiseRequest(i + 1, ctx.config) for i in range(ctx.config.num_clients)}
        if stage == "share":
            keys = tuple(ctx.server.keys[u] for u in sorted(ctx.server.keys))
            return {u - 1: keys for u in sorted(ctx.server.keys)}
        if stage == "unmask":
            request = self._collect(outputs or (), ctx)
            return {u - 1: request for u in request.survivors}
        raise FedValueError(f"stage: {self!r} has no stage {stage!r}")

    def stage_results(self, stage: str, context: Any, replies: dict[int, Any]) -> None:
        """Take the clients' replies of ``stage`` (position -> reply, or a failure: that client dropped)."""
        ctx = self._context(context)
        expected = {"advertise": AdvertiseKeys, "share": tuple | list, "unmask": UnmaskResponse}.get(stage)
        if expected is None:
            raise FedValueError(f"stage: {self!r} has no stage {stage!r}")
        good = {}
        for i, r in replies.items():
            # A failure, or a reply that is not this stage's message: that client drops out, named.
            if isinstance(r, ClientFailure):
                ctx.lost[i] = f"{stage}: {r.error}"
            elif not isinstance(r, expected):
                ctx.lost[i] = f"{stage}: a reply of {type(r).__name__}, not this stage's message"
            else:
                good[i] = r
        if stage == "advertise":
            adverts = list(good.values())
            try:
                ctx.server.collect_keys(adverts)
            except FedValueError as err:
                raise self._refused(ctx, str(err)) from None
        elif stage == "share":
            ctx.inbox = {u: tuple(v) for u, v in ctx.server.route_shares(list(good.values())).items()}
        else:
            ctx.responses = {r.index: r for r in good.values()}

    def client_stage(self, stage: str, payload: Any, session: SecAggClient | None) -> tuple[Any, Any]:
        """The client's side of ``stage``: ``(session, reply)``; the session keeps the client's secrets."""
        if stage == "advertise":
            if not isinstance(payload, AdvertiseRequest):
                raise FedValueError(f"stage advertise: expected an AdvertiseRequest, got {type(payload).__name__}")
            session = SecAggClient(payload.index, payload.config)  # keys made here, where the client runs
            return session, session.advertise()
        if not isinstance(session, SecAggClient):
            raise FedValueError(f"stage {stage}: this client has no secure-aggregation session of this round")
        if stage == "share":
            return session, tuple(session.share_keys(payload))
        if stage == "unmask":
            if not isinstance(payload, UnmaskRequest):
                raise FedValueError(f"stage unmask: expected an UnmaskRequest, got {type(payload).__name__}")
            return session, session.unmask(payload)
        raise FedValueError(f"stage: {self!r} has no stage {stage!r}")

    def client_view(self, state: NamedArrays, context: Any, client_id: str, position: int = -1) -> SecureView:
        ctx = self._context(context)
        if not 0 <= position < ctx.config.num_clients:
            raise FedValueError(f"position: expected 0..{ctx.config.num_clients - 1}, got {position}")
        u = position + 1
        return SecureView(u, ctx.config, ctx.clip_range, ctx.scale, ctx.seed_words, ctx.inbox.get(u, ()),
                          ctx.noise_stddev, ctx.noise_words)

    def encode(self, view: Any, delta: np.ndarray, *, num_examples: int = 0, session: Any = None) -> MaskedInput:
        """Quantize and mask the client's update with its session's keys; only the masked vector leaves the client."""
        if not isinstance(view, SecureView):
            raise FedValueError(f"view: expected this round's SecureView, got {type(view).__name__}")
        if not isinstance(session, SecAggClient) or session.index != view.index:
            raise FedValueError(
                f"client {view.index}: no secure-aggregation session of this round where it runs (its keys "
                "are made in the advertise stage on the client); it cannot mask its update"
            )
        delta = np.asarray(delta)
        if delta.ndim != 1 or delta.dtype.kind != "f":
            raise FedValueError(f"delta: expected a float vector, got {delta.dtype} {delta.shape}")
        if view.shares:
            session.receive_shares(view.shares)
        encoded = self._encode(delta, int(num_examples), view)
        # int64 -> two's complement modulo 2^bits
        return session.mask(encoded.astype(np.uint64).astype(np.dtype(f"<u{self.bits // 8}")))

    def client_step(self, state: NamedArrays, delta: np.ndarray, **kwargs: Any) -> Any:
        raise FedValueError(
            f"{self!r}: a client's step needs its own session of the round's key stages (made where the client "
            "runs); run rounds through a process (learning.build_weighted_fed_avg) or fedr.protocol.run_locally"
        )

    def _refused(self, ctx: SecureRound, why: str) -> FedValueError:
        lost = "; ".join(f"{ctx.client_ids[i]} ({e})" for i, e in sorted(ctx.lost.items()))
        return FedValueError(
            f"secure aggregation: {why}; the masks cannot be removed, so the round is refused and the state "
            f"is unchanged" + (f" (dropped: {lost})" if lost else "")
        )

    def _collect(self, outputs: Sequence[Any], ctx: SecureRound) -> UnmaskRequest:
        """The server's side after training: check the masked vectors that arrived; whom to ask to unmask."""
        inputs = []
        for out in outputs:
            m = out.delta
            if not isinstance(m, MaskedInput):
                raise FedTypeError(
                    f"client '{out.client_id}': expected its masked update (from encode), got {type(m).__name__}"
                )
            inputs.append(m)
        indices = [m.index for m in inputs]
        if len(set(indices)) != len(indices):
            raise FedValueError("outputs: a client's masked update appears twice")
        server, config = ctx.server, ctx.config
        survivors = sorted(indices)
        names = [ctx.client_ids[u - 1] for u in survivors]
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
            dropped = sorted(set(range(1, config.num_clients + 1)) - set(survivors))
            raise FedValueError(
                f"secure aggregation: {what} sent their masked update ({', '.join(names)}), fewer than "
                f"the threshold {config.threshold}; the masks cannot be removed, so the round is refused "
                f"and the state is unchanged (dropped: {', '.join(ctx.client_ids[u - 1] for u in dropped)})"
            )
        if ctx.done:
            raise FedValueError("context: this secure round was aggregated already; start a new round")
        return server.collect_masked(inputs)

    def _unmask(self, outputs: Sequence[Any], ctx: SecureRound) -> tuple[np.ndarray, dict[str, float]]:
        """The server's side: the decoded signed sum (float64) of the survivors, and metrics."""
        if not outputs:
            raise FedValueError("outputs: expected at least one client output, got none")
        if ctx.done:
            raise FedValueError("context: this secure round was aggregated already; start a new round")
        if not ctx.server.inputs:
            raise FedValueError(
                "secure aggregation: the unmask stage did not run (the server has no masked inputs); run rounds "
                "through a process (learning.build_weighted_fed_avg) or fedr.protocol.run_locally"
            )
        try:
            total = ctx.server.unmask(list(ctx.responses.values()))
        except FedValueError as err:
            raise self._refused(ctx, f"too few clients answered the unmask stage ({err})") from None
        ctx.done = True
        signed = total.view(np.int32 if self.bits == 32 else np.int64).astype(np.float64)
        survivors = set(ctx.server.inputs)
        metrics = {
            "secure_clients": float(len(survivors)),
            "secure_dropped": float(ctx.config.num_clients - len(survivors)),
            "secure_threshold": float(ctx.config.threshold),
        }
        return signed, metrics


class SecureSum(_Secure):
    """The sum of the clients' updates under secure aggregation (see :func:`secure_sum`)."""

    is_sum = True  # differential privacy's inner sum

    def _encode(self, delta: np.ndarray, num_examples: int, view: SecureView) -> np.ndarray:
        clipped = np.clip(delta.astype(np.float64), -view.clip_range, view.clip_range)
        values = self._quantize(clipped, view, view.rng(delta, 0))
        if view.noise_stddev > 0:
            # Distributed DP: the client's noise share joins its integers before
            # masking, so the only sum the server ever decodes is already noised.
            values = values + view.noise_share(values.size)
        return values

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

    def _encode(self, delta: np.ndarray, num_examples: int, view: SecureView) -> np.ndarray:
        if not 0 < num_examples <= self.max_examples:
            raise FedValueError(
                f"num_examples: {num_examples} is outside 1..max_examples = {self.max_examples} of {self!r}"
            )
        clipped = np.clip(delta.astype(np.float64), -view.clip_range, view.clip_range)
        # |w x scale| <= max_examples clip_range scale = M: within [-M, M] as for the sum.
        values = self._quantize(clipped * num_examples, view, view.rng(delta, num_examples))
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


from fedr.privacy._secagg_api import secure_mean, secure_sum  # noqa: E402, F401 - split out, names kept here
