"""PyTorch entry point: hc.load_torch (torch.export + TVM's from_exported_program) gives a
module that agrees with torch, prunes with the mask oracle holding, builds with hc.build,
reconstructs, and compiles from a saved .pt2 with the CLI. Skipped without torch (the
optional .[torch] extra; `make test` installs it)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="torch is the optional .[torch] extra")

import tvm_hcprune as hc  # noqa: E402
from tvm_hcprune.cli import main  # noqa: E402
from tvm_hcprune.errors import HCPruneError  # noqa: E402
from tvm_hcprune.recovery.runner import run_relax  # noqa: E402
from tvm_hcprune.testing import masked_reference, torch_models  # noqa: E402

MODELS = {
    "resnet18": (lambda: torch_models.resnet18(num_classes=10, seed=0), (1, 3, 32, 32)),
    "mobilenet_v2": (lambda: torch_models.mobilenet_v2(num_classes=10, seed=0),
                     (1, 3, 32, 32)),
    "transformer": (lambda: torch_models.transformer_encoder(seed=0), (1, 16, 32)),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def imported(request):
    make, shape = MODELS[request.param]
    model = make()
    x = torch.from_numpy(np.random.default_rng(0).standard_normal(shape).astype("float32"))
    mod = hc.load_torch(model, (x,))
    with torch.no_grad():
        ref = model(x).numpy()
    return request.param, model, mod, x.numpy(), ref


def test_dense_import_agrees_with_torch(imported):
    """tvm_hcprune's build of the import equals torch (rtol 1e-4)."""
    _, _, mod, x, ref = imported
    out = run_relax(mod, [x], build=hc.build)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_pruned_equals_mask_oracle(imported):
    """Pruning the torch import removes channels (heads and FFN for the transformer) and the
    pruned module equals the original with those channels zeroed at their consumers."""
    name, _, mod, x, _ = imported
    pruned, report = hc.prune(mod, ratio=0.5, align=4)
    assert report.macs_after < 0.8 * report.macs_before, report.summary()
    ref = run_relax(masked_reference(mod, report.plan), [x])
    out = run_relax(pruned, [x], build=hc.build)
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_reconstruction_on_a_torch_import():
    """Calibration and least-squares reconstruction work on a torch import as on ONNX ones
    (the transformer: the CNN imports take the same code path, a minute slower)."""
    make, shape = MODELS["transformer"]
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    mod = hc.load_torch(make(), (torch.from_numpy(x),))
    rng = np.random.default_rng(1)
    samples = rng.standard_normal((16, *x.shape)).astype("float32")
    graph = hc.analyze(mod)
    cal = hc.calibrate(graph.mod, samples, max_rows=512, progress=False)
    pruned, report = hc.prune(mod, ratio=0.5, align=4, graph=graph, calibration=cal,
                              reconstruct=True)
    assert any(f.status == "reconstructed" for f in report.reconstruction.layers)
    out = run_relax(pruned, [x], build=hc.build)
    assert np.isfinite(out).all()


def test_cli_compiles_a_saved_program(tmp_path, capsys):
    """hcprune compile model.pt2 (torch.export.save) writes a library that runs like torch."""
    model = torch_models.resnet18(num_classes=10, seed=0)
    x = torch.randn(1, 3, 32, 32)
    ep = torch.export.export(model, (x,))
    path = tmp_path / "m.pt2"
    torch.export.save(ep, str(path))
    np.savez(tmp_path / "in.npz", x=x.numpy())
    lib = tmp_path / "m.so"
    assert main(["compile", str(path), "--target", "llvm", "-o", str(lib)]) == 0
    assert main(["run", str(lib), "--inputs", str(tmp_path / "in.npz"), "--outputs",
                 str(tmp_path / "out.npz")]) == 0
    with torch.no_grad():
        ref = model(x).numpy()
    got = np.load(tmp_path / "out.npz")["output_0"]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    assert main(["compile", str(path), "--input-shapes", "x:[1,3,8,8]", "-o",
                 str(tmp_path / "bad.so")]) == 2
    assert "does not apply to a .pt2" in capsys.readouterr().err
    assert not (tmp_path / "bad.so").exists()


def test_bad_torch_input_is_a_clear_error(tmp_path):
    """A non-module, a missing example input or a file that is no program: HCPruneError."""
    with pytest.raises(HCPruneError, match="expects a torch.nn.Module"):
        hc.load_torch(object())
    with pytest.raises(HCPruneError, match="needs example_args"):
        hc.load_torch(torch_models.resnet18(num_classes=10))
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a program")
    with pytest.raises(HCPruneError, match="not a saved torch.export program"):
        hc.load_torch(junk)
