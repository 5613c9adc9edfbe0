"""Aggregators of client updates, and the weighted-mean kernel they use.

``mean()`` (the default of :func:`fedr.learning.build_weighted_fed_avg`) is the
example-weighted mean of FedAvg, computed by the C++ kernel ``fedr._kernels``
with a numpy fallback. Every aggregator follows the :class:`Aggregator`
interface: ``init()``, ``client_step(state, delta)`` and
``aggregate(state, outputs)`` returning ``(state, update, metrics)``.
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
    _check_weights,
    flatten_weights,
    unflatten_weights,
    weighted_mean,
    weighted_mean_numpy,
)

__all__ = [
    "HAVE_KERNEL",
    "AggregateResult",
    "Aggregator",
    "Backend",
    "ClientResult",
    "Mean",
    "Sum",
    "WeightedMeanAccumulator",
    "check_aggregator",
    "flatten_weights",
    "mean",
    "sum",
    "unflatten_weights",
    "weighted_mean",
    "weighted_mean_numpy",
]
