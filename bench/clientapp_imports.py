"""What a Flower ClientApp process pays before it can answer a message: fresh-process import times.

Flower 1.42's SuperNode starts a new ``flwr-clientapp`` process for every
message (TOOLCHAIN 20), so each message pays a Python start and the imports
of the ClientApp's module. This times, in fresh processes (best of
``--repeats``), a bare Python start (the baseline), numpy, Flower's ClientApp
API, fedr's TensorFlow-free protocol and state, TensorFlow, Keras, and fedr's
ClientApp module as it is today, and prints each as a ratio to the baseline.

Run by hand: ``.venv/bin/python bench/clientapp_imports.py [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

CASES = [
    ("python start (baseline)", "pass"),
    ("numpy", "import numpy"),
    ("flwr.clientapp", "import flwr.clientapp"),
    ("fedr.protocol + fedr.learning.state", "import fedr.protocol, fedr.learning.state"),
    ("tensorflow", "import tensorflow"),
    ("keras", "import keras"),
    ("fedr.flower.apps (today's ClientApp)", "import fedr.flower.apps"),
]


def best(code: str, repeats: int) -> float:
    """The fastest of ``repeats`` fresh ``python -c code`` runs, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results = [(name, best(code, args.repeats)) for name, code in CASES]
    base = results[0][1]
    print(f"{'fresh process, then':40s} {'best s':>8s} {'/ start':>8s}")
    for name, seconds in results:
        print(f"{name:40s} {seconds:8.3f} {seconds / base:8.1f}")


if __name__ == "__main__":
    main()
