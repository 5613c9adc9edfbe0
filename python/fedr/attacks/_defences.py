"""The defences as the server sees them: the sum under secure aggregation, the noised sum under DP."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedr.protocol import run_locally


@dataclass(frozen=True)
class _Sent:
    client_id: str
    delta: Any
    num_examples: int


def _flatten(update: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, np.float32).ravel() for a in update])


def _unflatten(flat: np.ndarray, like: Sequence[np.ndarray]) -> tuple[np.ndarray, ...]:
    out, start = [], 0
    for a in like:
        out.append(np.asarray(flat[start : start + a.size], np.float64).reshape(a.shape))
        start += a.size
    return tuple(out)


def _plain_sum(updates: Sequence[Sequence[np.ndarray]]) -> tuple[np.ndarray, ...]:
    return tuple(np.sum([np.asarray(u[i], np.float64) for u in updates], axis=0) for i in range(len(updates[0])))


def _secure_sum(updates: Sequence[Sequence[np.ndarray]], *, seed: int) -> tuple[tuple[np.ndarray, ...], str]:
    """The sum the server learns under secure aggregation, and how it was computed.

    Through ``fedr.privacy.secure_sum`` when fedr exports it (masked,
    quantized updates; the server unmasks only their sum), else the plain sum:
    secure aggregation reveals exactly the sum (up to its quantization), so
    the plain sum is a faithful simulation of what the server learns.
    """
    try:
        from fedr.privacy import secure_sum
    except ImportError:
        return _plain_sum(updates), "plain sum"
    flats = [_flatten(u) for u in updates]
    bound = max(float(np.max(np.abs(f))) for f in flats)
    agg = secure_sum(clip_range=max(1.0, bound))
    ids = [f"client_{i}" for i in range(len(flats))]
    # Every stage of the protocol (keys, shares, masked inputs, unmasking), each client with its own keys.
    result, _, _ = run_locally(agg, agg.init(), ids, flats, seed=np.random.SeedSequence(seed))
    return _unflatten(np.asarray(result.update, np.float64), updates[0]), "fedr.privacy.secure_sum"


def _dp_sum(
    updates: Sequence[Sequence[np.ndarray]],
    *,
    noise_multiplier: float,
    clients_per_round: int,
    clip: float,
    seed: int,
) -> tuple[tuple[np.ndarray, ...], str]:
    """The noised sum DP-FedAvg reveals: the aggregate (noised sum / clients_per_round) times clients_per_round.

    Through ``fedr.privacy.gaussian_fixed`` (clip each update to ``clip`` in
    the client step; sum, add N(0, (z·clip)²) per coordinate, divide by
    ``clients_per_round`` in the aggregate), or the same in numpy if that
    aggregator is not available.
    """
    flats = [_flatten(u) for u in updates]
    try:
        from fedr.privacy import gaussian_fixed
    except ImportError:
        gaussian_fixed = None
    if gaussian_fixed is not None:
        import warnings

        from fedr.privacy import ReproducibleNoiseWarning

        # A demonstration of what the server sees, repeatable by its seed: reproducible
        # noise on purpose (it would void a real guarantee, hence fedr's warning, silenced here).
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ReproducibleNoiseWarning)
            agg = gaussian_fixed(noise_multiplier, clients_per_round, clip, noise_seed=seed)
        state = agg.init()
        ids = [f"client_{i}" for i in range(len(flats))]
        context = agg.start_round(state, ids, seed=np.random.SeedSequence(seed))
        sent = [
            _Sent(cid, agg.client_step(state, flat, client_id=cid, num_examples=1, context=context), 1)
            for cid, flat in zip(ids, flats, strict=True)
        ]
        result = agg.aggregate(state, sent, seed=np.random.SeedSequence(seed), context=context)
        total = np.asarray(result.update, np.float64) * clients_per_round
        via = "fedr.privacy.gaussian_fixed"
    else:  # the same mechanism, in numpy
        total = np.zeros(flats[0].size)
        for flat in flats:
            norm = float(np.linalg.norm(flat.astype(np.float64)))
            total += flat * (min(1.0, clip / norm) if norm > 0 else 1.0)
        total += np.random.default_rng(seed).normal(0.0, noise_multiplier * clip, total.shape)
        via = "numpy clip + Gaussian noise"
    return _unflatten(total, updates[0]), via
