"""No import circles among the project's modules (issue 23).

An ast-based graph of every project `.py` file (the packages, the entry points, bench/
and tests/): module A has an edge to module B when A imports B anywhere, at the top
or inside a function (a function-local import hides a circle from Python's import
machinery, not from a reader), under `if TYPE_CHECKING:` too. What an import names:

- `import a.b.c` / `from a.b import c`: the deepest project module named (`a.b.c` when
  `c` is a module, else `a.b`, whose attribute `c` is);
- a package's `__init__` runs before any of its modules: an import of `pkg.mod` from
  OUTSIDE `pkg` is also an edge to `pkg` (its `__init__`, and whatever that re-exports).
  From inside `pkg` it is not: the package is already being initialised when its own
  modules run (`callbacks/__init__.py` importing `callbacks.csv_logger`, which imports
  `callbacks.atomic_io`, is no circle, and Python runs it as one pass).

The test fails naming every circle found, as `a -> b -> a`.
"""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP_DIRS = {".git", "runs", "build", "dist", "__pycache__", ".ruff_cache", ".pytest_cache"}


# The repository root is the package `tapefit` (setup.cfg's package_dir); tests/ and bench/
# are not part of it and keep their own names.
PACKAGE, OUTSIDE_THE_PACKAGE = "tapefit", ("tests", "bench")


def project_modules(root: str = ROOT, package: str | None = None) -> dict[str, str]:
    """Module name -> file path for every project .py file (a package by its name);
    with `package`, `root` is that package: its files are named `package.<path>`, but for
    those under `OUTSIDE_THE_PACKAGE`."""
    modules = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")
                         and not d.startswith("."))
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            parts = os.path.relpath(path, root)[:-3].split(os.sep)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if package and (not parts or parts[0] not in OUTSIDE_THE_PACKAGE):
                parts = [package, *parts]
            if parts:
                modules[".".join(parts)] = path
    return modules


def _package(module: str, modules: dict[str, str]) -> str | None:
    """The package `module` belongs to (None for a top-level script)."""
    is_package = modules.get(module, "").endswith("__init__.py")
    return module if is_package else (module.rpartition(".")[0] or None)


def _targets(module: str, node: ast.AST, modules: dict[str, str]) -> set[str]:
    """The project modules an import statement names (see the module docstring)."""
    named = []
    if isinstance(node, ast.Import):
        named = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # Relative: from the importer's package upwards.
            package = _package(module, modules) or ""
            parts = package.split(".") if package else []
            parts = parts[:len(parts) - (node.level - 1)]
            base = ".".join(p for p in [*parts, base] if p)
        named = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                 for alias in node.names]
    own = _package(module, modules)
    targets = set()
    for name in named:
        parts = name.split(".")
        # The deepest project module the dotted name reaches.
        deepest = next((".".join(parts[:i]) for i in range(len(parts), 0, -1)
                        if ".".join(parts[:i]) in modules), None)
        if deepest is None:
            continue  # Not ours (tensorflow, keras, numpy, ...).
        targets.add(deepest)
        # Every enclosing package's __init__ runs first, unless the importer is inside it.
        for i in range(1, len(parts)):
            package = ".".join(parts[:i])
            inside = own is not None and (own == package or own.startswith(package + "."))
            if package in modules and package != deepest and not inside:
                targets.add(package)
    targets.discard(module)
    return targets


def import_graph(root: str = ROOT, package: str | None = PACKAGE) -> dict[str, set[str]]:
    modules = project_modules(root, package)
    graph = {}
    for module, path in modules.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        edges = set()
        for node in ast.walk(tree):  # Function-local imports too.
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges |= _targets(module, node, modules)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):  # The graph is small (~150 modules): recursion is fine.
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(_one_cycle(graph, set(component)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _one_cycle(graph, component) -> list[str]:
    """A shortest circle through the component's first module, for the message."""
    start = min(component)
    paths, seen = [[start]], {start}
    while paths:
        path = paths.pop(0)
        for w in sorted(graph[path[-1]] & component):
            if w == start:
                return path + [start]
            if w not in seen:
                seen.add(w)
                paths.append(path + [w])
    return sorted(component)


def test_the_graph_sees_the_project():
    graph = import_graph()
    assert {"tapefit.loops.phases", "tapefit.train", "tapefit.callbacks", "tests.conftest",
            "bench.common"} <= set(graph)
    assert "tapefit.loops.phases" in graph["tapefit.train"]
    # A function-local import counts (predict.py imports loops.classify inside predict()).
    assert "tapefit.loops.classify" in graph["tapefit.predict"]


def test_every_import_of_the_project_names_tapefit():
    """One import name (issue 29): `import model` or `from flags.config import ...` would
    import whatever `model` the user's folder holds (a notebook's model.py)."""
    own = {name.split(".")[1] for name in project_modules(ROOT, PACKAGE)
           if name.startswith(PACKAGE + ".")}
    # The one exception: a script run by its path checks which tapefit it would import
    # with the `_checkout` beside it, before importing tapefit.
    own.discard("_checkout")
    bare = []
    for path in project_modules(ROOT, PACKAGE).values():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                     else [])
            bare += [f"{path}:{node.lineno}: {name}" for name in names
                     if name.split(".")[0] in own]
    assert not bare, "imports that do not name tapefit:\n" + "\n".join(bare)


def test_a_circle_is_found(tmp_path):
    """The detector itself: a circle hidden in a function-local import, and one through
    a package's __init__ re-export."""
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("from pkg.m import y\n")
    (tmp_path / "pkg" / "m.py").write_text("from pkg import n\nimport c\n")
    (tmp_path / "pkg" / "n.py").write_text("")
    (tmp_path / "c.py").write_text("from pkg.n import z\n")
    found = sorted(" -> ".join(c) for c in cycles(import_graph(str(tmp_path), None)))
    assert found == ["a -> b -> a", "c -> pkg -> pkg.m -> c"], found


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_every_import_of_a_tapefit_name_finds_it():
    """`from tapefit.x import y` anywhere (function-local too, bench/ included) names a
    module and an attribute that exist: a moved function (issue 29 moved the optimizer
    factory) fails here, not in a benchmark run weeks later."""
    import importlib
    import importlib.util
    missing = []
    for path in project_modules(ROOT, PACKAGE).values():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and not node.level and (
                    node.module or "").split(".")[0] == PACKAGE:
                module = importlib.import_module(node.module)
                missing += [f"{path}:{node.lineno}: {node.module}.{a.name}"
                            for a in node.names if not hasattr(module, a.name) and not (
                                hasattr(module, "__path__")  # A package's submodule.
                                and importlib.util.find_spec(f"{node.module}.{a.name}"))]
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == PACKAGE and importlib.util.find_spec(
                            alias.name) is None:
                        missing.append(f"{path}:{node.lineno}: {alias.name}")
    assert not missing, "imports of names that do not exist:\n" + "\n".join(missing)


def test_report_and_race_read_trials_without_the_runner():
    """The report and the race read trials through research/trial_files.py (issue 31):
    neither reaches research/runner.py (locks, processes, writes), directly or through
    another module."""
    graph = import_graph()

    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for w in graph.get(todo.pop(), ()):
                if w not in seen:
                    seen.add(w)
                    todo.append(w)
        return seen

    for module in ("tapefit.research.report", "tapefit.research.race"):
        assert module in graph
        assert "tapefit.research.runner" not in reach(module), module
