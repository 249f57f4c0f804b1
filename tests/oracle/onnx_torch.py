#!/usr/bin/python3
"""A small evaluator of ONNX graphs on PyTorch ops: an independent check of `isl export --onnx`.

Implements only the ops the exporter uses (opset 13 semantics), each from the ONNX
operator documentation, with the weights read by onnx.numpy_helper. Test oracle only.

  run(model_path_or_proto, {"input": array[N, C, H, W]}) -> {output name: np.ndarray}
"""
import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper


def _attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _dec(v):
    return v.decode() if isinstance(v, bytes) else v


def _slice(x, starts, ends, axes, steps=None):
    idx = [slice(None)] * x.dim()
    for i, ax in enumerate(axes.tolist()):
        idx[ax] = slice(int(starts[i]), int(ends[i]), 1 if steps is None else int(steps[i]))
    return x[tuple(idx)]


def _pad(x, pads, mode):
    r = x.dim()
    pads = [int(p) for p in pads]
    begin, end = pads[:r], pads[r:]
    assert min(pads) >= 0
    if mode == "constant":
        # F.pad lists the last axis first.
        spec = sum(([begin[a], end[a]] for a in reversed(range(r))), [])
        return F.pad(x, spec)
    assert mode == "edge" and begin[:2] == [0, 0] and end[:2] == [0, 0]
    return F.pad(x, (begin[3], end[3], begin[2], end[2]), mode="replicate")


def _resize(x, scales, a):
    assert _dec(a.get("mode")) == "nearest"
    assert _dec(a.get("coordinate_transformation_mode")) == "asymmetric"
    assert _dec(a.get("nearest_mode")) == "floor"
    s = [int(v) for v in scales.tolist()]
    assert s[:2] == [1, 1] and float(scales[2]) == s[2] and float(scales[3]) == s[3]
    # asymmetric + floor: output pixel i reads input pixel floor(i / s).
    return x.repeat_interleave(s[2], dim=2).repeat_interleave(s[3], dim=3)


def _conv_args(a, transposed=False):
    st = list(a.get("strides", [1, 1]))
    pads = list(a.get("pads", [0, 0, 0, 0]))
    assert pads == [0, 0, 0, 0] and a.get("group", 1) == 1 and list(a.get("dilations", [1, 1])) == [1, 1]
    return st


def run(model, feeds, dtype=torch.float64):
    m = model if isinstance(model, onnx.ModelProto) else onnx.load(model)
    env = {}
    for t in m.graph.initializer:
        a = numpy_helper.to_array(t)
        env[t.name] = torch.from_numpy(a.astype(np.float64)).to(dtype) if a.dtype == np.float32 \
            else torch.from_numpy(a.copy())
    for k, v in feeds.items():
        env[k] = torch.as_tensor(np.asarray(v, np.float64)).to(dtype)
    outputs = {o.name for o in m.graph.output}
    # Free intermediates after their last use to bound memory.
    last = {}
    for i, n in enumerate(m.graph.node):
        for x in n.input:
            last[x] = i
    with torch.no_grad():
        for i, n in enumerate(m.graph.node):
            a = _attrs(n)
            x = [env[k] if k else None for k in n.input]
            op = n.op_type
            if op == "Conv":
                y = F.conv2d(x[0], x[1], x[2] if len(x) > 2 else None, stride=_conv_args(a))
            elif op == "ConvTranspose":
                y = F.conv_transpose2d(x[0], x[1], x[2] if len(x) > 2 else None, stride=_conv_args(a))
            elif op == "MaxPool":
                y = F.max_pool2d(x[0], list(a["kernel_shape"]), list(a["strides"]))
            elif op == "AveragePool":
                y = F.avg_pool2d(x[0], list(a["kernel_shape"]), list(a["strides"]))
            elif op == "Relu":
                y = torch.relu(x[0])
            elif op == "Tanh":
                y = torch.tanh(x[0])
            elif op == "Add":
                y = x[0] + x[1]
            elif op == "Mul":
                y = x[0] * x[1]
            elif op == "Concat":
                y = torch.cat(x, dim=a["axis"])
            elif op == "Slice":
                y = _slice(x[0], *x[1:])
            elif op == "Pad":
                y = _pad(x[0], x[1], _dec(a.get("mode", "constant")))
            elif op == "Resize":
                y = _resize(x[0], x[2], a)
            else:
                raise NotImplementedError("op %s" % op)
            env[n.output[0]] = y
            for k in n.input:
                if k and last.get(k) == i and k not in outputs and k not in feeds:
                    env.pop(k, None)
    return {o: env[o].numpy() for o in outputs}
