"""Federated building blocks: placements, types, computations and federated operators.

The names mirror TensorFlow Federated's core API (``tff.tf_computation``,
``tff.federated_mean``, ...) so that code written against the reference article
reads the same with fedr.  The semantics are TFF's for the single-machine
simulation case:

* a ``tf_computation`` runs TensorFlow code on one placement; an argument of a
  ``SequenceType`` arrives as a ``tf.data.Dataset`` (``reduce``, ``map`` and
  ``filter`` work on it);
* a ``federated_computation`` receives values placed at ``CLIENTS`` (one member
  per client) or ``SERVER`` and combines them with the ``federated_*``
  operators;
* ``federated_mean`` without weights is the unweighted mean of the client
  values, so the mean of the client averages of ``[[1, 1, 1], [13]]`` is 7.

TensorFlow is imported only when a computation runs, so ``import fedr`` stays
fast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedr import _weights
from fedr.errors import FedTypeError, FedValueError

__all__ = [
    "CLIENTS",
    "SERVER",
    "Placement",
    "TensorType",
    "SequenceType",
    "FederatedType",
    "FederatedValue",
    "Computation",
    "tf_computation",
    "federated_computation",
    "federated_map",
    "federated_mean",
    "federated_sum",
    "federated_broadcast",
]


@dataclass(frozen=True)
class Placement:
    """Where a federated value lives: on the clients or on the server."""

    name: str

    def __str__(self) -> str:
        return self.name.upper()


CLIENTS = Placement("clients")
SERVER = Placement("server")

_DTYPE_NAMES = {
    "float16",
    "float32",
    "float64",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "bool",
}


def _dtype_name(dtype: Any) -> str:
    """Normalise a dtype given as a string, numpy dtype or tf.DType to its name."""
    name = getattr(dtype, "name", None)
    if name is None:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
    if name not in _DTYPE_NAMES:
        raise FedTypeError(
            f"dtype: expected one of {sorted(_DTYPE_NAMES)}, got {dtype!r}"
        )
    return name


def _shape(shape: Any) -> tuple[int | None, ...]:
    """A shape as a tuple of non-negative ints, None for an unknown dimension."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise FedTypeError(f"shape: expected a sequence of dimensions, got {shape!r}") from None
    out: list[int | None] = []
    for d in dims:
        whole = isinstance(d, (int, np.integer, float, np.floating)) and not isinstance(d, bool)
        if d is not None and not (whole and d >= 0 and float(d).is_integer()):
            raise FedTypeError(
                f"shape: expected non-negative whole numbers or None (unknown), got {list(dims)}"
            )
        out.append(None if d is None else int(d))
    return tuple(out)


def _as_placement(placement: Any) -> Placement:
    if isinstance(placement, Placement):
        return placement
    if isinstance(placement, str) and placement.lower() in ("clients", "server"):
        return CLIENTS if placement.lower() == "clients" else SERVER
    raise FedTypeError(
        f"placement: expected CLIENTS, SERVER, 'clients' or 'server', got {placement!r}"
    )


@dataclass(frozen=True)
class TensorType:
    """A tensor of one dtype and shape; ``shape=()`` is a scalar."""

    dtype: str
    shape: tuple[int | None, ...] = ()

    def __init__(self, dtype: Any, shape: Sequence[int | None] = ()) -> None:
        object.__setattr__(self, "dtype", _dtype_name(dtype))
        object.__setattr__(self, "shape", _shape(shape))

    def __str__(self) -> str:
        if not self.shape:
            return self.dtype
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"

    def convert(self, value: Any, *, from_r: bool = False) -> np.ndarray:
        """Return ``value`` as an array of this type, or raise FedTypeError.

        With ``from_r``, a number fits a type of shape ``(1,)`` or ``(None,)``:
        R has no scalars, its numbers are vectors of length one.
        """
        arr = _numeric_array(value, self)
        if from_r and arr.ndim == 0 and len(self.shape) == 1 and self.shape[0] in (None, 1):
            arr = arr.reshape(1)
        if len(arr.shape) != len(self.shape) or any(
            d is not None and d != s for d, s in zip(self.shape, arr.shape)
        ):
            raise _mismatch(self, value)
        return arr.astype(self.dtype, copy=False)


@dataclass(frozen=True)
class SequenceType:
    """A sequence of elements of one type; inside a computation, a tf.data.Dataset."""

    element: TensorType

    def __init__(self, element: Any) -> None:
        if not isinstance(element, TensorType):
            element = TensorType(element)
        object.__setattr__(self, "element", element)

    def __str__(self) -> str:
        return f"{self.element}*"

    def convert(self, value: Any, *, from_r: bool = False) -> Any:
        """Return ``value`` as a ``tf.data.Dataset`` of this type, or raise FedTypeError.

        With ``from_r``, a Python number (how reticulate sends an R vector of
        length one) is a sequence of one element; numpy scalars, the elements
        of a longer R vector, are not.
        """
        import tensorflow as tf

        if isinstance(value, tf.data.Dataset):
            spec = value.element_spec
            if getattr(spec, "dtype", None) is None or spec.dtype.name != self.element.dtype:
                raise _mismatch(self, value)
            return value
        if from_r and not self.element.shape and type(value) in (int, float, bool):
            value = [value]
        if isinstance(value, (str, bytes, Mapping)) or not _is_sequence(value):
            raise _mismatch(self, value)
        items = list(value)
        if items:
            arr = _numeric_array(items, self)
            if arr.ndim != 1 + len(self.element.shape):
                raise _mismatch(self, value)
            arr = arr.astype(self.element.dtype, copy=False)
        else:
            arr = np.zeros((0, *[d or 0 for d in self.element.shape]), self.element.dtype)
        return tf.data.Dataset.from_tensor_slices(arr)


@dataclass(frozen=True)
class FederatedType:
    """A value with one member per client (``CLIENTS``) or one on the ``SERVER``."""

    member: TensorType | SequenceType
    placement: Placement

    def __init__(self, member: Any, placement: Any) -> None:
        if not isinstance(member, (TensorType, SequenceType)):
            member = TensorType(member)
        object.__setattr__(self, "member", member)
        object.__setattr__(self, "placement", _as_placement(placement))

    def __str__(self) -> str:
        if self.placement is CLIENTS:
            return f"{{{self.member}}}@CLIENTS"
        return f"{self.member}@SERVER"

    def convert(self, value: Any, *, from_r: bool = False) -> FederatedValue:
        """Check ``value`` against this type and place it.

        With ``from_r``, members are converted as values from R (see
        :meth:`TensorType.convert`) and messages count clients from 1, as R does.
        """
        if isinstance(value, FederatedValue):
            if value.placement != self.placement:
                raise _mismatch(self, value)
            return value
        if self.placement is SERVER:
            member = self.member.convert(value, from_r=from_r)
            return FederatedValue([member], SERVER, all_equal=True)
        if isinstance(value, (str, bytes, Mapping)) or not _is_sequence(value):
            raise _mismatch(self, value)
        members = list(value)
        converted = []
        for i, member in enumerate(members, start=1 if from_r else 0):
            try:
                converted.append(self.member.convert(member, from_r=from_r))
            except FedTypeError as err:
                raise FedTypeError(f"client {i}: {err}") from None
        return FederatedValue(converted, CLIENTS)


TypeSpec = TensorType | SequenceType | FederatedType


@dataclass(frozen=True)
class FederatedValue:
    """Members of a federated value and where they are placed.

    ``all_equal`` marks a value with one member that stands for every client
    (the result of ``federated_broadcast``) or for the server.
    """

    members: list[Any]
    placement: Placement
    all_equal: bool = False

    def __repr__(self) -> str:
        return f"FederatedValue({len(self.members)} members @{self.placement})"


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) or (
        hasattr(value, "__len__") and hasattr(value, "__getitem__")
    )


def _describe(value: Any) -> str:
    """Name the type of ``value`` in the notation of the declared types."""
    if isinstance(value, FederatedValue):
        return f"federated value @{value.placement}"
    if isinstance(value, np.ndarray):
        shape = ",".join(str(d) for d in value.shape)
        return f"{value.dtype.name}[{shape}]" if value.shape else value.dtype.name
    if isinstance(value, (list, tuple)):
        kinds = sorted({_describe(v) for v in value})
        inner = "|".join(kinds) if kinds else "empty"
        return f"{type(value).__name__}[{inner}]"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    return type(value).__name__


def _mismatch(expected: Any, value: Any) -> FedTypeError:
    return FedTypeError(f"expected {expected}, got {_describe(value)}")


def _numeric_array(value: Any, expected: Any) -> np.ndarray:
    """Turn ``value`` into a numeric ndarray or raise the type mismatch."""
    if hasattr(value, "numpy") and callable(value.numpy):
        value = value.numpy()
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged nesting
        raise _mismatch(expected, value) from None
    if arr.dtype.kind not in "biuf":
        raise _mismatch(expected, value)
    return arr


def _to_python(value: Any) -> Any:
    """Turn tensors into numpy, and 0-d arrays into Python scalars."""
    if hasattr(value, "numpy") and callable(value.numpy):
        value = value.numpy()
    if isinstance(value, (tuple, list)):
        return type(value)(_to_python(v) for v in value)
    if isinstance(value, Mapping):
        return {k: _to_python(v) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value


class Computation:
    """A callable whose argument is checked against a declared type.

    Built by :func:`tf_computation` or :func:`federated_computation`.
    """

    def __init__(self, fn: Callable[[Any], Any], type_spec: TypeSpec, kind: str) -> None:
        if not callable(fn):
            raise FedTypeError(f"fn: expected a callable, got {type(fn).__name__}")
        if not isinstance(type_spec, (TensorType, SequenceType, FederatedType)):
            raise FedTypeError(
                "type_spec: expected TensorType, SequenceType or FederatedType, "
                f"got {type(type_spec).__name__}"
            )
        if kind == "tf" and isinstance(type_spec, FederatedType):
            raise FedTypeError(
                f"type_spec: a tf_computation takes a non-federated type, got {type_spec}"
            )
        if kind == "federated" and not isinstance(type_spec, FederatedType):
            raise FedTypeError(
                f"type_spec: a federated_computation takes a FederatedType, got {type_spec}"
            )
        self.fn = fn
        self.type_signature = type_spec
        self.kind = kind
        functools.update_wrapper(self, fn)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        name = getattr(self.fn, "__name__", "computation")
        return f"<{self.kind}_computation {name}({self.type_signature})>"

    def __call__(self, value: Any) -> Any:
        arg = self.type_signature.convert(value)
        if self.kind == "tf":
            return _to_python(self.fn(arg))
        result = self.fn(arg)
        if isinstance(result, FederatedValue):
            if result.placement is SERVER or result.all_equal:
                return _to_python(result.members[0])
            return [_to_python(m) for m in result.members]
        return _to_python(result)


def _computation_builder(kind: str) -> Callable[..., Any]:
    def build(fn: Any = None, type_spec: TypeSpec | None = None) -> Any:
        # Decorator form: @tf_computation(SequenceType(tf.float32)) passes the type first.
        if isinstance(fn, (TensorType, SequenceType, FederatedType)) and type_spec is None:
            spec = fn
            return lambda f: Computation(f, spec, kind)
        if type_spec is None:
            raise FedTypeError(f"type_spec: a {kind}_computation needs a declared argument type")
        return Computation(fn, type_spec, kind)

    return build


tf_computation = _computation_builder("tf")
tf_computation.__name__ = "tf_computation"
tf_computation.__doc__ = """Wrap TensorFlow code ``fn`` as a computation whose argument has ``type_spec``.

Usable as ``tf_computation(fn, SequenceType("float32"))`` or as the decorator
``@tf_computation(SequenceType("float32"))``.  A ``SequenceType`` argument is
passed to ``fn`` as a ``tf.data.Dataset``.

Args:
    fn: A function of one argument using TensorFlow operations.
    type_spec: A ``TensorType`` or ``SequenceType`` (not federated).

Returns:
    A :class:`Computation`; calling it checks the value and returns numpy or
    Python scalars.

Raises:
    FedTypeError: ``type_spec`` is federated, or a value does not fit it.
"""

federated_computation = _computation_builder("federated")
federated_computation.__name__ = "federated_computation"
federated_computation.__doc__ = """Wrap ``fn`` as a computation over a federated value of ``type_spec``.

Inside ``fn`` combine the argument with ``federated_map``, ``federated_mean``,
``federated_sum`` and ``federated_broadcast``.

Args:
    fn: A function of one federated argument.
    type_spec: A ``FederatedType``.

Returns:
    A :class:`Computation`; a server-placed result comes back as its value, a
    client-placed one as a list with one member per client.

Raises:
    FedTypeError: ``type_spec`` is not federated, or a value does not fit it.
"""


def _placed(value: Any, argument: str) -> FederatedValue:
    if isinstance(value, FederatedValue):
        return value
    if isinstance(value, (list, tuple)):
        return FederatedValue(list(value), CLIENTS)
    raise FedTypeError(
        f"{argument}: expected a federated value or a list of client values, "
        f"got {_describe(value)}"
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
        return np.stack([np.asarray(_to_python(m), dtype=np.float64) for m in members])
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
        return np.asarray(_to_python(member)).dtype

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
            exact = np.stack([np.asarray(_to_python(m), dtype=object) for m in placed.members]).sum(axis=0)
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
