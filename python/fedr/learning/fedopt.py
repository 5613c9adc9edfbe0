"""The adaptive server optimizers of Reddi et al. 2021: FedAdagrad, FedYogi and FedAdam.

"Adaptive Federated Optimization" (ICLR 2021, arXiv:2003.00295), Algorithm 2.
With Δ_t the round's aggregate model delta (what the aggregator returns) and
x the server's trainable weights, every coordinate is updated as

    m_t = β1 m_{t-1} + (1 - β1) Δ_t
    v_t = v_{t-1} + Δ_t²                                  (FedAdagrad)
    v_t = v_{t-1} - (1 - β2) Δ_t² sign(v_{t-1} - Δ_t²)    (FedYogi)
    v_t = β2 v_{t-1} + (1 - β2) Δ_t²                      (FedAdam)
    x_{t+1} = x_t + η m_t / (√v_t + τ)

with m_{-1} = 0 and v_{-1} = τ² (the paper asks v_{-1} ≥ τ²). τ, the
*adaptivity*, bounds how far a coordinate with small past deltas can move;
the paper's defaults are β1 = 0.9, β2 = 0.99, τ = 1e-3. There is no bias
correction and τ is outside the square root: Keras's ``Adam`` (``"adam"`` in
:func:`fedr.learning.optimizer_fn`) is therefore a different optimizer, and
``"fedadam"`` is the paper's.

:class:`FedOpt` is a Keras optimizer (registered as ``fedr>FedOpt``), so it is
what :class:`~fedr.learning.server_update.ServerOptimizer` expects: its m and v
are part of the server state (``ServerState.optimizer_state``, saved and
resumed with the checkpoint) and it travels to Ray and Flower as its Keras
config. Build it with ``optimizer_fn("fedadam" | "fedyogi" | "fedadagrad",
learning_rate, beta_1=, beta_2=, tau=)`` (R ``fed_optimizer()``).
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

__all__ = ["VARIANTS", "FedOpt"]

#: The variants and the β's each one uses.
VARIANTS = {"adagrad": ("beta_1",), "yogi": ("beta_1", "beta_2"), "adam": ("beta_1", "beta_2")}


@keras.saving.register_keras_serializable(package="fedr", name="FedOpt")
class FedOpt(keras.optimizers.Optimizer):
    """FedAdagrad, FedYogi or FedAdam (Reddi et al. 2021) as a Keras optimizer of the server.

    The optimizer is given the gradient ``-Δ`` (fedr's server steps against
    the negated aggregate delta), so ``Δ = -gradient`` below.

    Args:
        variant: ``"adagrad"``, ``"yogi"`` or ``"adam"``.
        learning_rate: The server learning rate η.
        beta_1: Momentum of the delta, in [0, 1) (default 0.9).
        beta_2: Decay of the second moment for yogi and adam, in [0, 1)
            (default 0.99; not used by adagrad).
        tau: The adaptivity τ > 0 (default 1e-3); v starts at τ².
    """

    def __init__(self, variant: str = "adam", learning_rate: float = 1.0, beta_1: float = 0.9,
                 beta_2: float = 0.99, tau: float = 1e-3, name: str | None = None, **kwargs: Any) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"variant: expected one of {sorted(VARIANTS)}, got {variant!r}")
        super().__init__(learning_rate=learning_rate, name=name or f"fed{variant}", **kwargs)
        self.variant = variant
        self.beta_1 = float(beta_1)
        self.beta_2 = float(beta_2)
        self.tau = float(tau)

    def build(self, var_list: list[Any]) -> None:
        if self.built:
            return
        super().build(var_list)
        self._m = self.add_optimizer_variables(var_list, "m")
        self._v = self.add_optimizer_variables(
            var_list, "v", initializer=keras.initializers.Constant(self.tau * self.tau))

    def update_step(self, gradient: Any, variable: Any, learning_rate: Any) -> None:
        lr = ops.cast(learning_rate, variable.dtype)
        delta = ops.negative(ops.cast(gradient, variable.dtype))
        index = self._get_variable_index(variable)
        m, v = self._m[index], self._v[index]
        square = ops.square(delta)
        self.assign(m, ops.add(ops.multiply(self.beta_1, m), ops.multiply(1.0 - self.beta_1, delta)))
        if self.variant == "adagrad":
            self.assign(v, ops.add(v, square))
        elif self.variant == "yogi":
            self.assign(v, ops.subtract(v, ops.multiply(1.0 - self.beta_2, ops.multiply(square, ops.sign(
                ops.subtract(v, square))))))
        else:
            self.assign(v, ops.add(ops.multiply(self.beta_2, v), ops.multiply(1.0 - self.beta_2, square)))
        self.assign_add(variable, ops.divide(ops.multiply(lr, m), ops.add(ops.sqrt(v), self.tau)))

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({"variant": self.variant, "beta_1": self.beta_1, "beta_2": self.beta_2, "tau": self.tau})
        return config
