"""The ``batchnorm`` command end to end (issue 5): the seed through a subprocess, the rest in-process.

Subprocess calls cost about half a second each; only the seed's two printed outputs, the no-argument
run and one bad input go through ``python -m batchnorm``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from batchnorm import cli

# The seed question's two Keras outputs, pasted exactly as NumPy printed them.
SEED_EPS_DEFAULT = """[[[[ 0.9995004]
  [ 1.9990008]
  [ 2.9985013]
  [ 3.9980016]]

 [[ 4.997502 ]
  [ 5.9970026]
  [ 6.996503 ]
  [ 7.996003 ]]

 [[ 8.995503 ]
  [ 9.995004 ]
  [10.994504 ]
  [11.994005 ]]]]"""

SEED_EPS_ZERO = """[[[[ 0.999995 ]
  [ 1.99999  ]
  [ 2.999985 ]
  [ 3.99998  ]]

 [[ 4.999975 ]
  [ 5.99997  ]
  [ 6.9999647]
  [ 7.99996  ]]

 [[ 8.999955 ]
  [ 9.99995  ]
  [10.999945 ]
  [11.99994  ]]]]"""

KERAS = {"keras3-tensorflow", "keras3-torch", "tf-keras", "tf-keras-unfused", "tf-keras-2.11"}


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "batchnorm", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture(scope="module")
def seed_default_doc() -> dict:
    proc = _run("explain", "--observed", SEED_EPS_DEFAULT, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_seed_default_eps_output_is_explained_by_keras_default_eps(seed_default_doc):
    doc = seed_default_doc
    best = doc["matches"][0]
    assert best["effective_eps"] == pytest.approx(1e-3)
    assert best["exact"] is True
    assert best["dialect"] in KERAS
    assert best["eps_source"] == "default"  # eps was not given: inferred, and it is Keras' default
    assert doc["inferred_eps"] == pytest.approx(1e-3, rel=1e-3)
    assert KERAS | {"torch"} <= {m["dialect"] for m in doc["matches"] if m["exact"]}


def test_seed_zero_eps_output_is_explained_by_the_tf_2_11_floor():
    proc = _run("explain", "--observed", SEED_EPS_ZERO, "--eps", "0", "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [m["dialect"] for m in doc["matches"]] == ["tf-keras-2.11"]
    best = doc["matches"][0]
    assert best["effective_eps"] == pytest.approx(1.001e-5)
    assert best["eps_source"] == "floor"
    assert best["exact"] is True and best["max_ulp"] == 0
    assert doc["closest"] and all(not m["reproduced"] for m in doc["closest"])
    assert any("1.001e-05" in line for line in doc["diagnosis"])


def test_json_document_shape_is_pinned(seed_default_doc):
    doc = seed_default_doc
    assert set(doc) == {"input", "scenarios", "matches", "closest", "inferred_eps", "diagnosis", "reproduced"}
    assert {"dialect", "effective_eps", "max_ulp", "exact"} <= set(doc["matches"][0])
    for m in doc["matches"]:
        assert isinstance(m["effective_eps"], float)
        assert isinstance(m["max_ulp"], int) and isinstance(m["exact"], bool)
    scenario = doc["scenarios"][0]
    assert {"eps", "steps", "results", "attributions", "textbook", "textbook_bits"} <= set(scenario)
    assert {"dialect", "effective_eps", "eps_source", "ordering", "first", "last", "max_ulp"} <= set(
        scenario["results"][0]
    )
    assert {"kind", "cause", "dialects", "max_ulp"} == set(scenario["attributions"][0])
    assert doc["reproduced"] is True


def test_no_arguments_explains_the_seed_in_plain_text_within_100_columns():
    proc = _run("explain")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "eps = 0.001" in out and "eps = 0\n" in out
    assert "0x413fe771" in out  # the textbook 11.994004, correctly rounded
    assert "11.994005" in out and "11.99994" in out  # what Keras printed, reproduced
    assert "1.001e-05" in out and "floor" in out
    assert "\x1b[" not in out  # piped: no terminal codes
    assert max(len(line) for line in out.splitlines()) <= 100


def test_bad_input_exits_2_with_one_line_and_no_traceback():
    proc = _run("explain", "--x", "1, 2, three")
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1
    assert "'three'" in proc.stderr and proc.stdout == ""


# -- in-process: cli.main(argv) -> exit code ------------------------------------------------------------


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_torch_output_is_matched_exactly_to_dialect_torch(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((2, 3, 4, 5)) * 3 + 1).astype(np.float32)
    mean, var = rng.standard_normal(3).astype(np.float32), (rng.random(3) + 0.1).astype(np.float32)
    gamma, beta = rng.standard_normal(3).astype(np.float32), rng.standard_normal(3).astype(np.float32)
    t = [torch.from_numpy(a) for a in (x, mean, var, gamma, beta)]
    y = torch.nn.functional.batch_norm(t[0], t[1], t[2], t[3], t[4], training=False, eps=1e-5).numpy()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    params = [str(a.tolist()) for a in (mean, var, gamma, beta)]
    code, out, err = _main(
        capsys,
        "explain",
        "--x",
        str(tmp_path / "x.npy"),
        "--observed",
        str(tmp_path / "y.npy"),
        "--axis",
        "1",
        "--mean",
        params[0],
        "--var",
        params[1],
        "--gamma",
        params[2],
        "--beta",
        params[3],
        "--json",
    )
    assert code == 0, err
    doc = json.loads(out)
    best = doc["matches"][0]
    assert (best["dialect"], best["exact"], best["max_ulp"]) == ("torch", True, 0)
    assert best["effective_eps"] == pytest.approx(1e-5)
    assert best["eps_source"] == "default"


def test_nothing_reproduces_exits_1_and_names_the_closest(capsys):
    code, out, _ = _main(capsys, "explain", "--observed", SEED_EPS_ZERO, "--eps", "1e-3")
    assert code == 1
    assert "Nothing reproduces" in out and "Closest:" in out
    assert "was eps = 0.001 really used?" in out


def test_elided_observation_and_stdin(monkeypatch, capsys):
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("[0.9995004 1.9990008 ... 11.994005]"))
    code, out, err = _main(capsys, "explain", "--observed", "-", "--json")
    assert code == 0, err
    assert json.loads(out)["matches"][0]["effective_eps"] == pytest.approx(1e-3)


def test_training_shows_the_moving_variance_per_convention(capsys):
    code, out, err = _main(
        capsys,
        "explain",
        "--training",
        "--eps",
        "1e-3",
        "--dialect",
        "torch",
        "--dialect",
        "keras3-tensorflow",
        "--json",
    )
    assert code == 0, err
    results = {r["dialect"]: r for r in json.loads(out)["scenarios"][0]["results"]}
    # x = 1..12: batch variance 143/12, unbiased 13; torch: 0.9 * 1 + 0.1 * 13, Keras: 0.99 + 0.01 * 143/12
    assert results["torch"]["running_var"] == pytest.approx(2.2, rel=1e-6)
    assert results["keras3-tensorflow"]["running_var"] == pytest.approx(0.99 + 0.01 * 143 / 12, rel=1e-6)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["explain", "--eps", "abc"], "--eps"),
        (["explain", "--dialect", "nope"], "dialect must be one of"),
        (["explain", "--x", "[[1, 2], [3]]"], "rectangular"),
        (["explain", "--observed", "1 2 3"], "as many values as x (12)"),
        (["explain", "--x", "[[1, 2], [3, 4]]", "--var", "-1"], "var must be finite and >= 0"),
        (["explain", "--x", "missing.npy"], "cannot read"),
        (["compare", "1 2", "x"], "'x'"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, argv, needle):
    code, out, err = _main(capsys, *argv)
    assert code == 2 and out == ""
    assert needle in err and err.count("\n") == 1 and err.startswith("batchnorm: error: ")


def test_rich_on_a_terminal_and_plain_without_rich(monkeypatch, capsys):
    pytest.importorskip("rich")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    code, out, _ = _main(capsys, "explain", "--dialect", "tf-keras-2.11")
    assert code == 0 and "─" in out and "tf-keras-2.11" in out  # rich's rules and tables
    monkeypatch.setitem(sys.modules, "rich", None)  # rich not installed: plain text even on a terminal
    code, out, _ = _main(capsys, "explain", "--dialect", "tf-keras-2.11")
    assert code == 0 and "─" not in out and "=======" in out


def test_plot_writes_a_png_and_says_when_matplotlib_is_missing(tmp_path, monkeypatch, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "ulps.png"
    code, _, err = _main(capsys, "explain", "--observed", SEED_EPS_DEFAULT, "--plot", str(path))
    assert code == 0, err
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, _, err = _main(capsys, "explain", "--plot", str(tmp_path / "again.png"))
    assert code == 2 and "pip install 'batchnorm[plot]'" in err


def test_no_command_prints_help_and_exits_2(capsys):
    code, out, _ = _main(capsys)
    assert code == 2 and "explain" in out and "compare" in out


def test_per_channel_values_take_the_channel_shape_of_several_axes(capsys):
    x = "[[[1,2],[3,4]],[[5,6],[7,9]]]"
    code = cli.main(["explain", "--x", x, "--axis", "1,2", "--mean", "1,2,3,4", "--eps", "0", "--json"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)
    assert cli.main(["explain", "--x", x, "--axis", "1,2", "--mean", "1,2,3"]) == 2
    assert "one value per channel" in capsys.readouterr().err
