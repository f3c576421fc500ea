"""The oldest dependencies the device side claims to run with: pyproject.toml's lower bounds.

`make install` builds .venv-min from `python tests/min_deps.py` (one `name==lower-bound` line per
core dependency) and tests/test_device_python.py runs the device commands there, so a lower bound
is a version the device side really ran with, not a guess. Pinned from pyproject itself so the
two cannot drift apart.
"""

from __future__ import annotations

import sys
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
MIN_VENV = ROOT / ".venv-min"
# Not edgelm's own requirements, but what a Python 3.8 device gets: typer < 0.2x runs on click,
# whose last release for 3.8 is 8.1.8 (a 3.10+ host's newer click is not what a Xavier runs).
DEVICE_EXTRAS = ["click==8.1.8"]


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def core_requirements() -> list[Requirement]:
    return [Requirement(text) for text in _pyproject()["project"]["dependencies"]]


def lower_bound(req: Requirement) -> str:
    """The version of `req`'s `>=` clause: every core dependency must have one."""
    bounds = [spec.version for spec in req.specifier if spec.operator == ">="]
    if len(bounds) != 1:
        raise SystemExit(f"core dependency {req} needs exactly one >= lower bound (tests/min_deps.py pins it)")
    return bounds[0]


def pins() -> list[str]:
    """name==lower-bound for every core dependency, markers dropped: tomli (Python < 3.11 only) is
    installed on the newer Python here too, so the device profiles are parsed with its oldest release."""
    return [f"{req.name}=={lower_bound(req)}" for req in core_requirements()] + DEVICE_EXTRAS


if __name__ == "__main__":
    sys.stdout.write("\n".join(pins()) + "\n")
