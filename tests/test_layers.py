"""The package's layers import one way only (docs/architecture.md): walk every import of every module."""

from __future__ import annotations

import ast
from pathlib import Path

import clipviz

PACKAGE = Path(clipviz.__file__).parent

# Lowest first. A module may import its own layer or lower ones; the world plug-in sits beside the core.
LAYERS = {
    "clipviz.errors": 0,
    "clipviz.plugins": 0,
    "clipviz.results": 0,
    "clipviz.images": 0,
    "clipviz.model": 1,
    "clipviz.visualization": 2,
    "clipviz.data": 2,
    "clipviz.analysis": 3,
    "clipviz.world": 3.5,
    "clipviz.apps": 4,
    "clipviz.cli": 4,
}
MAY_IMPORT_WORLD = ("clipviz.apps", "clipviz.cli", "clipviz.world")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(name: str) -> float | None:
    for prefix, rank in LAYERS.items():
        if name == prefix or name.startswith(prefix + "."):
            return rank
    return None


def imports_of(path: Path) -> list[tuple[int, str]]:
    """Every clipviz module ``path`` imports (also inside functions), with its line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = module_name(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target == "clipviz":  # ``from clipviz import world``: the names are modules or facade names
                found += [(node.lineno, f"clipviz.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, target))
    return [(line, name) for line, name in found if name == "clipviz" or name.startswith("clipviz.")]


def violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        me = module_name(path)
        if me == "clipviz":  # the facade re-exports the public API lazily
            continue
        mine = layer_of(me)
        if mine is None:
            bad.append(f"{me}: not in any layer (add it to LAYERS and docs/architecture.md)")
            continue
        for line, target in imports_of(path):
            theirs = layer_of(target)
            if target == "clipviz" or theirs is None:
                if target not in ("clipviz", "clipviz.__version__"):
                    bad.append(f"{me}:{line} imports {target}, which is in no layer")
                continue
            if theirs > mine:
                bad.append(f"{me}:{line} (layer {mine}) imports {target} (layer {theirs}, higher)")
            if target.startswith("clipviz.world") and not me.startswith(MAY_IMPORT_WORLD):
                bad.append(f"{me}:{line} imports the world plug-in ({target}); reach it through clipviz.plugins")
    return bad


def test_no_module_imports_a_higher_layer():
    assert violations() == []


def test_the_checker_catches_an_upward_import(tmp_path, monkeypatch):
    rogue = PACKAGE / "model" / "_rogue_for_test.py"
    rogue.write_text("def f():\n    from clipviz.apps.cli import main\n    from clipviz.world import scene\n")
    try:
        found = violations()
    finally:
        rogue.unlink()
    assert any("_rogue_for_test:2" in v and "higher" in v for v in found)
    assert any("_rogue_for_test:3" in v and "plug-in" in v for v in found)


def test_the_core_imports_without_the_world_plugin():
    import subprocess
    import sys

    code = (
        "import sys, clipviz, clipviz.model.loading, clipviz.visualization.visualize, clipviz.analysis.concepts, "
        "clipviz.data.sources; assert not [m for m in sys.modules if m.startswith('clipviz.world')], 'world loaded'"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
