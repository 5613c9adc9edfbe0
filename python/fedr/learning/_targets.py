"""What targets a Keras loss takes, and the check of a client's data against the model and its loss.

Split from :mod:`fedr.learning.client_update`: before any graph sees a
client's data, :func:`check_targets` names the client, the value found and
what was expected (feature shape, label range, one-hot or integer labels,
targets in [0, 1] for binary losses).
"""

from __future__ import annotations

from typing import Any

from fedr.datasets import ClientData
from fedr.errors import FedValueError

__all__ = ["check_targets"]

# Loss names (Keras's, lower-case) and the targets they take.
_SPARSE = "sparse"  # integer class ids (n,), each in [0, classes)
_ONE_HOT = "one_hot"  # (n, classes)
_SAME_SHAPE = "same_shape"  # the model's output shape, (n,) for one output unit
_ONE_HOT_LOSSES = {"categorical_crossentropy", "categorical_focal_crossentropy", "categorical_hinge"}
_SAME_SHAPE_LOSSES = {
    "binary_crossentropy", "binary_focal_crossentropy", "mean_squared_error", "mean_absolute_error",
    "mean_absolute_percentage_error", "mean_squared_logarithmic_error", "huber", "huber_loss",
    "log_cosh", "hinge", "squared_hinge", "poisson", "kl_divergence", "kullback_leibler_divergence",
}


_ALIASES = {
    "mse": "mean_squared_error", "mae": "mean_absolute_error", "mape": "mean_absolute_percentage_error",
    "msle": "mean_squared_logarithmic_error", "bce": "binary_crossentropy", "kld": "kl_divergence",
    "logcosh": "log_cosh",
}
_ZERO_ONE_LOSSES = {"binary_crossentropy", "binary_focal_crossentropy"}


def _loss_name(loss: Any) -> str:
    name = str(getattr(loss, "name", "") or getattr(loss, "__name__", "")).lower()
    return _ALIASES.get(name, name)


def _target_rule(loss: Any) -> str | None:
    name = _loss_name(loss)
    if name.startswith("sparse_categorical"):
        return _SPARSE
    if name in _ONE_HOT_LOSSES:
        return _ONE_HOT
    if name in _SAME_SHAPE_LOSSES:
        return _SAME_SHAPE
    return None  # a loss of the user's own: its targets are its business


def check_targets(client: ClientData, feature_shape: tuple[int, ...], output_shape: tuple[int, ...],
                  loss_fn: Any) -> None:
    """Raise FedValueError when ``client``'s data does not fit a model of these shapes and its loss.

    The message names the client, the value found and what was expected.
    """
    where = f"client '{client.client_id}'"
    shape = tuple(client.x.shape[1:])
    if shape != feature_shape:
        raise FedValueError(
            f"{where}: x has feature shape {shape} but the model expects {feature_shape}"
        )
    y, out, loss = client.y, output_shape, _loss_name(loss_fn) or "the loss"
    rule = _target_rule(loss_fn)
    if rule is None or not out:
        return
    classes = int(out[-1])
    if rule == _SPARSE:
        if y.ndim != 1:
            raise FedValueError(
                f"{where}: y has shape {y.shape} (one-hot or 2-D targets) but the loss '{loss}' "
                f"takes integer class labels of shape ({len(y)},); use 'categorical_crossentropy' "
                "for one-hot targets"
            )
        top = int(y.max())
        if top >= classes:
            raise FedValueError(
                f"{where}: label {top} is outside the model's {classes} classes; "
                f"labels must be in [0, {classes})"
            )
    elif rule == _ONE_HOT:
        if y.ndim != 2 or y.shape[1] != classes:
            raise FedValueError(
                f"{where}: y has shape {y.shape} but the loss '{loss}' takes one-hot targets of "
                f"shape ({len(y)}, {classes}); use 'sparse_categorical_crossentropy' for integer labels"
            )
    else:
        fits = tuple(y.shape[1:]) == out or (y.ndim == 1 and out == (1,))
        if not fits:
            raise FedValueError(
                f"{where}: y has shape {y.shape} but the model's output is {(len(y), *out)} "
                f"and the loss '{loss}' compares them element by element"
            )
        if _loss_name(loss_fn) in _ZERO_ONE_LOSSES and y.size and (y.min() < 0 or y.max() > 1):
            raise FedValueError(
                f"{where}: y has values in [{y.min()}, {y.max()}] but the loss '{loss}' takes "
                "targets in [0, 1]"
            )
