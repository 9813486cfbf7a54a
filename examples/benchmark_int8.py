"""int8 on MNIST: float vs kerasq QAT vs kerasq PTQ vs tfmot QAT + TFLiteConverter, in one run.

    python examples/benchmark_int8.py --data_dir ../shared/data [--dataset mnist] [--out bench_out]

Trains ``kerasq.models.demo_cnn`` once in float, then derives four .tflite files from it and
measures each with the LiteRT interpreter: test accuracy, parity with the Keras model it came
from (max output difference in int8 LSBs, share of bit-exact outputs, top-1 agreement), file
size, whether it is integer-only, and latency (median of 300 invokes, batch 1) at 1 and 2
threads. Prints a markdown table and writes it to ``--out/int8_<dataset>.md``.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import kerasq
import tflite_export
from kerasq.compat import keras, tf
from kerasq.datasets import load_dataset
from kerasq.demo import float_tflite
from kerasq.models import demo_cnn

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def tfmot_reference(model: keras.Model, x_train, y_train, epochs: int, calibration: np.ndarray):
    """The same model through plain tfmot QAT and TensorFlow's full-integer converter."""
    import tensorflow_model_optimization as tfmot

    qat = tfmot.quantization.keras.quantize_model(model)
    qat.compile(keras.optimizers.Adam(5e-4), LOSS, metrics=["accuracy"])
    qat.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=2)
    return qat, converter_int8(qat, calibration)


def converter_int8(model: keras.Model, calibration: np.ndarray, per_channel: bool = True) -> bytes:
    """TensorFlow's full-integer conversion (int8 ops, input and output) with ``calibration`` as representative data.

    ``per_channel=False`` sets the converter's ``_experimental_disable_per_channel`` switch
    (one weight scale per tensor), which TensorFlow 2.21 honours on this path.
    """
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter._experimental_disable_per_channel = not per_channel
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(len(calibration)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def measure(name: str, keras_model, blob: bytes, x_test, y_test) -> dict:
    report = tflite_export.inspect(blob)
    parity = tflite_export.compare(keras_model, blob, x_test) if keras_model is not None else None
    latency = [tflite_export.benchmark(blob, num_threads=t, warmup=30, runs=300).median_ms for t in (1, 2)]
    keras_acc = None
    if keras_model is not None:
        logits = keras_model.predict(x_test, verbose=0, batch_size=256)
        keras_acc = float(np.mean(np.argmax(logits, -1) == y_test))
    return {
        "model": name,
        "keras_acc": keras_acc,
        "tflite_acc": tflite_export.evaluate(blob, x_test, y_test),
        "parity": parity,
        "bytes": len(blob),
        "integer_only": report.is_integer_only,
        "per_channel_ops": len(report.per_channel_ops),
        "lat1": latency[0],
        "lat2": latency[1],
    }


def table(rows: list[dict]) -> str:
    head = (
        "| model | Keras acc | TFLite acc | parity: max LSB / bit-exact / top-1 agree | size (B) | integer-only "
        "| per-channel ops | latency 1 thr (ms) | latency 2 thr (ms) |\n|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        p = r["parity"]
        parity = (
            "—" if p is None else
            f"{p.max_abs_lsb:.0f} / {100 * p.bit_exact_fraction:.1f}% / {100 * p.top1_agreement:.2f}%"
            if p.max_abs_lsb is not None else f"float out / — / {100 * p.top1_agreement:.2f}%"
        )
        keras_acc = "—" if r["keras_acc"] is None else f"{r['keras_acc']:.4f}"
        lines.append(
            f"| {r['model']} | {keras_acc} | {r['tflite_acc']:.4f} | {parity} | {r['bytes']:,} | "
            f"{'yes' if r['integer_only'] else 'no'} | {r['per_channel_ops']} | {r['lat1']:.4f} | {r['lat2']:.4f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="mnist", choices=["mnist", "fashion_mnist", "digits"])
    parser.add_argument("--data_dir", default=os.environ.get("KERASQ_DATA"))
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--qat_epochs", type=int, default=1)
    parser.add_argument("--width", type=int, default=48)
    parser.add_argument("--out", default="bench_out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    start = time.perf_counter()
    (x_train, y_train), (x_test, y_test) = load_dataset(args.dataset, args.data_dir)
    calibration = x_train[:1000]
    keras.utils.set_random_seed(args.seed)
    model = demo_cnn(x_train.shape[1:], 10, args.width)
    model.compile(keras.optimizers.Adam(3e-3), LOSS, metrics=["accuracy"])
    print(f"float training: {model.count_params():,} parameters, {args.epochs} epochs on {len(x_train)} images")
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=2)

    print("kerasq int8 QAT")
    qmodel = kerasq.quantize_model(model, "int8")
    qmodel.compile(keras.optimizers.Adam(5e-4), LOSS, metrics=["accuracy"])
    kerasq.calibrate(qmodel, calibration)
    qmodel.fit(x_train, y_train, epochs=args.qat_epochs, batch_size=64, verbose=2)

    print("kerasq int8 PTQ")
    ptq_model = kerasq.calibrate(kerasq.quantize_model(model, "int8"), calibration)

    print("tfmot QAT + TFLiteConverter (reference)")
    tfmot_model, tfmot_blob = tfmot_reference(model, x_train, y_train, args.qat_epochs, calibration)

    print("measuring")
    rows = [
        measure("float32 (TFLiteConverter)", model, float_tflite(model), x_test, y_test),
        measure("kerasq int8 QAT", qmodel, tflite_export.convert(qmodel), x_test, y_test),
        measure("kerasq int8 PTQ", ptq_model, tflite_export.convert(ptq_model), x_test, y_test),
        measure("tfmot int8 QAT + TFLiteConverter", tfmot_model, tfmot_blob, x_test, y_test),
    ]
    text = table(rows)
    print()
    print(text)
    print(f"\n{args.dataset}, {len(x_test)} test images, {time.perf_counter() - start:.0f} s")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, f"int8_{args.dataset}.md"), "w") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
