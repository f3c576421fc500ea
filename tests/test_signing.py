"""Signed bundles: a signed bundle runs with its key, and is refused with another key, without a
signature when a key is required, and after any byte of it changes (even by a forger who
recomputes bundle_id). Signatures are real Ed25519 (cryptography), checked by openssl too."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from bundle_tools import cli, copy_bundle, edit_manifest, one_line_error
from runtime_fixtures import bundle_dir  # noqa: F401
from edgelm.errors import EdgelmError
from edgelm.runtime import GREEDY, Session, load_bundle, sign_bundle
from edgelm.runtime.signing import keygen, message



@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    root = tmp_path_factory.mktemp("keys")
    return {"a": keygen(root / "a"), "b": keygen(root / "b")}


@pytest.fixture(scope="module")
def signed(keys, bundle_dir, tmp_path_factory):
    out = copy_bundle(bundle_dir("gru"), tmp_path_factory.mktemp("signed") / "b")
    sign_bundle(out, keys["a"][0])
    return out


@pytest.fixture
def b(signed, tmp_path):
    return copy_bundle(signed, tmp_path / "b")


def test_keygen_writes_a_private_and_a_public_key(keys, tmp_path):
    key, pub = keys["a"]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key.read_bytes() and b"PUBLIC KEY" in pub.read_bytes()
    with pytest.raises(EdgelmError, match="already exists; pass --force"):
        keygen(key)


def test_signed_bundle_runs_with_its_key(b, keys):
    pub = keys["a"][1]
    assert (b / "signature.ed25519").stat().st_size == 64
    assert (b / "signature.ed25519").stat().st_mode & 0o777 == 0o644  # public, like the other bundle files
    with Session.open(b, trusted_keys=[pub]) as sess:
        assert len(b"".join(sess.stream(GREEDY, prompt=b"x").generate(5))) == 5
    with Session.open(b, trusted_keys=[keys["b"][1], pub.read_bytes()]) as sess:  # any trusted key will do
        assert sess.bundle.bundle_id


def test_refused_with_another_key(b, keys):
    with pytest.raises(EdgelmError, match="not signed by a trusted key"):
        Session.open(b, trusted_keys=[keys["b"][1]])


def test_refused_unsigned_when_a_key_is_required(b, keys):
    (b / "signature.ed25519").unlink()
    Session.open(b).close()  # no key asked for: integrity only
    with pytest.raises(EdgelmError, match="is not signed .*edgelm sign"):
        Session.open(b, trusted_keys=[keys["a"][1]])


def test_refused_after_any_byte_changes(b, keys):
    pub = keys["a"][1]
    # device-built artifacts (the native library and its `built` record) are outside the signed
    # id by design, and never loaded by default under trusted keys (test_native checks both)
    edit_manifest(b, lambda m: m["built"].clear(), reseal=False)
    (b / "model.so").unlink(missing_ok=True)
    names = sorted(p.name for p in b.iterdir())
    assert {"manifest.json", "step.onnx", "prefill.onnx", "weights.bin", "signature.ed25519"} <= set(names)
    for name in names:
        data = (b / name).read_bytes()
        for i in sorted({0, len(data) // 2, len(data) - 1}):
            (b / name).write_bytes(data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:])
            with pytest.raises(EdgelmError):
                Session.open(b, trusted_keys=[pub])
        (b / name).write_bytes(data)
    Session.open(b, trusted_keys=[pub]).close()


def test_a_forger_who_reseals_the_id_still_fails(b, keys):
    edit_manifest(b, lambda m: m.update(max_streams=4096))  # valid id, new content
    load_bundle(b)
    with pytest.raises(EdgelmError, match="not signed by a trusted key"):
        load_bundle(b, trusted_keys=[keys["a"][1]])


def test_signature_survives_building_on_the_device(b, keys):
    from test_bundle_trust import _build

    _build(b)
    load_bundle(b, trusted_keys=[keys["a"][1]])


def test_openssl_verifies_the_signature(b, keys, tmp_path):
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (an interoperability check, not the verifier)")
    msg = tmp_path / "msg"
    msg.write_bytes(message(load_bundle(b).bundle_id))
    res = subprocess.run([openssl, "pkeyutl", "-verify", "-pubin", "-inkey", str(keys["a"][1]), "-rawin",
                          "-in", str(msg), "-sigfile", str(b / "signature.ed25519")], capture_output=True, text=True)
    assert res.returncode == 0 and "Verified Successfully" in res.stdout, res.stdout + res.stderr


def test_bad_keys_are_one_line(b, keys, tmp_path):
    (tmp_path / "junk.pub").write_text("not a key")
    for key, match in ((tmp_path / "junk.pub", "not a PEM public key"), (tmp_path / "none.pub", "does not exist"),
                       (keys["a"][0], "not a PEM public key")):
        with pytest.raises(EdgelmError, match=match):
            load_bundle(b, trusted_keys=[key])
    with pytest.raises(EdgelmError, match="trusted_keys is empty"):
        load_bundle(b, trusted_keys=[])
    (b / "signature.ed25519").write_bytes(b"short")
    with pytest.raises(EdgelmError, match="not an Ed25519 signature"):
        load_bundle(b, trusted_keys=[keys["a"][1]])


def test_cli_keygen_sign_run(capsys, made_unsigned, tmp_path):
    key = tmp_path / "k"
    code, out, _ = cli(capsys, "keygen", "-o", key)
    assert code == 0 and key.is_file() and Path(f"{key}.pub").is_file()
    code, out, err = cli(capsys, "run", made_unsigned, "--max-bytes", 4, "--seed", 0, "--trusted-key", f"{key}.pub")
    assert one_line_error(code, err, "is not signed"), err
    code, out, _ = cli(capsys, "sign", made_unsigned, "--key", key)
    assert code == 0 and "signature.ed25519" in out
    code, out, err = cli(capsys, "run", made_unsigned, "--max-bytes", 4, "--seed", 0, "--trusted-key", f"{key}.pub")
    assert code == 0 and out, err
    other = tmp_path / "other"
    cli(capsys, "keygen", "-o", other)
    code, out, err = cli(capsys, "run", made_unsigned, "--max-bytes", 4, "--trusted-key", f"{other}.pub")
    assert one_line_error(code, err, "not signed by a trusted key") and out == "", err
    code, out, err = cli(capsys, "keygen", "-o", key)
    assert one_line_error(code, err, "already exists"), err


@pytest.fixture
def made_unsigned(signed, tmp_path):
    b = copy_bundle(signed, tmp_path / "unsigned")
    (b / "signature.ed25519").unlink()
    return b
