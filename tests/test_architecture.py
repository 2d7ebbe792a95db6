"""The package layout holds: every module imports alone, no cycles, layers point down only, and
no private name crosses a package (docs/ARCHITECTURE.md states the rules)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "lib"
# Lowest first: a module may import its own package, lib.core and the packages listed before its own.
LAYERS = ("core", "schedules", "data", "encodings", "models", "training", "scaling", "predictive",
          "experiments")


def lib_modules() -> list[str]:
    names = []
    for path in sorted(LIB.rglob("*.py")):
        if path.name == "__main__.py":  # an entry point: importing it runs it
            continue
        parts = path.relative_to(ROOT).with_suffix("").parts
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return sorted(names)


def lib_imports(path: Path):
    """(imported module, imported names, line) for every ``lib`` import in ``path``, nested ones too."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and (
                node.module == "lib" or node.module.startswith("lib.")):
            yield node.module, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("lib."):
                    yield alias.name, [], node.lineno


def package_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def test_every_package_is_a_known_layer():
    packages = sorted(p.name for p in LIB.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert packages == sorted(LAYERS)
    assert not [p.name for p in LIB.glob("*.py") if p.name != "__init__.py"], "lib/ holds packages only"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.slow
def test_every_module_imports_alone_in_a_fresh_interpreter():
    from concurrent.futures import ThreadPoolExecutor

    modules = lib_modules()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda m: (m, _run(f"import {m}")), modules))
    failed = [f"{m}: {r.stderr.strip().splitlines()[-1]}" for m, r in results if r.returncode]
    assert not failed, "modules that fail to import alone:\n" + "\n".join(failed)


@pytest.mark.slow
@pytest.mark.parametrize("order", ["sorted", "reverse"])
def test_all_modules_import_in_sorted_and_reverse_order(order):
    modules = lib_modules() if order == "sorted" else lib_modules()[::-1]
    result = _run("\n".join(f"import {m}" for m in modules))
    assert result.returncode == 0, result.stderr


def test_imports_point_down_the_layers_only():
    wrong = []
    for path in sorted(LIB.rglob("*.py")):
        own = path.relative_to(LIB).parts[0]
        if own == "__init__.py":
            continue
        for module, _, line in lib_imports(path):
            target = package_of(module)
            if target is None:
                # ``from lib import X`` names a package: the same rule applies to each one.
                continue
            if target != own and LAYERS.index(target) >= LAYERS.index(own):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports lib.{target} (layer above or beside {own})")
    for path in sorted(LIB.rglob("*.py")):
        own = path.relative_to(LIB).parts[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "lib":
                for alias in node.names:
                    if alias.name in LAYERS and alias.name != own and LAYERS.index(alias.name) >= LAYERS.index(own):
                        wrong.append(f"{path.relative_to(ROOT)}:{node.lineno} imports lib.{alias.name}")
    assert not wrong, "\n".join(wrong)


def test_no_private_name_crosses_a_package():
    wrong = []
    for path in sorted(LIB.rglob("*.py")):
        own = path.relative_to(LIB).parts[0]
        for module, names, line in lib_imports(path):
            target = package_of(module)
            private = [n for n in names if n.startswith("_")]
            private_module = any(p.startswith("_") and p != "__init__" for p in module.split("."))
            if target != own and (private or private_module):
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {private or module} from {module}")
    assert not wrong, "\n".join(wrong)


def test_each_package_declares_its_public_api():
    for init in sorted(LIB.glob("*/__init__.py")):
        tree = ast.parse(init.read_text())
        assert ast.get_docstring(tree), f"{init.relative_to(ROOT)} says what the package is for"
        package = __import__(f"lib.{init.parent.name}", fromlist=["*"])
        assert hasattr(package, "__all__"), f"{init.relative_to(ROOT)} has no __all__"
        names = list(package.__all__)
        assert len(names) == len(set(names)), f"{init.relative_to(ROOT)}: __all__ repeats a name"
        missing = [n for n in names if not hasattr(package, n)]
        assert not missing, f"lib.{init.parent.name}.__all__ names what it does not define: {missing}"
        assert not [n for n in names if n.startswith("_")]


def test_no_import_hides_inside_a_function_to_dodge_a_cycle():
    """Imports of other lib modules sit at module top: a nested one was how cycles were hidden."""
    nested = []
    for path in sorted(LIB.rglob("*.py")):
        tree = ast.parse(path.read_text())
        top = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and id(node) not in top:
                mods = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                if any(m and (m == "lib" or m.startswith("lib.")) for m in mods):
                    nested.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not nested, "lib imports inside functions:\n" + "\n".join(nested)


def test_imports_across_packages_go_through_the_package_api():
    """``from lib.models import X``, not ``from lib.models.transformer import X``: a package's
    modules can be split or renamed without touching its users."""
    wrong = []
    for path in sorted(LIB.rglob("*.py")):
        own = path.relative_to(LIB).parts[0]
        for module, _, line in lib_imports(path):
            if module.count(".") >= 2 and package_of(module) != own:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_student_t_quantiles_live_in_core_stats_only():
    """One stats module: an interval computed elsewhere drifts from it (names, n < 2, levels)."""
    stats_module = LIB / "core" / "stats.py"
    elsewhere = [str(p.relative_to(ROOT)) for p in sorted(LIB.rglob("*.py"))
                 if p != stats_module and ("t.ppf(" in p.read_text() or "t.interval(" in p.read_text())]
    assert not elsewhere, f"Student-t quantiles outside lib/core/stats.py: {elsewhere}"


def test_variant_tables_are_registries():
    """One registry helper: each table of named variants is a lib.core.Registry."""
    from lib.core import Registry
    from lib.encodings import ENCODINGS
    from lib.models import MLPS
    from lib.predictive import PREDICTORS
    from lib.schedules import SCHEDULES

    for table in (SCHEDULES, ENCODINGS, MLPS, PREDICTORS):
        assert isinstance(table, Registry) and len(table) >= 2
