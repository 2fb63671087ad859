"""The parity suite's case list, and how each case maps onto our API.

One list of cases (:func:`all_cases`) serves every framework; :func:`applies` says which frameworks can
express a case (PyTorch and ONNX normalize axis 1 only: PyTorch gets the channels-last cases as
``memory_format="channels_last"`` copies, ONNX does not get them). Each case is a dict in the runner
format of ``case_io`` plus private keys starting with ``_`` (stripped by :func:`runner_case`):

``_tags``   set of words describing the case ("offset", "edge", "half", "one-per-channel", ...)
``_layout`` the layout name (see ``LAYOUTS``)

Shapes are few on purpose (JAX compiles per shape). Random data are seeded per case id, so adding a
case changes no other case.
"""

from __future__ import annotations

import functools
import zlib

import ml_dtypes
import numpy as np

F32 = np.dtype(np.float32)
F16 = np.dtype(np.float16)
BF16 = np.dtype(ml_dtypes.bfloat16)

FRAMEWORKS = (
    "torch",
    "onnx",
    "onnxruntime",
    "keras3-tensorflow",
    "keras3-jax",
    "keras3-torch",
    "tf-keras",
    "tf-keras-unfused",
    "flax",
)
AXIS1_ONLY = frozenset({"torch", "onnx", "onnxruntime"})
NO_AUTOGRAD = frozenset({"onnx", "onnxruntime"})

# name: (shape, channel axis). Channel first (axis 1) and channel last (axis -1), ranks 2 to 5, odd sizes.
# Some layouts have 8 channels or more: TensorFlow's rsqrt is approximate on whole packets of 8 channels
# only, and tf_keras' fused NHWC kernel switches arithmetic with C % 4 (see _dialect_records).
LAYOUTS = {
    "r2": ((16, 11), 1),
    "r3f": ((4, 3, 7), 1),
    "r3l": ((4, 7, 3), -1),
    "r4f": ((2, 3, 5, 7), 1),  # NCHW, fused in tf_keras
    "r4l": ((2, 5, 3, 12), -1),  # NHWC, C % 4 == 0
    "r4l7": ((2, 3, 5, 7), -1),  # NHWC, C % 4 != 0
    "r5f": ((2, 3, 2, 3, 4), 1),
    "r5l": ((2, 2, 3, 2, 9), -1),
    "tiny1": ((1, 1, 1, 4), 1),  # one channel, a batch of 1, n = 4
    "tiny4": ((1, 1, 1, 4), -1),  # four channels, one value per channel
    "single": ((1, 5), 1),  # a batch of 1 in 2-D: one value per channel
    "pair": ((2, 3), 1),  # n = 2: the Bessel factor n/(n-1) is 2
    "pair4": ((2, 3, 1, 1), 1),  # n = 2 on the tf_keras fused path
    # large enough for vectorized and multi-threaded reduction trees (n = 8192 per channel)
    "b4f": ((8, 16, 32, 32), 1),
    "b4l": ((8, 32, 32, 16), -1),
    "b2": ((8192, 16), 1),
    # images of 32768 values and more: XLA's reduces tile them one image each (Keras 3 on JAX then runs
    # jnp.mean's and jnp.var's passes block by block of channels)
    "w4f": ((3, 40, 30, 30), 1),
}
EPSILONS = (1e-3, 1e-5, 0.0, 1e-8)
MOMENTA = (0.0, 0.5, 0.9, 0.99)


def _rng(cid: str) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(cid.encode()))


def _params(rng: np.random.Generator, c: int, regime: str) -> dict[str, np.ndarray]:
    gamma = rng.normal(1.0, 0.5, c).astype(F32)
    beta = rng.normal(0.0, 1.0, c).astype(F32)
    if regime == "offset":
        mean = (1e4 + rng.normal(0.0, 1.0, c)).astype(F32)
        var = rng.uniform(0.5, 2.0, c).astype(F32)
    elif regime == "edge":
        mean = rng.normal(0.0, 1e-3, c).astype(F32)
        var = rng.uniform(1e-9, 1e-3, c).astype(F32)
        var[0] = 0.0
        var[-1] = 1e-12
    else:
        mean = rng.normal(0.0, 1.0, c).astype(F32)
        var = rng.uniform(0.05, 3.0, c).astype(F32)
    return {"gamma": gamma, "beta": beta, "moving_mean": mean, "moving_var": var}


def _data(rng: np.random.Generator, shape: tuple[int, ...], axis: int, regime: str) -> np.ndarray:
    if regime == "offset":
        return (1e4 + rng.normal(0.0, 1.0, shape)).astype(F32)
    x = rng.normal(0.3, 2.0, shape)
    if regime == "edge":
        # channel 0 constant (batch variance exactly 0: 3.0 sums exactly), last channel variance ~1e-12
        x = np.moveaxis(x, axis, 0)
        x[0] = 3.0
        x[-1] = 1e-6 * rng.normal(0.0, 1.0, x[-1].shape)
        x = np.moveaxis(x, 0, axis)
    return np.ascontiguousarray(x).astype(F32)


def _case(
    cid: str,
    kind: str,
    layout: str,
    *,
    eps: float,
    regime: str = "normal",
    momentum: float | None = None,
    steps: int = 3,
    dtype: np.dtype = F32,
    center: bool = True,
    scale: bool = True,
    tags: tuple[str, ...] = (),
) -> dict:
    shape, axis = LAYOUTS[layout]
    rng = _rng(cid)
    c = shape[axis]
    case: dict = {"id": cid, "kind": kind, "axis": axis, "eps": eps, "center": center, "scale": scale}
    case.update(_params(rng, c, regime if kind == "inference" else "normal"))
    if kind == "training":
        case["moving_var"] = rng.uniform(0.5, 2.0, c).astype(F32)
        case["momentum"] = momentum
        xs = np.stack([_data(rng, shape, axis, regime) for _ in range(steps)])
        case["x_steps"] = xs.astype(dtype)
        case["x"] = case["x_steps"][0]
    else:
        if regime == "offset":
            case["x"] = _data(rng, shape, axis, "offset").astype(dtype)
        else:
            case["x"] = _data(rng, shape, axis, "normal").astype(dtype)
    case["dy"] = rng.normal(0.0, 1.0, shape).astype(dtype)
    case["_tags"] = frozenset((regime, *tags, *(["half"] if dtype != F32 else [])))
    case["_layout"] = layout
    return case


@functools.cache
def all_cases() -> list[dict]:
    """Every case of the suite, framework-neutral (channel axis 1 or -1)."""
    cases: list[dict] = []
    add = cases.append
    big = ("r2", "r3f", "r3l", "r4f", "r4l", "r4l7", "r5f", "r5l")
    # -- float32 inference: every layout, the eps values rotating; every eps on the fused layouts
    for i, layout in enumerate(big):
        add(_case(f"inf_{layout}", "inference", layout, eps=EPSILONS[i % 4]))
        add(_case(f"inf_{layout}_offset", "inference", layout, eps=EPSILONS[(i + 1) % 4], regime="offset"))
    for layout in ("r4f", "r4l", "r5f", "r2"):
        for eps in EPSILONS:
            add(_case(f"inf_{layout}_edge_eps{eps:g}", "inference", layout, eps=eps, regime="edge"))
    for layout in ("tiny1", "tiny4"):
        add(_case(f"inf_{layout}", "inference", layout, eps=1e-5))
    add(_case("inf_r4f_nocenter", "inference", "r4f", eps=1e-3, center=False))
    add(_case("inf_r4l_noscale", "inference", "r4l", eps=1e-5, scale=False))
    add(_case("inf_r2_noaffine", "inference", "r2", eps=1e-3, center=False, scale=False))
    # -- half-precision inputs, float32 parameters
    for dtype, name in ((F16, "f16"), (BF16, "bf16")):
        for layout in ("r2", "r4f", "r4l", "r5l"):
            add(_case(f"inf_{layout}_{name}", "inference", layout, eps=1e-3, dtype=dtype))
        add(_case(f"tr_r4f_{name}", "training", "r4f", eps=1e-3, momentum=0.9, dtype=dtype))
        add(_case(f"tr_r2_{name}", "training", "r2", eps=1e-5, momentum=0.5, dtype=dtype))

    # -- float32 training: every layout, the momenta rotating
    def offset_training(i: int, layout: str) -> dict:  # x = 1e4 + randn, the momenta rotating
        momentum = MOMENTA[(i + 1) % 4]
        return _case(f"tr_{layout}_offset", "training", layout, eps=1e-3, momentum=momentum, regime="offset")

    for i, layout in enumerate(big):
        add(_case(f"tr_{layout}", "training", layout, eps=EPSILONS[i % 4] or 1e-5, momentum=MOMENTA[i % 4]))
        add(offset_training(i, layout))
    for i, layout in enumerate(("b4f", "b4l", "b2", "w4f")):
        add(offset_training(i, layout))
    for layout in ("r4f", "r4l", "r2"):
        for eps in (1e-3, 1e-8):
            add(
                _case(
                    f"tr_{layout}_edge_eps{eps:g}", "training", layout, eps=eps, regime="edge", momentum=0.9
                )
            )
    for layout in ("r4f", "r2"):
        add(_case(f"tr_{layout}_eps0", "training", layout, eps=0.0, momentum=0.5, tags=("eps0",)))
        add(
            _case(
                f"tr_{layout}_edge_eps0",
                "training",
                layout,
                eps=0.0,
                regime="edge",
                momentum=0.5,
                tags=("eps0",),
            )
        )
    add(_case("tr_r4l_nocenter", "training", "r4l", eps=1e-3, momentum=0.9, center=False))
    add(_case("tr_r4f_noscale", "training", "r4f", eps=1e-3, momentum=0.99, scale=False))
    add(_case("tr_r2_noaffine", "training", "r2", eps=1e-3, momentum=0.5, center=False, scale=False))
    # -- small n: batch of 1 (n = 4), one value per channel (n = 1), n = 2 (the estimator shows)
    add(_case("tr_tiny1", "training", "tiny1", eps=1e-5, momentum=0.5))
    for layout in ("tiny4", "single"):
        add(_case(f"tr_{layout}", "training", layout, eps=1e-3, momentum=0.5, tags=("one-per-channel",)))
    for layout in ("pair", "pair4"):  # momentum 0 stores the batch on the old-value side, 1 on PyTorch's
        for momentum in (0.0, 1.0):
            add(
                _case(
                    f"tr_{layout}_m{momentum:g}",
                    "training",
                    layout,
                    eps=1e-3,
                    momentum=momentum,
                    tags=("store",),
                )
            )
    # -- end to end through bn.BatchNorm: fresh statistics (mean 0, var 1, gamma 1, beta 0), eps 1e-3,
    #    the framework's default momentum and an explicit 0.9 (0.9 weighs the new batch in PyTorch only)
    for layout, momentum in (("r4f", None), ("r2", 0.9), ("r4l", 0.9)):
        name = "default" if momentum is None else f"m{momentum:g}"
        case = _case(f"e2e_{layout}_{name}", "training", layout, eps=1e-3, momentum=momentum, tags=("e2e",))
        c = case["gamma"].shape[0]
        case.update(
            gamma=np.ones(c, F32),
            beta=np.zeros(c, F32),
            moving_mean=np.zeros(c, F32),
            moving_var=np.ones(c, F32),
        )
        add(case)
    return cases


def torch_variant(case: dict) -> dict | None:
    """A channels-last case as PyTorch spells it (axis 1, memory_format channels_last), or None."""
    rank = np.ndim(case["x"])
    if case["axis"] == 1 or rank not in (4, 5):
        return None
    fmt = "channels_last" if rank == 4 else "channels_last_3d"
    out = dict(case, id=case["id"] + "_cl", axis=1, memory_format=fmt)
    for k in ("x", "x_steps", "dy"):
        if case.get(k) is not None:
            out[k] = np.ascontiguousarray(np.moveaxis(case[k], -1, 2 if k == "x_steps" else 1))
    if case.get("x_steps") is not None:
        out["x"] = out["x_steps"][0]
    return out


@functools.cache
def cases_for(framework: str) -> list[dict]:
    """The cases one framework runs (PyTorch: channels-last cases as channels_last memory)."""
    out = []
    for case in all_cases():
        if framework in AXIS1_ONLY and case["axis"] != 1:
            if framework == "torch":
                variant = torch_variant(case)
                if variant is not None:
                    out.append(variant)
            continue
        out.append(case)
    return out


def runner_case(case: dict) -> dict:
    """The case as the runners read it (private keys dropped)."""
    out = {k: v for k, v in case.items() if not k.startswith("_")}
    if out.get("momentum") is None:
        out.pop("momentum", None)
    return out


# -- which dialect is compared with which framework, on which cases ---------------------------------

#: (our dialect, the framework whose outputs it must reproduce). tf-keras-2.11 cannot run here (TF 2.11
#: needs Python <= 3.10): it is held to tf_keras 2.21 wherever its epsilon clamp does not apply.
PAIRS = (*((fw, fw) for fw in FRAMEWORKS), ("tf-keras-2.11", "tf-keras"))


def resolved(dialect: str, case: dict):
    """Our dialect record as it runs on this case's input (tf-keras: fused or unfused path)."""
    import batchnorm as bn

    ndim = np.ndim(case["x"])
    axis = case["axis"] % ndim
    return bn.dialects.get(dialect).for_input(ndim, (axis,), np.shape(case["x"])[axis])


def clamp_applies(dialect: str, case: dict) -> bool:
    """True where tf-keras-2.11 raises eps (fused path, eps <= 1.001e-5): it differs from 2.21 there."""
    d = resolved(dialect, case)
    return d.eps_floor > 0 and case["eps"] <= d.eps_floor


def divides_by_zero(dialect: str, case: dict) -> bool:
    """True where var + eps == 0 in some channel (eps as the dialect applies it): batchnorm refuses."""
    eps = resolved(dialect, case).effective_eps(case["eps"])
    if eps > 0:
        return False
    if case["kind"] == "inference":
        return bool((np.asarray(case["moving_var"], np.float64) == 0).any())
    x = np.asarray(case["x_steps"], np.float64)
    axis = case["axis"] % np.ndim(case["x"]) + 1
    reduce = tuple(i for i in range(1, x.ndim) if i != axis)
    return bool((x.max(axis=reduce) == x.min(axis=reduce)).any())


def torch_refuses(dialect: str, case: dict) -> bool:
    """PyTorch's training rules: eps <= 0, or one value per channel."""
    d = resolved(dialect, case)
    if case["kind"] != "training":
        return False
    n = int(np.prod(case["x"].shape)) // case["x"].shape[case["axis"]]
    return (d.refuses_nonpositive_eps_in_training and case["eps"] <= 0) or (
        d.refuses_single_value_in_training and n == 1
    )


@functools.cache
def by_id(framework: str) -> dict[str, dict]:
    """The cases of one framework by id."""
    return {c["id"]: c for c in cases_for(framework)}
