"""``hcprune compile`` / ``tune`` / ``run`` (tvmc-style): results against onnxruntime and the
Python API, and bad input (clear error, exit status 2, nothing written)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import tvm_hcprune as hc
from tvm_hcprune.cli import main
from tvm_hcprune.cli.compile import parse_input_shapes
from tvm_hcprune.errors import HCPruneError
from tvm_hcprune.testing.onnx_models import GraphBuilder

TARGET = "llvm -mcpu=znver3 -num-cores=2"
IMAGE = 10


def tiny_cnn(width: int = 16):
    g = GraphBuilder(0)
    x = g.conv_bn("input", 3, width, 3)
    y = g.conv_bn(x, width, width, 3, act=None)
    x = g.op("Relu", [g.op("Add", [y, x])])
    out = g.head(x, width, 4)
    return g.model(out, [1, 3, IMAGE, IMAGE], [1, 4], "tiny_cnn")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    model = tiny_cnn()
    onnx.save(model, d / "m.onnx")
    x = np.random.default_rng(0).standard_normal((1, 3, IMAGE, IMAGE)).astype("float32")
    np.savez(d / "in.npz", input=x)
    return d, model, x


def _ort(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def test_compile_and_run_match_onnxruntime(files, capsys):
    d, model, x = files
    assert main(["compile", str(d / "m.onnx"), "--target", TARGET, "-o", str(d / "m.so"),
                 "--input-shapes", f"input:[1,3,{IMAGE},{IMAGE}]"]) == 0
    assert main(["run", str(d / "m.so"), "--inputs", str(d / "in.npz"), "--outputs",
                 str(d / "out.npz"), "--print-time", "--repeat", "3", "--print-top", "2"]) == 0
    out = capsys.readouterr().out
    assert "Execution time summary" in out and "output_0: shape [1, 4]" in out
    got = np.load(d / "out.npz")["output_0"]
    np.testing.assert_allclose(got, _ort(model, x), rtol=1e-4, atol=1e-4)


def test_compile_pruned_matches_python_api(files):
    """--prune-ratio gives the same model as hc.prune with the same options."""
    import tvm
    from tvm import relax

    d, _, x = files
    assert main(["compile", str(d / "m.onnx"), "--target", TARGET, "-o", str(d / "p.so"),
                 "--prune-ratio", "0.5"]) == 0
    assert main(["run", str(d / "p.so"), "--inputs", str(d / "in.npz"), "--outputs",
                 str(d / "p.npz")]) == 0
    mod = hc.load_onnx(str(d / "m.onnx"), log=lambda *a: None)
    pruned, _ = hc.prune(mod, ratio=0.5, target=hc.parse_target(TARGET))
    ref = relax.VirtualMachine(hc.build(pruned, TARGET), tvm.cpu())["main"](
        tvm.runtime.tensor(x)).numpy()
    np.testing.assert_allclose(np.load(d / "p.npz")["output_0"], ref, rtol=1e-5, atol=1e-5)


def test_compile_with_preset(files):
    d, _, _ = files
    assert main(["compile", str(d / "m.onnx"), "--preset", "llvm-avx2", "-o",
                 str(d / "preset.so")]) == 0
    assert (d / "preset.so").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.tuning
def test_tune_then_compile_with_records(files, capsys):
    """`hcprune tune` writes a database that `compile --tuning-records` applies; outputs stay
    equal to the untuned pruned build. Without seeds and the model check every task keeps
    the search's best record, so the file has one record per task to apply."""
    d, _, _ = files
    db = d / "db.json"
    assert main(["tune", str(d / "m.onnx"), "--target", TARGET, "--trials", "4",
                 "--trials-per-task", "1", "--prune-ratio", "0.5", "-o", str(db),
                 "--no-seed", "--no-model-check"]) == 0
    data = json.loads(db.read_text())
    assert data["records"] and data["meta"]["prune_ratio"] == 0.5
    assert len(data["records"]) == len(data["workloads"])
    assert "model_check" not in data["meta"]
    assert main(["compile", str(d / "m.onnx"), "--target", TARGET, "-o", str(d / "t.so"),
                 "--prune-ratio", "0.5", "--tuning-records", str(db)]) == 0
    assert main(["run", str(d / "t.so"), "--inputs", str(d / "in.npz"), "--outputs",
                 str(d / "t.npz")]) == 0
    if not (d / "p.npz").exists():
        assert main(["compile", str(d / "m.onnx"), "--target", TARGET, "-o",
                     str(d / "p.so"), "--prune-ratio", "0.5"]) == 0
        assert main(["run", str(d / "p.so"), "--inputs", str(d / "in.npz"), "--outputs",
                     str(d / "p.npz")]) == 0
    np.testing.assert_allclose(np.load(d / "t.npz")["output_0"],
                               np.load(d / "p.npz")["output_0"], rtol=1e-5, atol=1e-5)


def _fails(argv, capsys, match):
    status = main(argv)
    err = capsys.readouterr().err
    assert status == 2, err
    assert match in err, err


def test_bad_inputs_exit_2_and_write_nothing(files, tmp_path, capsys):
    d, _, _ = files
    model = str(d / "m.onnx")
    out = tmp_path / "out.so"
    out.write_bytes(b"previous")  # an existing output is left untouched on failure
    _fails(["compile", model, "--target", "no-such-kind", "-o", str(out)], capsys,
           "unknown target")
    (tmp_path / "bad.json").write_text("{broken")
    _fails(["compile", model, "--target", TARGET, "-o", str(out), "--tuning-records",
            str(tmp_path / "bad.json")], capsys, "not a valid tvm_hcprune schedule database")
    _fails(["compile", str(tmp_path / "missing.onnx"), "--target", TARGET, "-o", str(out)],
           capsys, "does not exist")
    _fails(["compile", model, "--target", TARGET, "-o", str(out), "--prune-ratio", "1.5"],
           capsys, "--prune-ratio")
    _fails(["compile", model, "--target", TARGET, "-o", str(out), "--input-shapes", "input"],
           capsys, "--input-shapes")
    assert out.read_bytes() == b"previous"
    db = tmp_path / "db.json"
    _fails(["tune", model, "--target", TARGET, "--trials", "0", "-o", str(db)], capsys,
           "--trials must be a positive integer")
    _fails(["tune", model, "--target", TARGET, "--trials", "4", "-o", str(db),
            "--rpc-tracker", "127.0.0.1:1"], capsys, "go together")
    assert not db.exists()
    lib = tmp_path / "x.so"
    lib.write_bytes(b"not a library")
    (tmp_path / "in.npz").write_bytes(b"not an npz")
    _fails(["run", str(lib), "--inputs", str(tmp_path / "in.npz")], capsys,
           "cannot read inputs file")
    _fails(["run", str(lib), "--inputs", str(tmp_path / "none.npz")], capsys, "does not exist")
    _fails(["run", str(lib), "--inputs", str(d / "in.npz")], capsys, "cannot load")


def test_database_for_another_target_is_refused(files, tmp_path, capsys):
    """A database tuned for CUDA (built here from a record-free file of that target) is
    refused for llvm before anything is compiled."""
    d, _, _ = files
    from tvm_hcprune.backend import database as dbm

    foreign = tmp_path / "cuda.json"
    dbm.new_database(hc.parse_target("cuda -arch=sm_80")).save(foreign)
    out = tmp_path / "o.so"
    _fails(["compile", str(d / "m.onnx"), "--target", TARGET, "-o", str(out),
            "--tuning-records", str(foreign)], capsys, "tuned for target 'cuda -arch=sm_80'")
    assert not out.exists()


@pytest.mark.parametrize(
    "text, expected",
    [
        ("x:[1,3,224,224]", {"x": [1, 3, 224, 224]}),
        ("a:[1,2] b:[3]", {"a": [1, 2], "b": [3]}),
        ("a:[1,2],b:[3]", {"a": [1, 2], "b": [3]}),
        (None, None),
    ],
)
def test_parse_input_shapes(text, expected):
    assert parse_input_shapes(text) == expected


@pytest.mark.parametrize("text", ["x", "x:[a,b]", "x:[0,3]", "x:[1,2"])
def test_parse_input_shapes_rejects(text):
    with pytest.raises(HCPruneError):
        parse_input_shapes(text)
