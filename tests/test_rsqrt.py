"""The rsqrt emulations against the frameworks themselves: tf.math.rsqrt and jax.lax.rsqrt, bit for bit.

Each framework runs in its own subprocess (as the other end-to-end tests do: TensorFlow, JAX and
PyTorch are not imported into one process), reading the inputs from a .npy file and writing its
results to another. The emulations need an x86-64 CPU (AVX for TensorFlow's); elsewhere they raise
RsqrtUnavailable, which is tested on every host.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from batchnorm import _rsqrt
from batchnorm._rsqrt import (
    TENSORFLOW_PACKET,
    RsqrtUnavailable,
    rsqrt_correct,
    rsqrt_tensorflow,
    rsqrt_xla,
)

F32 = np.float32
TINY = np.finfo(F32).tiny
MAX = np.finfo(F32).max

#: TensorFlow's result depends on the length: these lengths give tails of every size 0..7.
TF_LENGTHS = (1, 2, 3, 7, 8, 9, 15, 16, 17, 23, 100_005)

needs_tensorflow = pytest.mark.skipif(
    not _rsqrt.tensorflow_available(), reason="TensorFlow's rsqrt emulation needs x86-64 with AVX"
)
needs_xla = pytest.mark.skipif(not _rsqrt.xla_available(), reason="XLA's rsqrt emulation needs x86-64")


def edge_values() -> np.ndarray:
    """Zero, subnormals, the normal boundary, powers of two, typical variances + eps, huge, inf."""
    values = [
        0.0,
        np.nextafter(F32(0), F32(1)),  # smallest subnormal
        np.nextafter(TINY, F32(0)),  # largest subnormal
        TINY,
        np.nextafter(TINY, F32(1)),
        1e-38, 1e-30, 1e-20, 1e-12, 1e-8, 1e-6, 1e-5, 1e-3, 1.001e-3, 0.1, 0.5,
        np.nextafter(F32(1), F32(0)), 1.0, np.nextafter(F32(1), F32(2)), 2.0, 3.0, 4.0, 0.25, 1.5,
        1e3, 1e10, 1e20, 1e30, 3e38,
        np.nextafter(MAX, F32(0)),
        MAX,
        np.inf,
    ]  # fmt: skip
    return np.array(values, dtype=F32)


def random_values(n: int, seed: int) -> np.ndarray:
    """Uniform random bit patterns of non-negative finite floats: every exponent equally likely."""
    bits = np.random.default_rng(seed).integers(0, 0x7F800000, size=n, dtype=np.uint32)
    return bits.view(F32)


def run_framework(tmp_path: Path, script: str, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """Run ``script`` (defining ``rsqrt(x) -> np.ndarray``) over each input in a fresh interpreter."""
    for k, x in enumerate(inputs):
        np.save(tmp_path / f"in{k}.npy", x)
    driver = textwrap.dedent(script) + textwrap.dedent(
        f"""
        import numpy as np
        for k in range({len(inputs)}):
            x = np.load(r"{tmp_path}/in%d.npy" % k)
            np.save(r"{tmp_path}/out%d.npy" % k, np.asarray(rsqrt(x), dtype=np.float32))
        """
    )
    proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [np.load(tmp_path / f"out{k}.npy") for k in range(len(inputs))]


def assert_bits_equal(got: np.ndarray, want: np.ndarray, x: np.ndarray) -> None:
    assert got.dtype == want.dtype == F32 and got.shape == want.shape
    bad = got.view(np.uint32) != want.view(np.uint32)
    assert not bad.any(), (
        f"{int(bad.sum())} differ, first inputs {x[bad][:5]}: got {got[bad][:5]}, want {want[bad][:5]}"
    )


def framework_inputs() -> list[np.ndarray]:
    edges = edge_values()
    inputs = [random_values(n, seed=n) for n in TF_LENGTHS]
    inputs.append(np.tile(edges, TENSORFLOW_PACKET))  # every edge value in whole packets ...
    inputs.extend(edges[k : k + 1] for k in range(edges.size))  # ... and alone, in the scalar tail
    return inputs


@needs_tensorflow
def test_tensorflow_bit_identical(tmp_path: Path) -> None:
    inputs = framework_inputs()
    script = """
        import tensorflow as tf

        def rsqrt(x):
            return tf.math.rsqrt(x).numpy()
    """
    for x, want in zip(inputs, run_framework(tmp_path, script, inputs), strict=True):
        assert_bits_equal(rsqrt_tensorflow(x), want, x)


@needs_xla
def test_xla_bit_identical_eager_and_jit(tmp_path: Path) -> None:
    inputs = framework_inputs()
    script = """
        import jax
        import numpy as np

        jitted = jax.jit(jax.lax.rsqrt)

        def rsqrt(x):
            eager = np.asarray(jax.lax.rsqrt(x))
            assert np.array_equal(eager.view(np.uint32), np.asarray(jitted(x)).view(np.uint32))
            return eager
    """
    for x, want in zip(inputs, run_framework(tmp_path, script, inputs), strict=True):
        assert_bits_equal(rsqrt_xla(x), want, x)


@needs_tensorflow
def test_tensorflow_layout() -> None:
    """Whole packets of 8 are approximated, the n % 8 tail correctly rounded; shape kept, C order."""
    x = random_values(100_005, seed=7)
    got = rsqrt_tensorflow(x)
    correct = rsqrt_correct(x)
    tail = x.size - x.size % TENSORFLOW_PACKET
    assert np.array_equal(got[tail:], correct[tail:])
    assert (got[:tail] != correct[:tail]).mean() > 0.05  # the approximation is visible ...
    normal = x >= TINY  # (subnormals read as zero: inf, where 1 / sqrtf is finite)
    ulps = np.abs(got[normal].view(np.int32) - correct[normal].view(np.int32).astype(np.int64))
    assert ulps.max() <= 3  # ... and close
    block = x[:24].reshape(2, 3, 4)
    np.testing.assert_array_equal(rsqrt_tensorflow(block), rsqrt_tensorflow(x[:24]).reshape(2, 3, 4))


@needs_tensorflow
@needs_xla
def test_special_values() -> None:
    x = np.array([0.0, 1e-45, 1e-39, np.inf, np.nan, 1.0, 4.0], dtype=F32)
    for fn in (rsqrt_xla, lambda v: rsqrt_tensorflow(np.tile(v, 8))[: v.size], rsqrt_tensorflow):
        got = fn(x)
        assert got.dtype == F32
        np.testing.assert_array_equal(got[:4], [np.inf, np.inf, np.inf, 0.0])  # subnormals read as 0
        assert np.isnan(got[4])
        np.testing.assert_array_equal(got[5:], [1.0, 0.5])


def test_xla_is_elementwise() -> None:
    if not _rsqrt.xla_available():
        pytest.skip("XLA's rsqrt emulation needs x86-64")
    x = random_values(1000, seed=3)
    np.testing.assert_array_equal(rsqrt_xla(x)[5:9], rsqrt_xla(x[5:9]))


@needs_xla
@pytest.mark.parametrize("form", [(True, 1, True), (True, 1, False), (True, 2, True), (True, 2, False)])
def test_xla_forms_of_other_hosts(form: tuple[bool, int, bool]) -> None:
    """XLA's forms for other x86 hosts (Intel: two steps; no FMA) run and stay within 3 ulps.

    Only this host's form is compared with XLA above; the bit-exactness of the others was measured with
    ``XLA_FLAGS=--xla_cpu_max_isa=...`` (no FMA, no AVX) or follows XLA's source (two steps).
    """
    x = random_values(50_000, seed=11)
    x = x[x >= TINY]
    out = np.empty_like(x)
    _rsqrt._kernels()["xla"](x, out, *form)
    ulps = np.abs(out.view(np.int32) - rsqrt_correct(x).view(np.int32).astype(np.int64))
    assert ulps.max() <= 3


@needs_xla
def test_xla_without_avx_is_correctly_rounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without AVX XLA computes 1 / sqrtf(x), subnormal inputs flushed to zero."""
    monkeypatch.setattr(_rsqrt, "xla_form", lambda: (False, 0, False))
    x = np.concatenate([random_values(10_000, seed=12), edge_values()])
    flushed = np.where(x < TINY, F32(0), x)
    np.testing.assert_array_equal(rsqrt_xla(x), rsqrt_correct(flushed))


def test_unavailable_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_rsqrt, "_kernels", lambda: {})
    assert not _rsqrt.tensorflow_available() and not _rsqrt.xla_available()
    x = np.ones(3, dtype=F32)
    with pytest.raises(RsqrtUnavailable, match="rsqrt_correct"):
        rsqrt_tensorflow(x)
    with pytest.raises(RsqrtUnavailable, match="rsqrt_correct"):
        rsqrt_xla(x)
    np.testing.assert_array_equal(rsqrt_correct(np.array([0.0, 4.0], dtype=F32)), [np.inf, 0.5])


def test_float32_only() -> None:
    with pytest.raises(TypeError, match="float32"):
        rsqrt_correct(np.ones(2))
    with pytest.raises(TypeError, match="float32"):
        rsqrt_xla(np.ones(2))
    with pytest.raises(TypeError, match="float32"):
        rsqrt_tensorflow(np.ones(2))
