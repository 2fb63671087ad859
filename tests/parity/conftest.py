"""Session fixtures of the parity suite: every framework runs the case list once, in its own process.

The first test that needs a framework starts all of them (two at a time, the slowest first) and waits
for its own; a runner that fails (framework missing, crash) makes every test that needs it fail, never
skip. ``BN_PARITY_CACHE=DIR`` (development only) keeps each framework's results in DIR, keyed by a hash
of the cases and the framework's name, so that editing a test does not rerun the frameworks.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import parity_cases as pc  # noqa: E402
import runners  # noqa: E402

#: slowest first (JAX compiles per shape), so the two workers finish together.
LAUNCH_ORDER = (
    "keras3-jax",
    "flax",
    "keras3-tensorflow",
    "tf-keras",
    "tf-keras-unfused",
    "keras3-torch",
    "torch",
    "onnxruntime",
    "onnx",
)
WORKERS = 2


def _digest(framework: str, cases: list[dict]) -> str:
    h = hashlib.sha256(framework.encode())
    for case in cases:
        for key in sorted(case):
            value = case[key]
            h.update(key.encode())
            h.update(value.tobytes() if isinstance(value, np.ndarray) else repr(value).encode())
    return h.hexdigest()[:16]


def _run(framework: str) -> dict[str, dict]:
    cases = [pc.runner_case(c) for c in pc.cases_for(framework)]
    cache = os.environ.get("BN_PARITY_CACHE")
    path = Path(cache) / f"{framework}-{_digest(framework, cases)}.pkl" if cache else None
    if path is not None and path.exists():
        return pickle.loads(path.read_bytes())
    _, results = runners.run_framework(framework, cases)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(results))
    return results


class FrameworkRuns:
    """Framework results by name; all frameworks start at the first request."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._futures: dict[str, Future] = {}

    def results(self, framework: str) -> dict[str, dict]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="parity")
            self._futures = {fw: self._pool.submit(_run, fw) for fw in LAUNCH_ORDER}
        return self._futures[framework].result()

    def case(self, framework: str, case_id: str) -> dict:
        """One case's outputs; the runner must have answered it (no silent gaps)."""
        per_case = self.results(framework)
        assert case_id in per_case, f"{framework} runner returned nothing for {case_id}"
        return per_case[case_id]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)


@pytest.fixture(scope="session")
def frameworks():
    runs = FrameworkRuns()
    yield runs
    runs.close()
