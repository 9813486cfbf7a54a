"""Hostile .tflite files: a seeded fuzz test of every reader and runner, and regression files.

One tiny model per quantization scheme is exported once; the fuzz test mutates those files
(bit flips, boundary bytes, truncation, large int32 fields, and mutations of parsed fields:
shapes, tensor/opcode/buffer indices, scales, zero points, options, constant data) and hands
each mutated file to ``tflite_export.inspect``, ``run`` (default and reference kernels),
``evaluate``, ``benchmark`` and the CLI's ``inspect``, ``eval`` and ``bench``.

Every call runs in a long-lived worker process (TensorFlow is imported once), so a crash of
LiteRT (SIGSEGV, SIGABRT) ends the worker, not pytest: it is reported with the seed and the
file is saved, and a new worker takes over. The worker's address space is capped
(``RLIMIT_AS``), each call has a timeout, and the worker reports the call's peak RSS
growth (``VmHWM`` after resetting it through ``/proc/self/clear_refs``).

A call passes if it returns, or raises a ValueError (``InvalidModelError`` is one) or
FileNotFoundError; a CLI call passes if ``main`` returns 0, or 2 with one line on stderr.

    KERASQ_FUZZ_CASES=600 KERASQ_FUZZ_SEED=1 pytest tests/test_hostile.py -s   # a longer run
    python tests/test_hostile.py --cases 600 --seed 1                          # the same, no pytest

``tests/hostile/`` holds small regression files (see its README.md); each must give
``InvalidModelError`` from ``inspect`` and ``run``.
"""

from __future__ import annotations

import collections
import json
import math
import os
import random
import select
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

HOSTILE_DIR = Path(__file__).resolve().parent / "hostile"

FUZZ_CASES = int(os.environ.get("KERASQ_FUZZ_CASES", "300"))
FUZZ_SEED = int(os.environ.get("KERASQ_FUZZ_SEED", "0"))
FUZZ_WORKERS = 2
CALL_TIMEOUT_S = 30.0  # the slowest call measured took 0.9 s
# The workers lower tflite_export's allocation bound (its module-level default) to this, so a
# file that passes the bound still runs quickly.
WORKER_MAX_BYTES = 256 << 20
# Peak RSS growth one call may cause: the bound above, with room for what LiteRT keeps besides
# the tensors (the largest growth measured over 30,000 files was 160 MiB).
PEAK_GROWTH_BOUND = 512 << 20
# Address space a worker may add after its imports: a runaway allocation fails inside the
# worker (MemoryError, or an abort the parent reports) instead of exhausting the machine.
ADDRESS_SPACE_HEADROOM = 4 << 30

CALLS = ("inspect", "run", "run_reference", "evaluate", "benchmark", "cli_inspect", "cli_eval", "cli_bench")

# ----------------------------------------------------------------------------------------------
# The worker
# ----------------------------------------------------------------------------------------------

_WORKER = r"""
import contextlib, io, json, os, re, resource, sys, time, traceback
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
channel = os.fdopen(os.dup(1), "w")
devnull = os.open(os.devnull, os.O_WRONLY)
os.dup2(devnull, 1)  # LiteRT and TensorFlow log on fd 1 and 2; the channel is a private copy
os.dup2(devnull, 2)
import numpy as np
import tflite_export
import tflite_export.flatbuffer
from kerasq.cli import main as cli_main
from kerasq.datasets import load_dataset
import kerasq  # noqa: F401  (TensorFlow, imported before the address space is capped)

tflite_export.flatbuffer.DEFAULT_MAX_BYTES = int(sys.argv[1])
load_dataset("digits")

def status(field):
    return int(re.search(field + r":\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024

resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + int(sys.argv[2]), resource.RLIM_INFINITY))
rng = np.random.default_rng(0)
x = rng.uniform(0, 1, (40, 8, 8, 1)).astype(np.float32)
y = rng.integers(0, 10, 40)
channel.write(json.dumps({"ready": True}) + "\n")
channel.flush()

for line in sys.stdin:
    request = json.loads(line)
    path, call = request["path"], request["call"]
    reply = {}
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass
    before = status("VmRSS")
    start = time.perf_counter()
    try:
        if call == "inspect":
            str(tflite_export.inspect(path))
        elif call == "run":
            tflite_export.run(path, x, batch_size=16)
        elif call == "run_reference":
            tflite_export.run(path, x[:4], reference_kernels=True, all_outputs=True)
        elif call == "evaluate":
            tflite_export.evaluate(path, x, y, batch_size=16)
        elif call == "benchmark":
            tflite_export.benchmark(path, runs=2, warmup=0)
        else:
            argv = {"cli_inspect": ["inspect", path, "--json"], "cli_eval": ["eval", path],
                    "cli_bench": ["bench", path, "--runs", "2", "--warmup", "0"]}[call]
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                reply["status"] = cli_main(argv)
            reply["stderr"] = err.getvalue()
        reply["result"] = "ok"
    except BaseException as error:
        reply.update(result="error", type=type(error).__name__, message=str(error)[:400],
                     value_error=isinstance(error, (ValueError, FileNotFoundError)),
                     where=traceback.format_exc(limit=-3)[-1200:])
    reply["seconds"] = time.perf_counter() - start
    reply["growth"] = status("VmHWM") - before
    channel.write(json.dumps(reply) + "\n")
    channel.flush()
"""


class Worker:
    """A worker process for requests ``(path, call)``; replaced after a crash or a hang."""

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.history: list[str] = []  # files this process was given, in order: a failure may need them

    def _start(self) -> subprocess.Popen:
        if self.process is None or self.process.poll() is not None:
            self.history = []
            env = dict(os.environ, PYTHONFAULTHANDLER="")
            self.process = subprocess.Popen(
                [sys.executable, "-c", _WORKER, str(WORKER_MAX_BYTES), str(ADDRESS_SPACE_HEADROOM)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
            )
            ready = self._reply(120.0)
            if not ready.get("ready"):
                raise RuntimeError(f"the fuzz worker did not start: {ready}")
        return self.process

    def _reply(self, timeout: float) -> dict:
        process = self.process
        ready, _, _ = select.select([process.stdout], [], [], timeout)
        line = process.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        if not ready:
            process.kill()
        code = process.wait()
        self.process = None
        if not ready:
            return {"result": "hang", "seconds": timeout}
        try:
            what = signal.Signals(-code).name if code < 0 else f"exit status {code}"
        except ValueError:
            what = f"signal {-code}"
        return {"result": "crash", "signal": what}

    def call(self, path: str, call: str, timeout: float = CALL_TIMEOUT_S) -> dict:
        process = self._start()
        if not self.history or self.history[-1] != path:
            self.history.append(path)
        try:
            process.stdin.write(json.dumps({"path": path, "call": call}) + "\n")
            process.stdin.flush()
        except BrokenPipeError:
            pass  # it died; the empty read reports how
        return self._reply(timeout)

    def close(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def problem(call: str, reply: dict) -> str | None:
    """Why a reply is a failure, or None if the call behaved."""
    result = reply["result"]
    if result in ("crash", "hang"):
        return result + (f" ({reply['signal']})" if result == "crash" else f" (> {CALL_TIMEOUT_S:.0f} s)")
    if reply.get("growth", 0) > PEAK_GROWTH_BOUND:
        return f"peak RSS grew by {reply['growth'] / 2**20:.0f} MiB"
    if result == "error":
        if call.startswith("cli_"):
            return f"{reply['type']} escaped kerasq.cli.main: {reply['message']}"
        if not reply["value_error"]:
            return f"{reply['type']}: {reply['message']}\n{reply['where']}"
        return None
    if call.startswith("cli_"):
        lines = reply["stderr"].strip().splitlines()
        if reply["status"] not in (0, 2) or (reply["status"] == 2 and len(lines) != 1):
            return f"exit status {reply['status']} with stderr {reply['stderr']!r}"
    return None


# ----------------------------------------------------------------------------------------------
# The mutator
# ----------------------------------------------------------------------------------------------

BOUNDARY_BYTES = (0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF)
LARGE_INT32 = (0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 23, 5_242_881, 9999, 0x10001, 0xFFFF, 1 << 30)
LARGE_DIMS = (5_242_881, 1 << 23, 0x7FFFFFFF, 1 << 16, 0, 3)
BAD_SCALES = (math.nan, math.inf, -math.inf, 0.0, -1.0, 1e-45, 1e38, 1e-30, 3.0e9)


def _flip_bits(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(blob)
    spots = [(rng.randrange(len(data)), rng.randrange(8)) for _ in range(rng.randint(1, 4))]
    for position, bit in spots:
        data[position] ^= 1 << bit
    return bytes(data), f"flip bits {spots}"


def _boundary_bytes(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(blob)
    spots = [(rng.randrange(len(data)), rng.choice(BOUNDARY_BYTES)) for _ in range(rng.randint(1, 4))]
    for position, value in spots:
        data[position] = value
    return bytes(data), f"bytes {spots}"


def _truncate(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    keep = rng.randrange(0, len(blob))
    return blob[:keep], f"truncated to {keep} of {len(blob)} bytes"


def _large_int32(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    data = bytearray(blob)
    position = 4 * rng.randrange(len(data) // 4)
    value = rng.choice(LARGE_INT32)
    data[position : position + 4] = value.to_bytes(4, "little")
    return bytes(data), f"int32 at {position} = {value:#x}"


def _field_mutations(model: Any) -> list[tuple[str, Callable[[random.Random], str]]]:
    """Named mutations of a parsed model's fields; each applies itself and describes what it did."""
    from tflite_export.flatbuffer import tensor_array

    graph = model.subgraphs[0]
    tensors, operators = graph.tensors, graph.operators

    def pick_tensor(rng, constant=None):
        candidates = [t for t in tensors if constant is None or (tensor_array(model, t) is not None) == constant]
        return rng.choice(candidates or tensors)

    def shape(rng):
        tensor = pick_tensor(rng, constant=False)
        dims = np.array(tensor.shape if tensor.shape is not None else [1], np.int32)
        if dims.size == 0:
            dims = np.ones(1, np.int32)
        axis, value = rng.randrange(dims.size), rng.choice(LARGE_DIMS)
        dims = dims.astype(np.int64)
        dims[axis] = value
        tensor.shape = dims.astype(np.int64).clip(-(2**31), 2**31 - 1).astype(np.int32)
        return f"tensor {tensor.name!r} shape[{axis}] = {value}"

    def tensor_index(rng):
        op = rng.choice(operators)
        field = rng.choice(("inputs", "outputs"))
        values = np.array(getattr(op, field), np.int32)
        slot, value = rng.randrange(values.size), rng.choice((9999, len(tensors), -1, -2, -(2**31), 0))
        values[slot] = value
        setattr(op, field, values)
        return f"operator {operators.index(op)} {field}[{slot}] = {value}"

    def graph_io(rng):
        field = rng.choice(("inputs", "outputs"))
        value = rng.choice((9999, len(tensors), -1, rng.randrange(len(tensors))))
        setattr(graph, field, np.array([value], np.int32))
        return f"subgraph {field} = [{value}]"

    def opcode_index(rng):
        op = rng.choice(operators)
        op.opcodeIndex = rng.choice((len(model.operatorCodes), 99, 2**32 - 1))
        return f"operator {operators.index(op)} opcodeIndex = {op.opcodeIndex}"

    def builtin_code(rng):
        code = rng.choice(model.operatorCodes)
        value = rng.randrange(0, 210)
        code.builtinCode = value
        code.deprecatedBuiltinCode = min(value, 127)
        return f"operator code builtin = {value}"

    def buffer_index(rng):
        tensor = pick_tensor(rng)
        tensor.buffer = rng.choice((len(model.buffers), 9999, 2**32 - 1, 0))
        return f"tensor {tensor.name!r} buffer = {tensor.buffer}"

    def tensor_type(rng):
        tensor = pick_tensor(rng)
        tensor.type = rng.randrange(0, 26)
        return f"tensor {tensor.name!r} type = {tensor.type}"

    def quantization(rng):
        quantized = [t for t in tensors if t.quantization is not None and t.quantization.scale is not None]
        if not quantized:
            return tensor_type(rng)
        tensor = rng.choice(quantized)
        q = tensor.quantization
        what = rng.choice(("scale", "zero_point", "axis", "count"))
        if what == "scale":
            scales = np.array(q.scale, np.float32)
            slot, value = rng.randrange(scales.size), rng.choice(BAD_SCALES)
            scales[slot] = value
            q.scale = scales
            return f"tensor {tensor.name!r} scale[{slot}] = {value}"
        if what == "zero_point":
            zero_points = np.array(q.zeroPoint if q.zeroPoint is not None else [0], np.int64)
            value = rng.choice((-1000, 1000, 2**31 - 1, 127, -128, 255))
            zero_points[rng.randrange(zero_points.size)] = value
            q.zeroPoint = zero_points
            return f"tensor {tensor.name!r} zero point = {value}"
        if what == "axis":
            q.quantizedDimension = rng.choice((1, 3, 5, 100))
            return f"tensor {tensor.name!r} quantized dimension = {q.quantizedDimension}"
        q.scale = np.array(q.scale, np.float32)[: max(1, len(q.scale) - 1)] if rng.random() < 0.5 else np.concatenate(
            [np.array(q.scale, np.float32), np.ones(2, np.float32)])
        return f"tensor {tensor.name!r} scale count = {len(q.scale)}"

    def options(rng):
        with_options = [op for op in operators if op.builtinOptions is not None]
        if not with_options:
            return shape(rng)
        op = rng.choice(with_options)
        fields = [name for name, value in vars(op.builtinOptions).items() if isinstance(value, (int, float, bool))]
        if not fields:
            return shape(rng)
        field, value = rng.choice(fields), rng.choice((0, -1, 2**31 - 1, 1000, 127, 7, 2))
        setattr(op.builtinOptions, field, value if not isinstance(getattr(op.builtinOptions, field), bool) else bool(value))
        return f"operator {operators.index(op)} option {field} = {value}"

    def constant_ints(rng):
        constants = [t for t in tensors if tensor_array(model, t) is not None and t.type == 2]  # int32
        if not constants:
            return shape(rng)
        tensor = rng.choice(constants)
        buffer = model.buffers[tensor.buffer]
        values = np.frombuffer(np.asarray(buffer.data, np.uint8).tobytes(), "<i4").copy()
        slot, value = rng.randrange(values.size), rng.choice((0, -1, 5, 9999, 2**31 - 1, -(2**31)))
        values[slot] = value
        buffer.data = np.frombuffer(values.astype("<i4").tobytes(), np.uint8)
        return f"constant {tensor.name!r}[{slot}] = {value}"

    def constant_size(rng):
        tensor = pick_tensor(rng, constant=True)
        buffer = model.buffers[tensor.buffer]
        data = np.asarray(buffer.data, np.uint8)
        buffer.data = data[: rng.randrange(max(1, data.size))] if rng.random() < 0.5 else np.concatenate([data, data])
        return f"constant {tensor.name!r} data size = {buffer.data.size}"

    def drop_operator(rng):
        index = rng.randrange(len(operators))
        del operators[index]
        return f"operator {index} removed"

    return [(f.__name__, f) for f in (shape, tensor_index, graph_io, opcode_index, builtin_code, buffer_index,
                                      tensor_type, quantization, options, constant_ints, constant_size, drop_operator)]


def _parsed_field(blob: bytes, rng: random.Random) -> tuple[bytes, str]:
    from tflite_export.flatbuffer import load, serialize

    while True:  # a value its field cannot hold (an int8 option set to 2**31-1): draw again
        model, _ = load(blob)
        name, mutate = rng.choice(_field_mutations(model))
        what = mutate(rng)
        try:
            return serialize(model), f"{name}: {what}"
        except (TypeError, OverflowError, struct.error):
            continue


MUTATORS = (_flip_bits, _boundary_bytes, _truncate, _large_int32, _parsed_field, _parsed_field, _parsed_field)


def mutate(blob: bytes, seed: int) -> tuple[bytes, str]:
    """The mutated file of ``seed`` (deterministic) and what was done to it."""
    rng = random.Random(seed)
    mutator = rng.choice(MUTATORS)
    data, what = mutator(blob, rng)
    if rng.random() < 0.15:  # now and then a second mutation on top
        data, more = rng.choice(MUTATORS[:4])(data, rng) if data else (data, "")
        what += f"; then {more}"
    return data, what


# ----------------------------------------------------------------------------------------------
# Exports and the fuzz loop
# ----------------------------------------------------------------------------------------------


def export_every_scheme() -> dict[str, bytes]:
    """One tiny model (conv, depthwise, max-pool, mean, dense, softmax on 8x8x1) per scheme."""
    import kerasq
    import tflite_export
    from kerasq import keras
    from kerasq.models import demo_cnn

    x = np.random.default_rng(0).uniform(0, 1, (32, 8, 8, 1)).astype(np.float32)
    blobs = {}
    for scheme in kerasq.available_schemes():
        keras.utils.set_random_seed(0)
        qmodel = kerasq.quantize_model(demo_cnn((8, 8, 1), 10, width=4, softmax=scheme == "int8"), scheme=scheme)
        kerasq.calibrate(qmodel, x)
        blobs[scheme] = tflite_export.convert(qmodel)
    return blobs


def fuzz(blobs: dict[str, bytes], cases: int, seed: int, folder: Path, workers: int = FUZZ_WORKERS) -> dict:
    """Runs ``cases`` mutated files through every call; returns the statistics and failures."""
    schemes = sorted(blobs)
    stats: dict[str, Any] = {
        "cases": 0, "calls": 0, "outcomes": collections.Counter(), "failures": [], "max_growth": 0,
        "crashes": 0, "hangs": 0, "seconds": 0.0, "slowest_call": 0.0,
    }
    lock = threading.Lock()
    case_ids: Iterator[int] = iter(range(cases))
    started = time.perf_counter()

    def work() -> None:
        try:
            cases_of_this_thread()
        except Exception as error:  # noqa: BLE001  (reported as a failure, not lost in a thread)
            with lock:
                stats["failures"].append(f"the fuzz loop failed: {type(error).__name__}: {error}")

    def cases_of_this_thread() -> None:
        worker = Worker()
        try:
            while True:
                with lock:
                    case = next(case_ids, None)
                if case is None:
                    return
                case_seed = seed * 1_000_003 + case
                scheme = schemes[case % len(schemes)]
                data, what = mutate(blobs[scheme], case_seed)
                path = folder / f"case-{case_seed}-{scheme}.tflite"
                path.write_bytes(data)
                keep = False
                for call in CALLS:
                    history = list(worker.history)
                    reply = worker.call(str(path), call)
                    why = problem(call, reply)
                    with lock:
                        stats["calls"] += 1
                        outcome = reply["result"] if reply["result"] != "error" else reply["type"]
                        if call.startswith("cli_") and reply["result"] == "ok":
                            outcome = f"exit {reply['status']}"
                        stats["outcomes"][f"{call}: {outcome}"] += 1
                        if reply.get("growth", 0) > stats["max_growth"]:
                            stats["max_growth"] = reply["growth"]
                            stats["max_growth_case"] = f"seed {case_seed} ({scheme}, {what}), {call}"
                        stats["slowest_call"] = max(stats["slowest_call"], reply.get("seconds", 0.0))
                        stats["crashes"] += reply["result"] == "crash"
                        stats["hangs"] += reply["result"] == "hang"
                        if why is not None:
                            keep = True
                            # The files the same process ran before, for a failure that needs them.
                            before = folder / f"history-{case_seed}-{call}.json"
                            before.write_text(json.dumps({"seed": seed, "cases": [Path(p).name for p in history]}))
                            stats["failures"].append(
                                f"seed {case_seed} ({scheme}, {what}), {call}: {why} [file: {path}; "
                                f"the worker ran {len(history)} files before it: {before.name}]"
                            )
                if not keep:
                    path.unlink()
                with lock:
                    stats["cases"] += 1
        finally:
            worker.close()

    threads = [threading.Thread(target=work) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stats["seconds"] = time.perf_counter() - started
    return stats


def summary(stats: dict) -> str:
    lines = [
        f"{stats['cases']} mutated files, {stats['calls']} calls in {stats['seconds']:.1f} s; "
        f"crashes {stats['crashes']}, hangs {stats['hangs']}, failures {len(stats['failures'])}; "
        f"largest peak RSS growth of a call {stats['max_growth'] / 2**20:.1f} MiB (bound "
        f"{PEAK_GROWTH_BOUND / 2**20:.0f} MiB), slowest call {stats['slowest_call']:.2f} s",
        f"largest growth: {stats.get('max_growth_case')}",
    ]
    by_type = collections.Counter()
    for key, count in stats["outcomes"].items():
        by_type[key.split(": ", 1)[1]] += count
    lines.append("outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(by_type.items(), key=lambda kv: -kv[1])))
    lines += [f"  {k}: {v}" for k, v in sorted(stats["outcomes"].items())]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------

needs_linux_proc = pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="the worker reads /proc")


@pytest.fixture(scope="module")
def scheme_blobs() -> dict[str, bytes]:
    return export_every_scheme()


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


@needs_linux_proc
def test_fuzz_every_scheme(scheme_blobs, tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile_fuzz")
    stats = fuzz(scheme_blobs, FUZZ_CASES, FUZZ_SEED, folder)
    print("\n" + summary(stats))
    assert stats["cases"] == FUZZ_CASES
    assert not stats["failures"], "\n".join(stats["failures"][:20]) + "\n" + summary(stats)


def test_mutator_is_deterministic(scheme_blobs):
    blob = scheme_blobs["int8"]
    for seed in range(30):
        assert mutate(blob, seed) == mutate(blob, seed)
    assert len({mutate(blob, seed)[0] for seed in range(30)}) > 20


REGRESSION_FILES = sorted(HOSTILE_DIR.glob("*.tflite"))


@needs_linux_proc
@pytest.mark.parametrize("path", REGRESSION_FILES, ids=[p.stem for p in REGRESSION_FILES])
@pytest.mark.parametrize("call", ["inspect", "run"])
def test_regression_file_is_refused(worker, path, call):
    reply = worker.call(str(path), call)
    assert problem(call, reply) is None, reply
    assert reply["result"] == "error" and reply["type"] == "InvalidModelError", reply
    assert reply["growth"] < 256 << 20, reply


def test_regression_files_exist():
    names = {p.stem for p in REGRESSION_FILES}
    assert len(names) >= 8 and (HOSTILE_DIR / "README.md").exists()
    for path in REGRESSION_FILES:
        assert path.stat().st_size < 16_384 and path.stem in (HOSTILE_DIR / "README.md").read_text()


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Fuzz tflite_export with mutated exports of every scheme.")
    parser.add_argument("--cases", type=int, default=FUZZ_CASES)
    parser.add_argument("--seed", type=int, default=FUZZ_SEED)
    parser.add_argument("--workers", type=int, default=FUZZ_WORKERS)
    parser.add_argument("--keep", default=None, help="folder for the files of failing cases (default: a temporary one)")
    parser.add_argument("--replay", default=None, help="a history-*.json: run its files again, in order, in one worker")
    args = parser.parse_args()
    folder = Path(args.keep or tempfile.mkdtemp(prefix="hostile_fuzz_"))
    folder.mkdir(parents=True, exist_ok=True)
    blobs = export_every_scheme()
    if args.replay:
        names = json.loads(Path(args.replay).read_text())["cases"]
        one = Worker()
        for name in names:
            _, case_seed, scheme = Path(name).stem.split("-", 2)
            path = folder / name
            path.write_bytes(mutate(blobs[scheme], int(case_seed))[0])
            for call in CALLS:
                why = problem(call, one.call(str(path), call))
                if why:
                    print("FAIL", name, call, why)
        one.close()
        sys.exit(0)
    result = fuzz(blobs, args.cases, args.seed, folder, workers=args.workers)
    print(summary(result))
    for failure in result["failures"]:
        print("FAIL", failure)
    sys.exit(1 if result["failures"] else 0)
