"""A numpy integer-only interpreter of TFLite flatbuffers, bit-exact with LiteRT's reference kernels.

It reads the flatbuffer itself (``tflite_export.flatbuffer.load``: the schema's object API),
keeps every tensor's stored values as numpy arrays and runs the operators in file order with
the kernels registered in ``tflite_export.reference.kernels`` — TFLite's fixed-point
arithmetic (``fixed_point``), not float approximations of it. It is the arithmetic a user can
read, step through and compare against: ``tflite_export.verify`` runs it beside LiteRT and
TFLite Micro.

    ref = Interpreter(model_bytes)
    (codes,) = ref.run([x_codes])          # int8 in, int8 out: the file's dtypes
    every = ref.run_all([x_codes])         # {tensor index: value} of every tensor
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from ai_edge_litert import schema_py_generated as schema

from tflite_export.flatbuffer import (
    TENSOR_TYPE_NAMES,
    ModelSource,
    check_memory,
    load,
    op_name,
    tensor_array,
    tensor_name,
)
from tflite_export.reference import kernels as _kernels
from tflite_export.reference.kernels import KERNELS, Op, TensorSpec, UnsupportedOperatorError

__all__ = ["Interpreter"]

_HELD_AS = {"int4": np.int8, "uint4": np.uint8, "bool": np.bool_, "int8": np.int8, "uint8": np.uint8,
            "int16": np.int16, "int32": np.int32, "int64": np.int64, "float32": np.float32,
            "float16": np.float16}


def _tensor_spec(model: schema.ModelT, buf: bytes, index: int, tensor: schema.TensorT) -> TensorSpec:
    type_name = TENSOR_TYPE_NAMES.get(tensor.type, str(tensor.type))
    name = tensor_name(tensor)
    if type_name not in _HELD_AS:
        raise UnsupportedOperatorError(f"Tensor {index} ({name!r}) has type {type_name}, which the reference does not hold.")
    shape = tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))
    signature = tuple(int(d) for d in tensor.shapeSignature) if tensor.shapeSignature is not None and len(tensor.shapeSignature) else shape
    q = tensor.quantization
    scale = np.asarray(q.scale if q is not None and q.scale is not None else [], np.float32).reshape(-1)
    zero_point = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else [], np.int64).reshape(-1)
    if zero_point.size == 0 and scale.size:
        zero_point = np.zeros(scale.size, np.int64)
    axis = int(q.quantizedDimension) if q is not None else 0
    data = tensor_array(model, tensor, buf=buf)
    return TensorSpec(index, name, type_name, np.dtype(_HELD_AS[type_name]), shape, signature, scale, zero_point, axis, data)


class Interpreter:
    """Runs a TFLite model's first subgraph in numpy integer arithmetic.

    Args:
        model: the serialized model (bytes-like) or the path of a ``.tflite`` file.
        max_bytes: the most memory (bytes) the file, and its tensors at the batch size of each
            run, may take (None: ``tflite_export.flatbuffer.DEFAULT_MAX_BYTES``, 2 GiB).

    Raises:
        InvalidModelError: the input is not a valid TFLite flatbuffer
            (``tflite_export.flatbuffer.check_model``).
        UnsupportedOperatorError: an operator has no reference kernel here (named with its
            index), or a tensor type the reference does not hold.
    """

    def __init__(self, model: ModelSource, *, max_bytes: int | None = None):
        self._model, buf = load(model, max_bytes=max_bytes)
        self._max_bytes = max_bytes
        graph = self._model.subgraphs[0]
        tensors = graph.tensors or []
        self.tensors: list[TensorSpec] = [_tensor_spec(self._model, buf, i, t) for i, t in enumerate(tensors)]
        self.input_indices: list[int] = [int(i) for i in (graph.inputs if graph.inputs is not None else [])]
        self.output_indices: list[int] = [int(i) for i in (graph.outputs if graph.outputs is not None else [])]
        self._ops: list[tuple[int, str, Any, list[int], list[int]]] = []
        missing = []
        for index, operator in enumerate(graph.operators or []):
            name = op_name(self._model, operator)
            if name not in KERNELS:
                missing.append(f"{index}:{name}")
            ins = [int(i) for i in (operator.inputs if operator.inputs is not None else [])]
            outs = [int(i) for i in (operator.outputs if operator.outputs is not None else [])]
            self._ops.append((index, name, operator.builtinOptions, ins, outs))
        if missing:
            raise UnsupportedOperatorError(
                f"The reference interpreter has no kernel for operator(s) {', '.join(missing)}; "
                f"it computes {', '.join(sorted(KERNELS))}."
            )

    @property
    def input_details(self) -> list[TensorSpec]:
        return [self.tensors[i] for i in self.input_indices]

    @property
    def output_details(self) -> list[TensorSpec]:
        return [self.tensors[i] for i in self.output_indices]

    def _check_inputs(self, inputs: Any) -> list[np.ndarray]:
        if isinstance(inputs, np.ndarray) or not isinstance(inputs, Sequence):
            inputs = [inputs]
        if len(inputs) != len(self.input_indices):
            raise ValueError(f"The model takes {len(self.input_indices)} input(s). Received: {len(inputs)}")
        arrays = []
        for value, spec in zip(inputs, self.input_details):
            array = np.asarray(value)
            if array.dtype != spec.dtype:
                raise ValueError(
                    f"Input {spec.name!r} holds {spec.type_name} values (the file's storage type). "
                    f"Received: {array.dtype}; quantize float inputs first (tflite_export.runtime.quantize_input)."
                )
            expected = spec.shape_signature
            fits = len(array.shape) == len(expected) and all(e < 0 or e == a for e, a in zip(expected, array.shape))
            # A fixed batch of 1 in the file still runs any batch: LiteRT resizes it the same way.
            fits = fits or (len(array.shape) == len(expected) and all(e == a for e, a in zip(expected[1:], array.shape[1:])))
            if not fits:
                raise ValueError(f"Input {spec.name!r} has shape {list(expected)}. Received: {list(array.shape)}")
            arrays.append(array)
        return arrays

    def run_all(self, inputs: Any) -> dict[int, np.ndarray]:
        """Runs the model and returns the value of every tensor, by tensor index.

        Args:
            inputs: one array per model input (a bare array for a one-input model), in the
                storage dtype the file declares (int8 codes for an int8 input), any batch size.

        Returns:
            ``{tensor index: array}`` for constants, inputs and every operator output.

        Raises:
            InvalidModelError: the tensors would exceed ``max_bytes`` at this batch size.
        """
        arrays = self._check_inputs(inputs)
        batch = max([int(a.shape[0]) for a in arrays if a.ndim] or [1])
        check_memory(self._model, batch_size=max(1, batch), max_bytes=self._max_bytes)
        values: dict[int, np.ndarray] = {}
        for spec in self.tensors:
            if spec.data is not None:
                values[spec.index] = spec.data
        for index, array in zip(self.input_indices, arrays):
            values[index] = array
        for index, name, options, ins, outs in self._ops:
            op = Op(index, name, options,
                    [self.tensors[i] if i >= 0 else None for i in ins],
                    [self.tensors[i] for i in outs], values)
            KERNELS[name](op)
        return values

    def run(self, inputs: Any) -> list[np.ndarray]:
        """Runs the model; returns one array per model output in the file's storage dtype."""
        values = self.run_all(inputs)
        return [values[i] for i in self.output_indices]


# The kernel modules register themselves on import.
_ = _kernels
