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
from collections.abc import Callable
from typing import Any


from fedr.errors import FedTypeError
from fedr._operators import federated_broadcast, federated_map, federated_mean, federated_sum
from fedr._values import (
    CLIENTS,
    SERVER,
    FederatedType,
    FederatedValue,
    Placement,
    SequenceType,
    TensorType,
    to_python,
)

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


TypeSpec = TensorType | SequenceType | FederatedType


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
            return to_python(self.fn(arg))
        result = self.fn(arg)
        if isinstance(result, FederatedValue):
            if result.placement is SERVER or result.all_equal:
                return to_python(result.members[0])
            return [to_python(m) for m in result.members]
        return to_python(result)


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


