"""The manifest reader's contract, field by field: what it accepts at each bound, what it refuses
just past it, and the exact field path each refusal names. Plus: writing then reading gives back
the same Manifest, and the file is written for people to read."""

from __future__ import annotations

import copy
import hashlib
import json
import re

import pytest

from edgelm.errors import EdgelmError
from edgelm.runtime import manifest as fmt
from edgelm.runtime.manifest import Artifact, GraphSpec, Manifest, StateTensor, graph_io, state_io

HEX = {c: c * 64 for c in "0123456789abcdef"}
WHERE = "b/manifest.json"


def _state(shapes) -> tuple[StateTensor, ...]:
    return tuple(StateTensor(f"{i}.h", *state_io(f"{i}.h"), shape) for i, shape in enumerate(shapes))


def manifest(shapes=((128,), (4, 3)), chunk=8, built=True) -> Manifest:
    state = _state(shapes)
    graphs = {"step": GraphSpec("step.onnx", 23, *graph_io(state), None, ("weights.bin",)),
              "prefill": GraphSpec("prefill.onnx", 737, *graph_io(state, chunk), chunk, ("weights.bin",))}
    m = Manifest(arch="lstm", config={"d_hidden": 128}, params=1000, precision="fp16", opset=17, max_streams=8,
                 target={"name": "cpu-x86"}, state=state, graphs=graphs,
                 files={"step.onnx": HEX["0"], "prefill.onnx": HEX["1"], "weights.bin": HEX["2"],
                        "build_engine.sh": HEX["3"]},
                 validation={"atol": 5e-4, "max_abs_logit_diff": 1.5e-6}, memory={"weights_bytes": 4000},
                 edgelm_version="0.1.0")
    if built:
        m = m.with_built([Artifact("engine.plan", HEX["4"], 4, "tensorrt-engine", "step", HEX["5"],
                                   {"tensorrt_version": "10.3"})])
    return m.sealed()


def read(raw: dict) -> Manifest:
    return fmt.from_dict(json.loads(json.dumps(raw)), WHERE)


def refused(raw: dict, field: str) -> str:
    with pytest.raises(EdgelmError) as exc:
        read(raw)
    msg = str(exc.value)
    assert msg.startswith(f"{WHERE}: field {field} ") and msg.endswith("; re-export the bundle"), msg
    return msg


def test_write_then_read_gives_the_same_manifest(tmp_path):
    m = manifest()
    written = fmt.write(tmp_path, m)
    assert written == m and written.bundle_id == fmt.compute_id(m.to_dict())
    text = (tmp_path / "manifest.json").read_text()
    again = fmt.from_dict(fmt.parse_json(text.encode(), WHERE), WHERE)
    assert again == m and again.built["engine.plan"].info == {"tensorrt_version": "10.3"}
    assert again.prefill_chunk == 8 and again.state_bytes_per_stream() == 4 * (128 + 12)
    assert text.startswith('{\n  "format": "edgelm-bundle",\n  "format_version": 2,') and text.endswith("}\n")


def test_the_id_ignores_built_and_itself_but_nothing_else():
    raw = manifest().to_dict()
    base = fmt.compute_id(raw)
    assert fmt.compute_id({**raw, "built": {}, "bundle_id": "x"}) == base
    for key, value in (("max_streams", 9), ("validation", {}), ("edgelm_version", "0.1.1"), ("target", {"name": "h100"})):
        assert fmt.compute_id({**raw, key: value}) != base, key


def test_a_manifest_with_nan_cannot_be_written():
    m = manifest()
    bad = Manifest(**{**m.__dict__, "validation": {"max_abs_logit_diff": float("nan")}})
    with pytest.raises(ValueError):
        bad.dumps()


def _set(raw: dict, path: str, value):
    raw = copy.deepcopy(raw)
    *parents, last = re.findall(r"[^.\[\]]+", path)
    node = raw
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[int(last) if isinstance(node, list) else last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return raw


_DELETE = object()

# path, a value accepted at the bound, a value refused just past it
BOUNDS = [
    ("params", 0, -1), ("params", 1 << 40, (1 << 40) + 1),
    ("opset", 7, 6), ("opset", 30, 31),
    ("max_streams", 1, 0), ("max_streams", 1 << 16, (1 << 16) + 1),
    ("vocab", 256, 255),
    ("graphs.step.nodes", 1, 0), ("graphs.step.nodes", 1 << 24, (1 << 24) + 1),
]


@pytest.mark.parametrize("path,ok,bad", BOUNDS)
def test_integer_bounds(path, ok, bad):
    raw = manifest().to_dict()
    assert read(_set(raw, path, ok))
    msg = refused(_set(raw, path, bad), path)
    assert "must be an integer in" in msg
    refused(_set(raw, path, True), path)  # a bool is not an integer
    refused(_set(raw, path, float(ok)), path)


@pytest.mark.parametrize("chunk,ok", [(1, True), (256, True), (0, False), (257, False)])
def test_chunk_bounds(chunk, ok):
    m = manifest(chunk=chunk) if ok else None
    raw = manifest().to_dict()
    if ok:
        assert read(m.to_dict()).prefill_chunk == chunk
    else:
        refused(_set(raw, "graphs.prefill.chunk", chunk), "graphs.prefill.chunk")


def test_state_bounds():
    assert read(manifest(shapes=((1 << 20,), (1, 1, 1, 1))).to_dict())
    refused(_set(manifest().to_dict(), "state[0].shape", [(1 << 20) + 1]), r"state[0].shape")
    refused(_set(manifest().to_dict(), "state[0].shape", [0]), r"state[0].shape")
    refused(_set(manifest().to_dict(), "state[0].shape", [1, 1, 1, 1, 1]), r"state[0].shape")
    assert read(manifest(shapes=[(1,)] * 4096).to_dict())
    refused(manifest(shapes=[(1,)] * 4097).to_dict(), "state")
    assert read(manifest(shapes=((1 << 20, 64), (1 << 20, 64), (1 << 20, 64), (1 << 20, 64))).to_dict())  # 1 GiB
    msg = refused(manifest(shapes=((1 << 20, 64),) * 4 + ((1,),)).to_dict(), "state")
    assert "more than 1024 MiB per stream" in msg
    refused(_set(manifest().to_dict(), "state", []), "state")
    refused(_set(manifest().to_dict(), "state[1].name", "0.h"), "state[1].input")  # IO names follow the name
    twice = _set(_set(_set(manifest().to_dict(), "state[1].name", "0.h"), "state[1].input", "state_in.0.h"),
                 "state[1].output", "state_out.0.h")
    assert refused(twice, "state") == f"{WHERE}: field state names a state tensor twice; re-export the bundle"


@pytest.mark.parametrize("path,value,field", [
    ("arch", "LSTM", "arch"), ("arch", "", "arch"), ("arch", 5, "arch"),
    ("precision", "fp64", "precision"), ("edgelm_version", "", "edgelm_version"),
    ("config", [], "config"), ("validation", "ok", "validation"), ("memory", None, "memory"),
    ("target", {}, "target.name"), ("target", "cpu", "target"),
    ("state[0].name", "bad name", "state[0].name"), ("state[0].output", "state_out.x", "state[0].input"),
    ("state[0].dtype", "float16", "state[0].dtype"), ("state[0].extra", 1, "state[0].extra"),
    ("graphs.step.file", "other.onnx", "graphs.step.file"), ("graphs.step.data", ["other.bin"], "graphs.step.data"),
    ("graphs.step.data", ["weights.bin"] * 9, "graphs.step.data"), ("graphs.step.data", [""], "graphs.step.data"),
    ("graphs.step.chunk", 8, "graphs.step.chunk"), ("graphs.step.extra", 1, "graphs.step.extra"),
    ("graphs.step.inputs", [], "graphs.step.inputs"), ("graphs.step.inputs[0].extra", 1, "graphs.step.inputs[0].extra"),
    ("graphs.step.inputs[0].name", "ids", "graphs.step.inputs"),
    ("graphs.step.inputs[0].dtype", "int16", "graphs.step.inputs"),
    ("graphs.step.inputs[0].shape", ["batch", 1], "graphs.step.inputs"),
    ("graphs.step.outputs[0].shape", "batch", "graphs.step.outputs[0].shape"),
    ("graphs.extra", {}, "graphs"), ("files.x/../y", HEX["0"], "files"), ("files.manifest.json", HEX["0"], "files"),
    ("files.engine.plan", HEX["0"], "files"), ("files.signature.ed25519", HEX["0"], "files"),
    ("files.step.onnx", HEX["a"].upper(), "files.step.onnx"), ("files.step.onnx", 5, "files.step.onnx"),
    ("built.engine.plan.sha256", "xyz", "built.engine.plan.sha256"),
    ("built.engine.plan.bytes", 0, "built.engine.plan.bytes"),
    ("built.engine.plan.bytes", (1 << 40) + 1, "built.engine.plan.bytes"),
    ("built.engine.plan.kind", "onnx", "built.engine.plan.kind"),
    ("built.engine.plan.graph", "decode", "built.engine.plan.graph"),
    ("built.engine.plan.bundle_id", "x", "built.engine.plan.bundle_id"),
    ("built.engine.plan.info", [], "built.engine.plan.info"),
    ("built.engine.plan.file", "engine.prefill.plan", "built.engine.plan.file"),
    ("built.engine.plan.extra", 1, "built.engine.plan.extra"),
    ("format_version", _DELETE, "format_version"), ("params", _DELETE, "params"),
])
def test_each_field_is_checked_and_named(path, value, field):
    raw = manifest().to_dict()
    if path.startswith("files.") or path.startswith("built.engine.plan"):
        raw = copy.deepcopy(raw)
        section, _, rest = path.partition(".")
        if section == "files":
            raw["files"][rest] = value
        elif rest.count(".") == 1:
            raw["built"]["engine.plan"][rest.split(".")[-1]] = value
        else:
            raw["built"]["engine.plan"][rest.split(".", 2)[-1]] = value
        refused(raw, field)
        return
    refused(_set(raw, path, value), field)


def test_unknown_built_artifacts_are_refused():
    raw = manifest().to_dict()
    raw["built"]["evil.so"] = {**raw["built"]["engine.plan"], "file": "evil.so"}
    assert "is not a file edgelm builds on the device" in refused(raw, "built.evil.so.file")


def test_safe_names():
    for ok in ("step.onnx", "c/model.c", "a-b_c.1"):
        assert fmt.is_safe_name(ok), ok
    assert fmt.is_safe_name("x" * 127 + "/" + "x" * 127) and fmt.is_safe_name("X") and fmt.is_safe_name("x" * 128)
    for bad in ("", "..", ".", "...", "a/...", "a/..", "../x", "/etc/x", "a//b", ".hidden", "a\\b", "x" * 129,
                "x" * 128 + "/" + "x" * 127, 5, None, "a/./b"):
        assert not fmt.is_safe_name(bad), bad


def test_a_graph_without_external_data_reads():
    raw = _set(_set(manifest().to_dict(), "graphs.step.data", []), "graphs.prefill.data", _DELETE)
    m = read(raw)
    assert m.graphs["step"].data == () == m.graphs["prefill"].data


def test_graph_io_list_bounds():
    """A graph's IO list holds 1..4097 tensors of 0..8 dims; within the bounds, the IO must still
    match the state spec (a different refusal)."""
    raw = manifest().to_dict()
    mismatch = "and outputs do not match the manifest's state spec"
    first = raw["graphs"]["step"]["inputs"][0]
    assert mismatch in refused(_set(raw, "graphs.step.inputs", [first]), "graphs.step.inputs")
    for bad in ([], [first] * 4098):
        msg = refused(_set(raw, "graphs.step.inputs", bad), "graphs.step.inputs")
        assert msg == f"{WHERE}: field graphs.step.inputs must be a list of 1..4097 items; re-export the bundle"
    assert mismatch in refused(_set(raw, "graphs.step.inputs", [first] * 4097), "graphs.step.inputs")
    assert mismatch in refused(_set(raw, "graphs.step.inputs[0].shape", []), "graphs.step.inputs")
    assert mismatch in refused(_set(raw, "graphs.step.inputs[0].shape", ["batch"] * 8), "graphs.step.inputs")
    msg = refused(_set(raw, "graphs.step.inputs[0].shape", ["batch"] * 9), "graphs.step.inputs[0].shape")
    assert msg == f"{WHERE}: field graphs.step.inputs[0].shape must be a list of 0..8 items; re-export the bundle"


def test_one_state_tensor_is_enough():
    m = read(manifest(shapes=((4,),)).to_dict())
    assert len(m.state) == 1 and m.state_bytes_per_stream() == 16


@pytest.mark.parametrize("text,why", [
    (b'{"format": NaN}', "NaN is not JSON"), (b'{"format": -Infinity}', "-Infinity is not JSON"),
    (b'{"b": 1, "a": 1, "c": 1, "b": 2, "a": 3}', "duplicate key 'a'"),
    (b'{"b": 1, "a": 1, "b": 2}', "duplicate key 'b'"),
    (b'{"' + b"k" * 200 + b'": 1, "' + b"k" * 200 + b'": 2}', "duplicate key '" + "k" * 105),  # cut at 120
    (b'\xff{}', "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
])
def test_unreadable_json_says_why(text, why):
    with pytest.raises(EdgelmError) as exc:
        fmt.parse_json(text, WHERE)
    assert str(exc.value) == f"{WHERE} is corrupted ({why}); re-export the bundle"


def test_the_id_is_the_sha256_of_the_canonical_utf8_json():
    raw = _set(manifest().to_dict(), "config.note", "caf\u00e9 \u65e5\u672c")  # non-ASCII stays UTF-8, not \\u escapes
    body = {k: v for k, v in raw.items() if k not in ("bundle_id", "built")}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert "café".encode() in canon
    assert fmt.compute_id(raw) == hashlib.sha256(canon).hexdigest()
    with pytest.raises(ValueError):
        fmt.compute_id(_set(raw, "validation.max_abs_logit_diff", float("nan")))


def test_version_refusals_word_for_word():
    raw = manifest().to_dict()
    with pytest.raises(EdgelmError) as exc:
        read({**raw, "format_version": 3})
    assert str(exc.value) == "bundle format 3 is newer than this edgelm reads (2); upgrade edgelm on this device"
    with pytest.raises(EdgelmError) as exc:
        read({**raw, "format_version": 1})
    assert str(exc.value) == ("bundle format 1 predates bundle ids that cover the whole manifest (this edgelm reads "
                              "format 2); re-export the bundle with this edgelm")


def test_graph_refusals_word_for_word():
    raw = manifest().to_dict()
    msg = refused(_set(raw, "graphs.step.chunk", 8), "graphs.step.chunk")
    assert msg == f"{WHERE}: field graphs.step.chunk belongs to the prefill graph only; re-export the bundle"
    msg = refused(_set(raw, "graphs.step.inputs[1].name", "state_in.9.h"), "graphs.step.inputs")
    assert msg == (f"{WHERE}: field graphs.step.inputs and outputs do not match the manifest's state spec (expected "
                   "['byte_ids', 'state_in.0.h', 'state_in.1.h']...); re-export the bundle")


def test_an_artifact_of_one_byte_reads():
    raw = manifest().to_dict()
    raw["built"]["engine.plan"]["bytes"] = 1
    assert read(raw).built["engine.plan"].bytes == 1
