"""Seconds per FedAvg round of the reference workload on Flower (loopback) against in-process threads.

The reference workload (as bench/round_time.py): Fashion-MNIST, sequential
clients of 6000 images, batches of 100, one dense softmax layer of 10 units,
zero-initialized, client SGD 0.02, server SGD 1.0, seed 1. In one run, for
each node count (default 2 and 10):

1. in-process: ``process.next`` with the threads executor (``workers=2``)
   over the same clients, one warm-up round, then the median of ``--rounds``.
2. Flower: a SuperLink and one SuperNode per client on 127.0.0.1 (no TLS),
   ``fedr.flower.run`` for ``--rounds`` rounds; a round's seconds are the
   server's, from sending the weights to the last reply aggregated (the
   history's ``seconds``), median over the rounds. The first call to
   ``run`` also pays the ServerApp's start (reported apart, as ``launch``).

3. ``--floor``: Flower's own floor, the same federation running
   ``bench/flower_floor_app`` (no TensorFlow, no fedr learning code: the
   ServerApp sends the reference model's 7850 weights to every node, each
   ClientApp sends them back unchanged), waiting for replies both as Flower's
   ``grid.send_and_receive`` does (every 3 s, ``floor_flower_s``) and as
   fedr's strategy does (every 0.05 s, ``floor_fast_s``); medians over the
   same ``--rounds``.

The ratio is Flower / in-process. ``cpu_s_per_client_round`` is the whole
machine's busy CPU time (``/proc/stat``: every process, the SuperLink,
ServerApp and Flower's own programs included, so an upper bound of the
nodes' share) from the end of round 1 to the end of the last round, per
client and round. Run by hand:
``.venv/bin/python bench/flower_round.py [--rounds 3] [--nodes 2 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from fedr import datasets, flower, learning  # noqa: E402

FASHION = "/usr/share/datasets/fashion-mnist"


def _model_fn() -> learning.Model:
    model = keras.Sequential(
        [keras.Input((784,)), keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")]
    )
    return learning.from_keras_model(
        model, loss=keras.losses.SparseCategoricalCrossentropy(), metrics=[keras.metrics.SparseCategoricalAccuracy()]
    )


def _process(**kwargs: object) -> learning.FedAvgProcess:
    return learning.build_weighted_fed_avg(
        _model_fn, learning.optimizer_fn("sgd", 0.02), learning.optimizer_fn("sgd", 1.0), seed=1, **kwargs
    )


def busy_cpu_seconds() -> float:
    """The machine's busy CPU seconds so far (all CPUs: user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


FLOOR_APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flower_floor_app")


def floor(n: int, rounds: int, poll: str) -> list[float]:
    """Seconds of each round of the floor app on a new federation of ``n`` nodes (``poll``: flower or fedr)."""
    from fedr.flower._run import flwr_run

    out = tempfile.mktemp(suffix=".json")
    started = []
    try:
        link = flower.superlink()
        started.append(link)
        for i in range(n):
            started.append(flower.supernode(FASHION, link, client_id=f"client_{i}"))
        code, lines = flwr_run(FLOOR_APP, link.address, {"num-server-rounds": rounds, "min-nodes": n, "poll": poll,
                                                        "out": out}, timeout=1800)
        if code != 0 or not os.path.exists(out):
            raise RuntimeError("the floor app failed:\n" + "\n".join(lines[-20:]))
    finally:
        for p in started:
            p.stop()
    with open(out) as handle:
        return json.load(handle)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, nargs="+", default=[2, 10])
    parser.add_argument("--floor", action="store_true", help="also run Flower's floor (bench/flower_floor_app)")
    args = parser.parse_args()
    data = datasets.load_fashion_mnist(FASHION)
    clients = datasets.make_clients(data.x_train, data.y_train, 10)
    os.environ["HOME"] = tempfile.mkdtemp(prefix="fedr-bench-home-")
    for n in args.nodes:
        process = _process(workers=2)
        state = process.initialize()
        state, _ = process.next(state, clients[:n])
        times = []
        for _ in range(args.rounds):
            start = time.perf_counter()
            state, _ = process.next(state, clients[:n])
            times.append(time.perf_counter() - start)
        in_process = statistics.median(times)

        started = []
        federation = time.perf_counter()
        try:
            link = flower.superlink()
            started.append(link)
            for i in range(n):
                started.append(flower.supernode(FASHION, link, client_id=f"client_{i}",
                                                node_config={"rows": f"{6000 * i}:{6000 * (i + 1)}"}))
            marks: dict[int, tuple[float, float]] = {}

            def mark(line: str) -> None:
                found = re.search(r"round (\d+): .*client\(s\), [0-9.]+ s", line)
                if found:
                    marks[int(found.group(1))] = (time.perf_counter(), busy_cpu_seconds())

            start = time.perf_counter()
            federation = start - federation
            result = flower.run(_process(), args.rounds, link, min_nodes=n, progress=mark, timeout=3600)
            total = time.perf_counter() - start
            first_round_end = marks[1][0] - start
        finally:
            for p in started:
                p.stop()
        floors = {}
        if args.floor:
            for poll in ("flower", "fedr"):
                times = floor(n, args.rounds, poll)
                floors[f"floor_{'fast' if poll == 'fedr' else 'flower'}_s"] = round(statistics.median(times), 2)
                floors[f"floor_{'fast' if poll == 'fedr' else 'flower'}_rounds_s"] = [round(t, 2) for t in times]
        rounds = [row["seconds"] for row in result.history]
        later = max(marks)
        cpu = (marks[later][1] - marks[1][1]) / (n * (later - 1)) if later > 1 else float("nan")
        on_flower = statistics.median(rounds)
        print(json.dumps({
            "nodes": n, "in_process_s": round(in_process, 4), "flower_round_s": round(on_flower, 2),
            "flower_rounds_s": [round(r, 2) for r in rounds], "flower_run_total_s": round(total, 1),
            "launch_s": round(total - sum(rounds), 1), "launch_to_round_1_end_s": round(first_round_end, 1),
            "superlink_and_nodes_start_s": round(federation, 1),
            "cpu_s_per_client_round": round(cpu, 2), "ratio": round(on_flower / in_process, 1), **floors,
        }), flush=True)


if __name__ == "__main__":
    main()
