"""fedr.learning.fit: validation, per-round sampling, early stopping, checkpoints and resume, failures, arguments."""

import csv
import json
import warnings

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from fedr import executors, learning  # noqa: E402
from fedr.datasets import ClientData  # noqa: E402
from fedr.errors import FedValueError  # noqa: E402

FEATURES, CLASSES = 6, 3


def _clients(n=6, seed=0, prefix="c"):
    rng = np.random.default_rng(seed)
    return [
        ClientData(rng.random((8 + i, FEATURES), dtype=np.float32), rng.integers(0, CLASSES, 8 + i),
                   batch_size=4, client_id=f"{prefix}{i}")
        for i in range(n)
    ]


def _model_fn():
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(CLASSES, activation="softmax")])
    return learning.from_keras_model(model, loss="sparse_categorical_crossentropy", metrics=["sparse_categorical_accuracy"])


def _process(client_lr=0.5, server=None, seed=3):
    return learning.build_weighted_fed_avg(_model_fn, learning.optimizer_fn("sgd", client_lr), server,
                                           seed=seed, executor=executors.serial())


def _weights(state):
    return [np.asarray(w) for w in state.model.trainable] + [np.asarray(w) for w in state.model.non_trainable]


def _same(a, b):
    return all(np.array_equal(x, y) for x, y in zip(_weights(a), _weights(b), strict=True))


class _Spy:
    """The process, recording the clients of every round (and failing in round `fail_at`)."""

    def __init__(self, process, fail_at=None):
        self.process, self.rounds, self.fail_at = process, [], fail_at
        self.seed, self.aggregator = process.seed, process.aggregator

    def __getattr__(self, name):
        return getattr(self.process, name)

    def next(self, state, clients):
        if state.round_num + 1 == self.fail_at:
            raise FedValueError(f"round {self.fail_at}: made to fail")
        self.rounds.append([c.client_id for c in clients])
        return self.process.next(state, clients)


def test_rows_and_validation_columns_equal_the_rounds_by_hand():
    train, held_out = _clients(), _clients(2, seed=9, prefix="v")
    process = _process()
    history = learning.fit(process, train, 2, validation_data=held_out)
    assert isinstance(history, learning.History) and history.best_round is None and history.events == ()
    state = process.initialize()
    for row in history.rows:
        state, metrics = process.next(state, train)
        val = process.evaluate(state, held_out)
        assert list(row) == ["round", *metrics, "val_sparse_categorical_accuracy", "val_loss", "seconds"]
        assert row["round"] == state.round_num
        assert {k: row[k] for k in metrics} == metrics
        assert row["val_loss"] == val["loss"] and row["val_sparse_categorical_accuracy"] == val["sparse_categorical_accuracy"]
        assert row["seconds"] > 0
    assert _same(history.state, state) and history.last_state is history.state
    # Held-out data that does not fit the model is refused before any round trains.
    spy = _Spy(process)
    wrong = [ClientData(np.zeros((4, 5), np.float32), np.zeros(4, int), batch_size=4, client_id="w")]
    with pytest.raises(FedValueError, match=r"^validation_data: client 'w': x has feature shape \(5,\)"):
        learning.fit(spy, train, 1, validation_data=wrong)
    assert spy.rounds == []


@pytest.mark.parametrize("sampling", ["uniform", "poisson"])
def test_clients_are_sampled_per_round_as_sample_clients_draws_them(sampling):
    train = _clients(10)
    spy = _Spy(_process(seed=5))
    draw = learning.sample_clients if sampling == "uniform" else learning.sample_clients_poisson
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", learning.RoundSkippedWarning)
        history = learning.fit(spy, train, 4, clients_per_round=3, sampling=sampling, seed=11)
    expected = [[c.client_id for c in draw(train, 0.3, seed=11, round_num=r)] for r in range(1, 5)]
    assert spy.rounds == [e for e in expected if e]
    assert len(set(map(tuple, spy.rounds))) > 1  # the sample changes from round to round
    if sampling == "uniform":
        assert [r["num_clients"] for r in history.rows] == [3.0] * 4
    # The process's seed is the default sampling seed.
    again = _Spy(_process(seed=11))
    learning.fit(again, train, 2, clients_per_round=3)
    assert again.rounds == [[c.client_id for c in learning.sample_clients(train, 0.3, seed=11, round_num=r)] for r in (1, 2)]


def test_an_empty_poisson_sample_skips_the_round_with_an_event():
    train = _clients(4)
    # A seed whose round-2 Poisson draw (rate 1/4) is empty and round 1's is not.
    seed = next(s for s in range(200) if learning.sample_clients_poisson(train, 0.25, seed=s, round_num=1)
                and not learning.sample_clients_poisson(train, 0.25, seed=s, round_num=2)
                and learning.sample_clients_poisson(train, 0.25, seed=s, round_num=3))
    spy = _Spy(_process())
    with pytest.warns(learning.RoundSkippedWarning, match=r"^Round 2 sampled no client \(Poisson sampling\); it was skipped\.$"):
        history = learning.fit(spy, train, 3, clients_per_round=1, sampling="poisson", seed=seed)
    assert history.events[0] == {"round": 2, "event": "skipped",
                                 "message": "Round 2 sampled no client (Poisson sampling); it was skipped."}
    # Two rounds trained; the third draws for round 3, not round 2's empty sample again.
    assert [r["round"] for r in history.rows] == [1, 2]
    assert spy.rounds[1] == [c.client_id for c in learning.sample_clients_poisson(train, 0.25, seed=seed, round_num=3)]


def test_early_stopping_stops_at_the_right_round_with_the_best_state():
    train = _clients()
    # Server learning rate 5 overshoots: the loss rises after the first rounds.
    process = _process(server=learning.optimizer_fn("sgd", 5.0))
    full = learning.fit(process, train, 8)
    losses = full.column("loss")
    best = int(np.argmin(losses)) + 1
    assert best < 7
    lines = []
    stopped = learning.fit(process, train, 8, patience=2, callbacks=[learning.ProgressLines(lines.append)])
    assert stopped.best_round == best
    assert len(stopped.rows) == best + 2 and stopped.last_state.round_num == best + 2
    assert stopped.state.round_num == best
    assert _same(stopped.state, learning.fit(process, train, best).state)
    assert stopped.events[-1]["event"] == "early_stopping"
    assert lines[-1] == f"early stopping: loss has not improved for 2 rounds (best {losses[best - 1]:.4f} in round {best})"
    assert len(lines) == best + 3
    last = learning.fit(process, train, 8, patience=2, restore_best=False)
    assert last.state is last.last_state and last.state.round_num == best + 2
    # Accuracy must rise: watched on the same run it stops where accuracy stops improving.
    acc = learning.fit(process, train, 8, patience=1, monitor="sparse_categorical_accuracy")
    values = acc.column("sparse_categorical_accuracy")
    assert values[-1] <= max(values[:-1]) and acc.best_round == int(np.argmax(values)) + 1
    with pytest.raises(FedValueError, match=r'^`monitor` "auc" is not a metric of the round \(sparse_categorical_accuracy, loss'):
        learning.fit(process, train, 2, patience=1, monitor="auc")


def test_checkpoint_every_round_and_resume_bit_for_bit(tmp_path):
    train = _clients(8)
    process = _process(server=learning.optimizer_fn("sgd", 1.0, momentum=0.9))
    kw = dict(clients_per_round=3, seed=7, patience=3)
    straight = learning.fit(process, train, 5, checkpoint_dir=tmp_path / "straight", **kw)

    class Stop:
        def on_round_end(self, round_num, row, state):
            if round_num == 2:
                raise KeyboardInterrupt

    run = tmp_path / "run"
    with pytest.raises(learning.FitInterrupted) as caught:
        learning.fit(process, train, 5, checkpoint_dir=run, callbacks=[Stop()], **kw)
    assert [r["round"] for r in caught.value.history.rows] == [1, 2]
    saved = learning.load_state(run / "state.fedr", process)
    assert saved.round_num == 2 and _same(saved, caught.value.history.last_state)
    with open(run / "history.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [float(r["loss"]) for r in table] == [r["loss"] for r in straight.rows[:2]]
    assert json.loads((run / "fit.json").read_text())["round_num"] == 2
    resumed = learning.fit(process, train, 5, checkpoint_dir=run, resume=True, **kw)
    assert _same(resumed.last_state, straight.last_state) and _same(resumed.state, straight.state)
    strip = [{k: v for k, v in r.items() if k != "seconds"} for r in straight.rows]
    assert [{k: v for k, v in r.items() if k != "seconds"} for r in resumed.rows] == strip
    assert resumed.best_round == straight.best_round
    # A finished run resumed again trains nothing; resume without a checkpoint starts afresh.
    assert _same(learning.fit(process, train, 5, checkpoint_dir=run, resume=True, **kw).last_state, straight.last_state)
    fresh = learning.fit(process, train, 1, checkpoint_dir=tmp_path / "new", resume=True, **kw)
    assert fresh.rows[0]["loss"] == straight.rows[0]["loss"]
    with pytest.raises(FedValueError, match=r"^state: give `state` or resume from `checkpoint_dir`, not both"):
        learning.fit(process, train, 5, state=process.initialize(), checkpoint_dir=run, resume=True, **kw)
    with pytest.raises(FedValueError, match=r"^resume: needs `checkpoint_dir`"):
        learning.fit(process, train, 5, resume=True)


def test_a_failed_round_raises_with_the_finished_rounds():
    train = _clients()
    spy = _Spy(_process(), fail_at=3)
    with pytest.raises(learning.FitError, match=r"^Round 3 failed: ValueError: round 3: made to fail\nRounds 1-2 finished") as caught:
        learning.fit(spy, train, 5, patience=5)
    err = caught.value
    assert err.round_num == 3 and isinstance(err.cause, FedValueError) and err.__cause__ is err.cause
    assert [r["round"] for r in err.history.rows] == [1, 2]
    assert err.history.state.round_num == 2 and err.history.state is err.history.last_state
    assert _same(err.history.state, learning.fit(_process(), train, 2).state)
    assert err.history.events[-1]["event"] == "failed"
    # Nothing finished: the state passed in is the history's.
    start = spy.initialize()
    with pytest.raises(learning.FitError, match="No round of this call finished") as none:
        learning.fit(_Spy(_process(), fail_at=1), train, 2, state=start)
    assert none.value.history.rows == () and none.value.history.state is start


def test_bad_arguments_name_the_argument():
    train, process = _clients(3), _process()
    with pytest.raises(FedValueError, match=r"^rounds: expected an integer >= 1, got 0"):
        learning.fit(process, train, 0)
    with pytest.raises(FedValueError, match=r"^patience: expected an integer >= 1, got 0"):
        learning.fit(process, train, 1, patience=0)
    with pytest.raises(FedValueError, match=r"^`clients_per_round` \(4\) must not exceed the number of clients \(3\)\."):
        learning.fit(process, train, 1, clients_per_round=4)
    with pytest.raises(FedValueError, match=r"^sampling: expected 'uniform' or 'poisson', got 'fixed'"):
        learning.fit(process, train, 1, sampling="fixed")
    with pytest.raises(FedValueError, match=r"^`monitor` needs `patience`"):
        learning.fit(process, train, 1, monitor="loss")
    with pytest.raises(FedValueError, match=r'^`monitor` is "val_loss" but no `validation_data` was given'):
        learning.fit(process, train, 1, patience=1, monitor="val_loss")
    with pytest.raises(FedValueError, match=r"^train: expected at least one client"):
        learning.fit(process, [], 1)


def test_the_dp_sampling_check_runs_before_training_and_names_train():
    from fedr import privacy

    train = _clients(5)
    dp = privacy.gaussian_fixed(1.0, 2, 0.5, population_size=6, target_delta=1e-5)
    spy = _Spy(learning.build_weighted_fed_avg(_model_fn, learning.optimizer_fn("sgd", 0.1), aggregator=dp, seed=1))
    with pytest.raises(FedValueError, match=r"^train: the run samples from 5 clients but the aggregator accounts population_size = 6"):
        learning.fit(spy, train, 1, clients_per_round=2)
    with pytest.raises(FedValueError, match=r"^sampling: the run samples clients by 'all'"):
        learning.fit(spy, train, 1)
    assert spy.rounds == []


def test_round_line_as_r_printed_it():
    metrics = {"sparse_categorical_accuracy": 0.69491, "loss": 0.88934, "num_examples": 600.0, "num_clients": 3.0,
               "num_clients_dropped": 1.0, "num_clients_failed": 2.0, "dp_noise_stddev": 0.1, "val_loss": float("nan")}
    assert learning.round_line(2, metrics, 0.054) == (
        "round   2  accuracy 0.6949  loss 0.8893  val_loss NaN  (0.05 s)  [1 client dropped]  [2 clients failed]"
    )
    assert learning.round_line(12, {"binary_accuracy": 1.0}, 1.5, width=1) == "round 12  accuracy 1.0000  (1.50 s)"
