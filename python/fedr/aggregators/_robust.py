"""Byzantine-robust aggregators: median, trimmed mean, (multi-)Krum, geometric median, Bulyan, norm bounds.

A few clients sending arbitrary updates (faulty or malicious, "Byzantine")
move the mean as far as they like. These aggregators bound their influence:

- Coordinate-wise median and beta-trimmed mean: Yin et al. 2018,
  "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates"
  (ICML, arXiv:1803.01498). Each coordinate of the aggregate is the median of
  the clients' values of that coordinate, or their mean after dropping the
  floor(beta * n) smallest and largest. Both ignore example counts.
- Krum and multi-Krum: Blanchard et al. 2017, "Machine Learning with
  Adversaries: Byzantine Tolerant Gradient Descent" (NeurIPS). With n clients
  of which at most f are Byzantine, client i scores the sum of its n - f - 2
  smallest squared distances to the other clients' updates; the update with
  the lowest score wins, or with ``num_selected = m > 1`` the
  example-weighted mean of the m best (multi-Krum). Needs n > 2f + 2.
- Geometric median: Pillutla et al. 2022, "Robust Aggregation for Federated
  Learning" (RFA, IEEE TSP, arXiv:1912.13445): the smoothed Weiszfeld
  iteration from the example-weighted mean; breakdown point 1/2. Needs n >= 3.
- Bulyan: El Mhamdi et al. 2018, "The Hidden Vulnerability of Distributed
  Learning in Byzantium" (ICML): Krum, repeated, selects n - 2f updates; each
  coordinate is the mean of the n - 4f selected values nearest its median.
  Needs n >= 4f + 3.
- Norm bounding and zeroing: Sun et al. 2019, "Can You Really Backdoor
  Federated Learning?" (arXiv:1911.07963): the server clips each update to a
  norm, or drops those above it, in front of any aggregator that reads the
  raw updates (in :mod:`fedr.aggregators._bounded`).

One rule for the robust aggregators: a round must have enough clients for
the aggregator to outvote at least one bad client, or the one it was asked
to tolerate. The median needs 3 clients (the median of 2 is their mean), the
trimmed mean with ``beta > 0`` needs floor(beta * n) >= 1 (``trimmed_mean(0.3)``
with 3 clients would trim nobody), Krum needs n > 2f + 2, the geometric
median 3 clients and Bulyan n >= 4f + 3; ``norm_bounded`` and ``zeroing``
apply their inner aggregator's rule (zeroing: to the updates it keeps). With fewer, the
round is refused with a :class:`~fedr.errors.FedValueError` naming the number
needed: in ``start_round``, before any client trains, and again in
``aggregate`` when failed or dropped clients left too few. ``trimmed_mean(0)``
(the unweighted mean) and ``krum(0)`` tolerate nobody by request and only
need what their rule needs. The functions on arrays (``coordinate_median``,
...) compute their rule for any number of rows.

The median, the trimmed mean, the pairwise distances (Krum, Bulyan's
selection) and the Weiszfeld steps run in the C++ kernel
``fedr._kernels`` on the clients' updates in place (float32, C-contiguous,
never copied; GIL released, both cores). A numpy reference with the same
semantics (``median_numpy``, ``trimmed_mean_numpy``, ``krum_numpy``,
``geometric_median_numpy``, ``bulyan_numpy``) is used
when the kernel is not built, and by the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedr.aggregators._mean import AggregateResult, Aggregator, ClientResult, NamedArrays, deltas
from fedr.aggregators._weighted_mean import weighted_mean
from fedr.errors import FedTypeError, FedValueError
from fedr.aggregators._robust_math import HAVE_ROBUST_KERNEL, WeiszfeldResult, _bulyan, _check_bulyan_clients, _check_gm_params, _check_krum_clients, _check_beta, _check_count, _krum_select, bulyan_numpy, coordinate_median, coordinate_trimmed_mean, geometric_median_numpy, krum_numpy, krum_scores, median_numpy, pairwise_sq_distances, pairwise_sq_distances_numpy, smoothed_weiszfeld, trimmed_mean_numpy  # noqa: F401 - split out, names kept here

__all__ = [
    "HAVE_ROBUST_KERNEL",
    "Bulyan",
    "GeometricMedian",
    "Krum",
    "Median",
    "TrimmedMean",
    "WeiszfeldResult",
    "bulyan",
    "bulyan_numpy",
    "coordinate_median",
    "coordinate_trimmed_mean",
    "geometric_median",
    "geometric_median_numpy",
    "krum",
    "krum_numpy",
    "krum_scores",
    "median",
    "median_numpy",
    "pairwise_sq_distances",
    "pairwise_sq_distances_numpy",
    "smoothed_weiszfeld",
    "trimmed_mean",
    "trimmed_mean_numpy",
]


# --- numpy references ------------------------------------------------------------


def _min_trimmed_clients(beta: float) -> int:
    """The fewest clients n with floor(beta * n) >= 1 (1 for beta = 0: nothing to trim)."""
    if beta == 0.0:
        return 1
    n = max(1, math.ceil(1.0 / beta))
    while math.floor(beta * n) < 1:  # float rounding of 1 / beta
        n += 1
    return n


def _check_round_size(aggregator: Aggregator, n: int) -> None:
    """Refuse a round of ``n`` clients in which ``aggregator`` cannot outvote anyone (see the module docstring)."""
    if isinstance(aggregator, Krum):
        _check_krum_clients(aggregator.num_byzantine, n)
    elif isinstance(aggregator, Bulyan):
        _check_bulyan_clients(aggregator.num_byzantine, n)
    elif isinstance(aggregator, Median | GeometricMedian) and n < 3:
        name = "median()" if isinstance(aggregator, Median) else "geometric_median()"
        raise FedValueError(
            f"{name}: a round of {n} client(s) cannot outvote a single bad client (the median "
            "of 2 is their mean); it needs at least 3 clients"
        )
    elif isinstance(aggregator, TrimmedMean) and n < (need := _min_trimmed_clients(aggregator.beta)):
        raise FedValueError(
            f"beta={aggregator.beta}: the trimmed mean of {n} client(s) trims floor({aggregator.beta} * {n}) = "
            f"0 values from each side, so it cannot outvote a single bad client; it needs at least "
            f"{need} clients"
        )


# --- kernel-backed functions -----------------------------------------------------


# --- aggregators -----------------------------------------------------------------


class _Robust(Aggregator):
    """A robust aggregator: refuses, before anyone trains, a round too small to outvote a bad client."""

    def start_round(
        self, state: NamedArrays, client_ids: Sequence[str], *, seed: np.random.SeedSequence | None = None
    ) -> Any:
        _check_round_size(self, len(client_ids))
        return None


class Median(_Robust):
    """The coordinate-wise median of the clients' updates (C++ kernel)."""

    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[ClientResult],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        updates = deltas(outputs)
        _check_round_size(self, len(updates))
        return AggregateResult(state, coordinate_median(updates), {})

    def __repr__(self) -> str:
        return "median()"


class TrimmedMean(_Robust):
    """The coordinate-wise beta-trimmed mean of the clients' updates (C++ kernel)."""

    def __init__(self, beta: float) -> None:
        self.beta = _check_beta(beta)

    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[ClientResult],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        updates = deltas(outputs)
        _check_round_size(self, len(updates))
        update = coordinate_trimmed_mean(updates, self.beta)
        return AggregateResult(state, update, {"trimmed_per_side": float(math.floor(self.beta * len(updates)))})

    def __repr__(self) -> str:
        return f"trimmed_mean(beta={self.beta})"


class Krum(_Robust):
    """(Multi-)Krum: the update(s) closest to their n - f - 2 nearest neighbours."""

    def __init__(self, num_byzantine: int, num_selected: int = 1) -> None:
        self.num_byzantine = _check_count(num_byzantine, "num_byzantine", 0)
        self.num_selected = _check_count(num_selected, "num_selected", 1)

    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[ClientResult],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        updates = deltas(outputs)
        # Checked before the distances so that too few clients fail fast.
        _check_round_size(self, len(updates))
        selected = _krum_select(pairwise_sq_distances(updates), self.num_byzantine, self.num_selected)
        if len(selected) == 1:
            update = np.array(updates[selected[0]], dtype=np.float32, copy=True)
        else:
            counts = [float(outputs[i].num_examples) for i in selected]
            update = weighted_mean([updates[i] for i in selected], counts)
        return AggregateResult(state, update, {"krum_selected": float(len(selected))},
                               tuple(sorted(int(i) for i in selected)))

    def __repr__(self) -> str:
        return f"krum(num_byzantine={self.num_byzantine}, num_selected={self.num_selected})"


def median() -> Median:
    """The coordinate-wise median of the clients' updates (Yin et al. 2018).

    Robust to fewer than half of the clients sending arbitrary updates. Every
    client counts the same, whatever its number of examples; for an even
    number of clients each coordinate is the mean of its two middle values.
    A round needs at least 3 clients (the median of 2 is their mean, which
    outvotes nobody); with fewer it is refused.

    Returns:
        An :class:`Aggregator`.

    Raises:
        FedValueError: (at a round, before training and at aggregation) fewer
            than 3 clients.
    """
    return Median()


def trimmed_mean(beta: float) -> TrimmedMean:
    """The coordinate-wise trimmed mean of the clients' updates (Yin et al. 2018).

    For each coordinate, the floor(beta * n) smallest and floor(beta * n)
    largest of the n clients' values are dropped and the rest averaged (every
    client counts the same). Tolerates up to floor(beta * n) Byzantine
    clients; ``beta=0`` is the unweighted mean. Metrics: ``trimmed_per_side``.
    With ``beta > 0`` a round must trim at least one value from each side:
    it needs n with floor(beta * n) >= 1 (4 clients for beta = 0.3); a
    smaller round is refused rather than silently averaged untrimmed.

    Args:
        beta: The fraction cut from each tail, in [0, 0.5).

    Returns:
        An :class:`Aggregator`.

    Raises:
        FedValueError: ``beta`` is outside [0, 0.5); at a round (before
            training and at aggregation), too few clients to trim one.
        FedTypeError: ``beta`` is not a number.
    """
    return TrimmedMean(beta)


def krum(num_byzantine: int, num_selected: int = 1) -> Krum:
    """Krum, or multi-Krum with ``num_selected`` > 1 (Blanchard et al. 2017).

    Each of the n clients scores the sum of its n - f - 2 smallest squared
    distances to the other updates (f = ``num_byzantine``); the update with the
    lowest score is applied, or the example-weighted mean of the
    ``num_selected`` lowest (ties go to the earlier client). A round needs
    n > 2f + 2 clients and ``num_selected`` <= n - f (a smaller round is
    refused before its clients train). Metrics: ``krum_selected``.

    Args:
        num_byzantine: f, the number of Byzantine clients to tolerate (>= 0).
        num_selected: m, how many of the best-scored updates to average (>= 1).

    Returns:
        An :class:`Aggregator`.

    Raises:
        FedValueError: A count is out of range (at construction); at
            aggregation, too few clients for ``num_byzantine`` or
            ``num_selected``.
        FedTypeError: A count is not an int.
    """
    return Krum(num_byzantine, num_selected)


class GeometricMedian(_Robust):
    """The (example-weighted) geometric median of the updates, by smoothed Weiszfeld (RFA; C++ kernel)."""

    def __init__(
        self, smoothing: float = 1e-6, max_iterations: int = 100, tolerance: float = 1e-6, *, weighted: bool = True
    ) -> None:
        self.smoothing, self.max_iterations, self.tolerance = _check_gm_params(smoothing, max_iterations, tolerance)
        if not isinstance(weighted, bool):
            raise FedTypeError(f"weighted: expected True or False, got {weighted!r}")
        self.weighted = weighted

    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[ClientResult],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        updates = deltas(outputs)
        _check_round_size(self, len(updates))
        weights = [float(out.num_examples) for out in outputs] if self.weighted else None
        result = smoothed_weiszfeld(
            updates, weights, smoothing=self.smoothing, max_iterations=self.max_iterations, tolerance=self.tolerance
        )
        return AggregateResult(state, result.median, {"geometric_median_iterations": float(result.iterations)})

    def __repr__(self) -> str:
        return (f"geometric_median(smoothing={self.smoothing}, max_iterations={self.max_iterations}, "
                f"tolerance={self.tolerance}, weighted={self.weighted})")


class Bulyan(_Robust):
    """Bulyan: Krum again and again picks n - 2f updates, then a trimmed mean around each coordinate's median."""

    def __init__(self, num_byzantine: int) -> None:
        self.num_byzantine = _check_count(num_byzantine, "num_byzantine", 0)

    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[ClientResult],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        updates = deltas(outputs)
        _check_round_size(self, len(updates))  # before the distances: too few clients fail fast
        matrix = np.stack(updates)
        update, selected = _bulyan(matrix, pairwise_sq_distances(updates), self.num_byzantine)
        return AggregateResult(state, update, {"bulyan_selected": float(len(selected))},
                               tuple(sorted(int(i) for i in selected)))

    def __repr__(self) -> str:
        return f"bulyan(num_byzantine={self.num_byzantine})"


def geometric_median(
    smoothing: float = 1e-6, max_iterations: int = 100, tolerance: float = 1e-6, *, weighted: bool = True
) -> GeometricMedian:
    """The geometric median of the clients' updates, RFA's aggregator (Pillutla et al. 2022).

    The point z minimising ``sum_i alpha_i ||z - x_i||``, alpha_i the
    clients' example counts, approximated by the smoothed Weiszfeld
    iteration: from the weighted mean, ``z <- sum_i beta_i x_i / sum_i beta_i``
    with ``beta_i = alpha_i / max(smoothing, ||z - x_i||)``, until the
    objective changes by at most ``tolerance`` of itself or after
    ``max_iterations`` steps. Its breakdown point is 1/2: it tolerates bad
    clients holding less than half the weight (up to n/2 - 1 of n clients of
    equal weight). Example counts are what clients claim; ``weighted=False``
    stops a bad client from gaining weight by claiming many examples. A round
    needs at least 3 clients (the median of 2 is their mean); with fewer it
    is refused. Metrics: ``geometric_median_iterations``.

    Args:
        smoothing: nu > 0: no update weighs more than if it were nu away.
        max_iterations: The most Weiszfeld steps after the mean (>= 0).
        tolerance: The relative change of the objective that stops it (>= 0).
        weighted: Weight clients by their example counts (as the paper);
            False weights them equally.

    Returns:
        An :class:`Aggregator`.

    Raises:
        FedValueError: A parameter is out of range; at a round (before
            training and at aggregation), fewer than 3 clients.
        FedTypeError: A parameter is not a number (or a bool for ``weighted``).
    """
    return GeometricMedian(smoothing, max_iterations, tolerance, weighted=weighted)


def bulyan(num_byzantine: int) -> Bulyan:
    """Bulyan (El Mhamdi et al. 2018): Krum to select, then a coordinate-wise trimmed mean.

    With f = ``num_byzantine`` of n clients, theta = n - 2f updates are
    selected by Krum, run again on the remaining updates after each choice
    (a score sums the max(1, m - f - 2) smallest squared distances among the
    m left); then each coordinate is the mean of the beta = theta - 2f
    selected values closest to their median (ties go to the smaller value).
    Example counts are ignored. A round needs n >= 4f + 3 clients (a smaller
    round is refused before its clients train). Metrics: ``bulyan_selected``.

    Args:
        num_byzantine: f, the number of Byzantine clients to tolerate (>= 0).

    Returns:
        An :class:`Aggregator`.

    Raises:
        FedValueError: ``num_byzantine`` < 0; at a round, fewer than 4f + 3 clients.
        FedTypeError: ``num_byzantine`` is not an int.
    """
    return Bulyan(num_byzantine)
