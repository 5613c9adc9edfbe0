"""Seeds: every random choice of a seeded process derives from (seed, purpose, round, client).

numpy's ``SeedSequence`` mixes the keys into independent streams (O'Neill's
seed-sequence hashing), so the draws for one client in one round do not depend
on which other clients took part or on the order they ran.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from fedr.errors import FedValueError

__all__ = ["INIT", "CLIENT", "AGGREGATE", "SAMPLE", "check_seed", "client_key", "derive"]

# Purposes, so that streams for different jobs never coincide.
INIT, CLIENT, AGGREGATE, SAMPLE = 0, 1, 2, 3


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
