"""batchnorm.compare, number parsing, and ``batchnorm compare`` (issue 5)."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from batchnorm import BatchNormError, cli
from batchnorm._numbers import load, parse
from batchnorm.compare import compare, ulp_distance, ulp_histogram

F32 = np.dtype(np.float32)


# -- parsing ---------------------------------------------------------------------------------------------


def test_a_printed_float32_array_parses_back_to_its_bits():
    n = parse("[[[[ 0.9995004]\n  [ 1.9990008]]\n\n [[10.994504 ]\n  [11.994005 ]]]]", F32, "--x")
    assert n.shape == (1, 2, 2, 1)
    assert n.values.dtype == F32
    assert hex(int(n.values.view(np.uint32)[-1])) == "0x413fe772"


@pytest.mark.parametrize(
    "text",
    [
        "tensor([[1., 2.], [3., 4.]], dtype=torch.float32)",
        "array([[1., 2.],\n       [3., 4.]], dtype=float32)",
        "<tf.Tensor: shape=(2, 2), dtype=float32, numpy=\narray([[1., 2.], [3., 4.]], dtype=float32)>",
        "Array([[1., 2.], [3., 4.]], dtype=float32)",
    ],
)
def test_framework_printouts_paste_as_they_are(text):
    n = parse(text, F32, "--x")
    assert n.shape == (2, 2) and n.values.tolist() == [1, 2, 3, 4]


def test_plain_lists_and_elision():
    assert parse("1, 2\n3", F32, "--x").shape is None
    n = parse("1 2 ... 9 10", F32, "--x")
    assert n.split == 2 and n.values.tolist() == [1, 2, 9, 10]


def test_decimals_round_once_ties_to_even():
    # 1 + 2**-24 is the midpoint between 1 and the next float32: ties go to the even one, 1.
    n = parse("1.000000059604644775390625 1.000000059604644775390626", F32, "--x")
    assert n.values.view(np.uint32).tolist() == [0x3F800000, 0x3F800001]
    bf = parse("1.00390625 1.0039062500001", np.dtype(ml_dtypes.bfloat16), "--x")
    assert bf.values.astype(np.float32).tolist() == [1.0, 1.0078125]


@pytest.mark.parametrize(
    ("text", "needle"),
    [("1 two 3", "'two'"), ("[1 2] [3]", "rectangular"), ("[1 2", "never closed"), ("", "at least one")],
)
def test_bad_numbers_say_what_to_fix(text, needle):
    with pytest.raises(BatchNormError, match=needle):
        parse(text, F32, "--x")


def test_npy_and_npz_files(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(6, dtype=np.float64).reshape(2, 3))
    np.savez(tmp_path / "ab.npz", a=np.ones(2), b=np.zeros(2))
    n = load(str(tmp_path / "a.npy"), "A", F32)
    assert n.from_file and n.shape == (2, 3) and n.values.dtype == np.float64
    assert load(str(tmp_path / "ab.npz") + ":b", "A", F32).values.tolist() == [0, 0]
    with pytest.raises(BatchNormError, match="holds a, b; got no name"):
        load(str(tmp_path / "ab.npz"), "A", F32)


# -- comparison ------------------------------------------------------------------------------------------


def test_ulp_distance_counts_floats_between():
    one = np.float32(1)
    a = np.array([one, -0.0, np.float32(-1e-45)], np.float32)
    b = np.array([np.nextafter(one, np.float32(2)), 0.0, np.float32(1e-45)], np.float32)
    assert ulp_distance(a, b).tolist() == [1, 0, 2]


def test_histogram_buckets_double():
    assert ulp_histogram(np.array([0, 1, 3, 4, 5])) == [("0", 1), ("1", 1), ("2", 0), ("3-4", 2), ("5-8", 1)]


def test_compare_reports_the_tolerances_that_would_pass():
    b = np.arange(1, 13, dtype=np.float32)
    a = b / np.sqrt(np.float32(1.001))
    c = compare(a, b, atol=1e-5, rtol=1e-5)
    assert not c.passed and c.failing == 12
    assert c.atol_needed == pytest.approx(12 - 12 / np.sqrt(1.001), rel=1e-3)
    assert c.rtol_needed == pytest.approx(1 - 1 / np.sqrt(1.001), rel=1e-3)
    assert c.worst_index == (11,)
    assert compare(a, b, atol=c.atol_needed, rtol=0).passed
    assert compare(a, b, atol=0, rtol=c.rtol_needed).passed


def test_compare_nan_shape_and_dtype():
    assert compare(np.array([np.nan, 1.0]), np.array([np.nan, 1.0])).passed
    c = compare(np.array([np.nan, 1.0]), np.array([0.0, 1.0]))
    assert not c.passed and c.nan_mismatch == 1
    assert compare(np.ones(3), np.ones(4)).max_abs is None
    mixed = compare(np.ones(2, np.float64), np.ones(2, np.float32))
    assert mixed.passed and mixed.ulp_dtype == "float32" and mixed.notes


def test_compare_command_exit_codes(tmp_path, capsys):
    x = np.arange(1, 13, dtype=np.float32)
    np.save(tmp_path / "y.npy", x / np.sqrt(np.float32(1.00001)))  # off by 5e-6 relative
    assert cli.main(["compare", str(tmp_path / "y.npy"), str(x.tolist()), "--rtol", "0"]) == 1
    out = capsys.readouterr().out
    assert "FAILED (" in out and "ulp histogram" in out and "smallest atol" in out
    assert (
        cli.main(
            ["compare", str(tmp_path / "y.npy"), str(x.tolist()), "--rtol", "0", "--atol", "1e-4", "--json"]
        )
        == 0
    )
    doc = json.loads(capsys.readouterr().out)
    assert doc["passed"] is True and doc["dtype_b"] == "float32"  # pasted numbers read at the file's dtype
    assert cli.main(["compare", "1 2 3", "1 2"]) == 1
    assert "shapes differ" in capsys.readouterr().out
