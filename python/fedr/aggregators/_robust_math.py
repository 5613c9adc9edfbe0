"""The robust aggregators' arithmetic: C++ kernels (fedr._kernels) and their numpy references."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedr.aggregators._weighted_mean import HAVE_KERNEL, Backend, Updates, _check_updates, _kernels
from fedr._weights import check_weights
from fedr.errors import FedTypeError, FedValueError

# An extension built before these kernels existed has weighted_mean only.
HAVE_ROBUST_KERNEL: bool = HAVE_KERNEL and hasattr(_kernels, "coordinate_median")


def _check_krum_clients(f: int, n: int) -> None:
    if n <= 2 * f + 2:
        raise FedValueError(
            f"num_byzantine={f}: Krum needs more than 2 * num_byzantine + 2 = {2 * f + 2} "
            f"clients, got {n} clients"
        )


def _use_kernel(backend: str) -> bool:
    if backend == "auto":
        return HAVE_ROBUST_KERNEL
    if backend == "kernel":
        if not HAVE_ROBUST_KERNEL:
            raise ImportError(
                "backend='kernel' but fedr._kernels has no robust kernels; rebuild fedr"
            )
        return True
    if backend == "numpy":
        return False
    raise FedValueError(f"backend: expected 'auto', 'kernel' or 'numpy', got {backend!r}")


def _matrix(updates: Updates, *, nan_ok: bool = True, why: str = "", finite: bool = False) -> np.ndarray:
    """Check ``updates`` and return them as one (K, N) float32 array (a copy for lists)."""
    checked, _, _ = _check_updates(updates)
    matrix = checked if isinstance(checked, np.ndarray) else np.stack(checked)
    if not nan_ok:
        bad = ~np.isfinite(matrix) if finite else np.isnan(matrix)
        if bad.any():
            i, j = np.argwhere(bad)[0]
            raise FedValueError(f"updates[{i}] is {matrix[i, j]} at index {j}; {why}")
    return matrix


def _check_beta(beta: object) -> float:
    if isinstance(beta, bool) or not isinstance(beta, int | float | np.integer | np.floating):
        raise FedTypeError(f"beta: expected a number in [0, 0.5), got {type(beta).__name__}")
    value = float(beta)
    if not 0.0 <= value < 0.5:
        raise FedValueError(f"beta: expected a number in [0, 0.5), got {beta!r}")
    return value


def _check_count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise FedTypeError(f"{name}: expected an int >= {minimum}, got {type(value).__name__}")
    if value < minimum:
        raise FedValueError(f"{name}: expected an int >= {minimum}, got {value}")
    return int(value)


def median_numpy(updates: Updates) -> np.ndarray:
    """Return the coordinate-wise median of K updates with numpy (the kernel's reference).

    Args:
        updates: A (K, N) C-contiguous float32 array, or a list of K 1-D
            C-contiguous float32 arrays of length N.

    Returns:
        A float32 array of shape (N,); for even K each coordinate is the mean
        of its two middle values (as ``numpy.median``, computed in float64).

    Raises:
        FedValueError: Wrong dtype, layout or shape; K=0; ragged rows; a NaN.
        FedTypeError: ``updates`` is not an array or a list of arrays.
    """
    matrix = _matrix(updates, nan_ok=False, why="the median needs updates without NaN")
    return np.median(matrix.astype(np.float64), axis=0).astype(np.float32)


def trimmed_mean_numpy(updates: Updates, beta: float) -> np.ndarray:
    """Return the coordinate-wise beta-trimmed mean of K updates with numpy (the reference).

    Args:
        updates: As in :func:`median_numpy`.
        beta: The fraction cut from each tail, in [0, 0.5): each coordinate
            drops its floor(beta * K) smallest and largest values.

    Returns:
        The mean of the remaining values of each coordinate, summed in
        float64, as float32 of shape (N,).

    Raises:
        FedValueError: ``beta`` outside [0, 0.5), or as :func:`median_numpy`.
        FedTypeError: ``beta`` is not a number, or as :func:`median_numpy`.
    """
    b = _check_beta(beta)
    matrix = _matrix(updates, nan_ok=False, why="the trimmed mean needs updates without NaN")
    k = matrix.shape[0]
    trim = math.floor(b * k)
    kept = np.sort(matrix, axis=0)[trim : k - trim].astype(np.float64)
    return (kept.sum(axis=0) / (k - 2 * trim)).astype(np.float32)


def pairwise_sq_distances_numpy(updates: Updates) -> np.ndarray:
    """Return the (K, K) float64 squared Euclidean distances between K updates with numpy.

    One float64 matrix product, ``|x_i|^2 + |x_j|^2 - 2 x_i.x_j`` clamped at 0,
    symmetric with a zero diagonal.

    Args:
        updates: As in :func:`median_numpy`.

    Returns:
        A float64 array of shape (K, K).

    Raises:
        FedValueError: A non-finite value, or as :func:`median_numpy`.
        FedTypeError: As :func:`median_numpy`.
    """
    matrix = _matrix(updates, nan_ok=False, why="distances need finite updates", finite=True)
    x = matrix.astype(np.float64)
    gram = x @ x.T
    sq = np.diag(gram).copy()
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * gram, 0.0)
    dist = np.triu(dist, 1)
    return dist + dist.T


def krum_scores(distances: np.ndarray, num_byzantine: int) -> np.ndarray:
    """Return each client's Krum score from the pairwise squared distances.

    The score of client i is the sum of its n - f - 2 smallest squared
    distances to the other clients (Blanchard et al. 2017).

    Args:
        distances: The (n, n) squared distances (see :func:`pairwise_sq_distances`).
        num_byzantine: f, the number of Byzantine clients tolerated.

    Returns:
        A float64 array of n scores.

    Raises:
        FedValueError: ``distances`` is not square, or n <= 2f + 2.
    """
    f = _check_count(num_byzantine, "num_byzantine", 0)
    d = np.asarray(distances, dtype=np.float64)
    if d.ndim != 2 or d.shape[0] != d.shape[1]:
        raise FedValueError(f"distances: expected a square (n, n) array, got shape {d.shape}")
    n = d.shape[0]
    _check_krum_clients(f, n)
    others = d[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    closest = np.sort(others, axis=1)[:, : n - f - 2]
    return closest.sum(axis=1)


def _krum_select(distances: np.ndarray, f: int, m: int) -> np.ndarray:
    """Indices of the m lowest Krum scores, in client order (ties go to the earlier client)."""
    n = distances.shape[0]
    _check_krum_clients(f, n)
    if m > n - f:
        raise FedValueError(
            f"num_selected={m}: expected at most the number of clients minus num_byzantine "
            f"({n} - {f} = {n - f})"
        )
    scores = krum_scores(distances, f)
    return np.sort(np.argsort(scores, kind="stable")[:m])


def krum_numpy(
    updates: Updates,
    num_byzantine: int,
    num_selected: int = 1,
    *,
    weights: Sequence[float] | np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Return (multi-)Krum's aggregate of K updates with numpy, and the selected indices.

    Args:
        updates: As in :func:`median_numpy`.
        num_byzantine: f, the number of Byzantine clients tolerated; K must
            exceed 2f + 2.
        num_selected: m, how many of the best-scored updates are averaged.
        weights: The clients' example counts, weighting the mean of the m
            selected; None weights them equally.

    Returns:
        ``(update, selected)``: the float32 (N,) aggregate and the selected
        row indices in increasing order.

    Raises:
        FedValueError: K <= 2f + 2, ``num_selected`` > K - f, bad weights,
            a non-finite value, or as :func:`median_numpy`.
        FedTypeError: A count is not an int, or as :func:`median_numpy`.
    """
    f = _check_count(num_byzantine, "num_byzantine", 0)
    m = _check_count(num_selected, "num_selected", 1)
    matrix = _matrix(updates)
    k = matrix.shape[0]
    w = np.ones(k) if weights is None else check_weights(weights, k)
    selected = _krum_select(pairwise_sq_distances_numpy(matrix), f, m)
    chosen = matrix[selected].astype(np.float64)
    ws = w[selected]
    update = (ws @ chosen / ws.sum()).astype(np.float32)
    return update, selected


def _dispatch(backend: Backend, numpy_fn: Any, kernel: str, updates: Updates, *args: Any) -> np.ndarray:
    """``numpy_fn(updates, *args)``, or the C++ kernel of that name on the checked updates (its errors as FedValueError)."""
    if not _use_kernel(backend):
        return numpy_fn(updates, *args)
    checked, _, _ = _check_updates(updates)
    try:
        return getattr(_kernels, kernel)(checked, *args)
    except ValueError as err:
        raise FedValueError(str(err)) from None


def coordinate_median(updates: Updates, *, backend: Backend = "auto") -> np.ndarray:
    """Return the coordinate-wise median of K updates (Yin et al. 2018).

    Args:
        updates: A (K, N) C-contiguous float32 array, or a list of K 1-D
            C-contiguous float32 arrays of length N. Read in place, never cast.
        backend: "kernel" (C++), "numpy" (reference), or "auto": the kernel
            when it is built.

    Returns:
        A float32 array of shape (N,); for even K each coordinate is the mean
        of its two middle values, as ``numpy.median``.

    Raises:
        FedValueError: Wrong dtype, layout or shape; K=0; ragged rows; a NaN.
        FedTypeError: ``updates`` is not an array or a list of arrays.
        ImportError: ``backend="kernel"`` and the kernel is not built.
    """
    return _dispatch(backend, median_numpy, "coordinate_median", updates)


def coordinate_trimmed_mean(updates: Updates, beta: float, *, backend: Backend = "auto") -> np.ndarray:
    """Return the coordinate-wise beta-trimmed mean of K updates (Yin et al. 2018).

    Args:
        updates: As in :func:`coordinate_median`.
        beta: The fraction cut from each tail, in [0, 0.5): each coordinate
            drops its floor(beta * K) smallest and largest values.
        backend: As in :func:`coordinate_median`.

    Returns:
        The mean of the remaining values of each coordinate, summed in
        float64, as float32 of shape (N,).

    Raises:
        FedValueError: ``beta`` outside [0, 0.5), or as :func:`coordinate_median`.
        FedTypeError: ``beta`` is not a number, or as :func:`coordinate_median`.
        ImportError: ``backend="kernel"`` and the kernel is not built.
    """
    b = _check_beta(beta)
    return _dispatch(backend, trimmed_mean_numpy, "coordinate_trimmed_mean", updates, b)


def pairwise_sq_distances(updates: Updates, *, backend: Backend = "auto") -> np.ndarray:
    """Return the (K, K) float64 squared Euclidean distances between K updates.

    The kernel makes one pass over the data for the Gram matrix (float32
    products summed in float64 every 512 columns); the result is symmetric
    with a zero diagonal, identical rows are exactly 0 apart, and it does not
    depend on the number of threads.

    Args:
        updates: As in :func:`coordinate_median`.
        backend: As in :func:`coordinate_median`.

    Returns:
        A float64 array of shape (K, K).

    Raises:
        FedValueError: A non-finite value, or as :func:`coordinate_median`.
        FedTypeError: As :func:`coordinate_median`.
        ImportError: ``backend="kernel"`` and the kernel is not built.
    """
    return _dispatch(backend, pairwise_sq_distances_numpy, "pairwise_sq_distances", updates)
