"""Low-level helpers for reading and writing TFLite flatbuffers without an interpreter.

The model is handled through the object API of the TFLite schema
(`ai_edge_litert.schema_py_generated`): `load` gives a mutable `schema.ModelT`,
`serialize` packs one back into bytes. The remaining helpers decode what the object API
leaves raw: operator names, tensor type names and the constant data of a tensor, including
INT4 tensors, which TFLite stores two signed 4-bit values to a byte.

Reading is defensive, since a `.tflite` file may be corrupt or hostile: `read_bytes` takes only
regular files (never blocking on a FIFO or streaming a device) up to a size bound, and `load`
runs `check_model` on what it parsed: every index, count, scale and shape an interpreter would
trust, and the memory the tensors would take (`check_memory`, against `DEFAULT_MAX_BYTES` or a
caller's `max_bytes`). Every problem is one `InvalidModelError` naming what is wrong.

INT4 layout (TFLite `tensor_utils::UnpackDenseInt4IntoInt8`): the tensor is packed densely
over its flattened (row-major) elements; element 2k sits in the low nibble of byte k and
element 2k+1 in the high nibble; an odd element count leaves the last high nibble as padding.
"""

from __future__ import annotations

import math
import os
import stat
from typing import Any, Callable, Union

import flatbuffers
import numpy as np
from ai_edge_litert import schema_py_generated as schema

__all__ = [
    "DEFAULT_MAX_BYTES",
    "FLOAT_TYPES",
    "TENSOR_TYPE_NAMES",
    "InvalidModelError",
    "check_memory",
    "check_model",
    "load",
    "op_name",
    "pack_int4",
    "read_bytes",
    "resolve_max_bytes",
    "serialize",
    "tensor_array",
    "tensor_bytes",
    "tensor_name",
    "unpack_int4",
]

ModelSource = Union[bytes, bytearray, memoryview, str, os.PathLike]

FILE_IDENTIFIER = b"TFL3"

DEFAULT_MAX_BYTES: int = 2 * 1024**3
"""The most memory, in bytes, a model may make one call allocate, unless the call says otherwise.

It bounds both the file (read into memory whole) and the sum of the model's tensors at the
batch size that will run (:func:`check_model`), so one corrupt shape cannot make a small file
allocate gigabytes. Every public function that reads a model takes ``max_bytes=`` to raise it
for one call; assigning this attribute changes the default for all of them (2 GiB, the
flatbuffer format's own limit).
"""


class InvalidModelError(ValueError):
    """The input is not a readable, well-formed TFLite flatbuffer, or exceeds the memory bound."""


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


def resolve_max_bytes(max_bytes: int | None) -> int:
    """``max_bytes`` checked (an int >= 1), or :data:`DEFAULT_MAX_BYTES` (read now) for None."""
    if max_bytes is None:
        max_bytes = DEFAULT_MAX_BYTES
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) or max_bytes < 1:
        raise ValueError(f"max_bytes must be an int >= 1 (bytes). Received: max_bytes={max_bytes!r}")
    return int(max_bytes)


def _size_text(count: int) -> str:
    """``5,368,709,120 bytes (5.0 GiB)``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if count >= size:
            return f"{count:,} bytes ({count / size:.1f} {unit})"
    return f"{count:,} bytes"


_FILE_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _read_file(path: str, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` bytes.

    The file is opened without blocking and checked through its descriptor, so a FIFO or a
    device never blocks or streams forever, and a file swapped after a check cannot slip by.
    """
    if not os.path.lexists(path):
        raise FileNotFoundError(f"TFLite model file not found: {path}")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(f"TFLite model file not found: {path} (a broken link?)") from None
    except OSError as error:
        reason = "it is a directory" if isinstance(error, IsADirectoryError) else (error.strerror or str(error)).lower()
        raise InvalidModelError(f"cannot read the TFLite model file {path}: {reason}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((text for test, text in _FILE_KINDS if test(info.st_mode)), "not a regular file")
            raise InvalidModelError(f"cannot read the TFLite model file {path}: it is {kind}, not a regular file")
        if info.st_size > max_bytes:
            raise InvalidModelError(
                f"the TFLite model file {path} has {_size_text(info.st_size)}, more than max_bytes = "
                f"{_size_text(max_bytes)}; pass a larger max_bytes if the file is genuine"
            )
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as f:
        try:
            buf = f.read(max_bytes + 1)
        except OSError as error:
            raise InvalidModelError(f"cannot read the TFLite model file {path}: {error.strerror or error}") from None
    if len(buf) > max_bytes:  # the file grew after fstat
        raise InvalidModelError(f"the TFLite model file {path} is larger than max_bytes = {_size_text(max_bytes)}")
    return buf


def read_bytes(model: ModelSource, *, max_bytes: int | None = None) -> tuple[bytes, str]:
    """The bytes of a model given as bytes-like or a path, with the flatbuffer header checked.

    Args:
        model: the serialized model (bytes, bytearray, memoryview) or the path of a file.
        max_bytes: the largest input accepted, in bytes (None: :data:`DEFAULT_MAX_BYTES`).

    Returns:
        ``(buf, source)`` where ``source`` names the input in messages (a path or ``"<bytes>"``).

    Raises:
        FileNotFoundError: a path that does not exist.
        InvalidModelError: a path that is not a regular file (a directory, FIFO, device) or
            cannot be read (permission), an input larger than ``max_bytes``, or bytes that are
            empty, shorter than 8, lack the ``TFL3`` identifier at bytes 4..8, or whose root
            offset points past the end.
    """
    limit = resolve_max_bytes(max_bytes)
    if isinstance(model, (bytes, bytearray, memoryview)):
        source = "<bytes>"
        size = model.nbytes if isinstance(model, memoryview) else len(model)
        if size > limit:
            raise InvalidModelError(f"the model bytes exceed max_bytes = {_size_text(limit)}")
        buf = bytes(model)
    elif isinstance(model, (str, os.PathLike)):
        source = os.fspath(model)
        if isinstance(source, bytes):
            source = os.fsdecode(source)
        buf = _read_file(source, limit)
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


def load(
    model: ModelSource, *, batch_size: int = 1, max_bytes: int | None = None
) -> tuple[schema.ModelT, bytes]:
    """Parses a TFLite flatbuffer into the schema's mutable object API and validates it.

    Args:
        model: the serialized model (bytes, bytearray or memoryview) or a path to a
            `.tflite` file.
        batch_size: the batch size the caller will run (>= 1); the memory bound of
            :func:`check_model` is taken at it.
        max_bytes: memory bound in bytes for the file and for the tensors (None:
            :data:`DEFAULT_MAX_BYTES`).

    Returns:
        `(model_t, buf)`: the parsed `schema.ModelT` and the raw bytes it was parsed from.
        Buffer data in `model_t` are numpy views into `buf`.

    Raises:
        FileNotFoundError: `model` is a path that does not exist.
        InvalidModelError: the input is not a regular readable file, is empty, shorter than
            8 bytes, lacks the `TFL3` file identifier at bytes 4..8, fails to parse, has no
            subgraph, or fails :func:`check_model`.
    """
    buf, source = read_bytes(model, max_bytes=max_bytes)
    try:
        model_t = schema.ModelT.InitFromPackedBuf(buf, 0)
    except Exception as e:  # the generated reader raises whatever a bad offset triggers
        raise _fail(
            f"flatbuffer does not parse ({type(e).__name__}: {e}; truncated or corrupt "
            f"{len(buf)}-byte input?)",
            source,
        ) from e
    check_model(model_t, buf, batch_size=batch_size, max_bytes=max_bytes, source=source)
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


def _data_buffer(model: schema.ModelT, tensor: schema.TensorT) -> schema.BufferT | None:
    """The buffer holding a tensor's constant data (in the flatbuffer, or after it for models
    over 2 GB), None for a tensor without data (activations, inputs, outputs, variables)."""
    if not model.buffers or tensor.buffer <= 0 or tensor.buffer >= len(model.buffers):
        return None
    buffer = model.buffers[tensor.buffer]
    if (buffer.data is not None and len(buffer.data)) or (buffer.offset > 1 and buffer.size > 0):
        return buffer
    return None


def _buffer_bytes(model: schema.ModelT, tensor: schema.TensorT, buf: bytes | None) -> bytes | None:
    buffer = _data_buffer(model, tensor)
    if buffer is None:
        return None
    if buffer.data is not None and len(buffer.data):
        return np.asarray(buffer.data, np.uint8).tobytes()
    # Models over 2 GB keep tensor data after the flatbuffer, addressed from file start.
    if buf is None:
        raise ValueError(
            f"Tensor {tensor_name(tensor)!r} stores its data outside the flatbuffer "
            f"(offset {buffer.offset}); pass the model bytes as `buf`."
        )
    return bytes(buf[buffer.offset : buffer.offset + buffer.size])


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


# ----------------------------------------------------------------------------------------------
# Validation: every index, count, scale and the memory a model would make us allocate
# ----------------------------------------------------------------------------------------------

# Bits per element of each tensor type (string, resource and variant have no fixed size).
_TYPE_BITS: dict[int, int] = {
    getattr(schema.TensorType, name): bits
    for name, bits in (
        ("FLOAT32", 32), ("FLOAT16", 16), ("INT32", 32), ("UINT8", 8), ("INT64", 64), ("BOOL", 8),
        ("INT16", 16), ("COMPLEX64", 64), ("INT8", 8), ("FLOAT64", 64), ("COMPLEX128", 128),
        ("UINT64", 64), ("UINT32", 32), ("UINT16", 16), ("INT4", 4), ("BFLOAT16", 16), ("INT2", 2),
        ("UINT4", 4), ("FLOAT8_E4M3FN", 8), ("FLOAT8_E5M2", 8),
    )
    if hasattr(schema.TensorType, name)
}

# Code ranges of the integer types whose zero points index the code range.
_CODE_RANGES: dict[int, tuple[int, int]] = {
    getattr(schema.TensorType, name): limits
    for name, limits in (
        ("INT8", (-128, 127)), ("UINT8", (0, 255)), ("INT16", (-32768, 32767)), ("UINT16", (0, 65535)),
        ("INT4", (-8, 7)), ("UINT4", (0, 15)), ("INT2", (-2, 1)),
    )
    if hasattr(schema.TensorType, name)
}

# Input slots an operator may leave out (-1). LiteRT's kernels read every other slot without a
# check, so a -1 there dereferences a null tensor (SIGSEGV); recurrent kernels and custom
# operators check their optional inputs themselves.
_OPTIONAL_INPUTS: dict[str, frozenset[int]] = {
    "CONV_2D": frozenset({2}),
    "DEPTHWISE_CONV_2D": frozenset({2}),
    "FULLY_CONNECTED": frozenset({2}),
    "TRANSPOSE_CONV": frozenset({3}),
}
# Input counts LiteRT accepts but then crashes on: an int8 DEPTHWISE_CONV_2D without a bias slot
# passes Prepare and ends the process (SIGSEGV) in the optimized kernels.
_MIN_INPUTS: dict[str, int] = {"DEPTHWISE_CONV_2D": 3}
_ANY_INPUT_OPTIONAL = frozenset((
    "LSTM", "UNIDIRECTIONAL_SEQUENCE_LSTM", "BIDIRECTIONAL_SEQUENCE_LSTM", "RNN",
    "UNIDIRECTIONAL_SEQUENCE_RNN", "BIDIRECTIONAL_SEQUENCE_RNN", "SVDF",
))

_POOLS = frozenset(("MAX_POOL_2D", "AVERAGE_POOL_2D", "L2_POOL_2D"))

# Operators whose first output has the shape of their first input.
_SAME_SHAPE = frozenset((
    "QUANTIZE", "DEQUANTIZE", "CAST", "SOFTMAX", "LOG_SOFTMAX", "LOGISTIC", "TANH", "RELU", "RELU6",
    "RELU_N1_TO_1", "RELU_0_TO_1", "HARD_SWISH", "ELU", "GELU", "LEAKY_RELU", "ABS", "NEG", "FLOOR", "CEIL",
    "ROUND", "SQRT", "RSQRT", "SQUARE", "EXP", "LOG", "SIN", "COS", "SIGN", "LOGICAL_NOT", "L2_NORMALIZATION",
    "LOCAL_RESPONSE_NORMALIZATION", "ZEROS_LIKE", "ONES_LIKE",
))
# Operators whose output has the broadcast shape of their inputs.
_BROADCASTING = frozenset((
    "ADD", "SUB", "MUL", "DIV", "MAXIMUM", "MINIMUM", "LESS", "LESS_EQUAL", "GREATER", "GREATER_EQUAL",
    "EQUAL", "NOT_EQUAL", "SELECT_V2", "SQUARED_DIFFERENCE", "POW", "FLOOR_DIV", "FLOOR_MOD", "LOGICAL_AND",
    "LOGICAL_OR", "PRELU",
))

_OPTIONS_NAMES: dict[int, str] = _enum_names(schema.BuiltinOptions)


def _options_types() -> dict[str, int]:
    """Builtin operator name -> the options type it reads: ``CONV_2D`` -> ``Conv2DOptions`` by
    name, and the operators that share one (pooling, reductions, maximum/minimum)."""
    by_name = {
        name[: -len("Options")].lower(): value
        for value, name in _OPTIONS_NAMES.items()
        if name.endswith("Options")
    }
    types = {
        op: by_name[op.replace("_", "").lower()]
        for op in _BUILTIN_OP_NAMES.values()
        if op.replace("_", "").lower() in by_name
    }
    shared = {
        "Pool2DOptions": ("AVERAGE_POOL_2D", "MAX_POOL_2D", "L2_POOL_2D"),
        "ReducerOptions": ("MEAN", "SUM", "REDUCE_PROD", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_ANY", "REDUCE_ALL"),
        "MaximumMinimumOptions": ("MAXIMUM", "MINIMUM"),
        "SequenceRNNOptions": ("UNIDIRECTIONAL_SEQUENCE_RNN",),
        "L2NormOptions": ("L2_NORMALIZATION",),
    }
    for options, ops in shared.items():
        if hasattr(schema.BuiltinOptions, options):
            types.update(dict.fromkeys(ops, getattr(schema.BuiltinOptions, options)))
    return types


_OPTIONS_TYPES: dict[str, int] = _options_types()

# Reductions whose output shape follows from the input shape, the constant axes and keep_dims.
_REDUCTIONS = frozenset(("MEAN", "SUM", "REDUCE_PROD", "REDUCE_MAX", "REDUCE_MIN", "REDUCE_ANY", "REDUCE_ALL"))


def _ints(values) -> list[int]:
    return [int(v) for v in values] if values is not None else []


def _constant_size(model: schema.ModelT, tensor: schema.TensorT) -> int:
    """Bytes of constant data a tensor holds (in the flatbuffer or after it), 0 for none."""
    buffer = _data_buffer(model, tensor)
    if buffer is None:
        return 0
    return len(buffer.data) if buffer.data is not None and len(buffer.data) else int(buffer.size)


def tensor_bytes(tensor: schema.TensorT, batch_size: int = 1) -> int:
    """Bytes a non-constant tensor takes at ``batch_size``: its first dimension counts as
    ``max(declared, batch_size)`` (an interpreter allocates at the declared shape, then at the
    batch it runs); 0 for types without a fixed size (string, resource, variant)."""
    bits = _TYPE_BITS.get(tensor.type)
    if bits is None:
        return 0
    dims = _ints(tensor.shape)
    elements = max(dims[0], batch_size) * math.prod(dims[1:]) if dims else 1
    return -(-elements * bits // 8)


def check_model(
    model: schema.ModelT,
    buf: bytes | None = None,
    *,
    batch_size: int = 1,
    max_bytes: int | None = None,
    source: str = "<model>",
) -> None:
    """Checks that a parsed model can be indexed and run without surprises; raises otherwise.

    Every subgraph is checked:

    * indices: operator code index of each operator; tensor indices of operator inputs,
      outputs and intermediates, of subgraph inputs and outputs and of signatures; buffer
      indices of tensors and metadata. -1 (an absent tensor) only in the input slots an
      operator may leave out (the bias of CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED,
      TRANSPOSE_CONV; any input of recurrent and custom operators);
    * data flow: operators run in file order, so each input must be a subgraph input, constant,
      variable or an earlier operator's output, and each subgraph output must be computed;
    * tensors: a known type; dimensions >= 0; a shape signature of the same rank; constant data
      of exactly the size the type and shape need (buffers stored after the flatbuffer within
      ``buf``); no sparse storage;
    * quantization: scales finite and > 0; as many zero points as scales, within the type's code
      range; the quantized dimension within the rank, as long as the scales;
    * operators: options of the operator's own kind (a changed operator code leaves another
      kind's, and LiteRT would read the inputs with the new kind's meaning); for operators with
      a simple shape rule (element-wise, broadcasting, CONV_2D, DEPTHWISE_CONV_2D, pooling,
      FULLY_CONNECTED, reductions, CONCATENATION, PAD) the declared output shape equal to what
      LiteRT computes from the declared input shapes (the batch excepted where it is dynamic),
      RESHAPE keeping the element count, reduction axes within the rank, pooling windows at
      most about twice their input. LiteRT computes every shape from the inputs, so the declared
      shapes :func:`check_memory` sums are what it allocates;
    * memory: :func:`check_memory` at ``batch_size``.

    Args:
        model: the parsed model (``schema.ModelT``).
        buf: the raw bytes it was parsed from (checks buffers stored after the flatbuffer).
        batch_size: the batch size that will run (>= 1).
        max_bytes: memory bound in bytes (None: :data:`DEFAULT_MAX_BYTES`).
        source: how messages name the model (a path or ``"<bytes>"``).

    Raises:
        InvalidModelError: one message naming the first problem, e.g. ``operator 3 (CONV_2D)
            input 1 is tensor 9999; the subgraph has 12 tensors``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1. Received: batch_size={batch_size!r}")
    limit = resolve_max_bytes(max_bytes)

    def fail(problem: str) -> InvalidModelError:
        return InvalidModelError(f"invalid TFLite model {source}: {problem}")

    subgraphs = model.subgraphs or []
    if not subgraphs:
        raise _fail("model has no subgraph", source)
    codes = model.operatorCodes or []
    buffers = model.buffers or []
    for i, code in enumerate(codes):
        if max(code.deprecatedBuiltinCode, code.builtinCode) < 0:
            raise fail(f"operator code {i} has a negative builtin code ({code.builtinCode})")
    for i, buffer in enumerate(buffers):
        if buffer.offset > 1 and buffer.size > 0 and buf is not None and buffer.offset + buffer.size > len(buf):
            raise fail(
                f"buffer {i} is bytes {buffer.offset}..{buffer.offset + buffer.size} of a {len(buf)}-byte file"
            )
    for i, entry in enumerate(model.metadata or []):
        if not 0 <= entry.buffer < len(buffers):
            raise fail(f"metadata {i} reads buffer {entry.buffer}; the model has {len(buffers)} buffers")
    for i, signature in enumerate(model.signatureDefs or []):
        if not 0 <= signature.subgraphIndex < len(subgraphs):
            raise fail(f"signature {i} names subgraph {signature.subgraphIndex}; the model has {len(subgraphs)}")
        count = len(subgraphs[signature.subgraphIndex].tensors or [])
        for entry in (signature.inputs or []) + (signature.outputs or []):
            if not 0 <= entry.tensorIndex < count:
                raise fail(f"signature {i} names tensor {entry.tensorIndex}; its subgraph has {count} tensors")

    # Tensors first, then the memory they take, then the operators that connect them.
    for s, graph in enumerate(subgraphs):
        where = f"subgraph {s} " if s else ""
        tensors = graph.tensors or []
        for k, value in enumerate(_ints(graph.inputs)):
            _tensor_index(value, len(tensors), f"{where}input {k}", False, fail)
        for k, value in enumerate(_ints(graph.outputs)):
            _tensor_index(value, len(tensors), f"{where}output {k}", False, fail)
        for t, tensor in enumerate(tensors):
            _check_tensor(model, tensor, f"{where}tensor {t} ({tensor_name(tensor)!r})", len(buffers), fail)
    check_memory(model, batch_size=batch_size, max_bytes=limit, source=source)
    for s, graph in enumerate(subgraphs):
        _check_operators(model, graph, f"subgraph {s} " if s else "", fail)


def _tensor_index(value: int, count: int, what: str, optional: bool, fail: Callable[[str], InvalidModelError]) -> int:
    """``value`` if it indexes one of ``count`` tensors (or is -1 where ``optional``); raises otherwise."""
    value = int(value)
    if value == -1 and not optional:
        raise fail(f"{what} is absent (-1), but it is required")
    if not (0 <= value < count or (optional and value == -1)):
        raise fail(f"{what} is tensor {value}; the subgraph has {count} tensors")
    return value


def _check_operators(model: schema.ModelT, graph: schema.SubGraphT, where: str, fail) -> None:
    """Operator code, tensor indices, options type, data flow and shapes of each operator."""
    codes = model.operatorCodes or []
    tensors = graph.tensors or []
    # Operators run in file order, so each may read only what exists by then: a graph input,
    # constant data, a variable, or an earlier operator's output (else it reads garbage).
    ready = set(_ints(graph.inputs)) | {
        t for t, tensor in enumerate(tensors)
        if _constant_size(model, tensor) or tensor.isVariable or 0 in _ints(tensor.shape)
    }
    # Tensors whose shape is only known at run time (-1 beyond the batch dimension): their
    # declared shape is a placeholder, so shapes are not compared through them.
    dynamic = {t for t, tensor in enumerate(tensors) if -1 in _ints(tensor.shapeSignature)[1:]}
    for o, operator in enumerate(graph.operators or []):
        if not 0 <= operator.opcodeIndex < len(codes):
            raise fail(
                f"{where}operator {o} has operator code index {operator.opcodeIndex}; "
                f"the model has {len(codes)} operator codes"
            )
        name = op_name(model, operator)
        what = f"{where}operator {o} ({name})"
        optional = _OPTIONAL_INPUTS.get(name, frozenset())
        any_optional = name in _ANY_INPUT_OPTIONAL or name.startswith("CUSTOM:")
        ins = [
            _tensor_index(v, len(tensors), f"{what} input {k}", any_optional or k in optional, fail)
            for k, v in enumerate(_ints(operator.inputs))
        ]
        outs = [_tensor_index(v, len(tensors), f"{what} output {k}", False, fail) for k, v in enumerate(_ints(operator.outputs))]
        for k, value in enumerate(_ints(operator.intermediates)):
            _tensor_index(value, len(tensors), f"{what} intermediate {k}", any_optional, fail)
        if len(ins) < _MIN_INPUTS.get(name, 0):
            raise fail(f"{what} has {len(ins)} inputs; it takes {_MIN_INPUTS[name]} (input, weights, bias)")
        for k, value in enumerate(ins):
            if value >= 0 and value not in ready:
                raise fail(
                    f"{what} input {k} is tensor {value} ({tensor_name(tensors[value])!r}), "
                    "which is neither an input, a constant nor the output of an earlier operator"
                )
        ready.update(outs)
        expected = _OPTIONS_TYPES.get(name)
        if expected is not None and operator.builtinOptionsType not in (schema.BuiltinOptions.NONE, expected):
            # A changed operator code: LiteRT would read these options as defaults and the
            # inputs with another operator's meaning (a SPLIT reading an image as its axis).
            given = _OPTIONS_NAMES.get(operator.builtinOptionsType, str(operator.builtinOptionsType))
            raise fail(f"{what} carries {given}; a {name} takes {_OPTIONS_NAMES[expected]}")
        if name in _POOLS and ins:
            _check_pool_window(tensors[ins[0]], operator.builtinOptions, what, fail)
        if any(i in dynamic for i in ins if i >= 0) or not outs:
            dynamic.update(outs)
            continue
        inferred = _output_shape(model, tensors, name, operator, ins, what, fail)
        declared = _ints(tensors[outs[0]].shape)
        # A dynamic batch (-1): the declared batch is a placeholder (a FULLY_CONNECTED may fold
        # leading dimensions into it); the rest must match.
        first = 1 if _ints(tensors[outs[0]].shapeSignature)[:1] == [-1] and declared and inferred else 0
        if name == "RESHAPE" and ins and ins[0] >= 0 and (declared or tensors[outs[0]].hasRank):
            elements = math.prod(_ints(tensors[ins[0]].shape))
            if math.prod(declared) != elements:
                raise fail(f"{what} reshapes {elements} elements into tensor {outs[0]} declared {declared}")
        if inferred is not None and declared[first:] != inferred[first:] and (declared or tensors[outs[0]].hasRank):
            raise fail(
                f"{what} computes an output of shape {inferred} from its inputs' shapes; its output tensor "
                f"{outs[0]} ({tensor_name(tensors[outs[0]])!r}) is declared {declared}"
            )
    for k, value in enumerate(_ints(graph.outputs)):
        if value not in ready:
            raise fail(f"{where}output {k} is tensor {value} ({tensor_name(tensors[value])!r}), which no operator computes")


def check_memory(
    model: schema.ModelT, *, batch_size: int = 1, max_bytes: int | None = None, source: str = "<model>"
) -> None:
    """Refuses a model whose non-constant tensors would take more than ``max_bytes`` at ``batch_size``.

    The sum of :func:`tensor_bytes` over every subgraph's tensors without constant data (those
    are in the file, which :func:`read_bytes` bounds) is what an interpreter allocates at most
    without reusing memory; one corrupt dimension in a 4 kB file can make it gigabytes. The
    batch is ``batch_size`` or, if larger, the declared batch of a subgraph-0 input (the shape an
    interpreter allocates first). Shapes beyond the batch are the declared ones; that they are
    what the operators compute is :func:`check_model`'s part.

    Raises:
        InvalidModelError: the sum exceeds ``max_bytes``; the message names the largest tensor.
    """
    limit = resolve_max_bytes(max_bytes)
    # An interpreter first allocates at the declared input shapes: a larger declared batch of an
    # input is the batch every tensor takes until the inputs are resized.
    graph = (model.subgraphs or [None])[0]
    declared = [
        _ints(graph.tensors[i].shape)[0]
        for i in (_ints(graph.inputs) if graph is not None else [])
        if 0 <= i < len(graph.tensors or []) and len(_ints(graph.tensors[i].shape))
    ]
    batch_size = max([int(batch_size), *declared])
    total, largest, where = 0, 0, ""
    for s, graph in enumerate(model.subgraphs or []):
        for t, tensor in enumerate(graph.tensors or []):
            if _constant_size(model, tensor):
                continue
            size = tensor_bytes(tensor, int(batch_size))
            total += size
            if size > largest:
                type_name = TENSOR_TYPE_NAMES.get(tensor.type, str(tensor.type))
                largest = size
                where = (f"subgraph {s} " if s else "") + (
                    f"tensor {t} ({tensor_name(tensor)!r}, {type_name}, shape {_ints(tensor.shape)})"
                )
    if total > limit:
        raise InvalidModelError(
            f"invalid TFLite model {source}: its tensors take {_size_text(total)} at batch size {int(batch_size)}, "
            f"more than max_bytes = {_size_text(limit)}; the largest is {where} with {_size_text(largest)}. "
            "Pass a larger max_bytes (or a smaller batch_size) if the model is genuine"
        )


def _check_tensor(model: schema.ModelT, tensor: schema.TensorT, what: str, n_buffers: int, fail) -> None:
    if tensor.type not in TENSOR_TYPE_NAMES:
        raise fail(f"{what} has type code {tensor.type}, which is no TFLite tensor type")
    type_name = TENSOR_TYPE_NAMES[tensor.type]
    dims = _ints(tensor.shape)
    if any(d < 0 for d in dims):
        raise fail(f"{what} has shape {dims}; dimensions are >= 0")
    signature = _ints(tensor.shapeSignature)
    if signature and (len(signature) != len(dims) or any(d < -1 for d in signature)):
        raise fail(f"{what} has shape {dims} and shape signature {signature}; they must be of one rank, -1 or more")
    if tensor.buffer != 0 and not 0 <= tensor.buffer < n_buffers:
        raise fail(f"{what} reads buffer {tensor.buffer}; the model has {n_buffers} buffers")
    if tensor.sparsity is not None:
        raise fail(f"{what} is stored sparse, which is not supported")
    held = _constant_size(model, tensor)
    bits = _TYPE_BITS.get(tensor.type)
    if held and bits is not None:
        needed = -(-math.prod(dims) * bits // 8)
        if held != needed:
            raise fail(f"{what} is {type_name} of shape {dims}: {needed} bytes of data; its buffer {tensor.buffer} holds {held}")

    q = tensor.quantization
    with np.errstate(invalid="ignore"):  # a signalling NaN raises the flag when widened
        scales = np.asarray(q.scale if q is not None and q.scale is not None else [], np.float64).reshape(-1)
    if scales.size == 0:
        return
    bad = np.flatnonzero(~(np.isfinite(scales) & (scales > 0)))
    if bad.size:
        k = int(bad[0])
        raise fail(f"{what} has quantization scale {float(scales[k]):.6g} (scale {k} of {scales.size}); scales are finite and > 0")
    zero_points = _ints(q.zeroPoint)
    if len(zero_points) != scales.size:
        raise fail(f"{what} has {scales.size} quantization scale(s) and {len(zero_points)} zero point(s); they must be as many")
    if tensor.type in _CODE_RANGES:
        low, high = _CODE_RANGES[tensor.type]
        outside = [z for z in zero_points if not low <= z <= high]
        if outside:
            raise fail(f"{what} is {type_name} with zero point {outside[0]}, outside [{low}, {high}]")
    axis = int(q.quantizedDimension)
    if dims and not 0 <= axis < len(dims):
        raise fail(f"{what} is quantized along dimension {axis}; its shape {dims} has {len(dims)}")
    if scales.size > 1 and (not dims or dims[axis] != scales.size):
        size = dims[axis] if dims else "no dimension"
        raise fail(f"{what} has {scales.size} scales along dimension {axis}, whose size is {size}")


def _check_pool_window(tensor: schema.TensorT, options: Any, what: str, fail) -> None:
    """A pooling window at most about twice its input (NHWC) where the input's extent is fixed.

    A window as wide as 2^24 on an 8-pixel row computes nothing more than one of 8, but the
    optimized kernels size buffers and loops by the window (gigabytes, minutes).
    """
    dims, signature = _ints(tensor.shape), _ints(tensor.shapeSignature)
    if options is None or len(dims) != 4:
        return
    for axis, field in ((1, "filterHeight"), (2, "filterWidth")):
        window = int(getattr(options, field, 1))
        fixed = not signature or signature[axis] >= 0
        if fixed and window > 2 * dims[axis] + 1:
            raise fail(f"{what} pools a window of {window} along an input dimension of {dims[axis]}")


def _broadcast(shapes: list[list[int]]) -> list[int] | None:
    """numpy broadcasting of declared shapes; None if they do not broadcast (LiteRT refuses those)."""
    rank = max(len(shape) for shape in shapes)
    result = []
    for axis in range(rank):
        sizes = {shape[axis - rank + len(shape)] for shape in shapes if axis - rank + len(shape) >= 0}
        sizes.discard(1)
        if len(sizes) > 1:
            return None
        result.append(sizes.pop() if sizes else 1)
    return result


def _window_output(size: int, window: int, stride: int, dilation: int, padding: int) -> int | None:
    """Output extent of a convolution or pooling window, as LiteRT's ComputeOutSize."""
    if stride < 1 or dilation < 1 or window < 1:
        return None
    effective = (window - 1) * dilation + 1
    if padding == schema.Padding.SAME:
        return (size + stride - 1) // stride
    if padding == schema.Padding.VALID:
        return (size + stride - effective) // stride
    return None


def _constant_ints(model: schema.ModelT, tensor: schema.TensorT) -> list[int] | None:
    """The values of a constant int32/int64 tensor, None if it is not one."""
    if tensor.type not in (schema.TensorType.INT32, schema.TensorType.INT64) or not _constant_size(model, tensor):
        return None
    return [int(v) for v in tensor_array(model, tensor).reshape(-1)]


def _output_shape(model, tensors, name, operator, ins, what, fail) -> list[int] | None:
    """The shape LiteRT computes for the first output from the inputs' declared shapes, for the
    operators whose rule is simple; None for the others (their outputs are not compared)."""
    shapes = [_ints(tensors[i].shape) if i >= 0 else None for i in ins]
    options = operator.builtinOptions
    if not shapes or shapes[0] is None:
        return None
    x = shapes[0]
    if name in _SAME_SHAPE:
        return x
    if name in _BROADCASTING:
        return _broadcast([s for s in shapes if s is not None])
    if name in _REDUCTIONS and len(ins) >= 2 and ins[1] >= 0:
        axes = _constant_ints(model, tensors[ins[1]])
        if axes is None:
            return None
        for axis in axes:
            if not -len(x) <= axis < len(x):
                raise fail(f"{what} reduces axis {axis} of input tensor {ins[0]}, whose rank is {len(x)}")
        reduced = {a % len(x) for a in axes}
        if getattr(options, "keepDims", False):
            return [1 if i in reduced else d for i, d in enumerate(x)]
        return [d for i, d in enumerate(x) if i not in reduced]
    if name == "RESHAPE":
        return None  # any shape of as many elements; compared below by count
    if name in ("CONV_2D", "DEPTHWISE_CONV_2D") or name in _POOLS:
        if len(x) != 4 or options is None:
            return None
        if name in _POOLS:
            (kh, kw), channels, dilation = (options.filterHeight, options.filterWidth), x[3], (1, 1)
        else:
            if len(ins) < 2 or len(shapes[1]) != 4:
                return None
            w = shapes[1]
            kh, kw, channels = w[1], w[2], (w[0] if name == "CONV_2D" else w[3])
            dilation = (options.dilationHFactor, options.dilationWFactor)
        height = _window_output(x[1], kh, options.strideH, dilation[0], options.padding)
        width = _window_output(x[2], kw, options.strideW, dilation[1], options.padding)
        if height is None or width is None:
            return None
        return [x[0], height, width, channels]
    if name == "FULLY_CONNECTED" and len(ins) >= 2 and len(shapes[1]) == 2:
        units, depth = shapes[1]
        if getattr(options, "keepNumDims", False):
            return [*x[:-1], units]
        elements = math.prod(x)
        return [elements // depth, units] if depth > 0 and elements % depth == 0 else None
    if name == "CONCATENATION" and options is not None and all(s is not None and len(s) == len(x) for s in shapes):
        axis = options.axis % len(x) if x and -len(x) <= options.axis < len(x) else None
        if axis is None:
            return None
        return [sum(s[axis] for s in shapes) if i == axis else d for i, d in enumerate(x)]
    if name in ("PAD", "PADV2") and len(ins) >= 2 and ins[1] >= 0:
        paddings = _constant_ints(model, tensors[ins[1]])
        if paddings is None or len(paddings) != 2 * len(x):
            return None
        return [d + paddings[2 * i] + paddings[2 * i + 1] for i, d in enumerate(x)]
    return None
