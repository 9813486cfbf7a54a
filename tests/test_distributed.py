"""Distributed quantization-aware training: every quantizer state equals the single-device one.

Under ``tf.distribute`` each replica runs the forward pass on its slice of the global batch. The
state a quantizer updates there (EMA/min-max ranges, XNOR's ``β``) must be the statistic of the
whole batch, and every replica's copy must hold it; trainable quantizer state (PACT ``α``, TTQ
``w_p``/``w_n``, k-means codebooks) must get the summed gradient; state set by a callback (INQ
masks) must reach every copy. The runs need two logical CPU devices, which can only be set up
before TensorFlow starts, so they happen in a child process (``tests/distributed_worker.py``)
and the tests here read its JSON.

Tolerances: ``rtol=1e-5, atol=1e-6`` for every variable, after a forward-only update and after a
short ``fit`` alike. Ranges are reduced exactly (min/max); only sums (gradients, XNOR's mean)
are added in another order across replicas, which on these runs moved trained values by at most
~3e-8. Outputs: equal within the same tolerance after the forward-only update; after ``fit`` at
most one output LSB apart and at least 99% equal, since a weight 1e-8 away can in principle
cross a rounding boundary (none did on these runs). Exported files: identical bytes, or integer
outputs at most one code apart.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import kerasq
from kerasq.compat import tf
from kerasq.observers import global_mean, global_range, replica_reduce, state_variable

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker  # noqa: E402

WORKER = Path(__file__).with_name("distributed_worker.py")
RTOL, ATOL = 1e-5, 1e-6
# One case per kind of state in the default run (about a minute): EMA ranges (int8), XNOR's β
# (a mean over slices of unequal size), PACT's trainable α (small, so that it clips and learns;
# also regularized and constrained), INQ masks set by a callback. The slow run adds every other
# distinct scheme, among them TTQ's trainable scales and k-means codebooks.
DEFAULT_CASES = ("int8", "xnor", "pact_alpha0.5", "po2_inq")
ALL_CASES = tuple(distributed_worker.cases())
SLOW_CASES = tuple(label for label in ALL_CASES if label not in DEFAULT_CASES)
MULTIWORKER_CASES = ("int8", "xnor", "pact_alpha0.5", "po2_inq")
QUANTIZER_TRAINABLES = ("_alpha", "_w_p", "_w_n", "_codebook", "channel_scale")


def _env() -> dict:
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")


def _run_worker(args: list[str], out: Path, timeout: float, env: dict | None = None) -> dict:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(WORKER), *args, "--out", str(out)],
        env=env or _env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, f"worker failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    result = json.loads(out.read_text())
    result["wall_seconds"] = time.perf_counter() - started
    return result


@pytest.fixture(scope="module")
def mirrored(tmp_path_factory) -> dict:
    """The default cases on one device and on two mirrored CPU replicas, plus calibration and save/load."""
    out = tmp_path_factory.mktemp("distributed") / "mirrored.json"
    result = _run_worker(["mirrored", "--schemes", *DEFAULT_CASES], out, timeout=600)
    print(f"\nmirrored worker: {result['wall_seconds']:.1f} s wall")
    return result


@pytest.fixture(scope="module")
def mirrored_slow(tmp_path_factory) -> dict:
    """The remaining cases (every other distinct scheme of ``available_schemes()``)."""
    out = tmp_path_factory.mktemp("distributed") / "mirrored_slow.json"
    return _run_worker(["mirrored", "--no-extras", "--schemes", *SLOW_CASES], out, timeout=1200)


def _case(request, label: str) -> dict:
    result = request.getfixturevalue("mirrored" if label in DEFAULT_CASES else "mirrored_slow")
    return result["cases"][label]


def _is_state(variable: dict) -> bool:
    return not variable["trainable"] or any(key in variable["name"] for key in QUANTIZER_TRAINABLES)


def _assert_variables_match(single: list[dict], distributed: list[dict], what: str) -> None:
    assert [v["name"] for v in single] == [v["name"] for v in distributed], what
    for a, b in zip(single, distributed):
        np.testing.assert_allclose(
            b["value"], a["value"], rtol=RTOL, atol=ATOL, err_msg=f"{what}: {b['name']} differs from one device"
        )
        assert b["replica_spread"] == 0.0, f"{what}: the replica copies of {b['name']} differ by {b['replica_spread']}"


def _params(cases):
    return [pytest.param(label, marks=pytest.mark.slow) if label in SLOW_CASES else label for label in cases]


def test_cases_cover_every_scheme():
    names = {name for _, names in distributed_worker.cases().values() for name in names}
    assert names == set(kerasq.available_schemes())


@pytest.mark.parametrize("phase", ["forward", "fit"])
@pytest.mark.parametrize("label", _params(ALL_CASES))
def test_quantizer_state_matches_single_device(request, label, phase):
    case = _case(request, label)
    single, distributed = case["single"][phase]["variables"], case["distributed"][phase]["variables"]
    assert any(_is_state(v) for v in single)
    _assert_variables_match(single, distributed, f"{label} after {phase}")


@pytest.mark.parametrize("label", _params(ALL_CASES))
def test_outputs_match_single_device(request, label):
    case = _case(request, label)
    forward = [np.asarray(case[side]["forward"]["outputs"]) for side in ("single", "distributed")]
    np.testing.assert_allclose(forward[1], forward[0], rtol=RTOL, atol=ATOL)
    single, distributed = (np.asarray(case[side]["fit"]["outputs"]) for side in ("single", "distributed"))
    lsb = case["single"]["fit"]["output_scale"]
    difference = np.abs(distributed - single)
    assert np.max(difference) <= lsb * (1 + 1e-4), (label, float(np.max(difference)), lsb)
    assert np.mean(difference <= ATOL) >= 0.99, label


@pytest.mark.parametrize("label", _params(ALL_CASES))
def test_exported_file_matches_single_device(request, label):
    case = _case(request, label)
    single, distributed = case["single"]["fit"]["export"], case["distributed"]["fit"]["export"]
    if single["sha256"] != distributed["sha256"]:
        codes = np.abs(np.asarray(single["outputs"]) - np.asarray(distributed["outputs"]))
        assert np.max(codes) <= 1, f"{label}: exported files differ by {np.max(codes)} output codes"


@pytest.mark.parametrize(
    "label, key",
    [("pact_alpha0.5", "_alpha"), pytest.param("ttq", "_w_p", marks=pytest.mark.slow),
     pytest.param("kmeans", "_codebook", marks=pytest.mark.slow)],
)
def test_trainable_quantizer_state_learns_under_the_strategy(request, label, key):
    """PACT α, TTQ scales and k-means codebooks move in fit, so the state test compares summed gradients."""
    case = _case(request, label)["distributed"]
    before = [v["value"] for v in case["forward"]["variables"] if key in v["name"]]
    after = [v["value"] for v in case["fit"]["variables"] if key in v["name"]]
    assert before and not np.allclose(before, after, rtol=0, atol=1e-6), label


def test_inq_masks_reach_every_replica(mirrored):
    single = mirrored["cases"]["po2_inq"]["single"]["inq_masks"]
    distributed = mirrored["cases"]["po2_inq"]["distributed"]["inq_masks"]
    assert [m["quantized"] for m in distributed] == [m["quantized"] for m in single] == [0.5, 1.0]
    assert all(m["replica_spread"] == 0.0 for m in distributed)


@pytest.mark.parametrize("observer", distributed_worker.OBSERVERS)
def test_calibrate_under_strategy(mirrored, observer):
    runs = mirrored["calibration"][observer]
    assert any(v["value"] != [0.0] for v in runs["single"] if v["name"].endswith("_max:0"))
    for where in ("in_scope", "out_of_scope"):
        _assert_variables_match(runs["single"], runs[where], f"calibrate({observer!r}) {where}")


def test_save_and_load_around_the_strategy(mirrored):
    for where, entry in mirrored["save_load"].items():
        assert entry["type"] == "QuantizedModel", where
        assert entry["same_weights"], where
        assert entry["max_output_difference"] == 0.0, where
    assert mirrored["save_load"]["in_scope"]["fit_after_load_finite"]
    assert mirrored["save_load"]["in_scope"]["replica_spread_after_fit"] == 0.0


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.mark.slow
def test_multiworker_state_equals_single_process(tmp_path):
    """Two ``MultiWorkerMirroredStrategy`` workers on localhost end with identical state, the one-process state."""
    cluster = {"worker": [f"localhost:{port}" for port in _free_ports(2)]}
    started = time.perf_counter()
    procs, outs, logs = [], [], []
    for index in range(2):
        env = dict(_env(), TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        outs.append(tmp_path / f"worker{index}.json")
        logs.append(tmp_path / f"worker{index}.log")
        with open(logs[-1], "w") as log:  # a file, not a pipe: a full pipe would stall the other worker too
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER), "multiworker", "--out", str(outs[-1]), "--schemes", *MULTIWORKER_CASES],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        for proc in procs:
            proc.wait(timeout=600)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for proc, log in zip(procs, logs):
        assert proc.returncode == 0, log.read_text()[-4000:]
    print(f"\nmulti-worker run: {time.perf_counter() - started:.1f} s wall")
    workers = [json.loads(out.read_text()) for out in outs]
    assert [w["replicas"] for w in workers] == [2, 2]
    for label in MULTIWORKER_CASES:
        for phase in ("forward", "fit"):
            first, second = (w["cases"][label]["distributed"][phase]["variables"] for w in workers)
            assert [v["value"] for v in first] == [v["value"] for v in second], f"{label} {phase}: workers differ"
            single = workers[0]["cases"][label]["single"][phase]["variables"]
            _assert_variables_match(single, first, f"multi-worker {label} after {phase}")
    masks = [w["cases"]["po2_inq"]["distributed"]["inq_masks"] for w in workers]
    assert masks[0] == masks[1] and [m["quantized"] for m in masks[0]] == [0.5, 1.0]


# --- the helpers, in this process (no strategy: one replica) ---------------------------------
def test_replica_reduce_is_identity_with_one_replica():
    value = tf.constant([1.0, -2.0, 3.0])
    for reduction in ("sum", "min", "max"):
        np.testing.assert_array_equal(replica_reduce(value, reduction).numpy(), value.numpy())
    with pytest.raises(ValueError, match="reduction must be one of"):
        replica_reduce(value, "mean")


def test_global_statistics_on_one_replica():
    x = tf.constant([[0.5, -1.0], [4.0, 2.5]])
    low, high = global_range(x)
    assert (float(low), float(high)) == (-1.0, 4.0)
    assert float(global_mean(x)) == pytest.approx(1.5)
    assert float(global_mean(tf.abs(x))) == float(tf.reduce_mean(tf.abs(x)))


def test_state_variables_write_one_value_to_every_replica():
    layer = kerasq.keras.layers.Layer()
    variable = state_variable(layer, "range_max", (), dtype=tf.float32)
    assert not variable.trainable
    assert variable.aggregation == tf.VariableAggregation.ONLY_FIRST_REPLICA
    assert variable in layer.non_trainable_weights
