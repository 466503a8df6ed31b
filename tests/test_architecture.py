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


def _public_objects():
    from tvm_hcprune import recovery, transform

    out = {name: getattr(hc, name) for name in hc._EXPORTS}
    for pkg in (transform, recovery):
        out.update({f"{pkg.__name__}.{n}": getattr(pkg, n) for n in pkg.__all__})
    return out


@pytest.mark.parametrize("name", sorted(_public_objects()))
def test_public_api_has_numpydoc_with_an_example(name):
    """Every exported function, class and pass documents itself: a summary line and an
    ``Examples`` section with at least one ``>>>`` line."""
    import inspect

    doc = inspect.getdoc(_public_objects()[name]) or ""
    assert doc.strip() and not doc.startswith(name.rsplit(".", 1)[-1] + "."), name
    assert "Examples\n--------" in doc and ">>>" in doc, f"{name} has no Examples section"


@pytest.mark.parametrize("module", [
    "tvm_hcprune.planning.config", "tvm_hcprune.recovery.reconstruct",
    "tvm_hcprune.planning.criteria.registry", "tvm_hcprune.ops.registry",
    "tvm_hcprune.utils.options", "tvm_hcprune.utils.relax", "tvm_hcprune.cli.compile",
])
def test_runnable_examples_run(module):
    """The docstring examples that need no model file run and print what they show."""
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module), extraglobs={"tvm_hcprune": hc})
    assert result.attempted > 0 and result.failed == 0, result


def _defined_pass_names() -> set[str]:
    """Names of the passes tvm_hcprune defines (``module_pass(..., name=...)``: a string, or
    a module-level constant of the same file)."""
    names = set()
    for path in sorted((ROOT / "tvm_hcprune").rglob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        consts = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                  and isinstance(n.value, ast.Constant) and isinstance(n.value.value, str)
                  for t in n.targets if isinstance(t, ast.Name)}
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and getattr(node.func, "attr", "") in (
                    "module_pass", "function_pass", "prim_func_pass")):
                continue
            for kw in node.keywords:
                if kw.arg != "name":
                    continue
                if isinstance(kw.value, ast.Constant):
                    names.add(kw.value.value)
                elif isinstance(kw.value, ast.Name):
                    names.add(consts[kw.value.id])
    return names


def test_every_pass_of_ours_is_checked_for_well_formedness():
    """conftest's well-formedness instrument covers every pass tvm_hcprune defines, or
    NOT_CHECKED says why not; nothing listed there is stale."""
    from conftest import NOT_CHECKED, OUR_RELAX_PASSES

    defined = _defined_pass_names()
    assert "VTAQuantize" in defined and "HCPruneApplyDatabase" in defined
    assert defined - OUR_RELAX_PASSES - set(NOT_CHECKED) == set()
    assert (OUR_RELAX_PASSES | set(NOT_CHECKED)) - defined == set()
    assert not OUR_RELAX_PASSES & set(NOT_CHECKED)


def test_every_registered_preset_pass_is_checked():
    """Each pass of each registered preset step (the factory called for a CPU target, with
    calibration samples for VTAQuantize) is either checked by conftest's instrument or one
    of TVM's own passes."""
    import numpy as np
    from conftest import OUR_RELAX_PASSES

    from tvm_hcprune.hardware.presets import (
        PresetContext,
        get_preset_pass,
        list_preset_passes,
        load_preset,
    )
    from tvm_hcprune.hardware.target import parse_target

    ours = _defined_pass_names()
    target = parse_target({"kind": "llvm", "mcpu": "znver3"})
    samples = np.zeros((2, 1, 3, 8, 8), "float32")
    seen = set()
    for step in list_preset_passes():
        ctx = PresetContext(target, load_preset("llvm-avx2"), prune=0.5, calibration=samples)
        if step == "DLight":
            ctx.target = parse_target({"kind": "cuda", "arch": "sm_80"})
        names = set()
        for p in get_preset_pass(step).factory(ctx):
            names.add(p.info.name)
        seen |= names
        assert {n for n in names if n in ours} <= OUR_RELAX_PASSES, step
    assert {"VTAQuantize", "PruneChannels", "Reconstruct", "FoldBatchNorm",
            "BlockChannelLayout", "ApplyCPURules"} <= seen
