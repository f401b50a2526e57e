"""The search's curve: the best perplexity after each generation (generation 0: the initial population)."""

from __future__ import annotations

from pathlib import Path


def best_curve(path: Path, long, short, title: str) -> None:
    from ropeconv.eval import plots

    plt = plots.require()
    fig, axes = plt.subplots(1, 2 if short is not None else 1, figsize=(10 if short is not None else 6, 4),
                             squeeze=False)
    for ax, result, label in zip(axes[0], (long, short), ("long factors", "short factors")):
        curve = list(result.best_per_generation)
        ax.plot(range(len(curve)), curve, marker="o", label="best of the population")
        for name, ppl in sorted(result.seed_fitness.items()):
            ax.axhline(ppl, linestyle=":", linewidth=0.8, color="grey")
            ax.annotate(f"seed {name}", (0, ppl), fontsize=7, color="grey", xytext=(2, 2), textcoords="offset points")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("generation")
        ax.set_ylabel("perplexity")
        ax.set_title(label, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    plots._save(fig, path)
