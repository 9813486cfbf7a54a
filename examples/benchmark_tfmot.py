"""tfmot QAT models through two exporters, and a Keras 3 model through kerasq, on Fashion-MNIST.

    python examples/benchmark_tfmot.py --data_dir ../shared/data [--quick] [--out examples/results/tfmot_interop.md]

A. **One tfmot model, two exporters.** Each model is trained briefly in float, then
   ``tfmot.quantization.keras.quantize_model`` and one QAT epoch. The same tfmot Keras model is
   then written twice: by TensorFlow's converter (``TFLiteConverter.from_keras_model``,
   ``Optimize.DEFAULT``, representative dataset of training images, ``TFLITE_BUILTINS_INT8``,
   int8 input and output) and by ``tflite_export.convert`` (which reads tfmot's grids through
   ``kerasq.from_tfmot``; the layers it cannot express exactly are listed in a ``UserWarning``,
   printed here). Models:

   1. ``kerasq.models.demo_cnn`` at 28x28x1 with a softmax output (Conv2D+BN+ReLU, MaxPooling2D,
      DepthwiseConv2D+BN+ReLU, 1x1 Conv2D+BN+ReLU, MaxPooling2D, GlobalAveragePooling2D, Dense
      softmax), float epochs on the 60,000 training images; for reference the same float model
      also goes the kerasq way (``kerasq.quantize_model(model, "int8")``, one QAT epoch,
      ``tflite_export.convert``);
   2. ``tf_keras.applications.MobileNetV2`` (alpha 0.35, ``weights=None``, 10 classes) at
      32x32x3: Fashion-MNIST centred in 32x32, channel repeated, pixels in [0, 1]; a subset of
      the training images; batch norm momentum 0.9 as in ``benchmark_architectures.py``.

B. **A Keras 3 model through kerasq.** A Keras 3 (``import keras``) functional CNN trained in
   Keras 3, then ``kerasq.quantize_model(k3_model, "int8", calibration_data=...)`` (converted
   by ``kerasq.keras3.to_tf_keras``), one QAT epoch and ``tflite_export.convert``; and
   post-training quantization straight from the Keras 3 model,
   ``tflite_export.convert(k3_model, representative_data=...)``.

Every file is run by LiteRT on the test images: top-1 accuracy, parity with the Keras model it
came from (``tflite_export.compare``: max output difference in int8 LSBs, share of bit-exact
and within-one-LSB outputs, top-1 agreement), integer-only or not, size and latency (median
``invoke()``, batch 1, 1 thread). Prints markdown tables and writes them, with the command, the
machine and the package versions, to ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import traceback
import warnings

import numpy as np
from benchmark_architectures import build  # examples/ is on the path when this script runs
from benchmark_int8 import converter_int8
from benchmark_runtimes import machine

import kerasq
import tflite_export
from kerasq.compat import keras
from kerasq.datasets import load_dataset, to_rgb
from kerasq.models import demo_cnn

PACKAGES = ("tensorflow", "tf_keras", "tensorflow-model-optimization", "keras", "ai-edge-litert", "numpy")
LOSS = keras.losses.SparseCategoricalCrossentropy()  # every model here ends in a softmax


def epochs(n: int) -> str:
    return f"{n} float epoch{'s' if n != 1 else ''}"


def accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0, batch_size=256), -1) == y))


def error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).strip().splitlines()[0][:160]}" if str(error).strip() else type(error).__name__


def measure(keras_model, blob: bytes, x_test, y_test, runs: int) -> dict:
    """LiteRT accuracy, parity with ``keras_model``, integer-only, size and 1-thread latency of one file."""
    return {
        "acc": tflite_export.evaluate(blob, x_test, y_test),
        "parity": tflite_export.compare(keras_model, blob, x_test) if keras_model is not None else None,
        "integer_only": tflite_export.inspect(blob).is_integer_only,
        "bytes": len(blob),
        "latency": tflite_export.benchmark(blob, num_threads=1, warmup=20, runs=runs),
    }


def export_row(label: str, route: str, exporter: str, keras_model, keras_acc, make, x_test, y_test, runs: int) -> dict:
    """One file: ``make()`` gives its bytes; its warnings and any error are part of the row."""
    row = {"model": label, "route": route, "exporter": exporter, "keras_acc": keras_acc, "warnings": []}
    begin = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            blob = make()
        row["warnings"] = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
        row["export_s"] = time.perf_counter() - begin
        row.update(measure(keras_model, blob, x_test, y_test, runs))
        row["blob"] = blob
    except Exception as error:  # an exporter's failure is a row of the table, not the end of the run
        traceback.print_exc()
        row["error"] = error_text(error)
    for message in row["warnings"]:
        print(f"[{label} / {exporter}] UserWarning: {message}", flush=True)
    print(table_a([row]).splitlines()[-1], flush=True)
    return row


def tfmot_qat(model, x_train, y_train, learning_rate: float, seed: int):
    import tensorflow_model_optimization as tfmot

    qat = tfmot.quantization.keras.quantize_model(model)
    qat.compile(keras.optimizers.Adam(learning_rate), LOSS, metrics=["accuracy"])
    keras.utils.set_random_seed(seed)
    qat.fit(x_train, y_train, epochs=1, batch_size=64, verbose=2)
    return qat


def run_model_a(label: str, make_model, data, float_lr: float, qat_lr: float, epochs: int, args, kerasq_reference: bool) -> dict:
    (x_train, y_train), (x_test, y_test) = data
    calibration = x_train[: args.calibration]
    start = time.perf_counter()
    keras.utils.set_random_seed(args.seed)
    model = make_model()
    model.compile(keras.optimizers.Adam(float_lr), LOSS, metrics=["accuracy"])
    print(f"{label}: float, {model.count_params():,} parameters, {epochs} epochs on {len(x_train)} images", flush=True)
    model.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=2)
    result = {"model": label, "params": model.count_params(), "train": len(x_train), "epochs": epochs,
              "float_acc": accuracy(model, x_test, y_test), "rows": []}
    print(f"{label}: float Keras accuracy {result['float_acc']:.4f}", flush=True)

    print(f"{label}: tfmot QAT", flush=True)
    try:
        qat = tfmot_qat(model, x_train, y_train, qat_lr, args.seed)
        qat_acc = accuracy(qat, x_test, y_test)
    except Exception as error:  # tfmot refusing the model is a result
        traceback.print_exc()
        qat, qat_acc = None, None
        result["rows"].append({"model": label, "route": "tfmot QAT", "exporter": "—", "keras_acc": None,
                               "warnings": [], "error": error_text(error)})
    if qat is not None:
        result["rows"].append(export_row(label, "tfmot QAT", "TFLiteConverter", qat, qat_acc,
                                         lambda: converter_int8(qat, calibration), x_test, y_test, args.runs))
        result["rows"].append(export_row(label, "tfmot QAT", "tflite_export.convert", qat, qat_acc,
                                         lambda: tflite_export.convert(qat), x_test, y_test, args.runs))
        converter_row, kerasq_row = result["rows"][-2:]
        if "error" not in converter_row and "error" not in kerasq_row:
            # The two files of one Keras model against each other: the converter's outputs on the
            # kerasq file's output grid, code by code.
            kerasq_row["vs_converter"] = tflite_export.compare(
                lambda batch, training=False: tflite_export.run(converter_row["blob"], batch), kerasq_row["blob"], x_test)
        # Last, as it changes the tfmot model: its biases onto the int32 grid the file adds them on.
        kerasq.round_tfmot_biases(qat)
        result["rows"].append(export_row(label, "tfmot QAT, biases rounded", "tflite_export.convert", qat,
                                         accuracy(qat, x_test, y_test), lambda: tflite_export.convert(qat),
                                         x_test, y_test, args.runs))
    if kerasq_reference:
        print(f"{label}: kerasq QAT", flush=True)
        try:
            qmodel = kerasq.quantize_model(model, "int8", calibration_data=calibration)
            qmodel.compile(keras.optimizers.Adam(qat_lr), LOSS, metrics=["accuracy"])
            keras.utils.set_random_seed(args.seed)
            qmodel.fit(x_train, y_train, epochs=1, batch_size=64, verbose=2)
            result["rows"].append(export_row(label, "kerasq QAT (reference)", "tflite_export.convert", qmodel,
                                             accuracy(qmodel, x_test, y_test), lambda: tflite_export.convert(qmodel),
                                             x_test, y_test, args.runs))
        except Exception as error:
            traceback.print_exc()
            result["rows"].append({"model": label, "route": "kerasq QAT (reference)", "exporter": "—",
                                   "keras_acc": None, "warnings": [], "error": error_text(error)})
    result["seconds"] = time.perf_counter() - start
    print(f"{label}: {result['seconds']:.0f} s", flush=True)
    return result


def keras3_cnn(shape=(28, 28, 1), classes: int = 10):
    """A Keras 3 functional CNN: two Conv+BN+ReLU blocks with pooling, a separable conv, GAP, Dense softmax."""
    import keras as keras3

    layers = keras3.layers
    inputs = keras3.Input(shape, name="image")
    x = layers.Conv2D(32, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    x = layers.MaxPooling2D(2, name="pool1")(x)
    x = layers.Conv2D(64, 3, padding="same", use_bias=False, name="conv2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.ReLU(name="relu2")(x)
    x = layers.MaxPooling2D(2, name="pool2")(x)
    x = layers.SeparableConv2D(64, 3, padding="same", activation="relu", name="sep3")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(classes, activation="softmax", name="fc")(x)
    return keras3.Model(inputs, outputs, name="keras3_cnn")


def run_keras3(data, args) -> dict:
    import keras as keras3

    (x_train, y_train), (x_test, y_test) = data
    calibration = x_train[: args.calibration]
    start = time.perf_counter()
    keras3.utils.set_random_seed(args.seed)
    k3 = keras3_cnn(x_train.shape[1:])
    k3.compile(keras3.optimizers.Adam(3e-3), keras3.losses.SparseCategoricalCrossentropy(), metrics=["accuracy"])
    print(f"Keras 3 CNN: Keras {keras3.__version__}, {k3.count_params():,} parameters, {args.k3_epochs} epochs on "
          f"{len(x_train)} images", flush=True)
    k3.fit(x_train, y_train, epochs=args.k3_epochs, batch_size=64, verbose=2)
    result = {"train": len(x_train), "epochs": args.k3_epochs, "params": k3.count_params(), "rows": []}
    result["float_acc"] = float(np.mean(np.argmax(k3.predict(x_test, verbose=0, batch_size=256), -1) == y_test))
    sample = x_test[:1000]
    converted = kerasq.keras3.to_tf_keras(k3)
    result["max_abs_diff"] = float(np.max(np.abs(
        converted.predict(sample, verbose=0, batch_size=256) - k3.predict(sample, verbose=0, batch_size=256))))
    result["diff_samples"] = len(sample)
    print(f"Keras 3 CNN: float accuracy {result['float_acc']:.4f}; tf_keras copy max |diff| "
          f"{result['max_abs_diff']:.3g} on {len(sample)} images", flush=True)

    try:
        qmodel = kerasq.quantize_model(k3, "int8", calibration_data=calibration)
        qmodel.compile(keras.optimizers.Adam(5e-4), LOSS, metrics=["accuracy"])
        keras.utils.set_random_seed(args.seed)
        qmodel.fit(x_train, y_train, epochs=1, batch_size=64, verbose=2)
        result["rows"].append(export_row("Keras 3 CNN", "kerasq QAT", "tflite_export.convert", qmodel,
                                         accuracy(qmodel, x_test, y_test), lambda: tflite_export.convert(qmodel),
                                         x_test, y_test, args.runs))
    except Exception as error:
        traceback.print_exc()
        result["rows"].append({"model": "Keras 3 CNN", "route": "kerasq QAT", "exporter": "—", "keras_acc": None,
                               "warnings": [], "error": error_text(error)})
    try:
        # The Keras model a PTQ file reproduces: the same quantization, calibrated on the same images.
        ptq_model = kerasq.quantize_model(k3, "int8", calibration_data=calibration)
        result["rows"].append(export_row("Keras 3 CNN", "kerasq PTQ", "tflite_export.convert", ptq_model,
                                         accuracy(ptq_model, x_test, y_test),
                                         lambda: tflite_export.convert(k3, representative_data=calibration),
                                         x_test, y_test, args.runs))
    except Exception as error:
        traceback.print_exc()
        result["rows"].append({"model": "Keras 3 CNN", "route": "kerasq PTQ", "exporter": "—", "keras_acc": None,
                               "warnings": [], "error": error_text(error)})
    result["seconds"] = time.perf_counter() - start
    print(f"Keras 3 CNN: {result['seconds']:.0f} s", flush=True)
    return result


def parity_text(p) -> str:
    if p is None:
        return "—"
    if p.max_abs_lsb is None:
        return f"float out / — / — / {100 * p.top1_agreement:.2f}%"
    return (f"{p.max_abs_lsb:.0f} / {100 * p.bit_exact_fraction:.2f}% / {100 * p.within_one_lsb_fraction:.2f}% "
            f"/ {100 * p.top1_agreement:.2f}%")


def table_a(rows: list[dict]) -> str:
    lines = [
        (
            "| model | Keras model | exporter | Keras acc | file acc | parity vs its Keras model: max LSB / bit-exact "
            "/ ≤1 LSB / top-1 agree | vs the TFLiteConverter file: max LSB / bit-exact / top-1 agree | integer-only "
            "| size (B) | latency median / p90 (ms, 1 thr) | warnings |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        keras_acc = "—" if r.get("keras_acc") is None else f"{100 * r['keras_acc']:.2f}"
        if "error" in r:
            lines.append(f"| {r['model']} | {r['route']} | {r['exporter']} | {keras_acc} | error: "
                         f"{r['error'].replace('|', '/')} | | | | | | |")
            continue
        lat = r["latency"]
        v = r.get("vs_converter")
        vs = "—" if v is None else f"{v.max_abs_lsb:.0f} / {100 * v.bit_exact_fraction:.2f}% / {100 * v.top1_agreement:.2f}%"
        lines.append(
            f"| {r['model']} | {r['route']} | {r['exporter']} | {keras_acc} | {100 * r['acc']:.2f} | {parity_text(r['parity'])} "
            f"| {vs} | {'yes' if r['integer_only'] else 'no'} | {r['bytes']:,} | {lat.median_ms:.4f} / {lat.p90_ms:.4f} "
            f"| {len(r['warnings']) or '—'} |"
        )
    return "\n".join(lines)


def table_b(k3: dict) -> str:
    qat = next((r for r in k3["rows"] if r["route"] == "kerasq QAT"), {})
    ptq = next((r for r in k3["rows"] if r["route"] == "kerasq PTQ"), {})

    def cell(row, text):
        if not row:
            return "—"
        return f"error: {row['error'].replace('|', '/')}" if "error" in row else text(row)

    def lsb(row):
        return f"{row['parity'].max_abs_lsb:.0f} / {100 * row['parity'].bit_exact_fraction:.2f}%"

    cells = [
        f"{100 * k3['float_acc']:.2f}",
        f"{k3['max_abs_diff']:.2g} ({k3['diff_samples']} images)",
        cell(qat, lambda r: f"{100 * r['keras_acc']:.2f}"),
        cell(qat, lambda r: f"{100 * r['acc']:.2f}"),
        cell(qat, lsb),
        cell(qat, lambda r: f"{r['bytes']:,}"),
        cell(qat, lambda r: f"{r['latency'].median_ms:.4f}"),
        cell(ptq, lambda r: f"{100 * r['acc']:.2f}"),
        cell(ptq, lsb),
    ]
    lines = [
        (
            "| Keras 3 float acc | tf_keras copy vs Keras 3: max \\|Δ\\| | kerasq QAT Keras acc | QAT file acc "
            "| QAT parity: max LSB / bit-exact | size (B) | latency median (ms, 1 thr) | PTQ file acc "
            "| PTQ parity: max LSB / bit-exact |"
        ),
        "|---|---|---|---|---|---|---|---|---|",
        "| " + " | ".join(cells) + " |",
    ]
    return "\n".join(lines)


def _find(rows, route_prefix, exporter):
    return next((r for r in rows if r["route"].startswith(route_prefix) and r["exporter"] == exporter and "error" not in r), None)


def summary(results: list[dict], k3: dict | None) -> str:
    """What the numbers say, sentence by sentence from the rows."""
    out = []
    for res in results:
        rows = res["rows"]
        conv = _find(rows, "tfmot", "TFLiteConverter")
        ours = _find(rows, "tfmot", "tflite_export.convert")
        ref = _find(rows, "kerasq", "tflite_export.convert")
        failed = [r for r in rows if "error" in r]
        parts = [f"**{res['model']}** (float {100 * res['float_acc']:.2f}%)"]
        if conv and ours:
            p, q = conv["parity"], ours["parity"]
            parts.append(
                f"the tfmot QAT model scores {100 * conv['keras_acc']:.2f}% in Keras; TensorFlow's converter writes a file "
                f"that follows it to {p.max_abs_lsb:.0f} LSB ({100 * p.bit_exact_fraction:.1f}% of outputs bit-exact, "
                f"{100 * p.top1_agreement:.2f}% top-1 agreement, {100 * conv['acc']:.2f}% accuracy), kerasq's exporter one "
                f"that follows it to {q.max_abs_lsb:.0f} LSB ({100 * q.bit_exact_fraction:.1f}% bit-exact, "
                f"{100 * q.top1_agreement:.2f}% top-1, {100 * ours['acc']:.2f}% accuracy)"
            )
            v = ours.get("vs_converter")
            if v is not None:
                parts.append(
                    f"the two files agree with each other on {100 * v.bit_exact_fraction:.2f}% of output codes "
                    f"(max {v.max_abs_lsb:.0f} LSB apart, {100 * v.top1_agreement:.2f}% same top-1)"
                )
                if v.bit_exact_fraction > max(p.bit_exact_fraction, q.bit_exact_fraction):
                    parts.append(
                        "so the files are closer to each other than either is to the tfmot Keras model: the distance to "
                        "that model (which computes in float with fake quantization) is common to both exporters, "
                        "not added by one of them"
                    )
            parts.append(
                f"both files are {'integer-only' if conv['integer_only'] and ours['integer_only'] else 'not both integer-only'}, "
                f"{conv['bytes']:,} vs {ours['bytes']:,} bytes, {conv['latency'].median_ms:.3f} vs "
                f"{ours['latency'].median_ms:.3f} ms median latency"
            )
            parts.append(
                f"kerasq's exporter named {sum(len(w.splitlines()) - 1 for w in ours['warnings'])} tensor(s) it cannot round "
                "exactly as tfmot does" if ours["warnings"] else "kerasq's exporter raised no warning"
            )
        rounded = _find(rows, "tfmot QAT, biases rounded", "tflite_export.convert")
        if rounded:
            r = rounded["parity"]
            parts.append(
                f"with its biases moved onto the int32 grid the file adds them on (`kerasq.round_tfmot_biases`) the tfmot "
                f"model scores {100 * rounded['keras_acc']:.2f}% and its file follows it to {r.max_abs_lsb:.0f} LSB "
                f"({100 * r.bit_exact_fraction:.2f}% bit-exact, {100 * r.top1_agreement:.2f}% top-1): the codes "
                "this brings into agreement are those the float bias TFLite cannot hold had moved; the rest comes "
                "from the tfmot model's float32 arithmetic, which the integer kernels do not share"
            )
        if ref:
            parts.append(
                f"the kerasq QAT route from the same float model reaches {100 * ref['acc']:.2f}% with its file at "
                f"{ref['parity'].max_abs_lsb:.0f} LSB / {100 * ref['parity'].bit_exact_fraction:.1f}% bit-exact to its Keras model"
            )
        for r in failed:
            parts.append(f"{r['route']} / {r['exporter']} failed: {r['error']}")
        out.append("- " + "; ".join(parts) + ".")
    if k3 is not None:
        qat = _find(k3["rows"], "kerasq QAT", "tflite_export.convert")
        ptq = _find(k3["rows"], "kerasq PTQ", "tflite_export.convert")
        parts = [(f"**Keras 3 CNN** (float {100 * k3['float_acc']:.2f}% in Keras 3): its tf_keras copy differs from it "
                  f"by at most {k3['max_abs_diff']:.2g} on {k3['diff_samples']} test images")]
        if qat:
            parts.append(f"kerasq QAT reaches {100 * qat['keras_acc']:.2f}% in Keras and {100 * qat['acc']:.2f}% as a file "
                         f"({qat['parity'].max_abs_lsb:.0f} LSB, {100 * qat['parity'].bit_exact_fraction:.1f}% bit-exact)")
        if ptq:
            parts.append(f"PTQ straight from the Keras 3 model gives {100 * ptq['acc']:.2f}% "
                         f"({ptq['parity'].max_abs_lsb:.0f} LSB to the calibrated kerasq model)")
        for r in k3["rows"]:
            if "error" in r:
                parts.append(f"{r['route']} failed: {r['error']}")
        out.append("- " + "; ".join(parts) + ".")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.environ.get("KERASQ_DATA"))
    parser.add_argument("--quick", action="store_true", help="tiny subsets and 1 epoch everywhere (a smoke run)")
    parser.add_argument("--cnn_epochs", type=int, default=5, help="float epochs of the demo CNN (60,000 images)")
    parser.add_argument("--cnn_width", type=int, default=32, help="width of the demo CNN")
    parser.add_argument("--mnv2_train", type=int, default=20000, help="training images of MobileNetV2")
    parser.add_argument("--mnv2_epochs", type=int, default=6, help="float epochs of MobileNetV2")
    parser.add_argument("--k3_epochs", type=int, default=2, help="float epochs of the Keras 3 CNN (60,000 images)")
    parser.add_argument("--test", type=int, default=10000, help="test images")
    parser.add_argument("--calibration", type=int, default=1000, help="calibration / representative images (training set)")
    parser.add_argument("--runs", type=int, default=200, help="timed invokes per latency measurement")
    parser.add_argument("--out", default="examples/results/tfmot_interop.md")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train = None
    if args.quick:
        train, args.mnv2_train, args.test, args.runs, args.calibration = 2000, 1000, 500, 50, 256
        args.cnn_epochs = args.mnv2_epochs = args.k3_epochs = 1

    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = load_dataset("fashion_mnist", args.data_dir)
    x_train, y_train = x_train[:train], y_train[:train]
    x_test, y_test = x_test[: args.test], y_test[: args.test]
    gray = ((x_train, y_train), (x_test, y_test))
    rgb = ((to_rgb(x_train[: args.mnv2_train]), y_train[: args.mnv2_train]), (to_rgb(x_test), y_test))

    results = [
        run_model_a("demo CNN", lambda: demo_cnn((28, 28, 1), 10, args.cnn_width, softmax=True), gray,
                    3e-3, 5e-4, args.cnn_epochs, args, kerasq_reference=True),
        run_model_a("MobileNetV2 α0.35", lambda: build("MobileNetV2", 32), rgb,
                    1e-3, 1e-4, args.mnv2_epochs, args, kerasq_reference=False),
    ]
    try:
        k3 = run_keras3(gray, args)
    except Exception as error:  # Keras 3 training or conversion failing is reported, not hidden
        traceback.print_exc()
        k3 = None
        k3_error = error_text(error)
    total = time.perf_counter() - start

    text_a = table_a([r for res in results for r in res["rows"]])
    text_b = table_b(k3) if k3 is not None else f"error: {k3_error}"
    notes = []
    for res in results + ([k3] if k3 is not None else []):
        for r in res["rows"]:
            for message in r["warnings"]:
                notes.append(f"- {r['model']}, {r['route']} → {r['exporter']}:\n\n  ```\n  "
                             + "\n  ".join(message.splitlines()) + "\n  ```")
    setup = (
        f"Fashion-MNIST, {len(x_test):,} test images for every accuracy, parity and top-1 figure; seed {args.seed}. "
        f"demo CNN: width {args.cnn_width} ({results[0]['params']:,} parameters), softmax output, "
        f"{epochs(args.cnn_epochs)} (Adam 3e-3) on {len(x_train):,} images, 1 QAT epoch (Adam 5e-4). "
        f"MobileNetV2 α0.35 at 32x32x3 ({results[1]['params']:,} parameters): {epochs(args.mnv2_epochs)} (Adam 1e-3) "
        f"on {min(args.mnv2_train, len(x_train)):,} images, 1 QAT epoch (Adam 1e-4). "
        + (f"Keras 3 CNN ({k3['params']:,} parameters): {epochs(k3['epochs'])} in Keras 3 (Adam 3e-3) on "
           f"{k3['train']:,} images, 1 kerasq QAT epoch (Adam 5e-4). " if k3 is not None else "")
        + f"Representative / calibration data: the first {args.calibration:,} training images. Latency: "
        f"`tflite_export.benchmark(num_threads=1)`, {args.runs} timed invokes after 20 warm-up, batch 1, "
        f"random int8 input; on a shared 2-core machine, compare within a column of one run. "
        f"Times: demo CNN {results[0]['seconds']:.0f} s, MobileNetV2 {results[1]['seconds']:.0f} s"
        + (f", Keras 3 CNN {k3['seconds']:.0f} s" if k3 is not None else "") + f"; {total:.0f} s in all."
    )
    command = "python examples/benchmark_tfmot.py " + " ".join(sys.argv[1:])
    document = (
        f"# tfmot QAT through two exporters, and a Keras 3 model through kerasq\n\n"
        f"`{command}`\n\n"
        f"Run {datetime.date.today().isoformat()}. {machine(PACKAGES)}\n\n"
        f"## A. The same tfmot QAT model, exported by TensorFlow's converter and by `tflite_export.convert`\n\n"
        f"Parity compares each file with the Keras model it was written from (`tflite_export.compare`: "
        f"the Keras output put on the file's output grid, code by code); \"vs the TFLiteConverter file\" compares "
        f"the two files of one tfmot model with each other the same way. \"warnings\" counts the "
        f"`UserWarning`s the exporter raised (listed below).\n\n{text_a}\n\n"
        f"## B. A Keras 3 model through kerasq\n\n"
        f"PTQ parity is against `kerasq.quantize_model(k3_model, \"int8\", calibration_data=...)`, the Keras model "
        f"the PTQ file reproduces.\n\n{text_b}\n\n"
        f"{setup}\n\n"
        f"## Exporter warnings\n\n" + ("\n".join(notes) if notes else "None.") + "\n\n"
        f"## What the numbers say\n\n{summary(results, k3)}\n"
    )
    print()
    print(text_a)
    print()
    print(text_b)
    print()
    print(setup)
    print()
    print(summary(results, k3))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        f.write(document)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
