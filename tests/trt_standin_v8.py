"""TensorRT 8.2 and 8.5 for tests/trt_standin.py: the Python API of Jetson Nano's TensorRT (8.2,
JetPack 4.6.1+) and of Xavier's (8.5, JetPack 5.1), over the same computing engines, plans and
fake GPU as the 10.x stand-in. `trt_standin.installed(api="8.2")` (or "8.5") installs one.

There are no tensorrt-stubs for 8.x, so these surfaces are written from NVIDIA's 8.x Python API
documentation, checked against the Python bindings' source of the same releases:
  https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-825/api/python_api/infer/Core/Engine.html
  https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-823/api/python_api/infer/Core/ExecutionContext.html
  https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-824/api/c_api/classnvinfer1_1_1_i_builder_config.html
  https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-840-ea/api/index.html ("API Changes For
      TensorRT 8.4.0 EA": set_memory_pool_limit, get_memory_pool_limit and MemoryPoolType are new)
  https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-851/pdf/TensorRT-API.pdf (8.5.1 API changes)
  https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-853/api/c_api/classnvinfer1_1_1_i_cuda_engine.html
      and .../classnvinfer1_1_1_i_execution_context.html (8.5: bindings deprecated beside the name API)
  https://docs.nvidia.com/deeplearning/tensorrt/archives/tensorrt-843/api/python_api/parsers/Onnx/pyOnnx.html
      (parse(model, path=None)) and .../tensorrt-825/api/c_api/classnvonnxparser_1_1_i_parser_error.html
      (code, desc, file, line, func, node: no node_name / node_operator before 9.1)
  https://github.com/NVIDIA/TensorRT tags 8.2.1 and 8.5.2: python/src/infer/pyCore.cpp,
      pyFoundationalTypes.cpp, python/src/parsers/pyOnnx.cpp (the .def lists are the surface),
      include/NvInfer.h and NvInferRuntimeCommon.h (enum values)
  https://github.com/onnx/onnx-tensorrt branches 8.2-GA and 8.5-GA: ModelImporter.cpp (explicit batch
      required; inputs added with convertDtype's type), onnx2trt_utils.cpp (convertDtype: INT64 -> kINT32)

What differs from 10.x:
  8.2  I/O by binding index only: ICudaEngine.num_bindings, get_binding_name, get_binding_index,
       binding_is_input, get_binding_shape, get_binding_dtype, get_profile_shape;
       IExecutionContext.set_binding_shape(binding, shape), get_binding_shape,
       all_binding_shapes_specified, execute_async_v2(bindings, stream_handle, input_consumed=None).
       No num_io_tensors, get_tensor_*, set_input_shape, set_tensor_address, execute_async_v3,
       TensorIOMode. IBuilderConfig.max_workspace_size; no memory pools (MemoryPoolType) and no
       builder_optimization_level. DataType FLOAT, HALF, INT8, INT32, BOOL.
  8.5  both the (deprecated) bindings API above and the name API: num_io_tensors, get_tensor_name,
       get_tensor_mode, get_tensor_dtype, get_tensor_shape, get_tensor_profile_shape,
       set_input_shape, set_tensor_address, get_tensor_address, get_tensor_shape (context),
       execute_async_v3; TensorIOMode; set_memory_pool_limit and MemoryPoolType (max_workspace_size
       is the WORKSPACE pool, deprecated); DataType adds UINT8; still no builder_optimization_level.
  Both: no STRONGLY_TYPED (9.0), no INT64 (9.0), no ParserError.node_name / node_operator (9.1), no
       device_memory_size_v2 (10.1); NetworkDefinitionCreationFlag is EXPLICIT_BATCH and
       EXPLICIT_PRECISION; BuilderFlag has the 8.x values (FP16 0, INT8 1, STRICT_TYPES 4, REFIT 5).
       The ONNX parser refuses a network created without 1 << EXPLICIT_BATCH. It imports an int64
       graph input or output as an INT32 binding, logging that only at VERBOSE ("Adding network
       input: byte_ids with dtype: Int32, ..."; the "Make sure input ... has Int64 binding" warning is
       10.x's, which keeps INT64); the kernel converts. int64 initializers log the WARNING "Your ONNX
       model has been generated with INT64 weights ...". Builds are weakly typed: the plan header
       records the precision flags set (FP16, INT8).
Members a generation lacks are absent (AttributeError), as on the real library; execution-context
calls are counted in `Device.calls`.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

import onnx

import trt_standin as ts
from trt_standin import _Absent, without

# What 8.2 lacks of the name-based I/O API that 8.5 introduced
NAME_API_ENGINE = ("num_io_tensors", "get_tensor_name", "get_tensor_mode", "get_tensor_dtype", "get_tensor_shape",
                   "get_tensor_profile_shape")
NAME_API_CONTEXT = ("set_input_shape", "set_tensor_address", "get_tensor_address", "get_tensor_shape",
                    "execute_async_v3")

# The 8.x enums in value order (the docs' member lists): 8.5 appends to 8.2's, values unchanged.
DATA_TYPES_82 = ("FLOAT", "HALF", "INT8", "INT32", "BOOL")
BUILDER_FLAGS_82 = ("FP16", "INT8", "DEBUG", "GPU_FALLBACK", "STRICT_TYPES", "REFIT", "DISABLE_TIMING_CACHE",
                    "TF32", "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS",
                    "PREFER_PRECISION_CONSTRAINTS", "DIRECT_IO", "REJECT_EMPTY_ALGORITHMS")


def _enum(name: str, members: tuple) -> Any:
    """An IntEnum numbering `members` from 0, as TensorRT's bindings do."""
    return enum.IntEnum(name, [(m, i) for i, m in enumerate(members)])  # type: ignore[misc]


DataType82 = _enum("DataType", DATA_TYPES_82)
DataType85 = _enum("DataType", DATA_TYPES_82 + ("UINT8",))
BuilderFlag82 = _enum("BuilderFlag", BUILDER_FLAGS_82)
BuilderFlag85 = _enum("BuilderFlag", BUILDER_FLAGS_82 + ("ENABLE_TACTIC_HEURISTIC",))


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    EXPLICIT_PRECISION = 1


class MemoryPoolType85(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3


EXPLICIT_BATCH_ONLY = ("This version of the ONNX parser only supports TensorRT INetworkDefinitions with an "
                       "explicit batch dimension. Please ensure the network was created using the "
                       "EXPLICIT_BATCH NetworkDefinitionCreationFlag.")
INT64_WEIGHTS = ("Your ONNX model has been generated with INT64 weights, while TensorRT does not natively "
                 "support INT64. Attempting to cast down to INT32.")


# ================================================================ builder side

class Network8(ts.Network):
    def _strongly_typed(self) -> bool:
        return False  # no STRONGLY_TYPED flag before 9.0


class ParserError8(ts.ParserError):
    node_name = _Absent()  # 9.1+
    node_operator = _Absent()


class OnnxParser8(ts.OnnxParser):
    _error_type = ParserError8

    def _check_model(self, proto: Any) -> str | None:
        if not self.network.flags >> int(NetworkDefinitionCreationFlag.EXPLICIT_BATCH) & 1:
            return EXPLICIT_BATCH_ONLY
        if any(init.data_type == onnx.TensorProto.INT64 for init in proto.graph.initializer):
            ts._log(self.logger, ts.Severity.WARNING, f"onnx2trt_utils.cpp:369: {INT64_WEIGHTS}")
        return None

    def _tensor(self, value: Any, mode: str) -> ts._Tensor:
        """No INT64 before 9.0: an int64 graph input or output becomes an INT32 binding."""
        tensor = super()._tensor(value, mode)
        if tensor.dtype != int(ts.DataType.INT64):
            return tensor
        if mode == "input":
            ts._log(self.logger, ts.Severity.VERBOSE, f"ModelImporter.cpp:250: Adding network input: {tensor.name} "
                    f"with dtype: Int32, dimensions: {tuple(tensor.shape)}")
        return dataclasses.replace(tensor, dtype=int(DataType82.INT32), graph_dtype="int64")


class _Config8(ts.BuilderConfig):
    """IBuilderConfig of 8.x: weakly typed (precision by BuilderFlag), no optimization levels."""

    builder_optimization_level = _Absent()  # 8.6+

    def _settings(self) -> dict:
        return {"optimization_level": None, "workspace": self.max_workspace_size,
                "precision_flags": self._precision_flags()}


class Config82(_Config8):
    """8.0-8.3: the workspace is max_workspace_size; no memory pools."""

    _flag_type = BuilderFlag82
    set_memory_pool_limit = _Absent()  # 8.4+
    get_memory_pool_limit = _Absent()

    def __init__(self, builder: ts.Builder) -> None:
        super().__init__(builder)
        self._workspace = 0

    @property  # type: ignore[override]
    def max_workspace_size(self) -> int:
        return self._workspace

    @max_workspace_size.setter
    def max_workspace_size(self, value: int) -> None:
        self._workspace = ts._pybind_int(value, "max_workspace_size")


class Config85(_Config8):
    """8.4-8.5: memory pools; max_workspace_size (deprecated) is the WORKSPACE pool."""

    _flag_type = BuilderFlag85

    @property  # type: ignore[override]
    def max_workspace_size(self) -> int:
        return self.get_memory_pool_limit(MemoryPoolType85.WORKSPACE)  # type: ignore[arg-type]

    @max_workspace_size.setter
    def max_workspace_size(self, value: int) -> None:
        self.set_memory_pool_limit(MemoryPoolType85.WORKSPACE, value)  # type: ignore[arg-type]


class Builder82(ts.Builder):
    _network_type, _config_type = Network8, Config82


class Builder85(ts.Builder):
    _network_type, _config_type = Network8, Config85


# ================================================================ runtime side

class _BindingEngine(ts.CudaEngine):
    """The bindings API (8.x; removed in 10.0): binding index = position, inputs then outputs;
    getters take an index or (overloads) a name."""

    _data_type: Any = DataType82  # the generation's DataType

    has_implicit_batch_dimension = False  # ONNX networks are explicit batch
    max_batch_size = 1  # always 1 for explicit batch engines

    def _binding(self, binding: object) -> ts._Tensor | None:
        if isinstance(binding, str):
            return self.by_name.get(binding)
        i = ts._pybind_int(binding, "binding")
        return self.tensors[i] if 0 <= i < len(self.tensors) else None

    @property
    def num_bindings(self) -> int:
        return len(self.tensors)

    def get_binding_name(self, index: int) -> str | None:
        t = self._binding(ts._pybind_int(index, "get_binding_name"))
        return t.name if t else None

    def get_binding_index(self, name: str) -> int:
        return next((i for i, t in enumerate(self.tensors) if t.name == name), -1)

    def binding_is_input(self, binding: int | str) -> bool:
        t = self._binding(binding)
        return t is not None and t.mode == "input"

    def get_binding_shape(self, binding: int | str) -> ts.Dims:
        t = self._binding(binding)
        return ts.Dims(list(t.shape)) if t else ts.Dims()

    def get_binding_dtype(self, binding: int | str) -> Any:
        t = self._binding(binding)
        return self._data_type(t.dtype if t else 0)

    def get_profile_shape(self, profile_index: int, binding: int | str) -> list[ts.Dims]:
        t = self._binding(binding)
        return [ts.Dims(list(s)) for s in self.profile.get(t.name, ())] if t else []


@without(*NAME_API_ENGINE, "device_memory_size_v2")  # the name API arrived in 8.5; _v2 in 10.1
class Engine82(_BindingEngine):
    pass


class Engine85(_BindingEngine):
    _data_type = DataType85
    device_memory_size_v2 = _Absent()  # 10.1+

    def get_tensor_dtype(self, name: str) -> Any:
        return self._data_type(int(super().get_tensor_dtype(name)))


class _BindingContext(ts.ExecutionContext):
    """Shapes by binding index and device pointers in a list by binding index (enqueueV2)."""

    def _name(self, binding: int) -> str | None:
        t = self._engine._binding(ts._pybind_int(binding, "binding"))  # type: ignore[attr-defined]
        return t.name if t else None

    def set_binding_shape(self, binding: int, shape: tuple | list | ts.Dims) -> bool:
        self.device.calls["set_binding_shape"] += 1
        name = self._name(binding)
        if name is None:
            return self._error(f"IExecutionContext::setBindingDimensions: no binding {binding}")
        return self._set_shape(name, ts._as_dims(shape), "IExecutionContext::setBindingDimensions")

    def get_binding_shape(self, binding: int) -> ts.Dims:
        name = self._name(binding)
        shape = self.shapes.get(name) if name else None
        return ts.Dims(list(shape)) if shape is not None else ts.Dims()

    @property
    def all_binding_shapes_specified(self) -> bool:
        return all(t.name in self.shapes for t in self._engine.tensors if t.mode == "input")

    def execute_async_v2(self, bindings: list, stream_handle: int, input_consumed: object = None) -> bool:
        """enqueueV2: one device pointer per binding index, read at every call."""
        self.device.calls["execute_async_v2"] += 1
        where = "IExecutionContext::enqueueV2"
        if not isinstance(bindings, (list, tuple)) or input_consumed is not None:
            raise TypeError("execute_async_v2(): incompatible function arguments")
        pointers = [ts._pybind_int(p, "execute_async_v2") for p in bindings]
        if len(pointers) != len(self._engine.tensors):
            return self._error(f"{where}: {len(pointers)} bindings given, the engine has {len(self._engine.tensors)}")
        for t, ptr in zip(self._engine.tensors, pointers):
            if not self._set_address(t.name, ptr, where):
                return False
        return self._enqueue(ts._pybind_int(stream_handle, "execute_async_v2"), where)


@without(*NAME_API_CONTEXT)  # the name API arrived in 8.5
class Context82(_BindingContext):
    pass


class Context85(_BindingContext):
    pass


class Runtime82(ts.Runtime):
    _engine_type = Engine82


class Runtime85(ts.Runtime):
    _engine_type = Engine85


Engine82._context_type, Engine85._context_type = Context82, Context85


# ================================================================ the module

def surface(api: str) -> dict[str, Any]:
    """The `tensorrt` module's names of the 8.2 or 8.5 stand-in."""
    common = {"ILogger": ts.ILogger, "Logger": ts.Logger, "Dims": ts.Dims, "OnnxParser": OnnxParser8,
              "ParserError": ParserError8, "NetworkDefinitionCreationFlag": NetworkDefinitionCreationFlag,
              "IOptimizationProfile": ts.OptimizationProfile, "ITimingCache": ts.TimingCache,
              "INetworkDefinition": Network8, "IHostMemory": ts.HostMemory}
    if api == "8.2":
        return {**common, "DataType": DataType82, "BuilderFlag": BuilderFlag82, "Builder": Builder82,
                "Runtime": Runtime82, "ICudaEngine": Engine82, "IExecutionContext": Context82,
                "IBuilderConfig": Config82}
    return {**common, "DataType": DataType85, "BuilderFlag": BuilderFlag85, "MemoryPoolType": MemoryPoolType85,
            "TensorIOMode": ts.TensorIOMode, "Builder": Builder85, "Runtime": Runtime85, "ICudaEngine": Engine85,
            "IExecutionContext": Context85, "IBuilderConfig": Config85}
