"""What DP releases: noise nobody can predict, seeds a node cannot invert, only metrics the guarantee covers.

Issue 17 items 3 and 4, and issue 18's "composition that cannot be right"
(differential privacy needs a sum as its inner aggregator).
"""

import hashlib
import hmac
import struct
import warnings

import numpy as np
import pytest

pytest.importorskip("dp_accounting")
keras = pytest.importorskip("keras")

from fedr import _seeds, aggregators, learning, privacy  # noqa: E402
from fedr.datasets import ClientData  # noqa: E402
from fedr.errors import FedTypeError, FedValueError  # noqa: E402
from fedr.learning.process import _client_seeds  # noqa: E402


class _Out:
    def __init__(self, client_id, delta):
        self.client_id, self.delta, self.num_examples = client_id, delta, 1


def _release(agg, state, deltas, seed):
    """One release from ``state``, with the process seed's round streams fixed (``seed``)."""
    ids = [f"c{i}" for i in range(len(deltas))]
    ctx = agg.start_round(state, ids, seed=np.random.SeedSequence([seed, 0]))
    outs = [_Out(i, agg.client_step(state, d, client_id=i, context=ctx)) for i, d in zip(ids, deltas)]
    return agg.aggregate(state, outs, seed=np.random.SeedSequence([seed, 1]), context=ctx).update


# --- item 3: noise from the OS ------------------------------------------------------------------


def test_two_releases_from_the_same_state_and_cohort_differ_in_their_noise():
    z, clip, k = 1.0, 0.5, 4
    agg = privacy.gaussian_fixed(z, k, clip)
    state = agg.init()
    deltas = [np.full(20_000, 0.01, np.float32)] * k
    a, b = _release(agg, state, deltas, seed=42), _release(agg, state, deltas, seed=42)
    # Independent noise: the difference of the two (times k) has std sqrt(2) z C, not 0.
    diff = (a.astype(np.float64) - b) * k
    assert float(np.std(diff)) == pytest.approx(np.sqrt(2) * z * clip, rel=0.03)
    # Adaptive clipping's count noise too (sigma_b = 2 over 4 clients). Every update fits the clip, so the
    # fraction is 1 + N(0, 2) / 4 clamped to [0, 1]: a draw is below 1 with probability 1/2, and 20 draws
    # all at 1 have probability 1e-6 (with 5 draws, 3%: it failed so once here).
    adaptive = privacy.gaussian_adaptive(1.0, 4, clipped_count_stddev=2.0)
    fractions = {_round_fraction(adaptive) for _ in range(20)}
    assert len(fractions) > 1


def _round_fraction(agg):
    state = agg.init()
    ids = ["a", "b", "c", "d"]
    ctx = agg.start_round(state, ids)
    outs = [_Out(i, agg.client_step(state, np.full(3, 0.01, np.float32), context=ctx)) for i in ids]
    return agg.aggregate(state, outs, seed=np.random.SeedSequence(1), context=ctx).metrics["dp_unclipped_fraction"]


def test_noise_seed_makes_the_noise_reproducible_and_warns_that_it_voids_the_guarantee():
    with pytest.warns(privacy.ReproducibleNoiseWarning,
                      match=r"^noise_seed = 5: the DP noise is reproducible, so anyone who knows or guesses the seed "
                            r"can remove it; this voids the differential privacy guarantee \(use it for tests only\)$"):
        agg = privacy.gaussian_fixed(1.0, 4, 0.5, noise_seed=5)
    assert issubclass(privacy.ReproducibleNoiseWarning, UserWarning)
    assert repr(agg) == "gaussian_fixed(noise_multiplier=1, clients_per_round=4, clip=0.5, noise_seed=5, inner=sum())"
    state = agg.init()
    deltas = [np.full(1000, 0.01, np.float32)] * 4
    np.testing.assert_array_equal(_release(agg, state, deltas, 1), _release(agg, state, deltas, 2))
    with pytest.raises(FedValueError, match=r"^noise_seed: expected a non-negative integer or None, got -1$"):
        privacy.gaussian_fixed(1.0, 4, 0.5, noise_seed=-1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning without noise_seed
        privacy.gaussian_adaptive(0.5, 10, clipped_count_stddev=1.0)


def _clients(n=4):
    rng = np.random.default_rng(0)
    return [ClientData(rng.random((8, 6), np.float32), rng.integers(0, 3, 8), batch_size=4, client_id=f"p{i}")
            for i in range(n)]


def _model_fn(dropout=False):
    def fn():
        layers = [keras.Input((6,)), keras.layers.Dense(5)]
        if dropout:
            layers.append(keras.layers.Dropout(0.4))
        layers.append(keras.layers.Dense(3, activation="softmax"))
        return learning.from_keras_model(keras.Sequential(layers), "sparse_categorical_crossentropy",
                                         metrics=["sparse_categorical_accuracy"])

    return fn


def test_a_seeded_dp_run_repeats_its_learning_but_not_its_noise():
    def run(z):
        process = learning.build_weighted_fed_avg(_model_fn(dropout=True), learning.optimizer_fn("sgd", 0.1), seed=42,
                                                  workers=1, aggregator=privacy.gaussian_fixed(z, 4, 0.5))
        return process.next(process.initialize(), _clients())[0].flat_weights

    np.testing.assert_array_equal(run(0.0), run(0.0))  # Dropout and initial weights: from the seed
    noisy = run(1.0), run(1.0)
    assert not np.array_equal(*noisy)  # the noise: from the OS, whatever the seed


def test_client_seeds_are_hmac_keyed_by_the_server_and_deterministic():
    base, round_num = 42, 3
    seeds = _client_seeds(base, round_num, ["a", "b", "a"])
    key = _seeds.server_key(base)
    assert len(key) == 32 and key == _seeds.server_key(base) and key != _seeds.server_key(43)
    for seed, (client, repeat) in zip(seeds, [("a", 0), ("b", 0), ("a", 1)]):
        message = struct.pack(">QQ", round_num, repeat) + hashlib.sha256(client.encode()).digest()
        entropy = int.from_bytes(hmac.new(key, message, hashlib.sha256).digest(), "big")
        assert seed.entropy == entropy
    # Not the old public derivation (seed, CLIENT, round, client key, repeat), which a node could brute-force.
    old = _seeds.derive(base, _seeds.CLIENT, round_num, _seeds.client_key("a"), 0)
    assert not np.array_equal(seeds[0].generate_state(4), old.generate_state(4))
    # Deterministic: the same seed gives the same words (what a Flower node receives) on any run.
    again = _client_seeds(base, round_num, ["a", "b", "a"])
    assert [s.generate_state(4).tolist() for s in seeds] == [s.generate_state(4).tolist() for s in again]


# --- item 4: released metrics -------------------------------------------------------------------


def test_a_dp_round_does_not_release_exact_training_metrics():
    clients = _clients()
    plain = learning.build_weighted_fed_avg(_model_fn(), learning.optimizer_fn("sgd", 0.1), seed=1, workers=1)
    _, metrics = plain.next(plain.initialize(), clients)
    assert metrics["num_examples"] == 32 and {"loss", "sparse_categorical_accuracy"} <= set(metrics)
    exact = {"loss", "num_examples", "sparse_categorical_accuracy"}
    for agg, counted in [
        (privacy.gaussian_fixed(1.0, 4, 0.5, population_size=40, target_delta=1e-5), True),
        (privacy.gaussian_adaptive(0.5, 4, clipped_count_stddev=1.0), True),
        (privacy.gaussian_fixed(1.0, 4, 0.5, sampling="poisson"), False),
        (privacy.gaussian_fixed(1.0, 4, 0.5, inner=privacy.secure_sum(clip_range=0.5)), True),
    ]:
        process = learning.build_weighted_fed_avg(_model_fn(), learning.optimizer_fn("sgd", 0.1), seed=1,
                                                  workers=1, aggregator=agg)
        _, dp_metrics = process.next(process.initialize(), clients)
        assert not exact & set(dp_metrics), (agg, dp_metrics)
        assert not [name for name in dp_metrics if "num_examples" in name]  # nor the inner sum's
        assert ("num_clients" in dp_metrics) == counted  # the cohort's size: public unless Poisson-sampled
        assert dp_metrics["num_clients_failed"] == 0 and dp_metrics["clip"] > 0
    assert aggregators.mean().released_metrics is None


# --- composition --------------------------------------------------------------------------------


def test_dp_refuses_an_inner_aggregator_that_is_not_a_sum():
    for inner, shown in [(aggregators.mean(), r"mean\(weighted=True\)"), (aggregators.median(), r"median\(\)"),
                         (privacy.secure_mean(), r"secure_mean\(")]:
        for build in (lambda i: privacy.gaussian_fixed(1.0, 4, 0.5, inner=i),
                      lambda i: privacy.gaussian_adaptive(0.5, 4, inner=i, clipped_count_stddev=1.0)):
            with pytest.raises(FedTypeError, match=r"^inner: expected a sum such as fedr.aggregators.sum\(\) or "
                                                   r"fedr.privacy.secure_sum\(\) \(differential privacy adds its "
                                                   rf"noise to the sum of the clipped updates\), got {shown}"):
                build(inner)
    assert aggregators.sum().is_sum and privacy.secure_sum().is_sum
    assert not aggregators.mean().is_sum and not privacy.secure_mean().is_sum
    assert privacy.gaussian_fixed(1.0, 4, 0.5, inner=privacy.secure_sum()).inner.is_sum
