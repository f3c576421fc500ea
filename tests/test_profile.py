"""`edgelm profile`: the report's figures hang together (percentiles ordered, time inside the
backend within the total, state and bundle bytes equal to what the bundle holds), the comparison's
ratios are the columns' quotients, `--estimate` runs nothing and is the roofline formula, and
`edgelm info --device` estimates from a model. Speed itself is checked by bench/profile_bench.py."""

from __future__ import annotations

import json

import pytest

from bundle_tools import cli, one_line_error
from runtime_fixtures import MODELS, bundle_dir  # noqa: F401

from edgelm.devices import get_profile
from edgelm.runtime.bundle import load_bundle
from edgelm.runtime.roofline import DISPATCH, StepFacts, estimate, step_time_us

FAST = ("--bytes", "48", "--streams", "1,3", "--prompt-bytes", "40")


def test_a_profile_report_is_consistent_with_the_bundle(bundle_dir, tmp_path, capsys):
    bundle = bundle_dir("gru")
    code, out, err = cli(capsys, "profile", bundle, *FAST, "--json", tmp_path / "p.json", "--plot", tmp_path / "p.png")
    assert code == 0, err
    r = json.loads((tmp_path / "p.json").read_text())
    lat = r["latency_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert len(r["samples_us"]) == 48 and max(r["samples_us"]) == lat["max"]
    assert 0 < lat["backend_mean"] < lat["mean"] and lat["outside_backend_mean"] > 0
    assert set(r["throughput_bytes_per_s"]) == {"1", "3"} and min(r["throughput_bytes_per_s"].values()) > 0
    assert r["ttfb_ms"] > 0 and r["prefill_bytes_per_s"] > 0 and r["rss_peak_mb"] >= r["rss_start_mb"] > 0
    assert r["state_bytes_per_stream"] == load_bundle(bundle).state_bytes_per_stream()
    assert r["bundle_bytes"] == sum(p.stat().st_size for p in bundle.iterdir() if p.is_file())
    # auto: the native library built at export, where it timed faster than onnxruntime; the
    # estimate models the backend that ran
    assert r["device"] and r["backend"].startswith(("native C", "onnxruntime")) and r["estimate"]["device"] == r["device"]
    assert r["estimate"]["backend"] == ("native-cpu" if r["backend"].startswith("native C") else "onnxruntime-cpu")
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{lat['p50']:,.1f}" in out and "estimate" in out


def _row(out: str, name: str) -> list[str]:
    return next(line[len(name):].split() for line in out.splitlines() if line.startswith(name))


def test_a_comparison_puts_ratios_beside_the_columns(bundle_dir, capsys):
    a, b = bundle_dir("lstm"), bundle_dir("gru")
    code, out, err = cli(capsys, "profile", a, b, *FAST)
    assert code == 0, err
    first, second, ratio = _row(out, "state bytes/stream")
    sa, sb = load_bundle(a).state_bytes_per_stream(), load_bundle(b).state_bytes_per_stream()
    assert (first, second) == (f"{sa:,}", f"{sb:,}") and ratio == f"{sb / sa:.2f}x"


def test_estimate_runs_nothing_and_is_the_roofline(bundle_dir, monkeypatch, capsys, tmp_path):
    import edgelm.runtime.session as session

    monkeypatch.setattr(session.Session, "open", lambda *a, **k: pytest.fail("--estimate ran the bundle"))
    bundle = bundle_dir("mamba")
    code, out, err = cli(capsys, "profile", bundle, "--estimate", "jetson-orin-nano-8gb", "--json", tmp_path / "e.json")
    assert code == 0, err
    e = json.loads((tmp_path / "e.json").read_text())
    m = load_bundle(bundle).manifest
    fixed, per_node = DISPATCH["tensorrt"]
    dispatch = 2.0 * (fixed + per_node * m.graphs["step"].nodes)  # a Jetson issues work at half speed
    p = get_profile("jetson-orin-nano-8gb")
    memory = (m.params * 4 + 2 * m.state_bytes_per_stream()) / (p.memory_bandwidth_gbs * 1e3)
    assert e["latency_us"] == pytest.approx(dispatch + memory, abs=0.1) and e["bound"] == "dispatch"
    assert e["best_at_batch_1"]["backend"] in ("tensorrt", "torch-cuda") and "jetson-orin-nano-8gb" in out


def test_the_bound_follows_the_model_size():
    cpu = get_profile("cpu-x86")
    small = StepFacts("lstm", 100_000, "fp32", 2048, 23)
    big = StepFacts("mamba", 100_000_000, "fp32", 60_000, 160)
    assert step_time_us(small, cpu, "onnxruntime-cpu", 1)["bound"] == "dispatch"
    assert step_time_us(big, cpu, "onnxruntime-cpu", 1)["bound"] == "memory"  # 400 MB per byte
    assert step_time_us(big, cpu, "onnxruntime-cpu", 64)["bound"] == "compute"  # weights shared by 64
    assert step_time_us(small, cpu, "native-cpu", 1)["total_us"] < step_time_us(small, cpu, "onnxruntime-cpu", 1)["total_us"]
    assert step_time_us(big, cpu, "native-cpu", 1)["memory_us"] == step_time_us(big, cpu, "onnxruntime-cpu", 1)["memory_us"]
    int8 = step_time_us(StepFacts("mamba", 100_000_000, "int8", 60_000, 160), cpu, "onnxruntime-cpu", 1)
    assert int8["memory_us"] == pytest.approx(step_time_us(big, cpu, "onnxruntime-cpu", 1)["memory_us"] / 4, rel=0.01)
    e = estimate(big, get_profile("h100"), (1, 64))
    assert e["throughput_bytes_per_s"]["64"] > e["throughput_bytes_per_s"]["1"]


def test_info_estimates_for_a_device_from_a_model(capsys):
    code, out, err = cli(capsys, "info", MODELS / "mamba-tiny.pt", "--device", "cpu-arm64", "--json")
    assert code == 0, err
    e = json.loads(out)["estimate"]
    assert e["device"] == "cpu-arm64" and e["precision"] == "fp32" and e["latency_us"] > 0


def test_bad_profile_arguments_are_one_line(bundle_dir, tmp_path, capsys, monkeypatch):
    bundle = bundle_dir("gru")
    for args, match in [(("--streams", "0,x"), "give stream counts 1..4096"),
                        (("--bytes", "3"), "--bytes must be at least 16"),
                        (("--estimate", "no-such-device"), "no-such-device")]:
        code, out, err = cli(capsys, "profile", bundle, *args)
        assert one_line_error(code, err, match) and out == "", err
    code, _, err = cli(capsys, "profile", tmp_path, *FAST)
    assert one_line_error(code, err, "not an edgelm bundle")
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "matplotlib" else real(n, *a))
    code, _, err = cli(capsys, "profile", bundle, *FAST, "--plot", tmp_path / "x.png")
    assert one_line_error(code, err, "pip install 'edgelm[plot]'") and not (tmp_path / "x.png").exists()


def test_every_backend_here_profiles(tmp_path, capsys):
    """onnxruntime above; the torch reference backend (a bundle exported --with-reference) too."""
    code, _, err = cli(capsys, "export", MODELS / "gru-tiny.pt", "--target", "cpu", "-o", tmp_path / "b",
                       "--with-reference")
    assert code == 0, err
    code, out, err = cli(capsys, "profile", tmp_path / "b", "--backend", "torch", *FAST, "--json", tmp_path / "t.json")
    assert code == 0, err
    r = json.loads((tmp_path / "t.json").read_text())
    assert r["backend"].startswith("torch") and 0 < r["latency_us"]["backend_mean"] < r["latency_us"]["mean"]
