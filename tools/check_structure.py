"""The package's structure rules, checked from its source (ast): no private name crosses a module, no function
is longer than ``MAX_FUNCTION_LINES``. The layer rule itself is an import-linter contract in pyproject.toml.

    python tools/check_structure.py [PACKAGE_DIR]      exit 1 and one line per violation
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_FUNCTION_LINES = 60


def _modules(root: Path) -> dict[str, Path]:
    mods = {}
    for p in root.rglob("*.py"):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = p
    return mods


def _target(mod: str, path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_crossings(mod: str, path: Path, tree: ast.AST, mods: dict[str, Path], pkg: str) -> list[str]:
    """``from M import _x``, ``import M._x``, a private module, and ``alias._x`` on an imported module."""
    found, aliases = [], {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            target = _target(mod, path, node)
            if not (target == pkg or target.startswith(pkg + ".")):
                continue
            if any(_private(part) for part in target.split(".")) and target != mod:
                found.append(f"{path}:{node.lineno}: imports the private module {target}")
            for a in node.names:
                sub = f"{target}.{a.name}"
                if sub in mods:
                    aliases[a.asname or a.name] = sub
                elif _private(a.name) and target != mod:
                    found.append(f"{path}:{node.lineno}: imports the private name {target}.{a.name}")
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith(pkg + ".") and any(_private(p) for p in a.name.split(".")):
                    found.append(f"{path}:{node.lineno}: imports the private module {a.name}")
                if a.asname and a.name in mods:
                    aliases[a.asname] = a.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and _private(node.attr)
            and aliases[node.value.id] != mod
        ):
            found.append(f"{path}:{node.lineno}: uses the private name {aliases[node.value.id]}.{node.attr}")
    return found


def long_functions(path: Path, tree: ast.AST, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    out = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = (node.end_lineno or node.lineno) - node.lineno + 1
            if n > limit:
                out.append(f"{path}:{node.lineno}: {node.name} is {n} lines (limit {limit})")
    return out


def violations(root: Path, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """Every violation of the two rules in the package at ``root``."""
    mods = _modules(root)
    out: list[str] = []
    for mod, path in sorted(mods.items()):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        out += private_crossings(mod, path, tree, mods, root.name)
        out += long_functions(path, tree, limit)
    return out


if __name__ == "__main__":
    found = violations(Path(sys.argv[1] if len(sys.argv) > 1 else "evalharness").resolve())
    print(
        "\n".join(found) or f"structure: no private name crosses a module; no function over {MAX_FUNCTION_LINES} lines"
    )
    sys.exit(1 if found else 0)
