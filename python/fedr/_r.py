"""Helpers for the R package at the Python boundary (used through reticulate)."""

from __future__ import annotations

import sysconfig
import warnings
from collections.abc import Callable, MutableMapping
from typing import Any

from fedr.errors import FedWarning

__all__ = ["call_with_warnings", "own_libpython_first"]


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


def own_libpython_first(env: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Put this Python's library directory first on ``env``'s LD_LIBRARY_PATH; return ``env``.

    Embedded in R, the environment carries R's LD_LIBRARY_PATH, which lists the
    system's libpython: programs this Python starts as new processes (Ray's
    raylet and workers, Flower's SuperLink and SuperNodes) would load that one
    and fail ("undefined symbol" in ``_ssl``, TOOLCHAIN pitfall 11).
    """
    libdir = sysconfig.get_config_var("LIBDIR")
    current = env.get("LD_LIBRARY_PATH")
    if libdir and current and current.split(":")[0] != libdir:
        env["LD_LIBRARY_PATH"] = f"{libdir}:{current}"
    return env
