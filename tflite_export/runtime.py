"""Run, score, time and check ``.tflite`` models with the LiteRT interpreter.

Everything here uses ``ai_edge_litert.interpreter`` (the successor of ``tf.lite.Interpreter``)
and numpy only; TensorFlow is never imported, so this module also works where only the
``ai-edge-litert`` wheel is installed (e.g. a phone-class ARM board).

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
import time
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tflite_export.flatbuffer import ModelSource, load, op_name, read_bytes

__all__ = [
    "LatencyStats",
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


def _load_model_bytes(model_bytes_or_path: ModelSource) -> bytes:
    """Returns the flatbuffer bytes of a model given as bytes-like or as a path."""
    return read_bytes(model_bytes_or_path)[0]


def make_interpreter(
    model_bytes_or_path: ModelSource,
    *,
    num_threads: int = 1,
    reference_kernels: bool = False,
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

    Returns:
        An ``ai_edge_litert.interpreter.Interpreter`` after ``allocate_tensors()``.

    Raises:
        ValueError: empty bytes, a file that is not a TFLite flatbuffer, or num_threads < 1.
        FileNotFoundError: the path does not exist.
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, (int, np.integer)):
        raise TypeError(f"num_threads must be an int. Received: num_threads={num_threads!r}")
    if num_threads < 1:
        raise ValueError(f"num_threads must be >= 1. Received: num_threads={num_threads}")
    content = _load_model_bytes(model_bytes_or_path)
    if reference_kernels:
        check_reference_kernels_can_prepare(content)
    resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
    interpreter = Interpreter(
        model_content=content,
        num_threads=int(num_threads),
        experimental_op_resolver_type=resolver,
    )
    interpreter.allocate_tensors()
    return interpreter


def check_reference_kernels_can_prepare(model_bytes: bytes) -> None:
    """Refuses, with a ValueError, a file LiteRT's reference kernels would abort the process on.

    The reference SOFTMAX checks ``beta·s_in·2^26 > 1`` with a fatal assertion (SIGABRT) when
    the interpreter is prepared: an int8 softmax whose input scale is tiny (the nearly constant
    logits of an untrained network) would end the Python process instead of raising.
    """
    model, _ = load(model_bytes)
    graph = model.subgraphs[0]
    for index, operator in enumerate(graph.operators or []):
        if op_name(model, operator) != "SOFTMAX" or operator.inputs is None or len(operator.inputs) == 0:
            continue
        tensor = graph.tensors[operator.inputs[0]]
        q = tensor.quantization
        if q is None or q.scale is None or len(q.scale) != 1:
            continue
        beta = float(np.float32(getattr(operator.builtinOptions, "beta", 1.0)))
        if beta * float(np.float32(q.scale[0])) * float(1 << 26) <= 1.0:
            raise ValueError(
                f"Operator {index} (SOFTMAX): its input scale {float(q.scale[0]):.3g} is too small for "
                "LiteRT's reference kernels (beta·scale·2^26 <= 1 aborts the process); the logits' range is "
                "nearly empty: train or calibrate the model on real data."
            )


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
    qz = np.float32(zero_point - qmin)
    nudged_min = np.float32(qmin - zero_point) * scale32
    nudged_max = np.float32(qmax - zero_point) * scale32
    clamped_shifted = np.clip(x32, nudged_min, nudged_max) - nudged_min
    offset = np.floor(clamped_shifted / scale32 - qz + np.float32(0.5))
    codes = offset.astype(np.int64) + zero_point
    # The clamp above already keeps codes in range; clipping again only guards float edge cases.
    return np.clip(codes, qmin, qmax).astype(dtype)


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
# Running
# ----------------------------------------------------------------------------------------------


def _input_list(x: Any, details: list[dict]) -> list[Any]:
    """``x`` as one array per model input: an array for a single-input model, else a list/tuple."""
    if len(details) == 1:
        if isinstance(x, (list, tuple)) and len(x) == 1 and np.ndim(x[0]) > 1:
            return [x[0]]
        return [x]
    if not isinstance(x, (list, tuple)) or len(x) != len(details):
        raise ValueError(
            f"The model has {len(details)} inputs {[d['name'] for d in details]}: pass x as a list of "
            f"{len(details)} arrays in that order. Received: {type(x).__name__}"
            + (f" of {len(x)}" if isinstance(x, (list, tuple)) else "")
        )
    return list(x)


def _expected_sample_shape(detail: dict) -> tuple[int, ...]:
    """Per-sample input shape, with -1 for dimensions the model leaves free."""
    signature = detail.get("shape_signature")
    if signature is None or len(signature) == 0:
        signature = detail["shape"]
    return tuple(int(d) for d in signature[1:])


def _prepare_input(x: Any, detail: dict) -> np.ndarray:
    """Validates x against the model input and converts it to the input tensor's dtype."""
    x = np.asarray(x)
    expected = _expected_sample_shape(detail)
    shown = "(N, " + ", ".join("?" if d < 0 else str(d) for d in expected) + ")"
    if x.ndim == 0 or x.shape[0] == 0:
        raise ValueError(
            f"x must hold at least one sample of shape {shown}. Received: x.shape={x.shape}"
        )
    received = x.shape[1:]
    if len(received) != len(expected) or any(
        e >= 0 and e != r for e, r in zip(expected, received)
    ):
        raise ValueError(
            f"x does not match the model input {detail['name']!r}: expected shape {shown}. "
            f"Received: x.shape={x.shape}"
        )

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
            values or values already in the input's dtype.
        details: the interpreter's ``get_input_details()``.

    Raises:
        ValueError: wrong number of inputs, wrong shape or dtype, or unequal sample counts.
    """
    arrays = [_prepare_input(xi, d) for xi, d in zip(_input_list(x, details), details)]
    count = arrays[0].shape[0]
    if any(a.shape[0] != count for a in arrays):
        raise ValueError(
            f"Every input must hold the same number of samples. Received: {[a.shape[0] for a in arrays]}"
        )
    return arrays


def _run_raw(interpreter: Interpreter, x: Any, batch_size: int) -> tuple[list[np.ndarray], list[dict]]:
    """Runs all of x; returns every output (concatenated over batches) and the output details."""
    batch_size = _check_batch_size(batch_size)
    arrays = prepare_inputs(x, interpreter.get_input_details())
    count = arrays[0].shape[0]
    out_details = interpreter.get_output_details()
    outputs: list[list[np.ndarray]] = [[] for _ in out_details]
    for start in range(0, count, batch_size):
        chunks = [a[start : start + batch_size] for a in arrays]
        _resize_inputs(interpreter, [list(c.shape) for c in chunks])
        for detail, chunk in zip(interpreter.get_input_details(), chunks):
            interpreter.set_tensor(detail["index"], chunk)
        interpreter.invoke()
        for i, detail in enumerate(interpreter.get_output_details()):
            outputs[i].append(np.array(interpreter.get_tensor(detail["index"]), copy=True))
    # Details after allocation (the output shape follows the batch size; quantization does not).
    return [np.concatenate(o, axis=0) for o in outputs], interpreter.get_output_details()


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
) -> np.ndarray | list[np.ndarray]:
    """Runs every sample of ``x`` through the model and returns its first output (or all).

    Float ``x`` given to an int8/uint8 input is quantized with that input's scale and zero point
    (:func:`quantize_input`); ``x`` already of the input's integer dtype is passed unchanged.
    The batch dimension is resized to each batch (the last one may be smaller).

    Args:
        model_bytes_or_path: serialized model or path of a ``.tflite`` file.
        x: array of shape ``(N, *input_shape[1:])``, N >= 1; for a model with several inputs,
            a list of such arrays in the model's input order.
        batch_size: samples per ``invoke()``.
        num_threads: CPU threads.
        reference_kernels: use TFLite's reference kernels (see :func:`make_interpreter`).
        dequantize: if True and an output is quantized, return ``(q - zero_point) * scale``
            as float32; otherwise the output tensor's raw values.
        all_outputs: return a list with every output instead of the first.

    Returns:
        Array of shape ``(N, *output_shape[1:])`` (float32 if dequantized), or a list of them.

    Raises:
        ValueError: empty ``x``, a per-sample shape other than the model's, inputs of different
            lengths, or an integer ``x`` whose dtype is not the input's.
    """
    interpreter = make_interpreter(
        model_bytes_or_path, num_threads=num_threads, reference_kernels=reference_kernels
    )
    raws, out_details = _run_raw(interpreter, x, batch_size)
    results = [_dequantized(r, d) if dequantize else r for r, d in zip(raws, out_details)]
    return results if all_outputs else results[0]


def _sample_count(x: Any) -> int:
    """Samples in ``x``: an array, or a list of per-input arrays (the first one's length)."""
    first = x[0] if isinstance(x, (list, tuple)) and x and isinstance(x[0], np.ndarray) else x
    return len(first) if np.ndim(first) > 0 else 0


def _labels_from(y: Any) -> np.ndarray:
    """Integer labels from integer labels of shape (N,) / (N, 1) or one-hot of shape (N, C)."""
    y = np.asarray(y)
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
    y: Any,
    *,
    batch_size: int = 256,
    num_threads: int = 1,
    return_outputs: bool = False,
) -> float | tuple[float, np.ndarray]:
    """Top-1 accuracy of the model on ``(x, y)``.

    Args:
        model_bytes_or_path: serialized model or path of a ``.tflite`` file.
        x: inputs, shape ``(N, *input_shape[1:])`` (float, or codes of the input dtype); a list
            of arrays for a model with several inputs.
        y: labels of the first output, shape ``(N,)`` integers or ``(N, C)`` one-hot.
        batch_size: samples per ``invoke()``.
        num_threads: CPU threads.
        return_outputs: also return the (dequantized) outputs.

    Returns:
        Accuracy in [0, 1] (fraction of samples whose output argmax equals the label), and with
        ``return_outputs`` also the outputs, shape ``(N, *output_shape[1:])`` float32.

    Raises:
        ValueError: ``len(x) != len(y)``, or any error of :func:`run`.
    """
    labels = _labels_from(y)
    if _sample_count(x) != len(labels):
        raise ValueError(
            "x and y must hold the same number of samples. "
            f"Received: {_sample_count(x)} samples in x, y.shape={np.shape(y)}"
        )
    outputs = run(model_bytes_or_path, x, batch_size=batch_size, num_threads=num_threads)
    predictions = np.argmax(outputs.reshape(len(outputs), -1), axis=1)
    accuracy = float(np.mean(predictions == labels))
    if return_outputs:
        return accuracy, outputs
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

    Returns:
        :class:`LatencyStats`.

    Raises:
        ValueError: runs < 1, warmup < 0 or batch_size < 1.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1. Received: runs={runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0. Received: warmup={warmup}")
    batch_size = _check_batch_size(batch_size)
    interpreter = make_interpreter(model_bytes_or_path, num_threads=num_threads)
    _resize_inputs(interpreter, [[batch_size, *[int(d) for d in detail["shape"][1:]]] for detail in interpreter.get_input_details()])
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        shape = tuple(int(d) for d in detail["shape"])
        interpreter.set_tensor(detail["index"], _random_input(detail, shape, rng))
    for _ in range(int(warmup)):
        interpreter.invoke()
    times_ns = np.empty(int(runs), dtype=np.int64)
    for i in range(int(runs)):
        start = time.perf_counter_ns()
        interpreter.invoke()
        times_ns[i] = time.perf_counter_ns() - start
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
        x: inputs, shape ``(N, *input_shape[1:])``; a list of arrays for several inputs.
        batch_size: samples per Keras call and per ``invoke()``.

    Returns:
        :class:`ParityReport`.

    Raises:
        ValueError: the two models' outputs differ in number or shape, or any error of :func:`run`.
    """
    batch_size = _check_batch_size(batch_size)
    x = [np.asarray(xi) for xi in x] if isinstance(x, (list, tuple)) else np.asarray(x)
    interpreter = make_interpreter(model_bytes_or_path)
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
