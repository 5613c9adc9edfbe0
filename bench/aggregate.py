"""Time the C++ weighted mean against numpy's sgemv and a memory-copy floor.

Run by hand (never from the tests):

    .venv/bin/python bench/aggregate.py [--reps 7] [--shapes 10x10000000,100x1000000]
        [--interleave]

For each (K, N) it times, on one (K, N) float32 C-contiguous matrix:

- ``kernel``: ``fedr._kernels.weighted_mean(matrix, weights)``;
- ``numpy``: ``weights32 @ matrix``, a float32 sgemv in OpenBLAS (all cores);
- ``copy``: ``np.copyto(buffer, matrix)`` into a preallocated buffer, the cost
  of streaming the same bytes through memory once (it also writes them back,
  and numpy copies on one core, so it is a reference point, not a strict bound);

and prints the median over repetitions in ms, the GB/s of input read
(K * N * 4 bytes / time) and the ratio kernel / numpy (below 1 is faster).
Peak memory is four times one K * N float32 matrix (the matrix, the copy's
buffer and a float64 reference): 1.6 GB for the default shapes.
"""

from __future__ import annotations

import argparse
import ctypes
import glob
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from fedr import _kernels

DEFAULT_SHAPES = ((10, 10_000_000), (100, 1_000_000), (1000, 100_000))


def blas_info() -> str:
    """Return which BLAS kernel and how many threads numpy's matmul runs."""
    try:
        from threadpoolctl import threadpool_info

        return "; ".join(
            f"{i.get('internal_api')} {i.get('version')} {i.get('architecture')} "
            f"threads={i.get('num_threads')}"
            for i in threadpool_info()
            if i.get("user_api") == "blas"
        )
    except ImportError:
        pass
    libs = glob.glob(os.path.join(os.path.dirname(np.__file__), "..", "numpy.libs", "libopenblas*"))
    for path in libs:
        lib = ctypes.CDLL(path)
        for suffix in ("64_", ""):
            corename = getattr(lib, f"openblas_get_corename{suffix}", None)
            threads = getattr(lib, f"openblas_get_num_threads{suffix}", None)
            config = getattr(lib, f"openblas_get_config{suffix}", None)
            if corename is not None and threads is not None and config is not None:
                corename.restype = ctypes.c_char_p
                config.restype = ctypes.c_char_p
                return f"{config().decode()} | core={corename().decode()} threads={threads()}"
    return "unknown (see numpy.show_config())"


def median_ms(
    fns: dict[str, Callable[[], object]], reps: int, *, interleave: bool
) -> dict[str, float]:
    """Return the median wall time in ms of each function, after one warm-up call.

    Blocked (the default), each function runs its repetitions back to back.
    Interleaved, the functions take turns within each repetition: then the
    kernel runs right after numpy, while OpenBLAS's idle worker threads still
    spin on the cores (see README.md), which is what a caller mixing the two
    sees.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}

    def once(name: str) -> None:
        start = time.perf_counter()
        fns[name]()
        times[name].append(time.perf_counter() - start)

    if interleave:
        for fn in fns.values():
            fn()
        for _ in range(reps):
            for name in fns:
                once(name)
    else:
        for name, fn in fns.items():
            time.sleep(0.2)  # let the previous contender's threads go idle
            fn()
            for _ in range(reps):
                once(name)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def run(shapes: tuple[tuple[int, int], ...], reps: int, *, interleave: bool) -> None:
    """Time the three contenders at each shape and print one table."""
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
    print(f"numpy {np.__version__}: {blas_info()}")
    print(
        "env: OPENBLAS_CORETYPE="
        f"{os.environ.get('OPENBLAS_CORETYPE', '(unset)')} "
        f"OPENBLAS_L2_SIZE={os.environ.get('OPENBLAS_L2_SIZE', '(unset)')}"
    )
    print(f"kernel: AVX2+FMA loops={_kernels.uses_avx2()}, block={_kernels.BLOCK}")
    print(f"median of {reps} runs, {'interleaved' if interleave else 'blocked'}\n")
    header = (
        f"{'K':>6} {'N':>10} | {'kernel ms':>9} {'GB/s':>6} | {'numpy ms':>9} {'GB/s':>6} | "
        f"{'copy ms':>8} {'GB/s':>6} | {'kernel/numpy':>12} {'max rel err':>11}"
    )
    print(header)
    print("-" * len(header))
    rng = np.random.default_rng(0)
    for k, n in shapes:
        print(time_shape(rng, k, n, reps, interleave=interleave))


def time_shape(rng: np.random.Generator, k: int, n: int, reps: int, *, interleave: bool) -> str:
    """Time kernel, numpy and copy on one random (K, N) matrix; return a table row."""
    matrix = rng.standard_normal((k, n), dtype=np.float32)
    buffer = np.empty_like(matrix)
    weights64 = rng.integers(1, 1000, size=k).astype(np.float64)
    # numpy's fair baseline is float32 sgemv on normalised weights (float64
    # weights would make it cast the whole matrix to float64 first).
    weights32 = (weights64 / weights64.sum()).astype(np.float32)

    got = _kernels.weighted_mean(matrix, weights64)
    reference = (weights64 / weights64.sum()) @ matrix.astype(np.float64)
    rel_err = float(np.max(np.abs(got - reference) / np.maximum(np.abs(reference), 1e-30)))
    del reference

    times = median_ms(
        {
            "kernel": lambda: _kernels.weighted_mean(matrix, weights64),
            "numpy": lambda: weights32 @ matrix,
            "copy": lambda: np.copyto(buffer, matrix),
        },
        reps,
        interleave=interleave,
    )
    t_kernel, t_numpy, t_copy = times["kernel"], times["numpy"], times["copy"]
    gb = matrix.nbytes / 1e9
    return (
        f"{k:>6} {n:>10} | {t_kernel:>9.2f} {gb / t_kernel * 1e3:>6.1f} | "
        f"{t_numpy:>9.2f} {gb / t_numpy * 1e3:>6.1f} | "
        f"{t_copy:>8.2f} {gb / t_copy * 1e3:>6.1f} | {t_kernel / t_numpy:>12.2f} "
        f"{rel_err:>11.1e}"
    )


def parse_shapes(text: str) -> tuple[tuple[int, int], ...]:
    """Parse "10x10000000,100x1000000" into ((10, 10000000), (100, 1000000))."""
    shapes = []
    for item in text.split(","):
        k, n = item.lower().split("x")
        shapes.append((int(k), int(n)))
    return tuple(shapes)


def main() -> None:
    """Parse the command line and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions per case")
    parser.add_argument(
        "--shapes",
        type=parse_shapes,
        default=DEFAULT_SHAPES,
        help="comma-separated KxN list (default: 10x10000000,100x1000000,1000x100000)",
    )
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="alternate kernel, numpy and copy within each repetition",
    )
    args = parser.parse_args()
    run(args.shapes, args.reps, interleave=args.interleave)


if __name__ == "__main__":
    main()
