"""Device profiles and detection (standard library only: safe to import on any device).

    get_profile("jetson")   -> DeviceProfile for jetson-orin-nano-8gb
    list_profiles()         -> every shipped profile (devices/profiles/*.toml)
    detect()                -> {"profile": "cpu-x86", "evidence": "...", ...}
    coverage.PATHS          -> the runtime paths; DeviceProfile.runtime_paths / .stacks say which work where
"""

from .detect import detect, parse_gpu_name, parse_jetson_model, parse_nvidia_smi
from .loader import ALIASES, get_profile, list_profiles, resolve_alias, valid_targets
from .profile import PRECISIONS, DeviceProfile
from .coverage import PATHS as RUNTIME_PATHS
from .table import format_profiles

__all__ = ["ALIASES", "PRECISIONS", "RUNTIME_PATHS", "DeviceProfile", "detect", "format_profiles", "get_profile",
           "list_profiles", "parse_gpu_name", "parse_jetson_model", "parse_nvidia_smi",
           "resolve_alias", "valid_targets"]
