"""The integer IR: the model as integer ops on quantized tensors, between Keras and the flatbuffer.

Pure data, no TensorFlow: ``lower`` builds a ``Graph`` from a quantized Keras model, ``writer``
serializes it, ``reader`` parses a .tflite back into one. A ``Graph`` is a list of tensors
(shape, storage type, quantization grid, constant values) and a list of operators (TFLite
builtin name, input and output tensor indices, options by readable name), in execution order.

    g = Graph()
    x = g.activation("x", [8, 8, 1], AffineParams(0.0039, -128, -128, 127))
    w = g.constant("w", codes, "int8", Quantization(scales, zeros, axis=0))
    g.add_operator("CONV_2D", [x, w, b], [y], padding="SAME", stride=(1, 1), ...)

Constant data is kept as logical values (INT4 codes unpacked as int8); the writer packs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np

__all__ = ["DTYPES", "FLOAT_DTYPES", "Graph", "Operator", "Quantization", "Tensor"]

DTYPES = ("bool", "int4", "int8", "uint8", "int16", "int32", "int64", "float16", "float32")
FLOAT_DTYPES = frozenset({"float16", "float32"})
_NUMPY = {"bool": np.bool_, "int4": np.int8, "int8": np.int8, "uint8": np.uint8, "int16": np.int16,
          "int32": np.int32, "int64": np.int64, "float16": np.float16, "float32": np.float32}


@dataclass
class Quantization:
    """``real = scale·(code - zero_point)``, per tensor (one entry) or per channel along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 0

    def __post_init__(self):
        self.scale = np.asarray(self.scale, np.float32).reshape(-1)
        self.zero_point = np.asarray(self.zero_point, np.int64).reshape(-1)
        if self.scale.size != self.zero_point.size or self.scale.size == 0:
            raise ValueError(
                f"A quantization needs one zero point per scale. Received: {self.scale.size} scales, "
                f"{self.zero_point.size} zero points"
            )

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1


@dataclass
class Tensor:
    """A tensor: ``data`` holds the values of a constant (codes for quantized ones), else None."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    quantization: Quantization | None = None
    data: np.ndarray | None = None
    dynamic_batch: bool = False

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"Tensor {self.name!r}: dtype must be one of {DTYPES}. Received: {self.dtype!r}")
        self.shape = tuple(int(d) for d in self.shape)
        if self.data is not None:
            self.data = np.asarray(self.data, _NUMPY[self.dtype]).reshape(self.shape)

    @property
    def is_constant(self) -> bool:
        return self.data is not None


@dataclass
class Operator:
    """One builtin op: ``op`` is the TFLite name (``"CONV_2D"``), options by readable name."""

    op: str
    inputs: list[int]
    outputs: list[int]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Graph:
    """One subgraph: tensors, operators in execution order, model inputs and outputs."""

    tensors: list[Tensor] = field(default_factory=list)
    operators: list[Operator] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    description: str = ""

    def add_tensor(self, tensor: Tensor) -> int:
        self.tensors.append(tensor)
        return len(self.tensors) - 1

    def activation(self, name: str, shape: Iterable[int], params, dtype: str = "int8") -> int:
        """A quantized activation ``[batch, *shape]`` on the grid ``params`` (``ops.AffineParams``)."""
        quantization = Quantization([params.scale], [params.zero_point])
        return self.add_tensor(Tensor(name, (1, *shape), dtype, quantization, dynamic_batch=True))

    def plain(self, name: str, shape: Iterable[int], dtype: str) -> int:
        """A non-quantized activation ``[batch, *shape]`` (float input/output, int32, bool)."""
        return self.add_tensor(Tensor(name, (1, *shape), dtype, dynamic_batch=True))

    def constant(self, name: str, values, dtype: str, quantization: Quantization | None = None) -> int:
        values = np.asarray(values)
        return self.add_tensor(Tensor(name, values.shape, dtype, quantization, values))

    def add_operator(self, op: str, inputs: list[int], outputs: list[int], **options) -> None:
        self.operators.append(Operator(op, list(inputs), list(outputs), options))

    def float_operators(self, boundary: Iterable[str] = ()) -> list[str]:
        """``"index:OP"`` of every operator touching a float tensor, except ops named in ``boundary``."""
        boundary = set(boundary)
        found = []
        for index, operator in enumerate(self.operators):
            touched = [self.tensors[i] for i in operator.inputs + operator.outputs if i >= 0]
            if operator.op not in boundary and any(t.dtype in FLOAT_DTYPES for t in touched):
                found.append(f"{index}:{operator.op}")
        return found
