"""Plain-text tables of device profiles for `edgelm devices`: the hardware, then what runs where."""

from __future__ import annotations

from .coverage import PATHS
from .profile import DeviceProfile

COLUMNS = ("name", "family", "sm", "memory", "bandwidth", "precisions", "TensorRT", "default", "streams")


def _row(p: DeviceProfile) -> tuple[str, ...]:
    return (p.name, p.family, p.compute_capability or "-", f"{p.memory_gib:g} GiB",
            f"{p.memory_bandwidth_gbs:g} GB/s", ",".join(p.precisions),
            ",".join(p.tensorrt_versions) or "-", p.default_precision, str(p.default_max_streams))


def _columns(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_coverage(profiles: list[DeviceProfile]) -> str:
    """Per JetPack line of each Jetson: its software and the runtime paths that work there."""
    rows = [("name", "JetPack", "Ubuntu", "Python", "CUDA", "TensorRT", "runtime paths")]
    notes = []
    for p in profiles:
        for s in p.stacks:
            rows.append((p.name, s.jetpack, s.ubuntu, s.python, s.cuda, s.tensorrt or "-", ", ".join(s.paths)))
            note = f"JetPack {s.jetpack}: {s.note}"
            if s.note and note not in notes:
                notes.append(note)
    legend = [f"  {name}: {what}" for name, what in PATHS.items()]
    return "\n".join(_columns(rows) + [""] + [f"note: {n}" for n in notes] + ["runtime paths:"] + legend)


def format_profiles(profiles: list[DeviceProfile]) -> str:
    lines = _columns([COLUMNS] + [_row(p) for p in profiles])
    lines.append("aliases: jetson -> jetson-orin-nano-8gb, cpu -> this host's CPU, gpu -> the detected GPU")
    if any(p.stacks for p in profiles):
        lines += ["", format_coverage(profiles)]
    return "\n".join(lines)
