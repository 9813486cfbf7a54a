"""Per-layer debugger: where a Keras model and its ``.tflite`` part ways.

``debug(keras_model, model_bytes, x)`` runs ``x`` through the quantized Keras model (in
inference, the deployment view: each layer computes what the file's kernel computes) and through
LiteRT with every intermediate tensor kept (``experimental_preserve_all_tensors=True``), then,
for each Keras layer whose output the file holds in a tensor, measures

* **cumulative** error: SQNR (dB) and max |error| between the Keras activation and the
  dequantized TFLite tensor, and the max difference in the tensor's LSBs;
* **local** error, the error the layer adds: the Keras layer applied to the *TFLite* values of
  its inputs, against the layer's TFLite tensor. A layer that computes what its kernel computes
  adds 0 LSB; a mis-scaled tensor, a wrong multiplier or an op the runtime rounds differently
  shows up here, at the layer where it enters, however the error grows afterwards.

The first layer whose local difference exceeds ``tolerance_lsb`` is where a difference first
appears (``DebugReport.first_divergence``).

The reference kernels (``BUILTIN_REF``) run the file by default, and the Keras model computes
with the reference arithmetic for the duration (``kerasq.using_target``): LiteRT cannot keep
the intermediate tensors of a delegated (XNNPACK) graph, so the optimized path is not what a
debugger can open.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

from tflite_export.flatbuffer import ModelSource
from tflite_export.runtime import _LITERT_ERRORS, LiteRTError, _one_line, _open_interpreter, _per_tensor_quantization, _run_batch_size, prepare_inputs

__all__ = ["DebugReport", "LayerError", "debug"]

_RESOLVERS = {"reference": OpResolverType.BUILTIN_REF, "optimized": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}


@dataclasses.dataclass
class LayerError:
    """One layer's figures (errors in real units of the layer output; LSB = the tensor's scale)."""

    layer: str
    tensor: str
    scale: float
    sqnr_db: float
    max_abs_error: float
    max_lsb: float
    bit_exact: float
    local_max_lsb: float | None
    local_bit_exact: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass
class DebugReport:
    """Per-layer figures in model order, and the first layer whose own difference is too large."""

    layers: list[LayerError]
    n_samples: int
    runtime: str
    tolerance_lsb: float
    first_divergence: str | None
    unmatched: list[str]

    def layer(self, name: str) -> LayerError:
        for entry in self.layers:
            if entry.layer == name:
                return entry
        raise KeyError(f"No layer {name!r} in the report; layers: {[e.layer for e in self.layers]}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_samples": self.n_samples,
            "runtime": self.runtime,
            "tolerance_lsb": self.tolerance_lsb,
            "first_divergence": self.first_divergence,
            "unmatched": list(self.unmatched),
            "layers": [e.to_dict() for e in self.layers],
        }

    def to_model_explorer(self, path: str | os.PathLike, metric: str = "sqnr_db") -> str:
        """Writes one metric per tensor as Model Explorer node data (JSON), for its overlay.

        The file maps each TFLite tensor name (the node output Model Explorer shows) to
        ``{"value": figure}``; load it in ``ai-edge-model-explorer`` with the ``.tflite`` as the
        graph's node data. ``metric``: any numeric field of :class:`LayerError`.
        Returns the path written.
        """
        fields = {f.name for f in dataclasses.fields(LayerError)} - {"layer", "tensor"}
        if metric not in fields:
            raise ValueError(f"metric must be one of {sorted(fields)}. Received: {metric!r}")
        results = {}
        for e in self.layers:
            value = getattr(e, metric)
            if value is not None and math.isfinite(value):
                results[e.tensor] = {"value": float(value)}
        # Model Explorer colours nodes along the gradient from the lowest figure (stop 0) to the highest.
        low_is_bad = metric in ("sqnr_db", "bit_exact", "local_bit_exact")
        colors = ("#d73027", "#1a9850") if low_is_bad else ("#1a9850", "#d73027")
        data = {"results": results, "gradient": [{"stop": 0, "bgColor": colors[0]}, {"stop": 1, "bgColor": colors[1]}]}
        path = os.fspath(path)
        from tflite_export.files import save  # one atomic write for every file the package writes

        save(json.dumps(data, indent=1).encode(), path)
        return path

    def __str__(self) -> str:
        header = (
            f"Per-layer debug on {self.n_samples} samples ({self.runtime} kernels). Cumulative: Keras vs file; "
            f"local: the layer on the file's inputs vs the file (tolerance {self.tolerance_lsb:g} LSB)."
        )
        rows = [
            "| layer | tensor | SQNR dB | max abs err | max LSB | bit-exact | local max LSB | local bit-exact |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for e in self.layers:
            local = "-" if e.local_max_lsb is None else f"{e.local_max_lsb:g}"
            local_exact = "-" if e.local_bit_exact is None else f"{100 * e.local_bit_exact:.1f}%"
            mark = " <- first difference" if e.layer == self.first_divergence else ""
            rows.append(
                f"| {e.layer}{mark} | {e.tensor} | {_db(e.sqnr_db)} | {e.max_abs_error:.4g} | {e.max_lsb:g} | "
                f"{100 * e.bit_exact:.1f}% | {local} | {local_exact} |"
            )
        verdict = (
            f"First difference: {self.first_divergence}" if self.first_divergence
            else "Every layer computes what its kernel computes (no local difference above tolerance)."
        )
        extra = [f"Layers with no tensor in the file: {', '.join(self.unmatched)}"] if self.unmatched else []
        return "\n".join([header, *rows, verdict, *extra])


def _db(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value:.1f}"


class _Accumulator:
    """Running error figures of one tensor over batches."""

    def __init__(self):
        self.signal = self.noise = 0.0
        self.max_abs = self.max_lsb = 0.0
        self.exact = self.count = 0

    def add(self, reference: np.ndarray, actual: np.ndarray, scale: float) -> None:
        reference = reference.astype(np.float64).reshape(-1)
        error = actual.astype(np.float64).reshape(-1) - reference
        self.signal += float(np.sum(reference**2))
        self.noise += float(np.sum(error**2))
        if error.size:
            self.max_abs = max(self.max_abs, float(np.abs(error).max()))
            lsb = np.abs(np.round(error / scale))
            self.max_lsb = max(self.max_lsb, float(lsb.max()))
            self.exact += int(np.sum(lsb == 0))
        self.count += error.size

    @property
    def sqnr_db(self) -> float:
        if self.noise == 0:
            return math.inf
        if self.signal == 0:
            return -math.inf
        return 10.0 * math.log10(self.signal / self.noise)

    @property
    def bit_exact(self) -> float:
        return self.exact / self.count if self.count else 1.0


def _tensor_indices(interpreter: Interpreter) -> dict[str, dict]:
    return {d["name"]: d for d in interpreter.get_tensor_details()}


def _dequantized(value: np.ndarray, detail: dict) -> np.ndarray:
    """Real values of a tensor in float64 (per-tensor codes dequantized; other tensors as they are)."""
    quant = _per_tensor_quantization(detail)
    if quant is None or not np.issubdtype(value.dtype, np.integer):
        return value.astype(np.float64)
    scale, zero_point = quant
    return (value.astype(np.float64) - zero_point) * scale


def _tensor_scale(detail: dict, fallback: float) -> float:
    quant = _per_tensor_quantization(detail)
    return quant[0] if quant is not None else fallback


def _first_divergence(layers: list[LayerError], inbound: dict[str, list[str]], tolerance_lsb: float) -> str | None:
    """The first layer, in model order, that adds a difference above the tolerance itself.

    With a local figure, the layer's own difference decides; without one (a layer that cannot
    run alone on the file's inputs, or the input quantization), a cumulative difference counts
    only when none of the layer's inputs already differed.
    """
    differs = {}
    for e in layers:
        if e.local_max_lsb is not None:
            own = e.local_max_lsb > tolerance_lsb
        else:
            own = e.max_lsb > tolerance_lsb and not any(differs.get(name, False) for name in inbound[e.layer])
        if own:
            return e.layer
        differs[e.layer] = e.max_lsb > tolerance_lsb
    return None


def debug(
    keras_model: Any,
    model_bytes_or_path: ModelSource,
    x: Any,
    *,
    batch_size: int = 64,
    tolerance_lsb: float = 0.0,
    runtime: str = "reference",
    max_bytes: int | None = None,
) -> DebugReport:
    """Per-layer SQNR and max error between a quantized Keras model and its ``.tflite`` file.

    Args:
        keras_model: the ``kerasq`` ``QuantizedModel`` the file was exported from, or the tfmot
            QAT model (then ``kerasq.from_tfmot(keras_model)``, the model its export goes through).
        model_bytes_or_path: the file (bytes or path), as written by ``tflite_export.convert``.
        x: float inputs ``(N, *input_shape)`` (a list for several inputs), as given to the Keras
            model; quantized onto the file's input grid for the interpreter.
        batch_size: samples per run (every intermediate tensor of a batch is kept in memory).
        tolerance_lsb: the local difference (in the layer tensor's LSBs) a layer may add before
            it counts as where the two part ways. 0 with the reference kernels, which the Keras
            model reproduces exactly; 1 for ``runtime="optimized"``.
        runtime: ``"reference"`` (LiteRT ``BUILTIN_REF``, the default) or ``"optimized"``
            (LiteRT's built-in optimized kernels without XNNPACK).
        max_bytes: the most memory (bytes) the file and its tensors at ``batch_size`` may take
            (every tensor is kept; None: ``tflite_export.flatbuffer.DEFAULT_MAX_BYTES``, 2 GiB).

    Returns:
        :class:`DebugReport`: one :class:`LayerError` per layer the file holds, in model order.

    Raises:
        ValueError: the model is not a kerasq quantized model, no layer matches a tensor of the
            file, or ``x`` does not fit the model.
    """
    import kerasq
    from kerasq.compat import keras, tf
    from kerasq.graph import LayerGraph
    from tflite_export.lower import layer_tensor_names

    if runtime not in _RESOLVERS:
        raise ValueError(f"runtime must be one of {sorted(_RESOLVERS)}. Received: runtime={runtime!r}")
    if kerasq.is_tfmot_model(keras_model):  # the integer model tflite_export.convert wrote it from
        keras_model = kerasq.from_tfmot(keras_model)
    if not isinstance(keras_model, kerasq.QuantizedModel):
        raise ValueError(
            "debug needs the kerasq QuantizedModel the file was exported from (its layers compute what the "
            f"file's kernels compute). Received: {type(keras_model).__name__}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1. Received: batch_size={batch_size!r}")
    interpreter = _open_interpreter(
        model_bytes_or_path,
        batch_size=_run_batch_size(x, int(batch_size)),
        max_bytes=max_bytes,
        resolver=_RESOLVERS[runtime],
        preserve_all_tensors=True,
    )
    details = _tensor_indices(interpreter)
    input_details = interpreter.get_input_details()
    codes = prepare_inputs(x, input_details)  # the file's input codes; Keras gets x itself
    xs = [np.asarray(v) for v in x] if isinstance(x, (list, tuple)) else [np.asarray(x)]
    n = len(codes[0])

    target = kerasq.Target("reference" if runtime == "reference" else keras_model.target.runtime, keras_model.target.pack_int4)
    with kerasq.using_target(keras_model, target):
        graph = LayerGraph.from_model(keras_model)
        names = layer_tensor_names(keras_model)
        matched = [node for node in graph.nodes if names.get(node.name) in details]
        unmatched = [node.name for node in graph.nodes if names.get(node.name) not in details]
        if not matched:
            raise ValueError(
                "No layer of the Keras model matches a tensor of the file; pass the QuantizedModel this file was "
                "exported from."
            )
        probe = keras.Model(keras_model.inputs, [keras_model.get_layer(node.name).output for node in matched])
        cumulative = {node.name: _Accumulator() for node in matched}
        local = {node.name: _Accumulator() for node in matched}
        local_skipped: set[str] = set()
        for start in range(0, n, batch_size):
            batch = [v[start : start + batch_size] for v in xs]
            try:
                for v, d in zip(codes, input_details):
                    interpreter.resize_tensor_input(d["index"], [len(v[start : start + batch_size]), *d["shape"][1:]], strict=False)
                interpreter.allocate_tensors()
                for v, d in zip(codes, input_details):
                    interpreter.set_tensor(d["index"], v[start : start + batch_size])
                interpreter.invoke()
            except _LITERT_ERRORS as error:
                raise LiteRTError(f"LiteRT cannot run the model: {_one_line(error)}") from None
            file_values = {
                node.name: _dequantized(interpreter.get_tensor(details[names[node.name]]["index"]), details[names[node.name]])
                for node in matched
            }
            keras_values = probe(batch if len(batch) > 1 else batch[0], training=False)
            keras_values = keras_values if isinstance(keras_values, (list, tuple)) else [keras_values]
            for node, keras_value in zip(matched, keras_values):
                detail = details[names[node.name]]
                scale = _tensor_scale(detail, fallback=1.0)
                cumulative[node.name].add(np.asarray(keras_value), file_values[node.name], scale)
                if node.name in local_skipped or not all(name in file_values for name in node.inbound):
                    local_skipped.add(node.name)
                    continue
                inputs = [tf.constant(file_values[name], tf.float32) for name in node.inbound]
                try:
                    recomputed = node.layer(inputs if len(inputs) > 1 else inputs[0], training=False)
                except (TypeError, ValueError, tf.errors.InvalidArgumentError):
                    local_skipped.add(node.name)  # a layer that cannot take its inputs alone
                    continue
                local[node.name].add(np.asarray(recomputed), file_values[node.name], scale)

    layers = []
    for node in matched:
        detail = details[names[node.name]]
        c, lo = cumulative[node.name], local[node.name]
        has_local = node.name not in local_skipped and lo.count > 0
        layers.append(
            LayerError(
                layer=node.name,
                tensor=names[node.name],
                scale=_tensor_scale(detail, fallback=float("nan")),
                sqnr_db=c.sqnr_db,
                max_abs_error=c.max_abs,
                max_lsb=c.max_lsb,
                bit_exact=c.bit_exact,
                local_max_lsb=lo.max_lsb if has_local else None,
                local_bit_exact=lo.bit_exact if has_local else None,
            )
        )
    first = _first_divergence(layers, {node.name: node.inbound for node in matched}, tolerance_lsb)
    return DebugReport(layers, n, runtime, float(tolerance_lsb), first, unmatched)
