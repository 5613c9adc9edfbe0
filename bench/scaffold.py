"""SCAFFOLD against FedAvg on a Dirichlet label split: rounds to reach FedAvg's round-20 test accuracy.

Issue 22's target: on the reference data (Fashion-MNIST) split by
Dirichlet(0.1) over 10 clients, SCAFFOLD (``fedr.learning.build_scaffold``,
option II control variates) needs fewer rounds than FedAvg
(``build_weighted_fed_avg``) to reach FedAvg's round-20 accuracy.

Both processes use the reference workflow's model and optimizers (one dense
softmax layer of 10 units, zero-initialized, batches of 100, client SGD at
``--lr``, 0.02 in the reference, server SGD 1.0), the same seed
(``seed=`` of the process) and the same split (``fedr.datasets``'s own
``"dirichlet"`` method, ``alpha=--alpha``, seeded with the same seed). Every
client takes part in every round. After each round both are evaluated on
the 10,000 test images (``process.evaluate``, two clients of 5,000, one per
worker; example-weighted, so the same as one client). The rounds of the two
processes alternate (FedAvg round r, then SCAFFOLD round r), so a load that
comes and goes slows both; the wall time of each is the sum of its
``next`` calls (training and aggregation, round 1's graph tracing included;
evaluation apart).

Headline: A20 = FedAvg's test accuracy after round 20; the first round at
which FedAvg reaches >= A20 (<= 20 by definition) and the first at which
SCAFFOLD does (or "never within --rounds").

Run by hand (never from the tests)::

    .venv/bin/python bench/scaffold.py                       # 40 rounds, 10 clients, alpha 0.1, seed 0
    .venv/bin/python bench/scaffold.py --local-epochs 2 --seed 0 1 2
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from fedr import datasets, learning  # noqa: E402

METRIC = "sparse_categorical_accuracy"
TARGET_ROUND = 20


def first_reaching(accuracies: list[float], target: float) -> int | None:
    """The first round (1-based) whose accuracy is >= target, or None."""
    for r, acc in enumerate(accuracies, start=1):
        if acc >= target:
            return r
    return None


def run(data: datasets.Dataset, args: argparse.Namespace, seed: int) -> dict[str, object]:
    """Run FedAvg and SCAFFOLD round by round, alternating, on one split; return their curves and times."""
    train = datasets.make_federated_data(
        data, args.clients, "dirichlet", batch_size=args.batch_size, seed=seed, alpha=args.alpha
    )
    test = datasets.make_federated_data(data, 2, "sequential", batch_size=args.batch_size, split="test")
    sizes = [c.num_examples for c in train]
    labels = datasets.label_distribution(train, 10)
    sample_batch = train[max(range(len(train)), key=lambda i: sizes[i])].batches()[0]

    def model_fn() -> learning.Model:
        model = keras.Sequential(
            [keras.Input(shape=(784,)), keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")]
        )
        return learning.from_keras_model(
            model,
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=[keras.metrics.SparseCategoricalAccuracy()],
            dummy_batch=sample_batch,
        )

    common = dict(local_epochs=args.local_epochs, seed=seed, workers=args.workers)
    processes = {
        "FedAvg": learning.build_weighted_fed_avg(
            model_fn, learning.optimizer_fn("sgd", args.lr), learning.optimizer_fn("sgd", args.server_lr), **common
        ),
        "SCAFFOLD": learning.build_scaffold(
            model_fn, learning.optimizer_fn("sgd", args.lr), learning.optimizer_fn("sgd", args.server_lr),
            num_clients=args.clients, **common
        ),
    }
    states = {name: p.initialize() for name, p in processes.items()}
    acc: dict[str, list[float]] = {name: [] for name in processes}
    loss: dict[str, list[float]] = {name: [] for name in processes}
    train_loss: dict[str, list[float]] = {name: [] for name in processes}
    seconds: dict[str, list[float]] = {name: [] for name in processes}
    for _ in range(args.rounds):
        for name, p in processes.items():
            start = time.perf_counter()
            states[name], metrics = p.next(states[name], train)
            seconds[name].append(time.perf_counter() - start)
            evaluation = p.evaluate(states[name], test)
            acc[name].append(float(evaluation[METRIC]))
            loss[name].append(float(evaluation["loss"]))
            train_loss[name].append(float(metrics["loss"]))
    return {"seed": seed, "sizes": sizes, "labels": labels, "acc": acc, "loss": loss,
            "train_loss": train_loss, "seconds": seconds}


def report(result: dict[str, object], args: argparse.Namespace) -> dict[str, object]:
    """Print one seed's per-round table and headline; return the headline numbers."""
    acc, loss, seconds = result["acc"], result["loss"], result["seconds"]
    seed = result["seed"]
    print(f"\nseed {seed}: client sizes {result['sizes']}")
    print("classes per client holding >= 5% of its examples:",
          [int((row / max(1, row.sum()) >= 0.05).sum()) for row in result["labels"]])
    print(f"{'round':>5} {'FedAvg acc':>10} {'SCAFFOLD acc':>12} {'FedAvg loss':>11} {'SCAFFOLD loss':>13} "
          f"{'FedAvg s':>8} {'SCAFFOLD s':>10}")
    for r in range(args.rounds):
        print(f"{r + 1:>5} {acc['FedAvg'][r]:>10.4f} {acc['SCAFFOLD'][r]:>12.4f} {loss['FedAvg'][r]:>11.4f} "
              f"{loss['SCAFFOLD'][r]:>13.4f} {seconds['FedAvg'][r]:>8.3f} {seconds['SCAFFOLD'][r]:>10.3f}")
    bad = [name for name in acc if any(not math.isfinite(v) for v in acc[name] + loss[name] + result["train_loss"][name])]
    if bad:
        print(f"NON-FINITE accuracy or loss in: {', '.join(bad)}")
    out: dict[str, object] = {"seed": seed}
    if args.rounds < TARGET_ROUND:
        print(f"--rounds {args.rounds} < {TARGET_ROUND}: no A{TARGET_ROUND}")
        return out
    a20 = acc["FedAvg"][TARGET_ROUND - 1]
    fedavg_first = first_reaching(acc["FedAvg"], a20)
    scaffold_first = first_reaching(acc["SCAFFOLD"], a20)
    total = {name: sum(s) for name, s in seconds.items()}
    median = {name: statistics.median(s[1:]) if len(s) > 1 else s[0] for name, s in seconds.items()}
    print(f"A{TARGET_ROUND} (FedAvg test accuracy after round {TARGET_ROUND}): {a20:.4f}")
    print(f"first round with accuracy >= A{TARGET_ROUND}: FedAvg {fedavg_first}, SCAFFOLD "
          + (str(scaffold_first) if scaffold_first is not None else f"never within {args.rounds} rounds"))
    print(f"SCAFFOLD at round {TARGET_ROUND}: {acc['SCAFFOLD'][TARGET_ROUND - 1]:.4f}; "
          f"final (round {args.rounds}): FedAvg {acc['FedAvg'][-1]:.4f}, SCAFFOLD {acc['SCAFFOLD'][-1]:.4f}; "
          f"best: FedAvg {max(acc['FedAvg']):.4f}, SCAFFOLD {max(acc['SCAFFOLD']):.4f}")
    print(f"wall time of next() over {args.rounds} rounds: FedAvg {total['FedAvg']:.2f} s, "
          f"SCAFFOLD {total['SCAFFOLD']:.2f} s, ratio SCAFFOLD/FedAvg {total['SCAFFOLD'] / total['FedAvg']:.2f}; "
          f"median round after round 1: FedAvg {median['FedAvg']:.3f} s, SCAFFOLD {median['SCAFFOLD']:.3f} s, "
          f"ratio {median['SCAFFOLD'] / median['FedAvg']:.2f}")
    out.update(a20=a20, fedavg_first=fedavg_first, scaffold_first=scaffold_first,
               scaffold_at_20=acc["SCAFFOLD"][TARGET_ROUND - 1], time_ratio=total["SCAFFOLD"] / total["FedAvg"])
    return out


def main() -> None:
    """Parse the arguments, run every seed, print the tables and a summary."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--alpha", type=float, default=0.1, help="Dirichlet concentration of the label split")
    parser.add_argument("--seed", type=int, nargs="+", default=[0],
                        help="seed(s) of the split and of both processes; one run per seed")
    parser.add_argument("--local-epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=0.02, help="client SGD learning rate (reference 0.02)")
    parser.add_argument("--server-lr", type=float, default=1.0)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--workers", type=int, default=None, help="threads per process (default one per core)")
    args = parser.parse_args()
    data = datasets.load_fashion_mnist()
    print(f"{data.name}: {len(data.y_train)} training, {len(data.y_test)} test images; {args.clients} clients, "
          f"Dirichlet({args.alpha}), batch {args.batch_size}, client SGD {args.lr}, server SGD {args.server_lr}, "
          f"{args.local_epochs} local epoch(s), {args.rounds} rounds, seeds {args.seed}, cores {os.cpu_count()}")
    start = time.perf_counter()
    summary = [report(run(data, args, seed), args) for seed in args.seed]
    if len(summary) > 1 and args.rounds >= TARGET_ROUND:
        print(f"\n{'seed':>4} {'A20':>7} {'FedAvg first':>12} {'SCAFFOLD first':>14} {'SCAFFOLD @20':>12} "
              f"{'time ratio':>10}")
        for s in summary:
            first = s["scaffold_first"] if s["scaffold_first"] is not None else "never"
            print(f"{s['seed']:>4} {s['a20']:>7.4f} {s['fedavg_first']:>12} {first!s:>14} "
                  f"{s['scaffold_at_20']:>12.4f} {s['time_ratio']:>10.2f}")
    print(f"\ntotal {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
