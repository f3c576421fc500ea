"""Build a TensorRT engine for a bundle, on the device that will run it.

No engine can be cross-built on x86 for a Jetson: engines are tied to the GPU architecture and the
TensorRT version. So `edgelm export` writes ONNX plus `build_engine.sh` (the exact `trtexec`
commands, see `build_engine_script`), and on the device `edgelm build DIR` (`build_engine`, the
TensorRT Python API) writes one engine per graph, `engine.plan` (step) and `engine.prefill.plan`
(prefill), and records their sha256 in the manifest's `built` section, outside bundle_id: building
changes neither the id nor a signature. edgelm's runtime uses only engines recorded there;
build_engine.sh builds the same engines for apps that drive TensorRT themselves.

Precision lives in the ONNX graph (fp16 casts, Q/DQ). Where TensorRT can build strongly typed (the
STRONGLY_TYPED network flag from 9.0; 11 is strongly typed only) it does, and no precision flag is
set; TensorRT 8.x builds weakly typed, so the bundle's precision is allowed by its builder flag
(FP16, or INT8, which 8.x needs for explicit Q/DQ graphs). The installed TensorRT's version picks
the builder API (`BuilderApi`, from NVIDIA's Python API reference and "API Changes" tables of each
release): 8.x networks need EXPLICIT_BATCH for the ONNX parser; the workspace is
max_workspace_size before 8.4 and a memory pool limit since; the optimization level exists from
8.6. The 10.x/11.x calls are type-checked against `tensorrt-stubs` (tests/test_trt_build.py); the
8.x ones, which have no stubs, run against tests/trt_standin_v8.py.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Tuple

from ..devices import DeviceProfile, get_profile
from ..errors import EdgelmError
from ..precision import get as precision_of
from ..fileio import atomic_write_bytes, check_output_file
from ..runtime import manifest as fmt
from ..runtime.backends.trt import api_version  # TensorRT's version -> (major, minor), one parser
from ..runtime.manifest import Artifact, Manifest, TensorSpec

if TYPE_CHECKING:
    import tensorrt as trt

    from ..runtime.bundle import Bundle

JETSON_TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
MIB = 1 << 20
MIN_WORKSPACE, MAX_WORKSPACE = 256 * MIB, 4096 * MIB
OPT_STREAMS = 8  # the optimization profile's tuned batch (capped by max_streams)

# When the builder API features used below arrived in TensorRT (see BuilderApi).
MEMORY_POOLS = (8, 4)  # IBuilderConfig.set_memory_pool_limit (before: max_workspace_size, gone in 10.0)
OPTIMIZATION_LEVELS = (8, 6)  # IBuilderConfig.builder_optimization_level
STRONG_TYPING = (9, 0)  # NetworkDefinitionCreationFlag.STRONGLY_TYPED (11: strongly typed only)
EXPLICIT_BATCH_ONLY = (10, 0)  # before: the ONNX parser needs an EXPLICIT_BATCH network
PARSER_OPERATOR = (9, 1)  # ParserError.node_operator()
ENGINE_MEMORY_V2 = (10, 1)  # ICudaEngine.device_memory_size_v2 (before: device_memory_size)
BUILDER_FLAGS = {"--fp16": "FP16", "--int8": "INT8"}  # a precision's trt8_flag -> its BuilderFlag

Shapes = Dict[str, Tuple[Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]]


# ---------------------------------------------------------------- pure helpers (tested anywhere)

def profile_shapes(inputs: tuple[TensorSpec, ...], max_streams: int) -> Shapes:
    """(min, opt, max) shape of every graph input: batch 1 / min(8, max_streams) / max_streams."""
    batches = (1, min(OPT_STREAMS, max_streams), max_streams)
    return {t.name: tuple(tuple(b if d == "batch" else int(d) for d in t.shape) for b in batches)  # type: ignore[misc]
            for t in inputs}


def workspace_bytes(profile: DeviceProfile) -> int:
    """Builder workspace: a quarter of the app's memory budget, clamped to [256 MiB, 4 GiB], whole MiB."""
    budget = profile.app_memory_bytes // 4
    return max(MIN_WORKSPACE, min(MAX_WORKSPACE, budget)) // MIB * MIB


def _oldest_tensorrt(profile: DeviceProfile) -> tuple[int, int]:
    """The oldest TensorRT the target may have: the script's flags must work on all of them."""
    if not profile.tensorrt_versions:
        raise EdgelmError(f"target {profile.name} has no TensorRT; TensorRT engines are for NVIDIA GPUs "
                          "(re-export with a GPU or Jetson --target)")
    return min(api_version(v) for v in profile.tensorrt_versions)


def _shape_arg(shapes: Shapes, which: int) -> str:
    return ",".join(f"{name}:{'x'.join(str(d) for d in dims[which])}" for name, dims in shapes.items())


def trtexec_args(manifest: Manifest, profile: DeviceProfile, graph: str = "step") -> list[str]:
    """The trtexec arguments that build `graph`'s engine for the target (run in the bundle directory)."""
    trt_version = _oldest_tensorrt(profile)
    spec = manifest.graphs[graph]
    shapes = profile_shapes(spec.inputs, manifest.max_streams)
    args = [f"--onnx={spec.file}", f"--saveEngine={fmt.ENGINES[graph]}"]
    flag = precision_of(manifest.precision).trt8_flag
    if trt_version >= (10, 0):
        args.append("--stronglyTyped")
    elif flag:  # TensorRT 8.x: weakly typed, precision by flag
        args.append(flag)
    args += [f"--{kind}Shapes={_shape_arg(shapes, i)}" for i, kind in enumerate(("min", "opt", "max"))]
    mib = workspace_bytes(profile) // MIB
    args.append(f"--memPoolSize=workspace:{mib}M" if trt_version >= MEMORY_POOLS else f"--workspace={mib}")
    args.append(f"--timingCacheFile={fmt.TIMING_CACHE}")
    if trt_version >= OPTIMIZATION_LEVELS:
        args.append(f"--builderOptimizationLevel={profile.builder_optimization_level}")
    return args


_SCRIPT_HEAD = """#!/usr/bin/env bash
# Build {engines} for {target} (TensorRT {versions}) on the device itself: engines are tied to
# the GPU and the TensorRT version, so they cannot be built elsewhere. Written by edgelm export.
# For apps that drive TensorRT themselves. edgelm's runtime uses the engines `edgelm build DIR`
# builds and records in manifest.json. Extra arguments are passed on to trtexec.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-}}"
if [ -z "$TRTEXEC" ]; then
  if [ -x {jetson} ]; then TRTEXEC={jetson}
  elif command -v trtexec >/dev/null 2>&1; then TRTEXEC="$(command -v trtexec)"
  else echo "error: trtexec not found at {jetson} or on PATH; install TensorRT or set TRTEXEC" >&2; exit 2
  fi
fi
"""


def build_engine_script(manifest: Manifest, profile: DeviceProfile) -> str:
    """Text of build_engine.sh: the exact trtexec commands for the target (bash, set -euo pipefail)."""
    head = _SCRIPT_HEAD.format(engines=" and ".join(fmt.ENGINES[g] for g in fmt.GRAPHS), target=profile.name,
                               jetson=JETSON_TRTEXEC, versions=" or ".join(profile.tensorrt_versions) or "none")
    commands = []
    for graph in fmt.GRAPHS:
        lines = [f"  {shlex.quote(a)} \\" for a in trtexec_args(manifest, profile, graph)]
        commands.append('"$TRTEXEC" \\\n' + "\n".join(lines) + '\n  "$@"\n')
    return head + "".join(commands)


# ---------------------------------------------------------------- building with the Python API

def _tensorrt_available() -> bool:
    try:
        import tensorrt
    except (ImportError, OSError):
        return False
    return hasattr(tensorrt, "Builder")  # tensorrt-stubs alone leaves an empty namespace package


def _target_profile(manifest: Manifest) -> DeviceProfile:
    try:
        profile = DeviceProfile.from_dict(manifest.target)
    except (ValueError, TypeError):
        profile = get_profile(str(manifest.target["name"]))
    _oldest_tensorrt(profile)  # refuses CPU targets
    return profile


def _make_logger(verbose: bool) -> tuple[trt.ILogger, list[str]]:
    """A TensorRT logger that keeps warnings and errors (and prints INFO too when verbose)."""
    import tensorrt as trt

    messages: list[str] = []
    keep = trt.ILogger.Severity.INFO if verbose else trt.ILogger.Severity.WARNING

    class _Collector(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            if severity <= keep:
                messages.append(f"{severity.name}: {msg}")
                if verbose:
                    print(f"[TensorRT] {severity.name}: {msg}", file=sys.stderr)

    return _Collector(), messages


def _errors(messages: list[str], limit: int = 5) -> str:
    errs = [m for m in messages if m.startswith(("ERROR", "INTERNAL_ERROR"))] or messages
    return " | ".join(m.replace("\n", " ") for m in errs[-limit:]) or "no message from TensorRT"


@dataclass(frozen=True)
class BuilderApi:
    """The Python builder API of the installed TensorRT, from its version: which calls build_engine
    makes (see the feature versions above), recorded with each engine it builds."""

    version: tuple[int, int]

    @classmethod
    def installed(cls) -> BuilderApi:
        import tensorrt as trt

        return cls(api_version(trt.__version__))

    @property
    def strongly_typed(self) -> bool:
        return self.version >= STRONG_TYPING

    def network_flags(self) -> list[str]:
        """EXPLICIT_BATCH where the ONNX parser needs it; STRONGLY_TYPED where it exists (11 dropped
        the flag: strong typing is implied there)."""
        import tensorrt as trt

        flags = [] if self.version >= EXPLICIT_BATCH_ONLY else ["EXPLICIT_BATCH"]
        if self.strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags.append("STRONGLY_TYPED")
        return flags

    def precision_flags(self, precision: str) -> list[str]:
        """The BuilderFlag that allows the graph's precision when building weakly typed; none when
        strongly typed (precision is the graph's own there)."""
        flag = precision_of(precision).trt8_flag
        return [] if self.strongly_typed or flag is None else [BUILDER_FLAGS[flag]]

    def record(self, precision: str, profile: DeviceProfile) -> dict:
        """What the build used, for the engine's artifact info."""
        level = profile.builder_optimization_level if self.version >= OPTIMIZATION_LEVELS else None
        return {"network_flags": self.network_flags(), "precision_flags": self.precision_flags(precision),
                "workspace": "set_memory_pool_limit" if self.version >= MEMORY_POOLS else "max_workspace_size",
                "optimization_level": level}


def _network_from_onnx(builder: trt.Builder, logger: trt.ILogger, api: BuilderApi, onnx: bytes,
                       onnx_path: Path) -> tuple[trt.INetworkDefinition, trt.OnnxParser]:
    """Parse a graph from its verified bytes (its weights file is read beside `onnx_path`); the
    parser is returned too because it owns the weights' memory."""
    import tensorrt as trt

    flags = sum(1 << int(getattr(trt.NetworkDefinitionCreationFlag, f)) for f in api.network_flags())
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx, str(onnx_path)):
        errors = [_parser_error(parser.get_error(i), api) for i in range(parser.num_errors)]
        raise EdgelmError(f"TensorRT could not parse {onnx_path}: {' | '.join(errors) or 'unknown error'}")
    return network, parser


def _parser_error(err: trt.ParserError, api: BuilderApi) -> str:
    """One parser error: its node, the node's operator where the API names it (9.1+), the text."""
    if api.version >= PARSER_OPERATOR:
        return f"node {err.node()} ({err.node_operator()}): {err.desc()}"
    return f"node {err.node()}: {err.desc()}"


def _builder_config(builder: trt.Builder, profile: DeviceProfile, api: BuilderApi,
                    precision: str) -> trt.IBuilderConfig:
    """Workspace from the device's memory budget, its optimization level where the API has one,
    and the precision flag a weakly typed build needs."""
    import tensorrt as trt

    config = builder.create_builder_config()
    if api.version >= MEMORY_POOLS:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes(profile))
    else:  # TensorRT 8.0-8.3 (no stubs: checked by tests/trt_standin_v8.py)
        legacy: Any = config
        legacy.max_workspace_size = workspace_bytes(profile)
    if api.version >= OPTIMIZATION_LEVELS:
        config.builder_optimization_level = profile.builder_optimization_level
    for flag in api.precision_flags(precision):
        config.set_flag(getattr(trt.BuilderFlag, flag))
    return config


def _add_profile(builder: trt.Builder, config: trt.IBuilderConfig, shapes: Shapes) -> None:
    import tensorrt as trt

    opt_profile = builder.create_optimization_profile()
    for name, (mn, opt, mx) in shapes.items():
        opt_profile.set_shape(name, trt.Dims(list(mn)), trt.Dims(list(opt)), trt.Dims(list(mx)))
    if config.add_optimization_profile(opt_profile) < 0:
        raise EdgelmError("TensorRT rejected the optimization profile (check the graph's input names)")


def _timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    """Load the timing cache kept beside the engine (an empty one the first time)."""
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)


def _save_timing_cache(config: trt.IBuilderConfig, path: Path) -> None:
    atomic_write_bytes(path, bytes(config.get_timing_cache().serialize()))


def _build_plan(bundle: Bundle, graph: str, profile: DeviceProfile, api: BuilderApi, verbose: bool) -> bytes:
    import tensorrt as trt

    logger, messages = _make_logger(verbose)
    builder = trt.Builder(logger)
    spec = bundle.manifest.graphs[graph]
    network, _parser = _network_from_onnx(builder, logger, api, bundle.read(spec.file), bundle.path / spec.file)
    config = _builder_config(builder, profile, api, bundle.manifest.precision)
    _add_profile(builder, config, profile_shapes(spec.inputs, bundle.max_streams))
    _timing_cache(config, bundle.path / fmt.TIMING_CACHE)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise EdgelmError(f"TensorRT could not build the {graph} engine for {bundle.path}: {_errors(messages)}")
    _save_timing_cache(config, bundle.path / fmt.TIMING_CACHE)
    return bytes(plan)


def _engine_memory(plan: bytes, api: BuilderApi) -> dict:
    """Device memory (and total weight bytes where the API reports it) of a serialized engine."""
    import tensorrt as trt

    logger, messages = _make_logger(False)
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise EdgelmError(f"TensorRT could not load the engine it just built: {_errors(messages)}")
    if api.version >= ENGINE_MEMORY_V2:
        memory = int(engine.device_memory_size_v2)
    else:
        memory = int(engine.device_memory_size)
    stat = getattr(trt, "EngineStat", None)  # TensorRT 11: engine statistics
    weights = None
    if stat is not None and hasattr(engine, "get_engine_stat"):
        weights = int(getattr(engine, "get_engine_stat")(stat.TOTAL_WEIGHTS_SIZE))
    return {"device_memory_bytes": memory, "weights_bytes": weights}


def _artifact(bundle: Bundle, graph: str, plan: bytes, api: BuilderApi, profile: DeviceProfile) -> Artifact:
    import hashlib

    import tensorrt as trt

    from ..devices import detect

    info = {**_engine_memory(plan, api), "tensorrt_version": trt.__version__,
            "tensorrt_api": api.record(bundle.manifest.precision, profile),
            "built_on": detect().get("gpu_name", "unknown GPU")}
    return Artifact(fmt.ENGINES[graph], hashlib.sha256(plan).hexdigest(), len(plan), "tensorrt-engine", graph,
                    bundle.bundle_id, info)


def build_engine(bundle_dir: str | Path, verbose: bool = False) -> list[Artifact]:
    """Build the step and prefill engines for a bundle on this machine's GPU and record them in
    the manifest's `built` section (bundle_id and signatures unchanged). Returns the records."""
    from ..runtime.bundle import load_bundle

    bundle = load_bundle(bundle_dir)
    for name in (*fmt.ENGINES.values(), fmt.TIMING_CACHE, fmt.MANIFEST):  # what the build writes
        check_output_file(bundle.path / name)
    if not _tensorrt_available():
        raise EdgelmError(f"TensorRT is not installed here; copy {bundle_dir} to the device and run "
                          f"`edgelm build {bundle_dir}` there")
    profile, api = _target_profile(bundle.manifest), BuilderApi.installed()
    plans = {graph: _build_plan(bundle, graph, profile, api, verbose) for graph in fmt.GRAPHS}
    artifacts = [_artifact(bundle, graph, plan, api, profile) for graph, plan in plans.items()]
    for art in artifacts:
        atomic_write_bytes(bundle.path / art.file, plans[art.graph])
    fmt.write(bundle.path, bundle.manifest.with_built(artifacts))
    return artifacts
