"""Launch to the end of round 1, and peak memory of ``python -m fedr demo``, against an older fedr in the same run.

Issue 12's two start-up numbers, each case in a fresh Python process:

- ``launch``: seconds from the interpreter's start (``time.perf_counter`` at
  its first line, plus the interpreter's own start measured as the wall time
  of ``python -c pass``) to the end of round 1 of the reference workload
  (Fashion-MNIST, 10 sequential clients of 6000, the dense softmax model,
  workers = all cores), with the import, data and round-1 parts;
- ``demo``: seconds from starting ``python -m fedr demo`` to its round-1
  line (the demo reads the data while TensorFlow imports), and the peak
  resident memory (``ru_maxrss`` of the child) of ``python -m fedr demo --rounds 3``.

``--baseline DIR`` runs the same cases with the fedr of another checkout
(``git worktree add /tmp/old <commit>``; copy the built
``python/fedr/_kernels*.so`` into it), alternating with this one, so both
see the same machine load. Medians of ``--repeats`` runs.

Run by hand: ``.venv/bin/python bench/launch.py [--repeats 5] [--baseline /tmp/old]``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

LAUNCH = r"""
import time
t0 = time.perf_counter()
import os
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
import keras
t1 = time.perf_counter()
from fedr import datasets, learning
data = datasets.load_dataset("fashion_mnist")
train = datasets.make_federated_data(data, 10)
t2 = time.perf_counter()
def model_fn():
    m = keras.Sequential([keras.Input(shape=(784,)), keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")])
    return learning.from_keras_model(m, loss=keras.losses.SparseCategoricalCrossentropy(),
                                     metrics=[keras.metrics.SparseCategoricalAccuracy()])
p = learning.build_weighted_fed_avg(model_fn, learning.optimizer_fn("sgd", 0.02), learning.optimizer_fn("sgd", 1.0))
s, m = p.next(p.initialize(), train)
t3 = time.perf_counter()
import json
print(json.dumps({"import": t1 - t0, "data": t2 - t1, "round1": t3 - t2, "in_python": t3 - t0,
                  "accuracy": m["sparse_categorical_accuracy"]}))
"""


def _env(tree: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(tree, "python")
    return env


def launch(tree: str) -> dict[str, float]:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    interpreter = time.perf_counter() - start
    out = subprocess.run([sys.executable, "-c", LAUNCH], env=_env(tree), capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["total"] = result["in_python"] + interpreter
    return result


def demo_launch(tree: str) -> float:
    """Seconds from starting ``python -m fedr demo`` to its "round: 1" line."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "fedr", "demo", "--rounds", "1"], env=_env(tree),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    seen = float("nan")
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("round:   1"):
            seen = time.perf_counter() - start
    proc.wait()
    return seen


def demo_peak_mb(tree: str) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-m", "fedr", "demo", "--rounds", "3"], env=_env(tree),
                   capture_output=True, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest child so far: run the demo first in a fresh bench process
    # for an exact number; with --repeats the largest is kept, which is the demo's own peak.
    return max(before, after) / 1024


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--baseline", help="another checkout of fedr to compare with")
    parser.add_argument("--case", choices=["launch", "demo"], help=argparse.SUPPRESS)
    parser.add_argument("--tree", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case == "demo":
        print(demo_peak_mb(args.tree))
        return
    trees = {"this": ROOT}
    if args.baseline:
        trees["baseline"] = os.path.abspath(args.baseline)
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
    peaks: dict[str, list[float]] = {name: [] for name in trees}
    demos: dict[str, list[float]] = {name: [] for name in trees}
    for _ in range(args.repeats):
        for name, tree in trees.items():
            runs[name].append(launch(tree))
            demos[name].append(demo_launch(tree))
            out = subprocess.run([sys.executable, __file__, "--case", "demo", "--tree", tree],
                                 capture_output=True, text=True, check=True)
            peaks[name].append(float(out.stdout.strip().splitlines()[-1]))
    for name in trees:
        parts = {k: round(statistics.median(r[k] for r in runs[name]), 2)
                 for k in ("import", "data", "round1", "total")}
        print(json.dumps({"fedr": name, **parts, "demo_round1_s": round(statistics.median(demos[name]), 2),
                          "demo_peak_mb": round(statistics.median(peaks[name])),
                          "accuracy": runs[name][0]["accuracy"]}))


if __name__ == "__main__":
    main()
