"""One round protocol on every carrier: secure aggregation's stages with the clients' secrets where they run.

Threads and a local Ray (5 light actors on 2 CPUs, started here on loopback and
shut down after the module) carry the same messages; a client's keys are made
in its own session (the thread carrier's store, the Ray actor) and never in the
server's objects.
"""

from __future__ import annotations

import os
import pickle
import signal
import threading
import time
import warnings

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from fedr import executors, learning, privacy, protocol  # noqa: E402
from fedr.datasets import ClientData  # noqa: E402
from fedr.privacy._secagg_protocol import SecAggClient  # noqa: E402

N_CLIENTS = 5


def _clients(nan_client: int | None = None) -> list[ClientData]:
    rng = np.random.default_rng(3)
    out = []
    for i in range(N_CLIENTS):
        x = rng.standard_normal((8 + 4 * i, 6)).astype(np.float32)
        if i == nan_client:
            x = x * np.float32(1e30)  # finite data, a diverging update: dropped after the key stages
        out.append(ClientData(x, rng.integers(0, 3, len(x)), batch_size=4, client_id=f"p{i}"))
    return out


def _model_fn() -> learning.Model:
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
    return learning.from_keras_model(model, "sparse_categorical_crossentropy", ["sparse_categorical_accuracy"])


def _process(executor, aggregator=None) -> learning.FedAvgProcess:
    return learning.build_weighted_fed_avg(
        _model_fn, learning.optimizer_fn("sgd", 0.2), seed=11, executor=executor,
        aggregator=aggregator if aggregator is not None else privacy.secure_mean(),
    )


def _rounds(process, data_per_round) -> tuple[learning.ServerState, list[dict]]:
    state, history = process.initialize(), []
    for data in data_per_round:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            state, metrics = process.next(state, data)
        history.append(metrics)
    return state, history


@pytest.fixture(scope="module")
def ray_executor():
    ray_module = pytest.importorskip("ray")
    executor = executors.ray(num_cpus=2, num_workers=N_CLIENTS, num_cpus_per_client=0.4)
    yield executor
    executor.close()
    assert not ray_module.is_initialized()


def test_secure_mean_on_threads_is_the_plain_mean_within_the_quantisation_bound():
    secure, _ = _rounds(_process(executors.threads(2)), [_clients()] * 3)
    plain, _ = _rounds(_process(executors.threads(2), learning_mean()), [_clients()] * 3)
    # 64 bits, clip_range 1, max_examples 2^24, 5 clients: n * max_examples / M per coordinate.
    bound = N_CLIENTS * 2**24 / ((2**63 - 1) // N_CLIENTS) * 3
    assert np.abs(secure.flat_weights - plain.flat_weights).max() <= bound + 1e-7
    serial, _ = _rounds(_process(executors.serial()), [_clients()] * 3)
    np.testing.assert_array_equal(secure.flat_weights, serial.flat_weights)


def learning_mean():
    from fedr import aggregators

    return aggregators.mean()


def test_secure_mean_on_ray_equals_threads_bit_for_bit(ray_executor):
    on_threads, history = _rounds(_process(executors.threads(2)), [_clients()] * 3)
    on_ray, ray_history = _rounds(_process(ray_executor), [_clients()] * 3)
    np.testing.assert_array_equal(on_ray.flat_weights, on_threads.flat_weights)
    assert [h["secure_clients"] for h in ray_history] == [5.0, 5.0, 5.0]
    assert ray_history[-1]["loss"] == history[-1]["loss"]


def test_a_ray_actor_killed_after_key_sharing_is_recovered_from_the_survivors_shares(ray_executor):
    # In-process, the same dropout: client p1 is left out of round 2 after the key stages (its update diverges).
    expected, history = _rounds(_process(executors.threads(2)), [_clients(), _clients(nan_client=1), _clients()])
    assert history[1]["secure_clients"] == 4.0 and history[1]["num_clients_dropped"] == 1
    process = _process(ray_executor)
    state, _ = _rounds(process, [_clients()])
    victim = ray_executor.actor_pids()[1]  # position 1 (p1) runs on actor 1, which keeps its session
    ray_executor._delays = {"p1": 4.0}

    def kill():
        time.sleep(1.5)  # the key stages are done; p1 sleeps in training
        os.kill(victim, signal.SIGKILL)

    killer = threading.Thread(target=kill)
    killer.start()
    try:
        with pytest.warns(learning.ClientsFailedWarning, match=r"p1: FedValueError: client 2: no secure-aggregation "
                                                               r"session of this round where it runs"):
            state, metrics = process.next(state, _clients())
    finally:
        killer.join()
        ray_executor._delays = {}
    assert victim not in ray_executor.actor_pids()  # Ray restarted the actor; the session died with it
    assert metrics["num_clients_failed"] == 1 and metrics["secure_clients"] == 4.0
    state, _ = _rounds_from(process, state, [_clients()])
    np.testing.assert_array_equal(state.flat_weights, expected.flat_weights)


def _rounds_from(process, state, data_per_round):
    for data in data_per_round:
        state, metrics = process.next(state, data)
    return state, metrics


def _private_bytes(session: SecAggClient) -> list[bytes]:
    return [session._cipher_key.private_bytes_raw(), session._mask_key.private_bytes_raw(), session._seed]


def test_no_private_key_of_a_client_is_in_the_servers_objects():
    process = _process(executors.threads(2))
    plan = process.begin_round(process.initialize(), [c.client_id for c in _clients()])
    carry = learning.process.LocalCarrier(executors.serial())  # stages only
    process.run_stages(plan, process.aggregator.stages_before, carry)
    views = process.client_views(plan)
    assert len(carry.sessions) == N_CLIENTS
    secrets = [b for s in carry.sessions.values() for b in _private_bytes(s)]
    server_side = pickle.dumps((plan, views, process.aggregator))  # an X25519 private key would not even pickle
    assert not any(secret in server_side for secret in secrets)
    # The server's side holds the public keys and the ciphertexts it routed, nothing it could decrypt.
    assert len(plan.context.server.keys) == N_CLIENTS and plan.context.inbox
    assert not any(isinstance(v, SecAggClient) for v in vars(plan.context).values())


def test_a_client_that_fails_a_key_stage_drops_out_and_a_round_below_the_threshold_is_refused():
    agg = privacy.secure_sum(threshold=4)
    deltas = [np.full(3, 0.1 * (i + 1), np.float32) for i in range(N_CLIENTS)]
    ids = [f"c{i}" for i in range(N_CLIENTS)]
    result, _, context = protocol.run_locally(agg, agg.init(), ids, deltas, keep=[0, 1, 2, 3])
    np.testing.assert_allclose(result.update, 1.0, atol=1e-6)  # 0.1 + 0.2 + 0.3 + 0.4
    assert result.metrics["secure_dropped"] == 1.0
    with pytest.raises(ValueError, match=r"secure aggregation: only 3 of 5 clients sent their masked update "
                                         r"\(c0, c1, c2\), fewer than the threshold 4"):
        protocol.run_locally(agg, agg.init(), ids, deltas, keep=[0, 1, 2])


def test_under_a_secure_inner_sum_nothing_of_a_client_travels_outside_its_masked_vector():
    deltas = [np.full(4, v, np.float32) for v in (0.01, 0.02, 0.5, 0.6, 0.03)]
    ids = [f"c{i}" for i in range(N_CLIENTS)]
    kwargs = dict(initial_clip=0.1, sampling="all", population_size=5, target_delta=1e-5)
    with pytest.warns(privacy.ReproducibleNoiseWarning):
        secure = privacy.gaussian_adaptive(0.3, 5, inner=privacy.secure_sum(), noise_seed=4, **kwargs)
        plain = privacy.gaussian_adaptive(0.3, 5, noise_seed=4, **kwargs)
    got, sent, _ = protocol.run_locally(secure, secure.init(), ids, deltas)
    want, _, _ = protocol.run_locally(plain, plain.init(), ids, deltas)
    for out in sent:
        assert np.isnan(out.delta.norm) and out.delta.unclipped is None
        assert type(out.delta.vector).__name__ == "MaskedInput"
    # The count of unclipped updates came through the secure sum: the same clip as in the clear.
    assert got.metrics["dp_unclipped_fraction"] == want.metrics["dp_unclipped_fraction"]
    assert dict(got.state)["clip"] == dict(want.state)["clip"]
    np.testing.assert_allclose(got.update, want.update, atol=1e-6)


def test_run_locally_refuses_updates_that_do_not_match_the_clients():
    agg = privacy.secure_sum()
    with pytest.raises(ValueError, match=r"^deltas: expected one update \(and count\) per client of the 3 client_ids, "
                                         r"got 2 updates$"):
        protocol.run_locally(agg, agg.init(), ["a", "b", "c"], [np.zeros(2, np.float32)] * 2)
    with pytest.raises(ValueError, match="of the 0 client_ids"):
        protocol.run_locally(agg, agg.init(), [], [])
