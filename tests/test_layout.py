"""The package layout stays readable: no import cycle inside korlm (imports inside
functions count), no module over MAX_LINES lines, and no module reaching into another
module's private (``_name``) names. Static: reads the sources' ASTs, imports nothing."""

from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("korlm", "components", "pipelines")
MAX_LINES = 900


def _modules(packages=PACKAGES) -> dict[str, str]:
    """Dotted module name -> file path of every module under ``packages``."""
    found = {}
    for package in packages:
        for folder, dirs, files in os.walk(os.path.join(ROOT, package)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__")
            for name in sorted(files):
                if not name.endswith(".py"):
                    continue
                rel = os.path.relpath(os.path.join(folder, name), ROOT)[:-3].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                found[".".join(rel)] = os.path.join(folder, name)
    return found


MODULES = _modules()


def _package_of(module: str, path: str) -> str:
    return module if path.endswith("__init__.py") else module.rpartition(".")[0]


def _imports(module: str, path: str):
    """(imported module, imported name or None, line) for every import statement of the
    module, at any depth (function bodies included); relative imports resolved."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None, alias.asname or alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = _package_of(module, path).split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for alias in node.names:
                yield base, alias.name, alias.asname or alias.name, node.lineno


def _targets(imported: str, name: str | None) -> list[str]:
    """The project modules an import statement runs: the module and its packages, and for
    ``from package import submodule`` the submodule too."""
    out = []
    parts = imported.split(".")
    for i in range(1, len(parts) + 1):
        candidate = ".".join(parts[:i])
        if candidate in MODULES:
            out.append(candidate)
    if name and f"{imported}.{name}" in MODULES:
        out.append(f"{imported}.{name}")
    return out


def import_graph(prefix: str = "korlm") -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        if module != prefix and not module.startswith(prefix + "."):
            continue
        edges = graph.setdefault(module, set())
        for imported, name, _, _ in _imports(module, path):
            edges.update(t for t in _targets(imported, name) if t != module
                         and (t == prefix or t.startswith(prefix + ".")))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def private_imports() -> list[str]:
    """``from project.module import _name`` and ``module._name`` where ``module`` is a
    project module bound by an import, across module boundaries."""
    found = []
    for module, path in MODULES.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        aliases = {}
        for imported, name, bound, line in _imports(module, path):
            targets = _targets(imported, name)
            if not targets:
                continue
            if name is None:
                # `import korlm.x.y` binds `korlm`; `import korlm.x.y as z` binds the module
                aliases[bound] = imported if bound != imported.split(".")[0] else bound
            elif f"{imported}.{name}" in MODULES:
                aliases[bound] = f"{imported}.{name}"
            elif name.startswith("_") and not name.startswith("__") and imported != module:
                found.append(f"{module}:{line} imports {imported}.{name}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_")
                    and not node.attr.startswith("__") and isinstance(node.value, ast.Name)
                    and node.value.id in aliases and aliases[node.value.id] != module):
                found.append(f"{module}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return sorted(set(found))


def test_the_checks_find_what_they_look_for():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []
    assert _targets("korlm", "storage") == ["korlm", "korlm.storage"]
    assert "korlm.storage" in import_graph()["korlm.cli"] or "korlm.config" in import_graph()["korlm.cli"]


def test_no_import_cycle_inside_korlm():
    found = cycles(import_graph("korlm"))
    assert not found, "import cycles (imports inside functions count): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_no_module_over_the_size_limit():
    sizes = {}
    for module, path in MODULES.items():
        with open(path, encoding="utf-8") as f:
            sizes[module] = sum(1 for _ in f)
    over = [f"{m} ({n} lines)" for m, n in sorted(sizes.items()) if n > MAX_LINES]
    assert not over, f"modules over {MAX_LINES} lines (split them by job): " + ", ".join(over)


def test_no_private_name_crosses_a_module_boundary():
    found = private_imports()
    assert not found, "private names used from another module (make them public or move them): " + "; ".join(found)


# Stages in pipeline order (modeling: the models the later stages share). A stage imports
# the ground floor (errors, storage, config, beam_options) and earlier stages only; the
# CLI composes them all, and config validates each stage's settings with its functions.
STAGES = ("clean", "tokenizer", "pretrain_data", "modeling", "pretrain", "evaluation", "hub", "serve")
COMPOSERS = ("korlm.cli", "korlm.config")


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in STAGES else None


def test_stages_import_only_earlier_stages():
    wrong = []
    for module, targets in import_graph("korlm").items():
        if module in COMPOSERS:
            continue
        mine = _stage(module)
        for target in targets:
            theirs = _stage(target)
            if theirs is None or theirs == mine:
                continue
            if mine is None or STAGES.index(theirs) > STAGES.index(mine):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "a stage imports a later stage (or the ground floor a stage): " + "; ".join(sorted(wrong))
