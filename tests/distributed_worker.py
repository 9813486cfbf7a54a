"""Child process of ``tests/test_distributed.py``: quantization-aware training on one device and
under a ``tf.distribute`` strategy, the same model, data and seed; prints nothing, writes JSON.

Devices must be configured before TensorFlow initializes its runtime, which pytest has done long
before a test runs, so the distributed runs live in this script:

    python tests/distributed_worker.py mirrored --out result.json [--schemes int8 xnor ...]
    TF_CONFIG='{"cluster": {"worker": ["localhost:P0", "localhost:P1"]}, "task": {"type": "worker", "index": 0}}' \\
        python tests/distributed_worker.py multiworker --out worker0.json [--schemes ...]

``mirrored`` splits the CPU into two logical devices and compares, per scheme, the single-device
model with the one built under ``MirroredStrategy(["/cpu:0", "/cpu:1"])``; ``multiworker`` runs
one task of a two-worker ``MultiWorkerMirroredStrategy`` (one CPU replica per worker) next to the
single-process model. Every global batch has halves of different scale, so a replica that only
saw its own half would record another range. The JSON holds, per case, every model variable
(value, whether trainable, the largest difference between its per-replica copies), the
inference outputs and the exported file's integer outputs, after a forward-only update
(``model(x, training=True)`` inside ``strategy.run``) and after a short ``fit``; then
calibration under the strategy and save/load round trips (``mirrored`` only).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

import numpy as np

from kerasq.compat import keras, tf

GLOBAL_BATCH = 16
SAMPLES = 48  # three steps per epoch
INPUT_SHAPE = (6, 6, 2)
CLASSES = 3
OBSERVERS = ("minmax", "ema", "percentile", "mse", "kl", "aciq")


def configure_devices(mode: str) -> None:
    """Two logical CPUs for ``mirrored`` (before the runtime starts); nothing for ``multiworker``."""
    if mode == "mirrored":
        cpus = tf.config.list_physical_devices("CPU")
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


def cases() -> dict[str, tuple[object, list[str]]]:
    """``{label: (scheme, names)}``: every distinct scheme of ``available_schemes()`` and the names that give it,
    plus PACT with a small ``α`` (so that ``α`` clips and learns) and power-of-two trained with INQ."""
    import kerasq

    distinct: dict[str, tuple[object, list[str]]] = {}
    for name in kerasq.available_schemes():
        scheme = kerasq.get_scheme(name)
        same = [names for known, names in distinct.values() if known == scheme]
        if same:
            same[0].append(name)
        else:
            distinct[name] = (scheme, [name])
    distinct["pact_alpha0.5"] = (kerasq.schemes.PACT(alpha_init=0.5), [])
    distinct["po2_inq"] = (kerasq.get_scheme("po2"), [])
    return distinct


def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(x, y, x_test)``: in every global batch the second half is 3x the scale of the first."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-0.5, 1.0, size=(SAMPLES, *INPUT_SHAPE)).astype(np.float32)
    half = GLOBAL_BATCH // 2
    for start in range(0, SAMPLES, GLOBAL_BATCH):
        x[start + half : start + GLOBAL_BATCH] *= 3.0
    y = rng.integers(0, CLASSES, size=SAMPLES).astype(np.int32)
    x_test = rng.uniform(-1.0, 2.5, size=(32, *INPUT_SHAPE)).astype(np.float32)
    return x, y, x_test


def float_model() -> keras.Model:
    """Conv(relu) → Conv(relu) → GAP → Dense: the middle layers get the scheme (first/last stay int8)."""
    init = keras.initializers.GlorotUniform
    inputs = keras.Input(INPUT_SHAPE, name="image")
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", kernel_initializer=init(1), name="conv1")(inputs)
    h = keras.layers.Conv2D(8, 3, padding="same", activation="relu", kernel_initializer=init(2), name="conv2")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    outputs = keras.layers.Dense(CLASSES, kernel_initializer=init(3), name="fc")(h)
    return keras.Model(inputs, outputs, name="net")


def quantized(scheme) -> keras.Model:
    """The quantized model, compiled (SGD: Adam would amplify float-rounding differences of tiny gradients)."""
    import kerasq

    model = kerasq.quantize_model(float_model(), scheme)
    model.compile(
        keras.optimizers.SGD(0.05), keras.losses.SparseCategoricalCrossentropy(from_logits=True), run_eagerly=False
    )
    return model


def replica_spread(variable) -> float:
    """Largest difference between the per-replica copies of a distributed variable (0 for a plain one)."""
    copies = getattr(variable, "values", None)
    if not copies or len(copies) < 2:
        return 0.0
    first = np.asarray(copies[0].numpy(), np.float64)
    return max(float(np.max(np.abs(np.asarray(c.numpy(), np.float64) - first), initial=0.0)) for c in copies[1:])


def variables(model: keras.Model) -> list[dict]:
    """Every model variable in order: name, trainable, value (a flat list), spread between replica copies."""
    return [
        {
            "name": v.name,
            "trainable": bool(v.trainable),
            "value": np.asarray(v.numpy(), np.float64).ravel().tolist(),
            "replica_spread": replica_spread(v),
        }
        for v in model.weights
    ]


def exported(model: keras.Model, x_test: np.ndarray) -> dict:
    """The exported file's SHA-256 and its raw integer outputs on ``x_test``."""
    import tflite_export

    blob = tflite_export.convert(model)
    raw = tflite_export.run(blob, x_test, dequantize=False)
    return {"sha256": hashlib.sha256(blob).hexdigest(), "outputs": np.asarray(raw, np.int64).ravel().tolist()}


def snapshot(model: keras.Model, x_test: np.ndarray, export: bool = False) -> dict:
    """Variables and inference outputs (and, with ``export``, the file's outputs) of ``model``."""
    result = {
        "variables": variables(model),
        "outputs": np.asarray(model.predict(x_test, batch_size=GLOBAL_BATCH, verbose=0), np.float64).ravel().tolist(),
    }
    if export:
        result["export"] = exported(model, x_test)
    return result


def forward_steps(model: keras.Model, strategy, x: np.ndarray) -> None:
    """Forward passes in training mode (observers update, no weight update) on global batches of 16, 16 and 13.

    Under ``strategy`` replica ``r`` gets the ``r``-th part of ``np.array_split`` of each global
    batch: 8 and 8, then 7 and 6, so a statistic of unequal slices (XNOR's mean) must weigh them
    by size. (``fit`` sees full batches only: Keras averages the loss per replica and divides by
    the number of replicas, which differs from one device on an uneven last batch.)
    """
    batches = [x[:GLOBAL_BATCH], x[GLOBAL_BATCH : 2 * GLOBAL_BATCH], x[2 * GLOBAL_BATCH : 3 * GLOBAL_BATCH - 3]]
    if strategy is None:
        step = tf.function(lambda batch: model(batch, training=True))
        for batch in batches:
            step(tf.constant(batch))
        return
    replicas = strategy.num_replicas_in_sync

    @tf.function
    def step(batch):
        return strategy.run(lambda part: model(part, training=True), args=(batch,))

    for batch in batches:
        parts = np.array_split(batch, replicas)
        step(strategy.experimental_distribute_values_from_function(
            lambda context, parts=parts: tf.constant(parts[context.replica_id_in_sync_group])
        ))


def dataset(x: np.ndarray, y: np.ndarray) -> tf.data.Dataset:
    """Global batches in order; sharded by data, so each worker/replica reads its part of every batch."""
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options)


def train(label: str, scheme, strategy, x, y, x_test, export: bool) -> dict:
    """Build under ``strategy`` (None: one device), forward-only update, then a short ``fit``; snapshots of both."""
    import kerasq

    keras.utils.set_random_seed(0)
    if strategy is None:
        model = quantized(scheme)
    else:
        with strategy.scope():
            model = quantized(scheme)
    started = time.perf_counter()
    forward_steps(model, strategy, x)
    result = {"forward": snapshot(model, x_test)}
    callbacks, masks = [], []
    if label == "po2_inq":
        mask = model.get_layer("conv2").weight_quantizer_variables["mask"]
        record = keras.callbacks.LambdaCallback(
            on_epoch_end=lambda epoch, logs: masks.append(
                {"quantized": float(np.mean(mask.numpy())), "replica_spread": replica_spread(mask)}
            )
        )
        callbacks = [kerasq.callbacks.INQ((0.5, 1.0)), record]
    model.fit(dataset(x, y), epochs=2 if callbacks else 1, verbose=0, callbacks=callbacks)
    result["fit"] = snapshot(model, x_test, export=export)
    result["fit"]["output_scale"] = float(model.get_layer("fc").output_params().scale)
    if masks:
        result["inq_masks"] = masks  # the mask after each epoch, before INQ sets it to ones at the end
    result["seconds"] = time.perf_counter() - started
    result["model"] = model
    return result


def calibration(strategy, x: np.ndarray) -> dict:
    """Observed state after ``kerasq.calibrate`` per observer: one device, and a mirrored model calibrated
    inside and outside the strategy's scope (each calibration replaces the previous statistics)."""
    import kerasq

    keras.utils.set_random_seed(0)
    models = {"single": kerasq.quantize_model(float_model(), "int8")}
    with strategy.scope():
        models["in_scope"] = kerasq.quantize_model(float_model(), "int8")
        models["out_of_scope"] = kerasq.quantize_model(float_model(), "int8")
    result = {}
    for observer in OBSERVERS:
        for where, model in models.items():
            if where == "in_scope":
                with strategy.scope():
                    kerasq.calibrate(model, x, batch_size=GLOBAL_BATCH, observer=observer)
            else:
                kerasq.calibrate(model, x, batch_size=GLOBAL_BATCH, observer=observer)
        result[observer] = {where: variables(model) for where, model in models.items()}
    return result


def save_load(strategy, model: keras.Model, x, y, x_test) -> dict:
    """``model`` (trained under ``strategy``) saved as .keras and loaded outside and inside the scope."""
    import kerasq

    expected = np.asarray(model.predict(x_test, verbose=0))
    weights = [np.asarray(w) for w in model.get_weights()]
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.keras")
        model.save(path)
        for where in ("out_of_scope", "in_scope"):
            if where == "in_scope":
                with strategy.scope():
                    loaded = keras.models.load_model(path)
            else:
                loaded = keras.models.load_model(path)
            same_weights = all(np.array_equal(a, b) for a, b in zip(weights, loaded.get_weights()))
            outputs = np.asarray(loaded.predict(x_test, verbose=0))
            entry = {
                "type": type(loaded).__name__,
                "same_weights": bool(same_weights and len(weights) == len(loaded.get_weights())),
                "max_output_difference": float(np.max(np.abs(outputs - expected))),
            }
            if where == "in_scope":  # the loaded model keeps training under the strategy
                loaded.fit(dataset(x, y), epochs=1, verbose=0)
                entry["fit_after_load_finite"] = bool(np.all(np.isfinite(loaded.predict(x_test, verbose=0))))
                entry["replica_spread_after_fit"] = max(replica_spread(v) for v in loaded.weights)
                entry["is_quantized_model"] = isinstance(loaded, kerasq.QuantizedModel)
            result[where] = entry
    return result


def strip(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "model"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("mirrored", "multiworker"))
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--schemes", nargs="*", help="case labels (default: every case)")
    parser.add_argument("--no-extras", action="store_true", help="skip calibration and save/load (mirrored)")
    args = parser.parse_args(argv)

    configure_devices(args.mode)
    if args.mode == "mirrored":
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    else:  # created before any other TensorFlow op, as collective ops require
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    import kerasq  # noqa: F401  (after the devices are set)

    x, y, x_test = data()
    all_cases = cases()
    labels = args.schemes or list(all_cases)
    unknown = sorted(set(labels) - set(all_cases))
    if unknown:
        parser.error(f"unknown cases {unknown}; known: {sorted(all_cases)}")
    started = time.perf_counter()
    output: dict = {
        "mode": args.mode,
        "replicas": strategy.num_replicas_in_sync,
        "names": {label: all_cases[label][1] for label in labels},
        "cases": {},
    }
    export = args.mode == "mirrored"
    last_distributed = None
    for label in labels:
        scheme = all_cases[label][0]
        single = train(label, scheme, None, x, y, x_test, export)
        distributed = train(label, scheme, strategy, x, y, x_test, export)
        output["cases"][label] = {"single": strip(single), "distributed": strip(distributed)}
        last_distributed = distributed["model"]
    if args.mode == "mirrored" and not args.no_extras:
        output["calibration"] = calibration(strategy, x)
        output["save_load"] = save_load(strategy, last_distributed, x, y, x_test)
    output["seconds"] = time.perf_counter() - started
    with open(args.out, "w") as f:
        json.dump(output, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
