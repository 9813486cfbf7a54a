"""The kerasq command line: the demo (main job) and the file tools, run as a user would."""

from __future__ import annotations

import contextlib
import io
import json
import os

import pytest

from kerasq.cli import main

_DEMO_LOG = {}


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        assert main(["demo", "--out", str(out), "--epochs", "12", "--qat_epochs", "2"]) == 0
    _DEMO_LOG["text"] = log.getvalue()
    return out


def test_demo_shows_one_progress_bar_per_phase(demo_out):
    text = _DEMO_LOG["text"]
    # One bar per training phase, no per-epoch Keras log lines (those need --verbose).
    assert "Epoch 1/" not in text
    finished_bars = [line.strip() for line in text.splitlines() if " steps - " in line]
    assert len(finished_bars) == 2, text
    assert finished_bars[0].startswith("516/516 steps") and finished_bars[1].startswith("86/86 steps")  # 43 x 12, 43 x 2
    assert "| int8 TFLite accuracy" in text


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


def test_no_arguments_print_the_help_and_exit_2(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: kerasq") and "examples:" in err
    for command in ("demo", "export", "inspect", "eval", "bench", "verify", "debug"):
        assert command in err


@pytest.mark.parametrize("command", ["demo", "export", "inspect", "eval", "bench", "verify", "debug"])
def test_every_command_help_says_what_it_does_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and f"kerasq {command}" in out.split("examples:")[1]


def test_export_refuses_to_overwrite_its_input(trained_float_cnn, tmp_path, capsys):
    model_path = tmp_path / "M.keras"
    trained_float_cnn.save(model_path)
    before = model_path.read_bytes()
    link = tmp_path / "link.keras"
    os.symlink(model_path, link)
    for out in (model_path, tmp_path / "." / "M.keras", link):
        assert main(["export", str(model_path), "--out", str(out), "--dataset", "digits"]) == 2
        err = capsys.readouterr().err.strip()
        assert "would destroy the input" in err and "\n" not in err
    assert model_path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["M.keras", "link.keras"]


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
    methods = ["--method", "kl", "--equalize", "--bias_correction", "empirical"]
    assert main(["export", str(float_path), "--out", str(tmp_path / "kl.tflite"), "--dataset", "digits", *methods]) == 0
    assert main(["export", str(float_path), "--out", str(tmp_path / "none.tflite")]) == 2
    assert "representative_data" in capsys.readouterr().err
    assert not (tmp_path / "none.tflite").exists()
    _, (x_test, y_test) = digits
    for name in ("qat.tflite", "ptq.tflite", "kl.tflite"):
        blob = (tmp_path / name).read_bytes()
        assert tflite_export.inspect(blob).is_integer_only
        assert tflite_export.evaluate(blob, x_test, y_test) > 0.85


def test_debug_reports_every_layer_and_names_a_broken_one(trained_float_cnn, digits, tmp_path, capsys):
    import kerasq
    import numpy as np
    import tflite_export
    from conftest import fit_qat

    qat_path, file_path = tmp_path / "qat.keras", tmp_path / "qat.tflite"
    qmodel = fit_qat(kerasq.quantize_model(trained_float_cnn), digits, epochs=1)
    qmodel.save(qat_path)
    blob = tflite_export.convert(qmodel)
    file_path.write_bytes(blob)
    overlay = tmp_path / "sqnr.json"
    assert main(["debug", str(qat_path), str(file_path), "--samples", "64", "--model_explorer", str(overlay)]) == 0
    out = capsys.readouterr().out
    assert "| conv1 | conv1 |" in out and "no local difference" in out
    assert set(json.loads(overlay.read_text())["results"]) >= {"conv1", "dw2", "pw2", "fc"}

    # The same file with conv1's weight scales doubled: exit 1, and the table names conv1.
    model, _ = tflite_export.flatbuffer.load(blob)
    weight = next(w for w in tflite_export.inspect(blob).weights if w.op_index == 0)
    (tensor,) = [t for t in model.subgraphs[0].tensors if tflite_export.flatbuffer.tensor_name(t) == weight.tensor.name]
    tensor.quantization.scale = np.asarray(tensor.quantization.scale, np.float32) * 2
    broken = tmp_path / "broken.tflite"
    broken.write_bytes(tflite_export.flatbuffer.serialize(model))
    assert main(["debug", str(qat_path), str(broken), "--samples", "64"]) == 1
    assert "First difference: conv1" in capsys.readouterr().out
    assert main(["debug", str(qat_path), str(tmp_path / "missing.tflite")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kerasq debug: error:") and "\n" not in err
