"""Seeds, checkpoints and BatchNorm with fedr: a small CNN on Fashion-MNIST.

Trains a conv + BatchNorm + Dropout model for 2 rounds with a seed, saves the
state, loads it and trains 2 more rounds, then checks that the weights are
bit-identical to 4 rounds straight and that evaluation does not depend on the
number of workers.

Run: ``.venv/bin/python examples/seeds_checkpoints.py [--clients 4] [--per-client 500]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from fedr import datasets, executors, learning  # noqa: E402


def model_fn() -> learning.Model:
    """A small CNN with BatchNorm statistics and a Dropout layer."""
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.25),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    return learning.from_keras_model(
        model, keras.losses.SparseCategoricalCrossentropy(), [keras.metrics.SparseCategoricalAccuracy()]
    )


def main() -> None:
    """Train, checkpoint, resume and compare."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-client", type=int, default=500)
    args = parser.parse_args()
    data = datasets.load_fashion_mnist()
    n = args.clients * args.per_client
    # Images kept as 28 x 28 x 1 for the convolution (make_clients flattens them).
    images = datasets.prepare_images(data.x_train[:n]).reshape(n, 28, 28, 1)
    parts = datasets.split_indices(data.y_train[:n], args.clients, "iid", seed=0)
    clients = [
        datasets.ClientData(images[i], data.y_train[i], batch_size=50, client_id=f"client_{k}")
        for k, i in enumerate(parts)
    ]
    test_images = datasets.prepare_images(data.x_test[:1000]).reshape(1000, 28, 28, 1)
    test = [
        datasets.ClientData(test_images[i], data.y_test[i], batch_size=100, client_id=f"test_{k}")
        for k, i in enumerate(datasets.split_indices(1000, 2))
    ]

    def process(workers: int = 2) -> learning.FedAvgProcess:
        return learning.build_weighted_fed_avg(
            model_fn, learning.optimizer_fn("sgd", 0.05), seed=7, executor=executors.threads(workers)
        )

    straight = process().initialize()
    fed = process()
    for round_num in range(1, 5):
        straight, metrics = fed.next(straight, clients)
        print(f"round {round_num}: accuracy {metrics['sparse_categorical_accuracy']:.4f}, loss {metrics['loss']:.4f}")

    two = process().initialize()
    first = process()
    for _ in range(2):
        two, _ = first.next(two, clients)
    with tempfile.TemporaryDirectory() as tmp:
        path = learning.save_state(two, os.path.join(tmp, "round2.fedr"))
        print(f"saved {learning.load_state(path)!r}")
        resumed = learning.load_state(path)
    second = process()  # a new process, as after a restart
    for _ in range(2):
        resumed, _ = second.next(resumed, clients)
    same = all(
        np.array_equal(a, b)
        for a, b in zip(
            straight.model.trainable + straight.model.non_trainable,
            resumed.model.trainable + resumed.model.non_trainable,
            strict=True,
        )
    )
    print(f"2 rounds + save + load + 2 rounds == 4 rounds straight, bit for bit: {same}")
    moving_mean = dict(zip(resumed.model.non_trainable_names, resumed.model.non_trainable, strict=True))
    print("BatchNorm moving mean after 4 rounds:", np.round(moving_mean["sequential/batch_normalization/moving_mean"], 3))
    one, two_workers = process(1).evaluate(resumed, test), process(2).evaluate(resumed, test)
    print(f"evaluation with 1 and 2 workers equal: {one == two_workers}; accuracy {one['sparse_categorical_accuracy']:.4f}")
    if not same or one != two_workers:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
