"""Gossip learning against FedAvg on the reference data, at equal bytes sent per peer.

Issue 21's bench: Fashion-MNIST split sequentially over 10 peers (the
reference workflow's split, batches of 100), the reference's model (one
dense softmax layer of 10 units, zero-initialised) and client SGD at
``--lr`` (0.02), one local epoch, the same seed everywhere. Runs:

- FedAvg (``fedr.learning.build_weighted_fed_avg``, server SGD 1.0);
- synchronous gossip (D-PSGD, Metropolis-Hastings weights) on a ring of 10,
  a random 3-regular graph (seeded) and the complete graph;
- asynchronous pairwise gossip on the ring, 5 ticks a round (each peer
  trains about once a round, as in the other runs).

Communication is counted as the bytes a peer (or FedAvg client) *sends*,
one model being 7,850 float32 = 31,400 bytes: a FedAvg client sends its
update once a round (the server's downloads are the server's traffic), a
synchronous gossip peer its model to each neighbour (ring: 2 a round,
3-regular: 3, complete: 9), a pairwise tick one model each way. Each run
gets as many rounds as give ``--models`` models sent per peer, and after
every round the average model (FedAvg: the server's) is evaluated on the
10,000 test images. The table gives the test accuracy after the last round
within each budget of models sent per peer, so the rows compare at equal
bytes; the second table the same at equal rounds (equal local compute).

Run by hand (never from the tests)::

    .venv/bin/python bench/gossip.py                  # 40 models per peer, seed 1
    .venv/bin/python bench/gossip.py --split dirichlet --alpha 0.5
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=int, default=40, help="models sent per peer (the byte budget)")
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--split", default="sequential", choices=["sequential", "iid", "dirichlet"])
    parser.add_argument("--alpha", type=float, default=0.5)
    args = parser.parse_args()

    import keras

    from fedr import datasets, gossip, learning

    def model_fn():
        model = keras.Sequential([keras.Input((784,)),
                                  keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")])
        return learning.from_keras_model(model, "sparse_categorical_crossentropy", ["sparse_categorical_accuracy"])

    data = datasets.load_fashion_mnist()
    train = datasets.make_clients(data.x_train, data.y_train, 10, args.split, batch_size=100, seed=args.seed,
                                  alpha=args.alpha)
    test = datasets.make_clients(data.x_test, data.y_test, 2, "sequential", batch_size=1000)
    sgd = learning.optimizer_fn("sgd", args.lr)
    curves: dict[str, list[tuple[float, int, float, float]]] = {}  # name -> (models sent, round, accuracy, distance)
    seconds: dict[str, float] = {}
    spread: dict[str, tuple[float, float]] = {}

    fedavg = learning.build_weighted_fed_avg(model_fn, sgd, seed=args.seed)
    model_bytes = 4 * fedavg.initialize().flat_weights.size
    started = time.perf_counter()
    history = learning.fit(fedavg, train, args.models, validation_data=test)
    seconds["FedAvg"] = time.perf_counter() - started
    curves["FedAvg"] = [(r["round"], r["round"], r["val_sparse_categorical_accuracy"], 0.0) for r in history.rows]

    runs = [
        ("ring, sync", gossip.ring(10), "sync", 2),
        ("3-regular, sync", gossip.random_regular(10, 3, seed=args.seed), "sync", 3),
        ("complete, sync", gossip.complete(10), "sync", 9),
        ("ring, async (5 ticks)", gossip.ring(10), "async", 1),
    ]
    for name, graph, mode, per_round in runs:
        process = gossip.build_gossip(model_fn, sgd, graph, mode=mode, seed=args.seed)
        assert process.model_bytes == model_bytes
        rounds = max(1, args.models // per_round)
        started = time.perf_counter()
        h = gossip.fit(process, train, rounds, validation_data=test, evaluate_average=False)
        seconds[name] = time.perf_counter() - started
        curves[name] = [(r["bytes_sent_total"] / model_bytes, r["round"], r["val_sparse_categorical_accuracy"],
                         r["consensus_distance"]) for r in h.rows]
        peers = [process.evaluate(h.state, test, peer=i)["sparse_categorical_accuracy"] for i in range(10)]
        spread[name] = (min(peers), max(peers))

    budgets = [b for b in (5, 10, 20, 40, 80) if b <= args.models]
    print(f"# split={args.split} lr={args.lr} seed={args.seed}; one model = {model_bytes} bytes\n")
    print("Test accuracy of the average model at equal bytes (models sent per peer):\n")
    print("| run | " + " | ".join(f"{b} models ({b * model_bytes / 1e6:.2f} MB)" for b in budgets) + " | s / round |")
    print("|---|" + "---|" * (len(budgets) + 1))
    for name, curve in curves.items():
        cells = []
        for b in budgets:
            within = [c for c in curve if c[0] <= b + 1e-9]
            cells.append(f"{within[-1][2]:.4f} (r{within[-1][1]})" if within else "-")
        print(f"| {name} | " + " | ".join(cells) + f" | {seconds[name] / len(curve):.3f} |")
    print("\nAt equal rounds (equal local compute):\n")
    marks = [r for r in (5, 10, 20, 40) if r <= args.models]
    print("| run | " + " | ".join(f"round {r}" for r in marks) + " | consensus distance, last round | peers' accuracy, last round |")
    print("|---|" + "---|" * (len(marks) + 2))
    for name, curve in curves.items():
        by_round = {c[1]: c for c in curve}
        cells = [f"{by_round[r][2]:.4f}" if r in by_round else "-" for r in marks]
        low, high = spread.get(name, (float("nan"), float("nan")))
        extra = "-" if name == "FedAvg" else f"{curve[-1][3]:.4f} | {low:.4f} - {high:.4f}"
        print(f"| {name} | " + " | ".join(cells) + f" | {extra} |" if name != "FedAvg" else
              f"| {name} | " + " | ".join(cells) + " | - | - |")


if __name__ == "__main__":
    main()
