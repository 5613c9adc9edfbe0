"""This Python's process environment for the programs it starts (Ray's workers, Flower's CLIs)."""

from __future__ import annotations

import sysconfig
from collections.abc import MutableMapping

__all__ = ["own_libpython_first"]


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
