"""onnxruntime CPU reference time for ResNet-50 inference (batch 1, 3x224x224, float32).

A reference measurement for the `resnet50_infer` entry of `wgrad bench`: the figure it
prints goes into ONNXRUNTIME_RESNET50_MS in src/bin/wgrad/bench.rs, which is reported beside
the GPU time as `onnxruntime_ms_measured_separately`. Run by hand (CI runs Rust only).

The model is torchvision's ResNet-50 (v1.5) built directly with onnx.helper (no torch):
stem 7x7/2 conv 64 + BN + ReLU + maxpool 3x3/2 pad 1; bottleneck stages [3, 4, 6, 3] with
widths 64/128/256/512 and expansion 4, stride 2 on the 3x3 conv of each stage's first block
(stages 2-4), shortcut 1x1 conv (stride as the block) + BN where the shape changes; global
average pool, Linear 2048->1000. Convs have no bias (a BatchNormalization follows each), BNs
are in inference mode with seeded random scale/bias/mean and positive variance. Opset 17.
Weights are He-scaled so activations stay finite (no inf/NaN/denormal slow paths).

Setup (once):
  python3 -m venv /tmp/ortvenv
  /tmp/ortvenv/bin/pip install onnx onnxruntime numpy
Run (from the repository root):
  /tmp/ortvenv/bin/python scripts/onnxruntime_resnet50.py [--threads 2] [--runs 30]
      [--seed 0] [--save resnet50.onnx]

Runs onnxruntime's CPUExecutionProvider with intra_op_num_threads=--threads, inter_op 1,
ORT_ENABLE_ALL graph optimizations; 3 warm-up runs, then --runs timed runs. Prints one JSON
line with the median and minimum ms, versions, CPU model, core count and the model's MACs
(sum over Conv and Gemm nodes of output elements x reduction length, about 4.09 G).
Run it on an otherwise idle machine: other load inflates the figures.
"""
import argparse
import json
import os
import platform
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper, shape_inference

OPSET = 17


class Builder:
    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.inits = []
        self.n = 0

    def name(self, prefix):
        self.n += 1
        return f"{prefix}_{self.n}"

    def init(self, prefix, arr):
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def conv(self, x, cin, cout, k, stride):
        fan_in = cin * k * k
        w = self.rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / fan_in)
        out = self.name("conv")
        p = k // 2
        self.nodes.append(
            helper.make_node(
                "Conv",
                [x, self.init("conv_w", w)],
                [out],
                kernel_shape=[k, k],
                strides=[stride, stride],
                pads=[p, p, p, p],
            )
        )
        return out

    def bn(self, x, c, gamma_scale=1.0):
        r = self.rng
        scale = r.uniform(0.5, 1.0, c) * gamma_scale
        bias = r.uniform(-0.1, 0.1, c)
        mean = r.uniform(-0.1, 0.1, c)
        var = r.uniform(0.5, 1.5, c)  # positive
        out = self.name("bn")
        self.nodes.append(
            helper.make_node(
                "BatchNormalization",
                [
                    x,
                    self.init("bn_scale", scale),
                    self.init("bn_bias", bias),
                    self.init("bn_mean", mean),
                    self.init("bn_var", var),
                ],
                [out],
                epsilon=1e-5,
            )
        )
        return out

    def op(self, op_type, inputs, **attrs):
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv_bn(self, x, cin, cout, k, stride, relu=True, gamma_scale=1.0):
        y = self.bn(self.conv(x, cin, cout, k, stride), cout, gamma_scale)
        return self.op("Relu", [y]) if relu else y

    def bottleneck(self, x, cin, width, stride):
        cout = width * 4
        y = self.conv_bn(x, cin, width, 1, 1)
        y = self.conv_bn(y, width, width, 3, stride)  # v1.5: stride on the 3x3
        # Small gamma on the residual branch's last BN keeps activations bounded over 16 blocks.
        y = self.conv_bn(y, width, cout, 1, 1, relu=False, gamma_scale=0.2)
        if stride != 1 or cin != cout:
            sc = self.conv_bn(x, cin, cout, 1, stride, relu=False)
        else:
            sc = x
        return self.op("Relu", [self.op("Add", [y, sc])])


def build_resnet50(seed):
    b = Builder(seed)
    x = b.conv_bn("input", 3, 64, 7, 2)
    x = b.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = 64
    for i, (blocks, width) in enumerate(zip([3, 4, 6, 3], [64, 128, 256, 512])):
        for j in range(blocks):
            stride = 2 if (j == 0 and i > 0) else 1
            x = b.bottleneck(x, cin, width, stride)
            cin = width * 4
    x = b.op("GlobalAveragePool", [x])
    x = b.op("Flatten", [x], axis=1)
    fc_w = b.rng.standard_normal((1000, 2048)) * np.sqrt(1.0 / 2048)
    fc_b = b.rng.uniform(-0.01, 0.01, 1000)
    b.nodes.append(
        helper.make_node(
            "Gemm",
            [x, b.init("fc_w", fc_w), b.init("fc_b", fc_b)],
            ["logits"],
            transB=1,
        )
    )
    graph = helper.make_graph(
        b.nodes,
        "resnet50",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 224, 224])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 1000])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8  # opset 17's IR; keeps older onnxruntime builds happy
    onnx.checker.check_model(model)
    return model


def count_macs(model):
    """Sum over Conv and Gemm nodes of output elements x reduction length."""
    inferred = shape_inference.infer_shapes(model)
    g = inferred.graph
    shapes = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
    for t in g.initializer:
        shapes[t.name] = list(t.dims)
    macs = 0
    for node in g.node:
        if node.op_type == "Conv":
            out = shapes[node.output[0]]
            w = shapes[node.input[1]]  # (cout, cin/group, kh, kw)
            macs += int(np.prod(out)) * int(np.prod(w[1:]))
        elif node.op_type == "Gemm":
            out = shapes[node.output[0]]
            a = shapes[node.input[0]]
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[0] if trans_a else a[1]
            macs += int(np.prod(out)) * k
    return macs


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2, help="intra_op_num_threads (default 2)")
    ap.add_argument("--runs", type=int, default=30, help="timed runs (default 30)")
    ap.add_argument("--seed", type=int, default=0, help="numpy seed for weights and input")
    ap.add_argument("--save", metavar="PATH", help="also write the model to PATH")
    args = ap.parse_args()

    model = build_resnet50(args.seed)
    gmacs = count_macs(model) / 1e9
    assert 4.0 <= gmacs <= 4.2, f"MAC count {gmacs:.4f} G is not ResNet-50's ~4.09 G"
    if args.save:
        onnx.save(model, args.save)

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(
        model.SerializeToString(), opts, providers=["CPUExecutionProvider"]
    )

    x = np.random.default_rng(args.seed + 1).standard_normal((1, 3, 224, 224)).astype(np.float32)
    feeds = {"input": x}
    for _ in range(3):
        (out,) = sess.run(None, feeds)
    assert out.shape == (1, 1000) and np.isfinite(out).all(), "non-finite logits"

    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - t0) * 1e3)

    print(
        json.dumps(
            {
                "op": "onnxruntime_resnet50",
                "threads": args.threads,
                "median_ms": round(float(np.median(times)), 3),
                "min_ms": round(float(np.min(times)), 3),
                "runs": args.runs,
                "gmacs": round(gmacs, 4),
                "onnxruntime": ort.__version__,
                "numpy": np.__version__,
                "cpu": cpu_model(),
                "nproc": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
