"""Low-level helpers for reading and writing TFLite flatbuffers without an interpreter.

The model is handled through the object API of the TFLite schema
(`ai_edge_litert.schema_py_generated`): `load` gives a mutable `schema.ModelT`,
`serialize` packs one back into bytes. The remaining helpers decode what the object API
leaves raw: operator names, tensor type names and the constant data of a tensor, including
INT4 tensors, which TFLite stores two signed 4-bit values to a byte.

INT4 layout (TFLite `tensor_utils::UnpackDenseInt4IntoInt8`): the tensor is packed densely
over its flattened (row-major) elements; element 2k sits in the low nibble of byte k and
element 2k+1 in the high nibble; an odd element count leaves the last high nibble as padding.
"""

from __future__ import annotations

import os
from typing import Union

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

__all__ = [
    "FLOAT_TYPES",
    "TENSOR_TYPE_NAMES",
    "InvalidModelError",
    "load",
    "op_name",
    "pack_int4",
    "serialize",
    "tensor_array",
    "tensor_name",
    "unpack_int4",
]

ModelSource = Union[bytes, bytearray, memoryview, str, os.PathLike]

FILE_IDENTIFIER = b"TFL3"


class InvalidModelError(ValueError):
    """The input is not a readable TFLite flatbuffer."""


def _enum_names(enum_cls: type) -> dict[int, str]:
    """Maps the integer values of a generated flatbuffers enum class to their names."""
    return {
        value: name
        for name, value in vars(enum_cls).items()
        if not name.startswith("_") and isinstance(value, int)
    }


TENSOR_TYPE_NAMES: dict[int, str] = {
    code: name.lower() for code, name in _enum_names(schema.TensorType).items()
}
"""TFLite tensor type code -> lowercase name, e.g. 9 -> "int8", 17 -> "int4"."""

FLOAT_TYPES: frozenset[int] = frozenset(
    getattr(schema.TensorType, name)
    for name in ("FLOAT32", "FLOAT16", "FLOAT64", "BFLOAT16", "FLOAT8_E4M3FN", "FLOAT8_E5M2")
    if hasattr(schema.TensorType, name)
)
"""Tensor type codes of floating-point tensors (float32/16/64, bfloat16, float8 if present)."""

_BUILTIN_OP_NAMES: dict[int, str] = _enum_names(schema.BuiltinOperator)

# Little-endian numpy dtypes of the tensor types whose bytes map directly onto numpy.
_NUMPY_DTYPES: dict[int, np.dtype] = {
    getattr(schema.TensorType, name): np.dtype(dtype)
    for name, dtype in (
        ("FLOAT32", "<f4"),
        ("FLOAT16", "<f2"),
        ("FLOAT64", "<f8"),
        ("INT8", "i1"),
        ("UINT8", "u1"),
        ("INT16", "<i2"),
        ("UINT16", "<u2"),
        ("INT32", "<i4"),
        ("UINT32", "<u4"),
        ("INT64", "<i8"),
        ("UINT64", "<u8"),
        ("BOOL", "?"),
        ("COMPLEX64", "<c8"),
        ("COMPLEX128", "<c16"),
    )
    if hasattr(schema.TensorType, name)
}


def _fail(problem: str, source: str) -> InvalidModelError:
    return InvalidModelError(f"not a TFLite flatbuffer: {problem} in {source}")


def read_bytes(model: ModelSource) -> tuple[bytes, str]:
    """The bytes of a model given as bytes-like or a path, with the flatbuffer header checked.

    Returns ``(buf, source)`` where ``source`` names the input in messages (a path or
    ``"<bytes>"``). Raises FileNotFoundError for a missing path and InvalidModelError when the
    input is empty, shorter than 8 bytes, lacks the ``TFL3`` identifier at bytes 4..8, or its
    root offset points past the end.
    """
    if isinstance(model, (bytes, bytearray, memoryview)):
        buf = bytes(model)
        source = "<bytes>"
    elif isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        if not os.path.exists(source):
            raise FileNotFoundError(f"TFLite model file not found: {source}")
        with open(source, "rb") as f:
            buf = f.read()
    else:
        raise TypeError(
            "`model` must be bytes, bytearray, memoryview or a file path. "
            f"Received: {type(model).__name__}"
        )

    if not buf:
        raise _fail("input is empty (0 bytes)", source)
    if len(buf) < 8:
        raise _fail(
            f"input is too short ({len(buf)} bytes; a flatbuffer with a file identifier "
            "has at least 8)",
            source,
        )
    if buf[4:8] != FILE_IDENTIFIER:
        raise _fail(f"missing 'TFL3' identifier (got {buf[4:8]!r})", source)
    root = int.from_bytes(buf[0:4], "little")
    if root + 4 > len(buf):
        raise _fail(
            f"root table offset {root} points past the end of the {len(buf)}-byte input "
            "(truncated file?)",
            source,
        )
    return buf, source


def load(model: ModelSource) -> tuple[schema.ModelT, bytes]:
    """Parses a TFLite flatbuffer into the schema's mutable object API.

    Args:
        model: the serialized model (bytes, bytearray or memoryview) or a path to a
            `.tflite` file.

    Returns:
        `(model_t, buf)`: the parsed `schema.ModelT` and the raw bytes it was parsed from.
        Buffer data in `model_t` are numpy views into `buf`.

    Raises:
        FileNotFoundError: `model` is a path that does not exist.
        InvalidModelError: the input is empty, shorter than 8 bytes, lacks the `TFL3` file
            identifier at bytes 4..8, fails to parse, or has no subgraph.
    """
    buf, source = read_bytes(model)
    try:
        model_t = schema.ModelT.InitFromPackedBuf(buf, 0)
    except Exception as e:  # the generated reader raises whatever a bad offset triggers
        raise _fail(
            f"flatbuffer does not parse ({type(e).__name__}: {e}; truncated or corrupt "
            f"{len(buf)}-byte input?)",
            source,
        ) from e
    if not model_t.subgraphs:
        raise _fail("model has no subgraph", source)
    return model_t, buf


def serialize(model: schema.ModelT) -> bytes:
    """Packs a `schema.ModelT` into TFLite flatbuffer bytes with the `TFL3` identifier."""
    builder = flatbuffers.Builder(0)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def op_name(model: schema.ModelT, operator: schema.OperatorT) -> str:
    """Name of an operator's kind: a builtin name such as "CONV_2D" or "CUSTOM:<code>".

    The builtin code is `max(deprecatedBuiltinCode, builtinCode)`: codes below 127 are
    written to both fields, larger ones only to `builtinCode`.
    """
    code = model.operatorCodes[operator.opcodeIndex]
    builtin = max(code.deprecatedBuiltinCode, code.builtinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        custom = code.customCode
        if isinstance(custom, bytes):
            custom = custom.decode("utf-8", errors="replace")
        return f"CUSTOM:{custom}"
    return _BUILTIN_OP_NAMES.get(builtin, f"BUILTIN_{builtin}")


def pack_int4(codes: np.ndarray) -> np.ndarray:
    """Packs signed 4-bit codes two to a byte, in TFLite's INT4 layout.

    Args:
        codes: integer array of any shape with values in [-8, 7]; packed in flattened
            (row-major) order.

    Returns:
        uint8 array of shape `[ceil(n / 2)]`: byte k holds element 2k in its low nibble and
        element 2k+1 in its high nibble; an odd count is padded with a 0 high nibble.

    Raises:
        ValueError: a code lies outside [-8, 7].
    """
    flat = np.asarray(codes).reshape(-1)
    if flat.size and not np.issubdtype(flat.dtype, np.integer):
        if not np.array_equal(flat, np.round(flat)):
            raise ValueError(f"INT4 codes must be integers. Received dtype: {flat.dtype}")
    flat = flat.astype(np.int64)
    if flat.size and (flat.min() < -8 or flat.max() > 7):
        bad = flat[(flat < -8) | (flat > 7)]
        raise ValueError(
            "INT4 codes must lie in [-8, 7]. "
            f"Received: {bad.size} value(s) outside, e.g. {int(bad[0])}"
        )
    if flat.size % 2:
        flat = np.concatenate([flat, np.zeros(1, np.int64)])
    nibbles = (flat & 0x0F).astype(np.uint8)
    return (nibbles[0::2] | (nibbles[1::2] << 4)).astype(np.uint8)


def _unpack_nibbles(data: bytes | np.ndarray, count: int, signed: bool) -> np.ndarray:
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = np.frombuffer(bytes(data), np.uint8)
    else:
        arr = np.asarray(data)
        if arr.dtype.itemsize != 1 or not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(
                "Packed 4-bit data must be bytes or a uint8/int8 array. "
                f"Received dtype: {arr.dtype}"
            )
        raw = np.ascontiguousarray(arr).reshape(-1).view(np.uint8)
    if count < 0 or (count + 1) // 2 > raw.size:
        raise ValueError(
            f"{count} 4-bit values need {(count + 1) // 2} bytes. Received: {raw.size} bytes"
        )
    raw = raw[: (count + 1) // 2]
    out = np.empty(raw.size * 2, np.uint8)
    out[0::2] = raw & 0x0F
    out[1::2] = raw >> 4
    out = out[:count]
    if signed:
        return ((out.astype(np.int8) << 4) >> 4).astype(np.int8)
    return out


def unpack_int4(data: bytes | np.ndarray, count: int) -> np.ndarray:
    """Unpacks TFLite INT4 data into sign-extended int8 values (inverse of `pack_int4`).

    Args:
        data: packed bytes (or a uint8/int8 array), at least `ceil(count / 2)` long.
        count: number of 4-bit values to return.

    Returns:
        int8 array of shape `[count]` with values in [-8, 7]; element 2k comes from the low
        nibble of byte k, element 2k+1 from its high nibble.
    """
    return _unpack_nibbles(data, count, signed=True)


def tensor_name(tensor: schema.TensorT) -> str:
    """A tensor's name as str (the object API keeps flatbuffer strings as bytes)."""
    name = tensor.name
    if isinstance(name, bytes):
        return name.decode("utf-8", errors="replace")
    return name or ""


def _buffer_bytes(model: schema.ModelT, tensor: schema.TensorT, buf: bytes | None) -> bytes | None:
    if not model.buffers or tensor.buffer <= 0 or tensor.buffer >= len(model.buffers):
        return None
    buffer = model.buffers[tensor.buffer]
    if buffer.data is not None and len(buffer.data):
        return np.asarray(buffer.data, np.uint8).tobytes()
    if buffer.offset > 1 and buffer.size > 0:
        # Models over 2 GB keep tensor data after the flatbuffer, addressed from file start.
        if buf is None:
            raise ValueError(
                f"Tensor {tensor_name(tensor)!r} stores its data outside the flatbuffer "
                f"(offset {buffer.offset}); pass the model bytes as `buf`."
            )
        return bytes(buf[buffer.offset : buffer.offset + buffer.size])
    return None


def tensor_array(
    model: schema.ModelT, tensor: schema.TensorT, *, buf: bytes | None = None
) -> np.ndarray | None:
    """The constant data of a tensor as a numpy array of the tensor's shape.

    Args:
        model: the parsed model that owns `tensor`.
        tensor: a `schema.TensorT` of one of `model`'s subgraphs.
        buf: the raw model bytes; needed only for models that keep buffer data outside the
            flatbuffer (files over 2 GB).

    Returns:
        The raw stored values (codes for quantized tensors, not dequantized), shaped as
        `tensor.shape`. INT4 / UINT4 come back unpacked as int8 / uint8 and BFLOAT16 is
        widened exactly to float32. None when the tensor has no buffer data (activations,
        inputs, outputs, variables).

    Raises:
        ValueError: the tensor type has no numpy decoding here (string, resource, variant,
            int2, float8) or the data size does not match the shape.
    """
    data = _buffer_bytes(model, tensor, buf)
    if data is None:
        return None
    shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
    count = int(np.prod(shape, dtype=np.int64))
    ttype = tensor.type
    name = TENSOR_TYPE_NAMES.get(ttype, str(ttype))
    if ttype == schema.TensorType.INT4:
        values = unpack_int4(data, count)
    elif ttype == getattr(schema.TensorType, "UINT4", None):
        values = _unpack_nibbles(data, count, signed=False)
    elif ttype == getattr(schema.TensorType, "BFLOAT16", None):
        bits = np.frombuffer(data, "<u2").astype(np.uint32) << 16
        values = bits.view(np.float32)
    elif ttype in _NUMPY_DTYPES:
        values = np.frombuffer(data, _NUMPY_DTYPES[ttype])
    else:
        raise ValueError(
            f"Cannot decode constant data of tensor {tensor_name(tensor)!r}. Received type: {name}"
        )
    if values.size != count:
        raise ValueError(
            f"Tensor {tensor_name(tensor)!r} ({name}, shape {list(shape)}) expects {count} values. "
            f"Received: {values.size} in its buffer"
        )
    return values.reshape(shape)
