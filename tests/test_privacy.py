"""Differential privacy: clipping, noise, adaptive clipping (Andrew et al. 2021), accounting with dp-accounting."""

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pytest

dp_accounting = pytest.importorskip("dp_accounting")
keras = pytest.importorskip("keras")

from fedr import aggregators, learning, privacy  # noqa: E402
from fedr.datasets import ClientData  # noqa: E402


@dataclass
class Out:
    client_id: str
    delta: object
    num_examples: int = 1


def _run(agg, deltas, state=None, seed=0):
    """One round of the aggregator alone on the given client deltas."""
    state = agg.init() if state is None else state
    ids = [f"c{i}" for i in range(len(deltas))]
    ctx = agg.start_round(state, ids, seed=np.random.SeedSequence(seed))
    outs = [Out(i, agg.client_step(state, np.asarray(d, np.float32), client_id=i, num_examples=1, context=ctx))
            for i, d in zip(ids, deltas)]
    return agg.aggregate(state, outs, seed=np.random.SeedSequence([seed, 1]), context=ctx)


# --- accounting -----------------------------------------------------------------------------


def test_epsilon_is_dp_accountings():
    # Poisson sampling (sampling="poisson"); fixed-size and all-client sampling in test_dp_sampling.py.
    assert privacy.epsilon(1.1, 1, 100, 200, 1e-5, sampling="poisson") == pytest.approx(1.0577, abs=1e-4)
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.PoissonSampledDpEvent(10 / 1000, dp_accounting.GaussianDpEvent(0.8)), 50)
    assert privacy.epsilon(0.8, 10, 1000, 50, 1e-6, sampling="poisson") == pytest.approx(
        accountant.get_epsilon(1e-6), rel=1e-12)
    assert privacy.epsilon(0.8, 10, 1000, 0, 1e-6) == 0.0
    with pytest.raises(ValueError, match=r"^sampling: expected one of 'poisson', 'fixed' or 'all', got 'uniform'$"):
        privacy.epsilon(1.0, 10, 100, 3, 1e-5, sampling="uniform")
    with pytest.raises(ValueError, match=r"population_size: expected at least clients_per_round \(10\) clients, got 5"):
        privacy.epsilon(1.0, 10, 5, 3, 1e-5)
    with pytest.raises(ValueError, match=r"target_delta: expected a finite number in \(0, 1\), got 1.5"):
        privacy.epsilon(1.0, 10, 100, 3, 1.5)
    with pytest.raises(ValueError, match=r"noise_multiplier: expected a finite number > 0, got 0"):
        privacy.epsilon(0, 10, 100, 3, 1e-5)


# --- clipping and noise ---------------------------------------------------------------------


def test_whole_update_is_clipped_to_the_clip():
    agg = privacy.gaussian_fixed(0.0, 2, clip=1.0)
    state = agg.init()
    big = np.array([3.0, 4.0], np.float32)  # norm 5
    small = np.array([0.3, 0.4], np.float32)  # norm 0.5
    clipped = agg.client_step(state, big)
    np.testing.assert_allclose(clipped.vector, [0.6, 0.8], rtol=1e-6)
    assert clipped.norm == pytest.approx(5.0) and not clipped.unclipped
    kept = agg.client_step(state, small)
    np.testing.assert_array_equal(kept.vector, small)
    assert kept.unclipped
    # No noise: (clipped sum) / clients_per_round, unweighted.
    result = _run(agg, [big, small])
    np.testing.assert_allclose(result.update, [(0.6 + 0.3) / 2, (0.8 + 0.4) / 2], rtol=1e-6)
    assert result.metrics == {"clip": 1.0, "dp_noise_stddev": 0.0}


def test_noise_standard_deviation_is_noise_multiplier_times_clip():
    z, clip, n = 1.3, 0.5, 4
    agg = privacy.gaussian_fixed(z, n, clip=clip)
    result = _run(agg, [np.zeros(200_000, np.float32)] * n, seed=3)
    measured = float(np.std(result.update.astype(np.float64) * n))
    assert measured == pytest.approx(z * clip, rel=0.01)
    assert result.metrics["dp_noise_stddev"] == pytest.approx(z * clip)
    # Where the noise comes from (the OS, or noise_seed for tests): test_dp_noise.py.


# --- adaptive clipping ----------------------------------------------------------------------


def test_adaptive_clip_grows_when_most_updates_are_clipped_and_shrinks_when_few_are():
    agg = privacy.gaussian_adaptive(0.0, 4, initial_clip=1.0, target_quantile=0.5, clip_learning_rate=0.2)
    large = [np.full(4, 10.0, np.float32)] * 4  # every update clipped: b = 0
    grown = _run(agg, large)
    new_clip = float(dict(grown.state)["clip"])
    assert new_clip == pytest.approx(math.exp(-0.2 * (0.0 - 0.5)))  # > 1
    assert grown.metrics["dp_unclipped_fraction"] == 0.0
    tiny = [np.full(4, 0.01, np.float32)] * 4  # none clipped: b = 1
    shrunk = _run(agg, tiny)
    assert float(dict(shrunk.state)["clip"]) == pytest.approx(math.exp(-0.2 * (1.0 - 0.5)))  # < 1
    # Three of four fit under the clip: b = 0.75.
    mixed = _run(agg, tiny[:3] + large[:1])
    assert float(dict(mixed.state)["clip"]) == pytest.approx(math.exp(-0.2 * 0.25))
    # The clip of the next round is the new one.
    second = _run(agg, large, state=grown.state)
    assert second.metrics["clip"] == pytest.approx(new_clip)
    assert dict(second.state)["rounds"] == 2


def test_adaptive_noise_is_raised_and_needs_z_below_two_sigma():
    agg = privacy.gaussian_adaptive(1.0, 10, clipped_count_stddev=1.0)
    assert agg.update_noise_multiplier == pytest.approx((1.0**-2 - 2.0**-2) ** -0.5)
    assert privacy.gaussian_adaptive(0.5, 100).clipped_count_stddev == 5.0
    with pytest.raises(ValueError, match=r"noise_multiplier: 1 must be below 2 \* clipped_count_stddev = 1 for adaptive clipping"):
        privacy.gaussian_adaptive(1.0, 10)  # sigma_b = 10 / 20
    result = _run(agg, [np.zeros(100_000, np.float32)] * 10, seed=1)
    measured = float(np.std(result.update.astype(np.float64) * 10))
    assert measured == pytest.approx(agg.update_noise_multiplier * 0.1, rel=0.02)


# --- in training ----------------------------------------------------------------------------


def _clients(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [ClientData(rng.random((8, 6), np.float32), rng.integers(0, 3, 8), batch_size=4, client_id=f"p{i}")
            for i in range(n)]


def _model_fn(batchnorm=False):
    def fn():
        layers = [keras.Input((6,))]
        if batchnorm:
            layers.append(keras.layers.BatchNormalization())
        layers.append(keras.layers.Dense(3, activation="softmax"))
        return learning.from_keras_model(keras.Sequential(layers), "sparse_categorical_crossentropy")

    return fn


def test_dp_round_reports_epsilon_and_clip_and_repeats_with_a_seed():
    agg = privacy.gaussian_fixed(1.1, 4, 0.5, population_size=400, target_delta=1e-5)
    runs = []
    for _ in range(2):
        # Repeating a DP run bit for bit needs reproducible noise: noise_seed (for tests only).
        with pytest.warns(privacy.ReproducibleNoiseWarning):
            dp = privacy.gaussian_fixed(1.1, 4, 0.5, population_size=400, target_delta=1e-5, noise_seed=9)
        process = learning.build_weighted_fed_avg(
            _model_fn(), learning.optimizer_fn("sgd", 0.1), seed=9, workers=2, aggregator=dp,
        )
        state = process.initialize()
        history = []
        for _ in range(3):
            state, metrics = process.next(state, _clients())
            history.append(metrics)
        runs.append((state, history))
    np.testing.assert_array_equal(runs[0][0].flat_weights, runs[1][0].flat_weights)
    for r, metrics in enumerate(runs[0][1], start=1):
        assert metrics["epsilon"] == pytest.approx(privacy.epsilon(1.1, 4, 400, r, 1e-5))
        assert metrics["clip"] == 0.5
    assert runs[0][1][0]["epsilon"] < runs[0][1][2]["epsilon"]
    assert agg.epsilon_after(3) == runs[0][1][2]["epsilon"]


def test_without_noise_a_huge_clip_is_the_unweighted_mean():
    clients = _clients()
    dp = learning.build_weighted_fed_avg(
        _model_fn(), learning.optimizer_fn("sgd", 0.1), seed=1, workers=1,
        aggregator=privacy.gaussian_fixed(0.0, 4, 1e6),
    )
    plain = learning.build_weighted_fed_avg(
        _model_fn(), learning.optimizer_fn("sgd", 0.1), seed=1, workers=1,
        aggregator=aggregators.mean(weighted=False),
    )
    a, _ = dp.next(dp.initialize(), clients)
    b, _ = plain.next(plain.initialize(), clients)
    np.testing.assert_allclose(a.flat_weights, b.flat_weights, rtol=1e-6, atol=1e-7)


def test_max_epsilon_refuses_a_round_before_any_client_trains():
    steps = []

    class Counting(aggregators.Sum):
        def client_step(self, state, delta, **kwargs):
            steps.append(1)
            return delta

    budget = privacy.epsilon(1.0, 4, 40, 2, 1e-5)
    agg = privacy.gaussian_fixed(1.0, 4, 0.5, population_size=40, target_delta=1e-5,
                                 max_epsilon=budget * 1.0001, inner=Counting())
    process = learning.build_weighted_fed_avg(_model_fn(), learning.optimizer_fn("sgd", 0.1), seed=2,
                                              workers=1, aggregator=agg)
    state = process.initialize()
    for _ in range(2):
        state, metrics = process.next(state, _clients())
    assert len(steps) == 8 and metrics["epsilon"] <= budget * 1.0001
    with pytest.raises(ValueError, match=r"round 3: it would spend epsilon = \d+\.\d{4}, over max_epsilon = .*refused before any client trained and the state is unchanged \(2 rounds spent epsilon"):
        process.next(state, _clients())
    assert len(steps) == 8
    with pytest.raises(ValueError, match=r"max_epsilon: needs population_size and target_delta"):
        privacy.gaussian_fixed(1.0, 4, 0.5, max_epsilon=1.0)


def test_non_trainable_variables_are_not_aggregated_under_dp_and_a_warning_says_so():
    with pytest.warns(UserWarning, match=r"does not aggregate non-trainable variables \(sequential/batch_normalization/moving_mean, sequential/batch_normalization/moving_variance\)"):
        process = learning.build_weighted_fed_avg(
            _model_fn(batchnorm=True), learning.optimizer_fn("sgd", 0.1), workers=1,
            aggregator=privacy.gaussian_fixed(0.5, 4, 1.0),
        )
    start = process.initialize()
    new, _ = process.next(start, _clients())
    for before, after in zip(start.model.non_trainable, new.model.non_trainable):
        np.testing.assert_array_equal(before, after)
    assert not np.array_equal(start.flat_weights, new.flat_weights)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        learning.build_weighted_fed_avg(_model_fn(), learning.optimizer_fn("sgd", 0.1), workers=1,
                                        aggregator=privacy.gaussian_fixed(0.5, 4, 1.0))


def test_arguments_are_named():
    with pytest.raises(ValueError, match=r"clip: expected a finite number > 0, got 0"):
        privacy.gaussian_fixed(1.0, 4, 0)
    with pytest.raises(ValueError, match=r"clients_per_round: expected an integer >= 1, got 0"):
        privacy.gaussian_fixed(1.0, 0, 1.0)
    with pytest.raises(ValueError, match=r"target_quantile: expected a finite number in \[0, 1\], got 2"):
        privacy.gaussian_adaptive(0.1, 10, target_quantile=2)
    with pytest.raises(TypeError, match=r"inner: expected a sum such as fedr.aggregators.sum\(\)"):
        privacy.gaussian_fixed(1.0, 4, 1.0, inner="secure")
    with pytest.raises(ValueError, match=r"noise_multiplier: expected a finite number >= 0, got nan"):
        privacy.gaussian_fixed(float("nan"), 4, 1.0)


def test_poisson_sampling_is_seeded_per_round():
    population = list(range(1000))
    a = learning.sample_clients_poisson(population, 0.05, seed=3, round_num=1)
    assert a == learning.sample_clients_poisson(population, 0.05, seed=3, round_num=1)
    assert a != learning.sample_clients_poisson(population, 0.05, seed=3, round_num=2)
    sizes = [len(learning.sample_clients_poisson(population, 0.05, seed=3, round_num=r)) for r in range(200)]
    assert np.mean(sizes) == pytest.approx(50, rel=0.05)
    assert len(set(sizes)) > 5
    with pytest.raises(ValueError, match=r"rate: expected a number in \(0, 1\], got 0"):
        learning.sample_clients_poisson(population, 0)


def test_plain_sum_is_the_sum():
    rng = np.random.default_rng(0)
    deltas = [rng.normal(size=1000).astype(np.float32) for _ in range(5)]
    result = _run(aggregators.sum(), deltas)
    np.testing.assert_allclose(result.update, np.sum(np.stack(deltas).astype(np.float64), axis=0), rtol=1e-6, atol=1e-6)
    assert repr(aggregators.sum()) == "sum()"


def test_adaptive_epsilon_accounts_the_composed_multiplier_not_the_raised_one():
    # Andrew et al. 2021, Theorem 1: update noise z_delta and count noise sigma_b together
    # are as private as one Gaussian with z; accounting z_delta alone would understate epsilon.
    agg = privacy.gaussian_adaptive(0.8, 4, clipped_count_stddev=1.0, population_size=40, target_delta=1e-5)
    result = _run(agg, [np.ones(10, np.float32)] * 4)
    assert result.metrics["epsilon"] == pytest.approx(privacy.epsilon(0.8, 4, 40, 1, 1e-5))
    assert result.metrics["epsilon"] > privacy.epsilon(agg.update_noise_multiplier, 4, 40, 1, 1e-5)
