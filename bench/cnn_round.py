"""A CNN round (conv + BatchNorm + dense) against keras.Model.fit of the same steps, in one run.

Issue 12's last row: 4 clients of 6000 Fashion-MNIST images (28 x 28 x 1),
batches of 50 (120 steps each, 480 in all), a Conv2D(16, 3) + BatchNorm +
ReLU + MaxPool + Flatten + Dense(10) softmax model, client SGD 0.02. Timed,
after one warm-up each, alternating: a fedr round (threads, one worker per
core) and ``keras.Model.fit`` of the same 24,000 images in batches of 50 for
one epoch (480 steps, ``verbose=0``). Medians; the ratio is fedr / fit.
``--baseline DIR`` also times the fedr round of another checkout (a
subprocess with ``PYTHONPATH=DIR/python``) in the same run.

Run by hand: ``.venv/bin/python bench/cnn_round.py [--rounds 5] [--baseline /tmp/old]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _model():
    import keras

    return keras.Sequential([
        keras.Input((28, 28, 1)),
        keras.layers.Conv2D(16, 3),
        keras.layers.BatchNormalization(),
        keras.layers.ReLU(),
        keras.layers.MaxPooling2D(),
        keras.layers.Flatten(),
        keras.layers.Dense(10, activation="softmax"),
    ])


def fedr_rounds(rounds: int) -> list[float]:
    import numpy as np

    from fedr import datasets, learning

    data = datasets.load_fashion_mnist()
    x = data.x_train[:24000].reshape(24000, 28, 28, 1)
    x = datasets.prepare_images(x).reshape(24000, 28, 28, 1) if not hasattr(datasets.ClientData, "features") else x
    clients = []
    for i in range(4):
        rows = slice(6000 * i, 6000 * (i + 1))
        kwargs = {"scale": 255.0} if hasattr(datasets.ClientData, "features") else {}
        clients.append(datasets.ClientData(np.ascontiguousarray(x[rows]), data.y_train[rows], batch_size=50,
                                           client_id=f"client_{i}", **kwargs))

    def model_fn():
        return learning.from_keras_model(_model(), loss="sparse_categorical_crossentropy",
                                         metrics=["sparse_categorical_accuracy"])

    process = learning.build_weighted_fed_avg(model_fn, learning.optimizer_fn("sgd", 0.02), seed=0)
    state = process.initialize()
    state, _ = process.next(state, clients)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        state, _ = process.next(state, clients)
        times.append(time.perf_counter() - start)
    return times


def fit_times(rounds: int) -> list[float]:
    import keras

    from fedr import datasets

    data = datasets.load_fashion_mnist()
    x = datasets.prepare_images(data.x_train[:24000]).reshape(24000, 28, 28, 1)
    y = data.y_train[:24000]
    model = _model()
    model.compile(optimizer=keras.optimizers.SGD(0.02), loss="sparse_categorical_crossentropy",
                  metrics=["sparse_categorical_accuracy"])
    model.fit(x, y, batch_size=50, epochs=1, verbose=0, shuffle=False)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        model.fit(x, y, batch_size=50, epochs=1, verbose=0, shuffle=False)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline")
    parser.add_argument("--case", choices=["fedr", "fit"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(fedr_rounds(args.rounds) if args.case == "fedr" else fit_times(args.rounds)))
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"this": root, **({"baseline": os.path.abspath(args.baseline)} if args.baseline else {})}
    out: dict[str, list[float]] = {}
    for case, tree in [("fit", root)] + [("fedr", t) for t in trees.values()]:
        env = dict(os.environ, PYTHONPATH=os.path.join(tree, "python"))
        proc = subprocess.run([sys.executable, __file__, "--case", case, "--rounds", str(args.rounds)],
                              env=env, capture_output=True, text=True, check=True)
        name = "fit" if case == "fit" else f"fedr ({'this' if tree == root else 'baseline'})"
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    fit = statistics.median(out["fit"])
    for name, times in out.items():
        median = statistics.median(times)
        print(f"{name:18s} {median:7.3f} s   / fit {median / fit:.2f}")


if __name__ == "__main__":
    main()
