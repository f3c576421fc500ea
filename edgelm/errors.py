"""User-facing errors: one line naming the problem and the fix, exit code 2."""

from __future__ import annotations


class EdgelmError(Exception):
    """An error caused by the user's input. The CLI prints it as one line and exits 2."""

    exit_code = 2


class ArgumentError(EdgelmError, TypeError, ValueError):
    """A wrong argument to the Python API (a wrong type or an out-of-range value). The message
    names the argument. It is an EdgelmError, and also a TypeError and a ValueError, so callers
    may catch whichever they expect."""


def require_extra(module: str, extra: str = "export"):
    """Import an optional dependency or fail with the install command that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EdgelmError(
            f"{module} is not installed; install the compiler extra: pip install 'edgelm[{extra}]'"
        ) from exc
