"""A secure round's records: the server's side (SecureRound), a client's public view, the advertise request, checks."""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedr.errors import FedTypeError, FedValueError
from fedr.privacy._noise import noise_generator
from fedr.privacy._secagg_protocol import EncryptedShare, RoundConfig, SecAggServer, UnmaskResponse


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
    """One round's server side: the public configuration, the server's routing and sums; no client's secret."""

    config: RoundConfig
    server: SecAggServer
    client_ids: tuple[str, ...]
    clip_range: float
    scale: float
    seed_words: np.ndarray | None  # from the round's seed: stochastic rounding
    noise_stddev: float = 0.0  # distributed DP: each client's noise share, in integers
    noise_words: tuple[int, ...] | None = None  # reproducible noise shares (tests only)
    inbox: dict[int, tuple[EncryptedShare, ...]] = field(default_factory=dict)
    responses: dict[int, UnmaskResponse] = field(default_factory=dict)
    lost: dict[int, str] = field(default_factory=dict)  # position -> why the client left the protocol
    done: bool = False


@dataclass(frozen=True)
class SecureView:
    """What one client needs to encode its update (all public): its index, the round, its routed shares."""

    index: int
    config: RoundConfig
    clip_range: float
    scale: float
    seed_words: np.ndarray | None
    shares: tuple[EncryptedShare, ...]
    noise_stddev: float = 0.0
    noise_words: tuple[int, ...] | None = None

    def rng(self, values: np.ndarray, extra: int) -> np.random.Generator:
        """Stochastic rounding's generator: from the round's seed and the values rounded."""
        if self.seed_words is None:
            return np.random.default_rng()
        digest = hashlib.sha256(np.ascontiguousarray(values).tobytes()).digest()
        words = np.frombuffer(digest, dtype="<u4")
        return np.random.default_rng(np.random.SeedSequence([*self.seed_words.tolist(), *words.tolist(), extra]))

    def noise_share(self, size: int) -> np.ndarray:
        """Distributed DP: this client's share of integer noise, Sk(λ, λ) with 2λ = ``noise_stddev``² per coordinate.

        Drawn where the client runs from the OS CSPRNG (fresh entropy: nobody,
        the server included, can recompute it), or from ``noise_words`` and
        the client's index when the noise was asked to be reproducible (tests).
        """
        if self.noise_words is None:
            rng = noise_generator(None, 0)
        else:
            rng = np.random.default_rng(np.random.SeedSequence([*self.noise_words, self.index]))
        lam = self.noise_stddev**2 / 2
        return rng.poisson(lam, size).astype(np.int64) - rng.poisson(lam, size).astype(np.int64)


@dataclass(frozen=True)
class AdvertiseRequest:
    """Stage ``advertise``, server -> client: the client's index (its Shamir point) and the round."""

    index: int
    config: RoundConfig
