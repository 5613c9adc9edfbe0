"""Byzantine-robust aggregators: coordinate-wise median, trimmed mean and (multi-)Krum.

A few clients sending arbitrary updates (faulty or malicious, "Byzantine")
move the mean as far as they like. These aggregators bound their influence:

- Coordinate-wise median and beta-trimmed mean: Yin et al. 2018,
  "Byzantine-Robust Distributed Learning: Towards Optimal Statistical Rates"
  (ICML, arXiv:1803.01498). Each coordinate of the aggregate is the median of
  the clients' values of that coordinate, or their mean after dropping the
  floor(beta * n) smallest and largest. Both ignore example counts.
- Krum and multi-Krum: Blanchard et al. 2017, "Machine Learning with
  Adversaries: Byzantine Tolerant Gradient Descent" (NeurIPS). With n clients
  of which at most f are Byzantine, client i scores the sum of its n - f - 2
  smallest squared distances to the other clients' updates; the update with
  the lowest score wins, or with ``num_selected = m > 1`` the
  example-weighted mean of the m best (multi-Krum). Needs n > 2f + 2.

One rule for the three aggregators: a round must have enough clients for
the aggregator to outvote at least one bad client, or the one it was asked
to tolerate. The median needs 3 clients (the median of 2 is their mean), the
trimmed mean with ``beta > 0`` needs floor(beta * n) >= 1 (``trimmed_mean(0.3)``
with 3 clients would trim nobody), Krum needs n > 2f + 2. With fewer, the
round is refused with a :class:`~fedr.errors.FedValueError` naming the number
needed: in ``start_round``, before any client trains, and again in
``aggregate`` when failed or dropped clients left too few. ``trimmed_mean(0)``
(the unweighted mean) and ``krum(0)`` tolerate nobody by request and only
need what their rule needs. The functions on arrays (``coordinate_median``,
...) compute their rule for any number of rows.

The median, the trimmed mean and the pairwise distances run in the C++ kernel
``fedr._kernels`` on the clients' updates in place (float32, C-contiguous,
never copied; GIL released, both cores). A numpy reference with the same
semantics (``median_numpy``, ``trimmed_mean_numpy``, ``krum_numpy``) is used
when the kernel is not built, and by the tests.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedr.aggregators._mean import AggregateResult, Aggregator, ClientResult, NamedArrays, deltas
from fedr.aggregators._weighted_mean import (
    HAVE_KERNEL,
    Backend,
    Updates,
    _check_updates,
    _kernels,
    weighted_mean,
)
from fedr._weights import check_weights
from fedr.errors import FedTypeError, FedValueError

__all__ = [
    "HAVE_ROBUST_KERNEL",
    "Krum",
    "Median",
    "TrimmedMean",
    "coordinate_median",
    "coordinate_trimmed_mean",
    "krum",
    "krum_numpy",
    "krum_scores",
    "median",
    "median_numpy",
    "pairwise_sq_distances",
    "pairwise_sq_distances_numpy",
    "trimmed_mean",
    "trimmed_mean_numpy",
]

# An extension built before these kernels existed has weighted_mean only.
HAVE_ROBUST_KERNEL: bool = HAVE_KERNEL and hasattr(_kernels, "coordinate_median")


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


# --- numpy references ------------------------------------------------------------


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


def _check_krum_clients(f: int, n: int) -> None:
    if n <= 2 * f + 2:
        raise FedValueError(
            f"num_byzantine={f}: Krum needs more than 2 * num_byzantine + 2 = {2 * f + 2} "
            f"clients, got {n} clients"
        )


def _min_trimmed_clients(beta: float) -> int:
    """The fewest clients n with floor(beta * n) >= 1 (1 for beta = 0: nothing to trim)."""
    if beta == 0.0:
        return 1
    n = max(1, math.ceil(1.0 / beta))
    while math.floor(beta * n) < 1:  # float rounding of 1 / beta
        n += 1
    return n


def _check_round_size(aggregator: Aggregator, n: int) -> None:
    """Refuse a round of ``n`` clients in which ``aggregator`` cannot outvote anyone (see the module docstring)."""
    if isinstance(aggregator, Krum):
        _check_krum_clients(aggregator.num_byzantine, n)
    elif isinstance(aggregator, Median) and n < 3:
        raise FedValueError(
            f"median(): a round of {n} client(s) cannot outvote a single bad client (the median "
            "of 2 is their mean); it needs at least 3 clients"
        )
    elif isinstance(aggregator, TrimmedMean) and n < (need := _min_trimmed_clients(aggregator.beta)):
        raise FedValueError(
            f"beta={aggregator.beta}: the trimmed mean of {n} client(s) trims floor({aggregator.beta} * {n}) = "
            f"0 values from each side, so it cannot outvote a single bad client; it needs at least "
            f"{need} clients"
        )


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


# --- kernel-backed functions -----------------------------------------------------


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


# --- aggregators -----------------------------------------------------------------


class _Robust(Aggregator):
    """A robust aggregator: refuses, before anyone trains, a round too small to outvote a bad client."""

    def start_round(
        self, state: NamedArrays, client_ids: Sequence[str], *, seed: np.random.SeedSequence | None = None
    ) -> Any:
        _check_round_size(self, len(client_ids))
        return None


class Median(_Robust):
    """The coordinate-wise median of the clients' updates (C++ kernel)."""

    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[ClientResult],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        updates = deltas(outputs)
        _check_round_size(self, len(updates))
        return AggregateResult(state, coordinate_median(updates), {})

    def __repr__(self) -> str:
        return "median()"


class TrimmedMean(_Robust):
    """The coordinate-wise beta-trimmed mean of the clients' updates (C++ kernel)."""

    def __init__(self, beta: float) -> None:
        self.beta = _check_beta(beta)

    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[ClientResult],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        updates = deltas(outputs)
        _check_round_size(self, len(updates))
        update = coordinate_trimmed_mean(updates, self.beta)
        return AggregateResult(state, update, {"trimmed_per_side": float(math.floor(self.beta * len(updates)))})

    def __repr__(self) -> str:
        return f"trimmed_mean(beta={self.beta})"


class Krum(_Robust):
    """(Multi-)Krum: the update(s) closest to their n - f - 2 nearest neighbours."""

    def __init__(self, num_byzantine: int, num_selected: int = 1) -> None:
        self.num_byzantine = _check_count(num_byzantine, "num_byzantine", 0)
        self.num_selected = _check_count(num_selected, "num_selected", 1)

    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[ClientResult],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        updates = deltas(outputs)
        # Checked before the distances so that too few clients fail fast.
        _check_round_size(self, len(updates))
        selected = _krum_select(pairwise_sq_distances(updates), self.num_byzantine, self.num_selected)
        if len(selected) == 1:
            update = np.array(updates[selected[0]], dtype=np.float32, copy=True)
        else:
            counts = [float(outputs[i].num_examples) for i in selected]
            update = weighted_mean([updates[i] for i in selected], counts)
        return AggregateResult(state, update, {"krum_selected": float(len(selected))})

    def __repr__(self) -> str:
        return f"krum(num_byzantine={self.num_byzantine}, num_selected={self.num_selected})"


def median() -> Median:
    """The coordinate-wise median of the clients' updates (Yin et al. 2018).

    Robust to fewer than half of the clients sending arbitrary updates. Every
    client counts the same, whatever its number of examples; for an even
    number of clients each coordinate is the mean of its two middle values.
    A round needs at least 3 clients (the median of 2 is their mean, which
    outvotes nobody); with fewer it is refused.

    Returns:
        An :class:`Aggregator`.

    Raises:
        FedValueError: (at a round, before training and at aggregation) fewer
            than 3 clients.
    """
    return Median()


def trimmed_mean(beta: float) -> TrimmedMean:
    """The coordinate-wise trimmed mean of the clients' updates (Yin et al. 2018).

    For each coordinate, the floor(beta * n) smallest and floor(beta * n)
    largest of the n clients' values are dropped and the rest averaged (every
    client counts the same). Tolerates up to floor(beta * n) Byzantine
    clients; ``beta=0`` is the unweighted mean. Metrics: ``trimmed_per_side``.
    With ``beta > 0`` a round must trim at least one value from each side:
    it needs n with floor(beta * n) >= 1 (4 clients for beta = 0.3); a
    smaller round is refused rather than silently averaged untrimmed.

    Args:
        beta: The fraction cut from each tail, in [0, 0.5).

    Returns:
        An :class:`Aggregator`.

    Raises:
        FedValueError: ``beta`` is outside [0, 0.5); at a round (before
            training and at aggregation), too few clients to trim one.
        FedTypeError: ``beta`` is not a number.
    """
    return TrimmedMean(beta)


def krum(num_byzantine: int, num_selected: int = 1) -> Krum:
    """Krum, or multi-Krum with ``num_selected`` > 1 (Blanchard et al. 2017).

    Each of the n clients scores the sum of its n - f - 2 smallest squared
    distances to the other updates (f = ``num_byzantine``); the update with the
    lowest score is applied, or the example-weighted mean of the
    ``num_selected`` lowest (ties go to the earlier client). A round needs
    n > 2f + 2 clients and ``num_selected`` <= n - f (a smaller round is
    refused before its clients train). Metrics: ``krum_selected``.

    Args:
        num_byzantine: f, the number of Byzantine clients to tolerate (>= 0).
        num_selected: m, how many of the best-scored updates to average (>= 1).

    Returns:
        An :class:`Aggregator`.

    Raises:
        FedValueError: A count is out of range (at construction); at
            aggregation, too few clients for ``num_byzantine`` or
            ``num_selected``.
        FedTypeError: A count is not an int.
    """
    return Krum(num_byzantine, num_selected)
