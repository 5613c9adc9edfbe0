"""The round protocol's messages as JSON text on Flower's wire: views, stage payloads, a node's session.

What a fedr round sends besides the weights (an aggregator's per-client
*view*, e.g. DP's :class:`~fedr.privacy.ClipView`; secure aggregation's stage
messages: key advertisements, encrypted shares, unmasking requests) is made
of a few frozen dataclasses and named tuples of numbers, bytes and small
arrays. They travel as JSON: each object as ``{"$type": name, ...fields}``
with its type among the fixed list below, bytes and arrays as base64. No
pickle: decoding only rebuilds those types from plain values, so a message
cannot make the receiver run code.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import numpy as np

from fedr.errors import FedValueError

__all__ = ["from_text", "to_text"]


def _types() -> dict[str, type]:
    """The protocol's message types, by name (the only objects a message may hold)."""
    from fedr.privacy import (
        AdvertiseKeys,
        AdvertiseRequest,
        ClipView,
        EncryptedShare,
        RoundConfig,
        SecureView,
        UnmaskRequest,
        UnmaskResponse,
    )

    kinds = (ClipView, SecureView, AdvertiseRequest, AdvertiseKeys, EncryptedShare, RoundConfig, UnmaskRequest,
             UnmaskResponse)
    return {k.__name__: k for k in kinds}


def _fields(value: Any) -> dict[str, Any]:
    if hasattr(value, "_asdict"):  # a NamedTuple
        return dict(value._asdict())
    return {name: getattr(value, name) for name in value.__dataclass_fields__}


def _encode(value: Any, types: dict[str, type]) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)  # JSON keeps Python's big integers (Shamir shares) exactly
    if isinstance(value, float | np.floating):
        return float(value)  # repr round-trips float64 exactly; NaN as Python's JSON writes it
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, np.ndarray):
        data = np.ascontiguousarray(value)
        return {"$array": data.dtype.str, "shape": list(data.shape),
                "data": base64.b64encode(data.tobytes()).decode("ascii")}
    if type(value).__name__ in types and type(value) is types[type(value).__name__]:
        return {"$type": type(value).__name__,
                **{k: _encode(v, types) for k, v in _fields(value).items()}}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(v, types) for v in value]}
    if isinstance(value, list):
        return [_encode(v, types) for v in value]
    if isinstance(value, frozenset):
        return {"$frozenset": sorted(_encode(v, types) for v in value)}
    if isinstance(value, dict):
        return {"$dict": [[_encode(k, types), _encode(v, types)] for k, v in value.items()]}
    raise FedValueError(f"protocol message: a {type(value).__name__} cannot travel to a Flower node")


_DTYPES = {"<f4", "<f8", "<u4", "<u8", "<i4", "<i8", "|u1"}


def _decode(data: Any, types: dict[str, type]) -> Any:
    if data is None or isinstance(data, bool | int | float | str):
        return data
    if isinstance(data, list):
        return [_decode(v, types) for v in data]
    if not isinstance(data, dict):
        raise FedValueError(f"protocol message: unexpected {type(data).__name__}")
    tags: dict[str, Callable[[], Any]] = {
        "$bytes": lambda: base64.b64decode(data["$bytes"], validate=True),
        "$tuple": lambda: tuple(_decode(v, types) for v in data["$tuple"]),
        "$frozenset": lambda: frozenset(_decode(v, types) for v in data["$frozenset"]),
        "$dict": lambda: {_decode(k, types): _decode(v, types) for k, v in data["$dict"]},
        "$array": lambda: _array(data),
    }
    for tag, build in tags.items():
        if tag in data:
            return build()
    name = data.get("$type")
    if name not in types:
        raise FedValueError(f"protocol message: unknown type {str(name)[:60]!r}")
    fields = {k: _decode(v, types) for k, v in data.items() if k != "$type"}
    try:
        return types[name](**fields)
    except TypeError as err:
        raise FedValueError(f"protocol message: a malformed {name} ({err})") from None


def _array(data: dict[str, Any]) -> np.ndarray:
    dtype = data["$array"]
    if dtype not in _DTYPES:
        raise FedValueError(f"protocol message: an array of {str(dtype)[:20]!r}")
    raw = base64.b64decode(data["data"], validate=True)
    return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape([int(d) for d in data["shape"]]).copy()


def to_text(value: Any) -> str:
    """``value`` (a view, a stage payload or reply, a session's state) as JSON text.

    Raises:
        FedValueError: it holds an object that is not one of the protocol's types.
    """
    return json.dumps(_encode(value, _types()), separators=(",", ":"))


def from_text(text: Any) -> Any:
    """The value of :func:`to_text`'s text.

    Raises:
        FedValueError: not JSON, or not made of the protocol's types.
    """
    try:
        data = json.loads(str(text))
    except ValueError as err:
        raise FedValueError(f"protocol message: not JSON ({err})") from None
    try:
        return _decode(data, _types())
    except (KeyError, ValueError, TypeError) as err:
        if isinstance(err, FedValueError):
            raise
        raise FedValueError(f"protocol message: malformed ({err})") from None
