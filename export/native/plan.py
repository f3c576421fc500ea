"""An exported ONNX graph -> a C buffer plan: every tensor's shape, dtype and home.

The plan reads what the graph computes, not what it declares: the graph runs once in ONNX Runtime
(graph optimizations off) at two batch sizes with every node output exposed, and each tensor's
shape at both sizes says which dimension scales with the batch. Every tensor the step and prefill
graphs compute is batch-leading (dim 0 = k * batch, the rest constant), so a tensor's scratch
offset is `batch * offset_per_stream`: one plan serves any batch.

Homes:
  weight  an initializer in the bundle's weights.bin (its ONNX external-data offset: the C code
          reads the bundle's one weights file, no copy)
  const   a small initializer stored inside the graph (scalars, split sizes): a C array
  input / state_in / state_out / logits   the caller's buffers
  scratch a slice of the caller's scratch buffer, reused once its last reader has run
  alias   a view of another tensor (Reshape, Unsqueeze, Squeeze, Flatten, size-1 Transpose)
Nodes that only compute shapes (Shape -> Gather -> Concat -> a Reshape's shape) are dropped:
the probe already knows every shape they would produce. A stored int8 weight's DequantizeLinear
is fused into its matmul, and runs of elementwise ops into one loop (a value read only inside
the run gets no scratch at all).
"""

from __future__ import annotations

from ...python_support import require_compiler_python

require_compiler_python()  # before numpy / onnx: on Python 3.8 one line says what to do

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import EdgelmError
from ...runtime.onnx_data import add_weights
from .cexpr import data_inputs, fusable

ALIGN = 64  # bytes: every scratch tensor starts on a cache line (per stream, so for every batch)
ALIAS_OPS = {"Reshape", "Unsqueeze", "Squeeze", "Flatten", "Identity"}
PARAM_INPUTS = {  # inputs read at generation time (constants), never as data
    "Reshape": (1,), "Split": (1,), "Slice": (1, 2, 3, 4), "Unsqueeze": (1,), "Squeeze": (1,),
    "ReduceMean": (1,), "ReduceSum": (1,), "Clip": (1, 2), "Expand": (1,)}
C_TYPES = {"float32": "float", "int8": "int8_t", "uint8": "uint8_t", "int64": "int64_t", "int32": "int32_t"}


@dataclass
class Tensor:
    name: str
    dtype: str  # numpy name
    shape: tuple[int, ...]  # batched: shape[0] is the multiple of the batch
    batched: bool
    home: str = "scratch"  # see the module docstring
    offset: int = 0  # weight: byte offset in weights.bin; scratch: bytes per stream
    value: np.ndarray | None = None  # const (and weights, for generation-time checks)
    alias_of: str | None = None
    index: int = 0  # state_in / state_out: position in the manifest's state order

    @property
    def numel(self) -> int:  # per stream when batched
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.numel * np.dtype(self.dtype).itemsize

    @property
    def ctype(self) -> str:
        if self.dtype not in C_TYPES:
            raise EdgelmError(f"the native C target has no {self.dtype} tensors ({self.name}); "
                              "export fp32 or int8 for it")
        return C_TYPES[self.dtype]


@dataclass
class Plan:
    graph: str  # "step" | "prefill"
    nodes: list  # onnx NodeProto, data nodes only, in graph order
    tensors: dict[str, Tensor]
    state_in: list[str]
    state_out: list[str]
    scratch_per_stream: int = 0
    copies: list[tuple[str, str]] = field(default_factory=list)  # (scratch tensor, graph output) at the end
    fused: dict[str, dict] = field(default_factory=dict)  # matmul output -> {"w": DQ node, "x": DQ node}
    groups: dict[str, list] = field(default_factory=dict)  # ElementwiseGroup node name -> its member nodes

    def root(self, name: str) -> Tensor:
        t = self.tensors[name]
        while t.alias_of is not None:
            t = self.tensors[t.alias_of]
        return t


def probe(model, weights: Path, batches=(2, 3)) -> dict[int, dict[str, np.ndarray]]:
    """Every node output of `model` (an onnx ModelProto, external data in `weights`) at each batch."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(onnx.ValueInfoProto(name=o) for n in m.graph.node for o in n.output if o not in have)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    graph = m.SerializeToString()
    kept = add_weights(ort, opts, graph, {weights.name: np.fromfile(weights, np.uint8)}, weights.name)  # noqa: F841 - outlives sess
    sess = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    out = {}
    for b in batches:
        feeds = _feeds(sess.get_inputs(), b)
        out[b] = dict(zip(names, sess.run(names, feeds)))
        out[b].update(feeds)
    return out


def _feeds(inputs, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    feeds = {}
    for i in inputs:
        shape = [batch if isinstance(d, str) or d is None else d for d in i.shape]
        ids = np.int32 if i.type == "tensor(int32)" else np.int64  # int32 on TensorRT 8 targets
        feeds[i.name] = (rng.integers(0, 256, shape).astype(ids) if i.name == "byte_ids"
                         else rng.standard_normal(shape).astype(np.float32))
    return feeds


def _shape(name: str, a: np.ndarray, b: np.ndarray, batches) -> tuple[tuple[int, ...], bool]:
    """(shape, batched) from one tensor at two batch sizes."""
    (b1, b2), s1, s2 = batches, a.shape, b.shape
    if s1 == s2:
        return tuple(s1), False
    k = s2[0] // b2 if s2 and s2[0] % b2 == 0 else 0
    if len(s1) != len(s2) or s1[1:] != s2[1:] or not k or s1[0] != k * b1:
        raise EdgelmError(f"tensor {name} is {s1} at batch {b1} and {s2} at batch {b2}: the native C target "
                          "needs batch-leading tensors")
    return (k, *s1[1:]), True


def data_nodes(graph) -> list:
    """The nodes whose outputs reach a graph output through data inputs (not shape inputs)."""
    producer = {o: n for n in graph.node for o in n.output}
    needed, stack = set(), [o.name for o in graph.output]
    while stack:
        name = stack.pop()
        node = producer.get(name)
        if node is None or id(node) in needed:
            continue
        needed.add(id(node))
        params = PARAM_INPUTS.get(node.op_type, ())
        stack += [i for j, i in enumerate(node.input) if i and j not in params]
    return [n for n in graph.node if id(n) in needed]


def build_plan(model, weights: Path, graph: str, state: list[tuple[str, str]]) -> Plan:
    """The buffer plan of one graph. state: (input, output) names in manifest order."""
    values = probe(model, weights)
    b1, b2 = sorted(values)
    tensors = _initializers(model.graph, weights)
    nodes = data_nodes(model.graph)
    for name, arr in values[b1].items():
        if name not in tensors:
            shape, batched = _shape(name, arr, values[b2][name], (b1, b2))
            tensors[name] = Tensor(name, arr.dtype.name, shape, batched)
    plan = Plan(graph, nodes, tensors, [i for i, _ in state], [o for _, o in state])
    _fuse_matmuls(plan)
    _homes(plan, model.graph)
    _fuse_elementwise(plan)
    _in_place(plan)
    _allocate(plan)
    return plan


def _initializers(graph, weights: Path) -> dict[str, Tensor]:
    from onnx import numpy_helper

    data = np.memmap(weights, np.uint8, mode="r")
    out = {}
    for init in graph.initializer:
        ext = {e.key: e.value for e in init.external_data}
        if ext:
            if ext.get("location") != weights.name:
                raise EdgelmError(f"initializer {init.name} lives in {ext.get('location')}, not {weights.name}")
            dtype = np.dtype(numpy_helper.helper.tensor_dtype_to_np_dtype(init.data_type))
            start, shape = int(ext.get("offset", 0)), tuple(init.dims)
            value = np.frombuffer(data[start:start + int(ext["length"])], dtype).reshape(shape)
            out[init.name] = Tensor(init.name, dtype.name, shape, False, "weight", start, value)
        else:
            value = numpy_helper.to_array(init)
            out[init.name] = Tensor(init.name, value.dtype.name, value.shape, False, "const", 0, value)
    return out


def _fuse_matmuls(plan: Plan) -> None:
    """DequantizeLinear of a stored int8 weight feeding MatMul/Gemm: the matmul reads the int8
    weight itself (never a dequantized copy per call); a quantized activation's DQ(Q(x)) feeding
    only that matmul makes it an integer matmul (w8a8). Fused DQ nodes leave the node list."""
    producer = {o: n for n in plan.nodes for o in n.output}
    readers: dict[str, list] = {}
    for n in plan.nodes:
        for j, x in enumerate(n.input):
            readers.setdefault(x, []).append((n, j))
    drop = set()
    for n in plan.nodes:
        dq_w = producer.get(n.input[1]) if n.op_type in ("MatMul", "Gemm") else None
        if (dq_w is None or dq_w.op_type != "DequantizeLinear"
                or plan.tensors[dq_w.input[0]].home not in ("weight", "const") or not _zero_point(plan, dq_w)
                or any(r.op_type not in ("MatMul", "Gemm") or j != 1 for r, j in readers[dq_w.output[0]])):
            continue
        fused = plan.fused[n.output[0]] = {"w": dq_w}
        drop.add(id(dq_w))
        dq_x = producer.get(n.input[0])
        if (dq_x is not None and dq_x.op_type == "DequantizeLinear" and len(readers[dq_x.output[0]]) == 1
                and plan.tensors[dq_x.input[0]].dtype == "int8" and plan.tensors[dq_x.input[1]].numel == 1
                and _zero_point(plan, dq_x)):
            fused["x"] = dq_x
            drop.add(id(dq_x))
    plan.nodes = [n for n in plan.nodes if id(n) not in drop]


MAX_OPERANDS = 12  # pointers in one fused loop: inputs + stored outputs (GCC vectorises past alias checks)
MAX_HOISTED = 4  # nodes independent of an open run that may move ahead of its loop


def _fuse_elementwise(plan: Plan) -> None:
    """Runs of elementwise float ops with one output shape become one loop (an edgelm
    ElementwiseGroup node, its members in plan.groups): a value read only inside the run stays
    in a register instead of a scratch round trip. Mamba's per-position scan update
    exp(dt * A) * h + (dt * u) * b is 5 nodes and one pass over (N, Di). A member reads earlier
    members' outputs by name, never through an alias (the loop computes each element once, in
    order). Nodes that read nothing of an open run (aliases, the (B, 1, Di) dt * u between
    Mamba's decay and its input term) move ahead of its loop, up to MAX_HOISTED of them."""
    from onnx import helper

    readers: dict[str, set] = {}
    for n in plan.nodes:
        for x in reads(plan, n):
            if x and x in plan.tensors:
                readers.setdefault(plan.root(x).name, set()).add(id(n))
    nodes, run, made, hoisted = [], [], set(), 0

    def close():
        nonlocal hoisted
        if len(run) > 1:
            nodes.append(_group_node(plan, list(run), readers, helper))
        else:
            nodes.extend(run)
        run.clear()
        made.clear()
        hoisted = 0

    for n in plan.nodes:
        out = plan.tensors[n.output[0]]
        independent = not any(x and x in plan.tensors and plan.root(x).name in made for x in reads(plan, n))
        if out.home == "alias":
            if not independent:
                close()
            nodes.append(n)
            continue
        joins = (fusable(plan, n) and run and (out.shape, out.batched) == _shape_of(plan, run[0])
                 and all(x in made or plan.root(x).name not in made for x in data_inputs(n))
                 and _operands([*run, n]) <= MAX_OPERANDS)
        if not joins and run and independent and hoisted < MAX_HOISTED:
            nodes.append(n)  # it runs before the run's loop, which stays open for later members
            hoisted += 1
            continue
        if not joins:
            close()
        if fusable(plan, n):
            run.append(n)
            made.add(n.output[0])
        else:
            nodes.append(n)
    close()
    plan.nodes = nodes


def _shape_of(plan: Plan, node) -> tuple:
    t = plan.tensors[node.output[0]]
    return t.shape, t.batched


def _operands(run: list) -> int:
    made = {n.output[0] for n in run}
    return len({x for n in run for x in data_inputs(n) if x not in made}) + len(run)  # outputs: at most one each


def _group_node(plan: Plan, run: list, readers: dict[str, set], helper):
    inside = {id(n) for n in run}
    made = [n.output[0] for n in run]
    stored = [o for o in made if plan.tensors[o].home != "scratch" or readers.get(o, set()) - inside]
    ext = list(dict.fromkeys(x for n in run for x in data_inputs(n) if x not in made))
    name = f"group{len(plan.groups)}"
    plan.groups[name] = run
    return helper.make_node("ElementwiseGroup", ext, stored, name=name, domain="edgelm")


def _zero_point(plan: Plan, dq) -> bool:
    """A DequantizeLinear with no zero point, or a stored all-zero one (symmetric int8)."""
    if len(dq.input) < 3 or not dq.input[2]:
        return True
    zp = plan.tensors[dq.input[2]]
    return zp.value is not None and not np.any(zp.value)


def _homes(plan: Plan, graph) -> None:
    """Inputs, outputs and aliases; everything else stays scratch."""
    t = plan.tensors
    t["byte_ids"].home = "input"
    for k, (i, o) in enumerate(zip(plan.state_in, plan.state_out)):
        t[i].home, t[i].index = "state_in", k
        t[o].home, t[o].index = "state_out", k
    t["logits"].home = "logits"
    outputs = {o.name for o in graph.output}
    for node in plan.nodes:
        out = node.output[0]
        if out not in outputs and is_alias(node, t):
            t[out].home, t[out].alias_of = "alias", node.input[0]


def is_alias(node, t: dict[str, Tensor]) -> bool:
    """A node whose output is its input's bytes under another shape."""
    if node.op_type in ALIAS_OPS:
        return True
    if node.op_type == "Cast":
        return t[node.input[0]].dtype == t[node.output[0]].dtype
    if node.op_type == "Transpose":  # moving size-1 dims only keeps the memory order
        src = t[node.input[0]]
        perm = [a.ints for a in node.attribute if a.name == "perm"][0]
        moved = [d for d in perm if src.shape[d] != 1 or (d == 0 and src.batched)]
        return moved == sorted(moved)
    return False


def reads(plan: Plan, node) -> list[str]:
    """What a node reads: its inputs, and for a fused matmul the int8 tensors behind its DQs."""
    fused = plan.fused.get(node.output[0], {})
    return [*node.input, *(dq.input[0] for dq in fused.values())]


def _readers(plan: Plan, root: str) -> list[int]:
    return [i for i, n in enumerate(plan.nodes) for x in reads(plan, n) if x and x in plan.tensors
            and plan.root(x).name == root]


def _in_place(plan: Plan) -> None:
    """One stream's C API updates its state in place (state_in and state_out the same memory).
    A state output written before the last read of its input is computed in scratch instead
    and copied out after the last node. A fused loop may read its state input and write its
    state output itself where it reads each element at the index it writes (the same shape:
    LSTM's c = f * c + i * g, Mamba's h = exp(dt * A) * h + ...); the loop then declares the
    two pointers without restrict."""
    produced = {o: i for i, n in enumerate(plan.nodes) for o in n.output}
    for name_in, name_out in zip(plan.state_in, plan.state_out):
        p = produced[name_out]
        readers = _readers(plan, name_in)
        if any(i > p for i in readers) or (p in readers and not _elementwise_update(plan, plan.nodes[p], name_in)):
            out = plan.tensors[name_out]
            tmp = Tensor(f"{name_out}.tmp", out.dtype, out.shape, out.batched)
            plan.tensors[tmp.name] = tmp
            every = [*plan.nodes, *(m for run in plan.groups.values() for m in run)]
            for n in every:  # the producer and every later reader use the scratch copy
                n.input[:] = [tmp.name if x == name_out else x for x in n.input]
                n.output[:] = [tmp.name if x == name_out else x for x in n.output]
            plan.copies.append((tmp.name, name_out))


def _elementwise_update(plan: Plan, node, name_in: str) -> bool:
    """Whether a fused loop reads state input `name_in` only at the element it writes."""
    out = plan.tensors[node.output[0]]
    ins = [plan.tensors[x] for x in node.input if plan.root(x).name == name_in]
    return node.op_type == "ElementwiseGroup" and all((t.shape, t.batched) == (out.shape, out.batched) for t in ins)


def _allocate(plan: Plan) -> None:
    """First-fit scratch offsets (bytes per stream), each freed after its last reader."""
    last: dict[str, int] = {}
    for i, n in enumerate(plan.nodes):
        for x in [*reads(plan, n), *n.output]:
            if x and x in plan.tensors:
                last[plan.root(x).name] = i
    for tmp, _ in plan.copies:
        last[tmp] = len(plan.nodes)
    free: list[tuple[int, int]] = []  # (offset, size) holes
    top, live = 0, set()
    for i, n in enumerate(plan.nodes):
        for o in n.output:
            t = plan.tensors[o]
            if t.home != "scratch":
                continue
            size = -(-t.nbytes // ALIGN) * ALIGN
            hole = next((h for h in free if h[1] >= size), None)
            if hole is None:
                t.offset, top = top, top + size
            else:
                free.remove(hole)
                t.offset = hole[0]
                if hole[1] > size:
                    free.append((hole[0] + size, hole[1] - size))
            live.add(o)
        for name in [x for x in live if last.get(x, i) <= i]:
            t = plan.tensors[name]
            free.append((t.offset, -(-t.nbytes // ALIGN) * ALIGN))
            live.discard(name)
        free = _merge(free)
    plan.scratch_per_stream = top


def _merge(holes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for off, size in sorted(holes):
        if out and out[-1][0] + out[-1][1] == off:
            out[-1] = (out[-1][0], out[-1][1] + size)
        else:
            out.append((off, size))
    return out
