"""Runner for Keras 3 keras.layers.BatchNormalization on the backend named by
KERAS_BACKEND (tensorflow, jax or torch), eager by default.

One layer is built per distinct configuration (axis, eps, momentum, center,
scale, dtype policy, rank, channels); its weights are assigned per case.
Gradients: tf.GradientTape (tensorflow), jax.vjp over ``stateless_call`` (jax),
torch.autograd (torch); all with the cotangent ``dy`` cast to y's dtype (a
float32-policy layer autocasts float16/bfloat16/float64 x to float32, so its y
is float32; dx comes back in x's dtype).
``jit: true`` runs the jax backend under jax.jit (other backends: unsupported).
"""

from __future__ import annotations

import json

import case_io
import keras
import numpy as np

BACKEND = keras.backend.backend()
if BACKEND == "tensorflow":
    import tensorflow as tf
elif BACKEND == "jax":
    import jax
    import jax.numpy as jnp
elif BACKEND == "torch":
    import torch

    torch.set_num_threads(case_io.TORCH_THREADS)


def to_backend(a: np.ndarray):
    if BACKEND == "tensorflow":
        return tf.constant(a)
    if BACKEND == "jax":
        return jnp.asarray(a)
    if case_io.dtype_name(a) == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(a, copy=True))


def to_numpy(t) -> np.ndarray:
    if BACKEND == "torch":
        t = t.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(np.uint16).view(case_io._bf16())
        return t.numpy().copy()
    return np.array(t)


class Runner:
    def __init__(self) -> None:
        self._layers: dict = {}

    def versions(self) -> dict:
        v = {"keras": keras.__version__, "backend": BACKEND}
        if BACKEND == "tensorflow":
            v["tensorflow"] = tf.__version__
        elif BACKEND == "jax":
            v["jax"] = jax.__version__
        else:
            v["torch"] = torch.__version__
        return v

    def unsupported(self, case: dict) -> str | None:
        if case.get("memory_format"):
            return "keras3: memory_format is a torch-only notion"
        if case.get("jit") and BACKEND != "jax":
            return "keras3 runner: jit only on the jax backend"
        if "momentum" in case and case["momentum"] is None:
            return "keras3: momentum=None not expressible"
        return None

    def _layer(self, case: dict):
        return case_io.keras_layer(self._layers, keras.layers.BatchNormalization, case)

    # -- one forward (+ VJP) per backend ------------------------------------
    def _call(self, layer, x, dy, training: bool, jit: bool):
        """Return (y, [dx, dgamma?, dbeta?] or None); updates moving stats
        when training."""
        tw = layer.trainable_weights  # gamma then beta, those that exist
        if BACKEND == "tensorflow":
            if dy is None:
                return layer(x, training=training), None
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=training)
            dy = tf.cast(dy, y.dtype)  # the layer may autocast x (policy dtype)
            grads = tape.gradient(y, [x] + [w.value for w in tw], output_gradients=dy)
            return y, grads
        if BACKEND == "torch":
            if dy is None:
                with torch.no_grad():
                    return layer(x, training=training), None
            x = x.detach().requires_grad_(True)
            y = layer(x, training=training)
            grads = torch.autograd.grad(y, [x] + [w.value for w in tw], dy.to(y.dtype))
            return y, list(grads)
        # jax: stateless_call, then write the new moving statistics back
        ntw = layer.non_trainable_weights
        ntv = [w.value for w in ntw]

        def f(x, tv):
            return layer.stateless_call(tv, ntv, x, training=training)

        if jit:
            f = jax.jit(f)
        tv = [w.value for w in tw]
        if dy is None:
            y, new_ntv = f(x, tv)
            grads = None
        else:
            y, vjp, new_ntv = jax.vjp(f, x, tv, has_aux=True)
            dx, dtv = vjp(dy.astype(y.dtype))
            grads = [dx, *list(dtv)]
        for w, v in zip(ntw, new_ntv, strict=True):
            w.assign(v)
        return y, grads

    def run(self, case: dict, res: case_io.Results) -> None:
        cid = case["id"]
        training = case["kind"] == "training"
        layer = self._layer(case)
        jit = bool(case.get("jit"))
        dy = None if case["dy"] is None else to_backend(case["dy"])
        xs = case_io.batches(case) if training else [case["x"]]
        means, vars_ = [], []
        for i, xb in enumerate(xs):
            y, grads = self._call(layer, to_backend(xb), dy if i == 0 else None, training, jit)
            if i == 0:
                res.put(cid, "y", to_numpy(y))
                if grads is not None:
                    res.put(cid, "dx", to_numpy(grads[0]))
                    rest = list(grads[1:])
                    if case["scale"]:
                        res.put(cid, "dgamma", to_numpy(rest.pop(0)))
                    if case["center"]:
                        res.put(cid, "dbeta", to_numpy(rest.pop(0)))
            if training:
                means.append(to_numpy(layer.moving_mean.value))
                vars_.append(to_numpy(layer.moving_variance.value))
        if training:
            res.put(cid, "running_mean", np.stack(means))
            res.put(cid, "running_var", np.stack(vars_))
        res.put(cid, "info", json.dumps({"dtype_policy": str(layer.dtype_policy.name)}))
