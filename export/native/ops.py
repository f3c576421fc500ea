"""One C emitter per ONNX op of the step and prefill graphs (the plan says where each tensor lives).

Elementwise ops share one loop writer: broadcasting becomes zero strides, adjacent dimensions
that stride alike merge, and the innermost loop is contiguous where the output is, so the
compiler vectorises it. Matmuls call the kernels in kernels.h; DequantizeLinear of a stored
weight is fused into them by the plan (the int8 weight is read as int8).
An op outside this table is a one-line error naming it, never a silent fallback.
"""

from __future__ import annotations

from ...python_support import require_compiler_python

require_compiler_python()  # before numpy / onnx: on Python 3.8 one line says what to do

from dataclasses import dataclass

import numpy as np
from onnx import helper

from ...errors import EdgelmError
from .plan import Plan, Tensor

UNARY = {"Sigmoid": "el_sigmoid({0})", "Tanh": "el_tanh({0})", "Exp": "el_exp({0})", "Log": "el_log({0})",
         "Sqrt": "sqrtf({0})", "Relu": "({0} > 0.0f ? {0} : 0.0f)", "Abs": "fabsf({0})", "Neg": "(-{0})",
         "Reciprocal": "(1.0f / {0})", "Softplus": "({0} > 0.0f ? {0} : 0.0f) + log1pf(el_exp(-fabsf({0})))"}
BINARY = {"Add": "{0} + {1}", "Sub": "{0} - {1}", "Mul": "{0} * {1}", "Div": "{0} / {1}",
          "Max": "({0} > {1} ? {0} : {1})", "Min": "({0} < {1} ? {0} : {1})"}


@dataclass
class View:
    """An operand of a loop: a C pointer expression over a shape (dim 0 x batch when batched)."""

    ptr: str
    shape: tuple[int, ...]
    batched: bool = False
    ctype: str = "float"


def attr(node, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def fmt_float(v: float) -> str:
    if np.isnan(v):
        return "NAN"
    if np.isinf(v):
        return "INFINITY" if v > 0 else "-INFINITY"
    return f"{float(np.float32(v))!r}f"


class Emitter:
    def __init__(self, plan: Plan, prefix: str):
        self.plan, self.prefix = plan, prefix
        self.consts: dict[str, str] = {}  # const tensor -> its C array's name
        self.globals: list[str] = []  # the const arrays' definitions

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
        sizes = [f"B * {d}" if (a == 0 and batched) else str(d) for a, d in enumerate(shape)] or ["1"]
        st = [s or [0] for s in [dst[1], *[s for _, s in srcs]]]
        merged = [[sizes[0], [s[0] for s in st]]]
        for a in range(1, len(sizes)):  # merge into the previous axis where every operand strides alike
            n, cur = shape[a], [s[a] for s in st]
            prev = merged[-1]
            if all(p == q * n for p, q in zip(prev[1], cur)):
                merged[-1] = [f"{prev[0]} * {n}", cur]
            else:
                merged.append([sizes[a], cur])
        *outer, inner = merged
        views = [dst[0], *[v for v, _ in srcs]]
        # restrict: the plan never places an output over one of its node's inputs (in-place state
        # included), so the compiler need not version each loop for overlap
        lines = [f"{{ {dst[0].ctype} *restrict o = {dst[0].ptr};"]
        lines += [f"  const {v.ctype} *restrict a{k} = {v.ptr};" for k, v in enumerate(views[1:])]
        lines += [f"  for (size_t i{d} = 0; i{d} < (size_t)({ax[0]}); i{d}++)" for d, ax in enumerate(outer)]

        def at(k: int, base: str) -> str:
            off = " + ".join([f"i{d} * {ax[1][k]}" for d, ax in enumerate(outer) if ax[1][k]] or ["0"])
            step = inner[1][k]
            return f"{base}[{off}" + ("" if step == 0 else " + j" if step == 1 else f" + j * {step}") + "]"
        elems = [at(k + 1, f"a{k}") for k in range(len(srcs))]
        lines.append(f"  for (size_t j = 0; j < (size_t)({inner[0]}); j++) {at(0, 'o')} {op} {expr.format(*elems)}; }}")
        return "\n".join(lines)

    def elementwise(self, out: str, ins: list[View], expr: str) -> str:
        o = self.view(out)
        return self.loops(o.shape, o.batched, (o, _contiguous(o.shape)), [(v, _broadcast(v, o)) for v in ins], expr)

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
        e = float(self.value(node.input[1]).reshape(-1)[0])
        expr = "{0} * {0}" if e == 2.0 else f"powf({{0}}, {fmt_float(e)})"
        return self.elementwise(node.output[0], [self.view(node.input[0])], expr)

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
        acc = [0 if a in axes else st for a, st in enumerate(_contiguous(keep))]
        count = self.count(o)
        fin = f" for (size_t r = 0; r < (size_t){count}; r++) o[r] *={scale[2:]};" if mean else ""
        return (f"{{ float *o = {o.ptr}; for (size_t r = 0; r < (size_t){count}; r++) o[r] = 0.0f; }}\n"
                + self.loops(x.shape, x.batched, (o, acc), [(x, _contiguous(x.shape))], "{0}", "+=")
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
        rows, inner = _split_at(x, axis)
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
        rows, inner = _split_at(whole, axis)
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
        rows, inner = _split_at(x, axis)
        n, size = o.shape[axis] * inner, np.dtype(x.dtype).itemsize
        return (f"for (size_t r = 0; r < (size_t){rows}; r++) memcpy({self.ptr(o.name)} + r * {n}, "
                f"{self.ptr(x.name)} + r * {x.shape[axis] * inner} + {start * inner}, {n * size});")

    def op_Transpose(self, node):
        x, o = self.view(node.input[0]), self.view(node.output[0])
        perm = list(attr(node, "perm"))
        if x.batched and perm[0] != 0:
            raise EdgelmError("the native C target keeps the batch first in a Transpose")
        st = _contiguous(x.shape)
        return self.loops(o.shape, o.batched, (o, _contiguous(o.shape)), [(x, [st[p] for p in perm])], "{0}")

    def copy(self, node) -> str:
        """An alias op whose output is a graph output: the bytes are copied into place."""
        o = self.t(node.output[0])
        return f"memcpy({self.ptr(o.name)}, {self.ptr(node.input[0])}, {self.count(o)} * {np.dtype(o.dtype).itemsize});"

    # -- matmuls ---------------------------------------------------------------------------
    def op_Gemm(self, node):
        if attr(node, "transA", 0) or attr(node, "transB", 0) or attr(node, "alpha", 1.0) != 1.0 or attr(node, "beta", 1.0) != 1.0:
            raise EdgelmError("the native C target runs Gemm without transposes or scaling only")
        return self.op_MatMul(node)

    def op_MatMul(self, node):
        fused = self.plan.fused.get(node.output[0], {})
        x, o = self.t(node.input[0]), self.t(node.output[0])
        w = self.t(fused["w"].input[0]) if "w" in fused else self.t(node.input[1])
        if w.batched or w.home not in ("weight", "const") or len(w.shape) != 2:
            return self._batched_matmul(node)
        k, n = w.shape
        rows = f"(B * {x.numel // k})" if x.batched else str(x.numel // k)
        bias, c_rows = None, 0
        if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            c = self.t(node.input[2])
            bias, c_rows = self.ptr(c.name), int(c.batched or (len(c.shape) == 2 and c.shape[0] > 1))
        if "w" not in fused:
            kernel, xp, scale, xs = "el_mm_f32", self.ptr(x.name), None, "0.0f"
        else:
            ws = self.t(fused["w"].input[1])
            scale = (self.ptr(ws.name), ws.numel)
            kernel, xp, xs = "el_mm_w8", self.ptr(x.name), "0.0f"
            if "x" in fused:
                dq = fused["x"]
                kernel, xp = "el_mm_a8w8", self.ptr(dq.input[0])
                xs = fmt_float(float(self.value(dq.input[1]).reshape(-1)[0]))
        calls = []
        for n0, n1, k0, k1 in nonzero_blocks(w.value):
            ws_arg = "NULL, 0" if scale is None else (f"{scale[0]} + {n0}, {n1 - n0}" if scale[1] > 1 else f"{scale[0]}, 1")
            c_arg = "NULL" if bias is None else f"{bias} + {n0}"
            if k1 == k0:  # an all-zero column block: only the bias
                calls.append(self._fill(o.name, rows, n, n0, n1, c_arg, c_rows))
                continue
            calls.append(f"{kernel}({self.ptr(o.name)} + {n0}, {n}, {xp} + {k0}, {k}, {self.ptr(w.name)} + {k0 * n + n0}, "
                         f"{n}, {ws_arg}, {xs}, {c_arg}, {c_rows}, {rows}, {k1 - k0}, {n1 - n0});")
        return "\n".join(calls)

    def _fill(self, out: str, rows: str, n: int, n0: int, n1: int, c_arg: str, c_rows: int) -> str:
        value = "0.0f" if c_arg == "NULL" else (f"({c_arg})[r * {n} + j]" if c_rows else f"({c_arg})[j]")
        return (f"for (size_t r = 0; r < (size_t){rows}; r++) for (int j = 0; j < {n1 - n0}; j++) "
                f"{self.ptr(out)}[r * {n} + {n0} + j] = {value};")

    def _batched_matmul(self, node) -> str:
        """(..., M, K) @ (..., K, N), the same leading dims on both sides (Mamba's <h, C>)."""
        a, b, o = (self.t(x) for x in (node.input[0], node.input[1], node.output[0]))
        (m, k), n = a.shape[-2:], b.shape[-1]
        lead_a, lead_b = a.numel // (m * k), b.numel // (k * n)
        if len(a.shape) < 3 or lead_a != lead_b or a.batched != b.batched or a.dtype != "float32":
            raise EdgelmError("the native C target runs batched MatMul on matching float leading dims only")
        lead = f"(B * {lead_a})" if a.batched else str(lead_a)
        return (f"for (size_t l = 0; l < (size_t){lead}; l++) el_mm_f32({self.ptr(o.name)} + l * {m * n}, {n}, "
                f"{self.ptr(a.name)} + l * {m * k}, {k}, {self.ptr(b.name)} + l * {k * n}, {n}, NULL, 0, 0.0f, NULL, 0, "
                f"{m}, {k}, {n});")


MAX_BLOCKS = 8  # more column blocks than this: the weight is not block-structured, run it whole
MIN_SAVING = 0.1  # skip zeros only where that saves at least this share of the products


def nonzero_blocks(w: np.ndarray) -> list[tuple[int, int, int, int]]:
    """(n0, n1, k0, k1): column ranges of a stored (K, N) weight and the rows holding their
    nonzeros. GRU's fused gates carry all-zero (H, H) blocks (one Gemm in ONNX instead of two);
    compiled C need not multiply them: gru-tiny's step does 25% fewer products."""
    k, n = w.shape
    whole = [(0, n, 0, k)]
    if not n or not k:
        return whole
    nz = w != 0
    any_col = nz.any(axis=0)
    first = np.where(any_col, nz.argmax(axis=0), 0)
    last = np.where(any_col, k - nz[::-1].argmax(axis=0), 0)
    blocks, start = [], 0
    for j in range(1, n + 1):
        if j == n or (first[j], last[j]) != (first[start], last[start]):
            blocks.append((start, j, int(first[start]), int(last[start])))
            start = j
    kept = sum((n1 - n0) * (k1 - k0) for n0, n1, k0, k1 in blocks)
    if len(blocks) > MAX_BLOCKS or kept > (1 - MIN_SAVING) * k * n:
        return whole
    return blocks


def _split_at(t: Tensor, axis: int) -> tuple[str, int]:
    """A tensor as rows around `axis`: (the C count of rows before it, elements after it)."""
    outer = int(np.prod(t.shape[:axis], dtype=np.int64))
    return (f"(B * {outer})" if t.batched else str(outer)), int(np.prod(t.shape[axis + 1:], dtype=np.int64))


def _contiguous(shape) -> list[int]:
    st, acc = [], 1
    for d in reversed(shape):
        st.append(acc)
        acc *= d
    return st[::-1]


def _broadcast(v: View, out: View) -> list[int]:
    """v's stride along each of out's axes (numpy broadcasting: right-aligned, size 1 -> 0)."""
    r, rv = len(out.shape), len(v.shape)
    st = _contiguous(v.shape)
    strides = []
    for a in range(r):
        b = a - (r - rv)
        if b < 0:
            strides.append(0)
            continue
        vb, ob = (v.batched and b == 0), (out.batched and a == 0)
        if v.shape[b] == 1 and not vb and (ob or out.shape[a] != 1):
            strides.append(0)
        elif vb == ob and v.shape[b] == out.shape[a]:
            strides.append(st[b])
        else:
            raise EdgelmError(f"the native C target cannot broadcast {v.shape} to {out.shape}")
    return strides
