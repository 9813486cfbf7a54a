"""Write an integer-only TFLite flatbuffer straight from a kerasq-quantized model.

The writer does not run TensorFlow's converter: it walks the quantized Keras graph and emits
one builtin int8 op per layer, taking every scale and zero point from the quantizers the model
trained with, so nothing is rounded twice:

- weights: the quantizer's own integer codes and per-channel scales (``WeightGrid``); grids of
  at most 4 bits are packed as INT4 (``pack_int4=True``), others stored as INT8. Codes are
  widened by a power of two ``k`` (codes·k, scale/k) to use the storage range, which keeps
  ``codes·scale`` bit-identical and shrinks the requantization multiplier and bias step by k.
- biases: int32 with scale ``s_in·s_w[c]`` per output channel (TFLite's requirement); the Keras
  model's bias is snapped onto that grid so both add the same value.
- activations: the nudged FakeQuant grid of each activation quantizer. A k-bit grid (k < 8)
  lives in ``2^k`` consecutive int8 codes, clamped by MINIMUM and re-expressed for consumers on
  a finer int8 grid by an exact QUANTIZE; binary activations are CAST → GREATER_EQUAL →
  SELECT_V2 with the sign decision folded into the bias.

Supported layers: Conv2D, DepthwiseConv2D, Dense (2-D input), MaxPooling2D,
GlobalAveragePooling2D, Add (two inputs), Concatenate, Flatten, Reshape, Dropout (identity),
and softmax/sigmoid/tanh activations. Anything else raises ``ValueError`` naming the layer.
"""

from __future__ import annotations

import math

from typing import Any, Iterable

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from kerasq import calibrate, quantize_model
from kerasq.binary import SignActivationQuantizer
from kerasq.compat import keras
from kerasq.graph import LayerGraph
from kerasq.layers import QuantizedLayer, QuantizeInput
from kerasq.ops import AffineParams
from kerasq.schemes.base import WEIGHT_LAYERS
from tflite_export.flatbuffer import pack_int4, serialize
from tflite_export.inspect import inspect

_OP = schema.BuiltinOperator
# Operator versions as TensorFlow's converter writes them for int8 kernels.
_VERSIONS = {
    _OP.CONV_2D: 3,
    _OP.DEPTHWISE_CONV_2D: 3,
    _OP.FULLY_CONNECTED: 4,
    _OP.MAX_POOL_2D: 2,
    _OP.MEAN: 2,
    _OP.ADD: 2,
    _OP.CONCATENATION: 2,
    _OP.RESHAPE: 1,
    _OP.SOFTMAX: 2,
    _OP.LOGISTIC: 2,
    _OP.TANH: 2,
    _OP.MINIMUM: 2,
    _OP.MAXIMUM: 2,
    _OP.QUANTIZE: 2,
    _OP.DEQUANTIZE: 2,
}
_PADDING = {"same": schema.Padding.SAME, "valid": schema.Padding.VALID}
_FUSED = {"linear": schema.ActivationFunctionType.NONE, "relu": schema.ActivationFunctionType.RELU}
_ACTIVATION_OPS = {"softmax": _OP.SOFTMAX, "sigmoid": _OP.LOGISTIC, "tanh": _OP.TANH}
_IO_TYPES = {"int8": schema.TensorType.INT8, "float32": schema.TensorType.FLOAT32}


class ExportError(ValueError):
    """The model cannot be written as an integer-only flatbuffer; the message names the layer."""


class _Writer:
    """Accumulates tensors, buffers and operators of one subgraph."""

    def __init__(self, pack_int4: bool = True):
        self.pack_int4 = pack_int4
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [schema.BufferT()]  # buffer 0 is the empty sentinel
        self.operators: list[Any] = []
        self.opcodes: dict[int, int] = {}
        self.opcode_list: list[Any] = []

    def tensor(
        self,
        name: str,
        shape: Iterable[int],
        dtype: int,
        *,
        scale: Iterable[float] | None = None,
        zero_point: Iterable[int] | None = None,
        axis: int = 0,
        data: bytes | np.ndarray | None = None,
        dynamic_batch: bool = False,
    ) -> int:
        t = schema.TensorT()
        shape = [int(d) for d in shape]
        t.shape = np.array(shape, np.int32)
        if dynamic_batch:
            t.shapeSignature = np.array([-1] + shape[1:], np.int32)
        t.type = dtype
        t.name = name
        t.buffer = 0
        if scale is not None:
            q = schema.QuantizationParametersT()
            q.scale = np.asarray(list(scale), np.float32)
            q.zeroPoint = np.asarray(list(zero_point), np.int64)
            q.quantizedDimension = axis
            t.quantization = q
        if data is not None:
            buffer = schema.BufferT()
            buffer.data = np.frombuffer(bytes(np.ascontiguousarray(data).tobytes()), np.uint8)
            self.buffers.append(buffer)
            t.buffer = len(self.buffers) - 1
        self.tensors.append(t)
        return len(self.tensors) - 1

    def activation(self, name: str, shape, params: AffineParams) -> int:
        return self.tensor(
            name, [1, *shape], schema.TensorType.INT8, scale=[params.scale], zero_point=[params.zero_point], dynamic_batch=True
        )

    def constant_int32(self, name: str, values) -> int:
        values = np.asarray(values, np.int32)
        return self.tensor(name, values.shape, schema.TensorType.INT32, data=values)

    def op(self, code: int, inputs: list[int], outputs: list[int], options_type: int = 0, options: Any = None) -> None:
        if code not in self.opcodes:
            oc = schema.OperatorCodeT()
            oc.builtinCode = code
            oc.deprecatedBuiltinCode = min(code, 127)
            oc.version = _VERSIONS.get(code, 1)
            self.opcodes[code] = len(self.opcode_list)
            self.opcode_list.append(oc)
        o = schema.OperatorT()
        o.opcodeIndex = self.opcodes[code]
        o.inputs = np.asarray(inputs, np.int32)
        o.outputs = np.asarray(outputs, np.int32)
        o.builtinOptionsType = options_type
        o.builtinOptions = options
        self.operators.append(o)

    def finish(self, inputs: list[int], outputs: list[int], description: str) -> bytes:
        subgraph = schema.SubGraphT()
        subgraph.tensors = self.tensors
        subgraph.inputs = np.asarray(inputs, np.int32)
        subgraph.outputs = np.asarray(outputs, np.int32)
        subgraph.operators = self.operators
        subgraph.name = "main"
        model = schema.ModelT()
        model.version = 3
        model.operatorCodes = self.opcode_list
        model.subgraphs = [subgraph]
        model.buffers = self.buffers
        model.description = description
        return serialize(model)


def _storage(codes: np.ndarray, bits: int, layer_name: str, pack_int4: bool) -> tuple[np.ndarray, int, int]:
    """Widen codes by a power of two and pick INT4 (≤ 4-bit grids, if ``pack_int4``) or INT8 storage.

    Returns (widened codes, TensorType, k). Multiplying codes and dividing scales by a power of
    two is exact in float32, so the stored grid equals the trained one bit for bit. Wider codes
    also shrink the requantization multiplier ``s_in·s_w/s_out`` by ``k``, which is what keeps
    TFLite's double rounding close to the float model's single rounding.
    """
    packed = pack_int4 and bits <= 4
    dtype, limit = (schema.TensorType.INT4, 7) if packed else (schema.TensorType.INT8, 127)
    peak = int(np.abs(codes).max()) if codes.size else 0
    if peak > limit:
        raise ExportError(
            f"Layer {layer_name!r}: weight codes reach {peak}, beyond the symmetric {limit} that "
            f"{'INT4' if limit == 7 else 'INT8'} storage with zero point 0 holds. Asymmetric 8-bit weights "
            "cannot be stored exactly by TFLite; use symmetric weights."
        )
    k = 1
    while peak and peak * k * 2 <= limit:
        k *= 2
    return codes * k, dtype, k


def requantization_shift(real_multiplier: float) -> int:
    """The right shift TFLite's ``QuantizeMultiplier`` gives ``real_multiplier``: ``M = M0·2^-shift``.

    ``M0`` is a Q31 significand in ``[2^30, 2^31)``; a multiplier ≥ 0.5 gives shift 0 (a left
    shift instead, and a single rounding).
    """
    if real_multiplier <= 0:
        return 0
    significand, exponent = math.frexp(real_multiplier)
    if round(significand * (1 << 31)) == 1 << 31:
        exponent += 1
    return max(-exponent, 0)


def double_rounding_offset(input_scale: float, weight_scales: np.ndarray, output_scale: float) -> np.ndarray:
    """Per-channel shift, in real units, of TFLite's two-step requantization over one rounding.

    TFLite's built-in kernels compute ``RoundingDivideByPOT(SaturatingRoundingDoublingHighMul(
    acc, M0), k)``: first rounding to ``2^-k`` output steps, then to whole steps. For
    ``v = acc·M ≥ 0`` that is ``floor(v + 1/2 + 2^-(k+1))`` (mirrored for ``v < 0``), one
    rounding of ``v + 2^-(k+1)``. Returns ``output_scale·2^-(k+1)`` per channel (0 where
    ``k == 0``), float32 ``[channels]``; ``M = input_scale·weight_scales[c]/output_scale``.
    """
    offsets = []
    for weight_scale in np.asarray(weight_scales, np.float64).reshape(-1):
        multiplier = float(np.float32(input_scale)) * float(np.float32(weight_scale)) / float(np.float32(output_scale))
        shift = requantization_shift(multiplier)
        offsets.append(0.0 if shift == 0 else output_scale * 2.0 ** -(shift + 1))
    return np.asarray(offsets, np.float32)


def _channel_scales(grid_scale: np.ndarray, channels: int) -> np.ndarray:
    return np.broadcast_to(grid_scale.reshape(-1), (channels,)) if grid_scale.size == 1 else grid_scale.reshape(-1)


class _GraphExporter:
    """Emits ops for the nodes of a quantized ``LayerGraph``."""

    def __init__(self, model: keras.Model, input_type: str, output_type: str, pack_int4: bool):
        self.graph = LayerGraph.from_model(model)
        self.input_type, self.output_type = input_type, output_type
        self.w = _Writer(pack_int4)
        self.produced: dict[str, tuple[int, AffineParams]] = {}
        self.inputs: list[int] = []

    def run(self) -> bytes:
        for node in self.graph.nodes:
            layer = node.layer
            if isinstance(layer, QuantizeInput):
                self._model_input(node.inbound[0], layer)
            elif isinstance(layer, QuantizedLayer):
                self._quantized(layer, node.inbound)
            elif isinstance(layer, keras.layers.Dropout):
                self.produced[layer.name] = self._source(node.inbound[0], layer)
            elif isinstance(layer, keras.layers.MaxPooling2D):
                self._max_pool(layer, node.inbound[0])
            elif isinstance(layer, (keras.layers.Flatten, keras.layers.Reshape)):
                self._reshape(layer, node.inbound[0])
            else:
                raise ExportError(
                    f"Layer {layer.name!r} ({type(layer).__name__}) is not quantized and has no integer TFLite "
                    "kernel in kerasq's exporter; quantize it (remove its `None` entry in layer_schemes) or "
                    "replace it with a supported layer."
                )
        outputs = [self._model_output(name) for name in self.graph.outputs]
        return self.w.finish(self.inputs, outputs, "kerasq integer-only export")

    # --- helpers ---------------------------------------------------------------------------
    def _source(self, name: str, consumer) -> tuple[int, AffineParams]:
        if name not in self.produced:
            raise ExportError(
                f"Layer {consumer.name!r} reads {name!r}, which is not quantized (a float model input or a "
                "layer kept in float); integer-only export needs a quantized input."
            )
        return self.produced[name]

    @staticmethod
    def _shape(layer) -> list[int]:
        shape = layer.output_shape
        return [int(d) for d in shape[1:]]

    def _output(self, layer, index: int, params: AffineParams, shape: list[int]) -> tuple[int, AffineParams]:
        """Finish a layer output: clamp a sub-8-bit grid to its codes, then widen it for consumers.

        A k-bit grid (k < 8) uses ``2^k`` int8 codes. MINIMUM/MAXIMUM with a constant code clamp
        the op's output to them, so the tensor holds exactly the values the Keras model
        computes. A QUANTIZE op then re-expresses the grid exactly at scale ``S/m`` with codes
        spaced ``m = floor(255/(2^k-1))`` apart (17 for 4 bits): consumers then requantize with an
        ``m`` times smaller multiplier and bias step, so TFLite's fixed-point rounding resolves
        near-ties as the float model does. Returns the tensor index and grid consumers read.
        """
        for op, code, bound, suffix in (
            (_OP.MINIMUM, params.code_max, 127, "max"),
            (_OP.MAXIMUM, params.code_min, -128, "min"),
        ):
            if code == bound:
                continue
            constant = self.w.tensor(
                f"{layer.name}/code_{suffix}", [], schema.TensorType.INT8, scale=[params.scale],
                zero_point=[params.zero_point], data=np.array(code, np.int8),
            )
            clamped = self.w.activation(f"{layer.name}/clamped" + ("" if suffix == "max" else "_min"), shape, params)
            self.w.op(op, [index, constant], [clamped])
            index = clamped
        m = 255 // (params.code_max - params.code_min)
        if m < 2 or layer.name in self.graph.outputs:
            return index, params
        levels = params.code_max - params.code_min
        fine = AffineParams(params.scale / m, -128 + (params.zero_point - params.code_min) * m, -128, -128 + levels * m)
        widened = self.w.activation(f"{layer.name}/widened", shape, fine)
        self.w.op(_OP.QUANTIZE, [index], [widened])
        return widened, fine

    # --- nodes -----------------------------------------------------------------------------
    def _model_input(self, input_name: str, layer: QuantizeInput) -> None:
        params = layer.activation_params()
        shape = [int(d) for d in self.graph.inputs[input_name]]
        if self.input_type == "int8":
            index = self.w.activation(input_name, shape, params)
            self.inputs.append(index)
        else:
            raw = self.w.tensor(input_name, [1, *shape], schema.TensorType.FLOAT32, dynamic_batch=True)
            self.inputs.append(raw)
            index = self.w.activation(f"{input_name}/quantized", shape, params)
            self.w.op(_OP.QUANTIZE, [raw], [index])
        self.produced[layer.name] = (index, params)

    def _model_output(self, name: str) -> int:
        index, params = self.produced[name]
        if self.output_type == "int8":
            return index
        shape = [int(d) for d in self.w.tensors[index].shape[1:]]
        out = self.w.tensor(f"{name}/dequantized", [1, *shape], schema.TensorType.FLOAT32, dynamic_batch=True)
        self.w.op(_OP.DEQUANTIZE, [index], [out])
        return out

    def _quantized(self, wrapper: QuantizedLayer, inbound: list[str]) -> None:
        inner = wrapper.layer
        sources = [self._source(n, wrapper) for n in inbound]
        shape = self._shape(wrapper)
        spec = wrapper.activation
        if spec.fusable:
            out_params = wrapper.activation_params()
            fused = _FUSED[spec.kind]
        else:
            out_params = wrapper.pre_activation_params()
            fused = schema.ActivationFunctionType.NONE
        sign_input = _sign_input_params(wrapper)  # binary activations: the op writes the x̂ the sign reads
        out = self.w.activation(wrapper.name, shape, sign_input or out_params)

        weight_scales = None
        if isinstance(inner, WEIGHT_LAYERS):
            # Binary activations read the op's output through a sign, not a rounding: no offset.
            weight_scales = self._weight_op(wrapper, sources[0], out, fused, None if sign_input else out_params)
        elif isinstance(inner, keras.layers.GlobalAveragePooling2D):
            axes = self.w.constant_int32(f"{wrapper.name}/axes", [1, 2])
            options = schema.ReducerOptionsT()
            options.keepDims = bool(inner.keepdims)
            self.w.op(_OP.MEAN, [sources[0][0], axes], [out], schema.BuiltinOptions.ReducerOptions, options)
        elif isinstance(inner, keras.layers.Add):
            if len(sources) != 2:
                raise ExportError(f"Add layer {wrapper.name!r} has {len(sources)} inputs; the exporter handles two.")
            options = schema.AddOptionsT()
            options.fusedActivationFunction = fused
            self.w.op(_OP.ADD, [s[0] for s in sources], [out], schema.BuiltinOptions.AddOptions, options)
        elif isinstance(inner, keras.layers.Concatenate):
            options = schema.ConcatenationOptionsT()
            options.axis = inner.axis % (len(shape) + 1)
            options.fusedActivationFunction = fused
            self.w.op(_OP.CONCATENATION, [s[0] for s in sources], [out], schema.BuiltinOptions.ConcatenationOptions, options)
        else:
            raise ExportError(f"Layer {wrapper.name!r} ({type(inner).__name__}) has no integer TFLite export rule.")

        if sign_input is not None:
            sign = _sign_activation(self.w, wrapper, out, shape, sources[0][1], weight_scales)
            self.produced[wrapper.name] = (sign, out_params)
            return
        if not spec.fusable:
            act_params = wrapper.activation_params()
            act_out = self.w.activation(f"{wrapper.name}/{spec.kind}", shape, act_params)
            if spec.kind == "softmax":
                options = schema.SoftmaxOptionsT()
                options.beta = 1.0
                self.w.op(_OP.SOFTMAX, [out], [act_out], schema.BuiltinOptions.SoftmaxOptions, options)
            else:
                self.w.op(_ACTIVATION_OPS[spec.kind], [out], [act_out])
            out, out_params = act_out, act_params
        self.produced[wrapper.name] = self._output(wrapper, out, out_params, shape)

    def _weight_op(
        self,
        wrapper: QuantizedLayer,
        source: tuple[int, AffineParams],
        out: int,
        fused: int,
        out_params: AffineParams | None,
    ) -> np.ndarray:
        """Write the CONV_2D/DEPTHWISE_CONV_2D/FULLY_CONNECTED op; returns the stored per-channel weight scales.

        For INT4 weights (run by TFLite's built-in kernels, which requantize with two roundings)
        it also sets the Keras layer's ``rounding_offset`` to the shift those roundings make, so
        the Keras model rounds where the integer model does; for INT8 weights the offset is 0
        (LiteRT's default XNNPACK kernels requantize with one rounding).
        """
        inner = wrapper.layer
        x_index, x_params = source
        grid = wrapper.weight_grid()
        # Equal up to float32 rounding: a channel scale f makes the forward pass compute
        # (codes·s)·f while the file stores codes·(s·f), at most a few ulp apart.
        if not np.allclose(grid.dequantize(), wrapper.quantized_kernel(), rtol=2.0**-20, atol=0.0):
            raise ExportError(
                f"Layer {wrapper.name!r}: {type(wrapper.weight_quantizer).__name__}.integer_grid does not reproduce "
                "the kernel the forward pass uses; the quantizer breaks kerasq's export contract."
            )
        codes, dtype, k = _storage(grid.codes, grid.bits, wrapper.name, self.w.pack_int4)
        scale = grid.scale.astype(np.float32) / np.float32(k)
        depthwise = isinstance(inner, keras.layers.DepthwiseConv2D)
        if depthwise:  # Keras [h, w, in, m] -> TFLite [1, h, w, in*m], channel axis 3
            h, w_, cin, mult = codes.shape
            tfl_codes, axis, channels = codes.reshape(1, h, w_, cin * mult), 3, cin * mult
        elif isinstance(inner, keras.layers.Conv2D):  # [h, w, in, out] -> [out, h, w, in]
            if inner.groups != 1:
                raise ExportError(f"Conv2D {wrapper.name!r} uses groups={inner.groups}; grouped convolution is not exported.")
            tfl_codes, axis, channels = np.transpose(codes, (3, 0, 1, 2)), 0, codes.shape[-1]
        else:  # Dense [in, out] -> [out, in]
            if len(wrapper.input_shape) != 2:
                raise ExportError(f"Dense {wrapper.name!r} has a rank-{len(wrapper.input_shape)} input; export needs rank 2.")
            tfl_codes, axis, channels = codes.T, 0, codes.shape[-1]
        scales = _channel_scales(scale, channels)
        per_tensor = bool(np.all(scales == scales[0]))
        weight_scales = scales[:1] if per_tensor else scales
        data = pack_int4(tfl_codes.reshape(-1)) if dtype == schema.TensorType.INT4 else tfl_codes.astype(np.int8)
        w_index = self.w.tensor(
            f"{wrapper.name}/kernel", tfl_codes.shape, dtype, scale=weight_scales,
            zero_point=[0] * len(weight_scales), axis=axis, data=data,
        )
        offsets = np.zeros(channels, np.float32)
        if dtype == schema.TensorType.INT4 and out_params is not None:
            offsets = double_rounding_offset(float(x_params.scale), scales, float(out_params.scale))
        if not np.array_equal(wrapper.rounding_offset.numpy(), offsets):
            wrapper.rounding_offset.assign(offsets)
        bias = inner.bias.numpy() if inner.use_bias else np.zeros(channels, np.float32)
        bias_scales = (np.float32(x_params.scale) * scales).astype(np.float32)
        bias_codes = np.clip(np.round(bias.astype(np.float64) / bias_scales.astype(np.float64)), -(2**31), 2**31 - 1)
        if inner.use_bias:
            # The Keras model takes the bias the integer model stores (a shift of at most half a
            # step s_in·s_w[c]), so both compute the same function from here on.
            snapped = (bias_codes * bias_scales.astype(np.float64)).astype(np.float32)
            if not np.array_equal(snapped, bias):
                inner.bias.assign(snapped)
        b_index = self.w.tensor(
            f"{wrapper.name}/bias", [channels], schema.TensorType.INT32,
            scale=bias_scales[:1] if per_tensor else bias_scales, zero_point=[0] * (1 if per_tensor else channels),
            data=bias_codes.astype(np.int32),
        )
        padding = _PADDING.get(getattr(inner, "padding", "valid"))
        if depthwise:
            options = schema.DepthwiseConv2DOptionsT()
            options.padding, options.depthMultiplier = padding, inner.depth_multiplier
            options.strideH, options.strideW = inner.strides
            options.dilationHFactor, options.dilationWFactor = inner.dilation_rate
            options.fusedActivationFunction = fused
            self.w.op(_OP.DEPTHWISE_CONV_2D, [x_index, w_index, b_index], [out], schema.BuiltinOptions.DepthwiseConv2DOptions, options)
        elif isinstance(inner, keras.layers.Conv2D):
            options = schema.Conv2DOptionsT()
            options.padding = padding
            options.strideH, options.strideW = inner.strides
            options.dilationHFactor, options.dilationWFactor = inner.dilation_rate
            options.fusedActivationFunction = fused
            self.w.op(_OP.CONV_2D, [x_index, w_index, b_index], [out], schema.BuiltinOptions.Conv2DOptions, options)
        else:
            options = schema.FullyConnectedOptionsT()
            options.fusedActivationFunction = fused
            self.w.op(_OP.FULLY_CONNECTED, [x_index, w_index, b_index], [out], schema.BuiltinOptions.FullyConnectedOptions, options)
        return scales

    def _max_pool(self, layer, inbound: str) -> None:
        index, params = self._source(inbound, layer)
        out = self.w.activation(layer.name, self._shape(layer), params)
        options = schema.Pool2DOptionsT()
        options.padding = _PADDING[layer.padding]
        options.strideH, options.strideW = layer.strides
        options.filterHeight, options.filterWidth = layer.pool_size
        self.w.op(_OP.MAX_POOL_2D, [index], [out], schema.BuiltinOptions.Pool2DOptions, options)
        self.produced[layer.name] = (out, params)

    def _reshape(self, layer, inbound: str) -> None:
        index, params = self._source(inbound, layer)
        shape = self._shape(layer)
        new_shape = self.w.constant_int32(f"{layer.name}/shape", [-1, *shape])
        out = self.w.activation(layer.name, shape, params)
        options = schema.ReshapeOptionsT()
        options.newShape = [-1, *shape]
        self.w.op(_OP.RESHAPE, [index, new_shape], [out], schema.BuiltinOptions.ReshapeOptions, options)
        self.produced[layer.name] = (out, params)


def _sign_input_params(wrapper: QuantizedLayer) -> AffineParams | None:
    """The int8 grid of ``x̂`` when the output is binarized by ``SignActivationQuantizer``, else None."""
    if isinstance(wrapper.pre_activation_quantizer, SignActivationQuantizer):
        raise ExportError(
            f"Layer {wrapper.name!r} binarizes the input of its {wrapper.activation.kind} activation; a binary "
            "activation exports only as the layer output (linear or ReLU activation)."
        )
    if not isinstance(wrapper.activation_quantizer, SignActivationQuantizer):
        return None
    return wrapper.activation_quantizer.input_params(wrapper.activation_quantizer_variables)


def _sign_activation(
    w: _Writer,
    wrapper: QuantizedLayer,
    x_index: int,
    shape: list[int],
    x_params: AffineParams,
    weight_scales: np.ndarray | None,
) -> int:
    """Binary activation ``β·sign(x̂)`` as integer ops; returns the int8 output tensor.

    ``CAST`` (int8 codes to int32, values unchanged) → ``GREATER_EQUAL(codes, t)`` → bool →
    ``SELECT_V2(cond, +1, -1)`` into int8 with scale ``β``, zero point 0. The comparison runs on
    raw int32 codes: LiteRT's int8 GREATER_EQUAL rescales its inputs (``(q - zp)·2^8·S`` in
    fixed point), which merges neighbouring codes when ``S < 1/512``.

    For Conv2D/DepthwiseConv2D/Dense the op's own output is turned into an exact decision
    (``_sign_decision``); for other layers (mean, add) ``t`` is the zero point of ``x̂``'s
    int8 grid, plus one after a ReLU.
    """
    quantizer, variables = wrapper.activation_quantizer, wrapper.activation_quantizer_variables
    params = quantizer.affine_params(variables)
    if weight_scales is not None:
        threshold = _sign_decision(w, wrapper, x_params, weight_scales)
    else:
        threshold = quantizer.threshold_code(variables)
    codes = w.tensor(f"{wrapper.name}/codes", [1, *shape], schema.TensorType.INT32, dynamic_batch=True)
    options = schema.CastOptionsT()
    options.inDataType, options.outDataType = schema.TensorType.INT8, schema.TensorType.INT32
    w.op(_OP.CAST, [x_index], [codes], schema.BuiltinOptions.CastOptions, options)
    t_index = w.constant_int32(f"{wrapper.name}/threshold", threshold)
    positive = w.tensor(f"{wrapper.name}/positive", [1, *shape], schema.TensorType.BOOL, dynamic_batch=True)
    w.op(_OP.GREATER_EQUAL, [codes, t_index], [positive])
    plus, minus = (
        w.tensor(f"{wrapper.name}/{name}", [], schema.TensorType.INT8, scale=[params.scale], zero_point=[0], data=code)
        for name, code in (("plus_one", np.array(1, np.int8)), ("minus_one", np.array(-1, np.int8)))
    )
    out = w.activation(f"{wrapper.name}/sign", shape, params)
    w.op(_OP.SELECT_V2, [positive, plus, minus], [out])
    return out


def _sign_decision(w: _Writer, wrapper: QuantizedLayer, x_params: AffineParams, weight_scales: np.ndarray) -> int:
    """Rewrite the weight op just written: its int8 output is ``>= 0`` exactly where Keras' sign is ``+1``.

    Keras: ``+1`` iff ``x̂ = FakeQuant(act(y)) >= 0`` (``> 0`` after a ReLU), i.e. iff
    ``y >= θ`` with ``θ = (t - zp - 1/2)·S`` on ``x̂``'s grid (always, if ``θ`` is below the
    clamped range). With ``y = s_b·Σ + b`` (``Σ`` the integer accumulator, ``s_b = s_in·s_w[c]``)
    that is ``Σ >= A_c = ceil((θ - b_c)/s_b[c])``. Writing the int32 bias as ``-A_c`` puts the
    decision at accumulator 0, independent of how the float bias would round to ``s_b``; the
    output (no fused activation, scale ``min s_b`` so every multiplier is ``>= 1``, zero point
    0) is then ``>= 0`` exactly when ``Σ >= A_c``. ``weight_scales`` are the per-channel scales
    the op's weights were stored with. Returns the threshold code, 0.
    """
    quantizer, variables = wrapper.activation_quantizer, wrapper.activation_quantizer_variables
    pre = quantizer.input_params(variables)
    theta = (quantizer.threshold_code(variables) - pre.zero_point - 0.5) * pre.scale
    lowest = (pre.code_min - pre.zero_point) * pre.scale
    op = w.operators[-1]
    bias_tensor, out_tensor = w.tensors[int(op.inputs[2])], w.tensors[int(op.outputs[0])]
    channels = int(bias_tensor.shape[0])
    bias_scales = np.float64(np.float32(x_params.scale)) * weight_scales.astype(np.float64)  # exact s_in·s_w
    bias = wrapper.layer.bias.numpy().astype(np.float64) if wrapper.layer.use_bias else np.zeros(channels)
    if theta < lowest:  # the clamped x̂ is never negative: always +1
        accumulator_threshold = np.full(channels, -(2**30), np.int64)
    else:
        accumulator_threshold = np.ceil((theta - bias) / bias_scales).astype(np.int64)
    codes = np.clip(-accumulator_threshold, -(2**31), 2**31 - 1).astype(np.int32)
    w.buffers[bias_tensor.buffer].data = np.frombuffer(codes.tobytes(), np.uint8)
    out_tensor.quantization.scale = np.array([bias_scales.min()], np.float32)
    out_tensor.quantization.zeroPoint = np.array([0], np.int64)
    op.builtinOptions.fusedActivationFunction = schema.ActivationFunctionType.NONE
    return 0


def _is_quantized(model: keras.Model) -> bool:
    return any(isinstance(layer, QuantizeInput) for layer in model.layers)


def _as_array(representative_data) -> np.ndarray:
    """Representative data as one float32 array: an array, or an iterable/callable of batches."""
    if callable(representative_data):
        representative_data = representative_data()
    if isinstance(representative_data, np.ndarray):
        data = representative_data
    else:
        batches = []
        for batch in representative_data:
            if isinstance(batch, (list, tuple)):
                if len(batch) != 1:
                    raise ValueError(f"Representative batches must hold one input. Received: {len(batch)} inputs")
                batch = batch[0]
            batches.append(np.asarray(batch, np.float32))
        if not batches:
            raise ValueError("representative_data is empty: PTQ needs at least one calibration sample.")
        data = np.concatenate(batches)
    data = np.asarray(data, np.float32)
    if data.ndim == 0 or len(data) == 0:
        raise ValueError(f"representative_data is empty: PTQ needs at least one calibration sample. Received: shape={data.shape}")
    return data


def convert(
    model: keras.Model,
    representative_data=None,
    *,
    input_type: str = "int8",
    output_type: str = "int8",
    pack_int4: bool = True,
) -> bytes:
    """An integer-only TFLite flatbuffer of a kerasq-quantized model, or of a float model via PTQ.

    Args:
      model: a model from ``kerasq.quantize_model`` (after ``fit``), or a plain float tf_keras
        model, which is then quantized with the ``"int8"`` scheme and calibrated on
        ``representative_data`` (post-training quantization, EMA of batch min/max).
      representative_data: float samples shaped like the model input: an array ``[N, ...]``, an
        iterable of batches (or of one-element lists, as TFLite's ``representative_dataset``
        yields), or a callable returning either. Required for a float model; for a quantized
        model it calibrates the activation ranges before export (e.g. a model that was never fit).
      input_type, output_type: ``"int8"`` (fully integer I/O) or ``"float32"`` (adds a QUANTIZE
        op at the input / DEQUANTIZE at the output; everything between stays integer).
      pack_int4: store weight grids of at most 4 bits as packed INT4 (half the bytes); with
        ``False`` as INT8 codes widened by up to 64x.
    Returns: the flatbuffer bytes. Conv2D, DepthwiseConv2D and FullyConnected weights carry one
      scale per output channel when the scheme is per-channel (or has a batch-norm channel scale).

    Exporting also updates ``model`` so that it computes what the file computes: each bias is
    snapped onto TFLite's int32 grid ``s_in·s_w[c]`` (at most half a step), and each INT4 layer's
    ``rounding_offset`` is set to the shift of TFLite's two-step requantization (zero for INT8
    layers; see ``double_rounding_offset``). The Keras model follows the last file exported.
    Raises:
      ExportError (a ValueError) naming the layer that cannot be exported, or the ops that touch
      float tensors if the result is not integer-only; ValueError for empty or NaN data.
    """
    for arg, value in (("input_type", input_type), ("output_type", output_type)):
        if value not in _IO_TYPES:
            raise ValueError(f"{arg} must be one of {sorted(_IO_TYPES)}. Received: {arg}={value!r}")
    if not _is_quantized(model):
        if representative_data is None:
            raise ValueError(
                f"Model {model.name!r} is a float model: pass representative_data for post-training "
                "quantization, or quantize it with kerasq.quantize_model and fit it first."
            )
        model = quantize_model(model, "int8")
    if representative_data is not None:
        calibrate(model, _as_array(representative_data))
    flatbuffer = _GraphExporter(model, input_type, output_type, pack_int4).run()
    report = inspect(flatbuffer)
    boundary = {"QUANTIZE"} if input_type == "float32" else set()
    boundary |= {"DEQUANTIZE"} if output_type == "float32" else set()
    float_ops = [op for op in report.float_ops if op.split(":", 1)[1] not in boundary]
    if float_ops:
        raise ExportError(f"The exported model is not integer-only; ops touching float tensors: {float_ops}")
    return flatbuffer
