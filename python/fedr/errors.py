"""Exception types of fedr: one base class, subclasses of the builtin types users catch."""

from __future__ import annotations

import re
from typing import Any

# fedr's messages start with what they are about: "rounds: expected ..." or "`monitor` ...".
_ABOUT = re.compile(r"^(?:([A-Za-z_][A-Za-z0-9_]*): |`([A-Za-z_][A-Za-z0-9_]*)`)")


class FedError(Exception):
    """Base class of every error fedr raises.

    Attributes:
        argument: The argument (or setting) the error is about, as data, or
            None: given as ``argument=``, else the name the message starts
            with (``"rounds: expected a positive integer"`` -> ``"rounds"``).
            R's layer reads it to name the R argument; nothing parses text.
    """

    def __init__(self, *args: Any, argument: str | None = None) -> None:
        super().__init__(*args)
        if argument is None and args and isinstance(args[0], str):
            found = _ABOUT.match(args[0])
            argument = (found.group(1) or found.group(2)) if found else None
        self.argument = argument


class FedValueError(FedError, ValueError):
    """A value has the right type but a wrong content."""


class FedTypeError(FedError, TypeError):
    """A value has the wrong type."""


class BudgetExhaustedError(FedValueError):
    """A round was refused because it would spend more privacy budget than allowed (``max_epsilon``).

    Raised before any client trains, so the state is unchanged; the fit loop
    ends the run there as planned (an event, not a failure).
    """


class FedWarning(UserWarning):
    """Base class of the warnings fedr issues (R turns them into R warnings)."""
