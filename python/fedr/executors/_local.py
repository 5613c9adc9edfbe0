"""Executors on this machine: serial (the calling thread) and a pool of threads."""

from __future__ import annotations

import abc
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from fedr.errors import FedValueError

__all__ = ["Executor", "SerialExecutor", "ThreadsExecutor", "default_workers", "serial", "threads"]

T = TypeVar("T")
R = TypeVar("R")


def default_workers() -> int:
    """The number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


class Executor(abc.ABC):
    """Maps a function over a round's clients; results come back in client order.

    Attributes:
        workers: How many clients may run at once (the process keeps one model
            replica per worker).
    """

    workers: int = 1

    @abc.abstractmethod
    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """Return ``[fn(item) for item in items]``, computed by this executor."""

    def close(self) -> None:
        """Release the executor's workers (a later ``map`` starts them again)."""


class SerialExecutor(Executor):
    """Runs every client on the calling thread, one after another.

    The choice for models whose loss, metrics or layers call back into R:
    R may only be entered from its own thread.
    """

    workers = 1

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        return [fn(item) for item in items]

    def __repr__(self) -> str:
        return "serial()"


class ThreadsExecutor(Executor):
    """Runs clients on a pool of threads, one model replica per thread."""

    def __init__(self, workers: int | None = None) -> None:
        if workers is None:
            workers = default_workers()
        if isinstance(workers, bool) or not isinstance(workers, int | np.integer) or workers < 1:
            raise FedValueError(f"workers: expected a positive integer or None, got {workers!r}")
        self.workers = int(workers)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def map(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        items = list(items)
        if self.workers == 1 or len(items) <= 1:
            return [fn(item) for item in items]
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="fedr-client")
            pool = self._pool
        return list(pool.map(fn, items))

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"threads(workers={self.workers})"


def serial() -> SerialExecutor:
    """Run clients one after another on the calling thread.

    Returns:
        An :class:`Executor` with one worker.
    """
    return SerialExecutor()


def threads(workers: int | None = None) -> ThreadsExecutor:
    """Run clients on a pool of threads, the default executor.

    Args:
        workers: Threads, each with its own model replica; default one per core.
            Results do not depend on it.

    Returns:
        An :class:`Executor`.

    Raises:
        FedValueError: ``workers`` is not a positive integer.
    """
    return ThreadsExecutor(workers)


def check_executor(executor: Any) -> Executor:
    """Return ``executor``, the default ``threads()`` for None; raise FedTypeError otherwise."""
    from fedr.errors import FedTypeError

    if executor is None:
        return ThreadsExecutor()
    if not isinstance(executor, Executor):
        raise FedTypeError(
            "executor: expected fedr.executors.serial() or fedr.executors.threads(...), "
            f"got {type(executor).__name__}"
        )
    return executor
