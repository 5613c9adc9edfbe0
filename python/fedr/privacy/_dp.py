"""Differential privacy for federated averaging: clipping, Gaussian noise, adaptive clipping, accounting.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent
Language Models"): every client's whole update (all trainable variables
together) is L2-clipped to ``clip``; the server sums the clipped updates,
adds Gaussian noise of standard deviation ``noise_multiplier * clip`` per
coordinate and divides by the expected number of clients per round (an
unweighted mean, as TensorFlow Federated does: weighting by example counts
would let one client's weight reveal it).

Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with
Adaptive Clipping"): each client also reports b_i = 1[|Δ_i| <= C]; the server
noises their sum with N(0, σ_b²), takes the fraction b̄ over the expected
number of clients and updates ``C <- C · exp(-η (b̄ - γ))``: the clip grows
when fewer than the target quantile γ of updates fit under it and shrinks
when more do. The privacy of both releases together equals that of one
Gaussian mechanism with multiplier ``z``: the update noise multiplier is
raised to ``z_Δ = (z⁻² - (2σ_b)⁻²)^(-1/2)`` (Theorem 1 of the paper), which
needs ``z < 2σ_b``.

The privacy budget ε comes from Google's ``dp-accounting`` RDP accountant over
rounds of ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` with
``q = clients_per_round / population_size``; it is never computed by hand here.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from fedr.aggregators import AggregateResult, Aggregator, Sum
from fedr.errors import FedTypeError, FedValueError

__all__ = ["GaussianDP", "epsilon", "gaussian_adaptive", "gaussian_fixed"]

NamedArrays = tuple[tuple[str, np.ndarray], ...]


# ----------------------------------------------------------------------------- accounting


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


def epsilon(
    noise_multiplier: float, clients_per_round: int, population_size: int, rounds: int, target_delta: float
) -> float:
    """The privacy budget ε spent by ``rounds`` rounds of DP-FedAvg, from dp-accounting's RDP accountant.

    Plans a budget before training: each round samples clients with
    probability ``clients_per_round / population_size`` (Poisson sampling)
    and releases their clipped sum with Gaussian noise of multiplier
    ``noise_multiplier``. For q = 0.01, z = 1.1, 200 rounds and δ = 1e-5 it is
    about 1.058.

    Args:
        noise_multiplier: z, the noise standard deviation over the clip (> 0).
        clients_per_round: Expected clients per round.
        population_size: Clients in the population (>= clients_per_round).
        rounds: Rounds (>= 0).
        target_delta: δ in (0, 1).

    Returns:
        ε for (ε, δ)-differential privacy at the client level.

    Raises:
        FedValueError: an argument is out of range (named in the message).
    """
    import dp_accounting

    z = _number(noise_multiplier, "noise_multiplier", low=0, low_open=True)
    n = _count(clients_per_round, "clients_per_round")
    population = _count(population_size, "population_size")
    if population < n:
        raise FedValueError(
            f"population_size: expected at least clients_per_round ({n}) clients, got {population}"
        )
    steps = _count(rounds, "rounds", minimum=0)
    delta = _number(target_delta, "target_delta", low=0, high=1, low_open=True, high_open=True)
    if steps == 0:
        return 0.0
    accountant = dp_accounting.rdp.RdpAccountant()
    event = dp_accounting.PoissonSampledDpEvent(n / population, dp_accounting.GaussianDpEvent(z))
    # For large sampling rates some fractional RDP orders do not converge; the
    # accountant leaves them out (which can only raise epsilon) and logs a
    # warning per order through absl: keep those out of the user's console.
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        accountant.compose(event, steps)
        return float(accountant.get_epsilon(delta))
    finally:
        absl.setLevel(level)


# ----------------------------------------------------------------------------- the aggregator


class ClippedUpdate(NamedTuple):
    """What a client sends under DP: its clipped update (through the inner sum's client step) and whether it fit."""

    vector: Any
    norm: float
    unclipped: bool


@dataclass(frozen=True)
class _Output:
    client_id: str
    delta: Any
    num_examples: int


class GaussianDP(Aggregator):
    """DP-FedAvg's aggregator: clip, sum (through ``inner``), noise, divide; optionally adaptive clip."""

    averages_non_trainable = False

    def __init__(
        self,
        noise_multiplier: float,
        clients_per_round: int,
        *,
        clip: float,
        adaptive: bool,
        target_quantile: float = 0.5,
        clip_learning_rate: float = 0.2,
        clipped_count_stddev: float | None = None,
        population_size: int | None = None,
        target_delta: float | None = None,
        max_epsilon: float | None = None,
        inner: Aggregator | None = None,
    ) -> None:
        self.noise_multiplier = _number(noise_multiplier, "noise_multiplier", low=0)
        self.clients_per_round = _count(clients_per_round, "clients_per_round")
        self.initial_clip = _number(clip, "initial_clip" if adaptive else "clip", low=0, low_open=True)
        self.adaptive = adaptive
        self.target_quantile = _number(target_quantile, "target_quantile", low=0, high=1)
        self.clip_learning_rate = _number(clip_learning_rate, "clip_learning_rate", low=0)
        self.clipped_count_stddev = (
            self.clients_per_round / 20
            if clipped_count_stddev is None
            else _number(clipped_count_stddev, "clipped_count_stddev", low=0, low_open=True)
        )
        self.update_noise_multiplier = self.noise_multiplier
        if adaptive and self.noise_multiplier > 0:
            two_sigma = 2 * self.clipped_count_stddev
            if self.noise_multiplier >= two_sigma:
                raise FedValueError(
                    f"noise_multiplier: {self.noise_multiplier:g} must be below 2 * clipped_count_stddev "
                    f"= {two_sigma:g} for adaptive clipping (Andrew et al. 2021, Theorem 1): raise "
                    "clipped_count_stddev or lower noise_multiplier"
                )
            self.update_noise_multiplier = (self.noise_multiplier**-2 - two_sigma**-2) ** -0.5
        if population_size is not None:
            population_size = _count(population_size, "population_size")
            if population_size < self.clients_per_round:
                raise FedValueError(
                    f"population_size: expected at least clients_per_round ({self.clients_per_round}) "
                    f"clients, got {population_size}"
                )
        self.population_size = population_size
        self.target_delta = (
            None if target_delta is None
            else _number(target_delta, "target_delta", low=0, high=1, low_open=True, high_open=True)
        )
        self.max_epsilon = None if max_epsilon is None else _number(max_epsilon, "max_epsilon", low=0, low_open=True)
        if self.max_epsilon is not None and not self.accountable:
            raise FedValueError(
                "max_epsilon: needs population_size and target_delta to account the budget, and noise_multiplier > 0"
            )
        if inner is None:
            inner = Sum()
        if not isinstance(inner, Aggregator):
            raise FedTypeError(
                f"inner: expected a sum such as fedr.aggregators.sum() or fedr.privacy.secure_sum(), "
                f"got {type(inner).__name__}"
            )
        self.inner = inner

    @property
    def accountable(self) -> bool:
        """Whether ε can be reported (population size, δ and noise known)."""
        return self.population_size is not None and self.target_delta is not None and self.noise_multiplier > 0

    def epsilon_after(self, rounds: int) -> float:
        """ε after ``rounds`` rounds (the composed mechanism's multiplier ``noise_multiplier``)."""
        assert self.population_size is not None and self.target_delta is not None
        return epsilon(self.noise_multiplier, self.clients_per_round, self.population_size, rounds, self.target_delta)

    # -- state: clip, rounds so far, the inner sum's state ("inner/..." names)

    def init(self) -> NamedArrays:
        own = (("clip", np.float64(self.initial_clip)), ("rounds", np.int64(0)))
        return own + tuple((f"inner/{n}", v) for n, v in self.inner.init())

    @staticmethod
    def _split(state: NamedArrays) -> tuple[dict[str, Any], NamedArrays]:
        own = {n: v for n, v in state if not n.startswith("inner/")}
        inner = tuple((n[len("inner/"):], v) for n, v in state if n.startswith("inner/"))
        return own, inner

    def start_round(
        self, state: NamedArrays, client_ids: Sequence[str], *, seed: np.random.SeedSequence | None = None
    ) -> Any:
        own, inner_state = self._split(state)
        round_num = int(own["rounds"]) + 1
        if self.max_epsilon is not None:
            spent = self.epsilon_after(round_num)
            if spent > self.max_epsilon:
                raise FedValueError(
                    f"round {round_num}: it would spend epsilon = {spent:.4f}, over max_epsilon = "
                    f"{self.max_epsilon:g} (delta = {self.target_delta:g}); the round was refused before "
                    f"any client trained and the state is unchanged ({round_num - 1} rounds spent "
                    f"epsilon = {self.epsilon_after(round_num - 1):.4f})"
                )
        from fedr.privacy._secagg import SecureSum

        if isinstance(self.inner, SecureSum):
            # Every coordinate of an update clipped to L2 norm C lies in [-C, C]:
            # the secure sum's fixed-point range follows the (adaptive) clip.
            return self.inner.start_round(inner_state, client_ids, seed=seed, clip_range=float(own["clip"]))
        return self.inner.start_round(inner_state, client_ids, seed=seed)

    def client_step(
        self, state: NamedArrays, delta: np.ndarray, *, client_id: str = "", num_examples: int = 0, context: Any = None
    ) -> ClippedUpdate:
        own, inner_state = self._split(state)
        clip = float(own["clip"])
        norm = float(np.linalg.norm(delta.astype(np.float64)))
        clipped = delta if norm <= clip else (delta * np.float32(clip / norm)).astype(np.float32)
        vector = self.inner.client_step(
            inner_state, np.ascontiguousarray(clipped, np.float32), client_id=client_id,
            num_examples=num_examples, context=context,
        )
        return ClippedUpdate(vector, norm, norm <= clip)

    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[Any],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        own, inner_state = self._split(state)
        clip = float(own["clip"])
        rounds = int(own["rounds"]) + 1
        sent = [_Output(o.client_id, o.delta.vector, o.num_examples) for o in outputs]
        inner = self.inner.aggregate(inner_state, sent, seed=seed, context=context)
        total = np.asarray(inner.update, np.float64)
        rng = np.random.default_rng(seed)
        stddev = self.update_noise_multiplier * clip
        noised = total + rng.normal(0.0, stddev, total.shape) if stddev > 0 else total
        update = (noised / self.clients_per_round).astype(np.float32)
        metrics = {"clip": clip, "dp_noise_stddev": stddev}
        new_clip = clip
        if self.adaptive:
            unclipped = sum(1 for o in outputs if o.delta.unclipped)
            noisy = unclipped + (rng.normal(0.0, self.clipped_count_stddev) if self.noise_multiplier > 0 else 0.0)
            fraction = noisy / self.clients_per_round
            new_clip = clip * math.exp(-self.clip_learning_rate * (fraction - self.target_quantile))
            metrics["dp_unclipped_fraction"] = float(fraction)
        if self.accountable:
            metrics["epsilon"] = self.epsilon_after(rounds)
        metrics.update({f"inner_{k}": v for k, v in inner.metrics.items()})
        new_state = (("clip", np.float64(new_clip)), ("rounds", np.int64(rounds))) + tuple(
            (f"inner/{n}", v) for n, v in inner.state
        )
        return AggregateResult(new_state, update, metrics)

    def __repr__(self) -> str:
        kind = "gaussian_adaptive" if self.adaptive else "gaussian_fixed"
        clip = "initial_clip" if self.adaptive else "clip"
        return (
            f"{kind}(noise_multiplier={self.noise_multiplier:g}, clients_per_round={self.clients_per_round}, "
            f"{clip}={self.initial_clip:g}, inner={self.inner!r})"
        )


def gaussian_fixed(
    noise_multiplier: float,
    clients_per_round: int,
    clip: float,
    *,
    population_size: int | None = None,
    target_delta: float | None = None,
    max_epsilon: float | None = None,
    inner: Aggregator | None = None,
) -> GaussianDP:
    """DP-FedAvg with a fixed clip (McMahan et al. 2018), as ``aggregator=``.

    Each client's whole update is L2-clipped to ``clip``; the server sums them
    (through ``inner``), adds N(0, (noise_multiplier·clip)²) per coordinate and
    divides by ``clients_per_round``. Noise comes from the process seed, so
    seeded runs repeat. Non-trainable variables (BatchNorm statistics) are not
    aggregated under DP: they would leak unprotected, so they keep their
    initial values (the process warns when the model has any).

    Args:
        noise_multiplier: z >= 0 (0: clipping only, no privacy).
        clients_per_round: The expected number of clients per round (the divisor).
        clip: The L2 norm bound C > 0.
        population_size: Clients in the population; with ``target_delta``,
            every round's metrics report ``epsilon``.
        target_delta: δ in (0, 1).
        max_epsilon: Refuse a round that would spend more than this, before any
            client trains (the state stays unchanged).
        inner: The sum: ``fedr.aggregators.sum()`` (default) or
            ``fedr.privacy.secure_sum(...)``.

    Returns:
        An :class:`~fedr.aggregators.Aggregator` reporting ``clip`` (and
        ``epsilon``) in the round's metrics.

    Raises:
        FedValueError: an argument out of range, named in the message.
    """
    return GaussianDP(
        noise_multiplier, clients_per_round, clip=clip, adaptive=False, population_size=population_size,
        target_delta=target_delta, max_epsilon=max_epsilon, inner=inner,
    )


def gaussian_adaptive(
    noise_multiplier: float,
    clients_per_round: int,
    *,
    initial_clip: float = 0.1,
    target_quantile: float = 0.5,
    clip_learning_rate: float = 0.2,
    clipped_count_stddev: float | None = None,
    population_size: int | None = None,
    target_delta: float | None = None,
    max_epsilon: float | None = None,
    inner: Aggregator | None = None,
) -> GaussianDP:
    """DP-FedAvg with adaptive clipping (Andrew et al. 2021), as ``aggregator=``.

    As :func:`gaussian_fixed`, but the clip follows the ``target_quantile`` of
    the clients' update norms: ``C <- C · exp(-clip_learning_rate · (b̄ - target_quantile))``
    with b̄ the noised fraction of clients whose update norm is at most C. So
    the clip grows when most updates are clipped and shrinks when few are.
    The update noise multiplier is raised to (z⁻² − (2σ_b)⁻²)^(−1/2) so that
    both releases together have the privacy of one Gaussian mechanism with
    multiplier ``noise_multiplier`` (which is what ε accounts).

    Args:
        noise_multiplier: z >= 0; must be below ``2 * clipped_count_stddev``.
        clients_per_round: The expected number of clients per round.
        initial_clip: The clip of the first round (> 0).
        target_quantile: γ in [0, 1], the share of updates the clip should fit.
        clip_learning_rate: η >= 0.
        clipped_count_stddev: σ_b > 0, the noise on the count of unclipped
            updates; default ``clients_per_round / 20``.
        population_size, target_delta, max_epsilon, inner: As in :func:`gaussian_fixed`.

    Returns:
        An :class:`~fedr.aggregators.Aggregator` reporting ``clip``,
        ``dp_unclipped_fraction`` (and ``epsilon``) every round.

    Raises:
        FedValueError: an argument out of range, or noise_multiplier >= 2σ_b.
    """
    return GaussianDP(
        noise_multiplier, clients_per_round, clip=initial_clip, adaptive=True, target_quantile=target_quantile,
        clip_learning_rate=clip_learning_rate, clipped_count_stddev=clipped_count_stddev,
        population_size=population_size, target_delta=target_delta, max_epsilon=max_epsilon, inner=inner,
    )
