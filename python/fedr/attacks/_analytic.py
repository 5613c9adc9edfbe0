"""The analytic attack: a dense layer's input from its update (and one class's column of it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from fedr.errors import FedValueError

__all__ = ["recover_dense_input"]


def recover_dense_input(delta_kernel: Any, delta_bias: Any, *, unit: int | None = None) -> np.ndarray:
    """Recover the input of a dense layer from its update after one SGD step on one example.

    For ``y = x W + b`` trained one step of SGD with learning rate ``lr`` on one
    example, ``ΔW = -lr * x^T g`` and ``Δb = -lr * g`` with ``g = dL/dy``, so
    ``x = ΔW[:, c] / Δb[c]`` for every unit ``c`` with ``Δb[c] != 0``: the
    learning rate and the loss cancel, and the recovery is exact (Phong et al.
    2017; Geiping et al. 2020). The unit with the largest ``|Δb[c]|`` is used,
    which is the most accurate in floating point. Gradients instead of updates
    work the same (the sign and scale cancel).

    With several examples (a batch, several steps, or the sum over clients
    that secure aggregation reveals) the same formula gives
    ``sum_i g_ic x_i / sum_i g_ic``, a blend of the inputs.

    Args:
        delta_kernel: The kernel's update ``ΔW``, shape ``(inputs, units)``.
        delta_bias: The bias's update ``Δb``, shape ``(units,)``.
        unit: The unit ``c`` to divide by; default the one with the largest ``|Δb[c]|``.

    Returns:
        The recovered input, float64 of shape ``(inputs,)``.

    Raises:
        FedValueError: the shapes do not fit, a value is not finite, ``unit``
            is out of range, or ``Δb[c]`` is zero (nothing to divide by).
    """
    dw = np.asarray(delta_kernel, dtype=np.float64)
    db = np.asarray(delta_bias, dtype=np.float64)
    if dw.ndim != 2:
        raise FedValueError(f"delta_kernel: expected a 2-D array (inputs, units), got shape {dw.shape}")
    if db.ndim != 1 or db.shape[0] != dw.shape[1]:
        raise FedValueError(
            f"delta_bias: expected shape ({dw.shape[1]},) to match delta_kernel {dw.shape}, got {db.shape}"
        )
    if not (np.all(np.isfinite(dw)) and np.all(np.isfinite(db))):
        raise FedValueError("delta_kernel, delta_bias: values must be finite")
    if unit is None:
        c = int(np.argmax(np.abs(db)))
    else:
        if isinstance(unit, bool) or not isinstance(unit, int | np.integer) or not 0 <= unit < db.shape[0]:
            raise FedValueError(f"unit: expected an integer in [0, {db.shape[0]}), got {unit!r}")
        c = int(unit)
    if db[c] == 0:
        raise FedValueError(
            "delta_bias: the bias update is zero" + (f" at unit {c}" if unit is not None else "")
            + "; the layer did not learn from this example, there is nothing to divide by"
        )
    return dw[:, c] / db[c]


def _class_column(delta_kernel: np.ndarray, unit: int) -> np.ndarray:
    """The kernel update's column of one class, scaled to [0, 1] (min to max).

    For the class ``c`` of a client that is alone with it in the round,
    ``ΔW[:, c]`` is ``lr (1 - p_c) x`` minus ``lr sum_i p_ic x_i`` over the
    others: that client's image over a blend of the round's.
    """
    col = np.asarray(delta_kernel, np.float64)[:, unit]
    span = float(col.max() - col.min())
    return (col - col.min()) / span if span > 0 else np.zeros_like(col)
