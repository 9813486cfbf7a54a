"""Lower a quantized Keras model to the integer IR: one lowering per layer type of the table.

``lower(model)`` walks the ``QuantizedModel`` in order and emits ops into a ``tflite_export.ir.Graph``.
It reads the model and never writes it: every scale, zero point, weight code and bias code
comes from the layers' own quantizers (the same TensorFlow computations the forward pass
runs), so nothing is rounded twice and nothing is decided after an op is emitted.

- weights: the quantizer's integer codes and per-channel scales (``QuantizedLayer.weight_grid``);
  grids of at most 4 bits stored as INT4 when ``pack_int4``, others as INT8, with codes widened
  by a power of two ``k`` (codes·k, scale/k) to use the storage range — ``codes·scale`` stays
  bit-identical and the requantization multiplier shrinks by ``k``;
- biases: the int32 codes the layer adds (``QuantizedLayer.bias_grid``), times ``k``;
- activations: each quantizer's grid. A k-bit grid (k < 8) lives in ``2^k`` consecutive int8
  codes, clamped by MINIMUM/MAXIMUM and re-expressed for consumers on a finer grid by an exact
  QUANTIZE (``kerasq.ops.widened``); a binary activation is CAST → GREATER_EQUAL → SELECT_V2
  with the sign decision folded into the weight op's bias.

Layer types map to lowerings in ``LOWERINGS`` (by exact class, like ``kerasq.layer_table``);
adding a layer type to kerasq means one table entry there and one lowering here.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from kerasq.activations import ActivationSpec
from kerasq.arithmetic import ScalarArithmetic
from kerasq.compat import keras
from kerasq.graph import LayerGraph, Node
from kerasq.layer_table import rule_for
from kerasq.layers import OnInputGrid, QuantizedLayer, QuantizeInput, Requantize, STORAGE_LIMITS, storage_of, storage_widening
from kerasq.ops import AffineParams, widened
from kerasq.runtimes import Target, mul_delegated
from kerasq.transposed_conv import TransposedConv2D
from tflite_export.ir import Graph, Quantization

__all__ = ["ExportError", "LOWERINGS", "Lowering", "layer_tensor_names", "lower", "lowers"]

_FUSED = {"linear": "NONE", "relu": "RELU"}
_ACTIVATION_OPS = {
    "softmax": "SOFTMAX", "sigmoid": "LOGISTIC", "tanh": "TANH", "leaky_relu": "LEAKY_RELU", "elu": "ELU", "gelu": "GELU",
}
_ACTIVATION_OPTIONS = {"softmax": {"beta": 1.0}, "gelu": {"approximate": False}}


class ExportError(ValueError):
    """The model cannot be written as an integer-only flatbuffer; the message names the layer."""


Source = tuple[int, AffineParams]
LOWERINGS: dict[type, Callable] = {}


def lowers(*classes: type) -> Callable:
    """Register the decorated function as the lowering of Keras layer ``classes`` (exact classes)."""

    def register(function: Callable) -> Callable:
        for cls in classes:
            LOWERINGS[cls] = function
        return function

    return register


def _shape(layer) -> list[int]:
    return [int(d) for d in layer.output_shape[1:]]


class Lowering:
    """The state of one lowering: the IR under construction and what each layer produced."""

    def __init__(self, model: keras.Model, input_type: str, output_type: str, pack_int4: bool):
        self.model = model
        self.graph = LayerGraph.from_model(model)
        self.input_type, self.output_type = input_type, output_type
        self.target = Target(getattr(model, "target", Target()).runtime, bool(pack_int4))
        self.ir = Graph(description="kerasq integer-only export")
        # What consumers of a layer read (a k-bit output: its widened copy) and what a model output is.
        self.produced: dict[str, Source] = {}
        self.model_outputs: dict[str, Source] = {}
        self.model_inputs: dict[str, int] = {}

    def run(self) -> Graph:
        for node in self.graph.nodes:
            layer = node.layer
            if isinstance(layer, Requantize):
                self._requantize(node)
            elif isinstance(layer, QuantizeInput):
                self._quantize_input(node)
            elif isinstance(layer, QuantizedLayer):
                self._quantized(node)
            elif isinstance(layer, OnInputGrid):
                LOWERINGS[type(layer.layer)](self, node)
            elif type(layer) in LOWERINGS:
                LOWERINGS[type(layer)](self, node)
            else:
                raise ExportError(
                    f"Layer {layer.name!r} ({type(layer).__name__}) is not quantized and has no integer TFLite "
                    "kernel in kerasq's exporter; quantize it (remove its `None` entry in layer_schemes) or "
                    "replace it with a supported layer."
                )
        self.ir.outputs = [self._model_output(name) for name in self.graph.outputs]
        self.ir.inputs = [self.model_inputs[name] for name in self.graph.inputs]
        return self.ir

    def layer_tensors(self) -> dict[str, str]:
        """``{layer name: IR tensor name}``: the tensor holding each layer's output as Keras computes it.

        A k-bit output is its clamped tensor, not the widened copy consumers read; a layer that
        passes its input on (Dropout, an unrounded same-grid op) names its input's tensor.
        """
        held = {**self.produced, **self.model_outputs}
        return {name: self.ir.tensors[index].name for name, (index, _) in held.items()}

    # --- helpers -------------------------------------------------------------------------------
    def source(self, name: str, consumer) -> Source:
        if name not in self.produced:
            raise ExportError(
                f"Layer {consumer.name!r} reads {name!r}, which is not quantized (a float model input or a "
                "layer kept in float); integer-only export needs a quantized input."
            )
        return self.produced[name]

    def same_grid(self, node: Node, op: str | None, extra_inputs: list[int] = (), **options) -> None:
        """Emit ``op`` with an output on its input's grid (or pass the input on when ``op`` is None)."""
        index, params = self.source(node.inbound[0], node.layer)
        if op is None:
            self.produced[node.name] = (index, params)
            return
        out = self.ir.activation(node.name, _shape(node.layer), params)
        self.ir.add_operator(op, [index, *extra_inputs], [out], **options)
        self.produced[node.name] = (out, params)

    def finish(self, name: str, index: int, params: AffineParams, shape: list[int]) -> None:
        """Record a layer output: clamp a k-bit grid to its codes, then widen it for consumers.

        A k-bit grid (k < 8) uses ``2^k`` int8 codes. MINIMUM/MAXIMUM with a constant code clamp
        the op's output to them, so the tensor holds exactly the values the Keras model computes
        (a model output is that tensor). A QUANTIZE op then re-expresses the grid exactly for
        consumers at ``kerasq.ops.widened``'s finer scale: its multiplier is an integer.
        """
        for op, code, bound, suffix in (("MINIMUM", params.code_max, 127, "max"), ("MAXIMUM", params.code_min, -128, "min")):
            if code == bound:
                continue
            constant = self.ir.constant(
                f"{name}/code_{suffix}", np.array(code, np.int8), "int8", Quantization([params.scale], [params.zero_point])
            )
            clamped = self.ir.activation(f"{name}/clamped" + ("" if suffix == "max" else "_min"), shape, params)
            self.ir.add_operator(op, [index, constant], [clamped])
            index = clamped
        self.model_outputs[name] = (index, params)
        fine = widened(params)
        if fine == params:
            self.produced[name] = (index, params)
            return
        wide = self.ir.activation(f"{name}/widened", shape, fine)
        self.ir.add_operator("QUANTIZE", [index], [wide])
        self.produced[name] = (wide, fine)

    # --- kerasq layers -------------------------------------------------------------------------
    def _quantize_input(self, node: Node) -> None:
        layer = node.layer
        input_name = node.inbound[0]
        if input_name not in self.graph.inputs:
            raise ExportError(
                f"Layer {input_name!r} feeding {layer.name!r} is kept in float (layer_schemes maps it to None); "
                "integer-only export needs every layer quantized."
            )
        params = layer.activation_params()
        shape = [int(d) for d in self.graph.inputs[input_name]]
        if self.input_type == "int8":
            index = self.ir.activation(input_name, shape, params)
            self.model_inputs[input_name] = index
        else:
            raw = self.ir.plain(input_name, shape, "float32")
            self.model_inputs[input_name] = raw
            index = self.ir.activation(f"{input_name}/quantized", shape, params)
            self.ir.add_operator("QUANTIZE", [raw], [index])
        self.finish(layer.name, index, params, shape)

    def _requantize(self, node: Node) -> None:
        index, _ = self.source(node.inbound[0], node.layer)
        params = node.layer.activation_params()
        shape = _shape(node.layer)
        out = self.ir.activation(node.name, shape, params)
        self.ir.add_operator("QUANTIZE", [index], [out])
        self.finish(node.name, out, params, shape)

    def _quantized(self, node: Node) -> None:
        wrapper: QuantizedLayer = node.layer
        spec: ActivationSpec = wrapper.activation
        shape = _shape(wrapper)
        sources = [self.source(name, wrapper) for name in node.inbound]
        sign = wrapper.activation_quantizer if getattr(wrapper.activation_quantizer, "binary", False) else None
        if getattr(wrapper.pre_activation_quantizer, "binary", False) or (sign is not None and not spec.fusable):
            raise ExportError(
                f"Layer {wrapper.name!r} binarizes the input of its {spec.kind} activation; a binary activation "
                "exports only as the layer output (linear or ReLU activation)."
            )
        if spec.fusable:
            op_params = sign.input_params(wrapper.activation_quantizer_variables) if sign else wrapper.activation_params()
            fused = _FUSED[spec.kind]
        else:
            op_params = wrapper.pre_activation_params()
            fused = "NONE"
        lowering = LOWERINGS.get(type(wrapper.layer))
        if lowering is None:
            raise ExportError(f"Layer {wrapper.name!r} ({type(wrapper.layer).__name__}) has no integer TFLite export rule.")
        out = lowering(self, wrapper, sources, shape, op_params, fused, sign)
        if sign is not None:
            threshold = 0 if wrapper.weight_quantizers else sign.threshold_code(wrapper.activation_quantizer_variables)
            result = _sign_activation(self.ir, wrapper, out, shape, threshold)
            self.produced[wrapper.name] = self.model_outputs[wrapper.name] = (result, wrapper.activation_params())
            return
        if spec.kind == "swish":  # LOGISTIC onto its fixed grid, then MUL by the op output
            gate_params = spec.gate_quantizer().affine_params({})
            gate = self.ir.activation(f"{wrapper.name}/sigmoid", shape, gate_params)
            self.ir.add_operator("LOGISTIC", [out], [gate])
            act_params = wrapper.activation_params()
            out = _binary(
                self, wrapper, "MUL", [out, gate], [op_params, gate_params], shape, act_params, "NONE", f"{wrapper.name}/swish"
            )
            op_params = act_params
        elif not spec.fusable:
            act_params = wrapper.activation_params()
            act_out = self.ir.activation(f"{wrapper.name}/{spec.kind}", shape, act_params)
            options = {"alpha": spec.alpha} if spec.alpha is not None else _ACTIVATION_OPTIONS.get(spec.kind, {})
            self.ir.add_operator(_ACTIVATION_OPS[spec.kind], [out], [act_out], **options)
            out, op_params = act_out, act_params
        self.finish(wrapper.name, out, op_params, shape)

    def _model_output(self, name: str) -> int:
        index, params = self.model_outputs.get(name) or self.produced[name]
        if self.output_type == "int8":
            return index
        shape = [int(d) for d in self.ir.tensors[index].shape[1:]]
        raw = self.ir.plain(f"{name}/dequantized", shape, "float32")
        self.ir.add_operator("DEQUANTIZE", [index], [raw])
        return raw


def lower(model: keras.Model, *, input_type: str = "int8", output_type: str = "int8", pack_int4: bool = True) -> Graph:
    """The integer IR of a quantized model (see the module docstring)."""
    return Lowering(model, input_type, output_type, pack_int4).run()


def layer_tensor_names(model: keras.Model) -> dict[str, str]:
    """``{Keras layer name: name of the tensor holding its output}`` in ``convert(model)``'s file."""
    lowering = Lowering(model, "int8", "int8", True)
    lowering.run()
    return lowering.layer_tensors()


# --- weight ops -------------------------------------------------------------------------------
@lowers(keras.layers.Conv2D, keras.layers.Conv1D, keras.layers.DepthwiseConv2D, keras.layers.Dense, TransposedConv2D)
def _weight_op(ctx: Lowering, wrapper: QuantizedLayer, sources, shape, out_params, fused, sign) -> int:
    """CONV_2D / DEPTHWISE_CONV_2D / FULLY_CONNECTED / TRANSPOSE_CONV with per-channel weight scales, int32 bias.

    A Conv1D runs as CONV_2D on ``[batch, 1, steps, channels]``: RESHAPE in, (PAD for causal
    padding,) CONV_2D, RESHAPE out, all on the grids the layer uses.
    """
    inner = wrapper.layer
    x_index, x_params = sources[0]
    conv1d = isinstance(inner, keras.layers.Conv1D)
    if conv1d:
        x_index = _reshaped(ctx, f"{wrapper.name}/as_image", x_index, x_params, [1, *ctx.ir.tensors[x_index].shape[1:]])
        if inner.padding == "causal":
            steps = inner.dilation_rate[0] * (inner.kernel_size[0] - 1)
            paddings = ctx.ir.constant(f"{wrapper.name}/causal_paddings", np.array([[0, 0], [0, 0], [steps, 0], [0, 0]], np.int32), "int32")
            padded_shape = list(ctx.ir.tensors[x_index].shape[1:])
            padded_shape[1] += steps
            padded = ctx.ir.activation(f"{wrapper.name}/causal_padded", padded_shape, x_params)
            ctx.ir.add_operator("PAD", [x_index, paddings], [padded])
            x_index = padded
        final_shape, shape = shape, [1, *shape]
    grid = wrapper.weight_grid()
    # Equal up to float32 rounding: a channel scale f makes the forward pass compute
    # (codes·s)·f while the file stores codes·(s·f), at most a few ulp apart.
    if not np.allclose(grid.dequantize(), wrapper.quantized_kernel(), rtol=2.0**-20, atol=0.0):
        raise ExportError(
            f"Layer {wrapper.name!r}: {type(wrapper.weight_quantizer).__name__}.integer_grid does not reproduce "
            "the kernel the forward pass uses; the quantizer breaks kerasq's export contract."
        )
    op = rule_for(inner).op
    storage = storage_of(grid.bits, ctx.target, op)
    limit = STORAGE_LIMITS[storage]
    peak = int(np.abs(grid.codes).max()) if grid.codes.size else 0
    if peak > limit:
        raise ExportError(
            f"Layer {wrapper.name!r}: weight codes reach {peak}, beyond the symmetric {limit} that "
            f"{storage.upper()} storage with zero point 0 holds. Asymmetric 8-bit weights cannot be stored "
            "exactly by TFLite; use symmetric weights."
        )
    k = storage_widening(peak, storage)
    codes = grid.codes * k
    if op == "DEPTHWISE_CONV_2D":  # Keras [h, w, in, m] -> TFLite [1, h, w, in*m], channel axis 3
        h, w, cin, mult = codes.shape
        tfl_codes, axis, channels = codes.reshape(1, h, w, cin * mult), 3, cin * mult
    elif conv1d:  # [k, in, out] -> [out, 1, k, in]
        tfl_codes, axis, channels = np.transpose(codes, (2, 0, 1))[:, None], 0, codes.shape[-1]
    elif op in ("CONV_2D", "TRANSPOSE_CONV"):  # [h, w, in, out] -> [out, h, w, in]
        tfl_codes, axis, channels = np.transpose(codes, (3, 0, 1, 2)), 0, codes.shape[-1]
    else:  # Dense [in, out] -> [out, in]
        tfl_codes, axis, channels = codes.T, 0, codes.shape[-1]
    unwidened = np.broadcast_to(grid.scale.reshape(-1), (channels,)).astype(np.float32)
    scales = (unwidened / np.float32(k)).astype(np.float32)
    per_tensor = bool(np.all(scales == scales[0]))
    stored = scales[:1] if per_tensor else scales
    w_index = ctx.ir.constant(
        f"{wrapper.name}/kernel", tfl_codes, storage, Quantization(stored, np.zeros(stored.size), axis)
    )
    bias_scales = (np.float32(x_params.scale) * scales).astype(np.float32)
    _check_xnnpack_scale(ctx, wrapper, op, storage, x_params, scales, out_params, sign, int(tfl_codes.shape[-1]))
    if sign is not None:
        bias_codes = _sign_decision_bias(wrapper, sign, bias_scales)
        out_params = AffineParams(float(bias_scales.min()), 0, -128, 127)
        fused = "NONE"
    else:
        bias_codes = wrapper.bias_codes() * k
    b_index = ctx.ir.constant(
        f"{wrapper.name}/bias",
        np.clip(bias_codes, -(2**31), 2**31 - 1).astype(np.int32),
        "int32",
        Quantization(bias_scales[:1] if per_tensor else bias_scales, np.zeros(1 if per_tensor else channels)),
    )
    out = ctx.ir.activation(wrapper.name, shape, out_params)
    if op == "FULLY_CONNECTED":  # on a rank > 2 input (Dense over the last axis) the other axes stay
        ctx.ir.add_operator(
            op, [x_index, w_index, b_index], [out], fused_activation_function=fused, keep_num_dims=len(shape) > 1
        )
        return out
    strides, dilations = inner.strides, getattr(inner, "dilation_rate", (1, 1))
    if conv1d:
        strides, dilations = (1, *strides), (1, *dilations)
    options = dict(
        padding="VALID" if inner.padding == "causal" else inner.padding.upper(),
        stride_h=int(strides[0]),
        stride_w=int(strides[1]),
        dilation_h_factor=int(dilations[0]),
        dilation_w_factor=int(dilations[1]),
        fused_activation_function=fused,
    )
    if op == "DEPTHWISE_CONV_2D":
        options["depth_multiplier"] = int(inner.depth_multiplier)
    if op == "TRANSPOSE_CONV":
        del options["dilation_h_factor"], options["dilation_w_factor"]
        ctx.ir.add_operator(op, [_batch_sized_shape(ctx, wrapper.name, x_index, shape), w_index, x_index, b_index], [out], **options)
        return out
    ctx.ir.add_operator(op, [x_index, w_index, b_index], [out], **options)
    if conv1d:
        ctx.ir.tensors[out].name = f"{wrapper.name}/conv_2d"
        return _reshaped(ctx, wrapper.name, out, out_params, final_shape)
    return out


def _batch_sized_shape(ctx: Lowering, name: str, x_index: int, shape: list[int]) -> int:
    """An int32 ``[batch, *shape]`` tensor with the batch of tensor ``x_index`` (TRANSPOSE_CONV's output shape).

    SHAPE → STRIDED_SLICE (the batch) → CONCATENATION with the constant ``shape``: a constant
    output shape would fix the batch at 1, which LiteRT's kernel then refuses for larger batches.
    """
    def vector(suffix: str, length: int) -> int:
        index = ctx.ir.plain(f"{name}/{suffix}", [], "int32")
        ctx.ir.tensors[index].shape, ctx.ir.tensors[index].dynamic_batch = (length,), False
        return index

    rank = len(ctx.ir.tensors[x_index].shape)
    input_shape, batch, output_shape = vector("input_shape", rank), vector("batch", 1), vector("output_shape", 1 + len(shape))
    ctx.ir.add_operator("SHAPE", [x_index], [input_shape], out_type=2)  # INT32
    begin, end, strides = (ctx.ir.constant(f"{name}/batch_{n}", np.array([v], np.int32), "int32") for n, v in (("begin", 0), ("end", 1), ("stride", 1)))
    ctx.ir.add_operator("STRIDED_SLICE", [input_shape, begin, end, strides], [batch])
    sizes = ctx.ir.constant(f"{name}/output_size", np.array(shape, np.int32), "int32")
    ctx.ir.add_operator("CONCATENATION", [batch, sizes], [output_shape], axis=0, fused_activation_function="NONE")
    return output_shape


def _reshaped(ctx: Lowering, name: str, index: int, params: AffineParams, shape: list[int]) -> int:
    """RESHAPE of tensor ``index`` (its grid kept) to ``[batch, *shape]``; returns the new tensor."""
    new_shape = ctx.ir.constant(f"{name}/shape", np.array([-1, *shape], np.int32), "int32")
    out = ctx.ir.activation(name, shape, params)
    ctx.ir.add_operator("RESHAPE", [index, new_shape], [out], new_shape=[-1, *shape])
    return out


def _check_xnnpack_scale(ctx, wrapper, op, storage, x_params, scales, out_params, sign, input_depth) -> None:
    """LiteRT's default interpreter fails to prepare an XNNPACK node whose requantization scale is >= 256."""
    delegated = op != "TRANSPOSE_CONV" and (storage == "int8" or (op == "FULLY_CONNECTED" and input_depth % 2 == 0))
    if sign is not None or not delegated:
        return
    requant = (np.float32(x_params.scale) * scales).astype(np.float32) / np.float32(out_params.scale)
    if np.any(requant >= 256.0):
        raise ExportError(
            f"Layer {wrapper.name!r}: its output grid (scale {out_params.scale:.3g}) is over 256 times finer than "
            f"s_in·s_w (up to {float(requant.max() * out_params.scale):.3g}); LiteRT's XNNPACK kernels refuse such "
            "a model. The output range is nearly empty: train or calibrate the model so it is observed."
        )


def _sign_decision_bias(wrapper: QuantizedLayer, sign, bias_scales: np.ndarray) -> np.ndarray:
    """The int32 bias that makes the op's output ``>= 0`` exactly where Keras' sign is ``+1``.

    Keras: ``+1`` iff ``x̂ = FakeQuant(act(y)) >= 0`` (``> 0`` after a ReLU), i.e. iff ``y >= θ``
    with ``θ = (t - zp - 1/2)·S`` on ``x̂``'s grid (always, if ``θ`` is below the clamped range).
    With ``y = s_b·Σ + b`` (``Σ`` the integer accumulator, ``s_b = s_in·s_w[c]`` as stored) that is
    ``Σ >= A_c = ceil((θ - b_c)/s_b[c])``: the bias ``-A_c`` puts the decision at accumulator 0,
    and the op's output (no fused activation, scale ``min s_b`` so every multiplier is ``>= 1``,
    zero point 0) is ``>= 0`` exactly when ``Σ >= A_c``.
    """
    variables = wrapper.activation_quantizer_variables
    pre = sign.input_params(variables)
    theta = (sign.threshold_code(variables) - pre.zero_point - 0.5) * pre.scale
    lowest = (pre.code_min - pre.zero_point) * pre.scale
    channels = bias_scales.size
    bias = wrapper.quantized_bias()
    bias = np.zeros(channels) if bias is None else bias.astype(np.float64)
    if theta < lowest:  # the clamped x̂ is never negative: always +1
        threshold = np.full(channels, -(2**30), np.int64)
    else:
        threshold = np.ceil((theta - bias) / bias_scales.astype(np.float64)).astype(np.int64)
    return -threshold


def _sign_activation(ir: Graph, wrapper: QuantizedLayer, x_index: int, shape: list[int], threshold: int) -> int:
    """Binary activation ``β·sign(x̂)`` as integer ops; returns the int8 output tensor.

    ``CAST`` (int8 codes to int32, values unchanged) → ``GREATER_EQUAL(codes, t)`` → bool →
    ``SELECT_V2(cond, +1, -1)`` into int8 with scale ``β``, zero point 0. The comparison runs on
    raw int32 codes: LiteRT's int8 GREATER_EQUAL rescales its inputs (``(q - zp)·2^8·S`` in
    fixed point), which merges neighbouring codes when ``S < 1/512``.
    """
    params = wrapper.activation_params()
    codes = ir.plain(f"{wrapper.name}/codes", shape, "int32")
    ir.add_operator("CAST", [x_index], [codes], in_data_type="int8", out_data_type="int32")
    t_index = ir.constant(f"{wrapper.name}/threshold", np.array(threshold, np.int32), "int32")
    positive = ir.plain(f"{wrapper.name}/positive", shape, "bool")
    ir.add_operator("GREATER_EQUAL", [codes, t_index], [positive])
    plus, minus = (
        ir.constant(f"{wrapper.name}/{name}", np.array(code, np.int8), "int8", Quantization([params.scale], [0]))
        for name, code in (("plus_one", 1), ("minus_one", -1))
    )
    out = ir.activation(f"{wrapper.name}/sign", shape, params)
    ir.add_operator("SELECT_V2", [positive, plus, minus], [out])
    return out


# --- ops with an own output grid ---------------------------------------------------------------
@lowers(keras.layers.Add, keras.layers.Subtract, keras.layers.Multiply)
def _elementwise(ctx: Lowering, wrapper, sources, shape, out_params, fused, sign) -> int:
    """ADD / SUB / MUL of two layer outputs, the op the layer table gives."""
    op = rule_for(wrapper.layer).op
    return _binary(ctx, wrapper, op, [s[0] for s in sources], [s[1] for s in sources], shape, out_params, fused)


@lowers(keras.layers.PReLU)
def _prelu(ctx: Lowering, wrapper, sources, shape, out_params, fused, sign) -> int:
    """PRELU with the slopes as one int8 tensor (their quantizer's codes, one scale, zero point 0)."""
    if fused != "NONE":
        raise ExportError(f"Layer {wrapper.name!r}: PRELU has no fused activation; an activation after a PReLU is not exported.")
    grid = wrapper.weight_grid()
    scale = np.asarray(grid.scale, np.float32).reshape(-1)[:1]
    alpha = ctx.ir.constant(f"{wrapper.name}/alpha", grid.codes.astype(np.int8), "int8", Quantization(scale, [0]))
    out = ctx.ir.activation(wrapper.name, shape, out_params)
    ctx.ir.add_operator("PRELU", [sources[0][0], alpha], [out])
    return out


@lowers(ScalarArithmetic)
def _scalar_arithmetic(ctx: Lowering, wrapper, sources, shape, out_params, fused, sign) -> int:
    """``x + c`` / ``x · c``: ADD / MUL with the constant as a 0-d int8 tensor (``ScalarArithmetic.constant_params``)."""
    layer: ScalarArithmetic = wrapper.layer
    params = layer.constant_params()
    constant = ctx.ir.constant(
        f"{wrapper.name}/constant", np.array(layer.constant_code(), np.int8), "int8", Quantization([params.scale], [0])
    )
    op = "ADD" if layer.op == "add" else "MUL"
    return _binary(ctx, wrapper, op, [sources[0][0], constant], [sources[0][1], params], shape, out_params, fused)


def _binary(ctx: Lowering, wrapper, op: str, inputs: list[int], grids: list, shape, out_params, fused, name=None) -> int:
    """An ADD or MUL of two int8 tensors (broadcasting) onto ``out_params`` with a fused activation.

    ``name``: the output tensor's name (the layer's by default).
    """
    if op == "MUL" and ctx.target.runtime == "xnnpack" and not mul_delegated(grids[0].scale, grids[1].scale, out_params.scale):
        ratio = grids[0].scale * grids[1].scale / out_params.scale
        if ratio >= 2.0**8:
            raise ExportError(
                f"Layer {wrapper.name!r}: MUL rescales its product by {ratio:.3g} (>= 256), which XNNPACK refuses and "
                "LiteRT's fallback kernel overflows on; the output range is nearly empty: train or calibrate the model."
            )
    out = ctx.ir.activation(name or wrapper.name, shape, out_params)
    ctx.ir.add_operator(op, inputs, [out], fused_activation_function=fused)
    return out


@lowers(keras.layers.GlobalAveragePooling2D, keras.layers.GlobalAveragePooling1D)
def _mean(ctx: Lowering, wrapper, sources, shape, out_params, fused, sign) -> int:
    if fused != "NONE":
        raise ExportError(f"Layer {wrapper.name!r}: MEAN has no fused activation; a ReLU after a global average pool is not exported.")
    spatial = [1, 2] if isinstance(wrapper.layer, keras.layers.GlobalAveragePooling2D) else [1]
    axes = ctx.ir.constant(f"{wrapper.name}/axes", np.array(spatial, np.int32), "int32")
    out = ctx.ir.activation(wrapper.name, shape, out_params)
    ctx.ir.add_operator("MEAN", [sources[0][0], axes], [out], keep_dims=bool(wrapper.layer.keepdims))
    return out


# --- ops on their input's grid -----------------------------------------------------------------
def _unwrapped(node: Node) -> keras.layers.Layer:
    """The Keras layer of a node, inside its ``OnInputGrid`` wrapper if it has one."""
    return node.layer.layer if isinstance(node.layer, OnInputGrid) else node.layer


@lowers(keras.layers.Dropout)
def _identity(ctx: Lowering, node: Node) -> None:
    ctx.same_grid(node, None)


@lowers(keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
def _pool(ctx: Lowering, node: Node) -> None:
    layer = _unwrapped(node)
    ctx.same_grid(
        node, rule_for(layer).op, padding=layer.padding.upper(), stride_h=int(layer.strides[0]), stride_w=int(layer.strides[1]),
        filter_height=int(layer.pool_size[0]), filter_width=int(layer.pool_size[1]), fused_activation_function="NONE",
    )


@lowers(keras.layers.Flatten, keras.layers.Reshape)
def _reshape(ctx: Lowering, node: Node) -> None:
    index, params = ctx.source(node.inbound[0], node.layer)
    ctx.produced[node.name] = (_reshaped(ctx, node.name, index, params, _shape(node.layer)), params)


@lowers(keras.layers.ZeroPadding2D)
def _zero_padding(ctx: Lowering, node: Node) -> None:
    (top, bottom), (left, right) = node.layer.padding
    paddings = np.array([[0, 0], [top, bottom], [left, right], [0, 0]], np.int32)
    ctx.same_grid(node, "PAD", [ctx.ir.constant(f"{node.name}/paddings", paddings, "int32")])


@lowers(keras.layers.Cropping2D)
def _cropping(ctx: Lowering, node: Node) -> None:
    (top, _), (left, _) = node.layer.cropping
    height, width, _ = _shape(node.layer)
    begin = ctx.ir.constant(f"{node.name}/begin", np.array([0, top, left, 0], np.int32), "int32")
    size = ctx.ir.constant(f"{node.name}/size", np.array([-1, height, width, -1], np.int32), "int32")
    ctx.same_grid(node, "SLICE", [begin, size])


@lowers(keras.layers.UpSampling2D)
def _upsampling(ctx: Lowering, node: Node) -> None:
    layer = _unwrapped(node)
    height, width, _ = _shape(node.layer)
    size = ctx.ir.constant(f"{node.name}/size", np.array([height, width], np.int32), "int32")
    if layer.interpolation == "bilinear":  # tf.image.resize: half-pixel centres
        ctx.same_grid(node, "RESIZE_BILINEAR", [size], align_corners=False, half_pixel_centers=True)
    else:
        ctx.same_grid(node, "RESIZE_NEAREST_NEIGHBOR", [size], align_corners=False, half_pixel_centers=False)


@lowers(keras.layers.ReLU)
def _relu(ctx: Lowering, node: Node) -> None:
    """An uncapped ReLU that quantize_model could not fuse: RELU with its input's quantization (``max(q, z)``)."""
    ctx.same_grid(node, "RELU")


@lowers(keras.layers.Permute)
def _permute(ctx: Lowering, node: Node) -> None:
    permutation = np.array([0, *node.layer.dims], np.int32)
    ctx.same_grid(node, "TRANSPOSE", [ctx.ir.constant(f"{node.name}/permutation", permutation, "int32")])


@lowers(keras.layers.Concatenate, keras.layers.Maximum, keras.layers.Minimum)
def _shared_grid(ctx: Lowering, node: Node) -> None:
    """CONCATENATION / MAXIMUM / MINIMUM: ops that copy or compare codes, so one grid throughout."""
    sources = [ctx.source(name, node.layer) for name in node.inbound]
    params = sources[0][1]
    op = rule_for(node.layer).op
    if any(p != params for _, p in sources):
        raise ExportError(
            f"{type(node.layer).__name__} {node.name!r}: its inputs are on different grids {[p for _, p in sources]}; "
            f"TFLite's {op} needs one grid (quantize_model shares it; was the model built by it?)."
        )
    shape = _shape(node.layer)
    out = ctx.ir.activation(node.name, shape, params)
    options = {}
    if op == "CONCATENATION":
        options = dict(axis=int(node.layer.axis % (len(shape) + 1)), fused_activation_function="NONE")
    ctx.ir.add_operator(op, [s[0] for s in sources], [out], **options)
    ctx.produced[node.name] = (out, params)
