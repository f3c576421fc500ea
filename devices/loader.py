"""Load the TOML device profiles shipped in devices/profiles/ and resolve target names."""

from __future__ import annotations

import functools
from pathlib import Path

from ..errors import EdgelmError  # edgelm.errors is standard-library only
from .detect import detect, host_cpu_profile  # detect.py imports nothing from here
from .profile import DeviceProfile, check_profile

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

PROFILE_DIR = Path(__file__).parent / "profiles"

# Family aliases. `jetson` names the most common current developer kit (Orin Nano 8GB);
# `cpu` names the host CPU's profile; `gpu` is whatever detect() finds on this machine.
ALIASES = {"jetson": "jetson-orin-nano-8gb", "cpu": "<host cpu>", "gpu": "<detected gpu>"}


def _profiles_from_file(path: Path) -> list[DeviceProfile]:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    out = []
    for name, d in data.get("profile", {}).items():
        d = {"compute_capability": None, "jetpack": None, **d, "name": name, "family": data["family"]}
        profile = DeviceProfile.from_dict(d)
        problems = check_profile(profile)
        if problems:
            raise ValueError(f"{path.name}: profile {name}: {'; '.join(problems)}")
        out.append(profile)
    return out


@functools.lru_cache(maxsize=1)
def _all_profiles() -> dict[str, DeviceProfile]:
    profiles: dict[str, DeviceProfile] = {}
    for path in sorted(PROFILE_DIR.glob("*.toml")):
        for p in _profiles_from_file(path):
            if p.name in profiles:
                raise ValueError(f"device profile {p.name} is defined twice")
            profiles[p.name] = p
    return profiles


def list_profiles() -> list[DeviceProfile]:
    """Every shipped profile, Jetsons first, then GPUs, then CPUs."""
    order = {"jetson": 0, "gpu": 1, "cpu": 2}
    return sorted(_all_profiles().values(), key=lambda p: order[p.family])


def resolve_alias(name: str) -> str:
    """Map a family alias to a profile name; other names are returned unchanged."""
    name = name.strip().lower()
    if name == "cpu":
        return host_cpu_profile()
    if name == "gpu":
        return _detected_gpu()
    return ALIASES.get(name, name)


def _detected_gpu() -> str:
    found = detect()
    if found["family"] == "cpu":
        raise EdgelmError(f"target 'gpu': no NVIDIA GPU found on this machine ({found['evidence']}); "
                          f"name a target instead: {', '.join(valid_targets())}")
    return found["profile"]


def valid_targets() -> list[str]:
    return [p.name for p in list_profiles()] + list(ALIASES)


def get_profile(name_or_alias: str) -> DeviceProfile:
    """The profile for a name or family alias; unknown names raise EdgelmError listing valid ones."""
    name = resolve_alias(name_or_alias)
    profiles = _all_profiles()
    if name not in profiles:
        raise EdgelmError(f"unknown target {name_or_alias!r}; valid targets: {', '.join(valid_targets())}")
    return profiles[name]
