"""The rules on client weights (example counts), shared by computations and aggregators.

``fedr.computations.federated_mean`` (the bottom layer) and the aggregators
(above it) apply the same rules; they live here so that neither imports the
other's internals and the rules have one owner.
"""

from __future__ import annotations

import math

import numpy as np

from fedr.errors import FedValueError

__all__ = ["check_weights"]


def check_weights(weights: object, k: int) -> np.ndarray:
    """Return ``weights`` as K float64 values after checking them.

    Args:
        weights: K finite non-negative numbers with a positive, finite sum
            (e.g. the clients' example counts).
        k: The number of updates they weight.

    Returns:
        The weights as a float64 array of shape ``(k,)``.

    Raises:
        FedValueError: not numbers, not 1-D, not K of them, a negative or
            non-finite weight, or a total that is not positive and finite.
    """
    w = np.asarray(weights)
    if w.dtype.kind not in "iuf":
        raise FedValueError(f"weights: expected numbers, got dtype {w.dtype}")
    if w.ndim != 1:
        raise FedValueError(
            f"weights: expected a 1-D sequence of K={k} numbers, got shape {w.shape}"
        )
    if w.shape[0] != k:
        raise FedValueError(f"weights has {w.shape[0]} entries but updates has K={k}")
    w = w.astype(np.float64)
    for bad, rule in ((~np.isfinite(w), "finite"), (w < 0, "non-negative")):
        if bad.any():
            i = int(np.argmax(bad))
            raise FedValueError(f"weights[{i}] is {w[i]}; weights must be {rule}")
    total = float(w.sum())
    if not (total > 0 and math.isfinite(total)):
        raise FedValueError(f"weights sum to {total}; the total weight must be positive and finite")
    return w
