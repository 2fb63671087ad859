"""Runner for tf_keras.layers.BatchNormalization (eager, GradientTape).

BN_TFKERAS_FUSED=auto: ``fused=None``, tf_keras picks the fused kernel
(FusedBatchNormV3) itself for rank 4 (axis 1/3) and rank 5 (axis 1/4);
BN_TFKERAS_FUSED=false: ``fused=False`` (tf.nn.moments + tf.nn.batch_normalization).
``info`` records the ``fused`` flag the layer settled on.
"""

from __future__ import annotations

import functools
import json
import os

import case_io
import numpy as np
import tensorflow as tf
import tf_keras

FUSED = {"auto": None, "false": False}[os.environ.get("BN_TFKERAS_FUSED", "auto")]


class Runner:
    def __init__(self) -> None:
        self._layers: dict = {}

    def versions(self) -> dict:
        return {"tf_keras": tf_keras.__version__, "tensorflow": tf.__version__, "fused_arg": FUSED}

    def unsupported(self, case: dict) -> str | None:
        if case.get("memory_format"):
            return "tf_keras: memory_format is a torch-only notion"
        if case.get("jit"):
            return "tf_keras runner: no jit mode"
        if "momentum" in case and case["momentum"] is None:
            return "tf_keras: momentum=None not expressible"
        return None

    def _layer(self, case: dict):
        return case_io.keras_layer(
            self._layers, functools.partial(tf_keras.layers.BatchNormalization, fused=FUSED), case
        )

    def run(self, case: dict, res: case_io.Results) -> None:
        cid = case["id"]
        training = case["kind"] == "training"
        layer = self._layer(case)
        params = [w for w in (getattr(layer, "gamma", None), getattr(layer, "beta", None)) if w is not None]
        xs = case_io.batches(case) if training else [case["x"]]
        means, vars_ = [], []
        for i, xb in enumerate(xs):
            x = tf.constant(xb)
            if i == 0 and case["dy"] is not None:
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = layer(x, training=training)
                dy = tf.cast(tf.constant(case["dy"]), y.dtype)
                grads = tape.gradient(y, [x, *params], output_gradients=dy)
                res.put(cid, "dx", np.array(grads[0]))
                rest = list(grads[1:])
                if case["scale"]:
                    res.put(cid, "dgamma", np.array(rest.pop(0)))
                if case["center"]:
                    res.put(cid, "dbeta", np.array(rest.pop(0)))
            else:
                y = layer(x, training=training)
            if i == 0:
                res.put(cid, "y", np.array(y))
            if training:
                means.append(np.array(layer.moving_mean))
                vars_.append(np.array(layer.moving_variance))
        if training:
            res.put(cid, "running_mean", np.stack(means))
            res.put(cid, "running_var", np.stack(vars_))
        res.put(
            cid, "info", json.dumps({"fused": bool(layer.fused), "dtype_policy": layer.dtype_policy.name})
        )
