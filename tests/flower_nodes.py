"""A helper of the tests: a federation of Flower nodes on loopback serving Fashion-MNIST rows, run and stopped.

The algorithm tests (FedOpt, SCAFFOLD, the robust rules) each check that a
Flower run gives the in-process numbers; they start the same federation:
a SuperLink under ``tmp_path``, ``n`` SuperNodes each serving a slice of
Fashion-MNIST's training rows as client ``client_<i>``, one ``flower.run``,
and everything stopped afterwards, also when the run fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

FASHION = Path("/usr/share/datasets/fashion-mnist")


def fashion_model() -> Any:
    """The reference's softmax regression on Fashion-MNIST, zero-initialised (the same weights everywhere)."""
    import keras

    from fedr import learning

    model = keras.Sequential([keras.Input((784,)),
                              keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros")])
    return learning.from_keras_model(model, "sparse_categorical_crossentropy", ["sparse_categorical_accuracy"])


def fashion_clients(n: int, rows: int = 6000) -> list[Any]:
    """The in-process clients the nodes of :func:`run_on_nodes` serve: ``n`` sequential slices of ``rows`` rows."""
    from fedr import datasets

    data = datasets.load_fashion_mnist(FASHION)
    return datasets.make_clients(data.x_train[: n * rows], data.y_train[: n * rows], n)


def run_on_nodes(build: Callable[[], Any], tmp_path: Path, monkeypatch: Any, n: int, rounds: int,
                 rows: int = 6000, **options: Any) -> Any:
    """``flower.run(build(), rounds, ...)`` on ``n`` fresh loopback nodes of ``rows`` rows each; its result.

    ``HOME`` is ``tmp_path`` for the run (Flower writes there); ``options`` go
    to ``flower.run`` (default ``round_timeout=120``, ``timeout=600``).
    """
    from fedr import flower

    monkeypatch.setenv("HOME", str(tmp_path))
    options = {"round_timeout": 120, "timeout": 600, **options}
    started = []
    try:
        link = flower.superlink(root=str(tmp_path))
        started.append(link)
        started += [flower.supernode(str(FASHION), link, client_id=f"client_{i}",
                                     node_config={"rows": f"{rows * i}:{rows * (i + 1)}"}) for i in range(n)]
        return flower.run(build(), rounds, link, out_dir=str(tmp_path / "out"), **options)
    finally:
        for p in started:
            p.stop()
