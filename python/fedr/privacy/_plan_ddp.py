"""Planning distributed DP (the Skellam mechanism): :func:`fedr.privacy.plan` with ``mechanism="distributed"``.

dp-accounting has no event for the Skellam mechanism, so its calibration
cannot run here: the fourth number is found by bisection on
:meth:`fedr.privacy.DistributedDP.epsilon_after` (a noise multiplier within
1e-6 above the exact one, the largest rounds or clients per round).
"""

from __future__ import annotations

import functools
from typing import Any

from fedr.errors import FedValueError
from fedr.privacy._accounting import _count, _number
from fedr.privacy._plan import PrivacyPlan

__all__ = ["distributed_round", "plan_distributed"]


def distributed_round(population: int, delta: float, sampling: str, clipping: str, accountant: str,
                       dropout_rate: float | None, dim: int | None) -> tuple[Any, float, int]:
    """Distributed DP's checks and its one-round RDP as a function of (z, clients per round); the rate and dim."""
    from fedr.privacy._ddp import _DIM_BEFORE_FIRST_ROUND, DistributedDP

    if clipping != "fixed":
        raise FedValueError("clipping: distributed DP clips every update at a fixed clip; plan it with clipping = 'fixed'")
    if accountant != "rdp":
        raise FedValueError("accountant: distributed DP is accounted by RDP (the Skellam mechanism's bound); "
                            "dp-accounting's PLD does not model it")
    if sampling == "fixed":
        raise FedValueError("sampling: distributed DP accounts sampling = 'poisson' or 'all', not fixed-size samples")
    rate = 0.1 if dropout_rate is None else _number(dropout_rate, "dropout_rate", low=0, high=1, high_open=True)
    size = _DIM_BEFORE_FIRST_ROUND if dim is None else _count(dim, "dim")

    @functools.lru_cache(maxsize=1024)
    def one_round(z: float, n: int) -> Any:
        agg = DistributedDP(z, n, clip=1.0, population_size=population, target_delta=delta, sampling=sampling,
                            dropout_rate=rate)  # epsilon does not depend on the clip: the fixed point scales with it
        return agg.planned_round_rdp(size)

    return one_round, rate, size


def _largest(fits: Any, low: int, high: int | None = None) -> int:
    """The largest integer k >= low with fits(k), fits monotone (true then false); fits(low) is true."""
    if high is None:
        high = max(2 * low, 2)
        while fits(high):
            low, high = high, 2 * high
    elif fits(high):
        return high
    while high - low > 1:  # fits(low), not fits(high)
        mid = (low + high) // 2
        low, high = (mid, high) if fits(mid) else (low, mid)
    return low


def plan_distributed(solved: str, eps: float | None, z: float | None, steps: int | None, n: int | None,
                      population: int, delta: float, sampling: str, clipping: str, accountant: str,
                      dropout_rate: float | None, dim: int | None) -> PrivacyPlan:
    """:func:`plan` for distributed DP: bisection on its ε (no dp-accounting event models the Skellam mechanism)."""
    from fedr.privacy._ddp_accounting import epsilon_from_rdp

    one_round, rate, size = distributed_round(population, delta, sampling, clipping, accountant, dropout_rate, dim)

    def spent(z_: float, n_: int, steps_: int) -> float:
        return epsilon_from_rdp(steps_ * one_round(float(z_), int(n_)), delta)

    if solved == "target_epsilon":
        eps = spent(z, n, steps)
    elif solved == "noise_multiplier":
        hi = 1.0
        while spent(hi, n, steps) > eps:
            hi *= 2
            if hi > 2**30:
                raise FedValueError(f"target_epsilon: no noise multiplier up to 2^30 spends at most {eps:g} "
                                    f"in {steps} rounds at delta = {delta:g}")
        lo = hi / 2
        while spent(lo, n, steps) <= eps and lo > 1e-3:
            hi, lo = lo, lo / 2
        while hi - lo > 1e-7 * hi:  # spent(lo) > eps >= spent(hi)
            mid = (lo + hi) / 2
            lo, hi = (lo, mid) if spent(mid, n, steps) <= eps else (mid, hi)
        z = hi
    elif solved == "rounds":
        if spent(z, n, 1) > eps:
            raise FedValueError(f"target_epsilon: even one round spends epsilon = {spent(z, n, 1):.4f}, over "
                                f"{eps:g}; raise noise_multiplier or target_epsilon, or lower clients_per_round")
        steps = _largest(lambda k: spent(z, n, k) <= eps, 1)
    else:
        if spent(z, 1, steps) > eps:
            raise FedValueError(f"target_epsilon: even 1 client per round spends epsilon = "
                                f"{spent(z, 1, steps):.4f} in {steps} rounds, over {eps:g}")
        n = _largest(lambda k: spent(z, k, steps) <= eps, 1, population)
    assert z is not None and n is not None and steps is not None and eps is not None
    used = spent(z, n, steps)
    return PrivacyPlan(float(eps), float(used), delta, float(z), float(z), None, int(steps), int(n), population,
                       sampling, "fixed", "rdp", solved, "distributed", rate, size)
