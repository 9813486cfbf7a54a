"""kerasq schemes inside tfmot's QAT pipeline: ``kerasq.QuantizeConfig`` + ``quantize_apply``.

Every scheme: the wrapper's quantized weights equal ``kerasq.quantize_model``'s for the same float
weights, training keeps them on the scheme's grid, and the model saves and loads with its
quantizer state. Four representative schemes run by default, all of them with ``-m slow``.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_model_optimization as tfmot

import kerasq
from kerasq import keras
from kerasq.kmeans import kmeans_1d
from kerasq.ternary import twn_grid

q = tfmot.quantization.keras

DEFAULT_SCHEMES = ("pact", "ttq", "kmeans", "bnn")
SLOW_SCHEMES = tuple(s for s in kerasq.available_schemes() if s not in DEFAULT_SCHEMES)
WEIGHT_LAYERS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 8, 8, 3)).astype(np.float32), rng.integers(0, 4, 32)


def _float_model(seed: int = 1) -> keras.Model:
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(8, 3, activation="relu", name="conv"),
        keras.layers.DepthwiseConv2D(3, activation="relu", name="dw"),
        keras.layers.Flatten(name="flat"),
        keras.layers.Dense(4, name="fc"),
    ])


def _annotated(float_model: keras.Model, scheme: str) -> keras.Model:
    """tfmot's documented pattern: clone_model with quantize_annotate_layer in the clone_function."""

    def annotate(layer):
        clone = layer.__class__.from_config(layer.get_config())
        if isinstance(layer, WEIGHT_LAYERS):
            return q.quantize_annotate_layer(clone, quantize_config=kerasq.QuantizeConfig(scheme))
        return clone

    annotated = keras.models.clone_model(float_model, clone_function=annotate)
    annotated.set_weights(float_model.get_weights())
    return annotated


def _apply(annotated: keras.Model) -> keras.Model:
    with q.quantize_scope(kerasq.custom_objects()):
        return q.quantize_apply(annotated)


def _fit(model: keras.Model, data, steps: int = 3, lr: float = 1e-2) -> list[float]:
    x, y = data
    model.compile(keras.optimizers.Adam(lr), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model.fit(x[: 8 * steps], y[: 8 * steps], batch_size=8, epochs=1, verbose=0).history["loss"]


def _kerasq_wrappers(model: keras.Model) -> dict[str, q.QuantizeWrapperV2]:
    return {
        layer.layer.name: layer
        for layer in model.layers
        if isinstance(layer, q.QuantizeWrapperV2) and isinstance(layer.quantize_config, kerasq.QuantizeConfig)
    }


def _wrapper_weights(model: keras.Model) -> dict[str, np.ndarray]:
    """Each kerasq-configured layer's first quantized weight, as the wrapper's inference pass uses it."""
    result = {}
    for name, wrapper in _kerasq_wrappers(model).items():
        weight, quantizer, variables = wrapper._weight_vars[0]
        result[name] = quantizer(weight, False, weights=variables).numpy()
    return result


def _units(values: np.ndarray, scale: np.ndarray) -> list[np.ndarray]:
    """``values`` split per scale: per channel when the scale has several entries, else the whole tensor."""
    if scale.size == 1:
        return [values.reshape(-1)]
    axes = [a for a, n in enumerate(scale.shape) if n > 1]
    moved = np.moveaxis(values, axes, list(range(-len(axes), 0)))
    return list(moved.reshape(-1, int(np.prod(scale.shape))).T)


def _assert_on_grid(scheme_name: str, wrapper: q.QuantizeWrapperV2) -> None:
    scheme = kerasq.get_scheme(scheme_name)
    weight, quantizer, variables = wrapper._weight_vars[0]
    values = quantizer(weight, False, weights=variables).numpy()
    grid = quantizer.integer_grid(weight, variables)
    np.testing.assert_array_equal(grid.dequantize(), values)  # Q(w) == codes * scale exactly
    kind = type(scheme).__name__
    for unit in _units(values, grid.scale):
        distinct = np.unique(unit)
        if kind == "Binary":
            assert len(distinct) <= 2 and 0.0 not in distinct
        elif kind == "Ternary":
            assert len(distinct) <= 3
        elif kind == "KMeans":
            assert len(distinct) <= scheme.clusters
        elif kind == "PowerOfTwo":
            magnitudes = np.unique(np.abs(distinct[distinct != 0]))
            np.testing.assert_array_equal(np.log2(magnitudes), np.round(np.log2(magnitudes)))
            assert len(magnitudes) <= 2 ** (scheme.weight_bits - 1) - 1 and len(distinct) <= 15
        elif kind == "DoReFa":
            assert len(distinct) <= 2**scheme.weight_bits and 0.0 not in distinct
        else:  # Linear, PACT: symmetric narrow range
            assert len(distinct) <= 2**scheme.weight_bits - 1
    q_max = {"Binary": 1, "Ternary": 7, "DoReFa": 2**scheme.weight_bits - 1}.get(kind, 127)
    if kind in ("Linear", "PACT"):
        q_max = 2 ** (scheme.weight_bits - 1) - 1
    assert np.abs(grid.codes).max() <= q_max


def _check_scheme(scheme: str, data) -> None:
    float_model = _float_model()
    qat = _apply(_annotated(float_model, scheme))
    assert set(_kerasq_wrappers(qat)) == {"conv", "dw", "fc"}
    # Same float weights: the wrapper quantizes exactly as kerasq's own quantized layers do.
    reference = kerasq.quantized_weights(kerasq.quantize_model(float_model, scheme, first_last_int8=False))
    for name, values in _wrapper_weights(qat).items():
        np.testing.assert_array_equal(values, reference[name], err_msg=f"{scheme} {name}")
    losses = _fit(qat, data)
    assert np.all(np.isfinite(losses)), losses
    assert np.all(np.isfinite(qat.predict(data[0], verbose=0)))
    for wrapper in _kerasq_wrappers(qat).values():
        _assert_on_grid(scheme, wrapper)


@pytest.mark.parametrize("scheme", DEFAULT_SCHEMES)
def test_scheme_trains_on_its_grid(scheme, data):
    _check_scheme(scheme, data)


@pytest.mark.slow
@pytest.mark.parametrize("scheme", SLOW_SCHEMES)
def test_every_other_scheme_trains_on_its_grid(scheme, data):
    _check_scheme(scheme, data)


def test_wrapper_internals():
    """What an exporter reads: the scheme on the config, kerasq quantizers and their variables."""
    qat = _apply(_annotated(_float_model(), "pact"))
    conv = _kerasq_wrappers(qat)["conv"]
    assert conv.quantize_config.scheme == kerasq.get_scheme("pact")
    (weight, quantizer, variables), = conv._weight_vars
    assert weight is conv.layer.kernel or weight.name.endswith("conv/kernel:0")
    assert type(quantizer).__name__ == "LinearWeightQuantizer" and variables == {}
    (activation,) = conv._quantize_activations
    assert type(activation.quantizer).__name__ == "PACTQuantizer"
    assert activation._post_activation_vars["alpha"].name == "quant_conv/post_activation_alpha:0"
    assert conv._output_quantizers == []
    fc = _kerasq_wrappers(qat)["fc"]  # linear output: EMA range
    assert sorted(fc._quantize_activations[0]._post_activation_vars) == ["count", "max", "min"]


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
def test_ttq_and_kmeans_state_initialized_once_and_kept_on_load(data, tmp_path):
    float_model = _float_model()
    for scheme, keys in (("ttq", ("w_p", "w_n")), ("kmeans", ("codebook", "assignments"))):
        qat = _apply(_annotated(float_model, scheme))
        wrapper = _kerasq_wrappers(qat)["conv"]
        weight, _, variables = wrapper._weight_vars[0]
        kernel = float_model.get_layer("conv").kernel.numpy()
        # Initialized from the float model's kernel by quantize_apply.
        if scheme == "ttq":
            r_t = twn_grid(kernel, 0.7, ())[1].numpy()
            np.testing.assert_allclose(variables["w_p"].numpy(), r_t.reshape(()), rtol=1e-6)
            assert variables["w_p"].name == "quant_conv/kernel_w_p:0"
        else:
            centroids, assignments = kmeans_1d(kernel, 16)
            np.testing.assert_array_equal(variables["codebook"].numpy(), centroids)
            np.testing.assert_array_equal(variables["assignments"].numpy(), assignments)
            assert variables["codebook"].name == "quant_conv/kernel_codebook:0"
        initial = {k: variables[k].numpy().copy() for k in keys}
        _fit(qat, data, steps=4)
        trained = {k: variables[k].numpy().copy() for k in keys}
        assert not np.array_equal(trained[keys[0]], initial[keys[0]])  # the scale / codebook trained
        path = str(tmp_path / f"{scheme}.h5")
        qat.save(path)
        with q.quantize_scope(kerasq.custom_objects()):
            loaded = keras.models.load_model(path)
        _, _, loaded_vars = _kerasq_wrappers(loaded)["conv"]._weight_vars[0]
        for key in keys:  # the trained state, not a new initialization from the loaded kernel
            np.testing.assert_array_equal(loaded_vars[key].numpy(), trained[key])
        np.testing.assert_array_equal(loaded.predict(data[0], verbose=0), qat.predict(data[0], verbose=0))


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("extension", ["h5", "keras"])
def test_save_load_round_trip(extension, data, tmp_path):
    """Identical predictions and variables; training resumes. The .keras model starts with a plain
    layer: tfmot 0.8.1's own input QuantizeLayer builds twice when read from .keras (it fails to
    load with or without kerasq; tensorflow/model-optimization PR #1123), .h5 has no such problem."""
    layers = [keras.layers.Reshape((8, 8, 3))] if extension == "keras" else []
    config = kerasq.QuantizeConfig

    float_model = keras.Sequential([
        keras.Input((8, 8, 3)),
        *layers,
        q.quantize_annotate_layer(keras.layers.Conv2D(8, 3, activation="relu"), config("xnor")),
        q.quantize_annotate_layer(keras.layers.DepthwiseConv2D(3, activation="relu"), config("ttq")),
        keras.layers.Flatten(),
        q.quantize_annotate_layer(keras.layers.Dense(4), config(kerasq.schemes.PACT(weight_bits=3, alpha_init=4.0))),
    ])
    qat = _apply(float_model)
    _fit(qat, data)
    path = str(tmp_path / f"model.{extension}")
    qat.save(path)
    with q.quantize_scope(kerasq.custom_objects()):
        loaded = keras.models.load_model(path)
    # Same variables in the same order (a loaded inner layer's names gain the wrapper's prefix).
    assert [w.name.split("/")[-1] for w in loaded.weights] == [w.name.split("/")[-1] for w in qat.weights]
    for saved, restored in zip(qat.weights, loaded.weights):
        np.testing.assert_array_equal(restored.numpy(), saved.numpy(), err_msg=saved.name)
    x = data[0]
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), qat.predict(x, verbose=0))
    assert [w.quantize_config for w in _kerasq_wrappers(loaded).values()] == [
        w.quantize_config for w in _kerasq_wrappers(qat).values()
    ]
    assert np.all(np.isfinite(_fit(loaded, data, steps=1)))


def test_mixed_with_default_8bit(data):
    """quantize_annotate_model: kerasq configs where given, tfmot's default 8-bit elsewhere."""
    inputs = keras.Input((8, 8, 3))
    conv = q.quantize_annotate_layer(keras.layers.Conv2D(8, 3, activation="relu", name="conv"), kerasq.QuantizeConfig("twn"))
    a = conv(inputs)
    b = keras.layers.Conv2D(8, 3, activation="relu", name="plain_conv")(inputs)
    x = keras.layers.Add(name="add")([a, b])
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(4, name="fc")(x)
    qat = _apply(q.quantize_annotate_model(keras.Model(inputs, outputs)))
    configs = {layer.layer.name: type(layer.quantize_config).__name__ for layer in qat.layers if isinstance(layer, q.QuantizeWrapperV2)}
    assert configs["conv"] == "QuantizeConfig"
    assert configs["plain_conv"] == "Default8BitConvQuantizeConfig" and configs["fc"] == "Default8BitQuantizeConfig"
    plain_kernel = qat.get_layer("quant_plain_conv")._weight_vars[0][0]
    before = plain_kernel.numpy().copy()
    losses = _fit(qat, data, steps=4)
    assert np.all(np.isfinite(losses))
    assert not np.array_equal(plain_kernel.numpy(), before)
    _assert_on_grid("twn", _kerasq_wrappers(qat)["conv"])


def test_bnn_keeps_latent_weights_clipped(data):
    qat = _apply(_annotated(_float_model(), "bnn"))
    _fit(qat, data, steps=4, lr=0.5)
    for wrapper in _kerasq_wrappers(qat).values():
        weight = wrapper._weight_vars[0][0]
        assert np.abs(weight.numpy()).max() <= 1.0
        assert wrapper.layer.get_config()[next(k for k in ("depthwise_constraint", "kernel_constraint") if k in wrapper.layer.get_config())]


@pytest.mark.parametrize(
    "layer, axis",
    [(keras.layers.Conv2DTranspose(6, 3, strides=2, padding="same"), 2), (keras.layers.Conv1D(6, 3), 2)],
    ids=["Conv2DTranspose", "Conv1D"],
)
def test_other_weight_layers(layer, axis, data):
    """Per-channel int8 on the output channels: axis -2 of Conv2DTranspose's [h, w, out, in] kernel."""
    shape = (8, 8, 3) if isinstance(layer, keras.layers.Conv2DTranspose) else (8, 3)
    x = data[0] if len(shape) == 3 else data[0][:, 0]
    model = keras.Sequential([
        keras.Input(shape),
        q.quantize_annotate_layer(layer, kerasq.QuantizeConfig("int8")),
        keras.layers.Flatten(),
        keras.layers.Dense(4),
    ])
    qat = _apply(model)
    _fit(qat, (x, data[1]))
    (wrapper,) = _kerasq_wrappers(qat).values()
    weight, quantizer, variables = wrapper._weight_vars[0]
    grid = quantizer.integer_grid(weight, variables)
    assert grid.scale.shape[axis] == 6 and grid.scale.size == 6
    assert np.abs(grid.codes).max() == 127


def test_get_config_round_trip():
    configs = [kerasq.QuantizeConfig(name) for name in kerasq.available_schemes()]
    configs += [
        kerasq.QuantizeConfig(kerasq.schemes.Linear(weight_bits=4, per_channel=False), quantize_activations=False),
        kerasq.schemes.Ternary("ttq", threshold=0.5, per_channel=True).quantize_config(),
        kerasq.QuantizeConfig({"class_name": "kerasq>KMeans", "config": {"clusters": 7}}),
    ]
    for config in configs:
        again = kerasq.QuantizeConfig.from_config(config.get_config())
        assert again == config and again.get_config() == config.get_config()
        serialized = keras.utils.serialize_keras_object(config)
        assert serialized["registered_name"] == "kerasq>QuantizeConfig"
        with q.quantize_scope(kerasq.custom_objects()):
            assert keras.utils.deserialize_keras_object(serialized) == config
    assert kerasq.QuantizeConfig("ttq") != kerasq.QuantizeConfig("twn")
    assert kerasq.QuantizeConfig(kerasq.schemes.KMeans(7)).scheme.clusters == 7
    objects = kerasq.custom_objects()
    assert objects["QuantizeConfig"] is kerasq.QuantizeConfig and objects["kerasq>QuantizeConfig"] is kerasq.QuantizeConfig
    assert objects["kerasq>PACTQuantizer"] is kerasq.pact.PACTQuantizer


@pytest.mark.parametrize(
    "layer, name",
    [
        (keras.layers.SeparableConv2D(4, 3), "SeparableConv2D"),
        (keras.layers.BatchNormalization(), "BatchNormalization"),
        (keras.layers.LSTM(4), "LSTM"),
    ],
)
def test_unsupported_layer_names_its_class(layer, name):
    shape = (6, 4) if name == "LSTM" else (8, 8, 3)
    model = keras.Sequential([keras.Input(shape), q.quantize_annotate_layer(layer, kerasq.QuantizeConfig("int8"))])
    with pytest.raises(ValueError, match=f"cannot quantize {name}|{name} layer"):
        _apply(model)
    with pytest.raises(ValueError, match=name):
        kerasq.get_scheme("pact").quantize_config(layer)


def test_activation_tfmot_cannot_wrap_is_refused():
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        q.quantize_annotate_layer(keras.layers.Conv2D(4, 3, activation="relu6"), kerasq.QuantizeConfig("pact")),
    ])
    with pytest.raises(ValueError, match="relu6"):
        _apply(model)


def test_weights_only_config_has_no_activation_quantizer(data):
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        q.quantize_annotate_layer(keras.layers.Conv2D(4, 3, name="conv"), kerasq.QuantizeConfig("twn", quantize_activations=False)),
        keras.layers.BatchNormalization(),
        q.quantize_annotate_layer(keras.layers.ReLU()),
        keras.layers.Flatten(),
        keras.layers.Dense(4),
    ])
    qat = _apply(model)
    wrapper = _kerasq_wrappers(qat)["conv"]
    assert wrapper._quantize_activations == [] and len(wrapper._weight_vars) == 1
    assert np.all(np.isfinite(_fit(qat, data)))

