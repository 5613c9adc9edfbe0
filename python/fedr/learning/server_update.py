"""The server update: a Keras optimizer as a pure ``(init, apply)`` pair with named state.

The aggregate model delta points downhill, so the server optimizer steps
against ``-delta``. SGD with learning rate 1.0 adds the mean delta to the
weights, the original FedAvg (McMahan et al. 2016); SGD with momentum gives
FedAvgM (Hsu et al. 2019); Keras's Adam is an Adam on the server, and the
paper's FedAdagrad, FedYogi and FedAdam (Reddi et al. 2021, "Adaptive
Federated Optimization", with their adaptivity tau and no bias correction)
are :mod:`fedr.learning.fedopt`.

The optimizer sees the trainable weights as one flat vector; SGD and Adam act
elementwise, so this equals applying them per layer. Its variables are scratch
space: ``apply`` loads them from the state it is given and returns their new
values, so nothing is carried from one call to the next.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from fedr.errors import FedTypeError, FedValueError

__all__ = ["ServerOptimizer"]

NamedArrays = tuple[tuple[str, np.ndarray], ...]


class ServerOptimizer:
    """Apply aggregate updates to the server's trainable weights with a Keras optimizer."""

    def __init__(self, optimizer_fn: Callable[[], Any], num_weights: int) -> None:
        """Build the optimizer for ``num_weights`` flat float32 weights.

        Args:
            optimizer_fn: A function with no arguments returning a Keras optimizer.
            num_weights: Number of trainable weights.

        Raises:
            FedTypeError: ``optimizer_fn`` is not a function or returns no Keras optimizer.
        """
        import keras
        import tensorflow as tf

        if not callable(optimizer_fn):
            raise FedTypeError(
                f"server_optimizer_fn: expected a function with no arguments, got {type(optimizer_fn).__name__}"
            )
        optimizer = optimizer_fn()
        if not isinstance(optimizer, keras.optimizers.Optimizer):
            raise FedTypeError(
                "server_optimizer_fn: expected a function returning a Keras optimizer, "
                f"got one returning {type(optimizer).__name__}"
            )
        self.optimizer = optimizer
        self._var = tf.Variable(np.zeros(num_weights, np.float32), name="server_weights")
        optimizer.build([self._var])
        lr = getattr(optimizer, "_learning_rate", None)
        self._vars = [v for v in optimizer.variables if v is not lr]
        # Names without the optimizer's prefix: "iteration", "server_weights_0_momentum".
        self.names = tuple(v.name for v in self._vars)
        # The values the optimizer builds its variables with (zeros for SGD and Adam; FedOpt's v starts at tau^2).
        self._initial = tuple(np.array(v.numpy()) for v in self._vars)
        self._lock = threading.Lock()
        self._apply = tf.function(self._apply_graph)
        # Traced once per optimizer; TensorFlow would count traces of all instances together.
        self._apply._omit_frequent_tracing_warning = True

    def init(self) -> NamedArrays:
        """Return the optimizer's initial named state: its variables as it builds them (iteration 0)."""
        return tuple((n, value.copy()) for n, value in zip(self.names, self._initial, strict=True))

    def check(self, state: NamedArrays, what: str = "state") -> None:
        """Raise FedValueError unless ``state`` has this optimizer's variables."""
        names = tuple(n for n, _ in state)
        if names != self.names:
            raise FedValueError(
                f"{what}: optimizer state has {list(names)} but the server optimizer "
                f"({type(self.optimizer).__name__}) has {list(self.names)}"
            )
        for (name, value), var in zip(state, self._vars, strict=True):
            if tuple(value.shape) != tuple(var.shape) or value.dtype != np.dtype(var.dtype):
                raise FedValueError(
                    f"{what}: optimizer variable '{name}' is {value.dtype}{list(value.shape)}, "
                    f"expected {np.dtype(var.dtype)}{list(var.shape)}"
                )
            if value.dtype.kind == "f" and value.size and not np.isfinite(value).all():
                raise FedValueError(
                    f"{what}: optimizer variable '{name}' has non-finite values (NaN or Inf); "
                    "start from an earlier state"
                )

    def _apply_graph(self, weights: Any, update: Any, opt_state: Any) -> Any:
        import tensorflow as tf

        self._var.assign(weights)
        for var, value in zip(self._vars, opt_state, strict=True):
            var.assign(value)
        self.optimizer.apply_gradients([(-update, self._var)])
        return tf.identity(self._var), [tf.identity(v) for v in self._vars]

    def apply(
        self, state: NamedArrays, weights: np.ndarray, update: np.ndarray
    ) -> tuple[NamedArrays, np.ndarray]:
        """Step the flat ``weights`` along the aggregate ``update``.

        Args:
            state: The optimizer's named state, from :meth:`init` or a previous call.
            weights: Flat float32 trainable weights.
            update: The aggregate model delta, flat float32.

        Returns:
            The new named state and the new flat weights.
        """
        with self._lock:
            new_weights, new_vars = self._apply(weights, update, [v for _, v in state])
            values = tuple(v.numpy() for v in new_vars)
        return tuple(zip(self.names, values, strict=True)), new_weights.numpy()

    def __repr__(self) -> str:
        return f"ServerOptimizer({type(self.optimizer).__name__})"
