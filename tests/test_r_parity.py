"""R and Python give the same numbers: one 2-round FedAvg workflow run through both.

The R side runs in an ``Rscript`` subprocess: R calling Python through
reticulate inside this Python process (via rpy2) would crash (TOOLCHAIN
pitfall 3).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RLIB = ROOT / ".Rlib"

R_WORKFLOW = r"""
library(fedr)
keras <- reticulate::import("keras")
fashion <- fed_load_dataset("fashion_mnist")
clients <- fed_split(fashion, n_clients = 300)[1:3]
test <- fed_split(fashion, n_clients = 50, split = "test")[1:2]
model <- fed_model(function() {
  keras$Sequential(list(
    keras$Input(shape = list(784L)),
    keras$layers$Dense(units = 10L, activation = "softmax", kernel_initializer = "zeros")
  ))
}, loss = "sparse_categorical_crossentropy", metrics = "sparse_categorical_accuracy",
   sample_batch = clients)
process <- fed_averaging(model, fed_optimizer("sgd", 0.02), fed_optimizer("sgd", 1))
history <- fed_fit(process, clients, rounds = 2, verbose = FALSE)
evaluation <- fed_evaluate(process, history, test)
for (r in history$round) {
  cat(sprintf("round%d.%s=%.17g\n", r, c("sparse_categorical_accuracy", "loss"),
              unlist(history[r, c("sparse_categorical_accuracy", "loss")])), sep = "")
}
cat(sprintf("eval.%s=%.17g\n", names(evaluation), evaluation), sep = "")
# The final weights, column-major float64, for an exact comparison.
weights <- fed_weights(attr(history, "state"))
writeBin(unlist(lapply(weights, as.vector)), Sys.getenv("FEDR_PARITY_WEIGHTS"))
"""


def _run_r(weights_path: Path) -> dict[str, float]:
    rscript = shutil.which("Rscript")
    if rscript is None:
        pytest.skip("Rscript is not installed")
    if not (RLIB / "fedr" / "DESCRIPTION").is_file():
        pytest.skip(f"the fedr R package is not installed in {RLIB} (run `make setup`)")
    env = dict(os.environ)
    env["RETICULATE_PYTHON"] = env.get("RETICULATE_PYTHON", sys.executable)
    env["R_LIBS_USER"] = str(RLIB)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["FEDR_PARITY_WEIGHTS"] = str(weights_path)
    out = subprocess.run(
        [rscript, "--vanilla", "-e", R_WORKFLOW],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=600,
    )
    assert out.returncode == 0, f"Rscript failed:\n{out.stderr[-3000:]}"
    values = {}
    for line in out.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = float(value)
    return values


def _run_python() -> tuple[dict[str, float], list[np.ndarray]]:
    keras = pytest.importorskip("keras")
    from fedr import datasets, learning

    fashion = datasets.load_fashion_mnist()
    clients = datasets.make_federated_data(fashion, 300)[:3]
    test = datasets.make_federated_data(fashion, 50, split="test")[:2]

    def model_fn():
        model = keras.Sequential([
            keras.Input(shape=(784,)),
            keras.layers.Dense(10, activation="softmax", kernel_initializer="zeros"),
        ])
        return learning.from_keras_model(
            model,
            loss=keras.losses.SparseCategoricalCrossentropy(),
            metrics=["sparse_categorical_accuracy"],
            dummy_batch=clients[0].batches()[0],
        )

    process = learning.build_weighted_fed_avg(
        model_fn, learning.optimizer_fn("sgd", 0.02), learning.optimizer_fn("sgd", 1.0)
    )
    state = process.initialize()
    values = {}
    for r in (1, 2):
        state, metrics = process.next(state, clients)
        for name in ("sparse_categorical_accuracy", "loss"):
            values[f"round{r}.{name}"] = metrics[name]
    for name, value in process.evaluate(state, test).items():
        values[f"eval.{name}"] = float(value)
    return values, list(state.model_weights)


def test_r_and_python_workflows_give_identical_numbers(tmp_path):
    weights_path = tmp_path / "weights.bin"
    r_values = _run_r(weights_path)
    py_values, py_weights = _run_python()

    assert sorted(r_values) == sorted(py_values)
    assert r_values == py_values
    assert py_values["round2.sparse_categorical_accuracy"] > 0.3
    r_flat = np.fromfile(weights_path, dtype="<f8")
    py_flat = np.concatenate([w.astype(np.float64).ravel(order="F") for w in py_weights])
    np.testing.assert_array_equal(r_flat, py_flat)
