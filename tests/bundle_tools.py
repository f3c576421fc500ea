"""Test helpers: tamper with a bundle the way a hostile file would, and run the real CLI in-process."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

from edgelm.runtime.manifest import compute_id


def copy_bundle(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def edit_manifest(bundle: Path, edit, reseal: bool = True) -> dict:
    """Apply edit(raw_manifest_dict) in place; with reseal, recompute bundle_id as a forger would."""
    path = bundle / "manifest.json"
    raw = json.loads(path.read_text())
    edit(raw)
    if reseal and isinstance(raw, dict):
        raw["bundle_id"] = compute_id(raw)
    path.write_text(json.dumps(raw, indent=2))
    return raw


def replace_file(bundle: Path, name: str, data: bytes) -> None:
    """Swap a listed file's bytes and update its sha256 (then reseal the manifest)."""
    (bundle / name).write_bytes(data)
    edit_manifest(bundle, lambda m: m["files"].__setitem__(name, hashlib.sha256(data).hexdigest()))


def exit_code(*args) -> int:
    """`edgelm ARGS` through edgelm.cli.main in this process: its exit code."""
    from edgelm.cli import main

    argv = sys.argv
    sys.argv = ["edgelm", *map(str, args)]
    try:
        main()
        return 0
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = argv


def cli(capsys, *args) -> tuple[int, str, str]:
    """`edgelm ARGS` through edgelm.cli.main in this process: (exit code, stdout, stderr)."""
    code = exit_code(*args)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_error(code: int, err: str, match: str) -> bool:
    lines = err.strip().splitlines()
    return code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and match in lines[0]
