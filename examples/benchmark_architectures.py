"""Stock tf_keras.applications architectures: float vs kerasq QAT vs kerasq PTQ vs tfmot, integer-only export.

    python examples/benchmark_architectures.py --data_dir ../shared/data [--only MobileNetV2,ResNet50] [--out bench_out]

Each architecture, unmodified (``weights=None``, 10 classes), is trained briefly in float on
Fashion-MNIST as RGB (28x28 centred in 32x32x3, or 96x96x3 for the latency rows; pixels in
[0, 1], or [0, 255] for MobileNetV3 and EfficientNet, which rescale their input themselves), then:

- **kerasq QAT**: ``quantize_model`` (calibrated on 512 training images), one QAT epoch,
  ``tflite_export.convert``;
- **kerasq PTQ**: ``tflite_export.convert(float_model, representative_data=...)``;
- **tfmot**: ``tfmot.quantization.keras.quantize_model``, one QAT epoch, TFLiteConverter with
  full-integer int8 (where tfmot accepts the model; otherwise its refusal is reported).

For each file: LiteRT top-1 accuracy on the test images, parity with the Keras model it came from
(max output difference in int8 LSBs, bit-exact share, top-1 agreement), integer-only or not, size,
and latency (median invoke, batch 1, 1 thread) against the float32 file from TensorFlow's
converter. Batch norm layers train with momentum 0.9 here (the applications' 0.99/0.999 need far
more steps than a benchmark gives before their moving statistics describe the data). Prints a
markdown table and writes it to ``--out/architectures.md``.
"""

from __future__ import annotations

import argparse
import os
import time
import traceback

from benchmark_int8 import converter_int8  # examples/ is on the path when this script runs

import kerasq
import tflite_export
from kerasq.compat import keras
from kerasq.datasets import load_dataset, to_rgb
from kerasq.demo import float_tflite

apps = keras.applications
ARCHITECTURES = {
    "MobileNet": lambda shape: apps.MobileNet(shape, alpha=0.25, weights=None, classes=10),
    "MobileNetV2": lambda shape: apps.MobileNetV2(shape, alpha=0.35, weights=None, classes=10),
    "MobileNetV3Small": lambda shape: apps.MobileNetV3Small(shape, weights=None, classes=10),
    "MobileNetV3Small_minimalistic": lambda shape: apps.MobileNetV3Small(shape, minimalistic=True, weights=None, classes=10),
    "MobileNetV3Large": lambda shape: apps.MobileNetV3Large(shape, weights=None, classes=10),
    "ResNet50": lambda shape: apps.ResNet50(weights=None, input_shape=shape, classes=10),
    "ResNet50V2": lambda shape: apps.ResNet50V2(weights=None, input_shape=shape, classes=10),
    "EfficientNetB0": lambda shape: apps.EfficientNetB0(weights=None, input_shape=shape, classes=10),
    "EfficientNetV2B0": lambda shape: apps.EfficientNetV2B0(weights=None, input_shape=shape, classes=10),
    "DenseNet121": lambda shape: apps.DenseNet121(weights=None, input_shape=shape, classes=10),
    "NASNetMobile": lambda shape: apps.NASNetMobile(weights=None, input_shape=shape, classes=10),
}
LARGE_INPUT = ("MobileNetV2", "ResNet50")  # also measured at 96x96
LOSS = keras.losses.SparseCategoricalCrossentropy()


def build(name: str, size: int) -> keras.Model:
    model = ARCHITECTURES[name]((size, size, 3))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9
    return model


def tfmot_file(model: keras.Model, x_train, y_train, calibration) -> tuple[keras.Model | None, bytes | None, str]:
    """tfmot QAT (one epoch) + TFLiteConverter full-integer, or the reason tfmot refuses the model."""
    import tensorflow_model_optimization as tfmot

    try:
        qat = tfmot.quantization.keras.quantize_model(model)
    except Exception as error:  # tfmot's refusal is a result here
        return None, None, str(error).strip().splitlines()[0][:120]
    qat.compile(keras.optimizers.Adam(1e-4), LOSS)
    qat.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    return qat, converter_int8(qat, calibration), ""


def measure(keras_model, blob: bytes, x_test, y_test) -> dict:
    parity = tflite_export.compare(keras_model, blob, x_test) if keras_model is not None else None
    return {
        "acc": tflite_export.evaluate(blob, x_test, y_test),
        "parity": parity,
        "bytes": len(blob),
        "integer_only": tflite_export.inspect(blob).is_integer_only,
        "ms": tflite_export.benchmark(blob, num_threads=1, warmup=20, runs=100).median_ms,
    }


def parity_text(p) -> str:
    return "—" if p is None else f"{p.max_abs_lsb:.0f} / {100 * p.bit_exact_fraction:.1f}% / {100 * p.top1_agreement:.1f}%"


def run_one(name: str, size: int, data, args) -> dict:
    (x_train, y_train), (x_test, y_test) = data
    calibration = x_train[:512]
    keras.utils.set_random_seed(args.seed)
    start = time.perf_counter()
    model = build(name, size)
    model.compile(keras.optimizers.Adam(1e-3), LOSS)
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=0)
    row = {"name": name, "size": size, "float": measure(model, float_tflite(model), x_test, y_test)}
    qmodel = kerasq.quantize_model(model, calibration_data=calibration)
    qmodel.compile(keras.optimizers.Adam(1e-4), LOSS)
    qmodel.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    row["qat"] = measure(qmodel, tflite_export.convert(qmodel), x_test, y_test)
    ptq_model = kerasq.quantize_model(model, calibration_data=calibration)
    row["ptq"] = measure(ptq_model, tflite_export.convert(model, representative_data=calibration), x_test, y_test)
    tfmot_model, tfmot_blob, refusal = tfmot_file(model, x_train, y_train, calibration)
    row["tfmot"] = measure(tfmot_model, tfmot_blob, x_test, y_test) if tfmot_blob is not None else refusal
    row["seconds"] = time.perf_counter() - start
    return row


def table(rows: list[dict]) -> str:
    lines = [
        "| architecture | input | float acc | kerasq QAT acc | parity QAT (LSB / bit-exact / top-1) | kerasq PTQ acc "
        "| parity PTQ | integer-only | size int8 / float (kB) | ms float / int8 (1 thr) | tfmot QAT acc | tfmot parity |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['name']} | {r['size']} | error: {r['error']} |" + " |" * 9)
            continue
        f, q, p, t = r["float"], r["qat"], r["ptq"], r["tfmot"]
        tfmot_acc, tfmot_parity = (
            (f"{100 * t['acc']:.2f}", parity_text(t["parity"])) if isinstance(t, dict) else ("refused", t.replace("|", "/"))
        )
        lines.append(
            f"| {r['name']} | {r['size']} | {100 * f['acc']:.2f} | {100 * q['acc']:.2f} | {parity_text(q['parity'])} "
            f"| {100 * p['acc']:.2f} | {parity_text(p['parity'])} | {'yes' if q['integer_only'] and p['integer_only'] else 'no'} "
            f"| {q['bytes'] / 1024:.0f} / {f['bytes'] / 1024:.0f} ({q['bytes'] / f['bytes']:.2f}x) "
            f"| {f['ms']:.2f} / {q['ms']:.2f} ({q['ms'] / f['ms']:.2f}x) | {tfmot_acc} | {tfmot_parity} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.environ.get("KERASQ_DATA"))
    parser.add_argument("--only", default="", help="comma-separated architecture names (default: all)")
    parser.add_argument("--train", type=int, default=4096, help="training images")
    parser.add_argument("--test", type=int, default=1000, help="test images")
    parser.add_argument("--epochs", type=int, default=2, help="float epochs")
    parser.add_argument("--large_size", type=int, default=96, help="input size of the latency rows (0: none)")
    parser.add_argument("--out", default="bench_out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    names = [n for n in args.only.split(",") if n] or list(ARCHITECTURES)
    unknown = sorted(set(names) - set(ARCHITECTURES))
    if unknown:
        parser.error(f"unknown architectures {unknown}; choose from {sorted(ARCHITECTURES)}")
    (x_train, y_train), (x_test, y_test) = load_dataset("fashion_mnist", args.data_dir)
    runs = [(n, 32) for n in names] + [(n, args.large_size) for n in LARGE_INPUT if n in names and args.large_size]
    start = time.perf_counter()
    rows = []
    for name, size in runs:
        # MobileNetV3 and EfficientNet rescale their input themselves: they take pixels in [0, 255].
        pixels = 255.0 if name.startswith(("MobileNetV3", "EfficientNet")) else 1.0
        data = (
            (pixels * to_rgb(x_train[: args.train], size), y_train[: args.train]),
            (pixels * to_rgb(x_test[: args.test], size), y_test[: args.test]),
        )
        try:
            row = run_one(name, size, data, args)
        except Exception as error:  # one architecture's failure is a row of the table, not the end of the run
            traceback.print_exc()
            row = {"name": name, "size": size, "error": f"{type(error).__name__}: {str(error).splitlines()[0][:100]}"}
        rows.append(row)
        print(f"{name} {size}x{size}: {row.get('seconds', 0):.0f} s", flush=True)
        print(table(rows[-1:]), flush=True)
    text = table(rows)
    print()
    print(text)
    footer = (
        f"\nFashion-MNIST as RGB, {args.train} training / {args.test} test images, {args.epochs} float epochs + 1 QAT "
        f"epoch, seed {args.seed}; {time.perf_counter() - start:.0f} s in all."
    )
    print(footer)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "architectures.md"), "w") as f:
        f.write(text + "\n" + footer + "\n")


if __name__ == "__main__":
    main()
