"""Bounding updates in front of any mean: norm bounding and zeroing (Sun et al. 2019).

"Can You Really Backdoor Federated Learning?" (Sun et al. 2019, arXiv:1911.07963):
an attacker's update must be large to move the model, so bounding each
client's update before averaging defends against it at little cost.

- :func:`norm_bounded`: every update is clipped to L2 norm ``max_norm``
  (``num_clipped`` in the round's metrics), then the inner aggregator.
- :func:`zeroing`: an update with non-finite values or a norm above
  ``max_norm`` is dropped (weight 0, ``num_zeroed``), then the inner aggregator.

The inner aggregator (default: the example-weighted mean) must read the
clients' updates as they are on the server (mean, median, trimmed mean,
Krum, Bulyan, geometric median); DP and secure aggregation, which never show
the server an update, are refused as inner. Its metrics come under ``inner_``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from fedr.aggregators._mean import AggregateResult, Aggregator, ClientResult, Mean, NamedArrays, deltas
from fedr.errors import FedTypeError, FedValueError

__all__ = ["NormBounded", "Zeroing", "norm_bounded", "reads_plain_updates", "zeroing"]


class _Output(NamedTuple):
    """A client output as an inner aggregator reads it: the (clipped) delta and the example count."""

    client_id: str
    delta: np.ndarray
    num_examples: int


def _check_max_norm(max_norm: object) -> float:
    if isinstance(max_norm, bool) or not isinstance(max_norm, int | float | np.integer | np.floating):
        raise FedTypeError(f"max_norm: expected a finite number > 0, got {type(max_norm).__name__}")
    value = float(max_norm)
    if not (math.isfinite(value) and value > 0):
        raise FedValueError(f"max_norm: expected a finite number > 0, got {max_norm!r}")
    return value


def reads_plain_updates(aggregator: Aggregator) -> bool:
    """Whether ``aggregator`` reads the clients' updates as they are sent, on the server (mean, median, ...).

    False for differential privacy and secure aggregation: they protect the
    individual updates (the server never sees them), transform them on the
    client (their own client step or message stages) and keep the
    non-trainable variables out of the aggregate.
    """
    cls = type(aggregator)
    own_step = cls.encode is not Aggregator.encode or cls.client_step is not Aggregator.client_step
    return bool(aggregator.averages_non_trainable and not aggregator.stages_before
                and not aggregator.stages_after and not own_step)


def _check_plain_inner(inner: Any, outer: str) -> Aggregator:
    """The inner aggregator, which must read the clients' raw updates on the server (mean, median, ...)."""
    if inner is None:
        return Mean()
    if not isinstance(inner, Aggregator):
        raise FedTypeError(f"inner: expected a fedr aggregator such as fedr.aggregators.mean(), got {type(inner).__name__}")
    if not reads_plain_updates(inner):
        raise FedValueError(
            f"inner: {outer} bounds the clients' updates on the server, so its inner aggregator must read them "
            f"as they are (mean, median, trimmed_mean, krum, bulyan, geometric_median), got {inner!r}"
        )
    return inner


class _Bounded(Aggregator):
    """An aggregator in front of an inner one: it bounds each update, then the inner one aggregates."""

    def __init__(self, max_norm: float, inner: Aggregator | None, name: str) -> None:
        self.max_norm = _check_max_norm(max_norm)
        self.inner = _check_plain_inner(inner, f"{name}()")

    def init(self) -> NamedArrays:
        return tuple((f"inner/{n}", v) for n, v in self.inner.init())

    def _inner_state(self, state: NamedArrays) -> NamedArrays:
        return tuple((n[len("inner/"):], v) for n, v in state if n.startswith("inner/"))

    def start_round(
        self, state: NamedArrays, client_ids: Sequence[str], *, seed: np.random.SeedSequence | None = None
    ) -> Any:
        # The inner aggregator refuses a round too small for it, before anyone trains.
        return self.inner.start_round(self._inner_state(state), client_ids, seed=seed)

    def _inner(self, state: NamedArrays, kept: list[_Output], own: dict[str, float], seed: Any, context: Any,
               positions: Sequence[int], round_size: int) -> AggregateResult:
        """The inner aggregator over ``kept`` (at ``positions`` of the round's outputs); its selection mapped back."""
        inner = self.inner.aggregate(self._inner_state(state), kept, seed=seed, context=context)
        metrics = {**own, **{f"inner_{k}": v for k, v in inner.metrics.items()}}
        chosen = list(positions) if inner.selected is None else [positions[i] for i in inner.selected]
        selected = None if len(chosen) == round_size else tuple(chosen)
        return AggregateResult(tuple((f"inner/{n}", v) for n, v in inner.state), inner.update, metrics, selected)


def _norm(delta: np.ndarray) -> float:
    """The L2 norm of a float32 update, summed in float64 (NaN or Inf for a non-finite one)."""
    return float(np.sqrt(np.dot(delta.astype(np.float64), delta.astype(np.float64))))


class NormBounded(_Bounded):
    """Norm bounding (Sun et al. 2019): every update clipped to L2 norm ``max_norm``, then the inner aggregator."""

    def __init__(self, max_norm: float, inner: Aggregator | None = None) -> None:
        super().__init__(max_norm, inner, "norm_bounded")

    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[ClientResult],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        updates = deltas(outputs)
        clipped, count = [], 0
        for out, delta in zip(outputs, updates, strict=True):
            norm = _norm(delta)
            if not math.isfinite(norm):
                raise FedValueError(f"{out.client_id}: its update is not finite (norm {norm}); norm_bounded() "
                                    "needs finite updates (zeroing() drops them)")
            if norm > self.max_norm:
                count += 1
                delta = (delta.astype(np.float64) * (self.max_norm / norm)).astype(np.float32)
            clipped.append(_Output(out.client_id, delta, out.num_examples))
        return self._inner(state, clipped, {"num_clipped": float(count)}, seed, context, range(len(outputs)),
                           len(outputs))

    def __repr__(self) -> str:
        return f"norm_bounded(max_norm={self.max_norm}, inner={self.inner!r})"


class Zeroing(_Bounded):
    """Zeroing: updates that are not finite or longer than ``max_norm`` get weight 0; the inner aggregator takes the rest."""

    def __init__(self, max_norm: float, inner: Aggregator | None = None) -> None:
        super().__init__(max_norm, inner, "zeroing")

    def aggregate(
        self,
        state: NamedArrays,
        outputs: Sequence[ClientResult],
        *,
        seed: np.random.SeedSequence | None = None,
        context: Any = None,
    ) -> AggregateResult:
        updates = deltas(outputs)
        positions = [i for i, delta in enumerate(updates) if _norm(delta) <= self.max_norm]  # False for NaN, Inf
        kept = [_Output(outputs[i].client_id, updates[i], outputs[i].num_examples) for i in positions]
        if not kept:
            raise FedValueError(
                f"zeroing(max_norm={self.max_norm}): all {len(outputs)} updates were non-finite or longer than "
                "max_norm, so nothing is left to aggregate; raise max_norm or check the clients"
            )
        return self._inner(state, kept, {"num_zeroed": float(len(outputs) - len(kept))}, seed, context, positions,
                           len(outputs))

    def __repr__(self) -> str:
        return f"zeroing(max_norm={self.max_norm}, inner={self.inner!r})"


def norm_bounded(max_norm: float, inner: Aggregator | None = None) -> NormBounded:
    """Clip every client's update to L2 norm ``max_norm`` on the server, then aggregate with ``inner``.

    Norm bounding of Sun et al. 2019 ("Can You Really Backdoor Federated
    Learning?"): an update x longer than ``max_norm`` becomes
    ``x * max_norm / ||x||`` before the inner aggregator sees it, which
    bounds what one client can move the mean. Runs on the server, since a
    bad client would skip a client-side clip. Metrics: ``num_clipped``, and
    the inner aggregator's under ``inner_``.

    Args:
        max_norm: The largest L2 norm an update keeps (finite, > 0).
        inner: An aggregator that reads the updates as they are: ``mean()``
            (None, the default), ``mean(weighted=False)``, ``median()``,
            ``trimmed_mean(beta)``, ``krum(f)``, ``bulyan(f)``,
            ``geometric_median()``; not DP or secure aggregation.

    Returns:
        An :class:`Aggregator`.

    Raises:
        FedValueError: ``max_norm`` is not finite and positive; ``inner``
            protects or transforms the updates; at aggregation, a non-finite
            update, or the inner aggregator's own refusals.
        FedTypeError: ``max_norm`` is not a number or ``inner`` not an aggregator.
    """
    return NormBounded(max_norm, inner)


def zeroing(max_norm: float, inner: Aggregator | None = None) -> Zeroing:
    """Drop (weight 0) every update that is not finite or longer than ``max_norm``, then aggregate with ``inner``.

    The inner aggregator sees only the remaining updates, so the bounds of
    a robust inner one (a median needs 3 clients) apply to them. Metrics:
    ``num_zeroed`` (how many were dropped), and the inner aggregator's under
    ``inner_``.

    Args:
        max_norm: The largest L2 norm an update may have (finite, > 0).
        inner: As in :func:`norm_bounded`.

    Returns:
        An :class:`Aggregator`.

    Raises:
        FedValueError: ``max_norm`` is not finite and positive; ``inner``
            protects or transforms the updates; at aggregation, every update
            dropped, or the inner aggregator's refusals for what is left.
        FedTypeError: ``max_norm`` is not a number or ``inner`` not an aggregator.
    """
    return Zeroing(max_norm, inner)
