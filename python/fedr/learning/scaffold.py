"""SCAFFOLD's control variates (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging
for Federated Learning", Algorithm 1 with option II), as plain numpy on either side of a round.

Clients whose data differ drift apart in local training (client drift).
SCAFFOLD corrects each local step with the difference of two control
variates, estimates of the gradient: the server's c (its state,
``ServerState.client_work``) and the client's own c_i (kept where the client
runs, :mod:`fedr.learning.client_state`; zero for a client seen the first time):

- client, each of its K local SGD steps: y <- y - lr * (g(y) + c - c_i);
- client, after them (option II): c_i+ = c_i - c + (x - y) / (K * lr); it
  keeps c_i+ and sends its model delta y - x and its control delta
  c_i+ - c_i (``ClientOutput.parts["control_delta"]``);
- server: x <- x + server step of the aggregate of the model deltas (the
  process's aggregator and server optimizer; SGD 1.0 is the paper's global
  step 1), and c <- c + (1 / N) * sum of the round's control deltas, with N
  the number of clients in the federation (``num_clients``; None: the round's
  clients, i.e. every client takes part each round). Under a robust rule
  that keeps only some updates (Krum, Bulyan, zeroing), only those clients'
  control deltas move c: what the rule left out reaches the model no other way.

The local step must be plain SGD at a constant learning rate (the lr in
option II's formula); other client optimizers are refused. K counts the
client's batches over its local epochs.

The control deltas travel in plaintext, so SCAFFOLD runs with aggregators
that read the updates on the server (mean, median, Krum, ...), not with
differential privacy or secure aggregation, which would be voided by them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fedr.errors import FedTypeError, FedValueError

__all__ = [
    "CONTROL", "CONTROL_DELTA", "check_control", "check_num_clients", "check_parts", "client_learning_rate", "client_result", "correction",
    "init", "server_update",
]

CONTROL = "scaffold/control"  # the server's c in ServerState.client_work; a client's c_i in its state
CONTROL_DELTA = "control_delta"  # what a client sends in ClientOutput.parts


def check_num_clients(value: Any) -> int | None:
    """SCAFFOLD's N: None or a positive integer (the federation's number of clients).

    Raises:
        FedValueError: anything else; the message starts with ``num_clients:``.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise FedValueError(f"num_clients: expected None or a positive integer (the number of clients "
                            f"in the federation), got {value!r}")
    return int(value)


def client_learning_rate(optimizer: Any, argument: str = "client_optimizer_fn") -> float:
    """The constant learning rate of a plain SGD client optimizer, which SCAFFOLD's option II needs.

    Raises:
        FedValueError: the optimizer is not Keras's SGD, has momentum or
            Nesterov, or a learning-rate schedule; the message starts with ``argument``.
    """
    import keras

    name = type(optimizer).__name__
    if not isinstance(optimizer, keras.optimizers.SGD):
        raise FedValueError(f"{argument}: SCAFFOLD's local steps are plain SGD (its control variates are "
                            f"computed from the SGD learning rate), got the {name} optimizer; use "
                            "plain SGD (optimizer_fn('sgd', lr); in R fed_optimizer('sgd', lr))")
    if float(optimizer.momentum) != 0.0 or bool(optimizer.nesterov):
        raise FedValueError(f"{argument}: SCAFFOLD's local steps are plain SGD without momentum, got "
                            f"momentum = {float(optimizer.momentum):g}, nesterov = {bool(optimizer.nesterov)}")
    lr = optimizer._learning_rate
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule) or callable(lr):
        raise FedValueError(f"{argument}: SCAFFOLD needs a constant client learning rate, got a schedule "
                            f"({type(lr).__name__})")
    value = float(np.asarray(keras.ops.convert_to_numpy(lr)))
    if not np.isfinite(value) or value <= 0:
        raise FedValueError(f"{argument}: SCAFFOLD needs a finite learning rate > 0, got {value}")
    return value


def init(num_weights: int) -> tuple[tuple[str, np.ndarray], ...]:
    """The server's state at round 0: c = 0."""
    return ((CONTROL, np.zeros(int(num_weights), np.float32)),)


def _control(named: Mapping[str, np.ndarray] | Sequence[tuple[str, np.ndarray]] | None, size: int,
             what: str) -> np.ndarray:
    if named is None:
        return np.zeros(size, np.float32)
    values = dict(named)
    if CONTROL not in values:
        raise FedValueError(f"{what}: has no '{CONTROL}' (names: {sorted(values)})")
    value = np.asarray(values[CONTROL])
    if value.dtype != np.float32 or value.shape != (size,):
        raise FedValueError(f"{what}: '{CONTROL}' is {value.dtype}{list(value.shape)}, expected float32[{size}]")
    return value


def check_control(client_work: Sequence[tuple[str, np.ndarray]], size: int) -> None:
    """Raise FedValueError unless ``client_work`` holds a finite float32 c of ``size`` values."""
    c = _control(client_work, size, "state.client_work")
    if not np.isfinite(c).all():
        raise FedValueError(f"state.client_work: SCAFFOLD's '{CONTROL}' holds NaN or Inf")


def correction(control: np.ndarray, client_state: Mapping[str, np.ndarray] | None) -> np.ndarray:
    """c - c_i, float32: what the client adds to each step's gradient (c_i = 0 for a new client)."""
    c = np.asarray(control, np.float32)
    c_i = _control(client_state, c.size, "client state")
    return (c.astype(np.float64) - c_i.astype(np.float64)).astype(np.float32)


def client_result(control: np.ndarray, client_state: Mapping[str, np.ndarray] | None, delta: np.ndarray,
                  steps: int, lr: float) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Option II after the local steps: ``(control delta c_i+ - c_i, the client's new state {CONTROL: c_i+})``.

    ``delta`` is y - x, ``steps`` the number K of local steps, ``lr`` their
    learning rate; the arithmetic is float64, the results float32.
    """
    if steps < 1:
        raise FedValueError(f"SCAFFOLD: a client with {steps} local steps has no control variate to update")
    c = np.asarray(control, np.float64)
    c_i = _control(client_state, c.size, "client state").astype(np.float64)
    new = c_i - c - np.asarray(delta, np.float64) / (steps * lr)
    new32 = new.astype(np.float32)
    return (new32.astype(np.float64) - c_i).astype(np.float32), {CONTROL: new32}


def server_update(client_work: Sequence[tuple[str, np.ndarray]], control_deltas: Sequence[np.ndarray],
                  round_clients: int, num_clients: int | None) -> tuple[tuple[str, np.ndarray], ...]:
    """c + (1 / N) * the sum of the control deltas (N = ``num_clients``, or the round's clients when None).

    Raises:
        FedValueError: the round has more clients than ``num_clients``.
    """
    c = dict(client_work)[CONTROL]
    n = round_clients if num_clients is None else num_clients
    if round_clients > n:
        raise FedValueError(f"num_clients: the round has {round_clients} clients, more than the federation's "
                            f"num_clients = {n}; give the number of clients in the whole federation")
    total = np.zeros(c.size, np.float64)
    for d in control_deltas:
        total += np.asarray(d, np.float64)
    new = (c.astype(np.float64) + total / n).astype(np.float32)
    return ((CONTROL, new),)


def check_parts(parts: Mapping[str, np.ndarray] | None, size: int, client_id: str) -> np.ndarray:
    """The control delta a client sent, checked (a missing or misshapen one names the client)."""
    value = None if parts is None else parts.get(CONTROL_DELTA)
    if value is None:
        raise FedValueError(f"client '{client_id}': its output has no SCAFFOLD '{CONTROL_DELTA}'; did it run "
                            "the process's SCAFFOLD client task?")
    value = np.asarray(value)
    if value.dtype != np.float32 or value.shape != (size,):
        raise FedTypeError(f"client '{client_id}': its '{CONTROL_DELTA}' is {value.dtype}{list(value.shape)}, "
                           f"expected float32[{size}]")
    return value
