"""Reading and writing parity cases and results as ``.npz`` files.

This module imports only numpy (and ml_dtypes, lazily, for bfloat16), so the
test process and every framework runner can share it.

Case file (IN.npz)
==================

``__cases__``: a 0-d unicode array holding a JSON list; one dict per case, in
order, with the scalar fields below.  Array fields live under
``f"{case_id}/{field}"``.

Scalar fields (JSON):

========== ======================================================================
id          str, unique; no "/" in it
kind        "inference" or "training"
axis        int, channel axis in the framework's own convention (torch and the
            ONNX runners only accept 1; anything else is reported unsupported)
eps         float
momentum    float, in the framework's own convention (torch: weight of the new
            batch, or null for the cumulative average; Keras/tf_keras/ONNX/Flax:
            weight of the old value).  Default: the framework's default.
center      bool (default true).  False: no beta (torch: bias=None; ONNX: B=0)
scale       bool (default true).  False: no gamma (torch: weight=None; ONNX: 1)
steps       int >= 1, training only (default 1): number of training steps.  The
            same ``x`` is fed ``steps`` times unless ``x_steps`` is given.
dtypes      {field: "bfloat16"}: written by :func:`write_cases` for fields
            stored as uint16 bit patterns (npz cannot hold ml_dtypes reliably)
memory_format  optional, torch only: "channels_last" (rank 4) or
            "channels_last_3d" (rank 5)
layer_dtype optional: Keras / tf_keras dtype policy name (e.g. "float16",
            "mixed_float16"), or Flax ``dtype=`` (computation dtype).  Default:
            the framework's default (float32 policy / Flax dtype=None).
jit         optional bool, keras3-jax and flax only: run under jax.jit
            (bits differ from eager by ~1 ulp); default false (eager).  Other
            runners report a jit case unsupported.
========== ======================================================================

Array fields:

============= ================================================================
x             the input (float16 / bfloat16 / float32 / float64)
x_steps       optional, training: stacked batches, shape (steps, *x.shape);
              overrides feeding ``x`` repeatedly (x must then equal x_steps[0])
gamma, beta   (C,) float32 (float64 when x is float64); given even when the
              flag is off (ignored then)
moving_mean,
moving_var    (C,) same dtype as gamma
dy            optional: cotangent of y (same shape and dtype as x).  When
              present, dx/dgamma/dbeta are returned: the VJP of y w.r.t.
              (x, gamma, beta), which equals the gradient of sum(y*dy).  In a
              training case it is taken at the first step, in the mode of the
              case (inference cases give the inference-mode backward).
============= ================================================================

Result file (OUT.npz)
=====================

``__meta__``: 0-d JSON string: {"framework", "versions", "seconds", "env"}.
Per case, under ``f"{case_id}/..."`` (only what applies):

============== ===============================================================
y              output of the inference call, or of the first training step
y_dtype        0-d str: dtype name of y as the framework returned it
running_mean,  training: shape (steps, C), the stored statistics after each
running_var    step (float32, or the parameter dtype)
batch_mean,    torch only: ``save_mean``/``save_invstd`` of the first step
batch_invstd   (torch.native_batch_norm)
dx, dgamma,    the VJP with ``dy`` (dgamma/dbeta absent when scale/center off)
dbeta
info           0-d JSON str: runner-specific details (e.g. tf_keras ``fused``)
unsupported    0-d str: why this framework cannot express the case
error          0-d str: "ExceptionType: message" raised by the framework
============== ===============================================================

``y_dtype`` and ``dx_dtype`` are always written.  A bfloat16 result ``NAME``
is stored as uint16 bit patterns with ``NAME_dtype == "bfloat16"``;
:func:`read_results` turns it back into an ml_dtypes.bfloat16 array.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

SCALAR_FIELDS = (
    "id",
    "kind",
    "axis",
    "eps",
    "momentum",
    "center",
    "scale",
    "steps",
    "memory_format",
    "layer_dtype",
    "jit",
)
ARRAY_FIELDS = ("x", "x_steps", "gamma", "beta", "moving_mean", "moving_var", "dy")

#: PyTorch's intra-op threads in the runners (torch.set_num_threads): its channels-last reduction trees
#: split the rows among them, so our torch dialects are derived with the same reduction_threads.
TORCH_THREADS = 2


def _bf16():
    import ml_dtypes

    return ml_dtypes.bfloat16


def dtype_name(a: Any) -> str:
    """Name of a numpy / framework dtype ("float32", "bfloat16", ...)."""
    name = str(getattr(a, "dtype", a))
    for prefix in ("torch.", "<dtype: '"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name.rstrip("'>")


def encode(a: np.ndarray) -> tuple[np.ndarray, str | None]:
    """(array storable in npz, dtype tag or None)."""
    a = np.asarray(a)
    if dtype_name(a) == "bfloat16":
        return a.view(np.uint16), "bfloat16"
    return a, None


def decode(a: np.ndarray, tag: str | None) -> np.ndarray:
    if tag == "bfloat16":
        return np.asarray(a, dtype=np.uint16).view(_bf16())
    return a


def write_cases(path, cases: list[dict]) -> None:
    """Write a list of case dicts (arrays may be ml_dtypes.bfloat16)."""
    arrays: dict[str, np.ndarray] = {}
    meta = []
    seen = set()
    for case in cases:
        cid = case["id"]
        if "/" in cid or cid in seen:
            raise ValueError(f"bad or duplicate case id {cid!r}")
        seen.add(cid)
        m = {k: case[k] for k in SCALAR_FIELDS if k in case}
        dtypes = {}
        for k in ARRAY_FIELDS:
            if case.get(k) is None:
                continue
            arr, tag = encode(case[k])
            arrays[f"{cid}/{k}"] = arr
            if tag:
                dtypes[k] = tag
        if dtypes:
            m["dtypes"] = dtypes
        unknown = set(case) - set(SCALAR_FIELDS) - set(ARRAY_FIELDS)
        if unknown:
            raise ValueError(f"case {cid}: unknown fields {sorted(unknown)}")
        meta.append(m)
    arrays["__cases__"] = np.array(json.dumps(meta))
    np.savez(path, **arrays)


def read_cases(path) -> list[dict]:
    """Inverse of :func:`write_cases`; fills in defaults."""
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__cases__"]))
        out = []
        for m in meta:
            case = dict(m)
            tags = case.pop("dtypes", {})
            for k in ARRAY_FIELDS:
                key = f"{m['id']}/{k}"
                case[k] = decode(z[key], tags.get(k)) if key in z else None
            case.setdefault("center", True)
            case.setdefault("scale", True)
            case.setdefault("steps", 1)
            if case["x_steps"] is not None:
                case["steps"] = len(case["x_steps"])
            out.append(case)
    return out


def batches(case: dict) -> list[np.ndarray]:
    """The training batches of a case, one per step."""
    if case.get("x_steps") is not None:
        return list(case["x_steps"])
    return [case["x"]] * int(case.get("steps", 1))


class Results:
    """Collects one runner's outputs; ``save`` writes OUT.npz."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def put(self, cid: str, name: str, value) -> None:
        if isinstance(value, str):
            self.arrays[f"{cid}/{name}"] = np.array(value)
            return
        arr, tag = encode(np.asarray(value))
        self.arrays[f"{cid}/{name}"] = arr
        if name in ("y", "dx") or tag:
            self.arrays[f"{cid}/{name}_dtype"] = np.array(tag or dtype_name(arr))

    def save(self, path, meta: dict) -> None:
        self.arrays["__meta__"] = np.array(json.dumps(meta))
        np.savez(path, **self.arrays)


def read_results(path) -> tuple[dict, dict[str, dict[str, Any]]]:
    """(meta, {case_id: {name: value}}); strings come back as str,
    bfloat16 arrays as ml_dtypes.bfloat16."""
    per_case: dict[str, dict[str, Any]] = {}
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"]))
        for key in z.files:
            if key == "__meta__":
                continue
            cid, name = key.rsplit("/", 1)
            v = z[key]
            per_case.setdefault(cid, {})[name] = str(v) if v.dtype.kind == "U" else v
    for d in per_case.values():
        for name in list(d):
            if d.get(f"{name}_dtype") == "bfloat16":
                d[name] = decode(d[name], "bfloat16")
    return meta, per_case


def keras_layer(cache: dict, make, case: dict):
    """A Keras-style BatchNormalization for ``case`` (tf_keras or Keras 3), built by ``make(**kwargs)``
    once per configuration and kept in ``cache``, with the case's weights assigned."""
    x, axis = case["x"], case["axis"]
    kw = {"axis": axis, "epsilon": case["eps"], "center": case["center"], "scale": case["scale"]}
    if case.get("momentum") is not None:
        kw["momentum"] = case["momentum"]
    if case.get("layer_dtype"):
        kw["dtype"] = case["layer_dtype"]
    key = (*sorted(kw.items()), x.ndim, x.shape[axis])
    layer = cache.get(key)
    if layer is None:
        layer = make(**kw)
        layer.build(x.shape)
        cache[key] = layer
    if case["scale"]:
        layer.gamma.assign(case["gamma"])
    if case["center"]:
        layer.beta.assign(case["beta"])
    layer.moving_mean.assign(case["moving_mean"])
    layer.moving_variance.assign(case["moving_var"])
    return layer
