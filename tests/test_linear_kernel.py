"""The linear-scan CPU kernel (``csrc/linear.cc``): against a NumPy loop, forwards and
backwards, at widths not a multiple of 16 and one that the kernel splits over threads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrnn import _native
from jaxrnn.cells._linear_kernel import linear_scan_kernel

pytestmark = pytest.mark.skipif(
    not _native.kernel_status()[0], reason=f"no CPU kernels: {_native.kernel_status()[1]}"
)


@pytest.fixture(autouse=True)
def three_threads():
    """The kernel may split a call over three threads, however many cores this machine has."""
    library = _native._libraries[-1]
    library.jaxrnn_set_max_threads(3)
    yield
    library.jaxrnn_set_max_threads(_native.max_threads())


def numpy_scan(a, b, h0, reverse):
    """``h[t] = a[t] * h[t-1] + b[t]`` step by step (``h[t+1]`` with ``reverse``)."""
    h, out = h0, np.empty_like(b)
    for t in reversed(range(len(a))) if reverse else range(len(a)):
        h = out[t] = a[t] * h + b[t]
    return out


def inputs(shape, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    b = rng.normal(size=shape).astype(np.float32)
    h0 = rng.normal(size=shape[1:]).astype(np.float32)
    return a, b, h0


# At (772, 2040), T * N >= 3 * 2**19: three threads, on columns [0, 688), [688, 1360), [1360,
# 2040) (kElementsPerThread in csrc/linear.cc); one thread at the others.
@pytest.mark.parametrize("shape", [(1, 7), (5, 33), (37, 3, 5), (772, 2040)])
@pytest.mark.parametrize("reverse", [False, True])
def test_against_numpy(shape, reverse):
    a, b, h0 = inputs(shape)
    expected = numpy_scan(a, b, h0, reverse)
    h = linear_scan_kernel(jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0), reverse=reverse)
    assert h.shape == shape and h.dtype == jnp.float32
    np.testing.assert_allclose(h, expected, rtol=1e-6, atol=1e-6)
    jitted = jax.jit(linear_scan_kernel, static_argnames="reverse")
    np.testing.assert_array_equal(jitted(a, b, h0, reverse=reverse), h)


@pytest.mark.parametrize("reverse", [False, True])
def test_against_lax_scan_threaded(reverse):
    """The threaded path, against the XLA loop it replaces (the same step)."""
    a, b, h0 = inputs((520, 16 * 130), seed=1)  # two threads

    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    expected = jax.jit(lambda a, b, h0: jax.lax.scan(step, h0, (a, b), reverse=reverse)[1])
    h = linear_scan_kernel(jnp.asarray(a), jnp.asarray(b), jnp.asarray(h0), reverse=reverse)
    np.testing.assert_allclose(h, expected(a, b, h0), rtol=1e-6, atol=1e-6)


def test_nan_propagates():
    a, b, h0 = inputs((6, 40))
    a[2, 3] = np.nan
    b[4, 17] = np.nan
    h0[39] = np.nan
    for reverse in (False, True):
        expected = numpy_scan(a, b, h0, reverse)
        h = np.asarray(linear_scan_kernel(*map(jnp.asarray, (a, b, h0)), reverse=reverse))
        np.testing.assert_array_equal(np.isnan(h), np.isnan(expected))
        np.testing.assert_allclose(h, expected, rtol=1e-6, atol=1e-6)
    # Forwards: column 3 from step 2 on, column 17 from step 4 on, column 39 throughout.
    h = np.asarray(linear_scan_kernel(*map(jnp.asarray, (a, b, h0)), reverse=False))
    assert np.isnan(h[2:, 3]).all() and not np.isnan(h[:2, 3]).any()
    assert np.isnan(h[4:, 17]).all() and np.isnan(h[:, 39]).all()


def test_vmap():
    a, b, _ = inputs((3, 9, 20))  # vmapped over the first axis: [9, 20] each, h0 [20]
    h0 = inputs((3, 20))[1]
    h = jax.vmap(lambda a, b, h0: linear_scan_kernel(a, b, h0, reverse=True))(a, b, h0)
    expected = np.stack([numpy_scan(a[i], b[i], h0[i], True) for i in range(3)])
    np.testing.assert_allclose(h, expected, rtol=1e-6, atol=1e-6)


def test_checks_shapes_and_dtypes():
    a, b, h0 = inputs((4, 6))
    with pytest.raises(ValueError, match="without its time axis"):
        linear_scan_kernel(a, b, h0[:5], reverse=False)
    with pytest.raises(TypeError, match="float32"):
        linear_scan_kernel(a.astype(np.float64), b, h0, reverse=False)
