"""Make ``TF_CPP_MIN_LOG_LEVEL`` hold for the lines TensorFlow prints while it loads.

On x86 CPUs with AVX-512 (VNNI, BF16, AMX: recent Xeons, AMD Zen 4) TensorFlow
2.21 turns oneDNN on by itself and, while its shared libraries load, logs
through absl *before* absl is initialised::

    WARNING: All log messages before absl::InitializeLog() is called are written to STDERR
    I0000 00:00:1796310588.267812    6601 port.cc:153] oneDNN custom operations are on. ...

once per copy of absl (twice), whatever ``TF_CPP_MIN_LOG_LEVEL`` says: absl's
early messages never see that variable (``TF_ENABLE_ONEDNN_OPTS=1`` shows the
same on any x86 CPU). Turning oneDNN off would silence them but costs speed
(README, "CPUs and bit-identity"), so instead fedr applies the log level the
session asked for to what file descriptor 2 receives *while TensorFlow is
imported*: absl-format lines below the level are dropped, with absl's
"before InitializeLog" preamble; every other byte (Python warnings, errors,
lines of other formats) passes through unchanged and in order.

Nothing is filtered when ``TF_CPP_MIN_LOG_LEVEL`` is unset or 0 (TensorFlow's
own default: show everything), nor after the import. :func:`install` is called
by ``import fedr`` and, from R, when reticulate starts Python (before a
``reticulate::import("keras")``), so it must stay free of heavy imports.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["PREAMBLE", "filtered_stderr", "install", "keep_line", "min_log_level"]

PREAMBLE = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"

# absl's prefix: severity letter, MMDD, time, thread id, file:line]
_ABSL = re.compile(rb"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ [^ \]]+:\d+\] ")
# TensorFlow's levels: 1 hides INFO, 2 also WARNING, 3 also ERROR (FATAL always shows).
_RANK = {b"I": 0, b"W": 1, b"E": 2, b"F": 3}


def min_log_level(environ: Any = None) -> int:
    """Return the session's ``TF_CPP_MIN_LOG_LEVEL`` as TensorFlow reads it (0 when unset or not a number)."""
    value = (os.environ if environ is None else environ).get("TF_CPP_MIN_LOG_LEVEL", "")
    try:
        return max(0, int(value))
    except ValueError:
        return 0


def keep_line(line: bytes, level: int) -> bool:
    """Return whether one line of stderr (without its newline) shows at TensorFlow log level ``level``."""
    if level <= 0:
        return True
    if line.rstrip(b"\r") == PREAMBLE:
        return False
    match = _ABSL.match(line)
    if match is None:
        return True
    return _RANK[match.group(1)] >= min(level, 3)


@contextlib.contextmanager
def filtered_stderr(level: int) -> Iterator[None]:
    """Pass what file descriptor 2 receives in the block through :func:`keep_line`, line by line, as it comes."""
    if level <= 0:
        yield
        return
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError, OSError):
        pass
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        pending = b""
        with os.fdopen(read_end, "rb", buffering=0) as pipe:
            while chunk := pipe.read(65536):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                out = b"".join(line + b"\n" for line in lines if keep_line(line, level))
                if out:
                    os.write(saved, out)
        if pending and keep_line(pending, level):
            os.write(saved, pending)

    thread = threading.Thread(target=forward, name="fedr-tf-stderr", daemon=True)
    thread.start()
    try:
        yield
    finally:
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError, OSError):
            pass
        os.dup2(saved, 2)  # closes the pipe's last write end: the thread sees EOF
        thread.join(timeout=10)
        os.close(saved)


class _QuietLoader(importlib.abc.Loader):
    """Runs TensorFlow's own loader inside :func:`filtered_stderr`."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        with filtered_stderr(min_log_level()):
            self._loader.exec_module(module)


class _QuietFinder(importlib.abc.MetaPathFinder):
    """Finds ``tensorflow`` as the other finders do, once, and wraps its loader."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "tensorflow":
            return None
        _uninstall()
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def _uninstall() -> None:
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _QuietFinder)]


def install() -> bool:
    """Filter TensorFlow's load-time log lines when it is imported later; return whether the hook is in place."""
    if "tensorflow" in sys.modules:
        return False
    if not any(isinstance(f, _QuietFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietFinder())
    return True
