"""ε of distributed DP with the Skellam mechanism: the papers' RDP bounds, dp-accounting's conversion to (ε, δ).

dp-accounting (0.6) models Gaussian, Laplace and a few other mechanisms but
not the Skellam mechanism, nor Poisson subsampling of a mechanism given only
by its RDP curve. So, as the issue asks, the two bounds used are the papers'
own, each in one function below and tested against the papers' statements
(``tests/test_distributed_dp.py``); the conversion from RDP to (ε, δ) is
dp-accounting's (``rdp_privacy_accountant.compute_epsilon``):

- The Skellam mechanism (Agarwal, Kairouz and Liu 2021, "The Skellam Mechanism
  for Differentially Private Federated Learning", NeurIPS; Theorem 3.5): adding
  Sk(μ, μ) (variance 2μ) to each coordinate of an integer vector query of L2
  sensitivity Δ₂ and L1 sensitivity Δ₁ is (α, ε(α))-RDP with
  ε(α) = α Δ₂² / (4μ) + min(((2α − 1) Δ₂² + 6 Δ₁) / (16 μ²), 3 Δ₁ / (4μ)).
  The first term is the Gaussian mechanism's RDP at the same variance; the
  second vanishes as μ grows. :func:`skellam_rdp` writes it in the update's
  units (scale ``s``: integers = s × update, so Δ' = sΔ and 2μ = s² V).
- Stochastic rounding to the integer grid raises the sensitivity: an update of
  L2 norm ≤ C rounds to a vector within √d of s·x, so Δ₂' ≤ sC + √d, and for an
  integer vector Δ₁' ≤ Δ₂' min(√d, Δ₂') (Kairouz, Liu and Steinke 2021,
  "The Distributed Discrete Gaussian Mechanism for Federated Learning with
  Secure Aggregation", Theorem 1 with β = 0; :func:`rounded_sensitivity`).
- Poisson subsampling with rate q (Zhu and Wang 2019, "Poisson Subsampled Rényi
  Differential Privacy", ICML): the general upper bound for any mechanism,
  at integer orders α ≥ 2,
  ε'(α) ≤ log[(1−q)^(α−1)(αq − q + 1) + C(α,2) q² (1−q)^(α−2) e^ε(2)
  + 3 Σ_{l=3..α} C(α,l) q^l (1−q)^(α−l) e^((l−1)ε(l))] / (α − 1),
  optimal up to log(3)/(α − 1) (:func:`poisson_subsampled_rdp`); the smaller
  of it and the unamplified ε(α) is used, as the Skellam paper's accounting does.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["ORDERS", "epsilon_from_rdp", "poisson_subsampled_rdp", "round_rdp", "rounded_sensitivity",
           "skellam_rdp"]

# Integer orders: the subsampling bound is a sum over integers up to α.
ORDERS = tuple(range(2, 129)) + (256,)


def skellam_rdp(orders: np.ndarray | float, *, variance: float, scale: float, l2: float, l1: float) -> np.ndarray:
    """RDP of the Skellam mechanism (Agarwal, Kairouz and Liu 2021, Theorem 3.5), in the update's units.

    Args:
        orders: RDP orders α > 1.
        variance: V, the total noise variance per coordinate in the update's
            units (the integers carry s² V).
        scale: s, integers per unit of the update.
        l2, l1: The L2 and L1 sensitivity of the (rounded) sum, in the update's units.
    """
    a = np.asarray(orders, dtype=np.float64)
    s, mu = float(scale), float(variance)
    gaussian = a * l2**2 / (2 * mu)
    correction = np.minimum(((2 * a - 1) * s * l2**2 + 6 * l1) / (4 * s**3 * mu**2), 3 * l1 / (2 * s * mu))
    return gaussian + correction


def rounded_sensitivity(clip: float, scale: float, dim: int) -> tuple[float, float]:
    """(Δ₂, Δ₁) of one client's stochastically rounded update of L2 norm ≤ ``clip``, in the update's units."""
    l2 = float(clip) * scale + np.sqrt(dim)  # integers
    l1 = l2 * min(np.sqrt(dim), l2)
    return l2 / scale, l1 / scale


def poisson_subsampled_rdp(order: int, q: float, rdp: Callable[[np.ndarray], np.ndarray]) -> float:
    """Zhu and Wang 2019's general upper bound on the RDP of a Poisson-subsampled mechanism at integer ``order``.

    Args:
        order: An integer α >= 2.
        q: The sampling probability, in (0, 1].
        rdp: The mechanism's RDP ε(l), vectorised over integer orders l (2..α).
    """
    from scipy.special import gammaln, logsumexp

    a = int(order)
    if q >= 1:
        return float(np.asarray(rdp(np.array([a])))[0])
    log_q, log_1q = np.log(q), np.log1p(-q)
    l = np.arange(2, a + 1)
    log_comb = gammaln(a + 1) - gammaln(l + 1) - gammaln(a - l + 1)
    higher = log_comb + l * log_q + (a - l) * log_1q + (l - 1) * np.asarray(rdp(l), np.float64)
    terms = np.concatenate([[(a - 1) * log_1q + np.log(a * q - q + 1)], higher])
    weights = np.concatenate([[1.0, 1.0], np.full(a - 2, 3.0)])
    return float(logsumexp(terms, b=weights) / (a - 1))


def round_rdp(*, q: float, variance: float, scale: float, clip: float, dim: int) -> np.ndarray:
    """One round's RDP at :data:`ORDERS`: Skellam noise of ``variance`` on the rounded sum, sampled at rate ``q``."""
    l2, l1 = rounded_sensitivity(clip, scale, dim)

    def eps(orders: np.ndarray) -> np.ndarray:
        return skellam_rdp(orders, variance=variance, scale=scale, l2=l2, l1=l1)

    plain = skellam_rdp(np.asarray(ORDERS), variance=variance, scale=scale, l2=l2, l1=l1)
    if q >= 1:
        return plain
    return np.array([min(poisson_subsampled_rdp(a, q, eps), p) for a, p in zip(ORDERS, plain, strict=True)])


def epsilon_from_rdp(rdp: np.ndarray, delta: float) -> float:
    """ε at ``delta`` of an RDP curve at :data:`ORDERS` (dp-accounting's conversion)."""
    from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

    if not np.any(rdp > 0):
        return 0.0
    return float(compute_epsilon(ORDERS, np.asarray(rdp, np.float64), delta)[0])
