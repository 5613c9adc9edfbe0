"""The checks and small conversions a process makes of its arguments (split from :mod:`fedr.learning.process`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedr.datasets import ClientData, as_client_data
from fedr.errors import FedTypeError, FedValueError
from fedr.learning.model import Model
from fedr.learning.state import ModelWeights, ServerState
from fedr.protocol.messages import describe_error

def _check_factory(fn: Any, argument: str) -> None:
    if not callable(fn):
        raise FedTypeError(f"{argument}: expected a function with no arguments, got {type(fn).__name__}")


def _build_model(model_fn: Callable[[], Model]) -> Model:
    import keras

    if isinstance(model_fn, keras.Model | Model):
        # A Keras model is callable too: called with no inputs, Keras would
        # say "missing a required argument: 'inputs'", which helps nobody.
        raise FedTypeError(
            f"model_fn: expected a function with no arguments returning from_keras_model(...), got a built "
            f"{type(model_fn).__name__}; every client trains its own fresh copy, so pass e.g. "
            "`lambda: fedr.learning.from_keras_model(keras.models.clone_model(model), loss=..., metrics=[...])`"
        )
    _check_factory(model_fn, "model_fn")
    model = model_fn()
    if not isinstance(model, Model):
        raise FedTypeError(
            "model_fn: expected a function returning fedr.learning.from_keras_model(...), "
            f"got one returning {type(model).__name__}"
        )
    return model


def _build_optimizer(fn: Callable[[], Any], argument: str) -> Any:
    import keras

    _check_factory(fn, argument)
    optimizer = fn()
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise FedTypeError(
            f"{argument}: expected a function returning a Keras optimizer, got one returning "
            f"{type(optimizer).__name__}"
        )
    from fedr.learning.fedopt import FedOpt

    if isinstance(optimizer, FedOpt) and argument == "client_optimizer_fn":
        raise FedValueError(
            f"client_optimizer_fn: {optimizer.name} is a server optimizer (it steps with the round's aggregate "
            "delta, Reddi et al. 2021); give it as server_optimizer_fn"
        )
    return optimizer


def _check_min_clients(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise FedValueError(f"min_clients: expected a count >= 1 or a fraction in (0, 1], got {value!r}")
    if isinstance(value, int | np.integer):
        if value < 1:
            raise FedValueError(f"min_clients: expected a count >= 1 or a fraction in (0, 1], got {value!r}")
        return int(value)
    if not 0 < float(value) <= 1:
        raise FedValueError(f"min_clients: expected a count >= 1 or a fraction in (0, 1], got {value!r}")
    return float(value)


def _optimizer_config(optimizer: Any) -> dict[str, Any]:
    import keras

    try:
        return keras.saving.serialize_keras_object(optimizer)
    except Exception as err:  # noqa: BLE001
        raise FedTypeError(
            f"client_optimizer_fn: its optimizer cannot travel to remote workers ({describe_error(err)})"
        ) from None


def _clients(data: Any, argument: str) -> list[ClientData]:
    if isinstance(data, list | tuple) and not data:
        raise FedValueError(f"{argument}: expected at least one client, got an empty list")
    clients = as_client_data(data)
    return clients


def _as_weights(state: Any, initial: ModelWeights) -> ModelWeights:
    """The model weights of a ServerState, ModelWeights, or a list of weight arrays."""
    if isinstance(state, ServerState):
        return state.model
    if isinstance(state, ModelWeights):
        unnamed = state.trainable_names == tuple(f"trainable_{i}" for i in range(len(state.trainable)))
        if unnamed and len(state.trainable) == len(initial.trainable):
            # Built without names: read in the model's variable order.
            return ModelWeights(
                state.trainable,
                state.non_trainable or initial.non_trainable,
                initial.trainable_names,
                initial.non_trainable_names,
            )
        return state
    if not isinstance(state, list | tuple):
        raise FedTypeError(
            f"state: expected a ServerState, ModelWeights or a list of weight arrays, got {type(state).__name__}"
        )
    n_train, n_all = len(initial.trainable), len(initial.trainable) + len(initial.non_trainable)
    if len(state) not in (n_train, n_all):
        raise FedValueError(
            f"state: expected {n_train} trainable weight arrays (or all {n_all} variables, as "
            f"keras.Model.get_weights() gives), got {len(state)}"
        )
    refs = initial.trainable + initial.non_trainable
    arrays = [np.asarray(w) for w in state]
    arrays = [a.astype(r.dtype) if a.dtype.kind in "biuf" else a for a, r in zip(arrays, refs, strict=False)]
    non_trainable = tuple(arrays[n_train:]) if len(state) == n_all else initial.non_trainable
    return ModelWeights(
        tuple(arrays[:n_train]), non_trainable, initial.trainable_names, initial.non_trainable_names
    )
