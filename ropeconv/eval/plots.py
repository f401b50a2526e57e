"""Plots (matplotlib, Agg backend, nothing shown): the passkey length × depth heatmap and perplexity curves."""

from __future__ import annotations

import os
from pathlib import Path

from ropeconv.errors import InputError

INSTALL_HINT = "pip install 'ropeconv[eval]' (or pip install matplotlib)"


def require():
    """pyplot on the Agg backend; InputError when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        raise InputError(f"plots need matplotlib: {INSTALL_HINT}") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:
    plt = require()
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def passkey_heatmap(summary: dict, lengths: list[int], title: str, path: Path) -> None:
    """Accuracy per (depth, length): rows are depths (grid values or bins), columns the lengths."""
    plt = require()
    cells = summary["per_length_depth"]
    depth_labels = list(dict.fromkeys(c["depth"] for c in cells))
    grid = [[float("nan")] * len(lengths) for _ in depth_labels]
    counts = [[0] * len(lengths) for _ in depth_labels]
    for c in cells:
        i, j = depth_labels.index(c["depth"]), lengths.index(c["length"])
        grid[i][j] = float("nan") if c["accuracy"] is None else c["accuracy"]
        counts[i][j] = c["trials"]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(lengths), 1.0 + 0.5 * len(depth_labels)))
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [_k(L) for L in lengths])
    ax.set_yticks(range(len(depth_labels)), depth_labels)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("key depth")
    for i in range(len(depth_labels)):
        for j in range(len(lengths)):
            if counts[i][j]:
                ax.text(j, i, f"{grid[i][j]:.0%}\n(n={counts[i][j]})", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def ppl_curves(results: list[dict], path: Path, title: str = "perplexity") -> None:
    """One curve per model label: PPL against the evaluation length."""
    plt = require()
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r["label"] for r in results):
        rs = sorted((r for r in results if r["label"] == label), key=lambda r: r["length"])
        ax.plot([r["length"] for r in rs], [r["ppl"] for r in rs], marker="o", label=label)
    ax.set_xscale("log", base=2)
    lengths = sorted({r["length"] for r in results})
    ax.set_xticks(lengths, [_k(L) for L in lengths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    _save(fig, path)


def _k(n: int) -> str:
    return f"{n // 1024}k" if n % 1024 == 0 else str(n)
