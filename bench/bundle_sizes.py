"""Bundle size on disk against the model's fp32 weights (4 bytes x parameters), per file.

    python bench/bundle_sizes.py

Exports the five committed reference models and a user-style plain char-RNN state_dict
(Embedding(256, 64) + 2-layer nn.LSTM(64, 192) + Linear(192, 256), 0.56M parameters) for the
cpu target at fp32 and fp16, default options (no model.pt), and reports each file's bytes and
bundle / fp32-weights. Writes bench/out/bundle_sizes.json.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"


def charrnn(path: Path) -> Path:
    import torch
    import torch.nn as nn

    class CharRNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lstm, self.fc = nn.Embedding(256, 64), nn.LSTM(64, 192, 2, batch_first=True), nn.Linear(192, 256)

    torch.manual_seed(0)
    torch.save(CharRNN().state_dict(), path)
    return path


def measure(model: Path, precision: str, out: Path) -> dict:
    from edgelm.export import export_bundle

    m = export_bundle(model, "cpu", precision, out, force=True)
    files = {f.name: f.stat().st_size for f in sorted(out.iterdir())}
    weights = 4 * m.params
    return {"params": m.params, "fp32_weights_bytes": weights, "files": files,
            "bundle_bytes": sum(files.values()), "ratio": round(sum(files.values()) / weights, 3),
            "nodes": [m.graphs["step"].nodes, m.graphs["prefill"].nodes]}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    res = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = {a: ROOT / "models" / f"{a}-tiny.pt" for a in ("lstm", "gru", "mingru", "mamba", "rglru")}
        models["charrnn"] = charrnn(Path(tmp) / "charrnn.pt")
        for name, path in models.items():
            for precision in ("fp32", "fp16"):
                r = res[f"{name}-{precision}"] = measure(path, precision, Path(tmp) / f"{name}-{precision}")
                print(f"{name:8} {precision}  {r['bundle_bytes'] / 1e6:6.3f} MB  {r['ratio']:5.3f}x fp32 weights  "
                      f"(weights.bin {r['files']['weights.bin'] / r['fp32_weights_bytes']:.3f}x)", flush=True)
    (OUT / "bundle_sizes.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
