"""`edgelm run` end to end, the chat example, and the no-torch import discipline."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime_fixtures import bundle_dir  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
EDGELM = [sys.executable, "-m", "edgelm.cli"]


def run(*args, **kw):
    return subprocess.run([*EDGELM, *map(str, args)], capture_output=True, timeout=120, **kw)


def test_run_streams_text_and_json(bundle_dir):
    b = bundle_dir("lstm")
    a, c = run("run", b, "--prompt", "Hi", "--max-bytes", 40, "--seed", 1), \
        run("run", b, "--prompt", "Hi", "--max-bytes", 40, "--seed", 1)
    assert a.returncode == 0 and a.stdout == c.stdout and a.stdout
    j = run("run", b, "--max-bytes", 10, "--seed", 1, "--json", "--temperature", "0.5", "--top-k", 5)
    lines = [json.loads(x) for x in j.stdout.decode().splitlines()]
    assert j.returncode == 0 and len(lines) == 11 and lines[-1]["done"] and lines[-1]["bytes"] == 10
    assert all(0 <= x["byte"] < 256 and x["ms"] >= 0 for x in lines[:-1])
    many = run("run", b, "--max-bytes", 8, "--seed", 2, "--streams", 3, "--prompt", "")
    assert many.returncode == 0 and many.stdout.count(b"--- stream") == 3


def test_run_accepts_binary_prompt_file(bundle_dir, tmp_path):
    f = tmp_path / "p.bin"
    f.write_bytes(b"\xff\xfe\x00 not utf-8 \xc3")
    res = run("run", bundle_dir("lstm"), "--prompt-file", f, "--max-bytes", 5, "--seed", 0)
    assert res.returncode == 0, res.stderr


@pytest.mark.parametrize("args, message", [
    (["--max-bytes", "-1"], "--max-bytes"), (["--max-bytes", "200000000"], "--max-bytes"),
    (["--streams", "100000"], "--streams"), (["--streams", "0"], "--streams"),
    (["--backend", "tensorrt"], "tensorrt is not installed"), (["--backend", "nope"], "unknown backend"),
    (["--temperature", "-1"], "temperature"), (["--top-p", "0"], "top_p"),
    (["--prompt", "x", "--prompt-file", "y"], "either"), (["--prompt-file", "/no/such"], "does not exist"),
])
def test_bad_input_exits_2_with_one_line(bundle_dir, args, message):
    res = run("run", bundle_dir("lstm"), *args)
    err = res.stderr.decode()
    assert res.returncode == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err and "Traceback" not in err


def test_corrupt_bundle_and_missing_bundle_refused(bundle_dir, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(bundle_dir("lstm"), bad)
    with open(bad / "step.onnx", "r+b") as f:
        f.seek(100)
        f.write(b"\x00\x01\x02")
    for target, msg in ((bad, "corrupted"), (tmp_path / "none", "does not exist")):
        res = run("run", target, "--max-bytes", 1)
        assert res.returncode == 2 and msg in res.stderr.decode() and res.stderr.decode().count("\n") == 1


def test_ctrl_c_stops_cleanly(bundle_dir):
    proc = subprocess.Popen([*EDGELM, "run", str(bundle_dir("lstm")), "--max-bytes", "50000000"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(4)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and b"Traceback" not in err and out


def test_runtime_import_never_imports_torch(bundle_dir):
    code = ("import sys; from edgelm.runtime import Session, Sampling; "
            f"s = Session.open({str(bundle_dir('mamba'))!r}).stream(Sampling(seed=0), 'x'); "
            "out = b''.join(s.generate(5)); import edgelm.runtime.cli_run; "
            "assert 'torch' not in sys.modules, 'torch imported'; print(len(out))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == b"5", res.stderr


def test_chat_example_restores_in_a_new_process(bundle_dir, tmp_path):
    script = ROOT / "examples" / "chat_streams.py"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run([sys.executable, script, bundle_dir("mamba"), tmp_path],
                           capture_output=True, timeout=120, env=env)
    assert first.returncode == 0, first.stderr
    assert (tmp_path / "bob.snapshot").is_file()
    second = subprocess.run([sys.executable, script, bundle_dir("mamba"), tmp_path, "--resume"],
                            capture_output=True, timeout=120, env=env)
    assert second.returncode == 0 and b"uninterrupted run: True" in second.stdout, second.stdout + second.stderr
