"""Serialize an integer IR ``Graph`` into TFLite flatbuffer bytes, and nothing else.

Every decision about the model was made when lowering; the writer only maps the IR onto the
TFLite schema (``ai_edge_litert.schema_py_generated`` object API): tensor types, quantization,
constant buffers (INT4 packed two codes a byte), operator codes with the versions TensorFlow's
converter writes for int8 kernels, and options by name (``fused_activation_function="RELU"``
becomes ``fusedActivationFunction = ActivationFunctionType.RELU``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tflite_export.flatbuffer import pack_int4, serialize
from tflite_export.ir import Graph, Operator, Tensor

__all__ = ["OPTIONS", "VERSIONS", "write"]

# Operator versions as TensorFlow's converter writes them for int8 kernels.
VERSIONS = {
    "CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 4, "MAX_POOL_2D": 2, "AVERAGE_POOL_2D": 2,
    "MEAN": 2, "ADD": 2, "CONCATENATION": 2, "RESHAPE": 1, "SOFTMAX": 2, "LOGISTIC": 2, "TANH": 2,
    "MINIMUM": 2, "MAXIMUM": 2, "QUANTIZE": 2, "DEQUANTIZE": 2, "PAD": 2, "CAST": 1, "GREATER_EQUAL": 2,
    "SELECT_V2": 1, "SLICE": 2, "RELU": 2, "RESIZE_NEAREST_NEIGHBOR": 2,
    "TRANSPOSE": 2, "MUL": 2, "SUB": 2, "LEAKY_RELU": 2, "ELU": 1, "GELU": 2, "TRANSPOSE_CONV": 3, "SHAPE": 1,
    "STRIDED_SLICE": 1, "RESIZE_BILINEAR": 3, "PRELU": 1,
}
# The options table of each op that has one (schema.BuiltinOptions member and *OptionsT class).
OPTIONS = {
    "CONV_2D": "Conv2DOptions",
    "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "FULLY_CONNECTED": "FullyConnectedOptions",
    "MAX_POOL_2D": "Pool2DOptions",
    "AVERAGE_POOL_2D": "Pool2DOptions",
    "MEAN": "ReducerOptions",
    "ADD": "AddOptions",
    "SUB": "SubOptions",
    "MUL": "MulOptions",
    "LEAKY_RELU": "LeakyReluOptions",
    "GELU": "GeluOptions",
    "TRANSPOSE_CONV": "TransposeConvOptions",
    "SHAPE": "ShapeOptions",
    "STRIDED_SLICE": "StridedSliceOptions",
    "CONCATENATION": "ConcatenationOptions",
    "RESHAPE": "ReshapeOptions",
    "SOFTMAX": "SoftmaxOptions",
    "CAST": "CastOptions",
    "PAD": "PadOptions",
    "QUANTIZE": "QuantizeOptions",
    "MINIMUM": "MaximumMinimumOptions",
    "MAXIMUM": "MaximumMinimumOptions",
    "GREATER_EQUAL": "GreaterEqualOptions",
    "SELECT_V2": "SelectV2Options",
    "RESIZE_NEAREST_NEIGHBOR": "ResizeNearestNeighborOptions",
    "RESIZE_BILINEAR": "ResizeBilinearOptions",
}
_TENSOR_TYPES = {
    "bool": schema.TensorType.BOOL, "int4": schema.TensorType.INT4, "int8": schema.TensorType.INT8,
    "uint8": schema.TensorType.UINT8, "int16": schema.TensorType.INT16, "int32": schema.TensorType.INT32,
    "int64": schema.TensorType.INT64, "float16": schema.TensorType.FLOAT16, "float32": schema.TensorType.FLOAT32,
}


# Option values given by name: how each becomes the schema's integer.
ENUM_OPTIONS = {
    "padding": lambda name: getattr(schema.Padding, name),
    "fused_activation_function": lambda name: getattr(schema.ActivationFunctionType, name),
    "in_data_type": _TENSOR_TYPES.__getitem__,
    "out_data_type": _TENSOR_TYPES.__getitem__,
}


def camel_case(name: str) -> str:
    """``fused_activation_function`` → ``fusedActivationFunction`` (the object API's field names)."""
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def _tensor(tensor: Tensor, buffers: list) -> Any:
    t = schema.TensorT()
    t.name = tensor.name
    t.shape = np.array(tensor.shape, np.int32)
    if tensor.dynamic_batch:
        t.shapeSignature = np.array([-1, *tensor.shape[1:]], np.int32)
    t.type = _TENSOR_TYPES[tensor.dtype]
    t.buffer = 0
    if tensor.quantization is not None:
        q = schema.QuantizationParametersT()
        q.scale = tensor.quantization.scale.astype(np.float32)
        q.zeroPoint = tensor.quantization.zero_point.astype(np.int64)
        q.quantizedDimension = int(tensor.quantization.axis)
        t.quantization = q
    if tensor.data is not None:
        data = pack_int4(tensor.data.reshape(-1)) if tensor.dtype == "int4" else np.ascontiguousarray(tensor.data)
        buffer = schema.BufferT()
        buffer.data = np.frombuffer(data.tobytes(), np.uint8)
        buffers.append(buffer)
        t.buffer = len(buffers) - 1
    return t


def _options(operator: Operator) -> tuple[int, Any]:
    name = OPTIONS.get(operator.op)
    if name is None:
        if operator.options:
            raise ValueError(f"Operator {operator.op} takes no options. Received: {sorted(operator.options)}")
        return schema.BuiltinOptions.NONE, None
    options = getattr(schema, f"{name}T")()
    for key, value in operator.options.items():
        field = camel_case(key)
        if not hasattr(options, field):
            raise ValueError(f"{operator.op} has no option {key!r}. Received: {sorted(operator.options)}")
        if key in ENUM_OPTIONS:
            value = ENUM_OPTIONS[key](value)
        elif isinstance(value, (list, tuple)):
            value = list(value)
        setattr(options, field, value)
    return getattr(schema.BuiltinOptions, name), options


def write(graph: Graph) -> bytes:
    """The flatbuffer bytes of ``graph`` (one subgraph, identifier ``TFL3``)."""
    buffers = [schema.BufferT()]  # buffer 0 is the empty sentinel
    tensors = [_tensor(tensor, buffers) for tensor in graph.tensors]
    opcodes: dict[str, int] = {}
    opcode_list = []
    operators = []
    for operator in graph.operators:
        if operator.op not in opcodes:
            code = getattr(schema.BuiltinOperator, operator.op)
            oc = schema.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = VERSIONS.get(operator.op, 1)
            opcodes[operator.op] = len(opcode_list)
            opcode_list.append(oc)
        o = schema.OperatorT()
        o.opcodeIndex = opcodes[operator.op]
        o.inputs = np.asarray(operator.inputs, np.int32)
        o.outputs = np.asarray(operator.outputs, np.int32)
        o.builtinOptionsType, o.builtinOptions = _options(operator)
        operators.append(o)
    subgraph = schema.SubGraphT()
    subgraph.tensors = tensors
    subgraph.inputs = np.asarray(graph.inputs, np.int32)
    subgraph.outputs = np.asarray(graph.outputs, np.int32)
    subgraph.operators = operators
    subgraph.name = "main"
    model = schema.ModelT()
    model.version = 3
    model.operatorCodes = opcode_list
    model.subgraphs = [subgraph]
    model.buffers = buffers
    model.description = graph.description
    return serialize(model)
