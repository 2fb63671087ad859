import batchnorm as bn

PUBLIC = {
    "BatchNorm",
    "BatchNormError",
    "BatchNormWarning",
    "BatchResult",
    "Converted",
    "Dialect",
    "FrameworkRuleError",
    "backward",
    "convert",
    "dialects",
    "normalize",
    "normalize_batch",
    "update_running",
}


def test_all_is_exactly_the_documented_surface():
    assert set(bn.__all__) == PUBLIC
    assert len(bn.__all__) == len(PUBLIC)
    for name in bn.__all__:
        assert getattr(bn, name) is not None


def test_error_is_a_value_error():
    assert issubclass(bn.BatchNormError, ValueError)
    assert issubclass(bn.FrameworkRuleError, bn.BatchNormError)


def test_contract_dialect_names_are_registered():
    contract = {
        "exact",
        "torch",
        "onnx",
        "onnxruntime",
        "keras3-tensorflow",
        "keras3-jax",
        "keras3-torch",
        "tf-keras",
        "tf-keras-unfused",
        "tf-keras-2.11",
        "flax",
    }
    assert contract <= set(bn.dialects.names())
