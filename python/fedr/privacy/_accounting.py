"""The privacy budget ε of DP-FedAvg, from dp-accounting, for the client sampling that actually runs.

Each round releases the noised sum of the clipped updates of a cohort. How
the cohort is drawn decides the analysis (and the neighbouring relation):

- ``"poisson"``: every client of the population takes part independently
  with probability ``q = clients_per_round / population_size``.
  ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``, add-or-remove-one
  neighbours (one client more or less changes the sum by at most C).
- ``"fixed"``: a uniform sample of exactly ``clients_per_round`` clients
  without replacement (``fedr.learning.sample_clients``, R's ``fed_fit``,
  Flower's ``fraction``). ``SampledWithoutReplacementDpEvent(population,
  clients_per_round, GaussianDpEvent(z / 2))`` under replace-one neighbours:
  the population's size is fixed, and replacing one client's update by
  another changes the clipped sum by up to 2C, so the multiplier relative to
  that sensitivity is z / 2 (Wang, Balle and Kasiviswanathan 2019).
- ``"all"``: every client of the population, every round: plain composition
  of ``GaussianDpEvent(z)`` (add-or-remove-one, no amplification).

Every ε is dp-accounting's, from the accountant the user chooses: ``"rdp"``
(Rényi DP, Mironov 2017; every sampling above) or ``"pld"`` (privacy loss
distributions, Koskela et al. 2020 / Doroshenko et al. 2022: tighter, but
dp-accounting's PLD accountant does not model fixed-size sampling without
replacement, so ``"fixed"`` is refused with it). Nothing is computed by hand here.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import numpy as np

from fedr.errors import FedValueError

__all__ = ["ACCOUNTANTS", "SAMPLINGS", "check_accountant", "check_sampling_name", "dp_event", "epsilon",
           "fresh_accountant"]

SAMPLINGS = ("poisson", "fixed", "all")
ACCOUNTANTS = ("rdp", "pld")


def _number(value: Any, name: str, *, low: float | None = None, high: float | None = None,
            low_open: bool = False, high_open: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float | np.integer | np.floating)
    x = float(value) if ok else math.nan
    if ok and math.isfinite(x):
        ok = (low is None or (x > low if low_open else x >= low)) and (
            high is None or (x < high if high_open else x <= high)
        )
    else:
        ok = False
    if not ok:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = f" in {lo}, {hi}" if lo and hi else (f" > {low:g}" if low_open else f" >= {low:g}") if lo else ""
        raise FedValueError(f"{name}: expected a finite number{where}, got {value!r}")
    return x


def _count(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise FedValueError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def check_sampling_name(sampling: Any) -> str:
    """Return ``sampling`` if it is one of :data:`SAMPLINGS`; FedValueError naming ``sampling`` otherwise."""
    if not isinstance(sampling, str) or sampling not in SAMPLINGS:
        raise FedValueError(f"sampling: expected one of 'poisson', 'fixed' or 'all', got {sampling!r}")
    return sampling


def check_accountant(accountant: Any, sampling: str) -> str:
    """Return ``accountant`` ("rdp" or "pld") if it can account ``sampling``; FedValueError naming it otherwise."""
    if not isinstance(accountant, str) or accountant not in ACCOUNTANTS:
        raise FedValueError(f"accountant: expected 'rdp' or 'pld', got {accountant!r}")
    if accountant == "pld" and sampling == "fixed":
        raise FedValueError(
            "accountant: dp-accounting's PLD accountant does not model fixed-size sampling without replacement "
            "(sampling = 'fixed'); use accountant = 'rdp', or sampling = 'poisson' (or 'all') with 'pld'"
        )
    return accountant


def dp_event(sampling: str, z: float, clients_per_round: int, population_size: int) -> tuple[Any, Any]:
    """One round as dp-accounting's ``(DpEvent, NeighboringRelation)`` for ``sampling`` (see the module's list)."""
    import dp_accounting

    gaussian = dp_accounting.GaussianDpEvent
    if sampling == "poisson":
        return (dp_accounting.PoissonSampledDpEvent(clients_per_round / population_size, gaussian(z)),
                dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    if sampling == "fixed":
        return (dp_accounting.SampledWithoutReplacementDpEvent(population_size, clients_per_round, gaussian(z / 2)),
                dp_accounting.NeighboringRelation.REPLACE_ONE)
    return gaussian(z), dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


def fresh_accountant(accountant: str, relation: Any) -> Any:
    """A new dp-accounting accountant of kind ``accountant`` ("rdp" or "pld") for ``relation``."""
    import dp_accounting

    if accountant == "pld":
        return dp_accounting.pld.PLDAccountant(neighboring_relation=relation)
    return dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)


class _QuietAbsl:
    """For large sampling rates some fractional RDP orders do not converge; the accountant leaves them out
    (which can only raise epsilon) and logs a warning per order through absl: keep those off the console."""

    def __enter__(self) -> None:
        self._absl = logging.getLogger("absl")
        self._level = self._absl.level
        self._absl.setLevel(logging.ERROR)

    def __exit__(self, *exc: Any) -> None:
        self._absl.setLevel(self._level)


def check_population(sampling: str, clients_per_round: int, population_size: int) -> None:
    """The population must hold the cohort; under ``"all"`` the cohort is the population."""
    if population_size < clients_per_round:
        raise FedValueError(
            f"population_size: expected at least clients_per_round ({clients_per_round}) clients, "
            f"got {population_size}"
        )
    if sampling == "all" and population_size != clients_per_round:
        raise FedValueError(
            f"population_size: sampling = 'all' trains every client every round, so it must equal "
            f"clients_per_round ({clients_per_round}), got {population_size}"
        )


@functools.lru_cache(maxsize=64)
def _one_round(sampling: str, z: float, clients_per_round: int, population_size: int) -> tuple[Any, Any]:
    """The RDP orders and the RDP of one round (dp-accounting's accountant after one event)."""
    event, relation = dp_event(sampling, z, clients_per_round, population_size)
    accountant = fresh_accountant("rdp", relation)
    with _QuietAbsl():
        accountant.compose(event, 1)
    return accountant.orders, accountant.rdp


def epsilon(
    noise_multiplier: float,
    clients_per_round: int,
    population_size: int,
    rounds: int,
    target_delta: float,
    *,
    sampling: str = "fixed",
    accountant: str = "rdp",
) -> float:
    """The privacy budget ε spent by ``rounds`` rounds of DP-FedAvg, from dp-accounting's ``accountant``.

    Plans a budget before training, for the way the rounds' clients are drawn
    (``sampling``, as the DP aggregators take it; the default ``"fixed"`` is
    what ``fedr.learning.sample_clients``, R's ``fed_fit`` and Flower do).
    The README's example, z = 1 and 10 of 100 clients for 30 rounds at
    δ = 1e-5, spends ε ≈ 32.3 with fixed-size sampling, 4.85 with Poisson
    sampling; every client every round for 100 rounds, 96.1.

    Args:
        noise_multiplier: z, the noise standard deviation over the clip (> 0).
        clients_per_round: Clients per round (the expected number under Poisson sampling).
        population_size: Clients in the population (>= clients_per_round; equal to it for ``"all"``).
        rounds: Rounds (>= 0).
        target_delta: δ in (0, 1).
        sampling: ``"fixed"`` (a uniform sample of exactly ``clients_per_round``
            without replacement), ``"poisson"`` (each client with probability
            ``clients_per_round / population_size``) or ``"all"`` (every client).
        accountant: ``"rdp"`` (default) or ``"pld"`` (tighter; not for ``"fixed"``).

    Returns:
        ε for (ε, δ)-differential privacy at the client level.

    Raises:
        FedValueError: an argument is out of range (named in the message).
    """
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    z = _number(noise_multiplier, "noise_multiplier", low=0, low_open=True)
    n = _count(clients_per_round, "clients_per_round")
    population = _count(population_size, "population_size")
    sampling = check_sampling_name(sampling)
    check_population(sampling, n, population)
    steps = _count(rounds, "rounds", minimum=0)
    delta = _number(target_delta, "target_delta", low=0, high=1, low_open=True, high_open=True)
    accountant = check_accountant(accountant, sampling)
    if steps == 0:
        return 0.0
    if accountant == "pld":
        return _pld_epsilon(sampling, z, n, population, steps, delta)
    # RDP composes additively: `steps` rounds are steps times one round's RDP,
    # exactly what RdpAccountant.compose(event, steps) computes.
    orders, rdp = _one_round(sampling, z, n, population)
    return float(compute_epsilon(orders, steps * rdp, delta)[0])


@functools.lru_cache(maxsize=256)
def _pld_epsilon(sampling: str, z: float, n: int, population: int, steps: int, delta: float) -> float:
    event, relation = dp_event(sampling, z, n, population)
    return float(fresh_accountant("pld", relation).compose(event, steps).get_epsilon(delta))
