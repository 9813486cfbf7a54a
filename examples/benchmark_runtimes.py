"""One exported file, four integer runtimes and two Keras targets: who computes the same codes?

    python examples/benchmark_runtimes.py --data_dir ../shared/data --out examples/results [--quick]

Every .tflite file below is run on real test images (not random inputs) by
``tflite_export.verify``: the same int8 input codes go through LiteRT's reference kernels
(``BUILTIN_REF``, the baseline), LiteRT's default kernels with XNNPACK, TFLite Micro (one sample
per ``invoke()``, with the smallest tensor arena it accepts) and kerasq's numpy reference
interpreter; each is compared with the baseline code by code. Each file is also compared with
the Keras model it came from: with the model's own target (``Target("xnnpack")``) against the
XNNPACK run (``tflite_export.compare``), and under ``Target("reference")`` against ``BUILTIN_REF``.

Rows:

- ``kerasq.models.demo_cnn`` on the 8x8 digits shipped with kerasq (all 450 test images),
  trained 20 float epochs, then every scheme: ``quantize_model`` (calibrated on 512 training
  images) and 2 QAT epochs (po2: 4 epochs, one per INQ step); plus Linear w4a8 with
  ``first_last_int8=False`` (INT4 weights in the last FULLY_CONNECTED too);
- stock ``tf_keras.applications`` models (``weights=None``) at 32x32x3 on Fashion-MNIST as RGB
  (pixels in [0, 255] for MobileNetV3), a short float fit and one QAT epoch on 2,048 training
  images: MobileNet (alpha 0.25) under int8 and PACT, MobileNetV2 (alpha 0.35),
  MobileNetV3Small and ResNet50 under int8. The fits are short on purpose: the rows measure
  agreement between runtimes, not accuracy.

Cells are "max |difference| in output LSBs / share of bit-exact output values". When numpy
differs from ``BUILTIN_REF`` the first differing tensor is located (numpy ``run_all`` against
LiteRT ``BUILTIN_REF`` with ``experimental_preserve_all_tensors``). When TFLite Micro differs
from ``BUILTIN_REF`` on a model whose output comes from FULLY_CONNECTED, that op is recomputed
from its (numpy) input with the fixed-point ``MultiplyByQuantizedMultiplier`` requantization
and compared with TFLite Micro's outputs. Prints a markdown table and writes it, with the
command, the machine, the package versions and a summary, to ``--out/runtimes.md``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import re
import sys
import time
import traceback

import numpy as np
from benchmark_architectures import build  # examples/ is on the path when this script runs

import kerasq
import tflite_export
from kerasq.compat import keras
from kerasq.datasets import load_dataset, load_digits, to_rgb
from kerasq.models import demo_cnn
from kerasq.schemes import Linear, get_scheme
from tflite_export.flatbuffer import load, op_name
from tflite_export.reference import Interpreter as NumpyInterpreter
from tflite_export.reference.fixed_point import multiply_by_quantized_multiplier, quantize_multiplier
from tflite_export.runtime import make_interpreter, prepare_inputs

# (row label, scheme factory, quantize_model keyword arguments, trained with INQ)
DEMO_SCHEMES = [
    ("int8", lambda: get_scheme("int8"), {}, False),
    ("linear w4a8", lambda: Linear(weight_bits=4, activation_bits=8), {}, False),
    ("linear w4a8, first/last too", lambda: Linear(weight_bits=4, activation_bits=8), {"first_last_int8": False}, False),
    ("pact", lambda: get_scheme("pact"), {}, False),
    ("dorefa", lambda: get_scheme("dorefa"), {}, False),
    ("bwn", lambda: get_scheme("bwn"), {}, False),
    ("binaryconnect", lambda: get_scheme("binaryconnect"), {}, False),
    ("xnor", lambda: get_scheme("xnor"), {}, False),
    ("bnn", lambda: get_scheme("bnn"), {}, False),
    ("twn", lambda: get_scheme("twn"), {}, False),
    ("ttq", lambda: get_scheme("ttq"), {}, False),
    ("po2 + INQ", lambda: get_scheme("po2"), {}, True),
    ("kmeans16", lambda: get_scheme("kmeans16"), {}, False),
]
QUICK_DEMO = ("int8", "pact", "xnor", "twn", "linear w4a8, first/last too")
STOCK = [("MobileNet", "int8"), ("MobileNet", "pact"), ("MobileNetV2", "int8"), ("MobileNetV3Small", "int8"),
         ("ResNet50", "int8")]
QUICK_STOCK = [("MobileNet", "int8")]
PACKAGES = ("numpy", "tensorflow", "tf_keras", "ai-edge-litert", "tflite_micro", "kerasq")


# ----------------------------------------------------------------------------------------------
# Measurements
# ----------------------------------------------------------------------------------------------


def cell(max_lsb, exact: float) -> str:
    return f"{max_lsb:.0f} / {100 * exact:.2f}%"


def short_reason(reason: str | None) -> str:
    """A runtime's refusal in a few words: TFLite Micro's failed kernel check as file:line."""
    reason = (reason or "").replace("|", "/").replace("\n", " ")
    check = re.search(r"micro/kernels/(\S+?:\d+) .* was not true", reason)
    if check:
        return f"kernel check {check.group(1)} fails"
    missing = re.search(r"Didn't find op for builtin opcode '(\w+)'", reason)
    if missing:
        return f"no kernel for {missing.group(1)}"
    return reason[:90]


def runtime_cell(result) -> str:
    if result.status != "compared":
        return f"{result.status}: {short_reason(result.reason)}"
    outputs = result.outputs
    total = sum(o.total for o in outputs)
    exact = 1.0 - result.differing / total
    return cell(result.max_abs_lsb, exact)


def keras_reference_parity(qmodel, blob: bytes, x: np.ndarray, scale: float, zero_point: int) -> tuple[int, float, bool]:
    """The Keras model under Target("reference") against BUILTIN_REF, in output codes; also
    whether exporting under that target writes the same file."""
    with kerasq.using_target(qmodel, kerasq.Target("reference", qmodel.target.pack_int4)):
        keras_out = qmodel.predict(x, batch_size=256, verbose=0)
        same_file = tflite_export.convert(qmodel) == blob
    file_codes = tflite_export.run(blob, x, dequantize=False, reference_kernels=True).astype(np.int64)
    keras_codes = np.clip(np.floor(keras_out.astype(np.float64) / scale + 0.5) + zero_point, -128, 127).astype(np.int64)
    delta = np.abs(file_codes - keras_codes)
    return int(delta.max()), float(np.mean(delta == 0)), same_file


def first_numpy_difference(blob: bytes, codes: np.ndarray, sample: int) -> str:
    """The first tensor (in execution order) where numpy and BUILTIN_REF part ways on one sample."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    litert = Interpreter(model_content=blob, experimental_op_resolver_type=OpResolverType.BUILTIN_REF,
                         experimental_preserve_all_tensors=True)
    index = litert.get_input_details()[0]["index"]
    litert.resize_tensor_input(index, codes[sample : sample + 1].shape)
    litert.allocate_tensors()
    litert.set_tensor(index, codes[sample : sample + 1])
    litert.invoke()
    model, _ = load(blob)
    graph = model.subgraphs[0]
    numpy_values = NumpyInterpreter(blob).run_all(codes[sample : sample + 1])
    for position, operator in enumerate(graph.operators):
        for out in operator.outputs:
            ours, theirs = numpy_values[int(out)], litert.get_tensor(int(out))
            if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
                name = graph.tensors[int(out)].name
                name = name.decode() if isinstance(name, bytes) else name
                diff = int(np.abs(ours.astype(np.int64) - theirs.astype(np.int64)).max()) if ours.shape == theirs.shape else -1
                return f"op {position} {op_name(model, operator)}, tensor {int(out)} '{name}', max |Δ| {diff}"
    return "no tensor differs on that sample"


def micro_outputs(blob: bytes, codes: np.ndarray, arena: int) -> np.ndarray:
    from tflite_micro.python.tflite_micro import runtime as micro

    interpreter = micro.Interpreter.from_bytes(blob, arena_size=arena)
    outputs = []
    for sample in codes:
        interpreter.set_input(sample[None], 0)
        interpreter.invoke()
        outputs.append(interpreter.get_output(0).copy())
    return np.concatenate(outputs)


def fixed_point_fc_check(blob: bytes, codes: np.ndarray, arena: int) -> dict | None:
    """If the output is written by FULLY_CONNECTED (no fused activation): recompute that op from
    its numpy input with MultiplyByQuantizedMultiplier (fixed-point, two roundings) and count
    how many of TFLite Micro's differences from BUILTIN_REF it reproduces."""
    model, _ = load(blob)
    graph = model.subgraphs[0]
    output = int(graph.outputs[0])
    producers = [op for op in graph.operators if int(op.outputs[0]) == output]
    if not producers or op_name(model, producers[0]) != "FULLY_CONNECTED":
        return None
    fc = producers[0]
    if int(getattr(fc.builtinOptions, "fusedActivationFunction", 0) or 0) != 0:
        return None
    numpy_interpreter = NumpyInterpreter(blob)
    values = numpy_interpreter.run_all(codes)
    x_spec, w_spec = (numpy_interpreter.tensors[int(i)] for i in fc.inputs[:2])
    y_spec = numpy_interpreter.tensors[output]
    w = values[w_spec.index].astype(np.int64)
    if w_spec.scale.size == 1:
        w = w - int(np.ravel(w_spec.zero_point)[0])
    x = values[x_spec.index].reshape(-1, w.shape[1]).astype(np.int64) - int(np.ravel(x_spec.zero_point)[0])
    acc = x @ w.T
    if len(fc.inputs) > 2 and int(fc.inputs[2]) >= 0:
        acc = acc + values[int(fc.inputs[2])].astype(np.int64)
    s_x, s_y = float(np.ravel(x_spec.scale)[0]), float(np.ravel(y_spec.scale)[0])
    pairs = [quantize_multiplier(s_x * float(s_w) / s_y) for s_w in np.broadcast_to(np.ravel(w_spec.scale), (w.shape[0],))]
    m0 = np.array([p[0] for p in pairs], np.int64)
    shift = np.array([p[1] for p in pairs], np.int64)
    fixed = np.clip(multiply_by_quantized_multiplier(acc, m0, shift) + int(np.ravel(y_spec.zero_point)[0]), -128, 127)
    micro = micro_outputs(blob, codes, arena).reshape(fixed.shape).astype(np.int64)
    ref = tflite_export.run(blob, codes, dequantize=False, reference_kernels=True).reshape(fixed.shape).astype(np.int64)
    return {"values": int(fixed.size), "micro_differing": int(np.sum(micro != ref)),
            "fixed_eq_micro": int(np.sum(fixed == micro)), "fixed_eq_ref": int(np.sum(fixed == ref))}


def measure(model_name: str, scheme_name: str, qmodel, blob: bytes, x: np.ndarray, seconds: float) -> dict:
    start = time.perf_counter()
    report = tflite_export.verify(blob, x)
    parity = tflite_export.compare(qmodel, blob, x)
    out = report["reference_kernels"].outputs[0]
    ref_lsb, ref_exact, same_file = keras_reference_parity(qmodel, blob, x, out.scale, out.zero_point)
    storage = "/".join(sorted({w.tensor.dtype for w in tflite_export.inspect(blob).weights}))
    row = {
        "model": model_name, "scheme": scheme_name, "storage": storage, "bytes": len(blob), "report": report,
        "keras_xnnpack": (parity.max_abs_lsb, parity.bit_exact_fraction),
        "keras_reference": (ref_lsb, ref_exact), "same_file": same_file, "notes": [],
    }
    codes = prepare_inputs(x, make_interpreter(blob, reference_kernels=True).get_input_details())[0]
    numpy_result = report["numpy"]
    if numpy_result.status == "compared" and numpy_result.differing:
        ref = tflite_export.run(blob, codes, dequantize=False, reference_kernels=True)
        mine = NumpyInterpreter(blob).run(codes)[0]
        sample = int(np.flatnonzero((mine != ref).reshape(len(codes), -1).any(axis=1))[0])
        row["notes"].append(f"numpy≠REF, first at sample {sample}: {first_numpy_difference(blob, codes, sample)}")
    micro_result = report["micro"]
    if micro_result.status == "compared" and micro_result.differing and report.arena is not None:
        check = fixed_point_fc_check(blob, codes, report.arena.smallest_bytes)
        if check:
            row["fc_check"] = check
            row["notes"].append(
                f"TFLM differs from REF on {check['micro_differing']} values; the last FULLY_CONNECTED recomputed "
                f"with fixed-point requantization equals TFLM on {check['fixed_eq_micro']}/{check['values']} values, "
                f"REF on {check['fixed_eq_ref']}/{check['values']}"
            )
    row["seconds"] = seconds + time.perf_counter() - start
    return row


# ----------------------------------------------------------------------------------------------
# Models
# ----------------------------------------------------------------------------------------------


def demo_rows(args, names) -> list[dict]:
    (x_train, y_train), (x_test, _) = load_digits()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    keras.utils.set_random_seed(args.seed)
    model = demo_cnn((8, 8, 1), 10)
    model.compile(keras.optimizers.Adam(1e-3), loss)
    model.fit(x_train, y_train, epochs=args.demo_epochs, batch_size=64, verbose=0)
    rows = []
    for label, make, kwargs, use_inq in DEMO_SCHEMES:
        if label not in names:
            continue
        start = time.perf_counter()
        try:
            keras.utils.set_random_seed(args.seed)
            qmodel = kerasq.quantize_model(model, make(), calibration_data=x_train[:512], **kwargs)
            qmodel.compile(keras.optimizers.Adam(5e-4), loss)
            callbacks = [kerasq.callbacks.INQ()] if use_inq else []
            epochs = 4 if use_inq else 2  # INQ: one epoch per step (50, 75, 87.5, 100 %)
            qmodel.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0, callbacks=callbacks)
            blob = tflite_export.convert(qmodel)
            row = measure("demo CNN (digits)", label, qmodel, blob, x_test, time.perf_counter() - start)
        except Exception as error:  # one failure is a row of the table, not the end of the run
            traceback.print_exc()
            row = {"model": "demo CNN (digits)", "scheme": label, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"}
        rows.append(row)
        print(table(rows[-1:], header=False), flush=True)
    return rows


def stock_rows(args, runs) -> list[dict]:
    (x_train, y_train), (x_test, _) = load_dataset("fashion_mnist", args.data_dir)
    loss = keras.losses.SparseCategoricalCrossentropy()
    rows = []
    trained: dict[str, keras.Model] = {}
    for name, scheme in runs:
        start = time.perf_counter()
        label = {"MobileNet": "MobileNet α0.25", "MobileNetV2": "MobileNetV2 α0.35"}.get(name, name)
        pixels = 255.0 if name.startswith("MobileNetV3") else 1.0  # MobileNetV3 rescales its input itself
        xt = pixels * to_rgb(x_train[: args.train])
        yt = y_train[: args.train]
        xs = pixels * to_rgb(x_test[: args.samples])
        try:
            if name not in trained:
                keras.utils.set_random_seed(args.seed)
                model = build(name, 32)
                model.compile(keras.optimizers.Adam(1e-3), loss)
                model.fit(xt, yt, epochs=1, batch_size=64, verbose=0)
                trained[name] = model
            keras.utils.set_random_seed(args.seed)
            qmodel = kerasq.quantize_model(trained[name], scheme, calibration_data=xt[:256])
            qmodel.compile(keras.optimizers.Adam(1e-4), loss)
            qmodel.fit(xt, yt, epochs=1, batch_size=64, verbose=0)
            blob = tflite_export.convert(qmodel)
            row = measure(f"{label} (Fashion-MNIST RGB 32x32)", scheme, qmodel, blob, xs, time.perf_counter() - start)
        except Exception as error:  # one failure is a row of the table, not the end of the run
            traceback.print_exc()
            row = {"model": label, "scheme": scheme, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"}
        rows.append(row)
        print(table(rows[-1:], header=False), flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------

HEADER = [
    "| model | scheme (weight storage) | file bytes | samples | XNNPACK vs REF | TFLM vs REF | numpy vs REF "
    "| Keras(xnnpack) vs XNNPACK file | Keras(reference) vs REF | TFLM arena smallest / used (B) | s |",
    "|---|---|---|---|---|---|---|---|---|---|---|",
]


def table(rows: list[dict], header: bool = True) -> str:
    lines = list(HEADER) if header else []
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['model']} | {r['scheme']} | error: {r['error'].replace('|', '/')} |" + " |" * 8)
            continue
        report = r["report"]
        arena = f"{report.arena.smallest_bytes:,} / {report.arena.used_bytes:,}" if report.arena else "—"
        lines.append(
            f"| {r['model']} | {r['scheme']} ({r['storage']}) | {r['bytes']:,} | {report.n_samples} "
            f"| {runtime_cell(report['xnnpack'])} | {runtime_cell(report['micro'])} | {runtime_cell(report['numpy'])} "
            f"| {cell(*r['keras_xnnpack'])} | {cell(*r['keras_reference'])} | {arena} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Facts read off the rows (nothing here is typed in by hand)."""
    ok = [r for r in rows if "error" not in r]
    name = lambda r: f"{r['model'].split(' (')[0]} {r['scheme']}"  # noqa: E731
    lines = ["### Reading the table", ""]
    if len(ok) != len(rows):
        lines.append(f"- {len(rows) - len(ok)} row(s) failed: " + "; ".join(f"{r['model']} {r['scheme']}: {r['error']}" for r in rows if "error" in r))

    def differing(runtime):
        return [r for r in ok if r["report"][runtime].status == "compared" and r["report"][runtime].differing]

    xnn = differing("xnnpack")
    if xnn:
        worst = max(xnn, key=lambda r: r["report"]["xnnpack"].max_abs_lsb)
        least = min(xnn, key=lambda r: 1 - r["report"]["xnnpack"].differing / sum(o.total for o in r["report"]["xnnpack"].outputs))
        lines.append(
            f"- **XNNPACK vs REF**: the same file gives different codes on {len(xnn)} of {len(ok)} rows; largest "
            f"difference {worst['report']['xnnpack'].max_abs_lsb} LSB ({name(worst)}), lowest bit-exact share "
            f"{runtime_cell(least['report']['xnnpack']).split(' / ')[1]} ({name(least)}). "
            f"Bit-exact on every value: {', '.join(name(r) for r in ok if r not in xnn) or 'no row'}."
        )
    else:
        lines.append(f"- **XNNPACK vs REF**: bit-exact on all {len(ok)} rows.")
    keras_x = [r for r in ok if r["keras_xnnpack"][0] != 0]
    keras_r = [r for r in ok if r["keras_reference"][0] != 0]
    if not keras_x and not keras_r:
        lines.append(
            "- **Keras vs file**: on every row the Keras model with its own target (xnnpack) reproduces the "
            "XNNPACK run bit for bit, and switched to `Target(\"reference\")` it reproduces BUILTIN_REF bit for "
            "bit: where XNNPACK and REF part ways, each Keras target follows its own runtime."
        )
    else:
        lines.append(
            "- **Keras vs file**: Keras(xnnpack) vs XNNPACK differs on "
            + (", ".join(f"{name(r)} ({cell(*r['keras_xnnpack'])})" for r in keras_x) or "no row")
            + "; Keras(reference) vs REF differs on "
            + (", ".join(f"{name(r)} ({cell(*r['keras_reference'])})" for r in keras_r) or "no row") + "."
        )
    other_file = [name(r) for r in ok if not r["same_file"]]
    lines.append(
        "- Exporting under `Target(\"reference\")` writes "
        + ("the same bytes as the default target on every row." if not other_file else "other bytes on " + ", ".join(other_file) + ".")
    )
    unavailable = [r for r in ok if r["report"]["micro"].status != "compared"]
    micro_diff = differing("micro")
    text = "- **TFLite Micro**: "
    if unavailable:
        text += "cannot run " + "; ".join(f"{name(r)} ({r['report']['micro'].reason.replace('TFLite Micro cannot run the model: ', '')})" for r in unavailable) + ". "
    compared = [r for r in ok if r["report"]["micro"].status == "compared"]
    text += f"Of the {len(compared)} rows it runs, it matches REF bit for bit on {len(compared) - len(micro_diff)}"
    if micro_diff:
        text += "; it differs on " + ", ".join(f"{name(r)} ({runtime_cell(r['report']['micro'])})" for r in micro_diff)
    lines.append(text + ".")
    fc_checks = [r["fc_check"] for r in micro_diff if r.get("fc_check")]
    if fc_checks:
        explained = [c for c in fc_checks if c["fixed_eq_micro"] == c["values"]]
        lines.append(
            f"- On {len(fc_checks)} of those rows the output is written by FULLY_CONNECTED. The numpy reference, "
            "bit-exact with BUILTIN_REF on every row, computes it as one rounding of `double(acc)·M`; recomputing "
            "that op from the same input with the fixed-point `MultiplyByQuantizedMultiplier` (two roundings) "
            f"gives TFLite Micro's codes on every output value on {len(explained)} of them "
            f"({sum(c['micro_differing'] for c in explained)} values that differ from REF, all of them explained)."
            if len(explained) == len(fc_checks) else
            f"- On {len(fc_checks)} of those rows the output is written by FULLY_CONNECTED; recomputing it with the "
            f"fixed-point `MultiplyByQuantizedMultiplier` reproduces TFLite Micro on {len(explained)} of them "
            "(details under the table)."
        )
    numpy_diff = differing("numpy")
    numpy_unavailable = [r for r in ok if r["report"]["numpy"].status != "compared"]
    if numpy_diff:
        lines.append("- **numpy vs REF differs** (a bug of the numpy reference): "
                     + "; ".join(f"{name(r)}: {n}" for r in numpy_diff for n in r["notes"] if n.startswith("numpy")) + ".")
    else:
        lines.append(f"- **numpy vs REF**: bit-exact on all {len(ok) - len(numpy_unavailable)} rows it runs"
                     + (f"; unavailable on {', '.join(name(r) for r in numpy_unavailable)}." if numpy_unavailable else "."))
    arenas = [r for r in ok if r["report"].arena is not None]
    if arenas:
        small = min(arenas, key=lambda r: r["report"].arena.smallest_bytes)
        large = max(arenas, key=lambda r: r["report"].arena.smallest_bytes)
        slack = [r for r in arenas if r["report"].arena.used_bytes != r["report"].arena.smallest_bytes]

        def gap(r):
            a = r["report"].arena
            return (f"{name(r)}: smallest {a.smallest_bytes:,} B, 'used' {a.used_bytes:,} B at a "
                    f"{a.probe_arena_bytes:,} B arena ({a.smallest_bytes - a.used_bytes:+,} B)")

        lines.append(
            f"- **Arena**: from {small['report'].arena.smallest_bytes:,} B ({name(small)}) to "
            f"{large['report'].arena.smallest_bytes:,} B ({name(large)}). The allocator's 'used' figure "
            + ("equals the bisected smallest arena on every row." if not slack else
               f"equals the bisected smallest arena on {len(arenas) - len(slack)} of {len(arenas)} rows, not on "
               + "; ".join(gap(r) for r in slack) + ".")
        )
    return "\n".join(lines)


def machine(packages: tuple[str, ...] = PACKAGES) -> str:
    """One line: OS, CPU, cores, Python and the versions of ``packages``."""
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    versions = []
    for package in packages:
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package} (not installed)")
    return (f"Machine: {platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} cores; "
            f"Python {platform.python_version()}; {', '.join(versions)}.")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.environ.get("KERASQ_DATA"))
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_DEMO)} on the demo CNN and MobileNet int8")
    parser.add_argument("--no_resnet", action="store_true", help="leave out ResNet50 (the slowest row)")
    parser.add_argument("--samples", type=int, default=256, help="Fashion-MNIST test images per stock model")
    parser.add_argument("--train", type=int, default=2048, help="Fashion-MNIST training images per stock model")
    parser.add_argument("--demo_epochs", type=int, default=20, help="float epochs of the demo CNN")
    parser.add_argument("--out", default="bench_out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    demo_names = QUICK_DEMO if args.quick else [label for label, *_ in DEMO_SCHEMES]
    stock = QUICK_STOCK if args.quick else [s for s in STOCK if not (args.no_resnet and s[0] == "ResNet50")]
    print("\n".join(HEADER), flush=True)
    rows = demo_rows(args, demo_names) + stock_rows(args, stock)
    text = table(rows)
    print()
    print(text)
    command = "python examples/benchmark_runtimes.py " + " ".join(a for a in sys.argv[1:])
    notes = [f"- {r['model']} {r['scheme']}: {n}" for r in rows if "error" not in r for n in r["notes"]]
    footer = (
        f"\nCells: max |Δ| in output LSBs / share of bit-exact output values. REF = LiteRT BUILTIN_REF (the "
        f"baseline of `tflite_export.verify`), TFLM = TFLite Micro at its smallest arena. Demo CNN: digits, "
        f"{args.demo_epochs} float epochs, 2 QAT epochs per scheme (po2: 4, one per INQ step), all 450 test "
        f"images. Stock models: {args.train} training images, 1 float + 1 QAT epoch, {args.samples} test "
        f"images. Seed {args.seed}; {time.perf_counter() - start:.0f} s in all.\n"
    )
    if notes:
        footer += "\nChecks on differing rows:\n\n" + "\n".join(notes) + "\n"
    document = (
        f"# One file, four runtimes\n\n`{command}`\n\n{machine()}\n\n{text}\n{footer}\n{summary(rows)}\n"
    )
    print(footer)
    print(summary(rows))
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "runtimes.md"), "w") as f:
        f.write(document)


if __name__ == "__main__":
    main()
