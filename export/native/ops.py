"""One C emitter per ONNX op of the step and prefill graphs (the plan says where each tensor lives).

Elementwise ops share one loop writer: broadcasting becomes zero strides, adjacent dimensions
that stride alike merge, and the innermost loop is contiguous where the output is, so the
compiler vectorises it. A run of them that the plan fused (an ElementwiseGroup) is one such loop
with a local per member. Matmuls call the kernels in kernels.h; DequantizeLinear of a stored
weight is fused into them by the plan (the int8 weight is read as int8).
An op outside this table is a one-line error naming it, never a silent fallback.
"""

from __future__ import annotations

from ...python_support import require_compiler_python

require_compiler_python()  # before numpy / onnx: on Python 3.8 one line says what to do

import numpy as np
from ...errors import EdgelmError
from .matmul import MatMulOps
from .cexpr import BINARY, UNARY, View, attr, broadcast, contiguous, data_inputs, fmt_float, out_name, split_at
from .plan import Plan, Tensor

class Emitter(MatMulOps):
    def __init__(self, plan: Plan, prefix: str):
        self.plan, self.prefix = plan, prefix
        self.consts: dict[str, str] = {}  # const tensor -> its C array's name
        self.globals: list[str] = []  # the const arrays' and loop functions' definitions
        self.loop_fns: dict[str, str] = {}  # a fused loop's text -> its function's name

    # -- operands ------------------------------------------------------------------------
    def t(self, name: str) -> Tensor:
        return self.plan.tensors[name]

    def ptr(self, name: str) -> str:
        t, r = self.t(name), self.plan.root(name)
        base = {"weight": f"(W + {r.offset})", "scratch": f"(S + B * {r.offset})", "input": "byte_ids",
                "state_in": f"sin[{r.index}]", "state_out": f"sout[{r.index}]", "logits": "logits"}.get(r.home)
        if r.home == "const":
            base = self.const(r)
        return f"(({t.ctype} *){base})"

    def view(self, name: str) -> View:
        t = self.t(name)
        return View(self.ptr(name), t.shape, t.batched, t.ctype)

    def const(self, t: Tensor) -> str:
        if t.name not in self.consts:
            c = self.consts[t.name] = f"{self.prefix}_k{len(self.consts)}"
            flat = t.value.reshape(-1)
            vals = [fmt_float(v) for v in flat] if t.dtype == "float32" else [str(int(v)) for v in flat]
            self.globals.append(f"static const {t.ctype} {c}[{max(1, flat.size)}] = {{{', '.join(vals) or '0'}}};")
        return self.consts[t.name]

    def value(self, name: str) -> np.ndarray:
        t = self.t(name)
        if t.value is None:
            raise EdgelmError(f"the native C target needs {name} to be a stored constant")
        return t.value

    @staticmethod
    def count(t: Tensor | View) -> str:
        n = int(np.prod(t.shape, dtype=np.int64))
        return f"(B * {n})" if t.batched else str(n)

    # -- the loop writer -------------------------------------------------------------------
    def loops(self, shape: tuple[int, ...], batched: bool, dst: tuple[View, list[int]],
              srcs: list[tuple[View, list[int]]], expr: str, op: str = "=") -> str:
        """dst[...] op expr(src_k[...]) over `shape`, each operand with its stride per axis."""
        ptrs, loops, at, inner = self._nest(shape, batched, [dst, *srcs])
        elems = [at(k + 1, f"a{k}") for k in range(len(srcs))]
        decls = [f"{'{' if k == 0 else ' '} {decl} = {ptr};" for k, (decl, ptr) in enumerate(ptrs)]
        return "\n".join([*decls, *loops]) + (f"\n  for (size_t j = 0; j < (size_t)({inner}); j++) "
                                               f"{at(0, 'o')} {op} {expr.format(*elems)}; }}")

    @staticmethod
    def _nest(shape: tuple[int, ...], batched: bool, operands: list[tuple[View, list[int]]], outs: int = 1):
        """The loop nest over `shape` for operands (view, stride per axis), the first `outs` of them
        written (o, o1, ...) and the rest read (a0, a1, ...): ((declaration, pointer) per operand,
        the outer loops, at(k, name) -> the element expression of operand k, the innermost loop's
        count)."""
        sizes = [f"B * {d}" if (a == 0 and batched) else str(d) for a, d in enumerate(shape)] or ["1"]
        st = [s or [0] for _, s in operands]
        merged = [[sizes[0], [s[0] for s in st]]]
        for a in range(1, len(sizes)):  # merge into the previous axis where every operand strides alike
            n, cur = shape[a], [s[a] for s in st]
            prev = merged[-1]
            if all(p == q * n for p, q in zip(prev[1], cur)):
                merged[-1] = [f"{prev[0]} * {n}", cur]
            else:
                merged.append([sizes[a], cur])
        *outer, inner = merged
        # restrict: the plan never places an output over one of its node's inputs (in-place state
        # included), so the compiler need not version each loop for overlap
        views = [v for v, _ in operands]
        ptrs = [(f"{v.ctype} *restrict {out_name(k)}", v.ptr) for k, v in enumerate(views[:outs])]
        ptrs += [(f"const {v.ctype} *restrict a{k}", v.ptr) for k, v in enumerate(views[outs:])]
        loops = [f"  for (size_t i{d} = 0; i{d} < (size_t)({ax[0]}); i{d}++)" for d, ax in enumerate(outer)]

        def at(k: int, base: str) -> str:
            off = " + ".join([f"i{d} * {ax[1][k]}" for d, ax in enumerate(outer) if ax[1][k]] or ["0"])
            step = inner[1][k]
            return f"{base}[{off}" + ("" if step == 0 else " + j" if step == 1 else f" + j * {step}") + "]"
        return ptrs, loops, at, inner[0]

    def op_ElementwiseGroup(self, node) -> str:
        """One loop for a run of elementwise ops (plan._fuse_elementwise): a statement per member
        into a local, the stored outputs written from their locals. The loop is a function of its
        pointers, one per distinct loop: Mamba's per-position prefill repeats one scan update
        C x layers times, and compiling it once keeps gcc's time near the step loop's."""
        run = self.plan.groups[node.name]
        o = self.view(run[0].output[0])
        outs = [(self.view(x), contiguous(o.shape)) for x in node.output]
        ins = [(self.view(x), broadcast(self.view(x), o)) for x in node.input]
        ptrs, loops, at, inner = self._nest(o.shape, o.batched, [*outs, *ins], len(outs))
        shared = self._in_place_state([*node.output, *node.input])  # state read and written here
        ptrs = [(d.replace("*restrict ", "*") if k in shared else d, ptr) for k, (d, ptr) in enumerate(ptrs)]
        local = {m.output[0]: f"t{k}" for k, m in enumerate(run)}
        args = {x: at(len(outs) + k, f"a{k}") for k, x in enumerate(node.input)}
        body = [f"const float {local[m.output[0]]} = {self._expr(m, [local.get(x) or args[x] for x in data_inputs(m)])};"
                for m in run]
        body += [f"{at(k, out_name(k))} = {local[x]};" for k, x in enumerate(node.output)]
        params = ", ".join(["size_t B", *(decl for decl, _ in ptrs)])
        code = (f"({params}) {{\n" + "\n".join(loops) + f"\n  for (size_t j = 0; j < (size_t)({inner}); j++) {{\n"
                + "".join(f"    {line}\n" for line in body) + "  }\n}")
        if code not in self.loop_fns:
            self.loop_fns[code] = f"{self.prefix}_loop{len(self.loop_fns)}"
            self.globals.append(f"static void {self.loop_fns[code]}{code}")
        return f"{self.loop_fns[code]}(B, {', '.join(ptr for _, ptr in ptrs)});"

    def _in_place_state(self, names: list[str]) -> set[int]:
        """Positions in `names` of a state output and its own state input (the same memory in
        the one-stream API: plan._in_place let this loop update it element by element)."""
        roots = [self.plan.root(x) for x in names]
        outs = {t.index for t in roots if t.home == "state_out"}
        ins = {t.index for t in roots if t.home == "state_in"}
        return {k for k, t in enumerate(roots) if t.home in ("state_in", "state_out") and t.index in outs & ins}

    def _expr(self, node, args: list[str]) -> str:
        """A fusable node's C expression over its operands' expressions."""
        op = node.op_type
        if op == "Pow":
            return self._pow(node).format(*args)
        return (UNARY[op] if op in UNARY else BINARY[op]).format(*args)

    def elementwise(self, out: str, ins: list[View], expr: str) -> str:
        o = self.view(out)
        return self.loops(o.shape, o.batched, (o, contiguous(o.shape)), [(v, broadcast(v, o)) for v in ins], expr)

    def emit(self, node) -> str:
        op = node.op_type
        fn = getattr(self, f"op_{op}", None)
        if op in UNARY:
            return self.elementwise(node.output[0], [self.view(node.input[0])], UNARY[op])
        if op in BINARY:
            return self.elementwise(node.output[0], [self.view(x) for x in node.input[:2]], BINARY[op])
        if fn is None:
            raise EdgelmError(f"the native C target has no {op} kernel ({self.plan.graph} graph); export "
                              "without it, or add it to export/native/ops.py")
        return fn(node)

    # -- elementwise specials --------------------------------------------------------------
    def op_Pow(self, node):
        return self.elementwise(node.output[0], [self.view(node.input[0])], self._pow(node))

    def _pow(self, node) -> str:
        e = float(self.value(node.input[1]).reshape(-1)[0])
        return "{0} * {0}" if e == 2.0 else f"powf({{0}}, {fmt_float(e)})"

    def op_Clip(self, node):
        lo = fmt_float(self.value(node.input[1]).item()) if len(node.input) > 1 and node.input[1] else "-INFINITY"
        hi = fmt_float(self.value(node.input[2]).item()) if len(node.input) > 2 and node.input[2] else "INFINITY"
        expr = f"({{0}} < {lo} ? {lo} : ({{0}} > {hi} ? {hi} : {{0}}))"
        return self.elementwise(node.output[0], [self.view(node.input[0])], expr)

    def op_Cast(self, node):
        o = self.t(node.output[0])
        return self.elementwise(node.output[0], [self.view(node.input[0])], f"({o.ctype}){{0}}")

    def _scale_views(self, node, rank: int) -> list[View]:
        """DequantizeLinear / QuantizeLinear scale and zero point, shaped to broadcast on `axis`."""
        if attr(node, "block_size", 0):
            raise EdgelmError("the native C target has no blocked (int4) DequantizeLinear; export int8 or fp32")
        axis = attr(node, "axis", 1) % max(rank, 1)
        out = []
        for name in node.input[1:3]:
            if not name:
                continue
            t = self.t(name)
            shape = (1,) * rank if t.numel == 1 else tuple(t.numel if a == axis else 1 for a in range(rank))
            out.append(View(self.ptr(name), shape, False, t.ctype))
        return out

    def op_QuantizeLinear(self, node):
        o = self.t(node.output[0])
        if o.dtype != "int8" or (len(node.input) > 2 and node.input[2] and np.any(self.value(node.input[2]))):
            raise EdgelmError("the native C target quantizes activations to symmetric int8 only")
        x = self.view(node.input[0])
        return self.elementwise(node.output[0], [x, *self._scale_views(node, len(x.shape))[:1]], "el_q8({0} / {1})")

    def op_DequantizeLinear(self, node):
        x = self.view(node.input[0])
        sc = self._scale_views(node, len(x.shape))
        expr = "((float){0} - (float){2}) * {1}" if len(sc) == 2 else "(float){0} * {1}"
        return self.elementwise(node.output[0], [x, *sc], expr)

    # -- reductions ------------------------------------------------------------------------
    def op_ReduceMean(self, node):
        return self._reduce(node, mean=True)

    def op_ReduceSum(self, node):
        return self._reduce(node, mean=False)

    def _reduce(self, node, mean: bool) -> str:
        x, o = self.view(node.input[0]), self.view(node.output[0])
        axes = attr(node, "axes")
        if axes is None and len(node.input) > 1 and node.input[1]:
            axes = [int(a) for a in self.value(node.input[1]).reshape(-1)]
        rank = len(x.shape)
        axes = sorted(a % rank for a in (axes if axes is not None else range(rank)))
        if 0 in axes and x.batched:
            raise EdgelmError("the native C target cannot reduce over the batch")
        n = int(np.prod([x.shape[a] for a in axes]))
        scale = f" * {fmt_float(1.0 / n)}" if mean else ""
        if axes == list(range(rank - len(axes), rank)):  # trailing axes: one row sum per output
            rows = self.count(o)
            return (f"{{ const float *a = {x.ptr}; float *o = {o.ptr};\n"
                    f"  for (size_t r = 0; r < (size_t){rows}; r++) o[r] = el_sum(a + r * {n}, {n}){scale}; }}")
        keep = tuple(1 if a in axes else d for a, d in enumerate(x.shape))  # the output, keepdims
        acc = [0 if a in axes else st for a, st in enumerate(contiguous(keep))]
        count = self.count(o)
        fin = f" for (size_t r = 0; r < (size_t){count}; r++) o[r] *={scale[2:]};" if mean else ""
        return (f"{{ float *o = {o.ptr}; for (size_t r = 0; r < (size_t){count}; r++) o[r] = 0.0f; }}\n"
                + self.loops(x.shape, x.batched, (o, acc), [(x, contiguous(x.shape))], "{0}", "+=")
                + (f"\n{{ float *o = {o.ptr};{fin} }}" if mean else ""))

    # -- data movement ---------------------------------------------------------------------
    def op_Gather(self, node):
        d, ids, o = self.t(node.input[0]), self.view(node.input[1]), self.t(node.output[0])
        idx = self.t(node.input[1])
        if idx.value is not None and len(d.shape) > 1 and (attr(node, "axis", 0) or idx.numel == 1):
            return self._pick(d, o, attr(node, "axis", 0) % len(d.shape), idx)
        if attr(node, "axis", 0) != 0 or d.batched or idx.dtype != self.plan.tensors["byte_ids"].dtype:
            raise EdgelmError("the native C target gathers rows of a stored table by byte ids only")
        row = int(np.prod(d.shape[1:], dtype=np.int64)) * np.dtype(d.dtype).itemsize
        return f"el_gather({self.ptr(o.name)}, {self.ptr(d.name)}, {ids.ptr}, (size_t){self.count(ids)}, {d.shape[0]}, {row});"

    def _pick(self, x: Tensor, o: Tensor, axis: int, idx: Tensor) -> str:
        """x[..., idx, ...] along a non-batch axis by constant indices: byte_ids[:, t], a column of a
        stored weight the exporter left unfolded, or the channels an outlier split takes apart."""
        if axis == 0 and x.batched:
            raise EdgelmError("the native C target cannot gather along the batch")
        picks = [int(i) % x.shape[axis] for i in idx.value.reshape(-1)]
        rows, inner = split_at(x, axis)
        size, n = np.dtype(x.dtype).itemsize, len(picks)
        src, dst = f"{self.ptr(x.name)} + r * {x.shape[axis] * inner}", f"{self.ptr(o.name)} + r * {n * inner}"
        if n == 1:
            return f"for (size_t r = 0; r < (size_t){rows}; r++) memcpy({dst}, {src} + {picks[0] * inner}, {inner * size});"
        table = self.const(Tensor(f"{idx.name}.picks", "int32", (n,), False, "const", 0, np.array(picks, np.int32)))
        return (f"for (size_t r = 0; r < (size_t){rows}; r++) for (int i = 0; i < {n}; i++) "
                f"memcpy({dst} + i * {inner}, {src} + {table}[i] * {inner}, {inner * size});")

    def _blocks(self, whole: Tensor, parts: list[Tensor], axis: int, into_whole: bool) -> str:
        """Split (whole -> parts) or Concat (parts -> whole) along `axis` as row memcpys."""
        axis %= len(whole.shape)
        if axis == 0 and whole.batched:
            raise EdgelmError("the native C target cannot split or join along the batch")
        rows, inner = split_at(whole, axis)
        size = np.dtype(whole.dtype).itemsize
        lines, off = [f"for (size_t r = 0; r < (size_t){rows}; r++) {{"], 0
        for p in parts:
            n = p.shape[axis] * inner
            w, q = f"{self.ptr(whole.name)} + r * {whole.shape[axis] * inner} + {off}", f"{self.ptr(p.name)} + r * {n}"
            lines.append(f"  memcpy({w}, {q}, {n * size});" if into_whole else f"  memcpy({q}, {w}, {n * size});")
            off += n
        return "\n".join(lines) + " }"

    def op_Split(self, node):
        return self._blocks(self.t(node.input[0]), [self.t(o) for o in node.output], attr(node, "axis", 0), False)

    def op_Concat(self, node):
        return self._blocks(self.t(node.output[0]), [self.t(i) for i in node.input], attr(node, "axis"), True)

    def op_Slice(self, node):
        x, o = self.t(node.input[0]), self.t(node.output[0])
        starts, ends = (self.value(node.input[k]).reshape(-1) for k in (1, 2))
        axes = self.value(node.input[3]).reshape(-1) if len(node.input) > 3 and node.input[3] else np.arange(len(starts))
        steps = self.value(node.input[4]).reshape(-1) if len(node.input) > 4 and node.input[4] else np.ones_like(starts)
        cut = [(int(a) % len(x.shape), int(s)) for a, s, st in zip(axes, starts, steps)
               if x.shape[int(a) % len(x.shape)] != o.shape[int(a) % len(x.shape)] or int(s) != 0]
        if len(cut) != 1 or np.any(steps != 1) or (cut[0][0] == 0 and x.batched):
            raise EdgelmError("the native C target slices one non-batch axis with step 1 only")
        axis, start = cut[0]
        start = min(max(start + x.shape[axis] if start < 0 else start, 0), x.shape[axis])
        rows, inner = split_at(x, axis)
        n, size = o.shape[axis] * inner, np.dtype(x.dtype).itemsize
        return (f"for (size_t r = 0; r < (size_t){rows}; r++) memcpy({self.ptr(o.name)} + r * {n}, "
                f"{self.ptr(x.name)} + r * {x.shape[axis] * inner} + {start * inner}, {n * size});")

    def op_Transpose(self, node):
        x, o = self.view(node.input[0]), self.view(node.output[0])
        perm = list(attr(node, "perm"))
        if x.batched and perm[0] != 0:
            raise EdgelmError("the native C target keeps the batch first in a Transpose")
        st = contiguous(x.shape)
        return self.loops(o.shape, o.batched, (o, contiguous(o.shape)), [(x, [st[p] for p in perm])], "{0}")

    def copy(self, node) -> str:
        """An alias op whose output is a graph output: the bytes are copied into place."""
        o = self.t(node.output[0])
        return f"memcpy({self.ptr(o.name)}, {self.ptr(node.input[0])}, {self.count(o)} * {np.dtype(o.dtype).itemsize});"
