"""Federated values and their types (placements, tensor, sequence and federated types), numpy only.

Split from :mod:`fedr.computations` (which keeps TensorFlow Federated's names
for all of it) so that :mod:`fedr._operators` needs no import of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedr.errors import FedTypeError


@dataclass(frozen=True)
class Placement:
    """Where a federated value lives: on the clients or on the server."""

    name: str

    def __str__(self) -> str:
        return self.name.upper()


CLIENTS = Placement("clients")


SERVER = Placement("server")


DTYPE_NAMES = {
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


def dtype_name(dtype: Any) -> str:
    """Normalise a dtype given as a string, numpy dtype or tf.DType to its name."""
    name = getattr(dtype, "name", None)
    if name is None:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
    if name not in DTYPE_NAMES:
        raise FedTypeError(
            f"dtype: expected one of {sorted(DTYPE_NAMES)}, got {dtype!r}"
        )
    return name


def as_shape(shape: Any) -> tuple[int | None, ...]:
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


def as_placement(placement: Any) -> Placement:
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
        object.__setattr__(self, "dtype", dtype_name(dtype))
        object.__setattr__(self, "shape", as_shape(shape))

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
        arr = numeric_array(value, self)
        if from_r and arr.ndim == 0 and len(self.shape) == 1 and self.shape[0] in (None, 1):
            arr = arr.reshape(1)
        if len(arr.shape) != len(self.shape) or any(
            d is not None and d != s for d, s in zip(self.shape, arr.shape)
        ):
            raise type_mismatch(self, value)
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
                raise type_mismatch(self, value)
            return value
        if from_r and not self.element.shape and type(value) in (int, float, bool):
            value = [value]
        if isinstance(value, (str, bytes, Mapping)) or not is_sequence(value):
            raise type_mismatch(self, value)
        items = list(value)
        if items:
            arr = numeric_array(items, self)
            if arr.ndim != 1 + len(self.element.shape):
                raise type_mismatch(self, value)
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
        object.__setattr__(self, "placement", as_placement(placement))

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
                raise type_mismatch(self, value)
            return value
        if self.placement is SERVER:
            member = self.member.convert(value, from_r=from_r)
            return FederatedValue([member], SERVER, all_equal=True)
        if isinstance(value, (str, bytes, Mapping)) or not is_sequence(value):
            raise type_mismatch(self, value)
        members = list(value)
        converted = []
        for i, member in enumerate(members, start=1 if from_r else 0):
            try:
                converted.append(self.member.convert(member, from_r=from_r))
            except FedTypeError as err:
                raise FedTypeError(f"client {i}: {err}") from None
        return FederatedValue(converted, CLIENTS)


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


def is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray)) or (
        hasattr(value, "__len__") and hasattr(value, "__getitem__")
    )


def describe_value(value: Any) -> str:
    """Name the type of ``value`` in the notation of the declared types."""
    if isinstance(value, FederatedValue):
        return f"federated value @{value.placement}"
    if isinstance(value, np.ndarray):
        shape = ",".join(str(d) for d in value.shape)
        return f"{value.dtype.name}[{shape}]" if value.shape else value.dtype.name
    if isinstance(value, (list, tuple)):
        kinds = sorted({describe_value(v) for v in value})
        inner = "|".join(kinds) if kinds else "empty"
        return f"{type(value).__name__}[{inner}]"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, np.integer)):
        return "int"
    if isinstance(value, (float, np.floating)):
        return "float"
    return type(value).__name__


def type_mismatch(expected: Any, value: Any) -> FedTypeError:
    return FedTypeError(f"expected {expected}, got {describe_value(value)}")


def numeric_array(value: Any, expected: Any) -> np.ndarray:
    """Turn ``value`` into a numeric ndarray or raise the type mismatch."""
    if hasattr(value, "numpy") and callable(value.numpy):
        value = value.numpy()
    try:
        arr = np.asarray(value)
    except ValueError:  # ragged nesting
        raise type_mismatch(expected, value) from None
    if arr.dtype.kind not in "biuf":
        raise type_mismatch(expected, value)
    return arr


def to_python(value: Any) -> Any:
    """Turn tensors into numpy, and 0-d arrays into Python scalars."""
    if hasattr(value, "numpy") and callable(value.numpy):
        value = value.numpy()
    if isinstance(value, (tuple, list)):
        return type(value)(to_python(v) for v in value)
    if isinstance(value, Mapping):
        return {k: to_python(v) for k, v in value.items()}
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value.item()
    if isinstance(value, np.generic):
        return value.item()
    return value
