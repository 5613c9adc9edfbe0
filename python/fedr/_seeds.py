"""Seeds: every random choice of a seeded process's *learning* derives from (seed, purpose, round, client).

numpy's ``SeedSequence`` mixes the keys into independent streams (O'Neill's
seed-sequence hashing), so the draws for one client in one round do not depend
on which other clients took part or on the order they ran.

What leaves the server is keyed: a client's seed (whose words a remote node
receives) is HMAC-SHA256 of (round, client, repeat) under a key that only the
server derives from the process seed (:func:`client_seed`), so a node cannot
invert its words into the seed. The key is a function of the seed, so whoever
guesses a small seed (42) can still recompute every client's *learning*
randomness (initial weights, Dropout masks, sampling); differential privacy's
noise and secure aggregation's keys never come from the seed (they come from
the operating system's CSPRNG), so guessing the seed reveals neither.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from typing import Any

import numpy as np

from fedr.errors import FedValueError

__all__ = ["INIT", "CLIENT", "AGGREGATE", "SAMPLE", "check_seed", "client_key", "client_seed", "derive", "server_key"]

# Purposes, so that streams for different jobs never coincide.
INIT, CLIENT, AGGREGATE, SAMPLE = 0, 1, 2, 3
# The purpose of the server's key for client seeds (never sent anywhere).
_KEY = 4


def check_seed(seed: Any, name: str = "seed") -> int | None:
    """Return ``seed`` as a non-negative int, or None; raise FedValueError otherwise."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise FedValueError(f"{name}: expected a non-negative integer or None, got {seed!r}")
    return int(seed)


def client_key(client_id: str) -> int:
    """A stable 256-bit key of a client's id (SHA-256 of its UTF-8 bytes), free of collisions in practice."""
    return int.from_bytes(hashlib.sha256(client_id.encode("utf-8")).digest(), "big")


def derive(seed: int, *keys: int) -> np.random.SeedSequence:
    """The seed sequence of ``seed`` and ``keys`` (each a non-negative int)."""
    return np.random.SeedSequence([seed, *keys])


def server_key(seed: int) -> bytes:
    """The 256-bit HMAC key of a process's client seeds: derived from ``seed`` on the server, never sent."""
    return derive(seed, _KEY).generate_state(8, np.uint32).tobytes()


def client_seed(key: bytes, round_num: int, client_id: str, repeat: int = 0) -> np.random.SeedSequence:
    """A client's seed for a round: a SeedSequence of HMAC-SHA256(key, round, client, repeat).

    HMAC is a pseudo-random function: without ``key``, the seed (and the words
    a node receives from it) tells nothing about the key or the process seed.
    """
    message = struct.pack(">QQ", round_num, repeat) + client_key(client_id).to_bytes(32, "big")
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return np.random.SeedSequence(int.from_bytes(digest, "big"))
