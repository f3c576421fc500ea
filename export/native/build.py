"""Compile a bundle's model.c into its native library (model.so) on the device, and the plain
build_native.sh that does the same with nothing but a C compiler (a JetPack 4.6 Nano has no
Python that runs edgelm).

    cc -std=c99 -O3 <profile's native_cflags> -fPIC -shared -o model.so model.c -lm

The library is a device-built artifact, like a TensorRT engine: recorded in the manifest's
`built` section with its sha256 and the bundle it came from, outside bundle_id, and loaded by the
native backend only from bytes that match that hash.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

from ...errors import EdgelmError
from ...fileio import atomic_write_bytes, check_output_file
from ...runtime import manifest as fmt
from ...runtime.manifest import Artifact

# -ffp-contract=fast: ISO C modes leave a * b + c unfused in GCC; fused multiply-adds take
# lstm-tiny's 64-stream step from 470 to 453 us (x86, measured) and change no result past the atol
BASE_FLAGS = ("-std=c99", "-O3", "-ffp-contract=fast", "-fPIC", "-shared")
SCRIPT = """#!/bin/sh
# Written by edgelm export: builds {lib} from model.c with a C compiler only (no Python needed).
# Target {target}; CC and CFLAGS override the compiler and the target flags:
#   CC=aarch64-linux-gnu-gcc ./build_native.sh
set -e
cd "$(dirname "$0")"
${{CC:-cc}} {base} ${{CFLAGS:-{flags}}} -o {lib} model.c -lm
echo "built $(pwd)/{lib}"
"""


def compiler() -> str | None:
    """The C compiler: $CC, else cc, gcc or clang on PATH."""
    for name in ([os.environ["CC"]] if os.environ.get("CC") else ["cc", "gcc", "clang"]):
        found = shutil.which(shlex.split(name)[0]) if name.strip() else None
        if found:
            return name
    return None


def cflags(profile) -> list[str]:
    return list(profile.native_cflags)


def build_script(profile) -> str:
    return SCRIPT.format(lib=fmt.NATIVE_LIBRARY, target=profile.name, base=" ".join(BASE_FLAGS),
                         flags=" ".join(cflags(profile)))


def compile_library(source_dir: Path, out: Path, flags: list[str], cc: str | None = None) -> str:
    """cc model.c (in source_dir) -> out; returns the compiler's version line. One-line errors."""
    cc = cc or compiler()
    if cc is None:
        raise EdgelmError("no C compiler found (cc, gcc or clang); install one (Debian/Ubuntu: apt-get install "
                          "gcc) or set CC, then run `edgelm build` again")
    cmd = [*shlex.split(cc), *BASE_FLAGS, *flags, "-o", str(out), str(source_dir / "model.c"), "-lm"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    if run.returncode != 0:
        first = next((line for line in run.stderr.splitlines() if "error" in line), run.stderr.strip()[:200])
        raise EdgelmError(f"{shlex.split(cc)[0]} could not compile {source_dir / 'model.c'}: {first}")
    version = subprocess.run([*shlex.split(cc), "--version"], capture_output=True, text=True).stdout
    return (version.splitlines() or ["unknown compiler"])[0]


def library_artifact(bundle_id: str, data: bytes, cc_version: str, flags: list[str]) -> Artifact:
    from ...runtime.backends.native import host_id

    info = {"compiler": cc_version, "flags": [*BASE_FLAGS, *flags], "machine": platform.machine(),
            "graphs": list(fmt.GRAPHS)}
    if any(f.endswith("=native") for f in flags):  # this CPU's instruction set: runs here only
        info["host"] = host_id()
    return Artifact(fmt.NATIVE_LIBRARY, hashlib.sha256(data).hexdigest(), len(data), "native-library", "step",
                    bundle_id, info)


def build_native(bundle_dir: str | Path) -> Artifact:
    """Compile the bundle's model.c on this machine, write model.so and record it in the manifest."""
    from ...devices.profile import DeviceProfile
    from ...runtime.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    if "model.c" not in bundle.manifest.files:
        from . import unsupported

        why = unsupported(bundle.manifest.precision) or "it was exported before the native C target"
        raise EdgelmError(f"{bundle.path} carries no C source: {why}; re-export it as fp32 or int8")
    for name in (fmt.NATIVE_LIBRARY, fmt.MANIFEST):
        check_output_file(bundle.path / name)
    flags = cflags(DeviceProfile.from_dict(bundle.manifest.target))
    with tempfile.TemporaryDirectory() as tmp:  # compile the verified sources, never the files on disk
        for name in fmt.NATIVE_SOURCES:
            (Path(tmp) / name).write_bytes(bundle.read(name))
        version = compile_library(Path(tmp), Path(tmp) / fmt.NATIVE_LIBRARY, flags)
        data = (Path(tmp) / fmt.NATIVE_LIBRARY).read_bytes()
    art = library_artifact(bundle.bundle_id, data, version, flags)
    atomic_write_bytes(bundle.path / art.file, data)
    fmt.write(bundle.path, bundle.manifest.with_built([art]))
    return record_timing(bundle.path)


TIMING_ROUNDS, TIMING_STEPS = 5, 200


def record_timing(bundle_dir: Path) -> Artifact:
    """Time one stream's step on the native library and on ONNX Runtime, interleaved (median of
    TIMING_ROUNDS rounds of TIMING_STEPS steps), and record it in the library's artifact: the
    runtime's backend="auto" takes the native backend only where it was the faster here."""
    import dataclasses
    import time

    from ...runtime.backends import open_backend
    from ...runtime.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    art = bundle.native_library()
    backends = {name: open_backend(name, bundle, "cpu", 1) for name in ("native", "onnxruntime")}
    times: dict[str, list[float]] = {name: [] for name in backends}
    try:
        for _ in range(TIMING_ROUNDS):
            for name, be in backends.items():
                t0 = time.perf_counter()
                for i in range(TIMING_STEPS):
                    be.step_one(i & 255)
                times[name].append((time.perf_counter() - t0) / TIMING_STEPS * 1e6)
    finally:
        for be in backends.values():
            be.close()
    timing = {f"{name}_us": round(float(sorted(t)[len(t) // 2]), 2) for name, t in times.items()}
    art = dataclasses.replace(art, info={**art.info, "timing": {**timing, "streams": 1, "method": "step_one, median"}})
    fmt.write(bundle.path, bundle.manifest.with_built([art]))
    return art
