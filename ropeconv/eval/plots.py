"""Plots (matplotlib, Agg backend, nothing shown): the passkey length × depth heatmap, RULER's task × length
heatmap and perplexity curves."""

from __future__ import annotations

import os
import struct
from pathlib import Path

from ropeconv.errors import InputError

INSTALL_HINT = "pip install 'ropeconv[eval]' (or pip install matplotlib)"
SOFTWARE = "ropeconv"  # every plot's PNG Software tag: what proves a PNG one ropeconv drew (so it may be replaced)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_BYTES = 64 << 20  # a larger file is not read to prove it a ropeconv plot: it is not one


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
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight", metadata={"Software": SOFTWARE})
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def drawn_by_ropeconv(path: Path) -> bool:
    """A regular PNG file whose tEXt chunks, before its image data, hold Software = SOFTWARE (never raises)."""
    from ropeconv.inputfile import read_bytes

    try:
        data = read_bytes(path, MAX_PNG_BYTES)
    except InputError:
        return False
    if not data.startswith(PNG_SIGNATURE):
        return False
    at = len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        if kind == b"IDAT" or len(body) < length:
            return False
        if kind == b"tEXt" and body.split(b"\0", 1) == [b"Software", SOFTWARE.encode("latin-1")]:
            return True
        at += 12 + length
    return False


def plot_proof():
    """What `--force` (or a rerun) checks before replacing a plot: export.staging's Proof of a ropeconv PNG."""
    from ropeconv.export.staging import Proof

    return Proof("a plot ropeconv drew", f"not a PNG with the Software tag {SOFTWARE!r}", drawn_by_ropeconv)


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


def ruler_heatmap(summary: dict, tasks: list[str], lengths: list[int], title: str, path: Path) -> None:
    """RULER's score per (task, length): rows are the tasks and their average, columns the lengths."""
    plt = require()
    cells = {(c["task"], c["length"]): c for c in summary["per_task_length"]}
    rows = [*tasks, "average"]
    grid = [[float("nan")] * len(lengths) for _ in rows]
    for i, task in enumerate(tasks):
        for j, L in enumerate(lengths):
            score = cells[task, L]["score"]
            grid[i][j] = float("nan") if score is None else score
    for j, c in enumerate(summary["per_length"]):
        grid[-1][j] = float("nan") if c["score"] is None else c["score"]
    fig, ax = plt.subplots(figsize=(2.2 + 1.1 * len(lengths), 1.0 + 0.45 * len(rows)))
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [_k(L) for L in lengths])
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("sequence length (tokens)")
    for i in range(len(rows)):
        for j in range(len(lengths)):
            if grid[i][j] == grid[i][j]:  # not NaN
                ax.text(j, i, f"{100 * grid[i][j]:.0f}", ha="center", va="center", fontsize=7)
    fig.colorbar(image, ax=ax, label="string_match_all")
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
