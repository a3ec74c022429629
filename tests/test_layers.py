"""The package reads as layers that import downward only, with no import cycle.

Every import counts, type-only and function-local ones included: a cycle that only a
type checker follows is still a cycle a reader has to untangle. Layers, bottom first:

    basics (top-level modules)  <  _text  <  _store  <  _trimming  <  _client | _reports
    <  the facade (_trimmer, __init__)  <  _jobs | integrations  <  gateway  <  cli

Modules of one layer may import each other (as long as no cycle forms); siblings
separated by ``|`` may not import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import context_trimmer

PACKAGE = Path(context_trimmer.__file__).parent
FACADE = {"", "_trimmer"}
LAYERS: list[set[str]] = [
    {"<basics>"},
    {"_text"},
    {"_store"},
    {"_trimming"},
    {"_client", "_reports"},
    {"<facade>"},
    {"_jobs", "integrations"},
    {"gateway"},
    {"cli"},
]


def _module(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module(p): p for p in PACKAGE.rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("context_trimmer."):
                    found.add(alias.name.removeprefix("context_trimmer."))
            continue
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level == 0:
            if node.module and node.module.startswith("context_trimmer"):
                base = node.module.removeprefix("context_trimmer").lstrip(".")
            else:
                continue
        else:
            parts = name.split(".") if name else []
            if not is_package:
                parts = parts[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        for alias in node.names:
            if alias.name == "migrations":
                continue  # the Alembic scripts' package (the store's): no layer of its own
            full = ".".join(p for p in (base, alias.name) if p)
            found.add(full if full in known else base)
    return {m for m in found if m in known and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, set(modules)) for name, path in modules.items()}


def _group(module: str) -> str:
    if module in FACADE:
        return "<facade>"
    head = module.split(".")[0]
    if head == "migrations":  # the store's Alembic scripts, shipped inside the package
        return "_store"
    return head if "." in module or (PACKAGE / head).is_dir() else "<basics>"


def _layer(module: str) -> int:
    group = _group(module)
    return next(i for i, layer in enumerate(LAYERS) if group in layer)


def test_every_module_has_a_layer() -> None:
    for module in _graph():
        assert _layer(module) >= 0, module


def test_layers_import_downward_only() -> None:
    wrong = []
    for module, imported in _graph().items():
        for target in imported:
            below = _layer(target) < _layer(module)
            same_group = _group(target) == _group(module)
            if not (below or same_group):
                wrong.append(f"{module} -> {target}")
    assert wrong == [], "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_import_cycle() -> None:
    graph = _graph()
    graph[""] = set()  # the package's __init__ imports everything: a root, not a cycle
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(graph.get(module, ())):
            if target == "":
                continue
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_few_top_level_modules_and_subpackages_by_layer() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert len(top) <= 12, top
    assert len(packages) >= 4, packages


def test_each_subpackage_says_what_it_owns() -> None:
    for init in PACKAGE.glob("*/__init__.py"):
        if init.parent.name == "migrations":
            continue  # Alembic's scripts, documented in migrations/__init__.py
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc.split()) >= 20, f"{init.parent.name}/__init__.py needs a docstring"
