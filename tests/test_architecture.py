"""The package's structure rules that import-linter cannot state (it checks the layers and
cycles in ``make test``): no ``_private`` name is imported from another module, and every
name of the public export table resolves."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import tvm_hcprune as hc

ROOT = Path(__file__).resolve().parent.parent
TREES = ["tvm_hcprune", "tests", "benchmarks", "tutorials", "scripts"]


def _private_imports(path: Path) -> list[str]:
    hits = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not isinstance(node, ast.ImportFrom):
            continue
        ours = node.level > 0 or (node.module or "").split(".")[0] == "tvm_hcprune"
        for alias in node.names:
            private = alias.name.startswith("_") and not alias.name.startswith("__")
            # the root package's private modules (_resources, _version) are package-internal
            internal = node.module == "tvm_hcprune" and (ROOT / "tvm_hcprune" /
                                                         f"{alias.name}.py").is_file()
            if ours and private and not internal:
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno}: {alias.name}")
    return hits


def test_no_private_name_is_imported_across_modules():
    """``from tvm_hcprune.x import _y`` anywhere (package, tests, benchmarks) is a defect:
    what another module needs gets a public name in the right place."""
    hits = [h for tree in TREES for p in sorted((ROOT / tree).rglob("*.py"))
            for h in _private_imports(p)]
    assert hits == []


@pytest.mark.parametrize("name", sorted(hc._EXPORTS))
def test_export_table_resolves(name):
    """Every public name of ``tvm_hcprune`` imports and is what its module defines."""
    module = __import__(hc._EXPORTS[name], fromlist=[name])
    assert getattr(hc, name) is getattr(module, name)
