"""The kernel registry of the reference interpreter and what a kernel sees of its op.

A kernel is a function ``kernel(op: Op) -> None`` registered for a TFLite builtin name with
``@kernel("CONV_2D")``; it reads ``op.input(i)`` (numpy arrays of stored values: codes for
quantized tensors, INT4 unpacked to int8), the tensors' quantization (``op.inputs[i]``,
``op.outputs[i]``: :class:`TensorSpec`) and ``op.options`` (the schema's ``*OptionsT`` object,
or None), and stores its results with ``op.set_output(i, array)``. Output shapes come from the
inputs at run time, so any batch size runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tflite_export.reference.fixed_point import round_half_away

__all__ = ["KERNELS", "Op", "TensorSpec", "UnsupportedOperatorError", "activation_range", "kernel"]

KERNELS: dict[str, Callable[["Op"], None]] = {}


class UnsupportedOperatorError(ValueError):
    """The model uses an operator (or an operator configuration) the reference does not compute."""


def kernel(*names: str) -> Callable:
    """Register the decorated function as the reference kernel of the TFLite builtins ``names``."""

    def register(function: Callable[["Op"], None]) -> Callable[["Op"], None]:
        for name in names:
            KERNELS[name] = function
        return function

    return register


@dataclass
class TensorSpec:
    """One tensor of the file: storage type, declared shape, quantization and constant data.

    ``dtype`` is the numpy type values are held in (INT4 codes as int8); ``type_name`` the
    TFLite type (``"int4"``, ``"int8"``, ...). ``scale``/``zero_point`` are arrays (one entry per
    tensor, or one per channel along ``axis``); empty when the tensor is not quantized.
    """

    index: int
    name: str
    type_name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    shape_signature: tuple[int, ...]
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int
    data: np.ndarray | None

    @property
    def quantized(self) -> bool:
        return self.scale.size > 0

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1

    @property
    def single_scale(self) -> float:
        """The tensor's one scale (float32 widened to a Python float, as kernels read it)."""
        if self.scale.size != 1:
            raise UnsupportedOperatorError(
                f"Tensor {self.name!r} needs one scale here. Received: {self.scale.size}"
            )
        return float(self.scale[0])

    @property
    def single_zero_point(self) -> int:
        return int(self.zero_point[0]) if self.zero_point.size else 0

    @property
    def limits(self) -> tuple[int, int]:
        """The representable range of the storage type (int4: -8..7)."""
        if self.type_name == "int4":
            return -8, 7
        info = np.iinfo(self.dtype)
        return int(info.min), int(info.max)


@dataclass
class Op:
    """One operator while it runs: its index, name, options, tensors and the value store."""

    index: int
    name: str
    options: Any
    inputs: list[TensorSpec | None]
    outputs: list[TensorSpec]
    values: dict[int, np.ndarray]

    def input(self, i: int) -> np.ndarray | None:
        """The value of input ``i`` (None for an omitted optional input, index -1)."""
        spec = self.inputs[i]
        if spec is None:
            return None
        if spec.index not in self.values:
            raise UnsupportedOperatorError(
                f"Operator {self.index} ({self.name}) reads tensor {spec.name!r} before anything wrote it."
            )
        return self.values[spec.index]

    def set_output(self, i: int, value: np.ndarray) -> None:
        """Store output ``i``, cast to its declared storage (the kernel has already clamped it)."""
        spec = self.outputs[i]
        self.values[spec.index] = np.asarray(value).astype(spec.dtype, copy=False)

    def unsupported(self, what: str) -> UnsupportedOperatorError:
        return UnsupportedOperatorError(f"Operator {self.index} ({self.name}): {what}")


_ACT = schema.ActivationFunctionType


def _quantized_value(value: float, spec: TensorSpec) -> int:
    """``kernel_util.cc`` ``Quantize``: ``zp + (int)TfLiteRound(float(value) / float(scale))`` in float32."""
    ratio = np.float32(value) / np.float32(spec.single_scale)
    return spec.single_zero_point + int(round_half_away(np.float64(ratio)))


def activation_range(op: Op, fused: int, out: TensorSpec) -> tuple[int, int]:
    """``CalculateActivationRangeQuantized`` (``kernel_util.cc``): the clamp of a fused activation.

    The storage range ``[qmin, qmax]`` narrowed by the output codes of 0 and 6 (RELU6), 0
    (RELU), -1 and 1 (RELU_N1_TO_1), each ``zp + round(float32(f) / float32(scale))``.
    """
    qmin, qmax = out.limits
    if fused == _ACT.NONE:
        return qmin, qmax
    if fused == _ACT.RELU:
        return max(qmin, _quantized_value(0.0, out)), qmax
    if fused == _ACT.RELU6:
        return max(qmin, _quantized_value(0.0, out)), min(qmax, _quantized_value(6.0, out))
    if fused == _ACT.RELU_N1_TO_1:
        return max(qmin, _quantized_value(-1.0, out)), min(qmax, _quantized_value(1.0, out))
    raise op.unsupported(f"fused activation {fused} is not computed on quantized tensors (TFLite refuses it too)")
