"""Command line: ``python -m fedr demo`` runs the reference workflow on Fashion-MNIST."""

from __future__ import annotations

import argparse
import os
import sys
import time


def _demo(args: argparse.Namespace) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from concurrent.futures import ThreadPoolExecutor

    from fedr import datasets

    # Read the data (gzip releases the GIL) while TensorFlow and Keras import.
    with ThreadPoolExecutor(1) as pool:
        loading = pool.submit(datasets.load_dataset, args.dataset, args.path)
        import keras

        from fedr import learning

        data = loading.result()
    print(f"{data.name}: {len(data.y_train)} training and {len(data.y_test)} test images")
    train = datasets.make_federated_data(
        data, args.clients, args.split, batch_size=args.batch_size, seed=args.seed
    )
    test = datasets.make_federated_data(
        data, args.clients, "sequential", batch_size=args.batch_size, split="test"
    )
    sample_batch = train[min(4, len(train) - 1)].batches()[0]

    def model_fn() -> learning.Model:
        model = keras.Sequential(
            [
                keras.Input(shape=(784,)),
                keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros"),
            ]
        )
        return learning.from_keras_model(
            model,
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=[keras.metrics.SparseCategoricalAccuracy()],
            dummy_batch=sample_batch,
        )

    process = learning.build_weighted_fed_avg(
        model_fn,
        client_optimizer_fn=learning.optimizer_fn("sgd", args.client_lr),
        server_optimizer_fn=learning.optimizer_fn("sgd", args.server_lr),
    )
    state = process.initialize()
    print(f"{len(train)} clients ({args.split}), batch size {args.batch_size}, {args.rounds} rounds")
    for round_num in range(1, args.rounds + 1):
        start = time.perf_counter()
        state, metrics = process.next(state, train)
        seconds = time.perf_counter() - start
        print(
            f"round: {round_num:3d}   accuracy: {metrics['sparse_categorical_accuracy']:.4f}"
            f"   loss: {metrics['loss']:.4f}   ({seconds * 1000:.0f} ms)",
            flush=True,
        )
    evaluation = process.evaluate(state, test)
    print(
        f"federated evaluation on {evaluation['num_examples']} test images over "
        f"{evaluation['num_clients']} clients: accuracy "
        f"{evaluation['sparse_categorical_accuracy']:.4f}, loss {evaluation['loss']:.4f}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command."""
    parser = argparse.ArgumentParser(prog="python -m fedr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="federated averaging of a Keras model, as in the reference")
    demo.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "kmnist"])
    demo.add_argument("--path", default=None, help="directory holding the dataset files")
    demo.add_argument("--clients", type=int, default=10)
    demo.add_argument("--split", default="sequential", choices=["sequential", "iid", "dirichlet"])
    demo.add_argument("--seed", type=int, default=None)
    demo.add_argument("--batch-size", type=int, default=100)
    demo.add_argument("--rounds", type=int, default=20)
    demo.add_argument("--client-lr", type=float, default=0.02)
    demo.add_argument("--server-lr", type=float, default=1.0)
    args = parser.parse_args(argv)
    return _demo(args)


if __name__ == "__main__":
    sys.exit(main())
