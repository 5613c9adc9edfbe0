"""oneDNN on or off: seconds per reference round, and whether the weights stay bit-identical.

TensorFlow 2.21 turns oneDNN on by itself on x86 CPUs with AVX-512 (VNNI, BF16,
AMX); ``TF_ENABLE_ONEDNN_OPTS=0`` turns it off, ``=1`` on (on any x86 CPU).
This runs the reference workload (Fashion-MNIST, 10 sequential clients, the
dense softmax model, seed 1) in fresh processes, alternating the settings so
both see the same machine load, and reports the median round time of each as a
ratio to the CPU's default setting measured in the same run, plus a hash of the
weights after the rounds (equal hashes = bit-identical).

Run by hand: ``.venv/bin/python bench/onednn.py [--rounds 6] [--repeats 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import hashlib, json, os, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
import numpy as np
from fedr import datasets, learning

data = datasets.load_fashion_mnist()
clients = datasets.make_federated_data(data, n_clients=10, method="sequential", batch_size=100)

def model_fn():
    model = keras.Sequential([keras.Input((784,)),
                              keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")])
    return learning.from_keras_model(model, keras.losses.SparseCategoricalCrossentropy(),
                                     [keras.metrics.SparseCategoricalAccuracy()])

process = learning.build_weighted_fed_avg(model_fn, learning.optimizer_fn("sgd", 0.02),
                                          learning.optimizer_fn("sgd", 1.0), seed=1)
state = process.initialize()
times = []
for _ in range(ROUNDS + 1):
    start = time.perf_counter()
    state, metrics = process.next(state, clients)
    times.append(time.perf_counter() - start)
digest = hashlib.sha256(b"".join(np.ascontiguousarray(w).tobytes() for w in state.model.trainable)).hexdigest()
print(json.dumps({"times": times[1:], "digest": digest[:16], "accuracy": metrics["sparse_categorical_accuracy"]}))
"""


def run(setting: str | None, rounds: int) -> dict:
    """One fresh process with ``TF_ENABLE_ONEDNN_OPTS`` = ``setting`` (None: the CPU's default)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    if setting is not None:
        env["TF_ENABLE_ONEDNN_OPTS"] = setting
    out = subprocess.run(
        [sys.executable, "-c", _CHILD.replace("ROUNDS", str(rounds))],
        env=env, capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with open("/proc/cpuinfo") as f:
        flags = f.read()
    print("CPU flags: avx512f" if "avx512f" in flags else "CPU flags: no avx512f",
          "amx_tile" if "amx_tile" in flags else "", "avx512_vnni" if "avx512_vnni" in flags else "")
    settings = {"default": None, "off (0)": "0", "on (1)": "1"}
    times: dict[str, list[float]] = {name: [] for name in settings}
    digests: dict[str, set[str]] = {name: set() for name in settings}
    accuracy: dict[str, float] = {}
    for _ in range(args.repeats):
        for name, setting in settings.items():
            result = run(setting, args.rounds)
            times[name] += result["times"]
            digests[name].add(result["digest"])
            accuracy[name] = result["accuracy"]
    base = statistics.median(times["default"])
    for name in settings:
        median = statistics.median(times[name])
        print(f"oneDNN {name:8s}: {median * 1000:6.1f} ms/round  ratio {median / base:4.2f}  "
              f"weights {sorted(digests[name])}  accuracy {accuracy[name]:.4f}")


if __name__ == "__main__":
    main()
