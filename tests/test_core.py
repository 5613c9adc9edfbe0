"""The core's parts: whole state (BatchNorm), seeds (Dropout), checkpoints, executors, and no silent failures."""

import json
import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import fedr  # noqa: E402
from fedr import aggregators, executors, learning  # noqa: E402
from fedr.datasets import ClientData  # noqa: E402

SHAPE, CLASSES = (6, 6, 1), 3


def _image_clients(sizes=(20, 12, 16), seed=0, prefix="c"):
    rng = np.random.default_rng(seed)
    return [
        ClientData(
            rng.normal(1.5, 2.0, (n, *SHAPE)).astype(np.float32),
            rng.integers(0, CLASSES, n),
            batch_size=8,
            client_id=f"{prefix}{i}",
        )
        for i, n in enumerate(sizes)
    ]


def _cnn_fn():
    """Conv + BatchNorm + Dropout + dense: non-trainable statistics and random state."""
    model = keras.Sequential(
        [
            keras.Input(SHAPE),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Flatten(),
            keras.layers.Dropout(0.3),
            keras.layers.Dense(CLASSES, activation="softmax"),
        ]
    )
    return learning.from_keras_model(
        model, keras.losses.SparseCategoricalCrossentropy(), [keras.metrics.SparseCategoricalAccuracy()]
    )


def _rounds(process, clients, rounds, state=None):
    state = process.initialize() if state is None else state
    history = []
    for _ in range(rounds):
        state, metrics = process.next(state, clients)
        history.append(metrics)
    return state, history


def _all_weights(state):
    return [*state.model.trainable, *state.model.non_trainable]


def _assert_same_state(a, b):
    assert a.round_num == b.round_num
    for x, y in zip(_all_weights(a), _all_weights(b), strict=True):
        np.testing.assert_array_equal(x, y)
    for (na, xa), (nb, xb) in zip(a.optimizer_state, b.optimizer_state, strict=True):
        assert na == nb
        np.testing.assert_array_equal(xa, xb)


# --- whole state ----------------------------------------------------------------------------


def test_state_holds_named_trainable_and_non_trainable_variables():
    process = learning.build_weighted_fed_avg(_cnn_fn, learning.optimizer_fn("sgd", 0.05), seed=1)
    state = process.initialize()
    assert state.model.trainable_names == (
        "sequential/conv2d/kernel", "sequential/conv2d/bias",
        "sequential/batch_normalization/gamma", "sequential/batch_normalization/beta",
        "sequential/dense/kernel", "sequential/dense/bias",
    )
    assert state.model.non_trainable_names == (
        "sequential/batch_normalization/moving_mean", "sequential/batch_normalization/moving_variance",
        "seed_generator/seed_generator_state",
    )
    assert state.model.non_trainable[2].dtype == np.int64
    assert [name for name, _ in state.optimizer_state] == ["iteration"]
    with pytest.raises(ValueError, match="read-only"):
        state.model.trainable[0][...] = 0


def test_batchnorm_statistics_are_averaged_into_the_state():
    clients = _image_clients()
    process = learning.build_weighted_fed_avg(_cnn_fn, learning.optimizer_fn("sgd", 0.05), seed=3, workers=1)
    start = process.initialize()
    new, _ = process.next(start, clients)
    mean0, var0, rng0 = start.model.non_trainable
    mean1, var1, rng1 = new.model.non_trainable
    assert np.all(mean0 == 0) and np.all(var0 == 1)
    assert np.abs(mean1).max() > 1e-3 and np.abs(var1 - 1).max() > 1e-3
    np.testing.assert_array_equal(rng1, rng0)  # random state is never averaged
    # The example-weighted mean of each client's statistics after its own training.
    singles = [process.next(start, [c])[0].model.non_trainable[:2] for c in clients]
    counts = np.array([c.num_examples for c in clients], np.float64)
    for k in range(2):
        expected = sum(n * s[k].astype(np.float64) for n, s in zip(counts, singles)) / counts.sum()
        np.testing.assert_allclose(new.model.non_trainable[k], expected, rtol=1e-6)


def test_batchnorm_evaluation_reads_only_the_state():
    clients, test = _image_clients(), _image_clients((10, 14), seed=9, prefix="t")
    results = {}
    for workers in (1, 2):
        process = learning.build_weighted_fed_avg(
            _cnn_fn, learning.optimizer_fn("sgd", 0.05), seed=5, workers=workers
        )
        state, _ = _rounds(process, clients, 2)
        before = process.evaluate(state, test)
        _rounds(process, _image_clients(seed=4, prefix="other"), 2)  # other training in between
        after = process.evaluate(state, test)
        assert before == after
        results[workers] = before
    assert results[1] == results[2]
    assert results[1]["num_examples"] == 24 and 0.0 <= results[1]["sparse_categorical_accuracy"] <= 1.0
    # A fresh evaluation built from the same model function agrees too.
    assert learning.build_fed_eval(_cnn_fn)(state, test) == results[1]


# --- seeds ----------------------------------------------------------------------------------


def test_seeded_dropout_model_repeats_bit_for_bit_with_any_executor():
    clients = _image_clients()
    runs = []
    for executor in (executors.serial(), executors.threads(1), executors.threads(2), executors.threads(2)):
        process = learning.build_weighted_fed_avg(
            _cnn_fn, learning.optimizer_fn("sgd", 0.05), seed=11, executor=executor
        )
        runs.append(_rounds(process, clients, 2))
    for state, history in runs[1:]:
        _assert_same_state(state, runs[0][0])
        assert history == runs[0][1]
    # Another seed gives other initial weights and other Dropout masks.
    other = learning.build_weighted_fed_avg(_cnn_fn, learning.optimizer_fn("sgd", 0.05), seed=12, workers=1)
    assert not np.array_equal(other.initialize().model.trainable[0], runs[0][0].model.trainable[0])


class _Recorder(aggregators.Mean):
    """The mean, recording every client's update by id."""

    def __init__(self):
        super().__init__()
        self.deltas = {}

    def aggregate(self, state, outputs, *, seed=None, context=None):
        for out in outputs:
            self.deltas.setdefault(out.client_id, []).append(out.delta.copy())
        return super().aggregate(state, outputs, seed=seed, context=context)


def test_a_clients_randomness_depends_on_round_and_id_not_on_company():
    clients = _image_clients()
    recorder = _Recorder()
    process = learning.build_weighted_fed_avg(
        _cnn_fn, learning.optimizer_fn("sgd", 0.05), seed=2, workers=2, aggregator=recorder
    )
    start = process.initialize()
    process.next(start, [clients[1]])
    process.next(start, clients)
    alone, together = recorder.deltas["c1"]
    np.testing.assert_array_equal(alone, together)
    # Another round gives other Dropout masks from the same weights.
    process.next(learning.ServerState(start.model, start.optimizer_state, (), 5), [clients[1]])
    assert not np.array_equal(recorder.deltas["c1"][2], alone)
    # Two clients with the same id (ClientData's default) still draw different masks.
    same_id = [ClientData(c.x, c.y, batch_size=8) for c in clients[:2]]
    twins = [ClientData(clients[0].x, clients[0].y, batch_size=8) for _ in range(2)]
    assert {c.client_id for c in same_id + twins} == {"client_0"}
    recorder.deltas.clear()
    process.next(start, twins)
    first, second = recorder.deltas["client_0"]
    assert not np.array_equal(first, second)


def test_unseeded_processes_differ_with_dropout():
    clients = _image_clients()
    a = learning.build_weighted_fed_avg(_cnn_fn, learning.optimizer_fn("sgd", 0.05), workers=1)
    state = a.initialize()
    first, _ = a.next(state, clients)
    b = learning.build_weighted_fed_avg(_cnn_fn, learning.optimizer_fn("sgd", 0.05), workers=1)
    second, _ = b.next(state, clients)
    assert not np.array_equal(first.flat_weights, second.flat_weights)


# --- checkpoints ----------------------------------------------------------------------------

RESUME_SCRIPT = r"""
import sys
import numpy as np
sys.path.insert(0, {tests!r})
from test_core import _cnn_fn, _image_clients, _rounds
from fedr import learning
process = learning.build_weighted_fed_avg(_cnn_fn, learning.optimizer_fn("adam", 0.01),
                                          learning.optimizer_fn("sgd", 1.0, momentum=0.9), seed=21)
state = learning.load_state({path!r})
state, _ = _rounds(process, _image_clients(), 2, state)
learning.save_state(state, {out!r})
"""


def test_save_load_resume_in_a_new_process_is_bit_identical(tmp_path):
    clients = _image_clients()
    make = lambda: learning.build_weighted_fed_avg(  # noqa: E731
        _cnn_fn, learning.optimizer_fn("adam", 0.01), learning.optimizer_fn("sgd", 1.0, momentum=0.9), seed=21
    )
    straight, _ = _rounds(make(), clients, 4)
    two, _ = _rounds(make(), clients, 2)
    path, out = tmp_path / "round2.fedr", tmp_path / "round4.fedr"
    assert learning.save_state(two, path) == str(path)
    loaded = learning.load_state(path)
    _assert_same_state(loaded, two)
    assert [n for n, _ in loaded.optimizer_state] == ["iteration", "server_weights_0_momentum"]
    script = RESUME_SCRIPT.format(tests=os.path.dirname(__file__), path=str(path), out=str(out))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = learning.load_state(out)
    assert resumed.round_num == 4
    _assert_same_state(resumed, straight)


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    process = learning.build_weighted_fed_avg(_cnn_fn, learning.optimizer_fn("sgd", 0.05), seed=1, workers=1)
    state = process.initialize()
    path = tmp_path / "state.fedr"
    learning.save_state(state, path)
    before = path.read_bytes()
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        learning.save_state(process.next(state, _image_clients())[0], path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["state.fedr"]


def test_corrupt_truncated_and_foreign_files_are_named(tmp_path):
    process = learning.build_weighted_fed_avg(_cnn_fn, learning.optimizer_fn("sgd", 0.05), seed=1, workers=1)
    path = tmp_path / "good.fedr"
    learning.save_state(process.initialize(), path)
    data = path.read_bytes()
    truncated = tmp_path / "truncated.fedr"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(learning.StateFileError, match=r"'.*truncated.fedr' is not a readable fedr checkpoint: truncated or corrupt"):
        learning.load_state(truncated)
    text = tmp_path / "notes.fedr"
    text.write_text("hello")
    with pytest.raises(learning.StateFileError, match=r"notes.fedr' is not a readable fedr checkpoint"):
        learning.load_state(text)
    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, weights=np.zeros(3))
    with pytest.raises(learning.StateFileError, match=r"foreign.npz' .*no '__fedr__' header"):
        learning.load_state(foreign)
    newer = tmp_path / "newer.fedr"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(newer, "w") as zout:
        for item in zin.infolist():
            body = zin.read(item)
            if item.filename == "__fedr__.npy":
                header = np.load(path)["__fedr__"]
                meta = json.loads(bytes(header).decode())
                meta["version"] = 99
                import io

                buf = io.BytesIO()
                np.save(buf, np.frombuffer(json.dumps(meta).encode(), np.uint8))
                body = buf.getvalue()
            zout.writestr(item, body)
    with pytest.raises(learning.StateFileError, match=r"format version 99; this fedr reads version 1"):
        learning.load_state(newer)
    with pytest.raises(FileNotFoundError, match="no checkpoint file at"):
        learning.load_state(tmp_path / "missing.fedr")


# --- no silent failures ---------------------------------------------------------------------


def _dense_fn(features=4 * 9, classes=CLASSES, units=None):
    def fn():
        layers = [keras.Input((features,))]
        if units:
            layers.append(keras.layers.Dense(units))
        layers.append(keras.layers.Dense(classes, activation="softmax"))
        return learning.from_keras_model(keras.Sequential(layers), "sparse_categorical_crossentropy")

    return fn


def test_state_of_another_model_is_refused_naming_the_variable(tmp_path):
    sgd = learning.optimizer_fn("sgd", 0.1)
    a = learning.build_weighted_fed_avg(_dense_fn(), sgd, workers=1)  # 36 x 3 + 3 = 111 weights
    # 2 x 37 + 37 = 111 weights too, in two variables of other shapes.
    b = learning.build_weighted_fed_avg(_dense_fn(features=2, classes=37), sgd, workers=1)
    assert a.initialize().flat_weights.size == b.initialize().flat_weights.size == 111
    clients = [ClientData(np.ones((4, 36), np.float32), np.zeros(4, int), client_id="x")]
    message = (
        r"state: trainable variable 0 is 'sequential/dense/kernel' float32\[2, 37\] "
        r"but the model expects 'sequential/dense/kernel' float32\[36, 3\]; is it from another model\?"
    )
    with pytest.raises(ValueError, match=message):
        a.next(b.initialize(), clients)
    with pytest.raises(ValueError, match=message):
        a.evaluate(b.initialize(), clients)
    c = learning.build_weighted_fed_avg(_dense_fn(features=1, units=35), sgd, workers=1)
    with pytest.raises(ValueError, match=r"state: the model has 2 trainable variables .* the state has 4 .*another model"):
        a.next(c.initialize(), clients)
    path = tmp_path / "b.fedr"
    learning.save_state(b.initialize(), path)
    with pytest.raises(ValueError, match=r"'.*b.fedr': " + message):
        learning.load_state(path, a)
    assert learning.load_state(path, b).round_num == 0
    with pytest.raises(TypeError, match=r"process: expected a process from build_weighted_fed_avg, got str"):
        learning.load_state(path, "a")
    with pytest.raises(TypeError, match=r"path: expected a file path, got int"):
        learning.save_state(b.initialize(), 123)


def test_optimizer_and_aggregator_state_are_checked():
    process = learning.build_weighted_fed_avg(
        _dense_fn(), learning.optimizer_fn("sgd", 0.1), learning.optimizer_fn("sgd", 1.0, momentum=0.9), workers=1
    )
    state = process.initialize()
    clients = [ClientData(np.ones((4, 36), np.float32), np.zeros(4, int))]
    (it_name, it), (m_name, m) = state.optimizer_state
    broken = learning.ServerState(state.model, ((it_name, it), (m_name, np.full_like(m, np.nan))))
    with pytest.raises(ValueError, match=r"optimizer variable 'server_weights_0_momentum' has non-finite values"):
        process.next(broken, clients)
    with pytest.raises(ValueError, match=r"optimizer state has \['iteration'\] but the server optimizer \(SGD\) has \['iteration', 'server_weights_0_momentum'\]"):
        process.next(learning.ServerState(state.model, ((it_name, it),)), clients)
    foreign = learning.ServerState(state.model, state.optimizer_state, (("clip", np.float32(1.0)),))
    with pytest.raises(ValueError, match=r"aggregator state has \['clip'\] but the aggregator mean\(weighted=True\) has \[\]"):
        process.next(foreign, clients)


def test_variable_names_are_unique_and_the_same_in_every_replica():
    def two_dense():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5), keras.layers.Dropout(0.1),
                                  keras.layers.Dense(3, activation="softmax"), keras.layers.Dropout(0.1)])
        return learning.from_keras_model(model, "sparse_categorical_crossentropy")

    first = learning.build_weighted_fed_avg(two_dense, learning.optimizer_fn("sgd", 0.1), workers=1)
    second = learning.build_weighted_fed_avg(two_dense, learning.optimizer_fn("sgd", 0.1), workers=1)
    names = first.initialize().model.trainable_names + first.initialize().model.non_trainable_names
    assert names == (
        "sequential/dense/kernel", "sequential/dense/bias", "sequential/dense_1/kernel", "sequential/dense_1/bias",
        "seed_generator/seed_generator_state", "seed_generator_1/seed_generator_state",
    )
    assert second.initialize().model.trainable_names + second.initialize().model.non_trainable_names == names


def test_non_finite_state_is_refused_naming_the_variable():
    process = learning.build_weighted_fed_avg(_dense_fn(), learning.optimizer_fn("sgd", 0.1), workers=1)
    state = process.initialize()
    broken = learning.ServerState(
        learning.ModelWeights(
            (state.model.trainable[0], np.full(3, np.nan, np.float32)), (), state.model.trainable_names
        ),
        state.optimizer_state,
    )
    clients = [ClientData(np.ones((4, 36), np.float32), np.zeros(4, int))]
    with pytest.raises(ValueError, match=r"variable 'sequential/dense/bias' has 3 non-finite value\(s\)"):
        process.next(broken, clients)


def test_huge_learning_rate_fails_the_round_with_advice():
    process = learning.build_weighted_fed_avg(_dense_fn(), learning.optimizer_fn("sgd", 3e38), workers=1)
    rng = np.random.default_rng(0)
    clients = [ClientData(rng.random((8, 36), np.float32), rng.integers(0, 3, 8), batch_size=4, client_id="a")]
    with pytest.raises(ValueError, match=r"round 1: .*(non-finite).*lower the"):
        process.next(process.initialize(), clients)


def test_labels_are_checked_against_the_model_and_loss():
    process = learning.build_weighted_fed_avg(_dense_fn(), learning.optimizer_fn("sgd", 0.1), workers=1)
    state = process.initialize()
    x = np.ones((4, 36), np.float32)
    with pytest.raises(ValueError, match=r"client 'big': label 7 is outside the model's 3 classes; labels must be in \[0, 3\)"):
        process.next(state, [ClientData(x, [0, 1, 7, 2], client_id="big")])
    one_hot = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    with pytest.raises(ValueError, match=r"client 'hot': y has shape \(4, 3\) \(one-hot or 2-D targets\) but the loss 'sparse_categorical_crossentropy' takes integer class labels"):
        process.next(state, [ClientData(x, one_hot, client_id="hot")])
    with pytest.raises(ValueError, match=r"client 'big': label 7 is outside"):
        process.evaluate(state, [ClientData(x, [0, 1, 7, 2], client_id="big")])

    def categorical_fn():
        model = keras.Sequential([keras.Input((36,)), keras.layers.Dense(3, activation="softmax")])
        return learning.from_keras_model(model, keras.losses.CategoricalCrossentropy())

    cat = learning.build_weighted_fed_avg(categorical_fn, learning.optimizer_fn("sgd", 0.1), workers=1)
    with pytest.raises(ValueError, match=r"client 'ids': y has shape \(4,\) but the loss 'categorical_crossentropy' takes one-hot targets of shape \(4, 3\)"):
        cat.next(cat.initialize(), [ClientData(x, [0, 1, 2, 0], client_id="ids")])
    _, metrics = cat.next(cat.initialize(), [ClientData(x, one_hot, client_id="hot")])
    assert metrics["num_examples"] == 4


def test_client_data_is_read_only_and_copied_when_the_caller_can_write():
    x = np.zeros((4, 3), np.float32)
    y = np.array([0, 1, 2, 0])
    client = ClientData(x, y)
    x[0, 0] = 5.0
    assert client.x[0, 0] == 0.0
    # A read-only view of a writable array is copied too; a read-only array is kept.
    base = np.zeros((4, 3), np.float32)
    view = base.view()
    view.flags.writeable = False
    from_view = ClientData(view, y)
    base[0, 0] = 7.0
    assert from_view.x[0, 0] == 0.0
    frozen = np.ones((4, 3), np.float32)
    frozen.flags.writeable = False
    assert ClientData(frozen, y).x is frozen
    with pytest.raises(ValueError, match="read-only"):
        client.x[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        client.y[0] = 1


def test_arguments_are_validated_with_their_names():
    sgd = learning.optimizer_fn("sgd", 0.1)
    with pytest.raises(ValueError, match=r"seed: expected a non-negative integer or None, got -1"):
        learning.build_weighted_fed_avg(_dense_fn(), sgd, seed=-1)
    with pytest.raises(ValueError, match=r"seed: expected a non-negative integer or None, got 1.5"):
        learning.build_weighted_fed_avg(_dense_fn(), sgd, seed=1.5)
    with pytest.raises(ValueError, match=r"workers: expected a positive integer or None, got 0"):
        executors.threads(0)
    with pytest.raises(ValueError, match=r"workers: give `workers` or `executor`, not both"):
        learning.build_weighted_fed_avg(_dense_fn(), sgd, workers=2, executor=executors.serial())
    with pytest.raises(TypeError, match=r"executor: expected fedr.executors.serial\(\) or fedr.executors.threads\(...\), got str"):
        learning.build_weighted_fed_avg(_dense_fn(), sgd, executor="threads")
    with pytest.raises(TypeError, match=r"aggregator: expected a fedr aggregator such as fedr.aggregators.mean\(\), got function"):
        learning.build_weighted_fed_avg(_dense_fn(), sgd, aggregator=lambda outputs: outputs)
    with pytest.raises(TypeError, match=r"client_optimizer_fn: expected a function returning a Keras optimizer, got one returning str"):
        learning.build_weighted_fed_avg(_dense_fn(), lambda: "sgd")
    with pytest.raises(ValueError, match=r"name: expected one of \['adam', 'fedadagrad', 'fedadam', 'fedyogi', 'sgd'\], got 'rmsprop'"):
        learning.optimizer_fn("rmsprop", 0.1)
    with pytest.raises(ValueError, match=r"momentum: unknown option of 'adam'; options are beta_1, beta_2, epsilon"):
        learning.optimizer_fn("adam", 0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"momentum: expected a number in \[0, 1\), got 2"):
        learning.optimizer_fn("sgd", 0.1, momentum=2)
    with pytest.raises(ValueError, match=r"learning_rate: expected a positive number, got nan"):
        learning.optimizer_fn("sgd", float("nan"))
    with pytest.raises(ValueError, match=r"fraction: expected a number in \(0, 1\], got 'half'"):
        learning.sample_clients([1, 2], "half")
    with pytest.raises(ValueError, match=r"seed: expected a non-negative integer or None, got 'x'"):
        learning.sample_clients([1, 2], 0.5, seed="x")
    with pytest.raises(ValueError, match=r"local_epochs: expected a positive integer, got 0"):
        learning.build_weighted_fed_avg(_dense_fn(), sgd, local_epochs=0)


# --- the seams ------------------------------------------------------------------------------


class _Median(aggregators.Aggregator):
    """A coordinate-wise median with a round counter as state: sees all outputs at once."""

    def init(self):
        return (("rounds", np.zeros((), np.int64)),)

    def aggregate(self, state, outputs, *, seed=None, context=None):
        rounds = dict(state)["rounds"] + 1
        update = np.median(np.stack([o.delta for o in outputs]), axis=0).astype(np.float32)
        return aggregators.AggregateResult((("rounds", rounds),), update, {"median_rounds": float(rounds)})


def test_custom_aggregator_sees_all_outputs_and_keeps_state(tmp_path):
    rng = np.random.default_rng(0)
    clients = [ClientData(rng.random((8, 36), np.float32), rng.integers(0, 3, 8), batch_size=4, client_id=f"k{i}")
               for i in range(3)]
    plain = learning.build_weighted_fed_avg(_dense_fn(), learning.optimizer_fn("sgd", 0.1), workers=1, seed=0)
    median = learning.build_weighted_fed_avg(
        _dense_fn(), learning.optimizer_fn("sgd", 0.1), workers=1, seed=0, aggregator=_Median()
    )
    start = median.initialize()
    state, metrics = median.next(start, clients)
    state, metrics = median.next(state, clients)
    assert metrics["median_rounds"] == 2.0 and dict(state.aggregator_state)["rounds"] == 2
    # The median of three deltas is one of them coordinate by coordinate.
    plain_start = plain.initialize()
    np.testing.assert_array_equal(plain_start.flat_weights, start.flat_weights)  # the same seed
    deltas = [plain.next(plain_start, [c])[0].flat_weights - start.flat_weights for c in clients]
    one, _ = median.next(start, clients)
    np.testing.assert_allclose(one.flat_weights - start.flat_weights, np.median(deltas, axis=0), atol=1e-7)
    path = tmp_path / "median.fedr"
    learning.save_state(state, path)
    assert dict(learning.load_state(path).aggregator_state)["rounds"] == 2


def test_unweighted_mean_gives_every_client_the_same_weight():
    rng = np.random.default_rng(1)
    clients = [ClientData(rng.random((n, 36), np.float32), rng.integers(0, 3, n), batch_size=4, client_id=f"u{n}")
               for n in (4, 12)]
    process = learning.build_weighted_fed_avg(
        _dense_fn(), learning.optimizer_fn("sgd", 0.1), workers=1, seed=0, aggregator=aggregators.mean(weighted=False)
    )
    start = process.initialize()
    both, _ = process.next(start, clients)
    singles = [process.next(start, [c])[0].flat_weights - start.flat_weights for c in clients]
    np.testing.assert_allclose(both.flat_weights - start.flat_weights, (singles[0] + singles[1]) / 2, atol=1e-7)


def test_default_executor_uses_every_core():
    process = learning.build_weighted_fed_avg(_dense_fn(), learning.optimizer_fn("sgd", 0.1))
    assert process.executor.workers == executors.default_workers() == len(os.sched_getaffinity(0))
    assert repr(process.executor) == f"threads(workers={len(os.sched_getaffinity(0))})"


def test_replicas_are_built_when_needed_and_must_be_distinct():
    built = []

    def counting_fn():
        built.append(1)
        return _dense_fn()()

    process = learning.build_weighted_fed_avg(counting_fn, learning.optimizer_fn("sgd", 0.1), workers=4)
    assert len(built) == 1
    rng = np.random.default_rng(0)
    clients = [ClientData(rng.random((4, 36), np.float32), rng.integers(0, 3, 4), client_id=f"r{i}") for i in range(2)]
    process.next(process.initialize(), clients)
    assert len(built) == 2  # two clients need two replicas, not four
    shared = _dense_fn()()
    same = learning.build_weighted_fed_avg(lambda: shared, learning.optimizer_fn("sgd", 0.1), workers=2)
    with pytest.raises(ValueError, match=r"model_fn: returned the same Keras model twice; it must build a new model at every call"):
        same.next(same.initialize(), clients)
    opt = keras.optimizers.SGD(0.1)
    one_opt = learning.build_weighted_fed_avg(_dense_fn(), lambda: opt, workers=2)
    with pytest.raises(ValueError, match=r"client_optimizer_fn: returned the same optimizer twice"):
        one_opt.next(one_opt.initialize(), clients)


def test_errors_inside_a_client_name_the_round_and_client():
    def exploding_fn():
        model = keras.Sequential([keras.Input((36,)), keras.layers.Dense(3, activation="softmax")])

        def loss(y_true, y_pred):
            raise RuntimeError("my loss is broken")

        return learning.from_keras_model(model, loss)

    process = learning.build_weighted_fed_avg(exploding_fn, learning.optimizer_fn("sgd", 0.1), workers=1)
    clients = [ClientData(np.ones((4, 36), np.float32), np.zeros(4, int), client_id="x")]
    with pytest.raises(fedr.FedError, match=r"client 'x': building the training graph failed \(the model, its loss or metrics raised\): RuntimeError: my loss is broken"):
        process.next(process.initialize(), clients)

    class Wrong(aggregators.Mean):
        def aggregate(self, state, outputs, *, seed=None, context=None):
            return aggregators.AggregateResult(state, np.zeros(3, np.float32), {})

    wrong = learning.build_weighted_fed_avg(_dense_fn(), learning.optimizer_fn("sgd", 0.1), workers=1, aggregator=Wrong())
    with pytest.raises(ValueError, match=r"aggregator mean\(weighted=True\): returned an update of float32 \(3,\), expected float32 \(111,\)"):
        wrong.next(wrong.initialize(), clients)


def test_lambda_losses_binary_targets_and_empty_rounds():
    def lambda_fn():
        model = keras.Sequential([keras.Input((36,)), keras.layers.Dense(3, activation="softmax")])
        return learning.from_keras_model(model, lambda y, p: keras.losses.sparse_categorical_crossentropy(y, p))

    process = learning.build_weighted_fed_avg(lambda_fn, learning.optimizer_fn("sgd", 0.1), workers=1, seed=3)
    named = learning.build_weighted_fed_avg(_dense_fn(), learning.optimizer_fn("sgd", 0.1), workers=1, seed=3)
    clients = [ClientData(np.ones((4, 36), np.float32), np.zeros(4, int), client_id="x")]
    state, metrics = process.next(process.initialize(), clients)
    named_state, named_metrics = named.next(named.initialize(), clients)
    assert metrics["loss"] == pytest.approx(named_metrics["loss"], rel=1e-6)
    np.testing.assert_allclose(state.flat_weights, named_state.flat_weights, rtol=1e-6)
    with pytest.raises(ValueError, match=r"federated_data: expected at least one client, got an empty list"):
        process.next(process.initialize(), [])
    with pytest.raises(ValueError, match=r"data: expected at least one client, got an empty list"):
        process.evaluate(process.initialize(), [])

    def binary_fn():
        model = keras.Sequential([keras.Input((36,)), keras.layers.Dense(1, activation="sigmoid")])
        return learning.from_keras_model(model, "bce")

    binary = learning.build_weighted_fed_avg(binary_fn, learning.optimizer_fn("sgd", 0.1), workers=1)
    with pytest.raises(ValueError, match=r"client 'b': y has values in \[0, 2\] but the loss 'binary_crossentropy' takes targets in \[0, 1\]"):
        binary.next(binary.initialize(), [ClientData(np.ones((3, 36), np.float32), [0, 1, 2], client_id="b")])


def test_sampling_differs_by_round_and_repeats_by_seed():
    population = list(range(100))
    one = learning.sample_clients(population, 0.1, seed=1, round_num=1)
    assert one == learning.sample_clients(population, 0.1, seed=1, round_num=1)
    assert one != learning.sample_clients(population, 0.1, seed=1, round_num=2)
    assert len(one) == 10 and one == sorted(one)


def test_seeds_checkpoints_example_runs():
    script = os.path.join(os.path.dirname(__file__), "..", "examples", "seeds_checkpoints.py")
    done = subprocess.run(
        [sys.executable, script, "--clients", "2", "--per-client", "200"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 rounds + save + load + 2 rounds == 4 rounds straight, bit for bit: True" in done.stdout
    assert "evaluation with 1 and 2 workers equal: True" in done.stdout
