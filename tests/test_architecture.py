"""The architecture, enforced: no import cycles, no forbidden arrows, small modules and functions.

The import graph of `builder/` and `frontend/` is read from the source with `ast` (every import
statement, at module level or inside a function; relative imports resolved; `from pkg import
name` is an arrow to the submodule `pkg.name` when there is one, else to `pkg`). Nothing is
imported or run.

The arrows allowed (DESIGN: the frontend speaks the builder's vocabulary, the face wires the
parts together, the parts below it know nothing of the face):

* `frontend` imports from `builder` only `builder.errors`, `builder.image.*`,
  `builder.solve.graph`, `builder.solve.ops`;
* in `builder`, only the face (`builder.api`, `builder.cli`, `builder.pipeline.*`) imports
  `frontend`;
* below the face (`builder.{image,solve,sandbox,layer,store,registry,export}`) nothing imports
  the face;
* each folder below the face imports only what README.md's folder table allows it (`ALLOWED`):
  e.g. `builder.image` nothing but `builder.errors`, `builder.layer` only `errors` and `image`.

Sizes: no module over 400 lines, no function (methods and nested functions included) over 60.
The checker is tested on small synthetic packages at the end of this file.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("builder", "frontend")
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

FACE = ("builder.api", "builder.cli", "builder.pipeline")
BELOW_FACE = tuple(f"builder.{p}" for p in ("image", "solve", "sandbox", "layer", "store", "registry", "export"))
BUILDER_FOLDERS = (*BELOW_FACE, "builder.pipeline")
# What each folder below the face may import in builder/ (besides itself): README's folder table.
VOCABULARY = ("builder.errors", "builder.image")
ALLOWED: dict[str, tuple[str, ...]] = {
    "builder.image": ("builder.errors",),
    "builder.layer": VOCABULARY,
    "builder.store": (*VOCABULARY, "builder.layer"),
    "builder.registry": (*VOCABULARY, "builder.store"),
    "builder.sandbox": (*VOCABULARY, "builder.progress", "builder.layer", "builder.store", "builder.solve.ops"),
    "builder.solve": (*VOCABULARY, "builder.progress", "builder.layer", "builder.store", "builder.sandbox.executor"),
    "builder.export": (*VOCABULARY, "builder.layer", "builder.store", "builder.sandbox.executor",
                       "builder.request"),
    "builder.request": (*VOCABULARY, "builder.progress"),
    "builder.progress": VOCABULARY,
    "builder.errors": (),
}
FRONTEND_MAY_USE = ("builder.errors", "builder.image", "builder.solve.graph", "builder.solve.ops")


# ------------------------------------------------------------------ the checker

@dataclass(frozen=True)
class Module:
    name: str             # dotted: builder.solve.graph; a package is named by its __init__.py
    path: Path
    is_package: bool
    source: str

    @property
    def package(self) -> str:
        return self.name if self.is_package else self.name.rpartition(".")[0]


def within(name: str, prefix: str) -> bool:
    """`name` is the module `prefix` or inside it (`builder.image` holds `builder.image.oci`)."""
    return name == prefix or name.startswith(prefix + ".")


def within_any(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(within(name, p) for p in prefixes)


def load_modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Module]:
    """Every .py file of `packages` (directories under `root`), by dotted module name."""
    mods: dict[str, Module] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            if is_package:
                parts.pop()
            name = ".".join(parts)
            mods[name] = Module(name=name, path=path, is_package=is_package, source=path.read_text())
    return mods


def _known(name: str, mods: dict[str, Module]) -> str | None:
    """The module `name` names, or the nearest enclosing known module (an attribute's module)."""
    while name:
        if name in mods:
            return name
        name = name.rpartition(".")[0]
    return None


def _targets(mod: Module, node: ast.Import | ast.ImportFrom, mods: dict[str, Module]) -> Iterator[str]:
    if isinstance(node, ast.Import):
        for alias in node.names:
            if (t := _known(alias.name, mods)) is not None:
                yield t
        return
    base = node.module or ""
    if node.level:
        pkg = mod.package.split(".")
        up = pkg[: len(pkg) - (node.level - 1)] if node.level > 1 else pkg
        base = ".".join(up) + (f".{node.module}" if node.module else "")
    for alias in node.names:
        t = _known(f"{base}.{alias.name}", mods) if alias.name != "*" else None
        t = t or _known(base, mods)
        if t is not None:
            yield t


def import_graph(mods: dict[str, Module]) -> dict[str, set[str]]:
    """module -> the modules (of `mods`) it imports, anywhere in its source."""
    graph: dict[str, set[str]] = {name: set() for name in mods}
    for name, mod in mods.items():
        for node in ast.walk(ast.parse(mod.source, filename=str(mod.path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                graph[name].update(t for t in _targets(mod, node, mods) if t != name)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path `[a, b, ..., a]`) for each strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:                      # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_in(group, graph) for group in groups]


def _cycle_in(group: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the first module of a strongly connected group (breadth first)."""
    start, members = group[0], set(group)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [start, *reversed(path[:-1]), start] if len(path) > 1 else [start, v, start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"no cycle in {group}")


Rule = Callable[[str, str], "str | None"]


def _frontend_uses_vocabulary(src: str, dst: str) -> str | None:
    if within(src, "frontend") and within(dst, "builder") and not within_any(dst, FRONTEND_MAY_USE):
        return "frontend may use only the builder's vocabulary (" + ", ".join(FRONTEND_MAY_USE) + ")"
    return None


def _only_face_imports_frontend(src: str, dst: str) -> str | None:
    if within(src, "builder") and within(dst, "frontend") and not within_any(src, FACE):
        return "only the face (" + ", ".join(FACE) + ") imports frontend"
    return None


def _below_face_not_up(src: str, dst: str) -> str | None:
    if within_any(src, BELOW_FACE) and within_any(dst, FACE):
        return "nothing below the face imports the face (" + ", ".join(FACE) + ")"
    return None


def _folder_table(src: str, dst: str) -> str | None:
    for folder, allowed in ALLOWED.items():
        if within(src, folder) and within(dst, "builder") and not within(dst, folder) \
                and not within_any(dst, allowed):
            return f"{folder} imports only " + (", ".join(allowed) or "nothing else in builder")
    return None


RULES: tuple[Rule, ...] = (_frontend_uses_vocabulary, _only_face_imports_frontend, _below_face_not_up,
                           _folder_table)


def forbidden_arrows(graph: dict[str, set[str]], rules: tuple[Rule, ...] = RULES) -> list[str]:
    """`src -> dst: why` for every import that breaks a rule."""
    return [f"{src} -> {dst}: {why}" for src in sorted(graph) for dst in sorted(graph[src])
            for rule in rules if (why := rule(src, dst)) is not None]


def _functions(tree: ast.AST, prefix: str = "") -> Iterator[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function with its qualified name (`Class.method`, `outer.<locals>.inner`)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield prefix + node.name, node
            yield from _functions(node, f"{prefix}{node.name}.<locals>.")
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node, f"{prefix}{node.name}.")
        else:
            yield from _functions(node, prefix)


def size_offenders(mods: dict[str, Module], root: Path, max_module: int = MAX_MODULE_LINES,
                   max_function: int = MAX_FUNCTION_LINES) -> list[str]:
    """`path: N lines` for each module too long, `path:LINE name: N lines` for each function
    (from its `def` line to its last line, decorators excluded)."""
    out = []
    for mod in sorted(mods.values(), key=lambda m: m.name):
        rel = mod.path.relative_to(root)
        n = len(mod.source.splitlines())
        if n > max_module:
            out.append(f"{rel}: module of {n} lines (max {max_module})")
        for qual, fn in _functions(ast.parse(mod.source, filename=str(mod.path))):
            length = (fn.end_lineno or fn.lineno) - fn.lineno + 1
            if length > max_function:
                out.append(f"{rel}:{fn.lineno} {qual}: function of {length} lines (max {max_function})")
    return out


# ------------------------------------------------------------------ the checks

def test_no_import_cycles() -> None:
    cycles = find_cycles(import_graph(load_modules(REPO)))
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_forbidden_imports() -> None:
    bad = forbidden_arrows(import_graph(load_modules(REPO)))
    assert not bad, "forbidden imports:\n" + "\n".join(bad)


def test_modules_and_functions_are_small() -> None:
    bad = size_offenders(load_modules(REPO), REPO)
    assert not bad, "too long:\n" + "\n".join(bad)


def test_the_real_graph_is_read() -> None:
    """The checker sees the real code: known arrows, relative and function-level imports."""
    graph = import_graph(load_modules(REPO))
    assert "builder.errors" in graph["frontend.convert"]                 # absolute, module level
    assert "frontend.instruction_parse" in graph["frontend.convert"]     # relative `from .x import y`
    assert "frontend.instructions" in graph["frontend.convert"]          # `from . import instructions`
    assert "frontend.convert" in graph["builder.api"]                    # inside a function


# ------------------------------------------------------------------ the checker, tested

def _package(root: Path, files: dict[str, str]) -> dict[str, Module]:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return load_modules(root)


def test_checker_resolves_relative_function_level_and_from_imports(tmp_path: Path) -> None:
    mods = _package(tmp_path, {
        "builder/__init__.py": "",
        "builder/errors.py": "",
        "builder/solve/__init__.py": "",
        "builder/solve/ops.py": "from ..errors import E\nfrom . import graph\n",
        "builder/solve/graph.py": "def f():\n    import builder.errors as e\n    from builder.solve.ops import X\n",
        "frontend/__init__.py": "",
        "frontend/a.py": "from .b import c\nfrom builder import errors\n",
        "frontend/b.py": "",
    })
    graph = import_graph(mods)
    assert graph["builder.solve.ops"] == {"builder.errors", "builder.solve.graph"}
    assert graph["builder.solve.graph"] == {"builder.errors", "builder.solve.ops"}
    assert graph["frontend.a"] == {"frontend.b", "builder.errors"}


def test_checker_names_a_cycle(tmp_path: Path) -> None:
    mods = _package(tmp_path, {
        "builder/__init__.py": "",
        "builder/solve/__init__.py": "",
        "builder/solve/a.py": "from . import b\n",
        "builder/solve/b.py": "def later():\n    from .c import x\n",
        "builder/solve/c.py": "import builder.solve.a\n",
        "builder/solve/d.py": "from . import a\n",              # imports into the cycle, not part of it
        "frontend/__init__.py": "",
        "frontend/x.py": "from frontend import y\n",
        "frontend/y.py": "from .x import z\n",
    })
    cycles = find_cycles(import_graph(mods))
    assert sorted(cycles) == [["builder.solve.a", "builder.solve.b", "builder.solve.c", "builder.solve.a"],
                              ["frontend.x", "frontend.y", "frontend.x"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_checker_finds_each_forbidden_arrow(tmp_path: Path) -> None:
    mods = _package(tmp_path, {
        "builder/__init__.py": "",
        "builder/errors.py": "",
        "builder/api.py": "import frontend.convert\n",                       # the face: allowed
        "builder/cli.py": "from frontend.convert import convert\n",          # allowed
        "builder/pipeline/__init__.py": "",
        "builder/pipeline/run.py": "from frontend import convert\n",         # allowed (the face)
        "builder/image/__init__.py": "",
        "builder/image/oci.py": "from ..errors import E\nfrom builder.solve import ops\n",
        "builder/solve/__init__.py": "",
        "builder/solve/ops.py": "",
        "builder/solve/solver.py": "def f():\n    from builder.pipeline import run\n    import frontend.convert\n",
        "builder/layer/__init__.py": "",
        "builder/layer/tar.py": "from builder.image import oci\nfrom builder.errors import E\nfrom builder.store import s\n",
        "builder/store/__init__.py": "",
        "builder/store/s.py": "",
        "frontend/__init__.py": "",
        "frontend/convert.py": "from builder.solve.ops import Op\nfrom builder.solve import solver\n"
                               "from builder.image.oci import C\n",
    })
    bad = forbidden_arrows(import_graph(mods))
    arrows = sorted({b.split(":")[0] for b in bad})
    assert arrows == ["builder.image.oci -> builder.solve.ops", "builder.layer.tar -> builder.store.s",
                      "builder.solve.solver -> builder.pipeline.run", "builder.solve.solver -> frontend.convert",
                      "frontend.convert -> builder.solve.solver"]
    assert any("only the face" in b for b in bad) and any("vocabulary" in b for b in bad)


def test_checker_finds_long_modules_and_functions(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(60))            # def line + 60 = 61 lines
    ok = "".join(f"    x{i} = {i}\n" for i in range(59))              # 60 lines: allowed
    mods = _package(tmp_path, {
        "frontend/__init__.py": "",
        "frontend/long.py": f"def long():\n{body}\n\nclass C:\n    def m(self):\n        def inner():\n"
                            + body.replace("    ", "            ") + "        return inner\n\n\ndef fine():\n" + ok,
        "frontend/big.py": "x = 1\n" * 401,
        "frontend/edge.py": "x = 1\n" * 400,
    })
    bad = size_offenders(mods, tmp_path)
    assert bad == ["frontend/big.py: module of 401 lines (max 400)",
                   "frontend/long.py:1 long: function of 61 lines (max 60)",
                   "frontend/long.py:65 C.m: function of 63 lines (max 60)",
                   "frontend/long.py:66 C.m.<locals>.inner: function of 61 lines (max 60)"]
