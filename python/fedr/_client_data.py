"""One client's examples as contiguous arrays plus batch offsets, and the checks on them.

Split from :mod:`fedr.datasets`, which re-exports everything public here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from itertools import pairwise
from typing import Any

import numpy as np

from fedr._idx import describe_array
from fedr.errors import FedTypeError, FedValueError

__all__ = [
    "Batch",
    "ClientData",
    "as_client_data",
    "as_labels",
    "check_finite",
    "labels_1d",
    "positive_int",
    "writable_by_caller",
]

Batch = OrderedDict[str, np.ndarray]


def check_finite(array: np.ndarray, what: str) -> None:
    """Raise unless every value of ``array`` is finite.

    Args:
        array: A numeric array.
        what: How the message names it, e.g. ``"`x`"``.

    Raises:
        FedValueError: a NaN or an infinity.
    """
    # min/max propagate NaN and expose inf without allocating a boolean mask.
    if array.size and not (np.isfinite(array.min()) and np.isfinite(array.max())):
        raise FedValueError(f"{what} has non-finite values (NaN or inf)")


def positive_int(value: Any, name: str) -> int:
    """Return ``value`` as an int after checking it is a positive integer (not a bool).

    Args:
        value: The value to check.
        name: The argument's name, for the message.

    Returns:
        ``int(value)``.

    Raises:
        FedValueError: not an integer, a bool, or below 1.
    """
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise FedValueError(f"`{name}` must be a positive integer; got {value!r}")
    return int(value)


def labels_1d(y: Any, what: str) -> np.ndarray:
    """Return ``y`` as int64 labels; whole-number floats such as ``[0., 9.]`` are accepted.

    Args:
        y: 1-D labels.
        what: How the message names them.

    Returns:
        The labels as an int64 array.

    Raises:
        FedValueError: not 1-D, non-integer floats, or a negative label.
        FedTypeError: not numeric.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise FedValueError(f"{what} must be 1-D labels; got shape {y.shape}")
    if np.issubdtype(y.dtype, np.floating):
        if y.size and not (np.isfinite(y).all() and (y == np.round(y)).all()):
            raise FedValueError(f"{what} must hold whole-number labels; got non-integer floats")
    elif not np.issubdtype(y.dtype, np.integer):
        raise FedTypeError(f"{what} must be integer labels; got dtype {y.dtype}")
    if y.size and y.min() < 0:
        raise FedValueError(f"{what} must hold non-negative labels; got {y.min()}")
    return y.astype(np.int64)


def as_labels(y: Any, n: int | None = None, *, what: str = "`y`") -> np.ndarray:
    """Return class labels as int32 after checking them, as :class:`ClientData` does.

    The one rule on labels (a 1-D array of whole numbers >= 0) is applied here
    for callers that convert labels before they build clients, such as the R
    package, so that its messages name their argument.

    Args:
        y: 1-D labels: integers, or whole-number floats such as ``[0., 9.]``.
        n: the number of examples they label, or None for any number.
        what: how messages name ``y``, e.g. ``"`labels`"``.

    Returns:
        A 1-D int32 array.

    Raises:
        FedTypeError: ``y`` is not numeric.
        FedValueError: ``y`` is not 1-D, holds fractions, negative or non-finite
            values or labels beyond int32, or does not have ``n`` elements.
    """
    labels = labels_1d(y, what)
    if n is not None and len(labels) != n:
        raise FedValueError(f"{what} must have one label per example ({n}); got {len(labels)}")
    if labels.size and labels.max() > np.iinfo(np.int32).max:
        raise FedValueError(f"{what} has labels beyond int32; got {labels.max()}")
    return labels.astype(np.int32)


class ClientData:
    """One client's examples as read-only contiguous arrays plus batch offsets.

    The arrays are read-only (copied on construction when the caller could
    still write to them), so nothing cached from them goes stale; to change a
    client's data, make a new ClientData. Batch ``i`` is rows ``offsets[i]:offsets[i + 1]`` of ``x`` and ``y``, so
    training walks batches without a Python object per batch; :meth:`batches`
    gives the reference's list of ``OrderedDict(x=..., y=...)`` as views.

    Args:
        x: features ``(n, *feature_shape)``; read-only float32 C-contiguous
            input is kept without a copy, writeable input is copied (so later
            writes by the caller cannot reach the client), other int/float
            dtypes are converted once (not scaled: see :func:`prepare_images`).
        y: 1-D labels (ints, or whole-number floats such as the reference's
            ``[0. 9. 8. ...]``), stored as int32; or 2-D float targets ``(n, k)``,
            stored as float32.
        batch_size: rows per batch, the last batch smaller if ``n`` is not a
            multiple. Give this or ``offsets``; neither gives one batch of all rows.
        offsets: batch boundaries, from 0 to ``n``, strictly increasing.
        client_id: the client's name, used in messages.
        scale: For images kept as integer pixels: the model's input is
            ``x / scale`` (255 for pixels in 0..255). ``x`` is then stored as
            uint8, four times smaller than float32, and divided inside the
            training graph, which gives exactly the float32 values of
            :func:`prepare_images`. None (the default) stores float32 features.

    Raises:
        FedTypeError: an argument has the wrong type.
        FedValueError: a shape, value or offset is wrong; the message names the client.
    """

    # __weakref__: the training path caches each client's tensors, keyed weakly by the client.
    __slots__ = ("__weakref__", "_client_id", "_offsets", "_scale", "_x", "_y")

    def __init__(
        self,
        x: Any,
        y: Any,
        *,
        batch_size: int | None = None,
        offsets: Any = None,
        client_id: str = "client_0",
        scale: float | None = None,
    ) -> None:
        if not isinstance(client_id, str):
            raise FedTypeError(f"`client_id` must be a str; got {type(client_id).__name__}")
        self._client_id = client_id
        self._scale = _check_scale(scale, client_id)
        self._x, self._y, self._offsets = _validate_client(x, y, batch_size, offsets, client_id, self._scale)

    @classmethod
    def from_batches(cls, batches: Sequence[Any], client_id: str = "client_0") -> ClientData:
        """Build a client from the reference's list of batches, concatenating once.

        Args:
            batches: a list of dicts / ``OrderedDict`` with keys ``x`` and ``y``, or of
                ``(x, y)`` tuples. A batch's ``x`` may be flat ``(B, 784)`` or images.
            client_id: the client's name.

        Returns:
            The client, with one offset per batch.

        Raises:
            FedTypeError: ``batches`` or a batch has the wrong type.
            FedValueError: no batches, a batch is empty or its ``x`` and ``y``
                lengths differ, or batches have different feature shapes.
        """
        where = f"client {client_id!r}"
        if not isinstance(batches, list | tuple):
            raise FedTypeError(f"{where}: expected a list of batches; got {type(batches).__name__}")
        if not batches:
            raise FedValueError(f"{where}: has no batches")
        xs: list[np.ndarray] = []
        ys: list[np.ndarray] = []
        for i, batch in enumerate(batches):
            if isinstance(batch, Mapping):
                if "x" not in batch or "y" not in batch:
                    raise FedValueError(
                        f"{where}: batch {i} has keys {list(batch)}, expected 'x' and 'y'"
                    )
                bx, by = np.asarray(batch["x"]), np.asarray(batch["y"])
            elif isinstance(batch, tuple) and len(batch) == 2:
                bx, by = np.asarray(batch[0]), np.asarray(batch[1])
            else:
                raise FedTypeError(
                    f"{where}: batch {i} must be a dict with keys 'x' and 'y' or an (x, y) tuple; "
                    f"got {type(batch).__name__}"
                )
            if bx.ndim < 2:
                raise FedValueError(
                    f"{where}: batch {i} has x of shape {bx.shape}, expected (B, ...)"
                )
            if xs and bx.shape[1:] != xs[0].shape[1:]:
                raise FedValueError(
                    f"{where}: batch {i} has x rows of shape {bx.shape[1:]}, batch 0 {xs[0].shape[1:]}"
                )
            if by.ndim < 1 or len(bx) != len(by):
                raise FedValueError(
                    f"{where}: batch {i} has x of shape {bx.shape} but y of shape {by.shape}"
                )
            if len(bx) == 0:
                raise FedValueError(f"{where}: batch {i} is empty")
            xs.append(bx)
            ys.append(by)
        offsets = np.cumsum([0] + [len(b) for b in xs], dtype=np.int64)
        x = xs[0] if len(xs) == 1 else np.concatenate(xs)
        y = ys[0] if len(ys) == 1 else np.concatenate(ys)
        return cls(x, y, offsets=offsets, client_id=client_id)

    def __getstate__(self) -> tuple[Any, ...]:
        return (self._client_id, self._x, self._y, self._offsets, self._scale)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        # Unpickled (e.g. in a Ray worker): the arrays stay read-only there too.
        self._client_id, self._x, self._y, self._offsets = state[:4]
        self._scale = state[4] if len(state) > 4 else None
        for array in (self._x, self._y, self._offsets):
            if array.flags.writeable:
                array.flags.writeable = False

    @property
    def x(self) -> np.ndarray:
        """Features as stored, C-contiguous ``(n, *feature_shape)``: float32, or uint8 pixels when :attr:`scale` is set."""
        return self._x

    @property
    def scale(self) -> float | None:
        """The divisor of stored uint8 pixels (the model sees ``x / scale``), or None for float32 features."""
        return self._scale

    def features(self) -> np.ndarray:
        """The features the model sees, float32: ``x`` itself, or ``x / scale`` computed now (a new array)."""
        if self._scale is None:
            return self._x
        out = self._x.astype(np.float32)
        np.divide(out, np.float32(self._scale), out=out)
        return out

    @property
    def y(self) -> np.ndarray:
        """Labels, int32 ``(n,)``, or float32 targets ``(n, k)``."""
        return self._y

    @property
    def offsets(self) -> np.ndarray:
        """Batch boundaries, read-only int64 ``(num_batches + 1,)`` from 0 to n."""
        return self._offsets

    @property
    def client_id(self) -> str:
        """The client's name."""
        return self._client_id

    @property
    def num_examples(self) -> int:
        """Number of rows."""
        return int(self._x.shape[0])

    @property
    def num_batches(self) -> int:
        """Number of batches."""
        return len(self._offsets) - 1

    @property
    def batch_size(self) -> int:
        """Size of the first batch (the others are no larger only if built with ``batch_size``)."""
        return int(self._offsets[1] - self._offsets[0])

    def batches(self) -> list[Batch]:
        """Return the reference's list of ``OrderedDict(x=..., y=...)`` batches (views; of a float copy when scaled)."""
        x = self.features()
        return [
            OrderedDict(x=x[a:b], y=self._y[a:b]) for a, b in pairwise(self._offsets.tolist())
        ]

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.batches())

    def __repr__(self) -> str:
        return (
            f"ClientData(client_id={self._client_id!r}, num_examples={self.num_examples}, "
            f"num_batches={self.num_batches}, batch_size={self.batch_size}, "
            f"x={describe_array(self._x)}, y={describe_array(self._y)}"
            + (f", scale={self._scale:g})" if self._scale is not None else ")")
        )


def _read_only(array: np.ndarray, given: np.ndarray) -> np.ndarray:
    """``array`` made read-only, copied first if it shares memory the caller can still write.

    A client's arrays never change after construction, so the tensors cached
    from them cannot go stale; to change data, make a new ClientData.
    """
    if np.may_share_memory(array, given) and writable_by_caller(given):
        array = array.copy()
    array.flags.writeable = False
    return array


def writable_by_caller(array: np.ndarray) -> bool:
    """Whether some array or buffer behind ``array`` can still be written (a read-only view may have a writable base)."""
    base: Any = array
    while isinstance(base, np.ndarray):
        if base.flags.writeable:
            return True
        base = base.base
    # The end of the chain: None (owned, read-only) or an immutable bytes object are safe.
    return base is not None and not isinstance(base, bytes)


def _check_scale(scale: Any, client_id: str) -> float | None:
    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, int | float | np.integer | np.floating):
        raise FedTypeError(f"client {client_id!r}: scale must be a number or None; got {type(scale).__name__}")
    if not (np.isfinite(scale) and scale > 0):
        raise FedValueError(f"client {client_id!r}: scale must be a positive finite number; got {scale!r}")
    return float(scale)


def _validate_client(
    x: Any, y: Any, batch_size: int | None, offsets: Any, client_id: str, scale: float | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Convert and check a client's arrays and batch offsets, naming the client in errors."""
    where = f"client {client_id!r}"
    x, y = np.asarray(x), np.asarray(y)
    given_x, given_y = x, y
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise FedTypeError(f"{where}: x must be a float or integer array; got dtype {x.dtype}")
    if x.ndim < 2:
        raise FedValueError(
            f"{where}: x must have at least 2 dimensions (n, ...); got shape {x.shape}"
        )
    if y.ndim not in (1, 2):
        raise FedValueError(f"{where}: y must be 1-D labels or 2-D targets; got shape {y.shape}")
    if len(x) != len(y):
        raise FedValueError(f"{where}: x has {len(x)} rows but y has {len(y)}")
    n = len(x)
    if n == 0:
        raise FedValueError(f"{where}: has no examples")
    if scale is None:
        x = _read_only(np.ascontiguousarray(x, dtype=np.float32), given_x)
        check_finite(x, f"{where}: x")
    else:
        if not np.issubdtype(x.dtype, np.integer):
            raise FedTypeError(f"{where}: x must hold integer pixels (0..255) with `scale`; got dtype {x.dtype}")
        if x.dtype != np.uint8 and (x.min() < 0 or x.max() > 255):
            raise FedValueError(
                f"{where}: x must hold pixels in 0..255 with `scale`; got values in {x.min()}..{x.max()}"
            )
        x = _read_only(np.ascontiguousarray(x, dtype=np.uint8), given_x)
    if y.ndim == 1:
        y = _read_only(as_labels(y, what=f"{where}: y"), given_y)
    else:
        if not (np.issubdtype(y.dtype, np.floating) or np.issubdtype(y.dtype, np.integer)):
            raise FedTypeError(f"{where}: y must be a float or integer array; got dtype {y.dtype}")
        y = _read_only(np.ascontiguousarray(y, dtype=np.float32), given_y)
        check_finite(y, f"{where}: y")
    if batch_size is not None and offsets is not None:
        raise FedValueError(f"{where}: give `batch_size` or `offsets`, not both")
    if batch_size is not None:
        size = positive_int(batch_size, "batch_size")
        offsets = np.append(np.arange(0, n, size, dtype=np.int64), n)
    elif offsets is None:
        offsets = np.array([0, n], dtype=np.int64)
    else:
        raw = np.asarray(offsets)
        if raw.ndim != 1 or len(raw) < 2 or not np.issubdtype(raw.dtype, np.integer):
            raise FedValueError(
                f"{where}: offsets must be 1-D integers with at least 2 entries; "
                f"got dtype {raw.dtype} shape {raw.shape}"
            )
        offsets = raw.astype(np.int64)
        if offsets[0] != 0 or offsets[-1] != n or (np.diff(offsets) <= 0).any():
            raise FedValueError(
                f"{where}: offsets must increase strictly from 0 to {n}; got {offsets.tolist()}"
            )
    offsets.flags.writeable = False
    return x, y, offsets


def as_client_data(data: Any, *, batch_size: int | None = None) -> list[ClientData]:
    """Convert any accepted form of federated data to a list of clients.

    Args:
        data: a :class:`ClientData`; a list of them; the reference structure (a
            list over clients of lists of ``{x, y}`` batches); or a list of
            ``(x, y)`` array pairs, one per client. Forms may be mixed per client.
        batch_size: batch size of clients given as ``(x, y)`` pairs; None makes one
            batch of all their rows.

    Returns:
        One :class:`ClientData` per client; ids default to ``client_<i>``.

    Raises:
        FedTypeError: ``data`` is of none of these forms.
        FedValueError: ``data`` is an empty list, or a client's data is invalid.
    """
    expected = (
        "expected a ClientData, a list of ClientData, a list over clients of lists of "
        "{'x', 'y'} batches, or a list of (x, y) pairs"
    )
    if isinstance(data, ClientData):
        return [data]
    if not isinstance(data, list | tuple):
        raise FedTypeError(f"{expected}; got {type(data).__name__}")
    if not data:
        raise FedValueError("expected at least one client; got an empty list")
    clients = []
    for i, item in enumerate(data):
        client_id = f"client_{i}"
        if isinstance(item, ClientData):
            clients.append(item)
        elif _is_pair(item):
            clients.append(ClientData(item[0], item[1], batch_size=batch_size, client_id=client_id))
        elif isinstance(item, list | tuple):
            clients.append(ClientData.from_batches(item, client_id=client_id))
        else:
            raise FedTypeError(
                f"{expected}; got {type(data).__name__} whose item {i} is {type(item).__name__}"
            )
    return clients


def _is_pair(item: Any) -> bool:
    # A client's list of batches holds dicts or tuples; an (x, y) pair holds neither.
    return (
        isinstance(item, list | tuple)
        and len(item) == 2
        and not any(isinstance(part, Mapping | tuple) for part in item)
    )
