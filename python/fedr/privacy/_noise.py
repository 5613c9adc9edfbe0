"""Where differential privacy's noise comes from: the operating system's CSPRNG, never the process seed.

DP noise must be unpredictable to everyone, the server's operator included:
whoever can recompute it can subtract it and read the noise-free sum. So each
release draws a fresh 128-bit seed from ``secrets`` (the OS CSPRNG,
``os.urandom``) for numpy's generator, independent of the process seed, the
round and the cohort: two releases from the same state never share noise.

Reproducible noise exists for tests only, asked for by name
(``noise_seed=``), and warns with :class:`ReproducibleNoiseWarning`.
"""

from __future__ import annotations

import secrets
import warnings
from typing import Any

import numpy as np

from fedr.errors import FedValueError, FedWarning

__all__ = ["ReproducibleNoiseWarning", "check_noise_seed", "noise_generator"]


class ReproducibleNoiseWarning(FedWarning):
    """DP noise from a ``noise_seed``: anyone who knows the seed can remove the noise, so there is no privacy."""


def check_noise_seed(noise_seed: Any, *, stacklevel: int = 3) -> int | None:
    """Return ``noise_seed`` as an int (warning that it voids the guarantee), or None.

    Raises:
        FedValueError: ``noise_seed`` is not a non-negative integer or None.
    """
    if noise_seed is None:
        return None
    if isinstance(noise_seed, bool) or not isinstance(noise_seed, int | np.integer) or noise_seed < 0:
        raise FedValueError(f"noise_seed: expected a non-negative integer or None, got {noise_seed!r}")
    warnings.warn(
        f"noise_seed = {int(noise_seed)}: the DP noise is reproducible, so anyone who knows or guesses "
        "the seed can remove it; this voids the differential privacy guarantee (use it for tests only)",
        ReproducibleNoiseWarning,
        stacklevel=stacklevel,
    )
    return int(noise_seed)


def noise_generator(noise_seed: int | None, round_num: int) -> np.random.Generator:
    """The generator of one release's noise: fresh OS entropy, or (noise_seed, round) when asked for."""
    if noise_seed is None:
        return np.random.default_rng(np.random.SeedSequence(secrets.randbits(128)))
    return np.random.default_rng(np.random.SeedSequence([noise_seed, round_num]))
