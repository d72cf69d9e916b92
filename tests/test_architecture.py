"""The import arrows point one way (see ARCHITECTURE.md): every module's imports, function-level ones included,
are read with `ast` and checked against the rooms' rules; importing all of `sae` pulls in no Textual."""

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
PRIMITIVES = ("sae.engine.errors", "sae.engine.jobs", "sae.engine.safe_io", "sae.engine.safe_text")
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
