"""The layout of python/fedr (issue 19, point 7): no import cycles, no private cross-package imports.

The rule breaks that remain sit in files others are rewriting; they are listed
exactly in tools/module_graph.py (KNOWN_PRIVATE, KNOWN_UPWARD), so the lists can
only shrink: fixing one fails this test until its entry is removed.
"""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "module_graph.py"


@pytest.fixture(scope="module")
def graph():
    spec = importlib.util.spec_from_file_location("module_graph", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules["module_graph"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def found(graph):
    return graph.imports()


def test_the_import_scanner_sees_lazy_and_relative_imports(graph, tmp_path):
    pkg = tmp_path / "fedr"
    (pkg / "learning").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "datasets.py").write_text("def f():\n    from fedr import learning\n")
    (pkg / "learning" / "__init__.py").write_text("from . import _impl\nfrom ..datasets import f\n")
    (pkg / "learning" / "_impl.py").write_text("from fedr.privacy._dp import _count\n")
    found = graph.imports(pkg)
    assert sorted((i.path, i.target) for i in found) == [
        ("datasets.py", "fedr.learning"),
        ("learning/__init__.py", "fedr.datasets.f"),
        ("learning/__init__.py", "fedr.learning._impl"),
        ("learning/_impl.py", "fedr.privacy._dp._count"),
    ]
    assert graph.private_cross(found) == [("learning/_impl.py", "fedr.privacy._dp._count")]
    assert graph.cycles(graph.graph(found)) == [["datasets", "learning"]]


def test_no_import_cycles(graph, found):
    # Carriers get the client task with the job (ClientTask), so executors import no learning module.
    assert graph.cycles(graph.graph(found)) == []


def test_datasets_and_rdata_no_longer_import_each_other(graph, found):
    edges = graph.graph(found)
    assert "rdata" in edges["datasets"]
    assert "datasets" not in edges["rdata"]


def test_private_cross_package_imports_are_only_the_known_ones(graph, found):
    assert graph.private_cross(found) == []
    assert graph.KNOWN_PRIVATE == frozenset()


def test_upward_arrows_are_only_the_known_ones(graph, found):
    assert graph.upward(graph.graph(found)) == []
    assert graph.KNOWN_UPWARD == frozenset()


def test_every_unit_has_a_layer(graph, found):
    units = {graph.unit(i.module) for i in found} | {graph.unit(i.target) for i in found}
    assert units - set(graph.LAYERS) == set()


def test_check_command_passes_and_prints_the_graph():
    done = subprocess.run([sys.executable, str(TOOL), "--check"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "  [0] rdata -> _client_data, errors\n" in done.stdout
    assert "\ncycles: none\nupward arrows: none\nprivate cross-package imports: none\n" in done.stdout


def test_the_protocol_the_wire_code_and_the_clientapp_import_no_tensorflow():
    # fedr.flower.clientapp is what Flower imports for every message a node gets (issue 20).
    code = (
        "import sys\n"
        "import fedr.protocol, fedr.learning, fedr.learning.state, fedr.privacy, fedr.aggregators, fedr.executors\n"
        "import fedr.flower, fedr.flower._messages, fedr.flower._codec, fedr.flower.clientapp, fedr.flower._worker\n"
        "import fedr.flower.apps\n"
        "print('tensorflow' in sys.modules or 'keras' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
