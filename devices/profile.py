"""DeviceProfile: what edgelm knows about a deployment target (standard library only)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..precision import NAMES as PRECISIONS  # the precision rules' one owner
from ..precision import requestable
from .coverage import PATHS, SoftwareStack, paths_of, stack_problems

FAMILIES = ("jetson", "gpu", "cpu")
# GPU architecture by compute capability (https://developer.nvidia.com/cuda-gpus); a major alone
# names every minor of it. Thor is sm 11.0 under CUDA 13 (10.1 before).
ARCHITECTURES = {"5": "Maxwell", "6": "Pascal", "7.0": "Volta", "7.2": "Volta", "7.5": "Turing",
                 "8.0": "Ampere", "8.6": "Ampere", "8.7": "Ampere", "8.9": "Ada", "9": "Hopper",
                 "10": "Blackwell", "11": "Blackwell", "12": "Blackwell"}


OPTIONAL = {"native_cflags", "runtime_paths", "stacks"}  # fields a bundle's older target may lack


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    family: str  # "jetson" | "gpu" | "cpu"
    description: str
    compute_capability: str | None  # "8.7"; None for CPUs
    memory_gib: float  # device memory (shared with the OS on a Jetson)
    app_memory_fraction: float  # share of memory_gib one edgelm app may plan for
    memory_bandwidth_gbs: float
    peak_fp16_tflops: float
    peak_int8_tops: float  # 0 if the device has no INT8 tensor cores
    precisions: tuple[str, ...]
    dla_cores: int
    jetpack: str | None
    tensorrt_versions: tuple[str, ...]  # TensorRT the device's stack ships; () for CPUs
    default_precision: str  # "fp32" | "fp16"
    default_max_streams: int
    builder_optimization_level: int  # TensorRT builder optimization level, 0-5
    sources: tuple[str, ...]
    # C compiler flags for the native C target on this device's CPU ("-march=native": the host's own)
    native_cflags: tuple[str, ...] = ()
    # The runtime paths that work here (devices/coverage.py: PATHS); a Jetson's follow from its stacks
    runtime_paths: tuple[str, ...] = ()
    # The JetPack lines a Jetson runs: Ubuntu, Python, CUDA, TensorRT and the paths each allows
    stacks: tuple[SoftwareStack, ...] = ()

    @property
    def app_memory_bytes(self) -> int:
        return int(self.memory_gib * self.app_memory_fraction * (1 << 30))

    @property
    def tensorrt_major(self) -> int | None:
        majors = [int(v.split(".")[0]) for v in self.tensorrt_versions]
        return max(majors) if majors else None

    @property
    def architecture(self) -> str | None:
        """The GPU architecture ("Ampere"); None for CPUs and unknown compute capabilities."""
        cc = self.compute_capability
        return None if cc is None else ARCHITECTURES.get(cc, ARCHITECTURES.get(cc.split(".")[0]))

    @property
    def tensorrt_8(self) -> bool:
        """True where some TensorRT the target ships is 8.x: no INT64 type, no strong typing."""
        return any(int(v.split(".")[0]) < 9 for v in self.tensorrt_versions)

    @property
    def byte_ids_dtype(self) -> str:
        """The graphs' byte-id type: TensorRT 8 has no INT64 (an int64 input becomes an INT32
        binding or fails to parse), so its targets get int32; every other target int64."""
        return "int32" if self.tensorrt_8 else "int64"

    def supports(self, precision: str) -> bool:
        return precision in self.precisions

    def to_dict(self) -> dict:
        d = asdict(self)
        for key in ("precisions", "tensorrt_versions", "sources", "native_cflags", "runtime_paths"):
            d[key] = list(d[key])
        d["stacks"] = [s.to_dict() for s in self.stacks]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DeviceProfile":
        """Build a profile from to_dict() output (e.g. a bundle manifest's "target")."""
        names = {f.name for f in fields(cls)}
        missing = names - d.keys() - OPTIONAL  # older bundles' targets lack the newer fields
        if missing:
            raise ValueError(f"device profile lacks {', '.join(sorted(missing))}")
        kw = {k: d[k] for k in names if k in d}
        for key in ("precisions", "tensorrt_versions", "sources", "native_cflags", "runtime_paths"):
            kw[key] = tuple(kw.get(key, ()))
        kw["stacks"] = tuple(SoftwareStack.from_dict(s) for s in kw.get("stacks", ()))
        if kw["stacks"] and not kw["runtime_paths"]:
            kw["runtime_paths"] = paths_of(kw["stacks"])
        return cls(**kw)


def check_profile(p: DeviceProfile) -> list[str]:
    """Problems with a profile's values (empty when sane)."""
    problems = []
    if p.family not in FAMILIES:
        problems.append(f"family {p.family!r} not in {FAMILIES}")
    if (p.compute_capability is None) != (p.family == "cpu"):
        problems.append("compute_capability must be set for GPUs and None for CPUs")
    if not 0 < p.app_memory_fraction <= 1:
        problems.append("app_memory_fraction must be in (0, 1]")
    if not set(p.precisions) <= set(PRECISIONS) or p.default_precision not in p.precisions:
        problems.append(f"precisions {p.precisions} / default {p.default_precision} invalid")
    if p.default_precision not in requestable():
        problems.append(f"default_precision must be one --precision can ask for: {', '.join(requestable())}")
    if not 0 <= p.builder_optimization_level <= 5 or p.default_max_streams < 1:
        problems.append("builder_optimization_level must be 0-5 and default_max_streams >= 1")
    if p.memory_gib <= 0 or p.memory_bandwidth_gbs <= 0 or not p.sources:
        problems.append("memory, bandwidth and sources must be given")
    return problems + _coverage_problems(p)


def _coverage_problems(p: DeviceProfile) -> list[str]:
    """A Jetson lists its JetPack stacks and its paths are theirs; every profile names known paths."""
    problems = [f"unknown runtime path {r!r} (known: {', '.join(PATHS)})" for r in p.runtime_paths if r not in PATHS]
    if not p.runtime_paths:
        problems.append("runtime_paths must name the runtime paths that work on the device")
    if p.family == "jetson" and not p.stacks:
        problems.append("a Jetson profile lists the JetPack stacks it runs (stacks)")
    if p.stacks and p.runtime_paths != paths_of(p.stacks):
        problems.append(f"runtime_paths {list(p.runtime_paths)} are not its stacks' {list(paths_of(p.stacks))}")
    if not p.tensorrt_versions and any(r in ("tensorrt", "trtexec") for r in p.runtime_paths):
        problems.append("the tensorrt and trtexec paths need TensorRT (tensorrt_versions)")
    for stack in p.stacks:
        problems += stack_problems(stack, p.tensorrt_versions)
    return problems
