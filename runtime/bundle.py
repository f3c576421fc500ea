"""Deployment bundles: reading and verifying `manifest.json` (numpy-free, torch-free).

A bundle is a directory written by `edgelm export`; docs/bundle-format.md describes it.
Loading verifies the format version and the sha256 of every listed file, and says precisely
what is wrong, so a device app never runs a half-copied or tampered model.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgelmError

FORMAT = "edgelm-bundle"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"


def state_io(name: str) -> tuple[str, str]:
    """Graph input and output names of state tensor `name`: ("state_in.0.h", "state_out.0.h")."""
    return f"state_in.{name}", f"state_out.{name}"


def sha256_file(path: str | Path, block: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class StateTensor:
    """One recurrent state tensor: per-stream shape (batch dim excluded) and graph IO names."""

    name: str  # e.g. "0.h"
    input: str  # "state_in.0.h"
    output: str  # "state_out.0.h"
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name, e.g. "float32"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    state: tuple[StateTensor, ...]

    @property
    def bundle_id(self) -> str:
        return self.manifest["bundle_id"]

    @property
    def arch(self) -> str:
        return self.manifest["arch"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def max_streams(self) -> int:
        return int(self.manifest["max_streams"])

    @property
    def prefill_chunk(self) -> int:
        return int(self.manifest["graphs"]["prefill"]["chunk"])

    def graph_path(self, graph: str) -> Path:
        return self.path / self.manifest["graphs"][graph]["file"]

    def file(self, name: str) -> Path | None:
        """Path of an optional bundle file (e.g. "model.pt", "engine.plan") if it is listed."""
        return self.path / name if name in self.manifest["files"] else None

    def state_bytes_per_stream(self) -> int:
        import numpy as np  # numpy is a core dependency; kept out of module import time

        return sum(s.numel * np.dtype(s.dtype).itemsize for s in self.state)


def _read_manifest(path: Path) -> dict:
    mpath = path / MANIFEST
    if not path.is_dir():
        raise EdgelmError(f"bundle {path} does not exist or is not a directory; create one with `edgelm export`")
    if not mpath.is_file():
        raise EdgelmError(f"{path} has no {MANIFEST}: not an edgelm bundle; create one with `edgelm export`")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgelmError(f"{mpath} is corrupted ({exc}); re-export the bundle") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise EdgelmError(f"{mpath} is not an edgelm bundle manifest; re-export the bundle")
    version = manifest.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise EdgelmError(f"bundle format {version} is newer than this edgelm reads ({FORMAT_VERSION}); "
                          "upgrade edgelm on this device")
    return manifest


def _verify_files(path: Path, manifest: dict) -> None:
    for name, expected in manifest.get("files", {}).items():
        fpath = path / name
        if not fpath.is_file():
            raise EdgelmError(f"bundle file {fpath} is missing; copy the whole bundle directory again")
        actual = sha256_file(fpath)
        if actual != expected:
            raise EdgelmError(f"bundle file {fpath} is corrupted or truncated (sha256 {actual[:12]}..., "
                              f"manifest says {expected[:12]}...); copy or re-export the bundle")


def load_bundle(path: str | Path, verify: bool = True) -> Bundle:
    """Read a bundle's manifest; with verify, check every file's sha256 first."""
    path = Path(path)
    manifest = _read_manifest(path)
    if verify:
        _verify_files(path, manifest)
    try:
        state = tuple(StateTensor(s["name"], s["input"], s["output"], tuple(s["shape"]), s["dtype"])
                      for s in manifest["state"])
        for key in ("bundle_id", "arch", "precision", "max_streams", "graphs"):
            manifest[key]
    except (KeyError, TypeError) as exc:
        raise EdgelmError(f"{path / MANIFEST} lacks field {exc}; re-export the bundle") from exc
    return Bundle(path=path, manifest=manifest, state=state)
