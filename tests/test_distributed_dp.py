"""Distributed DP over secure aggregation (Skellam noise shares added by the clients inside the masked sum).

What is checked: the accounting bounds against the papers' statements and
dp-accounting; the noise the decoded sum carries has the planned variance
(seeded, many rounds); no server-side object of a round ever holds the
un-noised sum; dropouts beyond the provisioned rate are refused before
unmasking or released with their weaker ε; threads, Ray and Flower nodes
give the same weights bit for bit; bad arguments are named.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import warnings

import numpy as np
import pytest

from fedr import privacy
from fedr.errors import BudgetExhaustedError, FedValueError
from fedr.privacy import _ddp_accounting as acc
from fedr.protocol.messages import run_locally

ORDERS = np.asarray(acc.ORDERS)


def _ddp(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", privacy.ReproducibleNoiseWarning)
        return privacy.distributed_dp(*args, **kwargs)


def _exact_subsampled_gaussian(q: float, z: float) -> np.ndarray:
    import dp_accounting

    accountant = dp_accounting.rdp.RdpAccountant(orders=list(acc.ORDERS))
    event = dp_accounting.GaussianDpEvent(z) if q >= 1 else dp_accounting.PoissonSampledDpEvent(
        q, dp_accounting.GaussianDpEvent(z))
    accountant.compose(event, 1)
    return np.asarray(accountant._rdp, np.float64)


# ---------------------------------------------------------------- the accounting


def test_the_skellam_bound_is_the_papers_formula_and_tends_to_the_gaussian_mechanism():
    # Theorem 3.5 of Agarwal, Kairouz and Liu 2021 written in integers: mu = s^2 V / 2, sensitivities s * delta.
    s, v, l2, l1, a = 50.0, 0.8, 1.2, 3.0, 7.0
    mu, d2, d1 = s**2 * v / 2, s * l2, s * l1
    by_hand = a * d2**2 / (4 * mu) + min(((2 * a - 1) * d2**2 + 6 * d1) / (16 * mu**2), 3 * d1 / (4 * mu))
    assert float(acc.skellam_rdp(a, variance=v, scale=s, l2=l2, l1=l1)) == pytest.approx(by_hand, rel=1e-12)
    # Large mu: the Gaussian mechanism's RDP alpha / (2 z^2) (dp-accounting's, z = sqrt(V) / clip).
    z = 1.3
    skellam = acc.skellam_rdp(ORDERS, variance=z**2, scale=1e7, l2=1.0, l1=30.0)
    np.testing.assert_allclose(skellam, _exact_subsampled_gaussian(1.0, z), rtol=1e-6)
    # Rounding's sensitivity (Kairouz et al. 2021, beta = 0): sC + sqrt(d) integers, L1 <= L2 min(sqrt d, L2).
    l2r, l1r = acc.rounded_sensitivity(0.5, 100.0, 400)
    assert (l2r, l1r) == pytest.approx((0.5 + 20 / 100, 0.7 * min(20.0, 70.0)))


@pytest.mark.parametrize("q, z", [(0.01, 1.1), (0.1, 0.8)])
def test_zhu_wang_bound_is_above_the_exact_subsampled_gaussian_and_within_its_log3_slack(q, z):
    # For the Gaussian mechanism dp-accounting's RDP is exact (Mironov et al. 2019); Zhu and Wang's general
    # bound must lie above it, and (the paper's claim for its factor 3) within log(3)/(alpha - 1): the slack is
    # exactly that at high orders, where the factor-3 terms dominate.
    def gaussian(orders):
        return np.asarray(orders, np.float64) / (2 * z**2)

    bound = np.array([acc.poisson_subsampled_rdp(int(a), q, gaussian) for a in ORDERS])
    exact = _exact_subsampled_gaussian(q, z)
    assert np.all(bound >= exact - 1e-12)
    slack = np.log(3) / (ORDERS - 1)
    assert np.all(bound - exact <= slack * (1 + 1e-9))
    assert bound[-1] - exact[-1] == pytest.approx(slack[-1], rel=1e-3)
    # q = 1: no amplification, the mechanism's own RDP.
    assert acc.poisson_subsampled_rdp(9, 1.0, gaussian) == pytest.approx(9 / (2 * z**2))
    # The example (q = 0.01, 200 rounds, delta = 1e-5): within 10% of the exact Gaussian epsilon.
    if q == 0.01:
        exact_eps = acc.epsilon_from_rdp(200 * exact, 1e-5)
        # (integer orders only: a little above fedr's Gaussian epsilon, 1.0577, whose orders are finer)
        assert 1.0577 < exact_eps < 1.03 * privacy.epsilon(1.1, 1, 100, 200, 1e-5, sampling="poisson")
        assert exact_eps < acc.epsilon_from_rdp(200 * bound, 1e-5) < 1.1 * exact_eps


def test_epsilon_per_round_composes_the_rounds_and_equals_the_planned_value():
    agg = _ddp(1.0, 5, 0.5, population_size=5, target_delta=1e-5, noise_seed=1)
    state, ids = agg.init(), [f"c{i}" for i in range(5)]
    eps = []
    for r in range(3):
        res, _, ctx = run_locally(agg, state, ids, [np.zeros(50, np.float32)] * 5, seed=np.random.SeedSequence([r]))
        state = res.state
        eps.append(res.metrics["epsilon"])
    # The round's RDP by hand: Skellam of variance (z C)^2 with the rounding's sensitivity at this scale.
    l2, l1 = acc.rounded_sensitivity(0.5, ctx.scale, 50)
    one = acc.skellam_rdp(ORDERS, variance=0.25, scale=ctx.scale, l2=l2, l1=l1)
    assert eps == pytest.approx([acc.epsilon_from_rdp(k * one, 1e-5) for k in (1, 2, 3)], rel=1e-12)
    assert eps[2] == pytest.approx(agg.epsilon_after(3, dim=50), rel=1e-9)
    # The Skellam mechanism's epsilon is the Gaussian mechanism's (dp-accounting, the same orders) but for the
    # rounding's sensitivity, sqrt(50) / scale over the clip (scale ~ 5.9e5 integers per unit): 1e-4.
    gaussian = acc.epsilon_from_rdp(3 * _exact_subsampled_gaussian(1.0, 1.0), 1e-5)
    assert gaussian < eps[2] == pytest.approx(gaussian, rel=1e-4)


# ---------------------------------------------------------------- the noise and what the server holds


def test_the_decoded_sum_carries_the_planned_noise_variance_over_many_seeded_rounds():
    # 5 clients, 10% provisioned dropout -> ceil(4.5) = 5 shares of variance (z C)^2 / 5 each.
    z, clip, n, d, rounds = 1.0, 0.5, 5, 5000, 20
    agg = _ddp(z, n, clip, noise_seed=4)
    state, ids = agg.init(), [f"c{i}" for i in range(n)]
    noise = []
    for r in range(rounds):
        res, _, _ = run_locally(agg, state, ids, [np.zeros(d, np.float32)] * n, seed=np.random.SeedSequence([1, r]))
        state = res.state
        noise.append(res.update.astype(np.float64) * n)  # update = noised sum / clients_per_round
        assert res.metrics["dp_noise_stddev"] == pytest.approx(z * clip)
    x = np.concatenate(noise)
    ratio = x.var() / (z * clip) ** 2
    # 100000 draws: the sample variance's relative standard error is sqrt(2 / N) = 0.0045; 5 of them.
    assert abs(ratio - 1) < 5 * math.sqrt(2 / x.size), ratio
    assert abs(x.mean()) < 5 * z * clip / math.sqrt(x.size)
    # The shares are integers in the fixed point: the sum is a lattice of step 1/scale, not continuous.
    scale = agg.inner._noisy_scale(n, clip, agg.share_stddev)
    assert np.allclose(x[:100] * scale, np.round(x[:100] * scale), atol=0.05 * n)


def _arrays(value, seen=None):
    """Every numpy array and integer reachable from a server-side object (dataclasses, tuples, dicts, attributes)."""
    seen = set() if seen is None else seen
    if id(value) in seen:
        return
    seen.add(id(value))
    if isinstance(value, np.ndarray):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _arrays(v, seen)
    elif isinstance(value, list | tuple | set | frozenset):
        for v in value:
            yield from _arrays(v, seen)
    elif dataclasses.is_dataclass(value) or hasattr(value, "__dict__"):
        fields = vars(value) if hasattr(value, "__dict__") else {f.name: getattr(value, f.name)
                                                                 for f in dataclasses.fields(value)}
        for v in fields.values():
            yield from _arrays(v, seen)
    elif hasattr(value, "__slots__"):
        for name in value.__slots__:
            if hasattr(value, name):
                yield from _arrays(getattr(value, name), seen)


def test_no_server_side_object_of_a_round_holds_the_un_noised_sum():
    rng = np.random.default_rng(7)
    n, d, clip = 4, 300, 1.0
    agg = _ddp(0.7, n, clip, dropout_rate=0.25, noise_seed=2)
    deltas = [rng.normal(0, 0.05, d).astype(np.float32) for _ in range(n)]
    state = agg.init()
    ids = [f"c{i}" for i in range(n)]
    result, outputs, ctx = run_locally(agg, state, ids, deltas, seed=np.random.SeedSequence([5]))
    # The un-noised integer sum, recomputed the clients' way (the same stochastic rounding), and its decode.
    plain = np.zeros(d, np.int64)
    for i in range(n):
        view = agg.client_view(state, ctx, ids[i], i).inner
        plain += agg.inner._quantize(deltas[i].astype(np.float64), view, view.rng(deltas[i], 0))
    modulus = np.uint64(2**32)
    wrapped = (plain.astype(np.uint64) % modulus).astype(np.uint32)
    decoded = plain / ctx.scale
    held = list(_arrays((ctx, outputs, result)))
    vectors = [arr for arr in held if arr.size == d]
    assert len(vectors) >= n + 1  # at least the n masked vectors the server took in, and the released update
    for arr in vectors:
        flat = np.ravel(arr)
        assert not np.array_equal(flat.astype(np.int64, copy=False) if flat.dtype.kind in "iu" else flat, plain)
        if flat.dtype == np.uint32:
            assert not np.array_equal(flat, wrapped)
        if flat.dtype.kind == "f":
            for target in (decoded, decoded / n, plain.astype(np.float64)):
                assert not np.allclose(flat, target, rtol=0, atol=1e-6)
    # What the server decoded is the plain sum plus the clients' noise, of the planned size.
    released = result.update.astype(np.float64) * n
    assert np.std(released - decoded) == pytest.approx(0.7 * clip * math.sqrt(n / 3), rel=0.15)


def test_dropouts_above_the_provisioned_rate_are_refused_before_unmasking():
    n = 5
    agg = _ddp(1.0, n, 0.5, dropout_rate=0.2, noise_seed=1)  # provisioned: ceil(4) = 4 shares
    ids = [f"c{i}" for i in range(n)]
    zeros = [np.zeros(20, np.float32)] * n
    result, _, _ = run_locally(agg, agg.init(), ids, zeros, keep=[0, 1, 2, 3])  # one dropout: as provisioned
    assert result.metrics["ddp_noise_shares"] == 4 and result.metrics["clip"] == 0.5
    spy = []
    original = type(agg.inner)._unmask

    def unmask(self, outputs, ctx):
        spy.append(len(outputs))
        return original(self, outputs, ctx)

    type(agg.inner)._unmask = unmask
    try:
        with pytest.raises(FedValueError, match=r"only 3 of the round's 5 clients sent their noised update, fewer "
                                                r"than the 4 the noise shares were sized for \(dropout_rate = 0.2\)"):
            run_locally(agg, agg.init(), ids, zeros, keep=[0, 1, 2])
    finally:
        type(agg.inner)._unmask = original
    assert spy == []  # never unmasked


def test_a_smaller_cohort_gets_larger_shares_and_the_planned_noise():
    # A Poisson cohort of 4 where 6 are expected: shares sized for ceil(4 x 0.9) = 4 survivors, not 6.
    agg = _ddp(1.0, 6, 0.5, population_size=60, target_delta=1e-5, sampling="poisson", noise_seed=3)
    ids = [f"c{i}" for i in range(4)]
    noise = []
    state = agg.init()
    for r in range(10):
        result, _, _ = run_locally(agg, state, ids, [np.zeros(2000, np.float32)] * 4, seed=np.random.SeedSequence([r]))
        state = result.state
        noise.append(result.update.astype(np.float64) * 6)  # the divisor stays clients_per_round
    assert result.metrics["ddp_provisioned"] == 4 and result.metrics["ddp_noise_shares"] == 4
    assert result.metrics["dp_noise_stddev"] == pytest.approx(0.5)
    x = np.concatenate(noise)
    assert abs(x.var() / 0.25 - 1) < 5 * math.sqrt(2 / x.size)


def test_report_releases_an_excess_dropout_round_with_its_weaker_epsilon():
    n = 5
    agg = _ddp(1.0, n, 0.5, population_size=n, target_delta=1e-5, dropout_rate=0.2, on_excess_dropout="report",
               threshold=3, noise_seed=1)
    ids = [f"c{i}" for i in range(n)]
    zeros = [np.zeros(20, np.float32)] * n
    full, _, _ = run_locally(agg, agg.init(), ids, zeros)
    with pytest.warns(privacy.PrivacyWeakenedWarning, match=r"round 1: 3 noise shares arrived, fewer than the 4 "
                                                            r"provisioned.*noise stddev 0.433 instead of 0.5; accounted: epsilon = 5.58"):
        weak, _, _ = run_locally(agg, agg.init(), ids, zeros, keep=[0, 1, 2])
    assert weak.metrics["ddp_noise_shares"] == 3 and weak.metrics["dp_noise_stddev"] == pytest.approx(0.5 * 0.75**0.5)
    assert weak.metrics["epsilon"] > full.metrics["epsilon"]
    gaussian = acc.epsilon_from_rdp(_exact_subsampled_gaussian(1.0, 0.75**0.5), 1e-5)  # z sqrt(3/4)
    assert weak.metrics["epsilon"] == pytest.approx(gaussian, rel=1e-4)


def test_max_epsilon_stops_before_the_round_that_would_exceed_it():
    agg = _ddp(1.0, 4, 0.5, population_size=4, target_delta=1e-5, max_epsilon=8.0, noise_seed=1)
    state, ids = agg.init(), [f"c{i}" for i in range(4)]
    spent = []
    with pytest.raises(BudgetExhaustedError, match=r"round 3: it would spend epsilon = .* over max_epsilon = 8"):
        for r in range(5):
            res, _, _ = run_locally(agg, state, ids, [np.zeros(30, np.float32)] * 4)
            state = res.state
            spent.append(res.metrics["epsilon"])
    assert len(spent) == 2 and spent[-1] < 8.0


def test_bad_arguments_are_named():
    with pytest.raises(FedValueError, match=r"sampling: distributed DP accounts sampling = 'poisson' or 'all'"):
        privacy.distributed_dp(1.0, 5, 0.5, sampling="fixed")
    with pytest.raises(FedValueError, match=r"dropout_rate: expected a finite number in \[0, 1\), got 1"):
        privacy.distributed_dp(1.0, 5, 0.5, dropout_rate=1)
    with pytest.raises(FedValueError, match=r"on_excess_dropout: expected 'refuse' or 'report', got 'ignore'"):
        privacy.distributed_dp(1.0, 5, 0.5, on_excess_dropout="ignore")
    with pytest.raises(FedValueError, match=r"noise_multiplier: expected a finite number > 0, got 0"):
        privacy.distributed_dp(0, 5, 0.5)
    with pytest.raises(FedValueError, match=r"clip: expected a finite number > 0, got nan"):
        privacy.distributed_dp(1.0, 5, float("nan"))
    with pytest.raises(FedValueError, match=r"bits: expected 32 or 64"):
        privacy.distributed_dp(1.0, 5, 0.5, bits=16)
    with pytest.warns(privacy.ReproducibleNoiseWarning):
        privacy.distributed_dp(1.0, 5, 0.5, noise_seed=3)


# ---------------------------------------------------------------- in a process, on every transport

keras = pytest.importorskip("keras")


def _process(executor=None):
    from flower_nodes import fashion_model

    from fedr import learning

    return learning.build_weighted_fed_avg(
        fashion_model, learning.optimizer_fn("sgd", 0.05), learning.optimizer_fn("sgd", 1.0),
        aggregator=_ddp(0.5, 3, 1.0, population_size=3, target_delta=1e-5, dropout_rate=0.34, noise_seed=9),
        seed=3, executor=executor,
    )


def _rounds(process, clients, rounds=2):
    state = process.initialize()
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(rounds):
            state, metrics = process.next(state, clients)
            rows.append(metrics)
    return state, rows


def test_in_a_process_threads_and_ray_give_the_same_weights_bit_for_bit_and_learn():
    ray = pytest.importorskip("ray", reason="ray is installed by make setup")
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    from flower_nodes import fashion_clients

    from fedr import executors

    clients = fashion_clients(3, rows=600)
    local, rows = _rounds(_process(executors.threads(workers=2)), clients)
    assert [r["ddp_noise_shares"] for r in rows] == [3.0, 3.0] and rows[0]["ddp_provisioned"] == 2.0
    assert rows[1]["epsilon"] > rows[0]["epsilon"] > 0
    executor = executors.ray(num_cpus=2, num_workers=2)
    try:
        remote, _ = _rounds(_process(executor), clients)
    finally:
        executor.close()
    np.testing.assert_array_equal(remote.flat_weights, local.flat_weights)
    assert np.linalg.norm(local.flat_weights) > 0.01


def test_on_flower_nodes_the_weights_equal_the_in_process_ones(tmp_path, monkeypatch):
    pytest.importorskip("flwr", reason="flwr[simulation]==1.42.0 is installed by make setup")
    from flower_nodes import fashion_clients, run_on_nodes

    expected, _ = _rounds(_process(), fashion_clients(3, rows=600))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", privacy.ReproducibleNoiseWarning)
        result = run_on_nodes(_process, tmp_path, monkeypatch, 3, 2, rows=600)
    np.testing.assert_array_equal(result.state.flat_weights, expected.flat_weights)
    assert [h["ddp_noise_shares"] for h in result.history][-1] == 3.0


# ---------------------------------------------------------------- the privacy report of a run


def _small_clients(n=4):
    from fedr.datasets import ClientData

    rng = np.random.default_rng(2)
    return [ClientData(rng.normal(size=(12, 4)).astype(np.float32), rng.integers(0, 2, 12), batch_size=6,
                       client_id=f"c{i}") for i in range(n)]


def _small_process(aggregator):
    from fedr import learning

    def model_fn():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        return learning.from_keras_model(model, "sparse_categorical_crossentropy", ["sparse_categorical_accuracy"])

    return learning.build_weighted_fed_avg(model_fn, learning.optimizer_fn("sgd", 0.1), aggregator=aggregator,
                                           seed=2)


def test_the_privacy_report_of_a_fit_gives_epsilon_clip_noise_and_who_took_part_per_round():
    from fedr import learning

    agg = _ddp(1.0, 4, 0.5, population_size=4, target_delta=1e-5, dropout_rate=0.25, noise_seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = learning.fit(_small_process(agg), _small_clients(), 3)
    report = privacy.report(history)
    assert report["round"] == [1, 2, 3]
    assert report["epsilon"] == [row["epsilon"] for row in history.rows]
    assert report["epsilon"][2] == pytest.approx(agg.epsilon_after(3, dim=10), rel=1e-12)
    assert report["clip"] == [0.5] * 3
    assert report["noise_stddev"] == pytest.approx([0.5 * math.sqrt(4 / 3)] * 3)  # 4 shares sized for 3
    assert report["participants"] == [4.0] * 3 and report["dropped"] == [0.0] * 3
    assert report["noise_shares"] == [4.0] * 3 and report["provisioned"] == [3.0] * 3
    assert report["weakened"] == [False] * 3
    assert all(math.isnan(v) for v in report["unclipped_fraction"])
    # A weakened round (rows as a Flower run gives them) is flagged; adaptive clipping's fraction is reported.
    rows = [dict(history.rows[0]), {**history.rows[1], "ddp_noise_shares": 2.0, "inner_secure_dropped": 2.0}]
    flagged = privacy.report(rows)
    assert flagged["weakened"] == [False, True] and flagged["dropped"] == [0.0, 2.0]
    assert privacy.report([{"round": 1, "clip": 0.1, "dp_unclipped_fraction": 0.4}])["unclipped_fraction"] == [0.4]


def test_the_privacy_report_refuses_what_is_not_a_dp_history():
    from fedr import learning
    from fedr.errors import FedTypeError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = learning.fit(_small_process(None), _small_clients(), 1)
    with pytest.raises(FedValueError, match=r"history: no round reports epsilon, clip or dp_noise_stddev"):
        privacy.report(plain)
    with pytest.raises(FedValueError, match=r"history: it has no rounds"):
        privacy.report([])
    with pytest.raises(FedTypeError, match=r"history: expected what fedr.learning.fit or fedr.flower.run returned"):
        privacy.report({"round": 1})
