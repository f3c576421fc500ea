"""Passes over exported ONNX files, in place: tidying, and storing the weights once.

    tidy(path)                        Constant nodes -> initializers, Identity aliases removed
    compact(path)                     the same graph in fewer bytes (merged constants, short names)
    share_weights(paths, weights)     every large initializer of every graph -> one weights file,
                                      each distinct tensor stored once (ONNX external data)
    lower_blocked_dq(path)            int4 weights: the exporter's edgelm.DequantizeBlocked
                                      placeholders -> opset-21 blocked DequantizeLinear on INT4
    unfuse_dq_gemm(path)              Gemm(x, DQ(w), c) -> MatMul + Add, the form ONNX Runtime
                                      fuses into MatMulNBits / MatMulIntegerToFloat
    narrow_byte_ids(path)             byte_ids int64 -> int32 (TensorRT 8 has no INT64)
"""

from __future__ import annotations

from ..python_support import require_compiler_python

require_compiler_python()  # before torch / onnx: on Python 3.8 one line says what to do

import hashlib
from pathlib import Path

ALIGN = 64  # byte alignment of each tensor in the weights file (SIMD loads, mmap-friendly)
MIN_EXTERNAL_BYTES = 256  # smaller initializers (shapes, axes, scalars) stay inside the graph


def tidy(path: Path) -> None:
    """Constant nodes -> initializers and Identity-of-initializer nodes -> aliases.

    Neither runs as a kernel in ONNX Runtime or TensorRT, so they are noise in node counts.
    """
    import onnx

    model = onnx.load(str(path))
    g = model.graph
    inits = {t.name for t in g.initializer}
    outputs = {o.name for o in g.output}
    alias: dict[str, str] = {}
    keep = []
    for node in g.node:
        node.input[:] = [alias.get(i, i) for i in node.input]
        if node.op_type == "Constant" and len(node.attribute) == 1 and node.attribute[0].name == "value":
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            g.initializer.append(t)
            inits.add(t.name)
        elif node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    onnx.save(model, str(path))


def declare_outputs(path: Path, shapes: dict[str, tuple]) -> None:
    """Write the interface's output shapes ({name: dims}, "batch" symbolic) into the graph where
    the exporter's inference lost them (a chunk reshaped (B*C, n) -> (B, C, m) loses "batch").
    ONNX Runtime and TensorRT compute real shapes themselves; validation compares them."""
    import onnx

    model = onnx.load(str(path))
    for out in model.graph.output:
        dims = out.type.tensor_type.shape.dim
        del dims[:]
        for d in shapes[out.name]:
            dims.add().CopyFrom(onnx.TensorShapeProto.Dimension(dim_param=d) if isinstance(d, str)
                                else onnx.TensorShapeProto.Dimension(dim_value=d))
    onnx.save(model, str(path))


def compact(path: Path) -> None:
    """The same computation in fewer bytes: identical initializers merged into one, every inner
    tensor renamed to a short id, and the exporter's node names and value_info dropped (ONNX
    Runtime and TensorRT infer them). The unrolled prefill graph is mostly names: this takes
    mamba-tiny's from 491 KB to 179 KB. Graph inputs and outputs keep their names."""
    import onnx

    model = onnx.load(str(path))
    g = model.graph
    alias = _merge_initializers(g)
    io = {v.name for v in (*g.input, *g.output)}
    short: dict[str, str] = {}

    def rename(name: str) -> str:
        name = alias.get(name, name)
        if name in io or not name:
            return name
        return short.setdefault(name, f"t{len(short):x}")
    for t in g.initializer:
        t.name = rename(t.name)
    for node in g.node:
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        node.name = ""
    del g.value_info[:]
    onnx.save(model, str(path))


def _merge_initializers(g) -> dict[str, str]:
    """Keep one initializer per distinct (dtype, shape, bytes); returns dropped name -> kept name."""
    first: dict[tuple, str] = {}
    alias: dict[str, str] = {}
    keep = []
    for t in g.initializer:
        key = (t.data_type, tuple(t.dims), _raw(t))
        if key in first:
            alias[t.name] = first[key]
        else:
            first[key] = t.name
            keep.append(t)
    del g.initializer[:]
    g.initializer.extend(keep)
    return alias


def _raw(tensor) -> bytes:
    """An initializer's data as little-endian bytes, whichever field holds it."""
    from onnx import numpy_helper

    if tensor.HasField("raw_data"):
        return tensor.raw_data
    arr = numpy_helper.to_array(tensor)
    return arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()


def _externalize(tensor, location: str, offset: int, length: int) -> None:
    from onnx import TensorProto

    for name in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
        tensor.ClearField(name)
    tensor.data_location = TensorProto.EXTERNAL
    del tensor.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def share_weights(paths: list[Path], weights: Path, min_bytes: int = MIN_EXTERNAL_BYTES) -> dict:
    """Move the graphs' initializers of >= min_bytes into `weights` (beside the graphs), storing
    each distinct tensor once, ALIGN-aligned; the graphs then reference it as external data.

    Content-addressed, so the step and prefill graphs share every weight whatever their
    initializer names. Returns {"bytes", "tensors" (distinct), "references"}.
    """
    import onnx

    blob, offsets, refs = bytearray(), {}, 0
    models = [onnx.load(str(p)) for p in paths]
    for model in models:
        for t in model.graph.initializer:
            raw = _raw(t)
            if len(raw) < min_bytes or t.data_type == onnx.TensorProto.INT64:  # int64: shapes, split
                continue  # sizes, indices: shape inference reads them, so they stay in the graph
            key = hashlib.sha256(raw).digest()
            if key not in offsets:
                blob += bytes(-len(blob) % ALIGN)
                offsets[key] = len(blob)
                blob += raw
            _externalize(t, weights.name, offsets[key], len(raw))
            refs += 1
    weights.write_bytes(bytes(blob))
    for model, path in zip(models, paths):
        onnx.save(model, str(path))
    return {"bytes": len(blob), "tensors": len(offsets), "references": refs}


BLOCKED_OPSET = 21  # INT4 and DequantizeLinear's block_size arrived in opset 21


def pack_int4(values) -> bytes:
    """int4 values in [-8, 7] (row-major) -> ONNX INT4 raw bytes: two per byte, first in the low nibble."""
    import numpy as np

    u = (np.asarray(values, dtype=np.int8).reshape(-1) & 0x0F).astype(np.uint8)
    if u.size % 2:
        u = np.append(u, np.uint8(0))
    return (u[0::2] | (u[1::2] << 4)).tobytes()


def lower_blocked_dq(path: Path) -> bool:
    """Rewrite edgelm.DequantizeBlocked(q int8, scale, block_size) into DequantizeLinear(q INT4,
    scale, axis=0, block_size) at opset 21 (the graph is exported at opset 20, whose ops are
    unchanged in 21 but for the new types). Returns whether the graph had any."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    nodes = [n for n in g.node if n.domain == "edgelm"]
    if not nodes:
        return False
    inits = {t.name: t for t in g.initializer}
    for q in {n.input[0] for n in nodes}:
        t = inits[q]
        vals = numpy_helper.to_array(t)
        t.CopyFrom(helper.make_tensor(q, onnx.TensorProto.INT4, vals.shape, pack_int4(vals), raw=True))
    for n in nodes:
        n.domain, n.op_type = "", "DequantizeLinear"
        n.attribute.append(helper.make_attribute("axis", 0))
    kept = [o for o in model.opset_import if o.domain != "edgelm"]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            o.version = max(o.version, BLOCKED_OPSET)
    onnx.save(model, str(path))
    return True


def unfuse_dq_gemm(path: Path) -> int:
    """Split every Gemm whose weight is a DequantizeLinear output into MatMul + Add (the legacy
    exporter fuses the fused forms' MatMul + Add back into Gemm). ONNX Runtime fuses DQ -> MatMul
    into its integer kernels but leaves DQ -> Gemm with a per-row bias, or with quantized
    activations, as a full dequantization per call: measured 0.6 ms instead of 30 us per byte on
    lstm-tiny (the runtime also disables ONNX Runtime's own MatMulAddFusion for these graphs:
    runtime/backends/ort.py). TensorRT fuses either form. Returns the number of Gemms split."""
    import onnx
    from onnx import helper

    model = onnx.load(str(path))
    g = model.graph
    dq_out = {n.output[0] for n in g.node if n.op_type in ("DequantizeLinear", "DequantizeBlocked")}
    nodes, split = [], 0
    for n in g.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        plain = all(attrs.get(k, d) == d for k, d in (("transA", 0), ("transB", 0), ("alpha", 1.0), ("beta", 1.0)))
        if n.op_type == "Gemm" and n.input[1] in dq_out and plain:
            mid = f"{n.output[0]}_mm"
            nodes.append(helper.make_node("MatMul", n.input[:2], [mid]))
            nodes.append(helper.make_node("Add", [mid, n.input[2]], list(n.output)) if len(n.input) > 2
                         else helper.make_node("Identity", [mid], list(n.output)))
            split += 1
        else:
            nodes.append(n)
    if split:
        del g.node[:]
        g.node.extend(nodes)
        onnx.save(model, str(path))
    return split


# Ops that move byte ids without computing on them (the ids are their first input), so int32 ids
# stay int32 through them; a Gather's second input (indices) takes int32 or int64 alike.
_ID_MOVES = ("Gather", "Reshape", "Slice", "Split", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Transpose")


def narrow_byte_ids(path: Path) -> None:
    """Make the graph's byte_ids input int32 (TensorRT 8.x has no INT64: its parser turns an int64
    input into an INT32 binding or fails). Valid where the ids only move (_ID_MOVES) and end as
    Gather indices; any other use raises, naming the node, rather than producing a mistyped graph."""
    import onnx

    model = onnx.load(str(path))
    g = model.graph
    ids = {"byte_ids"}
    for node in g.node:  # topological order: a moved tensor is marked before its consumers
        used = [i for i, name in enumerate(node.input) if name in ids]
        if not used:
            continue
        if node.op_type == "Gather" and used == [1]:
            continue  # indices: int32 is as good as int64
        if node.op_type not in _ID_MOVES or used != [0]:
            raise ValueError(f"byte_ids reach {node.op_type} node {node.name or '?'} (input {used}); only "
                             f"{', '.join(_ID_MOVES)} and Gather indices take int32 ids unchanged")
        ids.update(node.output)
    for v in [*g.input, *g.value_info, *g.output]:
        if v.name in ids:
            v.type.tensor_type.elem_type = onnx.TensorProto.INT32
    onnx.save(model, str(path))
