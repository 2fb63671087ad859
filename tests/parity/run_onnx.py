"""Runner for ONNX BatchNormalization (opset 15), on the reference evaluator
(BN_ONNX_ENGINE=reference) or onnxruntime CPU (BN_ONNX_ENGINE=onnxruntime).

center=False is expressed as B = 0 and scale=False as scale = 1 (exact: x*1 and
x+0 change no bits except -0 -> +0).  ONNX has no autograd: no dx/dgamma/dbeta.
Training uses training_mode=1; the running statistics are fed back each step.
"""

from __future__ import annotations

import json
import os

import case_io
import numpy as np
import onnx
from onnx import TensorProto, helper

ENGINE = os.environ.get("BN_ONNX_ENGINE", "reference")
if ENGINE == "onnxruntime":
    import onnxruntime as ort
else:
    from onnx.reference import ReferenceEvaluator

_TYPES = {
    "float16": TensorProto.FLOAT16,
    "float32": TensorProto.FLOAT,
    "float64": TensorProto.DOUBLE,
    "bfloat16": TensorProto.BFLOAT16,
}
OPSET = 15


def build_model(
    x_dtype: str, p_dtype: str, rank: int, eps: float, momentum: float, training: bool
) -> onnx.ModelProto:
    """BatchNormalization graph; symbolic dims so one model serves all shapes."""
    xt, pt = _TYPES[x_dtype], _TYPES[p_dtype]
    xshape = [f"d{i}" for i in range(rank)]
    inputs = [helper.make_tensor_value_info("X", xt, xshape)] + [
        helper.make_tensor_value_info(n, pt, ["C"]) for n in ("scale", "B", "input_mean", "input_var")
    ]
    outs = [helper.make_tensor_value_info("Y", xt, xshape)]
    if training:
        outs += [helper.make_tensor_value_info(n, pt, ["C"]) for n in ("running_mean", "running_var")]
    node = helper.make_node(
        "BatchNormalization",
        ["X", "scale", "B", "input_mean", "input_var"],
        [o.name for o in outs],
        epsilon=float(eps),
        momentum=float(momentum),
        training_mode=int(training),
    )
    graph = helper.make_graph([node], "bn", inputs, outs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return model


class Runner:
    def __init__(self) -> None:
        self._sessions: dict = {}

    def versions(self) -> dict:
        v = {"onnx": onnx.__version__, "engine": ENGINE, "opset": OPSET}
        if ENGINE == "onnxruntime":
            v["onnxruntime"] = ort.__version__
        return v

    def unsupported(self, case: dict) -> str | None:
        if case["axis"] != 1:
            return "onnx: the channel axis is always 1"
        if np.ndim(case["x"]) < 2:
            return "onnx: input needs rank >= 2"
        if case["kind"] == "training" and "momentum" in case and case["momentum"] is None:
            return "onnx: momentum=None (cumulative average) not expressible"
        if case.get("memory_format") or case.get("jit") or case.get("layer_dtype"):
            return "onnx: memory_format/jit/layer_dtype not expressible"
        return None

    def _session(self, key):
        if key not in self._sessions:
            model = build_model(*key)
            if ENGINE == "onnxruntime":
                so = ort.SessionOptions()
                so.intra_op_num_threads = 2
                so.inter_op_num_threads = 1
                so.log_severity_level = 3
                sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
                self._sessions[key] = lambda feeds: sess.run(None, feeds)
            else:
                ev = ReferenceEvaluator(model)
                self._sessions[key] = lambda feeds: ev.run(None, feeds)
        return self._sessions[key]

    def run(self, case: dict, res: case_io.Results) -> None:
        cid = case["id"]
        training = case["kind"] == "training"
        momentum = case.get("momentum")
        momentum = 0.9 if momentum is None else momentum
        x = case["x"]
        gamma = case["gamma"] if case["scale"] else np.ones_like(case["gamma"])
        beta = case["beta"] if case["center"] else np.zeros_like(case["beta"])
        key = (case_io.dtype_name(x), case_io.dtype_name(gamma), x.ndim, case["eps"], momentum, training)
        run = self._session(key)
        info = {"grad": "unsupported: ONNX has no autograd"}
        if not (case["scale"] and case["center"]):
            info["emulated"] = "scale=False -> scale=1; center=False -> B=0"
        res.put(cid, "info", json.dumps(info))
        mean, var = case["moving_mean"], case["moving_var"]
        if not training:
            y = run({"X": x, "scale": gamma, "B": beta, "input_mean": mean, "input_var": var})[0]
            res.put(cid, "y", y)
            return
        means, vars_ = [], []
        for i, xb in enumerate(case_io.batches(case)):
            y, mean, var = run({"X": xb, "scale": gamma, "B": beta, "input_mean": mean, "input_var": var})
            if i == 0:
                res.put(cid, "y", y)
            means.append(np.asarray(mean))
            vars_.append(np.asarray(var))
        res.put(cid, "running_mean", np.stack(means))
        res.put(cid, "running_var", np.stack(vars_))
