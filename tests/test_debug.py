"""tflite_export.debug: per-layer errors between the Keras model and its file, and where they enter."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from conftest import fit_qat

import kerasq
import tflite_export
from tflite_export import flatbuffer
from tflite_export.debug import debug


@pytest.fixture(scope="module")
def exported(trained_float_cnn, digits):
    qmodel = fit_qat(kerasq.quantize_model(trained_float_cnn, "int8"), digits, epochs=1, lr=5e-4)
    return qmodel, tflite_export.convert(qmodel)


def with_scaled(blob: bytes, tensor: str, factor: float) -> bytes:
    """The file with one tensor's quantization scales multiplied by ``factor``."""
    model, _ = flatbuffer.load(blob)
    (found,) = [t for t in model.subgraphs[0].tensors if flatbuffer.tensor_name(t) == tensor]
    found.quantization.scale = np.asarray(found.quantization.scale, np.float32) * np.float32(factor)
    return flatbuffer.serialize(model)


def test_exported_file_matches_every_layer_exactly(exported, digits):
    qmodel, blob = exported
    _, (x_test, _) = digits
    report = debug(qmodel, blob, x_test[:200], batch_size=64)
    names = [e.layer for e in report.layers]
    assert names == ["image_quantize", "conv1", "dw2", "pw2", "pool2", "gap", "fc"]
    assert report.first_divergence is None and report.unmatched == []
    for e in report.layers:
        assert e.max_lsb == 0 and e.bit_exact == 1.0, e
        # Keras computes in float32: the values agree to float32 rounding of the codes.
        assert e.sqnr_db > 120, e
        if e.layer != "image_quantize":
            assert e.local_max_lsb == 0 and e.local_bit_exact == 1.0, e
    assert report.n_samples == 200
    text = str(report)
    assert "| conv1 | conv1 |" in text and "no local difference" in text


def test_a_mis_scaled_weight_is_found_where_sqnr_collapses(exported, digits):
    """dw2's weights read at twice their scale: dw2 is where the difference enters, and its SQNR
    collapses there while every layer before it stays exact."""
    qmodel, blob = exported
    _, (x_test, _) = digits
    weight = next(w for w in tflite_export.inspect(blob).weights if w.op_name == "DEPTHWISE_CONV_2D")
    report = debug(qmodel, with_scaled(blob, weight.tensor.name, 2.0), x_test[:128])
    assert report.first_divergence == "dw2"
    dw2 = report.layer("dw2")
    assert dw2.local_max_lsb > 10 and dw2.sqnr_db < 20
    for name in ("image_quantize", "conv1"):
        assert report.layer(name).max_lsb == 0
    # The layers after it compute exactly what they are given: the error is inherited, not added.
    assert report.layer("pw2").sqnr_db < 20
    assert report.layer("gap").local_max_lsb == 0


def test_a_mis_scaled_output_grid_is_caught_where_it_is_written_or_read(exported, digits):
    """pw2's output scale ×1.5: pw2 requantizes onto the wrong grid, and MAX_POOL_2D copies its
    codes onto pool2's unchanged grid; the difference enters at one of the two, never before."""
    qmodel, blob = exported
    _, (x_test, _) = digits
    report = debug(qmodel, with_scaled(blob, "pw2", 1.5), x_test[:128], tolerance_lsb=1)
    assert report.first_divergence in ("pw2", "pool2")
    assert report.layer("pool2").local_max_lsb > 10
    assert all(report.layer(name).max_lsb == 0 for name in ("image_quantize", "conv1", "dw2"))


def test_optimized_kernels_and_model_explorer_overlay(exported, digits, tmp_path):
    qmodel, blob = exported
    _, (x_test, _) = digits
    report = debug(qmodel, blob, x_test[:64], runtime="optimized", tolerance_lsb=1)
    assert report.runtime == "optimized" and report.first_divergence is None
    # The optimized kernels round some ops differently by 1 LSB; layers downstream may amplify
    # that, but no layer adds more than 1 LSB of its own.
    assert all(e.local_max_lsb is None or e.local_max_lsb <= 1 for e in report.layers)
    path = report.to_model_explorer(tmp_path / "sqnr.json")
    data = json.loads(open(path).read())
    assert set(data["results"]) == {e.tensor for e in report.layers if math.isfinite(e.sqnr_db)}
    assert data["gradient"][0]["stop"] == 0
    payload = report.to_dict()
    assert payload["layers"][1]["layer"] == "conv1" and payload["first_divergence"] is None
    with pytest.raises(ValueError, match="metric"):
        report.to_model_explorer(tmp_path / "x.json", metric="nope")


def test_bad_inputs_get_one_clear_error(exported, trained_float_cnn, digits):
    qmodel, blob = exported
    _, (x_test, _) = digits
    with pytest.raises(ValueError, match="QuantizedModel"):
        debug(trained_float_cnn, blob, x_test[:8])
    with pytest.raises(ValueError, match="does not match the model input"):
        debug(qmodel, blob, np.zeros((4, 9, 9, 1), np.float32))
    with pytest.raises(ValueError, match="at least one sample"):
        debug(qmodel, blob, x_test[:0])
    with pytest.raises(ValueError, match="runtime"):
        debug(qmodel, blob, x_test[:8], runtime="xnnpack")
    with pytest.raises(flatbuffer.InvalidModelError):
        debug(qmodel, b"not a model at all", x_test[:8])
