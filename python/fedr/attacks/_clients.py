"""The attacked clients: the models, and the update a one-image client sends with fedr's FedAvg."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedr.errors import FedTypeError, FedValueError

__all__ = ["ClientUpdates", "client_updates", "mlp_model_fn", "one_client_update", "reference_model_fn"]


def reference_model_fn(input_dim: int = 784, classes: int = 10) -> Callable[[], Any]:
    """The reference article's model: one dense softmax layer, zero-initialised.

    Args:
        input_dim: Input features (784 pixels of a 28x28 image).
        classes: Output classes.

    Returns:
        A ``model_fn`` for :func:`fedr.learning.build_weighted_fed_avg` (sparse
        categorical cross-entropy loss).
    """

    def model_fn() -> Any:
        import keras

        from fedr.learning import from_keras_model

        model = keras.Sequential([
            keras.Input(shape=(input_dim,)),
            keras.layers.Dense(classes, activation="softmax", kernel_initializer="zeros"),
        ])
        return from_keras_model(model, loss="sparse_categorical_crossentropy")

    return model_fn


def mlp_model_fn(
    input_dim: int = 784, hidden: int = 32, classes: int = 10, activation: str = "sigmoid"
) -> Callable[[], Any]:
    """A small MLP as in Deep Leakage from Gradients: one hidden layer, softmax output.

    DLG needs a twice-differentiable network: Zhu et al. use sigmoid
    activations (ReLU's second derivative is zero almost everywhere).

    Args:
        input_dim: Input features.
        hidden: Hidden units.
        classes: Output classes.
        activation: The hidden layer's activation.

    Returns:
        A ``model_fn`` for :func:`fedr.learning.build_weighted_fed_avg` (sparse
        categorical cross-entropy loss; weights from Keras's default
        initialisers, seeded by the process's seed).
    """

    def model_fn() -> Any:
        import keras

        from fedr.learning import from_keras_model

        model = keras.Sequential([
            keras.Input(shape=(input_dim,)),
            keras.layers.Dense(hidden, activation=activation),
            keras.layers.Dense(classes, activation="softmax"),
        ])
        return from_keras_model(model, loss="sparse_categorical_crossentropy")

    return model_fn


@dataclass(frozen=True)
class ClientUpdates:
    """The updates of one-image clients after one SGD step each, from the same server state.

    Attributes:
        updates: One tuple of arrays per client, shaped as the model's
            trainable variables: the server's new weights minus the old.
        state: The server state every client started from.
        process: The FedAvg process (its ``model`` is a replica to attack with).
        learning_rate: The clients' SGD learning rate.
    """

    updates: list[tuple[np.ndarray, ...]]
    state: Any
    process: Any
    learning_rate: float


def _images(images: Any, what: str = "images") -> np.ndarray:
    x = np.asarray(images)
    if x.dtype.kind not in "biuf":
        raise FedTypeError(f"{what}: expected numeric images, got dtype {x.dtype}")
    integers = x.dtype.kind in "biu"
    x = x.astype(np.float32)
    if integers or (x.size and float(np.max(x)) > 1.0):
        x = x / np.float32(255.0)
    if x.ndim == 1:
        x = x[None]
    if x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    if not np.all(np.isfinite(x)):
        raise FedValueError(f"{what}: values must be finite")
    return np.ascontiguousarray(x, dtype=np.float32)


def client_updates(
    model_fn: Callable[[], Any],
    images: Any,
    labels: Any,
    *,
    learning_rate: float = 0.02,
    seed: int = 0,
) -> ClientUpdates:
    """The update each of several one-image clients sends after one SGD step, with fedr's FedAvg.

    One process ``build_weighted_fed_avg(model_fn, optimizer_fn("sgd",
    learning_rate), workers=1, seed=seed)``; each image is its own client
    (batch size 1) and runs one round alone from the initial state, so the
    server's new weights minus the old are exactly that client's update (the
    default server optimizer is SGD with learning rate 1.0).

    Args:
        model_fn: A function returning ``fedr.learning.from_keras_model(...)``.
        images: ``(n, features)`` or ``(n, 28, 28)`` images, floats in [0, 1]
            (integers or values above 1 are divided by 255).
        labels: ``n`` class labels.
        learning_rate: The clients' SGD learning rate.
        seed: The process seed (initial weights).

    Returns:
        A :class:`ClientUpdates`.

    Raises:
        FedValueError: no images, or labels that do not match them.
    """
    from fedr import learning
    from fedr.datasets import ClientData, as_labels

    x = _images(images)
    if x.shape[0] == 0:
        raise FedValueError("images: expected at least one image")
    y = as_labels(labels, x.shape[0], what="labels")
    process = learning.build_weighted_fed_avg(
        model_fn, learning.optimizer_fn("sgd", learning_rate), workers=1, seed=seed
    )
    state = process.initialize()
    old = [np.asarray(a, np.float64) for a in state.model.trainable]
    updates = []
    for i in range(x.shape[0]):
        client = ClientData(x[i : i + 1], y[i : i + 1], batch_size=1, client_id=f"client_{i}")
        new_state, _ = process.next(state, [client])
        new = new_state.model.trainable
        updates.append(tuple(
            (np.asarray(n, np.float64) - o).astype(np.float32) for n, o in zip(new, old, strict=True)
        ))
    return ClientUpdates(updates, state, process, float(learning_rate))


def one_client_update(
    model_fn: Callable[[], Any], image: Any, label: int, *, learning_rate: float = 0.02, seed: int = 0
) -> ClientUpdates:
    """The update one client sends after one SGD step on one image (see :func:`client_updates`).

    Args:
        model_fn: A function returning ``fedr.learning.from_keras_model(...)``.
        image: One image (``(features,)`` or ``(28, 28)``), floats in [0, 1].
        label: Its class label.
        learning_rate: The client's SGD learning rate.
        seed: The process seed.

    Returns:
        A :class:`ClientUpdates` with one update (``.updates[0]``).
    """
    x = _images(image, "image")
    if x.shape[0] != 1:
        raise FedValueError(f"image: expected one image, got {x.shape[0]}")
    return client_updates(model_fn, x, np.asarray([label]), learning_rate=learning_rate, seed=seed)
