"""tflite_export.flatbuffer and tflite_export.inspect against models the stock converter writes.

Three small models are converted once per module: a full-integer PTQ conv/depthwise/dense net,
the same net in float, and a net whose weights pass through 4-bit narrow-range FakeQuant (the
converter writes those as INT4).
"""

from __future__ import annotations

import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from ai_edge_litert import schema_py_generated as schema  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from tflite_export.flatbuffer import (  # noqa: E402
    FLOAT_TYPES,
    TENSOR_TYPE_NAMES,
    InvalidModelError,
    load,
    op_name,
    pack_int4,
    serialize,
    tensor_array,
    unpack_int4,
)
from tflite_export.inspect import ModelReport, inspect  # noqa: E402

# The converter warns about input statistics on FakeQuant graphs; the ranges come from FakeQuant.
pytestmark = pytest.mark.filterwarnings("ignore:Statistics for quantized inputs:UserWarning")

# ----------------------------------------------------------------------------------------------
# Fixtures
# ----------------------------------------------------------------------------------------------


def _keras_net() -> tf_keras.Model:
    """8x8x3 -> Conv2D(4, 3x3) -> DepthwiseConv2D(3x3, multiplier 2) -> Flatten -> Dense(5)."""
    tf_keras.utils.set_random_seed(0)
    return tf_keras.Sequential(
        [
            tf_keras.layers.Input((8, 8, 3)),
            tf_keras.layers.Conv2D(4, 3, activation="relu", name="conv"),
            tf_keras.layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", name="dw"),
            tf_keras.layers.Flatten(),
            tf_keras.layers.Dense(5, name="fc"),
        ]
    )


@pytest.fixture(scope="module")
def keras_net() -> tf_keras.Model:
    return _keras_net()


@pytest.fixture(scope="module")
def int8_blob(keras_net) -> bytes:
    rng = np.random.default_rng(0)
    samples = rng.uniform(-1, 1, (20, 1, 8, 8, 3)).astype(np.float32)
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_net)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s] for s in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


@pytest.fixture(scope="module")
def float_blob(keras_net) -> bytes:
    return tf.lite.TFLiteConverter.from_keras_model(keras_net).convert()


@pytest.fixture(scope="module")
def report(int8_blob) -> ModelReport:
    return inspect(int8_blob)


class _FakeQuant4Conv(tf_keras.layers.Layer):
    """3x3 conv, 1 -> 3 channels, kernel through per-channel 4-bit narrow-range FakeQuant."""

    def build(self, input_shape):
        self.kernel = self.add_weight(name="kernel", shape=(3, 3, input_shape[-1], 3))

    def call(self, x):
        x = tf.quantization.fake_quant_with_min_max_vars(x, -1.0, 1.0, num_bits=8)
        m = tf.reduce_max(tf.abs(self.kernel), axis=[0, 1, 2])
        w = tf.quantization.fake_quant_with_min_max_vars_per_channel(
            self.kernel, -m, m, num_bits=4, narrow_range=True
        )
        y = tf.nn.conv2d(x, w, 1, "VALID")
        return tf.quantization.fake_quant_with_min_max_vars(y, -4.0, 4.0, num_bits=8)


@pytest.fixture(scope="module")
def int4_net():
    """(Keras model, .tflite bytes); the 3x3x1x3 kernel has 27 codes, an odd count."""
    tf_keras.utils.set_random_seed(1)
    inp = tf_keras.Input((6, 6, 1))
    model = tf_keras.Model(inp, _FakeQuant4Conv()(inp))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return model, converter.convert()


# ----------------------------------------------------------------------------------------------
# INT4 packing
# ----------------------------------------------------------------------------------------------


def test_pack_int4_golden_bytes():
    # Two's-complement nibbles: -8 -> 0x8, -1 -> 0xF, 0 -> 0x0, 7 -> 0x7, 3 -> 0x3.
    # Element 2k goes to the low nibble of byte k, 2k+1 to the high nibble
    # (tensorflow/lite/kernels/internal/portable_tensor_utils.cc, UnpackDenseInt4IntoInt8):
    #   byte 0 = hi -1 | lo -8 = 0xF8, byte 1 = hi 7 | lo 0 = 0x70, byte 2 = pad 0 | lo 3 = 0x03.
    packed = pack_int4(np.array([-8, -1, 0, 7, 3]))
    assert packed.dtype == np.uint8
    assert packed.tobytes() == bytes([0xF8, 0x70, 0x03])
    np.testing.assert_array_equal(unpack_int4(b"\xf8\x70\x03", 5), [-8, -1, 0, 7, 3])
    assert unpack_int4(b"\xf8\x70\x03", 5).dtype == np.int8
    # 0x21 = hi 2 | lo 1; 0x9F = hi -7 | lo -1.
    assert pack_int4(np.array([[1, 2], [-1, -7]])).tobytes() == b"\x21\x9f"
    np.testing.assert_array_equal(unpack_int4(np.array([0x21, 0x9F], np.uint8), 4), [1, 2, -1, -7])


@pytest.mark.parametrize("n", [0, 1, 2, 7, 16, 27, 1001])
def test_pack_unpack_round_trip(n):
    codes = np.random.default_rng(n).integers(-8, 8, n)
    packed = pack_int4(codes)
    assert packed.shape == ((n + 1) // 2,)
    if n % 2:
        assert packed[-1] >> 4 == 0  # odd count: high nibble of the last byte is padding
    np.testing.assert_array_equal(unpack_int4(packed, n), codes)
    np.testing.assert_array_equal(unpack_int4(packed.tobytes(), n), codes)


def test_pack_int4_rejects_out_of_range():
    for bad in ([8], [-9], [0, 1, 100]):
        with pytest.raises(ValueError, match=r"\[-8, 7\]"):
            pack_int4(np.array(bad))
    with pytest.raises(ValueError, match="need 3 bytes"):
        unpack_int4(b"\x00\x00", 5)


def test_int4_matches_stock_converter(int4_net):
    model, blob = int4_net
    model_t, _ = load(blob)
    int4 = [t for t in model_t.subgraphs[0].tensors if t.type == schema.TensorType.INT4]
    assert len(int4) == 1
    tensor = int4[0]
    codes = tensor_array(model_t, tensor)  # [O, H, W, I] = [3, 3, 3, 1]
    assert codes.shape == (3, 3, 3, 1) and codes.dtype == np.int8
    raw = np.asarray(model_t.buffers[tensor.buffer].data, np.uint8)
    assert raw.size == 14  # 27 codes packed densely over the whole tensor, not per channel
    assert pack_int4(codes).tobytes() == raw.tobytes()

    kernel = model.layers[1].kernel.numpy()  # [H, W, I, O]
    step = np.abs(kernel).max(axis=(0, 1, 2)) / 7  # narrow 4-bit grid [-7, 7]
    expected = np.round(kernel / step).astype(np.int8)
    np.testing.assert_array_equal(codes.transpose(1, 2, 3, 0), expected)
    np.testing.assert_allclose(tensor.quantization.scale, step, rtol=1e-6)

    weight = inspect(blob).weights[0]
    assert weight.tensor.dtype == "int4" and weight.tensor.packed
    assert weight.bits == 4 and weight.tensor.distinct_values <= 15
    np.testing.assert_allclose(weight.keras_kernel(), expected * step, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------------
# Flatbuffer helpers
# ----------------------------------------------------------------------------------------------


def test_type_tables():
    assert TENSOR_TYPE_NAMES[schema.TensorType.INT4] == "int4" == TENSOR_TYPE_NAMES[17]
    assert TENSOR_TYPE_NAMES[schema.TensorType.INT8] == "int8"
    assert TENSOR_TYPE_NAMES[schema.TensorType.FLOAT32] == "float32"
    assert {schema.TensorType.FLOAT32, schema.TensorType.FLOAT16} <= FLOAT_TYPES
    assert schema.TensorType.INT8 not in FLOAT_TYPES


def test_serialize_round_trip_runs_identically(int8_blob):
    model_t, buf = load(int8_blob)
    assert buf == int8_blob
    names = [op_name(model_t, op) for op in model_t.subgraphs[0].operators]
    assert names[:2] == ["CONV_2D", "DEPTHWISE_CONV_2D"] and "FULLY_CONNECTED" in names
    rewritten = serialize(model_t)
    assert rewritten[4:8] == b"TFL3"

    x = np.random.default_rng(3).integers(-128, 128, (1, 8, 8, 3)).astype(np.int8)
    outputs = []
    for blob in (int8_blob, rewritten):
        interpreter = Interpreter(model_content=blob)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], x)
        interpreter.invoke()
        outputs.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]))
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_tensor_array_none_for_activations(int8_blob):
    model_t, _ = load(int8_blob)
    sg = model_t.subgraphs[0]
    assert tensor_array(model_t, sg.tensors[sg.inputs[0]]) is None


# ----------------------------------------------------------------------------------------------
# inspect on a full-integer PTQ model
# ----------------------------------------------------------------------------------------------


def test_integer_only_report(report, int8_blob):
    assert report.is_integer_only
    assert report.float_ops == []
    assert report.file_size == len(int8_blob)
    assert [op.name for op in report.ops][:2] == ["CONV_2D", "DEPTHWISE_CONV_2D"]
    counts = report.op_counts()
    assert counts["CONV_2D"] == counts["DEPTHWISE_CONV_2D"] == counts["FULLY_CONNECTED"] == 1
    assert report.inputs[0].dtype == "int8" and report.inputs[0].shape == (1, 8, 8, 3)
    assert report.outputs[0].dtype == "int8" and report.outputs[0].shape == (1, 5)
    assert len(report.inputs[0].scales) == 1 and report.inputs[0].quantized_axis is None
    assert [w.op_name for w in report.weights] == ["CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"]
    # PTQ writes per-channel weights for all three, FULLY_CONNECTED included.
    assert report.per_channel_ops == [f"{w.op_index}:{w.op_name}" for w in report.weights]


def _assert_within_half_step(weight, float_kernel, scales_keras_shape):
    scales = weight.scales.reshape(scales_keras_shape)
    err = np.abs(weight.keras_kernel() - float_kernel)
    assert weight.keras_kernel().shape == float_kernel.shape
    assert np.all(err <= 0.5 * scales * (1 + 1e-5) + 1e-8), float(np.max(err / scales))


def test_conv_weights_per_channel(report, keras_net):
    conv = report.weights[0]
    kernel = keras_net.get_layer("conv").kernel.numpy()  # [3, 3, 3, 4]
    assert conv.tensor.dtype == "int8" and conv.codes.shape == (4, 3, 3, 3)  # [O, H, W, I]
    assert conv.per_channel and len(conv.tensor.scales) == 4 and conv.tensor.quantized_axis == 0
    assert conv.tensor.zero_points == (0, 0, 0, 0)
    # Symmetric per-channel int8: the largest |w| of each channel maps to code ±127.
    np.testing.assert_array_equal(np.abs(conv.codes).max(axis=(1, 2, 3)), [127] * 4)
    np.testing.assert_allclose(conv.scales, np.abs(kernel).max(axis=(0, 1, 2)) / 127, rtol=1e-6)
    assert conv.bits == conv.tensor.effective_bits
    assert conv.bits == max(1, int(np.ceil(np.log2(np.unique(conv.codes).size))))
    _assert_within_half_step(conv, kernel, (1, 1, 1, 4))


def test_depthwise_layout(report, keras_net):
    dw = report.weights[1]
    kernel = keras_net.get_layer("dw").depthwise_kernel.numpy()  # [3, 3, I=4, M=2]
    assert kernel.shape == (3, 3, 4, 2)
    assert dw.codes.shape == (1, 3, 3, 8)  # [1, H, W, I*M]
    assert dw.input_channels == 4
    assert len(dw.tensor.scales) == 8 and dw.tensor.quantized_axis == 3
    # TFLite output channel i*M + m is Keras [..., i, m].
    _assert_within_half_step(dw, kernel, (1, 1, 4, 2))
    np.testing.assert_allclose(
        dw.scales.reshape(4, 2), np.abs(kernel).max(axis=(0, 1)) / 127, rtol=1e-6
    )


def test_fully_connected_layout(report, keras_net):
    fc = report.weights[2]
    kernel = keras_net.get_layer("fc").kernel.numpy()  # [I=128, O=5]
    assert fc.codes.shape == (5, 128)  # [O, I]
    assert len(fc.tensor.scales) == 5 and fc.tensor.quantized_axis == 0
    _assert_within_half_step(fc, kernel, (1, 5))


def test_dequantized_and_bias(report):
    conv = report.weights[0]
    np.testing.assert_allclose(
        conv.dequantized(), conv.codes * conv.scales[:, None, None, None], rtol=1e-6
    )
    bias = report.tensors[report.ops[0].inputs[2]]
    assert bias.dtype == "int32" and bias.is_constant and bias.shape == (4,)
    # Keras initializes biases to zero: one distinct value still counts as 1 bit.
    assert bias.distinct_values == 1 and bias.effective_bits == 1


def test_str_and_to_dict(report):
    text = str(report)
    for op in report.ops:
        assert op.name in text
    assert "integer-only: yes" in text and "per-channel ops: 3/3" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert data["is_integer_only"] is True
    assert data["weights"][0]["tensor"]["scales"] == list(report.weights[0].tensor.scales)
    assert data["op_counts"] == report.op_counts()


# ----------------------------------------------------------------------------------------------
# inspect on a float model
# ----------------------------------------------------------------------------------------------


def test_float_model_report(float_blob, keras_net):
    report = inspect(float_blob)
    assert not report.is_integer_only
    for name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
        assert any(desc.endswith(":" + name) for desc in report.float_ops)
    assert report.float_ops[0] == f"{report.ops[0].index}:{report.ops[0].name}"
    assert report.per_channel_ops == []
    conv = report.weights[0]
    assert conv.tensor.dtype == "float32" and conv.bits is None and not conv.per_channel
    np.testing.assert_array_equal(conv.keras_kernel(), keras_net.get_layer("conv").kernel.numpy())
    assert "integer-only: no" in str(report)


# ----------------------------------------------------------------------------------------------
# Invalid inputs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, problem",
    [
        (b"", "empty"),
        (b"abc", "too short"),
        (b"garbage123", r"missing 'TFL3' identifier \(got b'age1'\)"),
    ],
)
def test_invalid_bytes(data, problem):
    with pytest.raises(InvalidModelError, match=problem) as info:
        inspect(data)
    assert "<bytes>" in str(info.value)


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_model(int8_blob, keep):
    with pytest.raises(InvalidModelError, match="truncated"):
        load(int8_blob[: int(len(int8_blob) * keep)])


def test_text_file_and_missing_path(tmp_path):
    text = tmp_path / "notes.tflite"
    text.write_text("this is a text file, not a model\n")
    with pytest.raises(InvalidModelError, match="missing 'TFL3'") as info:
        inspect(text)
    assert str(text) in str(info.value)
    missing = tmp_path / "missing.tflite"
    with pytest.raises(FileNotFoundError, match="missing.tflite"):
        inspect(str(missing))


def test_model_without_subgraph():
    with pytest.raises(InvalidModelError, match="no subgraph"):
        load(serialize(schema.ModelT(version=3)))


# ----------------------------------------------------------------------------------------------
# Paths that are not regular readable files, and the memory bound
# ----------------------------------------------------------------------------------------------


def _finishes(function, seconds: float = 20.0):
    """Runs ``function`` in a thread; returns its exception (or None) if it ends within ``seconds``."""
    import threading

    outcome: list = []

    def target():
        try:
            function()
            outcome.append(None)
        except BaseException as error:  # noqa: BLE001  (handed back to the test)
            outcome.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread.is_alive(), (outcome[0] if outcome else None)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_fifo_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.tflite"
    os.mkfifo(fifo)
    alive, error = _finishes(lambda: inspect(fifo))
    if alive:  # unblock the reader before failing
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert not alive, "inspect blocked on a FIFO"
    assert isinstance(error, InvalidModelError) and "named pipe (FIFO), not a regular file" in str(error)


def test_directory_and_device_are_refused(tmp_path):
    with pytest.raises(InvalidModelError, match="is a directory") as info:
        inspect(tmp_path)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)
    if os.path.exists("/dev/zero"):  # endless: it must be refused, not read
        alive, error = _finishes(lambda: inspect("/dev/zero"))
        assert not alive and isinstance(error, InvalidModelError) and "character device" in str(error)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files without permission")
def test_unreadable_file(int8_blob, tmp_path):
    path = tmp_path / "secret.tflite"
    path.write_bytes(int8_blob)
    path.chmod(0)
    try:
        with pytest.raises(InvalidModelError, match="permission denied"):
            inspect(path)
    finally:
        path.chmod(0o600)


def test_permission_error_becomes_one_clear_message(int8_blob, tmp_path, monkeypatch):
    path = tmp_path / "model.tflite"
    path.write_bytes(int8_blob)

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(InvalidModelError, match=r"cannot read the TFLite model file .*model.tflite: permission denied"):
        inspect(path)


def test_broken_link_is_not_found(tmp_path):
    link = tmp_path / "link.tflite"
    link.symlink_to(tmp_path / "gone.tflite")
    with pytest.raises(FileNotFoundError, match="link.tflite"):
        inspect(link)


def test_file_and_bytes_larger_than_max_bytes(int8_blob, tmp_path, monkeypatch):
    import tflite_export.flatbuffer as flatbuffer

    path = tmp_path / "model.tflite"
    path.write_bytes(int8_blob)
    with pytest.raises(InvalidModelError, match=f"has {len(int8_blob):,} bytes.*more than max_bytes = 1,000 bytes"):
        inspect(path, max_bytes=1000)
    with pytest.raises(InvalidModelError, match="exceed max_bytes"):
        inspect(int8_blob, max_bytes=1000)
    with pytest.raises(ValueError, match="max_bytes must be an int >= 1"):
        inspect(int8_blob, max_bytes=0)
    # The module-level default is read at each call.
    monkeypatch.setattr(flatbuffer, "DEFAULT_MAX_BYTES", 1000)
    with pytest.raises(InvalidModelError, match="max_bytes"):
        inspect(path)
    assert inspect(path, max_bytes=1 << 20).file_size == len(int8_blob)


def _mutated(blob: bytes, change) -> bytes:
    model = schema.ModelT.InitFromPackedBuf(blob, 0)  # unchecked: the change may make it invalid
    change(model)
    return serialize(model)


def test_huge_batch_dimension_names_tensor_and_bytes(int8_blob):
    def huge(model):
        graph = model.subgraphs[0]
        conv = graph.operators[0].outputs[0]
        graph.tensors[conv].shape = np.array([5_242_881, 6, 6, 4], np.int32)

    blob = _mutated(int8_blob, huge)
    with pytest.raises(InvalidModelError, match=r"shape \[5242881, 6, 6, 4\]\) with 754,974,864 bytes") as info:
        inspect(blob, max_bytes=500 << 20)
    assert "at batch size 1" in str(info.value)
    assert inspect(blob).ops[0].name == "CONV_2D"  # under the 2 GiB default: a batch placeholder, reported


def test_input_shape_that_its_operator_does_not_compute(int8_blob):
    """A corrupt input height: LiteRT would compute every later tensor at that height, whatever
    their declared shapes say, so the declared shapes must be what the operators compute."""
    def tall(model):
        graph = model.subgraphs[0]
        graph.tensors[graph.inputs[0]].shape = np.array([1, 5_242_881, 8, 3], np.int32)

    with pytest.raises(InvalidModelError, match=r"operator 0 \(CONV_2D\) computes an output of shape \[1, 5242879, 6, 4\]"):
        inspect(_mutated(int8_blob, tall))


def test_index_and_scale_errors_name_the_problem(int8_blob):
    model_t, _ = load(int8_blob)
    n = len(model_t.subgraphs[0].tensors)
    codes = len(model_t.operatorCodes)

    def operator_input(model):
        op = model.subgraphs[0].operators[0]
        op.inputs = np.array([op.inputs[0], 9999, *op.inputs[2:]], np.int32)

    def nan_scale(model):
        tensor = model.subgraphs[0].tensors[model.subgraphs[0].operators[0].inputs[1]]
        tensor.quantization.scale = np.full(len(tensor.quantization.scale), np.nan, np.float32)

    def opcode(model):
        model.subgraphs[0].operators[1].opcodeIndex = 99

    cases = [
        (operator_input, rf"operator 0 \(CONV_2D\) input 1 is tensor 9999; the subgraph has {n} tensors"),
        (nan_scale, r"has quantization scale nan \(scale 0 of 4\)"),
        (opcode, f"operator 1 has operator code index 99; the model has {codes} operator codes"),
    ]
    for change, message in cases:
        with pytest.raises(InvalidModelError, match=message):
            inspect(_mutated(int8_blob, change))
