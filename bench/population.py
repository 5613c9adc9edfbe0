"""A large population: 10,000 clients of 6 examples, 1,000 sampled per round, on threads and on Ray.

The 60,000 Fashion-MNIST training images split IID (``make_clients(...,
"iid")``) over 10,000 clients of 6 examples, and, for comparison, over 1,000
clients of 60 (the same data); 10% of the clients are drawn per round with
``fedr.learning.sample_clients(clients, 0.1, seed=0, round_num=r)``, so both
populations train on 6,000 examples a round (1,000 clients of 6, or 100 of
60).  The model is the reference's (one dense softmax layer of 10 units on
784 inputs, zero-initialized, client SGD 0.02, server SGD 1.0).

Each case runs in a fresh Python process, so its peak memory is its own:

- ``data``: only loading and splitting the data (no TensorFlow model);
- ``threads``: ``workers=2`` (small clients train in groups, one graph call per group);
- ``threads-per-client``: the same with one graph call per client (``SMALL_CLIENT_ROWS = 0``), the baseline;
- ``ray``: ``fedr.executors.ray(num_cpus=2)``, two warm actors.

Reported per case: median seconds per round after a warm-up round; the
driver's peak resident memory (``ru_maxrss``); and, for Ray, the peak of the
summed proportional set size (PSS, so pages shared by several processes, like
Ray's object store, are counted once) of the driver and all its descendant
processes (GCS, raylet, workers), sampled every 0.2 s from ``/proc``.

Run by hand: ``.venv/bin/python bench/population.py [--rounds 5] [--cases data threads threads-per-client ray]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

TOTAL = 60_000


# --------------------------------------------------------------------------- memory


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class TreeMemory:
    """Samples the summed PSS of this process and its descendants; keeps the peak."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak_kb = 0
        self.processes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        kids = _children()
        tree, todo = [], [os.getpid()]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(kids.get(pid, []))
        total = sum(_pss_kb(pid) for pid in tree)
        if total > self.peak_kb:
            self.peak_kb, self.processes = total, len(tree)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


# --------------------------------------------------------------------------- one case


def run_case(case: str, n_clients: int, rounds: int) -> dict[str, Any]:
    """Split the data over ``n_clients``, then (unless ``case == "data"``) train ``rounds`` rounds."""
    from fedr import datasets

    data = datasets.load_fashion_mnist()
    start = time.perf_counter()
    clients = datasets.make_clients(data.x_train, data.y_train, n_clients, "iid", batch_size=100, seed=0)
    out: dict[str, Any] = {
        "case": case, "clients": n_clients, "examples_per_client": TOTAL // n_clients,
        "make_clients_s": time.perf_counter() - start, "maxrss_after_data_mb": _maxrss_mb(),
    }
    del data
    if case == "data":
        out["maxrss_mb"] = _maxrss_mb()
        return out

    import keras

    from fedr import executors, learning

    def model_fn() -> learning.Model:
        model = keras.Sequential(
            [keras.Input((784,)), keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")]
        )
        return learning.from_keras_model(
            model, keras.losses.SparseCategoricalCrossentropy(), [keras.metrics.SparseCategoricalAccuracy()]
        )

    if case == "threads-per-client":
        # The baseline of issue 12: one graph call per client, as before small clients trained in groups.
        from fedr.learning import process as process_module

        process_module.SMALL_CLIENT_ROWS = 0
    executor = executors.ray(num_cpus=2) if case == "ray" else executors.threads(2)
    times, sampled = [], []
    with TreeMemory() as memory:
        try:
            process = learning.build_weighted_fed_avg(
                model_fn, learning.optimizer_fn("sgd", 0.02), learning.optimizer_fn("sgd", 1.0),
                executor=executor, seed=0,
            )
            state = process.initialize()
            for r in range(1, rounds + 1):
                sample = learning.sample_clients(clients, 0.1, seed=0, round_num=r)
                begin = time.perf_counter()
                state, metrics = process.next(state, sample)
                times.append(time.perf_counter() - begin)
                sampled.append(metrics["num_clients"])
                memory.sample()
        finally:
            executor.close()
    out.update({
        "round_s": times, "median_round_s": statistics.median(times[1:] or times),
        "num_clients": sampled, "accuracy": metrics["sparse_categorical_accuracy"],
        "maxrss_mb": _maxrss_mb(), "tree_pss_peak_mb": memory.peak_kb / 1024, "tree_processes": memory.processes,
    })
    return out


# --------------------------------------------------------------------------- driver


def main() -> None:
    """Run every case in its own process and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds per case, the first a warm-up")
    parser.add_argument("--cases", nargs="+", default=["data", "threads", "ray"], choices=["data", "threads", "threads-per-client", "ray"])
    parser.add_argument("--populations", type=int, nargs="+", default=[10_000, 1_000])
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.clients, args.rounds)))
        return

    results: dict[tuple[str, int], dict[str, Any]] = {}
    for case in args.cases:
        for n in args.populations:
            proc = subprocess.run(
                [sys.executable, os.path.abspath(__file__), "--case", case, "--clients", str(n),
                 "--rounds", str(args.rounds)],
                capture_output=True, text=True,
            )
            if proc.returncode:
                sys.exit(f"case {case} with {n} clients failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
            results[case, n] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(json.dumps(results[case, n]), file=sys.stderr)

    print(f"{'case':8s} {'clients':>7s} {'ex/client':>9s} {'sampled':>7s} {'median s/round':>14s} "
          f"{'driver peak MB':>14s} {'tree PSS peak MB':>16s}")
    for (case, n), r in results.items():
        sampled = str(r["num_clients"][-1]) if "num_clients" in r else "-"
        median = f"{r['median_round_s']:.2f}" if "median_round_s" in r else "-"
        tree = f"{r['tree_pss_peak_mb']:.0f}" if "tree_pss_peak_mb" in r else "-"
        print(f"{case:8s} {n:7d} {r['examples_per_client']:9d} {sampled:>7s} {median:>14s} "
              f"{r['maxrss_mb']:14.0f} {tree:>16s}")
    big, small = max(args.populations), min(args.populations)
    if big != small:
        print(f"\npeak memory, {big} clients / {small} clients (target <= 1.2):")
        for case in args.cases:
            if (case, big) in results and (case, small) in results:
                a, b = results[case, big], results[case, small]
                line = f"  {case:8s} driver {a['maxrss_mb'] / b['maxrss_mb']:.3f}"
                if "tree_pss_peak_mb" in a:
                    line += f", tree PSS {a['tree_pss_peak_mb'] / b['tree_pss_peak_mb']:.3f}"
                print(line)


if __name__ == "__main__":
    main()
