"""Ed25519 bundle signatures, for fleets that update devices over the air.

A signature is 64 raw bytes (RFC 8032 Ed25519) over the ASCII message
    edgelm-bundle-id:<bundle_id>
written to BUNDLE/signature.ed25519. The bundle_id covers every byte export wrote (see
runtime/manifest.py), so the signature does too. Keys are PEM files: the private key PKCS#8
(written 0600), the public key SubjectPublicKeyInfo, so `openssl pkeyutl -verify -rawin` checks
them as well. Uses the `cryptography` package (pip install 'edgelm[sign]'), imported only here,
only when a signature is made or required.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import EdgelmError

SIGNATURE_BYTES = 64
_MESSAGE = "edgelm-bundle-id:{}"


def message(bundle_id: str) -> bytes:
    return _MESSAGE.format(bundle_id).encode("ascii")


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise EdgelmError("bundle signatures need the cryptography package: pip install 'edgelm[sign]'") from None
    return serialization, ed25519, InvalidSignature


def keygen(path: str | Path, force: bool = False) -> tuple[Path, Path]:
    """Write a new Ed25519 key pair: PATH (private, mode 0600) and PATH.pub."""
    from ..fileio import atomic_write_bytes, check_writable

    serialization, ed25519, _ = _crypto()
    key, pub = Path(path), Path(f"{path}.pub")
    for p in (key, pub):
        if p.exists() and not force:
            raise EdgelmError(f"{p} already exists; pass --force to replace it, or choose another -o")
        if p.is_dir():
            raise EdgelmError(f"{p} is a directory; pass a file path with -o")
    check_writable(key)  # for real, before anything is written: KEY.pub goes beside KEY
    private = ed25519.Ed25519PrivateKey.generate()
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    public = private.public_key().public_bytes(serialization.Encoding.PEM,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    atomic_write_bytes(key, pem)
    os.chmod(key, 0o600)
    atomic_write_bytes(pub, public)
    return key, pub


def _pem(source, kind: str) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    p = Path(source)
    if not p.is_file():
        raise EdgelmError(f"{kind} key {p} does not exist (or is not a file); make one with `edgelm keygen`")
    return p.read_bytes()[:1 << 16]


def _load(source, kind: str, load, cls):
    """A PEM key of class `cls` read by `load`; one line naming the fix for anything else."""
    try:
        key = load(_pem(source, kind))
    except (ValueError, TypeError) as exc:
        raise EdgelmError(f"{str(source)[:80]} is not a PEM {kind} key ({str(exc)[:80]}); "
                          "use the files `edgelm keygen` writes (KEY, KEY.pub)") from None
    if not isinstance(key, cls):
        raise EdgelmError(f"{str(source)[:80]} is not an Ed25519 {kind} key; use the files `edgelm keygen` writes")
    return key


def load_private_key(source):
    serialization, ed25519, _ = _crypto()
    return _load(source, "private", lambda pem: serialization.load_pem_private_key(pem, password=None),
                 ed25519.Ed25519PrivateKey)


def load_public_key(source):
    """An Ed25519 public key from a PEM file path, PEM bytes, or a key object."""
    serialization, ed25519, _ = _crypto()
    if isinstance(source, ed25519.Ed25519PublicKey):
        return source
    return _load(source, "public", serialization.load_pem_public_key, ed25519.Ed25519PublicKey)


def sign(bundle_id: str, key) -> bytes:
    return load_private_key(key).sign(message(bundle_id))


def verify_signature(signature: bytes, bundle_id: str, trusted_keys, where) -> None:
    """Refuse unless `signature` is a valid signature of bundle_id by one of `trusted_keys`."""
    _, _, invalid = _crypto()
    if isinstance(trusted_keys, (str, bytes, Path)):
        trusted_keys = [trusted_keys]
    keys = [load_public_key(k) for k in trusted_keys]
    if not keys:
        raise EdgelmError("trusted_keys is empty: pass at least one public key, or None to skip signatures")
    if len(signature) != SIGNATURE_BYTES:
        raise EdgelmError(f"{where}/signature.ed25519 is not an Ed25519 signature ({len(signature)} bytes, "
                          f"not {SIGNATURE_BYTES}); sign the bundle again with `edgelm sign`")
    for key in keys:
        try:
            key.verify(signature, message(bundle_id))
            return
        except invalid:
            continue
    raise EdgelmError(f"bundle {where} is not signed by a trusted key (signed with another key, or changed "
                      "after signing); get the bundle its publisher signed, or pass their KEY.pub")
