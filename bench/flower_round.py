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

4. ``--baseline``: the same federation with the node config ``worker='off'``
   (every message's ClientApp imports TensorFlow, builds the model and reads
   the data itself, as before issue 20; the message exchange is the same),
   reported as ``worker_off_*`` and ``worker_off_over_on_round``.

The ratio is Flower / in-process. ``cpu_s_per_client_round`` is the whole
machine's busy CPU time (``/proc/stat``: every process, the SuperLink,
ServerApp and Flower's own programs included, so an upper bound of the
nodes' share) from the end of round 1 to the end of the round before the last
(the workers stop after the last), per client and round (so ``--rounds`` of
at least 3); ``..._by_program`` splits the same by program (from
``/proc/<pid>/stat``; a program's ended children, such as a SuperExec's
``flwr-clientapp`` processes, apart). Run by hand:
``.venv/bin/python bench/flower_round.py [--rounds 3] [--nodes 2 10] [--floor] [--baseline]``.
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


PROGRAMS = ("flower-superlink", "flower-supernode", "flower-superexec", "flwr-serverapp", "flwr-clientapp",
            "fedr.flower._worker", "bin/flwr")


def cpu_by_program() -> dict[int, tuple[str, float, float]]:
    """Each live process of Flower's and fedr's programs: (program, own CPU s, its reaped children's CPU s)."""
    tick = os.sysconf("SC_CLK_TCK")
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        program = next((p for p in PROGRAMS if p in cmdline), None)
        if program is None and int(entry) != os.getpid():
            continue
        own = (int(fields[11]) + int(fields[12])) / tick
        children = (int(fields[13]) + int(fields[14])) / tick
        found[int(entry)] = (program or "bench (this process)", own, children)
    return found


def cpu_breakdown(before: dict, after: dict, per: float) -> dict[str, float]:
    """CPU seconds per program between two :func:`cpu_by_program` samples, divided by ``per``."""
    total: dict[str, float] = {}
    for pid, (program, own, children) in after.items():
        _, own0, children0 = before.get(pid, (program, 0.0, 0.0))
        total[program] = total.get(program, 0.0) + own - own0
        if children - children0 > 0:
            total[f"{program} (its ended children)"] = total.get(f"{program} (its ended children)", 0.0) + children - children0
    return {name: round(value / per, 3) for name, value in sorted(total.items()) if value > 0}


FLOOR_APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "flower_floor_app")


def floor(n: int, rounds: int, poll: str) -> dict[str, object]:
    """The floor app on a new federation of ``n`` nodes (``poll``: flower or fedr): round seconds and CPU."""
    from fedr.flower._run import flwr_run

    out = tempfile.mktemp(suffix=".json")
    started = []
    try:
        link = flower.superlink()
        started.append(link)
        for i in range(n):
            started.append(flower.supernode(FASHION, link, client_id=f"client_{i}"))
        marks: dict[int, tuple[float, dict]] = {}

        def mark(line: str) -> None:
            found = re.search(r"floor round (\d+): ", line)
            if found:
                marks[int(found.group(1))] = (busy_cpu_seconds(), cpu_by_program())

        code, lines = flwr_run(FLOOR_APP, link.address, {"num-server-rounds": rounds, "min-nodes": n, "poll": poll,
                                                        "out": out}, progress=mark, timeout=1800)
        if code != 0 or not os.path.exists(out):
            raise RuntimeError("the floor app failed:\n" + "\n".join(lines[-20:]))
    finally:
        for p in started:
            p.stop()
    with open(out) as handle:
        times = json.load(handle)
    later = max(marks)
    per = n * (later - 1)
    return {"s": round(statistics.median(times), 2), "rounds_s": [round(t, 2) for t in times],
            "cpu_s_per_client_round": round((marks[later][0] - marks[1][0]) / per, 2) if later > 1 else None,
            "cpu_s_per_client_round_by_program": cpu_breakdown(marks[1][1], marks[later][1], per) if later > 1 else {}}


def federation_rounds(n: int, rounds: int, node_config: dict[str, str]) -> dict[str, object]:
    """``fedr.flower.run`` of the reference on a new loopback federation of ``n`` nodes: its timings."""
    started = []
    federation = time.perf_counter()
    try:
        link = flower.superlink()
        started.append(link)
        for i in range(n):
            started.append(flower.supernode(FASHION, link, client_id=f"client_{i}",
                                            node_config={"rows": f"{6000 * i}:{6000 * (i + 1)}", **node_config}))
        marks: dict[int, tuple[float, float]] = {}
        programs: dict[int, dict] = {}

        def mark(line: str) -> None:
            found = re.search(r"round (\d+): .*client\(s\), [0-9.]+ s", line)
            if found:
                marks[int(found.group(1))] = (time.perf_counter(), busy_cpu_seconds())
                programs[int(found.group(1))] = cpu_by_program()

        start = time.perf_counter()
        federation = start - federation
        result = flower.run(_process(), rounds, link, min_nodes=n, progress=mark, timeout=3600)
        total = time.perf_counter() - start
    finally:
        for p in started:
            p.stop()
    times = [row["seconds"] for row in result.history]
    later = max(marks)
    # Up to the end of the round before the last: the workers stop after the run's last message (their CPU
    # time is gone from /proc by the last round's end).
    last = later - 1
    cpu = (marks[last][1] - marks[1][1]) / (n * (last - 1)) if last > 1 else float("nan")
    by_program = cpu_breakdown(programs[1], programs[last], n * (last - 1)) if last > 1 else {}
    return {
        "flower_round_s": round(statistics.median(times), 2), "flower_rounds_s": [round(r, 2) for r in times],
        "flower_run_total_s": round(total, 1), "launch_s": round(total - sum(times), 1),
        "launch_to_round_1_end_s": round(marks[1][0] - start, 1),
        "superlink_and_nodes_start_s": round(federation, 1), "cpu_s_per_client_round": round(cpu, 2),
        "cpu_s_per_client_round_by_program": by_program,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, nargs="+", default=[2, 10])
    parser.add_argument("--floor", action="store_true", help="also run Flower's floor (bench/flower_floor_app)")
    parser.add_argument("--baseline", action="store_true",
                        help="also run the nodes with worker='off' (a TensorFlow start per message, as before)")
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

        on = federation_rounds(n, args.rounds, {})
        off = federation_rounds(n, args.rounds, {"worker": "off"}) if args.baseline else None
        floors = {}
        if args.floor:
            for poll in ("flower", "fedr"):
                name = "floor_fast" if poll == "fedr" else "floor_flower"
                floors.update({f"{name}_{key}": value for key, value in floor(n, args.rounds, poll).items()})
        report = {"nodes": n, "in_process_s": round(in_process, 4), **on,
                  "ratio": round(on["flower_round_s"] / in_process, 1), **floors}
        if off is not None:
            report.update({f"worker_off_{key}": value for key, value in off.items()})
            report["worker_off_over_on_round"] = round(off["flower_round_s"] / on["flower_round_s"], 1)
        print(json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
