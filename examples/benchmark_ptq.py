"""Post-training quantization: kerasq's methods against the TFLite converter and ai-edge-quantizer.

    python examples/benchmark_ptq.py --data_dir ../shared/data [--only MobileNetLike,MobileNetV2,ResNet50]

Three float models are trained on Fashion-MNIST as RGB (28x28 centred in 32x32x3, pixels in
[0, 1]): a small MobileNet-like net (depthwise-separable blocks, batch norm, ReLU6: the kind
whose per-tensor PTQ collapses in the seed's table), MobileNetV2 (alpha 0.35) and ResNet50 from
``tf_keras.applications`` (``weights=None``). Each is then quantized without training, all
calibrated on the same 1,000 training images:

- references: TensorFlow's converter (``Optimize.DEFAULT`` + representative dataset, int8 ops,
  per channel and, with its ``_experimental_disable_per_channel`` switch, per tensor), and
  Google's ``ai-edge-quantizer`` (``static_wi8_ai8`` recipe on the converter's float file);
- kerasq: ``kerasq.ptq.quantize`` with each activation method (minmax, ema, percentile, mse,
  kl, aciq) x {per-channel, per-tensor} x {w8a8, w4a8}; then, with the mse method, cross-layer
  equalization, bias correction, MSE weight clipping and AdaRound.

Every row is the exported .tflite run by LiteRT on the test images: top-1 accuracy, its
difference to the float Keras model, and parity with the Keras model it came from (max LSB).
Prints markdown and writes it to ``--out/ptq.md``.
"""

from __future__ import annotations

import argparse
import os
import time
import traceback

import numpy as np
from benchmark_architectures import build  # examples/ is on the path when this script runs
from benchmark_int8 import converter_int8

import kerasq
import kerasq.ptq
import tflite_export
from kerasq.compat import keras
from kerasq.datasets import load_dataset, to_rgb
from kerasq.demo import float_tflite
from kerasq.schemes import Linear

LOSS = keras.losses.SparseCategoricalCrossentropy()


def mobilenet_like(shape=(32, 32, 3), classes: int = 10) -> keras.Model:
    """Conv 3x3/2 + four depthwise-separable blocks (BN, ReLU6 after every conv), GAP, Dense softmax."""
    inputs = keras.Input(shape, name="image")

    def conv_bn(x, conv, name):
        x = conv(x)
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return keras.layers.ReLU(6.0, name=f"{name}_relu")(x)

    x = conv_bn(inputs, keras.layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem"), "stem")
    for i, (filters, stride) in enumerate([(32, 1), (64, 2), (64, 1), (128, 2)]):
        x = conv_bn(x, keras.layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"dw{i}"), f"dw{i}")
        x = conv_bn(x, keras.layers.Conv2D(filters, 1, use_bias=False, name=f"pw{i}"), f"pw{i}")
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="fc")(x)
    return keras.Model(inputs, outputs, name="mobilenet_like")


MODELS = {
    "MobileNetLike": lambda: mobilenet_like(),
    "MobileNetV2": lambda: build("MobileNetV2", 32),
    "ResNet50": lambda: build("ResNet50", 32),
}


def ai_edge_quantizer_int8(float_file: bytes, calibration: np.ndarray) -> bytes:
    """``ai-edge-quantizer``'s ``static_wi8_ai8`` recipe (int8 per-channel weights, int8 activations
    from min/max calibration) on a float .tflite with one single-input signature."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    (key, spec), = Interpreter(model_content=float_file).get_signature_list().items()
    (input_name,) = spec["inputs"]
    tool = quantizer.Quantizer(bytearray(float_file), recipe.static_wi8_ai8())
    result = tool.calibrate({key: [{input_name: calibration[i : i + 1]} for i in range(len(calibration))]})
    return bytes(tool.quantize(result).quantized_model)


def kerasq_configs(adaround_iterations: int, bits: tuple[int, ...]) -> list[tuple[str, dict]]:
    """(label, kerasq.ptq.quantize options) of every kerasq row."""
    configs = []
    for weight_bits in bits:
        for per_channel in (True, False):
            scheme = Linear(weight_bits=weight_bits, per_channel=per_channel)
            for method in kerasq.ptq.METHODS:
                configs.append((method, {"scheme": scheme, "method": method}))
            base = {"scheme": scheme, "method": "mse"}
            variants = [
                ("mse + equalize", {"equalize": True}),
                ("mse + bias correction", {"bias_correction": "empirical"}),
                ("mse + equalize + bias correction", {"equalize": True, "bias_correction": "empirical"}),
            ]
            if weight_bits < 8:
                variants += [
                    ("mse + weight mse", {"weight_method": "mse"}),
                    ("mse + adaround", {"weight_method": "mse", "adaround": True}),
                    ("mse + equalize + adaround + bias correction",
                     {"equalize": True, "weight_method": "mse", "adaround": True, "bias_correction": "empirical"}),
                ]
            for label, options in variants:
                if options.get("adaround"):
                    options = {**options, "adaround_iterations": adaround_iterations}
                configs.append((label, {**base, **options}))
    return configs


def bits_text(scheme: Linear) -> str:
    return f"w{scheme.weight_bits}a{scheme.activation_bits} {'per-channel' if scheme.per_channel else 'per-tensor'}"


def run_model(name: str, data, args) -> list[dict]:
    (x_train, y_train), (x_test, y_test) = data
    calibration = x_train[: args.calibration]
    keras.utils.set_random_seed(args.seed)
    model = MODELS[name]()
    model.compile(keras.optimizers.Adam(1e-3), LOSS)
    start = time.perf_counter()
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=0)
    train_seconds = time.perf_counter() - start
    float_acc = float(np.mean(np.argmax(model.predict(x_test, verbose=0, batch_size=256), -1) == y_test))
    print(f"{name}: float Keras top-1 {100 * float_acc:.2f}% ({train_seconds:.0f} s training)", flush=True)
    rows = [{"model": name, "config": "float (Keras)", "bits": "float", "acc": float_acc}]
    equalized = kerasq.ptq.equalize(model, calibration)  # ReLU6 between equalized layers becomes ReLU
    equalized_acc = float(np.mean(np.argmax(equalized.predict(x_test, verbose=0, batch_size=256), -1) == y_test))
    rows.append({"model": name, "config": "float equalized (Keras)", "bits": "float", "acc": equalized_acc})

    def add(config: str, bits: str, make, keras_model=None):
        begin = time.perf_counter()
        try:
            produced = make()
            blob, keras_model = produced if isinstance(produced, tuple) else (produced, keras_model)
            seconds = time.perf_counter() - begin
            acc = tflite_export.evaluate(blob, x_test, y_test)
            parity = tflite_export.compare(keras_model, blob, x_test[: args.parity]) if keras_model is not None else None
            row = {"acc": acc, "seconds": seconds, "lsb": None if parity is None else parity.max_abs_lsb,
                   "integer_only": tflite_export.inspect(blob).is_integer_only}
        except Exception as error:  # a failing configuration is a row of the table
            traceback.print_exc()
            row = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:120]}"}
        row.update({"model": name, "config": config, "bits": bits})
        rows.append(row)
        print(row_text(row, float_acc), flush=True)

    float_file = float_tflite(model)
    add("float .tflite (TF converter)", "float", lambda: float_file)
    add("TFLite converter PTQ", "w8a8 per-channel", lambda: converter_int8(model, calibration))
    add("TFLite converter PTQ", "w8a8 per-tensor", lambda: converter_int8(model, calibration, per_channel=False))
    add("ai-edge-quantizer static_wi8_ai8", "w8a8 per-channel", lambda: ai_edge_quantizer_int8(float_file, calibration))

    qmodel = kerasq.ptq.quantize(model, calibration, verbose=0)
    begin = time.perf_counter()
    kerasq.calibrate(qmodel, calibration, observer="kl")
    kl_seconds = time.perf_counter() - begin
    print(f"{name}: KL calibration of {len(calibration)} samples: {kl_seconds:.1f} s", flush=True)
    rows.append({"model": name, "config": "KL calibration seconds", "bits": "", "kl_seconds": kl_seconds})

    for label, options in kerasq_configs(args.adaround_iterations, args.bits):
        def make(options=options):
            ptq_model = kerasq.ptq.quantize(model, calibration, verbose=0, max_samples=args.max_samples, **options)
            return tflite_export.convert(ptq_model), ptq_model
        add(f"kerasq {label}", bits_text(options["scheme"]), make)
    return rows


def row_text(row: dict, float_acc: float) -> str:
    if "kl_seconds" in row:
        return ""
    if "error" in row:
        return f"| {row['model']} | {row['bits']} | {row['config']} | error: {row['error']} | | | |"
    delta = 100 * (row["acc"] - float_acc)
    lsb = "—" if row.get("lsb") is None else f"{row['lsb']:.0f}"
    seconds = "—" if row.get("seconds") is None else f"{row['seconds']:.1f}"
    return f"| {row['model']} | {row['bits']} | {row['config']} | {100 * row['acc']:.2f} | {delta:+.2f} | {lsb} | {seconds} |"


def table(rows: list[dict]) -> str:
    lines = [
        "| model | bits | configuration | TFLite top-1 % | vs float (pt) | parity (max LSB vs its Keras model) | quantize + export s |",
        "|---|---|---|---|---|---|---|",
    ]
    float_accs = {r["model"]: r["acc"] for r in rows if r["config"] == "float (Keras)"}
    for row in rows:
        if row["config"] == "float (Keras)":
            lines.append(f"| {row['model']} | float | float (Keras) | {100 * row['acc']:.2f} | | | |")
        elif row["config"] == "float equalized (Keras)":
            delta = 100 * (row["acc"] - float_accs[row["model"]])
            lines.append(f"| {row['model']} | float | float, equalized (ReLU6 → ReLU) (Keras) | {100 * row['acc']:.2f} | {delta:+.2f} | | |")
        elif "kl_seconds" not in row:
            lines.append(row_text(row, float_accs[row["model"]]))
    return "\n".join(lines)


def _best(rows: list[dict], keep) -> float:
    found = [r["acc"] for r in rows if keep(r)]
    return max(found) if found else float("nan")


def summary(rows: list[dict]) -> str:
    """The issue's targets, checked on the rows."""
    out = []
    for name in dict.fromkeys(r["model"] for r in rows):
        model_rows = [r for r in rows if r["model"] == name and "acc" in r]
        float_acc = next(r["acc"] for r in model_rows if r["config"] == "float (Keras)")
        kq = [r for r in model_rows if r["config"].startswith("kerasq") and "lsb" in r]
        refs = [r for r in model_rows if r["config"].startswith(("TFLite converter", "ai-edge"))]
        pc8 = _best(kq, lambda r: r["bits"] == "w8a8 per-channel")
        pt8_eq = _best(kq, lambda r: r["bits"] == "w8a8 per-tensor" and "equalize" in r["config"])
        w4_ada = _best(kq, lambda r: r["bits"].startswith("w4a8") and "adaround" in r["config"])
        best_ref = _best(refs, lambda r: True)
        worst_w8 = min([r["acc"] for r in kq if r["bits"] == "w8a8 per-channel"] or [float("nan")])
        kl = next((r["kl_seconds"] for r in rows if r["model"] == name and "kl_seconds" in r), float("nan"))
        lsb = max([r["lsb"] for r in kq] or [float("nan")])
        out.append(
            f"- {name}: float {100 * float_acc:.2f}%; best per-channel w8a8 {100 * (pc8 - float_acc):+.2f} pt "
            f"(target ≥ -0.3); best per-tensor w8a8 with equalization {100 * (pt8_eq - float_acc):+.2f} pt (target ≥ -1); "
            f"best w4a8 with AdaRound {100 * (w4_ada - float_acc):+.2f} pt (target ≥ -2); best reference (w8a8) "
            f"{100 * best_ref:.2f}%, lowest kerasq per-channel w8a8 row {100 * worst_w8:.2f}%; "
            f"KL calibration {kl:.1f} s (target < 10 s); max parity {lsb:.0f} LSB."
        )
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default=os.environ.get("KERASQ_DATA"))
    parser.add_argument("--only", default="", help="comma-separated model names (default: all)")
    parser.add_argument("--train", type=int, default=20000, help="training images")
    parser.add_argument("--test", type=int, default=2000, help="test images")
    parser.add_argument("--epochs", type=int, default=4, help="float epochs")
    parser.add_argument("--calibration", type=int, default=1000, help="calibration images (from the training set)")
    parser.add_argument("--parity", type=int, default=256, help="test images for the parity column")
    parser.add_argument("--adaround_iterations", type=int, default=500)
    parser.add_argument("--max_samples", type=int, default=512, help="samples per layer for AdaRound and bias correction")
    parser.add_argument("--bits", default="8,4", help="weight bit widths of the kerasq rows")
    parser.add_argument("--out", default="bench_out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.bits = tuple(int(b) for b in args.bits.split(","))
    names = [n for n in args.only.split(",") if n] or list(MODELS)
    unknown = sorted(set(names) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {sorted(MODELS)}")
    (x_train, y_train), (x_test, y_test) = load_dataset("fashion_mnist", args.data_dir)
    data = ((to_rgb(x_train[: args.train]), y_train[: args.train]), (to_rgb(x_test[: args.test]), y_test[: args.test]))
    start = time.perf_counter()
    rows = []
    for name in names:
        rows += run_model(name, data, args)
    text = table(rows) + "\n\n" + summary(rows)
    footer = (
        f"\nFashion-MNIST as RGB 32x32, {args.train} training images ({args.epochs} float epochs), {args.test} test "
        f"images, {args.calibration} calibration images, AdaRound {args.adaround_iterations} iterations and "
        f"{args.max_samples} samples per layer, seed {args.seed}; {time.perf_counter() - start:.0f} s in all."
    )
    print()
    print(text)
    print(footer)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ptq.md"), "w") as f:
        f.write(text + "\n" + footer + "\n")


if __name__ == "__main__":
    main()
