"""Do exported .tflite files compute the same integer codes on aarch64 (phone-class ARM) as on x86?

    python examples/check_arm.py                                  # export demo models, check them
    python examples/check_arm.py --model a.tflite --model b.tflite --out arm.md
    python examples/check_arm.py --cpu cortex-a76 --cpu cortex-a53 --samples 450

The aarch64 build of the ``ai-edge-litert`` wheel runs under user-mode emulation
(``qemu-aarch64-static``, no chroot, no binfmt): an arm64 Debian sysroot holding just Python
and the shared libraries it needs (``apt-get download`` + ``dpkg-deb -x``) and the manylinux
aarch64 wheels of ai-edge-litert and numpy (``pip download --platform``, installed with
``pip install --target``). Both are built once into ``--cache`` (default
``~/.cache/kerasq-arm``, about 210 MB) and reused.

Every model gets the same int8 input codes on both machines and runs, one sample at a time and
on one thread, with each of LiteRT's op resolvers: ``AUTO`` (the default: XNNPACK),
``BUILTIN_REF`` (the reference kernels) and ``BUILTIN_WITHOUT_DEFAULT_DELEGATES`` (the
optimized builtin kernels, ruy/NEON on ARM, without XNNPACK). The same small runner program
(numpy and ai_edge_litert only) runs under the host Python and under the emulated one. The
table compares the aarch64 output codes with the x86 ones: share of bit-exact output values,
the largest difference in output LSBs, and how many values differ.

Without ``--model``, the script trains ``demo_cnn`` on the 8x8 digits for a few epochs and
exports it under several kerasq schemes (calibrated, no fine-tuning: the arithmetic, not the
accuracy, is what is compared); the inputs are then the quantized test images. For a
``--model`` file the inputs are random codes over the input type's full range.

Two traps of qemu 7.2 (Debian 12) are handled here: it passes the host's x86 ``/proc/cpuinfo``
through, on which LiteRT's CPU detection crashes, so a matching arm64 ``proc/cpuinfo`` is
written under the sysroot (qemu looks there first); and its default ``-cpu max`` emulates
SME with a bug that gives wrong int8 results, so an explicit CPU model is always passed
(``--cpu``, default ``cortex-a76``).

Host requirements: ``qemu-user-static`` (``apt-get install qemu-user-static``); to build the
sysroot also ``apt-get``/``dpkg-deb`` with the arm64 architecture enabled (done automatically
when run as root: ``dpkg --add-architecture arm64 && apt-get update``) and ``pip`` with access
to PyPI.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

RESOLVERS = ("AUTO", "BUILTIN_REF", "BUILTIN_WITHOUT_DEFAULT_DELEGATES")
RESOLVER_LABELS = {
    "AUTO": "AUTO (XNNPACK)",
    "BUILTIN_REF": "BUILTIN_REF",
    "BUILTIN_WITHOUT_DEFAULT_DELEGATES": "BUILTIN_WITHOUT_DEFAULT_DELEGATES (ruy/NEON)",
}

# Default exported models: (label, factory of the scheme, pack ≤4-bit weights as INT4).
DEMO_SCHEMES = ("int8", "int4", "int4-int8storage", "pact", "ternary", "binary", "po2")

# Packages whose arm64 .debs make up the sysroot; apt-cache resolves their dependency closure.
SYSROOT_ROOTS = ("python{v}-minimal", "libpython{v}-stdlib", "libstdc++6")
# Dependencies the emulated Python never needs (tools and interpreters, not libraries).
SYSROOT_SKIP = re.compile(r"^(dpkg|tar|install-info|perl.*|libperl.*|debconf.*|readline-common|"
                          r"libtirpc-common|media-types|mime-support|mailcap|sensible-utils|"
                          r"debianutils|coreutils|bash|dash|base-files|usrmerge|libc-bin)$")

# Emulated CPU models and the arm64 /proc/cpuinfo fields a real one of them reports. The
# feature flags must match what qemu emulates, or ruy/XNNPACK pick instructions the CPU lacks.
_V80_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"
_V82_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
CPUS = {
    # name: (CPU variant, CPU part, CPU revision, Features)
    "cortex-a35": ("0x0", "0xd04", "2", _V80_FEATURES),
    "cortex-a53": ("0x0", "0xd03", "4", _V80_FEATURES),
    "cortex-a57": ("0x1", "0xd07", "1", _V80_FEATURES),
    "cortex-a72": ("0x0", "0xd08", "2", _V80_FEATURES),
    "cortex-a76": ("0x4", "0xd0b", "1", _V82_FEATURES),
    "neoverse-n1": ("0x3", "0xd0c", "1", _V82_FEATURES + " ssbs"),
}

# The program that runs the models, under the host Python and under the emulated one.
RUNNER = r'''
import json, platform, sys, time
import numpy as np
from ai_edge_litert.interpreter import Interpreter, OpResolverType

job = json.load(open(sys.argv[1]))
out_dir = sys.argv[2]
status = {"machine": platform.machine(), "results": {}}
for model in job["models"]:
    inputs = [np.load(p) for p in model["inputs"]]
    for resolver in job["resolvers"]:
        key = model["name"] + "." + resolver
        start = time.perf_counter()
        try:
            interpreter = Interpreter(model_path=model["path"], num_threads=1,
                                      experimental_op_resolver_type=getattr(OpResolverType, resolver))
            interpreter.allocate_tensors()
            in_details = interpreter.get_input_details()
            out_details = interpreter.get_output_details()
            outputs = [[] for _ in out_details]
            for i in range(len(inputs[0])):
                for detail, x in zip(in_details, inputs):
                    interpreter.set_tensor(detail["index"], x[i:i + 1])
                interpreter.invoke()
                for k, detail in enumerate(out_details):
                    outputs[k].append(interpreter.get_tensor(detail["index"]).copy())
            files = []
            for k, values in enumerate(outputs):
                files.append(out_dir + "/" + key + "." + str(k) + ".npy")
                np.save(files[-1], np.concatenate(values))
            status["results"][key] = {"outputs": files, "seconds": time.perf_counter() - start}
        except Exception as error:  # a kernel the resolver lacks, a model it rejects
            status["results"][key] = {"error": type(error).__name__ + ": " + str(error).strip().splitlines()[0][:200]}
        print(key, "error" if "error" in status["results"][key] else "ok", flush=True)
json.dump(status, open(out_dir + "/status.json", "w"))
'''


class SetupError(RuntimeError):
    """Something the check needs is missing; the message says what and how to get it."""


def step(message: str) -> None:
    print(f"[check_arm] {message}", flush=True)


def _run(cmd: list[str], *, timeout: float, env: dict | None = None, cwd: str | None = None,
         what: str) -> subprocess.CompletedProcess:
    step("$ " + shlex.join(cmd) if len(cmd) < 12 else "$ " + shlex.join(cmd[:11]) + f" ... ({len(cmd)} args)")
    try:
        result = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    except FileNotFoundError as error:
        raise SetupError(f"{what}: {cmd[0]} not found") from error
    except subprocess.TimeoutExpired as error:
        raise SetupError(f"{what}: timed out after {timeout:.0f} s") from error
    if result.returncode != 0:
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-15:])
        raise SetupError(f"{what} failed (exit {result.returncode}):\n{tail}")
    return result


# ----------------------------------------------------------------------------------------------
# Host checks and the aarch64 environment
# ----------------------------------------------------------------------------------------------


def find_qemu() -> str:
    qemu = shutil.which("qemu-aarch64-static") or shutil.which("qemu-aarch64")
    if qemu is None:
        raise SetupError("qemu-aarch64-static is not installed: run `apt-get install qemu-user-static`")
    return qemu


def qemu_version(qemu: str) -> str:
    out = subprocess.run([qemu, "--version"], check=False, capture_output=True, text=True, timeout=30).stdout
    return out.splitlines()[0].strip() if out else "unknown"


def check_cpus(qemu: str, cpus: list[str]) -> None:
    """Fails unless the installed qemu emulates every requested CPU model."""
    listing = subprocess.run([qemu, "-cpu", "help"], check=False, capture_output=True, text=True, timeout=30).stdout
    known = {line.split()[0] for line in listing.splitlines()[1:] if line.strip()}
    missing = [cpu for cpu in cpus if known and cpu not in known]
    if missing:
        raise SetupError(f"this qemu does not emulate {', '.join(missing)}; it offers "
                         f"{', '.join(sorted(known & set(CPUS)))}")


def _ensure_arm64_apt() -> None:
    for tool, package in (("apt-get", "apt"), ("apt-cache", "apt"), ("dpkg-deb", "dpkg"), ("dpkg", "dpkg")):
        if shutil.which(tool) is None:
            raise SetupError(f"building the arm64 sysroot needs {tool} (Debian/Ubuntu package `{package}`)")
    arches = subprocess.run(["dpkg", "--print-foreign-architectures"], check=False, capture_output=True,
                            text=True, timeout=30).stdout.split()
    if "arm64" in arches:
        return
    if os.geteuid() != 0:
        raise SetupError("the arm64 package architecture is not enabled: run "
                         "`sudo dpkg --add-architecture arm64 && sudo apt-get update`, then rerun")
    step("enabling the arm64 package architecture")
    _run(["dpkg", "--add-architecture", "arm64"], timeout=60, what="dpkg --add-architecture arm64")
    _run(["apt-get", "update"], timeout=900, what="apt-get update")


def _arm64_closure(python_version: str) -> list[str]:
    roots = [r.format(v=python_version) + ":arm64" for r in SYSROOT_ROOTS]
    result = _run(["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
                   "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances", *roots],
                  timeout=300, what="apt-cache depends (arm64)")
    names = set()
    for line in result.stdout.splitlines():
        if line.startswith((" ", "<")) or not line.endswith(":arm64"):
            continue
        name = line[: -len(":arm64")]
        if not SYSROOT_SKIP.match(name):
            names.add(name)
    missing = [r for r in roots if r[: -len(":arm64")] not in names]
    if missing:
        raise SetupError(f"apt knows no arm64 package {', '.join(missing)} (is the arm64 architecture "
                         "enabled and `apt-get update` run? Debian's python version is set with --python)")
    return sorted(names)


def build_sysroot(cache: Path, python_version: str) -> Path:
    sysroot = cache / f"sysroot-py{python_version}"
    if (sysroot / ".complete").exists():
        step(f"sysroot: reusing {sysroot}")
        return sysroot
    _ensure_arm64_apt()
    packages = _arm64_closure(python_version)
    step(f"sysroot: downloading {len(packages)} arm64 packages: {' '.join(packages)}")
    debs = cache / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    debs.mkdir(parents=True)
    _run(["apt-get", "download", *[p + ":arm64" for p in packages]], cwd=str(debs), timeout=1800,
         what="apt-get download (arm64)")
    shutil.rmtree(sysroot, ignore_errors=True)
    sysroot.mkdir(parents=True)
    step(f"sysroot: extracting into {sysroot}")
    for deb in sorted(debs.glob("*.deb")):
        _run(["dpkg-deb", "-x", str(deb), str(sysroot)], timeout=300, what=f"dpkg-deb -x {deb.name}")
    # Merged-/usr distributions ship the dynamic loader under usr/lib only.
    for top in ("lib", "bin"):
        if not (sysroot / top).exists() and (sysroot / "usr" / top).exists():
            (sysroot / top).symlink_to(Path("usr") / top)
    if not (sysroot / "usr" / "bin" / f"python{python_version}").exists():
        raise SetupError(f"the sysroot has no usr/bin/python{python_version} after extraction")
    shutil.rmtree(debs, ignore_errors=True)
    (sysroot / ".complete").write_text(" ".join(packages) + "\n")
    return sysroot


def _host_version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def build_site(cache: Path, python_version: str, litert_version: str, numpy_version: str) -> Path:
    tag = f"py{python_version}-litert{litert_version}-numpy{numpy_version}"
    site = cache / f"site-{tag}"
    if (site / ".complete").exists():
        step(f"wheels: reusing {site}")
        return site
    abi = "cp" + python_version.replace(".", "")
    platform_args = ["--only-binary=:all:", "--platform", "manylinux_2_27_aarch64", "--python-version",
                     python_version, "--implementation", "cp", "--abi", abi]
    requirements = [f"ai-edge-litert=={litert_version}", f"numpy=={numpy_version}"]
    wheels = cache / f"wheels-{tag}"
    wheels.mkdir(parents=True, exist_ok=True)
    step(f"wheels: downloading the aarch64 wheels of {' '.join(requirements)} and their dependencies")
    _run([sys.executable, "-m", "pip", "download", "--disable-pip-version-check", *platform_args,
          "-d", str(wheels), *requirements], timeout=1800,
         what="pip download of the aarch64 wheels (needs PyPI)")
    shutil.rmtree(site, ignore_errors=True)
    step(f"wheels: installing into {site}")
    _run([sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "--no-index",
          "--find-links", str(wheels), *platform_args, "--target", str(site), *requirements],
         timeout=1800, what="pip install --target of the aarch64 wheels")
    shutil.rmtree(wheels, ignore_errors=True)
    (site / ".complete").write_text(" ".join(requirements) + "\n")
    return site


def write_cpuinfo(sysroot: Path, cpu: str) -> None:
    """An arm64 /proc/cpuinfo under the sysroot, matching the emulated CPU model."""
    variant, part, revision, features = CPUS[cpu]
    blocks = []
    for i in range(max(1, os.cpu_count() or 1)):
        blocks.append(
            f"processor\t: {i}\nBogoMIPS\t: 50.00\nFeatures\t: {features}\nCPU implementer\t: 0x41\n"
            f"CPU architecture: 8\nCPU variant\t: {variant}\nCPU part\t: {part}\nCPU revision\t: {revision}\n"
        )
    (sysroot / "proc").mkdir(exist_ok=True)
    (sysroot / "proc" / "cpuinfo").write_text("\n".join(blocks) + "\n")


# ----------------------------------------------------------------------------------------------
# Models and inputs
# ----------------------------------------------------------------------------------------------


def export_demo_models(schemes: list[str], directory: Path, samples: int, seed: int) -> list[dict]:
    """Trains demo_cnn on the digits briefly and exports it under each scheme; inputs: test images."""
    step("importing kerasq (TensorFlow)")
    import kerasq
    import tflite_export
    from kerasq.compat import keras
    from kerasq.datasets import load_digits
    from kerasq.models import demo_cnn
    from kerasq.schemes import Linear, get_scheme

    factories = {
        "int8": (lambda: get_scheme("int8"), True),
        "int4": (lambda: Linear(weight_bits=4), True),
        "int4-int8storage": (lambda: Linear(weight_bits=4), False),
        "pact": (lambda: get_scheme("pact"), True),
        "dorefa": (lambda: get_scheme("dorefa"), True),
        "ternary": (lambda: get_scheme("ternary"), True),
        "binary": (lambda: get_scheme("binary"), True),
        "xnor": (lambda: get_scheme("xnor"), True),
        "po2": (lambda: get_scheme("po2"), True),
        "kmeans16": (lambda: get_scheme("kmeans16"), True),
    }
    unknown = [s for s in schemes if s not in factories]
    if unknown:
        raise SetupError(f"unknown --schemes entries {unknown}; choose from {sorted(factories)}")
    (x_train, y_train), (x_test, _) = load_digits()
    keras.utils.set_random_seed(seed)
    model = demo_cnn(x_train.shape[1:], 10)
    model.compile(keras.optimizers.Adam(3e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    step(f"training demo_cnn ({model.count_params():,} parameters) on the digits, 10 epochs")
    model.fit(x_train, y_train, epochs=10, batch_size=64, verbose=0)
    x = x_test[:samples]
    models = []
    for name in schemes:
        make, pack_int4 = factories[name]
        keras.utils.set_random_seed(seed)
        qmodel = kerasq.quantize_model(model, make(), calibration_data=x_train[:500],
                                       target=kerasq.Target(pack_int4=pack_int4))
        blob = tflite_export.convert(qmodel)
        path = directory / f"{name}.tflite"
        tflite_export.save(blob, str(path))
        step(f"exported {name}: {len(blob):,} B")
        models.append({"name": name, "path": str(path), "x": x})
    return models


def _input_details(path: str) -> list[dict]:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path)
    return interpreter.get_input_details()


def write_inputs(models: list[dict], directory: Path, samples: int, seed: int) -> None:
    """The input codes of every model as .npy files, identical for both machines."""
    rng = np.random.default_rng(seed)
    for model in models:
        files = []
        count = len(model["x"]) if "x" in model else samples
        for k, detail in enumerate(_input_details(model["path"])):
            shape = (count, *[int(d) for d in detail["shape"][1:]])
            dtype = np.dtype(detail["dtype"])
            scale, zero_point = detail["quantization"]
            if "x" in model and k == 0:
                x = np.asarray(model["x"], np.float32).reshape(shape)
                if np.issubdtype(dtype, np.integer) and scale:
                    info = np.iinfo(dtype)
                    x = np.clip(np.round(x / scale) + zero_point, info.min, info.max)
                values = x.astype(dtype)
            elif np.issubdtype(dtype, np.integer):
                info = np.iinfo(dtype)
                values = rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype)
            else:
                values = rng.standard_normal(shape).astype(dtype)
            files.append(str(directory / f"{model['name']}.in{k}.npy"))
            np.save(files[-1], values)
        model["inputs"] = files


# ----------------------------------------------------------------------------------------------
# Running and comparing
# ----------------------------------------------------------------------------------------------


def run_models(python_cmd: list[str], env: dict, models: list[dict], resolvers: list[str], work: Path,
               label: str, timeout: float) -> dict:
    out_dir = work / label
    out_dir.mkdir(parents=True, exist_ok=True)
    job = work / f"job-{label}.json"
    job.write_text(json.dumps({
        "models": [{"name": m["name"], "path": m["path"], "inputs": m["inputs"]} for m in models],
        "resolvers": list(resolvers),
    }))
    runner = work / "runner.py"
    runner.write_text(RUNNER)
    start = time.perf_counter()
    _run([*python_cmd, str(runner), str(job), str(out_dir)], env=env, timeout=timeout,
         what=f"the {label} run")
    status = json.loads((out_dir / "status.json").read_text())
    status["seconds"] = time.perf_counter() - start
    step(f"{label}: {len(models)} models x {len(resolvers)} resolvers on {status['machine']} "
         f"in {status['seconds']:.1f} s")
    return status


def compare_outputs(reference: dict, other: dict, models: list[dict], resolvers: list[str]) -> list[dict]:
    rows = []
    for model in models:
        for resolver in resolvers:
            key = f"{model['name']}.{resolver}"
            a, b = reference["results"][key], other["results"][key]
            row = {"model": model["name"], "resolver": resolver}
            if "error" in a or "error" in b:
                row["error"] = a.get("error") or b.get("error")
                row["where"] = "both" if ("error" in a and "error" in b) else ("x86" if "error" in a else "aarch64")
                rows.append(row)
                continue
            total = differing = 0
            max_delta = 0.0
            integer = True
            for fa, fb in zip(a["outputs"], b["outputs"]):
                xa, xb = np.load(fa), np.load(fb)
                integer &= bool(np.issubdtype(xa.dtype, np.integer))
                delta = np.abs(xa.astype(np.float64) - xb.astype(np.float64))
                total += delta.size
                differing += int(np.count_nonzero(delta))
                max_delta = max(max_delta, float(delta.max(initial=0.0)))
            row.update(total=total, differing=differing, max_delta=max_delta, integer=integer)
            rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | resolver | bit-exact aarch64 vs x86 | max \\|Δ\\| (LSB) | values differing |",
             "|---|---|---|---|---|"]
    for row in rows:
        label = RESOLVER_LABELS.get(row["resolver"], row["resolver"])
        if "error" in row:
            lines.append(f"| {row['model']} | {label} | error on {row['where']}: {row['error']} | — | — |")
            continue
        exact = 100.0 * (row["total"] - row["differing"]) / max(row["total"], 1)
        delta = f"{row['max_delta']:.0f}" if row["integer"] else f"{row['max_delta']:.3g} (float)"
        lines.append(f"| {row['model']} | {label} | {exact:.2f}% | {delta} | "
                     f"{row['differing']:,} / {row['total']:,} |")
    return "\n".join(lines)


def host_cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", default=[], help=".tflite file to check (repeatable); "
                        "default: demo models exported under --schemes")
    parser.add_argument("--schemes", default=",".join(DEMO_SCHEMES),
                        help=f"demo models to export, comma-separated (default {','.join(DEMO_SCHEMES)})")
    parser.add_argument("--cpu", action="append", default=[], choices=sorted(CPUS),
                        help="emulated CPU model (repeatable; default cortex-a76). Never qemu's `max`.")
    parser.add_argument("--resolvers", default=",".join(RESOLVERS), help="comma-separated OpResolverType names")
    parser.add_argument("--samples", type=int, default=256,
                        help="input samples per model (default 256; the demo models have 449 test images)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", default=os.path.join(os.path.expanduser("~"), ".cache", "kerasq-arm"),
                        help="where the sysroot and wheels are built and kept (default ~/.cache/kerasq-arm)")
    parser.add_argument("--python", default="3.11", help="Python version of the arm64 sysroot (Debian's, default 3.11)")
    parser.add_argument("--litert_version", default=None, help="default: the host's ai-edge-litert version")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed per emulated run")
    parser.add_argument("--keep", default=None, help="keep the models, inputs and outputs in this directory")
    parser.add_argument("--out", default=None, help="also write the report to this markdown file")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    cpus = args.cpu or ["cortex-a76"]
    resolvers = [r.strip() for r in args.resolvers.split(",") if r.strip()]
    bad = [r for r in resolvers if r not in RESOLVERS]
    if bad:
        parser.error(f"unknown resolvers {bad}; choose from {', '.join(RESOLVERS)}")
    if args.samples < 1:
        parser.error("--samples must be >= 1")
    for path in args.model:
        if not Path(path).is_file():
            parser.error(f"--model {path}: no such file")

    try:
        if platform.machine().lower() not in ("x86_64", "amd64"):
            step(f"note: the host is {platform.machine()}, not x86_64; comparing against it anyway")
        qemu = find_qemu()
        version = qemu_version(qemu)
        step(f"emulator: {version}")
        check_cpus(qemu, cpus)
        litert_version = args.litert_version or _host_version("ai-edge-litert")
        numpy_version = _host_version("numpy")
        if litert_version is None:
            raise SetupError("ai-edge-litert is not installed on the host: `pip install ai-edge-litert`")
        cache = Path(args.cache).expanduser()
        cache.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        sysroot = build_sysroot(cache, args.python)
        site = build_site(cache, args.python, litert_version, numpy_version)
        setup_seconds = time.perf_counter() - t
        step(f"aarch64 environment ready in {setup_seconds:.1f} s")

        with tempfile.TemporaryDirectory(prefix="check_arm_") as tmp:
            work = Path(args.keep).resolve() if args.keep else Path(tmp)
            work.mkdir(parents=True, exist_ok=True)
            t = time.perf_counter()
            if args.model:
                models = []
                for i, path in enumerate(args.model):
                    name = Path(path).stem
                    if any(m["name"] == name for m in models):
                        name = f"{name}_{i}"
                    models.append({"name": name, "path": str(Path(path).resolve())})
            else:
                schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
                models = export_demo_models(schemes, work, args.samples, args.seed)
            write_inputs(models, work, args.samples, args.seed)
            samples = int(np.load(models[0]["inputs"][0]).shape[0])
            export_seconds = time.perf_counter() - t

            host_env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
            host_env["PYTHONNOUSERSITE"] = "1"
            host = run_models([sys.executable], host_env, models, resolvers, work, "x86", args.timeout)

            sections = []
            arm_seconds = {}
            for cpu in cpus:
                write_cpuinfo(sysroot, cpu)
                arm_env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "QEMU_"))}
                arm_env.update(PYTHONPATH=str(site), PYTHONNOUSERSITE="1", PYTHONDONTWRITEBYTECODE="1",
                               QEMU_CPU=cpu)
                python = [qemu, "-cpu", cpu, "-L", str(sysroot), str(sysroot / "usr" / "bin" / f"python{args.python}")]
                arm = run_models(python, arm_env, models, resolvers, work, f"aarch64-{cpu}", args.timeout)
                if arm["machine"] != "aarch64":
                    raise SetupError(f"the emulated Python reports machine {arm['machine']!r}, not aarch64")
                arm_seconds[cpu] = arm["seconds"]
                rows = compare_outputs(host, arm, models, resolvers)
                sections.append(f"### aarch64 ({cpu}) vs x86_64\n\n{markdown_table(rows)}")
    except SetupError as error:
        print(f"[check_arm] error: {error}", file=sys.stderr)
        return 2

    total = time.perf_counter() - start
    command = "python examples/check_arm.py " + shlex.join(argv if argv is not None else sys.argv[1:])
    header = [
        "# LiteRT on aarch64 (emulated) vs x86_64: same input codes, output codes compared",
        "",
        f"Command: `{command.strip()}`",
        "",
        (f"- LiteRT `ai-edge-litert` {litert_version} (manylinux aarch64 and x86_64 wheels), "
         f"numpy {numpy_version}, 1 thread, batch 1, {samples} samples per model"),
        f"- aarch64: {version}, user-mode emulation, `-cpu {' / '.join(cpus)}`, Debian arm64 Python {args.python}",
        f"- {platform.machine()}: {host_cpu()}, Python {platform.python_version()}",
        f"- time: {total:.0f} s in all (aarch64 environment {setup_seconds:.0f} s, models and inputs "
        f"{export_seconds:.0f} s, x86 runs {host['seconds']:.0f} s, emulated runs "
        + ", ".join(f"{cpu} {s:.0f} s" for cpu, s in arm_seconds.items()) + ")",
        "",
    ]
    report = "\n".join(header) + "\n" + "\n\n".join(sections) + "\n"
    print()
    print(report)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(report)
        step(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
