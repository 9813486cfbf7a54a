"""The numpy reference interpreter's elementwise, activation and resize kernels equal LiteRT's BUILTIN_REF.

Every test writes a one-op (or two-op) model with ``tflite_export.writer`` at chosen scales and
zero points, runs it on ``ai_edge_litert`` with the reference kernels and on
``tflite_export.reference.Interpreter``, and requires the same codes. Unary 8-bit ops run every
input code; binary ops random codes, with broadcasting, at batch sizes 1 and 3.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from ai_edge_litert.interpreter import Interpreter as Interpreter_
from ai_edge_litert.interpreter import OpResolverType

from tflite_export.ir import Graph, Quantization, Tensor
from tflite_export.reference import Interpreter, UnsupportedOperatorError
from tflite_export.runtime import make_interpreter
from tflite_export.writer import write

_NUMPY = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32, "float32": np.float32, "bool": np.bool_}


@dataclass
class T:
    """A tensor of a test model: activation ``[batch, *shape]`` unless ``data`` makes it a constant."""

    shape: tuple
    dtype: str = "int8"
    scale: float | None = None
    zero_point: int = 0
    data: np.ndarray | None = None

    def tensor(self, name: str) -> Tensor:
        q = Quantization([self.scale], [self.zero_point]) if self.scale is not None else None
        if self.data is not None:
            return Tensor(name, np.shape(self.data), self.dtype, q, np.asarray(self.data))
        return Tensor(name, (1, *self.shape), self.dtype, q, dynamic_batch=True)


def one_op(op: str, inputs: list[T], output: T, **options) -> bytes:
    """A model of one ``op``: the non-constant ``inputs`` are the model's inputs."""
    g = Graph()
    ins = [g.add_tensor(t.tensor(f"in{i}")) for i, t in enumerate(inputs)]
    out = g.add_tensor(output.tensor("out"))
    g.add_operator(op, ins, [out], **options)
    g.inputs = [i for i, t in zip(ins, inputs) if t.data is None]
    g.outputs = [out]
    return write(g)


def litert(blob: bytes, inputs: list[np.ndarray], reference: bool = True) -> list[np.ndarray]:
    """LiteRT's outputs: BUILTIN_REF kernels, or (``reference=False``) the builtin kernels without XNNPACK."""
    if reference:
        interpreter = make_interpreter(blob, reference_kernels=True)
    else:
        interpreter = Interpreter_(model_content=blob, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    details = interpreter.get_input_details()
    for detail, x in zip(details, inputs):
        interpreter.resize_tensor_input(detail["index"], list(x.shape))
    interpreter.allocate_tensors()
    for detail, x in zip(details, inputs):
        interpreter.set_tensor(detail["index"], x)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()]


def assert_same(blob: bytes, inputs: list[np.ndarray], reference: bool = True) -> np.ndarray:
    (expected,) = litert(blob, inputs, reference)
    (actual,) = Interpreter(blob).run(inputs)
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    if expected.dtype == np.float32:
        np.testing.assert_array_equal(actual.view(np.int32), expected.view(np.int32))
    else:
        mismatch = np.flatnonzero(actual.reshape(-1) != expected.reshape(-1))
        assert mismatch.size == 0, (
            f"{mismatch.size} of {expected.size} differ, e.g. at {mismatch[:5]}: "
            f"ours {actual.reshape(-1)[mismatch[:5]]}, LiteRT {expected.reshape(-1)[mismatch[:5]]}"
        )
    return actual


def every_code(dtype: str = "int8", batch: int = 2) -> np.ndarray:
    """Every code of an 8-bit type, shaped ``[batch, 256 / batch]``."""
    info = np.iinfo(_NUMPY[dtype])
    return np.arange(info.min, info.max + 1).astype(_NUMPY[dtype]).reshape(batch, -1)


def random_codes(rng, shape, dtype: str = "int8") -> np.ndarray:
    info = np.iinfo(_NUMPY[dtype])
    return rng.integers(info.min, info.max + 1, size=shape).astype(_NUMPY[dtype])


# (input scale, input zero point, output scale, output zero point)
GRIDS = [(0.05, -3, 0.04, 7), (0.0123, 0, 0.031, -128), (0.1, 100, 0.0078125, -20), (0.0371, -128, 0.0625, 0), (0.5, 5, 0.017, 3)]


# --- ADD, SUB, MUL ----------------------------------------------------------------------------
BINARY_SCALES = [(0.02, 0.05, 0.04), (0.5, 0.003, 0.25), (0.004, 0.004, 0.0079), (1.0, 0.0371, 0.6), (0.0117, 0.0883, 0.1)]


@pytest.mark.parametrize("op", ["ADD", "SUB", "MUL"])
@pytest.mark.parametrize("scales", BINARY_SCALES)
@pytest.mark.parametrize("activation", ["NONE", "RELU", "RELU6"])
def test_binary_int8_random_codes(op, scales, activation):
    rng = np.random.default_rng(abs(hash((op, scales, activation))) % 2**32)
    s_a, s_b, s_o = scales
    out_scale = s_a * s_b * 40 if op == "MUL" else s_o
    blob = one_op(op, [T((6, 16), "int8", s_a, 5), T((6, 16), "int8", s_b, -17)], T((6, 16), "int8", out_scale, -9),
                  fused_activation_function=activation)
    for batch in (1, 3):
        assert_same(blob, [random_codes(rng, (batch, 6, 16)), random_codes(rng, (batch, 6, 16))])


@pytest.mark.parametrize("op", ["ADD", "SUB", "MUL", "MINIMUM", "MAXIMUM"])
@pytest.mark.parametrize("other_shape", [(1, 16), (6, 1), (16,), ()])
def test_binary_int8_broadcasting(op, other_shape):
    rng = np.random.default_rng(7)
    same = op in ("MINIMUM", "MAXIMUM")
    a = T((6, 16), "int8", 0.03, 4)
    out = T((6, 16), "int8", 0.03 if same else 0.05, 4 if same else -2)
    options = {} if same else {"fused_activation_function": "NONE"}
    # The broadcast operand is a constant, second or first.
    constant = T(other_shape, "int8", 0.03 if same else 0.021, 4 if same else 11, random_codes(rng, other_shape))
    for order in ((a, constant), (constant, a)):
        blob = one_op(op, list(order), out, **options)
        for batch in (1, 3):
            assert_same(blob, [random_codes(rng, (batch, 6, 16))])


def test_add_every_pair_of_codes_with_ties():
    """Scales with exact binary ratios put many sums exactly on rounding ties."""
    codes = np.arange(-128, 128, dtype=np.int8)
    a, b = (c.reshape(256, 256) for c in np.meshgrid(codes, codes, indexing="ij"))
    for scales in [(0.25, 0.125, 0.375), (0.5, 0.5, 3.0), (0.1, 0.3, 0.7)]:
        for op in ("ADD", "SUB"):
            blob = one_op(op, [T((256,), "int8", scales[0], 3), T((256,), "int8", scales[1], -1)],
                          T((256,), "int8", scales[2], 0), fused_activation_function="NONE")
            assert_same(blob, [a, b])


def test_mul_every_pair_of_codes():
    codes = np.arange(-128, 128, dtype=np.int8)
    a, b = (c.reshape(256, 256) for c in np.meshgrid(codes, codes, indexing="ij"))
    for scales in [(0.02, 0.05, 0.01), (0.5, 0.003, 0.25), (0.1, 0.3, 0.7)]:
        blob = one_op("MUL", [T((256,), "int8", scales[0], 5), T((256,), "int8", scales[1], -17)],
                      T((256,), "int8", scales[2], 2), fused_activation_function="NONE")
        assert_same(blob, [a, b])


@pytest.mark.parametrize("op", ["ADD", "SUB", "MUL"])
def test_binary_int16(op):
    rng = np.random.default_rng(3)
    scales = (0.0003, 0.0005, 0.0007) if op != "MUL" else (0.003, 0.002, 0.05)
    blob = one_op(op, [T((40,), "int16", scales[0], 0), T((40,), "int16", scales[1], 0)], T((40,), "int16", scales[2], 0),
                  fused_activation_function="NONE")
    for batch in (1, 2):
        assert_same(blob, [random_codes(rng, (batch, 40), "int16"), random_codes(rng, (batch, 40), "int16")])


@pytest.mark.parametrize("op", ["ADD", "SUB"])
def test_int16_power_of_two_path(op):
    rng = np.random.default_rng(4)
    blob = one_op(op, [T((40,), "int16", 2.0**-12, 0), T((40,), "int16", 2.0**-14, 0)], T((40,), "int16", 2.0**-12, 0),
                  fused_activation_function="NONE", pot_scale_int16=True)
    assert_same(blob, [random_codes(rng, (2, 40), "int16"), random_codes(rng, (2, 40), "int16")])


# --- QUANTIZE, DEQUANTIZE ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16"])
def test_quantize_float_with_ties(dtype):
    rng = np.random.default_rng(11)
    scale, zp = 0.0125, {"int8": -3, "uint8": 128, "int16": 0}[dtype]
    x = np.concatenate([
        (np.arange(-300, 300) + 0.5).astype(np.float32) * np.float32(scale),  # near-ties
        np.arange(-600, 600).astype(np.float32) * np.float32(0.5) * np.float32(scale),
        rng.normal(0, 3, 800).astype(np.float32),
        np.array([1e9, -1e9, 0.0, -0.0], np.float32),
    ])[: 2 * 1300].reshape(2, 1300)
    blob = one_op("QUANTIZE", [T((1300,), "float32")], T((1300,), dtype, scale, zp))
    assert_same(blob, [x])


@pytest.mark.parametrize("src, dst", [("int8", "int8"), ("int8", "int16"), ("int16", "int8"), ("int8", "uint8"), ("uint8", "int8")])
@pytest.mark.parametrize("grid", GRIDS[:4])
def test_requantize_every_code(src, dst, grid):
    s_in, z_in, s_out, z_out = grid
    if src == "int16":
        z_in, s_in = 0, s_in / 200
    if dst == "int16":
        z_out, s_out = 0, s_out / 100
    if src == "uint8":
        z_in += 128
    if dst == "uint8":
        z_out += 128
    blob = one_op("QUANTIZE", [T((128,), src, s_in, z_in)], T((128,), dst, s_out, z_out))
    x = every_code(src) if src != "int16" else np.arange(-32768, 32768, 256).astype(np.int16).reshape(2, 128)
    assert_same(blob, [x])


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16"])
def test_dequantize(dtype):
    x = every_code(dtype) if dtype != "int16" else np.arange(-32768, 32768, 256).astype(np.int16).reshape(2, 128)
    for scale, zp in [(0.0123, 3), (0.1, -7), (1.7e-5, 0)]:
        zp = zp + (128 if dtype == "uint8" else 0)
        zp = 0 if dtype == "int16" else zp
        blob = one_op("DEQUANTIZE", [T((128,), dtype, scale, zp)], T((128,), "float32"))
        assert_same(blob, [x])


# --- RELU family, LEAKY_RELU, PRELU -----------------------------------------------------------
@pytest.mark.parametrize("op", ["RELU", "RELU6", "RELU_N1_TO_1", "RELU_0_TO_1"])
@pytest.mark.parametrize("grid", GRIDS)
def test_relu_family_every_code(op, grid):
    s_in, z_in, s_out, z_out = grid
    blob = one_op(op, [T((128,), "int8", s_in, z_in)], T((128,), "int8", s_out, z_out))
    assert_same(blob, [every_code()])


@pytest.mark.parametrize("alpha", [0.1, 0.3, 1.7, -0.2])
@pytest.mark.parametrize("grid", GRIDS)
def test_leaky_relu_every_code(alpha, grid):
    s_in, z_in, s_out, z_out = grid
    blob = one_op("LEAKY_RELU", [T((128,), "int8", s_in, z_in)], T((128,), "int8", s_out, z_out), alpha=alpha)
    assert_same(blob, [every_code()])


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("alpha_shape", [(1, 1, 16), (16,), (1,)])
def test_prelu_every_code(grid, alpha_shape):
    rng = np.random.default_rng(5)
    s_in, z_in, s_out, z_out = grid
    alpha = T(alpha_shape, "int8", 0.0051, 3, random_codes(rng, alpha_shape))
    blob = one_op("PRELU", [T((2, 8, 16), "int8", s_in, z_in), alpha], T((2, 8, 16), "int8", s_out, z_out))
    assert_same(blob, [every_code(batch=1).reshape(1, 2, 8, 16)])
    assert_same(blob, [random_codes(rng, (3, 2, 8, 16))])


# --- table activations, HARD_SWISH ------------------------------------------------------------
@pytest.mark.parametrize("op", ["LOGISTIC", "TANH", "GELU", "HARD_SWISH"])
@pytest.mark.parametrize("grid", GRIDS)
def test_unary_every_code(op, grid):
    s_in, z_in, s_out, z_out = grid
    if op == "LOGISTIC":
        s_out, z_out = 1.0 / 256, -128
    if op == "TANH":
        s_out, z_out = 1.0 / 128, 0
    if op == "HARD_SWISH" and s_in > 128 * s_out:
        s_out = s_in / 64
    blob = one_op(op, [T((128,), "int8", s_in, z_in)], T((128,), "int8", s_out, z_out))
    assert_same(blob, [every_code()])


@pytest.mark.parametrize("op", ["LOGISTIC", "TANH", "HARD_SWISH", "RELU"])
def test_unary_uint8_every_code(op):
    s_in, s_out, z_out = 0.031, {"LOGISTIC": 1 / 256, "TANH": 1 / 128}.get(op, 0.027), {"TANH": 128}.get(op, 0)
    blob = one_op(op, [T((128,), "uint8", s_in, 131)], T((128,), "uint8", s_out, z_out))
    assert_same(blob, [every_code("uint8")])


@pytest.mark.parametrize("grid", GRIDS)
def test_gelu_approximate_every_code(grid):
    s_in, z_in, s_out, z_out = grid
    blob = one_op("GELU", [T((128,), "int8", s_in, z_in)], T((128,), "int8", s_out, z_out), approximate=True)
    assert_same(blob, [every_code()])


@pytest.mark.parametrize("grid", GRIDS)
def test_elu_every_code_against_builtin(grid):
    """BUILTIN_REF registers no ELU: compare with LiteRT's builtin table kernel (no XNNPACK)."""
    s_in, z_in, s_out, z_out = grid
    blob = one_op("ELU", [T((128,), "int8", s_in, z_in)], T((128,), "int8", s_out, z_out))
    assert_same(blob, [every_code()], reference=False)


def test_hard_swish_scale_sweep():
    """Many input/output scale pairs: both multiplier exponents through their signs."""
    x = every_code()
    for s_in in (0.003, 0.02, 0.09, 0.4, 1.3):
        for ratio in (0.01, 0.3, 1.0, 7.0, 100.0):
            blob = one_op("HARD_SWISH", [T((128,), "int8", s_in, -11)], T((128,), "int8", s_in / ratio, 9))
            assert_same(blob, [x])


UNARY_SWEEP = [("LOGISTIC", {}), ("TANH", {}), ("GELU", {}), ("GELU", {"approximate": True}), ("ELU", {}),
               ("HARD_SWISH", {}), ("LEAKY_RELU", {"alpha": 0.13}), ("RELU6", {}), ("RELU", {}), ("QUANTIZE", {})]


def random_grid_sweep(op: str, options: dict, count: int, seed: int) -> None:
    """Every input code at ``count`` random input/output grids (scales over 3.5 decades)."""
    rng = np.random.default_rng(seed)
    x = every_code()
    for _ in range(count):
        s_in, z_in = float(np.float32(10 ** rng.uniform(-3, 0.5))), int(rng.integers(-128, 128))
        s_out, z_out = float(np.float32(s_in * 10 ** rng.uniform(-1.5, 1.5))), int(rng.integers(-128, 128))
        if op == "LOGISTIC":
            s_out, z_out = 1 / 256, -128
        if op == "TANH":
            s_out, z_out = 1 / 128, 0
        if op == "HARD_SWISH":
            s_out = max(s_out, s_in / 128)
        blob = one_op(op, [T((128,), "int8", s_in, z_in)], T((128,), "int8", s_out, z_out), **options)
        assert_same(blob, [x], reference=op != "ELU")


@pytest.mark.parametrize("op, options", UNARY_SWEEP)
def test_unary_random_grids(op, options):
    random_grid_sweep(op, options, count=12, seed=len(op))


@pytest.mark.slow
@pytest.mark.parametrize("op, options", UNARY_SWEEP)
def test_unary_random_grids_many(op, options):
    random_grid_sweep(op, options, count=400, seed=100 + len(op))


@pytest.mark.slow
@pytest.mark.parametrize("op", ["ADD", "SUB", "MUL"])
def test_binary_every_pair_random_grids_many(op):
    rng = np.random.default_rng(len(op))
    codes = np.arange(-128, 128, dtype=np.int8)
    a, b = (c.reshape(256, 256) for c in np.meshgrid(codes, codes, indexing="ij"))
    for _ in range(60):
        s_a, s_b = (float(np.float32(10 ** rng.uniform(-3, 0))) for _ in range(2))
        base = s_a * s_b if op == "MUL" else max(s_a, s_b)
        s_out = float(np.float32(base * 10 ** rng.uniform(0, 2)))
        z_a, z_b, z_out = (int(z) for z in rng.integers(-128, 128, 3))
        blob = one_op(op, [T((256,), "int8", s_a, z_a), T((256,), "int8", s_b, z_b)], T((256,), "int8", s_out, z_out),
                      fused_activation_function="NONE")
        assert_same(blob, [a, b])


# --- SOFTMAX ----------------------------------------------------------------------------------
@pytest.mark.parametrize("scale, beta", [(0.1, 1.0), (0.0371, 1.0), (0.5, 1.0), (0.02, 0.5), (0.25, 2.7), (1.5, 1.0)])
@pytest.mark.parametrize("depth", [10, 100])
def test_softmax(scale, beta, depth):
    rng = np.random.default_rng(depth)
    blob = one_op("SOFTMAX", [T((4, depth), "int8", scale, 7)], T((4, depth), "int8", 1.0 / 256, -128), beta=beta)
    for batch in (1, 3):
        x = random_codes(rng, (batch, 4, depth))
        x[0, 0] = 127  # one row with every entry equal
        x[0, 1, : depth // 2] = -128  # one row with far-away entries
        assert_same(blob, [x])


def test_softmax_every_code_in_a_row():
    blob = one_op("SOFTMAX", [T((256,), "int8", 0.0625, 0)], T((256,), "int8", 1.0 / 256, -128), beta=1.0)
    x = np.stack([every_code(batch=1)[0], np.roll(every_code(batch=1)[0], 17) // 4])
    assert_same(blob, [x])


def test_a_softmax_the_reference_kernels_would_abort_on_is_refused_with_one_error():
    """LiteRT's reference SOFTMAX aborts the process when beta·s_in·2^26 <= 1; every entry point
    that creates a BUILTIN_REF interpreter refuses such a file first, and so does the reference."""
    import tflite_export

    blob = one_op("SOFTMAX", [T((10,), "int8", 1e-9, 0)], T((10,), "int8", 1.0 / 256, -128), beta=1.0)
    x = np.zeros((2, 10), np.int8)
    with pytest.raises(ValueError, match="SOFTMAX"):
        tflite_export.verify(blob, x)
    with pytest.raises(ValueError, match="SOFTMAX"):
        tflite_export.run(blob, x, reference_kernels=True)
    with pytest.raises(ValueError, match="rejected by TFLite"):
        Interpreter(blob).run([x])


# --- comparisons, SELECT_V2 -------------------------------------------------------------------
@pytest.mark.parametrize("op", ["GREATER_EQUAL", "GREATER", "LESS", "LESS_EQUAL"])
def test_comparisons(op):
    rng = np.random.default_rng(2)
    codes = np.arange(-128, 128, dtype=np.int8)
    a, b = (c.reshape(256, 256) for c in np.meshgrid(codes, codes, indexing="ij"))
    for s_a, z_a, s_b, z_b in [(0.02, 3, 0.02, 3), (0.02, 3, 0.0517, -9), (0.5, 0, 0.25, 1)]:
        blob = one_op(op, [T((256,), "int8", s_a, z_a), T((256,), "int8", s_b, z_b)], T((256,), "bool"))
        assert_same(blob, [a, b])
    # int32 codes against a broadcast constant (the form lower.py writes after CAST).
    blob = one_op(op, [T((5, 7), "int32"), T((1, 7), "int32", data=rng.integers(-5, 5, (1, 7)).astype(np.int32))], T((5, 7), "bool"))
    assert_same(blob, [rng.integers(-6, 6, (3, 5, 7)).astype(np.int32)])


def test_select_v2_broadcasting():
    rng = np.random.default_rng(9)
    cond = T((4, 6), "bool")
    x = T((4, 6), "int8", 0.1, 2)
    y = T((1, 6), "int8", 0.1, 2, random_codes(rng, (1, 6)))
    blob = one_op("SELECT_V2", [cond, x, y], T((4, 6), "int8", 0.1, 2))
    for batch in (1, 3):
        assert_same(blob, [rng.integers(0, 2, (batch, 4, 6)).astype(bool), random_codes(rng, (batch, 4, 6))])


# --- RESIZE_BILINEAR, RESIZE_NEAREST_NEIGHBOR -------------------------------------------------
RESIZES = [((4, 5), (8, 10)), ((3, 3), (7, 5)), ((6, 8), (3, 4)), ((5, 7), (9, 2)), ((1, 4), (3, 8))]


@pytest.mark.parametrize("op", ["RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR"])
@pytest.mark.parametrize("sizes", RESIZES)
@pytest.mark.parametrize("mode", ["default", "align_corners", "half_pixel_centers"])
@pytest.mark.parametrize("dtype", ["int8", "int16"])
def test_resize(op, sizes, mode, dtype):
    rng = np.random.default_rng(1)
    (h, w), (oh, ow) = sizes
    options = {"align_corners": mode == "align_corners", "half_pixel_centers": mode == "half_pixel_centers"}
    size = T((2,), "int32", data=np.array([oh, ow], np.int32))
    blob = one_op(op, [T((h, w, 3), dtype, 0.05, 0), size], T((oh, ow, 3), dtype, 0.05, 0), **options)
    for batch in (1, 2):
        assert_same(blob, [random_codes(rng, (batch, h, w, 3), dtype)])


# --- other types: uint8, int16, int32, float32, per-channel, int4 ----------------------------
def _u8(shape):
    return T(shape, "uint8", 0.02, 130)


def _f32(shape):
    return T(shape, "float32")


def _i32(shape):
    return T(shape, "int32")


OTHER_TYPES = {
    "softmax-uint8": ("SOFTMAX", [T((4, 30), "uint8", 0.07, 128)], T((4, 30), "uint8", 1 / 256, 0), {"beta": 1.0}),
    "softmax-int8-to-int16": ("SOFTMAX", [T((4, 30), "int8", 0.07, 3)], T((4, 30), "int16", 1 / 32768, 0), {"beta": 1.0}),
    "relu-int16": ("RELU", [T((64,), "int16", 0.001, 0)], T((64,), "int16", 0.0007, 0), {}),
    "relu6-int16": ("RELU6", [T((64,), "int16", 0.001, 0)], T((64,), "int16", 0.0003, 0), {}),
    "leaky-int16": ("LEAKY_RELU", [T((64,), "int16", 0.001, 0)], T((64,), "int16", 0.0007, 0), {"alpha": 0.2}),
    "prelu-int16": ("PRELU", [T((64,), "int16", 0.001, 0), T((64,), "int8", 0.01, 0, np.arange(-32, 32))],
                    T((64,), "int16", 0.0007, 0), {}),
    "add-uint8-relu": ("ADD", [_u8((64,)), T((64,), "uint8", 0.03, 120)], T((64,), "uint8", 0.04, 128),
                       {"fused_activation_function": "RELU"}),
    "mul-uint8": ("MUL", [_u8((64,)), T((64,), "uint8", 0.03, 120)], T((64,), "uint8", 0.004, 128),
                  {"fused_activation_function": "NONE"}),
    "greater-equal-uint8": ("GREATER_EQUAL", [_u8((64,)), T((64,), "uint8", 0.03, 120)], T((64,), "bool"), {}),
    "greater-equal-int16": ("GREATER_EQUAL", [T((64,), "int16", 0.02, 0), T((64,), "int16", 0.03, 0)], T((64,), "bool"), {}),
    "add-float32-relu6": ("ADD", [_f32((64,)), _f32((64,))], _f32((64,)), {"fused_activation_function": "RELU6"}),
    "add-int32": ("ADD", [_i32((64,)), _i32((64,))], _i32((64,)), {"fused_activation_function": "NONE"}),
    "sub-int32-relu": ("SUB", [_i32((64,)), _i32((64,))], _i32((64,)), {"fused_activation_function": "RELU"}),
    "mul-float32": ("MUL", [_f32((64,)), _f32((64,))], _f32((64,)), {"fused_activation_function": "NONE"}),
    "minimum-int32": ("MINIMUM", [_i32((64,)), _i32((64,))], _i32((64,)), {}),
    "relu6-float32": ("RELU6", [_f32((64,))], _f32((64,)), {}),
    "leaky-float32": ("LEAKY_RELU", [_f32((64,))], _f32((64,)), {"alpha": 0.3}),
    "quantize-int32-to-int8": ("QUANTIZE", [T((64,), "int32", 0.001, 0)], T((64,), "int8", 0.07, 3), {}),
    "quantize-float32-to-int4": ("QUANTIZE", [_f32((64,))], T((64,), "int4", 0.1, 0), {}),
    "nearest-align-and-half-pixel": (
        "RESIZE_NEAREST_NEIGHBOR", [T((3, 5, 2), "int8", 0.1, 0), T((2,), "int32", data=np.array([7, 9], np.int32))],
        T((7, 9, 2), "int8", 0.1, 0), {"align_corners": True, "half_pixel_centers": True}),
    "nearest-float32": (
        "RESIZE_NEAREST_NEIGHBOR", [_f32((3, 5, 2)), T((2,), "int32", data=np.array([7, 9], np.int32))],
        _f32((7, 9, 2)), {"half_pixel_centers": True}),
}


def _random_input(rng, spec: T, batch: int) -> np.ndarray:
    shape = (batch, *spec.shape)
    if spec.dtype == "float32":
        return rng.normal(0, 3, shape).astype(np.float32)
    if spec.dtype == "int32":
        return rng.integers(-9999, 9999, shape).astype(np.int32)
    return random_codes(rng, shape, spec.dtype)


@pytest.mark.parametrize("case", sorted(OTHER_TYPES))
def test_other_types(case):
    op, inputs, output, options = OTHER_TYPES[case]
    blob = one_op(op, inputs, output, **options)
    rng = np.random.default_rng(len(case))
    for batch in (1, 3):
        assert_same(blob, [_random_input(rng, t, batch) for t in inputs if t.data is None])


@pytest.mark.parametrize("op", ["QUANTIZE", "DEQUANTIZE"])
def test_per_channel_quantize_dequantize(op):
    rng = np.random.default_rng(12)
    g = Graph()
    per_channel = Quantization([0.01, 0.02, 0.05, 0.3], [0, 1, -2, 0], axis=2)
    plain = "float32"
    src, dst = (plain, "int8") if op == "QUANTIZE" else ("int8", plain)
    x = g.add_tensor(Tensor("x", (1, 5, 4), src, per_channel if src == "int8" else None, dynamic_batch=True))
    y = g.add_tensor(Tensor("y", (1, 5, 4), dst, per_channel if dst == "int8" else None, dynamic_batch=True))
    g.add_operator(op, [x], [y])
    g.inputs, g.outputs = [x], [y]
    value = rng.normal(0, 1, (3, 5, 4)).astype(np.float32) if src == "float32" else random_codes(rng, (3, 5, 4))
    assert_same(write(g), [value])


# --- a chain, and what is refused -------------------------------------------------------------
def test_chain_quantize_add_logistic_dequantize():
    g = Graph()
    x = g.add_tensor(Tensor("x", (1, 32), "float32", dynamic_batch=True))
    q = g.add_tensor(Tensor("q", (1, 32), "int8", Quantization([0.03], [-4]), dynamic_batch=True))
    c = g.add_tensor(Tensor("c", (32,), "int8", Quantization([0.011], [2]), np.arange(-16, 16, dtype=np.int8)))
    s = g.add_tensor(Tensor("s", (1, 32), "int8", Quantization([0.035], [1]), dynamic_batch=True))
    p = g.add_tensor(Tensor("p", (1, 32), "int8", Quantization([1 / 256], [-128]), dynamic_batch=True))
    y = g.add_tensor(Tensor("y", (1, 32), "float32", dynamic_batch=True))
    g.add_operator("QUANTIZE", [x], [q])
    g.add_operator("ADD", [q, c], [s], fused_activation_function="NONE")
    g.add_operator("LOGISTIC", [s], [p])
    g.add_operator("DEQUANTIZE", [p], [y])
    g.inputs, g.outputs = [x], [y]
    assert_same(write(g), [np.random.default_rng(0).normal(0, 2, (5, 32)).astype(np.float32)])


def test_unsupported_configurations_raise():
    blob = one_op("ADD", [T((4,), "int8", 1.0, 0), T((4,), "int8", 1.0, 0)], T((4,), "int8", 1e-7, 0),
                  fused_activation_function="NONE")
    with pytest.raises(UnsupportedOperatorError, match="ADD"):
        Interpreter(blob).run([np.zeros((1, 4), np.int8), np.zeros((1, 4), np.int8)])
    blob = one_op("TANH", [T((4,), "int16", 2.0**-12, 0)], T((4,), "int16", 2.0**-15, 0))
    with pytest.raises(UnsupportedOperatorError, match="TANH"):
        Interpreter(blob).run([np.zeros((1, 4), np.int16)])
