"""`python -m fedr demo`: the reference workflow on Fashion-MNIST, its printed numbers."""

import os

import pytest

pytest.importorskip("tensorflow")

from fedr import __main__ as cli  # noqa: E402
from fedr._idx import FASHION_MNIST_DIR  # noqa: E402


@pytest.mark.skipif(
    not os.path.isdir(FASHION_MNIST_DIR) and "FEDR_DATA_DIR" not in os.environ,
    reason="Debian's dataset-fashion-mnist is not installed (make setup installs it)",
)
def test_demo_prints_reference_rounds(capsys):
    assert cli.main(["demo", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    # Zero-initialized weights and sequential clients: the same numbers on every run.
    assert "round:   1   accuracy: 0.5852   loss: 1.6150" in out
    assert "round:   2   accuracy: 0.6769   loss: 1.1110" in out
    assert "federated evaluation on 10000 test images over 10 clients: accuracy 0.6807" in out
