"""Quiet sessions on every CPU: TF_CPP_MIN_LOG_LEVEL holds for TensorFlow's load-time absl lines.

On x86 CPUs with AVX-512 TensorFlow turns oneDNN on and logs it through absl
whatever the log level; ``TF_ENABLE_ONEDNN_OPTS=1`` makes any x86 CPU do the
same, so the noisy case is forced here rather than hoped for.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from fedr import _tf_quiet
from fedr._r import own_libpython_first

# Lines as TensorFlow 2.21 prints them (captured on an Intel Xeon with AMX).
PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
ONEDNN = (
    "I0000 00:00:1796310588.267812    6601 port.cc:153] oneDNN custom operations are on. You may see "
    "slightly different numerical results due to floating-point round-off errors from different "
    "computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`."
)
WARN = "W0000 00:00:1796310588.300000    6601 gpu_device.cc:2341] Cannot dlopen some GPU libraries."
ERROR = "E1203 15:06:59.123456    6601 cuda_dnn.cc:8310] Unable to register cuDNN factory"


@pytest.mark.parametrize(
    ("line", "level", "kept"),
    [
        (PREAMBLE, 0, True),
        (ONEDNN, 0, True),
        (PREAMBLE, 1, False),
        (ONEDNN, 1, False),
        (WARN, 1, True),
        (WARN, 2, False),
        (ERROR, 2, True),
        (ERROR, 3, False),
        ("F0000 00:00:1.0 1 x.cc:1] fatal", 9, True),
        ("UserWarning: something the user must see", 3, True),
        ("I am a line that only looks like a log line", 2, True),
        ("", 2, True),
    ],
)
def test_keep_line_applies_tensorflows_levels_to_absl_lines_only(line, level, kept):
    assert _tf_quiet.keep_line(line.encode(), level) is kept


@pytest.mark.parametrize(("value", "level"), [(None, 0), ("", 0), ("2", 2), ("3", 3), ("x", 0), ("-1", 0)])
def test_min_log_level_reads_the_environment_as_tensorflow_does(value, level):
    environ = {} if value is None else {"TF_CPP_MIN_LOG_LEVEL": value}
    assert _tf_quiet.min_log_level(environ) == level


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    full.update(env)
    own_libpython_first(full)  # an earlier test may have started R (rpy2), which sets LD_LIBRARY_PATH
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True, text=True, timeout=120
    )


def test_filtered_stderr_drops_only_the_lines_below_the_level_in_order():
    code = f"""
        import os, sys, warnings
        from fedr import _tf_quiet
        with _tf_quiet.filtered_stderr(2):
            os.write(2, b"first\\n{PREAMBLE}\\n{ONEDNN}\\n")
            sys.stderr.write("from python\\n")
            os.write(2, b"{WARN}\\n{ERROR}\\nno newline at the end")
        os.write(2, b"\\nafter: {ONEDNN}\\n")
    """
    run = _run(code)
    assert run.returncode == 0, run.stderr
    assert run.stderr == f"first\nfrom python\n{ERROR}\nno newline at the end\nafter: {ONEDNN}\n"


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="oneDNN is x86 only")
def test_importing_tensorflow_after_fedr_is_quiet_with_onednn_forced_on():
    code = """
        import sys
        import fedr
        import keras
        sys.stderr.write("python still speaks\\n")
        model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        print(model.count_params())
    """
    quiet = _run(code, TF_ENABLE_ONEDNN_OPTS="1", TF_CPP_MIN_LOG_LEVEL="2")
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout.strip() == "8"
    assert quiet.stderr == "python still speaks\n"
    # Level 0 (TensorFlow's default) filters nothing: the lines are really there.
    loud = _run(code, TF_ENABLE_ONEDNN_OPTS="1", TF_CPP_MIN_LOG_LEVEL="0")
    assert loud.returncode == 0, loud.stderr
    assert PREAMBLE in loud.stderr
    assert "oneDNN custom operations are on" in loud.stderr
    assert loud.stderr.rstrip().endswith("python still speaks")


def test_python_m_fedr_demo_is_quiet_with_onednn_forced_on(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    env["TF_ENABLE_ONEDNN_OPTS"] = "1"
    own_libpython_first(env)
    run = subprocess.run(
        [sys.executable, "-m", "fedr", "demo", "--rounds", "1"],
        env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    assert "round:   1   accuracy: 0.5852" in run.stdout, run.stdout
    assert run.stderr == ""
