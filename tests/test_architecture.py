"""The import arrows point one way (see ARCHITECTURE.md): every module's imports, function-level ones included,
are read with `ast` and checked against the rooms' rules; no modules import each other in a circle; no module
imports another's private (`_x`) names; importing all of `sae` pulls in no Textual. Each check is shown to fail
on a violation planted in a temporary tree."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# room -> the rooms (prefixes of module names) it may import from inside the project
SAE_RULES: dict[str, tuple[str, ...]] = {
    "sae.engine": ("sae.engine",),
    "sae.analysis": ("sae.engine", "sae.analysis"),
    "sae.experiments": ("sae.engine", "sae.analysis", "sae.experiments"),
    "sae.zoo": ("sae.engine", "sae.analysis", "sae.experiments", "sae.zoo"),
    "sae.bench": ("sae.engine", "sae.analysis", "sae.experiments", "sae.zoo", "sae.bench"),
    "sae.cli": ("sae",),
}
# workbench modules that may reach `sae` directly: the engine (the one door) and the entry points around the app
WORKBENCH_DOORS = ("workbench.engine", "workbench.launch", "workbench.main", "workbench.screenshots", "workbench.bench_tui")
# the shared primitives every layer may use
PRIMITIVES = ("sae.engine.errors", "sae.engine.jobs", "sae.engine.safe_io", "sae.engine.safe_text", "sae.engine.schema")
THIRD_PARTY_UI = ("textual",)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every imported module name (absolute; relative imports resolved), with its line, at any depth."""
    tree = ast.parse(path.read_text(), filename=str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            out.append((node.lineno, mod))
            # `from sae import zoo` imports the module sae.zoo
            out += [(node.lineno, f"{mod}.{a.name}") for a in node.names if mod in ("sae", "workbench") or mod.startswith(("sae.", "workbench."))]
    return out


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def room_of(mod: str) -> str | None:
    for room in SAE_RULES:
        if within(mod, room):
            return room
    return None


def project_files() -> list[Path]:
    return sorted(p for top in ("sae", "workbench") for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)


def wrong_arrows() -> list[str]:
    bad: list[str] = []
    for path in project_files():
        me = module_name(path)
        for line, name in imports_of(path):
            where = f"{path.relative_to(ROOT)}:{line} imports {name}"
            if me.startswith("sae"):
                if within(name, "workbench") or any(within(name, t) for t in THIRD_PARTY_UI):
                    bad.append(f"{where} (nothing in sae imports workbench or Textual)")
                    continue
                if not within(name, "sae") or name == "sae":
                    continue
                room = room_of(me)
                if room is None:  # sae/__init__.py
                    continue
                if any(within(name, p) for p in PRIMITIVES):
                    continue
                # `from sae.zoo import x` may name a function, not a module: judge the longest module prefix
                if not any(within(name, allowed) for allowed in SAE_RULES[room]):
                    bad.append(f"{where} ({room} may import only {', '.join(SAE_RULES[room])})")
            elif me.startswith("workbench"):
                if not within(name, "sae"):
                    continue
                if any(within(me, d) for d in WORKBENCH_DOORS):
                    continue
                if me in ("workbench.messages", "workbench.findings") and any(within(name, p) for p in PRIMITIVES):
                    continue
                bad.append(f"{where} (screens reach sae only through workbench.engine)")
    return bad


def test_import_arrows_point_one_way():
    assert wrong_arrows() == []


def test_the_checker_can_fail(tmp_path, monkeypatch):
    """A planted wrong arrow (engine -> zoo) and a planted Textual import are both reported."""
    fake = tmp_path / "sae" / "engine"
    fake.mkdir(parents=True)
    (tmp_path / "sae" / "__init__.py").write_text("")
    (fake / "__init__.py").write_text("")
    (fake / "bad.py").write_text("def f():\n    from sae import zoo\n    import textual.app\n")
    (tmp_path / "workbench" / "screens").mkdir(parents=True)
    (tmp_path / "workbench" / "screens" / "s.py").write_text("from sae.analysis import dfa\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    bad = wrong_arrows()
    assert any("sae/engine/bad.py:2 imports sae.zoo" in b for b in bad)
    assert any("imports textual.app" in b for b in bad)
    assert any("workbench/screens/s.py:1 imports sae.analysis" in b for b in bad)


def under_type_checking(tree: ast.AST) -> set[int]:
    """The ids of import nodes inside `if TYPE_CHECKING:` blocks (annotations only: never run)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                out |= {id(n) for n in ast.walk(child) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return out


def resolve(name: str, modules: set[str]) -> str | None:
    """The project module that importing `name` runs: `name` itself or its longest prefix that is a module."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, dict[str, int]]:
    """module -> {project module it imports: the line}, at any depth (functions included), relative imports
    resolved, `if TYPE_CHECKING:` imports left out (they never run)."""
    files = project_files()
    modules = {module_name(p) for p in files}
    graph: dict[str, dict[str, int]] = {}
    for path in files:
        me = module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        typing_only = under_type_checking(tree)
        package = me if path.name == "__init__.py" else me.rpartition(".")[0]
        edges: dict[str, int] = {}
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    base = package.split(".")
                    mod = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
                names = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            for name in names:
                target = resolve(name, modules)
                if target is not None and target != me:
                    edges.setdefault(target, node.lineno)
        graph[me] = edges
    return graph


def import_cycles() -> list[str]:
    """Each circle of imports (a strongly connected set of modules), drawn as `a -> b (line) -> ... -> a`."""
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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
    out = []
    for group in groups:  # one circle through the group's first module, for the message
        members = set(group)
        path, seen = [group[0]], {group[0]}
        while True:
            nxt = [w for w in graph[path[-1]] if w in members]
            step = group[0] if group[0] in nxt else next((w for w in nxt if w not in seen), None)
            if step is None:
                break
            path.append(step)
            seen.add(step)
            if step == group[0]:
                break
        drawn = path[0] + "".join(f" -> {b} (line {graph[a][b]})" for a, b in zip(path, path[1:]))
        out.append(f"{drawn} [the circle's modules: {', '.join(group)}]")
    return out


def private_imports() -> list[str]:
    """`from m import _x`, and `m._x` on a module `m` imported from the project, in a module other than `m`."""
    files = project_files()
    modules = {module_name(p) for p in files}
    bad: list[str] = []
    for path in files:
        me = module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        package = me if path.name == "__init__.py" else me.rpartition(".")[0]
        aliases: dict[str, str] = {}  # local name -> the project module it is bound to
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                aliases.update({(a.asname or a.name): a.name for a in node.names if a.name in modules and a.asname})
            elif isinstance(node, ast.ImportFrom):
                mod = node.module or ""
                if node.level:
                    base = package.split(".")
                    mod = ".".join(base[: len(base) - (node.level - 1)] + ([node.module] if node.module else []))
                if resolve(mod, modules) is None or mod == me:
                    continue
                for a in node.names:
                    if f"{mod}.{a.name}" in modules:
                        aliases[a.asname or a.name] = f"{mod}.{a.name}"
                    elif a.name.startswith("_") and not a.name.startswith("__"):
                        bad.append(f"{path.relative_to(ROOT)}:{node.lineno} imports {a.name} from {mod}")
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and aliases[node.value.id] != me and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}")
    return bad


def test_no_import_cycles():
    assert import_cycles() == []


def test_no_private_names_imported_across_modules():
    assert private_imports() == []


def test_the_cycle_and_private_checks_can_fail(tmp_path, monkeypatch):
    """Planted: a circle closed by an import inside a function (reported), a circle closed only under
    TYPE_CHECKING (not: it never runs), a private name imported from another module and one reached as an
    attribute of an imported module (both reported); a module using its own private names is fine."""
    pkg = tmp_path / "sae" / "engine"
    pkg.mkdir(parents=True)
    (tmp_path / "sae" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from sae.engine.b import g\n\ndef _h():\n    return 1\n\ndef f():\n    return _h()\n")
    (pkg / "b.py").write_text("def g():\n    from sae.engine import a\n    return a.f()\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nfrom sae.engine.d import y\n"
                              "if TYPE_CHECKING:\n    from sae.engine.d import z\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sae.engine import c\n"
                              "y = z = 1\n")
    (pkg / "e.py").write_text("from sae.engine.a import _h\nfrom sae.engine import a as mod\n\n"
                              "def k():\n    return _h() + mod._h()\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    cycles = import_cycles()
    assert len(cycles) == 1 and cycles[0].startswith("sae.engine.a -> sae.engine.b (line 1) -> sae.engine.a (line 2)")
    bad = private_imports()
    assert "sae/engine/e.py:1 imports _h from sae.engine.a" in bad
    assert "sae/engine/e.py:5 uses sae.engine.a._h" in bad
    assert len(bad) == 2


def user_error_names(files: list[Path]) -> set[str]:
    """The names of `AttnscopeError` and every class deriving from it in `files` (read with `ast`, to a fixpoint)."""
    bases: dict[str, set[str]] = {}
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ClassDef):
                bases.setdefault(node.name, set()).update(ast.unparse(b).rpartition(".")[2] for b in node.bases)
    names = {"AttnscopeError"}
    while True:
        more = {n for n, b in bases.items() if b & names} - names
        if not more:
            return names
        names |= more


def rewrapped_errors() -> list[str]:
    """Handlers in `sae/` that catch a user error (an `AttnscopeError` subclass, by name) and raise a new exception
    made from it: the error rule says let it pass unchanged."""
    files = sorted((ROOT / "sae").rglob("*.py"))
    names = user_error_names(files)
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if not (isinstance(node, ast.ExceptHandler) and node.name and node.type is not None):
                continue
            types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            caught = [ast.unparse(t).rpartition(".")[2] for t in types]
            if not any(c in names for c in caught):
                continue
            for r in ast.walk(ast.Module(body=node.body, type_ignores=[])):
                if (isinstance(r, ast.Raise) and isinstance(r.exc, ast.Call)
                        and any(isinstance(a, ast.Name) and a.id == node.name for a in ast.walk(r.exc))):
                    bad.append(f"{path.relative_to(ROOT)}:{r.lineno} re-wraps {', '.join(caught)} as "
                               f"{ast.unparse(r.exc.func)}")
    return bad


def test_no_user_error_is_rewrapped():
    assert rewrapped_errors() == []


def test_the_rewrap_check_can_fail(tmp_path, monkeypatch):
    """Planted: a re-wrap of a user error (reported, also through a subclass of a subclass and a tuple) and a
    conversion of a library's ValueError (fine)."""
    (tmp_path / "sae").mkdir()
    (tmp_path / "sae" / "m.py").write_text(
        "class AttnscopeError(Exception): ...\nclass AError(AttnscopeError, ValueError): ...\n"
        "class BError(AError): ...\n"
        "def f():\n    try:\n        g()\n    except (KeyError, BError) as exc:\n        raise AError(str(exc)) from None\n"
        "def h():\n    try:\n        g()\n    except ValueError as exc:\n        raise AError(f'bad: {exc}') from exc\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert rewrapped_errors() == ["sae/m.py:8 re-wraps KeyError, BError as AError"]


def test_cancelled_is_not_a_user_error():
    from sae.engine.errors import AttnscopeError
    from sae.engine.jobs import Cancelled

    assert not issubclass(Cancelled, AttnscopeError)


def test_importing_every_sae_module_pulls_in_no_textual():
    mods = [module_name(p) for p in project_files() if module_name(p).startswith("sae")]
    code = (
        "import importlib, sys\n"
        "import sae\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'textual'], 'import sae pulled in textual'\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] == 'textual')\n"
        "print('TEXTUAL', bad[:5])\n"
        "sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert res.returncode == 0, res.stdout + res.stderr


@pytest.mark.parametrize("room", sorted(SAE_RULES))
def test_every_room_has_a_docstring_saying_what_it_may_import(room):
    init = ROOT / Path(*room.split(".")) / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text())) or ""
    assert "import" in doc, f"{init} should say what it may import"


def test_test_modules_import_helpers_not_each_other():
    """Shared test helpers live in tests/support.py: no test module imports another test module or conftest."""
    tests = ROOT / "tests"
    bad = []
    for path in sorted(tests.rglob("*.py")):
        if "reference" in path.relative_to(tests).parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            bad += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}" for n in names
                    if n.split(".")[0].startswith("test_") or n.split(".")[0] in ("conftest", "workbench_pilot", "ioi_fixtures")]
    assert bad == []
