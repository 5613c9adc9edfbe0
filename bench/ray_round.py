"""Seconds per FedAvg round of the reference workload on Ray against threads, and Ray's launch time.

The reference workload (as bench/round_time.py): Fashion-MNIST, 10 sequential
clients of 6000 images, batches of 100, one dense softmax layer of 10 units,
zero-initialized, client SGD 0.02, server SGD 1.0.  In one run:

1. launch: a fresh Python process (so Ray's start-up is included) loads the
   data, then times from just before ``fedr.executors.ray(num_cpus=2)`` is
   created to just after the first ``process.next`` returns (the local Ray,
   the actors, their compiled models, the data put in the object store, and
   round 1); it runs first, while no other Ray is up.
2. warm rounds: threads (``workers=2``) and Ray (``num_cpus=2``, two warm
   actors) in this process, one warm-up round each, then rounds alternating
   threads / Ray so that load from elsewhere on the machine hits both alike;
   medians and the ratio Ray / threads.

Run by hand: ``.venv/bin/python bench/ray_round.py [--rounds 10] [--launches 1]``.
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

import keras  # noqa: E402

from fedr import datasets, executors, learning  # noqa: E402


def _model_fn() -> learning.Model:
    model = keras.Sequential(
        [keras.Input((784,)), keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")]
    )
    return learning.from_keras_model(
        model, keras.losses.SparseCategoricalCrossentropy(), [keras.metrics.SparseCategoricalAccuracy()]
    )


def _process(**executor: object) -> learning.FedAvgProcess:
    return learning.build_weighted_fed_avg(
        _model_fn, learning.optimizer_fn("sgd", 0.02), learning.optimizer_fn("sgd", 1.0), **executor
    )


def _clients() -> list[datasets.ClientData]:
    return datasets.make_federated_data(datasets.load_fashion_mnist(), 10, "sequential", batch_size=100)


def launch() -> dict[str, float]:
    """In a fresh process: seconds from creating the Ray executor to the end of round 1 (and round 2)."""
    clients = _clients()
    start = time.perf_counter()
    executor = executors.ray(num_cpus=2)
    try:
        process = _process(executor=executor)
        executor._ray()  # the local Ray starts here (else lazily in round 1): timed apart
        built = time.perf_counter()
        state, _ = process.next(process.initialize(), clients)
        first = time.perf_counter()
        process.next(state, clients)
        second = time.perf_counter()
    finally:
        executor.close()
    return {"launch_to_round1": first - start, "build": built - start, "round1": first - built,
            "round2": second - first}


def warm_rounds(rounds: int) -> tuple[list[float], list[float]]:
    """Rounds alternating threads / Ray after one warm-up round each."""
    clients = _clients()
    on_threads = _process(workers=2)
    executor = executors.ray(num_cpus=2)
    try:
        on_ray = _process(executor=executor)
        t_state, _ = on_threads.next(on_threads.initialize(), clients)
        r_state, _ = on_ray.next(on_ray.initialize(), clients)
        t_times, r_times = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            t_state, _ = on_threads.next(t_state, clients)
            t_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            r_state, _ = on_ray.next(r_state, clients)
            r_times.append(time.perf_counter() - start)
        # Same seedless zero-init model and data: the two executors agree.
        for a, b in zip(t_state.model.trainable, r_state.model.trainable, strict=True):
            if not (a == b).all():
                print("warning: threads and Ray weights differ", file=sys.stderr)
                break
    finally:
        executor.close()
    return t_times, r_times


def main() -> None:
    """Run the benchmark and print a table of medians and the ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--launches", type=int, default=1, help="fresh processes timing the launch")
    parser.add_argument("--launch-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.launch_only:
        print(json.dumps(launch()))
        return

    launches = []
    for _ in range(args.launches):
        out = subprocess.run(
            [sys.executable, os.path.abspath(__file__), "--launch-only"],
            check=True, capture_output=True, text=True,
        )
        launches.append(json.loads(out.stdout.strip().splitlines()[-1]))
    t_times, r_times = warm_rounds(args.rounds)
    t_med, r_med = statistics.median(t_times), statistics.median(r_times)
    print(f"{'what':44s} {'median s':>9s}  all (s)")
    print(f"{'threads round, workers=2':44s} {t_med:9.4f}  " + " ".join(f"{t:.3f}" for t in t_times))
    print(f"{'Ray round, num_cpus=2 (2 warm actors)':44s} {r_med:9.4f}  " + " ".join(f"{t:.3f}" for t in r_times))
    print(f"{'Ray / threads':44s} {r_med / t_med:9.2f}   (target <= 1.5)")
    for key, label in [("launch_to_round1", "launch of local Ray to end of round 1"),
                       ("build", "  of which: build process, start local Ray"),
                       ("round1", "  of which: round 1 (actors, puts, training)"),
                       ("round2", "round 2 in that process")]:
        values = [launch_[key] for launch_ in launches]
        print(f"{label:44s} {statistics.median(values):9.3f}  " + " ".join(f"{v:.2f}" for v in values))


if __name__ == "__main__":
    main()
