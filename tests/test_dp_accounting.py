"""ε for the mechanism that runs: adaptive clipping's centred count, and the client sampling that happens.

Every expected ε here is computed by hand with dp-accounting from the
mechanism's sensitivities, not by fedr's accountant (issue 17, items 1 and 2).
"""

import logging
import math
import warnings

import numpy as np
import pytest

dp_accounting = pytest.importorskip("dp_accounting")
keras = pytest.importorskip("keras")

from fedr import learning, privacy  # noqa: E402
from fedr.datasets import ClientData  # noqa: E402
from fedr.errors import FedValueError  # noqa: E402

G = dp_accounting.GaussianDpEvent
REPLACE = dp_accounting.NeighboringRelation.REPLACE_ONE
ADD_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


def _by_hand(event, rounds, relation=ADD_REMOVE, delta=1e-5):
    logging.getLogger("absl").setLevel(logging.ERROR)
    accountant = dp_accounting.rdp.RdpAccountant(neighboring_relation=relation)
    accountant.compose(event, rounds)
    return accountant.get_epsilon(delta)


class _Out:
    def __init__(self, client_id, delta):
        self.client_id, self.delta, self.num_examples = client_id, delta, 1


def _round(agg, deltas, state=None):
    state = agg.init() if state is None else state
    ids = [f"c{i}" for i in range(len(deltas))]
    ctx = agg.start_round(state, ids)
    outs = [_Out(i, agg.client_step(state, np.asarray(d, np.float32), client_id=i, context=ctx))
            for i, d in zip(ids, deltas)]
    return agg.aggregate(state, outs, context=ctx)


def _seeded(build, **kwargs):
    with pytest.warns(privacy.ReproducibleNoiseWarning, match="voids the differential privacy guarantee"):
        return build(**kwargs)


# --- item 1: adaptive clipping ----------------------------------------------------------------


def test_adaptive_released_count_moves_by_half_when_one_client_is_added():
    # The same noise draws (noise_seed) for a cohort of 5 and of 6: the centred count
    # sum(b_i - 1/2) + noise moves by exactly 1/2 whether the new client fits under the clip or not.
    agg = _seeded(privacy.gaussian_adaptive, noise_multiplier=1.0, clients_per_round=10, clipped_count_stddev=1.0,
                  initial_clip=1.0, noise_seed=11)
    small, large = np.full(4, 0.1, np.float32), np.full(4, 3.0, np.float32)  # norms 0.2 and 6
    base = [small] * 3 + [large] * 2
    released = {}
    for name, cohort in {"five": base, "plus_unclipped": base + [small], "plus_clipped": base + [large]}.items():
        fraction = _round(agg, cohort).metrics["dp_unclipped_fraction"]
        assert 0 < fraction < 1  # not clamped, so the count is (fraction - 1/2) * clients_per_round
        released[name] = (fraction - 0.5) * 10
    assert released["plus_unclipped"] - released["five"] == pytest.approx(0.5, abs=1e-9)
    assert released["five"] - released["plus_clipped"] == pytest.approx(0.5, abs=1e-9)


def test_adaptive_noised_fraction_is_always_in_zero_one():
    # Large count noise (sigma_b = 2 over 10 clients): unclamped, b-bar would leave [0, 1] often.
    agg = privacy.gaussian_adaptive(1.0, 10, clipped_count_stddev=2.0, initial_clip=1.0)
    fractions = []
    for unclipped in (0, 10):
        cohort = [np.full(2, 0.01 if i < unclipped else 5.0, np.float32) for i in range(10)]
        fractions += [_round(agg, cohort).metrics["dp_unclipped_fraction"] for _ in range(60)]
    assert min(fractions) == 0.0 and max(fractions) == 1.0  # clamped, and reached
    assert all(0.0 <= f <= 1.0 for f in fractions)
    assert 0.0 < float(np.median(fractions[60:])) <= 1.0


def test_adaptive_epsilon_is_the_composed_mechanisms_by_hand():
    # Issue 17's numbers: z = 1, 20 clients per round of 1000, sigma_b = 1, 100 rounds, delta = 1e-5.
    z, k, population, sigma_b, rounds = 1.0, 20, 1000, 1.0, 100
    kwargs = dict(clipped_count_stddev=sigma_b, population_size=population, target_delta=1e-5)
    poisson = privacy.gaussian_adaptive(z, k, sampling="poisson", **kwargs)
    fixed = privacy.gaussian_adaptive(z, k, **kwargs)
    z_delta = poisson.update_noise_multiplier
    assert z_delta == pytest.approx((z**-2 - (2 * sigma_b) ** -2) ** -0.5)  # 1.1547
    # Add/remove one client: the sum moves by C (noise z_delta C), the centred count by 1/2 (noise sigma_b).
    both = dp_accounting.ComposedDpEvent([G(z_delta), G(sigma_b / 0.5)])
    expected = _by_hand(dp_accounting.PoissonSampledDpEvent(k / population, both), rounds)
    assert poisson.epsilon_after(rounds) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(1.843, abs=1e-3)
    # Replace one client (fixed-size samples): the sum moves by 2C, the centred count by 1.
    both = dp_accounting.ComposedDpEvent([G(z_delta / 2), G(sigma_b / 1.0)])
    expected = _by_hand(dp_accounting.SampledWithoutReplacementDpEvent(population, k, both), rounds, REPLACE)
    assert fixed.epsilon_after(rounds) == pytest.approx(expected, rel=1e-9)
    assert expected == pytest.approx(14.40, abs=0.01)
    # Before the fix the raw count (sensitivity 1) made the true epsilon 3.81 while 1.84 was reported:
    raw = dp_accounting.ComposedDpEvent([G(z_delta), G(sigma_b / 1.0)])
    assert _by_hand(dp_accounting.PoissonSampledDpEvent(k / population, raw), rounds) == pytest.approx(3.81, abs=0.01)
    # A round's metric is the same accounting.
    result = _round(fixed, [np.full(3, 0.05, np.float32)] * k)
    assert result.metrics["epsilon"] == pytest.approx(fixed.epsilon_after(1), rel=1e-12)


# --- item 2: the sampling that runs -----------------------------------------------------------


def test_readme_example_fixed_size_sampling_by_hand():
    # z = 1, 10 of 100 clients per round by sample_clients, 30 rounds, delta = 1e-5.
    expected = _by_hand(dp_accounting.SampledWithoutReplacementDpEvent(100, 10, G(1.0 / 2)), 30, REPLACE)
    assert expected == pytest.approx(32.27, abs=0.01)
    assert privacy.epsilon(1.0, 10, 100, 30, 1e-5) == pytest.approx(expected, rel=1e-12)  # "fixed" is the default
    dp = privacy.gaussian_fixed(1.0, 10, 0.5, population_size=100, target_delta=1e-5)
    assert dp.sampling == "fixed" and dp.epsilon_after(30) == pytest.approx(expected, rel=1e-12)
    # What fedr reported before (Poisson at q = 0.1): 4.85, now only with sampling="poisson".
    poisson = _by_hand(dp_accounting.PoissonSampledDpEvent(0.1, G(1.0)), 30)
    assert poisson == pytest.approx(4.848, abs=1e-3)
    assert privacy.epsilon(1.0, 10, 100, 30, 1e-5, sampling="poisson") == pytest.approx(poisson, rel=1e-12)


def test_every_client_every_round_by_hand():
    expected = _by_hand(G(1.0), 100)
    assert expected == pytest.approx(96.12, abs=0.01)
    assert privacy.epsilon(1.0, 100, 100, 100, 1e-5, sampling="all") == pytest.approx(expected, rel=1e-12)
    dp = privacy.gaussian_fixed(1.0, 100, 0.5, sampling="all", target_delta=1e-5)
    assert dp.population_size == 100 and dp.epsilon_after(100) == pytest.approx(expected, rel=1e-12)
    with pytest.raises(FedValueError, match=r"^population_size: sampling = 'all' trains every client every round, "
                                            r"so it must equal clients_per_round \(10\), got 100$"):
        privacy.gaussian_fixed(1.0, 10, 0.5, sampling="all", population_size=100)


def _clients(n):
    rng = np.random.default_rng(0)
    return [ClientData(rng.random((8, 6), np.float32), rng.integers(0, 3, 8), batch_size=4, client_id=f"p{i}")
            for i in range(n)]


def _model_fn():
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
    return learning.from_keras_model(model, "sparse_categorical_crossentropy")


def test_a_cohort_the_sampling_cannot_produce_is_refused_before_anyone_trains():
    process = learning.build_weighted_fed_avg(
        _model_fn, learning.optimizer_fn("sgd", 0.1), seed=1, workers=1,
        aggregator=privacy.gaussian_fixed(1.0, 10, 0.5, population_size=100, target_delta=1e-5),
    )
    state = process.initialize()
    with pytest.raises(FedValueError, match=r"^client_ids: round 1 has 11 clients, more than clients_per_round = 10; "
                                            r"the aggregator accounts sampling = 'fixed' \(a uniform sample of 10 "
                                            r"clients per round\), so the round was refused before any client trained"):
        process.next(state, _clients(11))
    new, metrics = process.next(state, _clients(10))  # 10 is fine, and so are fewer
    assert new.round_num == 1 and metrics["num_clients"] == 10
    assert process.next(new, _clients(7))[1]["num_clients"] == 7
    every = privacy.gaussian_fixed(1.0, 10, 0.5, sampling="all")
    with pytest.raises(FedValueError, match=r"^client_ids: round 1 has 9 clients, but the aggregator accounts "
                                            r"sampling = 'all' \(every one of the population's 10 clients"):
        every.start_round(every.init(), [f"c{i}" for i in range(9)])
    with pytest.raises(FedValueError, match=r"^client_ids: round 1 lists c1 more than once; under differential "
                                            r"privacy a client takes part at most once per round"):
        every.start_round(every.init(), ["c0", "c1", "c1"])
    poisson = privacy.gaussian_fixed(1.0, 10, 0.5, sampling="poisson", population_size=12)
    poisson.start_round(poisson.init(), [f"c{i}" for i in range(12)])  # any size up to the population
    with pytest.raises(FedValueError, match=r"round 1 has 13 clients, more than population_size = 12"):
        poisson.start_round(poisson.init(), [f"c{i}" for i in range(13)])


def test_check_sampling_refuses_a_run_that_samples_otherwise():
    dp = privacy.gaussian_fixed(1.0, 10, 0.5, population_size=100, target_delta=1e-5)
    privacy.check_sampling(dp, "fixed", 10, 100)
    with pytest.raises(FedValueError, match=r"^sampling: the run samples clients by 'all' but the aggregator "
                                            r"gaussian_fixed\(.*\) accounts sampling = 'fixed', so its epsilon "
                                            r"would be wrong; build it with sampling = 'all'$"):
        privacy.check_sampling(dp, "all", 100, 100)
    with pytest.raises(FedValueError, match=r"^clients_per_round: the run trains 5 clients per round but the "
                                            r"aggregator's clients_per_round \(its divisor and its accounting\) is 10$"):
        privacy.check_sampling(dp, "fixed", 5, 100)
    with pytest.raises(FedValueError, match=r"^population_size: the run samples from 50 clients but the aggregator "
                                            r"accounts population_size = 100$"):
        privacy.check_sampling(dp, "fixed", 10, 50)
    with pytest.raises(FedValueError, match=r"^sampling: expected one of 'poisson', 'fixed' or 'all', got 'uniform'$"):
        privacy.check_sampling(dp, "uniform", 10, 100)
    privacy.check_sampling(learning.build_weighted_fed_avg(_model_fn, learning.optimizer_fn("sgd", 0.1),
                                                           workers=1).aggregator, "all", 3, 3)  # not DP: no rule


def test_epsilon_plans_like_the_aggregator_reports_for_every_sampling():
    for sampling in ("fixed", "poisson"):
        dp = privacy.gaussian_fixed(0.9, 5, 0.5, population_size=40, target_delta=1e-6, sampling=sampling)
        result = _round(dp, [np.ones(3, np.float32)] * 5)
        assert result.metrics["epsilon"] == privacy.epsilon(0.9, 5, 40, 1, 1e-6, sampling=sampling)
    assert privacy.epsilon(0.9, 5, 40, 7, 1e-6) > privacy.epsilon(0.9, 5, 40, 7, 1e-6, sampling="poisson")
    assert not math.isnan(privacy.epsilon(0.9, 40, 40, 7, 1e-6))  # a "sample" of the whole population
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        privacy.epsilon(0.5, 50, 100, 10, 1e-5, sampling="poisson")  # absl's order warnings stay quiet
