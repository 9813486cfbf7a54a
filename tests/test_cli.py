"""The kerasq command line: the demo (main job) and the file tools, run as a user would."""

from __future__ import annotations

import json

import pytest

from kerasq.cli import main


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--out", str(out), "--epochs", "12", "--qat_epochs", "2"]) == 0
    return out


def test_demo_writes_models_and_report(demo_out, capsys):
    report = (demo_out / "report.md").read_text()
    for row in ("float Keras accuracy", "int8 TFLite accuracy", "parity", "file size", "latency"):
        assert row in report
    assert "integer-only          | yes" in report or "| yes," in report
    assert (demo_out / "int8.tflite").stat().st_size < (demo_out / "float.tflite").stat().st_size


def test_inspect_eval_bench_on_demo_output(demo_out, capsys):
    model = str(demo_out / "int8.tflite")
    assert main(["inspect", model, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["is_integer_only"] is True and len(report["per_channel_ops"]) == 4
    assert main(["eval", model]) == 0
    accuracy = float(capsys.readouterr().out.split("accuracy ")[1].split()[0])
    assert accuracy > 0.85
    assert main(["bench", model, "--runs", "20", "--warmup", "2", "--threads", "1", "2"]) == 0
    assert capsys.readouterr().out.count("median") == 2


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    garbage = tmp_path / "bad.tflite"
    garbage.write_bytes(b"not a model at all")
    assert main(["inspect", str(garbage)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kerasq inspect: error:") and "TFL3" in err and "\n" not in err
    assert main(["inspect", str(tmp_path / "missing.tflite")]) == 2
    assert main(["export", str(tmp_path / "missing.keras"), "--out", str(tmp_path / "x.tflite")]) == 2
    assert not (tmp_path / "x.tflite").exists()


def test_export_saved_models(trained_float_cnn, digits, tmp_path, capsys):
    import kerasq
    import tflite_export
    from conftest import fit_qat

    float_path, qat_path = tmp_path / "float.keras", tmp_path / "qat.keras"
    trained_float_cnn.save(float_path)
    fit_qat(kerasq.quantize_model(trained_float_cnn), digits, epochs=1).save(qat_path)
    # A quantized model exports as trained; a float one needs calibration data (PTQ).
    assert main(["export", str(qat_path), "--out", str(tmp_path / "qat.tflite")]) == 0
    assert main(["export", str(float_path), "--out", str(tmp_path / "ptq.tflite"), "--dataset", "digits"]) == 0
    assert main(["export", str(float_path), "--out", str(tmp_path / "none.tflite")]) == 2
    assert "representative_data" in capsys.readouterr().err
    assert not (tmp_path / "none.tflite").exists()
    _, (x_test, y_test) = digits
    for name in ("qat.tflite", "ptq.tflite"):
        blob = (tmp_path / name).read_bytes()
        assert tflite_export.inspect(blob).is_integer_only
        assert tflite_export.evaluate(blob, x_test, y_test) > 0.85
