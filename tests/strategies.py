"""Hypothesis strategies: inputs of any rank, channel axes (ints and tuples), dtypes and parameters."""

from __future__ import annotations

import ml_dtypes
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

HALF_AND_SINGLE = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16), np.dtype(np.float32)]


@st.composite
def shapes_and_axes(draw, min_rank: int = 2, max_rank: int = 5, max_side: int = 5):
    """A shape and a channel axis spec: an int (maybe negative) or a tuple of axes."""
    rank = draw(st.integers(min_rank, max_rank))
    shape = tuple(draw(st.lists(st.integers(1, max_side), min_size=rank, max_size=rank)))
    n_channel = draw(st.integers(1, min(2, rank - 1)))
    axes = tuple(
        sorted(draw(st.lists(st.integers(0, rank - 1), min_size=n_channel, max_size=n_channel, unique=True)))
    )
    if len(axes) == 1:
        spec = axes[0] - rank if draw(st.booleans()) else axes[0]
        return shape, spec, axes
    return shape, axes, axes


def values(shape, lo: float, hi: float):
    return hnp.arrays(
        np.float32, shape, elements=st.floats(float(np.float32(lo)), float(np.float32(hi)), width=32)
    )


@st.composite
def inference_case(draw, dtypes=HALF_AND_SINGLE):
    """x, mean, var, gamma, beta, eps, axis spec and sorted axes, with outputs well inside range."""
    shape, spec, axes = draw(shapes_and_axes())
    cshape = tuple(shape[a] for a in axes)
    dtype = draw(st.sampled_from(dtypes))
    x = draw(values(shape, -100, 100)).astype(dtype)
    mean = draw(values(cshape, -100, 100))
    var = draw(values(cshape, 0.01, 100))
    gamma = draw(values(cshape, -10, 10))
    beta = draw(values(cshape, -10, 10))
    eps = draw(st.sampled_from([0.0, 1e-5, 1e-3]))
    return x, mean, var, gamma, beta, eps, spec, axes
