"""The native C target's compiler pieces on their own: kernels.h's matmul against a float64
reference on every instruction set its tiles are written for (AVX-512 and AVX2 here, SSE, and
AArch64 under qemu-user), el_log against logf, the plan's elementwise fusion on hand-built
graphs, and how each architecture's C runs a prefill chunk (fused forms' NATIVE_PREFILL)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from runtime_fixtures import ARCHS, bundle_dir  # noqa: F401

from edgelm.export.native.plan import Plan, Tensor, _fuse_elementwise

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "export" / "native" / "kernels.h"
AARCH64 = ("aarch64-linux-gnu-gcc", "qemu-aarch64")

# y (M, N) = x (M, K) @ w (K, N) + c through el_mm_f32, operands padded (ld > width) and the pads
# checked untouched; the worst error relative to sum |x w| + |c| is printed, or "pad" on a write
# outside y's rows. Shapes cover every tile and remainder: rows 1..33 (tiles of 8, 6 or 4, then
# the one-row kernel), columns around the vector widths 4, 8, 16 and 32.
MM_HARNESS = r"""
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
typedef int64_t edgelm_id_t;
#include "KERNELS"
static unsigned s = 1;
static float rnd(void) { s = s * 1103515245u + 12345u; return (float)((s >> 8) & 0xffff) / 32768.0f - 1.0f; }
int main(void) {
    static const int Ms[] = {1, 3, 4, 5, 6, 8, 13, 33};
    static const int Ks[] = {1, 16, 100};
    static const int Ns[] = {1, 7, 8, 16, 17, 32, 33, 77};
    double worst = 0;
    for (int a = 0; a < 8; a++) for (int b = 0; b < 3; b++) for (int d = 0; d < 8; d++) for (int mode = 0; mode < 3; mode++) {
        const int M = Ms[a], K = Ks[b], N = Ns[d], ldx = K + 3, ldw = N + 5, ldy = N + 7;
        float *x = malloc(sizeof(float) * M * ldx), *w = malloc(sizeof(float) * K * ldw);
        float *y = malloc(sizeof(float) * M * ldy), *c = malloc(sizeof(float) * M * ldy);
        for (int i = 0; i < M * ldx; i++) x[i] = rnd();
        for (int i = 0; i < K * ldw; i++) w[i] = rnd();
        for (int i = 0; i < M * ldy; i++) { c[i] = rnd(); y[i] = -777.0f; }
        el_mm_f32(y, ldy, x, ldx, w, ldw, NULL, 0, 0.0f, mode ? c : NULL, mode == 2, (size_t)M, K, N);
        for (int m = 0; m < M; m++) {
            for (int n = N; n < ldy; n++) if (y[m * ldy + n] != -777.0f) { printf("pad\n"); return 0; }
            for (int n = 0; n < N; n++) {
                double ref = mode ? c[(mode == 2 ? m * ldy : 0) + n] : 0.0, mag = fabs(ref) + 1e-30;
                for (int k = 0; k < K; k++) { ref += (double)x[m * ldx + k] * w[k * ldw + n]; mag += fabs((double)x[m * ldx + k] * w[k * ldw + n]); }
                const double e = fabs(y[m * ldy + n] - ref) / mag;
                if (e > worst) worst = e;
            }
        }
        free(x); free(w); free(y); free(c);
    }
    printf("%g\n", worst);
    return 0;
}
"""


def _has_avx2() -> bool:
    try:
        return " avx2 " in Path("/proc/cpuinfo").read_text().replace("\n", " ")
    except OSError:
        return False


ISAS = {  # name -> (compiler, flags, runner), each skipped where this machine cannot run it
    "native": ("cc", ["-march=native"], []),
    "avx2": ("cc", ["-mavx2", "-mfma", "-mno-avx512f"], []),
    "sse": ("cc", [], []),
    "aarch64": ("aarch64-linux-gnu-gcc", ["-static", "-mcpu=cortex-a78ae"], ["qemu-aarch64"]),
}


@pytest.mark.parametrize("isa", list(ISAS))
def test_el_mm_f32_is_the_product_on_every_tile_and_remainder(tmp_path, isa):
    cc, flags, runner = ISAS[isa]
    if not shutil.which(cc) or (runner and not shutil.which(runner[0])):
        pytest.skip(f"no {cc} / {runner}; `make test` installs gcc-aarch64-linux-gnu and qemu-user")
    if isa == "avx2" and not _has_avx2():
        pytest.skip("this CPU has no AVX2")
    src = tmp_path / "mm.c"
    src.write_text(MM_HARNESS.replace("KERNELS", str(KERNELS)))
    exe = tmp_path / "mm"
    res = subprocess.run([cc, "-std=c99", "-O3", "-ffp-contract=fast", *flags, str(src), "-o", str(exe), "-lm"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    out = subprocess.run([*runner, str(exe)], capture_output=True, text=True, timeout=300).stdout.strip()
    assert out != "pad" and float(out) < 1e-5, out  # fp32 accumulation over K <= 100: ~1e-6


def test_el_log_is_logf_within_an_ulp(tmp_path):
    """The kernels' branch-free log (it replaces libm's logf so that softplus loops vectorise):
    within 2 ulp of logf from subnormals to FLT_MAX, and logf's values at 0, <0, inf and NaN."""
    src = tmp_path / "log.c"
    src.write_text('#include <stdio.h>\n#include <stdint.h>\ntypedef int64_t edgelm_id_t;\n'
                   f'#include "{KERNELS}"\n'
                   "int main(void) {\n  double worst = 0;\n"
                   "  for (float x = 1e-44f; x < 3e38f; x = fmaxf(x * 1.0013f, nextafterf(x, INFINITY))) {\n"
                   "    float a = el_log(x), b = logf(x);\n"
                   "    double ulp = fabs((double)a - b) / fabs(nextafterf(b, INFINITY) - b);\n"
                   "    if (ulp > worst) worst = ulp;\n  }\n"
                   '  printf("%g %g %g %g %g\\n", worst, el_log(0.0f), el_log(-1.0f), el_log(INFINITY), el_log(NAN));\n'
                   "  return 0;\n}\n")
    exe = tmp_path / "log"
    res = subprocess.run(["cc", "-std=c99", "-O2", str(src), "-o", str(exe), "-lm"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    worst, zero, neg, inf, nan = (float(v) for v in subprocess.run([str(exe)], capture_output=True, text=True).stdout.split())
    assert worst <= 2 and zero == float("-inf") and np.isnan(neg) and inf == float("inf") and np.isnan(nan)


# -- elementwise fusion (plan._fuse_elementwise) on hand-built plans ---------------------------
def _plan(nodes, shapes: dict, homes: dict | None = None) -> Plan:
    """A plan over float32 tensors name -> (shape, batched); homes: name -> home (default scratch)."""
    tensors = {n: Tensor(n, "float32", s, b, (homes or {}).get(n, "scratch")) for n, (s, b) in shapes.items()}
    for n in nodes:
        if n.op_type == "Reshape":
            tensors[n.output[0]].home, tensors[n.output[0]].alias_of = "alias", n.input[0]
    return Plan("step", nodes, tensors, [], [])


SCAN = {"dt": ((1, 8), True), "A": ((4, 8), False), "h": ((4, 8), True), "bx": ((4, 8), True),
        "a": ((4, 8), True), "e": ((4, 8), True), "m": ((4, 8), True), "logits": ((4, 8), True)}


def _scan_nodes():  # exp(dt * A) * h + bx: Mamba's per-position update
    return [helper.make_node("Mul", ["dt", "A"], ["a"]), helper.make_node("Exp", ["a"], ["e"]),
            helper.make_node("Mul", ["e", "h"], ["m"]), helper.make_node("Add", ["m", "bx"], ["logits"])]


def test_a_chain_over_one_shape_is_one_loop_writing_only_what_is_read_outside():
    plan = _plan(_scan_nodes(), SCAN, {"logits": "logits", "A": "weight"})
    _fuse_elementwise(plan)
    (g,) = plan.nodes
    assert g.op_type == "ElementwiseGroup" and list(g.output) == ["logits"]
    assert list(g.input) == ["dt", "A", "h", "bx"] and len(plan.groups[g.name]) == 4


def test_a_value_read_after_the_run_is_stored_too():
    nodes = [*_scan_nodes(), helper.make_node("MatMul", ["e", "A"], ["y"])]
    plan = _plan(nodes, {**SCAN, "y": ((4, 8), True)}, {"logits": "logits", "A": "weight"})
    _fuse_elementwise(plan)
    assert [n.op_type for n in plan.nodes] == ["ElementwiseGroup", "MatMul"]
    assert list(plan.nodes[0].output) == ["e", "logits"]


def test_a_member_never_reads_another_through_an_alias():
    """Mul -> Reshape (a view of its output) -> Add: the Add cannot join the Mul's loop."""
    nodes = [helper.make_node("Mul", ["x", "x"], ["a"]), helper.make_node("Reshape", ["a", "s"], ["r"]),
             helper.make_node("Add", ["r", "x"], ["logits"])]
    plan = _plan(nodes, {"x": ((8,), True), "s": ((1,), False), "a": ((8,), True), "r": ((8,), True),
                         "logits": ((8,), True)}, {"logits": "logits"})
    _fuse_elementwise(plan)
    assert [n.op_type for n in plan.nodes] == ["Mul", "Reshape", "Add"] and not plan.groups


def test_an_independent_node_moves_ahead_and_a_dependent_one_ends_the_run():
    """dt * u (another shape, independent) runs before the loop that uses it; a MatMul of a
    member's output between members ends the run there."""
    shapes = {**SCAN, "u": ((1, 8), True), "du": ((1, 8), True), "y": ((4, 8), True)}
    nodes = _scan_nodes()
    nodes.insert(2, helper.make_node("Mul", ["dt", "u"], ["du"]))
    nodes[-1] = helper.make_node("Add", ["m", "du"], ["logits"])
    plan = _plan(nodes, shapes, {"logits": "logits", "A": "weight"})
    _fuse_elementwise(plan)
    assert [n.op_type for n in plan.nodes] == ["Mul", "ElementwiseGroup"] and plan.nodes[0].output[0] == "du"
    nodes = _scan_nodes()
    nodes.insert(2, helper.make_node("MatMul", ["e", "A"], ["y"]))
    nodes[-1] = helper.make_node("Add", ["m", "y"], ["logits"])
    plan = _plan(nodes, shapes, {"logits": "logits", "A": "weight"})
    _fuse_elementwise(plan)
    assert [n.op_type for n in plan.nodes] == ["ElementwiseGroup", "MatMul", "ElementwiseGroup"]


def test_a_fused_loop_updates_a_state_in_place_unless_the_old_state_is_read_after_it():
    """c_out = c_in * f + g in one loop: read and written element by element, no scratch copy.
    A matmul of c_in and the loop's a = c_in * f runs after the loop and needs the old state:
    c_out goes to scratch and is copied at the end."""
    from edgelm.export.native.plan import _in_place

    shapes = {x: ((4, 8), True) for x in ("c_in", "f", "g", "a", "c_out", "y")}
    homes = {"c_in": "state_in", "c_out": "state_out"}
    update = [helper.make_node("Mul", ["c_in", "f"], ["a"]), helper.make_node("Add", ["a", "g"], ["c_out"])]
    for later, copies in (([], []), ([helper.make_node("MatMul", ["c_in", "a"], ["y"])], [("c_out.tmp", "c_out")])):
        plan = _plan([*update, *later], shapes, homes)
        plan.state_in, plan.state_out = ["c_in"], ["c_out"]
        _fuse_elementwise(plan)
        _in_place(plan)
        assert plan.nodes[0].op_type == "ElementwiseGroup" and plan.copies == copies


# One stream's state updated in place (edgelm_step / edgelm_prefill: fused loops read and write
# it element by element) against the batch API's separate state buffers: bit for bit.
IN_PLACE_HARNESS = r"""
#include "model.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char **argv) {
    FILE *f = fopen(argv[1], "rb"); fseek(f, 0, SEEK_END); long n = ftell(f); fseek(f, 0, SEEK_SET);
    void *w = malloc(n); if (fread(w, 1, n, f) != (size_t)n) return 1; fclose(f);
    float *a = calloc(EDGELM_STATE_FLOATS, 4), *b[2] = {calloc(EDGELM_STATE_FLOATS, 4), calloc(EDGELM_STATE_FLOATS, 4)};
    float la[256], lb[256], *pin[EDGELM_STATE_TENSORS], *pout[EDGELM_STATE_TENSORS];
    void *scratch = malloc(edgelm_scratch_bytes(1));
    edgelm_id_t ids[EDGELM_PREFILL_CHUNK];
    uint8_t bytes[EDGELM_PREFILL_CHUNK];
    for (int i = 0; i < 150; i++) {
        const int chunk = i % 50 == 0; /* a prefill chunk now and then, steps otherwise */
        for (int j = 0; j < EDGELM_PREFILL_CHUNK; j++) bytes[j] = (uint8_t)(ids[j] = 32 + (i * 7 + j * 13) % 90);
        size_t off = 0;
        for (int k = 0; k < EDGELM_STATE_TENSORS; k++) {
            pin[k] = b[i % 2] + off; pout[k] = b[1 - i % 2] + off; off += edgelm_state_numel[k];
        }
        if (chunk) {
            edgelm_prefill(w, a, bytes, EDGELM_PREFILL_CHUNK, la, scratch);
            edgelm_prefill_batch(w, 1, ids, pin, pout, lb, scratch);
        } else {
            edgelm_step(w, a, bytes[0], la, scratch);
            edgelm_step_batch(w, 1, ids, pin, pout, lb, scratch);
        }
        if (memcmp(la, lb, sizeof la) || memcmp(a, b[1 - i % 2], EDGELM_STATE_FLOATS * 4)) { printf("differ %d\n", i); return 0; }
    }
    printf("same\n");
    return 0;
}
"""


@pytest.mark.parametrize("arch", ARCHS)
def test_one_stream_in_place_is_the_batch_api_bit_for_bit(bundle_dir, tmp_path, arch):
    from edgelm.export.native.build import BASE_FLAGS

    d = bundle_dir(arch)
    src, exe = tmp_path / "inplace.c", tmp_path / "inplace"
    src.write_text(IN_PLACE_HARNESS)
    flags = [f for f in BASE_FLAGS if f.startswith(("-std", "-O", "-ffp"))]
    res = subprocess.run(["cc", *flags, "-march=native", "-I", str(d), str(src), str(d / "model.c"), "-o", str(exe),
                          "-lm"], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert subprocess.run([str(exe), str(d / "weights.bin")], capture_output=True, text=True,
                          timeout=120).stdout.strip() == "same"


# -- how each architecture's C runs a prefill chunk -------------------------------------------
def _prefill_shapes(model_c: str) -> list[list[int]]:
    """The shapes of the tensors the compiled prefill graph computes (its per-node comments)."""
    body = model_c[model_c.find("prefill_part0("):]
    return [[int(d) for d in dims.split(", ")] for dims in re.findall(r"/\* \w+ -> \S+ \[([\d, ]+)\]", body)]


@pytest.mark.parametrize("arch", ARCHS)
def test_each_architecture_s_c_runs_its_measured_prefill_form(bundle_dir, arch):
    """NATIVE_PREFILL: LSTM and GRU loop their step; minGRU and RG-LRU compile the bundle's
    prefill graph; Mamba compiles its per-position form, whose tensors are at most one
    position's state (no (C, N, Di)), from a graph export writes and removes. Every fused run
    of elementwise ops is one loop in both graphs."""
    from edgelm.export.fused import fused_form
    from edgelm.runtime.bundle import load_bundle

    d = bundle_dir(arch)
    manifest = load_bundle(d).manifest
    mode, code = fused_form(arch).NATIVE_PREFILL, (d / "model.c").read_text()
    assert ("runs a chunk as its step" in code) == (mode == "step")
    assert "ElementwiseGroup" in code and not any(p.name.endswith("per_position.onnx") for p in d.iterdir())
    if mode == "per_position":
        state = max(int(np.prod(s.shape)) for s in manifest.state)
        shapes = _prefill_shapes(code)
        assert shapes and max(int(np.prod(s)) for s in shapes) < manifest.prefill_chunk * state
        assert max(len(s) for s in shapes) <= 3


@pytest.mark.parametrize("arch", ["mamba", "mingru"])
def test_weights_bin_holds_only_what_the_shipped_graphs_read(bundle_dir, arch):
    """The C's own prefill form shares weights.bin by content and adds nothing to it."""
    import onnx

    d = bundle_dir(arch)
    spans = set()
    for g in ("step.onnx", "prefill.onnx"):
        for t in onnx.load(str(d / g), load_external_data=False).graph.initializer:
            ext = {e.key: e.value for e in t.external_data}
            if ext:
                spans.add((int(ext["offset"]), int(ext["length"])))
    end, used = 0, 0
    for off, n in sorted(spans):
        assert off >= end  # tensors never overlap
        used, end = used + n, off + n
    size = (d / "weights.bin").stat().st_size
    assert end == size and size - used < 64 * len(spans)  # only alignment padding between them
