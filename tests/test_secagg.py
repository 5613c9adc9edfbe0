"""Secure aggregation (Bonawitz et al. 2017): exact sums within quantization, masks, dropouts, crypto."""

import random
from types import SimpleNamespace

import numpy as np
import pytest

from fedr.errors import FedValueError
from fedr.privacy._secagg import MaskedInput, SecureMean, SecureSum, secure_mean, secure_sum
from fedr.protocol import run_locally
from fedr.privacy._secagg_protocol import (
    PRIME,
    EncryptedShare,
    RoundConfig,
    SecAggClient,
    UnmaskRequest,
    prg,
    run_setup,
    shamir_combine,
    shamir_split,
)


def _round(agg, deltas, *, counts=None, seed=1, ids=None, keep=None):
    """Run one secure round, every stage carried in this process; ``keep`` lists the positions that send their update."""
    n = len(deltas)
    ids = ids or [f"c{i}" for i in range(n)]
    return run_locally(agg, agg.init(), ids, deltas, counts=counts, seed=np.random.SeedSequence(seed), keep=keep)


def _bound(n, clip, bits, total):
    """n clients' stochastic rounding (< 1/scale each) plus the float32 rounding of the result."""
    scale = ((2 ** (bits - 1) - 1) // n) / clip
    return n / scale + np.abs(total) * 2.0**-24


# --- Shamir and the primitives --------------------------------------------------------------


def _probably_prime(p, rounds=32):
    d, s = p - 1, 0
    while d % 2 == 0:
        d, s = d // 2, s + 1
    rng = random.Random(0)
    for _ in range(rounds):
        x = pow(rng.randrange(2, p - 1), d, p)
        if x in (1, p - 1):
            continue
        for _ in range(s - 1):
            x = x * x % p
            if x == p - 1:
                break
        else:
            return False
    return True


def test_shamir_field_is_prime_and_holds_32_byte_secrets():
    assert PRIME > 2**256 and _probably_prime(PRIME)
    assert not _probably_prime(PRIME + 2)


def test_shamir_any_t_shares_reconstruct_and_t_minus_1_do_not():
    secret = int.from_bytes(bytes(range(32)), "big")
    shares = shamir_split(secret, 4, range(1, 8))
    assert shamir_combine({x: shares[x] for x in (1, 3, 5, 7)}, 4) == secret
    assert shamir_combine({x: shares[x] for x in (2, 4, 6, 7)}, 4) == secret
    # t - 1 shares interpolate to an unrelated value (a degree-2 polynomial through 3 points).
    assert shamir_combine({x: shares[x] for x in (1, 2, 3)}, 3) != secret
    with pytest.raises(FedValueError, match="3 given, 4 needed"):
        shamir_combine({x: shares[x] for x in (1, 2, 3)}, 4)


def test_prg_is_the_chacha20_keystream_and_uniform():
    key = bytes(range(32))
    a, b = prg(key, 100_000, 32), prg(key, 100_000, 32)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == np.dtype("<u4")
    other = prg(bytes(32), 100_000, 32)
    assert np.mean(a == other) < 1e-3
    # Uniform over 2^32: 16 equal bins of the top 4 bits, chi-square with 15 dof well below 37.7 (p=0.001).
    counts = np.bincount((a >> 28).astype(np.int64), minlength=16)
    chi2 = ((counts - a.size / 16) ** 2 / (a.size / 16)).sum()
    assert chi2 < 37.7
    assert prg(key, 10, 64).dtype == np.dtype("<u8")


def test_a_share_decrypts_only_for_its_recipient():
    config = RoundConfig.build(4, 3)
    server, clients = run_setup(config)
    share = next(s for s in clients[0].share_keys(tuple(server.keys.values())) if s.recipient == 2)
    seed_share, key_share = clients[1].decrypt(share)
    assert 0 <= seed_share < PRIME and 0 <= key_share < PRIME
    # Another client, redirected the same ciphertext, derives another key: authentication fails.
    stolen = EncryptedShare(share.sender, 3, share.nonce, share.ciphertext)
    with pytest.raises(FedValueError, match="did not authenticate"):
        clients[2].decrypt(stolen)
    # A flipped bit fails too.
    altered = EncryptedShare(share.sender, 2, share.nonce, share.ciphertext[:-1] + bytes([share.ciphertext[-1] ^ 1]))
    with pytest.raises(FedValueError, match="did not authenticate"):
        clients[1].decrypt(altered)


def test_a_client_never_reveals_both_secrets_of_a_client():
    config = RoundConfig.build(4, 3)
    server, clients = run_setup(config)
    for c in clients:
        c.mask(np.zeros(5, np.uint32))
    first = clients[0].unmask(UnmaskRequest((1, 2, 3)))
    assert set(first.seed_shares) == {1, 2, 3} and set(first.key_shares) == {4}
    with pytest.raises(FedValueError, match="already answered"):
        clients[0].unmask(UnmaskRequest((1, 2, 4)))


def test_protocol_sums_integers_exactly_modulo_2_32():
    rng = np.random.default_rng(0)
    config = RoundConfig.build(6, 4)
    server, clients = run_setup(config)
    x = rng.integers(0, 2**32, (6, 1000), dtype=np.uint64).astype(np.uint32)
    inputs = [c.mask(x[i]) for i, c in enumerate(clients) if i != 2]
    request = server.collect_masked(inputs)
    assert request.survivors == (1, 2, 4, 5, 6)
    total = server.unmask([clients[u - 1].unmask(request) for u in request.survivors])
    expected = np.delete(x, 2, axis=0).sum(axis=0, dtype=np.uint64).astype(np.uint32)
    np.testing.assert_array_equal(total, expected)


# --- the aggregators --------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [32, 64])
def test_secure_sum_equals_the_plain_sum_within_the_quantization_bound(bits):
    rng = np.random.default_rng(1)
    n, size, clip = 10, 20_000, 0.5
    deltas = rng.normal(0, 0.2, (n, size)).astype(np.float32)
    result, _, _ = _round(secure_sum(clip_range=clip, bits=bits), list(deltas))
    plain = np.clip(deltas.astype(np.float64), -clip, clip).sum(axis=0)
    error = np.abs(result.update.astype(np.float64) - plain)
    bound = _bound(n, clip, bits, plain)
    assert result.update.dtype == np.float32 and result.update.shape == (size,)
    assert np.all(error <= bound)
    assert error.max() > 0  # it is a quantized sum
    assert result.metrics == {"secure_clients": 10.0, "secure_dropped": 0.0, "secure_threshold": 7.0}
    # Clipping at clip_range is part of the contract: a coordinate of 3 counts as 0.5.
    big = [np.full(4, 3.0, np.float32), np.full(4, -0.25, np.float32)]
    np.testing.assert_allclose(_round(secure_sum(clip_range=clip, bits=bits), big)[0].update, 0.25, atol=1e-6)


def test_stochastic_rounding_is_unbiased():
    # 100 clients of a value between two grid points: rounding errors average out (relative to one step).
    n = 100
    agg = secure_sum(clip_range=1.0)
    step = 1 / (((2**31 - 1) // n) / 1.0)
    deltas = [np.full(50_000, 0.3 * step, np.float64).astype(np.float32) for _ in range(n)]
    exact = n * float(deltas[0][0])
    result, _, _ = _round(agg, deltas)
    mean_error = np.mean(result.update.astype(np.float64) - exact) / step
    assert abs(mean_error) < 0.05


def test_seeded_rounds_repeat_and_masks_do_not():
    rng = np.random.default_rng(2)
    deltas = list(rng.normal(0, 0.1, (4, 1000)).astype(np.float32))
    a, outs_a, _ = _round(secure_sum(), deltas, seed=5)
    b, outs_b, _ = _round(secure_sum(), deltas, seed=5)
    np.testing.assert_array_equal(a.update, b.update)
    # Fresh keys every round: the masked vectors differ.
    assert np.mean(outs_a[0].delta.masked == outs_b[0].delta.masked) < 1e-2


def test_a_masked_vector_is_independent_of_its_update_and_uniform():
    rng = np.random.default_rng(3)
    n, size = 5, 100_000
    deltas = rng.uniform(-1, 1, (n, size)).astype(np.float32)
    deltas[0] = np.linspace(-1, 1, size)  # a structured update
    _, outputs, _ = _round(secure_sum(clip_range=1.0), list(deltas))
    for i, out in enumerate(outputs):
        masked = out.delta
        assert isinstance(masked, MaskedInput) and masked.masked.dtype == np.uint32
        y = masked.masked.astype(np.float64)
        # Unmasked quantized values would correlate perfectly (r = 1 in two's complement order).
        signed = masked.masked.view(np.int32).astype(np.float64)
        assert abs(np.corrcoef(y, deltas[i])[0, 1]) < 0.02
        assert abs(np.corrcoef(signed, deltas[i])[0, 1]) < 0.02
        # Uniform on [0, 2^32): mean 2^31, standard deviation 2^32 / sqrt(12); 16 bins equally full.
        assert abs(y.mean() / 2**31 - 1) < 0.01
        assert abs(y.std() / (2**32 / np.sqrt(12)) - 1) < 0.01
        counts = np.bincount((masked.masked >> 28).astype(np.int64), minlength=16)
        # Chi-square with 15 degrees of freedom below its 1e-6 tail (56.49): the keys, hence the masks, come
        # from the OS's randomness, so the 0.001 tail (37.7) failed one run in a few hundred (five clients a
        # run; seen: 42.4). An unmasked or biased vector lands in the thousands.
        assert ((counts - size / 16) ** 2 / (size / 16)).sum() < 56.49


@pytest.mark.parametrize("dropped", [[3], [0, 7, 9]])
def test_dropouts_above_the_threshold_recover_the_survivors_sum(dropped):
    rng = np.random.default_rng(4)
    n, clip = 10, 1.0
    deltas = rng.normal(0, 0.3, (n, 5000)).astype(np.float32)
    keep = [i for i in range(n) if i not in dropped]
    result, _, _ = _round(secure_sum(clip_range=clip), list(deltas), keep=keep)
    plain = np.clip(deltas[keep].astype(np.float64), -clip, clip).sum(axis=0)
    assert np.all(np.abs(result.update - plain) <= _bound(n, clip, 32, plain))
    assert result.metrics["secure_clients"] == len(keep)
    assert result.metrics["secure_dropped"] == len(dropped)


def test_exactly_the_threshold_recovers_and_below_it_raises():
    rng = np.random.default_rng(5)
    deltas = list(rng.normal(0, 0.3, (10, 100)).astype(np.float32))
    agg = secure_sum(threshold=6)
    result, _, _ = _round(agg, deltas, keep=[0, 2, 4, 6, 8, 9])
    plain = np.clip(np.stack([deltas[i] for i in (0, 2, 4, 6, 8, 9)]).astype(np.float64), -1, 1).sum(axis=0)
    assert np.all(np.abs(result.update - plain) <= _bound(10, 1.0, 32, plain))
    with pytest.raises(
        FedValueError,
        match=r"only 5 of 10 clients sent their masked update \(c0, c2, c4, c6, c8\), fewer than the "
        r"threshold 6; .* the state is unchanged \(dropped: c1, c3, c5, c7, c9\)",
    ):
        _round(agg, deltas, keep=[0, 2, 4, 6, 8])
    # Default threshold ceil(2n/3) = 7 of 10.
    with pytest.raises(FedValueError, match="fewer than the threshold 7"):
        _round(secure_sum(), deltas, keep=range(6))


def test_secure_mean_is_the_example_weighted_mean():
    rng = np.random.default_rng(6)
    deltas = rng.normal(0, 0.1, (5, 3000)).astype(np.float32)
    counts = [10, 200, 33, 1, 64]
    result, _, _ = _round(secure_mean(clip_range=1.0), list(deltas), counts=counts, keep=[0, 1, 2, 4])
    w = np.array([10, 200, 33, 64], np.float64)
    plain = (w[:, None] * deltas[[0, 1, 2, 4]]).sum(axis=0) / w.sum()
    np.testing.assert_allclose(result.update, plain, rtol=1e-6, atol=1e-8)
    assert result.metrics["secure_num_examples"] == 307.0
    assert result.metrics["secure_dropped"] == 1.0
    with pytest.raises(FedValueError, match="num_examples: 300 is outside 1..max_examples = 100"):
        _round(secure_mean(max_examples=100), list(deltas), counts=[300, 1, 1, 1, 1])
    with pytest.raises(FedValueError, match="do not fit in 32 bits"):
        _round(secure_mean(bits=32, max_examples=2**30), list(deltas))


def test_neighbour_graph_sums_and_recovers_dropouts():
    rng = np.random.default_rng(7)
    n = 30
    deltas = rng.normal(0, 0.3, (n, 2000)).astype(np.float32)
    agg = secure_sum(neighbors=8)
    keep = [i for i in range(n) if i not in (4, 17)]
    result, _, ctx = _round(agg, list(deltas), keep=keep)
    assert all(len(g) == 8 for g in ctx.config.neighbors)
    assert ctx.config.threshold == 6  # ceil(2 * 9 / 3)
    plain = np.clip(deltas[keep].astype(np.float64), -1, 1).sum(axis=0)
    assert np.all(np.abs(result.update - plain) <= _bound(n, 1.0, 32, plain))
    # A whole neighbourhood gone: that client's mask key cannot be rebuilt.
    graph = ctx.config.neighbors
    gone = sorted(graph[0] | {1})[:5]  # client 1 and 4 of its 8 neighbours: 4 holders < 6
    keep = [i for i in range(n) if i + 1 not in gone]
    with pytest.raises(FedValueError, match="neighbourhood of client .* fewer than the threshold 6"):
        _round(agg, list(deltas), keep=keep)


def test_repeated_client_ids_are_distinct_clients():
    deltas = [np.full(10, v, np.float32) for v in (0.1, 0.2, 0.3)]
    result, _, _ = _round(secure_sum(), deltas, ids=["a", "a", "b"])
    np.testing.assert_allclose(result.update, 0.6, atol=1e-6)


def test_round_errors_are_clear():
    agg = secure_sum()
    with pytest.raises(FedValueError, match="at least 2 clients"):
        agg.start_round((), ["solo"])
    with pytest.raises(FedValueError, match="threshold: 5 is more than the 4 clients"):
        secure_sum(threshold=5).start_round((), list("abcd"))
    ctx = agg.start_round((), ["a", "b"])
    # A client's step needs its own session (made where it runs, in the advertise stage).
    with pytest.raises(FedValueError, match="needs its own session of the round's key stages"):
        agg.client_step((), np.zeros(3, np.float32), client_id="a", context=ctx)
    with pytest.raises(FedValueError, match="client 1: no secure-aggregation session of this round where it runs"):
        agg.encode(agg.client_view((), ctx, "a", 0), np.zeros(3, np.float32))
    with pytest.raises(FedValueError, match="the unmask stage did not run"):
        agg.aggregate((), [SimpleNamespace(client_id="a", delta=None, num_examples=1)], context=ctx)
    with pytest.raises(FedValueError, match="expected the round context"):
        agg.aggregate((), [], context=None)
    for bad, match in [
        (dict(bits=16), "bits: expected 32 or 64"),
        (dict(clip_range=0), "clip_range"),
        (dict(neighbors=3), "even"),
        (dict(threshold=1.5), r"fraction must be in \(0.5, 1\]"),
    ]:
        with pytest.raises(FedValueError, match=match):
            secure_sum(**bad)
    assert repr(secure_sum()) == "secure_sum(clip_range=1, bits=32, threshold=None)"
    assert SecureSum.averages_non_trainable is False and SecureMean.averages_non_trainable is False


def test_mask_keys_come_from_key_agreement_and_cancel_pairwise():
    # Two clients' masks of zero inputs: the sum is exactly the two self masks.
    config = RoundConfig.build(2, 2)
    server, clients = run_setup(config)
    masked = [c.mask(np.zeros(1000, np.uint32)) for c in clients]
    request = server.collect_masked(masked)
    np.testing.assert_array_equal(server.unmask([c.unmask(request) for c in clients]), np.zeros(1000, np.uint32))
    assert isinstance(clients[0], SecAggClient)


# --- end to end ------------------------------------------------------------------------------

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from fedr import aggregators, learning  # noqa: E402
from fedr.datasets import ClientData  # noqa: E402

FEATURES = 8


def _model_fn():
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(1)])
    return learning.from_keras_model(model, loss="mean_squared_error")


def _clients(sizes=(20, 12, 16, 9), nan_client=None):
    rng = np.random.default_rng(8)
    w = rng.normal(0, 1, FEATURES)
    out = []
    for i, n in enumerate(sizes):
        x = rng.normal(0, 1, (n, FEATURES)).astype(np.float32)
        if i == nan_client:
            # Features of 1e18: the first step's weights are huge, the second's Inf/NaN, so the
            # process drops this client after it shared its keys.
            x = np.full((n, FEATURES), 1e18, np.float32)
        out.append(ClientData(x, (x @ w > 0).astype(np.int64), batch_size=5, client_id=f"k{i}"))
    return out


@pytest.mark.parametrize("nan_client", [None, 2])
def test_fedavg_round_with_secure_mean_equals_the_plain_mean(nan_client):
    clients = _clients(nan_client=nan_client)
    states = {}
    for name, agg in [("plain", aggregators.mean()), ("secure", secure_mean(clip_range=1.0))]:
        process = learning.build_weighted_fed_avg(
            _model_fn, learning.optimizer_fn("sgd", 0.1), aggregator=agg, seed=3, workers=2
        )
        state = process.initialize()
        metrics = None
        for _ in range(2):
            if nan_client is None:
                state, metrics = process.next(state, clients)
            else:
                with pytest.warns(learning.ClientsDroppedWarning, match="k2"):
                    state, metrics = process.next(state, clients)
        states[name] = (state, metrics)
    plain, secure = states["plain"][0], states["secure"][0]
    for a, b in zip(plain.model.trainable, secure.model.trainable, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
    metrics = states["secure"][1]
    assert metrics["secure_clients"] == (3 if nan_client is not None else 4)
    assert metrics["secure_dropped"] == (1 if nan_client is not None else 0)
    assert metrics["secure_num_examples"] == (57 - 16 if nan_client is not None else 57)


def test_secure_sum_as_the_inner_sum_of_differential_privacy():
    privacy = pytest.importorskip("fedr.privacy")
    clients = _clients()
    results = []
    for inner in (aggregators.sum(), secure_sum(clip_range=0.5)):
        agg = privacy.gaussian_fixed(0.0, 4, 0.5, inner=inner)
        process = learning.build_weighted_fed_avg(
            _model_fn, learning.optimizer_fn("sgd", 0.1), aggregator=agg, seed=4
        )
        state, metrics = process.next(process.initialize(), clients)
        results.append(state.model.flat_trainable() if hasattr(state.model, "flat_trainable") else state.model)
    np.testing.assert_allclose(results[1], results[0], rtol=0, atol=_bound(4, 0.5, 32, 2.0).max() / 4 + 1e-7)
