"""Client sampling per round, seeded by (seed, round): fixed-size and Poisson."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fedr import _seeds
from fedr.errors import FedValueError

__all__ = ["sample_clients", "sample_clients_poisson"]


def sample_clients(
    clients: Sequence[Any], fraction: float, *, seed: int | None = None, round_num: int | None = None
) -> list[Any]:
    """Pick a seeded random fraction of the clients (at least one), kept in order.

    Args:
        clients: The population of clients.
        fraction: Share of clients to select, in (0, 1].
        seed: Seed of the generator; ``None`` draws fresh randomness.
        round_num: With a seed, the round the sample is for: each round then
            draws its own sample from (seed, round), e.g.
            ``sample_clients(population, 0.1, seed=1, round_num=state.round_num + 1)``.
            ``None`` uses the seed alone (the same sample every call).

    Returns:
        The selected clients, in their original order.

    Raises:
        FedValueError: ``fraction`` outside (0, 1], a bad seed, or no clients.
    """
    seed = _seeds.check_seed(seed)
    n = len(clients)
    if n == 0:
        raise FedValueError("clients: expected at least one client, got none")
    if isinstance(fraction, bool) or not isinstance(fraction, int | float | np.integer | np.floating):
        raise FedValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    if not 0 < float(fraction) <= 1:
        raise FedValueError(f"fraction: expected a number in (0, 1], got {fraction!r}")
    k = max(1, int(round(float(fraction) * n)))
    if round_num is not None:
        round_num = _seeds.check_seed(round_num, "round_num")
    if seed is not None and round_num is not None:
        rng = np.random.default_rng(_seeds.derive(seed, _seeds.SAMPLE, round_num))
    else:
        rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(n, size=k, replace=False))
    return [clients[i] for i in chosen]


def sample_clients_poisson(
    clients: Sequence[Any], rate: float, *, seed: int | None = None, round_num: int | None = None
) -> list[Any]:
    """Poisson sampling: each client takes part independently with probability ``rate``, kept in order.

    The sampling that differential privacy's accounting assumes
    (``PoissonSampledDpEvent(rate, ...)``, see :func:`fedr.privacy.epsilon`):
    use ``rate = clients_per_round / population_size``. The sample's size
    varies from round to round and may be empty (skip such a round: the
    budget is spent all the same).

    Args:
        clients: The population of clients.
        rate: Probability of each client taking part, in (0, 1].
        seed: Seed; with ``round_num`` each round draws its own sample from (seed, round).
        round_num: The round the sample is for.

    Returns:
        The selected clients, in their original order (possibly none).

    Raises:
        FedValueError: ``rate`` outside (0, 1], a bad seed or round, or no clients.
    """
    seed = _seeds.check_seed(seed)
    if round_num is not None:
        round_num = _seeds.check_seed(round_num, "round_num")
    if len(clients) == 0:
        raise FedValueError("clients: expected at least one client, got none")
    if isinstance(rate, bool) or not isinstance(rate, int | float | np.integer | np.floating) or not 0 < float(rate) <= 1:
        raise FedValueError(f"rate: expected a number in (0, 1], got {rate!r}")
    if seed is not None and round_num is not None:
        rng = np.random.default_rng(_seeds.derive(seed, _seeds.SAMPLE, round_num, 1))
    else:
        rng = np.random.default_rng(seed)
    chosen = np.flatnonzero(rng.random(len(clients)) < float(rate))
    return [clients[i] for i in chosen]
