"""What a TFLite flatbuffer actually contains: ops, dtypes, scales, per-channel weights, bits.

Reads the model with the schema's object API (no interpreter, no TensorFlow), so it works on
any `.tflite` file, including ones that LiteRT would refuse to load.

    report = inspect(blob)             # bytes or path
    print(report)                      # fixed-width table, one row per op and per weight
    report.is_integer_only, report.float_ops, report.per_channel_ops
    w = report.weights[0]              # CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED weights
    w.codes, w.scales, w.bits, w.keras_kernel()
"""

from __future__ import annotations

import math
import os
import sys as _sys
import types as _types
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Union

import numpy as np

from tflite_export.flatbuffer import (
    FLOAT_TYPES,
    TENSOR_TYPE_NAMES,
    load,
    op_name,
    tensor_array,
    tensor_name,
)

__all__ = ["ModelReport", "OpInfo", "TensorInfo", "WeightInfo", "inspect"]

WEIGHT_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")

_INTEGER_DTYPES = frozenset(
    ("int2", "int4", "uint4", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
     "uint64")
)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the model.

    `scales` / `zero_points` are empty for unquantized tensors; `quantized_axis` is set only
    when there is more than one scale (per-channel). `effective_bits` is
    `max(1, ceil(log2(distinct_values)))` and, like `distinct_values`, is only given for
    constant integer tensors. `packed` is True for INT4 tensors (two values a byte).
    """

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    quantized_axis: int | None
    is_constant: bool
    effective_bits: int | None
    distinct_values: int | None
    packed: bool


@dataclass(frozen=True)
class OpInfo:
    """One operator: its builtin name and tensor indices (-1 marks an absent optional input)."""

    index: int
    name: str
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class WeightInfo:
    """The constant weight tensor of a CONV_2D, DEPTHWISE_CONV_2D or FULLY_CONNECTED op.

    `codes` are the stored values in TFLite layout (INT4 unpacked to int8): CONV_2D
    `[O, H, W, I]`, DEPTHWISE_CONV_2D `[1, H, W, I*M]`, FULLY_CONNECTED `[O, I]`. `scales` is a
    float32 array of one scale per tensor or per channel of `tensor.quantized_axis` (empty for
    float weights). When the op reads its weights through a DEQUANTIZE op, `tensor` is the
    constant input of that DEQUANTIZE.
    """

    op_index: int
    op_name: str
    tensor: TensorInfo
    codes: np.ndarray
    scales: np.ndarray
    per_channel: bool
    bits: int | None
    input_channels: int | None = None

    def dequantized(self) -> np.ndarray:
        """Real-valued weights `(codes - zero_point) * scale`, float32, TFLite layout."""
        codes = self.codes.astype(np.float32)
        if self.scales.size == 0:
            return codes
        zero_points = np.asarray(self.tensor.zero_points or (0,), np.float32)
        scales = self.scales.astype(np.float32)
        if self.scales.size > 1:
            axis = self.tensor.quantized_axis or 0
            bshape = [1] * codes.ndim
            bshape[axis] = -1
            scales = scales.reshape(bshape)
            if zero_points.size > 1:
                zero_points = zero_points.reshape(bshape)
        return ((codes - zero_points) * scales).astype(np.float32)

    def keras_kernel(self) -> np.ndarray:
        """Dequantized weights in the Keras kernel layout, float32.

        CONV_2D `[O, H, W, I] -> [H, W, I, O]`; DEPTHWISE_CONV_2D `[1, H, W, I*M] -> [H, W, I, M]`
        (I from the op's input tensor; TFLite output channel `i*M + m` is Keras `[..., i, m]`);
        FULLY_CONNECTED `[O, I] -> [I, O]`.
        """
        w = self.dequantized()
        if self.op_name == "CONV_2D":
            return np.ascontiguousarray(w.transpose(1, 2, 3, 0))
        if self.op_name == "DEPTHWISE_CONV_2D":
            channels = self.input_channels
            if not channels or w.shape[3] % channels:
                raise ValueError(
                    f"Cannot split {w.shape[3]} depthwise output channels of op "
                    f"{self.op_index} into input channels x depth multiplier. "
                    f"Received input_channels: {channels}"
                )
            _, h, k, cm = w.shape
            return np.ascontiguousarray(w.reshape(h, k, channels, cm // channels))
        if self.op_name == "FULLY_CONNECTED":
            return np.ascontiguousarray(w.T)
        raise ValueError(
            "Keras kernel layouts exist for CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED. "
            f"Received: {self.op_name}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain-dict summary (no arrays)."""
        return {
            "op_index": self.op_index,
            "op_name": self.op_name,
            "tensor": asdict(self.tensor),
            "per_channel": self.per_channel,
            "bits": self.bits,
        }


@dataclass
class ModelReport:
    """Summary of subgraph 0 of a TFLite model (see `inspect`).

    `file_size` is in bytes. `is_integer_only` is False when any tensor in any subgraph has a
    float type. `float_ops` / `per_channel_ops` list `"index:NAME"` strings: ops with a float
    input or output, and weight ops with more than one weight scale.
    """

    ops: list[OpInfo]
    tensors: list[TensorInfo]
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    file_size: int
    is_integer_only: bool
    float_ops: list[str]
    per_channel_ops: list[str]
    weights: list[WeightInfo] = field(default_factory=list)

    def op_counts(self) -> dict[str, int]:
        """Op name -> number of occurrences, in order of first appearance."""
        return dict(Counter(op.name for op in self.ops))

    def to_dict(self) -> dict[str, Any]:
        """JSON-serializable plain dict of the report (weight arrays left out)."""
        return {
            "file_size": self.file_size,
            "is_integer_only": self.is_integer_only,
            "op_counts": self.op_counts(),
            "float_ops": list(self.float_ops),
            "per_channel_ops": list(self.per_channel_ops),
            "inputs": [asdict(t) for t in self.inputs],
            "outputs": [asdict(t) for t in self.outputs],
            "ops": [asdict(op) for op in self.ops],
            "tensors": [asdict(t) for t in self.tensors],
            "weights": [w.to_dict() for w in self.weights],
        }

    def __str__(self) -> str:
        lines = [f"{'#':>3}  {'op':<22} {'output':<8} {'shape':<18} {'scale':>12} {'zp':>5}"]
        for op in self.ops:
            out = self.tensors[op.outputs[0]] if op.outputs and op.outputs[0] >= 0 else None
            if out is None:
                lines.append(f"{op.index:>3}  {op.name:<22}")
                continue
            scale, zp = _scale_text(out)
            lines.append(
                f"{op.index:>3}  {op.name:<22} {out.dtype:<8} {_shape_text(out.shape):<18} "
                f"{scale:>12} {zp:>5}"
            )
        if self.weights:
            lines.append("")
            lines.append(
                f"{'#':>3}  {'weights of':<22} {'dtype':<8} {'shape':<18} {'scales':>6} "
                f"{'axis':>4} {'bits':>4} {'packed':>6}"
            )
            for w in self.weights:
                t = w.tensor
                axis = "-" if t.quantized_axis is None else str(t.quantized_axis)
                bits = "-" if w.bits is None else str(w.bits)
                lines.append(
                    f"{w.op_index:>3}  {w.op_name:<22} {t.dtype:<8} {_shape_text(t.shape):<18} "
                    f"{len(t.scales):>6} {axis:>4} {bits:>4} {'yes' if t.packed else 'no':>6}"
                )
        lines.append("")
        lines.append(
            f"file size {self.file_size} bytes ({self.file_size / 1024:.1f} KiB), "
            f"integer-only: {'yes' if self.is_integer_only else 'no'}, "
            f"per-channel ops: {len(self.per_channel_ops)}/{len(self.weights)}"
            + (f", float ops: {', '.join(self.float_ops)}" if self.float_ops else "")
        )
        return "\n".join(lines)


def _shape_text(shape: tuple[int, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _scale_text(t: TensorInfo) -> tuple[str, str]:
    if not t.scales:
        return "-", "-"
    if len(t.scales) > 1:
        return f"{len(t.scales)} scales", "-"
    return f"{t.scales[0]:.6g}", str(t.zero_points[0] if t.zero_points else 0)


def _tensor_info(model: Any, buf: bytes, index: int, tensor: Any) -> TensorInfo:
    dtype = TENSOR_TYPE_NAMES.get(tensor.type, f"type_{tensor.type}")
    q = tensor.quantization
    scales = tuple(float(s) for s in (q.scale if q is not None and q.scale is not None else ()))
    zps = tuple(int(z) for z in (q.zeroPoint if q is not None and q.zeroPoint is not None else ()))
    axis = int(q.quantizedDimension) if len(scales) > 1 else None
    is_constant, distinct, bits = False, None, None
    try:
        data = tensor_array(model, tensor, buf=buf)
    except ValueError:
        data, is_constant = None, True  # data present but not decodable as numbers
    if data is not None:
        is_constant = True
        if dtype in _INTEGER_DTYPES:
            distinct = int(np.unique(data).size)
            bits = max(1, math.ceil(math.log2(distinct))) if distinct else None
    shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
    return TensorInfo(
        index=index,
        name=tensor_name(tensor),
        dtype=dtype,
        shape=shape,
        scales=scales,
        zero_points=zps,
        quantized_axis=axis,
        is_constant=is_constant,
        effective_bits=bits,
        distinct_values=distinct,
        packed=dtype == "int4",
    )


def inspect(model: Union[bytes, bytearray, str, os.PathLike], *, max_bytes: int | None = None) -> ModelReport:
    """Reads a TFLite model and reports ops, tensors, quantization and weights of subgraph 0.

    Args:
        model: the flatbuffer bytes or a path to a `.tflite` file.
        max_bytes: the most memory (bytes) the file, and its tensors at their declared shapes,
            may take (None: `tflite_export.flatbuffer.DEFAULT_MAX_BYTES`, 2 GiB).

    Returns:
        A `ModelReport`; `print(report)` shows it as a table.

    Raises:
        InvalidModelError: the input is not a regular readable file or not a valid TFLite
            flatbuffer (`tflite_export.flatbuffer.check_model`: an index out of range, a bad
            scale, a wrong data size, tensors over `max_bytes`); the message names the problem.
        FileNotFoundError: a path that does not exist.
    """
    model_t, buf = load(model, max_bytes=max_bytes)
    subgraph = model_t.subgraphs[0]
    sg_tensors = subgraph.tensors or []
    tensors = [_tensor_info(model_t, buf, i, t) for i, t in enumerate(sg_tensors)]

    ops: list[OpInfo] = []
    for i, op in enumerate(subgraph.operators or []):
        inputs = tuple(int(x) for x in (op.inputs if op.inputs is not None else ()))
        outputs = tuple(int(x) for x in (op.outputs if op.outputs is not None else ()))
        ops.append(OpInfo(index=i, name=op_name(model_t, op), inputs=inputs, outputs=outputs))

    is_integer_only = not any(
        t.type in FLOAT_TYPES for sg in model_t.subgraphs for t in (sg.tensors or [])
    )
    float_ops = [
        f"{op.index}:{op.name}"
        for op in ops
        if any(i >= 0 and sg_tensors[i].type in FLOAT_TYPES for i in op.inputs + op.outputs)
    ]

    producer = {out: op for op in ops for out in op.outputs if out >= 0}
    weights: list[WeightInfo] = []
    for op, raw_op in zip(ops, subgraph.operators or []):
        if op.name not in WEIGHT_OPS or len(op.inputs) < 2 or op.inputs[1] < 0:
            continue
        w_index = op.inputs[1]
        source = producer.get(w_index)
        if (
            not tensors[w_index].is_constant
            and source is not None
            and source.name == "DEQUANTIZE"
            and source.inputs
            and source.inputs[0] >= 0
        ):
            w_index = source.inputs[0]
        info = tensors[w_index]
        try:
            codes = tensor_array(model_t, sg_tensors[w_index], buf=buf) if info.is_constant else None
        except ValueError:
            codes = None  # a type numpy cannot hold (string, float8): listed among the tensors only
        if codes is None:
            continue  # weights computed at run time: nothing constant to report
        channels = None
        if op.name == "DEPTHWISE_CONV_2D":
            in_shape = tensors[op.inputs[0]].shape if op.inputs[0] >= 0 else ()
            channels = in_shape[-1] if in_shape and in_shape[-1] > 0 else None
            options = raw_op.builtinOptions
            multiplier = getattr(options, "depthMultiplier", 0) if options is not None else 0
            if channels is None and multiplier and codes.ndim == 4:
                channels = codes.shape[3] // multiplier
        weights.append(
            WeightInfo(
                op_index=op.index,
                op_name=op.name,
                tensor=info,
                codes=codes,
                scales=np.asarray(info.scales, np.float32),
                per_channel=len(info.scales) > 1,
                bits=info.effective_bits,
                input_channels=channels,
            )
        )

    return ModelReport(
        ops=ops,
        tensors=tensors,
        inputs=[tensors[int(i)] for i in (subgraph.inputs if subgraph.inputs is not None else ())],
        outputs=[tensors[int(i)] for i in (subgraph.outputs if subgraph.outputs is not None else ())],
        file_size=len(buf),
        is_integer_only=is_integer_only,
        float_ops=float_ops,
        per_channel_ops=[f"{w.op_index}:{w.op_name}" for w in weights if w.per_channel],
        weights=weights,
    )


class _CallableModule(_types.ModuleType):
    """``tflite_export.inspect(...)`` calls ``inspect``; ``import tflite_export.inspect`` gives the module."""

    def __call__(self, *args, **kwargs):
        return inspect(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
