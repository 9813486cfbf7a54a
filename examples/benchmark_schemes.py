"""Every scheme on the same CNN: accuracy, exact export, parity, bits, size and latency.

    python examples/benchmark_schemes.py --data_dir ../shared/data --dataset mnist fashion_mnist

For each data set the float ``vgg_cnn`` (``--model demo`` for ``demo_cnn``) is trained once
(``--epochs``); each scheme then starts from those float weights, is fine-tuned with
quantization-aware training (``--qat_epochs`` at ``--lr``), exported with
``tflite_export.convert`` and measured with the LiteRT interpreter. The float reference gets
the same fine-tuning without quantization, so every drop compares equal training budgets.
First and last layers stay int8 for the sub-8-bit schemes (kerasq's default policy). Columns:
Keras accuracy of the QAT model, TFLite accuracy, drop vs the float reference, parity with the Keras model (max
output LSB, top-1 agreement), effective weight bits of the hidden layers (distinct codes in the
.tflite), weight storage types, file size, and median latency (1 thread, batch 1). The last
column checks the targets: drop ≤ 0.5 pt at 4 bits, ≤ 1.5 pt ternary, ≤ 3 pt binary weights.
Writes ``--out/schemes_<dataset>.md`` and a plot ``--out/schemes_<dataset>.png`` if matplotlib
is installed.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import kerasq
import tflite_export
from kerasq.compat import keras
from kerasq.datasets import load_dataset
from kerasq.models import demo_cnn, vgg_cnn
from kerasq.schemes import Linear, get_scheme

LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

# (row label, scheme, target drop in points or None, uses INQ)
SCHEMES = [
    ("int8", lambda: get_scheme("int8"), None, False),
    ("Linear w4a8", lambda: Linear(weight_bits=4, activation_bits=8), 0.5, False),
    ("PACT w4a4", lambda: get_scheme("pact"), 0.5, False),
    ("DoReFa w4a4", lambda: get_scheme("dorefa"), 0.5, False),
    ("BWN", lambda: get_scheme("bwn"), 3.0, False),
    ("XNOR", lambda: get_scheme("xnor"), None, False),
    ("TWN", lambda: get_scheme("twn"), 1.5, False),
    ("TTQ", lambda: get_scheme("ttq"), 1.5, False),
    ("po2-4 + INQ", lambda: get_scheme("po2"), 0.5, True),
    ("k-means-16", lambda: get_scheme("kmeans16"), 0.5, False),
]


def run_scheme(float_model, scheme, use_inq, data, args) -> dict:
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(args.seed)
    qmodel = kerasq.quantize_model(float_model, scheme, calibration_data=x_train[:1000])
    qmodel.compile(keras.optimizers.Adam(args.lr), LOSS, metrics=["accuracy"])
    callbacks = []
    epochs = args.qat_epochs
    if use_inq:
        from kerasq.callbacks import INQ

        callbacks = [INQ()]
        epochs = max(epochs, 4)  # one epoch per INQ step: 50, 75, 87.5, 100 %
    qmodel.fit(x_train, y_train, epochs=epochs, batch_size=64, verbose=0, callbacks=callbacks)
    blob = tflite_export.convert(qmodel)
    report = tflite_export.inspect(blob)
    parity = tflite_export.compare(qmodel, blob, x_test)
    # The same model with low-bit grids stored as widened INT8 instead of packed INT4 (other kernels).
    with kerasq.using_target(qmodel, kerasq.Target(pack_int4=False)):
        parity_int8 = tflite_export.compare(qmodel, tflite_export.convert(qmodel), x_test)
    hidden = report.weights[1:-1] or report.weights
    return {
        "keras_acc": _accuracy(qmodel, x_test, y_test),
        "tflite_acc": tflite_export.evaluate(blob, x_test, y_test),
        "parity": parity,
        "parity_int8": parity_int8,
        "bits": max(w.bits for w in hidden),
        "storage": "/".join(sorted({w.tensor.dtype for w in report.weights})),
        "integer_only": report.is_integer_only,
        "bytes": len(blob),
        "latency": tflite_export.benchmark(blob, num_threads=1, warmup=30, runs=300).median_ms,
    }


def _accuracy(model, x, y) -> float:
    return float(np.mean(np.argmax(model.predict(x, verbose=0, batch_size=256), -1) == y))


def benchmark_dataset(name: str, args) -> str:
    start = time.perf_counter()
    data = load_dataset(name, args.data_dir)
    (x_train, y_train), (x_test, y_test) = data
    keras.utils.set_random_seed(args.seed)
    model = (vgg_cnn if args.model == "vgg" else demo_cnn)(x_train.shape[1:], 10, args.width)
    model.compile(keras.optimizers.Adam(3e-3), LOSS, metrics=["accuracy"])
    print(f"[{name}] float training, {model.name}, {model.count_params():,} parameters, {args.epochs} epochs")
    model.fit(x_train, y_train, epochs=args.epochs, batch_size=64, verbose=0)
    trained_acc = _accuracy(model, x_test, y_test)
    # The float reference: the same fine-tuning every scheme gets, without quantization.
    reference = keras.models.clone_model(model)
    reference.set_weights(model.get_weights())
    keras.utils.set_random_seed(args.seed)
    reference.compile(keras.optimizers.Adam(args.lr), LOSS, metrics=["accuracy"])
    reference.fit(x_train, y_train, epochs=args.qat_epochs, batch_size=64, verbose=0)
    float_acc = _accuracy(reference, x_test, y_test)
    lines = [
        f"**{name}** ({len(x_test)} test images), {model.name} ({model.count_params():,} parameters): float "
        f"accuracy {trained_acc:.4f} after {args.epochs} epochs, **{float_acc:.4f}** after the same "
        f"{args.qat_epochs} fine-tuning epochs the schemes get (the reference for Δ)\n",
        "| scheme | Keras acc | TFLite acc | Δ vs float (pt) | parity max LSB / bit-exact / top-1 | parity, INT8 storage "
        "| hidden weight bits | storage | integer-only | size (B) | latency (ms) | target |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    results = []
    for label, make, target, use_inq in SCHEMES:
        if args.only and label not in args.only:
            continue
        t = time.perf_counter()
        r = run_scheme(model, make(), use_inq, data, args)
        drop = 100 * (float_acc - r["tflite_acc"])
        verdict = "—" if target is None else (f"met (≤{target})" if drop <= target else f"missed by {drop - target:.2f}")
        p, p8 = r["parity"], r["parity_int8"]
        lines.append(
            f"| {label} | {r['keras_acc']:.4f} | {r['tflite_acc']:.4f} | {-drop:+.2f} | {p.max_abs_lsb:.0f} / "
            f"{100 * p.bit_exact_fraction:.1f}% / {100 * p.top1_agreement:.2f}% | {p8.max_abs_lsb:.0f} / "
            f"{100 * p8.bit_exact_fraction:.1f}% | {r['bits']} | {r['storage']} | "
            f"{'yes' if r['integer_only'] else 'no'} | {r['bytes']:,} | {r['latency']:.4f} | {verdict} |"
        )
        results.append((label, r["tflite_acc"]))
        print(lines[-1], f"({time.perf_counter() - t:.0f} s)", flush=True)
    lines.append(f"\n{args.qat_epochs} QAT epochs per scheme (INQ: one per step), total {time.perf_counter() - start:.0f} s")
    _plot(name, float_acc, results, args.out)
    return "\n".join(lines)


def _plot(name, float_acc, results, out) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    labels = [r[0] for r in results]
    fig, ax = plt.subplots(figsize=(9, 3.5))
    ax.bar(labels, [100 * r[1] for r in results], color="#4a7ab5")
    ax.axhline(100 * float_acc, color="black", linestyle="--", label=f"float {100 * float_acc:.2f}%")
    ax.set_ylim(max(0, 100 * min([float_acc] + [r[1] for r in results]) - 5), 100)
    ax.set_ylabel("TFLite top-1 (%)")
    ax.set_title(f"kerasq schemes on {name}")
    ax.legend()
    plt.xticks(rotation=30, ha="right")
    fig.tight_layout()
    fig.savefig(os.path.join(out, f"schemes_{name}.png"), dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", nargs="+", default=["mnist", "fashion_mnist"])
    parser.add_argument("--data_dir", default=os.environ.get("KERASQ_DATA"))
    parser.add_argument("--model", choices=["vgg", "demo"], default="vgg")
    parser.add_argument("--epochs", type=int, default=10, help="float epochs: train to convergence first")
    parser.add_argument("--qat_epochs", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--only", nargs="*", help="row labels to run (default: all)")
    parser.add_argument("--out", default="bench_out")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for name in args.dataset:
        text = benchmark_dataset(name, args)
        print("\n" + text + "\n")
        with open(os.path.join(args.out, f"schemes_{name}.md"), "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
