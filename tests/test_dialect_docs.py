"""docs/dialects.md: the generated tables match the records, and every spelling and example on it runs."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import batchnorm as bn
from batchnorm import _dialect_table as table

PAGE = Path(__file__).resolve().parents[1] / "docs" / "dialects.md"


def spelling_rows():
    """(framework, theirs, ours) from the page's hand-written tables `| theirs | ours |`."""
    text = PAGE.read_text(encoding="utf-8").split("## From each framework's spelling to ours", 1)[1]
    text = text.split("\n## ", 1)[0]
    rows, framework = [], None
    for line in text.splitlines():
        if line.startswith("### "):
            framework = line[4:]
        cells = re.fullmatch(r"\| `(.+)` \| `(.+)` \|", line)
        if cells:
            rows.append((framework, *cells.groups()))
    return rows


ROWS = spelling_rows()


def test_the_generated_part_is_the_records_rendered():
    page = PAGE.read_text(encoding="utf-8")
    assert table.splice(page, table.render()) == page, "stale: run python -m batchnorm._dialect_table"


def test_every_dialect_has_a_row_in_every_table():
    generated = table.render()
    for name in bn.dialects.names():
        assert generated.count(f"| `{name}` |") == 4, name


def test_a_changed_record_changes_the_table():
    variant = bn.dialects.get("torch").derive("torch-x", momentum=0.2, running_variance="biased")
    row = next(line for line in table.render([variant]).splitlines() if line.startswith("| `torch-x`"))
    assert "| 0.2, weighs the new batch |" in row and "| biased, /n |" in row


def test_the_training_table_names_each_reduction_tree():
    rows = {
        line.split("|")[1].strip(" `"): line for line in table.render().splitlines() if "| two-pass |" in line
    }
    assert "float64 accumulators" in rows["exact"]
    assert "oneDNN" in rows["tf-keras"] and "Eigen" in rows["tf-keras"]
    assert "| 1/sqrt(v + eps) in float64, eps as given, rounded once |" in rows["torch"]


def test_fused_paths_are_shown_beside_the_unfused_ones():
    generated = table.render()
    row = next(line for line in generated.splitlines() if line.startswith("| `tf-keras` | 0.001"))
    assert "| biased, /n; fused (rank 4 axis 1 or 3, rank 5 axis 1 or 4): unbiased, n/(n-1) |" in row
    assert "`tf-keras` runs its unfused path except on these inputs (fused: rank 4 axis 1 or 3" in generated


def test_the_module_rewrites_a_stale_page_and_checks_it(tmp_path, capsys):
    page = PAGE.read_text(encoding="utf-8")
    stale = tmp_path / "dialects.md"
    stale.write_text(table.splice(page, "old table\n"), encoding="utf-8")
    assert table.main([str(stale), "--check"]) == 1
    assert "is stale" in capsys.readouterr().err
    assert table.main([str(stale)]) == 0
    assert stale.read_text(encoding="utf-8") == page
    ran = subprocess.run(
        [sys.executable, "-m", "batchnorm._dialect_table", str(stale), "--check"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr


def test_splice_needs_both_markers():
    with pytest.raises(ValueError, match="needs the markers"):
        table.splice("# no markers\n", "x")


def namespace():
    rng = np.random.default_rng(0)
    c = 3
    x = rng.standard_normal((2, c, 5, c)).astype(np.float32)  # C channels on axis 1 and on axis -1
    arrays = {
        name: rng.random(c).astype(np.float32) + 0.5
        for name in (
            "running_mean",
            "running_var",
            "weight",
            "bias",
            "mean",
            "variance",
            "offset",
            "scale",
            "B",
            "input_mean",
            "input_var",
        )
    }
    return {
        "bn": bn,
        "np": np,
        "C": c,
        "x": x,
        "X": x,
        "eps": 1e-3,
        "momentum": 0.9,
        "axis": -1,
        "layer": bn.BatchNorm(c, axis=1, dialect="torch"),
        **arrays,
    }


def test_every_framework_has_a_spelling_table():
    frameworks = {framework for framework, _, _ in ROWS}
    assert frameworks == {"PyTorch", "Keras 3", "tf_keras / tf.keras", "ONNX", "Flax linen"}
    assert len(ROWS) >= 20


@pytest.mark.parametrize(("framework", "theirs", "ours"), ROWS, ids=[r[1] for r in ROWS])
def test_our_spelling_runs(framework, theirs, ours):
    exec(ours, namespace())


def test_every_framework_dialect_has_a_spelling():
    spelled = " ".join(ours for _, _, ours in ROWS)
    for name in bn.dialects.names():
        if name != "exact":
            assert f'dialect="{name}"' in spelled, name


def test_the_page_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)
    assert blocks
    ns: dict = {}
    for block in blocks:
        exec(block, ns)
