"""Seconds per FedAvg round of the reference workload, as ratios to baselines run alongside.

The reference workload: Fashion-MNIST, 10 sequential clients of 6000 images,
batches of 100, one dense softmax layer of 10 units, zero-initialized, client
SGD 0.02, server SGD 1.0: 600 SGD steps per round.  Baselines, measured in the
same run on the same data: one centralized ``keras.Model.fit`` epoch over the
60000 examples (the same 600 SGD steps) and a hand-written numpy round.

Run by hand: ``.venv/bin/python bench/round_time.py [--rounds 10] [--workers 1 2]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from fedr import datasets, learning  # noqa: E402


def _model() -> keras.Model:
    return keras.Sequential(
        [keras.Input((784,)), keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")]
    )


def fedr_rounds(clients: list[datasets.ClientData], rounds: int, workers: int) -> list[float]:
    """Time ``rounds`` FedAvg rounds after one warm-up round (graph tracing)."""

    def model_fn() -> learning.Model:
        return learning.from_keras_model(
            _model(),
            keras.losses.SparseCategoricalCrossentropy(),
            [keras.metrics.SparseCategoricalAccuracy()],
        )

    process = learning.build_weighted_fed_avg(
        model_fn, learning.optimizer_fn("sgd", 0.02), learning.optimizer_fn("sgd", 1.0), workers=workers
    )
    state, _ = process.next(process.initialize(), clients)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        state, _ = process.next(state, clients)
        times.append(time.perf_counter() - start)
    return times


def keras_epochs(x: np.ndarray, y: np.ndarray, epochs: int) -> list[float]:
    """Time centralized ``fit`` epochs (after a warm-up epoch) over the same examples."""
    model = _model()
    model.compile(
        optimizer=keras.optimizers.SGD(0.02),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    model.fit(x, y, batch_size=100, epochs=1, shuffle=False, verbose=0)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.fit(x, y, batch_size=100, epochs=1, shuffle=False, verbose=0)
        times.append(time.perf_counter() - start)
    return times


def numpy_rounds(clients: list[datasets.ClientData], rounds: int) -> list[float]:
    """Time a hand-written numpy FedAvg round of exactly this model and workload."""
    w = np.zeros((784, 10), np.float32)
    b = np.zeros(10, np.float32)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        dw, db, total = np.zeros_like(w), np.zeros_like(b), 0
        for c in clients:
            cw, cb = w.copy(), b.copy()
            for batch in c.batches():
                x, y = batch["x"], batch["y"]
                z = x @ cw + cb
                p = np.exp(z - z.max(axis=1, keepdims=True))
                p /= p.sum(axis=1, keepdims=True)
                p[np.arange(len(y)), y] -= 1
                p /= len(y)
                cw -= 0.02 * (x.T @ p)
                cb -= 0.02 * p.sum(axis=0)
            dw += c.num_examples * (cw - w)
            db += c.num_examples * (cb - b)
            total += c.num_examples
        w, b = w + dw / total, b + db / total
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    """Run the benchmark and print a table of medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    data = datasets.load_fashion_mnist()
    clients = datasets.make_federated_data(data, 10, "sequential", batch_size=100)
    x = datasets.prepare_images(data.x_train)
    y = data.y_train.astype(np.int32)

    keras_s = statistics.median(keras_epochs(x, y, max(3, args.rounds // 2)))
    numpy_s = statistics.median(numpy_rounds(clients, max(3, args.rounds // 2)))
    rows = [("keras fit, 1 epoch (baseline)", keras_s), ("numpy round, hand-written", numpy_s)]
    for workers in args.workers:
        rows.append((f"fedr round, workers={workers}", statistics.median(fedr_rounds(clients, args.rounds, workers))))
    print(f"{'what':34s} {'median s':>9s} {'/ keras epoch':>14s}")
    for name, seconds in rows:
        print(f"{name:34s} {seconds:9.4f} {seconds / keras_s:14.3f}")


if __name__ == "__main__":
    main()
