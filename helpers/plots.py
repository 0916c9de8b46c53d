"""Plots. Each takes an optional `ax`, returns it, and writes a file only when given `path`.

No global style changes at import; matplotlib is imported when a plot is made.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _axes(ax, figsize=(6, 4)):
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(figsize=figsize, layout="constrained")
    return ax


def _save(ax, path: str | Path | None):
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ax.figure.savefig(path, dpi=120, bbox_inches="tight")
    return ax


def _legend_below(ax, handles=None, labels=None) -> None:
    """The legend under the plot, never on top of the data (a single point or a bar can hide behind it)."""
    if handles is None:
        handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=min(len(handles), 4),
              frameon=False, fontsize=8)


def label_distribution(labels: Sequence[Any], *, ax=None, title: str = "Label distribution", path=None):
    """Bar chart of label counts with percentages (class imbalance at a glance)."""
    from collections import Counter

    counts = sorted(Counter(labels).items(), key=lambda kv: str(kv[0]))
    ax = _axes(ax)
    names = [str(k) for k, _ in counts]
    values = [v for _, v in counts]
    bars = ax.bar(names, values, color="tab:blue")
    total = sum(values)
    for bar, value in zip(bars, values):
        ax.annotate(f"{value} ({100 * value / total:.0f}%)", (bar.get_x() + bar.get_width() / 2, value),
                    ha="center", va="bottom", fontsize=9)
    ax.set(title=title, ylabel="rows")
    ax.margins(y=0.15)
    return _save(ax, path)


def token_lengths(lengths: Sequence[int], *, max_length: int | None = None, ax=None,
                  title: str = "Tokens per example", path=None, limit_name: str = "MAX_LENGTH",
                  limit_effect: str = "truncated", context: int | None = None):
    """Histogram of token counts, with the chosen limit and the share it truncates marked
    (and, with `context`, the model's context window)."""
    import numpy as np

    lengths = np.asarray(lengths)
    ax = _axes(ax)
    ax.hist(lengths, bins=min(50, max(10, len(set(lengths.tolist())))), color="tab:gray")
    if max_length is not None:
        truncated = float((lengths > max_length).mean())
        ax.axvline(max_length, color="tab:red", linestyle="--",
                   label=f"{limit_name}={max_length} ({100 * truncated:.1f}% {limit_effect})")
    if context is not None:
        beyond = float((lengths > context).mean())
        ax.axvline(context, color="black", linestyle=":",
                   label=f"model context {context} ({100 * beyond:.1f}% longer)")
    if max_length is not None or context is not None:
        ax.legend(fontsize=8)
    ax.set(title=title, xlabel="tokens", ylabel="examples")
    return _save(ax, path)


def history(history, *, metric: str | None = None, ax=None, title: str = "Training", path=None):
    """Training loss per step (and evaluation loss), with `metric` on a second axis."""
    ax = _axes(ax, figsize=(7, 4))
    ax.plot(history.steps, history.train_loss, label="train loss", color="tab:blue", alpha=0.6)
    eval_steps = [e["step"] for e in history.evals]
    if history.evals:
        ax.plot(eval_steps, [e["loss"] for e in history.evals], "o-", label="eval loss", color="tab:orange")
    ax.set(title=title, xlabel="optimizer step", ylabel="loss")
    handles, labels = ax.get_legend_handles_labels()
    if metric and history.metric(metric):
        ax2 = ax.twinx()
        ax2.plot(eval_steps, history.metric(metric), "s-", color="tab:green", label=f"eval {metric}")
        ax2.set_ylabel(metric)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    _legend_below(ax, handles, labels)
    return _save(ax, path)


def confusion_matrix(matrix, label_names: Sequence[str], *, ax=None, title: str = "Confusion matrix",
                     normalize: bool = False, path=None):
    """Rows: true label, columns: predicted label; counts (or row shares) written in each cell."""
    import numpy as np

    matrix = np.asarray(matrix, dtype=float)
    shown = matrix / np.maximum(matrix.sum(1, keepdims=True), 1) if normalize else matrix
    ax = _axes(ax, figsize=(4.5, 4))
    ax.imshow(shown, cmap="Blues")
    ticks = range(len(label_names))
    ax.set_xticks(ticks, label_names, rotation=30, ha="right")
    ax.set_yticks(ticks, label_names)
    for i in ticks:
        for j in ticks:
            text = f"{shown[i, j]:.2f}" if normalize else f"{int(matrix[i, j])}"
            ax.text(j, i, text, ha="center", va="center",
                    color="white" if shown[i, j] > shown.max() / 2 else "black")
    ax.set(title=title, xlabel="predicted", ylabel="true")
    return _save(ax, path)


def compare_bars(scores: dict[str, dict[str, float]], *, ax=None, title: str = "Before vs after", path=None):
    """Grouped bars, e.g. {"baseline": {"accuracy": .6}, "fine-tuned": {"accuracy": .9}}."""
    import numpy as np

    ax = _axes(ax)
    names = list(scores)
    keys = list(next(iter(scores.values())))
    width = 0.8 / len(names)
    x = np.arange(len(keys))
    for i, name in enumerate(names):
        values = [scores[name].get(k, 0.0) for k in keys]
        bars = ax.bar(x + i * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(x + width * (len(names) - 1) / 2, keys)
    ax.set(title=title)
    _legend_below(ax)
    ax.margins(y=0.15)
    return _save(ax, path)


def rouge_comparison(scores: dict[str, dict[str, float]], *, ax=None, title: str = "ROUGE (F1, 0-100)", path=None):
    """Grouped ROUGE-1/2/L bars, e.g. {"base model": {...}, "fine-tuned": {...}}."""
    keys = ("rouge1", "rouge2", "rougeL")
    ax = compare_bars({name: {k: float(s.get(k, 0.0)) for k in keys} for name, s in scores.items()},
                      ax=ax, title=title)
    ax.set(ylabel="F1 x 100")
    return _save(ax, path)
