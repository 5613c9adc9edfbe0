"""The fit loop's checkpoint: one directory, rewritten atomically after every round.

``state.fedr`` (the last state, :func:`~fedr.learning.save_state`), ``best.fedr``
(early stopping's best state), ``history.csv`` (the rows, for people and R) and
``fit.json`` (what resuming needs: rows, events, skipped draws, early stopping),
and for a process whose clients keep state between rounds (SCAFFOLD), the
states of its clients that run in this process or on Ray, ``clients.fedr``
(:class:`~fedr.learning.ClientStates`: the clients' side, saved with them).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from fedr.errors import FedValueError
from fedr.learning.client_state import load_client_states
from fedr.learning.state import ServerState, load_state, save_state

STATE_FILE = "state.fedr"
BEST_FILE = "best.fedr"
HISTORY_FILE = "history.csv"
RUN_FILE = "fit.json"
CLIENTS_FILE = "clients.fedr"


def _write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _history_csv(rows: Sequence[Mapping[str, float]]) -> str:
    names: list[str] = []
    for row in rows:
        names += [k for k in row if k not in names]
    lines = [",".join(names)]
    # repr: the shortest text that reads back as the same double.
    lines += [",".join("" if k not in row else repr(row[k]) for k in names) for row in rows]
    return "\n".join(lines) + "\n"


def save_checkpoint(directory: str, state: ServerState, run: dict[str, Any], best_changed: ServerState | None,
                    process: Any = None) -> None:
    """Write the run's checkpoint into ``directory``: the state, the best state when it changed, the rows, the run."""
    # The best state first, the run file last: a crash between two writes leaves a
    # checkpoint whose run file names a round whose state files are at least as new.
    if best_changed is not None:
        save_state(best_changed, os.path.join(directory, BEST_FILE))
    save_state(state, os.path.join(directory, STATE_FILE))
    store = getattr(process, "client_states", None) if getattr(process, "scaffold", False) else None
    if store is not None:
        store.save(os.path.join(directory, CLIENTS_FILE))
    _write_atomic(os.path.join(directory, HISTORY_FILE), _history_csv(run["rows"]))
    _write_atomic(os.path.join(directory, RUN_FILE), json.dumps(run))


def load_checkpoint(directory: str, process: Any) -> tuple[ServerState, dict[str, Any], ServerState | None] | None:
    """Read the checkpoint in ``directory``: ``(state, run, best state or None)``, or ``None`` when there is none.

    Raises:
        FedValueError: the state file and the run file disagree on the round.
        StateFileError: a state file is unreadable or does not fit ``process``.
    """
    run_path = os.path.join(directory, RUN_FILE)
    if not os.path.exists(run_path):
        return None
    with open(run_path, encoding="utf-8") as f:
        run = json.load(f)
    state = load_state(os.path.join(directory, STATE_FILE), process)
    if state.round_num != run["round_num"]:
        raise FedValueError(
            f"checkpoint_dir: {STATE_FILE} is at round {state.round_num} but {RUN_FILE} at round "
            f"{run['round_num']}; the checkpoint is inconsistent"
        )
    if getattr(process, "scaffold", False):
        clients_path = os.path.join(directory, CLIENTS_FILE)
        if not os.path.exists(clients_path):
            raise FedValueError(f"checkpoint_dir: the process keeps client states (SCAFFOLD) but the checkpoint has "
                                f"no {CLIENTS_FILE}; was it written by another kind of process?")
        stored = load_client_states(clients_path)
        if stored.round_num > state.round_num:
            raise FedValueError(f"checkpoint_dir: {CLIENTS_FILE} is at round {stored.round_num}, after "
                                f"{STATE_FILE}'s round {state.round_num}; the checkpoint is inconsistent")
        process.client_states.load(clients_path)
    best_path = os.path.join(directory, BEST_FILE)
    best = load_state(best_path, process) if run.get("best_round") is not None and os.path.exists(best_path) else None
    return state, run, best
