"""Issue 23, part 1: planning ε before training, and the PLD accountant beside RDP.

Every expected ε is dp-accounting run by hand on the mechanism's event; the
planner must invert it in every direction (noise multiplier, rounds, clients
per round) for Poisson and fixed-size sampling, fixed and adaptive clipping;
a process built from a plan stops at its budget.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

dp_accounting = pytest.importorskip("dp_accounting")

from fedr import privacy  # noqa: E402
from fedr.errors import BudgetExhaustedError, FedValueError  # noqa: E402

G = dp_accounting.GaussianDpEvent
ADD_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
REPLACE = dp_accounting.NeighboringRelation.REPLACE_ONE
N, POP, ROUNDS, DELTA, Z = 100, 10_000, 200, 1e-5, 1.1


def _rdp(event, rounds, relation=ADD_REMOVE, delta=DELTA):
    logging.getLogger("absl").setLevel(logging.ERROR)
    return dp_accounting.rdp.RdpAccountant(neighboring_relation=relation).compose(event, rounds).get_epsilon(delta)


def _pld(event, rounds, relation=ADD_REMOVE, delta=DELTA):
    return dp_accounting.pld.PLDAccountant(neighboring_relation=relation).compose(event, rounds).get_epsilon(delta)


POISSON = dp_accounting.PoissonSampledDpEvent(N / POP, G(Z))
FIXED = dp_accounting.SampledWithoutReplacementDpEvent(POP, N, G(Z / 2))


def test_the_issues_example_q_001_200_rounds_1_0577_gives_noise_1_1():
    assert _rdp(POISSON, ROUNDS) == pytest.approx(1.0577, abs=1e-4)
    plan = privacy.plan(population_size=POP, clients_per_round=N, rounds=ROUNDS, target_delta=DELTA,
                        target_epsilon=1.0577)
    assert plan.solved == "noise_multiplier" and plan.noise_multiplier == pytest.approx(1.1, abs=1e-3)
    assert plan.epsilon <= 1.0577 and plan.epsilon == pytest.approx(
        _rdp(dp_accounting.PoissonSampledDpEvent(N / POP, G(plan.noise_multiplier)), ROUNDS), rel=1e-12)
    assert plan.update_noise_multiplier == plan.noise_multiplier and plan.clipped_count_stddev is None


@pytest.mark.parametrize("sampling, event, relation", [("poisson", POISSON, ADD_REMOVE), ("fixed", FIXED, REPLACE)])
def test_every_direction_inverts_dp_accounting_by_hand(sampling, event, relation):
    eps = _rdp(event, ROUNDS, relation)
    common = dict(population_size=POP, target_delta=DELTA, sampling=sampling)
    z = privacy.plan(clients_per_round=N, rounds=ROUNDS, target_epsilon=eps, **common)
    assert z.noise_multiplier == pytest.approx(Z, abs=1e-3) and z.epsilon <= eps * (1 + 1e-12)
    rounds = privacy.plan(clients_per_round=N, noise_multiplier=Z, target_epsilon=eps, **common)
    assert rounds.solved == "rounds" and rounds.rounds == ROUNDS
    clients = privacy.plan(rounds=ROUNDS, noise_multiplier=Z, target_epsilon=eps, **common)
    assert clients.solved == "clients_per_round" and clients.clients_per_round == N
    # the largest: one more round (one more client) spends more than the target
    assert _rdp(event, ROUNDS + 1, relation) > eps
    spent = privacy.plan(clients_per_round=N, rounds=ROUNDS, noise_multiplier=Z, **common)
    assert spent.solved == "target_epsilon" and spent.epsilon == pytest.approx(eps, rel=1e-12)


def test_adaptive_clipping_plans_the_composed_multiplier_and_reports_the_update_noise():
    fixed = privacy.plan(population_size=POP, clients_per_round=N, rounds=ROUNDS, target_delta=DELTA,
                         target_epsilon=1.0577)
    adaptive = privacy.plan(population_size=POP, clients_per_round=N, rounds=ROUNDS, target_delta=DELTA,
                            target_epsilon=1.0577, clipping="adaptive")
    z, sigma_b = adaptive.noise_multiplier, N / 20
    assert z == fixed.noise_multiplier and adaptive.clipped_count_stddev == sigma_b
    assert adaptive.update_noise_multiplier == pytest.approx((z**-2 - (2 * sigma_b) ** -2) ** -0.5, rel=1e-12)
    agg = adaptive.aggregator(0.1)
    assert agg.adaptive and agg.update_noise_multiplier == pytest.approx(adaptive.update_noise_multiplier, rel=1e-12)
    assert agg.epsilon_after(ROUNDS) == pytest.approx(adaptive.epsilon, rel=1e-12)
    with pytest.raises(FedValueError, match=r"^noise_multiplier: 1.1 must be below 2 \* clipped_count_stddev = 0.5"):
        privacy.plan(population_size=POP, clients_per_round=N, rounds=ROUNDS, target_delta=DELTA,
                     noise_multiplier=1.1, clipping="adaptive", clipped_count_stddev=0.25)


def test_pld_is_tighter_and_equals_dp_accounting_by_hand():
    eps_rdp = privacy.epsilon(Z, N, POP, 50, DELTA, sampling="poisson")
    eps_pld = privacy.epsilon(Z, N, POP, 50, DELTA, sampling="poisson", accountant="pld")
    assert eps_pld == pytest.approx(_pld(POISSON, 50), rel=1e-9, abs=1e-9)
    assert eps_rdp == pytest.approx(_rdp(POISSON, 50), rel=1e-9, abs=1e-9)
    assert eps_pld < eps_rdp
    every = privacy.epsilon(1.0, 10, 10, 20, DELTA, sampling="all", accountant="pld")
    assert every == pytest.approx(_pld(G(1.0), 20), rel=1e-9) and every < _rdp(G(1.0), 20)
    plan = privacy.plan(population_size=POP, clients_per_round=N, rounds=50, target_delta=DELTA,
                        target_epsilon=eps_rdp, accountant="pld")
    assert plan.noise_multiplier < Z and plan.epsilon <= eps_rdp  # the tighter accountant needs less noise
    with pytest.raises(FedValueError, match=r"^accountant: dp-accounting's PLD accountant does not model fixed-size"):
        privacy.epsilon(Z, N, POP, 50, DELTA, sampling="fixed", accountant="pld")
    with pytest.raises(FedValueError, match=r"^accountant: expected 'rdp' or 'pld', got 'moments'$"):
        privacy.gaussian_fixed(Z, N, 1.0, accountant="moments")


def test_a_run_reports_the_chosen_accountants_epsilon_every_round():
    keras = pytest.importorskip("keras")
    from fedr import learning
    from fedr.datasets import ClientData

    rng = np.random.default_rng(0)
    clients = [ClientData(rng.random((8, 6), np.float32), rng.integers(0, 3, 8), batch_size=4, client_id=f"p{i}")
               for i in range(4)]

    def model_fn():
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
        return learning.from_keras_model(model, "sparse_categorical_crossentropy")

    got = {}
    for accountant in ("rdp", "pld"):
        agg = privacy.gaussian_fixed(1.0, 4, 0.5, sampling="all", target_delta=DELTA, accountant=accountant)
        process = learning.build_weighted_fed_avg(model_fn, learning.optimizer_fn("sgd", 0.1), aggregator=agg,
                                                  seed=1)
        history = learning.fit(process, clients, rounds=3)
        got[accountant] = [row["epsilon"] for row in history.rows]
    for r in range(3):
        assert got["rdp"][r] == pytest.approx(_rdp(G(1.0), r + 1), rel=1e-9)
        assert got["pld"][r] == pytest.approx(_pld(G(1.0), r + 1), rel=1e-9)
        assert got["pld"][r] < got["rdp"][r]


def test_a_process_built_from_a_plan_stops_at_its_budget():
    keras = pytest.importorskip("keras")
    from fedr import learning
    from fedr.datasets import ClientData

    rng = np.random.default_rng(1)
    clients = [ClientData(rng.random((8, 6), np.float32), rng.integers(0, 3, 8), batch_size=4, client_id=f"p{i}")
               for i in range(5)]
    eps = _rdp(G(2.0), 3)
    plan = privacy.plan(population_size=5, clients_per_round=5, noise_multiplier=2.0, target_delta=DELTA,
                        target_epsilon=eps * 1.0001, sampling="all")
    assert plan.rounds == 3

    def model_fn():
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
        return learning.from_keras_model(model, "sparse_categorical_crossentropy")

    process = learning.build_weighted_fed_avg(model_fn, learning.optimizer_fn("sgd", 0.1),
                                              aggregator=plan.aggregator(0.5), seed=1)
    with pytest.warns(learning.BudgetExhaustedWarning, match="privacy budget exhausted: round 4: it would spend"):
        history = learning.fit(process, clients, rounds=10)
    assert [row["round"] for row in history.rows] == [1, 2, 3]
    assert history.rows[-1]["epsilon"] == pytest.approx(eps, rel=1e-12)
    assert [e["event"] for e in history.events] == ["budget_exhausted"] and history.events[0]["round"] == 4
    with pytest.raises(BudgetExhaustedError):
        process.next(history.state, clients)
    with pytest.raises(FedValueError, match=r"^max_epsilon: is the plan's"):
        plan.aggregator(0.5, max_epsilon=1.0)
    with pytest.raises(FedValueError, match=r"^noise_multiplier: is the plan's \(2.0\)"):
        plan.aggregator(0.5, noise_multiplier=1.0)
    with pytest.raises(FedValueError, match=r"^target_quantile: not an option of a fixed-clipping plan's aggregator"):
        plan.aggregator(0.5, target_quantile=0.5)
    assert "max_epsilon=" in repr(plan.aggregator(0.5))


def test_the_accountant_travels_with_the_aggregator_as_json():
    from fedr.learning._spec_json import aggregator_from_data, aggregator_to_data

    agg = privacy.gaussian_adaptive(1.0, 100, population_size=1000, target_delta=DELTA, sampling="poisson",
                                    accountant="pld")
    data = aggregator_to_data(agg)
    assert data["params"]["accountant"] == "pld"
    back = aggregator_from_data(data, "aggregator")
    assert back.accountant == "pld" and repr(back) == repr(agg) and "accountant='pld'" in repr(agg)


def test_bad_plans_are_named():
    base = dict(population_size=POP, target_delta=DELTA)
    with pytest.raises(FedValueError, match=r"^plan: give exactly three .* left out: rounds, clients_per_round$"):
        privacy.plan(target_epsilon=1.0, noise_multiplier=1.0, **base)
    with pytest.raises(FedValueError, match=r"left out: none$"):
        privacy.plan(target_epsilon=1.0, noise_multiplier=1.0, rounds=3, clients_per_round=3, **base)
    with pytest.raises(FedValueError, match=r"^target_epsilon: expected a finite number > 0, got -1"):
        privacy.plan(target_epsilon=-1, noise_multiplier=1.0, rounds=3, **base)
    with pytest.raises(FedValueError, match=r"^rounds: expected an integer >= 1, got 0"):
        privacy.plan(target_epsilon=1.0, noise_multiplier=1.0, rounds=0, **base)
    with pytest.raises(FedValueError, match=r"^target_epsilon: even one round spends epsilon = "):
        privacy.plan(target_epsilon=0.01, noise_multiplier=0.5, clients_per_round=N, **base)
    with pytest.raises(FedValueError, match=r"^clients_per_round: under sampling = 'all' every client takes part"):
        privacy.plan(population_size=10, target_delta=DELTA, target_epsilon=5.0, noise_multiplier=1.0, rounds=3,
                     sampling="all")
    with pytest.raises(FedValueError, match=r"^clipping: expected 'fixed' or 'adaptive', got 'none'$"):
        privacy.plan(target_epsilon=1.0, noise_multiplier=1.0, rounds=3, clipping="none", **base)
    with pytest.raises(FedValueError, match=r"^population_size: expected at least clients_per_round \(100\)"):
        privacy.plan(population_size=50, target_delta=DELTA, noise_multiplier=1.0, rounds=3, clients_per_round=100)
    err = None
    try:
        privacy.plan(target_epsilon=1.0, noise_multiplier=1.0, **base)
    except FedValueError as caught:
        err = caught
    assert err is not None and err.argument == "rounds"


def test_the_epsilon_curve_is_the_accountants_round_by_round():
    curve = privacy.epsilon_curve([1.0, 2.0], 4, population_size=POP, clients_per_round=N, target_delta=DELTA)
    assert curve["noise_multiplier"] == [1.0] * 4 + [2.0] * 4 and curve["round"] == [1, 2, 3, 4] * 2
    for z, r, e in zip(curve["noise_multiplier"], curve["round"], curve["epsilon"], strict=True):
        assert e == pytest.approx(_rdp(dp_accounting.PoissonSampledDpEvent(N / POP, G(z)), r), rel=1e-12)
    with pytest.raises(FedValueError, match=r"^noise_multipliers: expected at least one"):
        privacy.epsilon_curve([], 4, population_size=POP, clients_per_round=N, target_delta=DELTA)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        print(privacy.plan(population_size=POP, clients_per_round=N, rounds=ROUNDS, target_delta=DELTA,
                           noise_multiplier=Z))


# ---------------------------------------------------------------- distributed DP (Skellam), by bisection


def _ddp_epsilon(z, n, rounds, population=POP, sampling="poisson", dim=2**30, rate=0.1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agg = privacy.distributed_dp(z, n, 1.0, population_size=population, target_delta=DELTA, sampling=sampling,
                                     dropout_rate=rate)
    return agg.epsilon_after(rounds, dim=dim)


def test_a_distributed_plan_inverts_its_epsilon_in_every_direction():
    target = 1.15
    plan = privacy.plan(population_size=POP, clients_per_round=N, rounds=ROUNDS, target_delta=DELTA,
                        target_epsilon=target, mechanism="distributed")
    assert (plan.mechanism, plan.solved, plan.dropout_rate, plan.dim) == ("distributed", "noise_multiplier", 0.1, 2**30)
    z = plan.noise_multiplier
    assert _ddp_epsilon(z, N, ROUNDS) == pytest.approx(plan.epsilon, rel=1e-12) and plan.epsilon <= target
    assert _ddp_epsilon(z * (1 - 1e-6), N, ROUNDS) > target  # within 1e-6 of the exact multiplier
    # The Skellam bound (integer orders, Zhu-Wang amplification) needs a little more noise than the Gaussian's.
    gaussian = privacy.plan(population_size=POP, clients_per_round=N, rounds=ROUNDS, target_delta=DELTA,
                            target_epsilon=target).noise_multiplier
    assert gaussian < z < 1.1 * gaussian
    rounds = privacy.plan(population_size=POP, clients_per_round=N, noise_multiplier=z, target_delta=DELTA,
                          target_epsilon=target, mechanism="distributed").rounds
    assert rounds == ROUNDS and _ddp_epsilon(z, N, ROUNDS + 1) > target
    clients = privacy.plan(population_size=POP, rounds=ROUNDS, noise_multiplier=z, target_delta=DELTA,
                           target_epsilon=target, mechanism="distributed").clients_per_round
    assert clients == N and _ddp_epsilon(z, N + 1, ROUNDS) > target
    eps = privacy.plan(population_size=POP, clients_per_round=N, rounds=ROUNDS, noise_multiplier=z,
                       target_delta=DELTA, mechanism="distributed").target_epsilon
    assert eps == pytest.approx(plan.epsilon, rel=1e-12)
    curve = privacy.epsilon_curve([z], 3, population_size=POP, clients_per_round=N, target_delta=DELTA,
                                  mechanism="distributed")
    assert curve["epsilon"] == pytest.approx([_ddp_epsilon(z, N, r) for r in (1, 2, 3)], rel=1e-12)
    assert "distributed DP (Skellam), shares for 0.1 dropout" in str(plan)


def test_a_distributed_plans_aggregator_stops_at_its_budget():
    from fedr.protocol.messages import run_locally

    d, n = 40, 5
    plan = privacy.plan(population_size=n, clients_per_round=n, rounds=4, noise_multiplier=2.0, target_delta=DELTA,
                        sampling="all", mechanism="distributed", dropout_rate=0.2, dim=d)
    assert plan.solved == "target_epsilon"
    budget = privacy.plan(population_size=n, clients_per_round=n, noise_multiplier=2.0, target_delta=DELTA,
                          target_epsilon=plan.target_epsilon, sampling="all", mechanism="distributed",
                          dropout_rate=0.2, dim=d)
    assert budget.rounds == 4
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        agg = budget.aggregator(0.5, noise_seed=1)
    assert isinstance(agg, privacy.DistributedDP) and agg.max_epsilon == budget.target_epsilon
    assert agg.dropout_rate == 0.2 and agg.provisioned == 4
    state, ids, spent = agg.init(), [f"c{i}" for i in range(n)], []
    with pytest.raises(BudgetExhaustedError, match=r"^round 5: it would spend epsilon"):
        for _ in range(6):
            result, _, _ = run_locally(agg, state, ids, [np.zeros(d, np.float32)] * n)
            state = result.state
            spent.append(result.metrics["epsilon"])
    assert len(spent) == 4 and spent[-1] == pytest.approx(plan.epsilon, rel=1e-12)
    with pytest.raises(FedValueError, match=r"dropout_rate: is the plan's \(0.2\)"):
        budget.aggregator(0.5, dropout_rate=0.1)
    with pytest.raises(FedValueError, match=r"inner: not an option of a distributed plan's aggregator"):
        budget.aggregator(0.5, inner=privacy.secure_sum())


def test_what_distributed_dp_cannot_plan_is_refused_by_name():
    common = dict(population_size=POP, clients_per_round=N, rounds=ROUNDS, target_delta=DELTA, mechanism="distributed")
    with pytest.raises(FedValueError, match=r"^clipping: distributed DP clips every update at a fixed clip"):
        privacy.plan(target_epsilon=2.0, clipping="adaptive", **common)
    with pytest.raises(FedValueError, match=r"^accountant: distributed DP is accounted by RDP"):
        privacy.plan(target_epsilon=2.0, accountant="pld", **common)
    with pytest.raises(FedValueError, match=r"^sampling: distributed DP accounts sampling = 'poisson' or 'all'"):
        privacy.plan(target_epsilon=2.0, sampling="fixed", **common)
    with pytest.raises(FedValueError, match=r"^mechanism: expected 'gaussian' or 'distributed', got 'laplace'"):
        privacy.plan(target_epsilon=2.0, **{**common, "mechanism": "laplace"})
    with pytest.raises(FedValueError, match=r"^dropout_rate: is distributed DP's; give it with mechanism"):
        privacy.plan(target_epsilon=2.0, dropout_rate=0.2, **{**common, "mechanism": "gaussian"})
    with pytest.raises(FedValueError, match=r"^target_epsilon: even one round spends epsilon"):
        privacy.plan(noise_multiplier=0.3, target_epsilon=0.01, **{k: v for k, v in common.items() if k != "rounds"})
