"""Runner for flax.linen.BatchNorm with its defaults (use_fast_variance=True,
force_float32_reductions=True, param_dtype=float32, dtype=None unless the case
sets ``layer_dtype``).  Eager by default; ``jit: true`` wraps apply in jax.jit.

Variables: {'params': {'scale', 'bias'}, 'batch_stats': {'mean', 'var'}};
training calls apply(..., use_running_average=False, mutable=['batch_stats']).
Gradients: jax.vjp w.r.t. (x, params) with cotangent dy cast to y's dtype.
"""

from __future__ import annotations

import functools
import json

import case_io
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def _with_stats(f, stats, x, params):
    """f(x, params, stats) with the statistics fixed, for jax.vjp."""
    return f(x, params, stats)


class Runner:
    def versions(self) -> dict:
        return {"flax": flax.__version__, "jax": jax.__version__}

    def unsupported(self, case: dict) -> str | None:
        if case.get("memory_format"):
            return "flax: memory_format is a torch-only notion"
        if "momentum" in case and case["momentum"] is None:
            return "flax: momentum=None not expressible"
        return None

    def run(self, case: dict, res: case_io.Results) -> None:
        cid = case["id"]
        training = case["kind"] == "training"
        kw = {}
        if case.get("momentum") is not None:
            kw["momentum"] = case["momentum"]
        if case.get("layer_dtype"):
            kw["dtype"] = case["layer_dtype"]
        mod = nn.BatchNorm(
            axis=case["axis"], epsilon=case["eps"], use_bias=case["center"], use_scale=case["scale"], **kw
        )
        params = {}
        if case["scale"]:
            params["scale"] = jnp.asarray(case["gamma"])
        if case["center"]:
            params["bias"] = jnp.asarray(case["beta"])
        stats = {"mean": jnp.asarray(case["moving_mean"]), "var": jnp.asarray(case["moving_var"])}

        def f(x, params, stats):
            v = {"params": params, "batch_stats": stats}
            if training:
                y, upd = mod.apply(v, x, use_running_average=False, mutable=["batch_stats"])
                return y, upd["batch_stats"]
            return mod.apply(v, x, use_running_average=True), stats

        if case.get("jit"):
            f = jax.jit(f)
        xs = case_io.batches(case) if training else [case["x"]]
        means, vars_ = [], []
        for i, xb in enumerate(xs):
            x = jnp.asarray(xb)
            if i == 0 and case["dy"] is not None:
                y, vjp, new_stats = jax.vjp(functools.partial(_with_stats, f, stats), x, params, has_aux=True)
                dx, dp = vjp(jnp.asarray(case["dy"]).astype(y.dtype))
                res.put(cid, "dx", np.asarray(dx))
                if case["scale"]:
                    res.put(cid, "dgamma", np.asarray(dp["scale"]))
                if case["center"]:
                    res.put(cid, "dbeta", np.asarray(dp["bias"]))
            else:
                y, new_stats = f(x, params, stats)
            stats = new_stats
            if i == 0:
                res.put(cid, "y", np.asarray(y))
            means.append(np.asarray(stats["mean"]))
            vars_.append(np.asarray(stats["var"]))
        if training:
            res.put(cid, "running_mean", np.stack(means))
            res.put(cid, "running_var", np.stack(vars_))
        res.put(cid, "info", json.dumps({"jit": bool(case.get("jit"))}))
