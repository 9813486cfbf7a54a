"""tflite_export.verify: one int8 file on LiteRT XNNPACK, LiteRT BUILTIN_REF, TFLite Micro and the
numpy reference, and TFLite Micro's smallest tensor arena."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import fit_qat

import kerasq
import tflite_export
from ai_edge_litert import schema_py_generated as schema
from kerasq.cli import main
from tflite_export.flatbuffer import load, serialize
from tflite_export.runtime import quantize_input

N_SAMPLES = 200


def _micro_installed() -> bool:
    try:
        import tflite_micro.python.tflite_micro.runtime  # noqa: F401
    except ImportError:
        return False
    return True


needs_micro = pytest.mark.skipif(not _micro_installed(), reason="pip install tflite-micro")


@pytest.fixture(scope="module")
def exported(trained_float_cnn, digits):
    kerasq.keras.utils.set_random_seed(0)  # the same model whichever tests ran before
    qmodel = fit_qat(kerasq.quantize_model(trained_float_cnn, "int8"), digits, epochs=2, lr=5e-4)
    return tflite_export.convert(qmodel)


@pytest.fixture(scope="module")
def x_test(digits):
    return digits[1][0][:N_SAMPLES]


@pytest.fixture(scope="module")
def report(exported, x_test):
    return tflite_export.verify(exported, x_test)


def _input_codes(blob: bytes, x: np.ndarray) -> np.ndarray:
    detail = tflite_export.runtime.make_interpreter(blob).get_input_details()[0]
    scale, zero_point = detail["quantization"]
    return quantize_input(x, scale, zero_point, np.int8)


def test_every_runtime_within_one_lsb_of_builtin_ref(report, exported, x_test):
    assert report.n_samples == N_SAMPLES and report.baseline == "reference_kernels"
    assert [r.name for r in report.runtimes] == ["xnnpack", "reference_kernels", "micro", "numpy"]
    baseline = report["reference_kernels"]
    assert baseline.status == "compared" and baseline.max_abs_lsb == 0 and baseline.differing == 0
    (out,) = report["xnnpack"].outputs
    assert out.dtype == "int8" and out.shape == (10,) and out.total == N_SAMPLES * 10
    assert out.scale is not None and out.zero_point is not None
    for name in ("xnnpack", "micro") if _micro_installed() else ("xnnpack",):
        result = report[name]
        assert result.status == "compared", result.reason
        assert result.max_abs_lsb <= 1, name
        assert result.outputs[0].top1_agreement >= 0.99, name
    assert report.ok(max_lsb=1)

    # The counts are the ones an independent run gives.
    ref = tflite_export.run(exported, x_test, dequantize=False, reference_kernels=True).astype(int)
    fast = tflite_export.run(exported, x_test, dequantize=False).astype(int)
    delta = np.abs(fast - ref)
    assert out.max_abs_lsb == delta.max()
    assert out.differing == np.count_nonzero(delta)
    assert out.bit_exact_fraction == pytest.approx(np.mean(delta == 0))
    assert out.top1_agreement == pytest.approx(np.mean(fast.argmax(1) == ref.argmax(1)))
    assert out.max_abs_diff == pytest.approx(out.max_abs_lsb * out.scale)
    # Measured on this model: XNNPACK ~18 % of logits 1 LSB off BUILTIN_REF (its int8 MEAN
    # rounds once where the reference kernels round twice), so a 0-LSB bound fails.
    assert report.ok(max_lsb=0) == (delta.max() == 0)
    strict = tflite_export.verify(exported, x_test, runtimes=("xnnpack", "reference_kernels"), arena=False, max_lsb=0)
    assert strict.max_lsb == 0 and strict.ok() == (delta.max() == 0) and strict.to_dict()["max_lsb"] == 0
    if delta.max() > 0:
        assert "FAIL: xnnpack" in str(strict) and "kerasq.Target('xnnpack'), 'reference' or 'micro'" in str(strict)
    with pytest.raises(ValueError, match="max_lsb"):
        tflite_export.verify(exported, x_test, max_lsb=-1)


def test_numpy_reference_is_bit_exact_with_builtin_ref(report):
    result = report["numpy"]
    assert result.status == "compared", result.reason
    assert result.max_abs_lsb == 0 and result.differing == 0
    assert result.outputs[0].bit_exact_fraction == 1.0


def test_report_table_dict_and_callable_module(report, exported, x_test):
    import tflite_export.verify as module

    assert callable(tflite_export.verify) and module.verify is not None
    assert isinstance(report, module.VerifyReport)
    text = str(report)
    for word in ("xnnpack", "reference_kernels *", "micro", "numpy", "max|Δ| LSB", "bit-exact", "OK:"):
        assert word in text, word
    data = json.loads(json.dumps(report.to_dict()))
    assert data["ok"] is True and data["n_samples"] == N_SAMPLES
    assert [r["name"] for r in data["runtimes"]] == ["xnnpack", "reference_kernels", "micro", "numpy"]
    # int8 codes are used as they are: the same report as from the float images.
    codes = _input_codes(exported, x_test)
    again = module.verify(exported, codes, runtimes=("xnnpack", "reference_kernels"), arena=False)
    assert again["xnnpack"].outputs == report["xnnpack"].outputs
    assert again.arena is None and again.arena_reason == "not requested"
    with pytest.raises(KeyError):
        again["micro"]


# Runs int8 codes through TFLite Micro with a given arena (argv: model, codes.npy, arena bytes),
# in a child process since TFLite Micro can end the process on a tiny arena; prints the output
# codes as JSON or "failed: ...".
_MICRO_SCRIPT = r"""
import json, sys
import numpy as np
from tflite_micro.python.tflite_micro import runtime
blob = open(sys.argv[1], "rb").read()
codes = np.load(sys.argv[2])
try:
    interpreter = runtime.Interpreter.from_bytes(blob, arena_size=int(sys.argv[3]))
    outputs = []
    for i in range(len(codes)):
        interpreter.set_input(codes[i : i + 1], 0)
        interpreter.invoke()
        outputs.append(interpreter.get_output(0)[0].tolist())
    print(json.dumps(outputs))
except RuntimeError as error:
    print("failed:", error)
"""


@needs_micro
def test_smallest_arena_works_and_ten_percent_less_fails(report, exported, x_test, tmp_path):
    arena = report.arena
    assert arena is not None, report.arena_reason
    assert arena.granularity == 16 and arena.smallest_bytes % 16 == 0
    # Measured: 5,744 bytes for this model, equal to what TFLM's allocator reports as used.
    assert 1_000 < arena.smallest_bytes <= arena.used_bytes + 15
    assert arena.used_bytes < arena.probe_arena_bytes
    assert tflite_export.verify.micro_arena_size(exported) == arena

    model_path, codes_path = tmp_path / "m.tflite", tmp_path / "codes.npy"
    model_path.write_bytes(exported)
    codes = _input_codes(exported, x_test[:50])
    np.save(codes_path, codes)

    def run(size: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _MICRO_SCRIPT, str(model_path), str(codes_path), str(size)],
                              capture_output=True, text=True, timeout=120)

    fits = run(arena.smallest_bytes)
    assert fits.returncode == 0 and not fits.stdout.startswith("failed"), fits.stdout + fits.stderr
    micro = np.asarray(json.loads(fits.stdout))
    ref = tflite_export.run(exported, codes, dequantize=False, reference_kernels=True).astype(int)
    assert np.abs(micro - ref).max() <= 1
    assert np.mean(micro.argmax(1) == ref.argmax(1)) >= 0.99
    smaller = run(int(arena.smallest_bytes * 0.9))
    # TFLM raises for this size (it only segfaults for arenas of a few hundred bytes).
    assert smaller.returncode != 0 or smaller.stdout.startswith("failed"), smaller.stdout
    # One alignment step below the smallest already fails.
    below = run(arena.smallest_bytes - arena.granularity)
    assert below.returncode != 0 or below.stdout.startswith("failed"), below.stdout


def _with_reduce_prod(blob: bytes) -> bytes:
    """The model with its MEAN turned into REDUCE_PROD: LiteRT runs it, TFLite Micro has no kernel."""
    model, _ = load(blob)
    for code in model.operatorCodes:
        if code.builtinCode == schema.BuiltinOperator.MEAN:
            code.builtinCode = code.deprecatedBuiltinCode = schema.BuiltinOperator.REDUCE_PROD
    return serialize(model)


@needs_micro
def test_an_op_micro_lacks_is_reported_not_raised(exported, x_test):
    report = tflite_export.verify(_with_reduce_prod(exported), x_test[:20])
    micro = report["micro"]
    assert micro.status == "unavailable" and not micro.available
    assert "REDUCE_PROD" in micro.reason
    assert report.arena is None and "REDUCE_PROD" in report.arena_reason
    # XNNPACK's runtime still runs and is compared; how far its REDUCE_PROD (a product of 16 int8
    # values requantized once) lands from the reference kernel's depends on the trained model.
    assert report["xnnpack"].status == "compared" and report["xnnpack"].max_abs_lsb is not None
    # The numpy reference either computes REDUCE_PROD exactly or says it cannot.
    numpy_result = report["numpy"]
    assert numpy_result.status == "unavailable" or numpy_result.max_abs_lsb == 0
    assert "micro: unavailable:" in str(report)
    with pytest.raises(tflite_export.verify.RuntimeUnavailableError, match="REDUCE_PROD"):
        tflite_export.verify.micro_arena_size(_with_reduce_prod(exported))


def test_missing_micro_and_reference_are_reported(exported, x_test, monkeypatch):
    # A None entry in sys.modules makes the import raise ImportError, as if not installed.
    for name in ("tflite_micro", "tflite_micro.python.tflite_micro.runtime"):
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "tflite_export.reference", None)
    report = tflite_export.verify(exported, x_test[:20])
    for name in ("micro", "numpy"):
        assert report[name].status == "unavailable", name
    assert "tflite_micro is not installed" in report["micro"].reason
    assert "tflite_export.reference" in report["numpy"].reason
    assert report.arena is None and "not installed" in report.arena_reason
    assert report.ok() and report["xnnpack"].status == "compared"
    with pytest.raises(tflite_export.verify.RuntimeUnavailableError, match="not installed"):
        tflite_export.verify.micro_arena_size(exported)


def test_bad_inputs_raise_one_clear_value_error(exported, x_test, tmp_path):
    with pytest.raises(ValueError, match=r"expected shape \(N, 8, 8, 1\)"):
        tflite_export.verify(exported, x_test[:5, :4])
    with pytest.raises(ValueError, match="int8"):
        tflite_export.verify(exported, x_test[:5].astype(np.int32))
    with pytest.raises(ValueError, match="TFL3"):
        tflite_export.verify(b"not a model at all", x_test[:5])
    # A valid header over a broken body: LiteRT's flatbuffer verifier rejects it.
    with pytest.raises(ValueError, match="LiteRT cannot load the model") as error:
        tflite_export.verify(exported[:200], x_test[:5])
    assert "\n" not in str(error.value)
    with pytest.raises(ValueError, match="runtimes"):
        tflite_export.verify(exported, x_test[:5], runtimes=("xnnpack", "gpu"))
    with pytest.raises(FileNotFoundError):
        tflite_export.verify(tmp_path / "missing.tflite", x_test[:5])


def test_cli_verify_exit_codes(exported, tmp_path, capsys, monkeypatch):
    path = tmp_path / "int8.tflite"
    path.write_bytes(exported)
    assert main(["verify", str(path), "--samples", "40"]) == 0
    out = capsys.readouterr().out
    assert "40 samples" in out and "reference_kernels *" in out and "OK:" in out

    # A runtime more than 1 LSB away from BUILTIN_REF makes the exit status 1.
    import tflite_export.verify as module

    real = module._run_litert

    def off_by_three(content, codes, batch_size, reference_kernels):
        outputs, details = real(content, codes, batch_size, reference_kernels)
        return [np.clip(o.astype(int) + 3, -128, 127).astype(o.dtype) for o in outputs], details

    monkeypatch.setattr(module, "_run_litert", off_by_three)
    assert main(["verify", str(path), "--samples", "20"]) == 1
    assert "FAIL" in capsys.readouterr().out
    monkeypatch.undo()

    with pytest.raises(SystemExit) as exit_info:
        main(["verify", "--help"])
    assert exit_info.value.code == 0
    assert "kerasq verify" in capsys.readouterr().out.split("examples:")[1]

    for argv in (["verify", str(tmp_path / "missing.tflite")], ["verify", str(path), "--samples", "0"]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("kerasq verify: error:") and "\n" not in err
