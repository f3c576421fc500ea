"""Which Python each side of edgelm needs: the one owner of those minimums.

The device side (the runtime, device profiles and the commands that run, profile, build, evaluate
and sign a bundle) runs on Python 3.8: JetPack 5 on a Jetson Xavier ships 3.8. The compiler side
(train, quantize, convert, info, export) imports torch and onnx, whose current releases need 3.10+.
Every compiler module calls `require_compiler_python()` before it imports torch or onnx, so
that a 3.8 device gets one line naming the problem and the fix instead of an ImportError or a
SyntaxError from deep inside torch. Standard library only: device-side modules import it.
"""

from __future__ import annotations

import sys

from .errors import EdgelmError

DEVICE_PYTHON = (3, 8)  # pyproject.toml's requires-python
COMPILER_PYTHON = (3, 10)  # torch 2.x and onnx: the `export` extra's python_version marker

# The commands a device-side install runs (edgelm.cli's names): tests/test_device_python.py
# finds the device-side modules by walking these commands' imports.
DEVICE_COMMANDS = ("run", "profile", "devices", "build", "eval", "keygen", "sign")


def dotted(version) -> str:
    """(3, 10) -> "3.10"."""
    return ".".join(str(part) for part in version)


def compiler_side_runs() -> bool:
    """Is this Python new enough for the compiler side? Indexes sys.version_info (not .minor) so
    a test can swap in a plain tuple."""
    return tuple(sys.version_info[:2]) >= COMPILER_PYTHON


def require_compiler_python() -> None:
    """Raise EdgelmError (one line: the problem and the fix) on a Python older than the compiler
    side's minimum."""
    if compiler_side_runs():
        return
    need = dotted(COMPILER_PYTHON)
    raise EdgelmError(
        f"edgelm's compiler side (train, quantize, convert, info, export) needs Python {need}+ "
        f"(torch 2.x, onnx); this is Python {dotted(sys.version_info[:3])}: export on a {need}+ host "
        f"and copy the bundle here, where `edgelm run/profile/build/devices/eval BUNDLE` work")
