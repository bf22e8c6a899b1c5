"""The package's shape: no import cycles, no hidden imports inside functions, one name table
for the feature extractors, every module importable."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
from helpers import import_graph, modules


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 40  # the walk saw the package
    assert "maskgit_lab.decoding.sampler" in graph["maskgit_lab.sweeps.schedule_ablation"] or any(
        "maskgit_lab.decoding" in t for t in graph["maskgit_lab.sweeps.schedule_ablation"])
    assert cycles(graph) == []


def test_imports_inside_functions_say_why():
    """An import inside a function is allowed only to save real start-up time, with a comment
    saying so (``# lazy: ...``) on its line or the line above."""
    offenders = []
    for m, path in modules().items():
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    near = " ".join(lines[max(0, node.lineno - 2): node.lineno])
                    if "# lazy:" not in near:
                        offenders.append(f"{m}:{node.lineno}")
    assert offenders == []


def test_extractor_names_match_the_registry():
    from maskgit_lab.config import EXTRACTOR_NAMES
    from maskgit_lab.eval.metrics import EXTRACTORS

    assert tuple(EXTRACTORS) == EXTRACTOR_NAMES


def test_transformer_layouts_match_the_registry():
    from maskgit_lab.models.registry import TRANSFORMER_LAYOUTS
    from maskgit_lab.models.transformer import LAYOUTS

    assert tuple(TRANSFORMER_LAYOUTS) == LAYOUTS


@pytest.mark.slow
def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(modules())
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\nprint('ok', len(sys.argv) - 1)"
    out = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == f"ok {len(names)}"
