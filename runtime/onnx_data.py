"""A graph's external-data initializers, read from its ONNX bytes without the onnx package.

The onnxruntime backend hands a bundle's weights file to ONNX Runtime from memory. ONNX Runtime
1.24+ takes the whole file (`add_external_initializers_from_files_in_memory`); older releases (all
that Python 3.8 has: 1.19.2 is its last) only take one OrtValue per initializer name
(`add_external_initializers`, ONNX Runtime 1.12+). For those, this module reads each initializer's
name, type, shape and (location, offset, length) from the ModelProto's protobuf wire format: the
fields are few and stable, and the onnx package (compiler side) is not on a device. Standard
library and numpy only; every malformed or out-of-range record is an EdgelmError, since the bytes
come from a bundle (hashed, but possibly written by a forger who resealed it).
"""

from __future__ import annotations

from typing import Dict, Iterator, List, NamedTuple, Tuple

import numpy as np

from ..errors import EdgelmError

# ModelProto.graph, GraphProto.initializer, and TensorProto's dims / data_type / name /
# external_data / data_location field numbers (onnx/onnx.proto), and DataLocation.EXTERNAL.
MODEL_GRAPH, GRAPH_INITIALIZER = 7, 5
TENSOR_DIMS, TENSOR_TYPE, TENSOR_NAME, TENSOR_EXTERNAL, TENSOR_LOCATION = 1, 2, 8, 13, 14
EXTERNAL = 1
# TensorProto.DataType -> numpy: the types an OrtValue can be made from (not int4 / fp8).
NUMPY_TYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 4: np.uint16, 5: np.int16, 6: np.int32,
               7: np.int64, 9: np.bool_, 10: np.float16, 11: np.float64, 12: np.uint32, 13: np.uint64}


class ExternalTensor(NamedTuple):
    name: str
    data_type: int
    dims: Tuple[int, ...]
    location: str
    offset: int
    length: int


def _varint(buf: memoryview, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while shift < 70:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise ValueError("varint too long")


def _fields(buf: memoryview) -> Iterator[Tuple[int, int, object]]:
    """(field number, wire type, value) of one protobuf message: an int or a memoryview."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        wire = key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire in (1, 2, 5):
            if wire == 2:
                size, pos = _varint(buf, pos)
            else:
                size = 8 if wire == 1 else 4
            if pos + size > len(buf):
                raise ValueError("truncated field")
            value, pos = buf[pos:pos + size], pos + size
        else:
            raise ValueError(f"wire type {wire}")
        yield key >> 3, wire, value


def _packed(value) -> List[int]:
    out, pos = [], 0
    while pos < len(value):
        item, pos = _varint(value, pos)
        out.append(item)
    return out


def _tensor(buf: memoryview) -> ExternalTensor | None:
    name, data_type, dims, where, located = "", 0, [], {}, 0
    for field, wire, value in _fields(buf):
        if field == TENSOR_DIMS:
            dims += [value] if wire == 0 else _packed(value)
        elif field == TENSOR_TYPE and wire == 0:
            data_type = value
        elif field == TENSOR_NAME and wire == 2:
            name = bytes(value).decode("utf-8")
        elif field == TENSOR_EXTERNAL and wire == 2:
            entry = {k: bytes(v).decode("utf-8") for k, w, v in _fields(value) if w == 2}
            where[entry.get(1, "")] = entry.get(2, "")
        elif field == TENSOR_LOCATION and wire == 0:
            located = value
    if located != EXTERNAL:
        return None
    return ExternalTensor(name, data_type, tuple(dims), where.get("location", ""),
                          int(where.get("offset", "0")), int(where["length"]))


def external_tensors(model: bytes) -> List[ExternalTensor]:
    """Every initializer of the model's main graph whose data lives in an external file."""
    found = []
    for field, wire, graph in _fields(memoryview(model)):
        if field == MODEL_GRAPH and wire == 2:
            for gfield, gwire, tensor in _fields(graph):
                if gfield == GRAPH_INITIALIZER and gwire == 2:
                    found.append(_tensor(tensor))
    return [t for t in found if t is not None]


def _array(t: ExternalTensor, files: Dict[str, np.ndarray], what: str) -> np.ndarray:
    """The initializer as a view into its file's buffer (a copy where the offset is unaligned)."""
    if t.location not in files:
        raise ValueError(f"{t.name} reads {t.location!r}, not a weights file of the manifest")
    if t.data_type not in NUMPY_TYPES:  # int4 / fp8: no numpy type to make an OrtValue from
        raise EdgelmError(f"{what}: weight {t.name} has ONNX type {t.data_type} (int4 or fp8), which onnxruntime "
                          "before 1.24 cannot take from memory; upgrade onnxruntime (1.24+ needs Python 3.10+) "
                          "or run an fp32, fp16 or int8 bundle")
    dtype = np.dtype(NUMPY_TYPES[t.data_type])
    count = int(np.prod(t.dims, dtype=np.int64)) if t.dims else 1
    data = files[t.location]
    if t.length != count * dtype.itemsize or t.offset < 0 or t.offset + t.length > len(data):
        raise ValueError(f"{t.name}'s external data (offset {t.offset}, length {t.length}) does not "
                         f"fit its shape {list(t.dims)} or {t.location}")
    arr = data[t.offset:t.offset + t.length].view(dtype).reshape(t.dims)
    return arr if arr.flags.aligned else arr.copy()


def initializer_arrays(model: bytes, files: Dict[str, np.ndarray], what: str) -> Dict[str, np.ndarray]:
    """name -> array for every external initializer of `model`, from the in-memory `files`
    (name -> uint8 buffer). `what` names the graph in the one-line error."""
    try:
        return {t.name: _array(t, files, what) for t in external_tensors(model)}
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise EdgelmError(f"{what}: its external weights cannot be read ({exc}); re-export the bundle") from None


def takes_files_in_memory(opts) -> bool:
    """ONNX Runtime 1.24+ takes whole weights files from memory; older ones one array per weight."""
    return hasattr(opts, "add_external_initializers_from_files_in_memory")


def add_weights(ort, opts, model: bytes, files: Dict[str, np.ndarray], what: str) -> list:
    """Give a session's options the graph's external weights from memory (`files`: name -> uint8
    buffer): the whole files where ONNX Runtime takes them (1.24+), else one OrtValue per
    initializer. Returns what must outlive the session (ONNX Runtime keeps pointers into it)."""
    if takes_files_in_memory(opts):
        names = list(files)
        opts.add_external_initializers_from_files_in_memory(names, [files[n] for n in names],
                                                            [len(files[n]) for n in names])
        return list(files.values())
    arrays = initializer_arrays(model, files, what)
    values = [ort.OrtValue.ortvalue_from_numpy(a) for a in arrays.values()]
    opts.add_external_initializers(list(arrays), values)
    return [*arrays.values(), *values]
