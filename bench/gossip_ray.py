"""Gossip peers on Ray against threads: the same gossip run on each, the ratio of their times (run by hand).

Ring of 8 peers, 2,000 Fashion-MNIST rows each (sequential split), the
reference model (one dense softmax layer, zero initial weights, batches of
100, SGD 0.02), 4 rounds after a warm-up round (graph tracing, actors
starting); Ray with 2 actors, and threads(2) as the baseline measured in the
same run. The final weights must be equal bit for bit. See bench/README.md.

    .venv/bin/python bench/gossip_ray.py
"""

from __future__ import annotations

import os
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from fedr import datasets, executors, gossip, learning  # noqa: E402


def model_fn() -> learning.Model:
    model = keras.Sequential([keras.Input((784,)),
                              keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")])
    return learning.from_keras_model(model, "sparse_categorical_crossentropy", ["sparse_categorical_accuracy"])


def timed(executor: object, train: list) -> tuple[float, np.ndarray]:
    process = gossip.build_gossip(model_fn, learning.optimizer_fn("sgd", 0.02), gossip.ring(8), seed=1,
                                  executor=executor)
    gossip.fit(process, train, 1, evaluate_average=False)  # warm-up
    start = time.perf_counter()
    history = gossip.fit(process, train, 4, evaluate_average=False)
    return time.perf_counter() - start, history.state.trainable


def main() -> None:
    warnings.simplefilter("ignore")
    data = datasets.load_fashion_mnist()
    train = datasets.make_clients(data.x_train[:16000], data.y_train[:16000], 8, "sequential", batch_size=100)
    ray = executors.ray(num_cpus=2, num_workers=2)
    try:
        ray_s, ray_w = timed(ray, train)
    finally:
        ray.close()
    threads_s, threads_w = timed(executors.threads(2), train)
    print(f"ray {ray_s:.2f} s, threads {threads_s:.2f} s, ratio ray/threads {ray_s / threads_s:.2f}, "
          f"equal {np.array_equal(ray_w, threads_w)}")


if __name__ == "__main__":
    main()
