"""The import graph of python/fedr, by top-level unit, and the layout rules it must keep.

Usage::

    python tools/module_graph.py            # print the graph, cycles, upward arrows, private imports
    python tools/module_graph.py --check    # exit 1 on a cycle or a private cross-package import

A *unit* is a top-level module or package of fedr (``datasets``, ``learning``,
``_seeds``, ...). Every ``import`` counts, including those inside functions
(a lazy import is still a dependency: it only defers the cycle to run time).

The rules (see /work/shared/DESIGN.md, "Target layout", and issue 19 point 7):

- no cycle between units;
- no *private cross-package import*: a module may not import a private name
  (``_name``) or a private submodule of another unit. Inside one unit anything
  goes (``fedr/privacy/_dp.py`` may import ``fedr/privacy/_accounting.py``'s
  ``_count``). fedr's private top-level modules (``fedr._seeds``,
  ``fedr._idx``, ...) are shared internals: their public names may be
  imported from anywhere in fedr, their private names may not;
- no *upward arrow*: a unit imports only units of its own layer or below
  (:data:`LAYERS`); executors carry client tasks and so sit below learning.

Imports that break a rule in files other people are rewriting are listed in
:data:`KNOWN_PRIVATE` and :data:`KNOWN_UPWARD`; ``--check`` tolerates exactly
those (cycles are looked for with the known upward arrows removed), and
tests/test_layout.py asserts the lists are exact, so they can only shrink.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "python" / "fedr"

# Layer of each unit: a unit may import units of its own layer or lower ones.
LAYERS: dict[str, int] = {
    # the bottom: errors, shared internals, the protocol, computations, datasets
    "errors": 0, "_seeds": 0, "_tf_quiet": 0, "_kernels": 0, "_weights": 0, "_env": 0, "_values": 0, "_operators": 0,
    "protocol": 0, "computations": 0, "_idx": 0, "_client_data": 0, "datasets": 0, "rdata": 0,
    # above the datasets
    "aggregators": 1, "privacy": 1, "executors": 1,
    # the FedAvg process, its state and the fit loop
    "learning": 2,
    # on top: carriers over the network, the demonstrations, the R bridge, the package itself
    "flower": 3, "gossip": 3, "attacks": 3, "_r": 3, "__main__": 3, "fedr": 4,
}

# (importing file, imported dotted name) pairs that break a rule, in files others own.
KNOWN_PRIVATE: frozenset[tuple[str, str]] = frozenset()
KNOWN_UPWARD: frozenset[tuple[str, str]] = frozenset()


@dataclass(frozen=True)
class Import:
    """One imported name: ``target`` is the dotted name as written (module, or module.name)."""

    path: str  # importing file, relative to python/fedr
    module: str  # importing module, dotted
    target: str
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    """The dotted module name of a file under ``root`` (the fedr package directory)."""
    parts = [root.name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def unit(dotted: str) -> str:
    """The top-level unit of a dotted fedr name: ``fedr.privacy._dp`` -> ``privacy``; ``fedr`` -> ``fedr``."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 else "fedr"


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(root: Path = ROOT) -> list[Import]:
    """Every import of a fedr name in every file under ``root``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        module = module_name(path, root)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if a.name != "*" else base for a in node.names]
            else:
                continue
            for target in targets:
                if target == "fedr" or target.startswith("fedr."):
                    found.append(Import(rel, module, target, node.lineno))
    return found


def is_private_cross(imp: Import) -> bool:
    """Whether ``imp`` reaches a private name or submodule of another unit."""
    source, target = unit(imp.module), unit(imp.target)
    if source == target or target == "fedr":
        return False
    inside = imp.target.split(".")[2:]  # after fedr.<unit>
    return any(p.startswith("_") and not p.startswith("__") for p in inside)


def graph(found: list[Import]) -> dict[str, dict[str, list[Import]]]:
    """unit -> imported unit -> the imports making that arrow (no self-arrows)."""
    edges: dict[str, dict[str, list[Import]]] = defaultdict(lambda: defaultdict(list))
    for imp in found:
        a, b = unit(imp.module), unit(imp.target)
        if a != b and b != "fedr":  # `from fedr import x` resolves to unit x, never to the package
            edges[a][b].append(imp)
    return edges


def cycles(edges: dict[str, dict[str, list[Import]]], skip: frozenset[tuple[str, str]] = frozenset()) -> list[list[str]]:
    """The strongly connected components of more than one unit (Tarjan), each sorted.

    ``skip`` holds (importing file, imported unit) pairs left out of the graph.
    """
    succ = {
        a: sorted(b for b, imps in bs.items() if any((i.path, b) not in skip for i in imps))
        for a, bs in edges.items()
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in succ.get(v, []):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(succ) | {w for ws in succ.values() for w in ws}):
        if v not in index:
            visit(v)
    return sorted(out)


def upward(edges: dict[str, dict[str, list[Import]]]) -> list[tuple[str, str]]:
    """(importing file, imported unit) for every arrow to a higher layer (unknown units count as top)."""
    top = max(LAYERS.values())
    return sorted({
        (imp.path, b)
        for a, bs in edges.items() for b, imps in bs.items() for imp in imps
        if LAYERS.get(b, top) > LAYERS.get(a, top)
    })


def private_cross(found: list[Import]) -> list[tuple[str, str]]:
    """(importing file, imported dotted name) for every private cross-package import."""
    return sorted({(imp.path, imp.target) for imp in found if is_private_cross(imp)})


def report(found: list[Import]) -> str:
    """The graph and the rule checks, as text."""
    edges = graph(found)
    lines = ["fedr import graph (unit -> units it imports; [layer]):"]
    units = {unit(module_name(p)) for p in ROOT.rglob("*.py")} | {b for bs in edges.values() for b in bs}
    for a in sorted(units, key=lambda u: (LAYERS.get(u, 9), u)):
        targets = ", ".join(sorted(edges.get(a, {}))) or "-"
        lines.append(f"  [{LAYERS.get(a, '?')}] {a} -> {targets}")
    found_cycles = cycles(edges)
    lines.append("cycles: " + ("; ".join(" <-> ".join(c) for c in found_cycles) or "none"))
    ups = upward(edges)
    lines.append("upward arrows:" + ("" if ups else " none"))
    lines += [f"  {p} -> {b}" + ("  (known)" if (p, b) in KNOWN_UPWARD else "") for p, b in ups]
    priv = private_cross(found)
    lines.append("private cross-package imports:" + ("" if priv else " none"))
    lines += [f"  {p}: {t}" + ("  (known)" if (p, t) in KNOWN_PRIVATE else "") for p, t in priv]
    return "\n".join(lines)


def check(found: list[Import]) -> list[str]:
    """The rule breaks not in the known lists: cycles (known upward arrows left out), private imports."""
    problems = [f"cycle: {' <-> '.join(c)}" for c in cycles(graph(found), KNOWN_UPWARD)]
    problems += [f"private import: {p}: {t}" for p, t in private_cross(found) if (p, t) not in KNOWN_PRIVATE]
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 on a cycle or a private cross-package import")
    args = parser.parse_args(argv)
    found = imports()
    print(report(found))
    if args.check:
        problems = check(found)
        for p in problems:
            print(f"FAIL {p}", file=sys.stderr)
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
