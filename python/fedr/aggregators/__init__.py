"""Aggregators of client updates, and the weighted-mean kernel they use.

``mean()`` (the default of :func:`fedr.learning.build_weighted_fed_avg`) is the
example-weighted mean of FedAvg, computed by the C++ kernel ``fedr._kernels``
with a numpy fallback. Every aggregator follows the :class:`Aggregator`
interface: ``init()``, ``client_step(state, delta)`` and
``aggregate(state, outputs)`` returning ``(state, update, metrics)``.
``median()``, ``trimmed_mean(beta)``, ``krum(num_byzantine)``,
``geometric_median()`` and ``bulyan(num_byzantine)`` are robust to Byzantine
clients (C++ kernels with numpy references, in ``_robust.py``);
``norm_bounded(max_norm, inner)`` and ``zeroing(max_norm, inner)`` bound each
update on the server in front of any of them or the mean.
"""

from fedr.aggregators._mean import (
    AggregateResult,
    Aggregator,
    ClientResult,
    Mean,
    Sum,
    check_aggregator,
    mean,
    sum_,
)

sum = sum_  # noqa: A001 - fedr.aggregators.sum(), as fedr.aggregators.mean()
from fedr.aggregators._weighted_mean import (
    HAVE_KERNEL,
    Backend,
    WeightedMeanAccumulator,
    flatten_weights,
    unflatten_weights,
    weighted_mean,
    weighted_mean_numpy,
)
from fedr._weights import check_weights
from fedr.aggregators._bounded import NormBounded, Zeroing, norm_bounded, reads_plain_updates, zeroing
from fedr.aggregators._robust import (
    HAVE_ROBUST_KERNEL,
    Bulyan,
    GeometricMedian,
    Krum,
    Median,
    TrimmedMean,
    WeiszfeldResult,
    bulyan,
    bulyan_numpy,
    coordinate_median,
    coordinate_trimmed_mean,
    geometric_median,
    geometric_median_numpy,
    krum,
    krum_numpy,
    krum_scores,
    median,
    median_numpy,
    pairwise_sq_distances,
    pairwise_sq_distances_numpy,
    smoothed_weiszfeld,
    trimmed_mean,
    trimmed_mean_numpy,
)

__all__ = [
    "HAVE_KERNEL",
    "HAVE_ROBUST_KERNEL",
    "AggregateResult",
    "Aggregator",
    "Backend",
    "Bulyan",
    "ClientResult",
    "GeometricMedian",
    "Krum",
    "Mean",
    "Median",
    "NormBounded",
    "Sum",
    "TrimmedMean",
    "WeightedMeanAccumulator",
    "WeiszfeldResult",
    "Zeroing",
    "bulyan",
    "bulyan_numpy",
    "check_aggregator",
    "check_weights",
    "coordinate_median",
    "coordinate_trimmed_mean",
    "flatten_weights",
    "geometric_median",
    "geometric_median_numpy",
    "krum",
    "krum_numpy",
    "krum_scores",
    "mean",
    "median",
    "median_numpy",
    "norm_bounded",
    "reads_plain_updates",
    "pairwise_sq_distances",
    "pairwise_sq_distances_numpy",
    "smoothed_weiszfeld",
    "sum",
    "trimmed_mean",
    "trimmed_mean_numpy",
    "unflatten_weights",
    "weighted_mean",
    "weighted_mean_numpy",
    "zeroing",
]
