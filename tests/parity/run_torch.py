"""Runner for PyTorch (torch.nn.BatchNorm1d/2d/3d, CPU)."""

from __future__ import annotations

import json

import case_io
import numpy as np
import torch

torch.set_num_threads(case_io.TORCH_THREADS)

_MODULES = {
    2: torch.nn.BatchNorm1d,
    3: torch.nn.BatchNorm1d,
    4: torch.nn.BatchNorm2d,
    5: torch.nn.BatchNorm3d,
}


def to_torch(a: np.ndarray) -> torch.Tensor:
    if case_io.dtype_name(a) == "bfloat16":
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(a, copy=True))


def to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16).view(case_io._bf16())
    return t.numpy().copy()


class Runner:
    def versions(self) -> dict:
        return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability()}

    def unsupported(self, case: dict) -> str | None:
        rank = np.ndim(case["x"])
        if case["axis"] != 1:
            return "torch: the channel axis is always 1"
        if rank not in _MODULES:
            return f"torch: BatchNorm needs rank 2-5, got {rank}"
        if case.get("jit"):
            return "torch runner: no jit/compile mode"
        return None

    def _module(self, case: dict, x: torch.Tensor) -> torch.nn.Module:
        kw = {}
        if "momentum" in case:
            kw["momentum"] = case["momentum"]  # None: cumulative moving average
        pdtype = to_torch(case["gamma"]).dtype
        mod = _MODULES[x.ndim](x.shape[1], eps=case["eps"], dtype=pdtype, **kw)
        with torch.no_grad():
            mod.weight.copy_(to_torch(case["gamma"]))
            mod.bias.copy_(to_torch(case["beta"]))
            mod.running_mean.copy_(to_torch(case["moving_mean"]))
            mod.running_var.copy_(to_torch(case["moving_var"]))
        if not case["scale"]:
            mod.weight = None
        if not case["center"]:
            mod.bias = None
        return mod

    def _prep(self, case: dict, a: np.ndarray) -> torch.Tensor:
        t = to_torch(a)
        fmt = case.get("memory_format")
        if fmt == "channels_last":
            t = t.contiguous(memory_format=torch.channels_last)
        elif fmt == "channels_last_3d":
            t = t.contiguous(memory_format=torch.channels_last_3d)
        elif fmt:
            raise ValueError(f"unknown memory_format {fmt!r}")
        return t

    def _forward(self, mod, case, x, res, cid, with_grad):
        params = [p for p in (mod.weight, mod.bias) if p is not None]
        if not with_grad:
            with torch.no_grad():
                y = mod(x)
            res.put(cid, "y", to_numpy(y))
            return
        x = x.detach().requires_grad_(True)
        y = mod(x)
        res.put(cid, "y", to_numpy(y))
        dy = self._prep(case, case["dy"])
        grads = torch.autograd.grad(y, [x, *params], dy)
        res.put(cid, "dx", to_numpy(grads[0]))
        rest = list(grads[1:])
        if mod.weight is not None:
            res.put(cid, "dgamma", to_numpy(rest.pop(0)))
        if mod.bias is not None:
            res.put(cid, "dbeta", to_numpy(rest.pop(0)))

    def run(self, case: dict, res: case_io.Results) -> None:
        cid = case["id"]
        with_grad = case["dy"] is not None
        if case["kind"] == "inference":
            x = self._prep(case, case["x"])
            mod = self._module(case, x).eval()
            self._forward(mod, case, x, res, cid, with_grad)
            return
        xs = [self._prep(case, b) for b in case_io.batches(case)]
        mod = self._module(case, xs[0]).train()
        means, vars_ = [], []
        for i, x in enumerate(xs):
            if i == 0:
                self._forward(mod, case, x, res, cid, with_grad)
            else:
                with torch.no_grad():
                    mod(x)
            means.append(to_numpy(mod.running_mean))
            vars_.append(to_numpy(mod.running_var))
        res.put(cid, "running_mean", np.stack(means))
        res.put(cid, "running_var", np.stack(vars_))
        res.put(cid, "info", json.dumps({"num_batches_tracked": int(mod.num_batches_tracked)}))
        # batch statistics as the kernel saves them (same kernel as the module)
        try:
            with torch.no_grad():
                _, smean, sinvstd = torch.native_batch_norm(
                    xs[0], mod.weight, mod.bias, None, None, True, 0.0, case["eps"]
                )
            res.put(cid, "batch_mean", to_numpy(smean))
            res.put(cid, "batch_invstd", to_numpy(sinvstd))
        except Exception:
            pass
