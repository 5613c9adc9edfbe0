"""Exception types of fedr: one base class, subclasses of the builtin types users catch."""


class FedError(Exception):
    """Base class of every error fedr raises."""


class FedValueError(FedError, ValueError):
    """A value has the right type but a wrong content."""


class FedTypeError(FedError, TypeError):
    """A value has the wrong type."""


class FedWarning(UserWarning):
    """Base class of the warnings fedr issues (R turns them into R warnings)."""
