"""The reference round in hand-written numpy, clients in lockstep: the baseline of issue 12.

The reference workload (Fashion-MNIST, 10 sequential clients of 6000, batches
of 100, a dense softmax layer of 10 units on 784 inputs, zero-initialised,
client SGD 0.02, server SGD 1.0). Each of ``--workers`` threads takes a
contiguous share of the clients and runs them in lockstep: one stacked matmul
per step for all its clients (``np.matmul`` on (K, 100, 784) batches and
(K, 784, 10) weights), so numpy's per-call overhead is paid once per step, not
once per client. OpenBLAS runs one thread per call (the workers are the
parallel unit, as in fedr). Compared in the same run with fedr's round
(threads executor, same number of workers).

Run by hand: ``.venv/bin/python bench/lockstep.py [--rounds 10] [--workers 2]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before numpy loads OpenBLAS

import numpy as np  # noqa: E402

from fedr import datasets  # noqa: E402


def lockstep_group(xs: np.ndarray, xts: np.ndarray, ys: np.ndarray, w: np.ndarray, b: np.ndarray,
                   lr: float) -> tuple[np.ndarray, np.ndarray]:
    """Train K clients in lockstep from (w, b); xs (K, steps, B, 784), xts the batches transposed, ys (K, steps, B)."""
    k, steps, batch = xs.shape[0], xs.shape[1], xs.shape[2]
    cw = np.repeat(w[None], k, axis=0)
    cb = np.repeat(b[None], k, axis=0)
    rows, clients = np.arange(batch)[None, :], np.arange(k)[:, None]
    for s in range(steps):
        z = np.matmul(xs[:, s], cw)
        z += cb[:, None, :]
        z -= z.max(axis=2, keepdims=True)
        np.exp(z, out=z)
        z /= z.sum(axis=2, keepdims=True)
        z[clients, rows, ys[:, s]] -= 1.0
        z *= lr / batch
        cw -= np.matmul(xts[:, s], z)
        cb -= z.sum(axis=1)
    return cw, cb


def lockstep_round(xs: np.ndarray, xts: np.ndarray, ys: np.ndarray, counts: np.ndarray, w: np.ndarray,
                   b: np.ndarray, workers: int, pool: ThreadPoolExecutor) -> tuple[np.ndarray, np.ndarray]:
    """One FedAvg round: each worker's clients (a contiguous slice, no copy) in lockstep, then the weighted mean."""
    bounds = np.linspace(0, len(xs), workers + 1).astype(int)
    groups = [slice(a, z) for a, z in zip(bounds[:-1], bounds[1:])]
    results = list(pool.map(lambda g: lockstep_group(xs[g], xts[g], ys[g], w, b, 0.02), groups))
    cw = np.concatenate([r[0] for r in results])
    cb = np.concatenate([r[1] for r in results])
    weights = (counts / counts.sum()).astype(np.float32)
    return w + np.tensordot(weights, cw - w, axes=1), b + weights @ (cb - b)


def main() -> None:
    """Time the lockstep numpy round and fedr's round in one run; print medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    data = datasets.load_fashion_mnist()
    clients = datasets.make_federated_data(data, 10, "sequential", batch_size=100)
    xs = np.stack([c.features().reshape(-1, 100, 784) for c in clients])
    xts = np.ascontiguousarray(xs.transpose(0, 1, 3, 2))  # made once, as the data is
    ys = np.stack([c.y.reshape(-1, 100) for c in clients])
    counts = np.array([c.num_examples for c in clients], np.float64)
    w, b = np.zeros((784, 10), np.float32), np.zeros(10, np.float32)
    pool = ThreadPoolExecutor(args.workers)
    w, b = lockstep_round(xs, xts, ys, counts, w, b, args.workers, pool)  # warm-up
    numpy_times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        w, b = lockstep_round(xs, xts, ys, counts, w, b, args.workers, pool)
        numpy_times.append(time.perf_counter() - start)

    import keras

    from fedr import learning

    def model_fn() -> learning.Model:
        model = keras.Sequential(
            [keras.Input((784,)), keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")]
        )
        return learning.from_keras_model(model, keras.losses.SparseCategoricalCrossentropy(),
                                         [keras.metrics.SparseCategoricalAccuracy()])

    process = learning.build_weighted_fed_avg(model_fn, learning.optimizer_fn("sgd", 0.02),
                                              learning.optimizer_fn("sgd", 1.0), workers=args.workers)
    state, _ = process.next(process.initialize(), clients)
    fedr_times = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        state, _ = process.next(state, clients)
        fedr_times.append(time.perf_counter() - start)
    gap = float(np.abs(state.model.trainable[0] - np.asarray(w)).max())
    lock, fed = statistics.median(numpy_times), statistics.median(fedr_times)
    print(f"{'what':40s} {'median s':>9s}")
    print(f"{'numpy round, lockstep (baseline)':40s} {lock:9.4f}")
    print(f"{'fedr round, threads':40s} {fed:9.4f}   fedr / numpy {fed / lock:.2f}")
    print(f"largest weight difference after {args.rounds + 1} rounds: {gap:.2e}")


if __name__ == "__main__":
    main()
