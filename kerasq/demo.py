"""The end-to-end job: float training → QAT → integer-only TFLite, with a measured report.

    kerasq demo                                   # digits shipped inside kerasq, no download
    kerasq demo --dataset mnist --data_dir DIR    # real MNIST IDX files

Trains ``kerasq.models.demo_cnn`` in float, fine-tunes it with quantization-aware training,
writes ``float.tflite`` (TensorFlow's converter, float32) and ``int8.tflite`` (kerasq's
integer-only writer) plus ``report.md`` to ``out``, and prints the same table.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Callable

import kerasq
import tflite_export
from kerasq.compat import keras, tf
from kerasq.datasets import IDX_DATASETS, load_dataset
from kerasq.models import demo_cnn

OUTPUT_FILES = ("float.tflite", "int8.tflite", "report.md")

# Per data set: float epochs, QAT epochs, width (digits is 1.8k images, MNIST 60k).
DEFAULTS = {"digits": (30, 5, 16), "mnist": (3, 1, 16), "fashion_mnist": (5, 2, 16)}


@dataclass
class DemoResult:
    dataset: str
    scheme: str
    float_keras_accuracy: float
    qat_keras_accuracy: float
    float_tflite_accuracy: float
    int8_tflite_accuracy: float
    parity_max_lsb: float
    parity_bit_exact: float
    parity_top1_agreement: float
    float_tflite_bytes: int
    int8_tflite_bytes: int
    float_latency_ms: float
    int8_latency_ms: float
    integer_only: bool
    per_channel_ops: int
    seconds: float

    def table(self) -> str:
        rows = [
            ("float Keras accuracy", f"{self.float_keras_accuracy:.4f}"),
            (f"QAT ({self.scheme}) Keras accuracy", f"{self.qat_keras_accuracy:.4f}"),
            ("float TFLite accuracy", f"{self.float_tflite_accuracy:.4f}"),
            ("int8 TFLite accuracy", f"{self.int8_tflite_accuracy:.4f}"),
            ("parity int8 TFLite vs QAT Keras", f"max {self.parity_max_lsb:.0f} LSB, {100 * self.parity_bit_exact:.2f}% bit-exact, "
             f"{100 * self.parity_top1_agreement:.2f}% top-1 agree"),
            ("file size float / int8", f"{self.float_tflite_bytes:,} B / {self.int8_tflite_bytes:,} B "
             f"({self.float_tflite_bytes / self.int8_tflite_bytes:.2f}x)"),
            ("latency float / int8 (1 thread, median)", f"{self.float_latency_ms:.4f} ms / {self.int8_latency_ms:.4f} ms"),
            ("int8 model integer-only", f"{'yes' if self.integer_only else 'NO'}, {self.per_channel_ops} per-channel ops"),
        ]
        width = max(len(r[0]) for r in rows)
        lines = [f"| {'metric'.ljust(width)} | value |", f"|{'-' * (width + 2)}|-------|"]
        lines += [f"| {name.ljust(width)} | {value} |" for name, value in rows]
        return "\n".join(lines)


class PhaseProgress(keras.callbacks.Callback):
    """One progress bar for a whole ``fit`` (every epoch of a training phase), not a line per epoch.

    On a terminal a Keras ``Progbar`` moves in place; when stdout is not a terminal (a log, CI)
    one line is printed when the phase ends. Loss and metrics are the last epoch's values.
    """

    def __init__(self, epochs: int, steps_per_epoch: int):
        super().__init__()
        self.total = max(1, epochs * steps_per_epoch)
        self.seen = 0
        self.started = 0.0
        self.logs: dict = {}
        self.bar: keras.utils.Progbar | None = None

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()
        if hasattr(sys.stdout, "isatty") and sys.stdout.isatty():
            self.bar = keras.utils.Progbar(self.total, interval=0.2, unit_name="step")

    def on_train_batch_end(self, batch, logs=None):
        self.seen += 1
        self.logs = {name: float(value) for name, value in (logs or {}).items()}
        if self.bar is not None:
            self.bar.stateful_metrics.update(self.logs)
            self.bar.update(min(self.seen, self.total), list(self.logs.items()))

    def on_train_end(self, logs=None):
        if self.bar is not None:
            if self.seen < self.total:  # stopped early: close the bar where it is
                self.bar.update(self.seen, finalize=True)
            return
        metrics = "".join(f" - {name}: {value:.4f}" for name, value in self.logs.items())
        print(f"      {self.seen}/{self.total} steps - {time.perf_counter() - self.started:.0f}s{metrics}", flush=True)


def _fit(model: keras.Model, x, y, epochs: int, verbose: bool) -> None:
    """``model.fit`` with one progress bar per phase, or Keras' per-epoch logs when ``verbose``."""
    if epochs <= 0:
        return
    batch_size = 32
    if verbose:
        model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=2)
        return
    steps = -(-len(x) // batch_size)
    model.fit(x, y, epochs=epochs, batch_size=batch_size, verbose=0, callbacks=[PhaseProgress(epochs, steps)])


def float_tflite(model: keras.Model) -> bytes:
    """A float32 .tflite of ``model`` through TensorFlow's converter (the baseline)."""
    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def run_demo(
    dataset: str = "digits",
    data_dir: str | None = None,
    out: str = "kerasq_out",
    *,
    scheme: str = "int8",
    epochs: int | None = None,
    qat_epochs: int | None = None,
    seed: int = 0,
    verbose: bool = False,
    log: Callable[[str], None] = print,
) -> DemoResult:
    """Run the demo and write ``float.tflite``, ``int8.tflite`` and ``report.md`` into ``out``.

    ``out`` is checked before training starts (created if missing; it must be a writable folder,
    neither ``data_dir`` itself nor inside the folder the IDX files are read from); the three
    files are written as one set at the end.

    ``verbose`` prints Keras' log line for every epoch instead of one progress bar per phase.
    """
    if dataset not in DEFAULTS:
        raise ValueError(f"dataset must be one of {sorted(DEFAULTS)}. Received: dataset={dataset!r}")
    default_epochs, default_qat_epochs, width = DEFAULTS[dataset]
    epochs = default_epochs if epochs is None else epochs
    qat_epochs = default_qat_epochs if qat_epochs is None else qat_epochs
    # The output folder is checked before minutes of training, not after.
    if data_dir is not None and dataset != "digits":
        # The data folder itself, or anything inside the folder the IDX files are read from.
        if os.path.realpath(out) == os.path.realpath(data_dir):
            raise ValueError(f"The output folder {out!r} is the data folder {data_dir!r}; choose another --out.")
        tflite_export.files.ensure_distinct(out, [os.path.join(data_dir, sub) for sub in IDX_DATASETS[dataset]])
    tflite_export.files.check_output_folder(out, OUTPUT_FILES)
    start = time.perf_counter()
    log(f"[1/6] loading {dataset}")
    (x_train, y_train), (x_test, y_test) = load_dataset(dataset, data_dir)
    log(f"      {len(x_train)} train / {len(x_test)} test images of shape {x_train.shape[1:]}")

    keras.utils.set_random_seed(seed)
    model = demo_cnn(x_train.shape[1:], int(y_train.max()) + 1, width)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    log(f"[2/6] training float model ({model.count_params():,} parameters, {epochs} epochs)")
    _fit(model, x_train, y_train, epochs, verbose)
    float_acc = model.evaluate(x_test, y_test, verbose=0)[1]

    log(f"[3/6] quantization-aware training, scheme={scheme} ({qat_epochs} epochs)")
    qmodel = kerasq.quantize_model(model, scheme, calibration_data=x_train[:512])
    qmodel.compile(keras.optimizers.Adam(5e-4), keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    _fit(qmodel, x_train, y_train, qat_epochs, verbose)
    qat_acc = qmodel.evaluate(x_test, y_test, verbose=0)[1]

    log("[4/6] exporting float and integer-only TFLite")
    float_bytes = float_tflite(model)
    int8_bytes = tflite_export.convert(qmodel)
    report = tflite_export.inspect(int8_bytes)

    log("[5/6] evaluating with the LiteRT interpreter")
    float_tfl_acc = tflite_export.evaluate(float_bytes, x_test, y_test)
    int8_tfl_acc = tflite_export.evaluate(int8_bytes, x_test, y_test)
    parity = tflite_export.compare(qmodel, int8_bytes, x_test)

    log("[6/6] measuring latency (1 thread, 200 runs after 20 warm-up)")
    float_lat = tflite_export.benchmark(float_bytes, num_threads=1)
    int8_lat = tflite_export.benchmark(int8_bytes, num_threads=1)

    result = DemoResult(
        dataset=dataset,
        scheme=scheme,
        float_keras_accuracy=float(float_acc),
        qat_keras_accuracy=float(qat_acc),
        float_tflite_accuracy=float(float_tfl_acc),
        int8_tflite_accuracy=float(int8_tfl_acc),
        parity_max_lsb=float(parity.max_abs_lsb),
        parity_bit_exact=float(parity.bit_exact_fraction),
        parity_top1_agreement=float(parity.top1_agreement),
        float_tflite_bytes=len(float_bytes),
        int8_tflite_bytes=len(int8_bytes),
        float_latency_ms=float_lat.median_ms,
        int8_latency_ms=int8_lat.median_ms,
        integer_only=report.is_integer_only,
        per_channel_ops=len(report.per_channel_ops),
        seconds=time.perf_counter() - start,
    )
    markdown = (
        f"# kerasq demo: {dataset}, scheme {scheme}\n\n{result.table()}\n\n"
        f"Run time {result.seconds:.0f} s. Integer model:\n\n```\n{report}\n```\n"
    )
    # One set: a failure while writing leaves the previous run's three files as they were.
    contents = dict(zip(OUTPUT_FILES, (float_bytes, int8_bytes, markdown.encode())))
    tflite_export.files.save_all({os.path.join(out, name): data for name, data in contents.items()})
    log("")
    log(result.table())
    log(f"\nwrote {out}/float.tflite, {out}/int8.tflite, {out}/report.md in {result.seconds:.0f} s")
    return result


def result_dict(result: DemoResult) -> dict:
    return asdict(result)
