"""tflite_export.android: adb missing, no device, and a full run against a fake adb."""

from __future__ import annotations

import json
import stat
import sys
import textwrap

import pytest

from tflite_export import android

# What LiteRT's benchmark_model prints (tflite/tools/benchmark/benchmark_model.cc): one
# statistics line for the warm-up, one for the timed runs, then the summary line.
CANNED_OUTPUT = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Min num runs: [50]
INFO: Num threads: [1]
INFO: Graph: [/data/local/tmp/model.tflite]
INFO: Use xnnpack: [1]
INFO: Loaded model /data/local/tmp/model.tflite
INFO: Initialized session in 3.482ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=2931 first=412 curr=160 min=151 max=412 avg=170.555 std=22 p5=155 median=167 p95=190

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=5820 first=175 curr=166 min=149 max=1024 avg=171.25 std=19 p5=153 median=168 p95=193

INFO: Inference timings in us: Init: 3482, First inference: 412, Warmup (avg): 170.555, Inference (avg): 171.25
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE \
to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=2.5 overall=3.1
"""


def _write_fake_adb(directory, *, devices: str, log) -> None:
    """An executable ``adb`` that records its argv (JSON lines) and answers like the real one."""
    script = textwrap.dedent(f"""\
        #!{sys.executable}
        import json, sys
        args = sys.argv[1:]
        with open({str(log)!r}, "a") as f:
            f.write(json.dumps(args) + "\\n")
        if args == ["devices"]:
            sys.stdout.write({devices!r})
        elif len(args) >= 3 and args[2] == "shell" and "--graph=" in args[-1]:
            sys.stdout.write({CANNED_OUTPUT!r})
        elif len(args) >= 3 and args[2] == "shell" and args[-1].startswith("test -x"):
            sys.stdout.write("found\\n")
        elif len(args) >= 3 and args[2] == "push":
            sys.stdout.write(args[3] + ": 1 file pushed, 0 skipped.\\n")
        sys.exit(0)
        """)
    path = directory / "adb"
    path.write_text(script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


@pytest.fixture
def model_file(tmp_path):
    path = tmp_path / "model.tflite"
    path.write_bytes(b"\x18\x00\x00\x00TFL3" + bytes(16))
    return path


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    directory = tmp_path / "bin"
    directory.mkdir()
    monkeypatch.setenv("PATH", str(directory))  # nothing else: no real adb can interfere
    return directory


def _calls(log) -> list[list[str]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def test_no_adb_on_path(fake_bin, model_file):
    with pytest.raises(RuntimeError, match=r"'adb' was not found on PATH: install Android SDK platform-tools"):
        android.benchmark_on_device(model_file)


def test_no_device_attached(fake_bin, model_file, tmp_path):
    log = tmp_path / "argv.log"
    _write_fake_adb(fake_bin, devices="List of devices attached\n\n", log=log)
    with pytest.raises(RuntimeError, match=r"no Android device attached .*USB debugging"):
        android.benchmark_on_device(model_file)
    assert _calls(log) == [["devices"]]  # nothing pushed


def test_unauthorized_device(fake_bin, model_file, tmp_path):
    log = tmp_path / "argv.log"
    _write_fake_adb(fake_bin, devices="List of devices attached\nR58M123\tunauthorized\n\n", log=log)
    with pytest.raises(RuntimeError, match=r"no Android device is ready .*R58M123 \(unauthorized\)"):
        android.benchmark_on_device(model_file)


def test_benchmark_with_fake_device(fake_bin, model_file, tmp_path):
    log = tmp_path / "argv.log"
    _write_fake_adb(fake_bin, devices="* daemon started successfully\nList of devices attached\nR58M123\tdevice\n\n",
                    log=log)
    binary = tmp_path / "android_aarch64_benchmark_model"
    binary.write_bytes(b"\x7fELF")
    result = android.benchmark_on_device(model_file, benchmark_binary=binary, num_threads=2, use_xnnpack=False,
                                         runs=20)

    assert result["avg_us"] == 171.25
    assert result["avg_ms"] == pytest.approx(0.17125)
    assert result["init_us"] == 3482
    assert result["first_inference_us"] == 412
    assert result["warmup_avg_us"] == 170.555
    assert result["count"] == 5820  # the timed runs' line, not the warm-up's
    assert (result["min_us"], result["max_us"], result["std_us"]) == (149, 1024, 19)
    assert (result["p5_us"], result["median_us"], result["p95_us"]) == (153, 168, 193)
    assert result["serial"] == "R58M123"
    assert result["output"] == CANNED_OUTPUT

    command = ("/data/local/tmp/benchmark_model --graph=/data/local/tmp/model.tflite --num_threads=2 "
               "--use_xnnpack=false --num_runs=20")
    assert result["command"] == command
    assert _calls(log) == [
        ["devices"],
        ["-s", "R58M123", "push", str(model_file), "/data/local/tmp/model.tflite"],
        ["-s", "R58M123", "push", str(binary), "/data/local/tmp/benchmark_model"],
        ["-s", "R58M123", "shell", "chmod 755 /data/local/tmp/benchmark_model"],
        ["-s", "R58M123", "shell", command],
    ]


def test_binary_already_on_device_and_serial(fake_bin, model_file, tmp_path):
    log = tmp_path / "argv.log"
    _write_fake_adb(fake_bin, devices="List of devices attached\nA1\tdevice\nB2\tdevice\n", log=log)
    with pytest.raises(RuntimeError, match="several Android devices .*serial="):
        android.benchmark_on_device(model_file)
    result = android.benchmark_on_device(model_file, serial="B2")
    assert result["avg_ms"] == pytest.approx(0.17125)
    calls = _calls(log)[-3:]
    assert calls[0] == ["-s", "B2", "push", str(model_file), "/data/local/tmp/model.tflite"]
    assert calls[1][:3] == ["-s", "B2", "shell"] and calls[1][3].startswith("test -x /data/local/tmp/benchmark_model")
    expected = ("/data/local/tmp/benchmark_model --graph=/data/local/tmp/model.tflite --num_threads=1 "
                "--use_xnnpack=true --num_runs=50")
    assert calls[2] == ["-s", "B2", "shell", expected]


def test_parse_older_format_and_all_same():
    text = "INFO: count=50 curr=812(all same) p5=812 median=812 p95=812\n" \
           "Average inference timings in us: Warmup: 83235, Init: 38467, Inference: 79760.9\n"
    figures = android.parse_benchmark_output(text)
    assert figures["avg_us"] == 79760.9 and figures["init_us"] == 38467 and figures["warmup_avg_us"] == 83235
    assert figures["count"] == 50 and figures["min_us"] == figures["max_us"] == 812 and figures["std_us"] == 0
    with pytest.raises(ValueError, match="no 'Inference timings"):
        android.parse_benchmark_output("ERROR: Could not open model\n")


def test_bad_arguments(fake_bin, model_file, tmp_path):
    with pytest.raises(ValueError, match="num_threads"):
        android.benchmark_on_device(model_file, num_threads=0)
    with pytest.raises(FileNotFoundError, match="no model file"):
        android.benchmark_on_device(tmp_path / "missing.tflite")


def test_cli_bench_on_android_without_adb_exits_2_with_one_line(tmp_path, monkeypatch, capsys):
    from kerasq.cli import main

    model = tmp_path / "m.tflite"
    model.write_bytes(b"\x00" * 16)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert main(["bench", str(model), "--android"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kerasq bench: error:") and "adb" in err and "\n" not in err
