"""Name the device profile of the machine edgelm runs on.

Order: Jetson device tree (NVML and nvidia-smi do not identify an Orin's integrated GPU by model),
then NVML via pynvml, then `nvidia-smi`, then the CPU architecture. The parsers are pure functions
of the text each source gives, so they are tested with real strings.
"""

from __future__ import annotations

import platform
import re
import subprocess
from pathlib import Path

DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
SMI_QUERY = ["nvidia-smi", "--query-gpu=name,compute_cap,memory.total", "--format=csv,noheader"]

# (substring of the upper-cased GPU name, profile), most specific first
GPU_NAMES = [("H200", "h200"), ("H100", "h100"), ("A100", "a100"),
             ("RTX 4090", "rtx-4090"), ("RTX 3060", "rtx-3060")]
# closest profile for an unlisted discrete GPU, by compute capability
GPU_BY_CC = {"9.0": "h100", "8.9": "rtx-4090", "8.6": "rtx-3060", "8.0": "a100"}


def parse_jetson_model(model: str, mem_total_gib: float | None = None) -> str | None:
    """Profile for a /proc/device-tree/model string, e.g. 'NVIDIA Jetson Orin Nano Developer Kit'."""
    m = model.replace("\x00", "").strip().lower().replace("-", " ")
    if "thor" in m:
        return "jetson-thor"
    if "orin" in m:
        if "agx" in m:
            return "jetson-agx-orin"
        if "orin nx" in m:
            return "jetson-orin-nx"
        if "nano" in m:  # the 4GB module reports ~3.4 GiB, the 8GB ~7.4 GiB
            small = mem_total_gib is not None and mem_total_gib < 5.5
            return "jetson-orin-nano-4gb" if small else "jetson-orin-nano-8gb"
        return None
    if "xavier nx" in m:
        return "jetson-xavier-nx"
    if "xavier" in m or m.startswith("jetson agx"):  # early L4T says just 'Jetson-AGX'
        return "jetson-agx-xavier"
    if "jetson nano" in m:
        return "jetson-nano"
    return None


def parse_gpu_name(name: str, compute_cap: str | None = None) -> str | None:
    """Profile for an NVML / nvidia-smi GPU name, e.g. 'NVIDIA H100 80GB HBM3'."""
    upper = name.upper()
    for key, profile in GPU_NAMES:
        if key in upper:
            return profile
    return GPU_BY_CC.get(compute_cap or "")


def parse_nvidia_smi(output: str) -> list[dict]:
    """Rows of `nvidia-smi --query-gpu=name,compute_cap,memory.total --format=csv,noheader`."""
    gpus = []
    for line in output.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 3:
            continue
        mem = re.match(r"(\d+)\s*MiB", parts[2])
        gpus.append({"name": parts[0], "compute_capability": parts[1],
                     "memory_gib": round(int(mem.group(1)) / 1024, 1) if mem else None})
    return gpus


def parse_meminfo_total_gib(meminfo: str) -> float | None:
    m = re.search(r"^MemTotal:\s+(\d+)\s*kB", meminfo, re.MULTILINE)
    return int(m.group(1)) / (1 << 20) if m else None


def parse_cpu_model(cpuinfo: str) -> str | None:
    """CPU model from /proc/cpuinfo ('model name' on x86, 'Model' on a Raspberry Pi)."""
    for key in ("model name", "Model", "Hardware"):
        m = re.search(rf"^{key}\s*:\s*(.+)$", cpuinfo, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return None


def host_cpu_profile(machine: str | None = None) -> str:
    """cpu-arm64 or cpu-x86 for a platform.machine() string (default: this machine)."""
    machine = (machine or platform.machine()).lower()
    return "cpu-arm64" if machine in ("aarch64", "arm64", "armv8l") else "cpu-x86"


def _read(path: str | Path) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def _from_jetson() -> dict | None:
    model = _read(DEVICE_TREE_MODEL)
    if not model:
        return None
    mem = parse_meminfo_total_gib(_read("/proc/meminfo") or "")
    profile = parse_jetson_model(model, mem)
    if profile is None:
        return None
    model = model.replace("\x00", "").strip()
    return {"profile": profile, "family": "jetson", "evidence": f"{DEVICE_TREE_MODEL}: {model!r}",
            "gpu_name": model, "memory_gib": round(mem, 1) if mem else None}


def _nvml_gpus() -> list[dict]:
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
        try:
            handle = pynvml.nvmlDeviceGetHandleByIndex(0)
            name = pynvml.nvmlDeviceGetName(handle)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            total = pynvml.nvmlDeviceGetMemoryInfo(handle).total
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # pynvml raises NVMLError subclasses; any failure means "no answer"
        return []
    name = name.decode() if isinstance(name, bytes) else str(name)
    return [{"name": name, "compute_capability": f"{major}.{minor}", "memory_gib": round(total / (1 << 30), 1)}]


def _smi_gpus() -> list[dict]:
    try:
        res = subprocess.run(SMI_QUERY, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return []
    return parse_nvidia_smi(res.stdout) if res.returncode == 0 else []


def _from_gpu() -> dict | None:
    for source, query in (("NVML", _nvml_gpus), ("nvidia-smi", _smi_gpus)):
        gpus = query()
        if not gpus:
            continue
        gpu = gpus[0]
        profile = parse_gpu_name(gpu["name"], gpu["compute_capability"])
        if profile is None:
            continue
        evidence = f"{source}: {gpu['name']} (sm {gpu['compute_capability']}), {len(gpus)} GPU(s)"
        return {"profile": profile, "family": "gpu", "evidence": evidence, "gpu_name": gpu["name"],
                "compute_capability": gpu["compute_capability"], "memory_gib": gpu["memory_gib"]}
    return None


def _from_cpu() -> dict:
    machine = platform.machine()
    cpu = parse_cpu_model(_read("/proc/cpuinfo") or "") or platform.processor() or "unknown CPU"
    return {"profile": host_cpu_profile(machine), "family": "cpu",
            "evidence": f"no NVIDIA GPU found; platform.machine()={machine!r}, CPU {cpu!r}",
            "machine": machine, "cpu_model": cpu}


def detect() -> dict:
    """{'profile', 'family', 'evidence', ...details} for this machine; never raises."""
    return _from_jetson() or _from_gpu() or _from_cpu()
