"""What one quantization-aware training step costs, relative to a float step, kerasq vs tfmot.

    python examples/benchmark_training_cost.py --data_dir ../shared/data [--steps 40 --rounds 3]

A 6-layer conv net (4 conv (+BN) + ReLU, global average pool, dense) on Fashion-MNIST at batch
128. Every model is compiled once and warmed up; then, in each round, every model trains
``steps`` batches in turn (``train_on_batch``, interleaved so machine noise hits all alike) and
each step is timed (wall clock and process CPU time). The table reports the median step over all
rounds and its ratio to the float model's. tfmot's QAT is its ``quantize_model`` (default
8-bit scheme) on the same net.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

import kerasq
from kerasq import keras
from kerasq.datasets import load_dataset


def six_layer_net(width: int = 32, batch_norm: bool = True) -> keras.Model:
    """Four 3x3 conv (+BN) + ReLU layers with two 2x2 poolings, global average pool, dense."""
    inputs = keras.Input((28, 28, 1), name="image")
    x = inputs
    for i, (filters, pool) in enumerate(((width, False), (width, True), (2 * width, False), (2 * width, True))):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=not batch_norm, name=f"conv{i + 1}")(x)
        if batch_norm:
            x = keras.layers.BatchNormalization(name=f"bn{i + 1}")(x)
        x = keras.layers.ReLU(name=f"relu{i + 1}")(x)
        if pool:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i + 1}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(10, name="fc")(x), name="six_layer_net")


def tfmot_model(model: keras.Model) -> keras.Model:
    import tensorflow_model_optimization as tfmot

    return tfmot.quantization.keras.quantize_model(model)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=os.environ.get("KERASQ_DATA"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--width", type=int, default=32, help="filters of the first conv (then 2x)")
    parser.add_argument("--no_batch_norm", action="store_true", help="convs with a bias and no BatchNormalization")
    parser.add_argument("--out", default=None, help="also write the table to this markdown file")
    args = parser.parse_args()

    (x_train, y_train), _ = load_dataset("fashion_mnist", args.data_dir)
    batches = args.steps * args.batch_size
    x, y = x_train[:batches], y_train[:batches]
    keras.utils.set_random_seed(0)
    float_model = six_layer_net(args.width, not args.no_batch_norm)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    float_model.compile(keras.optimizers.Adam(1e-3), loss)
    float_model.fit(x, y, batch_size=args.batch_size, epochs=1, verbose=0)  # trained BN statistics

    models = {"float": float_model}
    for scheme in ("int8", "pact", "twn", "bwn"):
        models[f"kerasq {scheme}"] = kerasq.quantize_model(float_model, scheme, calibration_data=x[:256])
    try:
        models["tfmot int8"] = tfmot_model(float_model)
    except Exception as error:  # reported, not fatal: the table shows what ran
        print(f"tfmot quantize_model failed: {error!r}")
    for name, model in models.items():
        if name != "float":
            model.compile(keras.optimizers.Adam(1e-4), loss)
        model.fit(x[: 4 * args.batch_size], y[: 4 * args.batch_size], batch_size=args.batch_size, epochs=1, verbose=0)

    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            for step in range(args.steps):
                batch = slice(step * args.batch_size, (step + 1) * args.batch_size)
                start_wall, start_cpu = time.perf_counter(), time.process_time()
                model.train_on_batch(x[batch], y[batch])
                wall[name].append(time.perf_counter() - start_wall)
                cpu[name].append(time.process_time() - start_cpu)

    base_wall, base_cpu = float(np.median(wall["float"])), float(np.median(cpu["float"]))
    lines = [
        f"Training step cost, six_layer_net (width {args.width}, "
        f"{'no batch norm' if args.no_batch_norm else 'batch norm'}) on Fashion-MNIST, batch {args.batch_size}, "
        f"{args.steps} steps x {args.rounds} interleaved rounds, median step",
        "",
        "| model | wall ms / step | vs float | CPU ms / step | vs float |",
        "|---|---|---|---|---|",
    ]
    for name in models:
        step_wall, step_cpu = float(np.median(wall[name])), float(np.median(cpu[name]))
        lines.append(
            f"| {name} | {1e3 * step_wall:.1f} | {step_wall / base_wall:.2f}x | {1e3 * step_cpu:.1f} | {step_cpu / base_cpu:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
