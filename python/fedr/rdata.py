"""Client data from R objects through rpy2: matrices, data frames and ``.rds`` files.

An R user's data becomes :class:`fedr.datasets.ClientData` without leaving the
Python process: an R numeric matrix (with labels given separately or as one of
its columns), an R data frame with a label column, a ``list(x =, y =)``, or an
``.rds`` file holding any of these (or a list of them, one per client). The
public entry point for files is :func:`fedr.datasets.read_rds`.

R arrays are column-major; rpy2 exposes them to numpy as Fortran-ordered views,
so element ``[i, j]`` stays ``[i, j]`` and the one copy is ClientData's
conversion to C-ordered float32. R's missing values are checked here, where
they are still recognisable (``NA_integer_`` is -2**31 once in numpy).

rpy2 is imported inside the functions, so ``import fedr`` does not need R.
Only plain R runs through rpy2 (``readRDS``, R data objects): calling R code
that itself uses reticulate from here crashes the process (R's garbage
collector frees Python objects without the GIL).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from fedr._client_data import ClientData, as_labels
from fedr.errors import FedTypeError, FedValueError

__all__ = ["client_data_from_r", "clients_from_r", "read_rds"]

_NA_INTEGER = np.iinfo(np.int32).min  # NA_integer_ and NA (logical) in R's memory
_DEFAULT_LABEL = "label"


def _robjects() -> Any:
    try:
        import rpy2.robjects as ro
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError(
            "reading R data (fedr.rdata, fedr.datasets.read_rds) needs rpy2 and R: "
            f"pip install 'rpy2==3.5.17'; importing rpy2 failed: {err}"
        ) from None
    return ro


def _rclass(obj: Any) -> tuple[str, ...]:
    return tuple(getattr(obj, "rclass", ()) or ())


def _is_data_frame(obj: Any) -> bool:
    return "data.frame" in _rclass(obj)


def _has_dim(obj: Any) -> bool:
    dim = getattr(obj, "dim", None)
    try:
        return dim is not None and len(dim) >= 2
    except TypeError:  # rpy2 gives NULL for vectors without dim
        return False


def _names(obj: Any) -> list[str]:
    names = getattr(obj, "names", None)
    try:
        return [str(n) for n in names] if names is not None and len(names) else []
    except TypeError:
        return []


def _column_values(column: Any, what: str) -> np.ndarray:
    """An R atomic vector as a numpy array, refusing NA and non-numeric types."""
    rclass = _rclass(column)
    if "factor" in rclass:
        raise FedTypeError(f"{what} is a factor; features must be numeric")
    values = np.asarray(column)
    if values.dtype.kind not in "biuf":
        raise FedTypeError(f"{what} must be numeric; got R class {'/'.join(rclass) or values.dtype}")
    _check_na(values, column, what)
    return values


def _check_na(values: np.ndarray, robj: Any, what: str) -> None:
    if values.dtype.kind == "f":
        bad = np.flatnonzero(np.isnan(values.ravel(order="F")))
    elif _is_r_integer_like(robj):
        bad = np.flatnonzero(values.ravel(order="F") == _NA_INTEGER)
    else:
        return
    if bad.size:
        raise FedValueError(
            f"{what} has {bad.size} missing value(s) (NA or NaN); the first is element {int(bad[0]) + 1}"
        )


def _is_r_integer_like(robj: Any) -> bool:
    typeof = getattr(robj, "typeof", None)
    name = getattr(typeof, "name", "")
    return name in ("INTSXP", "LGLSXP")


def _labels(obj: Any, what: str) -> np.ndarray:
    """Labels from an R vector (integer, whole doubles or factor) or a Python sequence.

    Here R's values become numpy (factor codes, NA); the rule on labels is
    :func:`fedr.datasets.as_labels`'s.
    """
    values = np.asarray(obj)
    _check_na(values, obj, what)
    if "factor" in _rclass(obj):
        values = values.astype(np.int64) - 1  # as the R package does: level 1 is class 0
    if values.ndim == 2 and 1 in values.shape:  # a one-column (or one-row) matrix
        values = values.reshape(-1)
    return as_labels(values, what=what)


def _from_data_frame(df: Any, label: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    names = _names(df)
    label_name = _DEFAULT_LABEL if label is None else label
    if not isinstance(label_name, str):
        raise FedTypeError(f"{where}: label must be the name of a column of the data frame; got {label!r}")
    if label_name not in names:
        raise FedValueError(f"{where}: no label column {label_name!r}; columns are {names}")
    columns = [
        _column_values(df[i], f"{where}: column {name!r}") for i, name in enumerate(names) if name != label_name
    ]
    if not columns:
        raise FedValueError(f"{where}: the data frame has no feature columns besides {label_name!r}")
    x = np.column_stack([c.astype(np.float32, copy=False) for c in columns])
    y = _labels(df[names.index(label_name)], f"{where}: column {label_name!r}")
    return x, y


def _from_matrix(m: Any, label: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    x = _column_values(m, f"{where}: x")  # a Fortran view: [i, j] as in R
    if label is None:
        raise FedValueError(f"{where}: a matrix needs `label`: a column name or one label per row")
    if isinstance(label, str):
        colnames = _matrix_colnames(m)
        if label not in colnames:
            raise FedValueError(f"{where}: no label column {label!r}; columns are {colnames}")
        j = colnames.index(label)
        if x.ndim != 2:
            raise FedValueError(f"{where}: a label column needs a 2-D matrix; got shape {x.shape}")
        y = x[:, j]
        x = np.delete(x, j, axis=1)
        return x, _labels(y, f"{where}: column {label!r}")
    return x, _labels(label, f"{where}: label")


def _matrix_colnames(m: Any) -> list[str]:
    dimnames = getattr(m, "dimnames", None)
    try:
        cols = dimnames[1] if dimnames is not None and len(dimnames) >= 2 else None
        return [str(c) for c in cols] if cols is not None and len(cols) else []
    except (TypeError, IndexError):
        return []


def _from_list(obj: Any, label: Any, where: str) -> tuple[np.ndarray, np.ndarray]:
    names = _names(obj)
    x_obj, y_obj = obj[names.index("x")], obj[names.index("y")]
    if not _has_dim(x_obj):
        raise FedValueError(f"{where}: x must be a matrix or array (examples in rows)")
    x = _column_values(x_obj, f"{where}: x")
    return x, _labels(y_obj, f"{where}: y")


def _is_client_list(obj: Any) -> bool:
    return "list" in _rclass(obj) and {"x", "y"} <= set(_names(obj))


def client_data_from_r(
    obj: Any,
    *,
    label: str | Sequence[Any] | Any = None,
    batch_size: int | None = None,
    client_id: str = "client_0",
) -> ClientData:
    """Turn one R object into one client's data.

    Args:
        obj: An rpy2 R object: a numeric matrix or array (examples in rows), a
            data frame of numeric feature columns plus a label column, or a
            ``list(x =, y =)``.
        label: For a data frame, the label column's name (default ``"label"``).
            For a matrix, the name of its label column, or the labels (an R
            vector, a factor or a Python sequence), one per row. Factor level 1
            is class 0.
        batch_size: Rows per batch; None makes one batch of all rows.
        client_id: The client's name, used in messages.

    Returns:
        A :class:`ClientData` with float32 C-ordered features and int32 labels.

    Raises:
        FedTypeError: ``obj`` is none of these, or a column is not numeric.
        FedValueError: a missing label column, an NA or NaN, or lengths that differ.
    """
    where = f"client {client_id!r}"
    if _is_data_frame(obj):
        x, y = _from_data_frame(obj, label, where)
    elif _is_client_list(obj):
        x, y = _from_list(obj, label, where)
    elif _has_dim(obj):
        x, y = _from_matrix(obj, label, where)
    else:
        raise FedTypeError(
            f"{where}: expected an R matrix, data frame or list(x =, y =); "
            f"got R class {'/'.join(_rclass(obj)) or type(obj).__name__}"
        )
    return ClientData(x, y, batch_size=batch_size, client_id=client_id)


def clients_from_r(
    obj: Any, *, label: str | None = None, batch_size: int | None = None
) -> list[ClientData]:
    """Turn an R list with one element per client into a list of client data.

    Args:
        obj: An rpy2 R list whose elements :func:`client_data_from_r` accepts.
            Element names become client ids (``client_<i>`` when unnamed).
        label: The label column of data frames and matrices (see
            :func:`client_data_from_r`).
        batch_size: Rows per batch.

    Returns:
        One :class:`ClientData` per element.

    Raises:
        FedTypeError: ``obj`` is not an R list.
        FedValueError: the list is empty, or an element is invalid.
    """
    if "list" not in _rclass(obj):
        raise FedTypeError(f"expected an R list of clients; got R class {'/'.join(_rclass(obj)) or type(obj).__name__}")
    n = len(obj)
    if n == 0:
        raise FedValueError("expected at least one client; got an empty R list")
    names = _names(obj) or [""] * n
    ids = [name if name else f"client_{i}" for i, name in enumerate(names)]
    return [client_data_from_r(obj[i], label=label, batch_size=batch_size, client_id=ids[i]) for i in range(n)]


def read_rds(
    path: str | os.PathLike[str],
    *,
    label: str | None = None,
    batch_size: int | None = None,
    client_id: str | None = None,
) -> ClientData | list[ClientData]:
    """Read client data from an ``.rds`` file written by R's ``saveRDS()``.

    Args:
        path: The file.
        label: The label column (see :func:`client_data_from_r`).
        batch_size: Rows per batch.
        client_id: The client's name for a single client; default the file's stem.

    Returns:
        A :class:`ClientData` for a matrix, data frame or ``list(x =, y =)``; a
        list of them for a list of clients.

    Raises:
        FileNotFoundError: no such file.
        FedValueError: the file is not one R can read (corrupt, truncated,
            not written by ``saveRDS``); the message names it.
        FedTypeError, FedValueError: as :func:`client_data_from_r`.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no .rds file at {path!r}")
    ro = _robjects()
    # R catches its own error, so its console does not print it and the
    # message can name the file (R's "unknown input format" names none).
    read = ro.r(
        "function(f) tryCatch(readRDS(f), error = function(e) "
        "structure(list(conditionMessage(e)), class = 'fedr_read_error'))"
    )
    obj = read(path)
    if "fedr_read_error" in _rclass(obj):
        why = str(obj[0][0]).strip()
        raise FedValueError(
            f"path: {path!r} is not an R data file that readRDS() can read ({why}); "
            "write it with saveRDS() in R"
        )
    if "list" in _rclass(obj) and not _is_client_list(obj) and not _is_data_frame(obj):
        return clients_from_r(obj, label=label, batch_size=batch_size)
    stem = os.path.splitext(os.path.basename(path))[0]
    return client_data_from_r(obj, label=label, batch_size=batch_size, client_id=client_id or stem)
