"""Device profiles, aliases and detection parsers (standard library only)."""

import json
import platform
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgelm.devices import (DeviceProfile, detect, format_profiles, get_profile, list_profiles,
                            parse_gpu_name, parse_jetson_model, parse_nvidia_smi, resolve_alias)
from edgelm.devices.detect import parse_cpu_model, parse_meminfo_total_gib
from edgelm.devices.profile import PRECISIONS, check_profile
from edgelm.errors import EdgelmError

EDGELM = Path(sys.executable).parent / "edgelm"
REQUIRED = ["jetson-nano", "jetson-xavier-nx", "jetson-agx-xavier", "jetson-orin-nano-4gb",
            "jetson-orin-nano-8gb", "jetson-orin-nx", "jetson-agx-orin", "jetson-thor", "rtx-3060",
            "rtx-4090", "a100", "h100", "h200", "cpu-x86", "cpu-arm64"]
HOST_CPU = "cpu-arm64" if platform.machine().lower() in ("aarch64", "arm64") else "cpu-x86"


def test_every_required_profile_loads_with_sane_values():
    profiles = {p.name: p for p in list_profiles()}
    assert set(REQUIRED) <= set(profiles)
    for p in profiles.values():
        assert check_profile(p) == [], p.name
        assert p.compute_capability is None or re.fullmatch(r"\d+\.\d", p.compute_capability)
        assert 0 < p.app_memory_fraction <= 1 and p.app_memory_bytes > 0
        assert set(p.precisions) <= set(PRECISIONS) and p.supports(p.default_precision)
        assert all(re.fullmatch(r"\d+(\.\d+)?", v) for v in p.tensorrt_versions)
        assert (p.family == "cpu") == (p.tensorrt_major is None)
        assert DeviceProfile.from_dict(json.loads(json.dumps(p.to_dict()))) == p


def test_published_facts():
    nano, orin, thor = get_profile("jetson-nano"), get_profile("jetson-agx-orin"), get_profile("jetson-thor")
    assert nano.compute_capability == "5.3" and nano.tensorrt_versions == ("8.2",) and nano.jetpack == "4.6.1"
    assert not nano.supports("int8") and nano.peak_int8_tops == 0 and nano.supports("fp16")
    assert orin.compute_capability == "8.7" and orin.supports("int8") and not orin.supports("fp8")
    assert orin.tensorrt_versions == ("10.3", "11") and orin.tensorrt_major == 11 and orin.dla_cores == 2
    assert thor.compute_capability == "11.0" and thor.dla_cores == 0 and thor.supports("fp8")
    assert get_profile("jetson-agx-xavier").dla_cores == 2 and get_profile("jetson-agx-xavier").tensorrt_major == 8
    assert get_profile("jetson-orin-nano-8gb").memory_bandwidth_gbs == 68.0
    assert get_profile("jetson-orin-nano-4gb").memory_bandwidth_gbs == 34.0
    assert orin.memory_bandwidth_gbs == 204.8
    assert get_profile("h100").memory_bandwidth_gbs == 3350 and get_profile("h200").memory_bandwidth_gbs == 4800
    assert get_profile("cpu-x86").tensorrt_versions == () and get_profile("cpu-x86").default_precision == "fp32"


def test_quantized_precisions_by_profile():
    """int8 needs INT8 tensor cores (not on a Nano); int4 (W4A16) needs Ampere+ and TensorRT 10
    (NVIDIA Model Optimizer support matrix); ONNX Runtime's CPU provider runs both."""
    expected = {
        "jetson-nano": ["fp32", "fp16"],
        "jetson-xavier-nx": ["fp32", "fp16", "int8"], "jetson-agx-xavier": ["fp32", "fp16", "int8"],
        **{n: ["fp32", "fp16", "bf16", "int8", "int4"] for n in (
            "jetson-orin-nano-4gb", "jetson-orin-nano-8gb", "jetson-orin-nx", "jetson-agx-orin", "rtx-3060", "a100")},
        **{n: ["fp32", "fp16", "bf16", "int8", "fp8", "int4"] for n in ("jetson-thor", "rtx-4090", "h100", "h200")},
        "cpu-x86": ["fp32", "fp16", "int8", "int4"], "cpu-arm64": ["fp32", "fp16", "int8", "int4"],
    }
    profiles = {p.name: p for p in list_profiles()}
    assert {n: list(profiles[n].precisions) for n in expected} == expected
    assert {n: profiles[n].default_precision for n in expected} == {
        n: "fp32" if n.startswith("cpu") else "fp16" for n in expected}
    for p in profiles.values():
        if p.supports("int4") and p.family != "cpu":
            assert float(p.compute_capability) >= 8.0 and min(int(v.split(".")[0]) for v in p.tensorrt_versions) >= 10
        if p.supports("int8") and p.family != "cpu":
            assert p.peak_int8_tops > 0


def test_aliases_resolve():
    assert get_profile("jetson").name == "jetson-orin-nano-8gb"
    assert get_profile("cpu").name == HOST_CPU
    assert resolve_alias("JETSON") == "jetson-orin-nano-8gb" and resolve_alias("h100") == "h100"
    found = detect()
    if found["family"] == "cpu":
        with pytest.raises(EdgelmError, match="no NVIDIA GPU found"):
            get_profile("gpu")
    else:
        assert get_profile("gpu").name == found["profile"]


def test_unknown_target_lists_valid_names():
    with pytest.raises(EdgelmError) as err:
        get_profile("jetson-tx2")
    msg = str(err.value)
    assert msg.startswith("unknown target 'jetson-tx2'; valid targets:")
    assert all(name in msg for name in REQUIRED + ["jetson", "cpu", "gpu"])


@pytest.mark.parametrize("model,mem,expected", [
    ("NVIDIA Jetson Nano Developer Kit\x00", 3.9, "jetson-nano"),
    ("NVIDIA Jetson Xavier NX Developer Kit\x00", 7.6, "jetson-xavier-nx"),
    ("Jetson-AGX\x00", 31.0, "jetson-agx-xavier"),
    ("NVIDIA Jetson AGX Xavier Developer Kit", 31.0, "jetson-agx-xavier"),
    ("NVIDIA Jetson Orin Nano Developer Kit\x00", 7.4, "jetson-orin-nano-8gb"),
    ("NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00", 7.4, "jetson-orin-nano-8gb"),
    ("NVIDIA Jetson Orin Nano Developer Kit\x00", 3.4, "jetson-orin-nano-4gb"),
    ("NVIDIA Jetson Orin NX Engineering Reference Developer Kit\x00", 15.3, "jetson-orin-nx"),
    ("Jetson AGX Orin\x00", 61.4, "jetson-agx-orin"),
    ("NVIDIA Jetson AGX Orin Developer Kit\x00", 61.4, "jetson-agx-orin"),
    ("NVIDIA Jetson AGX Thor Developer Kit\x00", 122.0, "jetson-thor"),
    ("Raspberry Pi 5 Model B Rev 1.0\x00", 7.9, None),
])
def test_jetson_model_strings(model, mem, expected):
    assert parse_jetson_model(model, mem) == expected


@pytest.mark.parametrize("name,cc,expected", [
    ("NVIDIA H100 80GB HBM3", "9.0", "h100"), ("NVIDIA H100 PCIe", "9.0", "h100"),
    ("NVIDIA H200", "9.0", "h200"), ("NVIDIA H200 NVL", "9.0", "h200"),
    ("NVIDIA A100-SXM4-80GB", "8.0", "a100"), ("NVIDIA A100-PCIE-40GB", "8.0", "a100"),
    ("NVIDIA GeForce RTX 4090", "8.9", "rtx-4090"), ("NVIDIA GeForce RTX 3060", "8.6", "rtx-3060"),
    ("NVIDIA L40S", "8.9", "rtx-4090"), ("Tesla T4", "7.5", None),
])
def test_gpu_names(name, cc, expected):
    assert parse_gpu_name(name, cc) == expected


def test_nvidia_smi_and_proc_parsers():
    out = "NVIDIA H100 80GB HBM3, 9.0, 81559 MiB\nNVIDIA H100 80GB HBM3, 9.0, 81559 MiB\n"
    gpus = parse_nvidia_smi(out)
    assert len(gpus) == 2 and gpus[0] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0",
                                          "memory_gib": 79.6}
    assert parse_nvidia_smi("") == []
    assert abs(parse_meminfo_total_gib("MemTotal:        7802836 kB\nMemFree: 1 kB\n") - 7.44) < 0.01
    assert parse_cpu_model("processor\t: 0\nmodel name\t: AMD EPYC 7B13\n") == "AMD EPYC 7B13"
    assert parse_cpu_model("processor\t: 0\nModel\t\t: Raspberry Pi 5 Model B Rev 1.0\n").startswith("Raspberry")


def test_detect_on_this_machine():
    found = detect()
    assert {"profile", "evidence", "family"} <= found.keys()
    if found["family"] == "cpu":
        assert found["profile"] == HOST_CPU


def test_format_profiles_table():
    text = format_profiles(list_profiles())
    assert text.splitlines()[0].split()[:3] == ["name", "family", "sm"]
    assert all(name in text for name in REQUIRED) and "204.8 GB/s" in text


def _cli(*args: str) -> subprocess.CompletedProcess:
    if not EDGELM.exists():
        pytest.skip(f"{EDGELM} not installed")
    return subprocess.run([str(EDGELM), *args], capture_output=True, text=True, timeout=60)


def test_cli_devices_json():
    res = _cli("devices", "--json")
    assert res.returncode == 0, res.stderr
    names = [p["name"] for p in json.loads(res.stdout)["profiles"]]
    assert set(REQUIRED) <= set(names)
    assert _cli("devices").stdout.startswith("name")


def test_cli_devices_json_lists_each_jetsons_software_and_runtime_paths():
    """The coverage table as data: every Jetson's JetPack lines with Ubuntu, Python, CUDA and
    TensorRT, and the runtime paths that work there (the Nano's Python 3.6 runs none of edgelm's
    Python, so C and trtexec only)."""
    res = _cli("devices", "--json")
    data = json.loads(res.stdout)
    assert set(data["runtime_paths"]) == {"tensorrt", "python-ort", "native-c", "trtexec"}
    jetsons = {p["name"]: p for p in data["profiles"] if p["family"] == "jetson"}
    assert set(jetsons) == {n for n in REQUIRED if n.startswith("jetson")}
    for p in jetsons.values():
        assert p["stacks"] and p["runtime_paths"], p["name"]
        for s in p["stacks"]:
            assert all(s[k] for k in ("jetpack", "ubuntu", "python", "cuda", "tensorrt", "paths")), p["name"]
            assert any(s["tensorrt"].startswith(v) for v in p["tensorrt_versions"])
    pythons = {n: [s["python"] for s in p["stacks"]] for n, p in jetsons.items()}
    assert pythons["jetson-nano"] == ["3.6"] and pythons["jetson-xavier-nx"] == ["3.8"]
    assert pythons["jetson-orin-nx"] == ["3.10"] and pythons["jetson-thor"] == ["3.12"]
    assert jetsons["jetson-nano"]["runtime_paths"] == ["native-c", "trtexec"]
    assert jetsons["jetson-agx-xavier"]["runtime_paths"] == ["tensorrt", "python-ort", "native-c", "trtexec"]
    text = _cli("devices").stdout
    assert "runtime paths" in text and "JetPack 4.6.1+: Python 3.6" in text


@pytest.mark.parametrize("edit, problem", [
    (lambda s: {**s, "python": "3.6"}, "ships Python 3.6; path tensorrt needs Python 3.8+"),
    (lambda s: {**s, "tensorrt": ""}, "has no TensorRT for path trtexec"),
    (lambda s: {**s, "tensorrt": "10.3"}, "is not among the profile's tensorrt_versions"),
    (lambda s: {**s, "paths": [*s["paths"], "tflite"]}, "unknown runtime path 'tflite'"),
])
def test_a_stack_cannot_claim_a_path_its_software_rules_out(edit, problem):
    d = get_profile("jetson-xavier-nx").to_dict()
    d["stacks"] = [edit(d["stacks"][0])]
    d["runtime_paths"] = []  # derived from the stacks again
    assert any(problem in p for p in check_profile(DeviceProfile.from_dict(d))), problem


def test_a_jetson_lists_its_stacks_and_its_paths_are_theirs():
    d = get_profile("jetson-orin-nx").to_dict()
    assert any("runtime_paths" in p for p in check_profile(DeviceProfile.from_dict({**d, "runtime_paths": ["native-c"]})))
    assert any("JetPack stacks" in p for p in check_profile(DeviceProfile.from_dict({**d, "stacks": []})))
    cpu = get_profile("cpu-x86").to_dict()
    assert any("need TensorRT" in p for p in check_profile(DeviceProfile.from_dict({**cpu, "runtime_paths": ["trtexec", "native-c"]})))


def test_cli_devices_detect_json():
    res = _cli("devices", "detect", "--json")
    assert res.returncode == 0, res.stderr
    found = json.loads(res.stdout)
    assert found["profile"] == detect()["profile"] and found["evidence"]


def test_the_readme_jetson_table_is_the_profiles_data():
    """README's "On your Jetson" table says what the profiles say, row for row (and misses no Jetson)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    start = readme.index("| profile | JetPack |")
    rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in readme[start:].split("\n\n")[0].splitlines()[2:]]
    documented = {}
    for names, jetpack, ubuntu, python, cuda, trt, paths in rows:
        for name in names.split(", "):
            documented[(name, jetpack)] = (ubuntu, python, cuda, trt, paths)
    actual = {(p.name, s.jetpack): (s.ubuntu, s.python, s.cuda, s.tensorrt, ", ".join(s.paths))
              for p in list_profiles() for s in p.stacks}
    assert documented == actual
