"""fedr on Flower's deployment engine: real clients over the network.

A fedr federation is a Flower federation (Beutel et al. 2020, "Flower: A
Friendly Federated Learning Research Framework"): a SuperLink on the server,
one SuperNode per client holding its own data, and Flower's own commands
(``flower-superlink``, ``flower-supernode``, ``flwr run``) between them, over
TLS for anything but loopback. fedr brings the algorithms: the ServerApp runs
a fedr process (the same aggregation, differential privacy, robust
aggregators, server optimizer, seeds and checkpoints as in-process) through
:class:`FedrStrategy`, and the ClientApp trains with fedr's client update on
the data the node's config points at (an R ``.rds`` file, ``.npz``, CSV or a
dataset folder), so a node needs no code of its own.

From Python::

    link = fedr.flower.superlink()                        # flower-superlink
    a = fedr.flower.supernode("site_a.rds", link)         # flower-supernode
    b = fedr.flower.supernode("site_b.rds", link)
    result = fedr.flower.run(process, rounds=5, superlink=link)   # flwr run
    result.state, result.history

From R: ``fed_flower_superlink()``, ``fed_flower_node()``, ``fed_flower_run()``.
The app under ``examples/flower/`` shows a Flower app of your own.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

# Loaded on first use (PEP 562): a node's per-message ClientApp imports
# fedr.flower.clientapp, and must not pay for the ServerApp's TensorFlow.
_OWNERS: dict[str, str] = {
    "FedrStrategy": "fedr.flower._strategy",
    "FlowerProcess": "fedr.flower._launch",
    "FlowerRoundWarning": "fedr.flower._run",
    "FlowerRun": "fedr.flower._run",
    "FlowerSeedWarning": "fedr.flower._run",
    "check_flower_aggregator": "fedr.flower._checks",
    "check_run_target": "fedr.flower._run",
    "check_tls": "fedr.flower._launch",
    "free_port": "fedr.flower._launch",
    "load_node_data": "fedr.flower._node",
    "make_certificates": "fedr.flower._credentials",
    "make_node_key": "fedr.flower._credentials",
    "progress_line": "fedr.flower._run",
    "run": "fedr.flower._run",
    "superlink": "fedr.flower._launch",
    "supernode": "fedr.flower._launch",
}

__all__ = sorted(_OWNERS)


def __getattr__(name: str) -> Any:
    owner = _OWNERS.get(name)
    if owner is None:
        if importlib.util.find_spec(f"{__name__}.{name}") is None:
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
        return importlib.import_module(f"{__name__}.{name}")  # a submodule: fedr.flower.apps
    value = getattr(importlib.import_module(owner), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_OWNERS))
