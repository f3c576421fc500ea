"""A bundle is trusted only through its verified hashes: every hostile case of the bundle-format
issue is refused with one line before any graph runs. Bundles come from the committed trained
models; "resealed" means the forger also recomputed bundle_id, so a deeper check must refuse."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bundle_tools import cli, copy_bundle, edit_manifest, one_line_error, replace_file
from runtime_fixtures import bundle_dir  # noqa: F401
from edgelm.errors import EdgelmError
from edgelm.runtime import GREEDY, Session, load_bundle
from edgelm.runtime import manifest as fmt
from edgelm.runtime.backends.ort import OrtBackend
from edgelm.runtime.manifest import Artifact



@pytest.fixture(scope="module")
def made(bundle_dir):
    """The shared runtime bundles of the committed trained models (tests work on copies)."""
    return {arch: bundle_dir(arch) for arch in ("lstm", "gru")}


@pytest.fixture
def b(made, tmp_path):
    return copy_bundle(made["lstm"], tmp_path / "b")


@pytest.fixture
def ran(monkeypatch):
    """Every graph execution of the ONNX Runtime backend, recorded."""
    calls: list[str] = []
    real = OrtBackend._run

    def spy(self, graph, batch):
        calls.append(graph)
        return real(self, graph, batch)
    monkeypatch.setattr(OrtBackend, "_run", spy)
    return calls


def refused(bundle: Path, ran: list, match: str, **kw) -> str:
    with pytest.raises(EdgelmError) as exc:
        Session.open(bundle, **kw).close()
    msg = str(exc.value)
    assert "\n" not in msg and re.search(match, msg), msg
    assert ran == [], "a graph ran before the bundle was refused"
    return msg


# -- the manifest is authenticated by bundle_id --------------------------------------------
@pytest.mark.parametrize("edit", [
    lambda m: m.update(max_streams=1000),
    lambda m: m["state"][0].update(shape=[64]),
    lambda m: m["graphs"]["prefill"].update(chunk=7),
    lambda m: m["validation"].update(max_abs_logit_diff=0.0),
    lambda m: m.update(edgelm_version="9.9"),
])
def test_any_edited_field_is_refused(b, ran, edit):
    edit_manifest(b, edit, reseal=False)
    refused(b, ran, "changed after export")


def test_snapshot_does_not_restore_into_a_resealed_copy(b, ran, tmp_path):
    with Session.open(b) as sess:
        blob = sess.stream(GREEDY, prompt=b"hello").snapshot()
    forged = copy_bundle(b, tmp_path / "forged")
    edit_manifest(forged, lambda m: m.update(max_streams=1000))
    with Session.open(forged, max_streams=2) as sess:
        assert sess.bundle.bundle_id != load_bundle(b).bundle_id
        with pytest.raises(EdgelmError, match="not to this bundle"):
            sess.restore(blob)


def test_every_byte_of_the_manifest_is_covered(b):
    # `built` (libraries and engines built on the device) is outside bundle_id by design: each
    # artifact is checked against its own record when it is used (test_a_tampered_..._is_refused)
    edit_manifest(b, lambda m: m["built"].clear())
    data = (b / "manifest.json").read_bytes()
    for i in range(len(data)):
        (b / "manifest.json").write_bytes(data[:i] + bytes([data[i] ^ 1]) + data[i + 1:])
        with pytest.raises(EdgelmError):
            load_bundle(b)
    (b / "manifest.json").write_bytes(data)
    load_bundle(b)


@pytest.mark.parametrize("name", ["step.onnx", "prefill.onnx", "weights.bin", "build_engine.sh"])
def test_a_changed_byte_of_any_listed_file_is_refused(b, name):
    data = (b / name).read_bytes()
    for i in sorted({0, len(data) // 3, len(data) // 2, len(data) - 1}):
        (b / name).write_bytes(data[:i] + bytes([data[i] ^ 0x80]) + data[i + 1:])
        with pytest.raises(EdgelmError, match=f"{name} is corrupted or truncated"):
            load_bundle(b)
    (b / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(EdgelmError, match="corrupted or truncated"):
        load_bundle(b)
    (b / name).unlink()
    with pytest.raises(EdgelmError, match=f"{name} is missing"):
        load_bundle(b)


# -- files: only listed ones, only inside ----------------------------------------------------
@pytest.mark.parametrize("path", ["../other/step.onnx", "/tmp/other/step.onnx"])
def test_graph_outside_the_bundle(b, ran, path):
    def edit(m):
        m["files"][path] = m["files"]["step.onnx"]
        m["graphs"]["step"]["file"] = path
    edit_manifest(b, edit)
    refused(b, ran, "not a plain file name inside the bundle")


def test_unlisted_graph_is_refused(b, ran):
    (b / "evil.onnx").write_bytes((b / "step.onnx").read_bytes())
    edit_manifest(b, lambda m: m["graphs"]["step"].update(file="evil.onnx"))
    refused(b, ran, "`files` does not list")
    edit_manifest(b, lambda m: (m["graphs"]["step"].update(file="step.onnx"), m["files"].pop("step.onnx")))
    refused(b, ran, "`files` does not list")


@pytest.mark.parametrize("name", ["../../../../etc/hostname", "/etc/hostname", "a/../../x", ".."])
def test_files_keys_outside_are_never_opened(b, ran, name):
    edit_manifest(b, lambda m: m["files"].__setitem__(name, "0" * 64))
    msg = refused(b, ran, "not a plain file name inside the bundle")
    assert not re.search(r"[0-9a-f]{12}", msg.replace(str(b), "")), "the error prints a hash"


def test_symlink_out_of_the_bundle(b, ran):
    target = Path("/etc/passwd")
    (b / "step.onnx").unlink()
    os.symlink(target, b / "step.onnx")
    edit_manifest(b, lambda m: m["files"].__setitem__("step.onnx", hashlib.sha256(target.read_bytes()).hexdigest()))
    refused(b, ran, "link that leads out of the bundle")


def test_symlink_inside_the_bundle_is_followed(b):
    os.rename(b / "weights.bin", b / "weights.real")
    os.symlink("weights.real", b / "weights.bin")
    load_bundle(b)


def test_a_fifo_is_not_read(b, ran):
    (b / "build_engine.sh").unlink()
    os.mkfifo(b / "build_engine.sh")
    refused(b, ran, "not a regular file")


def test_only_listed_files_are_opened(b):
    """Run a session under an audit hook: Python opens only manifest.json and listed files."""
    (b / "unlisted.onnx").write_bytes(b"never read")
    root = os.path.realpath(b)
    code = (f"import sys; seen = set(); root = {root!r}\n"
            "sys.addaudithook(lambda ev, a: seen.add(str(a[0])) if ev == 'open' and str(a[0]).startswith(root) "
            "else None)\n"
            "from edgelm.runtime import Session, GREEDY\n"
            f"s = Session.open({str(b)!r}); b''.join(s.stream(GREEDY, prompt=b'abc').generate(3)); s.close()\n"
            "print('\\n'.join(sorted(p[len(root) + 1:] for p in seen)))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    opened = set(res.stdout.split())
    m = json.loads((b / "manifest.json").read_text())
    listed, built = set(m["files"]), set(m["built"])  # built: the native library, hash-checked
    assert "manifest.json" in opened and opened <= listed | built | {"manifest.json"}, opened


# -- malformed manifests: one line, naming the field ---------------------------------------
@pytest.mark.parametrize("edit,match", [
    (lambda m: m["graphs"]["prefill"].update(chunk=0), r"graphs.prefill.chunk must be an integer in 1..256"),
    (lambda m: m["graphs"]["prefill"].update(chunk=-3), r"graphs.prefill.chunk"),
    (lambda m: m["graphs"]["prefill"].update(chunk=7), r"graphs.prefill.inputs and outputs do not match"),
    (lambda m: m.update(files=list(m["files"])), r"field files must be a JSON object"),
    (lambda m: m.update(graphs="step.onnx"), r"field graphs must be a JSON object"),
    (lambda m: m.update(max_streams="abc"), r"field max_streams must be an integer"),
    (lambda m: m.update(max_streams=True), r"field max_streams must be an integer"),
    (lambda m: m["state"][0].update(shape=[-5]), r"state\[0\].shape must hold integers"),
    (lambda m: m["state"][0].update(shape=[1e9]), r"state\[0\].shape must hold integers"),
    (lambda m: m["state"][0].update(shape=[1_000_000_000]), r"state\[0\].shape must hold integers"),
    (lambda m: m["state"][0].update(shape=[]), r"state\[0\].shape must be a list of 1..4"),
    (lambda m: m["state"][0].update(input="state_in.9.h"), r"state\[0\].input and output must be"),
    (lambda m: m["state"][0].update(dtype="bogus"), r"state\[0\].dtype must be one of float32"),
    (lambda m: m.update(format_version=0), r"format_version must be a positive integer"),
    (lambda m: m.update(format_version="1"), r"format_version must be a positive integer"),
    (lambda m: m.update(format_version=1), r"format 1 predates .* re-export"),
    (lambda m: m.update(format_version=3), r"format 3 is newer than this edgelm reads \(2\)"),
    (lambda m: m.update(surprise=1), r"field surprise is not a field of bundle format 2"),
    (lambda m: m.pop("state"), r"field state is missing"),
    (lambda m: m["graphs"].pop("prefill"), r"graphs must hold exactly step and prefill"),
    (lambda m: m["files"].update({"step.onnx": "abc"}), r"files.step.onnx must be a sha256"),
    (lambda m: m.update(precision="fp64"), r"field precision must be one of"),
])
def test_malformed_manifest_names_the_field(b, ran, edit, match):
    edit_manifest(b, edit)
    refused(b, ran, match)


def test_manifest_that_is_not_json(b, ran):
    (b / "manifest.json").write_text('{"format": "edgelm-bundle", "max_streams": NaN}')
    refused(b, ran, "manifest.json is corrupted")
    (b / "manifest.json").write_text('{"format": "edgelm-bundle", "format": "edgelm-bundle"}')
    refused(b, ran, "duplicate key")
    (b / "manifest.json").write_text("[1, 2]")
    refused(b, ran, "not an edgelm bundle manifest")
    (b / "manifest.json").write_bytes(b" " * (fmt.MAX_MANIFEST_BYTES + 1))
    refused(b, ran, "larger than any edgelm manifest")


# -- graphs that are not this bundle's ------------------------------------------------------
def test_a_truncated_graph_with_its_hash_updated(b, ran):
    replace_file(b, "step.onnx", (b / "step.onnx").read_bytes()[:1000])
    refused(b, ran, "step.onnx .* cannot be loaded by onnxruntime")


def test_another_architectures_graph(made, b, ran):
    gru = made["gru"]
    for name in ("step.onnx", "weights.bin"):
        replace_file(b, name, (gru / name).read_bytes())
    refused(b, ran, r"the step graph in .* is not this bundle's \(.*state_in")


def test_another_graph_against_this_bundles_weights(made, b, ran):
    replace_file(b, "prefill.onnx", (made["gru"] / "prefill.onnx").read_bytes())
    refused(b, ran, "prefill graph|prefill.onnx")


def test_chunk_changed_with_its_interface(b, ran):
    chunk = load_bundle(b).prefill_chunk  # what the graph really takes

    def edit(m):
        m["graphs"]["prefill"]["chunk"] = 3
        m["graphs"]["prefill"]["inputs"][0]["shape"] = ["batch", 3]
    edit_manifest(b, edit)
    refused(b, ran, rf"input byte_ids is \['batch', {chunk}\] int64, the manifest says \['batch', 3\]")


# -- max_streams binds engines only ---------------------------------------------------------
def test_onnxruntime_may_open_more_streams_than_max_streams(b):
    with Session.open(b, max_streams=20) as sess:
        streams = [sess.stream(GREEDY, prompt=b"x") for _ in range(20)]
        assert len({s.slot for s in streams}) == 20 and sess.bundle.max_streams == 8


# -- artifacts built on the device ----------------------------------------------------------
def _build(bundle: Path, plan: bytes = b"PLAN", bundle_id: str | None = None) -> list[Artifact]:
    """What `edgelm build` records, without TensorRT: engine files + the manifest's built section."""
    loaded = load_bundle(bundle)
    arts = []
    for graph, name in fmt.ENGINES.items():
        (bundle / name).write_bytes(plan)
        arts.append(Artifact(name, hashlib.sha256(plan).hexdigest(), len(plan), "tensorrt-engine", graph,
                             bundle_id or loaded.bundle_id, {"tensorrt_version": "10.3"}))
    fmt.write(bundle, loaded.manifest.with_built(arts))
    return arts


def test_building_on_the_device_keeps_the_id_and_snapshots(b):
    with Session.open(b) as sess:
        before, blob = sess.bundle.bundle_id, sess.stream(GREEDY, prompt=b"abc").snapshot()
    _build(b)
    bundle = load_bundle(b)
    assert bundle.bundle_id == before and set(bundle.manifest.built) == {*fmt.ENGINES.values(), fmt.NATIVE_LIBRARY}
    assert bundle.read_artifact(bundle.artifact("step")) == b"PLAN"
    with Session.open(b, backend="onnxruntime") as sess:
        sess.restore(blob)


def test_a_tampered_or_foreign_engine_is_refused(b):
    _build(b)
    (b / "engine.plan").write_bytes(b"EVIL")
    bundle = load_bundle(b)  # the engine is checked when it is used
    with pytest.raises(EdgelmError, match="engine.plan is corrupted"):
        bundle.read_artifact(bundle.artifact("step"))
    _build(b, bundle_id="0" * 64)
    bundle = load_bundle(b)
    with pytest.raises(EdgelmError, match="built from another bundle"):
        bundle.read_artifact(bundle.artifact("step"))


def test_built_section_names_only_engines(b, ran):
    _build(b)
    edit_manifest(b, lambda m: m["built"].update({"evil.so": {**m["built"]["engine.plan"], "file": "evil.so"}}),
                  reseal=False)
    refused(b, ran, "built.evil.so.file .* is not a file edgelm builds on the device")


# -- the command line ------------------------------------------------------------------------
@pytest.mark.parametrize("edit,reseal,match", [
    (lambda m: m.update(max_streams=1000), False, "changed after export"),
    (lambda m: m["state"][0].update(shape=[-5]), True, "state[0].shape"),
    (lambda m: m["files"].update({"/etc/hostname": "0" * 64}), True, "not a plain file name"),
])
def test_cli_run_refuses_with_one_line(b, capsys, edit, reseal, match):
    edit_manifest(b, edit, reseal=reseal)
    code, out, err = cli(capsys, "run", b, "--max-bytes", 3)
    assert one_line_error(code, err, match) and out == "", err


# -- every refusal, word for word -----------------------------------------------------------
def _exact(bundle: Path, message: str, **kw) -> None:
    with pytest.raises(EdgelmError) as exc:
        load_bundle(bundle, **kw)
    assert str(exc.value) == message.format(b=bundle.resolve() if "{b}" in message else bundle)


def test_load_refusals_word_for_word(b, tmp_path):
    _exact(tmp_path / "none", f"bundle {tmp_path / 'none'} does not exist or is not a directory; "
                              "create one with `edgelm export`")
    (tmp_path / "empty").mkdir()
    _exact(tmp_path / "empty", f"{tmp_path / 'empty'} has no manifest.json: not an edgelm bundle; "
                               "create one with `edgelm export`")
    data = (b / "weights.bin").read_bytes()
    (b / "weights.bin").write_bytes(data[:-1])
    _exact(b, "bundle file {b}/weights.bin is corrupted or truncated (its sha256 is not the one the manifest "
              "lists); copy or re-export the bundle")
    (b / "weights.bin").unlink()
    _exact(b, "bundle file {b}/weights.bin is missing; copy the whole bundle directory again")
    os.symlink("/etc/hostname", b / "weights.bin")
    _exact(b, "bundle file {b}/weights.bin is a link that leads out of the bundle; replace it with the "
              "file itself (copy the bundle with `cp -rL`)")
    (b / "weights.bin").unlink()
    os.mkfifo(b / "weights.bin")
    _exact(b, "bundle file {b}/weights.bin is not a regular file; copy the whole bundle again")


def test_manifest_refusals_word_for_word(b):
    edit_manifest(b, lambda m: m.update(max_streams=9), reseal=False)
    _exact(b, f"{b}/manifest.json was changed after export (its bundle_id does not match its content); "
              "restore the original bundle or re-export it")
    edit_manifest(b, lambda m: m["files"].update({"../x": "0" * 64}), reseal=True)
    _exact(b, f"{b}/manifest.json: field files lists '../x', which is not a plain file name inside the bundle; "
              "re-export the bundle")
    (b / "manifest.json").write_bytes(b"{" * (fmt.MAX_MANIFEST_BYTES + 1))
    _exact(b, "{b}/manifest.json is larger than any edgelm manifest (4,194,304 bytes); it is not from edgelm: "
              "re-export the bundle")


def test_signature_refusals_word_for_word(b, tmp_path):
    pytest.importorskip("cryptography")
    from edgelm.runtime.signing import keygen

    _, pub = keygen(tmp_path / "k")
    _exact(b, "bundle {b} is not signed (signature.ed25519 is missing) but a trusted key is required; "
              "sign it with `edgelm sign {b} --key KEY`", trusted_keys=[pub])
    assert (b / "signature.ed25519").exists() is False


def test_unlisted_and_foreign_engines_word_for_word(b):
    loaded = load_bundle(b)
    with pytest.raises(EdgelmError) as exc:
        loaded.read("engine.plan")
    assert str(exc.value) == f"bundle {loaded.path} does not list engine.plan; re-export it"
    arts = _build(b, bundle_id="0" * 64)
    with pytest.raises(EdgelmError) as exc:
        load_bundle(b).read_artifact(arts[0])
    assert str(exc.value) == (f"engine.plan was built from another bundle (000000000000...); "
                              f"run `edgelm build {loaded.path}` again on this device")
    assert load_bundle(b).artifact("prefill").file == "engine.prefill.plan"
    (b / "engine.prefill.plan").unlink()
    assert load_bundle(b).artifact("prefill") is None  # recorded but not there: no engine to use


def test_interface_refusals_word_for_word(made):
    """check_io, on the interfaces a graph or an engine reports (any order accepted)."""
    from edgelm.runtime.manifest import TensorSpec

    bundle = load_bundle(made["lstm"])
    ins, outs = bundle.manifest.expected_io("step")
    bundle.check_io("step", ins[::-1], outs[::-1])
    head = f"the step graph in {bundle.path} is not this bundle's ("
    evil = tuple(TensorSpec(f"evil{i}", ("batch",), "int64") for i in range(4))
    s1 = ins[1]
    cases = [
        (ins + evil, outs, "it has inputs ['evil0', 'evil1', 'evil2'] the manifest does not name"),
        (ins[:-1], outs, f"it has no input {ins[-1].name}"),
        (ins[:1] + (TensorSpec(s1.name, s1.shape + (2,), s1.dtype),) + ins[2:], outs,
         f"input {s1.name} is {list(s1.shape) + [2]} {s1.dtype}, the manifest says {list(s1.shape)} {s1.dtype}"),
        (ins, outs + evil[:1], "it has outputs ['evil0'] the manifest does not name"),  # inputs fine: outputs still checked
        (ins, outs[:1] + (TensorSpec(outs[1].name, outs[1].shape, "float16"),) + outs[2:],
         f"output {outs[1].name} is {list(outs[1].shape)} float16, the manifest says {list(outs[1].shape)} float32"),
        (ins[:2] + ins[1:], outs, f"it names input {ins[1].name} twice"),
    ]
    for got_in, got_out, diff in cases:
        with pytest.raises(EdgelmError) as exc:
            bundle.check_io("step", got_in, got_out)
        assert str(exc.value) == f"{head}{diff}); re-export the bundle"


def test_listed_files_and_their_hashes(made, tmp_path):
    from edgelm.runtime.bundle import sha256_file

    bundle = load_bundle(made["lstm"])
    assert bundle.has("weights.bin") and bundle.has("model.pt") and not bundle.has("manifest.json")
    assert not bundle.has("engine.plan")
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 << 20) + b"tail")  # larger than one read block
    assert sha256_file(big) == hashlib.sha256(big.read_bytes()).hexdigest()
    assert sha256_file(made["lstm"] / "weights.bin") == bundle.manifest.files["weights.bin"]


def test_reading_inside_the_bundle_word_for_word(b, monkeypatch):
    from edgelm.runtime import bundle as bmod

    root = load_bundle(b).path
    (root / "exact").write_bytes(b"x" * 100)
    assert bmod.read_inside(root, "exact", 100) == b"x" * 100  # exactly the limit: fine
    with pytest.raises(EdgelmError) as exc:
        bmod.read_inside(root, "exact", 99)
    assert str(exc.value) == (f"{root}/exact is larger than any edgelm file (99 bytes); it is not from edgelm: "
                              "re-export the bundle")
    long = "../" + "x" * 200
    with pytest.raises(EdgelmError) as exc:
        bmod.read_inside(root, long, 10)
    assert str(exc.value) == (f"bundle {root} names {long[:80]!r}, which is not a plain file name inside it; "
                              "re-export the bundle")
    fds = len(os.listdir("/proc/self/fd"))
    real_fstat = os.fstat
    monkeypatch.setattr(bmod.os, "fstat", lambda fd: os.stat_result((0,) * 10))  # another file got swapped in
    with pytest.raises(EdgelmError) as exc:
        bmod.read_inside(root, "exact", 100)
    assert str(exc.value) == f"bundle file {root}/exact changed while it was being opened; open the bundle again"
    monkeypatch.setattr(bmod.os, "fstat", real_fstat)
    assert len(os.listdir("/proc/self/fd")) == fds  # the descriptor was closed

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(bmod.os, "open", denied)
    with pytest.raises(EdgelmError) as exc:
        bmod.read_inside(root, "exact", 100)
    assert str(exc.value) == f"cannot read bundle file {root}/exact (Permission denied); check its permissions"


def test_load_names_the_manifest_and_the_signature(b, tmp_path):
    edit_manifest(b, lambda m: m.update(format_version="2"), reseal=False)
    _exact(b, "{b}/manifest.json: field format_version must be a positive integer; re-export the bundle")


def test_signature_size_and_key_refusals_word_for_word(b, tmp_path):
    pytest.importorskip("cryptography")
    from edgelm.runtime.signing import keygen

    _, pub = keygen(tmp_path / "k")
    root = load_bundle(b).path
    (root / "signature.ed25519").write_bytes(b"s" * 1025)
    _exact(b, "{b}/signature.ed25519 is larger than any edgelm signature (1,024 bytes); it is not from edgelm: "
              "re-export the bundle", trusted_keys=[pub])
    (root / "signature.ed25519").write_bytes(b"s" * 1024)
    _exact(b, "{b}/signature.ed25519 is not an Ed25519 signature (1024 bytes, not 64); sign the bundle again with "
              "`edgelm sign`", trusted_keys=[pub])
    (root / "signature.ed25519").write_bytes(b"s" * 64)
    _exact(b, "bundle {b} is not signed by a trusted key (signed with another key, or changed after signing); get "
              "the bundle its publisher signed, or pass their KEY.pub", trusted_keys=[pub])


def test_a_file_that_becomes_a_link_after_the_check_is_not_followed(b, monkeypatch):
    """The name is resolved, checked, then opened with O_NOFOLLOW: if it became a symlink in
    between (simulated by a resolver that returns the link itself), the open refuses it."""
    from edgelm.runtime import bundle as bmod

    root = load_bundle(b).path
    (root / "link").symlink_to(root / "weights.bin")
    monkeypatch.setattr(bmod.os.path, "realpath", lambda p: str(p))
    with pytest.raises(EdgelmError) as exc:
        bmod.read_inside(root, "link", 1 << 30)
    assert str(exc.value) == (f"cannot read bundle file {root}/link (Too many levels of symbolic links); "
                              "check its permissions")
    assert bmod.read_inside(root, "weights.bin", 1 << 30) == (root / "weights.bin").read_bytes()
