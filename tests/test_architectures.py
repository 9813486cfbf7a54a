"""Stock tf_keras.applications architectures, unmodified: quantize, train, export integer-only, parity.

Each runs at 32x32x3 on Fashion-MNIST as RGB (needs KERASQ_DATA): a short float fit (so batch
norm statistics are data's), ``quantize_model`` with calibration, a short QAT fit, ``convert``,
then the exported file against the Keras model on held-out images.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import fashion_mnist_or_skip, reload_identical

import kerasq
import tflite_export
from kerasq import keras

apps = keras.applications

ARCHITECTURES = {
    "MobileNet": lambda: apps.MobileNet((32, 32, 3), alpha=0.25, weights=None, classes=10),
    "MobileNetV2": lambda: apps.MobileNetV2((32, 32, 3), alpha=0.35, weights=None, classes=10),
    "MobileNetV3Small_minimalistic": lambda: apps.MobileNetV3Small(
        (32, 32, 3), minimalistic=True, weights=None, classes=10
    ),
    "ResNet50": lambda: apps.ResNet50(weights=None, input_shape=(32, 32, 3), classes=10),
    "ResNet50V2": lambda: apps.ResNet50V2(weights=None, input_shape=(32, 32, 3), classes=10),
    "DenseNet121": lambda: apps.DenseNet121(weights=None, input_shape=(32, 32, 3), classes=10),
    "NASNetMobile": lambda: apps.NASNetMobile(weights=None, input_shape=(32, 32, 3), classes=10),
    "MobileNetV3Large_minimalistic": lambda: apps.MobileNetV3Large(
        (32, 32, 3), minimalistic=True, weights=None, classes=10
    ),
    # hard-swish and hard-sigmoid as Keras writes them (x + 3, ReLU6, * 1/6, Multiply), squeeze-excite
    "MobileNetV3Small": lambda: apps.MobileNetV3Small((32, 32, 3), weights=None, classes=10),
    "MobileNetV3Large": lambda: apps.MobileNetV3Large((32, 32, 3), weights=None, classes=10),
    # swish, sigmoid gates, broadcast Multiply, Rescaling + Normalization preprocessing
    "EfficientNetB0": lambda: apps.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=10),
    "EfficientNetV2B0": lambda: apps.EfficientNetV2B0(weights=None, input_shape=(32, 32, 3), classes=10),
}
# Minutes each on 2 cores; the small ones run by default, the large ones with -m slow.
LARGE = {
    "ResNet50", "ResNet50V2", "DenseNet121", "NASNetMobile", "MobileNetV3Large_minimalistic", "MobileNetV3Large",
    "EfficientNetB0", "EfficientNetV2B0",
}


@pytest.fixture(scope="module")
def fashion_rgb():
    from kerasq.datasets import to_rgb

    (x_train, y_train), (x_test, y_test) = fashion_mnist_or_skip()
    return (to_rgb(x_train[:1024]), y_train[:1024]), (to_rgb(x_test[:256]), y_test[:256])


def quantize_train_export(model, data, scheme="int8", steps=16):
    (x_train, y_train), _ = data
    loss = keras.losses.SparseCategoricalCrossentropy()
    model.compile(keras.optimizers.Adam(1e-3), loss)
    model.fit(x_train, y_train, batch_size=64, epochs=1, verbose=0)
    qmodel = kerasq.quantize_model(model, scheme, calibration_data=x_train[:256])
    qmodel.compile(keras.optimizers.Adam(1e-4), loss)
    qmodel.fit(x_train[: 32 * steps], y_train[: 32 * steps], batch_size=32, epochs=1, verbose=0)
    return qmodel, tflite_export.convert(qmodel)


def assert_same_codes(qmodel, blob, x, output_layer: str, runtime: str) -> None:
    """The file's int8 outputs equal the Keras model's, code for code, on ``runtime``'s LiteRT kernels."""
    keras_out = qmodel.predict(x, verbose=0)
    out = qmodel.get_layer(output_layer).activation_params()
    codes = np.round(keras_out / out.scale) + out.zero_point
    file_codes = tflite_export.run(blob, x, dequantize=False, reference_kernels=runtime == "reference")
    assert np.array_equal(codes, file_codes.astype(np.float64)), np.abs(codes - file_codes).max()


def as_the_model_expects(name, data):
    """MobileNetV3 and EfficientNet rescale their input themselves: they take pixels in [0, 255]."""
    if not name.startswith(("MobileNetV3", "EfficientNet")):
        return data
    return tuple((x * 255.0, y) for x, y in data)


def assert_architecture_exports_exactly(name, data, scheme="int8"):
    keras.utils.set_random_seed(0)
    data = as_the_model_expects(name, data)
    qmodel, blob = quantize_train_export(ARCHITECTURES[name](), data, scheme)
    report = tflite_export.inspect(blob)
    assert report.is_integer_only, report
    (_, _), (x_test, _) = data
    parity = tflite_export.compare(qmodel, blob, x_test)
    assert parity.max_abs_lsb <= 1 and parity.top1_agreement >= 0.99, parity
    return report, parity


@pytest.mark.parametrize("name", [n for n in ARCHITECTURES if n not in LARGE])
def test_mobile_architectures_quantize_train_and_export_exactly(name, fashion_rgb):
    assert_architecture_exports_exactly(name, fashion_rgb)


MOBILE = ["MobileNet", "MobileNetV2", "MobileNetV3Small_minimalistic", "MobileNetV3Small"]
LOW_BIT_DEFAULT = {("MobileNet", "pact"), ("MobileNetV2", "twn")}  # the rest run with -m slow


@pytest.mark.parametrize(
    "name, scheme",
    [
        pytest.param(n, s, marks=() if (n, s) in LOW_BIT_DEFAULT else pytest.mark.slow)
        for n in MOBILE
        for s in ("pact", "twn")
    ],
)
def test_mobile_architectures_with_low_bit_schemes_export_exactly(name, scheme, fashion_rgb):
    """PACT w4a4 and TWN (first and last layers int8), packed INT4 weights, on the MobileNets."""
    report, _ = assert_architecture_exports_exactly(name, fashion_rgb, scheme)
    assert any(w.tensor.dtype == "int4" for w in report.weights)


def test_post_training_quantization_of_a_stock_architecture(fashion_rgb):
    """``convert(float_model, representative_data=...)``: integer-only, and the same file as
    ``quantize_model(..., calibration_data=...)`` computes, bit for bit."""
    (x_train, y_train), (x_test, _) = fashion_rgb
    keras.utils.set_random_seed(0)
    model = ARCHITECTURES["MobileNetV2"]()
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy())
    model.fit(x_train, y_train, batch_size=64, epochs=1, verbose=0)
    blob = tflite_export.convert(model, representative_data=x_train[:256])
    assert tflite_export.inspect(blob).is_integer_only
    qmodel = kerasq.quantize_model(model, calibration_data=x_train[:256])
    assert tflite_export.convert(qmodel) == blob
    parity = tflite_export.compare(qmodel, blob, x_test)
    assert parity.max_abs_lsb == 0, parity


def test_mobilenet_v3_small_matches_the_reference_kernels_code_for_code(fashion_rgb):
    """Hard-swish, squeeze-excite MUL and ADD with constants under ``target="reference"`` (BUILTIN_REF)."""
    (x_train, y_train), (x_test, _) = as_the_model_expects("MobileNetV3Small", fashion_rgb)
    keras.utils.set_random_seed(0)
    model = ARCHITECTURES["MobileNetV3Small"]()
    model.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy())
    model.fit(x_train, y_train, batch_size=64, epochs=1, verbose=0)
    qmodel = kerasq.quantize_model(model, target="reference", calibration_data=x_train[:256])
    blob = tflite_export.convert(qmodel)
    assert_same_codes(qmodel, blob, x_test[:64], "Logits", "reference")  # softmax fused through Flatten
    # Layer by layer too: every one of its ~160 layers adds nothing of its own (0 LSB).
    report = tflite_export.debug(qmodel, blob, x_test[:32])
    assert report.first_divergence is None and len(report.layers) > 150 and not report.unmatched
    assert all(e.max_lsb == 0 for e in report.layers), [e for e in report.layers if e.max_lsb][:3]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(LARGE))
def test_large_architectures_quantize_train_and_export_exactly(name, fashion_rgb):
    report, _ = assert_architecture_exports_exactly(name, fashion_rgb)
    if name in ("DenseNet121", "NASNetMobile"):
        assert {"AVERAGE_POOL_2D", "CONCATENATION"} <= set(report.op_counts())


def test_preprocessing_batch_norm_and_average_pooling_export_exactly(tmp_path):
    """Rescaling → Normalization at the input, batch norm before a conv (after a pool) and after
    a ReLU, AVERAGE_POOL_2D valid and same: bit-exact on both LiteRT kernel sets."""
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(128, 12, 12, 3)).astype(np.float32)
    normalization = keras.layers.Normalization(name="normalize")
    normalization.adapt(x / 255.0)
    inputs = keras.Input((12, 12, 3))
    h = keras.layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    h = normalization(h)
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(h)
    h = keras.layers.ReLU(name="relu1")(h)
    h = keras.layers.AveragePooling2D(2, name="pool_valid")(h)
    bn = keras.layers.BatchNormalization(
        beta_initializer="normal", gamma_initializer="uniform", moving_mean_initializer="normal", name="bn_pre"
    )
    h = keras.layers.ReLU(6.0, name="relu6")(bn(h))
    h = keras.layers.AveragePooling2D(3, strides=2, padding="same", name="pool_same")(h)
    h = keras.layers.Conv2D(8, 1, name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    h = keras.layers.Activation("relu", name="relu2")(keras.layers.Dense(16, name="fc1")(h))
    h = keras.layers.BatchNormalization(moving_mean_initializer="normal", name="bn_after_relu")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="fc2")(h))
    for runtime in ("xnnpack", "reference"):
        qmodel = kerasq.quantize_model(model, "int8", calibration_data=x, target=runtime)
        kinds = {layer.name: type(layer).__name__ for layer in qmodel.layers}
        # Rescaling runs as a per-channel op, Normalization folds into it; bn_pre and
        # bn_after_relu are per-channel ops of their own (1x1 depthwise, diagonal dense).
        assert kinds["rescale"] == kinds["bn_pre"] == kinds["bn_after_relu"] == "QuantizedLayer"
        assert "normalize" not in kinds and kinds["pool_valid"] == "OnInputGrid"
        assert type(qmodel.get_layer("bn_pre").layer) is keras.layers.DepthwiseConv2D
        assert type(qmodel.get_layer("bn_after_relu").layer) is keras.layers.Dense
        blob = tflite_export.convert(qmodel)
        report = tflite_export.inspect(blob)
        assert report.is_integer_only and report.op_counts()["AVERAGE_POOL_2D"] == 2
        # The float map survives: the affine ops hold their one weight per channel exactly.
        float_out = model.predict(x, verbose=0)
        assert np.max(np.abs(qmodel.predict(x, verbose=0) - float_out)) < 0.1 * np.ptp(float_out)
        assert_same_codes(qmodel, blob, x, "fc2", runtime)
        restored = reload_identical(qmodel, x, str(tmp_path / f"{runtime}.keras"))
        assert tflite_export.convert(restored) == blob


def test_average_pool_rounds_half_away_from_zero_on_codes():
    """Window sums of codes (zero point included) divided by the positions inside the input."""
    from kerasq.ops import Grid
    from kerasq.runtimes import average_pool

    grid = Grid(np.float32(0.5), np.float32(-3.0), -128, 127)
    codes = np.array([[1, 2], [3, 4]], np.float32).reshape(1, 2, 2, 1) * np.array([1, -1], np.float32)  # 2 channels
    x = (codes - grid.zero_point) * grid.scale
    level = average_pool(x, grid, (2, 2), (2, 2), "valid").numpy().reshape(-1) + grid.zero_point
    # sums 10 and -10 over 4: 2.5 → 3, -2.5 → -3 (half away from zero, not to even)
    assert level.tolist() == [3.0, -3.0]
    level = average_pool(x, grid, (3, 3), (1, 1), "same").numpy()[0, 0, 0] + grid.zero_point
    assert level.tolist() == [3.0, -3.0]  # SAME: 4 positions inside the input, not 9


def test_separable_conv_cropping_and_unfused_relu_export_exactly():
    """SeparableConv2D as DEPTHWISE_CONV_2D + CONV_2D (both kernels quantized by the scheme),
    Cropping2D as SLICE, a ReLU after a Concatenate (no op to fuse into) as RELU, as NASNet has;
    UpSampling2D (nearest) as RESIZE_NEAREST_NEIGHBOR."""
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(128, 12, 12, 3)).astype(np.float32)
    inputs = keras.Input((12, 12, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="conv_a")(inputs)
    b = keras.layers.Conv2D(4, 1, name="conv_b")(inputs)
    h = keras.layers.Concatenate(name="concat")([a, b])
    h = keras.layers.Activation("relu", name="relu_after_concat")(h)
    h = keras.layers.SeparableConv2D(8, 3, strides=2, padding="same", name="sep")(h)
    h = keras.layers.BatchNormalization(moving_mean_initializer="normal", name="sep_bn")(h)
    h = keras.layers.Cropping2D(((1, 0), (0, 1)), name="crop")(h)
    h = keras.layers.UpSampling2D(2, name="upsample")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="fc")(h))
    qmodel = kerasq.quantize_model(model, kerasq.schemes.Linear(weight_bits=4), first_last_int8=False, calibration_data=x)
    assert qmodel.get_layer("sep_depthwise").weight_quantizer.bits == qmodel.get_layer("sep").weight_quantizer.bits == 4
    assert type(qmodel.get_layer("relu_after_concat")) is keras.layers.ReLU
    blob = tflite_export.convert(qmodel)
    ops = tflite_export.inspect(blob).op_counts()
    assert ops["SLICE"] == 1 and ops["RELU"] == 1 and ops["DEPTHWISE_CONV_2D"] == 1 and ops["CONV_2D"] == 3
    assert ops["RESIZE_NEAREST_NEIGHBOR"] == 1
    parity = tflite_export.compare(qmodel, blob, x)
    assert parity.max_abs_lsb == 0, parity
    float_out = model.predict(x, verbose=0)
    assert np.corrcoef(qmodel.predict(x, verbose=0).ravel(), float_out.ravel())[0, 1] > 0.95


def test_layers_without_an_integer_kernel_are_refused_by_name_and_reason():
    inputs = keras.Input((6, 4))
    h = keras.layers.LayerNormalization(name="norm")(inputs)
    h = keras.layers.LSTM(8, name="lstm")(h)
    with pytest.raises(ValueError) as error:
        kerasq.quantize_model(keras.Model(inputs, keras.layers.Dense(2)(h)))
    message = str(error.value)
    assert "'norm' (LayerNormalization): LayerNormalization is not supported: TFLite has no int8 layer-normalization" in message
    assert "'lstm' (LSTM): LSTM is not supported: TFLite runs LSTM with float" in message


def test_a_nested_backbone_is_quantized_as_its_layers():
    """The transfer-learning pattern: a stock model used as a layer inside a Functional model."""
    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(2)
    x = rng.uniform(0, 1, size=(64, 32, 32, 3)).astype(np.float32)
    backbone = apps.MobileNet((32, 32, 3), alpha=0.25, include_top=False, weights=None)
    inputs = keras.Input((32, 32, 3))
    h = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, name="head")(h))
    head = keras.Sequential([keras.Input((4, 4, 8)), keras.Sequential([keras.layers.Conv2D(4, 1, name="inner")], name="sub")])
    assert [type(layer).__name__ for layer in kerasq.quantize_model(head).layers[2:]] == ["QuantizedLayer"]
    qmodel = kerasq.quantize_model(model, calibration_data=x)
    assert "conv1" in {layer.name for layer in qmodel.layers}  # the backbone's first conv, inlined
    blob = tflite_export.convert(qmodel)
    assert tflite_export.inspect(blob).is_integer_only
    parity = tflite_export.compare(qmodel, blob, x)
    assert parity.max_abs_lsb <= 1 and parity.top1_agreement >= 0.99, parity


@pytest.mark.parametrize("runtime", ["xnnpack", "reference"])
def test_dense_on_a_sequence_keeps_its_axes_and_exports_exactly(runtime):
    """Dense over the last axis of [batch, steps, features] (a batch norm folded into it):
    FULLY_CONNECTED with keep_num_dims; a rank-3 batch norm with nothing to fold into is refused."""
    keras.utils.set_random_seed(3)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(128, 6, 8)).astype(np.float32)
    inputs = keras.Input((6, 8))
    h = keras.layers.Dense(16, activation="relu", name="per_step")(inputs)
    h = keras.layers.Dense(4, name="per_step_2")(h)
    h = keras.layers.BatchNormalization(moving_mean_initializer="normal", name="per_step_bn")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="head")(keras.layers.Flatten(name="flat")(h)))
    qmodel = kerasq.quantize_model(model, calibration_data=x, target=runtime)
    assert "per_step_bn" not in {layer.name for layer in qmodel.layers}  # folded into per_step_2
    blob = tflite_export.convert(qmodel)
    report = tflite_export.inspect(blob)
    assert report.is_integer_only and report.op_counts()["FULLY_CONNECTED"] == 3
    assert_same_codes(qmodel, blob, x, "head", runtime)
    inputs = keras.Input((6, 8))
    h = keras.layers.BatchNormalization(name="bn_on_input")(inputs)
    with pytest.raises(ValueError, match="'bn_on_input' on a rank-3 input does not directly follow"):
        kerasq.quantize_model(keras.Model(inputs, keras.layers.Dense(2)(h)))


@pytest.mark.parametrize("runtime", ["xnnpack", "reference"])
def test_maximum_minimum_and_permute_export_exactly(runtime):
    """MAXIMUM and MINIMUM compare codes, so their inputs share one grid (as CONCATENATION's);
    Permute is a TRANSPOSE on its input's grid."""
    keras.utils.set_random_seed(4)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(128, 8, 8, 3)).astype(np.float32)
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(4, 1, activation="relu", name="b")(inputs)
    c = keras.layers.Conv2D(4, 1, name="c")(inputs)
    h = keras.layers.Maximum(name="max")([a, b])
    h = keras.layers.Minimum(name="min")([h, c])
    h = keras.layers.Permute((2, 1, 3), name="swap_hw")(h)
    h = keras.layers.Conv2D(4, (3, 1), name="d")(h)
    model = keras.Model(inputs, keras.layers.Dense(10, name="head")(keras.layers.GlobalAveragePooling2D()(h)))
    qmodel = kerasq.quantize_model(model, calibration_data=x, target=runtime)
    assert qmodel.get_layer("a").grid_group == ["a", "b", "c"]
    blob = tflite_export.convert(qmodel)
    ops = tflite_export.inspect(blob).op_counts()
    assert ops["MAXIMUM"] == ops["MINIMUM"] == ops["TRANSPOSE"] == 1
    assert_same_codes(qmodel, blob, x, "head", runtime)
