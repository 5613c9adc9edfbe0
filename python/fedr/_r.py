"""Helpers for the R package at the Python boundary (used through reticulate)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from fedr._env import own_libpython_first  # noqa: F401 - where it used to live
from fedr.errors import FedWarning

__all__ = ["call_with_warnings", "fit_with_warnings", "own_libpython_first", "raise_cause"]


def call_with_warnings(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, list[str]]:
    """Call ``fn`` and return its result with the messages of the fedr warnings it issued.

    R does not see Python warnings; the R layer re-signals these as R warnings.
    Other warnings are issued again as they were.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(*args, **kwargs)
    messages = []
    for w in caught:
        if issubclass(w.category, FedWarning):
            messages.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result, messages




def fit_with_warnings(*args: Any, loop: str = "learning", **kwargs: Any) -> tuple[Any, Any, list[str]]:
    """Run :func:`fedr.learning.fit` (or, ``loop="gossip"``, :func:`fedr.gossip.fit`) for R: ``(history, error, warnings)``.

    A failed or interrupted fit (``FitError``, ``FitInterrupted``) is returned
    as ``error`` with its history, not raised, so that R reads the finished
    rounds from it (reticulate's R error would not hold the exception);
    ``warnings`` are the fedr warnings' messages, for R to signal. Other
    errors (bad arguments) are raised.
    """
    from fedr.learning import FitError, FitInterrupted

    if loop == "gossip":
        from fedr.gossip import fit
    else:
        from fedr.learning import fit
    error: BaseException | None = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fit(*args, **kwargs)
        except (FitError, FitInterrupted) as err:
            result, error = err.history, err
    messages = [str(w.message) for w in caught if issubclass(w.category, FedWarning)]
    for w in caught:
        if not issubclass(w.category, FedWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return result, error, messages


def raise_cause(error: BaseException) -> None:
    """Raise the exception that ended a failed fit (R turns it into its usual fedr error)."""
    raise error.__cause__ or error
