"""Plain-text table of device profiles for `edgelm devices`."""

from __future__ import annotations

from .profile import DeviceProfile

COLUMNS = ("name", "family", "sm", "memory", "bandwidth", "precisions", "TensorRT", "default", "streams")


def _row(p: DeviceProfile) -> tuple[str, ...]:
    return (p.name, p.family, p.compute_capability or "-", f"{p.memory_gib:g} GiB",
            f"{p.memory_bandwidth_gbs:g} GB/s", ",".join(p.precisions),
            ",".join(p.tensorrt_versions) or "-", p.default_precision, str(p.default_max_streams))


def format_profiles(profiles: list[DeviceProfile]) -> str:
    rows = [COLUMNS] + [_row(p) for p in profiles]
    widths = [max(len(r[i]) for r in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    lines.append("aliases: jetson -> jetson-orin-nano-8gb, cpu -> this host's CPU, gpu -> the detected GPU")
    return "\n".join(lines)
