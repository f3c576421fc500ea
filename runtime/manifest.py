"""The bundle format's one owner: file names, the typed manifest, and its strict reader and writer.

Standard library only. `edgelm export` builds a `Manifest` and `write`s it; `edgelm build` adds
device-built artifacts with `with_built`; the runtime reads it with `parse_json` + `from_dict`
(after checking `check_version` and the id, runtime/bundle.py). docs/bundle-format.md is the
prose version of this file.

bundle_id is the sha256 of the canonical manifest (every field but `bundle_id` and `built`, as
sorted-key compact JSON). `files` holds every listed file's sha256, so the id covers every byte of
the bundle that export wrote; artifacts built on the device later (`built`) are outside it, so
building an engine changes neither the id, nor a signature over it, nor which snapshots restore.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from dataclasses import dataclass, field

from ..errors import EdgelmError
from ..precision import NAMES as PRECISIONS
from ..vocab import VOCAB
from .fields import Fields

FORMAT = "edgelm-bundle"
FORMAT_VERSION = 2  # 2: bundle_id covers the whole manifest; weights in one file; `built`

MANIFEST = "manifest.json"
STEP_GRAPH, PREFILL_GRAPH = "step.onnx", "prefill.onnx"
WEIGHTS = "weights.bin"  # every graph's initializers, stored once (ONNX external data)
BUILD_SCRIPT = "build_engine.sh"
REFERENCE = "model.pt"  # optional: the fp32 checkpoint for the torch reference backend
SIGNATURE = "signature.ed25519"  # optional, detached: the one file outside `files`
TIMING_CACHE = "timing.cache"  # TensorRT's builder cache (read only by `edgelm build`)
GRAPHS = ("step", "prefill")
ENGINES = {"step": "engine.plan", "prefill": "engine.prefill.plan"}  # built on the device
NATIVE_SOURCES = ("model.h", "model.c")  # the native C target (fp32 / int8 bundles), written by export
NATIVE_SCRIPT = "build_native.sh"  # cc only: builds the library where edgelm's Python cannot run
NATIVE_LIBRARY = "model.so"  # built from them on the device (edgelm build), both graphs in one library
BUILT = (*ENGINES.values(), NATIVE_LIBRARY)
ARTIFACT_KINDS = ("tensorrt-engine", "native-library")

MAX_MANIFEST_BYTES = 4 << 20
MAX_STREAMS = 1 << 16
MAX_CHUNK = 256
BYTE_ID_DTYPES = ("int64", "int32")  # int32 where the target's TensorRT (8.x) has no INT64
MAX_STATE_BYTES = 1 << 30  # per stream
MAX_STATE_TENSORS = 4096
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # one path component of a bundle file
_STATE_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+){0,3}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_ARCH = re.compile(r"[a-z][a-z0-9_]{0,31}")
_TOP = ("format", "format_version", "edgelm_version", "bundle_id", "arch", "config", "params", "vocab",
        "precision", "opset", "max_streams", "target", "state", "graphs", "validation", "memory",
        "files", "built", "quantization")
_QUANTIZED = ("int8", "int4")  # precisions only a quantized checkpoint exports: "quantization" required
_OUTSIDE_ID = ("bundle_id", "built")


def state_io(name: str) -> tuple[str, str]:
    """Graph input and output names of state tensor `name`: ("state_in.0.h", "state_out.0.h")."""
    return f"state_in.{name}", f"state_out.{name}"


def is_safe_name(name: object) -> bool:
    """A relative path of plain components inside the bundle: no '..', no absolute path."""
    return isinstance(name, str) and len(name) <= 255 and all(_NAME.fullmatch(part) for part in name.split("/"))


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, shape ("batch" for the batch dimension) and dtype."""

    name: str
    shape: tuple
    dtype: str

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class StateTensor:
    """One recurrent state tensor: per-stream shape (batch dim excluded) and graph IO names."""

    name: str  # e.g. "0.h"
    input: str  # "state_in.0.h"
    output: str  # "state_out.0.h"
    shape: tuple[int, ...]
    dtype: str = "float32"

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * 4  # float32: the only state dtype

    def to_dict(self) -> dict:
        return {"name": self.name, "input": self.input, "output": self.output,
                "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class GraphSpec:
    file: str
    nodes: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    chunk: int | None = None  # prefill: bytes per call
    data: tuple[str, ...] = ()  # the external-data files (weights) the graph reads

    @property
    def ids_dtype(self) -> str:
        """The byte_ids input's dtype ("int64", or "int32" on TensorRT 8 targets)."""
        return next((t.dtype for t in self.inputs if t.name == "byte_ids"), "int64")

    def to_dict(self) -> dict:
        return {"file": self.file, **({"chunk": self.chunk} if self.chunk is not None else {}),
                "nodes": self.nodes, "data": list(self.data),
                "inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}


@dataclass(frozen=True)
class Artifact:
    """A file built on the device from the bundle (a TensorRT engine): hashed, outside bundle_id."""

    file: str
    sha256: str
    bytes: int
    kind: str  # "tensorrt-engine" | "native-library"
    graph: str  # the graph it was built from: "step" | "prefill" (a native library: "step", and holds both)
    bundle_id: str  # the bundle it was built from: an artifact of another bundle is refused
    info: dict = field(default_factory=dict)  # e.g. tensorrt_version, device_memory_bytes, built_on

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Manifest:
    arch: str
    config: dict
    params: int
    precision: str
    opset: int
    max_streams: int  # the batch engine backends are built for; ONNX Runtime may open more
    target: dict  # the device profile's fields
    state: tuple[StateTensor, ...]
    graphs: dict[str, GraphSpec]  # "step", "prefill"
    files: dict[str, str]  # name -> sha256 of every file export wrote
    validation: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)
    built: dict[str, Artifact] = field(default_factory=dict)
    quantization: dict = field(default_factory=dict)  # int8/int4: recipe, group, sites, calibration
    bundle_id: str = ""
    edgelm_version: str = ""  # the writer's: edgelm export sets it
    vocab: int = VOCAB
    format_version: int = FORMAT_VERSION

    # -- facts -------------------------------------------------------------------------
    @property
    def prefill_chunk(self) -> int:
        return self.graphs["prefill"].chunk or 1

    def state_bytes_per_stream(self) -> int:
        return sum(s.nbytes for s in self.state)

    def expected_io(self, graph: str) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """The inputs and outputs graph `graph` must have, from the state spec alone."""
        spec = self.graphs[graph]
        return graph_io(self.state, spec.chunk, spec.ids_dtype)

    # -- writing -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        quant = {"quantization": self.quantization} if self.quantization else {}  # absent for float bundles
        return {**quant, "format": FORMAT, "format_version": self.format_version,
                "edgelm_version": self.edgelm_version, "bundle_id": self.bundle_id, "arch": self.arch,
                "config": self.config, "params": self.params, "vocab": self.vocab,
                "precision": self.precision, "opset": self.opset, "max_streams": self.max_streams,
                "target": self.target, "state": [s.to_dict() for s in self.state],
                "graphs": {k: g.to_dict() for k, g in self.graphs.items()},
                "validation": self.validation, "memory": self.memory, "files": dict(self.files),
                "built": {k: a.to_dict() for k, a in self.built.items()}}

    def sealed(self) -> "Manifest":
        """This manifest with its bundle_id computed from its content."""
        return dataclasses.replace(self, bundle_id=compute_id(self.to_dict()))

    def with_built(self, artifacts: list[Artifact]) -> "Manifest":
        return dataclasses.replace(self, built={**self.built, **{a.file: a for a in artifacts}})

    def dumps(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


def graph_io(state, chunk: int | None = None,
             ids: str = "int64") -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """The interface of a step graph (chunk None) or a prefill graph over `state` tensors. Byte ids
    are int64, or int32 for targets whose TensorRT (8.x) has no INT64 (BYTE_ID_DTYPES)."""
    if ids not in BYTE_ID_DTYPES:
        raise ValueError(f"byte ids are {' or '.join(BYTE_ID_DTYPES)}, not {ids}")
    inputs = [TensorSpec("byte_ids", ("batch",) if chunk is None else ("batch", chunk), ids)]
    outputs = [TensorSpec("logits", ("batch", VOCAB), "float32")]
    inputs += [TensorSpec(s.input, ("batch", *s.shape), "float32") for s in state]
    outputs += [TensorSpec(s.output, ("batch", *s.shape), "float32") for s in state]
    return tuple(inputs), tuple(outputs)


def compute_id(manifest: dict) -> str:
    """sha256 of the canonical manifest: every field but bundle_id and built, sorted-key JSON."""
    body = {k: v for k, v in manifest.items() if k not in _OUTSIDE_ID}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


# -- reading ------------------------------------------------------------------------------
def parse_json(data: bytes, where: str) -> dict:
    """The manifest's JSON object: no NaN/Infinity, no duplicate keys, an object at the top."""
    def no_constants(name):
        raise ValueError(f"{name} is not JSON")

    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate key {min(k for k in keys if keys.count(k) > 1)!r}")
        return dict(pairs)
    try:
        raw = json.loads(data.decode("utf-8"), parse_constant=no_constants, object_pairs_hook=no_duplicates)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise EdgelmError(f"{where} is corrupted ({str(exc)[:120]}); re-export the bundle") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise EdgelmError(f"{where} is not an edgelm bundle manifest; re-export the bundle")
    return raw


def from_dict(raw: dict, where: str) -> Manifest:
    """A Manifest from parsed JSON, every field's type and range checked (the wrong one named)."""
    f = Fields(raw, where)
    check_version(f.raw, f.where)
    unknown = sorted(set(raw) - set(_TOP))
    if unknown:
        raise f.error(unknown[0], "is not a field of bundle format 2")
    state = tuple(_state(Fields(s, where, f"state[{i}]")) for i, s in enumerate(f.list("state", 1, MAX_STATE_TENSORS)))
    _unique([s.name for s in state], f, "state")
    if sum(s.nbytes for s in state) > MAX_STATE_BYTES:
        raise f.error("state", f"adds up to more than {MAX_STATE_BYTES >> 20} MiB per stream")
    files = _files(f)
    m = Manifest(
        arch=f.match("arch", _ARCH), config=f.dict("config"), params=f.int("params", 0, 1 << 40),
        precision=f.choice("precision", PRECISIONS), opset=f.int("opset", 7, 30),
        max_streams=f.int("max_streams", 1, MAX_STREAMS), target=_target(f), state=state,
        graphs={}, files=files, validation=f.dict("validation"), memory=f.dict("memory"),
        built={}, bundle_id=f.match("bundle_id", _HEX64), edgelm_version=f.str("edgelm_version"),
        vocab=f.int("vocab", VOCAB, VOCAB), format_version=FORMAT_VERSION, quantization=_quantization(f))
    graphs = f.dict("graphs")
    if sorted(graphs) != sorted(GRAPHS):
        raise f.error("graphs", f"must hold exactly {' and '.join(GRAPHS)}")
    m = dataclasses.replace(m, graphs={g: _graph(Fields(graphs[g], where, f"graphs.{g}"), g, m) for g in GRAPHS})
    built = {name: _artifact(Fields(a, where, f"built.{name}"), name, m)
             for name, a in f.dict("built").items()}
    return dataclasses.replace(m, built=built)


def _quantization(f: Fields) -> dict:
    """The recipe record of an int8/int4 bundle (required there, refused on float bundles)."""
    quantized = f.raw.get("precision") in _QUANTIZED
    if "quantization" not in f.raw:
        if quantized:
            raise f.error("quantization", f"is missing; an {f.raw['precision']} bundle records its recipe")
        return {}
    q = f.dict("quantization")
    if not quantized:
        raise f.error("quantization", "is only for int8/int4 bundles")
    if not isinstance(q.get("recipe"), str) or not q["recipe"]:
        raise f.error("quantization", "must name its recipe")
    return q


def check_version(raw: dict, where: str) -> None:
    """Refuse a format this edgelm does not read (newer, older, or not a version at all)."""
    version = raw.get("format_version")
    if type(version) is not int or version < 1:
        raise Fields(raw, where).error("format_version", "must be a positive integer")
    if version > FORMAT_VERSION:
        raise EdgelmError(f"bundle format {version} is newer than this edgelm reads ({FORMAT_VERSION}); "
                          "upgrade edgelm on this device")
    if version < FORMAT_VERSION:
        raise EdgelmError(f"bundle format {version} predates bundle ids that cover the whole manifest "
                          f"(this edgelm reads format {FORMAT_VERSION}); re-export the bundle with this edgelm")


def _state(f: "Fields") -> StateTensor:
    f.only(("name", "input", "output", "shape", "dtype"))
    name = f.match("name", _STATE_NAME)
    inp, out = state_io(name)
    if f.str("input") != inp or f.str("output") != out:
        raise f.error("input", f"and output must be {inp!r} and {out!r} (named after the state tensor)")
    shape = tuple(f.ints("shape", 1, 4, 1, 1 << 20))
    f.choice("dtype", ("float32",))
    return StateTensor(name, inp, out, shape)


def _files(f: "Fields") -> dict[str, str]:
    files = f.dict("files")
    reserved = (MANIFEST, SIGNATURE, *BUILT)
    for name, digest in files.items():
        if not is_safe_name(name) or name in reserved:
            raise f.error("files", f"lists {name[:80]!r}, which is not a plain file name inside the bundle")
        if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise f.error(f"files.{name}", "must be a sha256 (64 lowercase hex digits)")
    return files


def _target(f: "Fields") -> dict:
    target = f.dict("target")
    Fields(target, f.where, "target").str("name")
    return target


def _graph(f: "Fields", graph: str, m: Manifest) -> GraphSpec:
    f.only(("file", "chunk", "nodes", "data", "inputs", "outputs"))
    file = f.str("file")
    data = tuple(f.strs("data", 0, 8))
    for name in (file, *data):
        if name not in m.files:
            raise f.error("file" if name == file else "data", f"names {name[:80]!r}, which `files` does not list")
    chunk = f.int("chunk", 1, MAX_CHUNK) if graph == "prefill" else None
    if graph == "step" and "chunk" in f.raw:
        raise f.error("chunk", "belongs to the prefill graph only")
    spec = GraphSpec(file, f.int("nodes", 1, 1 << 24), _io(f, "inputs"), _io(f, "outputs"), chunk, data)
    ids = spec.ids_dtype if spec.ids_dtype in BYTE_ID_DTYPES else "int64"  # anything else fails below
    want = graph_io(m.state, chunk, ids)
    if (spec.inputs, spec.outputs) != want:
        raise f.error("inputs", "and outputs do not match the manifest's state spec "
                                f"(expected {[t.name for t in want[0]][:4]}...)")
    return spec


def _io(f: "Fields", key: str) -> tuple[TensorSpec, ...]:
    """A graph's inputs or outputs as written; `_graph` compares them with what the state implies."""
    out = []
    for i, t in enumerate(f.list(key, 1, MAX_STATE_TENSORS + 1)):  # byte_ids/logits + the state
        g = Fields(t, f.where, f"{f.prefix}{key}[{i}]")
        g.only(("name", "shape", "dtype"))
        out.append(TensorSpec(g.str("name"), tuple(g.list("shape", 0, 8)), g.str("dtype")))
    return tuple(out)


def _artifact(f: "Fields", name: str, m: Manifest) -> Artifact:
    f.only(("file", "sha256", "bytes", "kind", "graph", "bundle_id", "info"))
    if name not in BUILT or f.str("file") != name:
        raise f.error("file", f"{name[:80]!r} is not a file edgelm builds on the device")
    kind = f.choice("kind", ARTIFACT_KINDS)
    if (kind == "native-library") != (name == NATIVE_LIBRARY):
        raise f.error("kind", f"{kind} does not match {name}")
    return Artifact(name, f.match("sha256", _HEX64), f.int("bytes", 1, 1 << 40), kind,
                    f.choice("graph", GRAPHS), f.match("bundle_id", _HEX64), f.dict("info"))


def _unique(names: list[str], f: "Fields", key: str) -> None:
    if len(set(names)) != len(names):
        raise f.error(key, "names a state tensor twice")


def write(directory, manifest: Manifest) -> Manifest:
    """Seal `manifest` (compute its bundle_id) and write DIR/manifest.json atomically."""
    from pathlib import Path

    from ..fileio import atomic_write_text

    sealed = manifest.sealed()
    atomic_write_text(Path(directory) / MANIFEST, sealed.dumps())
    return sealed
