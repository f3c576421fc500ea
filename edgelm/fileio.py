"""Atomic file and directory writes: readers never see a half-written output.

Every write failure (disk full, file size limit, permissions, read-only mount) becomes a
one-line WriteError naming the output and the fix; outputs are checked for real before work
starts (`check_output_file`, `check_writable`); `write_stdout` does the same for stdout.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import EdgelmError

_FIXES = {errno.ENOSPC: "free disk space or choose another output path",
          errno.EDQUOT: "free disk space (you are over quota) or choose another output path",
          errno.EFBIG: "raise the file size limit (ulimit -f) or choose another output path"}


class WriteError(EdgelmError):
    """Writing `dest` failed with `error` (an OSError); the message names both and the fix."""

    def __init__(self, dest: str | os.PathLike, error: OSError):
        self.dest, self.error = Path(dest), error
        reason = error.strerror or str(error) or type(error).__name__
        fix = _FIXES.get(error.errno, "choose a writable output path")
        super().__init__(f"cannot write {dest} ({reason}); {fix}")


def _nearest_existing(path: Path) -> Path:
    return next((p for p in path.absolute().parents if os.path.lexists(p)), Path("/"))


def check_writable(dest: str | os.PathLike) -> None:
    """Refuse unless a new file can really be created where `dest` will go: in its parent, or in
    the nearest parent that exists (missing ones are made). A probe file is created and removed:
    os.access says yes to root even on /proc or a read-only mount."""
    parent = _nearest_existing(Path(dest))
    if not parent.is_dir():
        raise EdgelmError(f"cannot write {dest}: {parent} is not a directory; choose another output path")
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgelm-probe.", dir=parent)
    except OSError as exc:
        raise WriteError(parent, exc) from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(dest: str | os.PathLike) -> None:
    """Refuse, before any work, an output file path that is a directory or cannot be written."""
    if Path(dest).is_dir():
        raise EdgelmError(f"{dest} is a directory; pass a file path for the output")
    check_writable(dest)


def _temp_beside(dest: Path, make) -> Path:
    """A new temporary file or directory (make = mkstemp or mkdtemp) beside `dest`."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        made = make(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    except OSError as exc:
        raise WriteError(dest, exc) from None
    if isinstance(made, tuple):  # mkstemp: (fd, path)
        os.close(made[0])
        made = made[1]
    return Path(made)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; rename it over `dest` only if the block succeeds."""
    dest = Path(dest)
    tmp_path = _temp_beside(dest, tempfile.mkstemp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
    except OSError as exc:
        raise WriteError(dest, exc) from None
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_bytes(dest: str | os.PathLike, data: bytes) -> None:
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(dest: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(dest, text.encode("utf-8"))


@contextlib.contextmanager
def atomic_dir(dest: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Build a directory in a temporary sibling and swap it into place at the end.

    The caller checks beforehand whether `dest` may be replaced (see `check_output_dir`). A failed
    write inside the block (an OSError, or a WriteError for a file in it) is reported for `dest`.
    """
    dest = Path(dest)
    tmp = _temp_beside(dest, tempfile.mkdtemp)
    try:
        yield tmp
        _swap_in(tmp, dest)
    except WriteError as exc:
        raise WriteError(dest, exc.error) from None
    except OSError as exc:
        raise WriteError(dest, exc) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _swap_in(tmp: Path, dest: Path) -> None:
    if not dest.exists():
        os.replace(tmp, dest)
        return
    old = dest.with_name(f".{dest.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


def _silence_stdout() -> None:
    """After a failed write, point fd 1 at /dev/null: the text still buffered would otherwise fail
    again when Python flushes stdout at exit ("Exception ignored ... flush")."""
    with contextlib.suppress(AttributeError, ValueError, OSError):  # no real fd 1 (e.g. captured)
        fd = sys.stdout.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)


def check_stdout() -> None:
    """Refuse a closed stdout: started with fd 1 closed (`>&-`), Python sets sys.stdout to None."""
    if sys.stdout is None:
        raise EdgelmError("cannot write to stdout (it is closed); run with stdout open, "
                          "e.g. redirected to a file")


def write_stdout(text: str, flush: bool = True) -> None:
    """Write `text` to stdout. A failure is a one-line EdgelmError; BrokenPipeError (the reader
    left, as `| head` does) is re-raised for the caller to stop quietly."""
    check_stdout()
    try:
        sys.stdout.write(text)
        if flush:
            sys.stdout.flush()
    except BrokenPipeError:
        _silence_stdout()
        raise
    except OSError as exc:
        _silence_stdout()
        raise EdgelmError(f"cannot write to stdout ({exc.strerror or exc}); check where the output goes "
                          "(a full disk, a closed or redirected stdout)") from None

