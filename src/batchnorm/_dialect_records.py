"""The registered dialects, one record per framework convention (facts cited per record)."""

from __future__ import annotations

from ._dialect import TF_MIN_EPSILON, Dialect, Path

# Keras 3 and tf_keras under the default float32 dtype policy: half inputs are upcast and the output is
# float32 (promote_output). Measured with the parity runners; derive(promote_output=False) for a
# mixed_float16 policy.
_KERAS = dict(
    eps=1e-3,
    momentum=0.99,
    momentum_side="old",
    axis=-1,
    running_variance="biased",
    promote_output=True,
)


def _tf_keras_paths(*extra: tuple[str, object]) -> tuple[Path, ...]:
    """tf_keras' fused kernel (FusedBatchNormV3, oneDNN on, TF's default on x86 Linux), per layout.

    Measured on TF 2.21 with the parity runners, every channel compared bit for bit:

    - NCHW: (x - m) * (g / sqrtf(v + e)) + b.
    - NHWC with C % 4 == 0: fma((x - m) * (1 / sqrtf(v + e)), g, b); other channel counts take the
      NCHW form (C = 3 to 32 measured).
    - rank 5: (x - m) * (rsqrt(v + e) * g) + b with TensorFlow's packet rsqrt.

    All of them store the Bessel-corrected (unbiased) variance. Batch statistics: rank 4 sums as oneDNN's
    batch_normalization_forward (reduction "onednn"), rank 5 as TF's own Eigen kernel ("eigen-fused").
    Running statistics: the kernel's (1 - f) * r + f * b with f = float32(1 - momentum) (tf_keras
    passes exponential_avg_factor = 1 - momentum), the variance's factor float(n) / float(n - 1) joining
    f; bit for bit on every fused parity case.
    """
    running = (
        ("running_form", "lerp"),
        ("running_weights", "complement_first"),
        ("running_bessel", "weight"),
    )
    fused = (("running_variance", "unbiased"), *running, *extra)
    onednn = (*fused, ("reduction", "onednn"))
    quotient = (*onednn, ("elementwise", "centered"), ("scale_form", "quotient"))
    return (
        Path("fused", ((4, 1),), quotient),
        Path(
            "fused",
            ((4, 3),),
            (*onednn, ("elementwise", "normalized_fma"), ("rsqrt", "correct")),
            channel_multiple=4,
        ),
        Path("fused", ((4, 3),), quotient),
        Path("fused", ((5, 1), (5, 4)), (*fused, ("reduction", "eigen-fused"), ("elementwise", "centered"))),
    )


EXACT = Dialect(
    name="exact",
    framework="batchnorm (textbook, correctly rounded)",
    eps=1e-5,
    momentum=0.99,
    momentum_side="old",
    axis=-1,
    running_variance="unbiased",
    statistics_precision="float64",
    precision="float64",
    scale_form="quotient",
    elementwise="centered",
    eps_in_float32=False,
    source="y = (x - mean) / sqrt(var + eps) * gamma + beta in float64, rounded once",
)

TORCH = Dialect(
    name="torch",
    framework="PyTorch 2.13 (CPU)",
    eps=1e-5,
    momentum=0.1,
    momentum_side="new",
    axis=1,
    running_variance="unbiased",
    statistics_precision="float64",
    reduction="torch-batchnorm",
    training_inverse_root="float64",
    running_form="lerp",
    running_weights="momentum_first",
    running_bessel="sum",
    running_var_accumulation="acc_type",
    elementwise="fma",
    refuses_nonpositive_eps_in_training=True,
    refuses_single_value_in_training=True,
    parameter_names=("weight", "bias", "running_mean", "running_var"),
    source="pytorch/pytorch aten/src/ATen/native/cpu/batch_norm_kernel.cpp; "
    "aten/src/ATen/native/Normalization.cpp (training: save_invstd in double); torch/nn/functional.py",
)

ONNX = Dialect(
    name="onnx",
    framework="ONNX BatchNormalization (spec, reference evaluator)",
    eps=1e-5,
    momentum=0.9,
    momentum_side="old",
    axis=1,
    running_variance="biased",
    running_form="lerp",
    running_weights="momentum_first",
    running_storage="input",
    elementwise="ratio",
    reduction="numpy",
    parameter_names=("scale", "B", "input_mean", "input_var"),
    source="onnx/onnx onnx/defs/nn/defs.cc; onnx/reference/ops/op_batch_normalization.py",
)

ONNXRUNTIME = ONNX.derive(
    "onnxruntime",
    framework="onnxruntime 1.32 (CPU)",
    elementwise="affine",
    reduction="onnxruntime",
    running_storage="parameters",
    source="microsoft/onnxruntime onnxruntime/core/providers/cpu/nn/batch_norm.h",
)

KERAS3_TENSORFLOW = Dialect(
    name="keras3-tensorflow",
    framework="Keras 3 on TensorFlow",
    **_KERAS,  # type: ignore[arg-type]
    rsqrt="tensorflow",
    reduction="eigen",
    running_form="lerp",
    source="keras-team/keras keras/src/backend/tensorflow/nn.py (tf.nn.moments, tf.nn.batch_normalization)",
)

KERAS3_JAX = KERAS3_TENSORFLOW.derive(
    "keras3-jax",
    framework="Keras 3 on JAX (XLA, CPU)",
    rsqrt="xla",
    reduction="xla",
    source="keras-team/keras keras/src/backend/jax/nn.py (jax.lax.rsqrt)",
)

KERAS3_TORCH = KERAS3_TENSORFLOW.derive(
    "keras3-torch",
    framework="Keras 3 on PyTorch",
    rsqrt="correct",
    variance="sum_of_squares",
    reduction="torch-reduce",
    elementwise="centered",
    source="keras-team/keras keras/src/backend/torch/nn.py (moments: E[x^2] - E[x]^2 through torch.mean); "
    "pytorch/pytorch aten/src/ATen/native/cpu/SumKernel.cpp (cascade sum)",
)

TF_KERAS = Dialect(
    name="tf-keras",
    framework="tf_keras / tf.keras >= 2.12 (fused path for rank 4/5, oneDNN on)",
    **_KERAS,  # type: ignore[arg-type]
    rsqrt="tensorflow",
    reduction="eigen",
    running_form="delta",
    paths=_tf_keras_paths(),
    path="unfused",
    source="keras-team/tf-keras tf_keras/layers/normalization/batch_normalization.py; "
    "tensorflow/tensorflow tensorflow/core/kernels/fused_batch_norm_op.cc",
)

TF_KERAS_UNFUSED = TF_KERAS.derive(
    "tf-keras-unfused",
    framework="tf_keras with fused=False (tf.nn.moments + tf.nn.batch_normalization)",
    paths=(),
    source="tensorflow/tensorflow tensorflow/python/ops/nn_impl.py",
)

TF_KERAS_211 = TF_KERAS.derive(
    "tf-keras-2.11",
    framework="tf.keras in TF <= 2.11 (fused path raises eps to 1.001e-5)",
    paths=_tf_keras_paths(("eps_floor", TF_MIN_EPSILON)),
    source="tensorflow/tensorflow v2.11 tensorflow/python/ops/nn_impl.py fused_batch_norm "
    "(min_epsilon = 1.001e-5; removed in 2.12, tensorflow/tensorflow#37768)",
)

FLAX = Dialect(
    name="flax",
    framework="Flax linen BatchNorm (use_fast_variance=True)",
    eps=1e-5,
    momentum=0.99,
    momentum_side="old",
    axis=-1,
    running_variance="biased",
    variance="sum_of_squares_clamped",
    elementwise="centered",
    rsqrt="xla",
    reduction="xla",
    running_form="lerp",
    gradient="autodiff",
    promote_output=True,
    parameter_names=("scale", "bias", "mean", "var"),
    source="google/flax flax/linen/normalization.py (_compute_stats, _normalize)",
)

RECORDS = (
    EXACT,
    TORCH,
    ONNX,
    ONNXRUNTIME,
    KERAS3_TENSORFLOW,
    KERAS3_JAX,
    KERAS3_TORCH,
    TF_KERAS,
    TF_KERAS_UNFUSED,
    TF_KERAS_211,
    FLAX,
)
