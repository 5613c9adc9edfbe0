"""Distributed differential privacy: the clients noise their own updates inside the secure sum (Skellam).

With central DP over secure aggregation (``gaussian_fixed(inner=secure_sum())``)
the server decodes the exact sum and only then adds noise: the guarantee holds
against whoever reads the model, not against the server. Here (Agarwal, Kairouz
and Liu 2021, "The Skellam Mechanism for Differentially Private Federated
Learning"; the same design as Kairouz, Liu and Steinke 2021's distributed
discrete Gaussian, with Skellam noise because a sum of Skellam shares is
exactly Skellam), each client

1. L2-clips its whole update to C (on the client),
2. rounds it stochastically to the secure sum's integer grid (scale s),
3. adds its share of integer noise, Sk(λ, λ) per coordinate with
   2λ = s² σ_share², drawn where it runs from the OS CSPRNG, and
4. masks the result (secure aggregation), so the server only ever decodes
   the sum of noised vectors: Σ (q_i + n_i), whose noise is Sk(mλ, mλ) over
   the m clients whose vectors arrived.

The shares are sized for dropouts, round by round: for a round of n clients,
σ_share² = (zC)² / m₀ with m₀ = ceil(n × (1 − dropout_rate)) the survivors
provisioned (public, in each client's view), so as long as at least m₀
vectors arrive the sum carries at least the planned variance (zC)² (what ε
accounts; more survivors only add noise), whatever the size of a Poisson
cohort. With fewer,
``on_excess_dropout`` decides: ``"refuse"`` (default) stops the round *before
the unmask stage*, so the under-noised sum is never decoded; ``"report"``
decodes it and accounts the weaker guarantee (variance m (σ_share)²) in that
round's ε, with a :class:`PrivacyWeakenedWarning` naming it.

Accounting (:mod:`fedr.privacy._ddp_accounting`): the Skellam mechanism's RDP
(the paper's Theorem 3.5, with the rounding's sensitivity), Poisson
subsampling by Zhu and Wang 2019's general bound, and dp-accounting's
conversion to (ε, δ). The RDP of the rounds is kept in the aggregator's state
(``rdp``), so rounds of different noise compose exactly. Fixed-size sampling
without replacement is refused: no bound for it is used here.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedr.aggregators import AggregateResult
from fedr.errors import FedValueError, FedWarning
from fedr.privacy._accounting import _number
from fedr.privacy._ddp_accounting import ORDERS, epsilon_from_rdp, round_rdp
from fedr.privacy._dp import GaussianDP, _Output
from fedr.privacy._secagg import SecureSum

__all__ = ["DistributedDP", "PrivacyWeakenedWarning", "distributed_dp"]

NamedArrays = tuple[tuple[str, np.ndarray], ...]

ON_EXCESS_DROPOUT = ("refuse", "report")
# Before the first round the model's dimension is unknown to the budget check:
# this stands in for it (the rounding's sensitivity grows with sqrt(dim)).
_DIM_BEFORE_FIRST_ROUND = 2**30


class PrivacyWeakenedWarning(FedWarning):
    """A round of distributed DP had fewer survivors than provisioned: its noise, hence its ε, is weaker."""


class DistributedDP(GaussianDP):
    """Distributed DP over secure aggregation with Skellam noise shares (see :func:`distributed_dp`)."""

    def __init__(
        self,
        noise_multiplier: float,
        clients_per_round: int,
        *,
        clip: float,
        population_size: int | None = None,
        target_delta: float | None = None,
        max_epsilon: float | None = None,
        sampling: str = "all",
        dropout_rate: float = 0.1,
        on_excess_dropout: str = "refuse",
        bits: int = 32,
        threshold: int | float | None = None,
        neighbors: int | None = None,
        noise_seed: int | None = None,
    ) -> None:
        if sampling == "fixed":
            raise FedValueError(
                "sampling: distributed DP accounts sampling = 'poisson' or 'all'; no RDP bound for the Skellam "
                "mechanism under fixed-size sampling without replacement is used here (sample clients with "
                "fedr.learning.sample_clients_poisson, or train every client)"
            )
        _number(noise_multiplier, "noise_multiplier", low=0, low_open=True)
        _number(clip, "clip", low=0, low_open=True)
        inner = SecureSum(clip_range=clip, bits=bits, threshold=threshold, neighbors=neighbors)
        super().__init__(
            noise_multiplier, clients_per_round, clip=clip, adaptive=False, population_size=population_size,
            target_delta=target_delta, max_epsilon=max_epsilon, inner=inner, sampling=sampling,
            noise_seed=noise_seed,
        )
        self.dropout_rate = _number(dropout_rate, "dropout_rate", low=0, high=1, high_open=True)
        if not isinstance(on_excess_dropout, str) or on_excess_dropout not in ON_EXCESS_DROPOUT:
            raise FedValueError(f"on_excess_dropout: expected 'refuse' or 'report', got {on_excess_dropout!r}")
        self.on_excess_dropout = on_excess_dropout
        #: The noise shares provisioned for a round of ``clients_per_round`` clients, and each one's stddev.
        self.provisioned = self.provisioned_for(self.clients_per_round)
        self.share_stddev = self.share_stddev_for(self.clients_per_round)
        self.bits, self.threshold, self.neighbors = inner.bits, inner.threshold, inner.neighbors

    def provisioned_for(self, cohort: int) -> int:
        """The noise shares a round of ``cohort`` clients is sized for: ceil(cohort × (1 − dropout_rate))."""
        return max(1, math.ceil(cohort * (1 - self.dropout_rate) - 1e-9))

    def share_stddev_for(self, cohort: int) -> float:
        """Each client's noise share's standard deviation (update units) in a round of ``cohort`` clients."""
        return self.noise_multiplier * self.initial_clip / math.sqrt(self.provisioned_for(cohort))

    @property
    def clip(self) -> float:
        """The L2 clip C."""
        return self.initial_clip

    @property
    def _q(self) -> float:
        if self.sampling == "poisson" and self.population_size is not None:
            return self.clients_per_round / self.population_size
        return 1.0

    def _round_rdp(self, survivors: int, scale: float, dim: int, cohort: int | None = None) -> np.ndarray:
        """One round's RDP with ``survivors`` noise shares of a ``cohort``'s round (counted up to the provisioned)."""
        cohort = self.clients_per_round if cohort is None else cohort
        variance = min(survivors, self.provisioned_for(cohort)) * self.share_stddev_for(cohort) ** 2
        return round_rdp(q=self._q, variance=variance, scale=scale, clip=self.initial_clip, dim=dim)

    def _planned_scale(self) -> float:
        return self.inner._noisy_scale(self.clients_per_round, self.initial_clip, self.share_stddev)

    def planned_round_rdp(self, dim: int = _DIM_BEFORE_FIRST_ROUND) -> np.ndarray:
        """One planned round's RDP at :data:`~fedr.privacy._ddp_accounting.ORDERS` (the provisioned shares arriving)."""
        return self._round_rdp(self.provisioned, self._planned_scale(), dim)

    def epsilon_after(self, rounds: int, dim: int = _DIM_BEFORE_FIRST_ROUND) -> float:
        """ε after ``rounds`` planned rounds (every provisioned client's share arriving) for a model of ``dim`` weights.

        ``dim`` enters through stochastic rounding's sensitivity (√dim integers
        at the fixed point's scale); the default, 2^30, stands for any model.
        """
        assert self.population_size is not None and self.target_delta is not None
        if rounds <= 0:
            return 0.0
        return epsilon_from_rdp(rounds * self.planned_round_rdp(dim), self.target_delta)

    def _epsilon_if_run(self, own: dict[str, Any], cohort: int, round_num: int) -> float:
        """ε after this round (the state's RDP plus the round's with its provisioned shares)."""
        assert self.target_delta is not None
        dim = int(own["dim"]) or _DIM_BEFORE_FIRST_ROUND
        n = max(2, cohort)
        scale = self.inner._noisy_scale(n, self.initial_clip, self.share_stddev_for(n))
        after = np.asarray(own["rdp"], np.float64) + self._round_rdp(self.provisioned_for(n), scale, dim, n)
        return epsilon_from_rdp(after, self.target_delta)

    def _epsilon_spent(self, own: dict[str, Any], round_num: int) -> float:
        """ε spent so far: the state's RDP."""
        assert self.target_delta is not None
        return epsilon_from_rdp(np.asarray(own["rdp"], np.float64), self.target_delta)

    # -- state: clip, rounds, the RDP spent so far at fedr.privacy._ddp_accounting.ORDERS, the model's size

    def init(self) -> NamedArrays:
        own = (("clip", np.float64(self.initial_clip)), ("rounds", np.int64(0)),
               ("rdp", np.zeros(len(ORDERS))), ("dim", np.int64(0)))
        return own + tuple((f"inner/{n}", v) for n, v in self.inner.init())

    def start_round(
        self, state: NamedArrays, client_ids: Sequence[str], *, seed: np.random.SeedSequence | None = None
    ) -> Any:
        own, inner_state = self._split(state)
        round_num = int(own["rounds"]) + 1
        self._check_cohort(list(client_ids), round_num)
        self._check_budget(own, len(client_ids), round_num)
        words = None if self.noise_seed is None else (self.noise_seed, round_num)
        return self.inner.start_round(inner_state, client_ids, seed=seed, clip_range=self.initial_clip,
                                      noise_stddev=self.share_stddev_for(len(client_ids)), noise_words=words)

    def stage_requests(self, stage: str, context: Any, outputs: Sequence[Any] | None = None) -> dict[int, Any]:
        if stage == "unmask" and outputs is not None and self.on_excess_dropout == "refuse":
            arrived = len(outputs)
            ctx = self.inner._context(context)
            provisioned = self.provisioned_for(ctx.config.num_clients)
            if arrived < provisioned:
                raise FedValueError(
                    f"distributed DP: only {arrived} of the round's {ctx.config.num_clients} clients sent their "
                    f"noised update, fewer than the {provisioned} the noise shares were sized for "
                    f"(dropout_rate = {self.dropout_rate:g}); their sum would carry less noise than planned, so "
                    "the round was refused before unmasking and the state is unchanged (on_excess_dropout = "
                    "'report' releases it with its weaker epsilon instead)"
                )
        return super().stage_requests(stage, context, outputs)

    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[Any],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        own, inner_state = self._split(state)
        rounds = int(own["rounds"]) + 1
        ctx = self.inner._context(context)
        sent = [_Output(o.client_id, o.delta.vector, o.num_examples) for o in outputs]
        # The decoded sum already carries the clients' noise: nothing is added here.
        inner = self.inner.aggregate(inner_state, sent, seed=seed, context=context)
        total = np.asarray(inner.update, np.float64)
        survivors = int(inner.metrics["secure_clients"])
        cohort = ctx.config.num_clients
        provisioned = self.provisioned_for(cohort)
        shares = min(survivors, provisioned)
        stddev = math.sqrt(survivors) * self.share_stddev_for(cohort)
        rdp = np.asarray(own["rdp"], np.float64) + self._round_rdp(survivors, ctx.scale, total.size, cohort)
        metrics = {
            "clip": self.initial_clip,
            "dp_noise_stddev": stddev,
            "ddp_noise_shares": float(survivors),
            "ddp_provisioned": float(provisioned),
        }
        if self.accountable:
            metrics["epsilon"] = epsilon_from_rdp(rdp, self.target_delta)
        if shares < provisioned:
            what = f"epsilon = {metrics['epsilon']:.4f}" if "epsilon" in metrics else "a weaker guarantee"
            warnings.warn(
                f"distributed DP, round {rounds}: {survivors} noise shares arrived, fewer than the "
                f"{provisioned} provisioned, so the sum was released with noise stddev {stddev:.4g} instead "
                f"of {self.noise_multiplier * self.initial_clip:.4g}; accounted: {what}",
                PrivacyWeakenedWarning, stacklevel=3,
            )
        metrics.update({f"inner_{k}": v for k, v in inner.metrics.items()})
        update = (total / self.clients_per_round).astype(np.float32)
        new_state = (("clip", np.float64(self.initial_clip)), ("rounds", np.int64(rounds)), ("rdp", rdp),
                     ("dim", np.int64(total.size))) + tuple((f"inner/{n}", v) for n, v in inner.state)
        return AggregateResult(new_state, update, metrics)

    def __repr__(self) -> str:
        extra = self._repr_options("all")
        if self.on_excess_dropout != "refuse":
            extra += f", on_excess_dropout='{self.on_excess_dropout}'"
        return (
            f"distributed_dp(noise_multiplier={self.noise_multiplier:g}, clients_per_round={self.clients_per_round}, "
            f"clip={self.initial_clip:g}, dropout_rate={self.dropout_rate:g}, bits={self.bits}{extra})"
        )


def distributed_dp(
    noise_multiplier: float,
    clients_per_round: int,
    clip: float,
    *,
    population_size: int | None = None,
    target_delta: float | None = None,
    max_epsilon: float | None = None,
    sampling: str = "all",
    dropout_rate: float = 0.1,
    on_excess_dropout: str = "refuse",
    bits: int = 32,
    threshold: int | float | None = None,
    neighbors: int | None = None,
    noise_seed: int | None = None,
) -> DistributedDP:
    """Distributed DP over secure aggregation: each client adds its share of Skellam noise inside the secure sum.

    The server never sees an un-noised sum (see :mod:`fedr.privacy._ddp`): the
    noise is added by the clients to their clipped, quantised updates before
    masking. The aggregate is the noised sum over ``clients_per_round`` (an
    unweighted mean, as :func:`gaussian_fixed`), with total noise standard
    deviation at least ``noise_multiplier * clip`` per coordinate as long as
    no more than ``dropout_rate`` of the cohort drops out. Runs wherever
    secure aggregation runs (threads, Ray, Flower): the noise shares are made
    where each client runs, from the OS CSPRNG.

    Args:
        noise_multiplier: z > 0: the total noise's standard deviation over the clip.
        clients_per_round: Clients per round (the divisor; the expected number under Poisson sampling).
        clip: The L2 clip C > 0 of each client's whole update.
        population_size, target_delta: With both, every round reports
            ``epsilon`` (Skellam RDP, see :mod:`fedr.privacy._ddp_accounting`).
        max_epsilon: Refuse a round that would spend more, before any client trains.
        sampling: ``"all"`` (default: every client every round) or
            ``"poisson"``; ``"fixed"`` is refused (no bound for it is used).
        dropout_rate: The share of a round's cohort that may drop out with
            the planned guarantee intact, in [0, 1): the noise shares of a
            round of n clients are sized for ceil(n × (1 − dropout_rate))
            survivors (so a small Poisson cohort gets larger shares).
        on_excess_dropout: ``"refuse"`` (default: fewer survivors stop the
            round before unmasking, the state unchanged) or ``"report"``
            (release with the weaker ε in that round's ``epsilon``, and a
            :class:`PrivacyWeakenedWarning`).
        bits, threshold, neighbors: The secure sum's (:func:`secure_sum`); the
            fixed point leaves room for the noise.
        noise_seed: Tests only: reproducible noise shares from (noise_seed,
            round, client); voids the guarantee and warns.

    Returns:
        A :class:`DistributedDP` aggregator reporting ``clip``,
        ``dp_noise_stddev`` (of the sum released), ``ddp_noise_shares``,
        ``ddp_provisioned``, ``epsilon`` (when accounted) and the secure sum's metrics.

    Raises:
        FedValueError: an argument out of range (named), ``sampling = 'fixed'``.
    """
    return DistributedDP(
        noise_multiplier, clients_per_round, clip=clip, population_size=population_size,
        target_delta=target_delta, max_epsilon=max_epsilon, sampling=sampling, dropout_rate=dropout_rate,
        on_excess_dropout=on_excess_dropout, bits=bits, threshold=threshold, neighbors=neighbors,
        noise_seed=noise_seed,
    )
