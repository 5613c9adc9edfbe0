"""Planning a privacy budget before training: give three of (ε, noise multiplier, rounds, clients per round), get the fourth.

The search is dp-accounting's own calibration
(``dp_accounting.calibrate_dp_mechanism``: Brent's method over the accountant
chosen, returning a value whose ε does not exceed the target), on the events
fedr's rounds run (:func:`fedr.privacy._accounting.dp_event`): Poisson,
fixed-size or full participation, with the RDP or the PLD accountant.
Adaptive clipping (Andrew et al. 2021) releases two Gaussian sums per round,
the clipped updates and the count of unclipped ones; fedr sizes their noise
so that together they are one Gaussian mechanism of multiplier z (Theorem 1
there), so a plan's z accounts both, and the plan reports the update noise
multiplier (z⁻² − (2σ_b)⁻²)^(−1/2) that results. A process built from a plan
(:meth:`PrivacyPlan.aggregator`) refuses the round that would go over the
planned ε (``max_epsilon``), and :func:`fedr.learning.fit` ends there.

``mechanism="distributed"`` plans distributed DP over secure aggregation
(:func:`fedr.privacy.distributed_dp`, the Skellam mechanism): dp-accounting
has no event for it, so the fourth number is found by bisection on
:meth:`fedr.privacy.DistributedDP.epsilon_after` (the papers' bounds, see
:mod:`fedr.privacy._ddp_accounting`), to the same guarantees: a noise
multiplier within 1e-6 above the exact one, the largest rounds or clients.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from fedr.errors import FedValueError
from fedr.privacy._accounting import (
    _count, _number, check_accountant, check_population, check_sampling_name, dp_event, epsilon, fresh_accountant,
)

__all__ = ["PrivacyPlan", "epsilon_curve", "plan"]

CLIPPINGS = ("fixed", "adaptive")
MECHANISMS = ("gaussian", "distributed")
_SOLVABLE = ("target_epsilon", "noise_multiplier", "rounds", "clients_per_round")


@dataclass(frozen=True)
class PrivacyPlan:
    """A planned DP-FedAvg run: every number of the budget, the solved one included.

    Attributes:
        target_epsilon: ε the run may spend (the plan's rounds spend at most this).
        epsilon: ε the plan's rounds actually spend (≤ ``target_epsilon``).
        target_delta: δ.
        noise_multiplier: z, the composed noise multiplier accounted.
        update_noise_multiplier: The noise multiplier of the update sum: z for
            fixed clipping, (z⁻² − (2σ_b)⁻²)^(−1/2) for adaptive clipping.
        clipped_count_stddev: σ_b of adaptive clipping (None for fixed).
        rounds, clients_per_round, population_size: The run's sizes.
        sampling: ``"poisson"``, ``"fixed"`` or ``"all"``.
        clipping: ``"fixed"`` or ``"adaptive"``.
        accountant: ``"rdp"`` or ``"pld"``.
        solved: Which of ``target_epsilon``, ``noise_multiplier``, ``rounds``,
            ``clients_per_round`` the plan computed.
        mechanism: ``"gaussian"`` (central DP) or ``"distributed"``
            (distributed DP's Skellam noise shares).
        dropout_rate: Distributed DP: the dropouts its noise shares are sized for (None otherwise).
        dim: Distributed DP: the model size its rounding bound was taken at (None otherwise).
    """

    target_epsilon: float
    epsilon: float
    target_delta: float
    noise_multiplier: float
    update_noise_multiplier: float
    clipped_count_stddev: float | None
    rounds: int
    clients_per_round: int
    population_size: int
    sampling: str
    clipping: str
    accountant: str
    solved: str
    mechanism: str = "gaussian"
    dropout_rate: float | None = None
    dim: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The plan as a plain dict (R converts it to a one-row data frame)."""
        return asdict(self)

    def aggregator(self, clip: float, **options: Any) -> Any:
        """The DP aggregator that runs this plan, refusing any round past its ε (``max_epsilon``).

        Args:
            clip: The clip (fixed clipping) or the initial clip (adaptive).
            options: Further options of :func:`~fedr.privacy.gaussian_fixed`
                / :func:`~fedr.privacy.gaussian_adaptive` (``inner``,
                ``target_quantile``, ``clip_learning_rate``, ...).

        Returns:
            A :class:`~fedr.privacy.GaussianDP`.
        """
        from fedr.privacy._dp_api import gaussian_adaptive, gaussian_fixed

        if self.mechanism == "distributed":
            return self._distributed(clip, options)
        common = dict(population_size=self.population_size, target_delta=self.target_delta,
                      max_epsilon=self.target_epsilon, sampling=self.sampling, accountant=self.accountant)
        owned = {**common, "noise_multiplier": self.noise_multiplier, "clients_per_round": self.clients_per_round,
                 "clipped_count_stddev": self.clipped_count_stddev}
        for name in owned:
            if name in options:
                raise FedValueError(f"{name}: is the plan's ({owned[name]!r}); plan again to change it")
        if "initial_clip" in options:
            raise FedValueError("initial_clip: give the clip as clip= (the initial clip under adaptive clipping)")
        allowed = {"inner", "noise_seed"} | ({"target_quantile", "clip_learning_rate"} if self.clipping == "adaptive"
                                             else set())
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise FedValueError(f"{unknown[0]}: not an option of a {self.clipping}-clipping plan's aggregator; "
                                f"options are {', '.join(sorted(allowed))}")
        if self.clipping == "adaptive":
            return gaussian_adaptive(self.noise_multiplier, self.clients_per_round, initial_clip=clip,
                                     clipped_count_stddev=self.clipped_count_stddev, **common, **options)
        return gaussian_fixed(self.noise_multiplier, self.clients_per_round, clip, **common, **options)

    def _distributed(self, clip: float, options: dict[str, Any]) -> Any:
        from fedr.privacy._ddp import distributed_dp

        owned = {"noise_multiplier": self.noise_multiplier, "clients_per_round": self.clients_per_round,
                 "population_size": self.population_size, "target_delta": self.target_delta,
                 "max_epsilon": self.target_epsilon, "sampling": self.sampling, "dropout_rate": self.dropout_rate}
        for name in owned:
            if name in options:
                raise FedValueError(f"{name}: is the plan's ({owned[name]!r}); plan again to change it")
        allowed = {"bits", "threshold", "neighbors", "on_excess_dropout", "noise_seed"}
        unknown = sorted(set(options) - allowed)
        if unknown:
            raise FedValueError(f"{unknown[0]}: not an option of a distributed plan's aggregator; options are "
                                f"{', '.join(sorted(allowed))}")
        return distributed_dp(self.noise_multiplier, self.clients_per_round, clip,
                              population_size=self.population_size, target_delta=self.target_delta,
                              max_epsilon=self.target_epsilon, sampling=self.sampling,
                              dropout_rate=self.dropout_rate, **options)

    def __str__(self) -> str:
        kind = (f"distributed DP (Skellam), shares for {self.dropout_rate:g} dropout"
                if self.mechanism == "distributed" else f"{self.accountant.upper()} accountant")
        lines = [f"privacy plan ({self.solved} solved, {kind})"]
        lines.append(f"  epsilon         {self.epsilon:.4f} (target {self.target_epsilon:g}), delta {self.target_delta:g}")
        lines.append(f"  noise           z = {self.noise_multiplier:.4f}" + (
            f", updates {self.update_noise_multiplier:.4f}, count stddev {self.clipped_count_stddev:g}"
            if self.clipping == "adaptive" else ""))
        lines.append(f"  rounds          {self.rounds}")
        lines.append(f"  clients         {self.clients_per_round} of {self.population_size} per round "
                     f"({self.sampling} sampling, {self.clipping} clipping)")
        return "\n".join(lines)


def _update_multiplier(z: float, sigma_b: float | None) -> float:
    if sigma_b is None:
        return z
    two = 2 * sigma_b
    if z >= two:
        raise FedValueError(
            f"noise_multiplier: {z:g} must be below 2 * clipped_count_stddev = {two:g} for adaptive clipping "
            "(Andrew et al. 2021, Theorem 1): raise clipped_count_stddev or plan for less noise"
        )
    return (z**-2 - two**-2) ** -0.5


def plan(
    *,
    population_size: int,
    target_delta: float,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    rounds: int | None = None,
    clients_per_round: int | None = None,
    sampling: str = "poisson",
    clipping: str = "fixed",
    clipped_count_stddev: float | None = None,
    accountant: str = "rdp",
    mechanism: str = "gaussian",
    dropout_rate: float | None = None,
    dim: int | None = None,
) -> PrivacyPlan:
    """Plan a DP-FedAvg run: give three of (ε, noise multiplier, rounds, clients per round); the fourth is solved.

    For example, a Poisson sampling rate of q = 0.01 (100 of 10,000
    clients), 200 rounds and δ = 1e-5 spend ε = 1.0577 at z = 1.1 by RDP, so
    ``plan(population_size=10_000, clients_per_round=100, rounds=200,
    target_delta=1e-5, target_epsilon=1.0577)`` solves z = 1.1. Noise
    multipliers are solved to within 1e-6 and never spend more than the
    target; rounds and clients per round are the largest whose ε is within it.

    Args:
        population_size: Clients in the population.
        target_delta: δ in (0, 1).
        target_epsilon: ε the run may spend (> 0).
        noise_multiplier: z > 0 (for adaptive clipping, the composed multiplier).
        rounds: Rounds (>= 1).
        clients_per_round: Clients per round (expected, under Poisson sampling).
        sampling: ``"poisson"`` (default), ``"fixed"`` or ``"all"`` (see
            :func:`fedr.privacy.epsilon`); under ``"all"`` clients per round
            is the population and cannot be solved.
        clipping: ``"fixed"`` or ``"adaptive"``.
        clipped_count_stddev: σ_b of adaptive clipping (default
            ``clients_per_round / 20``, as :func:`~fedr.privacy.gaussian_adaptive`).
        accountant: ``"rdp"`` or ``"pld"`` (tighter; not for ``"fixed"``).
        mechanism: ``"gaussian"`` (default: central DP, the aggregators
            :func:`~fedr.privacy.gaussian_fixed` and
            :func:`~fedr.privacy.gaussian_adaptive`) or ``"distributed"``
            (:func:`~fedr.privacy.distributed_dp`: fixed clipping, RDP,
            ``"poisson"`` or ``"all"`` sampling).
        dropout_rate: Distributed DP: the dropouts the noise shares are
            sized for (default 0.1, as :func:`~fedr.privacy.distributed_dp`).
        dim: Distributed DP: the model's number of weights, for stochastic
            rounding's sensitivity (default 2^30, which covers any model).

    Returns:
        A :class:`PrivacyPlan`.

    Raises:
        FedValueError: not exactly one of the four left out; a value out of
            range; no value meets the target (even one round, or one client,
            spends more; or the target is met without any noise bound in
            2^30); for adaptive clipping, z not below 2σ_b. The message names
            the argument.
    """
    import dp_accounting

    given = {"target_epsilon": target_epsilon, "noise_multiplier": noise_multiplier, "rounds": rounds,
             "clients_per_round": clients_per_round}
    missing = [name for name, value in given.items() if value is None]
    if len(missing) != 1:
        raise FedValueError(
            f"plan: give exactly three of target_epsilon, noise_multiplier, rounds and clients_per_round "
            f"(the fourth is solved); left out: {', '.join(missing) if missing else 'none'}",
            argument=missing[0] if missing else "target_epsilon",
        )
    solved = missing[0]
    sampling = check_sampling_name(sampling)
    accountant = check_accountant(accountant, sampling)
    if clipping not in CLIPPINGS:
        raise FedValueError(f"clipping: expected 'fixed' or 'adaptive', got {clipping!r}")
    population = _count(population_size, "population_size")
    delta = _number(target_delta, "target_delta", low=0, high=1, low_open=True, high_open=True)
    eps = None if target_epsilon is None else _number(target_epsilon, "target_epsilon", low=0, low_open=True)
    z = None if noise_multiplier is None else _number(noise_multiplier, "noise_multiplier", low=0, low_open=True)
    steps = None if rounds is None else _count(rounds, "rounds")
    n = None if clients_per_round is None else _count(clients_per_round, "clients_per_round")
    if sampling == "all":
        if solved == "clients_per_round":
            raise FedValueError("clients_per_round: under sampling = 'all' every client takes part; it is "
                                "population_size and cannot be solved")
    if n is not None:
        check_population(sampling, n, population)
    if mechanism not in MECHANISMS:
        raise FedValueError(f"mechanism: expected 'gaussian' or 'distributed', got {mechanism!r}")
    if mechanism == "distributed":
        from fedr.privacy._plan_ddp import plan_distributed

        return plan_distributed(solved, eps, z, steps, n, population, delta, sampling, clipping, accountant,
                                 dropout_rate, dim)
    for name, value in (("dropout_rate", dropout_rate), ("dim", dim)):
        if value is not None:
            raise FedValueError(f"{name}: is distributed DP's; give it with mechanism = 'distributed'")

    def spent(z_: float, n_: int, steps_: int) -> float:
        return epsilon(z_, n_, population, steps_, delta, sampling=sampling, accountant=accountant)

    def event(z_: float, n_: int, steps_: int) -> Any:
        one, _ = dp_event(sampling, z_, n_, population)
        return dp_accounting.SelfComposedDpEvent(one, steps_)

    relation = dp_event(sampling, 1.0, 1, population)[1]  # the sampling's neighbouring relation

    def fresh() -> Any:
        return fresh_accountant(accountant, relation)

    calibrate = dp_accounting.calibrate_dp_mechanism
    if solved == "target_epsilon":
        eps = spent(z, n, steps)
    elif solved == "noise_multiplier":
        try:
            # RDP first (cheap everywhere); PLD's multiplier is at most RDP's (PLD is tighter), and PLD is
            # searched between half of it and it: at tiny multipliers a PLD grows to gigabytes.
            z = float(calibrate(lambda: fresh_accountant("rdp", relation), lambda x: event(x, n, steps), eps, delta,
                                bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0)))
        except dp_accounting.mechanism_calibration.NoBracketIntervalFoundError:
            raise FedValueError(f"target_epsilon: no noise multiplier up to 2^30 spends at most {eps:g} "
                                f"in {steps} rounds at delta = {delta:g}") from None
        if accountant == "pld":
            low = z / 2
            while spent(low, n, steps) <= eps and low > 0.05:
                low /= 2
            if spent(low, n, steps) > eps and spent(z, n, steps) <= eps:
                z = float(calibrate(fresh, lambda x: event(x, n, steps), eps, delta,
                                    bracket_interval=dp_accounting.ExplicitBracketInterval(low, z)))
    elif solved == "rounds":
        if spent(z, n, 1) > eps:
            raise FedValueError(f"target_epsilon: even one round spends epsilon = {spent(z, n, 1):.4f}, over "
                                f"{eps:g}; raise noise_multiplier or target_epsilon, or lower clients_per_round")
        steps = int(calibrate(fresh, lambda k: event(z, n, max(1, k)), eps, delta,
                              bracket_interval=dp_accounting.LowerEndpointAndGuess(1, 2), discrete=True))
    else:
        if spent(z, 1, steps) > eps:
            raise FedValueError(f"target_epsilon: even 1 client per round spends epsilon = "
                                f"{spent(z, 1, steps):.4f} in {steps} rounds, over {eps:g}")
        if spent(z, population, steps) <= eps:
            n = population
        else:
            n = int(calibrate(fresh, lambda k: event(z, min(population, max(1, k)), steps), eps, delta,
                              bracket_interval=dp_accounting.ExplicitBracketInterval(1, population), discrete=True))
    assert z is not None and n is not None and steps is not None and eps is not None
    sigma_b = None
    if clipping == "adaptive":
        sigma_b = (n / 20 if clipped_count_stddev is None
                   else _number(clipped_count_stddev, "clipped_count_stddev", low=0, low_open=True))
    update = _update_multiplier(z, sigma_b)
    used = spent(z, n, steps)
    if not math.isfinite(used) or used > eps * (1 + 1e-9):
        raise FedValueError(f"{solved}: the solved plan spends epsilon = {used}, over the target {eps:g}")
    return PrivacyPlan(float(eps), float(used), delta, float(z), float(update), sigma_b, int(steps), int(n),
                       population, sampling, clipping, accountant, solved)


def epsilon_curve(noise_multipliers: Any, rounds: int, *, population_size: int, clients_per_round: int,
                  target_delta: float, sampling: str = "poisson", accountant: str = "rdp",
                  mechanism: str = "gaussian", dropout_rate: float | None = None,
                  dim: int | None = None) -> dict[str, list[Any]]:
    """ε after each of rounds 1..``rounds`` for each noise multiplier: columns ``noise_multiplier``, ``round``, ``epsilon``.

    What R's ``plot()`` of a privacy plan draws (ε against rounds for a few
    multipliers); ``mechanism``, ``dropout_rate`` and ``dim`` as in :func:`plan`.

    Raises:
        FedValueError: an argument out of range, or no noise multiplier given.
    """
    zs = [_number(z, "noise_multipliers", low=0, low_open=True) for z in list(noise_multipliers)]
    if not zs:
        raise FedValueError("noise_multipliers: expected at least one noise multiplier")
    steps = _count(rounds, "rounds")
    out: dict[str, list[Any]] = {"noise_multiplier": [], "round": [], "epsilon": []}
    if mechanism not in MECHANISMS:
        raise FedValueError(f"mechanism: expected 'gaussian' or 'distributed', got {mechanism!r}")
    if mechanism == "distributed":
        from fedr.privacy._ddp_accounting import epsilon_from_rdp

        population = _count(population_size, "population_size")
        n = _count(clients_per_round, "clients_per_round")
        check_population(check_sampling_name(sampling), n, population)
        delta = _number(target_delta, "target_delta", low=0, high=1, low_open=True, high_open=True)
        from fedr.privacy._plan_ddp import distributed_round

        one_round, _, _ = distributed_round(population, delta, sampling, "fixed", accountant, dropout_rate, dim)
        for z in zs:
            rdp = one_round(z, n)
            for r in range(1, steps + 1):
                out["noise_multiplier"].append(z)
                out["round"].append(r)
                out["epsilon"].append(epsilon_from_rdp(r * rdp, delta))
        return out
    for z in zs:
        for r in range(1, steps + 1):
            out["noise_multiplier"].append(z)
            out["round"].append(r)
            out["epsilon"].append(epsilon(z, clients_per_round, population_size, r, target_delta,
                                          sampling=sampling, accountant=accountant))
    return out
