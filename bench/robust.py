"""Time the C++ robust kernels (median, trimmed mean, distances, geometric median) against numpy.

Run by hand (never from the tests):

    .venv/bin/python bench/robust.py [--reps 7] [--shapes 10x1000000,100x100000] [--beta 0.2]
    .venv/bin/python bench/robust.py --only-gm [--gm-shapes 10x100000,100x1000000] [--gm-reps 3]

For each (K, N) it times, on one (K, N) float32 C-contiguous matrix, the
median over repetitions (ms) of:

- ``median``: ``fedr._kernels.coordinate_median(matrix)`` against
  ``np.median(matrix, axis=0)``;
- ``trimmed mean``: ``fedr._kernels.coordinate_trimmed_mean(matrix, beta)``
  against ``scipy.stats.trim_mean(matrix, beta, axis=0)`` (if scipy is
  installed) and a sort-based numpy trimmed mean, ``np.sort(matrix, axis=0)``
  then the mean of the kept rows;
- ``distances``: ``fedr._kernels.pairwise_sq_distances(matrix)`` (float64
  result) against numpy with one matrix product, ``g = matrix @ matrix.T``
  (float32, OpenBLAS, all cores) and ``diag(g)[:, None] + diag(g)[None, :] - 2 g``,
  and the same in float64 (``x = matrix.astype(float64)`` first, the
  precision the kernel returns).

- ``geometric median`` (``--gm-shapes``, ``--gm-reps``, on data with a tenth
  of the rows scaled by 10): ``fedr._kernels.geometric_median(matrix, w)``
  (smoothed Weiszfeld, defaults nu = 1e-6, 100 steps, tolerance 1e-6)
  against fedr's numpy reference ``geometric_median_numpy`` (the same steps,
  float64, blocks of 32768 columns) and a plain float32 numpy Weiszfeld
  (``w @ matrix`` and ``np.linalg.norm(matrix - z, axis=1)``, a K * N
  temporary per step); the number of steps is printed, and equal for all.

Kernel and numpy calls alternate, so a load that comes and goes slows both.
It prints the ratio kernel / numpy (below 1 is faster) and the largest
difference from a float64 reference. Peak memory is about four K * N float32
matrices (80 MB for the default shapes, plus numpy's temporaries).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from fedr import _kernels

DEFAULT_SHAPES = ((10, 1_000_000), (100, 100_000))
GM_SHAPES = ((10, 100_000), (100, 1_000_000))


def timed(first: Callable[[], object], second: Callable[[], object], reps: int) -> tuple[float, float]:
    """Median wall times in ms of two functions called in turn (so load hits both), after a warm-up."""
    first()
    second()
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(reps):
        for fn, out in ((first, times[0]), (second, times[1])):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3


def numpy_trimmed_mean(matrix: np.ndarray, beta: float) -> np.ndarray:
    k = matrix.shape[0]
    trim = int(np.floor(beta * k))
    return np.sort(matrix, axis=0)[trim : k - trim].mean(axis=0, dtype=np.float64).astype(np.float32)


def numpy_distances(matrix: np.ndarray) -> np.ndarray:
    gram = matrix @ matrix.T
    sq = np.diag(gram)
    return np.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0)


def numpy_weiszfeld_f32(matrix: np.ndarray, w: np.ndarray, nu: float = 1e-6, steps: int = 100,
                        tol: float = 1e-6) -> tuple[np.ndarray, int]:
    """Smoothed Weiszfeld as one would write it in numpy: float32 BLAS products, a K * N temporary per step."""
    a = (w / w.sum()).astype(np.float32)
    z = a @ matrix
    d = np.linalg.norm(matrix - z, axis=1)
    g = float(a @ d)
    for it in range(1, steps + 1):
        beta = a / np.maximum(nu, d)
        z = (beta / beta.sum()).astype(np.float32) @ matrix
        d = np.linalg.norm(matrix - z, axis=1)
        previous, g = g, float(a @ d)
        if abs(previous - g) <= tol * g:
            return z, it
    return z, steps


def bench_geometric_median(shapes: list[tuple[int, ...]], reps: int) -> None:
    from fedr.aggregators import geometric_median_numpy

    print(f"geometric median (smoothed Weiszfeld), reps={reps}")
    print(f"{'K':>4} {'N':>10} {'against':<26} {'kernel ms':>10} {'numpy ms':>10} {'kernel/numpy':>13} "
          f"{'steps':>5} {'max err':>9}")
    for k, n in shapes:
        rng = np.random.default_rng(0)
        matrix = rng.standard_normal((k, n), dtype=np.float32)
        matrix[: max(1, k // 10)] *= np.float32(10.0)
        w = rng.integers(50, 150, k).astype(np.float64)
        got, steps, _, _ = _kernels.geometric_median(matrix, w)
        ref = geometric_median_numpy(matrix, w)
        err = float(np.abs(got - ref.median).max())
        assert ref.iterations == steps, (ref.iterations, steps)
        kernel = lambda: _kernels.geometric_median(matrix, w)  # noqa: E731
        for name, fn in (("numpy reference (f64)", lambda: geometric_median_numpy(matrix, w)),
                         ("numpy float32 Weiszfeld", lambda: numpy_weiszfeld_f32(matrix, w))):
            t_kernel, t_numpy = timed(kernel, fn, reps)
            print(f"{k:>4} {n:>10,} {name:<26} {t_kernel:>10.1f} {t_numpy:>10.1f} "
                  f"{t_kernel / t_numpy:>13.2f} {steps:>5} {err:>9.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--beta", type=float, default=0.2)
    parser.add_argument(
        "--shapes",
        default=",".join(f"{k}x{n}" for k, n in DEFAULT_SHAPES),
        help="comma-separated KxN shapes",
    )
    parser.add_argument("--gm-shapes", default=",".join(f"{k}x{n}" for k, n in GM_SHAPES),
                        help="comma-separated KxN shapes for the geometric median ('' to skip)")
    parser.add_argument("--gm-reps", type=int, default=3)
    parser.add_argument("--only-gm", action="store_true", help="time the geometric median only")
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    try:
        from scipy import stats
    except ImportError:
        stats = None

    print(f"{platform.processor() or platform.machine()}, numpy {np.__version__}, "
          f"fedr._kernels AVX2={_kernels.uses_avx2()}, reps={args.reps}, beta={args.beta}")
    if args.only_gm:
        bench_geometric_median([tuple(int(v) for v in s.split("x")) for s in args.gm_shapes.split(",")], args.gm_reps)
        return
    header = f"{'K':>4} {'N':>10} {'operation':<26} {'kernel ms':>10} {'numpy ms':>10} {'kernel/numpy':>13} {'max err':>9}"
    print(header)
    for k, n in shapes:
        matrix = np.random.default_rng(0).standard_normal((k, n), dtype=np.float32)
        x64 = matrix.astype(np.float64)
        rows: list[tuple[str, Callable[[], object], Callable[[], object], float]] = []

        ref = np.median(x64, axis=0)
        err = float(np.abs(_kernels.coordinate_median(matrix) - ref).max())
        rows.append(("median vs np.median", lambda: _kernels.coordinate_median(matrix),
                     lambda: np.median(matrix, axis=0), err))

        trim = int(np.floor(args.beta * k))
        ref = np.sort(x64, axis=0)[trim : k - trim].mean(axis=0)
        err = float(np.abs(_kernels.coordinate_trimmed_mean(matrix, args.beta) - ref).max())
        kernel_trim = lambda: _kernels.coordinate_trimmed_mean(matrix, args.beta)  # noqa: E731
        if stats is not None:
            rows.append(("trimmed vs scipy trim_mean", kernel_trim,
                         lambda: stats.trim_mean(matrix, args.beta, axis=0), err))
        rows.append(("trimmed vs np.sort", kernel_trim, lambda: numpy_trimmed_mean(matrix, args.beta), err))

        ref = numpy_distances(x64)
        scale = float(np.diag(x64 @ x64.T).max())
        err = float(np.abs(_kernels.pairwise_sq_distances(matrix) - ref).max()) / scale
        kernel_dist = lambda: _kernels.pairwise_sq_distances(matrix)  # noqa: E731
        rows.append(("distances vs f32 matmul", kernel_dist, lambda: numpy_distances(matrix), err))
        rows.append(("distances vs f64 matmul", kernel_dist,
                     lambda: numpy_distances(matrix.astype(np.float64)), err))

        for name, kernel_fn, numpy_fn, error in rows:
            t_kernel, t_numpy = timed(kernel_fn, numpy_fn, args.reps)
            print(f"{k:>4} {n:>10,} {name:<26} {t_kernel:>10.1f} {t_numpy:>10.1f} "
                  f"{t_kernel / t_numpy:>13.2f} {error:>9.1e}")
    print("max err: absolute for median/trimmed mean; relative to the largest |x_i|^2 for distances")
    if args.gm_shapes:
        gm_shapes = [tuple(int(v) for v in s.split("x")) for s in args.gm_shapes.split(",")]
        bench_geometric_median(gm_shapes, args.gm_reps)
        print("max err: absolute, kernel against the numpy reference")


if __name__ == "__main__":
    main()
