"""``--plot FILE.png``: ulp differences as pictures, drawn with the matplotlib ``pyplot`` the caller
passes (matplotlib is optional: ``batchnorm[plot]``; :mod:`batchnorm.cli` imports it)."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import dialects
from ._dialect_runs import run, textbook
from ._numbers import format_eps
from ._problem import Problem
from .compare import signed_ulps
from .explain import Explanation

__all__ = ["plot_comparison", "plot_explanation"]

_Panel = tuple[str, dict[str, np.ndarray], np.ndarray]


def plot_explanation(plt: Any, path: str, p: Problem, e: Explanation) -> None:
    """A heat map per scenario: each dialect's output in signed ulps from the textbook, element by
    element; with an observation, one more map of each dialect (at its best eps) from the observation."""
    panels = _panels(p, e)
    fig, axes = plt.subplots(
        len(panels),
        1,
        figsize=(9, 1.2 + 0.28 * len(p.names) * len(panels) + 0.6 * len(panels)),
        squeeze=False,
    )
    for ax, panel in zip(axes[:, 0], panels, strict=True):
        _heat_map(fig, ax, *panel)
    _save(plt, fig, path)


def _panels(p: Problem, e: Explanation) -> list[_Panel]:
    """(title, outputs by name, the reference they are measured from), one per picture."""
    panels = []
    for s in e.scenarios:
        ref = textbook(p, s.reference_eps)
        rows = {r.dialect: run(dialects.get(r.dialect), p, s.eps) for r in s.results if r.refused is None}
        if p.observed is not None:
            rows["observed"] = p.observed
        panels.append((f"eps = {format_eps(s.reference_eps)}: ulps from the textbook", rows, ref))
    if p.observed is not None:
        found = {m.dialect: run(dialects.get(m.dialect), p, m.effective_eps) for m in e.matches + e.closest}
        panels.append(("each dialect at its best eps: ulps from the observed numbers", found, p.observed))
    return panels


def _heat_map(fig: Any, ax: Any, title: str, rows: dict[str, np.ndarray], ref: np.ndarray) -> None:
    from matplotlib.colors import SymLogNorm

    names = [n for n, y in rows.items() if y.dtype == ref.dtype]
    grid = np.array([signed_ulps(rows[n], ref).ravel() for n in names], dtype=np.float64)
    top = max(float(np.abs(grid).max()), 1.0)
    norm = SymLogNorm(linthresh=1, vmin=-top, vmax=top)
    image = ax.imshow(grid, aspect="auto", interpolation="nearest", cmap="RdBu_r", norm=norm)
    ax.set(title=title, yticks=range(len(names)), yticklabels=names, xlabel="element (flat index)")
    fig.colorbar(image, ax=ax, label="ulps")
    if grid.shape[1] <= 32:  # few elements: write the numbers in
        for (i, j), v in np.ndenumerate(grid):
            ax.text(j, i, f"{v:g}", ha="center", va="center", fontsize=7)


def plot_comparison(plt: Any, path: str, a: np.ndarray, b: np.ndarray) -> None:
    """A - B in signed ulps, element by element (nothing drawn where shapes or dtypes differ)."""
    fig, ax = plt.subplots(figsize=(9, 3.2))
    if a.shape == b.shape and a.dtype == b.dtype:
        ax.plot(signed_ulps(a, b).ravel(), ".", ms=3)
    ax.set(title="A - B in ulps", xlabel="element (flat index)", ylabel="ulps")
    _save(plt, fig, path)


def _save(plt: Any, fig: Any, path: str) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
