"""The CLI under hostile conditions: odd argv bytes, a failing stdout, signals, full disks,
unwritable or odd outputs, oversized or non-float checkpoints, and usage errors. Each case
gets one line on stderr (`error: ...`), a clean exit code and nothing half-written."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bundle_tools import cli, copy_bundle, one_line_error
from runtime_fixtures import bundle_dir  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "lstm-tiny.pt"
EDGELM = [sys.executable, "-m", "edgelm.cli"]
GiB = 1 << 30


def _popen(*args, **kw):
    return subprocess.Popen([*EDGELM, *map(str, args)], stderr=subprocess.PIPE, **kw)


def _leftovers(parent: Path, name: str) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name == name or p.name.startswith(f".{name}."))


def _assert_one_line(stderr: bytes, *needles: str) -> str:
    lines = stderr.decode(errors="replace").strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- 1. argv bytes that are not UTF-8

def test_run_takes_a_non_utf8_prompt_as_given(bundle_dir, capsys, tmp_path):
    b = bundle_dir("lstm")
    as_file = tmp_path / "p.bin"
    as_file.write_bytes(b"caf\xe9")
    common = ("--max-bytes", 30, "--seed", 4, "--temperature", 0.7)
    # Python hands the argv bytes caf\xe9 to a program as "caf\udce9" (surrogateescape)
    code, out, err = cli(capsys, "run", b, "--prompt", "caf\udce9", *common)
    ref_code, ref, _ = cli(capsys, "run", b, "--prompt-file", as_file, *common)
    assert code == 0 and ref_code == 0, err
    assert out == ref and out


# ---------------------------------------------------------------- 2. a failing stdout

def test_run_to_a_full_stdout_is_one_line(bundle_dir):
    with open("/dev/full", "w") as full:
        proc = _popen("run", bundle_dir("lstm"), "--max-bytes", 200, "--seed", 1, stdout=full)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    _assert_one_line(err, "cannot write to stdout", "No space left on device")


def test_run_with_stdout_closed_is_one_line(bundle_dir):
    proc = _popen("run", bundle_dir("lstm"), "--max-bytes", 20, preexec_fn=lambda: os.close(1))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2
    _assert_one_line(err, "cannot write to stdout", "closed")


@pytest.mark.parametrize("extra", [[], ["--json"]])
def test_run_into_a_closed_pipe_exits_quietly(bundle_dir, extra):
    proc = _popen("run", bundle_dir("lstm"), "--max-bytes", 200_000, "--seed", 1, *extra,
                  stdout=subprocess.PIPE)
    proc.stdout.read(64)
    proc.stdout.close()  # the reader leaves, as `| head -c 64` does
    err = proc.stderr.read()
    assert proc.wait(timeout=60) == 0 and err == b"", err


# ---------------------------------------------------------------- 3. Ctrl-C with several streams

def test_ctrl_c_with_streams_prints_what_was_generated(bundle_dir):
    proc = _popen("run", bundle_dir("lstm"), "--max-bytes", 50_000_000, "--streams", 4, "--seed", 2,
                  stdout=subprocess.PIPE)
    time.sleep(3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and b"Traceback" not in err, err
    text = out.decode("utf-8", "replace")
    heads = [text.find(f"--- stream {i} ---\n") for i in range(4)]
    assert all(h >= 0 for h in heads) and heads == sorted(heads), text[:500]
    bodies = [text[a + 15:b] for a, b in zip(heads, heads[1:] + [len(text)])]
    assert all(len(body.strip()) > 10 for body in bodies), bodies


# ---------------------------------------------------------------- 4. export's output

def test_export_to_an_unwritable_place_is_refused_before_work(capsys, monkeypatch):
    import edgelm.checkpoint

    monkeypatch.setattr(edgelm.checkpoint, "load_model", lambda *a: pytest.fail("work started"))
    code, _, err = cli(capsys, "export", MODEL, "-o", "/proc/edgelm-bundle")
    assert one_line_error(code, err, "cannot write"), err
    assert not Path("/proc/edgelm-bundle").exists()


def test_export_under_a_file_is_refused(capsys, tmp_path):
    (tmp_path / "afile").write_text("x")
    code, _, err = cli(capsys, "export", MODEL, "-o", tmp_path / "afile" / "b")
    assert one_line_error(code, err, "not a directory"), err


def test_export_on_a_full_disk_leaves_nothing(tmp_path):
    def small_files():  # CPython ignores SIGXFSZ: a write past the limit raises OSError(EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "b"
    proc = _popen("export", MODEL, "-o", out, preexec_fn=small_files)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2
    _assert_one_line(err, f"cannot write {out}", "File too large")
    assert _leftovers(tmp_path, "b") == []


@pytest.mark.parametrize("where", [".", "..", "inner/.."])
def test_export_never_replaces_the_current_directory(capsys, tmp_path, monkeypatch, where):
    here = tmp_path / "work" / "here"
    (here / "inner").mkdir(parents=True)
    monkeypatch.chdir(here)
    code, _, err = cli(capsys, "export", MODEL, "-o", where, "--force")
    assert one_line_error(code, err, "current directory"), err
    assert sorted(os.listdir(here)) == ["inner"] and os.listdir(tmp_path / "work") == ["here"]


def test_sigterm_during_export_leaves_nothing(tmp_path):
    out = tmp_path / "b"
    proc = _popen("export", MODEL, "-o", out)
    deadline = time.monotonic() + 60
    while not _leftovers(tmp_path, "b") and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert proc.poll() is None, "export finished before it could be terminated"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM and b"Traceback" not in err, err
    assert _leftovers(tmp_path, "b") == []


# ---------------------------------------------------------------- 5. every output checked before work

def test_train_into_a_directory_is_refused_before_training(capsys, tmp_path, monkeypatch):
    import edgelm.train

    (tmp_path / "c.txt").write_bytes(b"hello world, " * 100)
    monkeypatch.setattr(edgelm.train, "train", lambda *a, **k: pytest.fail("training started"))
    code, _, err = cli(capsys, "train", tmp_path / "c.txt", "--arch", "lstm", "-o", tmp_path)
    assert one_line_error(code, err, "is a directory"), err
    code, _, err = cli(capsys, "train", tmp_path / "c.txt", "--arch", "lstm", "-o", "/proc/m.pt")
    assert one_line_error(code, err, "cannot write"), err


def test_keygen_into_an_unwritable_place_is_one_line(capsys):
    code, _, err = cli(capsys, "keygen", "-o", "/proc/edgelm-key")
    assert one_line_error(code, err, "cannot write"), err


@pytest.fixture(scope="module")
def jetson_bundle(tmp_path_factory):
    """An fp16 Jetson bundle: `edgelm build` builds TensorRT engines for it (and no C: fp16)."""
    from edgelm.export import export_bundle

    out = tmp_path_factory.mktemp("jetson") / "b"
    export_bundle(ROOT / "models" / "lstm-tiny.pt", "jetson-orin-nano-8gb", None, out)
    return out


@pytest.mark.parametrize("command, name", [("sign", "signature.ed25519"), ("build", "model.so"),
                                           ("build-jetson", "engine.plan"), ("build-jetson", "engine.prefill.plan"),
                                           ("build-jetson", "timing.cache")])
def test_sign_and_build_refuse_a_directory_where_they_write_a_file(bundle_dir, jetson_bundle, capsys, tmp_path,
                                                                    command, name):
    src = jetson_bundle if command == "build-jetson" else bundle_dir("lstm")
    command = command.split("-")[0]
    b = copy_bundle(src, tmp_path / "b")
    (b / name).unlink(missing_ok=True)  # the library built at export
    (b / name).mkdir()
    args = ["--key", tmp_path / "key"] if command == "sign" else []
    if command == "sign":
        assert cli(capsys, "keygen", "-o", tmp_path / "key")[0] == 0
    code, _, err = cli(capsys, command, b, *args)
    assert one_line_error(code, err, f"{b / name} is a directory"), err


# ---------------------------------------------------------------- 6, 7. checkpoints checked before they are built

def _edited_checkpoint(path: Path, edit) -> Path:
    payload = torch.load(MODEL, weights_only=True)
    edit(payload)
    torch.save(payload, path)
    return path


def test_config_larger_than_its_tensors_fails_fast_and_small(tmp_path):
    bad = _edited_checkpoint(tmp_path / "big.pt", lambda p: p["config"].update(d_hidden=8000))
    code = ("import json, resource, sys, time\n"
            "from edgelm.cli import main\n"
            "import edgelm.info  # torch: its import time is not what this measures\n"
            f"sys.argv = ['edgelm', 'info', {str(bad)!r}]\n"
            "t0 = time.perf_counter()\n"
            "try:\n    main()\nexcept SystemExit as e:\n    rc = e.code\n"
            "took = time.perf_counter() - t0\n"
            "print(json.dumps({'rc': rc, 's': took, 'rss': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    facts = json.loads(res.stdout.decode().strip().splitlines()[-1])
    _assert_one_line(res.stderr, "does not match the tensors", "head.weight")
    assert facts["rc"] == 2 and facts["s"] < 3.0, facts
    assert facts["rss"] * 1024 < 1 * GiB, facts  # ru_maxrss is in KiB on Linux


def test_integer_weights_are_refused(capsys, tmp_path):
    def to_int64(payload):
        payload["state_dict"] = {k: v.to(torch.int64) for k, v in payload["state_dict"].items()}

    bad = _edited_checkpoint(tmp_path / "int.pt", to_int64)
    code, _, err = cli(capsys, "info", bad)
    assert one_line_error(code, err, "not floating point"), err
    assert "embed.weight" in err and "int64" in err


# ---------------------------------------------------------------- 8. usage errors

@pytest.mark.parametrize("args, needle", [
    (["run", "B", "--max-bytes", "abc"], "--max-bytes"),
    (["run", "B", "--bogus"], "--bogus"),
    (["run"], "Missing argument"),
    (["export", "m.pt"], "--output"),
    (["nosuchcommand"], "nosuchcommand"),
    (["devices", "--bogus"], "--bogus"),
])
def test_usage_errors_are_one_line(capsys, args, needle):
    code, out, err = cli(capsys, *args)
    assert one_line_error(code, err, needle), err
    assert "--help" in err and out == ""


def test_help_and_version_still_work(capsys):
    from edgelm import __version__

    code, out, err = cli(capsys, "--version")
    assert code == 0 and out.strip() == f"edgelm {__version__}" and err == ""
    for args in (["--help"], ["run", "--help"], ["devices", "--help"]):
        code, out, err = cli(capsys, *args)
        assert code == 0 and "Usage" in out and err == "", args
    code, out, err = cli(capsys)  # no arguments: the help, with the exit code click gives it
    assert code in (0, 2) and "Usage" in out + err and "export" in out + err and "error:" not in err
