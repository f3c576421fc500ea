"""Issue 11's benchmark: an imported transformers Mamba, streamed one byte at a time, in an edgelm
Session next to transformers' own cached single-step generation of the same model, in one run.

    .venv/bin/python bench/import_bench.py [--out bench/results/import_bench.json] [--rounds 7]

Models: the committed mamba-tiny (trained) written as a transformers MambaForCausalLM directory, and
a random one shaped like edgelm's `small` preset (d_model 256, 8 layers). Each goes through the
user's path: `edgelm export DIR --target cpu`, then `Session.open`.
Per byte, interleaved round-robin (every variant sees the same machine state), median of rounds:
  hf_generate    model.generate(greedy), cached: (time(N+1 bytes) - time(1 byte)) / N
  hf_step        model(one byte, cache=..., use_cache=True) per call: transformers' cached step alone
  edgelm_gen     Stream.generate(N, greedy): step + sampling + bookkeeping per byte
  edgelm_feed    Stream.feed(one byte) per call
transformers runs with torch at 1 thread and at the default; the faster is its figure. It falls back
to its reference PyTorch kernels on CPU (causal_conv1d and mamba_ssm need CUDA): what a CPU user runs.
Also checked: greedy bytes equal, max |logit difference| over 256 bytes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
N = 256  # bytes per measurement
PROMPT = b"def "


def hf_from_edgelm(path: Path):
    """The committed edgelm checkpoint as a transformers MambaForCausalLM (the inverse mapping)."""
    from transformers import MambaConfig, MambaForCausalLM

    from edgelm.checkpoint import load_model

    m = load_model(path)
    c = m.config
    hf = MambaForCausalLM(MambaConfig(vocab_size=256, hidden_size=c.d_model, state_size=c.d_state,
                                      num_hidden_layers=c.n_layers, conv_kernel=c.d_conv, expand=c.expand,
                                      time_step_rank=c.dt_rank, tie_word_embeddings=False)).eval()
    sd = {"backbone.embeddings.weight": m.embed.weight, "backbone.norm_f.weight": m.norm_f.weight,
          "lm_head.weight": m.head.weight}
    for i, b in enumerate(m.blocks):
        p = f"backbone.layers.{i}."
        sd |= {p + "norm.weight": b.norm.weight, p + "mixer.conv1d.weight": b.conv_weight[:, None],
               p + "mixer.conv1d.bias": b.conv_bias}
        for k in ("in_proj.weight", "x_proj.weight", "dt_proj.weight", "dt_proj.bias", "A_log", "D",
                  "out_proj.weight"):
            sd[p + "mixer." + k] = b.get_parameter(k)
    hf.load_state_dict({k: v.detach() for k, v in sd.items()})
    return hf


def hf_random_small():
    from transformers import MambaConfig, MambaForCausalLM

    torch.manual_seed(0)
    return MambaForCausalLM(MambaConfig(vocab_size=256, hidden_size=256, state_size=16,
                                        num_hidden_layers=8)).eval()


class HF:
    def __init__(self, model):
        self.model, self.prompt = model, torch.tensor([[0x0A, *PROMPT]])

    @torch.no_grad()
    def generate(self, n: int) -> list[int]:
        out = self.model.generate(self.prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        return out[0, self.prompt.shape[1]:].tolist()

    def per_byte_generate(self, threads: int) -> float:
        torch.set_num_threads(threads)
        t0 = time.perf_counter()
        self.generate(1)
        t1 = time.perf_counter()
        self.generate(N + 1)
        return ((time.perf_counter() - t1) - (t1 - t0)) / N

    @torch.no_grad()
    def per_byte_step(self, threads: int) -> float:
        torch.set_num_threads(threads)
        out = self.model(self.prompt, use_cache=True)
        cache, tok = out.cache, torch.tensor([[ord("a")]])
        t0 = time.perf_counter()
        for _ in range(N):
            cache = self.model(tok, cache=cache, use_cache=True).cache
        return (time.perf_counter() - t0) / N


class Edgelm:
    def __init__(self, bundle: Path):
        from edgelm.runtime import Session
        from edgelm.runtime.sampling import Sampling

        self.session = Session.open(bundle)
        self.greedy = Sampling(temperature=0.0)

    def generate(self, n: int) -> list[int]:
        with self.session.stream(self.greedy, PROMPT) as s:
            return list(b"".join(s.generate(n)))

    def per_byte_generate(self) -> float:
        with self.session.stream(self.greedy, PROMPT) as s:
            t0 = time.perf_counter()
            for _ in s.generate(N):
                pass
            return (time.perf_counter() - t0) / N

    def per_byte_feed(self) -> float:
        with self.session.stream(self.greedy, PROMPT) as s:
            t0 = time.perf_counter()
            for _ in range(N):
                s.feed(b"a")
            return (time.perf_counter() - t0) / N


def parity(hf, ours: Edgelm) -> float:
    text = (ROOT / "edgelm" / "cli.py").read_bytes()[:N]
    with torch.no_grad():
        ref = hf.model(torch.tensor([[0x0A, *text]]), use_cache=False).logits[0, 1:, :256].numpy()
    got = []
    with ours.session.stream() as s:
        for b in text:
            s.feed(bytes([b]))
            got.append(s.logits)
    return float(np.abs(np.stack(got) - ref).max())


def measure(name: str, hf_model, workdir: Path, rounds: int) -> dict:
    from edgelm.export import export_bundle

    hf_model.save_pretrained(workdir / name)
    export_bundle(workdir / name, "cpu", None, workdir / f"{name}-bundle")
    hf, ours = HF(hf_model), Edgelm(workdir / f"{name}-bundle")
    same = hf.generate(64) == ours.generate(64)
    variants = {"hf_generate_1t": lambda: hf.per_byte_generate(1), "hf_step_1t": lambda: hf.per_byte_step(1),
                "hf_generate_default": lambda: hf.per_byte_generate(DEFAULT_THREADS),
                "hf_step_default": lambda: hf.per_byte_step(DEFAULT_THREADS),
                "edgelm_gen": ours.per_byte_generate, "edgelm_feed": ours.per_byte_feed}
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(rounds):
        for k, f in variants.items():
            times[k].append(f() * 1e6)
        print(f"{name} round {r + 1}/{rounds}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in times.items()),
              file=sys.stderr)
    med = {k: round(statistics.median(v), 1) for k, v in times.items()}
    hf_gen = min(med["hf_generate_1t"], med["hf_generate_default"])
    hf_step = min(med["hf_step_1t"], med["hf_step_default"])
    return {"params": sum(p.numel() for p in hf_model.parameters()), "config": hf_model.config.to_diff_dict(),
            "us_per_byte_median": med, "rounds": {k: [round(x, 1) for x in v] for k, v in times.items()},
            "greedy_64_bytes_equal": same, "max_abs_logit_diff_256_bytes": parity(hf, ours),
            "speedup_vs_hf_generate": round(hf_gen / med["edgelm_gen"], 1),
            "speedup_vs_hf_step": round(hf_step / med["edgelm_gen"], 1)}


DEFAULT_THREADS = torch.get_num_threads()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "import_bench.json")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    import onnxruntime
    import transformers

    results = {"machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "python": platform.python_version(), "torch": torch.__version__,
                           "transformers": transformers.__version__, "onnxruntime": onnxruntime.__version__,
                           "torch_default_threads": DEFAULT_THREADS},
               "command": "python bench/import_bench.py", "bytes_per_measurement": N, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for name, make in (("mamba-tiny", lambda: hf_from_edgelm(ROOT / "models" / "mamba-tiny.pt")),
                           ("mamba-small-random", hf_random_small)):
            results["models"][name] = measure(name, make(), Path(tmp), args.rounds)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    for name, r in results["models"].items():
        m = r["us_per_byte_median"]
        print(f"{name} ({r['params']:,} params): edgelm {m['edgelm_gen']} us/byte, transformers generate "
              f"{min(m['hf_generate_1t'], m['hf_generate_default'])}, step {min(m['hf_step_1t'], m['hf_step_default'])}"
              f" -> {r['speedup_vs_hf_generate']}x / {r['speedup_vs_hf_step']}x; greedy equal {r['greedy_64_bytes_equal']}, "
              f"max |dlogit| {r['max_abs_logit_diff_256_bytes']:.1e}")


if __name__ == "__main__":
    main()
