"""The import layers of the architecture (README, "Architecture in 30 seconds"), checked on the source.

    medtok_core  <  disease_linking  <  qa, ehr  <  finetune, eval

A module may import its own package or the ones below it, never one above; ``eval`` and
``finetune`` are imported by nobody but themselves (they hold entry points and reports); and no
chain of imports (module level or inside functions; ``if TYPE_CHECKING:`` blocks excepted) leads
from a module back to itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS = {"medtok_core": 0, "disease_linking": 1, "qa": 2, "ehr": 2, "finetune": 3, "eval": 3}
TOP = {"finetune", "eval"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imported_modules(tree: ast.AST, known: set[str]) -> set[str]:
    """Project modules a file imports (``from a.b import c`` counts a.b.c when that is a module)."""
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if _type_checking_only(node):
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                sub = f"{node.module}.{a.name}"
                found.add(sub if sub in known else node.module)
        stack.extend(ast.iter_child_nodes(node))
    return {m for m in found if m.split(".")[0] in LAYERS}


def project_imports() -> dict[str, set[str]]:
    files = [p for pkg in LAYERS for p in (REPO / pkg).rglob("*.py")]
    known = {module_name(p) for p in files}
    return {module_name(p): imported_modules(ast.parse(p.read_text(encoding="utf-8")), known) for p in files}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    out = []
    for module, imports in graph.items():
        pkg = module.split(".")[0]
        for target in imports:
            tpkg = target.split(".")[0]
            if tpkg == pkg:
                continue
            # qa and ehr share a layer and never import each other (nor do eval and finetune)
            if LAYERS[tpkg] >= LAYERS[pkg] or tpkg in TOP:
                out.append(f"{module} imports {target}")
    return sorted(out)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, found by depth-first search (one path per back edge)."""
    found, state, path = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_import_runs_up_a_layer():
    assert layer_violations(project_imports()) == []


def test_no_import_cycles():
    assert cycles(project_imports()) == []


def test_the_checks_catch_an_upward_import_and_a_cycle():
    graph = {"medtok_core.a": {"qa.b"}, "qa.b": {"medtok_core.a"}, "qa.c": {"eval.d"}, "eval.d": set(),
             "disease_linking.e": {"disease_linking.f"}, "disease_linking.f": {"disease_linking.e"}}
    assert layer_violations(graph) == ["medtok_core.a imports qa.b", "qa.c imports eval.d"]
    assert sorted(map(tuple, cycles(graph))) == [("disease_linking.e", "disease_linking.f", "disease_linking.e"),
                                                 ("medtok_core.a", "qa.b", "medtok_core.a")]


def test_type_checking_imports_are_ignored_and_from_imports_resolve_submodules():
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import eval.report\n"
                     "from qa import checkpoint\nfrom qa.model import build_qa_model\n")
    assert imported_modules(tree, {"qa.checkpoint", "qa.model"}) == {"qa.checkpoint", "qa.model"}
