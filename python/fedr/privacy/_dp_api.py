"""The DP aggregators' builders and the sampling check (the mechanism is fedr.privacy._dp.GaussianDP)."""

from __future__ import annotations

from typing import Any


from fedr.aggregators import Aggregator
from fedr.privacy._accounting import check_sampling_name
from fedr.privacy._dp import GaussianDP


def check_sampling(aggregator: Any, sampling: str, clients_per_round: int, population_size: int | None = None) -> None:
    """Refuse a run whose client sampling differs from what a DP ``aggregator`` accounts (others: no check).

    R's ``fed_fit`` calls it before the first round with what it will do
    (uniform sampling of ``clients_per_round``: ``"fixed"``; every client: ``"all"``).

    Args:
        aggregator: The process's aggregator.
        sampling: ``"fixed"``, ``"poisson"`` or ``"all"``.
        clients_per_round: Clients per round (expected, for Poisson).
        population_size: The population sampled from.

    Raises:
        FedValueError: a mismatch, naming ``sampling``, ``clients_per_round`` or ``population_size``.
    """
    check_sampling_name(sampling)
    if isinstance(aggregator, GaussianDP):
        aggregator.check_sampling(sampling, clients_per_round, population_size)


def gaussian_fixed(
    noise_multiplier: float,
    clients_per_round: int,
    clip: float,
    *,
    population_size: int | None = None,
    target_delta: float | None = None,
    max_epsilon: float | None = None,
    inner: Aggregator | None = None,
    sampling: str = "fixed",
    noise_seed: int | None = None,
    accountant: str = "rdp",
) -> GaussianDP:
    """DP-FedAvg with a fixed clip (McMahan et al. 2018), as ``aggregator=``.

    Each client's whole update is L2-clipped to ``clip``; the server sums them
    (through ``inner``), adds N(0, (noise_multiplier·clip)²) per coordinate and
    divides by ``clients_per_round``. The noise comes from the operating
    system's CSPRNG, fresh at every release: nobody who knows the process seed
    can recompute it. Non-trainable variables (BatchNorm statistics) are not
    aggregated under DP: they would leak unprotected, so they keep their
    initial values (the process warns when the model has any).

    What a round releases: the model update and, in the round's metrics,
    ``clip``, ``dp_noise_stddev``, ``epsilon`` (when accounted), the inner
    sum's metrics, ``num_clients`` (not under Poisson sampling),
    ``num_clients_dropped`` and ``num_clients_failed``. The training loss, the
    model's metrics (accuracy, ...) and ``num_examples`` are exact functions
    of the clients' data that ε does not cover, so they are left out; evaluate
    on held-out data instead.

    Args:
        noise_multiplier: z >= 0 (0: clipping only, no privacy).
        clients_per_round: The number of clients per round (the divisor; the
            expected number under Poisson sampling).
        clip: The L2 norm bound C > 0.
        population_size: Clients in the population; with ``target_delta``,
            every round's metrics report ``epsilon``. Under ``"all"`` it is
            ``clients_per_round``.
        target_delta: δ in (0, 1).
        max_epsilon: Refuse a round that would spend more than this, before any
            client trains (the state stays unchanged).
        inner: The sum (an aggregator with ``is_sum``): ``fedr.aggregators.sum()``
            (default) or ``fedr.privacy.secure_sum(...)``; a mean or median is refused.
        sampling: How the rounds' clients are drawn, which ε accounts and each
            round checks: ``"fixed"`` (default: a uniform sample of at most
            ``clients_per_round`` without replacement, as
            ``fedr.learning.sample_clients``, R's ``fed_fit`` and Flower's
            ``fraction`` do; a larger cohort is refused), ``"poisson"`` (each
            client with probability ``clients_per_round / population_size``,
            ``fedr.learning.sample_clients_poisson``) or ``"all"`` (every
            client every round; any other cohort size is refused). A client
            listed twice in a round is refused under any sampling.
        noise_seed: For tests only: reproducible noise from (noise_seed,
            round). Whoever knows it can remove the noise, so it voids the
            guarantee and warns (:class:`ReproducibleNoiseWarning`).
        accountant: Which of dp-accounting's accountants gives ``epsilon``
            (the metric, and ``max_epsilon``'s check): ``"rdp"`` (default)
            or ``"pld"`` (privacy loss distributions: tighter, for
            ``"poisson"`` and ``"all"`` sampling; ``"fixed"`` is refused).
            A round refused by ``max_epsilon`` raises
            :class:`~fedr.errors.BudgetExhaustedError` (``fit`` ends there).

    Returns:
        A :class:`GaussianDP` aggregator.

    Raises:
        FedValueError: an argument out of range, named in the message.
        FedTypeError: ``inner`` is not a sum.
    """
    return GaussianDP(
        noise_multiplier, clients_per_round, clip=clip, adaptive=False, population_size=population_size,
        target_delta=target_delta, max_epsilon=max_epsilon, inner=inner, sampling=sampling, noise_seed=noise_seed,
        accountant=accountant,
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
    sampling: str = "fixed",
    noise_seed: int | None = None,
    accountant: str = "rdp",
) -> GaussianDP:
    """DP-FedAvg with adaptive clipping (Andrew et al. 2021), as ``aggregator=``.

    As :func:`gaussian_fixed`, but the clip follows the ``target_quantile`` of
    the clients' update norms: ``C <- C · exp(-clip_learning_rate · (b̄ - target_quantile))``
    with b̄ the noised fraction of clients whose update norm is at most C,
    released as TensorFlow Privacy's quantile estimator does: the centred
    count Σ(b_i − 1/2) (sensitivity 1/2) plus N(0, σ_b²), plus half of
    ``clients_per_round``, over ``clients_per_round``, clamped to [0, 1]. So
    the clip grows when most updates are clipped and shrinks when few are.
    The update noise multiplier is raised to (z⁻² − (2σ_b)⁻²)^(−1/2) so that
    both releases together have the privacy of one Gaussian mechanism with
    multiplier ``noise_multiplier`` (which is what ε accounts).

    What a round releases: as :func:`gaussian_fixed`, plus
    ``dp_unclipped_fraction`` (b̄, a DP release); loss, model metrics and
    ``num_examples`` are left out.

    Args:
        noise_multiplier: z >= 0; must be below ``2 * clipped_count_stddev``.
        clients_per_round: The number of clients per round (expected, for Poisson).
        initial_clip: The clip of the first round (> 0).
        target_quantile: γ in [0, 1], the share of updates the clip should fit.
        clip_learning_rate: η >= 0.
        clipped_count_stddev: σ_b > 0, the noise on the centred count of
            unclipped updates; default ``clients_per_round / 20``.
        population_size, target_delta, max_epsilon, inner, sampling, noise_seed, accountant:
            As in :func:`gaussian_fixed`.

    Returns:
        A :class:`GaussianDP` aggregator reporting ``clip``,
        ``dp_unclipped_fraction`` (and ``epsilon``) every round.

    Raises:
        FedValueError: an argument out of range, or noise_multiplier >= 2σ_b.
        FedTypeError: ``inner`` is not a sum.
    """
    return GaussianDP(
        noise_multiplier, clients_per_round, clip=initial_clip, adaptive=True, target_quantile=target_quantile,
        clip_learning_rate=clip_learning_rate, clipped_count_stddev=clipped_count_stddev,
        population_size=population_size, target_delta=target_delta, max_epsilon=max_epsilon, inner=inner,
        sampling=sampling, noise_seed=noise_seed, accountant=accountant,
    )
