"""Reliability of the user-facing surface: safe writes, clear refusals of bad input, the CLI's error contract."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest

import kerasq
import tflite_export
from kerasq.cli import main
from kerasq.compat import keras, tf
from tflite_export import files

AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _small_cnn(rescale: bool = False) -> keras.Model:
    inputs = keras.Input((8, 8, 1))
    x = keras.layers.Rescaling(1 / 255.0)(inputs) if rescale else inputs
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="fc")(x))


@pytest.fixture(scope="module")
def samples():
    return np.random.RandomState(0).rand(96, 8, 8, 1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Writes


def test_save_leaves_a_symlink_at_the_old_temporary_name_alone(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    out = tmp_path / "model.tflite"
    os.symlink(victim, str(out) + ".tmp")  # where a fixed-name temporary file would go
    files.save(b"TFL3 bytes", out)
    assert victim.read_text() == "keep me"
    assert out.read_bytes() == b"TFL3 bytes" and not out.is_symlink()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.tflite", "model.tflite.tmp", "victim.txt"]


def test_save_all_writes_every_file_or_none(tmp_path, monkeypatch):
    old = {tmp_path / name: f"old {name}".encode() for name in ("a.tflite", "b.tflite", "report.md")}
    for path, data in old.items():
        path.write_bytes(data)
    calls = {"n": 0}
    real_fsync = os.fsync

    def failing_fsync(fd):  # the third file's flush fails, as on a full disk
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        files.save_all({path: b"new" for path in old})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert {path: path.read_bytes() for path in old} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tflite", "b.tflite", "report.md"]
    assert files.save_all({path: b"new" for path in old}) == [str(p) for p in old]
    assert all(path.read_bytes() == b"new" for path in old)


def test_save_refuses_a_folder_and_a_missing_folder(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder"):
        files.save(b"x", tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        files.save(b"x", tmp_path / "missing" / "m.tflite")
    assert list(tmp_path.iterdir()) == []


def test_output_folder_is_checked_before_any_work(tmp_path):
    a_file = tmp_path / "results"
    a_file.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="is a file"):
        files.check_output_folder(a_file)
    (tmp_path / "out" / "int8.tflite").mkdir(parents=True)
    with pytest.raises(IsADirectoryError, match="int8.tflite"):
        files.check_output_folder(tmp_path / "out", ["float.tflite", "int8.tflite"])
    assert files.check_output_folder(tmp_path / "new" / "deep") == str(tmp_path / "new" / "deep")
    assert os.listdir(tmp_path / "new" / "deep") == []


@pytest.mark.skipif(AS_ROOT, reason="root may write anywhere")
def test_output_folder_without_write_permission_is_refused(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(PermissionError, match="permission denied"):
            files.check_output_folder(locked)
    finally:
        locked.chmod(0o700)


def test_demo_refuses_a_bad_output_before_training(tmp_path, capsys):
    a_file = tmp_path / "taken"
    a_file.write_text("results of another run")
    start = time.perf_counter()
    assert main(["demo", "--out", str(a_file)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kerasq demo: error:") and "is a file" in err and "\n" not in err
    assert time.perf_counter() - start < 10, "the output must be checked before training"
    assert a_file.read_text() == "results of another run"
    data_dir = tmp_path / "data"
    (data_dir / "mnist").mkdir(parents=True)
    for out, message in ((data_dir, "is the data folder"), (data_dir / "mnist", "would destroy the input")):
        assert main(["demo", "--dataset", "mnist", "--data_dir", str(data_dir), "--out", str(out)]) == 2
        assert message in capsys.readouterr().err
    assert sorted(os.listdir(data_dir / "mnist")) == []


# ---------------------------------------------------------------------------------------------
# The command line: one line and exit 2 for a user error, the traceback only with --debug


def test_cli_folder_fifo_and_permission_errors_are_one_line(tmp_path, capsys):
    assert main(["inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kerasq inspect: error:") and "\n" not in err
    fifo = tmp_path / "pipe.tflite"
    os.mkfifo(fifo)
    # In a child process: a FIFO that blocks open() would otherwise hang the test session.
    done = subprocess.run([sys.executable, "-m", "kerasq.cli", "inspect", str(fifo)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().startswith("kerasq inspect: error:") and "\n" not in done.stderr.strip()
    if not AS_ROOT:
        locked = tmp_path / "locked.tflite"
        locked.write_bytes(b"x" * 64)
        locked.chmod(0o000)
        assert main(["inspect", str(locked)]) == 2
        err = capsys.readouterr().err.strip()
        assert "ermission" in err and "\n" not in err


def test_cli_debug_flag_shows_the_traceback(tmp_path, capsys):
    garbage = tmp_path / "bad.tflite"
    garbage.write_bytes(b"not a model at all")
    with pytest.raises(ValueError, match="TFL3"):
        main(["--debug", "inspect", str(garbage)])
    with pytest.raises(ValueError, match="TFL3"):
        main(["inspect", str(garbage), "--debug"])
    assert main(["inspect", str(garbage)]) == 2


def test_cli_unexpected_failure_is_one_line_with_exit_1(monkeypatch, capsys):
    import tflite_export.inspect as inspect_module

    def broken(_):
        raise KeyError("internal")

    monkeypatch.setattr(inspect_module, "inspect", broken)
    monkeypatch.setattr(tflite_export, "inspect", broken)
    assert main(["inspect", "whatever.tflite"]) == 1
    err = capsys.readouterr().err.strip()
    assert "unexpected error (KeyError)" in err and "--debug" in err and "\n" not in err


# ---------------------------------------------------------------------------------------------
# Inputs


@pytest.mark.parametrize("bits", [2.5, True, "4", 9, 1])
def test_bit_widths_must_be_whole_numbers_in_range(bits):
    with pytest.raises(ValueError, match="weight_bits must be a whole number in"):
        kerasq.schemes.Linear(weight_bits=bits)
    assert kerasq.schemes.Linear(weight_bits=4.0, activation_bits=np.int64(6)).weight_bits == 4


def test_tensor_and_unbatched_dataset_calibrate_like_an_array(samples):
    model = _small_cnn()
    blobs = []
    for data in (samples, tf.constant(samples), tf.data.Dataset.from_tensor_slices(samples),
                 tf.data.Dataset.from_tensor_slices((samples, np.zeros(len(samples)))),
                 tf.data.Dataset.from_tensor_slices(samples).batch(7)):
        qmodel = kerasq.quantize_model(model, "int8", calibration_data=data)
        blobs.append(tflite_export.convert(qmodel))
    assert all(blob == blobs[0] for blob in blobs[1:])


def test_wrong_shapes_are_still_named(samples):
    qmodel = kerasq.quantize_model(_small_cnn(), "int8")
    with pytest.raises(ValueError, match=r"sample shape \(8, 8\), the model expects \(8, 8, 1\)"):
        kerasq.calibrate(qmodel, tf.data.Dataset.from_tensor_slices(samples[..., 0]).batch(8))


def test_implausible_calibration_data_is_refused_or_flagged(samples):
    model = _small_cnn()
    with pytest.raises(ValueError, match=r"reaches \|x\| = 1e\+30.*x / 255"):
        kerasq.quantize_model(model, "int8", calibration_data=samples * 1e30)
    with pytest.raises(ValueError, match="reaches"):
        kerasq.ptq.quantize(model, samples * 1e30, verbose=0)
    pixels = np.round(samples * 255).astype(np.uint8)
    with pytest.warns(UserWarning, match="raw 8-bit pixels.*x / 255"):
        kerasq.quantize_model(model, "int8", calibration_data=pixels)
    with pytest.warns(UserWarning, match="raw 8-bit pixels"):
        tflite_export.convert(kerasq.quantize_model(model, "int8"), pixels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kerasq.quantize_model(model, "int8", calibration_data=samples)  # scaled floats: no warning
        # A model that rescales its own input expects raw pixels.
        rescaling = _small_cnn(rescale=True)
        qmodel = kerasq.quantize_model(rescaling, "int8", calibration_data=pixels)
        assert qmodel.rescaled_inputs == (rescaling.inputs[0].name.split(":")[0],)
    with kerasq.quantize_scope():
        copy = kerasq.QuantizedModel.from_config(qmodel.get_config())
    assert copy.rescaled_inputs == qmodel.rescaled_inputs


def test_layer_schemes_naming_a_folded_batch_norm_and_requantizing_are_explained():
    model = _small_cnn()
    with pytest.raises(ValueError, match="'bn', a BatchNormalization that quantize_model folds into the layer before it"):
        kerasq.quantize_model(model, "int8", layer_schemes={"bn": "pact"})
    qmodel = kerasq.quantize_model(model, "int8")
    with pytest.raises(ValueError, match="is already quantized.*quantize the float model it came from"):
        kerasq.quantize_model(qmodel, "int8")


def test_callbacks_are_reachable_after_import_kerasq():
    code = "import kerasq; print(kerasq.callbacks.INQ.__name__)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "INQ", done.stderr[-2000:]


def test_cli_file_size_limit_is_one_line_and_leaves_nothing(tmp_path, samples):
    resource = pytest.importorskip("resource")
    qmodel = kerasq.quantize_model(_small_cnn(), "int8", calibration_data=samples)
    model_path = tmp_path / "q.keras"
    qmodel.save(model_path)
    out = tmp_path / "out"
    out.mkdir()

    def limit_file_size():  # in the child: files may not grow past 1 kB (the export is larger)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    done = subprocess.run([sys.executable, "-m", "kerasq.cli", "export", str(model_path), "--out", str(out / "q.tflite")],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit_file_size)
    err = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr[-3000:]
    assert err[-1].startswith("kerasq export: error:") and "File too large" in err[-1]
    assert os.listdir(out) == []
