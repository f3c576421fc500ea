"""Will TensorRT's ONNX parser take this graph on this target? Checked without a GPU.

Every node is looked up in the parser's operator support matrix (data/tensorrt_onnx_ops.toml,
transcribed from onnx-tensorrt docs/operators.md), with the float types each op accepts; the
graph's precisions are checked against the device profile (fp16/bf16 support, INT8 Q/DQ, FP8
only on sm >= 8.9, INT4 only with TensorRT 10+), its opset against the parser versions the target
ships, its I/O types against what TensorRT 8 binds (no INT64) on TensorRT 8 targets, and its Q/DQ placement against TensorRT's explicit-quantization rules (trt_qdq.py).
"""

from __future__ import annotations

from ..python_support import require_compiler_python

require_compiler_python()  # before torch / onnx: on Python 3.8 one line says what to do

import functools
from importlib import resources

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the compiler side's minimum (tomli is a core dependency there)
    import tomli as tomllib  # type: ignore[no-redef]

from .. import precision as precisions
from .trt_qdq import placement_problems

TYPE_NAMES = {1: "FP32", 10: "FP16", 16: "BF16", 3: "INT8", 2: "UINT8", 6: "INT32", 7: "INT64", 9: "BOOL",
              17: "FP8", 18: "FP8", 19: "FP8", 20: "FP8", 22: "INT4", 21: "INT4", 23: "FP4"}


@functools.lru_cache(maxsize=1)
def matrix() -> dict:
    text = resources.files("edgelm.export").joinpath("data/tensorrt_onnx_ops.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    data["supported"] = {op: set(types.split()) for op, types in data["supported"].items()}
    data["unsupported"] = set(data["unsupported"]["ops"])
    return data


def tensor_types(onnx_model) -> dict[str, str]:
    """Tensor name -> type name (FP32, FP16, INT8, ...) for every typed tensor of the graph."""
    import onnx

    try:
        model = onnx.shape_inference.infer_shapes(onnx_model)
    except Exception:  # noqa: BLE001 - untyped tensors are then simply not type-checked
        model = onnx_model
    g = model.graph
    types = {t.name: TYPE_NAMES.get(t.data_type, str(t.data_type)) for t in g.initializer}
    for v in list(g.input) + list(g.output) + list(g.value_info):
        types[v.name] = TYPE_NAMES.get(v.type.tensor_type.elem_type, str(v.type.tensor_type.elem_type))
    return types


def graph_opset(onnx_model) -> int:
    return max((o.version for o in onnx_model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def max_opset(trt_version: str) -> int | None:
    table = matrix()["max_opset"]
    major_minor = ".".join(trt_version.split(".")[:2])
    return table.get(major_minor, table.get(trt_version.split(".")[0]))


def _op_problems(onnx_model, types: dict[str, str], trt_major: int) -> list[str]:
    m, problems, seen = matrix(), [], set()
    for node in onnx_model.graph.node:
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        if op in seen:
            continue
        if op in m["unsupported"] or op not in m["supported"]:
            why = "marked unsupported" if op in m["unsupported"] else "not in"
            problems.append(f"op {op} (node {node.name or '?'}) is {why} the TensorRT ONNX parser's "
                            "operator matrix")
        elif m["added"].get(op, 0) > trt_major:
            problems.append(f"op {op} needs TensorRT {m['added'][op]}+, the target ships TensorRT {trt_major}")
        else:
            floats = {types.get(i) for i in node.input if types.get(i) in ("FP16", "BF16")}
            for t in sorted(floats - m["supported"][op]):
                problems.append(f"op {op} (node {node.name or '?'}) has {t} inputs; TensorRT supports "
                                f"{', '.join(sorted(m['supported'][op]))} for it")
        seen.add(op)
    return problems


# What TensorRT 8.x binds: no INT64 (9.x/10 added it), no DOUBLE. The parser casts INT64 weights
# down (with a warning) and computes shapes in INT32, but an INT64 graph input or output becomes
# an INT32 binding or fails (../shared/notes/tensorrt-and-jetson.md).
TRT8_IO_TYPES = ("FP32", "FP16", "INT8", "INT32", "BOOL")


def _trt8_dtype_problems(onnx_model, types: dict[str, str], profile) -> list[str]:
    """Graph inputs/outputs of a type TensorRT 8 cannot bind, on TensorRT 8 targets."""
    if not profile.tensorrt_8:
        return []
    return [f"graph {kind} {v.name} is {types.get(v.name, '?')}; TensorRT 8 binds only "
            f"{', '.join(TRT8_IO_TYPES)} (export for {profile.name} writes int32 byte ids)"
            for kind, values in (("input", onnx_model.graph.input), ("output", onnx_model.graph.output))
            for v in values if types.get(v.name) not in TRT8_IO_TYPES]


def _precision_problems(onnx_model, types: dict[str, str], profile) -> list[str]:
    used = precisions.used_by(types.values())
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in onnx_model.graph.node) and \
            not used & {"int8", "fp8", "int4", "fp4"}:
        used.add("int8")
    problems, versions = [], profile.tensorrt_versions
    for prec in sorted(used):
        if not profile.supports(prec):
            problems.append(f"the graph uses {prec} but {profile.name} supports only "
                            f"{', '.join(profile.precisions)}")
        need = precisions.get(prec).min_tensorrt
        old = [v for v in versions if need is not None and int(v.split(".")[0]) < need]
        if old:
            problems.append(f"the graph uses {prec}, which needs TensorRT {need}+, but {profile.name} "
                            f"ships TensorRT {old[0]}")
    cc = profile.compute_capability
    if "fp8" in used and cc is not None and tuple(int(x) for x in cc.split(".")) < (8, 9):
        problems.append(f"the graph uses fp8 but {profile.name} is sm {cc}; FP8 needs sm 8.9+")
    return problems


def qdq_problems(onnx_model, base_dir: str | None = None, types: dict | None = None) -> list[str]:
    """TensorRT's explicit-quantization (Q/DQ placement) rules, one line per problem: see trt_qdq.py.
    base_dir: the graph's external-data directory (values checked too); types: tensor_types(), if known."""
    types = tensor_types(onnx_model) if types is None else types
    return placement_problems(onnx_model, graph_opset(onnx_model), types, matrix()["supported"], base_dir)


def check_tensorrt_compat(onnx_model, profile, base_dir: str | None = None) -> list[str]:
    """Problems that would stop TensorRT building this graph for `profile` (empty: none found).

    Precision checks apply to every target; op, opset and Q/DQ placement checks to targets that
    ship TensorRT. base_dir: the directory of the graph's external data, so that the Q/DQ checks
    also read the values of initializers stored there (zero points, weight ranges, scales).
    """
    types = tensor_types(onnx_model)
    problems = _precision_problems(onnx_model, types, profile)
    if not profile.tensorrt_versions:
        return problems
    opset = graph_opset(onnx_model)
    for version in profile.tensorrt_versions:
        limit = max_opset(version)
        if limit is not None and opset > limit:
            problems.append(f"opset {opset} is newer than TensorRT {version}'s ONNX parser reads (<= {limit})")
    trt_major = min(int(v.split(".")[0]) for v in profile.tensorrt_versions)
    problems += _op_problems(onnx_model, types, trt_major) + _trt8_dtype_problems(onnx_model, types, profile)
    return problems + qdq_problems(onnx_model, base_dir, types)


def target_opset(profile, preferred: int) -> int:
    """The highest opset <= preferred that every TensorRT version of the target parses."""
    limits = [max_opset(v) for v in profile.tensorrt_versions]
    return min([preferred] + [x for x in limits if x is not None])
