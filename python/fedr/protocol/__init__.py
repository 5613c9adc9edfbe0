"""The round protocol's plain-data parts, free of TensorFlow: messages, stages, the names every round writes.

(DESIGN.md: messages, reserved names and seeds live here; more moves in as the
round becomes one protocol for every transport.)
"""

from fedr.protocol.messages import ClientFailure, ClientOutput, carry_stage, describe_error, run_locally
from fedr.protocol.names import (
    COUNT_COLUMNS,
    GOSSIP_COUNT_COLUMNS,
    RESERVED_METRICS,
    RESERVED_PREFIXES,
    check_metric_names,
    is_reserved,
)

__all__ = [
    "COUNT_COLUMNS",
    "GOSSIP_COUNT_COLUMNS",
    "RESERVED_METRICS",
    "RESERVED_PREFIXES",
    "ClientFailure",
    "ClientOutput",
    "carry_stage",
    "check_metric_names",
    "describe_error",
    "is_reserved",
    "run_locally",
]
