"""One model, four integer runtimes: do they compute the same codes?

    report = tflite_export.verify(blob, x_test)     # bytes or path; float x or int8 codes
    print(report)                                   # one row per runtime and output
    report.ok(max_lsb=1)                            # every available runtime within 1 LSB
    report.arena.smallest_bytes                     # TFLite Micro tensor arena, bisected

The same input codes (float ``x`` quantized once with the file's input scale and zero point,
:func:`tflite_export.runtime.quantize_input`) go through

* ``reference_kernels`` -- LiteRT with ``OpResolverType.BUILTIN_REF``, TFLite's reference
  kernels: the **baseline** every other runtime is measured against;
* ``xnnpack`` -- LiteRT's default kernels (``OpResolverType.AUTO``, XNNPACK delegate);
* ``micro`` -- TFLite Micro (the ``tflite-micro`` wheel), one sample per ``invoke()`` since its
  interpreter has fixed shapes (batch 1). It runs in a child process: TFLite Micro ends the
  process with SIGSEGV on some failures (an arena of a few hundred bytes) instead of raising;
* ``numpy`` -- :mod:`tflite_export.reference`, the numpy integer interpreter.

Differences are counted in output codes (LSBs of the output's quantization step). A runtime
that is not installed or cannot run the model is reported as unavailable with the reason; it
does not stop the others. Only numpy, LiteRT and tflite_micro are used (no TensorFlow).

``tflite_export.verify`` is this module, and calling it calls :func:`verify`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys as _sys
import tempfile
import time
import types as _types
from typing import Any, Sequence

import numpy as np
from ai_edge_litert.interpreter import OpResolverType

from tflite_export.flatbuffer import InvalidModelError, ModelSource, load
from tflite_export.runtime import (
    _check_batch_size,
    _materialized,
    _one_line,
    _open_interpreter,
    _per_tensor_quantization,
    _run_batch_size,
    _run_raw,
    prepare_inputs,
)

__all__ = [
    "ArenaSize",
    "BASELINE",
    "OutputAgreement",
    "RUNTIMES",
    "RuntimeResult",
    "RuntimeUnavailableError",
    "VerifyReport",
    "micro_arena_size",
    "verify",
]

RUNTIMES = ("xnnpack", "reference_kernels", "micro", "numpy")
BASELINE = "reference_kernels"

_LABELS = {
    "reference_kernels": "LiteRT BUILTIN_REF",
    "xnnpack": "LiteRT XNNPACK (AUTO)",
    "micro": "TFLite Micro",
    "numpy": "numpy reference",
}

# TFLite Micro aligns every arena allocation to 16 bytes (MicroArenaBufferAlignment()), so a
# finer search would only find the slack inside the last alignment step.
ARENA_GRANULARITY = 16

# How long one TFLite Micro request (create + allocate + run every sample) may take.
_MICRO_TIMEOUT_S = 600.0


class RuntimeUnavailableError(RuntimeError):
    """A runtime is not installed, or it cannot load or run the model (the message says why)."""


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ArenaSize:
    """TFLite Micro tensor arena needed by a model.

    Attributes:
        smallest_bytes: smallest ``arena_size`` (bytes, a multiple of ``granularity``) with which
            TFLite Micro creates the interpreter, allocates the tensors and runs ``invoke()``;
            found by bisection. One ``granularity`` step less fails.
        used_bytes: what TFLite Micro's recording allocator reports as used ("Arena allocation
            total", head + tail, i.e. ``MicroInterpreter::arena_used_bytes()``) with the
            generous arena ``probe_arena_bytes``. It is not a safe budget: it exceeded
            ``smallest_bytes`` by alignment slack on the demo CNN, and fell 7,264 B short of it
            on MobileNetV3Small (124,384 vs 131,648 B). Budget ``smallest_bytes``.
        granularity: bisection step in bytes.
        probe_arena_bytes: the generous arena the search started from (bytes).
        probes: interpreters created during the search (each in the child process).
    """

    smallest_bytes: int
    used_bytes: int
    granularity: int
    probe_arena_bytes: int
    probes: int

    def to_dict(self) -> dict[str, int]:
        """All fields as a plain dict (JSON-serializable)."""
        return dataclasses.asdict(self)

    def __str__(self) -> str:
        return (
            f"smallest {self.smallest_bytes:,} B (bisection to {self.granularity} B, "
            f"{self.probes} probes), used {self.used_bytes:,} B "
            f"(TFLM allocator at a {self.probe_arena_bytes:,} B arena)"
        )


@dataclasses.dataclass(frozen=True)
class OutputAgreement:
    """One output of one runtime against the same output of the baseline.

    Attributes:
        index: the output's position in the model's outputs.
        name: the output tensor's name.
        dtype: its storage dtype (``"int8"``, ``"float32"``, ...).
        shape: per-sample shape (batch dimension left out).
        scale, zero_point: per-tensor quantization of the output; None if not quantized.
        max_abs_lsb: largest |runtime - baseline| in output codes, for an integer output (an
            int8 output's LSB is one quantization step ``scale``); None for a float output.
        max_abs_diff: the same difference in real units (``max_abs_lsb * scale`` for a quantized
            output, the raw difference for a float or unquantized one).
        bit_exact_fraction: fraction of output values equal to the baseline's.
        differing: number of output values that differ from the baseline.
        total: number of output values compared (samples x values per sample).
        top1_agreement: fraction of samples with the same argmax as the baseline, for a
            classifier-shaped output (one non-trivial dimension of size >= 2); else None.
    """

    index: int
    name: str
    dtype: str
    shape: tuple[int, ...]
    scale: float | None
    zero_point: int | None
    max_abs_lsb: int | None
    max_abs_diff: float
    bit_exact_fraction: float
    differing: int
    total: int
    top1_agreement: float | None

    def ok(self, max_lsb: float = 1) -> bool:
        """Integer output: largest difference <= ``max_lsb`` codes. Float output (no LSB):
        top-1 agreement >= 0.99 if classifier-shaped, else bit-exact."""
        if self.max_abs_lsb is not None:
            return self.max_abs_lsb <= max_lsb
        if self.top1_agreement is not None:
            return self.top1_agreement >= 0.99
        return self.differing == 0


@dataclasses.dataclass(frozen=True)
class RuntimeResult:
    """What one runtime did with the inputs.

    Attributes:
        name: ``"xnnpack"``, ``"reference_kernels"``, ``"micro"`` or ``"numpy"``.
        label: human-readable runtime name.
        status: ``"compared"`` (ran; ``outputs`` filled), ``"unavailable"`` (not installed or
            cannot run the model; ``reason`` says why) or ``"mismatch"`` (ran but returned
            outputs of another number, shape or dtype than the baseline; ``reason`` says which).
        reason: why the runtime is unavailable or mismatched; None when compared.
        outputs: one :class:`OutputAgreement` per model output.
        seconds: wall-clock time of the run (creating the interpreter included), in seconds.
    """

    name: str
    label: str
    status: str
    reason: str | None = None
    outputs: tuple[OutputAgreement, ...] = ()
    seconds: float | None = None

    @property
    def available(self) -> bool:
        """True if the runtime produced outputs."""
        return self.status != "unavailable"

    @property
    def max_abs_lsb(self) -> int | None:
        """Largest difference in codes over the integer outputs; None if there are none."""
        values = [o.max_abs_lsb for o in self.outputs if o.max_abs_lsb is not None]
        return max(values) if values else None

    @property
    def differing(self) -> int:
        """Output values that differ from the baseline, over every output."""
        return sum(o.differing for o in self.outputs)

    def ok(self, max_lsb: float = 1) -> bool:
        """Unavailable: True (nothing to judge). Mismatch: False. Else every output ``ok``."""
        if self.status == "unavailable":
            return True
        if self.status != "compared":
            return False
        return all(o.ok(max_lsb) for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        """All fields (and ``max_abs_lsb``) as a plain dict (JSON-serializable)."""
        result = dataclasses.asdict(self)
        result["max_abs_lsb"] = self.max_abs_lsb
        return result


@dataclasses.dataclass(frozen=True)
class VerifyReport:
    """The outputs of every runtime compared with the baseline's, and TFLite Micro's arena.

    Attributes:
        n_samples: samples run through every runtime.
        baseline: name of the runtime the others are compared with (``"reference_kernels"``).
        runtimes: one :class:`RuntimeResult` per runtime asked for, baseline included (its
            differences are 0 by definition), in the order asked.
        arena: TFLite Micro arena (:class:`ArenaSize`); None if not measured.
        arena_reason: why ``arena`` is None (``"not requested"`` or the reason TFLite Micro is
            unavailable); None when measured.
        model_size_bytes: size of the ``.tflite`` flatbuffer in bytes.
        max_lsb: the distance (output codes) the verdict of ``str()`` and ``ok()`` allows.
    """

    n_samples: int
    baseline: str
    runtimes: tuple[RuntimeResult, ...]
    arena: ArenaSize | None
    arena_reason: str | None
    model_size_bytes: int
    max_lsb: float = 1

    def __getitem__(self, name: str) -> RuntimeResult:
        """The result of the runtime ``name`` (``report["micro"]``)."""
        for result in self.runtimes:
            if result.name == name:
                return result
        raise KeyError(f"No runtime {name!r} in this report; it has {[r.name for r in self.runtimes]}.")

    def ok(self, max_lsb: float | None = None) -> bool:
        """True if every available runtime is within ``max_lsb`` (default: the report's)
        output codes of the baseline on every output (float outputs: see
        :meth:`OutputAgreement.ok`). Unavailable runtimes are not judged; a runtime that
        returned outputs of another shape fails."""
        limit = self.max_lsb if max_lsb is None else max_lsb
        return all(r.ok(limit) for r in self.runtimes)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a plain dict (JSON-serializable), with ``ok`` at the report's ``max_lsb``."""
        return {
            "n_samples": self.n_samples,
            "baseline": self.baseline,
            "model_size_bytes": self.model_size_bytes,
            "ok": self.ok(),
            "max_lsb": self.max_lsb,
            "runtimes": [r.to_dict() for r in self.runtimes],
            "arena": self.arena.to_dict() if self.arena is not None else None,
            "arena_reason": self.arena_reason,
        }

    def __str__(self) -> str:
        header = ("runtime", "output", "max|Δ| LSB", "bit-exact", "differing", "top-1 agree", "time")
        rows: list[tuple[str, ...]] = []
        notes: list[str] = []
        for result in self.runtimes:
            name = result.name + (" *" if result.name == self.baseline else "")
            seconds = f"{result.seconds:.3f} s" if result.seconds is not None else ""
            if result.status != "compared":
                notes.append(f"{result.name}: {result.status}: {result.reason}")
                rows.append((name, f"{result.status} (see below)", "", "", "", "", seconds))
                continue
            for i, out in enumerate(result.outputs):
                lsb = str(out.max_abs_lsb) if out.max_abs_lsb is not None else f"{out.max_abs_diff:.3g} (float)"
                rows.append((
                    name if i == 0 else "",
                    f"{out.index} {out.name} {out.dtype}{list(out.shape)}",
                    lsb,
                    f"{100 * out.bit_exact_fraction:.2f} %",
                    f"{out.differing:,}/{out.total:,}",
                    f"{100 * out.top1_agreement:.2f} %" if out.top1_agreement is not None else "-",
                    seconds if i == 0 else "",
                ))
        widths = [max(len(r[c]) for r in [header, *rows]) for c in range(len(header))]
        lines = [
            f"{self.n_samples} samples, {self.model_size_bytes:,}-byte model; "
            f"* = baseline ({_LABELS.get(self.baseline, self.baseline)}), differences in output codes",
            "  ".join(h.ljust(w) if c < 2 else h.rjust(w) for c, (h, w) in enumerate(zip(header, widths))),
        ]
        for row in rows:
            lines.append("  ".join(v.ljust(w) if c < 2 else v.rjust(w) for c, (v, w) in enumerate(zip(row, widths))).rstrip())
        lines += notes
        if self.arena is not None:
            lines.append(f"TFLite Micro arena: {self.arena}")
        else:
            lines.append(f"TFLite Micro arena: not measured ({self.arena_reason})")
        if self.ok():
            lines.append(f"OK: every available runtime within {self.max_lsb:g} LSB of {self.baseline}")
            return "\n".join(lines)
        failing = [r.name for r in self.runtimes if not r.ok(self.max_lsb)]
        lines.append(f"FAIL: {', '.join(failing)} differ(s) from {self.baseline} by more than {self.max_lsb:g} LSB "
                     "or returned other outputs")
        if "xnnpack" in failing:
            lines.append(
                "  XNNPACK requantizes each layer once in float32 where the reference kernels and TFLite Micro "
                "round twice in fixed point; a 1-LSB difference in one layer can grow in the layers after it. "
                "A kerasq model reproduces one of the two exactly: export with the target of the runtime you "
                "deploy to (kerasq.Target('xnnpack'), 'reference' or 'micro')."
            )
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------


def _classifier_shaped(sample_shape: tuple[int, ...]) -> bool:
    """(C,), (1, 1, C), ... with C >= 2: one score per class, argmax meaningful."""
    return sum(1 for d in sample_shape if d > 1) == 1


def _agreement(index: int, detail: dict, base: np.ndarray, other: np.ndarray) -> OutputAgreement:
    """Compares one output of a runtime (``other``) with the baseline's (``base``), same shape."""
    n = base.shape[0]
    quant = _per_tensor_quantization(detail) if np.issubdtype(base.dtype, np.integer) else None
    if np.issubdtype(base.dtype, np.integer):
        # int64 so that int32 outputs cannot overflow in the subtraction.
        delta = np.abs(other.astype(np.int64) - base.astype(np.int64))
        max_lsb: int | None = int(delta.max()) if delta.size else 0
        max_diff = float(max_lsb * quant[0]) if quant is not None else float(max_lsb)
        differing = int(np.count_nonzero(delta))
    else:
        delta = np.abs(other.astype(np.float64) - base.astype(np.float64))
        max_lsb = None
        max_diff = float(np.nanmax(delta)) if delta.size else 0.0
        differing = int(np.count_nonzero(~((other == base) | (np.isnan(other) & np.isnan(base)))))
    sample_shape = tuple(int(d) for d in base.shape[1:])
    top1 = None
    if _classifier_shaped(sample_shape):
        top1 = float(np.mean(np.argmax(other.reshape(n, -1), axis=1) == np.argmax(base.reshape(n, -1), axis=1)))
    return OutputAgreement(
        index=index,
        name=str(detail.get("name", f"output {index}")),
        dtype=np.dtype(base.dtype).name,
        shape=sample_shape,
        scale=float(quant[0]) if quant is not None else None,
        zero_point=int(quant[1]) if quant is not None else None,
        max_abs_lsb=max_lsb,
        max_abs_diff=max_diff,
        bit_exact_fraction=float(1.0 - differing / base.size) if base.size else 1.0,
        differing=differing,
        total=int(base.size),
        top1_agreement=top1,
    )


def _compare(name: str, seconds: float, base: list[np.ndarray], details: list[dict],
             outputs: list[np.ndarray]) -> RuntimeResult:
    label = _LABELS[name]
    if len(outputs) != len(base):
        return RuntimeResult(name, label, "mismatch",
                             f"{len(outputs)} outputs, the baseline has {len(base)}", seconds=seconds)
    for i, (b, o) in enumerate(zip(base, outputs)):
        if o.shape != b.shape or o.dtype != b.dtype:
            return RuntimeResult(
                name, label, "mismatch",
                f"output {i} is {o.dtype}{list(o.shape)}, the baseline's {b.dtype}{list(b.shape)}",
                seconds=seconds)
    agreements = tuple(_agreement(i, d, b, o) for i, (d, b, o) in enumerate(zip(details, base, outputs)))
    return RuntimeResult(name, label, "compared", outputs=agreements, seconds=seconds)


# ----------------------------------------------------------------------------------------------
# The runtimes
# ----------------------------------------------------------------------------------------------


def _litert(content: bytes, batch_size: int, max_bytes: int | None, reference_kernels: bool):
    """A LiteRT interpreter of a model checked at ``batch_size`` against ``max_bytes``."""
    resolver = OpResolverType.BUILTIN_REF if reference_kernels else OpResolverType.AUTO
    return _open_interpreter(content, batch_size=batch_size, max_bytes=max_bytes, resolver=resolver)


def _run_litert(
    content: bytes, codes: list[np.ndarray], batch_size: int, reference_kernels: bool, *, max_bytes: int | None = None
):
    interpreter = _litert(content, _run_batch_size(codes[0], batch_size), max_bytes, reference_kernels)
    return _run_raw(interpreter, codes if len(codes) > 1 else codes[0], batch_size)


def _run_numpy(content: bytes, codes: list[np.ndarray], batch_size: int, max_bytes: int | None) -> list[np.ndarray]:
    try:
        from tflite_export.reference import Interpreter
    except ImportError as error:
        raise RuntimeUnavailableError(f"tflite_export.reference cannot be imported ({_one_line(error)})") from None
    interpreter = Interpreter(content, max_bytes=max_bytes)
    chunks: list[list[np.ndarray]] = []
    count = codes[0].shape[0]
    # In batches: a convolution's intermediate arrays grow with the batch.
    for start in range(0, count, batch_size):
        out = interpreter.run([c[start : start + batch_size] for c in codes])
        chunks.append([np.asarray(o) for o in out])
    return [np.concatenate([c[i] for c in chunks], axis=0) for i in range(len(chunks[0]))]


def _import_micro() -> None:
    """Raises RuntimeUnavailableError if the ``tflite-micro`` wheel cannot be imported here."""
    try:
        importlib.import_module("tflite_micro.python.tflite_micro.runtime")
    except ImportError as error:
        raise RuntimeUnavailableError(
            f"tflite_micro is not installed ({_one_line(error)}); pip install tflite-micro"
        ) from None


# The child process that runs TFLite Micro. Requests and replies are JSON lines on a private
# copy of the original stdout; the library's own printing (fd 1 and 2: allocation failures,
# the allocator's report) goes to a log file that each reply quotes.
_MICRO_WORKER = r"""
import json, os, re, sys, traceback
import numpy as np
from tflite_micro.python.tflite_micro import runtime

channel = os.fdopen(os.dup(1), "w")
log_path = sys.argv[2]
log_fd = os.open(log_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
os.dup2(log_fd, 1)
os.dup2(log_fd, 2)
sys.stdout = sys.stderr = os.fdopen(os.dup(log_fd), "w")
with open(sys.argv[1], "rb") as f:
    model = f.read()

def read_log():
    sys.stdout.flush()
    os.lseek(log_fd, 0, 0)
    text = os.read(log_fd, 1 << 20).decode("utf-8", "replace")
    os.ftruncate(log_fd, 0)
    os.lseek(log_fd, 0, 0)
    return text

for line in sys.stdin:
    request = json.loads(line)
    reply = {"ok": False}
    read_log()
    try:
        interpreter = runtime.Interpreter.from_bytes(model, arena_size=request["arena"])
        if request.get("inputs"):
            with np.load(request["inputs"]) as data:
                arrays = [data[f"in{i}"] for i in range(request["n_inputs"])]
            outputs = [[] for _ in range(request["n_outputs"])]
            for j in range(len(arrays[0])):
                for i, a in enumerate(arrays):
                    interpreter.set_input(np.ascontiguousarray(a[j : j + 1]), i)
                interpreter.invoke()
                for i in range(request["n_outputs"]):
                    outputs[i].append(np.array(interpreter.get_output(i), copy=True))
            np.savez(request["outputs"], **{f"out{i}": np.concatenate(o, axis=0) for i, o in enumerate(outputs)})
        else:
            for i in range(request["n_inputs"]):
                d = interpreter.get_input_details(i)
                interpreter.set_input(np.zeros([int(s) for s in d["shape"]], d["dtype"]), i)
            interpreter.invoke()
        interpreter.print_allocations()
        log = read_log()
        used = re.search(r"Arena allocation total (\d+) bytes", log)
        reply = {"ok": True, "used": int(used.group(1)) if used else None}
    except Exception as error:
        reply = {"ok": False, "error": f"{type(error).__name__}: {error}", "log": read_log()[-2000:]}
    channel.write(json.dumps(reply) + "\n")
    channel.flush()
"""


class _MicroWorker:
    """TFLite Micro in a child process, restarted after a crash; used as a context manager."""

    def __init__(self, content: bytes, n_inputs: int, n_outputs: int):
        self.n_inputs, self.n_outputs = n_inputs, n_outputs
        self.folder = tempfile.mkdtemp(prefix="tflite_verify_")
        self.model_path = os.path.join(self.folder, "model.tflite")
        with open(self.model_path, "wb") as f:
            f.write(content)
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "_MicroWorker":
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop()
        shutil.rmtree(self.folder, ignore_errors=True)

    def _start(self) -> subprocess.Popen:
        if self.process is None or self.process.poll() is not None:
            self.process = subprocess.Popen(
                [_sys.executable, "-c", _MICRO_WORKER, self.model_path, os.path.join(self.folder, "log.txt")],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            )
        return self.process

    def _stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def request(self, arena: int, inputs: list[np.ndarray] | None = None) -> dict:
        """Creates an interpreter with ``arena`` bytes, allocates, invokes (zeros, or every sample
        of ``inputs``); returns ``{"ok", "used" | "error", "outputs"?}``. A crash is a failure
        whose error names the signal."""
        message: dict[str, Any] = {"arena": int(arena), "n_inputs": self.n_inputs, "n_outputs": self.n_outputs}
        if inputs is not None:
            message["inputs"] = os.path.join(self.folder, "inputs.npz")
            message["outputs"] = os.path.join(self.folder, "outputs.npz")
            np.savez(message["inputs"], **{f"in{i}": a for i, a in enumerate(inputs)})
        process = self._start()
        try:
            process.stdin.write(json.dumps(message) + "\n")
            process.stdin.flush()
        except BrokenPipeError:
            pass  # it died on start; the empty read below reports how
        ready, _, _ = select.select([process.stdout], [], [], _MICRO_TIMEOUT_S)
        line = process.stdout.readline() if ready else ""
        if not line:
            if not ready:
                process.kill()
            code = process.wait()
            self.process = None
            if code < 0:
                try:
                    what = signal.Signals(-code).name
                except ValueError:
                    what = f"signal {-code}"
                return {"ok": False, "error": f"TFLite Micro crashed the process ({what})", "crashed": True}
            if not ready:
                return {"ok": False, "error": f"TFLite Micro did not answer within {_MICRO_TIMEOUT_S:.0f} s"}
            return {"ok": False, "error": f"the TFLite Micro process exited with status {code}"}
        reply = json.loads(line)
        if reply.get("ok") and inputs is not None:
            with np.load(message["outputs"]) as data:
                reply["outputs"] = [data[f"out{i}"] for i in range(self.n_outputs)]
        return reply


def _micro_reason(reply: dict) -> str:
    """The useful part of a failed request: the exception plus TFLite Micro's own first line."""
    log_lines = [line.strip() for line in reply.get("log", "").splitlines() if line.strip()]
    return reply["error"] + (f" ({log_lines[0]})" if log_lines else "")


def _arena_too_small(reply: dict) -> bool:
    """TFLite Micro says an allocation did not fit ('... missing: N'), or it crashed."""
    return bool(reply.get("crashed")) or "missing:" in reply.get("log", "")


def _round_up(value: int, step: int) -> int:
    return -(-int(value) // step) * step


def _search_arena(worker: _MicroWorker, model_size: int, granularity: int, max_bytes: int) -> ArenaSize:
    probes = 0

    def fits(size: int) -> dict:
        nonlocal probes
        probes += 1
        return worker.request(size)

    # Start where the tflite_micro wheel starts (10x the model) but at least 64 KiB, and double
    # while the allocator reports that the arena is too small.
    probe_arena = _round_up(max(10 * model_size, 64 * 1024), granularity)
    reply = fits(probe_arena)
    while not reply["ok"] and _arena_too_small(reply) and probe_arena * 2 <= max_bytes:
        probe_arena *= 2
        reply = fits(probe_arena)
    if not reply["ok"]:
        raise RuntimeUnavailableError(f"TFLite Micro cannot run the model: {_micro_reason(reply)}")
    used = reply.get("used")
    # Bisection over multiples of the granularity: low_k always fails (0 bytes), high_k works.
    low_k, high_k = 0, probe_arena // granularity
    if used:
        guess = _round_up(used, granularity) // granularity
        if guess < high_k and fits(guess * granularity)["ok"]:
            high_k = guess
    while high_k - low_k > 1:
        mid = (low_k + high_k) // 2
        if fits(mid * granularity)["ok"]:
            high_k = mid
        else:
            low_k = mid
    return ArenaSize(
        smallest_bytes=high_k * granularity,
        used_bytes=int(used) if used else high_k * granularity,
        granularity=granularity,
        probe_arena_bytes=probe_arena,
        probes=probes,
    )


def _io_counts(content: bytes, max_bytes: int | None) -> tuple[int, int]:
    interpreter = _litert(content, 1, max_bytes, reference_kernels=True)
    return len(interpreter.get_input_details()), len(interpreter.get_output_details())


def micro_arena_size(
    model_bytes_or_path: ModelSource,
    *,
    granularity: int = ARENA_GRANULARITY,
    max_bytes: int = 1 << 30,
    max_model_bytes: int | None = None,
) -> ArenaSize:
    """The TFLite Micro tensor arena a model needs, found by bisection.

    Each candidate ``arena_size`` creates a TFLite Micro interpreter (which allocates every
    tensor in the arena) and runs one ``invoke()`` on zero inputs, in a child process: TFLite
    Micro raises ``RuntimeError`` for most arenas that are too small but ends the process with
    SIGSEGV for some (a few hundred bytes), and either counts as "does not fit".

    Args:
        model_bytes_or_path: serialized model or path of a ``.tflite`` file.
        granularity: bisection step in bytes (>= 1; default 16, TFLite Micro's alignment).
        max_bytes: give up above this arena (bytes).
        max_model_bytes: the most memory (bytes) the file and its tensors may take on the host
            (None: ``tflite_export.flatbuffer.DEFAULT_MAX_BYTES``, 2 GiB).

    Returns:
        :class:`ArenaSize`.

    Raises:
        RuntimeUnavailableError: tflite_micro is not installed, or it cannot run the model
            (an operator it lacks, or no arena up to ``max_bytes`` fits).
        ValueError: not a TFLite flatbuffer, or granularity < 1.
    """
    if isinstance(granularity, bool) or not isinstance(granularity, (int, np.integer)) or granularity < 1:
        raise ValueError(f"granularity must be an int >= 1. Received: granularity={granularity!r}")
    _, content = load(model_bytes_or_path, max_bytes=max_model_bytes)
    _import_micro()
    n_inputs, n_outputs = _io_counts(content, max_model_bytes)
    with _MicroWorker(content, n_inputs, n_outputs) as worker:
        return _search_arena(worker, len(content), int(granularity), int(max_bytes))


def _run_micro(worker: _MicroWorker, codes: list[np.ndarray], arena: int, grow: bool) -> list[np.ndarray]:
    """Every sample through TFLite Micro with ``arena`` bytes; with ``grow``, the arena doubles
    (up to 1 GiB) while TFLite Micro reports it too small."""
    reply = worker.request(arena, codes)
    while grow and not reply["ok"] and _arena_too_small(reply) and arena * 2 <= 1 << 30:
        arena *= 2
        reply = worker.request(arena, codes)
    if not reply["ok"]:
        raise RuntimeUnavailableError(f"TFLite Micro cannot run the model: {_micro_reason(reply)}")
    return reply["outputs"]


# ----------------------------------------------------------------------------------------------
# verify
# ----------------------------------------------------------------------------------------------


def _check_runtimes(runtimes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(runtimes, str):
        runtimes = (runtimes,)
    names = tuple(runtimes)
    unknown = [n for n in names if n not in RUNTIMES]
    if unknown or not names:
        raise ValueError(f"runtimes must be a non-empty subset of {RUNTIMES}. Received: {names!r}")
    if len(set(names)) != len(names):
        raise ValueError(f"runtimes lists a runtime twice. Received: {names!r}")
    return names


def verify(
    model_bytes_or_path: ModelSource,
    x: Any,
    *,
    runtimes: Sequence[str] = RUNTIMES,
    arena: bool = True,
    batch_size: int = 256,
    max_lsb: float = 1,
    max_bytes: int | None = None,
) -> VerifyReport:
    """Runs the same input codes through every runtime and counts output differences in LSBs.

    ``x`` is quantized once with the model input's scale and zero point (float ``x``) or used as
    is (``x`` already in the input's storage dtype, e.g. int8 codes); every runtime gets those
    codes. The baseline is LiteRT's reference kernels (``BUILTIN_REF``); it always runs, listed
    or not. TFLite Micro runs one sample per ``invoke()`` (fixed batch 1), with the smallest
    arena found when ``arena`` is True (so the report also shows that arena works), else with
    a generous one.

    Args:
        model_bytes_or_path: serialized model or path of a ``.tflite`` file.
        x: inputs, shape ``(N, *input_shape[1:])``, N >= 1, float or of the input's dtype; a
            list of such arrays for a model with several inputs.
        runtimes: which of ``("xnnpack", "reference_kernels", "micro", "numpy")`` to report.
        arena: also find TFLite Micro's smallest tensor arena (:func:`micro_arena_size`).
        batch_size: samples per ``invoke()`` for LiteRT and per call of the numpy reference.
        max_lsb: output codes a runtime may differ by for the report's verdict (``ok()``).
        max_bytes: the most memory (bytes) the file and its tensors at the batch size run may
            take (None: ``tflite_export.flatbuffer.DEFAULT_MAX_BYTES``, 2 GiB).

    Returns:
        :class:`VerifyReport`; runtimes that are not installed or cannot run the model are in
        it as ``"unavailable"`` with the reason.

    Raises:
        InvalidModelError: (a ValueError) not a valid TFLite flatbuffer, or over ``max_bytes``.
        ValueError: a model LiteRT's reference kernels cannot load, ``x`` of the wrong shape or
            dtype, or an unknown runtime name.
        FileNotFoundError: the path does not exist.
    """
    names = _check_runtimes(runtimes)
    if isinstance(max_lsb, bool) or not isinstance(max_lsb, (int, float, np.integer, np.floating)) or not max_lsb >= 0:
        raise ValueError(f"max_lsb must be a number >= 0. Received: max_lsb={max_lsb!r}")
    batch_size = _check_batch_size(batch_size)
    loading = "LiteRT cannot load the model"
    try:
        _, content = load(model_bytes_or_path, max_bytes=max_bytes)
        baseline_interpreter = _litert(content, _run_batch_size(x, batch_size), max_bytes, reference_kernels=True)
    except InvalidModelError as error:
        message = str(error)
        raise InvalidModelError(message if message.startswith(loading) else f"{loading}: {message}") from None
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"{loading}: {_one_line(error)}") from None

    # Quantize once, so every runtime sees identical codes.
    details = baseline_interpreter.get_input_details()
    codes = prepare_inputs(_materialized(x, details), details)

    start = time.perf_counter()
    try:
        base, out_details = _run_raw(baseline_interpreter, codes if len(codes) > 1 else codes[0], batch_size)
    except InvalidModelError:
        raise
    except (RuntimeError, ValueError) as error:
        raise ValueError(f"LiteRT's reference kernels cannot run the model: {_one_line(error)}") from None
    base_seconds = time.perf_counter() - start

    arena_size: ArenaSize | None = None
    arena_reason: str | None = None if arena else "not requested"
    micro_error: str | None = None
    results: list[RuntimeResult] = []
    worker: _MicroWorker | None = None
    try:
        if arena or "micro" in names:
            try:
                _import_micro()
                worker = _MicroWorker(content, len(codes), len(base))
                if arena:
                    arena_size = _search_arena(worker, len(content), ARENA_GRANULARITY, 1 << 30)
            except RuntimeUnavailableError as error:
                micro_error = arena_reason = str(error)
        for name in names:
            start = time.perf_counter()
            try:
                if name == BASELINE:
                    results.append(_compare(name, base_seconds, base, out_details, base))
                    continue
                if name == "xnnpack":
                    # max_bytes only when given, so _run_litert keeps its four-argument form.
                    limit = {} if max_bytes is None else {"max_bytes": max_bytes}
                    outputs, _ = _run_litert(content, codes, batch_size, reference_kernels=False, **limit)
                elif name == "numpy":
                    outputs = _run_numpy(content, codes, batch_size, max_bytes)
                else:
                    if micro_error is not None:
                        raise RuntimeUnavailableError(micro_error)
                    if arena_size is not None:
                        outputs = _run_micro(worker, codes, arena_size.smallest_bytes, grow=False)
                    else:
                        start_arena = _round_up(max(10 * len(content), 1 << 20), ARENA_GRANULARITY)
                        outputs = _run_micro(worker, codes, start_arena, grow=True)
            except Exception as error:  # noqa: BLE001  (any runtime failure is reported, not raised)
                reason = str(error) if isinstance(error, RuntimeUnavailableError) else _one_line(error)
                results.append(RuntimeResult(name, _LABELS[name], "unavailable", reason))
                continue
            results.append(_compare(name, time.perf_counter() - start, base, out_details, list(outputs)))
    finally:
        if worker is not None:
            worker.__exit__(None, None, None)
    return VerifyReport(
        n_samples=int(codes[0].shape[0]),
        baseline=BASELINE,
        runtimes=tuple(results),
        arena=arena_size,
        arena_reason=arena_reason,
        model_size_bytes=len(content),
        max_lsb=max_lsb,
    )


class _CallableModule(_types.ModuleType):
    """``tflite_export.verify(...)`` calls ``verify``; ``import tflite_export.verify`` gives the module."""

    def __call__(self, *args, **kwargs):
        return verify(*args, **kwargs)


_sys.modules[__name__].__class__ = _CallableModule
