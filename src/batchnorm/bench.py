"""The benchmark suite: ``python -m batchnorm.bench [--quick] [--json PATH]``.

Prints one table of ratios against PyTorch's CPU batch normalization (and against a 2-thread copy of the
same bytes), measured in one process with interleaved repeats and medians, then saves everything as
JSON. Both libraries run on the same number of threads (``--threads``, default 2):
``torch.set_num_threads`` and ``numba.set_num_threads``.

Columns: ``ours`` and ``torch`` are median milliseconds; ``x torch`` is torch's time over ours (above 1:
we are faster); ``GB/s`` counts the bytes a path must move (inference: read x, write y; training
forward: two reads of x, one write; backward: two reads of x and dy, one write of dx); ``copy`` is that
rate over the rate of a 2-thread copy of x measured in the same loop; ``ceiling`` is the ``x torch`` a
kernel would reach moving only the bytes no implementation can avoid (x read once and y written once;
backward reads dy too) at the rate of that copy: a target above it is out of this machine's reach
whatever the arithmetic; ``var rel err`` is the largest
per-channel relative error of the batch variance at offsets 0, 1e3 and 1e4 (x = offset + randn in
float32), ours / PyTorch's, against float64 two-pass on the same float32 data. With ``--runs K`` the
table is measured K times: each time is the median over the runs, and ``runs`` gives the range of
``x torch`` over them.

This module is the only one besides the CLI that prints; nothing imports it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

FULL_SHAPES = [
    (32, 64, 112, 112),
    (64, 256, 28, 28),
    (256, 512, 7, 7),
    (8, 3, 224, 224),
    (4096, 1024),
    (65536, 64),
]
QUICK_SHAPES = [(64, 256, 28, 28), (8, 3, 224, 224), (4096, 1024)]
#: the dialects' table: long NCHW rows, and short ones (7x7), where trees that sum row by row pay per row
DIALECT_SHAPES = ((64, 256, 28, 28), (256, 512, 7, 7))
QUICK_DIALECT_SHAPES = ((16, 256, 28, 28),)
HALF_SHAPES = [(32, 64, 112, 112), (64, 256, 28, 28)]
QUICK_HALF_SHAPES = [(64, 256, 28, 28)]
OFFSETS = (0.0, 1e3, 1e4)
EPS = 1e-5


@dataclass
class Row:
    section: str
    shape: tuple[int, ...]
    layout: str
    path: str
    ours_ms: float
    torch_ms: float | None
    copy_ms: float
    bytes_moved: int
    least_bytes: int = 0  # the fewest bytes any implementation of the path moves (0: not given)
    dtype: str = "float32"
    dialect: str = "exact"
    exact_ms: float | None = None
    var_err: dict[str, list[float | None]] = field(default_factory=dict)
    speedup_range: tuple[float, float] | None = None  # over the runs, where there were several

    @property
    def speedup(self) -> float | None:
        return None if self.torch_ms is None else self.torch_ms / self.ours_ms

    @property
    def gbps(self) -> float:
        return self.bytes_moved / self.ours_ms / 1e6

    @property
    def copy_fraction(self) -> float:
        copy_gbps = 2 * self._x_bytes / self.copy_ms / 1e6
        return self.gbps / copy_gbps

    @property
    def ceiling(self) -> float | None:
        """PyTorch's time over the time of a copy moving ``least_bytes`` at the measured copy rate."""
        if self.torch_ms is None or not self.least_bytes:
            return None
        return self.torch_ms / (self.copy_ms * self.least_bytes / (2 * self._x_bytes))

    @property
    def _x_bytes(self) -> int:
        return int(np.prod(self.shape)) * np.dtype(_dtype(self.dtype)).itemsize


def _dtype(name: str) -> Any:
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


# -- timing ---------------------------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per function, the functions called in rotating order within each repeat."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            f = fns[name]
            t0 = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def combine_runs(runs: list[list[Row]]) -> list[Row]:
    """One row per case from several runs of the same cases: each time the median over the runs (the
    ratio is then PyTorch's median over ours), and the range of the ratio over the runs."""
    if len(runs) == 1:
        return runs[0]
    combined = []
    for same in zip(*runs, strict=True):
        ratios = [r.speedup for r in same if r.speedup is not None]
        torch_ms = [r.torch_ms for r in same if r.torch_ms is not None]
        combined.append(
            replace(
                same[0],
                ours_ms=statistics.median(r.ours_ms for r in same),
                torch_ms=statistics.median(torch_ms) if torch_ms else None,
                copy_ms=statistics.median(r.copy_ms for r in same),
                speedup_range=(min(ratios), max(ratios)) if ratios else None,
            )
        )
    return combined


def _repeats(nbytes: int, base: int) -> int:
    """Fewer repeats for large tensors: about the same wall time per case."""
    if nbytes >= 64e6:
        return max(5, base // 2)
    return base


class Copier:
    """A 2-thread copy, the faster of numba's prange loop and two threads of numpy.copyto."""

    def __init__(self, threads: int) -> None:
        from numba import njit, prange

        @njit(parallel=True, nogil=True, cache=False)
        def copy(a: np.ndarray, b: np.ndarray, nchunks: int) -> None:
            n = a.size
            for t in prange(nchunks):
                lo, hi = n * t // nchunks, n * (t + 1) // nchunks
                src, dst = a[lo:hi], b[lo:hi]
                for i in range(hi - lo):
                    dst[i] = src[i]

        self._numba = copy
        self._pool = ThreadPoolExecutor(max(1, threads - 1))
        self.threads = threads
        self.kind = "?"

    def _numpy(self, a: np.ndarray, b: np.ndarray) -> None:
        parts = np.array_split(np.arange(a.size), self.threads)
        bounds = [(int(p[0]), int(p[-1]) + 1) for p in parts if p.size]
        futures = [self._pool.submit(np.copyto, b[lo:hi], a[lo:hi]) for lo, hi in bounds[1:]]
        lo, hi = bounds[0]
        np.copyto(b[lo:hi], a[lo:hi])
        for f in futures:
            f.result()

    def pick(self, a: np.ndarray, b: np.ndarray) -> Callable[[], None]:
        """The faster copy of a's bytes into b (both flat views of the same dtype)."""
        fa, fb = a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)
        fa32, fb32 = (fa.view(np.uint32), fb.view(np.uint32)) if fa.size % 4 == 0 else (fa, fb)
        candidates = {
            "numba": lambda: self._numba(fa32, fb32, self.threads),
            "numpy": lambda: self._numpy(fa, fb),
        }
        t = interleaved(candidates, 5, warmup=1)
        self.kind = min(t, key=t.__getitem__)
        return candidates[self.kind]


# -- the cases ------------------------------------------------------------------------------------


def _layouts(shape: tuple[int, ...]) -> list[str]:
    return ["NCHW", "NHWC"] if len(shape) == 4 else ["NC"]


def _arrays(shape: tuple[int, ...], layout: str, dtype: Any, rng: np.random.Generator) -> dict[str, Any]:
    """x and dy in the layout's memory order, our axis, and torch views sharing their memory."""
    if layout == "NHWC":
        n, c, h, w = shape
        mem: tuple[int, ...] = (n, h, w, c)
        axis = -1
    else:
        mem, axis = shape, 1
    x = rng.standard_normal(mem, dtype=np.float32).astype(dtype)
    dy = rng.standard_normal(mem, dtype=np.float32).astype(dtype)
    return {"x": x, "dy": dy, "axis": axis, "C": shape[1]}


def _torch_view(a: np.ndarray, layout: str) -> Any:
    import torch

    t = torch.from_numpy(a)
    return t.permute(0, 3, 1, 2) if layout == "NHWC" else t


def _params(c: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {
        "mean": rng.standard_normal(c, dtype=np.float32) * np.float32(0.1),
        "var": rng.uniform(0.5, 2.0, c).astype(np.float32),
        "gamma": rng.uniform(0.5, 2.0, c).astype(np.float32),
        "beta": rng.standard_normal(c, dtype=np.float32),
    }


def _torch_params(p: dict[str, np.ndarray]) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(v.copy()) for k, v in p.items()}


def _infer(x, p, axis, *, dialect="exact", eps=EPS, out=None) -> Callable[[], Any]:
    """Our inference call (the exact dialect unless named), as users make it."""
    import batchnorm as bn

    return lambda: bn.normalize(
        x, p["mean"], p["var"], p["gamma"], p["beta"], axis=axis, eps=eps, dialect=dialect, out=out
    )


def _torch_infer(F: Any, xt: Any, tp: dict[str, Any]) -> Callable[[], Any]:
    return lambda: F.batch_norm(xt, tp["mean"], tp["var"], tp["gamma"], tp["beta"], False, 0.1, EPS)


def _train(layer, x) -> Callable[[], Any]:
    return lambda: layer(x, training=True)


def _backward(dy, x, p, stats, axis) -> Callable[[], Any]:
    import batchnorm as bn

    return lambda: bn.backward(dy, x, p["gamma"], mean=stats.mean, var=stats.var, axis=axis, eps=EPS)


def core_cases(shape, layout, copier, repeats, torch_ok, rng) -> list[Row]:
    import batchnorm as bn

    d = _arrays(shape, layout, np.float32, rng)
    x, dy, axis, c = d["x"], d["dy"], d["axis"], d["C"]
    p = _params(c, rng)
    out = np.empty_like(x)
    copy = copier.pick(x, np.empty_like(x))
    layer = bn.BatchNorm(c, axis=axis)
    layer.set_weights([p["gamma"], p["beta"], p["mean"], p["var"]])
    r = bn.normalize_batch(x, p["gamma"], p["beta"], axis=axis, eps=EPS)

    ours = {
        "inference": _infer(x, p, axis),
        "inference out=": _infer(x, p, axis, out=out),
        "training forward": _train(layer, x),
        "backward": _backward(dy, x, p, r, axis),
    }
    theirs: dict[str, Callable[[], Any]] = {}
    if torch_ok:
        import torch
        import torch.nn.functional as F

        xt, dyt = _torch_view(x, layout), _torch_view(dy, layout)
        tp = _torch_params(p)
        rm, rv = tp["mean"].clone(), tp["var"].clone()
        _, save_mean, save_invstd, *_ = torch.ops.aten.native_batch_norm(
            xt, tp["gamma"], tp["beta"], rm.clone(), rv.clone(), True, 0.1, EPS
        )
        theirs = {
            "inference": lambda: F.batch_norm(
                xt, tp["mean"], tp["var"], tp["gamma"], tp["beta"], False, 0.1, EPS
            ),
            "training forward": lambda: F.batch_norm(xt, rm, rv, tp["gamma"], tp["beta"], True, 0.1, EPS),
            "backward": lambda: torch.ops.aten.native_batch_norm_backward(
                dyt, xt, tp["gamma"], rm, rv, save_mean, save_invstd, True, EPS, [True, True, True]
            ),
        }
        theirs["inference out="] = theirs["inference"]
    nbytes = x.nbytes
    moved = {"inference": 2, "inference out=": 2, "training forward": 3, "backward": 5}
    least = {"inference": 2, "inference out=": 2, "training forward": 2, "backward": 3}
    rows = []
    for path, f in ours.items():
        fns: dict[str, Callable[[], Any]] = {"ours": f, "copy": copy}
        if path in theirs:
            fns["torch"] = theirs[path]
        t = interleaved(fns, _repeats(nbytes, repeats))
        rows.append(
            Row(
                "core",
                shape,
                layout,
                path,
                t["ours"] * 1e3,
                t.get("torch", float("nan")) * 1e3 if torch_ok else None,
                t["copy"] * 1e3,
                moved[path] * nbytes,
                least[path] * nbytes,
            )
        )
    rows[2].var_err = variance_errors(x, axis, layout, torch_ok)
    return rows


def variance_errors(x: np.ndarray, axis: int, layout: str, torch_ok: bool) -> dict[str, list[float | None]]:
    """Largest per-channel relative error of the batch variance, ours and torch's, per offset."""
    import batchnorm as bn

    red = tuple(a for a in range(x.ndim) if a != axis % x.ndim)
    errs: dict[str, list[float | None]] = {}
    for offset in OFFSETS:
        xo = (x + np.float32(offset)).astype(np.float32)
        want = np.var(xo, axis=red, dtype=np.float64)
        ours = bn.normalize_batch(xo, axis=axis, eps=EPS).var
        ours_err = float(np.max(np.abs(ours - want) / want))
        theirs_err = None
        if torch_ok:
            import torch
            import torch.nn.functional as F

            c = x.shape[axis]
            rm, rv = torch.zeros(c), torch.ones(c)
            F.batch_norm(_torch_view(xo, layout), rm, rv, None, None, True, 1.0, EPS)
            n = x.size // c
            biased = rv.numpy().astype(np.float64) * (n - 1) / n
            theirs_err = float(np.max(np.abs(biased - want) / want))
        errs[f"{offset:g}"] = [ours_err, theirs_err]
        del xo
    return errs


def dialect_cases(shape, copier, repeats, rng) -> list[Row]:
    import batchnorm as bn

    rows = []
    for layout in _layouts(shape):
        d = _arrays(shape, layout, np.float32, rng)
        x, axis, c = d["x"], d["axis"], d["C"]
        p = _params(c, rng)
        copy = copier.pick(x, np.empty_like(x))
        for path in ("inference", "training forward"):
            fns: dict[str, Callable[[], Any]] = {"copy": copy}
            for name in bn.dialects.names():
                if path == "inference":
                    fns[name] = _infer(x, p, axis, dialect=name, eps=1e-3)
                else:
                    fns[name] = _train(bn.BatchNorm(c, axis=axis, eps=1e-3, dialect=name), x)
            t = interleaved(fns, _repeats(x.nbytes, repeats))
            for name in bn.dialects.names():
                rows.append(
                    Row(
                        "dialects",
                        shape,
                        layout,
                        path,
                        t[name] * 1e3,
                        None,
                        t["copy"] * 1e3,
                        (2 if path == "inference" else 3) * x.nbytes,
                        dialect=name,
                        exact_ms=t["exact"] * 1e3,
                    )
                )
    return rows


def half_cases(shape, copier, repeats, torch_ok, rng) -> list[Row]:

    rows = []
    for dtype_name in ("float16", "bfloat16"):
        for layout in _layouts(shape):
            d = _arrays(shape, layout, _dtype(dtype_name), rng)
            x, axis, c = d["x"], d["axis"], d["C"]
            p = _params(c, rng)
            out = np.empty_like(x)
            copy = copier.pick(x, np.empty_like(x))
            fns: dict[str, Callable[[], Any]] = {
                "ours": _infer(x, p, axis),
                "ours out=": _infer(x, p, axis, out=out),
                "copy": copy,
            }
            if torch_ok:
                import torch
                import torch.nn.functional as F

                xt = _torch_view(x.view(np.int16), layout).view(
                    torch.float16 if dtype_name == "float16" else torch.bfloat16
                )
                fns["torch"] = _torch_infer(F, xt, _torch_params(p))
                try:
                    fns["torch"]()
                except RuntimeError:
                    del fns["torch"]
            t = interleaved(fns, _repeats(x.nbytes, repeats))
            for path, key in (("inference", "ours"), ("inference out=", "ours out=")):
                torch_ms = t["torch"] * 1e3 if "torch" in t else None
                rows.append(
                    Row(
                        "half",
                        shape,
                        layout,
                        path,
                        t[key] * 1e3,
                        torch_ms,
                        t["copy"] * 1e3,
                        2 * x.nbytes,
                        dtype=dtype_name,
                    )
                )
    return rows


def memory_cases(shape) -> list[dict[str, Any]]:
    """Peak numpy allocation of each path (tracemalloc), beyond the arrays the path returns."""
    import batchnorm as bn

    rng = np.random.default_rng(3)
    result = []
    for layout in _layouts(shape):
        d = _arrays(shape, layout, np.float32, rng)
        x, dy, axis, c = d["x"], d["dy"], d["axis"], d["C"]
        p = _params(c, rng)
        layer = bn.BatchNorm(c, axis=axis)
        r = bn.normalize_batch(x, axis=axis)
        calls = {
            "inference": _infer(x, p, axis),
            "training forward": _train(layer, x),
            "backward": _backward(dy, x, p, r, axis),
        }
        for path, f in calls.items():
            f()
            tracemalloc.start()
            tracemalloc.reset_peak()
            f()
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            result.append(
                {
                    "shape": list(shape),
                    "layout": layout,
                    "path": path,
                    "channels": c,
                    "extra_bytes": max(0, peak - x.nbytes),
                    "output_bytes": x.nbytes,
                }
            )
    return result


def first_call_seconds() -> dict[str, float]:
    """Import and one small normalize in fresh processes (the second run finds the on-disk cache warm)."""
    code = textwrap.dedent(
        """
        import time
        t0 = time.perf_counter()
        import numpy as np
        import batchnorm as bn
        bn.normalize(np.ones((2, 3, 4, 4), np.float32), [0.0] * 3, [1.0] * 3, axis=1)
        bn.normalize(np.ones((2, 4, 4, 3), np.float32), [0.0] * 3, [1.0] * 3, axis=-1)
        print(time.perf_counter() - t0)
        """
    )
    runs = []
    for _ in range(3):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        runs.append((float(out.stdout.strip().splitlines()[-1]), time.perf_counter() - t0))
    return {"in_process_s": runs[-1][0], "process_wall_s": runs[-1][1], "cold_first_run_s": runs[0][1]}


# -- output ---------------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None or v != v else format(v, spec)


def _err(pair: list[float | None]) -> str:
    return f"{_fmt(pair[0], '.0e')}/{_fmt(pair[1], '.0e')}"


def table(rows: list[Row]) -> str:
    ranges = any(r.speedup_range for r in rows)
    head = (
        f"{'shape':<19} {'layout':<6} {'path':<17} {'ours ms':>8} {'torch ms':>9} {'x torch':>7} "
        + (f"{'runs':>10} " if ranges else "")
        + f"{'ceiling':>7} {'GB/s':>6} {'copy':>5}  var rel err ours/torch at offset 0, 1e3, 1e4"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        errs = "  ".join(_err(v) for v in r.var_err.values())
        spread = f"{r.speedup_range[0]:.2f}-{r.speedup_range[1]:.2f}" if r.speedup_range else "-"
        lines.append(
            f"{'x'.join(map(str, r.shape)):<19} {r.layout:<6} {r.path:<17} {r.ours_ms:8.3f} "
            f"{_fmt(r.torch_ms, '9.3f'):>9} {_fmt(r.speedup, '7.2f'):>7} "
            + (f"{spread:>10} " if ranges else "")
            + f"{_fmt(r.ceiling, '7.2f'):>7} {r.gbps:6.1f} {r.copy_fraction:5.2f}  {errs}"
        )
    return "\n".join(lines)


def dialect_table(rows: list[Row]) -> str:
    groups: dict[tuple[tuple[int, ...], str, str], list[Row]] = {}  # (shape, layout, path), in order
    for r in rows:
        groups.setdefault((r.shape, r.layout, r.path), []).append(r)
    first = next(iter(groups.values()))
    lines = [f"{'shape':<16} {'layout':<6} {'path':<17} " + " ".join(f"{r.dialect[:12]:>12}" for r in first)]
    for (shape, layout, path), sel in groups.items():
        cells = " ".join(f"{r.ours_ms / r.exact_ms:12.2f}" for r in sel)  # type: ignore[operator]
        lines.append(f"{'x'.join(map(str, shape)):<16} {layout:<6} {path:<17} {cells}")
    return "\n".join(lines)


def half_table(rows: list[Row]) -> str:
    head = (
        f"{'shape':<19} {'dtype':<9} {'layout':<6} {'path':<15} {'ours ms':>8} {'torch ms':>9} "
        f"{'x torch':>7} {'GB/s':>6} {'copy':>5}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{'x'.join(map(str, r.shape)):<19} {r.dtype:<9} {r.layout:<6} {r.path:<15} {r.ours_ms:8.3f} "
            f"{_fmt(r.torch_ms, '9.3f'):>9} {_fmt(r.speedup, '7.2f'):>7} {r.gbps:6.1f} {r.copy_fraction:5.2f}"
        )
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        info["cpu"] = names[0] if names else platform.processor()
    except OSError:
        info["cpu"] = platform.processor()
    info["logical_cpus"] = os.cpu_count()
    try:
        info["load_average"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        pass
    return info


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m batchnorm.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer shapes and repeats (about 30 s)")
    ap.add_argument("--threads", type=int, default=2, help="threads for both libraries (default 2)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 21, quick 7)")
    ap.add_argument(
        "--runs",
        type=int,
        default=1,
        help="run the main table this many times: medians over the runs, and the range of each ratio",
    )
    ap.add_argument("--json", default="batchnorm-bench.json", help="where to save the results")
    ap.add_argument("--no-torch", action="store_true", help="skip PyTorch (ratios are then left out)")
    ap.add_argument(
        "--omp-wait-policy",
        choices=["active", "passive"],
        default=os.environ.get("OMP_WAIT_POLICY", "").lower() or None,
        help="OMP_WAIT_POLICY for both libraries' OpenMP pools (default: as the environment has it, "
        "unset meaning GNU OpenMP's spin-then-sleep); see docs/benchmarks.md",
    )
    args = ap.parse_args(argv)
    # GNU OpenMP reads this when it loads (numba's omp layer and PyTorch's bundled libgomp): the spinning
    # workers of two pools on two cores slow each other, by milliseconds per call on a shared machine.
    if args.omp_wait_policy:
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy

    import numba

    import batchnorm as bn
    from batchnorm import _kernels

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))  # type: ignore[attr-defined]
    torch_ok = False
    versions = {"batchnorm": bn.__version__, "numpy": np.__version__, "numba": numba.__version__}
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(args.threads)
            torch_ok = True
            versions["torch"] = torch.__version__
        except ImportError:
            pass
    repeats = args.repeats or (7 if args.quick else 21)
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    rng = np.random.default_rng(0)
    copier = Copier(args.threads)
    host = machine()  # the load average before the run
    started = time.perf_counter()
    policy = args.omp_wait_policy or "unset (GNU OpenMP default)"
    print(f"batchnorm kernels: {_kernels.backend()}; threads {args.threads}; OMP_WAIT_POLICY={policy}")

    runs: list[list[Row]] = []
    for _ in range(max(1, args.runs)):
        run: list[Row] = []
        for shape in shapes:
            for layout in _layouts(shape):
                run.extend(core_cases(shape, layout, copier, repeats, torch_ok, rng))
        runs.append(run)
    rows = combine_runs(runs)
    print(f"numba threading layer: {numba.threading_layer()}")
    print(table(rows))
    dialect_rows = [
        row
        for shape in (QUICK_DIALECT_SHAPES if args.quick else DIALECT_SHAPES)
        for row in dialect_cases(shape, copier, repeats, rng)
    ]
    print("\ntime relative to the exact dialect (float32 input)")
    print(dialect_table(dialect_rows))
    half_rows = []
    for shape in QUICK_HALF_SHAPES if args.quick else HALF_SHAPES:
        half_rows.extend(half_cases(shape, copier, repeats, torch_ok, rng))
    print("\nhalf precision inference (exact dialect; GB/s counts 2-byte values)")
    print(half_table(half_rows))
    memory = memory_cases(shapes[0])
    print("\npeak numpy allocation beyond the output, " + "x".join(map(str, shapes[0])) + ":")
    for m in memory:
        print(f"  {m['layout']:<5} {m['path']:<17} {m['extra_bytes'] / 1e3:10.1f} kB")
    first = first_call_seconds()
    print(
        f"\nfirst call in a fresh process (import + small normalize, warm cache): "
        f"{first['in_process_s']:.2f} s in-process, {first['process_wall_s']:.2f} s wall"
    )
    elapsed = time.perf_counter() - started
    print(f"copy: {copier.kind}; total {elapsed:.0f} s")
    report = {
        "machine": host,
        "versions": versions,
        "threads": args.threads,
        "threading_layer": numba.threading_layer(),
        "omp_wait_policy": args.omp_wait_policy,
        "kernels": _kernels.backend(),
        "repeats": repeats,
        "runs": len(runs),
        "rows": [
            dict(asdict(r), speedup=r.speedup, ceiling=r.ceiling, gbps=r.gbps, copy_fraction=r.copy_fraction)
            for r in rows
        ],
        "dialects": [dict(asdict(r), relative_to_exact=r.ours_ms / r.exact_ms) for r in dialect_rows],  # type: ignore[operator]
        "half": [
            dict(asdict(r), speedup=r.speedup, gbps=r.gbps, copy_fraction=r.copy_fraction) for r in half_rows
        ],
        "memory": memory,
        "first_call": first,
        "elapsed_s": elapsed,
    }
    with open(args.json, "w") as f:
        json.dump(report, f, indent=1)
    print(f"saved {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
