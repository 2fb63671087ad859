"""A trained torch.nn.BatchNorm2d converted to Keras 3 computes the same, run through both frameworks.

PyTorch runs here; Keras 3 (TensorFlow backend) runs in a subprocess, since Keras picks its backend at
import. Both frameworks are test requirements: a missing one is a failure, not a skip.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import torch

from batchnorm import convert

C, EPS, MOMENTUM = 6, 1e-4, 0.3  # neither framework's default eps or momentum

KERAS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import keras

    data = np.load(sys.argv[1])
    hp = json.loads(sys.argv[2])
    out = {}
    for mode in ("keep", "rescale"):
        layer = keras.layers.BatchNormalization(axis=hp["axis"], epsilon=hp["eps"], momentum=hp["momentum"])
        layer.build(data["x"].shape)
        layer.set_weights([data[f"{mode}_{i}"] for i in range(4)])
        out[f"{mode}_y"] = np.asarray(layer(data["x"], training=False))
        layer(data["x_train"], training=True)
        for i, w in enumerate(layer.get_weights()):
            out[f"{mode}_after_{i}"] = w
    out["epsilon"], out["momentum"] = np.float64(layer.epsilon), np.float64(layer.momentum)
    out["backend"] = np.array(keras.backend.backend())
    np.savez(sys.argv[3], **out)
    """
)


def trained_module() -> torch.nn.BatchNorm2d:
    """Running statistics far from (0, 1), per-channel different, after a few training steps."""
    torch.manual_seed(0)
    module = torch.nn.BatchNorm2d(C, eps=EPS, momentum=MOMENTUM)
    offset, spread = torch.linspace(-4, 6, C).view(1, C, 1, 1), torch.linspace(0.2, 3, C).view(1, C, 1, 1)
    module.train()
    with torch.no_grad():
        for _ in range(5):
            module(offset + spread * torch.randn(8, C, 5, 7))
        module.weight.copy_(1 + 0.5 * torch.randn(C))
        module.bias.copy_(torch.randn(C))
    return module


def run_keras(tmp_path, arrays: dict, hyper: dict) -> dict:
    inp, out = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(inp, **arrays)
    env = {
        **os.environ,
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "CUDA_VISIBLE_DEVICES": "",
        "KERAS_HOME": str(tmp_path / "keras-home"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", KERAS_SCRIPT, str(inp), json.dumps(hyper), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    with np.load(out) as f:
        return dict(f)


def assert_within_ulps(got, want, ulps):
    scale = np.spacing(np.abs(want).max().astype(np.float32))
    assert got.dtype == want.dtype == np.float32
    assert np.abs(got.astype(np.float64) - want).max() <= ulps * scale


def test_trained_torch_batchnorm2d_runs_the_same_in_keras3(tmp_path):
    module = trained_module()
    weights = module.state_dict()  # torch tensors, sharing the module's storage
    assert int(weights["num_batches_tracked"]) == 5 and weights["running_mean"].abs().max() > 1
    rng = np.random.default_rng(1)
    x = (np.linspace(-4, 6, C).reshape(1, C, 1, 1) + 2 * rng.standard_normal((3, C, 4, 5))).astype(np.float32)
    x_train = (1 + 3 * rng.standard_normal((4, C, 3, 5))).astype(np.float32)
    n = x_train.size // C

    kw = dict(source="torch", target="keras3-tensorflow", eps=EPS, momentum=MOMENTUM, ndim=4, axis=1)
    keep = convert(weights, running_variance="keep", **kw)
    rescale = convert(weights, count=n, **kw)
    assert keep.momentum == rescale.momentum == 0.7 and keep.eps == EPS and keep.axis == 1

    module.eval()
    with torch.no_grad():
        y_torch = module(torch.from_numpy(x)).numpy()
    module.train()
    with torch.no_grad():
        module(torch.from_numpy(x_train))
    stepped = convert(module.state_dict(), count=n, **kw)  # what Keras should hold after the same step
    assert keep.weights[2].tobytes() != stepped.weights[2].tobytes()  # the conversions copied

    # Back to PyTorch, loaded as the docs say: the same module, bit for bit.
    back = convert(
        keep.weights,
        source="keras3-tensorflow",
        target="torch",
        eps=keep.eps,
        momentum=keep.momentum,
        running_variance="keep",
        ndim=4,
        axis=1,
    )
    restored = torch.nn.BatchNorm2d(C, eps=back.eps, momentum=back.momentum)
    restored.load_state_dict({k: torch.as_tensor(v) for k, v in back.weights.items()})
    restored.eval()
    with torch.no_grad():
        assert restored(torch.from_numpy(x)).numpy().tobytes() == y_torch.tobytes()

    arrays = {"x": x, "x_train": x_train}
    for name, c in (("keep", keep), ("rescale", rescale)):
        arrays.update({f"{name}_{i}": w for i, w in enumerate(c.weights)})
    keras = run_keras(tmp_path, arrays, {"axis": keep.axis, "eps": keep.eps, "momentum": keep.momentum})

    assert str(keras["backend"]) == "tensorflow"
    assert (keras["epsilon"], keras["momentum"]) == (EPS, 0.7)
    # Inference: the same output, up to the frameworks' float32 orderings (fma vs x*s + (b - m*s)).
    assert_within_ulps(keras["keep_y"], y_torch, 4)
    # Training: one step in Keras from the rescaled weights is the step PyTorch took, converted.
    for i in (2, 3):  # moving_mean, moving_variance
        assert_within_ulps(keras[f"rescale_after_{i}"], stepped.weights[i], 4)
