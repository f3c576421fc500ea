"""The test-suite issue's planted bugs: plant each in a throwaway copy of the repo, one at a time,
run the tests that must catch it, and record whether they fail.

    .venv/bin/python bench/planted_bugs.py      # about 3 minutes on 2 cores

Writes bench/results/planted_bugs.json. The copy is laid out as make mutate's workspaces are
(bench/mutation.py: copy_wheel_layout) and its tests import it, so the repo is never touched.
The TensorRT backend's plants live in tests/test_trt_backend.py, run against the TensorRT stand-in.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SRC = Path(__file__).resolve().parents[1]
WORK = Path(tempfile.mkdtemp(prefix="edgelm-plant-"))
OUT = SRC / "bench" / "results" / "planted_bugs.json"
from mutation import LAYOUT, copy_wheel_layout  # noqa: E402  (bench/ is the script's directory)
PLANTS = [
 ("prefill logits never reach the pool", "runtime/session.py",
  "            self.logits_pool[self._resident_idx] = logits\n", "            pass  # planted\n",
  ["tests/test_parity.py", "tests/test_runtime_stream.py"]),
 ("snapshot rounds the state to fp16", "runtime/snapshot.py",
  'parts += [np.ascontiguousarray(s, "<f4").tobytes() for s in states]',
  'parts += [np.ascontiguousarray(np.asarray(s, np.float16), "<f4").tobytes() for s in states]',
  ["tests/test_runtime_stream.py"]),
 ("snapshot zeroes its last state tensor", "runtime/snapshot.py",
  'parts += [np.ascontiguousarray(s, "<f4").tobytes() for s in states]',
  'parts += [np.ascontiguousarray(s if i < len(states) - 1 else 0 * s, "<f4").tobytes() for i, s in enumerate(states)]',
  ["tests/test_runtime_stream.py"]),
 ("sha256 checked only for .onnx files", "runtime/bundle.py",
  "    for name, digest in manifest.files.items():\n        _hash_check(root, name, digest)",
  "    for name, digest in manifest.files.items():\n        if name.endswith('.onnx'):\n            _hash_check(root, name, digest)",
  ["tests/test_bundle_trust.py", "tests/test_bundle.py"]),
 ("a missing listed file ignored", "runtime/bundle.py",
  "def _hash_check(root: Path, name: str, expected: str) -> None:\n",
  "def _hash_check(root: Path, name: str, expected: str) -> None:\n    if not (root / name).exists():\n        return\n",
  ["tests/test_bundle_trust.py", "tests/test_bundle.py"]),
 ("export-time parity figure forced to 0", "export/validate.py",
  '           "max_abs_logit_diff": dl,', '           "max_abs_logit_diff": 0.0,',
  ["tests/test_parity.py"]),
 ("32-byte leak per byte on batch-1 generate", "runtime/session.py",
  "            self._fed[slot] += 1\n            return row",
  "            self._fed[slot] += 1\n            _LEAK.append(bytes(32))\n            return row",
  ["tests/test_runtime_memory.py"]),
 ("int8 size estimate off by 2x per row", "edgelm/info.py",
  "params + 4 * rows", "params + 8 * rows", ["tests/test_train_eval.py"]),
 ("LSTM forget and output gates swapped in the fused form", "export/fused/lstm.py",
  "i, f, o = torch.sigmoid(s)", "i, o, f = torch.sigmoid(s)", ["tests/test_fused_forms.py"]),
]


def fresh() -> dict:
    """A clean copy in the wheel's layout; the environment that makes its tests import it."""
    shutil.rmtree(WORK, ignore_errors=True)
    copy_wheel_layout(WORK)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(WORK / "site"), str(WORK / "src")]))
    env.pop("EDGELM_TEST_BUNDLES", None)
    where = subprocess.run([sys.executable, "-c", "import edgelm.runtime; print(edgelm.runtime.__file__)"],
                           env=env, cwd=WORK, capture_output=True, text=True, check=True).stdout
    assert Path(where.strip()).is_relative_to(WORK), where  # the planted copy, not the repo
    return env


def planted_path(file: str) -> Path:
    top, _, rest = file.partition("/")
    return WORK / "src" / LAYOUT[top] / rest


results = []
for name, file, old, new, tests in PLANTS:
    env = fresh()
    p = planted_path(file)
    text = p.read_text()
    assert text.count(old) == 1, (name, file)
    text = text.replace(old, new)
    if "_LEAK" in new:
        text = text.replace("class Session:", "_LEAK = []\n\n\nclass Session:")
    p.write_text(text)
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests],
                         cwd=WORK, env=env, capture_output=True, text=True, timeout=900)
    tail = [l for l in res.stdout.splitlines() if l.startswith(("FAILED", "ERROR")) or " passed" in l or " failed" in l]
    results.append({"bug": name, "caught": res.returncode != 0, "by": tail[:3]})
    print(json.dumps(results[-1]), flush=True)
shutil.rmtree(WORK, ignore_errors=True)
OUT.write_text(json.dumps(results, indent=1) + "\n")
print(f"{sum(r['caught'] for r in results)}/{len(results)} planted bugs caught -> {OUT.relative_to(SRC)}")
sys.exit(0 if all(r["caught"] for r in results) else 1)
