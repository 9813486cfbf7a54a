"""Time a ``.tflite`` file on an attached Android device with LiteRT's ``benchmark_model``.

:func:`benchmark_on_device` drives ``adb``: it pushes the model (and, if given, the benchmark
binary) to the device, runs ``benchmark_model`` there and parses the latency it reports. It needs
``adb`` on ``PATH`` (Android SDK platform-tools, or Debian's ``adb`` package), a device with USB
debugging enabled and authorized, and LiteRT's prebuilt Android benchmark binary. Only the
standard library is used; nothing here imports TensorFlow or LiteRT.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from typing import Any

__all__ = ["benchmark_on_device", "parse_benchmark_output"]

_DEVICE_DIR = "/data/local/tmp"
_ADB_TIMEOUT = 60.0
_PUSH_TIMEOUT = 600.0

# "Inference timings in us: Init: 5685, First inference: 18535, Warmup (avg): 14462.3, Inference (avg): 14575.2"
_TIMINGS = re.compile(
    r"Inference timings in us:\s*Init:\s*(?P<init>[-+\d.eE]+),\s*First inference:\s*(?P<first>[-+\d.eE]+),"
    r"\s*Warmup \(avg\):\s*(?P<warmup>[-+\d.eE]+),\s*Inference \(avg\):\s*(?P<avg>[-+\d.eE]+)"
)
# Older builds: "Average inference timings in us: Warmup: 83235, Init: 38467, Inference: 79760.9"
_OLD_TIMINGS = re.compile(
    r"Average inference timings in us:\s*Warmup:\s*(?P<warmup>[-+\d.eE]+),\s*Init:\s*(?P<init>[-+\d.eE]+),"
    r"\s*Inference:\s*(?P<avg>[-+\d.eE]+)"
)
# One line per benchmark phase (warmup, then the timed runs), from StatWithPercentiles:
# "count=50 first=79449 curr=81350 min=77385 max=88213 avg=79732 std=1929 p5=77580 median=79380 p95=83480"
_STATS = re.compile(r"\bcount=\d+\b.*\b(?:avg|curr)=")
_KEY_VALUE = re.compile(r"\b(count|first|curr|min|max|avg|std|p5|median|p95)=([-+\d.eE]+|nan)")


def _number(text: str) -> float:
    return float(text)


def parse_benchmark_output(text: str) -> dict[str, Any]:
    """Latency figures from the log of LiteRT's ``benchmark_model`` (Interpreter API tool).

    Reads the summary line ``Inference timings in us: Init: …, First inference: …, Warmup
    (avg): …, Inference (avg): …`` (or the older ``Average inference timings in us: …``) and
    the statistics line of the timed runs, ``count=… first=… curr=… min=… max=… avg=… std=…
    p5=… median=… p95=…`` (the last such line; the one before it is the warm-up's). All times
    are microseconds as the tool prints them.

    Returns:
        A dict with ``avg_us`` and ``avg_ms`` (the mean latency of the timed runs) and, where the
        log has them, ``init_us``, ``first_inference_us``, ``warmup_avg_us``, ``count``,
        ``min_us``, ``max_us``, ``std_us``, ``p5_us``, ``median_us``, ``p95_us``.

    Raises:
        ValueError: the text holds no inference-timings line.
    """
    figures: dict[str, Any] = {}
    match = _TIMINGS.search(text)
    if match:
        figures["first_inference_us"] = _number(match["first"])
    else:
        match = _OLD_TIMINGS.search(text)
    if not match:
        raise ValueError("no 'Inference timings in us: ...' line in the benchmark_model output")
    figures["init_us"] = _number(match["init"])
    figures["warmup_avg_us"] = _number(match["warmup"])
    figures["avg_us"] = _number(match["avg"])
    stats_lines = [line for line in text.splitlines() if _STATS.search(line)]
    if stats_lines:
        stats = dict(_KEY_VALUE.findall(stats_lines[-1]))
        if "count" in stats:
            figures["count"] = int(stats.pop("count"))
        if "curr" in stats and "avg" not in stats:  # "count=50 curr=812(all same)"
            stats.update(min=stats["curr"], max=stats["curr"], std="0")
        stats.pop("curr", None)
        stats.pop("first", None)
        stats.pop("avg", None)  # the summary line has the same mean with more digits
        for key, value in stats.items():
            figures[f"{key}_us"] = _number(value)
    figures["avg_ms"] = figures["avg_us"] / 1000.0
    return figures


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _adb_run(cmd: list[str], timeout: float, what: str) -> str:
    try:
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"{what} timed out after {timeout:.0f} s: {shlex.join(cmd)}") from error
    except OSError as error:
        raise RuntimeError(f"{what} could not start {cmd[0]!r}: {error}") from error
    output = (result.stdout or "") + (result.stderr or "")
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {shlex.join(cmd)}\n{_tail(output)}")
    return output


def _attached_devices(adb: str) -> dict[str, str]:
    """{serial: state} from ``adb devices`` (state ``device`` means usable)."""
    output = _adb_run([adb, "devices"], _ADB_TIMEOUT, "adb devices")
    devices = {}
    for line in output.splitlines():
        line = line.strip()
        if not line or line.startswith("*") or line.lower().startswith("list of devices"):
            continue
        parts = line.split()
        if len(parts) >= 2:
            devices[parts[0]] = parts[1]
    return devices


def _pick_device(adb: str, serial: str | None) -> str:
    devices = _attached_devices(adb)
    ready = [s for s, state in devices.items() if state == "device"]
    if serial is not None:
        if serial not in devices:
            raise RuntimeError(f"device {serial!r} is not attached (adb devices lists "
                               f"{', '.join(devices) or 'none'}): connect it or pass the right serial")
        if devices[serial] != "device":
            raise RuntimeError(f"device {serial!r} is {devices[serial]!r}, not ready: unlock it and accept the "
                               "USB debugging prompt, then retry")
        return serial
    if not ready:
        if devices:
            states = ", ".join(f"{s} ({state})" for s, state in devices.items())
            raise RuntimeError(f"no Android device is ready (adb devices lists {states}): unlock the device "
                               "and accept the USB debugging authorization prompt")
        raise RuntimeError("no Android device attached (adb devices lists none): connect one by USB with "
                           "USB debugging enabled (Settings > Developer options) and authorize this computer")
    if len(ready) > 1:
        raise RuntimeError(f"several Android devices are attached ({', '.join(ready)}): pass serial= to choose one")
    return ready[0]


def benchmark_on_device(
    model_path: str | os.PathLike,
    *,
    adb: str = "adb",
    serial: str | None = None,
    benchmark_binary: str | os.PathLike | None = None,
    num_threads: int = 1,
    use_xnnpack: bool = True,
    runs: int = 50,
    device_dir: str = _DEVICE_DIR,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Runs LiteRT's ``benchmark_model`` on an attached Android device and returns its latency.

    Steps, all through ``adb`` (each with a timeout, no shell on this side): ``adb devices`` to
    find the device; ``adb push`` of the model to ``device_dir`` (``/data/local/tmp``, the
    directory Android lets ``adb shell`` write and execute in); if ``benchmark_binary`` is given,
    ``adb push`` of it and ``chmod 755``; then ``adb shell <binary> --graph=<model>
    --num_threads=<num_threads> --use_xnnpack=<true|false> --num_runs=<runs>``. The files stay
    on the device, so later calls may pass ``benchmark_binary=None``.

    The benchmark binary: LiteRT's (formerly TensorFlow Lite's) Interpreter-API benchmark tool,
    built for Android arm64. Its prebuilt nightly is ``android_aarch64_benchmark_model``,
    linked from the LiteRT "Benchmark Interpreter API" page
    (https://ai.google.dev/edge/litert/models/measurement, source
    ``tflite/g3doc/performance/measurement.md`` in github.com/google-ai-edge/LiteRT) as
    https://storage.googleapis.com/tensorflow-nightly-public/prod/tensorflow/release/lite/tools/nightly/latest/android_aarch64_benchmark_model
    (``android_arm_benchmark_model`` for 32-bit ARM devices). It can also be built from the
    LiteRT sources: ``bazel build -c opt --config=android_arm64
    //tflite/tools/benchmark:benchmark_model``. The separate ``CompiledModel`` benchmark
    (``litert/tools:benchmark_model``, prebuilt under ``storage.googleapis.com/litert/binaries``)
    is a different program with other flags and output; this function expects the
    Interpreter-API tool.

    ``use_xnnpack``: ``True`` passes ``--use_xnnpack=true`` (the XNNPACK delegate, LiteRT's
    default CPU path); ``False`` passes ``--use_xnnpack=false``, which makes the tool use
    ``BuiltinOpResolverWithoutDefaultDelegates``: the built-in optimized kernels (ruy/NEON on
    ARM) without XNNPACK. ``runs`` is ``--num_runs``, the minimum number of timed runs (the
    tool also runs for at least one second, so it may do more); one warm-up run precedes them.

    Args:
        model_path: the ``.tflite`` file on this computer.
        adb: the adb executable, a name looked up on ``PATH`` or a path.
        serial: the device's serial (from ``adb devices``); needed only when several are attached.
        benchmark_binary: local path of the Android ``benchmark_model`` binary to push, or
            ``None`` to use ``<device_dir>/benchmark_model`` already on the device.
        num_threads: ``--num_threads``.
        use_xnnpack: ``--use_xnnpack`` (see above).
        runs: ``--num_runs``.
        device_dir: directory on the device for the model and the binary.
        timeout: seconds allowed for the benchmark run itself.

    Returns:
        ``{"avg_ms", "avg_us", "init_us", "first_inference_us", "warmup_avg_us", "count",
        "min_us", "max_us", "std_us", "p5_us", "median_us", "p95_us"}`` as the tool reports them
        (see :func:`parse_benchmark_output`; keys it does not print are left out), plus
        ``"serial"``, ``"command"`` (the command run on the device) and ``"output"`` (its full
        log).

    Raises:
        RuntimeError: adb is not on PATH, no device (or not exactly one) is ready, the binary is
            not on the device, or a push or the run fails or times out.
        FileNotFoundError: ``model_path`` or ``benchmark_binary`` does not exist here.
        ValueError: ``num_threads`` or ``runs`` below 1.
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise ValueError(f"num_threads must be an int >= 1. Received: num_threads={num_threads!r}")
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise ValueError(f"runs must be an int >= 1. Received: runs={runs!r}")
    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
        raise FileNotFoundError(f"no model file at {model_path!r}")
    if benchmark_binary is not None:
        benchmark_binary = os.fspath(benchmark_binary)
        if not os.path.isfile(benchmark_binary):
            raise FileNotFoundError(f"no benchmark binary at {benchmark_binary!r}")

    adb_path = shutil.which(adb)
    if adb_path is None:
        raise RuntimeError(f"{adb!r} was not found on PATH: install Android SDK platform-tools (or Debian's "
                           "`adb` package) and put adb on PATH, or pass adb='/path/to/adb'")
    device = _pick_device(adb_path, serial)
    base = [adb_path, "-s", device]

    device_dir = device_dir.rstrip("/") or "/"
    remote_model = f"{device_dir}/{os.path.basename(model_path)}"
    remote_binary = f"{device_dir}/benchmark_model"
    _adb_run([*base, "push", model_path, remote_model], _PUSH_TIMEOUT, "adb push of the model")
    if benchmark_binary is not None:
        _adb_run([*base, "push", benchmark_binary, remote_binary], _PUSH_TIMEOUT, "adb push of benchmark_model")
        _adb_run([*base, "shell", f"chmod 755 {shlex.quote(remote_binary)}"], _ADB_TIMEOUT,
                 "chmod of benchmark_model on the device")
    else:
        found = _adb_run([*base, "shell", f"test -x {shlex.quote(remote_binary)} && echo found || echo missing"],
                         _ADB_TIMEOUT, "looking for benchmark_model on the device")
        if "found" not in found.split():
            raise RuntimeError(f"{remote_binary} is not on the device: pass benchmark_binary= with the path of "
                               "android_aarch64_benchmark_model (see the docstring for where to get it)")

    remote = [remote_binary, f"--graph={remote_model}", f"--num_threads={num_threads}",
              f"--use_xnnpack={'true' if use_xnnpack else 'false'}", f"--num_runs={runs}"]
    command = " ".join(shlex.quote(token) for token in remote)
    output = _adb_run([*base, "shell", command], timeout, "benchmark_model on the device")
    try:
        figures = parse_benchmark_output(output)
    except ValueError as error:
        raise RuntimeError(f"benchmark_model printed no inference timings:\n{_tail(output)}") from error
    figures.update(serial=device, command=command, output=output)
    return figures
