"""Differential privacy for federated averaging: clipping, Gaussian noise, adaptive clipping.

DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private Recurrent
Language Models"): every client's whole update (all trainable variables
together) is L2-clipped to ``clip``; the server sums the clipped updates
(through an ``inner`` aggregator that must be a sum), adds Gaussian noise of
standard deviation ``noise_multiplier * clip`` per coordinate and divides by
the expected number of clients per round (an unweighted mean, as TensorFlow
Federated does: weighting by example counts would let one client's weight
reveal it). The noise comes from the OS CSPRNG (:mod:`fedr.privacy._noise`).

Adaptive clipping (Andrew et al. 2021, "Differentially Private Learning with
Adaptive Clipping"; TensorFlow Privacy's ``QuantileEstimatorQuery``): each
client also reports b_i = 1[|Δ_i| <= C]; the server releases the *centred*
count Σ(b_i − 1/2) + N(0, σ_b²), whose sensitivity is 1/2, adds back half
the expected count, divides by it and clamps the fraction b̄ to [0, 1]; then
``C <- C · exp(-η (b̄ - γ))``. Both releases together are as private as one
Gaussian mechanism of multiplier ``z`` when the update noise multiplier is
raised to ``z_Δ = (z⁻² - (2σ_b)⁻²)^(-1/2)`` (Theorem 1 of the paper; needs
``z < 2σ_b``), which is what the accountant (:mod:`fedr.privacy._accounting`)
counts, under each neighbouring relation.

The accountant counts the sampling that runs: the aggregator takes
``sampling=`` and refuses, before any client trains, a round whose cohort
that sampling cannot produce.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from fedr.aggregators import AggregateResult, Aggregator, Sum
from fedr.errors import BudgetExhaustedError, FedTypeError, FedValueError
from fedr.privacy._accounting import (
    _count, _number, check_accountant, check_population, check_sampling_name, epsilon,
)
from fedr.privacy._noise import check_noise_seed, noise_generator

__all__ = ["ClipView", "ClippedUpdate", "GaussianDP"]

NamedArrays = tuple[tuple[str, np.ndarray], ...]

# The round metrics of the process (fedr.learning) that DP releases: counts of
# the cohort, public under fixed-size and all-client sampling. Loss, model
# metrics and num_examples are exact functions of the clients' data, which the
# guarantee does not cover, so they are left out.
_RELEASED = frozenset({"num_clients", "num_clients_dropped", "num_clients_failed"})
# Under Poisson sampling the cohort's size is itself a count of participants.
_RELEASED_POISSON = frozenset({"num_clients_dropped", "num_clients_failed"})


class ClipView(NamedTuple):
    """What a client needs of a DP round (public): the clip, and the inner sum's view."""

    clip: float
    inner: Any


class ClippedUpdate(NamedTuple):
    """What a client sends under DP: its clipped update (through the inner sum's client step) and whether it fit.

    Under a secure inner sum ``norm`` is NaN and ``unclipped`` None: nothing
    of the client's leaves it outside the masked vector.
    """

    vector: Any
    norm: float
    unclipped: bool | None


@dataclass(frozen=True)
class _Output:
    client_id: str
    delta: Any
    num_examples: int


def _check_inner(inner: Any) -> Aggregator:
    """The inner aggregator, which must declare itself a sum (``is_sum``): DP noises a sum."""
    if inner is None:
        return Sum()
    if not isinstance(inner, Aggregator) or not getattr(inner, "is_sum", False):
        got = repr(inner) if isinstance(inner, Aggregator) else type(inner).__name__
        raise FedTypeError(
            "inner: expected a sum such as fedr.aggregators.sum() or fedr.privacy.secure_sum() "
            f"(differential privacy adds its noise to the sum of the clipped updates), got {got}"
        )
    return inner


class GaussianDP(Aggregator):
    """DP-FedAvg's aggregator: clip, sum (through ``inner``), noise, divide; optionally adaptive clip.

    Attributes:
        released_metrics: The process's round metrics this aggregator lets
            through: ``num_clients`` (not under Poisson sampling),
            ``num_clients_dropped``, ``num_clients_failed``. Loss, the model's
            metrics and ``num_examples`` are left out: they are exact
            functions of the clients' data.
    """

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
        sampling: str = "fixed",
        noise_seed: int | None = None,
        accountant: str = "rdp",
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
        self.sampling = check_sampling_name(sampling)
        self.accountant = check_accountant(accountant, self.sampling)
        if population_size is None and self.sampling == "all":
            population_size = self.clients_per_round  # every client: the cohort is the population
        if population_size is not None:
            population_size = _count(population_size, "population_size")
            check_population(self.sampling, self.clients_per_round, population_size)
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
        self.inner = _check_inner(inner)
        self.noise_seed = check_noise_seed(noise_seed, stacklevel=4)
        self.released_metrics = _RELEASED_POISSON if self.sampling == "poisson" else _RELEASED

    @property
    def accountable(self) -> bool:
        """Whether ε can be reported (population size, δ and noise known)."""
        return self.population_size is not None and self.target_delta is not None and self.noise_multiplier > 0

    def epsilon_after(self, rounds: int) -> float:
        """ε after ``rounds`` rounds, for this aggregator's sampling (the composed multiplier ``noise_multiplier``)."""
        assert self.population_size is not None and self.target_delta is not None
        return epsilon(self.noise_multiplier, self.clients_per_round, self.population_size, rounds,
                       self.target_delta, sampling=self.sampling, accountant=self.accountant)

    def check_sampling(self, sampling: str, clients_per_round: int, population_size: int | None = None) -> None:
        """Refuse a run whose client sampling is not the one this aggregator accounts.

        Args:
            sampling: What the run does: ``"fixed"``, ``"poisson"`` or ``"all"``.
            clients_per_round: The clients it samples per round (expected, for Poisson).
            population_size: The population it samples from, if known.

        Raises:
            FedValueError: the sampling, the clients per round or the
                population differs from the aggregator's; the message names which.
        """
        sampling = check_sampling_name(sampling)
        if sampling != self.sampling:
            raise FedValueError(
                f"sampling: the run samples clients by '{sampling}' but the aggregator {self!r} accounts "
                f"sampling = '{self.sampling}', so its epsilon would be wrong; build it with sampling = '{sampling}'"
            )
        if int(clients_per_round) != self.clients_per_round:
            raise FedValueError(
                f"clients_per_round: the run trains {int(clients_per_round)} clients per round but the "
                f"aggregator's clients_per_round (its divisor and its accounting) is {self.clients_per_round}"
            )
        if population_size is not None and self.population_size is not None and int(population_size) != self.population_size:
            raise FedValueError(
                f"population_size: the run samples from {int(population_size)} clients but the aggregator "
                f"accounts population_size = {self.population_size}"
            )

    def _check_cohort(self, client_ids: Sequence[str], round_num: int) -> None:
        """Refuse a cohort the aggregator's sampling cannot produce (its ε would not hold)."""
        n, k = len(client_ids), self.clients_per_round
        if len(set(client_ids)) != n:
            seen: set[str] = set()
            twice = sorted({c for c in client_ids if c in seen or seen.add(c)})
            raise FedValueError(
                f"client_ids: round {round_num} lists {', '.join(twice)} more than once; under differential "
                "privacy a client takes part at most once per round (its update would count twice)"
            )
        fix = "or build the aggregator with the sampling you run (sampling = 'fixed', 'poisson' or 'all')"
        if self.sampling == "fixed" and n > k:
            raise FedValueError(
                f"client_ids: round {round_num} has {n} clients, more than clients_per_round = {k}; the "
                f"aggregator accounts sampling = 'fixed' (a uniform sample of {k} clients per round), so the "
                f"round was refused before any client trained. Sample {k} clients per round "
                f"(fedr.learning.sample_clients; from R, fed_fit(clients_per_round = {k})) {fix}"
            )
        if self.sampling == "all" and n != k:
            raise FedValueError(
                f"client_ids: round {round_num} has {n} clients, but the aggregator accounts sampling = 'all' "
                f"(every one of the population's {k} clients every round), so the round was refused before "
                f"any client trained; train every client, {fix}"
            )
        if self.sampling == "poisson" and self.population_size is not None and n > self.population_size:
            raise FedValueError(
                f"client_ids: round {round_num} has {n} clients, more than population_size = "
                f"{self.population_size}, from which Poisson sampling draws; the round was refused"
            )

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
        self._check_cohort(list(client_ids), round_num)
        self._check_budget(own, len(client_ids), round_num)
        from fedr.privacy._secagg import SecureSum

        if isinstance(self.inner, SecureSum):
            # Every coordinate of an update clipped to L2 norm C lies in [-C, C]:
            # the secure sum's fixed-point range follows the (adaptive) clip.
            return self.inner.start_round(inner_state, client_ids, seed=seed, clip_range=float(own["clip"]))
        return self.inner.start_round(inner_state, client_ids, seed=seed)

    def _epsilon_if_run(self, own: dict[str, Any], cohort: int, round_num: int) -> float:
        """ε after round ``round_num`` of ``cohort`` clients, if it runs (``own``: this aggregator's state)."""
        return self.epsilon_after(round_num)

    def _epsilon_spent(self, own: dict[str, Any], round_num: int) -> float:
        """ε spent by the rounds before ``round_num``."""
        return self.epsilon_after(round_num - 1)

    def _check_budget(self, own: dict[str, Any], cohort: int, round_num: int) -> None:
        """Refuse, before anyone trains, the round that would spend more than ``max_epsilon``."""
        if self.max_epsilon is None:
            return
        after = self._epsilon_if_run(own, cohort, round_num)
        if after > self.max_epsilon:
            before = self._epsilon_spent(own, round_num)  # for the message only
            raise BudgetExhaustedError(
                f"round {round_num}: it would spend epsilon = {after:.4f}, over max_epsilon = "
                f"{self.max_epsilon:g} (delta = {self.target_delta:g}); the round was refused before "
                f"any client trained and the state is unchanged ({round_num - 1} rounds spent "
                f"epsilon = {before:.4f})"
            )

    def _repr_options(self, default_sampling: str) -> str:
        """The options that differ from their defaults, for ``repr`` (shared by the DP aggregators)."""
        extra = "" if self.sampling == default_sampling else f", sampling='{self.sampling}'"
        if self.max_epsilon is not None:
            extra += f", max_epsilon={self.max_epsilon:g}"
        if self.accountant != "rdp":
            extra += f", accountant='{self.accountant}'"
        if self.noise_seed is not None:
            extra += f", noise_seed={self.noise_seed}"
        return extra

    # -- the inner sum's message stages (secure aggregation) pass through

    @property
    def stages_before(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.inner.stages_before

    @property
    def stages_after(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.inner.stages_after

    def stage_requests(self, stage: str, context: Any, outputs: Sequence[Any] | None = None) -> dict[int, Any]:
        sent = None if outputs is None else [_Output(o.client_id, o.delta.vector, o.num_examples) for o in outputs]
        return self.inner.stage_requests(stage, context, sent)

    def stage_results(self, stage: str, context: Any, replies: dict[int, Any]) -> None:
        self.inner.stage_results(stage, context, replies)

    def client_stage(self, stage: str, payload: Any, session: Any) -> tuple[Any, Any]:
        return self.inner.client_stage(stage, payload, session)

    def client_view(self, state: NamedArrays, context: Any, client_id: str, position: int = -1) -> ClipView:
        own, inner_state = self._split(state)
        return ClipView(float(own["clip"]), self.inner.client_view(inner_state, context, client_id, position))

    def encode(self, view: Any, delta: np.ndarray, *, num_examples: int = 0, session: Any = None) -> ClippedUpdate:
        """Clip the whole update to the round's clip (on the client), then the inner sum's encoding.

        Under a secure inner sum everything the client contributes goes inside
        the masked vector: adaptive clipping's bit (1 if the update was not
        clipped) rides as one more coordinate, scaled by the clip so that it
        fits the sum's range, and no norm is sent.
        """
        if not isinstance(view, ClipView):
            raise FedValueError(f"view: expected this round's ClipView from client_view(), got {type(view).__name__}")
        clip = view.clip
        norm = float(np.linalg.norm(delta.astype(np.float64)))
        clipped = delta if norm <= clip else (delta * np.float32(clip / norm)).astype(np.float32)
        clipped = np.ascontiguousarray(clipped, np.float32)
        if self.inner.stages_before and self.adaptive:
            bit = np.float32(clip if norm <= clip else 0.0)
            vector = self.inner.encode(view.inner, np.append(clipped, bit), num_examples=num_examples, session=session)
            return ClippedUpdate(vector, float("nan"), None)
        vector = self.inner.encode(view.inner, clipped, num_examples=num_examples, session=session)
        if self.inner.stages_before:
            return ClippedUpdate(vector, float("nan"), None)
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
        unclipped = sum(1 for o in outputs if o.delta.unclipped)
        if self.inner.stages_before and self.adaptive:
            # The count came through the secure sum, as its last coordinate (bits scaled by the clip).
            unclipped = int(round(total[-1] / clip)) if clip > 0 else 0
            total = total[:-1]
        # The noise never comes from `seed` (the process seed's stream): see _noise.
        rng = noise_generator(self.noise_seed, rounds)
        stddev = self.update_noise_multiplier * clip
        noised = total + rng.normal(0.0, stddev, total.shape) if stddev > 0 else total
        update = (noised / self.clients_per_round).astype(np.float32)
        metrics = {"clip": clip, "dp_noise_stddev": stddev}
        new_clip = clip
        if self.adaptive:
            # TensorFlow Privacy's QuantileEstimatorQuery: the centred count
            # sum(b_i - 1/2) has sensitivity 1/2 (what z_delta assumes); add back
            # half the expected count, normalise, clamp to [0, 1].
            centred = unclipped - 0.5 * len(outputs)
            if self.noise_multiplier > 0:
                centred += rng.normal(0.0, self.clipped_count_stddev)
            fraction = min(1.0, max(0.0, centred / self.clients_per_round + 0.5))
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
        extra = self._repr_options("fixed")
        return (
            f"{kind}(noise_multiplier={self.noise_multiplier:g}, clients_per_round={self.clients_per_round}, "
            f"{clip}={self.initial_clip:g}{extra}, inner={self.inner!r})"
        )


