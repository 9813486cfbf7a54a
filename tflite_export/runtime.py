"""Run, score, time and check ``.tflite`` models with the LiteRT interpreter.

Everything here uses ``ai_edge_litert.interpreter`` (the successor of ``tf.lite.Interpreter``)
and numpy only; TensorFlow is never imported, so this module also works where only the
``ai-edge-litert`` wheel is installed (e.g. a phone-class ARM board). A ``tf.Tensor`` or
``tf.data.Dataset`` given as ``x`` is still accepted: such an object exists only if its caller
imported TensorFlow, so it is recognised through ``sys.modules``.

Every model passes ``tflite_export.flatbuffer.check_model`` (indices, scales, shapes, and the
memory its tensors take at the batch size run, against ``max_bytes``) before LiteRT sees it;
what LiteRT still refuses raises :class:`LiteRTError`. Both are ``InvalidModelError``, a
ValueError. Inputs are quantized one batch at a time.

Public API:

* :func:`make_interpreter` -- an allocated interpreter from bytes or a file path.
* :func:`quantize_input` -- float -> int8/uint8 codes with TensorFlow FakeQuant's arithmetic.
* :func:`run` -- run a whole array through the model in batches.
* :func:`evaluate` -- top-1 accuracy.
* :func:`benchmark` -- ``invoke()`` latency statistics (:class:`LatencyStats`).
* :func:`compare` -- Keras vs TFLite parity in output LSBs (:class:`ParityReport`).
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Iterator

import numpy as np
from ai_edge_litert import schema_py_generated as schema
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tflite_export.flatbuffer import InvalidModelError, ModelSource, load, op_name

__all__ = [
    "LatencyStats",
    "LiteRTError",
    "ParityReport",
    "benchmark",
    "check_reference_kernels_can_prepare",
    "compare",
    "evaluate",
    "make_interpreter",
    "prepare_inputs",
    "quantize_input",
    "run",
]

# Integer types a float input can be quantized to (FakeQuant supports 2..16 bits).
_QUANTIZED_DTYPES = (np.int8, np.uint8, np.int16)


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


# What LiteRT's bindings raise when a model fails to load or run (pybind11 maps C++ exceptions
# onto RuntimeError, ValueError, IndexError, OverflowError); MemoryError is left to propagate.
_LITERT_ERRORS = (RuntimeError, ValueError, LookupError, ArithmeticError)


class LiteRTError(InvalidModelError, RuntimeError):
    """LiteRT refused to load or run a model that passed ``check_model``.

    An :class:`InvalidModelError` (so a ValueError) like every other model problem here, and a
    RuntimeError, the type LiteRT itself raises.
    """


def _one_line(error: BaseException) -> str:
    """``Type: message`` on one line (LiteRT's messages span several)."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _open_interpreter(
    model_bytes_or_path: ModelSource,
    *,
    batch_size: int,
    max_bytes: int | None,
    num_threads: int = 1,
    resolver: OpResolverType = OpResolverType.AUTO,
    preserve_all_tensors: bool = False,
) -> Interpreter:
    """A LiteRT interpreter with its tensors allocated, for a model that passed ``check_model``
    at ``batch_size`` (the batch its inputs will be resized to)."""
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)):
        raise TypeError(f"num_threads must be an int. Received: num_threads={num_threads!r}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1. Received: num_threads={num_threads}")
    model, content = load(model_bytes_or_path, batch_size=batch_size, max_bytes=max_bytes)
    if resolver == OpResolverType.BUILTIN_REF:
        _check_reference_kernels(model)
    try:
        interpreter = Interpreter(
            model_content=content,
            num_threads=int(num_threads),
            experimental_op_resolver_type=resolver,
            experimental_preserve_all_tensors=preserve_all_tensors,
        )
        interpreter.allocate_tensors()
    except _LITERT_ERRORS as error:
        raise LiteRTError(f"LiteRT cannot load the model: {_one_line(error)}") from None
    return interpreter


def make_interpreter(
    model_bytes_or_path: ModelSource,
    *,
    num_threads: int = 1,
    reference_kernels: bool = False,
    max_bytes: int | None = None,
) -> Interpreter:
    """Creates a LiteRT interpreter with its tensors allocated.

    Args:
        model_bytes_or_path: the serialized model (``bytes``, as returned by the converter) or
            the path of a ``.tflite`` file.
        num_threads: CPU threads for the kernels (>= 1).
        reference_kernels: if True, use TFLite's reference kernels
            (``OpResolverType.BUILTIN_REF``: slow, portable, the arithmetic every other kernel
            must match); otherwise the default optimized kernels with XNNPACK
            (``OpResolverType.AUTO``).
        max_bytes: the most memory (bytes) the file and its tensors, at the file's own shapes,
            may take (None: ``tflite_export.flatbuffer.DEFAULT_MAX_BYTES``, 2 GiB).

    Returns:
        An ``ai_edge_litert.interpreter.Interpreter`` after ``allocate_tensors()``.

    Raises:
        InvalidModelError: (a ValueError) empty bytes, a file that is not a regular readable
            TFLite flatbuffer, one that fails ``tflite_export.flatbuffer.check_model`` (an index
            out of range, a bad scale, tensors over ``max_bytes``), or one LiteRT cannot load.
        ValueError: num_threads < 1.
        FileNotFoundError: the path does not exist.
    """
    resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
    return _open_interpreter(
        model_bytes_or_path, batch_size=1, max_bytes=max_bytes, num_threads=num_threads, resolver=resolver
    )


def _check_reference_kernels(model: schema.ModelT) -> None:
    """Raises the ValueError of :func:`check_reference_kernels_can_prepare` for a parsed model."""
    graph = model.subgraphs[0]
    for index, operator in enumerate(graph.operators or []):
        if op_name(model, operator) != "SOFTMAX" or operator.inputs is None or len(operator.inputs) == 0:
            continue
        tensor = graph.tensors[operator.inputs[0]]
        q = tensor.quantization
        if q is None or q.scale is None or len(q.scale) != 1:
            continue
        beta = float(np.float32(getattr(operator.builtinOptions, "beta", 1.0)))
        if not beta * float(np.float32(q.scale[0])) * float(1 << 26) > 1.0:
            raise ValueError(
                f"Operator {index} (SOFTMAX): its input scale {float(q.scale[0]):.3g} is too small for "
                "LiteRT's reference kernels (beta·scale·2^26 <= 1 aborts the process); the logits' range is "
                "nearly empty: train or calibrate the model on real data."
            )


def check_reference_kernels_can_prepare(model_bytes: ModelSource, *, max_bytes: int | None = None) -> None:
    """Refuses, with a ValueError, a file LiteRT's reference kernels would abort the process on.

    The reference SOFTMAX checks ``beta·s_in·2^26 > 1`` with a fatal assertion (SIGABRT) when
    the interpreter is prepared: an int8 softmax whose input scale is tiny (the nearly constant
    logits of an untrained network) would end the Python process instead of raising.
    """
    _check_reference_kernels(load(model_bytes, max_bytes=max_bytes)[0])


# ----------------------------------------------------------------------------------------------
# Quantization of inputs / dequantization of outputs
# ----------------------------------------------------------------------------------------------


def quantize_input(x: np.ndarray, scale: float, zero_point: int, dtype: Any) -> np.ndarray:
    """Quantizes float values to integer codes exactly as TensorFlow's FakeQuant does.

    With ``qmin, qmax`` the range of ``dtype`` (int8: -128..127, uint8: 0..255) and all
    arithmetic in float32::

        nudged_min = (qmin - zero_point) * scale
        nudged_max = (qmax - zero_point) * scale
        c    = clip(x, nudged_min, nudged_max) - nudged_min
        q    = floor(c / scale - (zero_point - qmin) + 0.5) + zero_point

    so a Keras model whose input passes through ``tf.quantization.fake_quant_with_min_max_vars``
    (min/max giving this scale and zero point) sees ``(q - zero_point) * scale``, and the int8
    TFLite model fed ``q`` computes on the same values.

    Args:
        x: float array of any shape (real units).
        scale: quantization step (> 0), as stored in the TFLite tensor (float32).
        zero_point: integer code of real 0, within the range of ``dtype``.
        dtype: ``np.int8``, ``np.uint8`` or ``np.int16``.

    Returns:
        Array of ``x.shape`` and ``dtype`` holding the codes.

    Raises:
        ValueError: non-positive or non-finite scale, zero point outside the dtype's range,
            NaN in ``x``, or an unsupported dtype.
    """
    dtype = np.dtype(dtype)
    if dtype not in [np.dtype(t) for t in _QUANTIZED_DTYPES]:
        raise ValueError(
            "quantize_input supports int8, uint8 and int16 codes. "
            f"Received: dtype={dtype.name}"
        )
    info = np.iinfo(dtype)
    qmin, qmax = int(info.min), int(info.max)
    scale32 = np.float32(scale)
    if not np.isfinite(scale32) or scale32 <= 0:
        raise ValueError(f"scale must be a finite number > 0. Received: scale={scale!r}")
    zero_point = int(zero_point)
    if not qmin <= zero_point <= qmax:
        raise ValueError(
            f"zero_point must lie in [{qmin}, {qmax}] for {dtype.name}. "
            f"Received: zero_point={zero_point}"
        )
    if not np.isfinite(np.float32(qmax - qmin) * scale32):
        raise ValueError(f"scale is too large for {dtype.name} codes. Received: scale={scale!r}")
    x = np.asarray(x)
    codes = np.empty(x.shape, dtype)
    if x.ndim == 0:
        codes[()] = _quantize_block(x.reshape(1), scale32, zero_point, qmin, qmax)[0]
        return codes
    # Block by block along the first axis: the float32 temporaries stay a few MB for any input.
    rows = max(1, _QUANTIZE_BLOCK // max(1, int(np.prod(x.shape[1:], dtype=np.int64))))
    for start in range(0, x.shape[0], rows):
        codes[start : start + rows] = _quantize_block(x[start : start + rows], scale32, zero_point, qmin, qmax)
    return codes


# Elements quantized at a time by quantize_input (float32 temporaries of 1 MiB).
_QUANTIZE_BLOCK = 1 << 18


def _quantize_block(x: np.ndarray, scale32: np.float32, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """FakeQuant codes of one block, as float32 holding integers in [qmin, qmax]."""
    x32 = np.asarray(x, dtype=np.float32)
    if np.isnan(x32).any():
        raise ValueError("x contains NaN, which has no quantized code.")
    # Which code a value next to a rounding boundary gets must be decided exactly as
    # TensorFlow decides it, so these are the float32 operations of TF's
    # FakeQuantWithMinMaxVars CPU kernel (tensorflow/core/kernels/fake_quant_ops_functor.h),
    # in the same order (tests/test_runtime.py compares codes with TF on ties and neighbours):
    #  * divide by the step; do not multiply by a float32 reciprocal. float32(1/scale) is off
    #    by up to half an ulp, which sends values within ~1e-5 LSB of a boundary to the
    #    neighbouring code (a few % of values placed near .5 points disagree);
    #  * subtract the zero point (TF's unsigned-domain zero point qz = zero_point - qmin)
    #    before adding 0.5: TF rounds the offset from the zero point, and that subtraction
    #    itself rounds in float32;
    #  * floor(v + 0.5) is round-half-up: an exact .5 goes to the larger code, for negative
    #    offsets too. np.round (half to even) and C's round (half away from zero) differ from
    #    it on ties, which is where a host-side quantizer and the QAT model would part ways.
    # Note that with scale = float32(1/255) the value 0.5 is *not* a tie: 0.5 / scale is
    # 127.4999924 in float32 (float32(1/255) > 1/255), so it gets code 127 in TF's 0..255
    # domain (int8: -1), not 128.
    # In-place float32 steps: the same operations in the same order, without int64 copies.
    qz = np.float32(zero_point - qmin)
    nudged_min = np.float32(qmin - zero_point) * scale32
    nudged_max = np.float32(qmax - zero_point) * scale32
    v = np.clip(x32, nudged_min, nudged_max)
    v -= nudged_min
    v /= scale32
    v -= qz
    v += np.float32(0.5)
    np.floor(v, out=v)
    # |offset| <= 65535 after the clamp, so adding the zero point is exact in float32.
    v += np.float32(zero_point)
    # The clamp above already keeps codes in range; clipping again only guards float edge cases.
    np.clip(v, qmin, qmax, out=v)
    return v


def _per_tensor_quantization(detail: dict) -> tuple[float, int] | None:
    """Returns (scale, zero_point) of a per-tensor quantized tensor, None if not quantized."""
    params = detail.get("quantization_parameters") or {}
    scales = np.asarray(params.get("scales", []), dtype=np.float32)
    zero_points = np.asarray(params.get("zero_points", []), dtype=np.int64)
    if scales.size == 0:
        scale, zero_point = detail.get("quantization", (0.0, 0))
        if not scale:
            return None
        return float(np.float32(scale)), int(zero_point)
    if scales.size > 1:
        raise ValueError(
            f"Tensor {detail.get('name')!r} is quantized per axis ({scales.size} scales); "
            "only per-tensor quantized model inputs and outputs are supported."
        )
    if scales[0] == 0:
        return None
    return float(scales[0]), int(zero_points[0]) if zero_points.size else 0


def _dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """(q - zero_point) * scale in float32."""
    return (q.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)


# ----------------------------------------------------------------------------------------------
# Inputs: numpy arrays, tf.Tensor, tf.data.Dataset
# ----------------------------------------------------------------------------------------------

# Samples per batch when a dataset must be turned into arrays without a batch size given.
_DATASET_BATCH = 256


def _tensorflow() -> Any:
    """The TensorFlow module if it is already imported, else None. A TF object cannot exist
    unless TensorFlow was imported, so checking for one never imports it."""
    return sys.modules.get("tensorflow")


def _is_dataset(x: Any) -> bool:
    tf = _tensorflow()
    return tf is not None and isinstance(x, tf.data.Dataset)


def _as_array(x: Any) -> np.ndarray:
    """``x`` as a numpy array (a ``tf.Tensor`` or ``tf.Variable`` through ``.numpy()``)."""
    tf = _tensorflow()
    if tf is not None and isinstance(x, (tf.Tensor, tf.Variable)):
        return np.asarray(x.numpy())
    return np.asarray(x)


def _input_list(x: Any, details: list[dict]) -> list[np.ndarray]:
    """``x`` as one array per model input: an array for a single-input model, else a list/tuple."""
    if not details:
        raise InvalidModelError("The model declares no input tensor; there is nothing to feed.")
    if len(details) == 1:
        if isinstance(x, (list, tuple)) and len(x) == 1 and np.ndim(x[0]) > 1:
            return [_as_array(x[0])]
        return [_as_array(x)]
    if not isinstance(x, (list, tuple)) or len(x) != len(details):
        raise ValueError(
            f"The model has {len(details)} inputs {[d['name'] for d in details]}: pass x as a list of "
            f"{len(details)} arrays in that order. Received: {type(x).__name__}"
            + (f" of {len(x)}" if isinstance(x, (list, tuple)) else "")
        )
    return [_as_array(xi) for xi in x]


def _expected_sample_shape(detail: dict) -> tuple[int, ...]:
    """Per-sample input shape, with -1 for dimensions the model leaves free."""
    signature = detail.get("shape_signature")
    if signature is None or len(signature) == 0:
        signature = detail["shape"]
    return tuple(int(d) for d in signature[1:])


def _shape_text(detail: dict) -> str:
    """``(N, 8, 8, 1)``: what x must look like for this input."""
    return "(N, " + ", ".join("?" if d < 0 else str(d) for d in _expected_sample_shape(detail)) + ")"


def _check_input_shape(x: np.ndarray, detail: dict) -> None:
    """Raises ValueError unless ``x`` is ``(N, *sample_shape)`` with N >= 1 for this input."""
    expected = _expected_sample_shape(detail)
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(
            f"x must hold at least one sample of shape {_shape_text(detail)}. Received: x.shape={x.shape}"
        )
    received = x.shape[1:]
    if len(received) != len(expected) or any(e >= 0 and e != r for e, r in zip(expected, received)):
        raise ValueError(
            f"x does not match the model input {detail['name']!r}: expected shape {_shape_text(detail)}. "
            f"Received: x.shape={x.shape}"
        )


def _convert_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """``x`` (shape already checked) in the input tensor's dtype: float values quantized."""
    input_dtype = np.dtype(detail["dtype"])
    if x.dtype == input_dtype:
        return np.ascontiguousarray(x)
    if input_dtype in (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.int16)):
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(
                f"The model input is {input_dtype.name}: pass float values (they are quantized "
                f"with the input's scale and zero point) or {input_dtype.name} codes. "
                f"Received: x.dtype={x.dtype}"
            )
        quant = _per_tensor_quantization(detail)
        if quant is None:
            raise ValueError(
                f"The model input {detail['name']!r} is {input_dtype.name} without quantization "
                "parameters, so float values cannot be converted; pass "
                f"{input_dtype.name} values."
            )
        return quantize_input(x, quant[0], quant[1], input_dtype)
    if np.issubdtype(input_dtype, np.floating):
        return np.ascontiguousarray(x, dtype=input_dtype)
    raise ValueError(
        f"The model input is {input_dtype.name}. Received: x.dtype={x.dtype}"
    )


def _checked_arrays(x: Any, details: list[dict]) -> list[np.ndarray]:
    """``x`` as one array per input, shapes checked, equal sample counts; dtypes unchanged."""
    arrays = _input_list(x, details)
    for array, detail in zip(arrays, details):
        _check_input_shape(array, detail)
    counts = [a.shape[0] for a in arrays]
    if any(c != counts[0] for c in counts):
        raise ValueError(f"Every input must hold the same number of samples. Received: {counts}")
    return arrays


def _dataset_has_labels(spec: Any, details: list[dict]) -> bool:
    """Whether a dataset's elements are ``(x, y)`` pairs (True) or ``x`` alone (False)."""
    tf = _tensorflow()

    def is_x(part: Any) -> bool:
        if len(details) == 1:
            return isinstance(part, tf.TensorSpec)
        return isinstance(part, (tuple, list)) and len(part) == len(details) and all(
            isinstance(p, tf.TensorSpec) for p in part
        )

    if is_x(spec):
        return False
    if isinstance(spec, (tuple, list)) and len(spec) in (2, 3) and is_x(spec[0]):
        return True  # (x, y) or (x, y, sample_weight) as Keras takes them
    form = "a tensor" if len(details) == 1 else f"a tuple of {len(details)} tensors"
    raise ValueError(
        f"A dataset for this model yields x or (x, y) elements, x being {form}. Received element_spec: {spec}"
    )


def _dataset_batches(
    dataset: Any, details: list[dict], batch_size: int
) -> Iterator[tuple[list[np.ndarray], np.ndarray | None]]:
    """``(inputs, labels or None)`` batches of at most ``batch_size`` samples from a dataset,
    batching it first if its elements are single samples (rank one below the model input's)."""
    spec = dataset.element_spec
    has_labels = _dataset_has_labels(spec, details)
    x_spec = spec[0] if has_labels else spec
    x_specs = [x_spec] if len(details) == 1 else list(x_spec)
    rank, model_rank = x_specs[0].shape.rank, len(details[0]["shape"])
    if rank is not None and rank not in (model_rank, model_rank - 1):
        raise ValueError(
            f"The dataset's x elements have shape {x_specs[0].shape.as_list()}; the model input "
            f"{details[0]['name']!r} takes samples of shape {list(_expected_sample_shape(details[0]))} "
            f"(unbatched elements) or batches of shape {_shape_text(details[0])}."
        )
    if rank == model_rank - 1:
        dataset = dataset.batch(batch_size)
    for element in dataset:
        x_part = element[0] if has_labels else element
        arrays = [_as_array(x_part)] if len(details) == 1 else [_as_array(v) for v in x_part]
        labels = _as_array(element[1]) if has_labels else None
        for array, detail in zip(arrays, details):
            _check_input_shape(array, detail)
        count = arrays[0].shape[0]
        if any(a.shape[0] != count for a in arrays) or (labels is not None and (labels.ndim == 0 or len(labels) != count)):
            raise ValueError(
                "Every part of a dataset element must hold the same number of samples. Received: "
                f"{[a.shape[0] for a in arrays]} inputs" + ("" if labels is None else f", labels of shape {labels.shape}")
            )
        for start in range(0, count, batch_size):
            yield (
                [a[start : start + batch_size] for a in arrays],
                None if labels is None else labels[start : start + batch_size],
            )


def _input_batches(
    x: Any, details: list[dict], batch_size: int
) -> Iterator[tuple[list[np.ndarray], np.ndarray | None]]:
    """``(inputs, labels or None)`` batches of x (arrays, tf.Tensor or tf.data.Dataset); the
    inputs are one array per model input, shapes checked, dtypes not yet converted."""
    if _is_dataset(x):
        return _dataset_batches(x, details, batch_size)
    arrays = _checked_arrays(x, details)
    return (
        ([a[start : start + batch_size] for a in arrays], None)
        for start in range(0, arrays[0].shape[0], batch_size)
    )


def _run_batch_size(x: Any, batch_size: int) -> int:
    """The largest batch a run of x will invoke: batch_size, or fewer if x holds fewer samples."""
    if _is_dataset(x):
        return batch_size
    count = _sample_count(x)
    return min(batch_size, count) if count > 0 else batch_size


def _materialized(x: Any, details: list[dict]) -> Any:
    """A dataset's inputs as arrays (one array, or a list for several inputs); x otherwise."""
    if not _is_dataset(x):
        return x
    chunks = [inputs for inputs, _ in _dataset_batches(x, details, _DATASET_BATCH)]
    if not chunks:
        raise ValueError("The dataset yields no sample.")
    arrays = [np.concatenate([c[i] for c in chunks], axis=0) for i in range(len(details))]
    return arrays[0] if len(arrays) == 1 else arrays


def _prepare_input(x: Any, detail: dict) -> np.ndarray:
    """Validates x against the model input and converts it to the input tensor's dtype."""
    x = _as_array(x)
    _check_input_shape(x, detail)
    return _convert_input(x, detail)


def _check_batch_size(batch_size: int) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"batch_size must be an int. Received: batch_size={batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1. Received: batch_size={batch_size}")
    return int(batch_size)


def _resize_inputs(interpreter: Interpreter, shapes: list[list[int]]) -> None:
    """Give each input its shape (batch included) and re-allocate, if any differs."""
    details = interpreter.get_input_details()
    changed = False
    for detail, shape in zip(details, shapes):
        if [int(d) for d in detail["shape"]] != list(shape):
            interpreter.resize_tensor_input(detail["index"], list(shape))
            changed = True
    if changed:
        interpreter.allocate_tensors()


def prepare_inputs(x: Any, details: list[dict]) -> list[np.ndarray]:
    """``x`` as one array per model input in the input's dtype (float values quantized), checked.

    Args:
        x: an array ``(N, *input_shape[1:])`` for a one-input model, else a list of them; float
            values or values already in the input's dtype. A ``tf.Tensor`` is taken through
            ``.numpy()``; a ``tf.data.Dataset`` (of samples or of batches) is read whole.
        details: the interpreter's ``get_input_details()``.

    Returns:
        One array per model input, ``(N, *input_shape[1:])``, in the input tensor's dtype.

    Raises:
        ValueError: wrong number of inputs, wrong shape or dtype, or unequal sample counts.
    """
    arrays = _checked_arrays(_materialized(x, details), details)
    return [_convert_input(a, d) for a, d in zip(arrays, details)]


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------


def _invoke_batches(
    interpreter: Interpreter, batches: Iterator[tuple[list[np.ndarray], np.ndarray | None]]
) -> Iterator[tuple[list[np.ndarray], np.ndarray | None]]:
    """Runs each ``(inputs, labels)`` batch; yields ``(outputs, labels)``: every output (a copy)
    of the batch, each with one row per input row.

    Inputs are converted (float quantized) one batch at a time, so memory beyond the caller's
    arrays grows with the batch, not with the data set.
    """
    details = interpreter.get_input_details()
    for inputs, labels in batches:
        codes = [_convert_input(a, d) for a, d in zip(inputs, details)]
        rows = codes[0].shape[0]
        try:
            _resize_inputs(interpreter, [list(c.shape) for c in codes])
            for detail, chunk in zip(interpreter.get_input_details(), codes):
                interpreter.set_tensor(detail["index"], chunk)
            interpreter.invoke()
        except _LITERT_ERRORS as error:
            raise LiteRTError(f"LiteRT cannot run the model on a batch of {rows}: {_one_line(error)}") from None
        outputs = []
        for i, detail in enumerate(interpreter.get_output_details()):
            value = np.array(interpreter.get_tensor(detail["index"]), copy=True)
            # A corrupt shape (a reduction over the batch axis, say) would silently return more
            # or fewer rows than samples, and every row after the first mismatch would be misread.
            if value.ndim == 0 or value.shape[0] != rows:
                raise InvalidModelError(
                    f"output {i} ({detail['name']!r}) has shape {list(value.shape)} for a batch of {rows} "
                    "input rows; each output must have one row per input row (a corrupt file?)"
                )
            outputs.append(value)
        yield outputs, labels


def _output_details(interpreter: Interpreter) -> list[dict]:
    """The interpreter's output details; InvalidModelError for a model without outputs."""
    details = interpreter.get_output_details()
    if not details:
        raise InvalidModelError("The model declares no output tensor.")
    return details


def _concatenated(parts: list[list[np.ndarray]]) -> list[np.ndarray]:
    if not parts:
        raise ValueError("x holds no sample to run.")
    return [np.concatenate([p[i] for p in parts], axis=0) for i in range(len(parts[0]))]


def _run_raw(interpreter: Interpreter, x: Any, batch_size: int) -> tuple[list[np.ndarray], list[dict]]:
    """Runs all of x; returns every output (concatenated over batches) and the output details."""
    batch_size = _check_batch_size(batch_size)
    _output_details(interpreter)
    batches = _input_batches(x, interpreter.get_input_details(), batch_size)
    outputs = _concatenated([out for out, _ in _invoke_batches(interpreter, batches)])
    # Details after allocation (the output shape follows the batch size; quantization does not).
    return outputs, interpreter.get_output_details()


def _dequantized(raw: np.ndarray, detail: dict) -> np.ndarray:
    quant = _per_tensor_quantization(detail)
    if quant is not None and np.issubdtype(raw.dtype, np.integer):
        return _dequantize(raw, *quant)
    return raw


def run(
    model_bytes_or_path: ModelSource,
    x: Any,
    *,
    batch_size: int = 256,
    num_threads: int = 1,
    reference_kernels: bool = False,
    dequantize: bool = True,
    all_outputs: bool = False,
    max_bytes: int | None = None,
) -> np.ndarray | list[np.ndarray]:
    """Runs every sample of ``x`` through the model and returns its first output (or all).

    Float ``x`` given to an int8/uint8 input is quantized with that input's scale and zero point
    (:func:`quantize_input`), one batch at a time; ``x`` already of the input's integer dtype is
    passed unchanged. The batch dimension is resized to each batch (the last one may be smaller).

    Args:
        model_bytes_or_path: serialized model or path of a ``.tflite`` file.
        x: array of shape ``(N, *input_shape[1:])``, N >= 1; for a model with several inputs,
            a list of such arrays in the model's input order. A ``tf.Tensor`` is taken through
            ``.numpy()``; a ``tf.data.Dataset`` may yield single samples (it is batched here) or
            batches, as ``x`` or ``(x, y)`` elements (``y`` is ignored).
        batch_size: samples per ``invoke()``.
        num_threads: CPU threads.
        reference_kernels: use TFLite's reference kernels (see :func:`make_interpreter`).
        dequantize: if True and an output is quantized, return ``(q - zero_point) * scale``
            as float32; otherwise the output tensor's raw values.
        all_outputs: return a list with every output instead of the first.
        max_bytes: the most memory (bytes) the file and its tensors at the batch size run may
            take (None: ``tflite_export.flatbuffer.DEFAULT_MAX_BYTES``, 2 GiB).

    Returns:
        Array of shape ``(N, *output_shape[1:])`` (float32 if dequantized), or a list of them.

    Raises:
        ValueError: empty ``x``, a per-sample shape other than the model's, inputs of different
            lengths, or an integer ``x`` whose dtype is not the input's.
        InvalidModelError: (a ValueError) the file is not a valid model, its tensors exceed
            ``max_bytes`` at this batch size, LiteRT cannot run it, or an output does not have
            one row per input row.
    """
    batch_size = _check_batch_size(batch_size)
    interpreter = _open_interpreter(
        model_bytes_or_path,
        batch_size=_run_batch_size(x, batch_size),
        max_bytes=max_bytes,
        num_threads=num_threads,
        resolver=OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO,
    )
    raws, out_details = _run_raw(interpreter, x, batch_size)
    results = [_dequantized(r, d) if dequantize else r for r, d in zip(raws, out_details)]
    return results if all_outputs else results[0]


def _sample_count(x: Any) -> int:
    """Samples in ``x``: an array, or a list of per-input arrays (the first one's length)."""
    first = x[0] if isinstance(x, (list, tuple)) and x and np.ndim(x[0]) > 0 else x
    shape = np.shape(first)
    return int(shape[0]) if len(shape) > 0 else 0


def _labels_from(y: Any) -> np.ndarray:
    """Integer labels from integer labels of shape (N,) / (N, 1) or one-hot of shape (N, C)."""
    y = _as_array(y)
    if y.ndim == 2 and y.shape[1] > 1:
        return np.argmax(y, axis=1)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise ValueError(
            "y must be integer labels of shape (N,) or one-hot of shape (N, C). "
            f"Received: y.shape={y.shape}"
        )
    return y.astype(np.int64)


def evaluate(
    model_bytes_or_path: ModelSource,
    x: Any,
    y: Any = None,
    *,
    batch_size: int = 256,
    num_threads: int = 1,
    return_outputs: bool = False,
    max_bytes: int | None = None,
) -> float | tuple[float, np.ndarray]:
    """Top-1 accuracy of the model on ``(x, y)``.

    ``x`` is quantized and run one batch at a time and only the argmax of each output row is
    kept (unless ``return_outputs``), so memory beyond ``x`` itself grows with the batch size,
    not with the number of samples.

    Args:
        model_bytes_or_path: serialized model or path of a ``.tflite`` file.
        x: inputs, shape ``(N, *input_shape[1:])`` (float, or codes of the input dtype); a list
            of arrays for a model with several inputs; a ``tf.Tensor``; or a ``tf.data.Dataset``
            of single samples or of batches, yielding ``x`` or ``(x, y)``.
        y: labels of the first output, shape ``(N,)`` integers or ``(N, C)`` one-hot; None when
            ``x`` is a dataset of ``(x, y)`` elements.
        batch_size: samples per ``invoke()``.
        num_threads: CPU threads.
        return_outputs: also return the (dequantized) outputs.
        max_bytes: memory bound in bytes (see :func:`run`).

    Returns:
        Accuracy in [0, 1] (fraction of samples whose output argmax equals the label), and with
        ``return_outputs`` also the outputs, shape ``(N, *output_shape[1:])`` float32.

    Raises:
        ValueError: ``len(x) != len(y)``, no labels, or any error of :func:`run`.
    """
    batch_size = _check_batch_size(batch_size)
    labels = None if y is None else _labels_from(y)
    if _is_dataset(x):
        pass  # labels come from the elements, or from y; counts are checked as they arrive
    elif labels is None:
        raise ValueError("y (the labels) is required unless x is a tf.data.Dataset of (x, y) elements.")
    elif _sample_count(x) != len(labels):
        raise ValueError(
            "x and y must hold the same number of samples. "
            f"Received: {_sample_count(x)} samples in x, y.shape={np.shape(y)}"
        )
    interpreter = _open_interpreter(
        model_bytes_or_path, batch_size=_run_batch_size(x, batch_size), max_bytes=max_bytes, num_threads=num_threads
    )
    output_detail = _output_details(interpreter)[0]
    batches = _input_batches(x, interpreter.get_input_details(), batch_size)
    seen, correct, kept = 0, 0, []
    for outputs, batch_labels in _invoke_batches(interpreter, batches):
        rows = outputs[0].shape[0]
        if batch_labels is not None:
            if labels is not None:
                raise ValueError("The dataset yields (x, y) elements: pass y=None (the labels come from it).")
            truth = _labels_from(batch_labels)
        elif labels is not None:
            truth = labels[seen : seen + rows]
        else:
            raise ValueError("y (the labels) is required unless x is a tf.data.Dataset of (x, y) elements.")
        if len(truth) != rows:
            raise ValueError(f"x and y must hold the same number of samples. Received: more samples in x than labels in y ({len(labels)})")
        output = _dequantized(outputs[0], output_detail)
        correct += int(np.sum(np.argmax(output.reshape(rows, -1), axis=1) == truth))
        seen += rows
        if return_outputs:
            kept.append(output)
    if seen == 0:
        raise ValueError("x holds no sample to evaluate.")
    if labels is not None and seen != len(labels):
        raise ValueError(f"x and y must hold the same number of samples. Received: {seen} samples in x, {len(labels)} labels")
    accuracy = correct / seen
    if return_outputs:
        return accuracy, np.concatenate(kept, axis=0)
    return accuracy


# ----------------------------------------------------------------------------------------------
# Latency
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Wall-clock latency of ``Interpreter.invoke()`` in milliseconds.

    Attributes:
        median_ms, p90_ms, mean_ms, std_ms, min_ms: statistics over the timed runs.
        runs: number of timed ``invoke()`` calls (after warm-up).
        num_threads: CPU threads the interpreter used.
        batch_size: samples per ``invoke()``.
    """

    median_ms: float
    p90_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    runs: int
    num_threads: int
    batch_size: int = 1

    def to_dict(self) -> dict[str, float | int]:
        """All fields as a plain dict (JSON-serializable)."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"median {self.median_ms:.4f} ms, p90 {self.p90_ms:.4f} ms, "
            f"mean {self.mean_ms:.4f} ± {self.std_ms:.4f} ms, min {self.min_ms:.4f} ms "
            f"({self.runs} runs, {self.num_threads} thread{'s' if self.num_threads != 1 else ''}, "
            f"batch {self.batch_size})"
        )


def _random_input(detail: dict, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if np.issubdtype(dtype, np.floating):
        return rng.standard_normal(shape).astype(dtype)
    if dtype == np.dtype(np.bool_):
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        if info.bits <= 16:
            return rng.integers(int(info.min), int(info.max), size=shape, endpoint=True).astype(
                dtype
            )
        # Wide integer inputs are usually indices or lengths: keep them small and valid.
        return rng.integers(0, 2, size=shape).astype(dtype)
    raise ValueError(f"Cannot generate random input for dtype {dtype.name}.")


def benchmark(
    model_bytes_or_path: ModelSource,
    *,
    num_threads: int = 1,
    warmup: int = 20,
    runs: int = 200,
    batch_size: int = 1,
    max_bytes: int | None = None,
) -> LatencyStats:
    """Times ``invoke()`` of the model on one random valid input.

    The input is set once (uniform random codes for integer inputs, standard normal values for
    float inputs); only ``invoke()`` is timed, with ``time.perf_counter_ns``, after ``warmup``
    untimed calls. Timings on shared machines are noisy: compare medians measured in one
    process.

    Args:
        model_bytes_or_path: serialized model or path of a ``.tflite`` file.
        num_threads: CPU threads.
        warmup: untimed ``invoke()`` calls first (>= 0).
        runs: timed ``invoke()`` calls (>= 1).
        batch_size: samples per ``invoke()`` (the input's batch dimension is resized).
        max_bytes: memory bound in bytes (see :func:`run`).

    Returns:
        :class:`LatencyStats`.

    Raises:
        ValueError: runs < 1, warmup < 0 or batch_size < 1.
        InvalidModelError: (a ValueError) the file is not a valid model, exceeds ``max_bytes``
            at ``batch_size``, or LiteRT cannot run it.
    """
    for name, value, least in (("runs", runs, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ValueError(f"{name} must be an int >= {least}. Received: {name}={value!r}")
    batch_size = _check_batch_size(batch_size)
    interpreter = _open_interpreter(model_bytes_or_path, batch_size=batch_size, max_bytes=max_bytes, num_threads=num_threads)
    rng = np.random.default_rng(0)
    times_ns = np.empty(int(runs), dtype=np.int64)
    try:
        _resize_inputs(interpreter, [[batch_size, *[int(d) for d in detail["shape"][1:]]] for detail in interpreter.get_input_details()])
        for detail in interpreter.get_input_details():
            shape = tuple(int(d) for d in detail["shape"])
            interpreter.set_tensor(detail["index"], _random_input(detail, shape, rng))
        for _ in range(int(warmup)):
            interpreter.invoke()
        for i in range(int(runs)):
            start = time.perf_counter_ns()
            interpreter.invoke()
            times_ns[i] = time.perf_counter_ns() - start
    except _LITERT_ERRORS as error:
        raise LiteRTError(f"LiteRT cannot run the model: {_one_line(error)}") from None
    times_ms = times_ns.astype(np.float64) / 1e6
    return LatencyStats(
        median_ms=float(np.median(times_ms)),
        p90_ms=float(np.percentile(times_ms, 90)),
        mean_ms=float(np.mean(times_ms)),
        std_ms=float(np.std(times_ms)),
        min_ms=float(np.min(times_ms)),
        runs=int(runs),
        num_threads=int(num_threads),
        batch_size=batch_size,
    )


# ----------------------------------------------------------------------------------------------
# Parity
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParityReport:
    """How closely a TFLite model's first output follows a Keras model's.

    Attributes:
        n_samples: samples compared.
        top1_agreement: fraction of samples whose output argmax is the same in both.
        max_abs_error: max |tflite - keras| over all output elements, in output units
            (TFLite dequantized).
        max_abs_lsb: ``max_abs_error / output_scale``; None for a float output.
        bit_exact_fraction: fraction of output elements whose TFLite code equals the Keras
            value quantized to the same grid; None for a float output.
        within_one_lsb_fraction: fraction of output elements whose codes differ by <= 1;
            None for a float output.
        output_scale, output_zero_point: quantization of the TFLite output; None if float.
    """

    n_samples: int
    top1_agreement: float
    max_abs_error: float
    max_abs_lsb: float | None = None
    bit_exact_fraction: float | None = None
    within_one_lsb_fraction: float | None = None
    output_scale: float | None = None
    output_zero_point: int | None = None

    @property
    def quantized(self) -> bool:
        """True if the TFLite output is quantized (the LSB fields are filled)."""
        return self.output_scale is not None

    def ok(self, max_lsb: float = 1.0, min_top1: float = 0.99) -> bool:
        """True if top-1 agreement >= ``min_top1`` and, for a quantized output, the largest
        difference is at most ``max_lsb`` output steps. A float output is judged on top-1
        agreement only."""
        if self.top1_agreement < min_top1:
            return False
        if self.max_abs_lsb is not None and self.max_abs_lsb > max_lsb:
            return False
        return True

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (JSON-serializable)."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        parts = [f"n={self.n_samples}", f"top1_agreement={self.top1_agreement:.4f}"]
        if self.quantized:
            parts += [
                f"max_abs_lsb={self.max_abs_lsb:.3f}",
                f"bit_exact={self.bit_exact_fraction:.4f}",
                f"within_1lsb={self.within_one_lsb_fraction:.4f}",
            ]
        parts.append(f"max_abs_error={self.max_abs_error:.6g}")
        if self.quantized:
            parts.append(f"scale={self.output_scale:.6g} zero_point={self.output_zero_point}")
        else:
            parts.append("float output")
        return "ParityReport(" + ", ".join(parts) + ")"


def _keras_outputs(keras_model: Any, x: Any, batch_size: int, count: int) -> list[np.ndarray]:
    """Every output of ``keras_model(batch, training=False)`` over ``x``, concatenated."""
    outputs: list[list[np.ndarray]] = []
    for start in range(0, count, batch_size):
        batch = [xi[start : start + batch_size] for xi in x] if isinstance(x, (list, tuple)) else x[start : start + batch_size]
        out = keras_model(batch, training=False)
        out = list(out) if isinstance(out, (list, tuple)) else [out]
        if not outputs:
            outputs = [[] for _ in out]
        for i, value in enumerate(out):
            outputs[i].append(np.asarray(value, dtype=np.float32))
    return [np.concatenate(o, axis=0) for o in outputs]


def compare(
    keras_model: Any,
    model_bytes_or_path: ModelSource,
    x: Any,
    *,
    batch_size: int = 256,
    max_bytes: int | None = None,
) -> ParityReport:
    """Compares a Keras model's outputs with the TFLite model's on the same inputs.

    Keras outputs come from ``keras_model(x_batch, training=False)`` (any callable with that
    signature works); TFLite outputs from :func:`run` (float ``x`` is quantized for an int8
    input). For a quantized int8/uint8 output with scale ``s`` and zero point ``zp``, the Keras
    value ``k`` is put on the same grid as ``clip(floor(k / s + 0.5) + zp, qmin, qmax)`` and
    compared code by code. A model with several outputs is compared on all of them (output
    ``i`` of Keras with output ``i`` of the file): LSB and bit-exact figures cover every output
    element, top-1 agreement the first output; LSB figures need every output quantized.

    Args:
        keras_model: the reference model.
        model_bytes_or_path: serialized model or path of a ``.tflite`` file.
        x: inputs, shape ``(N, *input_shape[1:])``; a list of arrays for several inputs; a
            ``tf.Tensor``; or a ``tf.data.Dataset`` of samples or batches (read whole first).
        batch_size: samples per Keras call and per ``invoke()``.
        max_bytes: memory bound in bytes (see :func:`run`).

    Returns:
        :class:`ParityReport`.

    Raises:
        ValueError: the two models' outputs differ in number or shape, or any error of :func:`run`.
    """
    batch_size = _check_batch_size(batch_size)
    interpreter = _open_interpreter(
        model_bytes_or_path, batch_size=_run_batch_size(x, batch_size), max_bytes=max_bytes
    )
    # Keras and the interpreter must see the same samples: read a dataset once, into arrays.
    x = _materialized(x, interpreter.get_input_details())
    x = [_as_array(xi) for xi in x] if isinstance(x, (list, tuple)) else _as_array(x)
    raws, out_details = _run_raw(interpreter, x, batch_size)
    keras_outs = _keras_outputs(keras_model, x, batch_size, _sample_count(x))
    if len(keras_outs) != len(raws) or any(k.shape != r.shape for k, r in zip(keras_outs, raws)):
        raise ValueError(
            "The Keras and TFLite outputs differ in number or shape: "
            f"keras {[k.shape for k in keras_outs]} vs tflite {[r.shape for r in raws]}."
        )
    n = raws[0].shape[0]
    quants = [_per_tensor_quantization(d) if np.issubdtype(r.dtype, np.integer) else None for r, d in zip(raws, out_details)]
    tflite_outs = [_dequantize(r, *q) if q is not None else r.astype(np.float32) for r, q in zip(raws, quants)]
    max_abs_error = max(float(np.abs(t.astype(np.float64) - k.astype(np.float64)).max()) for t, k in zip(tflite_outs, keras_outs))
    top1 = float(
        np.mean(np.argmax(tflite_outs[0].reshape(n, -1), axis=1) == np.argmax(keras_outs[0].reshape(n, -1), axis=1))
    )
    if any(q is None for q in quants):
        return ParityReport(n_samples=n, top1_agreement=top1, max_abs_error=max_abs_error)
    diffs = []
    for raw, keras_out, (scale, zero_point) in zip(raws, keras_outs, quants):
        info = np.iinfo(raw.dtype)
        keras_codes = np.clip(
            np.floor(keras_out.astype(np.float64) / scale + 0.5) + zero_point, info.min, info.max
        ).astype(np.int64)
        diffs.append(np.abs(raw.astype(np.int64) - keras_codes).reshape(-1))
    code_diff = np.concatenate(diffs)
    scale, zero_point = quants[0]
    return ParityReport(
        n_samples=n,
        top1_agreement=top1,
        max_abs_error=max_abs_error,
        # In codes, not max_abs_error / scale: the float32 Keras value of a grid point is off by
        # an ulp, which would turn an exact 1-LSB difference into 1.000005.
        max_abs_lsb=float(code_diff.max()),
        bit_exact_fraction=float(np.mean(code_diff == 0)),
        within_one_lsb_fraction=float(np.mean(code_diff <= 1)),
        output_scale=float(scale),
        output_zero_point=int(zero_point),
    )
