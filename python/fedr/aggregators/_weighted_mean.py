"""Example-weighted mean of client updates: the C++ kernel, its numpy reference, flat weights.

Federated averaging (McMahan et al. 2016, "Communication-Efficient Learning of
Deep Networks from Decentralized Data", arXiv:1602.05629) averages the clients'
model updates weighted by their example counts:
``mean = sum_k n_k * update_k / sum_k n_k``.

Updates travel as one flat float32 vector per client (``flatten_weights``);
the mean is computed by the C++ kernel ``fedr._kernels`` in place, accumulated
in float64 with the GIL released, or by a numpy reference with the same
semantics when the kernel is not built. Updates are never cast or copied: they
must be C-contiguous float32, anything else raises ``FedValueError``.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from fedr._weights import check_weights
from fedr.errors import FedTypeError, FedValueError


def _load_kernels() -> Any:
    try:
        return importlib.import_module("fedr._kernels")
    except ImportError:  # not built: everything falls back to the numpy reference
        return None


_kernels: Any = _load_kernels()

__all__ = [
    "HAVE_KERNEL",
    "Backend",
    "WeightedMeanAccumulator",
    "flatten_weights",
    "unflatten_weights",
    "weighted_mean",
    "weighted_mean_numpy",
]

HAVE_KERNEL: bool = _kernels is not None

Backend = Literal["auto", "kernel", "numpy"]
Updates = np.ndarray | Sequence[np.ndarray]


def _use_kernel(backend: str) -> bool:
    if backend == "auto":
        return HAVE_KERNEL
    if backend == "kernel":
        if not HAVE_KERNEL:
            raise ImportError("backend='kernel' but fedr._kernels is not built; reinstall fedr")
        return True
    if backend == "numpy":
        return False
    raise FedValueError(f"backend: expected 'auto', 'kernel' or 'numpy', got {backend!r}")


def _check_float32(x: object, name: str) -> np.ndarray:
    if not isinstance(x, np.ndarray):
        raise FedTypeError(f"{name}: expected a numpy.ndarray of float32, got {type(x).__name__}")
    if x.dtype != np.float32:
        raise FedValueError(
            f"{name}: expected dtype float32, got {x.dtype} with shape {x.shape} "
            "(convert once with numpy.asarray(x, dtype=numpy.float32))"
        )
    if not x.flags.c_contiguous:
        raise FedValueError(
            f"{name}: expected a C-contiguous array, got a strided view with shape {x.shape} "
            "(convert once with numpy.ascontiguousarray)"
        )
    return x


def _check_updates(updates: object) -> tuple[Updates, int, int]:
    """Return ``updates`` checked (a matrix, or a list of rows), K and N."""
    if isinstance(updates, np.ndarray):
        matrix = _check_float32(updates, "updates")
        if matrix.ndim != 2:
            raise FedValueError(
                "updates: expected a 2-D (K, N) array or a list of K 1-D arrays, "
                f"got shape {matrix.shape}"
            )
        if matrix.shape[0] == 0:
            raise FedValueError(f"updates: expected at least one update, got shape {matrix.shape}")
        return matrix, matrix.shape[0], matrix.shape[1]
    if not isinstance(updates, list | tuple):
        raise FedTypeError(
            "updates: expected a 2-D float32 array or a list of 1-D float32 arrays, "
            f"got {type(updates).__name__}"
        )
    if len(updates) == 0:
        raise FedValueError("updates: expected at least one update, got an empty list (K=0)")
    rows = [_check_float32(x, f"updates[{i}]") for i, x in enumerate(updates)]
    n = rows[0].size
    for i, row in enumerate(rows):
        if row.ndim != 1:
            raise FedValueError(f"updates[{i}]: expected a 1-D array, got shape {row.shape}")
        if row.shape[0] != n:
            raise FedValueError(
                f"updates are ragged: updates[0] has shape {rows[0].shape} "
                f"but updates[{i}] has shape {row.shape}"
            )
    return rows, len(rows), n


def weighted_mean_numpy(updates: Updates, weights: Sequence[float] | np.ndarray) -> np.ndarray:
    """Return the weighted mean of K updates with numpy (the kernel's reference).

    Args:
        updates: A (K, N) C-contiguous float32 array, or a list of K 1-D
            C-contiguous float32 arrays of length N.
        weights: K finite non-negative numbers with a positive sum, e.g. the
            clients' example counts.

    Returns:
        ``sum_k weights[k] * updates[k] / sum(weights)`` as float32 of shape
        (N,), accumulated in float64.

    Raises:
        FedValueError: Wrong dtype, layout or shape; K=0; ragged rows; a
            weights length other than K; a negative or non-finite weight; or a
            zero total weight.
        FedTypeError: ``updates`` is not an array or a list of arrays.
    """
    rows, k, n = _check_updates(updates)
    w = _scaled(check_weights(weights, k))
    acc = np.zeros(n, dtype=np.float64)
    term = np.empty(n, dtype=np.float64)
    for row, wk in zip(rows, w, strict=True):
        np.multiply(row, wk, out=term, dtype=np.float64)
        acc += term
    acc *= 1.0 / w.sum()
    return acc.astype(np.float32)


def _exponent(weight: float) -> int:
    """e with ``weight = m * 2**e``, m in [0.5, 1) (0 for a zero weight): dividing by 2**e is exact."""
    return math.frexp(weight)[1] if weight > 0 else 0


def _scaled(w: np.ndarray) -> np.ndarray:
    """``w`` divided by the power of two of its largest entry, as the kernel does.

    With the largest weight in [0.5, 1), ``1 / sum(w)`` is finite however small
    the weights (a total of 1e-320 made it Inf, so a mean of ones came out
    Inf); for weights in the normal range the scaling is exact, so the mean
    is bit for bit that of the raw weights.
    """
    return np.ldexp(w, -_exponent(float(w.max())))


def weighted_mean(
    updates: Updates,
    weights: Sequence[float] | np.ndarray,
    *,
    backend: Backend = "auto",
) -> np.ndarray:
    """Return the weighted mean of K updates, ``sum_k w_k x_k / sum_k w_k``.

    Args:
        updates: A (K, N) C-contiguous float32 array, or a list of K 1-D
            C-contiguous float32 arrays of length N. Read in place, never cast.
        weights: K finite non-negative numbers with a positive sum, e.g. the
            clients' example counts (McMahan et al. weight by examples).
        backend: "kernel" (C++), "numpy" (reference), or "auto": the kernel
            when it is built.

    Returns:
        A float32 array of shape (N,), accumulated in float64.

    Raises:
        FedValueError: Wrong dtype, layout or shape; K=0; ragged rows; a
            weights length other than K; a negative or non-finite weight; or a
            zero total weight.
        FedTypeError: ``updates`` is not an array or a list of arrays.
        ImportError: ``backend="kernel"`` and the kernel is not built.
    """
    if not _use_kernel(backend):
        return weighted_mean_numpy(updates, weights)
    checked, k, _ = _check_updates(updates)
    return _kernels.weighted_mean(checked, check_weights(weights, k))


class _NumpyAccumulator:
    """The numpy stand-in for ``fedr._kernels.WeightedMeanAccumulator``."""

    def __init__(self, n: int) -> None:
        self._sum = np.zeros(n, dtype=np.float64)
        self.reset()

    @property
    def nbytes(self) -> int:
        return self._sum.nbytes

    def add(self, update: np.ndarray, weight: float) -> None:
        # As the kernel: _sum holds sum_i (w_i / 2^e) x_i with 2^e the largest
        # weight's power of two (see _scaled), rescaled when a larger one comes.
        if weight > 0:
            e = _exponent(weight)
            if self._scaled_total == 0.0:
                self._e = e
            elif e > self._e:
                shrink = math.ldexp(1.0, self._e - e)
                self._sum *= shrink
                self._scaled_total *= shrink
                self._e = e
            w = math.ldexp(weight, -self._e)
            self._sum += np.multiply(update, w, dtype=np.float64)
            self._scaled_total += w
        self.total_weight += weight
        self.count += 1

    def result(self) -> np.ndarray:
        return (self._sum * (1.0 / self._scaled_total)).astype(np.float32)

    def reset(self) -> None:
        self._sum[:] = 0.0
        self.total_weight = 0.0
        self._scaled_total = 0.0
        self._e = 0
        self.count = 0


class WeightedMeanAccumulator:
    """Streaming weighted mean: add client updates one by one, read the mean.

    Holds a float64 running sum of ``n`` elements and nothing else, so memory
    does not grow with the number of clients: a server can aggregate updates
    as they arrive and drop each one after ``add``. Updates 1 and 2 (as
    float32 vectors) with weights 1 and 3 give 1.75.
    """

    __slots__ = ("_impl", "_n")

    def __init__(self, n: int, *, backend: Backend = "auto") -> None:
        """Start an empty accumulator for updates of ``n`` elements.

        Args:
            n: Length of every update (the number of model weights).
            backend: "kernel" (C++), "numpy" (reference), or "auto": the kernel
                when it is built.

        Raises:
            FedTypeError: ``n`` is not an integer.
            FedValueError: ``n`` is negative or too large to allocate, or ``backend`` is unknown.
            ImportError: ``backend="kernel"`` and the kernel is not built.
        """
        if isinstance(n, bool) or not isinstance(n, int | np.integer):
            raise FedTypeError(f"n: expected an int, got {type(n).__name__}")
        if n < 0:
            raise FedValueError(f"n: expected a non-negative int, got {n}")
        self._n = int(n)
        kernel = _use_kernel(backend)
        try:
            self._impl = (
                _kernels.WeightedMeanAccumulator(self._n) if kernel else _NumpyAccumulator(self._n)
            )
        except (MemoryError, ValueError):
            # numpy's and std::vector's messages name neither the argument nor the size.
            raise FedValueError(
                f"n: a running sum of {self._n} float64 values ({self._n * 8 / 2**30:.3g} GiB) "
                "cannot be allocated; n is the number of model weights"
            ) from None

    @property
    def n(self) -> int:
        """Length of every update."""
        return self._n

    @property
    def count(self) -> int:
        """Number of updates added since creation or the last ``reset``."""
        return int(self._impl.count)

    @property
    def total_weight(self) -> float:
        """Sum of the weights added."""
        return float(self._impl.total_weight)

    @property
    def nbytes(self) -> int:
        """Bytes held by the running sum: ``8 * n``, whatever the count."""
        return int(self._impl.nbytes)

    @property
    def backend(self) -> Literal["kernel", "numpy"]:
        """Which implementation runs: "kernel" or "numpy"."""
        return "numpy" if isinstance(self._impl, _NumpyAccumulator) else "kernel"

    def add(self, update: np.ndarray, weight: float) -> None:
        """Add one update with its weight (e.g. the client's example count).

        Args:
            update: A 1-D C-contiguous float32 array of length ``n``; read in
                place, not kept.
            weight: A finite non-negative number. A zero weight counts the
                update but leaves the mean unchanged.

        Raises:
            FedValueError: Wrong dtype, layout or shape, or a negative or
                non-finite weight (or one that makes the total overflow).
            FedTypeError: ``update`` is not an array or ``weight`` not a number.
        """
        x = _check_float32(update, "update")
        if x.shape != (self._n,):
            raise FedValueError(f"update: expected shape ({self._n},), got shape {x.shape}")
        number = int | float | np.integer | np.floating
        if isinstance(weight, bool) or not isinstance(weight, number):
            raise FedTypeError(f"weight: expected a number, got {type(weight).__name__}")
        w = float(weight)
        if not math.isfinite(w):
            raise FedValueError(f"weight is {w}; weights must be finite")
        if w < 0:
            raise FedValueError(f"weight is {w}; weights must be non-negative")
        if not math.isfinite(self._impl.total_weight + w):
            raise FedValueError(f"weight {w}: the total weight would overflow")
        self._impl.add(x, w)

    def result(self) -> np.ndarray:
        """Return the weighted mean of the updates added so far.

        Returns:
            A new float32 array of shape (n,).

        Raises:
            FedValueError: No update with a positive weight was added.
        """
        if not self._impl.total_weight > 0:
            raise FedValueError(
                f"total weight is {self._impl.total_weight} after {self._impl.count} update(s); "
                "add an update with a positive weight first"
            )
        return self._impl.result()

    def reset(self) -> None:
        """Forget every update added, keeping the same ``n``."""
        self._impl.reset()

    def __repr__(self) -> str:
        return (
            f"WeightedMeanAccumulator(n={self._n}, count={self.count}, "
            f"total_weight={self.total_weight}, backend={self.backend!r})"
        )


def flatten_weights(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """Concatenate model weights into one float32 C-contiguous vector.

    This is the one conversion at the boundary: the arrays are copied (and
    cast to float32) into a single new buffer, in order, each in C order.

    Args:
        arrays: The model's weight arrays (any shapes, real dtypes).

    Returns:
        A new 1-D float32 array of ``sum(a.size for a in arrays)`` elements.

    Raises:
        FedTypeError: ``arrays`` is not a list or tuple.
        FedValueError: An entry is not a real-valued array.
    """
    if not isinstance(arrays, list | tuple):
        raise FedTypeError(f"arrays: expected a list of numpy arrays, got {type(arrays).__name__}")
    parts = [np.asarray(a) for a in arrays]
    for i, a in enumerate(parts):
        if a.dtype.kind not in "biuf":
            raise FedValueError(f"arrays[{i}]: expected real numbers, got dtype {a.dtype}")
    out = np.empty(sum(a.size for a in parts), dtype=np.float32)
    offset = 0
    for a in parts:
        out[offset : offset + a.size] = a.reshape(-1)
        offset += a.size
    return out


def unflatten_weights(vec: np.ndarray, shapes: Sequence[Sequence[int]]) -> list[np.ndarray]:
    """Split a flat vector back into arrays of the given shapes.

    The inverse of ``flatten_weights``. The arrays are views into ``vec`` (no
    copy): writing to one writes to ``vec``.

    Args:
        vec: A 1-D array, e.g. the aggregated update.
        shapes: The shape of each array, in the order they were flattened.

    Returns:
        One array per shape, with the dtype of ``vec``.

    Raises:
        FedTypeError: ``vec`` is not an array or ``shapes`` not a sequence.
        FedValueError: ``vec`` is not 1-D, a shape is invalid, or the sizes
            do not add up to ``vec.size``.
    """
    if not isinstance(vec, np.ndarray):
        raise FedTypeError(f"vec: expected a numpy.ndarray, got {type(vec).__name__}")
    if vec.ndim != 1:
        raise FedValueError(f"vec: expected a 1-D array, got shape {vec.shape}")
    if isinstance(shapes, str | bytes) or not isinstance(shapes, Sequence):
        raise FedTypeError(f"shapes: expected a list of shapes, got {type(shapes).__name__}")
    dims: list[tuple[int, ...]] = []
    for i, shape in enumerate(shapes):
        try:
            dim = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise FedValueError(f"shapes[{i}]: expected a tuple of ints, got {shape!r}") from None
        if any(d < 0 for d in dim):
            raise FedValueError(f"shapes[{i}]: expected non-negative sizes, got {dim}")
        dims.append(dim)
    sizes = [math.prod(d) for d in dims]
    if sum(sizes) != vec.size:
        raise FedValueError(
            f"shapes hold {sum(sizes)} elements but vec has {vec.size} (shape {vec.shape})"
        )
    ends = np.cumsum(sizes, dtype=np.int64)
    pieces = zip(dims, sizes, ends, strict=True)
    return [vec[end - size : end].reshape(dim) for dim, size, end in pieces]
