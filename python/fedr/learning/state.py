"""The whole, named state of a federated process, checked against its model, saved to one file.

``ModelWeights`` holds every variable of the Keras model: the trainable ones
and the non-trainable ones (BatchNorm statistics, random-generator state), in
Keras variable order, with canonical names. ``ServerState`` adds the server
optimizer's named state, the aggregator's state and the round number. Both are
values: arrays are read-only and every round returns a new state, so a state
saved with :func:`save_state` resumes bit for bit after :func:`load_state`.

The file format is numpy's ``.npz`` (a zip of ``.npy`` arrays, read with
``allow_pickle=False``) holding one JSON header ``__fedr__`` with the format
version, the round and, per array, its group, name, shape and dtype.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedr.errors import FedError, FedTypeError, FedValueError

__all__ = [
    "FORMAT_VERSION",
    "ModelWeights",
    "ServerState",
    "StateFileError",
    "canonical_names",
    "load_state",
    "save_state",
]

FORMAT_VERSION = 1
_HEADER = "__fedr__"
_MAGIC = "fedr.ServerState"

# A named group of arrays: (name, array) pairs in a fixed order.
NamedArrays = tuple[tuple[str, np.ndarray], ...]


class StateFileError(FedError, ValueError):
    """A checkpoint file is missing, corrupt, truncated, foreign or of another version."""


def canonical_names(paths: Sequence[str]) -> tuple[str, ...]:
    """Return a model's variable paths renumbered from zero, as in a fresh process.

    Keras numbers auto-named objects with a counter over the whole process
    (``dense``, ``dense_1``, ... and the next model's ``dense_2``), so the same
    architecture gets other names in every replica. Here each path part's
    counter is replaced by the part's rank among the parts of the same stem,
    in order of appearance: the second model's ``sequential_1/dense_2/kernel``
    and ``sequential_1/dense_3/kernel`` become ``sequential/dense/kernel`` and
    ``sequential/dense_1/kernel``, the names a model built first has. Names
    stay unique within the model.
    """
    renamed: dict[str, str] = {}
    seen: dict[str, int] = {}
    out = []
    for path in paths:
        parts = []
        for part in path.split("/"):
            if part not in renamed:
                stem = re.sub(r"_\d+$", "", part)
                rank = seen.get(stem, 0)
                seen[stem] = rank + 1
                renamed[part] = stem if rank == 0 else f"{stem}_{rank}"
            parts.append(renamed[part])
        out.append("/".join(parts))
    return tuple(out)


def _frozen(array: Any) -> np.ndarray:
    out = np.array(array, copy=True, order="C")
    out.flags.writeable = False
    return out


def _named(pairs: Any, what: str) -> NamedArrays:
    if isinstance(pairs, Mapping):
        pairs = list(pairs.items())
    out = []
    for item in pairs:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)):
            raise FedTypeError(f"{what}: expected (name, array) pairs, got {type(item).__name__}")
        out.append((item[0], _frozen(item[1])))
    return tuple(out)


@dataclass(frozen=True, eq=False)
class ModelWeights:
    """Every variable of a model, as read-only arrays in Keras variable order.

    Attributes:
        trainable: The trainable variables' values.
        non_trainable: The non-trainable variables' values (e.g. BatchNorm
            moving mean and variance, Dropout's random-generator state).
        trainable_names: Canonical variable names (see :func:`canonical_names`).
        non_trainable_names: Likewise for ``non_trainable``.
    """

    trainable: tuple[np.ndarray, ...]
    non_trainable: tuple[np.ndarray, ...] = ()
    trainable_names: tuple[str, ...] = ()
    non_trainable_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for group in ("trainable", "non_trainable"):
            arrays = tuple(_frozen(a) for a in getattr(self, group))
            object.__setattr__(self, group, arrays)
            names = tuple(getattr(self, f"{group}_names")) or tuple(
                f"{group}_{i}" for i in range(len(arrays))
            )
            if len(names) != len(arrays):
                raise FedValueError(
                    f"{group}_names: expected {len(arrays)} names, got {len(names)}"
                )
            object.__setattr__(self, f"{group}_names", names)

    @classmethod
    def from_model(cls, model: Any) -> ModelWeights:
        """Read the current values of a :class:`fedr.learning.Model`'s variables."""
        train, non_train = model.trainable_variables, model.non_trainable_variables
        names = canonical_names([v.path for v in train] + [v.path for v in non_train])
        return cls(
            tuple(np.asarray(v.numpy()) for v in train),
            tuple(np.asarray(v.numpy()) for v in non_train),
            names[: len(train)],
            names[len(train) :],
        )

    def flat_trainable(self) -> np.ndarray:
        """The trainable values as one float32 vector, in order (a new array)."""
        if not self.trainable:
            return np.zeros(0, np.float32)
        return np.concatenate([np.asarray(a, np.float32).ravel() for a in self.trainable])

    def with_trainable(self, flat: np.ndarray) -> tuple[np.ndarray, ...]:
        """Split a flat float32 vector into arrays shaped and typed as ``trainable``."""
        out, start = [], 0
        for a in self.trainable:
            out.append(flat[start : start + a.size].reshape(a.shape).astype(a.dtype, copy=False))
            start += a.size
        return tuple(out)

    def __repr__(self) -> str:
        def shapes(names: Sequence[str], arrays: Sequence[np.ndarray]) -> str:
            return ", ".join(f"{n} {a.shape}" for n, a in zip(names, arrays, strict=True))

        return (
            f"ModelWeights(trainable=[{shapes(self.trainable_names, self.trainable)}], "
            f"non_trainable=[{shapes(self.non_trainable_names, self.non_trainable)}])"
        )


@dataclass(frozen=True, eq=False)
class ServerState:
    """The server's state between rounds; every round returns a new one.

    Attributes:
        model: The global model's :class:`ModelWeights`.
        optimizer_state: The server optimizer's named state, e.g.
            ``(("iteration", ...), ("momentum", ...))``.
        aggregator_state: The aggregator's named state (empty for the mean).
        round_num: Rounds completed.
        client_work: The server's named state of the clients' algorithm:
            SCAFFOLD's server control variate ``scaffold/control``; empty
            for FedAvg and FedProx. (What each client keeps is not here: it
            stays where the client runs, see
            :class:`~fedr.learning.ClientStates`.)
    """

    model: ModelWeights
    optimizer_state: NamedArrays = ()
    aggregator_state: NamedArrays = ()
    round_num: int = 0
    client_work: NamedArrays = ()
    flat_weights: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelWeights):
            raise FedTypeError(f"model: expected ModelWeights, got {type(self.model).__name__}")
        object.__setattr__(self, "optimizer_state", _named(self.optimizer_state, "optimizer_state"))
        object.__setattr__(self, "aggregator_state", _named(self.aggregator_state, "aggregator_state"))
        object.__setattr__(self, "client_work", _named(self.client_work, "client_work"))
        if isinstance(self.round_num, bool) or not isinstance(self.round_num, int | np.integer):
            raise FedTypeError(f"round_num: expected an int, got {type(self.round_num).__name__}")
        if self.round_num < 0:
            raise FedValueError(f"round_num: expected a non-negative int, got {self.round_num}")
        object.__setattr__(self, "round_num", int(self.round_num))
        flat = self.model.flat_trainable()
        flat.flags.writeable = False
        object.__setattr__(self, "flat_weights", flat)

    @property
    def model_weights(self) -> tuple[np.ndarray, ...]:
        """The trainable weights (as in earlier fedr versions); see ``model`` for all."""
        return self.model.trainable

    @property
    def shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shapes of the trainable variables."""
        return tuple(a.shape for a in self.model.trainable)

    def __repr__(self) -> str:
        shapes = ", ".join(str(s) for s in self.shapes)
        extra = f", non_trainable={len(self.model.non_trainable)}" if self.model.non_trainable else ""
        return f"ServerState(round_num={self.round_num}, model_weights=[{shapes}]{extra})"


# ----------------------------------------------------------------------------- checks


def check_weights(expected: ModelWeights, given: ModelWeights, what: str = "state") -> None:
    """Raise FedValueError unless ``given`` has ``expected``'s variables and finite values.

    Variables are compared one by one (name, shape, dtype), so a state from
    another model with the same number of weights is refused, naming the first
    variable that differs.
    """
    for group in ("trainable", "non_trainable"):
        want_names, got_names = getattr(expected, f"{group}_names"), getattr(given, f"{group}_names")
        want, got = getattr(expected, group), getattr(given, group)
        if len(want) != len(got):
            raise FedValueError(
                f"{what}: the model has {len(want)} {group.replace('_', '-')} variables "
                f"({', '.join(want_names) or 'none'}), the state has {len(got)} "
                f"({', '.join(got_names) or 'none'}); is it from another model?"
            )
        for i, (wn, gn, wa, ga) in enumerate(zip(want_names, got_names, want, got, strict=True)):
            if wn != gn or wa.shape != ga.shape or wa.dtype != ga.dtype:
                raise FedValueError(
                    f"{what}: {group.replace('_', '-')} variable {i} is '{gn}' {ga.dtype}{list(ga.shape)} "
                    f"but the model expects '{wn}' {wa.dtype}{list(wa.shape)}; is it from another model?"
                )
            if ga.dtype.kind == "f" and ga.size and not np.isfinite(ga).all():
                bad = int(np.size(ga) - np.isfinite(ga).sum())
                raise FedValueError(
                    f"{what}: variable '{gn}' has {bad} non-finite value(s) (NaN or Inf); "
                    "training diverged: lower the learning rate and start from an earlier state"
                )


# ----------------------------------------------------------------------------- files


def _entries(state: ServerState) -> list[tuple[str, str, np.ndarray]]:
    groups = [
        ("trainable", zip(state.model.trainable_names, state.model.trainable, strict=True)),
        ("non_trainable", zip(state.model.non_trainable_names, state.model.non_trainable, strict=True)),
        ("optimizer", state.optimizer_state),
        ("aggregator", state.aggregator_state),
        ("client_work", state.client_work),
    ]
    return [(group, name, array) for group, pairs in groups for name, array in pairs]


def save_state(state: ServerState, path: str | os.PathLike[str]) -> str:
    """Save a server state to one file, atomically.

    The state is written to a temporary file in the same directory, flushed to
    disk and renamed over ``path``, so a crash never leaves a half-written
    checkpoint: ``path`` holds either the old file or the whole new one.

    Args:
        state: A :class:`ServerState`.
        path: The file to write (conventionally ``*.fedr``); its directory must exist.

    Returns:
        The path written, as a string.

    Raises:
        FedTypeError: ``state`` is not a ServerState.
        FedValueError: ``path`` is a directory.
        FileNotFoundError: the directory does not exist.
        OSError: (e.g. PermissionError) the file or its directory cannot be
            written; the message names ``path``.
    """
    if not isinstance(state, ServerState):
        raise FedTypeError(f"state: expected a ServerState, got {type(state).__name__}")
    path = _check_path(path)
    if os.path.isdir(path):
        raise FedValueError(
            f"path: {path!r} is a directory; give the checkpoint a file name, e.g. "
            f"{os.path.join(path, 'state.fedr')!r}"
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"path: directory {directory!r} does not exist")
    entries = _entries(state)
    header = {
        "format": _MAGIC,
        "version": FORMAT_VERSION,
        "round_num": state.round_num,
        "arrays": [
            {"group": g, "name": n, "shape": list(a.shape), "dtype": a.dtype.str} for g, n, a in entries
        ],
    }
    write_npz(path, header, [a for _, _, a in entries])
    return path


def write_npz(path: str, header: Mapping[str, Any], arrays: Sequence[np.ndarray]) -> None:
    """Write ``arrays`` (as ``a0``, ``a1``, ...) and the JSON ``header`` to the ``.npz`` file ``path``, atomically.

    A temporary file in the same directory is written, flushed to disk and
    renamed over ``path``: a crash leaves the old file or the whole new one.
    Shared by the server state's file and the client states' file.

    Raises:
        OSError: (e.g. PermissionError) the file or its directory cannot be
            written; the message names ``path``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    named = {f"a{i}": a for i, a in enumerate(arrays)}
    named[_HEADER] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    try:
        fd, tmp = tempfile.mkstemp(prefix=".fedr-", suffix=".tmp", dir=directory)
    except OSError as err:
        # The OS names the temporary file; the user knows only `path`.
        raise _write_error(err, path, directory) from None
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **named)
            f.flush()
            # mkstemp makes the file private (0600); give it the mode a new file gets.
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError):
            raise _write_error(err, path, directory) from None
        raise
    # The rename itself reaches the disk with the directory.
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_error(err: OSError, path: str, directory: str) -> OSError:
    """``err`` again (same type, e.g. PermissionError), naming the user's ``path``, not the temporary file."""
    why = err.strerror or str(err)
    return type(err)(
        f"path: cannot write the checkpoint {path!r}: {why} (a temporary file in {directory!r} "
        "is written first, then renamed over it; the directory must be writable)"
    )


def _check_path(path: Any) -> str:
    if not isinstance(path, str | bytes | os.PathLike):
        raise FedTypeError(f"path: expected a file path, got {type(path).__name__}")
    return os.fsdecode(path)


def load_state(path: str | os.PathLike[str], process: Any = None) -> ServerState:
    """Load a server state written by :func:`save_state`.

    Args:
        path: The file.
        process: Optionally the process that will train it (e.g. from
            ``build_weighted_fed_avg``): the state is then checked against its
            model now, variable by variable (name, shape, dtype, finite
            values), rather than when first used by ``next`` or ``evaluate``.

    Returns:
        The :class:`ServerState`, bit for bit as saved.

    Raises:
        FileNotFoundError: no such file.
        FedValueError: ``path`` is a directory.
        StateFileError: the file is not a fedr checkpoint, is truncated or
            corrupt, or has another format version; the message names the file.
        FedValueError: ``process`` is given and the state does not fit its
            model; the message names the file and the variable.
    """
    path = _check_path(path)
    if process is not None and not callable(getattr(process, "check_state", None)):
        raise FedTypeError(
            f"process: expected a process from build_weighted_fed_avg, got {type(process).__name__}"
        )
    state = _read_state(path)
    if process is not None:
        try:
            process.check_state(state)
        except FedValueError as err:
            raise FedValueError(f"{os.fspath(path)!r}: {err}") from None
    return state


def read_npz(path: str, magic: str, version: int, what: str,
             kind: str) -> tuple[dict[str, Any], list[tuple[dict[str, Any], np.ndarray]]]:
    """Read a file of :func:`write_npz` whose header has ``format`` ``magic`` and ``version``: (header, entries).

    Each entry is the header's description of an array (``name``, ``shape``,
    ``dtype`` and the file's own keys) and the array, checked against it.
    ``what`` names the kind of file in messages ("checkpoint"), ``kind`` its
    header ("state": "not a fedr state header"). Shared by the
    server state's file and the client states' file.

    Raises:
        StateFileError: not such a file, truncated, corrupt, or another version; the message names ``path``.
    """
    def bad(text: str) -> StateFileError:
        return StateFileError(f"{path!r} is not a readable fedr {what}: {text}")

    try:
        with np.load(path, allow_pickle=False) as npz:
            if _HEADER not in npz.files:
                raise bad(f"it has no '{_HEADER}' header (a foreign .npz file?)")
            header = json.loads(bytes(npz[_HEADER]).decode())
            if not isinstance(header, dict) or header.get("format") != magic:
                raise bad(f"its header is not a fedr {kind} header")
            if header.get("version") != version:
                raise bad(f"format version {header.get('version')!r}; this fedr reads version {version}")
            entries = []
            for i, entry in enumerate(header["arrays"]):
                array = npz[f"a{i}"]
                if list(array.shape) != entry["shape"] or array.dtype.str != entry["dtype"]:
                    owner = f"client '{entry['client']}' " if "client" in entry else ""
                    raise bad(f"{owner}array '{entry['name']}' is {array.dtype.str}{list(array.shape)}, "
                              f"the header says {entry['dtype']}{entry['shape']}")
                entries.append((entry, array))
            int(header["round_num"])
    except StateFileError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError, TypeError) as err:
        kind = "truncated or corrupt" if isinstance(err, zipfile.BadZipFile | EOFError) else "unreadable"
        raise bad(f"{kind} ({type(err).__name__}: {err})") from None
    return header, entries


def _read_state(path: str | os.PathLike[str]) -> ServerState:
    path = os.fspath(path)
    if os.path.isdir(path):
        raise FedValueError(f"path: {path!r} is a directory, not a checkpoint file written by save_state()")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no checkpoint file at {path!r}")
    header, entries = read_npz(path, _MAGIC, FORMAT_VERSION, "checkpoint", "state")
    groups: dict[str, list[tuple[str, np.ndarray]]] = {
        "trainable": [], "non_trainable": [], "optimizer": [], "aggregator": [], "client_work": [],
    }
    try:
        for entry, array in entries:
            groups[entry["group"]].append((entry["name"], array))
    except KeyError as err:
        raise StateFileError(f"{path!r} is not a readable fedr checkpoint: unreadable (KeyError: {err})") from None
    round_num = int(header["round_num"])
    model = ModelWeights(
        tuple(a for _, a in groups["trainable"]),
        tuple(a for _, a in groups["non_trainable"]),
        tuple(n for n, _ in groups["trainable"]),
        tuple(n for n, _ in groups["non_trainable"]),
    )
    return ServerState(model, tuple(groups["optimizer"]), tuple(groups["aggregator"]), round_num,
                       tuple(groups["client_work"]))
