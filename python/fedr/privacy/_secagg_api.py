"""The secure-aggregation builders: secure_sum() and secure_mean() (the aggregators are in fedr.privacy._secagg)."""

from __future__ import annotations



from fedr.privacy._secagg import SecureMean, SecureSum


_ARGS_DOC = """
    Args:
        clip_range: Each coordinate is clipped to [-clip_range, clip_range]
            before quantization; choose it above the largest coordinate of an
            update (under DP, the L2 clip bounds every coordinate).
        bits: 32 or 64: sums are modulo 2^bits. Fixed point with
            M = (2^(bits-1) - 1) // n levels per client for n clients, so the
            sum cannot overflow.
        threshold: How many clients must survive (send their masked update)
            to unmask the sum; more than half of the round's n clients
            (t > n/2, Bonawitz et al. 2017: with t <= n/2 the server could
            learn both secrets of a client from two disjoint groups and
            unmask its update), so a round with t <= n/2 is refused. An int
            >= 2, a fraction of the round's clients in (0.5, 1], or None for
            ceil(2n/3) (at least 2): up to a third of the
            clients may drop; the server with fewer than ``threshold`` clients
            colluding learns nothing more than the sum (Bonawitz et al. 2017,
            Theorem 6.3). With ``neighbors``, n is the neighbourhood's size.
        neighbors: None (default) masks every pair of clients: O(n^2) masks
            per round. An even k builds a k-regular graph over a random order
            of the round's clients (SecAgg+, Bell et al. 2020): each client
            masks with and shares to its k neighbours only, O(n k) work; the
            threshold then applies to each client and its neighbours.
"""


def secure_sum(
    *,
    clip_range: float = 1.0,
    bits: int = 32,
    threshold: int | float | None = None,
    neighbors: int | None = None,
) -> SecureSum:
    """The sum of the clients' updates, computed by secure aggregation (Bonawitz et al. 2017).

    The server learns only the (unweighted) sum: each client sends its update
    quantized and masked with pairwise masks that cancel in the sum and a self
    mask the survivors help remove. Clients that drop after sharing keys are
    recovered while at least ``threshold`` survive. Pass it as the ``inner``
    sum of :func:`fedr.privacy.gaussian_fixed` or
    :func:`fedr.privacy.gaussian_adaptive`; on its own, FedAvg would apply the
    sum, not a mean (use :func:`secure_mean`).

    The result is within n^2 clip_range / (2^(bits-1) - 1) of the sum of the
    clipped updates per coordinate (stochastic rounding; n clients).
    {args}
    Returns:
        An :class:`~fedr.aggregators.Aggregator` reporting ``secure_clients``
        (survivors), ``secure_dropped`` and ``secure_threshold``.

    Raises:
        FedValueError: an argument out of range; at a round, fewer than 2
            clients or a threshold not above half of them, or (in
            ``aggregate``) fewer survivors than the threshold.
    """
    return SecureSum(clip_range=clip_range, bits=bits, threshold=threshold, neighbors=neighbors)


def secure_mean(
    *,
    clip_range: float = 1.0,
    bits: int = 64,
    threshold: int | float | None = None,
    neighbors: int | None = None,
    max_examples: int = 2**24,
) -> SecureMean:
    """The example-weighted mean of the clients' updates under secure aggregation, FedAvg's mean.

    Each client sends ``num_examples * update`` and ``num_examples`` (an exact
    coordinate of its own) through the secure sum; the server divides the two
    sums, so it learns only the total of the weighted updates and the total
    number of examples. See :func:`secure_sum` for the protocol.
    {args}
        max_examples: The most examples any client may report in a round (a
            client above it fails the round); it bounds the fixed point:
            resolution clip_range * max_examples / M per example.

    Returns:
        An :class:`~fedr.aggregators.Aggregator` reporting ``secure_clients``,
        ``secure_dropped``, ``secure_threshold`` and ``secure_num_examples``.

    Raises:
        FedValueError: as :func:`secure_sum`, and when ``max_examples`` times
            the round's clients does not fit in ``bits``.
    """
    return SecureMean(
        clip_range=clip_range, bits=bits, threshold=threshold, neighbors=neighbors, max_examples=max_examples
    )


secure_sum.__doc__ = (secure_sum.__doc__ or "").replace("{args}", _ARGS_DOC.rstrip() + "\n")
secure_mean.__doc__ = (secure_mean.__doc__ or "").replace("{args}", _ARGS_DOC.rstrip())
