"""Run a batch of batch-normalization cases through ONE real framework.

Usage::

    python tests/parity/runners.py FRAMEWORK IN.npz OUT.npz

FRAMEWORK is one of ``FRAMEWORKS``.  Each run imports only that framework, on
CPU, with quiet logging, so a test session can start one subprocess per
framework.  The case and result formats are documented in ``case_io.py``
(write cases with ``case_io.write_cases``, read with ``case_io.read_results``),
or use :func:`run_framework` from Python, which does all three steps.

A case the framework cannot express gets ``f"{id}/unsupported"``; a case on
which the framework raises gets ``f"{id}/error"``; the batch always completes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

FRAMEWORKS = {
    # name: (module in this folder, extra environment)
    "torch": ("run_torch", {}),
    "onnx": ("run_onnx", {"BN_ONNX_ENGINE": "reference"}),
    "onnxruntime": ("run_onnx", {"BN_ONNX_ENGINE": "onnxruntime"}),
    "keras3-tensorflow": ("run_keras3", {"KERAS_BACKEND": "tensorflow"}),
    "keras3-jax": ("run_keras3", {"KERAS_BACKEND": "jax"}),
    "keras3-torch": ("run_keras3", {"KERAS_BACKEND": "torch"}),
    "tf-keras": ("run_tfkeras", {"BN_TFKERAS_FUSED": "auto"}),
    "tf-keras-unfused": ("run_tfkeras", {"BN_TFKERAS_FUSED": "false"}),
    "flax": ("run_flax", {}),
}

QUIET_ENV = {
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "CUDA_VISIBLE_DEVICES": "",
    "JAX_PLATFORMS": "cpu",
    "JAX_ENABLE_X64": "0",
    "KERAS_HOME": os.path.join(tempfile.gettempdir(), "bn-parity-keras"),
    "PYTHONWARNINGS": "ignore",
    "OMP_NUM_THREADS": "2",
}


def environment(framework: str, base: dict | None = None) -> dict:
    """Environment for a runner subprocess (caller's env + quiet settings).

    Variables already set in ``base`` that change numerics (e.g.
    TF_ENABLE_ONEDNN_OPTS, ATEN_CPU_CAPABILITY) are kept."""
    env = dict(os.environ if base is None else base)
    env.update(QUIET_ENV)
    env.update(FRAMEWORKS[framework][1])
    return env


def run_framework(
    framework: str,
    cases: list[dict],
    *,
    python: str | None = None,
    env: dict | None = None,
    timeout: float = 600,
):
    """Write ``cases``, run FRAMEWORK in a subprocess, return
    ``(meta, {case_id: {name: value}})`` (see ``case_io.read_results``)."""
    sys.path.insert(0, str(HERE))
    import case_io

    with tempfile.TemporaryDirectory(prefix="bn-parity-") as tmp:
        inp, out = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        case_io.write_cases(inp, cases)
        proc = subprocess.run(
            [python or sys.executable, str(HERE / "runners.py"), framework, inp, out],
            env=environment(framework, env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{framework} runner failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
        return case_io.read_results(out)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[0] not in FRAMEWORKS:
        print(__doc__, file=sys.stderr)
        print("frameworks:", ", ".join(FRAMEWORKS), file=sys.stderr)
        return 2
    framework, inp, out = argv
    module_name, extra = FRAMEWORKS[framework]
    for k, v in {**QUIET_ENV, **extra}.items():
        if k in extra or k not in os.environ:
            os.environ[k] = v
    sys.path.insert(0, str(HERE))
    import importlib

    import case_io

    t0 = time.perf_counter()
    cases = case_io.read_cases(inp)
    module = importlib.import_module(module_name)
    t_import = time.perf_counter()
    results = case_io.Results()
    runner = module.Runner()
    for case in cases:
        cid = case["id"]
        try:
            why = runner.unsupported(case)
            if why:
                results.put(cid, "unsupported", why)
                continue
            runner.run(case, results)
        except Exception as exc:  # a framework refusing a case must not stop the batch
            for key in [k for k in results.arrays if k.startswith(cid + "/")]:
                del results.arrays[key]
            results.put(cid, "error", f"{type(exc).__name__}: {exc}".strip()[:2000])
    t_end = time.perf_counter()
    meta = {
        "framework": framework,
        "versions": runner.versions(),
        "seconds": {"import": t_import - t0, "cases": t_end - t_import},
        "env": {
            k: os.environ.get(k)
            for k in ("TF_ENABLE_ONEDNN_OPTS", "ATEN_CPU_CAPABILITY", "KERAS_BACKEND", "XLA_FLAGS")
        },
    }
    results.save(out, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
