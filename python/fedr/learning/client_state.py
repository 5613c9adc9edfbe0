"""State a client keeps between rounds (SCAFFOLD's control variate), where the client runs.

Most algorithms forget a client after its round; SCAFFOLD (Karimireddy et al.
2020) does not: each client keeps a control variate c_i from one round it
takes part in to the next. That state is the client's, so it never enters
the server's :class:`~fedr.learning.ServerState` and never crosses to the
server: a client's task returns it beside its output
(``ClientOutput.client_state``) and the carrier that runs the client keeps it.

- In this process (threads, serial) and on Ray, the clients' data lives in
  this process (Ray's actors get it from here, through the object store), so
  the store lives beside it: a :class:`ClientStates` owned by the process
  (``process.client_states``), keyed by client id. A Ray actor that restarts
  loses nothing: the state is not on the actor.
- A Flower node keeps its own client's state in its ``Context.state``, on the
  node's machine (:mod:`fedr.flower`).

A client seen for the first time has no state (SCAFFOLD starts it at zero).
The round's new states are committed only when the round succeeds, so a
failed round leaves the clients as they were, as it leaves the server state.
The store saves to one file (:meth:`ClientStates.save`), which the fit loop
writes into its checkpoint directory beside the server state. Personalisation
methods (a client's own layers) can keep their state here the same way.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from fedr.errors import FedTypeError, FedValueError
from fedr.learning.state import StateFileError, read_npz, write_npz

__all__ = ["CLIENT_STATES_FORMAT_VERSION", "ClientStates", "load_client_states"]

CLIENT_STATES_FORMAT_VERSION = 1
_HEADER = "__fedr__"
_MAGIC = "fedr.ClientStates"


def _frozen(state: Mapping[str, Any], client_id: str) -> dict[str, np.ndarray]:
    if not isinstance(state, Mapping):
        raise FedTypeError(f"client '{client_id}': its state must be a mapping of names to arrays, "
                           f"got {type(state).__name__}")
    out = {}
    for name, value in state.items():
        array = np.array(value, copy=True)
        array.flags.writeable = False
        out[str(name)] = array
    return out


class ClientStates:
    """The states clients keep between rounds, by client id: the store beside their data.

    Each client's state is a mapping of names to arrays (read-only copies).
    ``round_num`` is the last round whose states were committed. Thread-safe.
    """

    def __init__(self) -> None:
        self._states: dict[str, dict[str, np.ndarray]] = {}
        self._lock = threading.Lock()
        self.round_num = 0

    def get(self, client_id: str) -> Mapping[str, np.ndarray] | None:
        """The state of ``client_id``, or None for a client not seen yet."""
        with self._lock:
            return self._states.get(str(client_id))

    def states_for(self, client_ids: Sequence[str]) -> list[Mapping[str, np.ndarray] | None]:
        """Each client's state (None for a new one), in the order of ``client_ids``."""
        with self._lock:
            return [self._states.get(str(c)) for c in client_ids]

    def commit(self, states: Mapping[str, Mapping[str, Any]], round_num: int) -> None:
        """Keep the new ``states`` (client id -> state) of round ``round_num``; other clients keep theirs."""
        frozen = {str(cid): _frozen(state, str(cid)) for cid, state in states.items()}
        with self._lock:
            self._states.update(frozen)
            self.round_num = int(round_num)

    def clear(self) -> None:
        """Forget every client's state (a fresh run)."""
        with self._lock:
            self._states.clear()
            self.round_num = 0

    def ids(self) -> list[str]:
        """The ids of the clients with a state, sorted."""
        with self._lock:
            return sorted(self._states)

    def __len__(self) -> int:
        with self._lock:
            return len(self._states)

    def __contains__(self, client_id: object) -> bool:
        with self._lock:
            return str(client_id) in self._states

    def __repr__(self) -> str:
        return f"ClientStates({len(self)} clients, round_num={self.round_num})"

    def save(self, path: str | os.PathLike[str]) -> str:
        """Write every client's state to the file ``path`` (an ``.npz``, no pickle), atomically; the path.

        Raises:
            FedValueError: ``path`` is a directory.
            FileNotFoundError: its directory does not exist.
            OSError: the file cannot be written; the message names ``path``.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            raise FedValueError(f"path: {path!r} is a directory; give the client states a file name")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"path: directory {directory!r} does not exist")
        with self._lock:
            entries = [(cid, name, a) for cid in sorted(self._states) for name, a in self._states[cid].items()]
            round_num = self.round_num
        header = {
            "format": _MAGIC, "version": CLIENT_STATES_FORMAT_VERSION, "round_num": round_num,
            "arrays": [{"client": c, "name": n, "shape": list(a.shape), "dtype": a.dtype.str} for c, n, a in entries],
        }
        write_npz(path, header, [a for _, _, a in entries])
        return path

    def load(self, path: str | os.PathLike[str]) -> ClientStates:
        """Replace this store's states by those saved in ``path`` (see :func:`load_client_states`); ``self``."""
        loaded = load_client_states(path)
        with self._lock:
            self._states = loaded._states
            self.round_num = loaded.round_num
        return self


def load_client_states(path: str | os.PathLike[str]) -> ClientStates:
    """Read client states written by :meth:`ClientStates.save`.

    Raises:
        FileNotFoundError: no such file.
        StateFileError: the file is not a fedr client-states file, is truncated
            or corrupt, or has another format version; the message names it.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no client-states file at {path!r}")

    header, entries = read_npz(path, _MAGIC, CLIENT_STATES_FORMAT_VERSION, "client-states file", "client-states")
    states: dict[str, dict[str, np.ndarray]] = {}
    for entry, array in entries:
        if "client" not in entry:
            raise StateFileError(f"{path!r} is not a readable fedr client-states file: an array without its client")
        array.flags.writeable = False
        states.setdefault(str(entry["client"]), {})[str(entry["name"])] = array
    round_num = int(header["round_num"])
    store = ClientStates()
    store._states = states
    store.round_num = round_num
    return store


def take_client_states(results: Iterable[Any]) -> tuple[list[Any], dict[str, Mapping[str, np.ndarray]]]:
    """Split a round's results: the outputs without their ``client_state``, and client id -> new state.

    A carrier calls this before the server side sees the outputs; it commits
    the states (:meth:`ClientStates.commit`) once the round has succeeded.
    """
    stripped: list[Any] = []
    states: dict[str, Mapping[str, np.ndarray]] = {}
    for result in results:
        state = getattr(result, "client_state", None)
        if state is not None:
            states[result.client_id] = state
            result = result._replace(client_state=None)
        stripped.append(result)
    return stripped, states
