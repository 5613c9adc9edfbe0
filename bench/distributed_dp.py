"""Distributed DP against central DP over the same secure sum, and against FedAvg without privacy.

Issue 23: with distributed DP (``fedr.privacy.distributed_dp``) the clients
add the noise inside the secure sum, so the server never decodes an
un-noised sum; central DP over secure aggregation
(``gaussian_fixed(inner=secure_sum())``) adds the same total noise on the
server after decoding the exact sum. At the same noise multiplier, clip and
cohort, the two should learn alike (the noise on the mean has the same
standard deviation, up to the shares provisioned for dropouts) and cost
alike (the clients' Skellam draws are the extra work).

Set-up: the reference workflow's model (one dense softmax layer, zero
initial weights, batches of 100, client SGD ``--lr``, server SGD 1.0) on
Fashion-MNIST split sequentially over ``--clients`` clients, every client
every round (``sampling="all"``), ``--rounds`` rounds, one seed. The three
processes' rounds alternate (round r of each before round r + 1), so a
machine's load hits all of them; each process's time is the sum of its
``next`` calls after round 1 (round 1 traces the graphs); accuracy is on the
10,000 test images after the last round. The ratios are against central DP
measured in the same run.

Run by hand (never from the tests)::

    .venv/bin/python bench/distributed_dp.py                    # 10 clients, 10 rounds, z = 0.5, C = 1
    .venv/bin/python bench/distributed_dp.py --noise 1.0 --rounds 20
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from fedr import datasets, learning, privacy  # noqa: E402

METRIC = "sparse_categorical_accuracy"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--noise", type=float, default=0.5, help="noise multiplier z")
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=0.02)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dropout-rate", type=float, default=0.1, help="distributed DP's provisioned dropouts")
    args = parser.parse_args()

    data = datasets.load_fashion_mnist()
    train = datasets.make_federated_data(data, args.clients, "sequential", batch_size=100)
    test = datasets.make_federated_data(data, 2, "sequential", batch_size=100, split="test")
    n = args.clients

    def model_fn() -> learning.Model:
        model = keras.Sequential(
            [keras.Input(shape=(784,)), keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")])
        return learning.from_keras_model(model, loss=keras.losses.SparseCategoricalCrossentropy(),
                                         metrics=[keras.metrics.SparseCategoricalAccuracy()])

    dp = dict(population_size=n, target_delta=1e-5, sampling="all")
    aggregators = {
        "FedAvg (no privacy)": None,
        "central DP, secure sum": privacy.gaussian_fixed(args.noise, n, args.clip, inner=privacy.secure_sum(), **dp),
        "distributed DP (Skellam)": privacy.distributed_dp(args.noise, n, args.clip,
                                                           dropout_rate=args.dropout_rate, **dp),
    }
    processes = {name: learning.build_weighted_fed_avg(model_fn, learning.optimizer_fn("sgd", args.lr),
                                                       learning.optimizer_fn("sgd", 1.0), aggregator=agg,
                                                       seed=args.seed)
                 for name, agg in aggregators.items()}
    states = {name: p.initialize() for name, p in processes.items()}
    seconds = {name: 0.0 for name in processes}
    last: dict[str, dict] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for r in range(args.rounds):
            for name, p in processes.items():
                start = time.perf_counter()
                states[name], last[name] = p.next(states[name], train)
                if r:
                    seconds[name] += time.perf_counter() - start
    base = seconds["central DP, secure sum"]
    print(f"{n} clients, {args.rounds} rounds, z = {args.noise:g}, C = {args.clip:g}, lr {args.lr:g}, "
          f"seed {args.seed}")
    print(f"{'process':<26} {'test acc':>8} {'epsilon':>8} {'noise sd':>8} {'s/round':>8} {'vs central':>10}")
    for name, p in processes.items():
        acc = float(p.evaluate(states[name], test)[METRIC])
        eps = last[name].get("epsilon", float("nan"))
        sd = last[name].get("dp_noise_stddev", 0.0)
        per = seconds[name] / max(1, args.rounds - 1)
        print(f"{name:<26} {acc:>8.4f} {eps:>8.3f} {sd:>8.3f} {per:>8.3f} {seconds[name] / base:>10.2f}")


if __name__ == "__main__":
    main()
