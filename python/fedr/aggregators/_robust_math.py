"""The robust aggregators' arithmetic: C++ kernels (fedr._kernels) and their numpy references.

Median and trimmed mean (Yin et al. 2018), Krum (Blanchard et al. 2017), the
smoothed Weiszfeld geometric median of RFA (Pillutla et al. 2022) and Bulyan
(El Mhamdi et al. 2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

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


# --- geometric median (RFA) ------------------------------------------------------


class WeiszfeldResult(NamedTuple):
    """The smoothed Weiszfeld geometric median and how it got there."""

    median: np.ndarray  # float32 (N,)
    iterations: int  # Weiszfeld steps after the initial weighted mean
    objective: float  # sum_i alpha_i ||median - x_i||, alpha scaled to sum 1
    converged: bool  # the relative change of the objective met the tolerance


def _check_gm_params(smoothing: object, max_iterations: object, tolerance: object) -> tuple[float, int, float]:
    """``(smoothing, max_iterations, tolerance)`` checked: nu > 0, steps >= 0, tolerance >= 0, all finite."""
    values = []
    for name, value, strict in (("smoothing", smoothing, True), ("tolerance", tolerance, False)):
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise FedTypeError(f"{name}: expected a finite number {'>' if strict else '>='} 0, got {type(value).__name__}")
        v = float(value)
        if not math.isfinite(v) or v < 0 or (strict and v == 0):
            raise FedValueError(f"{name}: expected a finite number {'>' if strict else '>='} 0, got {value!r}")
        values.append(v)
    return values[0], _check_count(max_iterations, "max_iterations", 0), values[1]


def _alpha(weights: Sequence[float] | np.ndarray | None, k: int) -> np.ndarray:
    """The example weights alpha_i scaled to sum 1 (equal without weights), as the kernel scales them."""
    w = np.ones(k) if weights is None else check_weights(weights, k)
    w = np.ldexp(w, -math.frexp(float(w.max()))[1])  # a power of two first: a tiny total stays finite
    return w / w.sum()


def _weiszfeld_step(matrix: np.ndarray, w: np.ndarray, chunk: int = 1 << 15) -> tuple[np.ndarray, np.ndarray]:
    """``(z, d)``: z = sum_i w_i x_i (w summing to 1) and d_i = ||z - x_i||, in float64, a block of columns at a time."""
    k, n = matrix.shape
    z = np.empty(n, np.float64)
    sq = np.zeros(k, np.float64)
    for c in range(0, n, chunk):
        x = matrix[:, c : c + chunk].astype(np.float64)
        zc = w @ x
        z[c : c + chunk] = zc
        diff = x - zc
        sq += np.einsum("ij,ij->i", diff, diff)
    return z, np.sqrt(sq)


def geometric_median_numpy(
    updates: Updates,
    weights: Sequence[float] | np.ndarray | None = None,
    *,
    smoothing: float = 1e-6,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
) -> WeiszfeldResult:
    """Return the smoothed Weiszfeld geometric median of K updates with numpy (the kernel's reference).

    RFA (Pillutla et al. 2022): from the alpha-weighted mean z, repeat
    ``z <- sum_i beta_i x_i / sum_i beta_i`` with
    ``beta_i = alpha_i / max(smoothing, ||z - x_i||)`` until the objective
    ``g(z) = sum_i alpha_i ||z - x_i||`` changes by at most ``tolerance * g``
    (relative), or ``max_iterations`` steps. Computed in float64.

    Args:
        updates: As in :func:`median_numpy`.
        weights: alpha_i, e.g. example counts; None weights every update the same.
        smoothing: nu > 0: no update weighs more than if it were nu away.
        max_iterations: The most Weiszfeld steps after the initial mean (>= 0).
        tolerance: The relative change of the objective that stops it (>= 0).

    Returns:
        A :class:`WeiszfeldResult` (float32 median of shape (N,)).

    Raises:
        FedValueError: A non-finite value, bad weights or parameters, or as
            :func:`median_numpy`.
        FedTypeError: A parameter is not a number, or as :func:`median_numpy`.
    """
    nu, steps, tol = _check_gm_params(smoothing, max_iterations, tolerance)
    matrix = _matrix(updates, nan_ok=False, why="the geometric median needs finite updates", finite=True)
    a = _alpha(weights, matrix.shape[0])
    z, d = _weiszfeld_step(matrix, a)
    g = float(a @ d)
    iterations, converged = 0, False
    for _ in range(steps):
        beta = a / np.maximum(nu, d)
        z, d = _weiszfeld_step(matrix, beta / beta.sum())
        previous, g = g, float(a @ d)
        iterations += 1
        if abs(previous - g) <= tol * g:
            converged = True
            break
    return WeiszfeldResult(z.astype(np.float32), iterations, g, converged)


def smoothed_weiszfeld(
    updates: Updates,
    weights: Sequence[float] | np.ndarray | None = None,
    *,
    smoothing: float = 1e-6,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
    backend: Backend = "auto",
) -> WeiszfeldResult:
    """Return the (alpha-weighted) geometric median of K updates by smoothed Weiszfeld (RFA).

    The same rule as :func:`geometric_median_numpy`; the kernel fuses each
    step's weighted mean and distances into one pass over the data (float64
    sums, the result independent of the number of threads).

    Args:
        updates: As in :func:`coordinate_median`.
        weights: alpha_i, e.g. example counts; None weights every update the same.
        smoothing: nu > 0 (the paper's default 1e-6).
        max_iterations: The most Weiszfeld steps after the initial mean (>= 0).
        tolerance: The relative change of the objective that stops it (>= 0).
        backend: As in :func:`coordinate_median`.

    Returns:
        A :class:`WeiszfeldResult`.

    Raises:
        FedValueError: A non-finite value, bad weights or parameters, or as
            :func:`coordinate_median`.
        FedTypeError: A parameter is not a number, or as :func:`coordinate_median`.
        ImportError: ``backend="kernel"`` and the kernel is not built.
    """
    nu, steps, tol = _check_gm_params(smoothing, max_iterations, tolerance)
    if not _use_kernel(backend) or not hasattr(_kernels, "geometric_median"):
        if backend == "kernel":
            raise ImportError("backend='kernel' but fedr._kernels has no geometric_median; rebuild fedr")
        return geometric_median_numpy(updates, weights, smoothing=nu, max_iterations=steps, tolerance=tol)
    checked, k, _ = _check_updates(updates)
    w = np.ones(k) if weights is None else check_weights(weights, k)
    try:
        median, iterations, objective, converged = _kernels.geometric_median(
            checked, w, smoothing=nu, max_iterations=steps, tolerance=tol
        )
    except ValueError as err:
        raise FedValueError(str(err)) from None
    return WeiszfeldResult(median, int(iterations), float(objective), bool(converged))


# --- Bulyan ----------------------------------------------------------------------


def _check_bulyan_clients(f: int, n: int) -> None:
    if n < 4 * f + 3:
        raise FedValueError(
            f"num_byzantine={f}: Bulyan needs at least 4 * num_byzantine + 3 = {4 * f + 3} "
            f"clients, got {n} clients"
        )


def _bulyan_select(distances: np.ndarray, f: int) -> np.ndarray:
    """The theta = n - 2f rows Bulyan keeps: Krum on the rest, n - 2f times, removing each winner.

    Each Krum runs on the m rows still in: a score sums the max(1, m - f - 2)
    smallest squared distances to the others (ties go to the earlier row);
    the last one standing is taken as it is.
    """
    n = distances.shape[0]
    _check_bulyan_clients(f, n)
    remaining = list(range(n))
    selected: list[int] = []
    while len(selected) < n - 2 * f:
        m = len(remaining)
        if m == 1:
            selected.append(remaining.pop())
            break
        sub = distances[np.ix_(remaining, remaining)]
        others = sub[~np.eye(m, dtype=bool)].reshape(m, m - 1)
        scores = np.sort(others, axis=1)[:, : max(1, m - f - 2)].sum(axis=1)
        selected.append(remaining.pop(int(np.argmin(scores))))
    return np.sort(np.array(selected, dtype=np.int64))


def _closest_to_median_mean(matrix: np.ndarray, count: int) -> np.ndarray:
    """Per coordinate, the float64 mean of the ``count`` values closest to the median (ties: the smaller)."""
    s = np.sort(matrix.astype(np.float64), axis=0)
    theta, n = s.shape
    med = np.median(s, axis=0)
    # The `count` nearest values to the median are a window of the sorted
    # column: grow it from the median, one value at a time, from the nearer side.
    lo = (s < med).sum(axis=0)
    hi = lo.copy()
    cols = np.arange(n)
    total = np.zeros(n, np.float64)
    for _ in range(count):
        left = s[np.maximum(lo - 1, 0), cols]
        right = s[np.minimum(hi, theta - 1), cols]
        dl = np.where(lo > 0, med - left, np.inf)
        dr = np.where(hi < theta, right - med, np.inf)
        take_left = dl <= dr
        total += np.where(take_left, left, right)
        lo -= take_left
        hi += ~take_left
    return total / count


def _bulyan(matrix: np.ndarray, distances: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
    selected = _bulyan_select(distances, f)
    beta = len(selected) - 2 * f
    return _closest_to_median_mean(matrix[selected], beta).astype(np.float32), selected


def bulyan_numpy(updates: Updates, num_byzantine: int) -> tuple[np.ndarray, np.ndarray]:
    """Return Bulyan's aggregate of K updates with numpy, and the selected indices.

    El Mhamdi et al. 2018: theta = K - 2f updates are chosen by Krum run
    again on what is left after each choice; then, coordinate by coordinate,
    the beta = theta - 2f of their values closest to the median are averaged.

    Args:
        updates: As in :func:`median_numpy`.
        num_byzantine: f; K must be at least 4f + 3.

    Returns:
        ``(update, selected)``: the float32 (N,) aggregate and the theta
        selected row indices in increasing order.

    Raises:
        FedValueError: K < 4f + 3, a non-finite value, or as :func:`median_numpy`.
        FedTypeError: ``num_byzantine`` is not an int, or as :func:`median_numpy`.
    """
    f = _check_count(num_byzantine, "num_byzantine", 0)
    matrix = _matrix(updates)
    _check_bulyan_clients(f, matrix.shape[0])
    return _bulyan(matrix, pairwise_sq_distances_numpy(matrix), f)
