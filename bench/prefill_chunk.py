"""Which prefill chunk (and scan block) to export on this CPU: the prefill graph of each committed
tiny model at several chunk sizes, and for minGRU / RG-LRU / Mamba at several chunk_scan blocks,
ONNX Runtime on one thread, rounds interleaved across variants (the machine is shared: a slow
spell hits every variant alike), medians reported.

    .venv/bin/python bench/prefill_chunk.py [--chunks 16,32,64] [--blocks 4,16] [--out bench/results/prefill_chunk.json]

Two prompts: 4 KB (bytes/s of whole chunks) and 200 bytes (a chat-sized prompt: whole chunks
through the prefill graph, the remainder through the step graph, as Stream.feed does it).
The choices: FusedLM.PREFILL_CHUNK (per form) and ResidualLayer.SCAN_BLOCK, in export/fused/.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("lstm", "gru", "mingru", "rglru", "mamba")
PROMPTS = {"4096": 4096, "200": 200}


def variants(arch: str, chunks: list[int], blocks: list[int]) -> list[tuple[int, int]]:
    """(chunk, scan block) pairs: every chunk at block 1, and the blocks at chunk 32 where the form scans."""
    out = [(c, 1) for c in chunks]
    return out + [(32, b) for b in blocks] if arch in ("mingru", "rglru", "mamba") else out


def bundles(arch: str, plan: list[tuple[int, int]], work: Path) -> dict[str, Path]:
    from edgelm.export import export_bundle
    from edgelm.export.fused.common import ResidualLayer

    out, default = {}, ResidualLayer.SCAN_BLOCK
    for c, block in plan:
        name = f"chunk {c}, block {block}"
        out[name] = work / f"{arch}-{c}-{block}"
        ResidualLayer.SCAN_BLOCK = block  # every residual form reads it from here
        try:
            export_bundle(ROOT / "models" / f"{arch}-tiny.pt", "cpu", None, out[name], force=True, chunk=c)
        finally:
            ResidualLayer.SCAN_BLOCK = default
    return out


def feed_seconds(sess, data: bytes) -> float:
    from edgelm.runtime import GREEDY

    with sess.stream(GREEDY) as s:
        t0 = time.perf_counter()
        s.feed(data)
        return time.perf_counter() - t0


def measure(arch: str, plan: list[tuple[int, int]], work: Path, rounds: int) -> dict:
    from edgelm.runtime import Session

    text = (Path(__file__).read_bytes() * 8)[:4096]
    sessions = {c: Session.open(b, max_streams=1) for c, b in bundles(arch, plan, work).items()}
    times = {(c, p): [] for c in sessions for p in PROMPTS}
    for _ in range(rounds):
        for c, sess in sessions.items():
            for p, n in PROMPTS.items():
                times[c, p].append(feed_seconds(sess, text[:n]))
    for sess in sessions.values():
        sess.close()
    return {c: {p: round(PROMPTS[p] / float(np.median(times[c, p])), 1) for p in PROMPTS} for c in sessions}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--chunks", default="16,32,64")
    ap.add_argument("--blocks", default="4,16")
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prefill_chunk.json")
    args = ap.parse_args()
    chunks = [int(c) for c in args.chunks.split(",")]
    blocks = [int(b) for b in args.blocks.split(",") if b]
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ARCHS:
            res[arch] = measure(arch, variants(arch, chunks, blocks), Path(tmp), args.rounds)
            print(arch, "bytes/s by chunk and prompt length:", res[arch], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"bytes_per_s": res, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
                                   indent=2) + "\n")


if __name__ == "__main__":
    main()
