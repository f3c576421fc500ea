"""Opening a bundle as a hostile file would have it: nothing is believed until it is verified.

`load_bundle(DIR)`:
  1. reads manifest.json (a regular file inside DIR, at most 4 MiB) and checks every field
     (runtime/manifest.py);
  2. recomputes bundle_id over the canonical manifest: an edited field is refused;
  3. hashes every file `files` lists. Each must be a regular file inside DIR: names are plain
     relative paths, and a symlink that resolves outside DIR is refused;
  4. with trusted_keys, verifies signature.ed25519 (Ed25519 over bundle_id) against them.
Afterwards only listed files (and device-built artifacts, against their own recorded hashes) are
ever opened, and `Bundle.read` re-hashes the very bytes it hands to a backend, so a file swapped
after loading is refused too. Every failure is one EdgelmError line naming the fix.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgelmError
from . import manifest as fmt
from .manifest import Artifact, Manifest, StateTensor, TensorSpec

_BLOCK = 1 << 20


@dataclass(frozen=True)
class Bundle:
    path: Path  # the bundle directory, resolved
    manifest: Manifest
    signed: bool = False  # opened with trusted keys and its signature verified

    @property
    def bundle_id(self) -> str:
        return self.manifest.bundle_id

    @property
    def arch(self) -> str:
        return self.manifest.arch

    @property
    def max_streams(self) -> int:
        return self.manifest.max_streams

    @property
    def prefill_chunk(self) -> int:
        return self.manifest.prefill_chunk

    @property
    def state(self) -> tuple[StateTensor, ...]:
        return self.manifest.state

    def state_bytes_per_stream(self) -> int:
        return self.manifest.state_bytes_per_stream()

    def has(self, name: str) -> bool:
        return name in self.manifest.files

    def read(self, name: str) -> bytes:
        """A listed file's bytes, hashed again as read: exactly what was verified."""
        if name not in self.manifest.files:
            raise EdgelmError(f"bundle {self.path} does not list {name}; re-export it")
        return _read_verified(self.path, name, self.manifest.files[name])

    def check_io(self, graph: str, inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> None:
        """Refuse a graph (or engine) whose interface (names, shapes, dtypes; in any order) is not
        the one the manifest's state spec implies: another model's graph fails here, before it runs."""
        for kind, want, got in zip(("input", "output"), self.manifest.expected_io(graph), (inputs, outputs)):
            want_by, got_by = {t.name: t for t in want}, {t.name: t for t in got}
            names = [t.name for t in got]
            twice = next((n for n in names if names.count(n) > 1), None)
            if want_by == got_by and twice is None:
                continue
            name = next((n for n in want_by if want_by[n] != got_by.get(n)), None)
            if twice is not None:
                diff = f"it names {kind} {twice} twice"
            elif name is None:
                diff = f"it has {kind}s {sorted(set(got_by) - set(want_by))[:3]} the manifest does not name"
            elif name not in got_by:
                diff = f"it has no {kind} {name}"
            else:
                w, g = want_by[name], got_by[name]
                diff = f"{kind} {name} is {list(g.shape)} {g.dtype}, the manifest says {list(w.shape)} {w.dtype}"
            raise EdgelmError(f"the {graph} graph in {self.path} is not this bundle's ({diff}); re-export the bundle")

    def artifact(self, graph: str) -> Artifact | None:
        """The engine built on the device for `graph`, if there is one."""
        built = self.manifest.built.get(fmt.ENGINES[graph])
        return built if built is not None and (self.path / built.file).is_file() else None

    def native_library(self) -> Artifact | None:
        """The native C library built on the device from this bundle's model.c, if there is one."""
        built = self.manifest.built.get(fmt.NATIVE_LIBRARY)
        return built if built is not None and (self.path / built.file).is_file() else None

    def read_artifact(self, art: Artifact) -> bytes:
        if art.bundle_id != self.bundle_id:
            raise EdgelmError(f"{art.file} was built from another bundle ({art.bundle_id[:12]}...); "
                              f"run `edgelm build {self.path}` again on this device")
        return _read_verified(self.path, art.file, art.sha256)


def load_bundle(path: str | Path, trusted_keys=None) -> Bundle:
    """Verify a bundle directory (see the module docstring) and return it."""
    root = _root(path)
    where = str(Path(path) / fmt.MANIFEST)
    data = read_inside(root, fmt.MANIFEST, fmt.MAX_MANIFEST_BYTES, what="manifest")
    raw = fmt.parse_json(data, where)
    fmt.check_version(raw, where)
    if fmt.compute_id(raw) != raw.get("bundle_id"):
        raise EdgelmError(f"{where} was changed after export (its bundle_id does not match its content); "
                          "restore the original bundle or re-export it")
    manifest = fmt.from_dict(raw, where)
    for name, digest in manifest.files.items():
        _hash_check(root, name, digest)
    if trusted_keys is not None:
        from .signing import verify_signature

        signature = read_inside(root, fmt.SIGNATURE, 1024, what="signature", missing=_unsigned(root))
        verify_signature(signature, manifest.bundle_id, trusted_keys, root)
    return Bundle(root, manifest, trusted_keys is not None)


def sign_bundle(path: str | Path, key: str | Path) -> Path:
    """Write BUNDLE/signature.ed25519: an Ed25519 signature over the (verified) bundle_id."""
    from ..fileio import atomic_write_bytes, check_output_file
    from .signing import sign

    bundle = load_bundle(path)
    out = bundle.path / fmt.SIGNATURE
    check_output_file(out)
    atomic_write_bytes(out, sign(bundle.bundle_id, key))
    os.chmod(out, 0o644)
    return out


def sha256_file(path: str | Path) -> str:
    with open(path, "rb") as f:
        return _sha256(f)


def _sha256(f) -> str:
    h = hashlib.sha256()
    while chunk := f.read(_BLOCK):
        h.update(chunk)
    return h.hexdigest()


def read_inside(root: Path, name: str, limit: int, what: str = "file", missing: str | None = None) -> bytes:
    """The bytes of regular file `name` inside `root` (at most `limit` bytes)."""
    fd = _open_inside(root, name, missing)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise EdgelmError(f"{root / name} is larger than any edgelm {what} ({limit:,} bytes); "
                          "it is not from edgelm: re-export the bundle")
    return data


def _root(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise EdgelmError(f"bundle {p} does not exist or is not a directory; create one with `edgelm export`")
    if not (p / fmt.MANIFEST).exists():
        raise EdgelmError(f"{p} has no {fmt.MANIFEST}: not an edgelm bundle; create one with `edgelm export`")
    return Path(os.path.realpath(p))


def _unsigned(root: Path) -> str:
    return (f"bundle {root} is not signed ({fmt.SIGNATURE} is missing) but a trusted key is required; "
            f"sign it with `edgelm sign {root} --key KEY`")


def _open_inside(root: Path, name: str, missing: str | None = None) -> int:
    """A read-only descriptor of regular file `name`, which must resolve to a path inside `root`."""
    if not fmt.is_safe_name(name):
        raise EdgelmError(f"bundle {root} names {name[:80]!r}, which is not a plain file name inside it; "
                          "re-export the bundle")
    real = os.path.realpath(root / name)
    if os.path.commonpath([real, str(root)]) != str(root):
        raise EdgelmError(f"bundle file {root / name} is a link that leads out of the bundle; "
                          "replace it with the file itself (copy the bundle with `cp -rL`)")
    try:
        st = os.stat(real)
        if not stat.S_ISREG(st.st_mode):
            raise EdgelmError(f"bundle file {root / name} is not a regular file; copy the whole bundle again")
        fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise EdgelmError(missing or f"bundle file {root / name} is missing; copy the whole bundle "
                          "directory again") from None
    except OSError as exc:
        raise EdgelmError(f"cannot read bundle file {root / name} ({exc.strerror}); check its permissions") from None
    fst = os.fstat(fd)
    if (fst.st_dev, fst.st_ino) != (st.st_dev, st.st_ino):
        os.close(fd)
        raise EdgelmError(f"bundle file {root / name} changed while it was being opened; open the bundle again")
    return fd


def _hash_check(root: Path, name: str, expected: str) -> None:
    with os.fdopen(_open_inside(root, name), "rb") as f:
        if _sha256(f) != expected:
            raise _corrupted(root, name)


def _read_verified(root: Path, name: str, expected: str) -> bytes:
    with os.fdopen(_open_inside(root, name), "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != expected:
        raise _corrupted(root, name)
    return data


def _corrupted(root: Path, name: str) -> EdgelmError:
    return EdgelmError(f"bundle file {root / name} is corrupted or truncated (its sha256 is not the one "
                       "the manifest lists); copy or re-export the bundle")
