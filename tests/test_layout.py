"""The package layout says what the code does: one package per stage of the data path, imports
flowing one way (commands -> search -> bench -> ablation -> space, results, training -> model ->
common), and no import cycle between modules (function-level imports included)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "cvt_nas"

# Which stages a stage may import (besides itself). Anything not listed is a layering error.
ALLOWED: dict[str, set[str]] = {
    "common": set(),
    "model": {"common"},
    "training": {"common", "model"},
    "results": {"common", "model", "training"},
    "space": {"common", "model", "training", "results"},
    "search": {"common", "model", "training", "results", "space", "bench"},
    "ablation": {"common", "model", "training", "results", "space"},
    "bench": {"common", "model", "training", "results", "space", "ablation"},
    "commands": {"common", "model", "training", "results", "space", "search", "ablation",
                 "bench", "cli"},
    "cli": {"commands", "common"},
    "__init__": {"model", "training"},
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every cvt_nas module this file imports, at any depth of the file."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("cvt_nas")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cvt_nas"):
            out.add(node.module)
            # `from cvt_nas.search import study` imports the module cvt_nas.search.study
            for a in node.names:
                if (PKG.parent / (node.module + "." + a.name).replace(".", "/")).with_suffix(
                        ".py").is_file():
                    out.add(f"{node.module}.{a.name}")
    return out


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PKG.rglob("*.py")}


def _stage(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_module_lives_in_a_stage_package() -> None:
    top = sorted(p.name for p in PKG.glob("*.py"))
    assert top == ["__init__.py", "cli.py"]


def test_imports_flow_one_way_between_stages() -> None:
    bad = []
    for module, imports in _graph().items():
        src = _stage(module)
        for target in imports:
            dst = _stage(target)
            if dst != src and dst != "__init__" and dst not in ALLOWED[src]:
                bad.append(f"{module} -> {target}")
    assert not bad, "imports against the stage order:\n" + "\n".join(sorted(bad))


def test_no_import_cycle_between_modules() -> None:
    graph = _graph()
    modules = set(graph)
    edges = {m: {t for t in graph[m] if t in modules and t != m} for m in graph}
    # a package's __init__ re-exporting its own modules is not a cycle
    edges = {m: {t for t in ts if not t.startswith(m + ".")} for m, ts in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges[m]):
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_layout_test_sees_a_cycle(tmp_path: Path) -> None:
    """The checker itself: a planted cycle is found."""
    a, b = tmp_path / "a.py", tmp_path / "b.py"
    a.write_text("from cvt_nas.model import config\n")
    b.write_text("def f():\n    from cvt_nas.search.trial import gate\n")
    assert _imports(a) == {"cvt_nas.model", "cvt_nas.model.config"}
    assert _imports(b) == {"cvt_nas.search.trial"}


def test_import_cvt_nas_loads_no_torch() -> None:
    code = "import sys, cvt_nas, cvt_nas.space, cvt_nas.results; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
