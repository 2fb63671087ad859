"""Fused float32 elementwise passes of the autodiff backward (:mod:`batchnorm._gradients`).

Each kernel reads the C-contiguous (outer, C, inner) float32 arrays flat and writes one float32 value per
input value, every operation rounded to float32 as jax's eager programs round it (numba float32 arithmetic
without fastmath: no reassociation, no contraction into fused multiply-adds; float32 constants only, so
nothing is promoted to float64). With ``p``, ``q``, ``r`` per-channel float32 arrays::

    scaled            out = fl(dy * p)                                  u, the cotangent of x - mean
    input_gradient    out = fl(fl(fl(dy * p) + q) + fl(r * fl(2 x)))    dx of a float32 input
    paths             out = fl(fl(r * fl(2 x)) + q)                     the E[x] + E[x^2] paths (half x)

The channel of flat index i is ``(i // inner) % C``: with ``inner == 1`` (channels last) rows of C
channels are walked with the channel innermost, else rows of ``inner`` values of one channel. Work is
split into ``nchunks`` parallel chunks of rows (launched through :func:`batchnorm._kernels.compiled._launch`;
one chunk runs on the calling thread).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

__all__ = ["input_gradient", "paths", "scaled"]

_parallel = njit(parallel=True, nogil=True, cache=True, error_model="numpy")


@_parallel
def scaled(dy, p, out, C, inner, nchunks):
    """out = fl(dy * p[c])."""
    width = C if inner == 1 else inner
    rows = dy.size // width
    for t in prange(nchunks):
        for r in range(rows * t // nchunks, rows * (t + 1) // nchunks):
            row = slice(r * width, (r + 1) * width)
            gs, os = dy[row], out[row]
            if inner == 1:
                for c in range(width):
                    os[c] = gs[c] * p[c]
            else:
                pc = p[r % C]
                for k in range(width):
                    os[k] = gs[k] * pc


@_parallel
def input_gradient(x, dy, p, q, r2, out, C, inner, nchunks):
    """out = fl(fl(fl(dy * p[c]) + q[c]) + fl(r2[c] * fl(2 x)))."""
    two = np.float32(2.0)
    width = C if inner == 1 else inner
    rows = x.size // width
    for t in prange(nchunks):
        for r in range(rows * t // nchunks, rows * (t + 1) // nchunks):
            row = slice(r * width, (r + 1) * width)
            xs, gs, os = x[row], dy[row], out[row]
            if inner == 1:
                for c in range(width):
                    os[c] = (gs[c] * p[c] + q[c]) + r2[c] * (two * xs[c])
            else:
                c = r % C
                pc, qc, rc = p[c], q[c], r2[c]
                for k in range(width):
                    os[k] = (gs[k] * pc + qc) + rc * (two * xs[k])


@_parallel
def paths(x, q, r2, out, C, inner, nchunks):
    """out = fl(fl(r2[c] * fl(2 x)) + q[c])."""
    two = np.float32(2.0)
    width = C if inner == 1 else inner
    rows = x.size // width
    for t in prange(nchunks):
        for r in range(rows * t // nchunks, rows * (t + 1) // nchunks):
            row = slice(r * width, (r + 1) * width)
            xs, os = x[row], out[row]
            if inner == 1:
                for c in range(width):
                    os[c] = r2[c] * (two * xs[c]) + q[c]
            else:
                c = r % C
                qc, rc = q[c], r2[c]
                for k in range(width):
                    os[k] = rc * (two * xs[k]) + qc
