"""Helpers for the R package at the Python boundary (used through reticulate)."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from fedr.errors import FedWarning

__all__ = ["call_with_warnings"]


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
