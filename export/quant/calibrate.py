"""Calibration: stream the fp32 fused form over calibration text and record, at every matmul
input (the sites of export/fused/), per-channel statistics; also at Mamba's SSM output and at
every recurrent state tensor.

Texts (`calibration_texts`): the calibration files, at least MIN_CALIB_BYTES; the held-out text
for BPB is `--data` or else the last HOLDOUT_FRACTION of the calibration text, which is then
not calibrated on. The text is cut into STREAMS contiguous pieces streamed side by side from
the zero state, so a few hundred KB take seconds.

Per site (SiteStats): abs-max of each input channel over every row; H = sum of x x^T over every
row (GPTQ's Hessian, float64); a sample of up to MAX_SAMPLES rows, spread evenly over the text,
for percentiles and for measuring each candidate method's output error.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...errors import EdgelmError

MIN_CALIB_BYTES = 32 * 1024
HOLDOUT_FRACTION = 0.10
STREAMS = 16
MAX_SAMPLES = 4096


@dataclass
class Texts:
    calib: bytes
    heldout: bytes
    heldout_source: str  # "--data FILE" or "last 10% of the calibration text"
    warnings: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)  # the calibration files' names


def _read(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise EdgelmError(f"{what} file {path} does not exist (or is not a file)")
    return path.read_bytes()


def calibration_texts(calib: list[Path], data: Path | None = None) -> Texts:
    """The calibration and held-out bytes, refused in one line when there is too little text."""
    parts = [_read(Path(p), "calibration") for p in calib]
    names = [Path(p).name for p in calib]
    text = b"".join(parts)
    if len(text) < MIN_CALIB_BYTES:
        what = "empty" if not text else f"only {len(text):,} bytes"
        raise EdgelmError(f"calibration text ({', '.join(str(p) for p in calib)}) is {what}; "
                          f"quantization needs at least {MIN_CALIB_BYTES // 1024} KiB "
                          f"(a few hundred KB recommended): pass more or longer --calib files")
    if data is None:
        cut = len(text) - int(len(text) * HOLDOUT_FRACTION)
        return Texts(text[:cut], text[cut:], "last 10% of the calibration text", [], names)
    heldout = _read(Path(data), "data")
    if not heldout:
        raise EdgelmError(f"data file {data} is empty; pass held-out text to measure bits per byte on")
    warnings = []
    digests = {hashlib.sha256(p).digest() for p in parts + [text]}
    if hashlib.sha256(heldout).digest() in digests or (len(heldout) >= 1024 and heldout in text):
        warnings.append(f"--data {data} is also calibration text: its bits per byte will look "
                        "better than on unseen text; hold out text that calibration never sees")
    return Texts(text, heldout, f"--data {data}", warnings, names)


class SiteStats:
    """Running statistics of one site's input x (B, in)."""

    def __init__(self, width: int):
        self.absmax = torch.zeros(width)
        self.hessian = torch.zeros(width, width, dtype=torch.float64)
        self.samples: list[torch.Tensor] = []
        self._sample: torch.Tensor | None = None

    def update(self, x: torch.Tensor, sample: bool) -> None:
        x = x.detach().float().reshape(-1, x.shape[-1])
        self.absmax = torch.maximum(self.absmax, x.abs().amax(0))
        xd = x.double()
        self.hessian += xd.t() @ xd
        if sample:
            self.samples.append(x.clone())
            self._sample = None

    def sample_rows(self) -> torch.Tensor:
        if self._sample is None:  # every candidate method reads it: concatenated once
            self._sample = torch.cat(self.samples)[:MAX_SAMPLES]  # (n, in)
        return self._sample


@dataclass
class Calibration:
    sites: dict[str, SiteStats]  # matmul sites and observed points ("layers.0.ssm_out")
    states: dict[str, torch.Tensor]  # state name -> per-channel abs-max
    bytes: int
    sha256: str


def _progress(total: int, enabled: bool):
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("calibrating"), BarColumn(), TextColumn("{task.completed:,}/{task.total:,} bytes"),
                    TimeRemainingColumn(), console=Console(file=sys.stderr), transient=True,
                    disable=not enabled)


def _observe(fused, stats: dict, flags: dict):
    """Set every Frozen module's observer to record into `stats`; returns the modules."""
    names = {id(m): p for p, m in fused.named_modules()}

    def observer(module, point, x):
        key = f"{names[id(module)]}.{point}".lstrip(".")
        stats.setdefault(key, SiteStats(x.shape[-1])).update(x, flags["sample"])
    modules = [m for m in fused.modules() if hasattr(m, "observer")]
    for m in modules:
        m.observer = observer
    return modules


def _state_absmax(state_max: dict, state) -> None:
    for n, s in zip(state_max, state):  # s (B, C, ...): per channel C
        state_max[n] = torch.maximum(state_max[n], s.abs().transpose(0, 1).reshape(s.shape[1], -1).amax(1))


@torch.no_grad()
def calibrate(model, fused, text: bytes, streams: int = STREAMS, progress: bool = False) -> Calibration:
    """Stream `text` through the fp32 fused form of `model` and collect statistics."""
    from ..validate import one_thread

    steps = max(1, len(text) // streams)
    ids = torch.frombuffer(bytearray(text[:steps * streams]), dtype=torch.uint8).long().view(streams, steps)
    stats: dict[str, SiteStats] = {}
    flags = {"sample": False}
    modules = _observe(fused, stats, flags)
    every = max(1, steps * streams // MAX_SAMPLES)
    state = model.init_state(streams)
    state_max = {n: torch.zeros(s.shape[1]) for n, s in zip(model.state_names(), state)}
    try:
        with one_thread(), _progress(steps * streams, progress) as bar:
            task = bar.add_task("calibrate", total=steps * streams)
            for t in range(steps):
                flags["sample"] = t % every == 0
                _, *state = fused(ids[:, t], *state)
                _state_absmax(state_max, state)
                bar.update(task, advance=streams)
    finally:
        for m in modules:
            m.observer = None
    return Calibration(stats, state_max, len(text), hashlib.sha256(text).hexdigest())
