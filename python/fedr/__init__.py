"""fedr: federated learning for R and Python.

Federated averaging of Keras models over simulated clients (McMahan et al.
2016), with TensorFlow Federated's names for the building blocks.  TensorFlow
is imported only when a model or a computation needs it: ``import fedr`` is
quick, and ``fedr.learning`` loads on first use.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from typing import Any

# fedr runs clients in parallel, one worker per core; TensorFlow's per-op
# threads on a client's small batches only contend with the other workers
# (bench/README.md: 0.175 s -> 0.076 s a round).  TensorFlow reads this when it
# first runs an op, so it works even when TensorFlow was imported first, as
# from R; set TF_NUM_INTRAOP_THREADS yourself to choose otherwise.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")

# Before anything imports TensorFlow: its load-time absl lines (oneDNN on
# AVX-512 CPUs) ignore TF_CPP_MIN_LOG_LEVEL; fedr makes the level hold for them.
# Quiet as R sessions are: TensorFlow's C++ INFO and WARNING lines off unless
# the user chose a level (TF_CPP_MIN_LOG_LEVEL=0 shows them all).
from fedr import _tf_quiet  # noqa: E402

if _tf_quiet.install():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from fedr import aggregators, datasets, errors, executors
from fedr.computations import (
    CLIENTS,
    SERVER,
    Computation,
    FederatedType,
    FederatedValue,
    Placement,
    SequenceType,
    TensorType,
    federated_broadcast,
    federated_computation,
    federated_map,
    federated_mean,
    federated_sum,
    tf_computation,
)
from fedr.errors import FedError, FedTypeError, FedValueError

try:
    __version__ = importlib.metadata.version("fedr")
except importlib.metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"

__all__ = [
    "CLIENTS",
    "SERVER",
    "Computation",
    "FedError",
    "FedTypeError",
    "FedValueError",
    "FederatedType",
    "FederatedValue",
    "Placement",
    "SequenceType",
    "TensorType",
    "aggregators",
    "attacks",
    "datasets",
    "errors",
    "executors",
    "federated_broadcast",
    "federated_computation",
    "federated_map",
    "federated_mean",
    "federated_sum",
    "gossip",
    "learning",
    "privacy",
    "tf_computation",
]


def __getattr__(name: str) -> Any:
    # fedr.learning (and what uses it) imports TensorFlow (about 2 s): load on first use only.
    if name in ("learning", "privacy", "attacks", "gossip"):
        return importlib.import_module(f"fedr.{name}")
    raise AttributeError(f"module 'fedr' has no attribute {name!r}")
