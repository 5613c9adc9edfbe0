"""The federated operators of TensorFlow Federated's names: federated_map, federated_mean, federated_sum, federated_broadcast."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from fedr import _weights
from fedr.errors import FedTypeError, FedValueError
from fedr._values import CLIENTS, SERVER, FederatedValue, describe_value, to_python


def _placed(value: Any, argument: str) -> FederatedValue:
    if isinstance(value, FederatedValue):
        return value
    if isinstance(value, (list, tuple)):
        return FederatedValue(list(value), CLIENTS)
    raise FedTypeError(
        f"{argument}: expected a federated value or a list of client values, "
        f"got {describe_value(value)}"
    )


def federated_map(fn: Callable[[Any], Any], value: Any) -> FederatedValue:
    """Apply ``fn`` to each member of a client-placed ``value``.

    Args:
        fn: A computation (or plain callable) of one member.
        value: A federated value at ``CLIENTS``, or a list of client members.

    Returns:
        A federated value at ``CLIENTS`` holding ``fn(member)`` for each member.

    Raises:
        FedTypeError: ``value`` is placed at the server.
    """
    placed = _placed(value, "value")
    if placed.placement is not CLIENTS:
        raise FedTypeError(f"value: federated_map expected a value @CLIENTS, got {placed!r}")
    return FederatedValue([fn(m) for m in placed.members], CLIENTS, placed.all_equal)


def _stack(members: list[Any], argument: str) -> np.ndarray:
    if not members:
        raise FedValueError(f"{argument}: no client values to aggregate")
    try:
        return np.stack([np.asarray(to_python(m), dtype=np.float64) for m in members])
    except ValueError as err:
        raise FedValueError(f"{argument}: client values differ in shape ({err})") from None


def _member_dtype(members: list[Any]) -> np.dtype:
    """The members' own dtype, as TensorFlow Federated keeps it (a float32 scalar stays float32).

    numpy and TensorFlow values keep theirs; Python numbers (R numbers arrive as
    them) are float64 and int64. Members of different dtypes take numpy's
    promotion of them.
    """

    def dtype(member: Any) -> np.dtype:
        if hasattr(member, "numpy") and callable(member.numpy):
            member = member.numpy()
        if isinstance(member, (np.ndarray, np.generic)):
            return member.dtype
        return np.asarray(to_python(member)).dtype

    return np.result_type(*[dtype(m) for m in members])


def _no_clients(name: str) -> FedValueError:
    # TensorFlow Federated returns the zero of the member type; fedr's values
    # carry no type apart from their members, so with none there is no type.
    return FedValueError(
        f"value: {name} over zero clients: with no client values there is no member type to give the "
        "result (TensorFlow Federated would return the zero of the declared type); pass at least one client"
    )


def federated_mean(value: Any, weight: Any = None) -> FederatedValue:
    """Average client values on the server, unweighted or weighted by ``weight``.

    The result keeps the members' float dtype (float32 values give float32,
    computed in float64); integer values give float32.

    Args:
        value: A federated value at ``CLIENTS`` (scalars or arrays of one shape).
        weight: Optional client-placed weights, one per client: finite,
            non-negative, with a positive sum (the rules of
            :func:`fedr.aggregators.weighted_mean`).

    Returns:
        A federated value at ``SERVER``.

    Raises:
        FedValueError: no clients, or weights that break those rules (the
            message starts with ``weight:``).
    """
    placed = _placed(value, "value")
    if not placed.members:
        raise _no_clients("federated_mean")
    stacked = _stack(placed.members, "value")
    if weight is None:
        mean = stacked.mean(axis=0)
    else:
        w = _stack(_placed(weight, "weight").members, "weight")
        try:
            # The aggregators' rules on weights, owned by fedr._weights (looked up at call time).
            w = _weights.check_weights(w, stacked.shape[0])
        except FedValueError as err:
            raise FedValueError(f"weight: {err}") from None
        mean = np.tensordot(w / w.sum(), stacked, axes=1)
    dtype = _member_dtype(placed.members)
    return FederatedValue([mean.astype(dtype if dtype.kind == "f" else np.float32)], SERVER, True)


def federated_sum(value: Any) -> FederatedValue:
    """Sum client values on the server, keeping the members' dtype.

    Integers are summed exactly and must fit their dtype (int32 members give
    an int32 sum, as in TensorFlow Federated); floats are summed in float64 and
    returned in their own dtype.

    Args:
        value: A federated value at ``CLIENTS``.

    Returns:
        A federated value at ``SERVER``.

    Raises:
        FedValueError: no clients (there is no member type to make a zero
            of), values of different shapes, or an integer sum that overflows
            the members' dtype.
    """
    placed = _placed(value, "value")
    if not placed.members:
        raise _no_clients("federated_sum")
    dtype = _member_dtype(placed.members)
    if dtype.kind in "iub":
        try:
            exact = np.stack([np.asarray(to_python(m), dtype=object) for m in placed.members]).sum(axis=0)
        except ValueError as err:
            raise FedValueError(f"value: client values differ in shape ({err})") from None
        info = np.iinfo(np.int64 if dtype.kind == "b" else dtype)
        flat = np.asarray(exact, dtype=object).ravel()
        if any(v > info.max or v < info.min for v in flat):
            raise FedValueError(
                f"value: the sum of the {len(placed.members)} {dtype} client values overflows {info.dtype} "
                f"(range {info.min}..{info.max}); cast the values to a wider type (e.g. int64 or float64) first"
            )
        return FederatedValue([np.asarray(exact, dtype=info.dtype)], SERVER, True)
    total = _stack(placed.members, "value").sum(axis=0)
    return FederatedValue([total.astype(dtype)], SERVER, True)


def federated_broadcast(value: Any) -> FederatedValue:
    """Send a server value to every client.

    Args:
        value: A federated value at ``SERVER`` or a plain value.

    Returns:
        A federated value at ``CLIENTS`` whose single member stands for all clients.
    """
    if isinstance(value, FederatedValue):
        if value.placement is not SERVER:
            raise FedTypeError(
                f"value: federated_broadcast expected a value @SERVER, got {value!r}"
            )
        return FederatedValue(list(value.members), CLIENTS, all_equal=True)
    return FederatedValue([value], CLIENTS, all_equal=True)
