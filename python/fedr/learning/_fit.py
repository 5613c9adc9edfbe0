"""The fit loop: rounds of a process with sampling, validation, early stopping and checkpoints.

One loop for every caller: Python users call :func:`fit`, R's ``fed_fit()`` is
a thin wrapper over it, and its progress line is :func:`round_line`. The loop
only calls the process's public methods (``initialize``, ``check_data``,
``next``, ``evaluate``), so it is the same on every executor.
"""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedr.errors import BudgetExhaustedError, FedError, FedTypeError, FedValueError, FedWarning
from fedr.learning._checkpoint import load_checkpoint, save_checkpoint
from fedr.learning.state import ServerState
from fedr.protocol import COUNT_COLUMNS, GOSSIP_COUNT_COLUMNS

__all__ = [
    "Callback",
    "FitError",
    "FitInterrupted",
    "History",
    "LambdaCallback",
    "ProgressLines",
    "BudgetExhaustedWarning",
    "RoundSkippedWarning",
    "fit",
    "round_line",
]

# Counts, not metrics: not on the round's line (the evaluation's counts too).
_NOT_SHOWN = (frozenset(COUNT_COLUMNS) | {f"eval_{n}" for n in COUNT_COLUMNS if n != "round_failed"}
              | {"dp_noise_stddev", "ddp_noise_shares", "ddp_provisioned"} | frozenset(GOSSIP_COUNT_COLUMNS))
# Evaluation counts say nothing the training columns do not: left out of val_ columns.
_VAL_LEFT_OUT = ("num_examples", "num_clients")
# Early stopping: these rise, every other metric (losses, errors) falls.
_MAXIMIZED = re.compile("accuracy|auc|precision|recall")


class RoundSkippedWarning(FedWarning):
    """A Poisson sample drew no client: the round was skipped."""


class BudgetExhaustedWarning(FedWarning):
    """The run ended before its rounds: the next round would have spent more privacy budget than ``max_epsilon``."""


@dataclass(frozen=True)
class History:
    """What :func:`fit` returns.

    Attributes:
        rows: One dict per round trained: ``round``, the round's metrics, the
            ``val_`` metrics (with ``validation_data``) and ``seconds``.
        best_round: With early stopping (``patience``), the round whose
            ``monitor`` was best; else ``None``.
        state: The final state; with early stopping and ``restore_best`` the
            best round's state.
        last_state: The state after the last round trained.
        events: Dicts ``{"round", "event", "message"}``: skipped (empty
            Poisson) rounds, early stopping, a failed or interrupted round.
    """

    rows: tuple[dict[str, float], ...]
    best_round: int | None
    state: ServerState
    last_state: ServerState
    events: tuple[dict[str, Any], ...] = field(default=())

    def column(self, name: str) -> list[float]:
        """The values of one column, one per row (``float('nan')`` where a row lacks it)."""
        return [row.get(name, math.nan) for row in self.rows]


class FitError(FedError):
    """A round of :func:`fit` failed; the rounds before it are kept.

    Attributes:
        history: A :class:`History` of the rounds that finished; its ``state``
            is the last good state (the one passed in when none finished).
        round_num: The round that failed.
        cause: The exception that ended the round (also ``__cause__``).
        argument: ``"validation_data"`` when evaluating the held-out clients
            failed, else ``None``.
    """

    def __init__(self, message: str, history: History, round_num: int, cause: BaseException, argument: str | None):
        super().__init__(message)
        self.history = history
        self.round_num = round_num
        self.cause = cause
        self.argument = argument


class FitInterrupted(KeyboardInterrupt):
    """:func:`fit` was interrupted (Ctrl-C); ``history`` holds the rounds that finished."""

    def __init__(self, message: str, history: History):
        super().__init__(message)
        self.history = history


class Callback:
    """Base of fit callbacks; any object with some of these methods will do.

    ``on_round_end(round_num, row, state)`` runs after every round trained
    (``row`` is the round's history row: metrics, ``val_`` metrics,
    ``seconds``); ``on_fit_end(history)`` once, when the loop ends normally.
    """

    def on_round_end(self, round_num: int, row: Mapping[str, float], state: ServerState) -> None:
        """Called after every round."""

    def on_fit_end(self, history: History) -> None:
        """Called once, with the history :func:`fit` returns."""


class LambdaCallback(Callback):
    """A callback made of functions (as Keras's ``LambdaCallback``); each may be ``None``.

    Args:
        on_round_end: Called as ``on_round_end(round_num, row, state)``.
        on_fit_end: Called as ``on_fit_end(history)``.
    """

    def __init__(self, on_round_end: Callable[..., Any] | None = None, on_fit_end: Callable[..., Any] | None = None):
        self._round_end, self._fit_end = on_round_end, on_fit_end

    def on_round_end(self, round_num: int, row: Mapping[str, float], state: ServerState) -> None:
        if self._round_end is not None:
            self._round_end(round_num, row, state)

    def on_fit_end(self, history: History) -> None:
        if self._fit_end is not None:
            self._fit_end(history)


class ProgressLines(Callback):
    """Write one line per round (:func:`round_line`) and a line when early stopping ends the run.

    Args:
        write: Called with each line; default :func:`print`.
    """

    def __init__(self, write: Callable[[str], Any] = print):
        self.write = write

    def on_round_end(self, round_num: int, row: Mapping[str, float], state: ServerState) -> None:
        metrics = {k: v for k, v in row.items() if k not in ("round", "seconds")}
        self.write(round_line(round_num, metrics, row.get("seconds", 0.0)))

    def on_fit_end(self, history: History) -> None:
        for event in history.events:
            if event["event"] == "early_stopping":
                self.write(event["message"])


def _r_number(x: float) -> str:
    # As R's sprintf("%.4f") writes it, so lines read the same from R and Python.
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Inf" if x > 0 else "-Inf"
    return f"{x:.4f}"


def short_metric_name(name: str) -> str:
    """``sparse_categorical_accuracy`` -> ``accuracy`` (also ``categorical_``, ``binary_``)."""
    return re.sub(r"^(sparse_categorical_|categorical_|binary_)", "", name)


def round_line(round_num: int, metrics: Mapping[str, float], seconds: float, width: int = 3) -> str:
    """The progress line of one round, e.g. ``round   2  accuracy 0.6949  loss 0.8893  (0.05 s)``.

    Args:
        round_num: The round's number.
        metrics: The round's metrics (counts are left out; dropped and failed
            clients are noted at the end).
        seconds: The round's duration.
        width: Digits the round number is padded to.

    Returns:
        The line, without a newline.
    """
    parts = [f"{short_metric_name(k)} {_r_number(float(v))}" for k, v in metrics.items() if k not in _NOT_SHOWN]
    note = ""
    for key, word in (("num_clients_dropped", "dropped"), ("num_clients_failed", "failed")):
        n = float(metrics.get(key, 0) or 0)
        if n > 0:
            note += f"  [{int(n)} client{'' if n == 1 else 's'} {word}]"
    return f"round {int(round_num):>{width}d}  {'  '.join(parts)}  ({seconds:.2f} s){note}"


def _count(x: Any, name: str, minimum: int = 1, allow_none: bool = False) -> int | None:
    if x is None and allow_none:
        return None
    if isinstance(x, bool) or not isinstance(x, int) and not (hasattr(x, "__index__") and not isinstance(x, float)):
        raise FedValueError(f"{name}: expected an integer >= {minimum}, got {x!r}")
    x = int(x)
    if x < minimum:
        raise FedValueError(f"{name}: expected an integer >= {minimum}, got {x}")
    return x


@dataclass
class _Stopping:
    patience: int
    monitor: str
    maximize: bool
    best: float
    best_state: ServerState | None = None
    wait: int = 0

    def update(self, metrics: Mapping[str, float], state: ServerState) -> None:
        if self.monitor not in metrics:
            raise FedValueError(
                f'`monitor` "{self.monitor}" is not a metric of the round ({", ".join(metrics)}).'
            )
        value = float(metrics[self.monitor])
        # NaN is never an improvement.
        if value > self.best if self.maximize else value < self.best:
            self.best, self.best_state, self.wait = value, state, 0
        else:
            self.wait += 1


def _early_stopping(patience: Any, monitor: Any, restore_best: Any, validation: bool) -> _Stopping | None:
    if not isinstance(restore_best, bool):
        raise FedTypeError(f"restore_best: expected True or False, got {restore_best!r}")
    if patience is None:
        if monitor is not None:
            raise FedValueError("`monitor` needs `patience`: the rounds to wait for an improvement.")
        return None
    patience = _count(patience, "patience")
    if monitor is None:
        monitor = "val_loss" if validation else "loss"
    if not isinstance(monitor, str) or not monitor:
        raise FedValueError(f"monitor: expected a metric's name, got {monitor!r}")
    if monitor.startswith("val_") and not validation:
        raise FedValueError(f'`monitor` is "{monitor}" but no `validation_data` was given.')
    maximize = bool(_MAXIMIZED.search(monitor))
    return _Stopping(patience, monitor, maximize, -math.inf if maximize else math.inf)


def _sampler(sampling: str, clients_per_round: int | None, n: int, seed: int | None) -> Callable[[list, int], list]:
    # Imported here: process.py imports TensorFlow, and fit's helpers (round_line) are used without it.
    from fedr.learning.process import sample_clients, sample_clients_poisson

    if clients_per_round is None:
        return lambda clients, draw: clients
    draw_fn = sample_clients if sampling == "uniform" else sample_clients_poisson
    return lambda clients, draw: draw_fn(clients, clients_per_round / n, seed=seed, round_num=draw)


def fit(
    process: Any,
    train: Any,
    rounds: int,
    *,
    state: ServerState | None = None,
    validation_data: Any = None,
    clients_per_round: int | None = None,
    sampling: str = "uniform",
    seed: int | None = None,
    patience: int | None = None,
    monitor: str | None = None,
    restore_best: bool = True,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    callbacks: Iterable[Any] | None = None,
) -> History:
    """Train ``process`` for ``rounds`` rounds and return the history.

    Each round: the clients are sampled (with ``clients_per_round``), the
    process runs one round on them, the new state is evaluated on
    ``validation_data`` (``val_`` columns), the row joins the history, the
    checkpoint is written and the callbacks are told; early stopping may end
    the run.

    Args:
        process: A process from :func:`fedr.learning.build_weighted_fed_avg`.
        train: The clients (a list of ``ClientData``, or what ``process.next`` takes).
        rounds: Rounds to train (with ``resume``: the run's total, counting
            the rounds its checkpoint already holds).
        state: The state to start from; ``None`` is ``process.initialize()``.
        validation_data: Held-out clients, checked against the model before
            any round trains; after each round the new state is evaluated on
            them and the metrics join the row as ``val_`` columns (without
            ``num_examples``/``num_clients``).
        clients_per_round: ``None`` trains every client every round; a count
            samples that many per round, seeded by (``seed``, round) exactly as
            :func:`sample_clients` (``sampling="uniform"``) or
            :func:`sample_clients_poisson` (``"poisson"``: each client with
            probability ``clients_per_round / len(train)``) with
            ``round_num`` the round the sample is for. An empty Poisson sample
            skips the round (a :class:`RoundSkippedWarning` and an event); the
            next round draws for the following round number. A differentially
            private aggregator must account the same sampling
            (:func:`fedr.privacy.check_sampling`), else nothing trains. The
            run ends early, with a :class:`BudgetExhaustedWarning` and a
            ``budget_exhausted`` event, when a DP aggregator's ``max_epsilon``
            refuses the next round (a plan's budget is used up).
        sampling: ``"uniform"`` or ``"poisson"``.
        seed: The sampling seed; ``None`` takes the process's ``seed``.
        patience: Early stopping: stop when ``monitor`` has not improved for
            this many rounds. ``None`` trains every round.
        monitor: The metric early stopping watches; default ``"val_loss"``
            with ``validation_data``, else ``"loss"``. Accuracy, AUC, precision
            and recall must rise, everything else fall.
        restore_best: With early stopping, ``History.state`` is the best
            round's state (``last_state`` is the last).
        checkpoint_dir: A directory (made if missing): after every round the
            state goes to ``state.fedr`` (atomically, :func:`save_state`), the
            rows to ``history.csv``, the run's progress to ``fit.json`` (and the
            best state to ``best.fedr`` with early stopping).
        resume: With ``checkpoint_dir`` holding a checkpoint, continue that
            run: its rows, events, early-stopping status and state are taken
            up and training goes on to ``rounds`` in all; the weights are those
            of a run that was never interrupted, bit for bit (with a seed).
            Without a checkpoint the run starts as usual, so the same call
            serves the first run and every restart.
        callbacks: Objects with ``on_round_end(round_num, row, state)`` and/or
            ``on_fit_end(history)`` (see :class:`Callback`,
            :class:`ProgressLines`).

    Returns:
        A :class:`History`.

    Raises:
        FedValueError: an argument is out of range (``rounds``, ``patience``,
            ``clients_per_round`` above the number of clients, ``sampling``,
            ``monitor`` unknown or needing ``validation_data``), the
            validation data does not fit the model, or the sampling is not
            the one the DP aggregator accounts. The message starts with the
            argument's name.
        FedTypeError: an argument has the wrong type.
        FitError: a round failed; ``err.history`` holds the rounds that
            finished, ``err.cause`` the error.
        FitInterrupted: interrupted (a ``KeyboardInterrupt``); ``history`` as above.
    """
    rounds = _count(rounds, "rounds")
    if sampling not in ("uniform", "poisson"):
        raise FedValueError(f"sampling: expected 'uniform' or 'poisson', got {sampling!r}")
    if not isinstance(resume, bool):
        raise FedTypeError(f"resume: expected True or False, got {resume!r}")
    try:
        clients = list(train)
    except TypeError:
        raise FedTypeError(f"train: expected a sequence of clients, got {type(train).__name__}") from None
    n = len(clients)
    if n == 0:
        raise FedValueError("train: expected at least one client, got none")
    clients_per_round = _count(clients_per_round, "clients_per_round", allow_none=True)
    if clients_per_round is not None and clients_per_round > n:
        raise FedValueError(f"`clients_per_round` ({clients_per_round}) must not exceed the number of clients ({n}).")
    if validation_data is not None:
        # Now, before any round trains, and named: later it would read as a failure of a client.
        process.check_data(validation_data, "validation_data")
    stopping = _early_stopping(patience, monitor, restore_best, validation_data is not None)
    seed = getattr(process, "seed", None) if seed is None else seed
    _check_sampling(process, sampling, clients_per_round, n)
    callbacks = list(callbacks or ())
    directory = os.fspath(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and directory is None:
        raise FedValueError("resume: needs `checkpoint_dir`, the directory of the run to resume")

    rows: list[dict[str, float]] = []
    events: list[dict[str, Any]] = []
    skipped = 0  # empty Poisson draws: the next draw is for the next round number
    checkpoint = load_checkpoint(directory, process) if resume and os.path.isdir(directory) else None
    if checkpoint is not None:
        if state is not None:
            raise FedValueError("state: give `state` or resume from `checkpoint_dir`, not both")
        state, run, best_state = checkpoint
        rows, events, skipped = [dict(r) for r in run["rows"]], list(run["events"]), run["skipped"]
        if stopping is not None and run.get("stopping"):
            stopping.best, stopping.wait = run["stopping"]["best"], run["stopping"]["wait"]
            stopping.best_state = best_state
    elif state is None:
        state = process.initialize()  # a fresh run (SCAFFOLD's clients start from c_i = 0 again)
    elif not isinstance(state, ServerState):
        raise FedTypeError(f"state: expected a ServerState, got {type(state).__name__}")
    if directory is not None:
        os.makedirs(directory, exist_ok=True)
    sample = _sampler(sampling, clients_per_round, n, seed)
    first_round = state.round_num - len(rows)

    def history(last: ServerState, failed: bool = False) -> History:
        best = stopping.best_state if stopping is not None else None
        # After a failure the state to go on from is the last good one, not the best.
        final = best if restore_best and best is not None and not failed else last
        return History(tuple(rows), None if best is None else best.round_num, final, last, tuple(events))

    def _run(round_num: int) -> dict[str, Any]:
        best = None if stopping is None or stopping.best_state is None else stopping.best_state.round_num
        return {"round_num": round_num, "rows": rows, "events": events, "skipped": skipped, "best_round": best,
                "stopping": None if stopping is None else {"best": stopping.best, "wait": stopping.wait}}

    done = len(rows) + skipped
    stopped = stopping is not None and stopping.wait >= stopping.patience
    try:
        while done < rounds and not stopped:
            done += 1
            draw = first_round + done
            started = time.perf_counter()
            picked = sample(clients, draw)
            if not picked:
                skipped += 1
                message = f"Round {draw} sampled no client (Poisson sampling); it was skipped."
                events.append({"round": draw, "event": "skipped", "message": message})
                warnings.warn(RoundSkippedWarning(message), stacklevel=2)
                if directory is not None:
                    save_checkpoint(directory, state, _run(state.round_num), None, process)
                continue
            argument = None
            try:
                out = process.next(state, picked)
                new_state, metrics = out[0], {k: float(v) for k, v in dict(out[1]).items()}
                if validation_data is not None:
                    argument = "validation_data"
                    val = process.evaluate(new_state, validation_data)
                    metrics.update({f"val_{k}": float(v) for k, v in val.items() if k not in _VAL_LEFT_OUT})
            except BudgetExhaustedError as err:
                # The privacy budget is spent as planned: the run ends here, its rounds kept.
                message = f"privacy budget exhausted: {err}"
                events.append({"round": state.round_num + 1, "event": "budget_exhausted", "message": message})
                warnings.warn(BudgetExhaustedWarning(message), stacklevel=2)
                break
            except Exception as err:
                failed = state.round_num + 1
                name = re.sub(r"^Fed(\w*Error)$", r"\1", type(err).__name__)
                text = f"{name}: {err}" if argument is None else f"{argument}: {name}: {err}"
                events.append({"round": failed, "event": "failed", "message": text})
                raise FitError(f"Round {failed} failed: {text}\n{_kept(rows)}", history(state, True), failed, err, argument) from err
            state = new_state
            row = {"round": state.round_num, **metrics, "seconds": time.perf_counter() - started}
            rows.append(row)
            best_before = stopping.best_state if stopping is not None else None
            if stopping is not None:
                stopping.update(metrics, state)
                if stopping.wait >= stopping.patience:
                    stopped = True
                    s = stopping
                    events.append({"round": state.round_num, "event": "early_stopping", "message": (
                        f"early stopping: {s.monitor} has not improved for {s.patience} round{'' if s.patience == 1 else 's'}"
                        f" (best {_r_number(s.best)} in round {s.best_state.round_num if s.best_state else 'none'})"
                    )})
            if directory is not None:
                changed = stopping.best_state if stopping is not None and stopping.best_state is not best_before else None
                save_checkpoint(directory, state, _run(state.round_num), changed, process)
            for cb in callbacks:
                if hasattr(cb, "on_round_end"):
                    cb.on_round_end(state.round_num, row, state)
    except KeyboardInterrupt:
        # Ctrl-C: the rounds that finished are kept, as for a failed round.
        events.append({"round": state.round_num + 1, "event": "interrupted", "message": "interrupted"})
        raise FitInterrupted(f"Round {state.round_num + 1} was interrupted. {_kept(rows)}", history(state, True)) from None
    result = history(state)
    for cb in callbacks:
        if hasattr(cb, "on_fit_end"):
            cb.on_fit_end(result)
    return result


def _kept(rows: Sequence[Mapping[str, float]]) -> str:
    if not rows:
        return "No round of this call finished; the state passed in is unchanged."
    first, last = int(rows[0]["round"]), int(rows[-1]["round"])
    done = f"Round {first} finished and is" if len(rows) == 1 else f"Rounds {first}-{last} finished and are"
    return f"{done} kept in the error's `history` (its `state` is the last good state)."


def _check_sampling(process: Any, sampling: str, clients_per_round: int | None, n: int) -> None:
    from fedr.privacy import check_sampling

    # A DP aggregator accounts one way of sampling: tell it what this loop does (a mismatch is an error).
    name = "all" if clients_per_round is None else "fixed" if sampling == "uniform" else "poisson"
    try:
        check_sampling(process.aggregator, name, clients_per_round or n, n)
    except FedValueError as err:
        # The population is this loop's `train`.
        text = str(err)
        if text.startswith("population_size: "):
            raise FedValueError("train: " + text[len("population_size: "):]) from None
        raise
