"""``hcprune prune``: writes a verified pruned ONNX model and the plan; bad input -> exit 2."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from tvm_hcprune.cli import main
from tvm_hcprune.cli.compile import parse_input_shapes
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.testing import onnx_models


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "small.onnx"
    onnx.save(onnx_models.small_resnet(width=16, image=16, num_classes=10), str(path))
    return path


def test_prune_writes_pruned_onnx_and_plan(model_file, tmp_path, capsys):
    out, plan = tmp_path / "pruned.onnx", tmp_path / "plan.json"
    rc = main(["prune", str(model_file), "--prune-ratio", "0.5", "--align", "1", "-o",
               str(out), "--plan-out", str(plan)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "verified: onnxruntime on the pruned ONNX == pruned TVM module" in text
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned)
    dense = onnx.load(str(model_file))
    n = sum(int(np.prod(i.dims)) for i in pruned.graph.initializer)
    assert n < 0.6 * sum(int(np.prod(i.dims)) for i in dense.graph.initializer)
    x = np.random.default_rng(0).standard_normal((1, 3, 16, 16)).astype("float32")
    y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    assert y.shape == (1, 10) and np.isfinite(y).all()
    d = json.loads(plan.read_text())
    assert d["groups"] and all(len(g["kept"]) == g["size"] // 2 for g in d["groups"])


def test_prune_folds_run_time_shapes_like_load_onnx(tmp_path, capsys):
    """A head that computes anchor grids from Shape/Gather/Range chains: ``hcprune prune``
    imports it the way ``load_onnx`` does (folded by onnxruntime), so the pruned ONNX is
    written and verified instead of failing on a run-time shape."""
    src, out = tmp_path / "anchors.onnx", tmp_path / "pruned.onnx"
    onnx.save(onnx_models.anchor_grid_head(grid=True), str(src))
    rc = main(["prune", str(src), "--prune-ratio", "0.5", "--align", "1", "-o", str(out)])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "verified: onnxruntime on the pruned ONNX == pruned TVM module" in text
    onnx.checker.check_model(onnx.load(str(out)))


@pytest.mark.slow
def test_prune_with_calibration_and_reconstruction(model_file, tmp_path, capsys):
    samples = tmp_path / "x.npy"
    np.save(samples, np.random.default_rng(2).standard_normal((8, 1, 3, 16, 16))
            .astype("float32"))
    out = tmp_path / "rec.onnx"
    rc = main(["prune", str(model_file), "--prune-ratio", "0.5", "--align", "1", "-o",
               str(out), "--calibration", str(samples), "--reconstruct",
               "--criterion", "activation"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "reconstruction:" in text and "verified" in text
    onnx.checker.check_model(onnx.load(str(out)))


@pytest.mark.parametrize("args, message", [
    (["--prune-ratio", "1.5"], "outside [0, 1)"),
    (["--prune-ratio", "0.5", "--reconstruct"], "needs calibration data"),
    (["--prune-ratio", "0.5", "--input-shapes", "input:[1,3,x]"], "cannot parse"),
    (["--prune-ratio", "0.5", "--input-shapes", "nope:[1,3,16,16]"], "not inputs"),
    (["--prune-ratio", "0.5", "--criterion", "bogus"], "unknown criterion"),
])
def test_bad_input_exits_2_and_writes_nothing(model_file, tmp_path, capsys, args, message):
    out = tmp_path / "never.onnx"
    rc = main(["prune", str(model_file), "-o", str(out), *args])
    assert rc == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_missing_and_non_onnx_files_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00garbage")
    for path, msg in ((tmp_path / "missing.onnx", "does not exist"), (bad, "not a readable")):
        rc = main(["prune", str(path), "--prune-ratio", "0.5", "-o", str(tmp_path / "o.onnx")])
        assert rc == 2 and msg in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()


def test_parse_shapes_semicolons():
    assert parse_input_shapes("x:[1,3,48,192];y:[1,4]") == {"x": [1, 3, 48, 192], "y": [1, 4]}
    assert parse_input_shapes(None) is None
    with pytest.raises(HCPruneError):
        parse_input_shapes("x:[0,3]")
