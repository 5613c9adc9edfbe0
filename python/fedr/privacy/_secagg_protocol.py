"""The secure aggregation protocol of Bonawitz et al. 2017, honest-but-curious server.

"Practical Secure Aggregation for Privacy-Preserving Machine Learning"
(CCS 2017), sections 4 and 6 (the version secure against an honest-but-curious
server, without the signatures of the actively secure variant). Client and
server objects each hold only their own secrets and exchange only the message
dataclasses below (public values, ciphertexts, masked vectors)::

    round 0 AdvertiseKeys     client -> server: two X25519 public keys (c_u^PK for
                              encrypting shares, s_u^PK for pairwise masks);
                              server -> clients: every advertised key (U1)
    round 1 ShareKeys         client: t-of-n Shamir shares of its self-mask seed
                              b_u and of its mask secret key s_u^SK, one pair per
                              neighbour v, AES-GCM encrypted under
                              HKDF(X25519(c_u^SK, c_v^PK)); the server routes
                              the ciphertexts (senders: U2)
    round 2 MaskedInput       y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv)
                              - sum_{v<u} PRG(s_uv)  (mod 2^bits), v over
                              u's neighbours in U2; s_uv = HKDF(X25519(s_u^SK, s_v^PK))
                              (senders: U3, the survivors)
    round 3 Unmasking         each survivor sends its shares of b_u for u in U3
                              and of s_u^SK for u in U2 \\ U3 (the dropped), never
                              both for one client; the server reconstructs them
                              (Lagrange interpolation) and removes the masks

PRG is the ChaCha20 keystream (``cryptography``) read as little-endian
unsigned integers; keys come from HKDF-SHA256 with the round's random id as
salt, so no stream is reused across rounds. Shamir sharing is over the prime
field GF(2^256 + 297) (the smallest prime above 2^256, so any 32-byte secret
fits); polynomial coefficients come from :mod:`secrets`.

The pairwise graph is complete by default (every pair of clients masks). With
``neighbors=k`` it is a k-regular circulant graph over a random permutation of
the clients (SecAgg+, Bell et al. 2020, "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead"): each client masks with and shares its secrets to
its k neighbours only, so a round costs O(n k) instead of O(n^2), and the
threshold applies within each neighbourhood (the client and its neighbours).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedr.errors import FedValueError

__all__ = [
    "PRIME",
    "AdvertiseKeys",
    "EncryptedShare",
    "MaskedInput",
    "RoundConfig",
    "SecAggClient",
    "SecAggServer",
    "UnmaskRequest",
    "UnmaskResponse",
    "prg",
    "shamir_combine",
    "shamir_split",
]

PRIME = 2**256 + 297  # prime (checked in tests/test_secagg.py); Shamir's field
_SHARE_BYTES = 33  # an element of GF(PRIME)
_INDEX_BYTES = 4
_NONCE = bytes(16)  # ChaCha20's 16-byte counter+nonce: every key is fresh, so zero is safe
_INFO_SHARE = b"fedr/secagg/v1/share-encryption"
_INFO_PAIR = b"fedr/secagg/v1/pairwise-mask"
_INFO_SELF = b"fedr/secagg/v1/self-mask"
_DTYPES = {32: np.dtype("<u4"), 64: np.dtype("<u8")}


# --- Shamir secret sharing over GF(PRIME) --------------------------------------------------


def shamir_split(secret: int, threshold: int, xs: Iterable[int]) -> dict[int, int]:
    """Shares ``{x: f(x)}`` of ``secret`` = f(0), f of degree threshold - 1 with random coefficients."""
    if not 0 <= secret < PRIME:
        raise FedValueError("secret: outside the field")
    coeffs = [secret, *(secrets.randbelow(PRIME) for _ in range(threshold - 1))]
    coeffs.reverse()
    shares = {}
    for x in xs:
        y = 0
        for c in coeffs:  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y
    return shares


@lru_cache(maxsize=64)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    weights = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        weights.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(weights)


def shamir_combine(shares: Mapping[int, int], threshold: int) -> int:
    """f(0) from ``threshold`` of the shares ``{x: f(x)}`` (Lagrange interpolation at 0)."""
    if len(shares) < threshold:
        raise FedValueError(f"shares: {len(shares)} given, {threshold} needed to reconstruct")
    xs = tuple(sorted(shares)[:threshold])
    weights = _lagrange_at_zero(xs)
    return sum(w * shares[x] for w, x in zip(weights, xs, strict=True)) % PRIME


# --- primitives ---------------------------------------------------------------------------


def _hkdf(secret: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(secret)


def prg(key: bytes, length: int, bits: int) -> np.ndarray:
    """``length`` unsigned ``bits``-bit integers of the ChaCha20 keystream of ``key`` (read-only)."""
    dtype = _DTYPES[bits]
    encryptor = Cipher(algorithms.ChaCha20(key, _NONCE), mode=None).encryptor()
    stream = encryptor.update(bytes(length * dtype.itemsize))
    return np.frombuffer(stream, dtype=dtype)


def _public_bytes(key: X25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _idx(i: int) -> bytes:
    return i.to_bytes(_INDEX_BYTES, "big")


# --- messages (public values only) --------------------------------------------------------


@dataclass(frozen=True)
class RoundConfig:
    """The public parameters of one round, fixed by the server.

    Clients are numbered 1..n (their Shamir evaluation points). ``neighbors[u - 1]``
    is the set of clients u masks with and shares its secrets to.
    """

    round_id: bytes
    num_clients: int
    threshold: int
    bits: int
    neighbors: tuple[frozenset[int], ...]

    @classmethod
    def build(
        cls, num_clients: int, threshold: int, bits: int = 32, *, neighbors: int | None = None,
        rng: np.random.Generator | None = None, round_id: bytes | None = None,
    ) -> RoundConfig:
        """A round's configuration; ``neighbors=k`` (even) builds a k-regular circulant graph on a random order."""
        n = num_clients
        if bits not in _DTYPES:
            raise FedValueError(f"bits: expected 32 or 64, got {bits!r}")
        if neighbors is None or neighbors >= n - 1:
            graph = tuple(frozenset(v for v in range(1, n + 1) if v != u) for u in range(1, n + 1))
        else:
            order = (rng if rng is not None else np.random.default_rng()).permutation(n) + 1
            half = neighbors // 2
            sets: list[set[int]] = [set() for _ in range(n)]
            for pos, u in enumerate(order):
                for off in range(1, half + 1):
                    v = int(order[(pos + off) % n])
                    sets[u - 1].add(v)
                    sets[v - 1].add(int(u))
            graph = tuple(frozenset(s) for s in sets)
        size = min(len(g) for g in graph) + 1
        if not 1 <= threshold <= size:
            raise FedValueError(
                f"threshold: expected 1..{size} (a client and its {size - 1} neighbours), got {threshold}"
            )
        return cls(round_id if round_id is not None else os.urandom(16), n, int(threshold), bits, graph)


@dataclass(frozen=True)
class AdvertiseKeys:
    """Round 0, client -> server: the client's two public keys."""

    index: int
    cipher_public: bytes  # c_u^PK, for encrypting shares
    mask_public: bytes  # s_u^PK, for pairwise masks


@dataclass(frozen=True)
class EncryptedShare:
    """Round 1, client u -> server -> client v: u's shares of b_u and s_u^SK, AES-GCM encrypted for v."""

    sender: int
    recipient: int
    nonce: bytes
    ciphertext: bytes


@dataclass(frozen=True, eq=False)
class MaskedInput:
    """Round 2, client -> server: the masked, quantized input (uint32/uint64 modulo 2^bits)."""

    index: int
    masked: np.ndarray


@dataclass(frozen=True)
class UnmaskRequest:
    """Round 3, server -> survivors: who sent a masked input (U3); the others of U2 dropped."""

    survivors: tuple[int, ...]


@dataclass(frozen=True)
class UnmaskResponse:
    """Round 3, survivor -> server: shares of b_u (u survived) and of s_u^SK (u dropped)."""

    index: int
    seed_shares: dict[int, int] = field(default_factory=dict)
    key_shares: dict[int, int] = field(default_factory=dict)


# --- the parties ----------------------------------------------------------------------------


class SecAggClient:
    """One client of a round: its secrets (b_u, c_u^SK, s_u^SK) never leave it unencrypted."""

    def __init__(self, index: int, config: RoundConfig) -> None:
        if not 1 <= index <= config.num_clients:
            raise FedValueError(f"index: expected 1..{config.num_clients}, got {index}")
        self.index = index
        self.config = config
        self._cipher_key = X25519PrivateKey.generate()
        self._mask_key = X25519PrivateKey.generate()
        self._seed = secrets.token_bytes(32)  # b_u
        self._peers: dict[int, AdvertiseKeys] = {}
        self._received: dict[int, EncryptedShare] = {}
        self._own_shares: tuple[int, int] | None = None
        self._answered: tuple[int, ...] | None = None

    def export(self) -> dict[str, object]:
        """The client's whole state (its secrets included) as plain values, for a carrier that keeps it
        between messages on the client's own machine (a Flower node's ``Context.state``); never send it."""
        return {
            "index": self.index, "config": self.config,
            "cipher_key": self._cipher_key.private_bytes_raw(), "mask_key": self._mask_key.private_bytes_raw(),
            "seed": self._seed, "peers": dict(self._peers), "received": dict(self._received),
            "own_shares": self._own_shares, "answered": self._answered,
        }

    @classmethod
    def restore(cls, data: Mapping[str, object]) -> SecAggClient:
        """The client of :meth:`export`'s values."""
        client = cls.__new__(cls)
        client.index = int(data["index"])  # type: ignore[call-overload]
        client.config = data["config"]  # type: ignore[assignment]
        client._cipher_key = X25519PrivateKey.from_private_bytes(data["cipher_key"])  # type: ignore[arg-type]
        client._mask_key = X25519PrivateKey.from_private_bytes(data["mask_key"])  # type: ignore[arg-type]
        client._seed = bytes(data["seed"])  # type: ignore[arg-type]
        client._peers = dict(data["peers"])  # type: ignore[call-overload]
        client._received = dict(data["received"])  # type: ignore[call-overload]
        own = data["own_shares"]
        client._own_shares = None if own is None else (int(own[0]), int(own[1]))  # type: ignore[index]
        answered = data["answered"]
        client._answered = None if answered is None else tuple(answered)  # type: ignore[arg-type]
        return client

    def advertise(self) -> AdvertiseKeys:
        """Round 0: the two public keys."""
        return AdvertiseKeys(
            self.index, _public_bytes(self._cipher_key.public_key()), _public_bytes(self._mask_key.public_key())
        )

    def _share_key(self, peer: int) -> AESGCM:
        public = X25519PublicKey.from_public_bytes(self._peers[peer].cipher_public)
        return AESGCM(_hkdf(self._cipher_key.exchange(public), self.config.round_id, _INFO_SHARE))

    def _aad(self, sender: int, recipient: int) -> bytes:
        return self.config.round_id + _idx(sender) + _idx(recipient)

    def share_keys(self, keys: Sequence[AdvertiseKeys]) -> list[EncryptedShare]:
        """Round 1: Shamir-share b_u and s_u^SK to the neighbours in ``keys`` (U1), one ciphertext each."""
        config = self.config
        mine = config.neighbors[self.index - 1]
        self._peers = {k.index: k for k in keys if k.index in mine}
        if len(self._peers) + 1 < config.threshold:
            raise FedValueError(
                f"client {self.index}: {len(self._peers)} neighbours advertised keys, fewer than the "
                f"threshold {config.threshold} allows"
            )
        recipients = sorted([*self._peers, self.index])
        seed = shamir_split(int.from_bytes(self._seed, "big"), config.threshold, recipients)
        key = shamir_split(int.from_bytes(self._mask_key.private_bytes_raw(), "big"), config.threshold, recipients)
        self._own_shares = (seed[self.index], key[self.index])
        out = []
        for v in recipients:
            if v == self.index:
                continue
            plain = (
                _idx(self.index) + _idx(v)
                + seed[v].to_bytes(_SHARE_BYTES, "big") + key[v].to_bytes(_SHARE_BYTES, "big")
            )
            nonce = os.urandom(12)
            ciphertext = self._share_key(v).encrypt(nonce, plain, self._aad(self.index, v))
            out.append(EncryptedShare(self.index, v, nonce, ciphertext))
        return out

    def receive_shares(self, shares: Sequence[EncryptedShare]) -> None:
        """Round 1, from the server: the ciphertexts addressed to this client (their senders are U2)."""
        for share in shares:
            if share.recipient != self.index or share.sender not in self._peers:
                raise FedValueError(f"client {self.index}: got a share from {share.sender} for {share.recipient}")
            self._received[share.sender] = share

    def decrypt(self, share: EncryptedShare) -> tuple[int, int]:
        """(share of b_sender, share of s_sender^SK); FedValueError if it does not authenticate."""
        try:
            plain = self._share_key(share.sender).decrypt(
                share.nonce, share.ciphertext, self._aad(share.sender, share.recipient)
            )
        except (InvalidTag, KeyError) as err:
            raise FedValueError(
                f"client {self.index}: the share from client {share.sender} did not authenticate "
                "(not encrypted for this client, or altered)"
            ) from err
        if plain[:_INDEX_BYTES] != _idx(share.sender) or plain[_INDEX_BYTES : 2 * _INDEX_BYTES] != _idx(self.index):
            raise FedValueError(f"client {self.index}: the share from client {share.sender} names other clients")
        body = plain[2 * _INDEX_BYTES :]
        return int.from_bytes(body[:_SHARE_BYTES], "big"), int.from_bytes(body[_SHARE_BYTES:], "big")

    def _pair_key(self, peer: int) -> bytes:
        public = X25519PublicKey.from_public_bytes(self._peers[peer].mask_public)
        return _hkdf(self._mask_key.exchange(public), self.config.round_id, _INFO_PAIR)

    def mask(self, values: np.ndarray) -> MaskedInput:
        """Round 2: y_u = x_u + PRG(b_u) + sum_{v>u} PRG(s_uv) - sum_{v<u} PRG(s_uv), mod 2^bits."""
        bits = self.config.bits
        y = np.array(values, dtype=_DTYPES[bits], copy=True)
        if y.ndim != 1:
            raise FedValueError(f"values: expected a vector, got shape {y.shape}")
        n = y.size
        y += prg(_hkdf(self._seed, self.config.round_id, _INFO_SELF), n, bits)
        for v in sorted(self._received):  # U2 among the neighbours
            stream = prg(self._pair_key(v), n, bits)
            if v > self.index:
                y += stream
            else:
                y -= stream
        return MaskedInput(self.index, y)

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Round 3: shares of b_u for surviving senders and of s_u^SK for dropped ones, never both.

        A client answers one request per round only: answering two different
        survivor sets could hand the server both secrets of one client.
        """
        survivors = tuple(sorted(set(request.survivors)))
        if self._answered is not None and self._answered != survivors:
            raise FedValueError(f"client {self.index}: already answered an unmasking request this round")
        if self.index not in survivors:
            raise FedValueError(f"client {self.index}: asked to unmask but listed as dropped")
        mine = self.config.neighbors[self.index - 1] | {self.index}
        if len(mine.intersection(survivors)) < self.config.threshold:
            raise FedValueError(
                f"client {self.index}: {len(mine.intersection(survivors))} survivors among its neighbourhood, "
                f"fewer than the threshold {self.config.threshold}"
            )
        self._answered = survivors
        alive = set(survivors)
        assert self._own_shares is not None
        response = UnmaskResponse(self.index, {self.index: self._own_shares[0]}, {})
        for sender, share in self._received.items():
            seed_share, key_share = self.decrypt(share)
            if sender in alive:
                response.seed_shares[sender] = seed_share
            else:
                response.key_shares[sender] = key_share
        return response


class SecAggServer:
    """The server of a round: routes messages, sums masked inputs and removes the masks; holds no secret."""

    def __init__(self, config: RoundConfig) -> None:
        self.config = config
        self.keys: dict[int, AdvertiseKeys] = {}  # U1
        self.shared: set[int] = set()  # U2
        self.inputs: dict[int, MaskedInput] = {}  # U3

    def collect_keys(self, adverts: Sequence[AdvertiseKeys]) -> tuple[AdvertiseKeys, ...]:
        """Round 0: check and broadcast the advertised keys."""
        seen = set()
        for a in adverts:
            if a.index in self.keys or (a.cipher_public, a.mask_public) in seen or a.cipher_public == a.mask_public:
                raise FedValueError(f"client {a.index}: advertised twice or reused a key")
            seen.add((a.cipher_public, a.mask_public))
            self.keys[a.index] = a
        if len(self.keys) < self.config.threshold:
            raise FedValueError(f"{len(self.keys)} clients advertised keys, fewer than the threshold")
        return tuple(self.keys[i] for i in sorted(self.keys))

    def route_shares(self, messages: Iterable[Sequence[EncryptedShare]]) -> dict[int, list[EncryptedShare]]:
        """Round 1: the ciphertexts grouped by recipient (the server cannot read them)."""
        inbox: dict[int, list[EncryptedShare]] = {i: [] for i in self.keys}
        for batch in messages:
            for share in batch:
                if share.sender not in self.keys or share.recipient not in self.keys:
                    raise FedValueError(f"share from {share.sender} to {share.recipient}: unknown client")
                self.shared.add(share.sender)
                inbox[share.recipient].append(share)
        return inbox

    def needs(self, survivors: Iterable[int]) -> list[tuple[int, int, int]]:
        """Clients whose secret could not be reconstructed: (client, survivors that hold a share, threshold)."""
        alive = set(survivors)
        missing = []
        for u in sorted(self.shared):
            holders = (self.config.neighbors[u - 1] | {u}) & alive & self.shared
            if len(holders) < self.config.threshold:
                missing.append((u, len(holders), self.config.threshold))
        return missing

    def collect_masked(self, inputs: Sequence[MaskedInput]) -> UnmaskRequest:
        """Round 2: keep the masked inputs of U2's clients; ask the survivors (U3) to unmask."""
        lengths = {m.masked.size for m in inputs}
        if len(lengths) > 1:
            raise FedValueError(f"masked inputs: clients sent vectors of different lengths {sorted(lengths)}")
        for m in inputs:
            if m.index not in self.shared or m.index in self.inputs:
                raise FedValueError(f"client {m.index}: a masked input from a client that did not share keys, or twice")
            if m.masked.dtype != _DTYPES[self.config.bits]:
                raise FedValueError(
                    f"client {m.index}: masked input of {m.masked.dtype}, expected uint{self.config.bits}"
                )
            self.inputs[m.index] = m
        missing = self.needs(self.inputs)
        if missing:
            u, have, t = missing[0]
            raise FedValueError(f"client {u}: {have} surviving holders of its shares, fewer than the threshold {t}")
        return UnmaskRequest(tuple(sorted(self.inputs)))

    def unmask(self, responses: Sequence[UnmaskResponse]) -> np.ndarray:
        """Round 3: reconstruct b_u (survivors) and s_u^SK (dropped), remove every mask; the sum mod 2^bits."""
        config = self.config
        alive = set(self.inputs)
        answered = {r.index for r in responses}
        if not answered <= alive:
            raise FedValueError("unmasking: an answer from a client that sent no masked input")
        if self.needs(answered):
            u, have, t = self.needs(answered)[0]
            raise FedValueError(f"client {u}: {have} unmasking answers hold its shares, fewer than the threshold {t}")
        bits, length = config.bits, next(iter(self.inputs.values())).masked.size
        total = np.zeros(length, _DTYPES[bits])
        for u in sorted(alive):
            total += self.inputs[u].masked
        for u in sorted(alive):
            shares = {r.index: r.seed_shares[u] for r in responses if u in r.seed_shares}
            seed = shamir_combine(shares, config.threshold).to_bytes(32, "big")
            total -= prg(_hkdf(seed, config.round_id, _INFO_SELF), length, bits)
        for u in sorted(self.shared - alive):
            shares = {r.index: r.key_shares[u] for r in responses if u in r.key_shares}
            secret = X25519PrivateKey.from_private_bytes(shamir_combine(shares, config.threshold).to_bytes(32, "big"))
            for v in sorted(config.neighbors[u - 1] & alive):
                public = X25519PublicKey.from_public_bytes(self.keys[v].mask_public)
                stream = prg(_hkdf(secret.exchange(public), config.round_id, _INFO_PAIR), length, bits)
                # v added +PRG(s_uv) when u > v, -PRG(s_uv) when u < v: take v's term back out.
                if u > v:
                    total -= stream
                else:
                    total += stream
        return total


def run_setup(config: RoundConfig) -> tuple[SecAggServer, list[SecAggClient]]:
    """Rounds 0 and 1 for every client of ``config`` (a simulation in one process): server and clients."""
    server = SecAggServer(config)
    clients = [SecAggClient(u, config) for u in range(1, config.num_clients + 1)]
    keys = server.collect_keys([c.advertise() for c in clients])
    inbox = server.route_shares([c.share_keys(keys) for c in clients])
    for c in clients:
        c.receive_shares(inbox[c.index])
    return server, clients
