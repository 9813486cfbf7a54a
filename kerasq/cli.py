"""The ``kerasq`` command line: demo, export, inspect, eval, bench, verify, debug.

    kerasq demo [--dataset digits|mnist|fashion_mnist] [--data_dir DIR] [--out DIR] [--scheme int8] [--verbose]
    kerasq export MODEL.keras --out FILE.tflite [--dataset NAME --data_dir DIR]   # PTQ for float models
    kerasq inspect FILE.tflite [--json]
    kerasq eval FILE.tflite [--dataset NAME --data_dir DIR]
    kerasq bench FILE.tflite [--threads 1 2] [--runs 200] [--warmup 20] [--android [--benchmark_binary PATH]]
    kerasq verify FILE.tflite [--dataset NAME --data_dir DIR] [--samples N]   # exit 1 if > 1 LSB apart
    kerasq debug QAT.keras FILE.tflite [--dataset NAME] [--model_explorer OUT.json]  # exit 1 at a difference

Data directories default to ``$KERASQ_DATA``. Exit status 2 with one line on stderr for bad
input (a missing, unreadable or corrupt file, a folder or FIFO where a file belongs, an
unwritable output, unknown scheme, an output path that is the input); an unexpected failure
prints one line and exits with 1. ``--debug`` (anywhere on the line) shows the traceback
instead. ``kerasq`` alone prints the help and exits with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence


_DESCRIPTION = """\
Quantization-aware training for tf_keras and exact, integer-only TFLite export.

examples:
  kerasq demo                                     # float → QAT → int8 .tflite on digits, ~20 s
  kerasq export qat.keras --out qat.tflite        # a saved quantized Keras model → .tflite
  kerasq inspect kerasq_out/int8.tflite           # what the file holds

Run `kerasq COMMAND --help` for a command's options and examples.
"""

_EXAMPLES = {
    "demo": """\
examples:
  kerasq demo                                            # digits shipped with kerasq, ~20 s
  kerasq demo --dataset mnist --data_dir ../shared/data  # real MNIST from IDX files
  kerasq demo --scheme pact --out pact_out --verbose     # PACT w4a4, Keras' per-epoch logs
""",
    "export": """\
examples:
  kerasq export qat.keras --out qat.tflite                         # a kerasq-quantized model, as trained
  kerasq export float.keras --out ptq.tflite --dataset digits      # a float model: post-training quantization
  kerasq export k3.keras --out k3.tflite --dataset digits         # a Keras 3 model, converted to tf_keras first
  kerasq export float.keras --out ptq.tflite --dataset mnist --data_dir ../shared/data \
      --method kl --equalize --bias_correction empirical           # PTQ methods (kerasq.ptq.quantize)
""",
    "inspect": """\
examples:
  kerasq inspect kerasq_out/int8.tflite
  kerasq inspect kerasq_out/int8.tflite --json > report.json
""",
    "eval": """\
examples:
  kerasq eval kerasq_out/int8.tflite                                  # digits test split
  kerasq eval model.tflite --dataset fashion_mnist --data_dir ../shared/data
""",
    "bench": """\
examples:
  kerasq bench kerasq_out/int8.tflite
  kerasq bench model.tflite --threads 1 2 --runs 500
  kerasq bench model.tflite --android --benchmark_binary android_aarch64_benchmark_model   # on a phone (adb)
""",
    "verify": """\
examples:
  kerasq verify kerasq_out/int8.tflite                                # 256 digits test images
  kerasq verify model.tflite --dataset mnist --data_dir ../shared/data --samples 1000

Runs the same int8 inputs through LiteRT XNNPACK, LiteRT BUILTIN_REF (the baseline), TFLite
Micro and the numpy reference; prints differences in output LSBs and TFLite Micro's smallest
tensor arena. Exit status 0 if every available runtime is within --max_lsb (1) of BUILTIN_REF, else 1.
""",
    "debug": """\
examples:
  kerasq debug qat.keras qat.tflite                                   # 256 digits test images
  kerasq debug qat.keras qat.tflite --dataset mnist --data_dir ../shared/data --model_explorer sqnr.json

For each layer: SQNR and max error between the Keras model and the file's tensor (LiteRT with
every intermediate tensor kept), and the error the layer adds on the file's own inputs. Exit
status 0 if no layer adds a difference above --tolerance LSB, else 1 (the table names it).
""",
}


def _parser() -> argparse.ArgumentParser:
    from kerasq.schemes import available_schemes

    formatter = argparse.RawDescriptionHelpFormatter
    # --debug is accepted before or after the command; SUPPRESS keeps a sub-command's default
    # from overwriting a --debug given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the Python traceback of an error instead of one line")
    parser = argparse.ArgumentParser(prog="kerasq", description=_DESCRIPTION, formatter_class=formatter,
                                     parents=[common])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help, epilog=_EXAMPLES[name], formatter_class=formatter,
                              parents=[common])

    def data_args(p, default="digits"):
        p.add_argument("--dataset", default=default, choices=["digits", "mnist", "fashion_mnist"],
                       help=f"data set (default: {default or 'none'})")
        p.add_argument("--data_dir", default=os.environ.get("KERASQ_DATA"),
                       help="folder with mnist/ and fashion-mnist/ IDX files (default: $KERASQ_DATA)")

    demo = command("demo", "train a small CNN in float, fine-tune it with quantization-aware training and "
                           "write an integer-only .tflite, with a table of accuracy, parity, size and latency")
    data_args(demo)
    demo.add_argument("--out", default="kerasq_out", help="output folder for .tflite files and report.md")
    demo.add_argument("--scheme", default="int8", choices=available_schemes(), help="quantization scheme (default: int8)")
    demo.add_argument("--epochs", type=int, default=None, help="float training epochs")
    demo.add_argument("--qat_epochs", type=int, default=None, help="quantization-aware training epochs")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--verbose", action="store_true", help="Keras' log line for every epoch instead of one bar per phase")

    export = command("export", "write an integer-only .tflite from a saved Keras model")
    export.add_argument("model", help="a .keras/.h5/SavedModel path (kerasq-quantized, or float for PTQ; "
                                      "Keras 3 .keras files are converted to tf_keras)")
    export.add_argument("--out", required=True, help="output .tflite path (must not be the input)")
    data_args(export, default=None)
    export.add_argument("--calibration_samples", type=int, default=500)
    export.add_argument("--method", default="minmax", choices=["minmax", "ema", "percentile", "mse", "kl", "aciq"],
                        help="activation range method for a float model (default: minmax)")
    export.add_argument("--equalize", action="store_true", help="cross-layer equalization first (float model)")
    export.add_argument("--bias_correction", choices=["empirical", "analytical"], help="bias correction (float model)")
    export.add_argument("--adaround", action="store_true", help="AdaRound weight rounding (float model)")

    inspect = command("inspect", "list the ops, dtypes, scales and per-channel weights of a .tflite")
    inspect.add_argument("file")
    inspect.add_argument("--json", action="store_true", help="print the report as JSON")

    evaluate = command("eval", "top-1 accuracy of a .tflite on a test set")
    evaluate.add_argument("file")
    data_args(evaluate)

    bench = command("bench", "LiteRT latency of a .tflite")
    bench.add_argument("file")
    bench.add_argument("--threads", type=int, nargs="+", default=[1])
    bench.add_argument("--runs", type=int, default=200)
    bench.add_argument("--warmup", type=int, default=20)
    bench.add_argument("--android", action="store_true",
                       help="time it on an attached Android device (adb) with LiteRT's benchmark_model instead")
    bench.add_argument("--benchmark_binary", metavar="PATH",
                       help="with --android: the Android benchmark_model binary to push (else the one on the device)")
    bench.add_argument("--serial", help="with --android: the device serial, when several are attached")

    verify = command("verify", "run a .tflite on LiteRT (XNNPACK and reference kernels), TFLite Micro and the "
                               "numpy reference and compare their outputs in LSBs")
    verify.add_argument("file")
    data_args(verify)
    verify.add_argument("--samples", type=int, default=256, help="test images to run (default: 256)")
    verify.add_argument("--max_lsb", type=float, default=1.0,
                        help="output codes a runtime may differ from the reference kernels by (default: 1)")

    debug = command("debug", "per-layer SQNR and max error between a quantized Keras model and its .tflite, and "
                             "the layer where a difference first appears")
    debug.add_argument("model", help="the kerasq-quantized Keras model (.keras) the file was exported from")
    debug.add_argument("file", help="the .tflite file")
    data_args(debug)
    debug.add_argument("--samples", type=int, default=256, help="test images to run (default: 256)")
    debug.add_argument("--runtime", choices=["reference", "optimized"], default="reference",
                       help="LiteRT kernels: reference (BUILTIN_REF, default) or optimized (no XNNPACK)")
    debug.add_argument("--tolerance", type=float, default=None,
                       help="LSB a layer may add (default: 0 for reference, 1 for optimized)")
    debug.add_argument("--model_explorer", metavar="OUT.json",
                       help="also write per-tensor SQNR as Model Explorer node data")
    return parser


def _demo(args) -> None:
    from kerasq.demo import run_demo

    run_demo(args.dataset, args.data_dir, args.out, scheme=args.scheme, epochs=args.epochs,
             qat_epochs=args.qat_epochs, seed=args.seed, verbose=args.verbose)


def _load_model(path: str):
    """A saved model as a tf_keras model, without compile state.

    A file written by Keras 3 is loaded with Keras 3 and converted (``kerasq.keras3``); anything
    else is loaded by tf_keras with kerasq's and tfmot's classes resolvable, so kerasq- and
    tfmot-quantized models (``quantize_model`` / ``quantize_apply``) load too: tfmot's as .h5 or
    SavedModel; a tfmot model in the .keras format gets an error saying to save it as .h5.
    """
    import tensorflow_model_optimization as tfmot

    from kerasq import quantize_scope
    from kerasq.compat import keras
    from kerasq.keras3 import is_keras3_file, load_keras3_model

    if os.path.isfile(path) and is_keras3_file(path):
        return load_keras3_model(path)
    with quantize_scope(), tfmot.quantization.keras.quantize_scope():
        try:
            return keras.models.load_model(path, compile=False)
        except ValueError as error:
            if "expected" in str(error) and "variables" in str(error) and _holds_tfmot_layers(path):
                raise ValueError(
                    f"{path!r} is a tfmot-quantized model in the .keras format, which tf_keras cannot load back "
                    "(tfmot's wrappers save a list of variables that depends on how they were built); save it with "
                    f"model.save('model.h5') and export that. ({error})"
                ) from None
            raise


def _holds_tfmot_layers(path: str) -> bool:
    """Whether the .keras archive at ``path`` names tfmot's quantize layers in its config."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        return "config.json" in names and b"QuantizeWrapper" in archive.read("config.json")


def _export(args) -> None:
    import kerasq.ptq
    import tflite_export
    from kerasq.datasets import load_dataset
    from kerasq.layers import kerasq_layers

    if not os.path.exists(args.model):
        raise FileNotFoundError(f"No model at {args.model!r}")
    tflite_export.files.ensure_distinct(args.out, [args.model])
    tflite_export.files.check_output_file(args.out)
    model = _load_model(args.model)
    data = None
    if args.dataset:
        (x_train, _), _ = load_dataset(args.dataset, args.data_dir)
        data = x_train[: args.calibration_samples]
    print(f"exporting {args.model} ({'with' if data is not None else 'without'} calibration data)", file=sys.stderr)
    if data is not None and not kerasq_layers(model) and not kerasq.is_tfmot_model(model):
        model = kerasq.ptq.quantize(
            model, data, method=args.method, equalize=args.equalize, bias_correction=args.bias_correction,
            adaround=args.adaround, verbose=0,
        )
    blob = tflite_export.convert(model, data)
    tflite_export.save(blob, args.out)
    report = tflite_export.inspect(blob)
    print(f"wrote {args.out}: {len(blob):,} bytes, integer-only={report.is_integer_only}, "
          f"per-channel ops={len(report.per_channel_ops)}")


def _inspect(args) -> None:
    import tflite_export

    report = tflite_export.inspect(args.file)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report)


def _eval(args) -> None:
    import tflite_export
    from kerasq.datasets import load_dataset

    _, (x_test, y_test) = load_dataset(args.dataset, args.data_dir)
    accuracy = tflite_export.evaluate(args.file, x_test, y_test)
    print(f"{args.file}: top-1 accuracy {accuracy:.4f} on {len(x_test)} {args.dataset} test images")


def _bench(args) -> None:
    import tflite_export

    if args.android:
        from tflite_export.android import benchmark_on_device

        for threads in args.threads:
            figures = benchmark_on_device(args.file, serial=args.serial, benchmark_binary=args.benchmark_binary,
                                          num_threads=threads, runs=args.runs)
            print(f"{args.file} on the device, {threads} thread(s): mean {figures['avg_ms']:.3f} ms")
        return
    for threads in args.threads:
        stats = tflite_export.benchmark(args.file, num_threads=threads, warmup=args.warmup, runs=args.runs)
        print(f"{args.file}: {stats}")


def _verify(args) -> int:
    import tflite_export
    from kerasq.datasets import load_dataset

    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1. Received: {args.samples}")
    # The file must be readable before the data set is loaded (a missing file is a one-line error).
    tflite_export.flatbuffer.read_bytes(args.file)
    _, (x_test, _) = load_dataset(args.dataset, args.data_dir)
    report = tflite_export.verify(args.file, x_test[: args.samples], max_lsb=args.max_lsb)
    print(f"{args.file} on {args.dataset} test images:")
    print(report)
    return 0 if report.ok() else 1


def _debug(args) -> int:
    import kerasq
    import tflite_export
    from kerasq.compat import keras
    from kerasq.datasets import load_dataset

    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1. Received: {args.samples}")
    for path in (args.model, args.file):
        if not os.path.exists(path):
            raise FileNotFoundError(f"No file at {path!r}")
    tflite_export.flatbuffer.read_bytes(args.file)
    if args.model_explorer:
        tflite_export.files.ensure_distinct(args.model_explorer, [args.model, args.file])
        tflite_export.files.check_output_file(args.model_explorer)
    with kerasq.quantize_scope():
        model = keras.models.load_model(args.model, compile=False)
    _, (x_test, _) = load_dataset(args.dataset, args.data_dir)
    tolerance = args.tolerance if args.tolerance is not None else (0.0 if args.runtime == "reference" else 1.0)
    report = tflite_export.debug(model, args.file, x_test[: args.samples], runtime=args.runtime, tolerance_lsb=tolerance)
    print(report)
    if args.model_explorer:
        print(f"wrote {report.to_model_explorer(args.model_explorer)}")
    return 0 if report.first_divergence is None else 1


# Errors that describe the user's input or environment (bad data, files, folders, permissions,
# full disks): one line and exit status 2.
USER_ERRORS = (ValueError, TypeError, OSError, RuntimeError)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (0; 1 when ``verify`` finds runtimes > 1 LSB apart,
    ``debug`` a layer that adds a difference, or on an unexpected failure; 2 for a usage or input
    error, 130 on Ctrl-C). With ``--debug`` an error raises with its traceback instead."""
    parser = _parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        parser.print_help(sys.stderr)
        return 2
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    handlers = {"demo": _demo, "export": _export, "inspect": _inspect, "eval": _eval, "bench": _bench,
                "verify": _verify, "debug": _debug}
    try:
        status = handlers[args.command](args)
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print(f"kerasq {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # noqa: BLE001 - every failure becomes one line unless --debug
        if getattr(args, "debug", False):
            raise
        message = " ".join(str(error).split()) or type(error).__name__
        if isinstance(error, USER_ERRORS):
            print(f"kerasq {args.command}: error: {message}", file=sys.stderr)
            return 2
        print(f"kerasq {args.command}: unexpected error ({type(error).__name__}): {message} "
              "(run again with --debug for the traceback)", file=sys.stderr)
        return 1
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
